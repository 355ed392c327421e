//! The transport seam: how nodes reach each other. Every replication connection is a [`Conn`]
//! while its handshake runs on the runtime, and a [`Link`] (blocking, for a link thread) once
//! it streams. Two transports make them:
//! - [`Transport::Tcp`], what a server uses: TCP to the other node's client port;
//! - [`Transport::Local`], a [`LocalNet`] inside one process: named listeners, each
//!   connection a Unix socket pair. Tests run a primary and its replicas in one process over
//!   it, with no port to allocate and nothing outside the process to reach them.
//!
//! Both are byte streams with file descriptors, so the link threads' non-blocking sends,
//! receives and polls (`wire::io`) work on either unchanged.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many connections a [`LocalListener`] holds before it accepts them; a connect beyond
/// that is refused (as a full TCP backlog refuses), never queued without bound.
pub const LOCAL_BACKLOG: usize = 64;

/// How nodes reach each other.
#[derive(Clone, Default)]
pub enum Transport {
    /// TCP to `host:port`.
    #[default]
    Tcp,
    /// A network inside this process (tests).
    Local(LocalNet),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp => f.write_str("Tcp"),
            Transport::Local(_) => f.write_str("Local"),
        }
    }
}

impl Transport {
    /// Opens a connection to `addr`.
    pub async fn connect(&self, addr: &str) -> io::Result<Conn> {
        match self {
            Transport::Tcp => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
            Transport::Local(net) => net.connect(addr),
        }
    }
}

/// A connection while its handshake runs (async, on the runtime).
pub enum Conn {
    Tcp(tokio::net::TcpStream),
    Local {
        sock: tokio::net::UnixStream,
        /// The name the connecting side gave itself (for logs, as a TCP peer address is).
        peer: String,
    },
}

impl Conn {
    /// The other end, for logs.
    pub fn peer(&self) -> String {
        match self {
            Conn::Tcp(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            Conn::Local { peer, .. } => peer.clone(),
        }
    }

    /// The connection as a blocking [`Link`], for a link thread.
    pub fn into_link(self) -> io::Result<Link> {
        let link = match self {
            Conn::Tcp(s) => Link::Tcp(s.into_std()?),
            Conn::Local { sock, .. } => Link::Local(sock.into_std()?),
        };
        match &link {
            Link::Tcp(s) => s.set_nonblocking(false)?,
            Link::Local(s) => s.set_nonblocking(false)?,
        }
        Ok(link)
    }
}

impl From<tokio::net::TcpStream> for Conn {
    fn from(s: tokio::net::TcpStream) -> Conn {
        Conn::Tcp(s)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Local { sock, .. } => Pin::new(sock).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Local { sock, .. } => Pin::new(sock).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Local { sock, .. } => Pin::new(sock).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Local { sock, .. } => Pin::new(sock).poll_shutdown(cx),
        }
    }
}

/// A connection once it streams: blocking reads and writes on a link thread, plus the
/// non-blocking sends, receives and polls of `wire::io` (through its descriptor).
pub enum Link {
    Tcp(std::net::TcpStream),
    Local(std::os::unix::net::UnixStream),
}

impl Link {
    /// Another handle of the same connection.
    pub fn try_clone(&self) -> io::Result<Link> {
        Ok(match self {
            Link::Tcp(s) => Link::Tcp(s.try_clone()?),
            Link::Local(s) => Link::Local(s.try_clone()?),
        })
    }

    /// Ends the connection for every handle (a blocked read returns).
    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            Link::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Link::Local(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }

    /// How long a blocking read waits before it fails with `WouldBlock`/`TimedOut`.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Link::Tcp(s) => s.set_read_timeout(t),
            Link::Local(s) => s.set_read_timeout(t),
        }
    }
}

impl AsRawFd for Link {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Link::Tcp(s) => s.as_raw_fd(),
            Link::Local(s) => s.as_raw_fd(),
        }
    }
}

impl io::Read for &Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Link::Tcp(ref s) => {
                let mut s = s;
                s.read(buf)
            }
            Link::Local(ref s) => {
                let mut s = s;
                s.read(buf)
            }
        }
    }
}

impl io::Write for &Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Link::Tcp(ref s) => {
                let mut s = s;
                s.write(buf)
            }
            Link::Local(ref s) => {
                let mut s = s;
                s.write(buf)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl io::Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A network inside one process: listeners by name, connections as Unix socket pairs.
#[derive(Clone, Default)]
pub struct LocalNet {
    listeners: Arc<Mutex<HashMap<String, tokio::sync::mpsc::Sender<Conn>>>>,
}

impl LocalNet {
    pub fn new() -> LocalNet {
        LocalNet::default()
    }

    /// Listens at `addr` (any name; replaces an earlier listener of that name).
    pub fn listen(&self, addr: &str) -> LocalListener {
        let (tx, rx) = tokio::sync::mpsc::channel(LOCAL_BACKLOG);
        self.listeners.lock().insert(addr.to_string(), tx);
        LocalListener {
            rx,
            addr: addr.to_string(),
            net: self.clone(),
        }
    }

    /// Connects to the listener at `addr`: refused if none listens there or its backlog is
    /// full, as TCP would be.
    fn connect(&self, addr: &str) -> io::Result<Conn> {
        let refused = |why: &str| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{addr}: {why} (local transport)"),
            )
        };
        let tx = self
            .listeners
            .lock()
            .get(addr)
            .cloned()
            .ok_or_else(|| refused("nothing listens there"))?;
        let (ours, theirs) = tokio::net::UnixStream::pair()?;
        tx.try_send(Conn::Local {
            sock: theirs,
            peer: format!("local:{}", ours.as_raw_fd()),
        })
        .map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => refused("backlog full"),
            tokio::sync::mpsc::error::TrySendError::Closed(_) => refused("listener closed"),
        })?;
        Ok(Conn::Local {
            sock: ours,
            peer: addr.to_string(),
        })
    }
}

/// Connections made to one name of a [`LocalNet`].
pub struct LocalListener {
    rx: tokio::sync::mpsc::Receiver<Conn>,
    addr: String,
    net: LocalNet,
}

impl LocalListener {
    /// The next connection (`None` once the listener was replaced).
    pub async fn accept(&mut self) -> Option<Conn> {
        self.rx.recv().await
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        // Closed first: the name is removed only if it is still this listener's (a newer
        // listener of the same name keeps it).
        self.rx.close();
        let mut l = self.net.listeners.lock();
        if l.get(&self.addr).is_some_and(|tx| tx.is_closed()) {
            l.remove(&self.addr);
        }
    }
}
