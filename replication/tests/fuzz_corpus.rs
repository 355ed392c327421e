//! Replays the `repl_frame_decode` fuzz corpus on stable, plus real frames of every kind.

use replication::frame::{decode, Frame};
use storage::Lsn;

fn seed_frames() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: 1,
            epoch: 1,
            node_id: 7,
            flush_lsn: Lsn(123),
            name: "r1".into(),
            epochs: vec![(2, Lsn(100)), (3, Lsn(150))],
        },
        Frame::Welcome {
            epoch: 1,
            node_id: 9,
            start_lsn: Lsn(100),
            primary_flush_lsn: Lsn(200),
            chain: vec![
                replication::frame::ChainLink {
                    node_id: 9,
                    name: "p".into(),
                },
                replication::frame::ChainLink {
                    node_id: 11,
                    name: "upstream".into(),
                },
            ],
        },
        Frame::Wal {
            start_lsn: Lsn(100),
            bytes: vec![1, 2, 3],
            sync: true,
            eager: true,
        },
        Frame::Feedback {
            write_lsn: Lsn(3),
            flush_lsn: Lsn(2),
            apply_lsn: Lsn(1),
            time_us: 5,
        },
        Frame::Keepalive {
            primary_flush_lsn: Lsn(8),
            time_us: 9,
        },
        Frame::Error {
            code: 2,
            message: "epoch 3 is newer than yours".into(),
        },
        Frame::SnapshotBegin {
            redo_lsn: Lsn(4096),
            page_count: 12,
            epochs: vec![(2, Lsn(100))],
        },
        Frame::SnapshotEnd,
        Frame::PageList {
            pages: vec![0, 7, 8, 9],
        },
        Frame::PageList { pages: vec![] },
        Frame::Diverged {
            fork_lsn: Lsn(777),
            message: "your log runs past LSN 777".into(),
        },
        Frame::CatchUp {
            until_lsn: Lsn(900),
            timeout_ms: 10_000,
        },
        Frame::Promote,
        Frame::RoleQuery,
        Frame::RoleReport {
            primary: true,
            epoch: 2,
            apply_lsn: Lsn(900),
            node_id: 5,
            chain: vec![replication::frame::ChainLink {
                node_id: 5,
                name: "r2".into(),
            }],
            message: "promoted: epoch 2 from LSN 900".into(),
        },
        Frame::Hello {
            version: 5,
            epoch: 9,
            node_id: 0,
            flush_lsn: Lsn(u64::MAX),
            name: "odd".into(),
            epochs: vec![(9, Lsn(5)), (3, Lsn(1)), (u32::MAX, Lsn(u64::MAX))],
        },
    ]
}

#[test]
fn repl_frame_decode_corpus_replays_without_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/repl_frame_decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| replication::fuzzing::frame_decode(&data));
        assert!(r.is_ok(), "{} made the decoder panic", p.display());
        n += 1;
    }
    assert!(n >= 6, "the corpus is committed ({n} files)");
}

/// The handshake's decisions over the same corpus and every seed frame (`repl_handshake`).
#[test]
fn repl_handshake_corpus_replays_without_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/repl_frame_decode");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let mut all = Vec::new();
    for f in seed_frames() {
        f.encode(&mut all);
    }
    inputs.push(all);
    for data in &inputs {
        let r = std::panic::catch_unwind(|| replication::fuzzing::handshake(data));
        assert!(r.is_ok(), "an input made the handshake panic");
    }
}

#[test]
fn seed_frames_decode() {
    let frames = seed_frames();
    let mut buf = Vec::new();
    for f in &frames {
        f.encode(&mut buf);
    }
    let mut at = 0;
    for (i, f) in frames.iter().enumerate() {
        let (got, len) = decode(&buf[at..]).unwrap().unwrap();
        assert_eq!(&got, f);
        // Written as seed files when asked (how the committed seeds were made).
        if let Some(dir) = std::env::var_os("REPLIDB_WRITE_SEEDS") {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed-{i}")),
                &buf[at..at + len],
            )
            .unwrap();
        }
        at += len;
    }
    if let Some(dir) = std::env::var_os("REPLIDB_WRITE_SEEDS") {
        std::fs::write(std::path::Path::new(&dir).join("seed-all"), &buf).unwrap();
    }
}

/// `rewind_page_list`: its corpus, plus lists built here — duplicates, pages past the end,
/// and more ids than the node has pages — against nodes of several sizes.
#[test]
fn rewind_page_list_corpus_replays_and_the_list_stays_bounded() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rewind_page_list");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(inputs.len() >= 3, "the corpus is committed");
    for pages_here in [0u32, 1, 10, 1000] {
        let mut data = pages_here.to_le_bytes().to_vec();
        for i in 0..12u64 {
            Frame::PageList {
                pages: (0..200).map(|j| (j * 7 + i) % 1500).collect(),
            }
            .encode(&mut data);
        }
        Frame::PageList { pages: vec![] }.encode(&mut data);
        // Written as seed files when asked (how the committed seeds were made).
        if let Some(dir) = std::env::var_os("REPLIDB_WRITE_SEEDS") {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed-lists-{pages_here}")),
                &data,
            )
            .unwrap();
        }
        inputs.push(data);
    }
    for data in &inputs {
        let r = std::panic::catch_unwind(|| replication::fuzzing::rewind_page_list(data));
        assert!(r.is_ok(), "a page list broke the rewind's bounds");
    }
}
