//! The node's port before its database is open: a new replica waiting for its primary, or
//! laying down a base backup, or a cluster member waiting for etcd. The port is bound first
//! thing, so a health check or a person can always ask the node what it is doing: `PING`,
//! `ECHO`, `INFO`, `ROLE`, `CONFIG GET`, `AUTH` and `CLIENT` are answered, and everything
//! else gets `-LOADING` with what the node waits for (as Redis answers during a sync). A replication
//! connection gets an error frame: "this is the node itself" when its hello carries this
//! node's own id (how `--replicaof` at its own address is found out, whatever the address),
//! otherwise "not serving yet".
//!
//! Once the database is open, `finish` stops accepting here and hands every open connection
//! (with the bytes it has sent that were not answered yet) to the server's own connection
//! loop, so a client connected during a long seed just sees its reads start working.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Config;
use crate::resp::{self, Encoder, Parsed};
use crate::shared::{Settings, Shared};
use replication::frame::{self, Frame};

/// What the node says about itself before its database is open.
pub struct EarlyState {
    pub config: Config,
    pub node_id: u64,
    /// The primary it will follow, once known (`--replicaof`, the role file, or etcd).
    pub primary: Mutex<Option<String>>,
    /// What it is doing: "seeding from …", "waiting for etcd", "opening the database".
    pub phase: Mutex<String>,
    /// Why the last attempt to reach the primary failed.
    pub last_error: Mutex<String>,
    /// False while a cluster member waits for etcd to say whom it follows, and while it is a
    /// candidate with nobody to follow: it is no primary then, and ROLE says it is loading
    /// rather than guess.
    pub role_known: std::sync::atomic::AtomicBool,
    started: Instant,
    /// Connections open here, held to `--maxclients` like the server's own.
    open: std::sync::atomic::AtomicUsize,
}

impl EarlyState {
    pub fn new(config: Config, node_id: u64) -> Arc<EarlyState> {
        Arc::new(EarlyState {
            role_known: std::sync::atomic::AtomicBool::new(config.cluster.is_none()),
            primary: Mutex::new(config.replicaof.clone()),
            config,
            node_id,
            phase: Mutex::new("starting".into()),
            last_error: Mutex::new(String::new()),
            started: Instant::now(),
            open: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub fn set_phase(&self, phase: impl Into<String>) {
        *self.phase.lock() = phase.into();
    }

    fn loading_message(&self) -> String {
        let phase = self.phase.lock().clone();
        let err = self.last_error.lock().clone();
        if err.is_empty() {
            format!("LOADING this node is not serving data yet: {phase}")
        } else {
            format!("LOADING this node is not serving data yet: {phase} (last attempt: {err})")
        }
    }
}

/// What a client set up on its connection before the database was open; it goes with the
/// connection to the server's own loop.
#[derive(Clone, Debug, Default)]
pub struct EarlyClient {
    pub authed: bool,
    pub resp3: bool,
    pub name: Option<Bytes>,
}

/// The listener while the node starts, and the connections it took.
pub struct Early {
    state: Arc<EarlyState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<TcpListener>,
    handoff: watch::Sender<Option<Arc<Shared>>>,
}

impl Early {
    /// Starts answering on `listener`.
    pub fn start(listener: TcpListener, state: Arc<EarlyState>) -> Early {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let handoff = watch::channel(None).0;
        let (st, hand) = (state.clone(), handoff.clone());
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "listening while the node starts (data commands get -LOADING until it is ready)");
        }
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((mut sock, peer)) => {
                            let _ = sock.set_nodelay(true);
                            if st.open.load(Ordering::Relaxed) >= st.config.maxclients {
                                tracing::warn!(%peer, maxclients = st.config.maxclients, "connection refused: max number of clients reached");
                                tokio::spawn(async move {
                                    let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
                                });
                                continue;
                            }
                            st.open.fetch_add(1, Ordering::Relaxed);
                            let (st, rx) = (st.clone(), hand.subscribe());
                            tokio::spawn(async move {
                                let r = early_connection(st.clone(), sock, rx).await;
                                st.open.fetch_sub(1, Ordering::Relaxed);
                                if let Err(e) = r {
                                    tracing::debug!(error = %e, "early connection ended");
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    _ = &mut stopped => return listener,
                }
            }
        });
        Early {
            state,
            stop,
            task,
            handoff,
        }
    }

    pub fn state(&self) -> &Arc<EarlyState> {
        &self.state
    }

    /// Stops answering here: the listener goes back to the caller, and every connection
    /// taken meanwhile goes on in the server's own loop.
    pub async fn finish(self, shared: Arc<Shared>) -> anyhow::Result<TcpListener> {
        let _ = self.stop.send(());
        let listener = self.task.await?;
        let _ = self.handoff.send(Some(shared));
        Ok(listener)
    }
}

const REPLICATION_COMMANDS: [&str; 6] = [
    "REPLSTREAM",
    "REPLSNAPSHOT",
    "REPLREWIND",
    "REPLCONTROL",
    "REPLPAGES",
    "REPLVERIFY",
];

async fn early_connection(
    st: Arc<EarlyState>,
    mut sock: TcpStream,
    mut handoff: watch::Receiver<Option<Arc<Shared>>>,
) -> anyhow::Result<()> {
    let mut client = EarlyClient {
        authed: st.config.requirepass.is_none(),
        ..EarlyClient::default()
    };
    let mut inbuf = BytesMut::with_capacity(4096);
    loop {
        // Every complete request is answered; the rest waits for more bytes.
        let mut out = BytesMut::new();
        loop {
            match resp::parse(&inbuf) {
                Ok(Parsed::Request { args, len }) => {
                    let req = inbuf.split_to(len).freeze();
                    let args: Vec<Bytes> = args.into_iter().map(|r| req.slice(r)).collect();
                    let name = args
                        .first()
                        .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
                        .unwrap_or_default();
                    if client.authed && REPLICATION_COMMANDS.contains(&name.as_str()) {
                        sock.write_all(&out).await?;
                        return refuse_replication(&st, sock, inbuf).await;
                    }
                    match answer(&st, &mut client, &name, &args, &mut out) {
                        Next::Go => {}
                        Next::Close => {
                            sock.write_all(&out).await?;
                            return Ok(());
                        }
                    }
                }
                Ok(Parsed::Incomplete { .. }) => break,
                Err(e) => {
                    Encoder {
                        resp3: client.resp3,
                    }
                    .error(&mut out, &format!("ERR {e}"));
                    sock.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
        }
        if inbuf.len() > resp::MAX_REQUEST {
            return Ok(());
        }
        let ready = handoff.borrow_and_update().clone();
        if let Some(sh) = ready {
            // The open count here drops as the server's own slot is taken.
            return crate::server::serve_connection(sh, sock, inbuf, client).await;
        }
        tokio::select! {
            n = sock.read_buf(&mut inbuf) => if n? == 0 { return Ok(()) },
            r = handoff.changed() => if r.is_err() { return Ok(()) },
        }
    }
}

enum Next {
    Go,
    Close,
}

fn answer(
    st: &EarlyState,
    client: &mut EarlyClient,
    name: &str,
    args: &[Bytes],
    out: &mut BytesMut,
) -> Next {
    let enc = Encoder {
        resp3: client.resp3,
    };
    if !client.authed && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
        enc.error(out, "NOAUTH Authentication required.");
        return Next::Go;
    }
    match name {
        "PING" => match args.get(1) {
            Some(m) => enc.bulk(out, m),
            None => enc.simple(out, "PONG"),
        },
        "ECHO" => match args {
            [_, m] => enc.bulk(out, m),
            _ => enc.error(out, "ERR wrong number of arguments for 'echo' command"),
        },
        "QUIT" => {
            enc.simple(out, "OK");
            return Next::Close;
        }
        "AUTH" => match args.len() {
            2 | 3 => auth(st, client, enc, &args[1..], out),
            _ => enc.error(out, "ERR wrong number of arguments for 'auth' command"),
        },
        "HELLO" => hello(st, client, args, out),
        // Connection set-up that clients send before anything else.
        "SELECT" => match args.get(1).map(|a| &a[..]) {
            Some(b"0") if args.len() == 2 => enc.simple(out, "OK"),
            Some(_) if args.len() == 2 => enc.error(
                out,
                "ERR DB index is out of range (replidb has one database, 0)",
            ),
            _ => enc.error(out, "ERR wrong number of arguments for 'select' command"),
        },
        "CLIENT" => {
            let sub = args
                .get(1)
                .map(|s| s.to_ascii_uppercase())
                .unwrap_or_default();
            match (&sub[..], args.len()) {
                (b"SETNAME", 3) => match crate::commands::connection::bad_client_name(&args[2]) {
                    Some(e) => enc.error(out, e),
                    None => {
                        client.name = crate::commands::connection::client_name(args[2].clone());
                        enc.simple(out, "OK");
                    }
                },
                (b"SETINFO", 4) => enc.simple(out, "OK"),
                (b"GETNAME", 2) => enc.opt_bulk(out, client.name.as_deref()),
                _ => enc.error(out, &st.loading_message()),
            }
        }
        "INFO" => enc.bulk(out, info(st).as_bytes()),
        "ROLE" if !st.role_known.load(Ordering::SeqCst) => enc.error(out, &st.loading_message()),
        "ROLE" => {
            let primary = st.primary.lock().clone();
            match primary {
                Some(p) => {
                    let (host, port) = p.rsplit_once(':').unwrap_or((p.as_str(), "0"));
                    enc.array(out, 5);
                    enc.bulk(out, b"slave");
                    enc.bulk(out, host.as_bytes());
                    enc.int(out, port.parse().unwrap_or(0));
                    enc.bulk(out, b"connect");
                    enc.int(out, -1);
                }
                None => {
                    enc.array(out, 3);
                    enc.bulk(out, b"master");
                    enc.int(out, 0);
                    enc.array(out, 0);
                }
            }
        }
        "CONFIG" if args.len() >= 3 && args[1].eq_ignore_ascii_case(b"GET") => {
            let set = Settings {
                requirepass: st.config.requirepass.clone(),
                sync_commit: st.config.sync_commit,
                sync_timeout_ms: st.config.sync_timeout_ms,
            };
            let standbys = st
                .config
                .sync_standbys
                .as_ref()
                .map_or_else(String::new, |c| c.to_string());
            let all = crate::info::params_of(&st.config, &set, standbys);
            crate::info::config_get(enc, out, &all, &args[2..]);
        }
        _ => enc.error(out, &st.loading_message()),
    }
    Next::Go
}

/// `AUTH [default] password`, as the server answers it.
fn auth(
    st: &EarlyState,
    client: &mut EarlyClient,
    enc: Encoder,
    args: &[Bytes],
    out: &mut BytesMut,
) {
    let pass = match args {
        [p] => p,
        [user, p] if &user[..] == b"default" => p,
        _ => {
            enc.error(
                out,
                "WRONGPASS invalid username-password pair or user is disabled.",
            );
            return;
        }
    };
    match &st.config.requirepass {
        Some(pw) if pass[..] == *pw.as_bytes() => {
            client.authed = true;
            enc.simple(out, "OK");
        }
        Some(_) => enc.error(
            out,
            "WRONGPASS invalid username-password pair or user is disabled.",
        ),
        None => enc.error(
            out,
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: the protocol is switched here and
/// kept when the connection moves to the server's loop.
fn hello(st: &EarlyState, client: &mut EarlyClient, args: &[Bytes], out: &mut BytesMut) {
    let enc = Encoder {
        resp3: client.resp3,
    };
    let h = match crate::commands::connection::parse_hello(args) {
        Ok(h) => h,
        Err(e) => {
            enc.error(out, &e);
            return;
        }
    };
    if let Some(creds) = &h.auth {
        let mut refused = BytesMut::new();
        auth(st, client, enc, creds, &mut refused);
        if !client.authed {
            out.extend_from_slice(&refused);
            return;
        }
    }
    if !client.authed {
        enc.error(out, crate::commands::connection::NOAUTH_HELLO);
        return;
    }
    if let Some(name) = h.name {
        client.name = crate::commands::connection::client_name(name);
    }
    let proto = h.proto.unwrap_or(if client.resp3 { 3 } else { 2 });
    client.resp3 = proto == 3;
    let enc = Encoder {
        resp3: client.resp3,
    };
    let role: &[u8] = if st.primary.lock().is_some() {
        b"replica"
    } else {
        b"master"
    };
    crate::commands::connection::hello_reply(enc, out, proto.into(), 0, role);
}

/// INFO before the database is open: who the node is and what it waits for.
fn info(st: &EarlyState) -> String {
    let primary = st.primary.lock().clone();
    let mut o = format!(
        "# Server\r\nreplidb_version:{}\r\nredis_version:7.0.0\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\ndir:{}\r\n\r\n# Persistence\r\nloading:1\r\n\r\n# Replication\r\nrole:{}\r\nnode_name:{}\r\nnode_id:{:016x}\r\nloading:1\r\nstartup_phase:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        st.config.port,
        st.started.elapsed().as_secs(),
        st.config.dir.display(),
        if primary.is_some() || !st.role_known.load(Ordering::SeqCst) {
            "replica"
        } else {
            "primary"
        },
        st.config.name,
        st.node_id,
        st.phase.lock(),
    );
    if let Some(p) = primary {
        o.push_str(&format!("primary_addr:{p}\r\nprimary_link:down\r\n"));
        let err = st.last_error.lock().clone();
        if !err.is_empty() {
            o.push_str(&format!("primary_link_error:{}\r\n", one_line(&err)));
        }
    }
    o
}

/// `s` on one line (INFO fields are lines).
pub fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// A replication connection while the node is not serving: reads its hello and answers
/// with an error frame — this node itself, or not ready.
async fn refuse_replication(
    st: &EarlyState,
    mut sock: TcpStream,
    mut buf: BytesMut,
) -> anyhow::Result<()> {
    let read = async {
        loop {
            if let Some((f, _)) = frame::decode(&buf)? {
                return anyhow::Ok(f);
            }
            if sock.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("closed before its hello");
            }
        }
    };
    let hello = tokio::time::timeout(replication::identity::HANDSHAKE_TIMEOUT, read).await??;
    let Frame::Hello { node_id, name, .. } = hello else {
        anyhow::bail!("expected a hello");
    };
    let answer = if node_id == st.node_id {
        // The connecting side (this same node) says it, once.
        tracing::debug!("a replication connection from this node itself reached its own port");
        Frame::Error {
            code: replication::identity::SELF_LINK,
            message: replication::identity::self_message(&st.config.name, st.node_id),
        }
    } else {
        tracing::info!(peer = %name, "a replication connection while this node is not serving: refused");
        Frame::Error {
            code: replication::identity::NOT_READY,
            message: st.loading_message(),
        }
    };
    let mut out = Vec::new();
    answer.encode(&mut out);
    sock.write_all(&out).await?;
    Ok(())
}
