//! A minimal RESP client, one request in flight: what the node uses to talk to another node
//! (`FAILOVER TO`) and what `replidb bench` drives a server with.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::reply::Reply;

/// One field of an INFO reply (`name:value` lines), trimmed.
pub fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Bulk replies larger than this are refused (INFO and the like are far smaller).
const MAX_BULK: usize = 1 << 20;

pub struct Conn {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Conn {
    /// Connects (and authenticates when a password is given).
    pub async fn connect(addr: &str, password: Option<&str>) -> Result<Conn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        let mut c = Conn {
            rd: BufReader::new(rd),
            wr,
            out: Vec::new(),
            line: Vec::new(),
        };
        if let Some(p) = password {
            c.call(&["AUTH", p]).await?;
        }
        Ok(c)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.wr.write_all(&self.out).await?;
        Ok(())
    }

    /// Reads one reply line (without CRLF) into `self.line`.
    async fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        let n = self.rd.read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        while matches!(self.line.last(), Some(b'\r' | b'\n')) {
            self.line.pop();
        }
        Ok(())
    }

    /// Sends a command; returns a status, integer or bulk reply as text. Error replies are
    /// errors.
    pub async fn call(&mut self, args: &[&str]) -> Result<String> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send(&a).await?;
        self.read_line().await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.line.first() {
            Some(b'+') | Some(b':') => Ok(text(&self.line[1..])),
            Some(b'-') => bail!("{}: {}", args[0], text(&self.line[1..])),
            Some(b'$') => {
                let n: usize = std::str::from_utf8(&self.line[1..])?
                    .parse()
                    .context("bulk length")?;
                if n > MAX_BULK {
                    bail!("{}: reply too long", args[0]);
                }
                let mut body = vec![0u8; n + 2];
                self.rd.read_exact(&mut body).await?;
                body.truncate(n);
                Ok(text(&body))
            }
            _ => bail!("unexpected reply to {}: {:?}", args[0], text(&self.line)),
        }
    }

    /// Sends a command and reads its whole reply, whatever its shape (nested arrays at most
    /// four deep, bulk strings up to `max_bulk` bytes). An error reply is `Reply::Error`.
    pub async fn call_reply(&mut self, args: &[&[u8]], max_bulk: usize) -> Result<Reply> {
        self.send(args).await?;
        self.read_reply(max_bulk, 0).await
    }

    async fn read_reply(&mut self, max_bulk: usize, depth: usize) -> Result<Reply> {
        self.read_line().await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let Some(&tag) = self.line.first() else {
            bail!("an empty reply line");
        };
        let n = || -> Result<i64> {
            std::str::from_utf8(&self.line[1..])?
                .parse::<i64>()
                .with_context(|| format!("a bad length or number: {:?}", text(&self.line)))
        };
        Ok(match tag {
            b'+' => Reply::Status(text(&self.line[1..])),
            b'-' => Reply::Error(text(&self.line[1..])),
            b':' => Reply::Int(n()?),
            b'_' => Reply::Null,
            b'$' => match n()? {
                -1 => Reply::Null,
                len if len < 0 || len as usize > max_bulk => {
                    bail!("a bulk reply of {len} bytes (the limit is {max_bulk})")
                }
                len => {
                    let mut body = vec![0u8; len as usize + 2];
                    self.rd.read_exact(&mut body).await?;
                    body.truncate(len as usize);
                    Reply::Bulk(body)
                }
            },
            b'*' => match n()? {
                -1 => Reply::NullArray,
                len if !(0..=1024).contains(&len) || depth >= 4 => {
                    bail!("an array reply of {len} elements at depth {depth}")
                }
                len => {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(Box::pin(self.read_reply(max_bulk, depth + 1)).await?);
                    }
                    Reply::Array(items)
                }
            },
            _ => bail!("an unexpected reply: {:?}", text(&self.line)),
        })
    }

    /// SET; `Ok(false)` for an error reply (-NOQUORUM, say). The benchmark's hot path: no
    /// allocation beyond the reused buffers.
    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.send(&[b"SET", key, value]).await?;
        self.read_line().await?;
        Ok(self.line.first() == Some(&b'+'))
    }
}
