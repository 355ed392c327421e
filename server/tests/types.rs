//! The Redis data model on real processes, through the `redis` crate: every type replicated
//! page for page (equal DIGESTs), carried by a base backup and a restart; expiry on a
//! primary, on a replica whose primary is stopped, and on a promoted replica; WATCH; blocking
//! pops; PUBLISH.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{caught_up, info, info_section, wait_for, Node};
use redis::{cmd, Commands};

fn digest(c: &mut redis::Connection) -> String {
    cmd("DIGEST").query(c).unwrap()
}

/// What a client sees of every type: the same on every node.
#[derive(Debug, PartialEq)]
struct View {
    s: Option<String>,
    h: BTreeMap<String, String>,
    set: BTreeSet<String>,
    z: Vec<(String, f64)>,
    l: Vec<String>,
    ttl_set: bool,
    dbsize: i64,
}

fn view(c: &mut redis::Connection) -> View {
    let ttl: i64 = c.ttl("session").unwrap();
    View {
        s: c.get("greeting").unwrap(),
        h: c.hgetall("user:1").unwrap(),
        set: c.smembers("tags").unwrap(),
        z: c.zrange_withscores("board", 0, -1).unwrap(),
        l: c.lrange("feed", 0, -1).unwrap(),
        ttl_set: ttl > 0,
        dbsize: cmd("DBSIZE").query(c).unwrap(),
    }
}

fn fill(c: &mut redis::Connection) {
    let _: () = c.set("greeting", "hello").unwrap();
    let _: () = c.set_ex("session", "token", 3600).unwrap();
    let _: () = c
        .hset_multiple(
            "user:1",
            &[("name", "ann"), ("plan", "pro"), ("visits", "1")],
        )
        .unwrap();
    let _: i64 = c.hincr("user:1", "visits", 41).unwrap();
    let _: () = c.sadd("tags", &["a", "b", "c", "d"]).unwrap();
    let _: () = c.srem("tags", "b").unwrap();
    let _: () = c
        .zadd_multiple("board", &[(10.5, "ann"), (3.0, "bob"), (7.25, "cy")])
        .unwrap();
    let _: f64 = c.zincr("board", "bob", 10).unwrap();
    let _: () = c.rpush("feed", &["e1", "e2", "e3"]).unwrap();
    let _: () = c.lpush("feed", "e0").unwrap();
    let _: Option<String> = c.rpop("feed", None).unwrap();
    // A collection big enough to be collected in the background once deleted.
    let members: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();
    let _: () = c.sadd("doomed", &members).unwrap();
    let _: () = c.del("doomed").unwrap();
}

#[test]
fn every_type_replicates_page_for_page_and_survives_a_restart_and_a_base_backup() {
    let (dp, d1, d2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    fill(&mut p);
    let want = View {
        s: Some("hello".into()),
        h: [("name", "ann"), ("plan", "pro"), ("visits", "42")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        set: ["a", "c", "d"].iter().map(|s| s.to_string()).collect(),
        z: vec![
            ("cy".into(), 7.25),
            ("ann".into(), 10.5),
            ("bob".into(), 13.0),
        ],
        l: vec!["e0".into(), "e1".into(), "e2".into()],
        ttl_set: true,
        dbsize: 6,
    };
    assert_eq!(view(&mut p), want);
    // The background collector removes the deleted set's members, and the replica follows.
    wait_for(20, "the deleted set's members to be collected", || {
        info_section(&mut p, "stats")["collected_members"] == "500"
    });
    let mut c1 = r1.client();
    wait_for(20, "r1 to catch up", || caught_up(&mut p, &mut c1));
    assert_eq!(view(&mut c1), want);
    assert_eq!(digest(&mut c1), digest(&mut p));
    // A new replica seeded by a base backup holds every type, TTLs included.
    let r2 = Node::start(d2.path(), &["--replicaof", &addr, "--name", "r2"]);
    let mut c2 = r2.client();
    wait_for(30, "r2 to seed and catch up", || {
        caught_up(&mut p, &mut c2) && cmd("GET").arg("greeting").query::<String>(&mut c2).is_ok()
    });
    assert_eq!(view(&mut c2), want);
    assert_eq!(digest(&mut c2), digest(&mut p));
    // Killed and started again, the primary has all of it.
    drop((c1, c2, r1, r2));
    drop(p);
    primary.kill();
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let mut p = primary.client();
    assert_eq!(view(&mut p), want);
    let pttl: i64 = p.pttl("session").unwrap();
    assert!(pttl > 3_500_000 && pttl <= 3_600_000, "{pttl}");
    let ks = info_section(&mut p, "keyspace");
    assert_eq!(ks["db0"], "keys=6,expires=1,avg_ttl=0");
}

#[test]
fn a_replica_hides_expired_keys_while_its_primary_is_stopped_and_a_promoted_one_expires_them() {
    let (dp, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    let mut c1 = r1.client();
    let set_at = Instant::now();
    let _: () = p.pset_ex("soon", "v", 1500).unwrap();
    let _: () = p.hset("hsoon", "f", "v").unwrap();
    let _: () = p.pexpire("hsoon", 1500).unwrap();
    let _: () = p.set_ex("later", "v", 3600).unwrap();
    let _: () = p.set("forever", "v").unwrap();
    wait_for(20, "r1 to catch up", || caught_up(&mut p, &mut c1));
    assert_eq!(
        c1.get::<_, Option<String>>("soon").unwrap().as_deref(),
        Some("v")
    );
    // The primary stops: no delete can reach the replica from here on.
    primary.signal("STOP");
    let lsn_before = info(&mut c1)["apply_lsn"].clone();
    // (hsoon's PEXPIRE ran a moment after soon's SET: its deadline is that much later.)
    wait_for(10, "the deadlines to pass on the replica", || {
        c1.get::<_, Option<String>>("soon").unwrap().is_none()
            && c1
                .hget::<_, _, Option<String>>("hsoon", "f")
                .unwrap()
                .is_none()
    });
    assert!(
        set_at.elapsed() >= Duration::from_millis(1500),
        "hidden too early"
    );
    assert_eq!(c1.hget::<_, _, Option<String>>("hsoon", "f").unwrap(), None);
    assert_eq!(c1.exists::<_, i64>("soon").unwrap(), 0);
    assert_eq!(c1.ttl::<_, i64>("soon").unwrap(), -2);
    assert_eq!(
        c1.get::<_, Option<String>>("later").unwrap().as_deref(),
        Some("v")
    );
    // Nothing arrived: the replica hid them by itself; the keys are still in its pages.
    assert_eq!(info(&mut c1)["apply_lsn"], lsn_before);
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c1).unwrap(), 4);
    // The primary is lost; the replica is promoted and deletes the expired keys itself.
    primary.kill();
    let _: () = cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut c1)
        .unwrap();
    wait_for(
        20,
        "the promoted replica to delete the expired keys",
        || cmd("DBSIZE").query::<i64>(&mut c1).unwrap() == 2,
    );
    assert_eq!(info_section(&mut c1, "stats")["expired_keys"], "2");
    let ttl: i64 = c1.ttl("later").unwrap();
    assert!(ttl > 3500, "{ttl}");
}

#[test]
fn the_primary_deletes_expired_keys_in_the_background_through_the_wal() {
    let (dp, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    let mut c1 = r1.client();
    for i in 0..300 {
        let _: () = p.pset_ex(format!("k{i}"), "v", 300).unwrap();
    }
    let _: () = p.set("stays", "v").unwrap();
    // Nobody reads them: the sweep alone deletes them, and the deletes replicate.
    wait_for(20, "the sweep to delete 300 keys", || {
        cmd("DBSIZE").query::<i64>(&mut p).unwrap() == 1
    });
    wait_for(20, "the replica to apply the deletes", || {
        caught_up(&mut p, &mut c1)
    });
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c1).unwrap(), 1);
    assert_eq!(digest(&mut c1), digest(&mut p));
    assert_eq!(info_section(&mut p, "stats")["expired_keys"], "300");
}

#[test]
fn watch_aborts_exec_when_another_connection_changes_or_expiry_removes_a_key() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &[]);
    let mut a = node.client();
    let mut b = node.client();
    let exec = |c: &mut redis::Connection| -> Option<Vec<String>> {
        let _: () = cmd("MULTI").query(c).unwrap();
        let _: () = cmd("SET").arg("k").arg("from-a").query(c).unwrap();
        let _: () = cmd("GET").arg("k").query(c).unwrap();
        cmd("EXEC").query(c).unwrap()
    };
    // Untouched: EXEC runs.
    let _: () = a.set("k", "0").unwrap();
    let _: () = cmd("WATCH").arg("k").query(&mut a).unwrap();
    assert_eq!(exec(&mut a), Some(vec!["OK".into(), "from-a".into()]));
    // Another connection writes the key: EXEC answers nil and runs nothing.
    let _: () = cmd("WATCH").arg("k").query(&mut a).unwrap();
    let _: () = b.set("k", "from-b").unwrap();
    assert_eq!(exec(&mut a), None);
    assert_eq!(b.get::<_, String>("k").unwrap(), "from-b");
    // A DEL counts too.
    let _: () = cmd("WATCH").arg("k").query(&mut a).unwrap();
    let _: () = b.del("k").unwrap();
    assert_eq!(exec(&mut a), None);
    // UNWATCH forgets it.
    let _: () = cmd("WATCH").arg("k").query(&mut a).unwrap();
    let _: () = b.set("k", "x").unwrap();
    let _: () = cmd("UNWATCH").query(&mut a).unwrap();
    assert!(exec(&mut a).is_some());
    // A watched key that expires before EXEC aborts it.
    let _: () = a.pset_ex("k", "short", 200).unwrap();
    let _: () = cmd("WATCH").arg("k").query(&mut a).unwrap();
    wait_for(10, "the key to expire", || {
        b.get::<_, Option<String>>("k").unwrap().is_none()
    });
    assert_eq!(exec(&mut a), None);
    // The redis crate's optimistic-locking helper retries until it wins.
    let _: () = a.set("counter", 0).unwrap();
    let mut tries = 0;
    let (n,): (i64,) = redis::transaction(&mut a, &["counter"], |con, pipe| {
        tries += 1;
        let v: i64 = con.get("counter")?;
        if tries == 1 {
            let _: () = b.set("counter", 100).unwrap();
        }
        pipe.set("counter", v + 1)
            .ignore()
            .get("counter")
            .query(con)
    })
    .unwrap();
    assert_eq!((n, tries), (101, 2));
}

#[test]
fn blocking_pops_wake_on_a_push_time_out_and_leave_the_server_free() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &[]);
    let url = node.url();
    let blocked = |secs: f64, args: &'static [&'static str]| {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
            let t = Instant::now();
            let mut k = cmd(args[0]);
            for a in &args[1..] {
                k.arg(*a);
            }
            k.arg(secs);
            let r: Option<Vec<String>> = k.query(&mut c).unwrap();
            (r, t.elapsed())
        })
    };
    let mut c = node.client();
    let blocked_clients =
        |c: &mut redis::Connection| info_section(c, "clients")["blocked_clients"].clone();
    // A push from another connection wakes the blocked pop.
    let waiter = blocked(10.0, &["BLPOP", "jobs", "other"]);
    wait_for(10, "BLPOP to block", || blocked_clients(&mut c) == "1");
    // The server answers everyone else meanwhile.
    assert_eq!(cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
    let _: () = c.rpush("other", "job-1").unwrap();
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r, Some(vec!["other".to_string(), "job-1".to_string()]));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        c.exists::<_, i64>("other").unwrap(),
        0,
        "popped, so deleted"
    );
    // Nothing comes: nil at the timeout.
    let waiter = blocked(0.3, &["BRPOP", "empty"]);
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r, None);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // Two waiters, two pushes: each gets one item, in the order pushed.
    let w1 = blocked(10.0, &["BLPOP", "q"]);
    let w2 = blocked(10.0, &["BLPOP", "q"]);
    wait_for(10, "both to block", || blocked_clients(&mut c) == "2");
    let _: () = c.rpush("q", &["x", "y"]).unwrap();
    let mut got: Vec<String> = [w1.join().unwrap().0, w2.join().unwrap().0]
        .into_iter()
        .map(|r| r.unwrap()[1].clone())
        .collect();
    got.sort();
    assert_eq!(got, vec!["x".to_string(), "y".to_string()]);
    // BLMOVE moves the item atomically once it comes.
    let mover = {
        let url = node.url();
        std::thread::spawn(move || {
            let mut m = redis::Client::open(url).unwrap().get_connection().unwrap();
            cmd("BLMOVE")
                .arg("src")
                .arg("dst")
                .arg("LEFT")
                .arg("RIGHT")
                .arg(10)
                .query::<Option<String>>(&mut m)
                .unwrap()
        })
    };
    wait_for(10, "BLMOVE to block", || blocked_clients(&mut c) == "1");
    let _: () = c.lpush("src", "item").unwrap();
    assert_eq!(mover.join().unwrap().as_deref(), Some("item"));
    assert_eq!(
        c.lrange::<_, Vec<String>>("dst", 0, -1).unwrap(),
        vec!["item"]
    );
    assert_eq!(blocked_clients(&mut c), "0");
    // A client that goes away while blocked is forgotten.
    {
        let mut gone = node.client();
        let _ = gone.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = cmd("BLPOP")
            .arg("never")
            .arg(0)
            .query::<Option<Vec<String>>>(&mut gone);
    }
    wait_for(10, "the closed client to stop blocking", || {
        blocked_clients(&mut c) == "0"
    });
    // Requests pipelined behind a blocking pop wait for it, as in Redis: the LPUSH sent
    // after the BLPOP does not feed it.
    use std::io::{Read, Write};
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    raw.write_all(b"BLPOP piped 0\r\nLPUSH piped mine\r\n")
        .unwrap();
    wait_for(10, "the pipelined BLPOP to block", || {
        blocked_clients(&mut c) == "1"
    });
    assert_eq!(
        c.llen::<_, i64>("piped").unwrap(),
        0,
        "the LPUSH ran before the BLPOP"
    );
    let _: () = c.rpush("piped", "theirs").unwrap();
    let want = b"*2\r\n$5\r\npiped\r\n$6\r\ntheirs\r\n:1\r\n";
    let mut got = vec![0u8; want.len()];
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.read_exact(&mut got).unwrap();
    assert_eq!(got, want.to_vec(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(
        c.lrange::<_, Vec<String>>("piped", 0, -1).unwrap(),
        vec!["mine"]
    );
    // A client that sent more and then closed is forgotten too; a later push is not lost.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    raw.write_all(b"BLPOP lost 0\r\nPING\r\n").unwrap();
    wait_for(10, "the BLPOP to block", || blocked_clients(&mut c) == "1");
    drop(raw);
    wait_for(10, "the closed client to stop blocking", || {
        blocked_clients(&mut c) == "0"
    });
    let _: () = c.rpush("lost", "kept").unwrap();
    assert_eq!(
        c.lrange::<_, Vec<String>>("lost", 0, -1).unwrap(),
        vec!["kept"]
    );
}

#[test]
fn blocking_pops_on_a_replica_wait_for_replicated_pushes_and_take_the_item_once() {
    let (dp, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let replica = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    let mut r = replica.client();
    let blocked_on = |c: &mut redis::Connection| {
        info_section(c, "clients")["blocked_clients"]
            .parse::<u32>()
            .unwrap()
    };
    let pop = |url: String, args: Vec<&'static str>, secs: f64| {
        std::thread::spawn(move || {
            let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
            let mut k = cmd(args[0]);
            for a in &args[1..] {
                k.arg(*a);
            }
            k.arg(secs);
            k.query::<redis::Value>(&mut c)
        })
    };
    // A push on the primary reaches the replica, which takes the item on the primary.
    let waiter = pop(replica.url(), vec!["BLPOP", "jobs"], 10.0);
    wait_for(10, "BLPOP to block on the replica", || {
        blocked_on(&mut r) == 1
    });
    let _: () = p.rpush("jobs", "j1").unwrap();
    let got = redis::from_redis_value::<Vec<String>>(&waiter.join().unwrap().unwrap()).unwrap();
    assert_eq!(got, vec!["jobs", "j1"]);
    assert_eq!(
        p.llen::<_, i64>("jobs").unwrap(),
        0,
        "popped on the primary"
    );
    wait_for(20, "the replica to catch up", || caught_up(&mut p, &mut r));
    assert_eq!(r.exists::<_, i64>("jobs").unwrap(), 0);
    // One item, a waiter on each node: exactly one of them gets it.
    let on_replica = pop(replica.url(), vec!["BRPOP", "q"], 3.0);
    let on_primary = pop(primary.url(), vec!["BRPOP", "q"], 3.0);
    wait_for(10, "both to block", || {
        blocked_on(&mut r) == 1 && blocked_on(&mut p) == 1
    });
    let _: () = p.lpush("q", "only").unwrap();
    let results = [on_replica.join().unwrap(), on_primary.join().unwrap()];
    let winners: Vec<Vec<String>> = results
        .iter()
        .filter_map(|v| {
            redis::from_redis_value::<Option<Vec<String>>>(v.as_ref().unwrap()).unwrap()
        })
        .collect();
    assert_eq!(
        winners,
        vec![vec!["q".to_string(), "only".to_string()]],
        "{results:?}"
    );
    // BLMOVE: the move happens on the primary and replicates back.
    let mover = pop(
        replica.url(),
        vec!["BLMOVE", "src", "dst", "LEFT", "RIGHT"],
        10.0,
    );
    wait_for(10, "BLMOVE to block on the replica", || {
        blocked_on(&mut r) == 1
    });
    let _: () = p.rpush("src", "item").unwrap();
    let moved = redis::from_redis_value::<String>(&mover.join().unwrap().unwrap()).unwrap();
    assert_eq!(moved, "item");
    wait_for(20, "the replica to catch up", || caught_up(&mut p, &mut r));
    assert_eq!(
        r.lrange::<_, Vec<String>>("dst", 0, -1).unwrap(),
        vec!["item"]
    );
    assert_eq!(r.exists::<_, i64>("src").unwrap(), 0);
    // A key of another type answers WRONGTYPE, as on the primary.
    let _: () = p.set("text", "v").unwrap();
    wait_for(20, "the replica to catch up", || caught_up(&mut p, &mut r));
    let e = cmd("BLPOP")
        .arg("text")
        .arg(1)
        .query::<redis::Value>(&mut r)
        .unwrap_err();
    assert_eq!(e.code(), Some("WRONGTYPE"), "{e}");
    // Inside MULTI a blocking pop does not block: refused on a replica like any write.
    let e = redis::pipe()
        .atomic()
        .cmd("BLPOP")
        .arg("jobs")
        .arg(1)
        .query::<redis::Value>(&mut r)
        .unwrap_err();
    assert!(
        e.kind() == redis::ErrorKind::ReadOnly || e.code() == Some("EXECABORT"),
        "{e}"
    );
    // An item is there but the primary is gone: an error that says so, not a silent wait.
    let _: () = p.rpush("stranded", "s").unwrap();
    wait_for(20, "the replica to catch up", || caught_up(&mut p, &mut r));
    primary.kill();
    let e = cmd("BLPOP")
        .arg("stranded")
        .arg(5)
        .query::<redis::Value>(&mut r)
        .unwrap_err();
    assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");
    assert!(format!("{e}").contains(&addr), "{e}");
}

#[test]
fn publish_reaches_subscribers() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &[]);
    let client = redis::Client::open(node.url()).unwrap();
    let mut sub = client.get_connection().unwrap();
    let mut c = node.client();
    let mut ps = sub.as_pubsub();
    ps.subscribe("news").unwrap();
    ps.psubscribe("n*").unwrap();
    // One subscription to the channel, one pattern: two receivers.
    let n: i64 = c.publish("news", &b"bin\x00ary"[..]).unwrap();
    assert_eq!(n, 2);
    let m = ps.get_message().unwrap();
    assert_eq!(m.get_channel_name(), "news");
    assert_eq!(m.get_payload_bytes(), b"bin\x00ary");
    let m = ps.get_message().unwrap();
    assert_eq!(m.get_pattern::<String>().unwrap(), "n*");
    assert_eq!(c.publish::<_, _, i64>("other", "x").unwrap(), 0);
}

#[test]
fn scans_page_with_numeric_cursors_through_the_redis_crate() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &[]);
    let mut c = node.client();
    let pairs: Vec<(String, i64)> = (0..250).map(|i| (format!("key:{i}"), i)).collect();
    let _: () = c.mset(&pairs).unwrap();
    let fields: Vec<(String, i64)> = (0..300).map(|i| (format!("f{i}"), i)).collect();
    let _: () = c.hset_multiple("h", &fields).unwrap();
    let members: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let _: () = c.sadd("s", &members).unwrap();
    // The crate parses cursors as integers and pages until 0: every key once.
    let keys: Vec<String> = c.scan_match("key:*").unwrap().collect();
    assert_eq!(keys.len(), 250);
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 250);
    let h: Vec<(String, i64)> = c.hscan("h").unwrap().collect();
    assert_eq!(h.len(), 300);
    let s: BTreeSet<String> = c.sscan("s").unwrap().collect();
    assert_eq!(s.len(), 300);
    // A page of 10 hands out a number; an unknown number is refused, not misread.
    let (cursor, page): (u64, Vec<String>) = cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(10)
        .query(&mut c)
        .unwrap();
    assert!(cursor > 0 && page.len() == 10);
    let err = cmd("SCAN")
        .arg(cursor + 1_000_000)
        .query::<(u64, Vec<String>)>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("invalid cursor"), "{err}");
}

#[test]
fn a_directory_of_raw_keys_from_before_the_data_model_is_refused_not_misread() {
    let d = tempfile::tempdir().unwrap();
    {
        // What an older replidb wrote: user keys straight into the tree.
        let db = storage::Db::open(d.path(), storage::Options::default()).unwrap();
        let mut b = storage::WriteBatch::new();
        b.put("user:1", "ada").put("user:2", "grace");
        db.commit(&b, storage::Durability::Local).unwrap();
        db.close().unwrap();
    }
    let err = match Node::try_start(d.path(), &[]) {
        Ok(_) => panic!("the server started on raw keys"),
        Err(log) => log,
    };
    assert!(err.contains("before replidb's typed data model"), "{err}");
}

/// `args` as one command, its reply as `T`.
fn q<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&str]) -> T {
    let mut k = cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query(c).unwrap()
}

/// Redis 7's answers for the edge cases clients lean on, through the `redis` crate.
#[test]
fn edge_cases_answer_as_redis_7_does() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), &[]);
    let mut c = node.client();
    let raw = |c: &mut redis::Connection, args: &[&str]| -> redis::Value { q(c, args) };
    let strings = |c: &mut redis::Connection, args: &[&str]| -> Vec<String> { q(c, args) };
    // Scores: Redis 7's shortest round-trip text, exponents past 1e17, inf.
    let _: () = c
        .zadd_multiple("z", &[(1.1, "a"), (2.0, "b"), (1e20, "c"), (3.5, "d")])
        .unwrap();
    let _: () = cmd("ZADD")
        .arg("z")
        .arg("-inf")
        .arg("lo")
        .query(&mut c)
        .unwrap();
    let _: () = cmd("ZADD")
        .arg("z")
        .arg("+inf")
        .arg("hi")
        .query(&mut c)
        .unwrap();
    assert_eq!(strings(&mut c, &["ZSCORE", "z", "a"]), vec!["1.1"]);
    assert_eq!(strings(&mut c, &["ZSCORE", "z", "c"]), vec!["1e+20"]);
    assert_eq!(strings(&mut c, &["ZSCORE", "z", "lo"]), vec!["-inf"]);
    assert_eq!(strings(&mut c, &["ZINCRBY", "z", "0.1", "b"]), vec!["2.1"]);
    // Exclusive and infinite bounds, LIMIT, REV.
    assert_eq!(
        strings(&mut c, &["ZRANGEBYSCORE", "z", "(1.1", "3.5"]),
        vec!["b", "d"]
    );
    assert_eq!(
        strings(
            &mut c,
            &["ZRANGE", "z", "+inf", "-inf", "BYSCORE", "REV", "LIMIT", "1", "2"]
        ),
        vec!["c", "d"]
    );
    assert_eq!(
        strings(&mut c, &["ZRANGE", "z", "(-inf", "(+inf", "BYSCORE"]),
        vec!["a", "b", "d", "c"]
    );
    assert_eq!(
        strings(&mut c, &["ZRANGE", "z", "-2", "-1"]),
        vec!["c", "hi"]
    );
    assert_eq!(c.zcount::<_, _, _, i64>("z", "-inf", "+inf").unwrap(), 6);
    assert!(cmd("ZRANGE")
        .arg("z")
        .arg(0)
        .arg(1)
        .arg("LIMIT")
        .arg(0)
        .arg(1)
        .query::<Vec<String>>(&mut c)
        .unwrap_err()
        .to_string()
        .contains("LIMIT is only supported"));
    assert!(cmd("ZADD")
        .arg("z")
        .arg("nan")
        .arg("x")
        .query::<i64>(&mut c)
        .unwrap_err()
        .to_string()
        .contains("not a valid float"));
    // By lex, with equal scores.
    let _: () = c
        .zadd_multiple("lex", &[(0, "apple"), (0, "banana"), (0, "cherry")])
        .unwrap();
    assert_eq!(
        strings(&mut c, &["ZRANGEBYLEX", "lex", "(apple", "+"]),
        vec!["banana", "cherry"]
    );
    assert_eq!(
        strings(
            &mut c,
            &["ZRANGE", "lex", "[cherry", "[banana", "BYLEX", "REV"]
        ),
        vec!["cherry", "banana"]
    );
    // Lists: negative and out-of-range indices clamp; an emptied collection deletes its key.
    let _: () = c.rpush("l", &["a", "b", "c", "d", "e"]).unwrap();
    assert_eq!(
        c.lrange::<_, Vec<String>>("l", -3, -2).unwrap(),
        vec!["c", "d"]
    );
    assert_eq!(
        c.lrange::<_, Vec<String>>("l", -100, 1).unwrap(),
        vec!["a", "b"]
    );
    assert_eq!(
        c.lrange::<_, Vec<String>>("l", 3, 100).unwrap(),
        vec!["d", "e"]
    );
    assert_eq!(
        c.lrange::<_, Vec<String>>("l", 4, 2).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        c.lindex::<_, Option<String>>("l", -1).unwrap().as_deref(),
        Some("e")
    );
    let _: () = c.ltrim("l", 1, -2).unwrap();
    assert_eq!(
        c.lrange::<_, Vec<String>>("l", 0, -1).unwrap(),
        vec!["b", "c", "d"]
    );
    let popped: Vec<String> = cmd("LPOP").arg("l").arg(5).query(&mut c).unwrap();
    assert_eq!(popped, vec!["b", "c", "d"]);
    assert_eq!(c.exists::<_, i64>("l").unwrap(), 0);
    let _: () = c.sadd("s", "only").unwrap();
    let _: () = c.srem("s", "only").unwrap();
    let _: () = c.hset("h", "f", "v").unwrap();
    let _: () = c.hdel("h", "f").unwrap();
    assert_eq!(c.exists::<_, i64>(&["s", "h"]).unwrap(), 0);
    assert_eq!(
        raw(&mut c, &["TYPE", "s"]),
        redis::Value::SimpleString("none".into())
    );
    // Missing keys: empty answers, not errors.
    assert_eq!(
        c.hgetall::<_, BTreeMap<String, String>>("nope")
            .unwrap()
            .len(),
        0
    );
    assert_eq!(c.llen::<_, i64>("nope").unwrap(), 0);
    assert_eq!(c.zrank::<_, _, Option<i64>>("nope", "x").unwrap(), None);
    // Strings: SET's options, GETEX, INCRBYFLOAT's text, GETRANGE's negative indices.
    let _: () = c.set("k", "hello world").unwrap();
    assert_eq!(
        strings(&mut c, &["GETRANGE", "k", "-5", "-1"]),
        vec!["world"]
    );
    let old: Option<String> = cmd("SET")
        .arg("k")
        .arg("v2")
        .arg("GET")
        .arg("EX")
        .arg(100)
        .query(&mut c)
        .unwrap();
    assert_eq!(old.as_deref(), Some("hello world"));
    let _: () = cmd("SET")
        .arg("k")
        .arg("v3")
        .arg("KEEPTTL")
        .query(&mut c)
        .unwrap();
    assert!(c.ttl::<_, i64>("k").unwrap() > 90);
    let _: () = c.set("k", "v4").unwrap();
    assert_eq!(
        c.ttl::<_, i64>("k").unwrap(),
        -1,
        "a plain SET clears the TTL"
    );
    assert_eq!(strings(&mut c, &["INCRBYFLOAT", "f", "10.5"]), vec!["10.5"]);
    assert_eq!(
        strings(&mut c, &["INCRBYFLOAT", "f", "5.0e3"]),
        vec!["5010.5"]
    );
    let v: Option<String> = cmd("GETEX")
        .arg("k")
        .arg("PX")
        .arg(5000)
        .query(&mut c)
        .unwrap();
    assert_eq!(v.as_deref(), Some("v4"));
    assert!(c.pttl::<_, i64>("k").unwrap() > 4000);
    assert_eq!(
        cmd("EXPIRE")
            .arg("k")
            .arg(10)
            .arg("GT")
            .query::<i64>(&mut c)
            .unwrap(),
        1
    );
    assert_eq!(
        cmd("EXPIRE")
            .arg("k")
            .arg(5)
            .arg("GT")
            .query::<i64>(&mut c)
            .unwrap(),
        0
    );
    assert_eq!(
        cmd("EXPIRE")
            .arg("k")
            .arg(5)
            .arg("NX")
            .query::<i64>(&mut c)
            .unwrap(),
        0
    );
    let at: i64 = cmd("EXPIRETIME").arg("k").query(&mut c).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now + 8..=now + 11).contains(&at), "{at} vs {now}");
    assert_eq!(c.persist::<_, i64>("k").unwrap(), 1);
    assert_eq!(c.ttl::<_, i64>("k").unwrap(), -1);
    // DBSIZE inside a transaction counts the transaction's own new keys.
    let before: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    let (_, _, n): ((), (), i64) = redis::pipe()
        .atomic()
        .set("tx:1", 1)
        .set("tx:2", 2)
        .cmd("DBSIZE")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, before + 2);
    // RESP3: a map for HGETALL, doubles for scores.
    let _: redis::Value = cmd("HELLO").arg(3).query(&mut c).unwrap();
    let _: () = c.hset("h3", "f", "v").unwrap();
    assert!(matches!(
        raw(&mut c, &["HGETALL", "h3"]),
        redis::Value::Map(_)
    ));
    assert_eq!(
        raw(&mut c, &["ZSCORE", "z", "d"]),
        redis::Value::Double(3.5)
    );
}
