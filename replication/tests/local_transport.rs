//! A primary and a replica in one process, over the in-process transport: the seed, the
//! stream and a switchover run through the same code a server runs over TCP, with no port and
//! no server around them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::wire::transport::{LocalNet, Transport};
use replication::{Node, NodeConfig};
use storage::{Db, Durability, Options};

fn config(dir: &std::path::Path, name: &str, net: &LocalNet) -> NodeConfig {
    NodeConfig {
        dir: dir.to_path_buf(),
        name: name.into(),
        primary_password: None,
        max_retained_wal: 1 << 30,
        storage: Options::default(),
        transport: Transport::Local(net.clone()),
        node_id: replication::identity::new_node_id(),
    }
}

/// Starts a node listening at `name` on `net`, following `primary` if given (seeding its
/// data directory from it first when it is new).
async fn start(
    dir: &std::path::Path,
    name: &str,
    net: &LocalNet,
    primary: Option<&str>,
) -> Arc<Node> {
    let config = config(dir, name, net);
    if let Some(p) = primary {
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        replication::seed::seed_if_new(&config, p, &mut stop, &Default::default())
            .await
            .expect("seed from the primary");
    }
    let options = Options {
        replica: primary.is_some(),
        ..Options::default()
    };
    let dir2 = dir.to_path_buf();
    let db = tokio::task::spawn_blocking(move || Db::open(&dir2, options))
        .await
        .expect("join")
        .expect("open");
    let node = Arc::new(Node::new(config, db, primary.map(str::to_string), None));
    tokio::spawn(replication::accept::serve_local(
        node.clone(),
        net.listen(name),
    ));
    if let Some(p) = primary {
        replication::replica::start_replica(&node, p.to_string(), 0);
    }
    node
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn put(node: &Node, i: u32) {
    let db = node.db();
    tokio::task::spawn_blocking(move || {
        db.put(
            format!("k{i:05}").as_bytes(),
            &i.to_le_bytes(),
            Durability::Local,
        )
    })
    .await
    .expect("join")
    .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_seeds_streams_and_takes_over_over_the_local_transport() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let net = LocalNet::new();
    let p = start(pd.path(), "p", &net, None).await;
    // Data before the replica exists: it comes by base backup.
    for i in 0..200 {
        put(&p, i).await;
    }
    let r = start(rd.path(), "r", &net, Some("p")).await;
    // Data after: it comes by the stream.
    for i in 200..400 {
        put(&p, i).await;
    }
    let target = p.db().flush_lsn();
    wait_for("the replica to apply the primary's log", || {
        r.db().apply_lsn() >= target && r.loading().is_none()
    })
    .await;
    assert_eq!(
        p.db().read().digest(),
        r.db().read().digest(),
        "pages differ"
    );
    assert_eq!(r.db().len(), 400);
    assert_eq!(
        r.db().get(b"k00399").unwrap().as_deref(),
        Some(&399u32.to_le_bytes()[..])
    );
    // A switchover over the control protocol: the replica is caught up, promoted, and the old
    // primary follows it.
    let promoted = replication::role::failover(&p, "r".into(), Duration::from_secs(10)).await;
    assert!(promoted.is_ok(), "switchover failed: {:?}", promoted.err());
    wait_for("the new primary to take writes", || !r.is_replica_role()).await;
    assert!(p.is_replica_role(), "the old primary still takes writes");
    put(&r, 400).await;
    let target = r.db().flush_lsn();
    wait_for("the old primary to follow the new one", || {
        p.db().apply_lsn() >= target
    })
    .await;
    assert_eq!(
        p.db().read().digest(),
        r.db().read().digest(),
        "pages differ after the switchover"
    );
    p.shutdown.send_replace(true);
    r.shutdown.send_replace(true);
}

#[tokio::test]
async fn the_local_transport_refuses_what_tcp_would() {
    let net = LocalNet::new();
    let refused = Transport::Local(net.clone()).connect("nobody").await.err();
    assert_eq!(
        refused.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    // A full backlog refuses too, instead of queueing without bound.
    let _l = net.listen("busy");
    let t = Transport::Local(net.clone());
    let mut held = Vec::new();
    for _ in 0..replication::wire::transport::LOCAL_BACKLOG {
        held.push(t.connect("busy").await.expect("within the backlog"));
    }
    assert_eq!(
        t.connect("busy").await.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    // A dropped listener takes its name with it.
    drop(_l);
    assert!(t.connect("busy").await.is_err());
}

#[tokio::test]
async fn a_peer_that_is_not_replidb_is_refused_with_a_clear_error() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNet::new();
    let config = config(dir.path(), "p", &net);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let node = Arc::new(Node::new(config, db, None, None));
    let mut l = net.listen("p");
    let mut c = Transport::Local(net.clone()).connect("p").await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let conn = l.accept().await.unwrap();
    let err = replication::accept::serve_connection(node, conn)
        .await
        .expect_err("an HTTP request is not a replication command");
    assert!(
        err.to_string().contains("not a replication command"),
        "{err}"
    );
}
