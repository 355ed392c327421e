//! Connection commands: PING, ECHO, QUIT, AUTH, HELLO, SELECT, CLIENT, COMMAND.

use bytes::Bytes;

use super::{parse_i64, unreachable_command, upper, wrong_arity, COMMANDS};
use crate::reply::Reply;
use crate::session::{After, Out, Session};

impl Session {
    /// A connection command.
    pub(crate) fn connection_command(
        &mut self,
        name: &str,
        args: &[Bytes],
        out: &mut Out,
    ) -> After {
        let argc = args.len();
        match name {
            "PING" => match argc {
                1 => self.enc.simple(&mut out.buf, "PONG"),
                2 => self.enc.bulk(&mut out.buf, &args[1]),
                _ => self.err(out, &wrong_arity("ping")),
            },
            "ECHO" => {
                if argc == 2 {
                    self.enc.bulk(&mut out.buf, &args[1]);
                } else {
                    self.err(out, &wrong_arity("echo"));
                }
            }
            "QUIT" => {
                self.enc.simple(&mut out.buf, "OK");
                return After::Close;
            }
            "AUTH" => self.auth(&args[1..], out),
            "HELLO" => self.hello(args, out),
            "SELECT" => match args.get(1).map(|a| &a[..]) {
                Some(b"0") if argc == 2 => self.enc.simple(&mut out.buf, "OK"),
                Some(_) if argc == 2 => self.err(
                    out,
                    "ERR DB index is out of range (replidb has one database, 0)",
                ),
                _ => self.err(out, &wrong_arity("select")),
            },
            "CLIENT" => self.client(args, out),
            "COMMAND" => self.command(args, out),
            _ => unreachable_command(name),
        }
        After::Continue
    }

    fn auth(&mut self, args: &[Bytes], out: &mut Out) {
        let pass = match args.len() {
            1 => &args[0],
            2 if &args[0][..] == b"default" => &args[1],
            2 => {
                self.err(
                    out,
                    "WRONGPASS invalid username-password pair or user is disabled.",
                );
                return;
            }
            _ => {
                self.err(out, &wrong_arity("auth"));
                return;
            }
        };
        match &self.shared.settings.read().requirepass {
            None => self.err(out, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
            Some(p) if p.as_bytes() == &pass[..] => {
                self.authed = true;
                self.enc.simple(&mut out.buf, "OK");
            }
            Some(_) => self.err(out, "WRONGPASS invalid username-password pair or user is disabled."),
        }
    }

    fn hello(&mut self, args: &[Bytes], out: &mut Out) {
        let h = match parse_hello(args) {
            Ok(h) => h,
            Err(e) => {
                self.err(out, &e);
                return;
            }
        };
        if let Some(creds) = &h.auth {
            let mut refused = Out::default();
            self.auth(creds, &mut refused);
            if !self.authed {
                out.buf.extend_from_slice(&refused.buf);
                return;
            }
        }
        if !self.authed {
            self.err(out, NOAUTH_HELLO);
            return;
        }
        if let Some(name) = h.name {
            self.name = client_name(name);
        }
        let proto = h.proto.unwrap_or(if self.enc.resp3 { 3 } else { 2 });
        self.enc.resp3 = proto == 3;
        hello_reply(
            self.enc,
            &mut out.buf,
            proto.into(),
            self.id as i64,
            b"master",
        );
    }

    fn client(&mut self, args: &[Bytes], out: &mut Out) {
        let sub = args.get(1).map(|s| upper(s)).unwrap_or_default();
        match (sub.as_str(), args.len()) {
            ("SETNAME", 3) => {
                if let Some(e) = bad_client_name(&args[2]) {
                    self.err(out, e);
                } else {
                    self.name = client_name(args[2].clone());
                    self.enc.simple(&mut out.buf, "OK");
                }
            }
            ("GETNAME", 2) => {
                let n = self.name.clone();
                self.enc.opt_bulk(&mut out.buf, n.as_deref());
            }
            ("ID", 2) => self.enc.int(&mut out.buf, self.id as i64),
            // Client libraries announce themselves (redis-py, go-redis); nothing to do.
            ("SETINFO", 4) => self.enc.simple(&mut out.buf, "OK"),
            _ => self.err(out, "ERR unknown subcommand or wrong number of arguments for 'client'. Try CLIENT SETNAME, GETNAME, ID, SETINFO."),
        }
    }

    fn command(&mut self, args: &[Bytes], out: &mut Out) {
        match args.get(1).map(|s| upper(s)).as_deref() {
            Some("COUNT") => self.enc.int(&mut out.buf, COMMANDS.len() as i64),
            Some("DOCS") => self.enc.map(&mut out.buf, 0),
            None => {
                // Name, arity, flags, first key, last key, step: enough for clients that look.
                self.enc.array(&mut out.buf, COMMANDS.len());
                for spec in COMMANDS {
                    self.enc.array(&mut out.buf, 6);
                    self.enc
                        .bulk(&mut out.buf, spec.name.to_ascii_lowercase().as_bytes());
                    self.enc.int(&mut out.buf, spec.arity);
                    self.enc.array(&mut out.buf, 0);
                    self.enc.int(&mut out.buf, 0);
                    self.enc.int(&mut out.buf, 0);
                    self.enc.int(&mut out.buf, 0);
                }
            }
            Some(_) => self.enc.array(&mut out.buf, 0),
        }
    }

    pub fn set_requirepass(&mut self) {
        // The connection that changed the password stays authenticated.
        self.authed = true;
    }
}

/// PING and ECHO inside MULTI: answered at EXEC.
pub(crate) fn apply(name: &str, args: &[Bytes]) -> Reply {
    match (name, args.get(1)) {
        ("ECHO", Some(m)) | ("PING", Some(m)) => Reply::Bulk(m.to_vec()),
        _ => Reply::Bulk(b"PONG".to_vec()),
    }
}

/// HELLO's answer: the server's properties as a map (RESP3) or a flat array (RESP2).
pub(crate) fn hello_reply(
    enc: crate::resp::Encoder,
    b: &mut bytes::BytesMut,
    proto: i64,
    id: i64,
    role: &[u8],
) {
    enc.map(b, 7);
    enc.bulk(b, b"server");
    enc.bulk(b, b"replidb");
    enc.bulk(b, b"version");
    enc.bulk(b, env!("CARGO_PKG_VERSION").as_bytes());
    enc.bulk(b, b"proto");
    enc.int(b, proto);
    enc.bulk(b, b"id");
    enc.int(b, id);
    enc.bulk(b, b"mode");
    enc.bulk(b, b"standalone");
    enc.bulk(b, b"role");
    enc.bulk(b, role);
    enc.bulk(b, b"modules");
    enc.array(b, 0);
}

/// Why `CLIENT SETNAME` refuses `name`, if it does (the server's loop and the early port).
pub(crate) fn bad_client_name(name: &[u8]) -> Option<&'static str> {
    // Redis allows printable ASCII but the space: CLIENT LIST splits its fields by spaces.
    name.iter()
        .any(|&c| !(b'!'..=b'~').contains(&c))
        .then_some("ERR Client names cannot contain spaces, newlines or special characters.")
}

/// The name a client is known by after `CLIENT SETNAME` / `HELLO ... SETNAME`: an empty
/// name removes it, as in Redis.
pub(crate) fn client_name(name: Bytes) -> Option<Bytes> {
    (!name.is_empty()).then_some(name)
}

/// HELLO's refusal for a connection that has not authenticated.
pub(crate) const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`, read whole.
#[derive(Default)]
pub(crate) struct Hello {
    /// The protocol asked for; `None` keeps the connection's.
    pub proto: Option<u8>,
    /// `[username, password]`.
    pub auth: Option<[Bytes; 2]>,
    pub name: Option<Bytes>,
}

/// Reads HELLO's arguments in full before any takes effect, as Redis 7 does: a bad version,
/// an unknown option or a bad name is the answer even when credentials come with it, and
/// the credentials are tried only then (by the caller, which also sets the name and the
/// protocol only once the connection is authenticated).
pub(crate) fn parse_hello(args: &[Bytes]) -> Result<Hello, String> {
    let mut h = Hello::default();
    let mut i = 1;
    if let Some(v) = args.get(1) {
        h.proto = Some(match parse_i64(v) {
            Some(2) => 2,
            Some(3) => 3,
            Some(_) => return Err("NOPROTO unsupported protocol version".into()),
            None => return Err("ERR Protocol version is not an integer or out of range".into()),
        });
        i = 2;
    }
    while i < args.len() {
        let more = args.len() - 1 - i;
        match upper(&args[i]).as_str() {
            "AUTH" if more >= 2 => {
                h.auth = Some([args[i + 1].clone(), args[i + 2].clone()]);
                i += 3;
            }
            "SETNAME" if more >= 1 => {
                if let Some(e) = bad_client_name(&args[i + 1]) {
                    return Err(e.into());
                }
                h.name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Err(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i])
                ))
            }
        }
    }
    Ok(h)
}
