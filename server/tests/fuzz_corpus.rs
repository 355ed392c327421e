//! Replays the `resp_decode` fuzz corpus through the fuzz entry point on stable.

#[test]
fn resp_decode_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/resp_decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| replidb_server::resp::fuzz_parse_all(&data));
        assert!(r.is_ok(), "{} made the parser panic", p.display());
        n += 1;
    }
    assert!(n >= 5, "the seed corpus is committed");
}
