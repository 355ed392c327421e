//! `replidb bench` end to end: its own cluster, the JSON rows, and the delaying relay.

use std::process::Command;

/// Runs `replidb bench ARGS --json` and returns its rows as (mode, clients, commits/s, p50).
fn bench(args: &[&str]) -> Vec<(String, u64, f64, u64)> {
    let out = Command::new(env!("CARGO_BIN_EXE_replidb"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run replidb bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "bench failed:\n{stderr}");
    assert!(
        stderr.contains("commits/s"),
        "a progress line while it runs:\n{stderr}"
    );
    assert!(
        stderr.contains("sync-standbys 'ANY 1 (r1, r2)'"),
        "the server configuration is printed:\n{stderr}"
    );
    // One JSON array of flat objects; pick the fields without a JSON library.
    let body = stdout.trim();
    assert!(body.starts_with('[') && body.ends_with(']'), "{body}");
    let field = |obj: &str, k: &str| -> String {
        let i = obj
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} in {obj}"));
        obj[i + k.len() + 3..]
            .split([',', '}'])
            .next()
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    body[1..body.len() - 1]
        .split("},{")
        .map(|o| {
            for k in ["p99_us", "p999_us"] {
                field(o, k).parse::<u64>().unwrap();
            }
            (
                field(o, "mode"),
                field(o, "clients").parse().unwrap(),
                field(o, "commits_per_s").parse().unwrap(),
                field(o, "p50_us").parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn bench_runs_its_own_cluster_and_the_relay_delays_only_synchronous_commits() {
    let rows = bench(&[
        "--seconds",
        "1",
        "--clients",
        "1,4",
        "--modes",
        "async,sync",
        "--link-delay-ms",
        "30",
    ]);
    let modes: Vec<(&str, u64)> = rows.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert_eq!(
        modes,
        [
            ("local", 1),
            ("local", 4),
            ("remote_flush", 1),
            ("remote_flush", 4)
        ],
        "rows carry the level's name"
    );
    for r in &rows {
        assert!(r.2 > 0.0, "no commits in {r:?}");
    }
    // A round trip through the relay takes 30 ms more: synchronous commits pay it,
    // asynchronous ones do not.
    for r in &rows {
        if r.0 == "remote_flush" {
            assert!(
                r.3 >= 30_000,
                "remote_flush p50 {} µs < the link delay",
                r.3
            );
        } else {
            assert!(r.3 < 30_000, "local p50 {} µs includes the link delay", r.3);
        }
    }
}

#[test]
fn bench_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["bench", "--modes", "eventually"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mode"));
}
