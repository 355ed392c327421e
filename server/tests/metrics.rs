//! `--metrics-addr`: Prometheus text scraped over HTTP from real processes, parsed, and
//! checked for names, labels, histogram buckets and values that move with load; bad HTTP
//! gets an HTTP error and the node stays up.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{wait_for, Node};
use redis::Commands;

/// The metrics address the node logged at start.
fn metrics_addr(node: &Node) -> String {
    node.early_log
        .iter()
        .find_map(|l| {
            let i = l.find("metrics_addr=")?;
            Some(
                l[i + 13..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect(),
            )
        })
        .unwrap_or_else(|| panic!("no metrics address logged: {:?}", node.early_log))
}

/// Sends `request` raw; returns (status code, body).
fn http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    (code, body.to_string())
}

/// Every sample of a scrape: "name{labels}" → value; and the TYPE of each family.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series}"))
    }
}

fn scrape(addr: &str) -> Scrape {
    let (code, body) = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n",
    );
    assert_eq!(code, 200, "{body}");
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').expect("TYPE name kind");
            types.insert(name.to_string(), t.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
            };
            assert!(
                samples.insert(series.to_string(), v).is_none(),
                "{series} twice"
            );
        }
    }
    Scrape { samples, types }
}

#[test]
fn metrics_are_scraped_parsed_and_move_with_load() {
    let (dp, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(dp.path(), &["--name", "p", "--metrics-addr", "127.0.0.1:0"]);
    let paddr = format!("127.0.0.1:{}", primary.port);
    let replica = Node::start(
        dr.path(),
        &[
            "--replicaof",
            &paddr,
            "--name",
            "r1",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let (pm, rm) = (metrics_addr(&primary), metrics_addr(&replica));
    let before = scrape(&pm);
    // The names the SPEC promises, with their types.
    for (name, kind) in [
        ("replidb_up", "gauge"),
        ("replidb_is_primary", "gauge"),
        ("replidb_epoch", "gauge"),
        ("replidb_flush_lsn", "gauge"),
        ("replidb_commits_total", "counter"),
        ("replidb_commit_duration_seconds", "histogram"),
        ("replidb_connected_replicas", "gauge"),
        ("replidb_replica_lag_bytes", "gauge"),
        ("replidb_replica_lag_seconds", "gauge"),
        ("replidb_pages_repaired_total", "counter"),
        ("replidb_failovers_total", "counter"),
        ("replidb_leaf_repacks_total", "counter"),
        ("replidb_leaf_repacks_paused_total", "counter"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    assert_eq!(before.get("replidb_up"), 1.0);
    assert_eq!(before.get("replidb_is_primary"), 1.0);
    // Load: 200 writes at the default level (local), then 100 more.
    let mut c = primary.client();
    for i in 0..200 {
        let _: () = c.set(format!("k{i}"), "v").unwrap();
    }
    let _: () = c.hset("h", "f", "v").unwrap();
    wait_for(20, "the replica to be counted and caught up", || {
        let s = scrape(&pm);
        s.get("replidb_connected_replicas") == 1.0
            && s.get("replidb_replica_lag_bytes{replica=\"r1\"}") == 0.0
    });
    let after = scrape(&pm);
    let local = |s: &Scrape, what: &str| {
        s.get(&format!(
            "replidb_commit_duration_seconds_{what}{{level=\"local\"}}"
        ))
    };
    assert!(
        after.get("replidb_commits_total") >= before.get("replidb_commits_total") + 201.0,
        "commits did not move"
    );
    assert!(local(&after, "count") >= local(&before, "count") + 201.0);
    assert!(local(&after, "sum") > local(&before, "sum"));
    assert!(after.get("replidb_flush_lsn") > before.get("replidb_flush_lsn"));
    assert_eq!(after.get("replidb_keys"), 201.0);
    // Buckets are cumulative, end at +Inf with the count, and other levels are there too.
    let buckets: Vec<f64> = after
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("replidb_commit_duration_seconds_bucket{level=\"local\""))
        .map(|(_, v)| *v)
        .collect();
    let (bounds, last) = (buckets.len(), buckets.iter().copied().fold(0.0, f64::max));
    assert!(bounds >= 10, "{bounds} buckets");
    assert_eq!(
        after.get("replidb_commit_duration_seconds_bucket{level=\"local\",le=\"+Inf\"}"),
        local(&after, "count")
    );
    let le = |b: &str| {
        after.get(&format!(
            "replidb_commit_duration_seconds_bucket{{level=\"local\",le=\"{b}\"}}"
        ))
    };
    assert!(le("0.001") <= le("0.01") && le("0.01") <= le("10") && le("10") <= last);
    assert_eq!(local(&after, "count"), last);
    assert!(after
        .samples
        .contains_key("replidb_commit_duration_seconds_count{level=\"remote_apply\"}"));
    // The replica reports its own side.
    let r = scrape(&rm);
    assert_eq!(r.get("replidb_is_primary"), 0.0);
    assert_eq!(r.get("replidb_primary_link_up"), 1.0);
    assert!(r.get("replidb_replay_lag_bytes") >= 0.0);
    assert_eq!(r.get("replidb_epoch"), after.get("replidb_epoch"));
    // Checkpoints are counted and timed; the WAL kept on disk is reported.
    let _: () = redis::cmd("CHECKPOINT").query(&mut c).unwrap();
    let ck = scrape(&pm);
    assert!(ck.get("replidb_checkpoints_total") > after.get("replidb_checkpoints_total"));
    assert!(ck.get("replidb_checkpoint_duration_seconds_total") > 0.0);
    assert!(ck.get("replidb_last_checkpoint_duration_seconds") > 0.0);
    assert!(ck.get("replidb_wal_retained_bytes") >= 0.0);
    assert_eq!(r.get("replidb_loading_remaining_bytes"), 0.0);
    // Errors are counted by kind.
    let wrongtype = |s: &Scrape| s.get("replidb_errors_total{kind=\"WRONGTYPE\"}");
    let before_err = wrongtype(&scrape(&pm));
    let _ = redis::cmd("LPUSH")
        .arg("h")
        .arg("x")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert_eq!(wrongtype(&scrape(&pm)), before_err + 1.0);
    let mut rc = replica.client();
    let _ = redis::cmd("SET")
        .arg("x")
        .arg("y")
        .query::<()>(&mut rc)
        .unwrap_err();
    assert!(scrape(&rm).get("replidb_errors_total{kind=\"READONLY\"}") >= 1.0);
    // Every metric the shipped alert rules and dashboard use is one a node serves (the
    // cluster's only on a cluster member).
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring");
    let served: std::collections::HashSet<String> = [scrape(&pm), scrape(&rm)]
        .iter()
        .flat_map(|s| s.types.keys().cloned().collect::<Vec<_>>())
        .collect();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(docs.join(file)).unwrap();
        let mut names = 0;
        for (i, _) in text.match_indices("replidb_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_string();
            let family = if served.contains(&name) {
                name.clone()
            } else {
                family
            };
            let cluster_only = matches!(
                family.as_str(),
                "replidb_etcd_up" | "replidb_lease_remaining_seconds"
            );
            if name == "replidb_" || name.starts_with("replidb_overview") {
                continue;
            }
            names += 1;
            assert!(
                served.contains(&family)
                    || served.contains(&format!("{family}_total"))
                    || cluster_only,
                "{file} uses {name}, which no node serves"
            );
        }
        assert!(names > 10, "{file}: {names} metric names");
    }
    // HTTP that is not a scrape gets an HTTP answer; garbage a 400; the node stays up.
    assert_eq!(http(&pm, b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&pm, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(&pm, b"\x00\x01garbage\r\n\r\n").0, 400);
    let (code, body) = http(&pm, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""));
    assert_eq!(scrape(&pm).get("replidb_up"), 1.0);
    let _: () = c.set("still", "up").unwrap();
}

#[test]
fn a_metrics_address_that_cannot_be_bound_stops_the_start() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let d = tempfile::tempdir().unwrap();
    let err = match Node::try_start(d.path(), &["--metrics-addr", &taken]) {
        Ok(_) => panic!("started with --metrics-addr {taken} taken"),
        Err(log) => log,
    };
    assert!(
        err.contains("--metrics-addr") && err.contains(&taken),
        "{err}"
    );
}
