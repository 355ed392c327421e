//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the stable test that replays
//! their corpora, so both exercise exactly the same code.

use crate::page::{self, PAGE_SIZE};
use crate::types::PageId;

/// `page_decode`: the input becomes a page image (cut or zero-padded to a page), its checksum
/// is fixed up so that decoding goes past the checksum into the structure checks, and the
/// page is inspected. Must never panic, whatever the bytes.
pub fn page_decode(data: &[u8]) {
    let mut p = vec![0u8; PAGE_SIZE];
    let n = data.len().min(PAGE_SIZE);
    p[..n].copy_from_slice(&data[..n]);
    let c = page::checksum_of(&p);
    p[..4].copy_from_slice(&c.to_le_bytes());
    let id = PageId(page::header(&p).page_id.get());
    let _ = page::inspect(&p, id);
    // The unmodified input must also be handled (wrong length, wrong checksum).
    let _ = page::inspect(data, PageId(1));
}

/// `wal_decode`: the input is a WAL stream starting at LSN 0 (and, re-read, at the LSN its
/// first record claims, bytes 8..16). Records are decoded one after another until the first error; every
/// decoded page record is replayed onto a scratch page. Must never panic, allocate per input
/// length beyond the scratch page, or loop: each step consumes at least a record header.
pub fn wal_decode(data: &[u8]) {
    use crate::wal::record::{self, DecodeError};
    let mut scratch = vec![0u8; PAGE_SIZE];
    let starts = [
        0u64,
        data.get(8..16)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
    ];
    for start in starts {
        let mut pos = 0usize;
        while pos < data.len() {
            match record::decode(
                &data[pos..],
                crate::types::Lsn(start.wrapping_add(pos as u64)),
            ) {
                Ok((rec, len)) => {
                    assert!(len >= record::RECORD_HEADER && len <= data.len() - pos);
                    record::redo(&mut scratch, &rec);
                    pos += len;
                }
                Err(DecodeError::Incomplete { need }) => {
                    assert!(need > data.len() - pos);
                    break;
                }
                Err(DecodeError::Invalid(_)) => break,
            }
        }
    }
}

/// A stream of fuzzer bytes read a piece at a time (zeros once it runs out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |a, i| a | (u64::from(self.u8()) << (8 * i)))
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `power_loss`: the fuzzer chooses a run of operations (puts of small and large values,
/// deletes, commits at `Local` or `Off`), the I/O operation after which the power goes, and
/// what the disk keeps of what was not synced. The engine runs on [`SimFs`], loses power,
/// and is reopened: it must open, hold exactly the state after some prefix of the commits no
/// shorter than the acknowledged ones, and pass its integrity check. A violation panics (the
/// fuzzer's finding); nothing else may.
pub fn power_loss(data: &[u8]) {
    use crate::vfs::SimFs;
    use crate::{Db, Durability, Options, WriteBatch};
    use std::collections::BTreeMap;
    type Model = BTreeMap<Vec<u8>, Vec<u8>>;

    let mut input = Bytes(data);
    let cut = u64::from(input.u16() % 1024);
    let seed = input.u64();
    let fs = SimFs::new();
    let options = || Options {
        vfs: std::sync::Arc::new(fs.clone()),
        wal_segment_bytes: 64 << 10,
        checkpoint_wal_bytes: 48 << 10,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..Options::default()
    };
    let dir = std::path::Path::new("/db");
    fs.cut_power_after(cut);
    let mut issued: Vec<Model> = vec![Model::new()];
    let mut acked = 0;
    if let Ok(db) = Db::open(dir, options()) {
        let mut model = Model::new();
        let mut batch = WriteBatch::new();
        let mut next = model.clone();
        while !input.is_empty() {
            let op = input.u8();
            let key = format!("k{:02}", input.u8() % 48).into_bytes();
            match op % 8 {
                0..=3 => {
                    let v = vec![op; usize::from(input.u8()) * 2];
                    next.insert(key.clone(), v.clone());
                    batch.put(key, v);
                }
                4 => {
                    // Large enough for overflow pages.
                    let v = vec![op; 3000 + usize::from(input.u8()) * 40];
                    next.insert(key.clone(), v.clone());
                    batch.put(key, v);
                }
                5 => {
                    next.remove(&key);
                    batch.delete(key);
                }
                d => {
                    let d = if d == 6 {
                        Durability::Local
                    } else {
                        Durability::Off
                    };
                    if batch.is_empty() {
                        continue;
                    }
                    let r = db.commit(&batch, d);
                    batch.clear();
                    model = next.clone();
                    issued.push(model.clone());
                    match r {
                        Ok(_) if d == Durability::Local => acked = issued.len() - 1,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        fs.cut_power();
        db.simulate_crash();
    }
    fs.restart(seed);
    let db = match Db::open(dir, options()) {
        Ok(db) => db,
        Err(e) => panic!("the database does not open after a power cut: {e}"),
    };
    let got: Model = match db.range(..).collect::<crate::Result<_>>() {
        Ok(m) => m,
        Err(e) => panic!("the recovered database cannot be read: {e}"),
    };
    assert!(
        issued[acked..].contains(&got),
        "the recovered state ({} keys) is no prefix of the {} commits at or after the {acked} acknowledged",
        got.len(),
        issued.len() - 1
    );
    if let Err(e) = db.check_integrity() {
        panic!("integrity check after a power cut: {e}");
    }
}

/// `replica_apply`: the fuzzer writes a replica's incoming log, record by record — page
/// images and deltas of chosen pages, commits with right or wrong counts, checkpoints, epoch
/// changes — each with a valid checksum, so the records get past decoding into the batch
/// rules and redo. They are applied in fuzzer-chosen pieces to a replica on [`SimFs`]; then it
/// checkpoints, checks itself, loses power and reopens. Errors are expected; a panic is a
/// finding.
pub fn replica_apply(data: &[u8]) {
    use crate::vfs::SimFs;
    use crate::wal::record;
    use crate::{Db, Lsn, Options};

    let mut input = Bytes(data);
    let mut log = Vec::new();
    let mut in_batch = 0u32;
    while !input.is_empty() && log.len() < 1 << 20 {
        let at = Lsn(log.len() as u64);
        let page = PageId(u64::from(input.u8() % 12));
        match input.u8() % 6 {
            0 => {
                let mut p = vec![0u8; PAGE_SIZE];
                let n = usize::from(input_len(&mut input));
                let body = input.take(n);
                p[..body.len()].copy_from_slice(body);
                if p[0] & 1 == 0 {
                    // A page that passes its checksum, to get past it into the structure.
                    let c = page::checksum_of(&p);
                    p[..4].copy_from_slice(&c.to_le_bytes());
                }
                record::encode_page_image(&mut log, at, 1, page, &p);
                in_batch += 1;
            }
            1 => {
                let n = usize::from(input.u8() % 8);
                let mut runs = Vec::new();
                for _ in 0..n {
                    let off = input.u16() % PAGE_SIZE as u16;
                    let len = u16::from(input.u8());
                    runs.extend_from_slice(&off.to_le_bytes());
                    if len & 1 == 1 {
                        // A copy run: from another offset of the page before the record.
                        runs.extend_from_slice(&(len | 0x8000).to_le_bytes());
                        runs.extend_from_slice(&(input.u16() % PAGE_SIZE as u16).to_le_bytes());
                        continue;
                    }
                    runs.extend_from_slice(&len.to_le_bytes());
                    let b = input.take(usize::from(len)).to_vec();
                    runs.extend_from_slice(&b);
                    runs.resize(runs.len() + usize::from(len) - b.len(), 0);
                }
                record::encode_page_delta(&mut log, at, 1, page, &runs);
                in_batch += 1;
            }
            2 | 3 => {
                let count = if input.u8() % 4 == 0 {
                    u32::from(input.u8() % 4)
                } else {
                    in_batch
                };
                record::encode_commit(&mut log, at, 1, 0, count, Lsn(input.u64() % (at.0 + 1)));
                in_batch = 0;
            }
            4 => {
                record::encode_checkpoint(&mut log, at, 1, Lsn(input.u64() % (at.0 + 2)));
            }
            _ => {
                record::encode_epoch_change(&mut log, at, 1, u32::from(input.u8()));
            }
        }
    }
    let fs = SimFs::new();
    let options = || Options {
        vfs: std::sync::Arc::new(fs.clone()),
        wal_segment_bytes: 64 << 10,
        replica: true,
        ..Options::default()
    };
    let dir = std::path::Path::new("/replica");
    let Ok(db) = Db::open(dir, options()) else {
        panic!("a new replica does not open");
    };
    // Pieces of the log as a stream delivers them: records cut anywhere.
    let mut at = 0usize;
    let mut cuts = Bytes(data);
    while at < log.len() {
        let n = (usize::from(cuts.u16()) + 1).min(log.len() - at);
        if db.apply_wal(Lsn(at as u64), &log[at..at + n]).is_err() {
            break;
        }
        at += n;
    }
    let _ = db.checkpoint();
    let _ = db.check_integrity();
    fs.cut_power();
    db.simulate_crash();
    fs.restart(data.len() as u64);
    if let Ok(db) = Db::open(dir, options()) {
        let _ = db.check_integrity();
        let _ = db.range(..).count();
    }
}

/// The length of a page image's fuzzer-chosen prefix (the rest is zeros).
fn input_len(input: &mut Bytes<'_>) -> u16 {
    input.u16() % (PAGE_SIZE as u16 + 1)
}

/// `wal_damage`: the recovery classifier (docs/wal.md, "Torn tail or damage") on a log the
/// fuzzer damages. A database on [`SimFs`] takes fuzzer-chosen commits, each at `Local`
/// (acknowledged after a sync), and stops as a killed process would. The fuzzer then flips
/// bytes, zeroes runs or writes garbage at LSNs it chooses in the written log. Then:
/// - `check_wal` and opening agree: damage reported by one exactly when the other refuses
///   with `WalDamaged` at the same LSN, and a refused open changes no file;
/// - opened (cut at the damage on request when refused), the database holds the state after
///   a prefix of the commits, every commit that ended before the first damaged byte among
///   them, and passes its integrity check.
///
/// A violation panics (the fuzzer's finding); nothing else may. Returns how the log was
/// classified.
pub fn wal_damage(data: &[u8]) -> LogVerdict {
    use crate::vfs::{OpenMode, SimFs, Vfs};
    use crate::wal::segment::SEGMENT_HEADER;
    use crate::{check_wal, Db, Durability, Error, Options, WriteBatch};
    use std::collections::BTreeMap;
    type Model = BTreeMap<Vec<u8>, Vec<u8>>;
    const SEG: u64 = 64 << 10;

    let mut input = Bytes(data);
    let fs = SimFs::new();
    let options = || Options {
        vfs: std::sync::Arc::new(fs.clone()),
        wal_segment_bytes: SEG,
        checkpoint_wal_bytes: 1 << 40,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..Options::default()
    };
    let dir = std::path::Path::new("/db");
    let wal = dir.join(crate::WAL_DIR);
    let Ok(db) = Db::open(dir, options()) else {
        panic!("a new database does not open on a simulated disk");
    };
    let mut issued: Vec<(Model, u64)> = vec![(Model::new(), 0)];
    let commits = 1 + usize::from(input.u8() % 120);
    for i in 0..commits {
        let mut m = issued[issued.len() - 1].0.clone();
        let mut b = WriteBatch::new();
        for _ in 0..1 + input.u8() % 4 {
            let key = format!("k{:02}", input.u8() % 40).into_bytes();
            let len = match input.u8() % 8 {
                0 => 2500 + usize::from(input.u8()) * 8,
                n => usize::from(n) * 20,
            };
            let v = vec![i as u8; len];
            m.insert(key.clone(), v.clone());
            b.put(key, v);
        }
        match db.commit(&b, Durability::Local) {
            Ok(end) => issued.push((m, end.0)),
            Err(e) => panic!("a commit failed on a simulated disk: {e}"),
        }
    }
    let end = db.last_lsn().0;
    db.simulate_crash();

    // Damage, at LSNs in the written log.
    let mut first_damage = u64::MAX;
    while !input.is_empty() {
        let kind = input.u8() % 3;
        let lsn = input.u64() % end.max(1);
        let len = 1 + usize::from(input.u16() % 4096);
        let seg = lsn - lsn % SEG;
        let len = len.min((seg + SEG - lsn) as usize);
        let path = wal.join(crate::wal::segment::segment_name(seg));
        let Ok(f) = fs.open(&path, OpenMode::Existing) else {
            continue;
        };
        let off = SEGMENT_HEADER + lsn - seg;
        let mut bytes = vec![0u8; len];
        if f.read_exact_at(&mut bytes, off).is_err() {
            continue;
        }
        let before = bytes.clone();
        match kind {
            0 => bytes[0] ^= 1 << (input.u8() % 8),
            1 => bytes.fill(0),
            _ => {
                for b in bytes.iter_mut() {
                    *b = input.u8();
                }
            }
        }
        if bytes == before {
            continue;
        }
        let changed = bytes.iter().zip(&before).position(|(a, b)| a != b);
        first_damage = first_damage.min(lsn + changed.unwrap_or(0) as u64);
        if f.write_all_at(&bytes, off)
            .and_then(|()| f.sync_data())
            .is_err()
        {
            panic!("the simulated disk refused a write");
        }
    }

    let files = |fs: &SimFs| -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for d in [dir.to_path_buf(), wal.clone()] {
            for name in fs.list(&d).unwrap_or_default() {
                if let Ok(b) = fs.read(&d.join(&name)) {
                    out.push((name, b));
                }
            }
        }
        out.sort();
        out
    };
    let w = match check_wal(dir, &options()) {
        Ok(w) => w,
        Err(e) => panic!("check_wal failed on a damaged log: {e}"),
    };
    let before = files(&fs);
    let verdict = match (&w.damage, w.discarded) {
        (Some(_), _) => LogVerdict::Damage,
        (None, true) => LogVerdict::TornTail,
        (None, false) => LogVerdict::Clean,
    };
    let db = match (Db::open(dir, options()), &w.damage) {
        (Ok(db), None) => db,
        (Err(Error::WalDamaged(d)), Some(c)) => {
            assert_eq!(d.lsn, c.lsn, "check and open name different damage");
            assert!(before == files(&fs), "a refused open changed the files");
            let cut = Options {
                truncate_damaged_wal: true,
                ..options()
            };
            match Db::open(dir, cut) {
                Ok(db) => db,
                Err(e) => panic!("cutting at the damage failed: {e}"),
            }
        }
        (Ok(_), Some(d)) => panic!("check calls {d} damage, open took the log"),
        (Err(e), _) => panic!("open failed ({e}); check said {:?}", w.damage),
    };
    let got: Model = match db.range(..).collect::<crate::Result<_>>() {
        Ok(m) => m,
        Err(e) => panic!("the recovered database cannot be read: {e}"),
    };
    let Some(n) = issued.iter().position(|(m, _)| *m == got) else {
        panic!(
            "the recovered state ({} keys) is the state after no prefix of the commits",
            got.len()
        );
    };
    let before_damage = issued.iter().filter(|(_, e)| *e <= first_damage).count() - 1;
    assert!(
        n >= before_damage,
        "{before_damage} commits ended before the first damaged byte (LSN {first_damage}), {n} recovered"
    );
    if let Err(e) = db.check_integrity() {
        panic!("integrity check after damage: {e}");
    }
    verdict
}

/// How `wal_damage` found its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// Nothing to discard.
    Clean,
    /// A torn tail, discarded.
    TornTail,
    /// Damage: refused, then cut on request.
    Damage,
}
