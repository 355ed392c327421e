//! Each type's commands against an in-memory model of it (proptest): random operations on a
//! real database, every reply and the whole collection compared after each step; and the
//! background work (expiry, garbage collection) leaving no entry behind.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use proptest::prelude::*;
use storage::{Db, Durability, Options};

use crate::commands::{self, Access};
use crate::model::Writer;
use crate::reply::Reply;

struct Harness {
    _dir: tempfile::TempDir,
    db: Db,
    now: u64,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        Harness {
            _dir: dir,
            db,
            now: 1_000_000,
        }
    }

    fn run(&self, args: &[&[u8]]) -> Reply {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        let spec = commands::lookup(&args[0]).expect("a known command");
        if let Some(e) = commands::arity_error(spec.name, args.len()) {
            return Reply::Error(e);
        }
        if spec.access == Access::Read {
            return commands::read(&self.db.read(), self.now, spec, &args).unwrap();
        }
        self.write(&args)
    }

    /// Checks that the one-copy encoding of a whole-collection read (`collection::stream`)
    /// sends exactly what the reply would, in both protocols.
    fn check_streamed(&self, args: &[&[u8]]) {
        let reply = self.run(args);
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        let name = commands::lookup(&args[0]).unwrap().name;
        for resp3 in [false, true] {
            let enc = crate::resp::Encoder { resp3 };
            let mut want = bytes::BytesMut::new();
            reply.encode(&enc, &mut want);
            let mut got = bytes::BytesMut::new();
            let snap = self.db.read();
            commands::collection::stream(&snap, self.now, name, &args, &enc, &mut got)
                .expect("a streamed command")
                .unwrap();
            assert_eq!(got, want, "{name} resp3={resp3}");
        }
    }

    fn write(&self, args: &[Bytes]) -> Reply {
        self.db
            .update(Durability::Off, |tx| {
                let mut touched = crate::model::Touched::default();
                let mut w = Writer {
                    tx,
                    now_ms: self.now,
                    touched: &mut touched,
                };
                let r = commands::apply(&mut w, args)?;
                crate::shared::counts(tx, &mut touched)?;
                Ok(r)
            })
            .unwrap()
            .0
    }

    /// Several commands in one transaction, as a group commit applies them.
    fn run_group(&self, cmds: &[&[&[u8]]]) -> Vec<Reply> {
        self.db
            .update(Durability::Off, |tx| {
                let mut touched = crate::model::Touched::default();
                let mut out = Vec::new();
                for c in cmds {
                    let args: Vec<Bytes> = c.iter().map(|a| Bytes::copy_from_slice(a)).collect();
                    let mut w = Writer {
                        tx: &mut *tx,
                        now_ms: self.now,
                        touched: &mut touched,
                    };
                    out.push(commands::apply(&mut w, &args)?);
                }
                crate::shared::counts(tx, &mut touched)?;
                Ok(out)
            })
            .unwrap()
            .0
    }

    fn sweep(&self) -> i64 {
        match self.write(&[Bytes::from_static(commands::SWEEP)]) {
            Reply::Array(v) => match v[..] {
                [Reply::Int(e), Reply::Int(c)] => e + c,
                _ => panic!("sweep: {v:?}"),
            },
            other => panic!("sweep: {other:?}"),
        }
    }

    /// Every engine key outside the internal records (0x00 ...).
    fn data_entries(&self) -> usize {
        let mut n = 0;
        self.db
            .read()
            .visit(
                Bound::Included(&[1u8][..]),
                Bound::Unbounded,
                false,
                &mut |_, _| {
                    n += 1;
                    true
                },
            )
            .unwrap();
        n
    }
}

fn bulks(v: &[&[u8]]) -> Vec<Reply> {
    v.iter().map(|b| Reply::bulk(b)).collect()
}

fn key(i: u8) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

#[derive(Clone, Debug)]
enum HashOp {
    Set(u8, u8, u8),
    Del(u8, Vec<u8>),
    Incr(u8, u8, i8),
    DelKey(u8),
}

fn hash_op() -> impl Strategy<Value = HashOp> {
    prop_oneof![
        4 => (0..3u8, 0..6u8, any::<u8>()).prop_map(|(k, f, v)| HashOp::Set(k, f, v)),
        2 => (0..3u8, prop::collection::vec(0..6u8, 1..3)).prop_map(|(k, f)| HashOp::Del(k, f)),
        1 => (0..3u8, 6..8u8, any::<i8>()).prop_map(|(k, f, n)| HashOp::Incr(k, f, n)),
        1 => (0..3u8).prop_map(HashOp::DelKey),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn hashes_behave_like_a_map(ops in prop::collection::vec(hash_op(), 1..60)) {
        let h = Harness::new();
        let mut model: BTreeMap<u8, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for op in ops {
            match op {
                HashOp::Set(k, f, v) => {
                    let (f, v) = (format!("f{f}").into_bytes(), v.to_string().into_bytes());
                    let new = model.entry(k).or_default().insert(f.clone(), v.clone()).is_none();
                    prop_assert_eq!(h.run(&[b"HSET", &key(k), &f, &v]), Reply::Int(i64::from(new)));
                }
                HashOp::Del(k, fs) => {
                    let fs: Vec<Vec<u8>> = fs.iter().map(|f| format!("f{f}").into_bytes()).collect();
                    let kk = key(k);
                    let mut args: Vec<&[u8]> = vec![b"HDEL", &kk];
                    args.extend(fs.iter().map(|f| f.as_slice()));
                    let m = model.entry(k).or_default();
                    let mut gone = 0;
                    for f in &fs {
                        gone += i64::from(m.remove(f).is_some());
                    }
                    prop_assert_eq!(h.run(&args), Reply::Int(gone));
                }
                HashOp::Incr(k, f, n) => {
                    let f = format!("f{f}").into_bytes();
                    let m = model.entry(k).or_default();
                    let cur: i64 = m.get(&f).map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap());
                    m.insert(f.clone(), (cur + i64::from(n)).to_string().into_bytes());
                    prop_assert_eq!(
                        h.run(&[b"HINCRBY", &key(k), &f, n.to_string().as_bytes()]),
                        Reply::Int(cur + i64::from(n))
                    );
                }
                HashOp::DelKey(k) => {
                    let had = model.remove(&k).is_some_and(|m| !m.is_empty());
                    prop_assert_eq!(h.run(&[b"DEL", &key(k)]), Reply::Int(i64::from(had)));
                }
            }
            model.retain(|_, m| !m.is_empty());
            for k in 0..3u8 {
                let want = model.get(&k).cloned().unwrap_or_default();
                let flat: Vec<Reply> = want.iter().flat_map(|(f, v)| [Reply::bulk(f), Reply::bulk(v)]).collect();
                prop_assert_eq!(h.run(&[b"HGETALL", &key(k)]), Reply::Map(flat));
                prop_assert_eq!(h.run(&[b"HLEN", &key(k)]), Reply::Int(want.len() as i64));
                h.check_streamed(&[b"HGETALL", &key(k)]);
                h.check_streamed(&[b"HKEYS", &key(k)]);
                h.check_streamed(&[b"HVALS", &key(k)]);
            }
            prop_assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(model.len() as i64));
        }
    }
}

#[derive(Clone, Debug)]
enum SetOp {
    Add(u8, Vec<u8>),
    Rem(u8, Vec<u8>),
    Pop(u8),
    Store(u8, u8, u8, u8),
}

fn set_op() -> impl Strategy<Value = SetOp> {
    prop_oneof![
        4 => (0..3u8, prop::collection::vec(0..8u8, 1..4)).prop_map(|(k, m)| SetOp::Add(k, m)),
        2 => (0..3u8, prop::collection::vec(0..8u8, 1..3)).prop_map(|(k, m)| SetOp::Rem(k, m)),
        1 => (0..3u8).prop_map(SetOp::Pop),
        1 => (0..3u8, 0..3u8, 0..3u8, 0..3u8).prop_map(|(d, a, b, op)| SetOp::Store(d, a, b, op)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sets_behave_like_a_set(ops in prop::collection::vec(set_op(), 1..60)) {
        let h = Harness::new();
        let mut model: BTreeMap<u8, BTreeSet<Vec<u8>>> = BTreeMap::new();
        let mem = |m: u8| format!("m{m}").into_bytes();
        for op in ops {
            match op {
                SetOp::Add(k, ms) => {
                    let kk = key(k);
                    let ms: Vec<Vec<u8>> = ms.into_iter().map(mem).collect();
                    let s = model.entry(k).or_default();
                    let mut added = 0;
                    for m in &ms {
                        added += i64::from(s.insert(m.clone()));
                    }
                    let mut args: Vec<&[u8]> = vec![b"SADD", &kk];
                    args.extend(ms.iter().map(|m| m.as_slice()));
                    prop_assert_eq!(h.run(&args), Reply::Int(added));
                }
                SetOp::Rem(k, ms) => {
                    let kk = key(k);
                    let ms: Vec<Vec<u8>> = ms.into_iter().map(mem).collect();
                    let s = model.entry(k).or_default();
                    let mut gone = 0;
                    for m in &ms {
                        gone += i64::from(s.remove(m));
                    }
                    let mut args: Vec<&[u8]> = vec![b"SREM", &kk];
                    args.extend(ms.iter().map(|m| m.as_slice()));
                    prop_assert_eq!(h.run(&args), Reply::Int(gone));
                }
                SetOp::Pop(k) => match h.run(&[b"SPOP", &key(k)]) {
                    Reply::Null => prop_assert!(model.get(&k).is_none_or(|s| s.is_empty())),
                    Reply::Bulk(m) => prop_assert!(model.entry(k).or_default().remove(&m), "popped a non-member"),
                    other => prop_assert!(false, "SPOP: {other:?}"),
                },
                SetOp::Store(d, a, b, op) => {
                    let (sa, sb) = (model.get(&a).cloned().unwrap_or_default(), model.get(&b).cloned().unwrap_or_default());
                    let (name, r): (&[u8], BTreeSet<Vec<u8>>) = match op {
                        0 => (b"SINTERSTORE", sa.intersection(&sb).cloned().collect()),
                        1 => (b"SUNIONSTORE", sa.union(&sb).cloned().collect()),
                        _ => (b"SDIFFSTORE", sa.difference(&sb).cloned().collect()),
                    };
                    prop_assert_eq!(h.run(&[name, &key(d), &key(a), &key(b)]), Reply::Int(r.len() as i64));
                    model.insert(d, r);
                }
            }
            model.retain(|_, s| !s.is_empty());
            for k in 0..3u8 {
                let want = model.get(&k).cloned().unwrap_or_default();
                prop_assert_eq!(h.run(&[b"SMEMBERS", &key(k)]), Reply::Set(want.iter().map(|m| Reply::bulk(m)).collect()));
                prop_assert_eq!(h.run(&[b"SCARD", &key(k)]), Reply::Int(want.len() as i64));
                h.check_streamed(&[b"SMEMBERS", &key(k)]);
            }
            prop_assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(model.len() as i64));
        }
    }
}

fn rev_all(v: &[(Vec<u8>, f64)]) -> Vec<(Vec<u8>, f64)> {
    v.iter().rev().cloned().collect()
}

#[derive(Clone, Debug)]
enum ZOp {
    Add(u8, i8),
    Incr(u8, i8),
    Rem(u8),
    RemByScore(i8, i8),
    PopMin,
    PopMax,
}

fn z_op() -> impl Strategy<Value = ZOp> {
    prop_oneof![
        4 => (0..8u8, -6..6i8).prop_map(|(m, s)| ZOp::Add(m, s)),
        2 => (0..8u8, -3..3i8).prop_map(|(m, s)| ZOp::Incr(m, s)),
        2 => (0..8u8).prop_map(ZOp::Rem),
        1 => (-6..6i8, -6..6i8).prop_map(|(a, b)| ZOp::RemByScore(a, b)),
        1 => Just(ZOp::PopMin),
        1 => Just(ZOp::PopMax),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sorted_sets_order_by_score_then_member(
        ops in prop::collection::vec(z_op(), 1..60),
        (lo, hi, lo_x, hi_x) in (-7..7i8, -7..7i8, any::<bool>(), any::<bool>()),
    ) {
        let h = Harness::new();
        let mut model: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
        let mem = |m: u8| format!("m{m}").into_bytes();
        let sorted = |model: &BTreeMap<Vec<u8>, f64>| {
            let mut v: Vec<(Vec<u8>, f64)> = model.iter().map(|(m, s)| (m.clone(), *s)).collect();
            v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            v
        };
        for op in ops {
            match op {
                ZOp::Add(m, s) => {
                    let s = f64::from(s) / 2.0;
                    let new = model.insert(mem(m), s).is_none();
                    prop_assert_eq!(h.run(&[b"ZADD", b"z", s.to_string().as_bytes(), &mem(m)]), Reply::Int(i64::from(new)));
                }
                ZOp::Incr(m, s) => {
                    let e = model.entry(mem(m)).or_insert(0.0);
                    *e += f64::from(s);
                    prop_assert_eq!(h.run(&[b"ZINCRBY", b"z", s.to_string().as_bytes(), &mem(m)]), Reply::Double(*e));
                }
                ZOp::Rem(m) => {
                    let had = model.remove(&mem(m)).is_some();
                    prop_assert_eq!(h.run(&[b"ZREM", b"z", &mem(m)]), Reply::Int(i64::from(had)));
                }
                ZOp::RemByScore(a, b) => {
                    let (a, b) = (f64::from(a), f64::from(b));
                    let before = model.len();
                    model.retain(|_, s| !(*s >= a && *s <= b));
                    prop_assert_eq!(
                        h.run(&[b"ZREMRANGEBYSCORE", b"z", a.to_string().as_bytes(), b.to_string().as_bytes()]),
                        Reply::Int((before - model.len()) as i64)
                    );
                }
                ZOp::PopMin | ZOp::PopMax => {
                    let s = sorted(&model);
                    let top = if matches!(op, ZOp::PopMin) { s.first() } else { s.last() };
                    let want = match top {
                        Some((m, sc)) => vec![Reply::bulk(m), Reply::Double(*sc)],
                        None => vec![],
                    };
                    if let Some((m, _)) = top {
                        model.remove(m);
                    }
                    let name: &[u8] = if matches!(op, ZOp::PopMin) { b"ZPOPMIN" } else { b"ZPOPMAX" };
                    prop_assert_eq!(h.run(&[name, b"z"]), Reply::Array(want));
                }
            }
            let all = sorted(&model);
            prop_assert_eq!(h.run(&[b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"]), Reply::Scored(all.clone()));
            let rev: Vec<(Vec<u8>, f64)> = all.iter().rev().cloned().collect();
            prop_assert_eq!(h.run(&[b"ZREVRANGE", b"z", b"0", b"-1", b"WITHSCORES"]), Reply::Scored(rev));
            prop_assert_eq!(h.run(&[b"ZCARD", b"z"]), Reply::Int(all.len() as i64));
            // A score range with open or closed ends, both directions, and its count.
            let (a, b) = (f64::from(lo) / 2.0, f64::from(hi) / 2.0);
            let inside = |s: f64| (if lo_x { s > a } else { s >= a }) && (if hi_x { s < b } else { s <= b });
            let want: Vec<Reply> = all.iter().filter(|(_, s)| inside(*s)).map(|(m, _)| Reply::bulk(m)).collect();
            let fa = format!("{}{a}", if lo_x { "(" } else { "" });
            let fb = format!("{}{b}", if hi_x { "(" } else { "" });
            prop_assert_eq!(h.run(&[b"ZRANGEBYSCORE", b"z", fa.as_bytes(), fb.as_bytes()]), Reply::Array(want.clone()));
            let mut back = want.clone();
            back.reverse();
            prop_assert_eq!(h.run(&[b"ZREVRANGEBYSCORE", b"z", fb.as_bytes(), fa.as_bytes()]), Reply::Array(back));
            prop_assert_eq!(h.run(&[b"ZCOUNT", b"z", fa.as_bytes(), fb.as_bytes()]), Reply::Int(want.len() as i64));
            for (i, (m, _)) in all.iter().enumerate() {
                prop_assert_eq!(h.run(&[b"ZRANK", b"z", m]), Reply::Int(i as i64));
            }
            // Rank ranges, from either end, both directions.
            let (ra, rb) = (i64::from(lo), i64::from(hi));
            let want: Vec<Reply> = match model_range(all.len(), ra, rb) {
                Some((x, y)) => all[x..=y].iter().map(|(m, _)| Reply::bulk(m)).collect(),
                None => vec![],
            };
            prop_assert_eq!(h.run(&[b"ZRANGE", b"z", ra.to_string().as_bytes(), rb.to_string().as_bytes()]), Reply::Array(want));
            let want: Vec<Reply> = match model_range(all.len(), ra, rb) {
                Some((x, y)) => rev_all(&all)[x..=y].iter().map(|(m, _)| Reply::bulk(m)).collect(),
                None => vec![],
            };
            prop_assert_eq!(h.run(&[b"ZREVRANGE", b"z", ra.to_string().as_bytes(), rb.to_string().as_bytes()]), Reply::Array(want));
        }
    }
}

#[derive(Clone, Debug)]
enum ListOp {
    Push(bool, u8),
    Pop(bool),
    Set(i8, u8),
    Rem(i8, u8),
    Trim(i8, i8),
    Insert(bool, u8, u8),
}

fn list_op() -> impl Strategy<Value = ListOp> {
    prop_oneof![
        5 => (any::<bool>(), 0..5u8).prop_map(|(l, v)| ListOp::Push(l, v)),
        2 => any::<bool>().prop_map(ListOp::Pop),
        1 => (-6..6i8, 0..5u8).prop_map(|(i, v)| ListOp::Set(i, v)),
        1 => (-2..3i8, 0..5u8).prop_map(|(c, v)| ListOp::Rem(c, v)),
        1 => (-8..8i8, -8..8i8).prop_map(|(a, b)| ListOp::Trim(a, b)),
        1 => (any::<bool>(), 0..5u8, 0..5u8).prop_map(|(b, p, v)| ListOp::Insert(b, p, v)),
    ]
}

/// Redis's LRANGE/LTRIM rule, written out independently of the server's.
fn model_range(len: usize, a: i64, b: i64) -> Option<(usize, usize)> {
    let n = len as i64;
    let a = if a < 0 { (n + a).max(0) } else { a };
    let b = if b < 0 { n + b } else { b.min(n - 1) };
    if a > b || a >= n || b < 0 {
        None
    } else {
        Some((a as usize, b as usize))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn lists_behave_like_a_deque(
        ops in prop::collection::vec(list_op(), 1..60),
        (ra, rb) in (-8..8i64, -8..8i64),
    ) {
        let h = Harness::new();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let val = |v: u8| format!("v{v}").into_bytes();
        for op in ops {
            match op {
                ListOp::Push(left, v) => {
                    if left { model.push_front(val(v)) } else { model.push_back(val(v)) }
                    let name: &[u8] = if left { b"LPUSH" } else { b"RPUSH" };
                    prop_assert_eq!(h.run(&[name, b"l", &val(v)]), Reply::Int(model.len() as i64));
                }
                ListOp::Pop(left) => {
                    let want = if left { model.pop_front() } else { model.pop_back() };
                    let name: &[u8] = if left { b"LPOP" } else { b"RPOP" };
                    prop_assert_eq!(h.run(&[name, b"l"]), want.map_or(Reply::Null, Reply::Bulk));
                }
                ListOp::Set(i, v) => {
                    let n = model.len() as i64;
                    let at = if i < 0 { n + i64::from(i) } else { i64::from(i) };
                    let r = h.run(&[b"LSET", b"l", i.to_string().as_bytes(), &val(v)]);
                    if n == 0 {
                        prop_assert_eq!(r, Reply::err("ERR no such key"));
                    } else if at < 0 || at >= n {
                        prop_assert_eq!(r, Reply::err("ERR index out of range"));
                    } else {
                        model[at as usize] = val(v);
                        prop_assert_eq!(r, Reply::Ok);
                    }
                }
                ListOp::Rem(c, v) => {
                    let target = val(v);
                    let limit = if c == 0 { usize::MAX } else { c.unsigned_abs() as usize };
                    let mut removed = 0;
                    let idx: Vec<usize> = if c >= 0 { (0..model.len()).collect() } else { (0..model.len()).rev().collect() };
                    let mut doomed = BTreeSet::new();
                    for i in idx {
                        if removed < limit && model[i] == target {
                            doomed.insert(i);
                            removed += 1;
                        }
                    }
                    model = model.into_iter().enumerate().filter(|(i, _)| !doomed.contains(i)).map(|(_, v)| v).collect();
                    prop_assert_eq!(h.run(&[b"LREM", b"l", c.to_string().as_bytes(), &target]), Reply::Int(removed as i64));
                }
                ListOp::Trim(a, b) => {
                    model = match model_range(model.len(), a.into(), b.into()) {
                        Some((x, y)) => model.range(x..=y).cloned().collect(),
                        None => VecDeque::new(),
                    };
                    prop_assert_eq!(h.run(&[b"LTRIM", b"l", a.to_string().as_bytes(), b.to_string().as_bytes()]), Reply::Ok);
                }
                ListOp::Insert(before, p, v) => {
                    let where_: &[u8] = if before { b"BEFORE" } else { b"AFTER" };
                    let want = if model.is_empty() {
                        0
                    } else {
                        match model.iter().position(|x| *x == val(p)) {
                            None => -1,
                            Some(i) => {
                                model.insert(if before { i } else { i + 1 }, val(v));
                                model.len() as i64
                            }
                        }
                    };
                    prop_assert_eq!(h.run(&[b"LINSERT", b"l", where_, &val(p), &val(v)]), Reply::Int(want));
                }
            }
            let all: Vec<Reply> = model.iter().map(|v| Reply::bulk(v)).collect();
            prop_assert_eq!(h.run(&[b"LRANGE", b"l", b"0", b"-1"]), Reply::Array(all));
            prop_assert_eq!(h.run(&[b"LLEN", b"l"]), Reply::Int(model.len() as i64));
            let part: Vec<Reply> = match model_range(model.len(), ra, rb) {
                Some((x, y)) => model.range(x..=y).map(|v| Reply::bulk(v)).collect(),
                None => vec![],
            };
            prop_assert_eq!(h.run(&[b"LRANGE", b"l", ra.to_string().as_bytes(), rb.to_string().as_bytes()]), Reply::Array(part));
            h.check_streamed(&[b"LRANGE", b"l", ra.to_string().as_bytes(), rb.to_string().as_bytes()]);
            h.check_streamed(&[b"LRANGE", b"l", b"0", b"-1"]);
            prop_assert_eq!(h.run(&[b"EXISTS", b"l"]), Reply::Int(i64::from(!model.is_empty())));
        }
    }
}

#[test]
fn a_deleted_big_collection_is_collected_in_bounded_steps() {
    let h = Harness::new();
    for kind in ["hash", "set", "zset", "list"] {
        for i in 0..600u32 {
            let m = format!("member-{i:05}");
            let r = match kind {
                "hash" => h.run(&[b"HSET", b"big", m.as_bytes(), b"v"]),
                "set" => h.run(&[b"SADD", b"big", m.as_bytes()]),
                "zset" => h.run(&[b"ZADD", b"big", i.to_string().as_bytes(), m.as_bytes()]),
                _ => h.run(&[b"RPUSH", b"big", m.as_bytes()]),
            };
            assert!(matches!(r, Reply::Int(_)), "{kind}: {r:?}");
        }
        assert_eq!(h.run(&[b"TYPE", b"big"]), Reply::Status(kind.into()));
        assert_eq!(h.run(&[b"DEL", b"big"]), Reply::Int(1));
        // The key is gone at once; its members are not yet.
        assert_eq!(h.run(&[b"EXISTS", b"big"]), Reply::Int(0));
        assert!(
            h.data_entries() >= 600,
            "{kind}: members were deleted inline"
        );
        // A new collection under the same key never shows the old members.
        assert_eq!(h.run(&[b"SADD", b"big", b"fresh"]), Reply::Int(1));
        assert_eq!(
            h.run(&[b"SMEMBERS", b"big"]),
            Reply::Set(bulks(&[b"fresh"]))
        );
        let mut steps = 0;
        while h.sweep() > 0 {
            steps += 1;
            assert!(steps < 100, "the collector does not finish");
        }
        assert!(steps >= 3, "{kind}: {steps} steps for 600+ members");
        assert_eq!(
            h.run(&[b"SMEMBERS", b"big"]),
            Reply::Set(bulks(&[b"fresh"]))
        );
        assert_eq!(h.run(&[b"DEL", b"big"]), Reply::Int(1));
        assert_eq!(h.data_entries(), 0, "{kind}: entries left behind");
    }
}

#[test]
fn expired_keys_are_hidden_then_swept() {
    let mut h = Harness::new();
    assert_eq!(h.run(&[b"SET", b"s", b"v", b"PX", b"500"]), Reply::Ok);
    assert_eq!(h.run(&[b"HSET", b"h", b"f", b"v"]), Reply::Int(1));
    assert_eq!(h.run(&[b"PEXPIRE", b"h", b"800"]), Reply::Int(1));
    assert_eq!(h.run(&[b"SET", b"keep", b"v"]), Reply::Ok);
    assert_eq!(h.run(&[b"PTTL", b"s"]), Reply::Int(500));
    assert_eq!(h.run(&[b"TTL", b"h"]), Reply::Int(1));
    h.now += 600;
    // Past its deadline a key is absent to reads, before any delete.
    assert_eq!(h.run(&[b"GET", b"s"]), Reply::Null);
    assert_eq!(h.run(&[b"TTL", b"s"]), Reply::Int(-2));
    assert_eq!(h.run(&[b"HGET", b"h", b"f"]), Reply::bulk(b"v"));
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(3));
    assert_eq!(h.sweep(), 1);
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(2));
    h.now += 300;
    assert_eq!(h.run(&[b"HGET", b"h", b"f"]), Reply::Null);
    // A write to an expired key deletes it first (the lazy half): HSET starts a new hash.
    assert_eq!(h.run(&[b"HSET", b"h", b"g", b"w"]), Reply::Int(1));
    assert_eq!(h.run(&[b"HGETALL", b"h"]), Reply::Map(bulks(&[b"g", b"w"])));
    assert_eq!(h.run(&[b"TTL", b"h"]), Reply::Int(-1));
    assert_eq!(h.sweep(), 0);
    assert_eq!(h.run(&[b"PERSIST", b"keep"]), Reply::Int(0));
    assert_eq!(h.run(&[b"EXPIRE", b"keep", b"-1"]), Reply::Int(1));
    assert_eq!(h.run(&[b"EXISTS", b"keep"]), Reply::Int(0));
    // Only h remains: its metadata and its one field.
    assert_eq!(h.data_entries(), 2);
}

#[test]
fn counts_stay_right_across_flushes_repeats_and_rotations() {
    let h = Harness::new();
    // FLUSHDB after other writes in the same group: the counts start again from zero.
    h.run_group(&[
        &[b"SET", b"a", b"1", b"EX", b"100"],
        &[b"SET", b"b", b"2"],
        &[b"FLUSHDB"],
    ]);
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(0));
    let snap = h.db.read();
    assert_eq!(crate::model::expires_count(&snap).unwrap(), 0);
    drop(snap);
    h.run_group(&[&[b"FLUSHDB"], &[b"SET", b"c", b"3", b"EX", b"100"]]);
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(1));
    assert_eq!(crate::model::expires_count(&h.db.read()).unwrap(), 1);
    // MSETNX naming a key twice creates it once.
    assert_eq!(h.run(&[b"MSETNX", b"x", b"1", b"x", b"2"]), Reply::Int(1));
    assert_eq!(h.run(&[b"GET", b"x"]), Reply::bulk(b"2"));
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(2));
    // LMOVE within one list rotates it and keeps its expiry, even with one item.
    h.run(&[b"RPUSH", b"one", b"a"]);
    h.run(&[b"EXPIRE", b"one", b"100"]);
    assert_eq!(
        h.run(&[b"LMOVE", b"one", b"one", b"LEFT", b"RIGHT"]),
        Reply::bulk(b"a")
    );
    assert_eq!(h.run(&[b"TTL", b"one"]), Reply::Int(100));
    h.run(&[b"RPUSH", b"l", b"a", b"b", b"c"]);
    assert_eq!(
        h.run(&[b"LMOVE", b"l", b"l", b"LEFT", b"RIGHT"]),
        Reply::bulk(b"a")
    );
    assert_eq!(
        h.run(&[b"LRANGE", b"l", b"0", b"-1"]),
        Reply::Array(bulks(&[b"b", b"c", b"a"]))
    );
    assert_eq!(h.run(&[b"RPOPLPUSH", b"l", b"l"]), Reply::bulk(b"a"));
    assert_eq!(
        h.run(&[b"LRANGE", b"l", b"0", b"-1"]),
        Reply::Array(bulks(&[b"a", b"b", b"c"]))
    );
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(4));
    // Replies Redis gives: TTL to the nearest second, GETRANGE's clamped end, a null array.
    h.run(&[b"SET", b"t", b"v", b"PX", b"1400"]);
    assert_eq!(h.run(&[b"TTL", b"t"]), Reply::Int(1));
    h.run(&[b"SET", b"s", b"hello"]);
    assert_eq!(
        h.run(&[b"GETRANGE", b"s", b"0", b"-100"]),
        Reply::bulk(b"h")
    );
    assert_eq!(
        h.run(&[b"GETRANGE", b"s", b"-3", b"-1"]),
        Reply::bulk(b"llo")
    );
    assert_eq!(h.run(&[b"GETRANGE", b"s", b"-1", b"-3"]), Reply::bulk(b""));
    assert_eq!(h.run(&[b"LPOP", b"nothing", b"2"]), Reply::NullArray);
}

#[test]
fn writes_that_leave_no_key_still_mark_the_layout() {
    for cmd in [
        &[&b"LPUSHX"[..], b"k", b"a"][..],
        &[b"HINCRBY", b"h", b"f", b"abc"],
        &[b"SINTERSTORE", b"d", b"x", b"y"],
    ] {
        let h = Harness::new();
        h.run(cmd);
        assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(0));
        assert!(
            !crate::model::foreign_layout(&h.db.read()).unwrap(),
            "{:?} left a tree that reads as another layout",
            String::from_utf8_lossy(cmd[0])
        );
    }
}

#[test]
fn a_plain_set_over_any_key_keeps_the_counts_the_expiry_index_and_no_orphans() {
    let mut h = Harness::new();
    let members: Vec<Vec<u8>> = (0..100).map(|i| format!("m{i}").into_bytes()).collect();
    let mut sadd: Vec<&[u8]> = vec![b"SADD", b"big"];
    sadd.extend(members.iter().map(Vec::as_slice));
    h.run(&sadd);
    h.run(&[b"HSET", b"small", b"f", b"v"]);
    h.run(&[b"SET", b"ttl", b"v", b"EX", b"100"]);
    h.run(&[b"SET", b"gone", b"v", b"PX", b"10"]);
    h.now += 20;
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(4));
    // SET without options and MSET overwrite a big set, a small hash, a key with a TTL, an
    // expired key, and make a new one.
    assert_eq!(h.run(&[b"SET", b"big", b"s"]), Reply::Ok);
    assert_eq!(
        h.run(&[b"MSET", b"small", b"s", b"ttl", b"s", b"gone", b"s", b"new", b"s"]),
        Reply::Ok
    );
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(5));
    for k in [&b"big"[..], b"small", b"ttl", b"gone", b"new"] {
        assert_eq!(h.run(&[b"GET", k]), Reply::bulk(b"s"));
        assert_eq!(h.run(&[b"TTL", k]), Reply::Int(-1));
    }
    let snap = h.db.read();
    assert_eq!(crate::model::expires_count(&snap).unwrap(), 0);
    drop(snap);
    // The big set's members go in the background; then only the five strings remain (no
    // member, expiry entry or marker left behind).
    while h.sweep() > 0 {}
    assert_eq!(h.data_entries(), 5);
}

/// One command of a mixed group: collection writes that keep their metadata in the group's
/// cache, and the commands around them that do not (strings, expiry, renames, reads).
fn mixed_cmd() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let k = (0..3u8).prop_map(key);
    let m = (0..4u8).prop_map(|i| format!("m{i}").into_bytes());
    let n = (-3..4i8).prop_map(|i| i.to_string().into_bytes());
    let c = |v: &[&[u8]]| v.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
    prop_oneof![
        3 => (k.clone(), m.clone()).prop_map(move |(k, m)| c(&[b"SADD", &k, &m])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, m)| c(&[b"SREM", &k, &m])),
        3 => (k.clone(), n.clone(), m.clone()).prop_map(move |(k, s, m)| c(&[b"ZADD", &k, &s, &m])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, m)| c(&[b"ZREM", &k, &m])),
        1 => k.clone().prop_map(move |k| c(&[b"ZPOPMIN", &k])),
        1 => (k.clone(), n.clone(), m.clone()).prop_map(move |(k, s, m)| c(&[b"ZINCRBY", &k, &s, &m])),
        2 => (k.clone(), m.clone()).prop_map(move |(k, m)| c(&[b"LPUSH", &k, &m])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, m)| c(&[b"RPUSHX", &k, &m])),
        1 => k.clone().prop_map(move |k| c(&[b"RPOP", &k])),
        1 => k.clone().prop_map(move |k| c(&[b"LPOP", &k, b"2"])),
        2 => (k.clone(), m.clone(), n.clone()).prop_map(move |(k, f, v)| c(&[b"HSET", &k, &f, &v])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, f)| c(&[b"HDEL", &k, &f])),
        1 => (k.clone(), m.clone(), n.clone()).prop_map(move |(k, f, v)| c(&[b"HINCRBY", &k, &f, &v])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, v)| c(&[b"SET", &k, &v])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, v)| c(&[b"SET", &k, &v, b"PX", b"2"])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, v)| c(&[b"SETNX", &k, &v])),
        1 => (k.clone(), m.clone()).prop_map(move |(k, v)| c(&[b"APPEND", &k, &v])),
        1 => k.clone().prop_map(move |k| c(&[b"INCR", &k])),
        1 => k.clone().prop_map(move |k| c(&[b"GETDEL", &k])),
        1 => (k.clone(), k.clone(), m.clone()).prop_map(move |(a, b, v)| c(&[b"MSET", &a, &v, &b, &v])),
        1 => Just(c(&[b"FLUSHDB"])),
        1 => (k.clone(), k.clone()).prop_map(move |(a, b)| c(&[b"SUNIONSTORE", &a, &b, &a])),
        1 => k.clone().prop_map(move |k| c(&[b"DEL", &k])),
        1 => k.clone().prop_map(move |k| c(&[b"PEXPIRE", &k, b"5"])),
        1 => k.clone().prop_map(move |k| c(&[b"EXPIRE", &k, b"100"])),
        1 => k.clone().prop_map(move |k| c(&[b"PERSIST", &k])),
        1 => (k.clone(), k.clone()).prop_map(move |(a, b)| c(&[b"RENAME", &a, &b])),
        1 => (k.clone(), k.clone(), m.clone()).prop_map(move |(a, b, m)| c(&[b"SMOVE", &a, &b, &m])),
        1 => k.clone().prop_map(move |k| c(&[b"TYPE", &k])),
        1 => k.clone().prop_map(move |k| c(&[b"SCARD", &k])),
        1 => k.clone().prop_map(move |k| c(&[b"ZCARD", &k])),
        1 => k.clone().prop_map(move |k| c(&[b"LLEN", &k])),
        1 => k.clone().prop_map(move |k| c(&[b"GET", &k])),
        1 => k.prop_map(move |k| c(&[b"HLEN", &k])),
        1 => Just(c(&[b"DBSIZE"])),
    ]
}

impl Harness {
    /// Every engine entry, internal records included.
    fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        self.db
            .read()
            .visit(Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
                all.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        all
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The write-back cache of collections' metadata is invisible: any mix of commands
    /// applied in groups (as concurrent connections' writes are) gives the replies and
    /// leaves the very entries that the same commands give one transaction each — with the
    /// clock moving between groups, so cached metadata also expires.
    #[test]
    fn grouped_commands_match_one_by_one(
        cmds in prop::collection::vec(mixed_cmd(), 1..80),
        cuts in prop::collection::vec(1..12usize, 1..20),
    ) {
        let mut alone = Harness::new();
        let mut grouped = Harness::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < cmds.len() {
            let end = (at + cut.next().copied().unwrap_or(1)).min(cmds.len());
            let group: Vec<Vec<&[u8]>> = cmds[at..end]
                .iter()
                .map(|c| c.iter().map(Vec::as_slice).collect())
                .collect();
            let refs: Vec<&[&[u8]]> = group.iter().map(Vec::as_slice).collect();
            let want: Vec<Reply> = refs
                .iter()
                .map(|c| {
                    let args: Vec<Bytes> = c.iter().map(|a| Bytes::copy_from_slice(a)).collect();
                    alone.write(&args)
                })
                .collect();
            let got = grouped.run_group(&refs);
            prop_assert_eq!(&got, &want, "group {:?}", &cmds[at..end]);
            alone.now += 3;
            grouped.now += 3;
            at = end;
        }
        prop_assert_eq!(grouped.dump(), alone.dump());
    }
}

#[test]
fn incr_in_one_descent_keeps_redis_semantics() {
    let mut h = Harness::new();
    // A new key, a live integer with a TTL (kept), then the cases the one-descent path
    // hands to the general one: an expired key, another type, not an integer, an overflow.
    assert_eq!(h.run(&[b"INCR", b"n"]), Reply::Int(1));
    h.run(&[b"SET", b"t", b"41", b"EX", b"100"]);
    assert_eq!(h.run(&[b"INCRBY", b"t", b"1"]), Reply::Int(42));
    assert_eq!(h.run(&[b"TTL", b"t"]), Reply::Int(100));
    h.run(&[b"SET", b"gone", b"7", b"PX", b"10"]);
    h.now += 20;
    assert_eq!(h.run(&[b"INCR", b"gone"]), Reply::Int(1));
    assert_eq!(h.run(&[b"TTL", b"gone"]), Reply::Int(-1));
    h.run(&[b"SADD", b"s", b"a"]);
    assert!(matches!(h.run(&[b"INCR", b"s"]), Reply::Error(e) if e.starts_with("WRONGTYPE")));
    h.run(&[b"SET", b"x", b"abc"]);
    assert!(matches!(h.run(&[b"INCR", b"x"]), Reply::Error(e) if e.contains("not an integer")));
    h.run(&[b"SET", b"max", i64::MAX.to_string().as_bytes()]);
    assert!(matches!(h.run(&[b"INCR", b"max"]), Reply::Error(e) if e.contains("overflow")));
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(6));
    assert_eq!(crate::model::expires_count(&h.db.read()).unwrap(), 1);
    // In one group: a set made earlier in the group (its metadata still in the group's
    // cache) is another type for INCR; a key INCR creates counts once.
    let got = h.run_group(&[
        &[b"SADD", b"fresh", b"a"],
        &[b"INCR", b"fresh"],
        &[b"INCR", b"c"],
        &[b"INCR", b"c"],
        &[b"DBSIZE"],
    ]);
    assert!(
        matches!(&got[1], Reply::Error(e) if e.starts_with("WRONGTYPE")),
        "{got:?}"
    );
    assert_eq!(got[2..], [Reply::Int(1), Reply::Int(2), Reply::Int(8)]);
    assert_eq!(h.run(&[b"DBSIZE"]), Reply::Int(8));
}

#[test]
fn a_group_over_more_keys_than_the_cache_holds_matches_one_by_one() {
    // 40 collections of four types, each written twice and read once in one group: the
    // metadata cache (32 keys) fills, flushes and fills again mid-group.
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    for round in [&b"a"[..], b"b"] {
        for i in 0..40u8 {
            let k = format!("c{i}").into_bytes();
            let c: Vec<&[u8]> = match i % 4 {
                0 => vec![b"SADD", &k, round],
                1 => vec![b"ZADD", &k, b"1", round],
                2 => vec![b"RPUSH", &k, round],
                _ => vec![b"HSET", &k, round, b"v"],
            };
            cmds.push(c.into_iter().map(<[u8]>::to_vec).collect());
        }
    }
    for i in 0..40u8 {
        cmds.push(vec![b"TYPE".to_vec(), format!("c{i}").into_bytes()]);
    }
    cmds.push(vec![b"DBSIZE".to_vec()]);
    let alone = Harness::new();
    let grouped = Harness::new();
    let want: Vec<Reply> = cmds
        .iter()
        .map(|c| {
            alone.write(
                &c.iter()
                    .map(|a| Bytes::copy_from_slice(a))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let refs: Vec<Vec<&[u8]>> = cmds
        .iter()
        .map(|c| c.iter().map(Vec::as_slice).collect())
        .collect();
    let group: Vec<&[&[u8]]> = refs.iter().map(Vec::as_slice).collect();
    assert_eq!(grouped.run_group(&group), want);
    assert_eq!(want.last(), Some(&Reply::Int(40)));
    assert_eq!(grouped.dump(), alone.dump());
}
