//! Node configuration: command-line flags, optionally a TOML file with the same keys
//! (flags win), and defaults.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use replication::quorum::SyncStandbys;
use serde::Deserialize;
use storage::Durability;

/// Flags of `replidb serve`. Every field is optional so a config file can supply it.
#[derive(Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// Address to listen on. [default: 127.0.0.1]
    #[arg(long)]
    pub bind: Option<String>,

    /// Client port (RESP). [default: 6380]
    #[arg(long)]
    pub port: Option<u16>,

    /// Require clients to AUTH with this password.
    #[arg(long)]
    pub requirepass: Option<String>,

    /// The synchronous quorum, in PostgreSQL's synchronous_standby_names syntax:
    /// 'ANY 1 (r1, r2)' (any one of them), 'FIRST 2 (r1, r2, r3)' (the first two connected, in
    /// list order), '*' in a list for any name, '' for asynchronous replication. Changeable
    /// at run time with CONFIG SET sync-standbys. On a replica it takes effect on promotion.
    #[arg(long, value_name = "QUORUM")]
    pub sync_standbys: Option<String>,

    /// Default durability of a commit (a connection may choose its own with DURABILITY):
    /// off (acknowledged before the local fsync), local (after it), remote_write /
    /// remote_flush / remote_apply (also after the sync-standbys quorum has received /
    /// fsynced / applied it). [default: local, or remote_flush when --sync-standbys is set]
    #[arg(long, value_name = "LEVEL")]
    pub sync_commit: Option<String>,

    /// How long a commit waits for its quorum, in milliseconds; 0 waits forever. A commit
    /// that times out gets -NOQUORUM naming its LSN: it is committed locally but not
    /// acknowledged by the quorum. [default: 0]
    #[arg(long, value_name = "MS")]
    pub sync_timeout_ms: Option<u64>,

    /// Run as a replica of the primary whose client port is HOST:PORT (replication runs over
    /// that same port). The data directory must be new or a replica of that primary.
    #[arg(long, value_name = "HOST:PORT")]
    pub replicaof: Option<String>,

    /// This node's name, as the primary's INFO and sync-standbys lists call it.
    #[arg(long)]
    pub name: Option<String>,

    /// The password a replica sends to its primary (the primary's --requirepass).
    #[arg(long)]
    pub primary_password: Option<String>,

    /// The most WAL a primary keeps for replicas that are behind or away, e.g. 1GiB, 512MiB;
    /// a replica further behind is reseeded from a base backup when it returns, so a
    /// vanished replica never fills the disk. [default: 1GiB]
    #[arg(long, value_name = "SIZE")]
    pub max_retained_wal: Option<String>,

    /// Size of each WAL segment file for a new data directory, e.g. 16MiB (an existing
    /// directory keeps its own). [default: 16MiB]
    #[arg(long, value_name = "SIZE")]
    pub wal_segment_size: Option<String>,

    /// Refuse writes (-NOREPLICAS) while fewer than N replicas are connected and have
    /// reported within --min-replicas-max-lag-ms, as Redis does: it bounds what an isolated
    /// primary can accept in asynchronous mode. [default: 0, off]
    #[arg(long, value_name = "N")]
    pub min_replicas_to_write: Option<usize>,

    /// See --min-replicas-to-write. Replicas report at least every 500 ms. [default: 2000]
    #[arg(long, value_name = "MS")]
    pub min_replicas_max_lag_ms: Option<u64>,

    /// The most connections served at once (clients, replicas and other nodes' replication
    /// connections alike); one more is answered `-ERR max number of clients reached` and
    /// closed, as Redis does. Every queue a connection can grow (writes waiting to be
    /// applied, commits waiting for the quorum, WAL waiters) holds one entry per connection,
    /// so this bounds them all. [default: 10000]
    #[arg(long, value_name = "N")]
    pub maxclients: Option<usize>,

    /// Serve Prometheus metrics (text format) over HTTP at http://HOST:PORT/metrics: role,
    /// epoch, LSNs, commits and their latency by level, replicas and their lag, repairs,
    /// failovers, WAL and checkpoint activity, clients. Off unless set.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// How often the background scrub reads every page and the WAL from disk and checks
    /// their checksums (a replica repairs a damaged page from its primary), e.g. 1d, 12h,
    /// 30m, 90s; 0 turns it off (SCRUB still runs one on demand). [default: 1d]
    #[arg(long, value_name = "DURATION")]
    pub scrub_interval: Option<String>,

    /// How often a replica compares the next 1,024 of its pages with its primary's copies of
    /// the same versions, round the whole file (drift check); a page that differs is
    /// replaced with the primary's and counted (`drifted_pages` in INFO). 0 turns it off.
    /// [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub verify_interval: Option<String>,

    /// The most a scrub reads per second, e.g. 16MiB; 0 is unbounded. [default: 16MiB]
    #[arg(long, value_name = "SIZE")]
    pub scrub_rate: Option<String>,

    /// Join a cluster coordinated by etcd at these endpoints (comma-separated, e.g.
    /// 127.0.0.1:2379,127.0.0.1:22379): the members elect the primary through a leader key
    /// under /replidb/CLUSTER/ and the others follow it (no --replicaof). Needs --cluster and
    /// --name.
    #[arg(long, value_name = "URL[,URL...]")]
    pub etcd: Option<String>,

    /// The cluster's name: its keys live under /replidb/CLUSTER/ in etcd, and Sentinel
    /// clients ask for it as the master's name (SENTINEL GET-MASTER-ADDR-BY-NAME CLUSTER).
    #[arg(long, value_name = "CLUSTER")]
    pub cluster: Option<String>,

    /// How long the leader's etcd lease lives without renewal: a primary that cannot renew
    /// it stops taking writes before it runs out, and another member takes over after it.
    /// etcd counts whole seconds (rounded up). [default: 5000]
    #[arg(long, value_name = "MS")]
    pub failover_ttl_ms: Option<u64>,

    /// The HOST:PORT other members and clients reach this node at (what the leader key and
    /// SENTINEL replies give). [default: --bind:--port, which must then not be 0.0.0.0]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// A TOML file with any of these settings (same names, e.g. `port = 6390`); flags win.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// The resolved configuration of a node.
#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub bind: String,
    pub port: u16,
    pub requirepass: Option<String>,
    pub sync_commit: Durability,
    pub sync_standbys: Option<SyncStandbys>,
    pub sync_timeout_ms: u64,
    pub max_retained_wal: u64,
    pub min_replicas_to_write: usize,
    pub min_replicas_max_lag_ms: u64,
    pub wal_segment_bytes: u64,
    pub maxclients: usize,
    /// Background scrubs: every this often (`None`: off), at most this many bytes a second.
    pub scrub_interval: Option<std::time::Duration>,
    pub scrub_rate: u64,
    /// Drift checks on a replica: every this often (`None`: off).
    pub verify_interval: Option<std::time::Duration>,
    /// Set on a replica: the primary's HOST:PORT.
    pub replicaof: Option<String>,
    /// Set on a cluster member (--etcd).
    pub cluster: Option<replication::cluster::ClusterConfig>,
    pub name: String,
    pub primary_password: Option<String>,
    /// Where /metrics is served, if anywhere.
    pub metrics_addr: Option<String>,
}

impl Config {
    /// Merges flags over the config file (if any) over defaults, and checks the result.
    pub fn resolve(flags: ServeArgs) -> Result<Config> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let dir = flags
            .dir
            .or(file.dir)
            .context("--dir is required (or `dir = \"...\"` in the config file)")?;
        let sync_standbys = match flags.sync_standbys.or(file.sync_standbys) {
            None => None,
            Some(s) => {
                SyncStandbys::parse(&s).map_err(|e| anyhow::anyhow!("--sync-standbys: {e}"))?
            }
        };
        let sync_commit = match flags.sync_commit.or(file.sync_commit) {
            None if sync_standbys.is_some() => Durability::RemoteFlush,
            None => Durability::Local,
            Some(s) => match Durability::parse(&s) {
                Some(l) => l,
                None => bail!("--sync-commit {s:?}: expected off, local, remote_write, remote_flush or remote_apply"),
            },
        };
        let requirepass = flags
            .requirepass
            .or(file.requirepass)
            .filter(|p| !p.is_empty());
        let replicaof = flags.replicaof.or(file.replicaof).filter(|r| !r.is_empty());
        if let Some(r) = &replicaof {
            let ok = r
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                bail!("--replicaof {r:?}: expected HOST:PORT");
            }
        }
        let explicit_name = flags.name.clone().or(file.name.clone()).is_some();
        let name = flags.name.or(file.name).unwrap_or_else(|| {
            if replicaof.is_some() {
                "replica".into()
            } else {
                "primary".into()
            }
        });
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            bail!("--name {name:?}: 1 to 64 letters, digits, '_', '-' or '.'");
        }
        let bind = flags
            .bind
            .or(file.bind)
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = flags.port.or(file.port).unwrap_or(6380);
        let cluster = match (flags.etcd.or(file.etcd), flags.cluster.or(file.cluster)) {
            (None, None) => None,
            (None, Some(_)) => bail!("--cluster needs --etcd (the etcd endpoints)"),
            (Some(_), None) => bail!("--etcd needs --cluster (the cluster's name)"),
            (Some(etcd), Some(cluster)) => {
                if replicaof.is_some() {
                    bail!("--replicaof and --etcd exclude each other: a cluster member follows whoever holds the leader key");
                }
                if !explicit_name {
                    bail!("a cluster member needs --name (unique in the cluster)");
                }
                if cluster.is_empty()
                    || !cluster
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                {
                    bail!("--cluster {cluster:?}: letters, digits, '_', '-' or '.'");
                }
                let endpoints: Vec<String> = etcd
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
                if endpoints.is_empty() {
                    bail!("--etcd {etcd:?}: expected HOST:PORT[,HOST:PORT...]");
                }
                let ttl_ms = flags
                    .failover_ttl_ms
                    .or(file.failover_ttl_ms)
                    .unwrap_or(5000);
                if !(1000..=600_000).contains(&ttl_ms) {
                    bail!("--failover-ttl-ms {ttl_ms}: between 1000 and 600000");
                }
                let advertise = match flags.advertise.or(file.advertise) {
                    Some(a) => a,
                    None if bind == "0.0.0.0" || bind == "::" => {
                        bail!("--bind {bind} needs --advertise HOST:PORT: the address other members and clients reach this node at")
                    }
                    None => format!("{bind}:{port}"),
                };
                if !advertise
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    bail!("--advertise {advertise:?}: expected HOST:PORT");
                }
                Some(replication::cluster::ClusterConfig {
                    endpoints,
                    cluster,
                    name: name.clone(),
                    advertise,
                    ttl: std::time::Duration::from_millis(ttl_ms),
                })
            }
        };
        Ok(Config {
            replicaof,
            cluster,
            name,
            primary_password: flags
                .primary_password
                .or(file.primary_password)
                .filter(|p| !p.is_empty()),
            dir,
            bind,
            port,
            requirepass,
            sync_commit,
            sync_standbys,
            sync_timeout_ms: flags.sync_timeout_ms.or(file.sync_timeout_ms).unwrap_or(0),
            metrics_addr: flags.metrics_addr.or(file.metrics_addr),
            maxclients: match flags.maxclients.or(file.maxclients).unwrap_or(10_000) {
                0 => bail!("--maxclients 0: at least one connection must be allowed"),
                n => n,
            },
            min_replicas_to_write: flags
                .min_replicas_to_write
                .or(file.min_replicas_to_write)
                .unwrap_or(0),
            min_replicas_max_lag_ms: flags
                .min_replicas_max_lag_ms
                .or(file.min_replicas_max_lag_ms)
                .unwrap_or(2000),
            max_retained_wal: match flags.max_retained_wal.or(file.max_retained_wal) {
                None => 1 << 30,
                Some(s) => parse_size(&s).with_context(|| format!("--max-retained-wal {s:?}"))?,
            },
            scrub_interval: match flags.scrub_interval.or(file.scrub_interval) {
                None => Some(std::time::Duration::from_secs(86_400)),
                Some(s) => {
                    let d =
                        parse_duration(&s).with_context(|| format!("--scrub-interval {s:?}"))?;
                    (!d.is_zero()).then_some(d)
                }
            },
            verify_interval: match flags.verify_interval.or(file.verify_interval) {
                None => Some(std::time::Duration::from_secs(10)),
                Some(s) => {
                    let d =
                        parse_duration(&s).with_context(|| format!("--verify-interval {s:?}"))?;
                    (!d.is_zero()).then_some(d)
                }
            },
            scrub_rate: match flags.scrub_rate.or(file.scrub_rate) {
                None => 16 << 20,
                Some(s) => parse_size(&s).with_context(|| format!("--scrub-rate {s:?}"))?,
            },
            wal_segment_bytes: match flags.wal_segment_size.or(file.wal_segment_size) {
                None => storage::Options::default().wal_segment_bytes,
                Some(s) => {
                    let n = parse_size(&s).with_context(|| format!("--wal-segment-size {s:?}"))?;
                    if !(64 << 10..=1 << 30).contains(&n) {
                        bail!("--wal-segment-size {s:?}: between 64KiB and 1GiB");
                    }
                    n
                }
            },
        })
    }
}

/// `1d`, `12h`, `30m`, `90s`, `250ms`, `3600` (seconds): a duration.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("expected a duration such as 1d, 12h, 30m, 90s or 250ms"))?;
    let ms: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => bail!("unknown unit {u:?}: expected ms, s, m, h or d"),
    };
    Ok(std::time::Duration::from_millis(
        n.checked_mul(ms).context("duration too long")?,
    ))
}

/// `1GiB`, `512MiB`, `64KiB`, `1048576`, `2G`, `10mb`: a byte count (binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("expected a size such as 1GiB, 512MiB or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => bail!("unknown unit {u:?}: expected B, KiB, MiB, GiB or TiB"),
    };
    n.checked_mul(mult).context("size too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        use std::time::Duration;
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1_800));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("node.toml");
        std::fs::write(
            &f,
            "dir = \"/data/a\"\nport = 7000\nsync-commit = \"off\"\n",
        )
        .unwrap();
        let c = Config::resolve(ServeArgs {
            port: Some(7001),
            config: Some(f.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.dir, c.port, c.sync_commit, c.bind.as_str()),
            (PathBuf::from("/data/a"), 7001, Durability::Off, "127.0.0.1")
        );
        std::fs::write(&f, "prot = 1\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(f),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        let err = Config::resolve(ServeArgs {
            dir: Some("/x".into()),
            sync_commit: Some("sometimes".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("expected off, local"), "{err}");
        let c = Config::resolve(ServeArgs {
            dir: Some("/x".into()),
            sync_standbys: Some("ANY 1 (r1, r2)".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.sync_commit,
            Durability::RemoteFlush,
            "standbys make remote_flush the default"
        );
        let err = Config::resolve(ServeArgs {
            dir: Some("/x".into()),
            sync_standbys: Some("ANY 3 (r1, r2)".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("only 2 named"), "{err}");
    }
}
