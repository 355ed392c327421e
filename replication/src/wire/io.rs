//! Moving frames over sockets: async reads and writes for handshakes and base backups, and
//! the non-blocking sends, receives and polls that the link threads use (no runtime wake-up
//! on the commit path).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{bail, peer, Result};
use crate::frame::{self, Frame};
use crate::wire::transport::Link;

/// Takes the frame at the start of `buf` out of it, if it is complete.
pub(crate) fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>> {
    match frame::decode(buf).map_err(|e| peer!("bad frame: {e}"))? {
        Some((f, len)) => {
            let _ = buf.split_to(len);
            Ok(Some(f))
        }
        None => Ok(None),
    }
}

/// Appends what `sock` holds now to `buf`, without blocking: whether anything came (`false`:
/// nothing waiting); an error once the peer has closed. Through a stack buffer: the frames
/// read this way are small, and zeroing a large buffer on every look would cost more.
pub(crate) fn recv_available(sock: &Link, buf: &mut BytesMut) -> std::io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        return match recv_nowait(sock, &mut chunk) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            )),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        };
    }
}

/// Reads one frame, keeping leftovers in `buf`.
pub(crate) async fn read_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<Frame> {
    loop {
        if let Some(f) = take_frame(buf)? {
            return Ok(f);
        }
        if rd.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

pub(crate) async fn write_frame<W: AsyncWriteExt + Unpin>(wr: &mut W, f: &Frame) -> Result<()> {
    let mut out = Vec::new();
    f.encode(&mut out);
    wr.write_all(&out).await?;
    Ok(())
}

/// Sends what the socket takes without blocking; returns how much it took.
pub(crate) fn send_nowait(sock: &Link, buf: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `send` reads at most `buf.len()` bytes from `buf`, which is a live slice for the
    // whole call, and writes nothing to our memory; the descriptor belongs to `sock`, which
    // is borrowed (so open) for the call. MSG_DONTWAIT makes this one call non-blocking
    // without changing the socket's mode for the sender thread's blocking writes;
    // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
    let r = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Reads what the socket holds without blocking; returns how much it gave (0: closed).
pub(crate) fn recv_nowait(sock: &Link, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `recv` writes at most `buf.len()` bytes into `buf`, which is a live, exclusively
    // borrowed slice for the whole call; the descriptor belongs to `sock`, borrowed (so open)
    // for the call. MSG_DONTWAIT makes this one call non-blocking without changing the
    // socket's mode, which its clones share.
    let r = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Blocks until `sock` has something to read (or has ended), or `timeout` passes.
pub(crate) fn wait_readable(sock: &Link, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` reads and writes exactly the one `pollfd` it is given (count 1), which
    // lives on this stack frame for the whole call; the descriptor belongs to `sock`, borrowed
    // (so open) for the call. Its result needs no handling: the caller reads either way.
    unsafe {
        libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32);
    }
}

/// Looks for a complete frame on `sock` without blocking until `until`: the frame, or `None`
/// if none came in time (what did come stays in `buf`).
pub(crate) fn spin_for_frame(
    sock: &Link,
    buf: &mut BytesMut,
    until: Instant,
) -> Result<Option<Frame>> {
    loop {
        if let Some(f) = take_frame(buf)? {
            return Ok(Some(f));
        }
        if recv_available(sock, buf)? {
            continue;
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        std::thread::yield_now();
    }
}

/// Reads one frame from a blocking socket, keeping leftovers in `buf`. A read timeout on the
/// socket surfaces as an error of kind `WouldBlock`/`TimedOut`; `buf` then keeps what came.
pub(crate) fn read_frame_blocking(sock: &mut Link, buf: &mut BytesMut) -> Result<Frame> {
    use std::io::Read;
    loop {
        if let Some(f) = take_frame(buf)? {
            return Ok(f);
        }
        let at = buf.len();
        buf.resize(at + 64 * 1024, 0);
        match sock.read(&mut buf[at..]) {
            Ok(0) => {
                buf.truncate(at);
                bail!("connection closed");
            }
            Ok(n) => buf.truncate(at + n),
            // A signal (SIGSTOP/SIGCONT, say) interrupted the read: nothing was lost.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(at),
            Err(e) => {
                buf.truncate(at);
                return Err(e.into());
            }
        }
    }
}
