//! Node configuration: command-line flags, each also read from a `TROUPE_*` variable.
//!
//! Defaults run a local node with nothing to install; [`Config::validate`] turns the raw
//! settings into what the node uses and fails with one clear line on a bad setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::self_membership::OnStop;
use troupe_membership::tls::{Identity, TlsArgs, Transport};
use troupe_membership::RaftTiming;
use troupe_proto::token::{self as auth, Verifier};
use troupe_proto::NodeId;
use troupe_runtime::duration::parse_duration;
use troupe_runtime::listen::LimitArgs;

/// The origins a node on loopback allows when none are set: pages served from this machine.
pub const LOCAL_ORIGINS: [&str; 2] = ["http://localhost:*", "http://127.0.0.1:*"];

#[derive(Debug, Clone, Parser)]
#[command(
    name = "troupe-node",
    version,
    about = "Troupe room node: live Yjs scenes over y-websocket"
)]
pub struct Config {
    /// Address the WebSocket and HTTP endpoint listens on (port 0 picks a free port).
    #[arg(long, env = "TROUPE_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// This node's id in the cluster (a positive integer, unique in the cluster); also
    /// recorded as the writer of each log row. `from-hostname`: the number at the end of
    /// the host name plus one, so that a StatefulSet's pod `troupe-node-0` is node 1.
    #[arg(long, env = "TROUPE_NODE_ID", default_value = "1", value_parser = parse_node_id)]
    pub node_id: u64,

    /// Internal address for Raft between nodes and for admin calls (troupectl, routers).
    #[arg(long, env = "TROUPE_RPC_LISTEN", default_value = "127.0.0.1:4100")]
    pub rpc_listen: SocketAddr,

    /// Accept the demo tokens a router mints for anyone who asks (`TROUPE_DEV_TOKENS`, whose
    /// audience is `troupe-dev`). For `troupe dev` and demos only.
    #[arg(
        long,
        env = "TROUPE_ACCEPT_DEV_TOKENS",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
    )]
    pub accept_dev_tokens: bool,

    /// Certificates of the internal port (mutual TLS between nodes, routers and troupectl).
    #[command(flatten)]
    pub internal: TlsArgs,

    /// The internal address other nodes reach this one at (default: this node's entry in
    /// TROUPE_PEERS, else the bound TROUPE_RPC_LISTEN address).
    #[arg(long, env = "TROUPE_RPC_ADVERTISE")]
    pub rpc_advertise: Option<String>,

    /// The initial voters as `id=host:port,…` (their internal addresses), the same value on
    /// each of them. Empty: this node is a cluster of its own. A node that is not listed
    /// starts empty and waits for `troupectl add`.
    #[arg(long, env = "TROUPE_PEERS", default_value = "")]
    pub peers: String,

    /// Put this node on the ring whenever it starts: a node that is not an initial voter
    /// asks the cluster (TROUPE_PEERS) to admit it, and a drained one reactivates itself,
    /// so that no `troupectl add` or `activate` is needed (a StatefulSet's pods).
    #[arg(
        long,
        env = "TROUPE_JOIN",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
    )]
    pub join: bool,

    /// What this node does with its place in the cluster when it is told to stop
    /// (SIGTERM): `stop` leaves it to failover; `drain` first moves its scenes to the
    /// other nodes by planned handoff; `leave` drains, then removes itself from the
    /// membership; `kubernetes` leaves when its StatefulSet was scaled below this pod and
    /// drains otherwise (a restart).
    #[arg(long, env = "TROUPE_ON_STOP", value_enum, default_value_t = OnStop::Stop)]
    pub on_stop: OnStop,

    /// The Raft leader marks a node `down` (and moves its scenes) after it has not
    /// answered for this long.
    #[arg(long, env = "TROUPE_DOWN_AFTER", default_value = "1s", value_parser = parse_duration)]
    pub down_after: Duration,

    /// The shortest Raft election timeout. A dead leader is replaced 3× this after its last
    /// heartbeat at most (the leader lease, twice this, plus a random timeout up to twice
    /// this); heartbeats go every third of it. Raise it where nodes are far apart.
    #[arg(long, env = "TROUPE_ELECTION_TIMEOUT", default_value = "150ms", value_parser = parse_duration)]
    pub election_timeout: Duration,

    /// The URL clients use to reach this node (default: ws://<listen>).
    #[arg(long, env = "TROUPE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Folder for the Raft state (`raft-<id>/`) and the embedded store (a SQLite file,
    /// used when no database URL is set).
    #[arg(long, env = "TROUPE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Postgres URL (postgres://…); when set, Postgres is the store and migrations run at start.
    #[arg(long, env = "TROUPE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Redis URL (redis://…) for presence and failover notices; unset: no presence outside
    /// rooms and no notices (editing is unaffected either way).
    #[arg(long, env = "TROUPE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Shared secret for HS256 tokens.
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file for RS256 or EdDSA tokens (instead of a secret).
    #[arg(long, env = "TROUPE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<String>,

    /// Algorithm of tokens verified with the public key: RS256 or EdDSA.
    #[arg(long, env = "TROUPE_JWT_ALGORITHM", default_value = "RS256")]
    pub jwt_algorithm: String,

    /// Required `aud` claim.
    #[arg(long, env = "TROUPE_JWT_AUDIENCE", default_value = "troupe")]
    pub jwt_audience: String,

    /// Required `iss` claim; unset: any issuer (or none).
    #[arg(long, env = "TROUPE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The longest a token may still be valid when it is presented (e.g. 1h, 1d); tokens
    /// minted for longer are refused. Unset: no limit.
    #[arg(long, env = "TROUPE_JWT_MAX_LIFETIME", value_parser = troupe_runtime::duration::parse_duration)]
    pub jwt_max_lifetime: Option<std::time::Duration>,

    /// Browser origins allowed to open a WebSocket, comma-separated; `*` allows any and a
    /// trailing `:*` any port. Clients that send no Origin (servers, tools) are not affected.
    /// Unset: `http://localhost:*,http://127.0.0.1:*` for a node listening on loopback; a
    /// node listening elsewhere refuses to start without it.
    #[arg(long, env = "TROUPE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Largest WebSocket message accepted, in bytes; larger ones close with 4413.
    #[arg(long, env = "TROUPE_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    pub max_frame_bytes: usize,

    /// Largest document a scene may grow to, in bytes of encoded state.
    #[arg(long, env = "TROUPE_MAX_DOC_BYTES", default_value_t = 32 << 20)]
    pub max_doc_bytes: usize,

    /// Most connections one scene accepts; more close with 4429.
    #[arg(long, env = "TROUPE_MAX_CONNECTIONS_PER_ROOM", default_value_t = 256)]
    pub max_connections_per_room: usize,

    /// Messages queued for one slow client before it is disconnected.
    #[arg(long, env = "TROUPE_CLIENT_QUEUE", default_value_t = 1024)]
    pub client_queue: usize,

    /// Bytes queued for one slow client before it is disconnected (at least one full
    /// document plus one frame, whatever is set here).
    #[arg(long, env = "TROUPE_CLIENT_QUEUE_BYTES", default_value_t = 8 << 20)]
    pub client_queue_bytes: usize,

    /// Largest awareness (presence) message, in bytes.
    #[arg(long, env = "TROUPE_MAX_AWARENESS_BYTES", default_value_t = 16 * 1024)]
    pub max_awareness_bytes: usize,

    /// Awareness messages per second one connection may send (bursts of twice that).
    #[arg(long, env = "TROUPE_AWARENESS_RATE", default_value_t = 30)]
    pub awareness_rate: u32,

    /// Messages per second one connection may send before it is closed with 4429.
    #[arg(long, env = "TROUPE_MESSAGE_RATE", default_value_t = 500)]
    pub message_rate: u32,

    /// A room with no clients for this long is flushed and unloaded.
    #[arg(long, env = "TROUPE_ROOM_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub room_idle: Duration,

    /// Interval of WebSocket pings; a peer silent for two intervals is dropped.
    #[arg(long, env = "TROUPE_PING_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Fold a scene's log into a snapshot after this many log rows…
    #[arg(long, env = "TROUPE_COMPACT_ROWS", default_value_t = 500)]
    pub compact_rows: u64,

    /// …or after this many bytes of log…
    #[arg(long, env = "TROUPE_COMPACT_BYTES", default_value_t = 4 << 20)]
    pub compact_bytes: u64,

    /// …or when the oldest row not in a snapshot is this old.
    #[arg(long, env = "TROUPE_COMPACT_AGE", default_value = "10m", value_parser = parse_duration)]
    pub compact_age: Duration,

    /// Threads that run rooms and connections. One (the default) avoids cross-thread
    /// wake-ups and is the most efficient up to several thousand edits per second.
    #[arg(long, env = "TROUPE_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// A token `/metrics` requires (`Authorization: Bearer <token>`); unset: open.
    #[arg(long, env = "TROUPE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Most log rows written in one group commit.
    #[arg(long, env = "TROUPE_COMMIT_BATCH", default_value_t = 512)]
    pub commit_batch: usize,

    /// Shortest time between the starts of two group commits. A commit that comes sooner
    /// waits for the rest of it, gathering what arrives meanwhile into the same
    /// transaction: under load the store sees fewer, larger commits (its cost is mostly per
    /// commit), at the price of up to this much on an ack. An edit arriving after a quiet
    /// spell commits at once. `0`: commit as soon as the previous commit ends.
    #[arg(long, env = "TROUPE_COMMIT_INTERVAL", default_value = "5ms", value_parser = parse_duration)]
    pub commit_interval: Duration,

    /// Where change notifications go (`http://` or `https://`): a signed `POST` per scene
    /// changed, restored or backfilled. Unset: none are sent.
    #[arg(long, env = "TROUPE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// The key webhook bodies are signed with (HMAC-SHA256), at least 16 bytes.
    #[arg(long, env = "TROUPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// A scene's `scene.changed` is sent once it has been quiet this long (or four times
    /// this long after its first change while people keep typing).
    #[arg(long, env = "TROUPE_WEBHOOK_DEBOUNCE", default_value = "2s", value_parser = parse_duration)]
    pub webhook_debounce: Duration,

    /// The first retry of a webhook the receiver did not take waits this long, each next
    /// one twice as long (six attempts in all).
    #[arg(long, env = "TROUPE_WEBHOOK_RETRY", default_value = "1s", value_parser = parse_duration)]
    pub webhook_retry: Duration,

    /// Automatic rollback: when a critical rollback trigger (data loss, sync failures over
    /// 5 %, connection success under 95 %) has held this long on this node, it switches
    /// realtime editing off for the cluster. Unset: the triggers only report.
    #[arg(long, env = "TROUPE_AUTO_ROLLBACK", value_parser = parse_duration)]
    pub auto_rollback: Option<Duration>,

    /// The public port's limits: connections, header time and size, body size.
    #[command(flatten)]
    pub port: LimitArgs,

    /// New scenes one user (a token's `sub`) may bring into being per minute, counted over
    /// the whole cluster; more are refused with 4429. 0: no limit.
    #[arg(long, env = "TROUPE_MAX_NEW_SCENES_PER_MINUTE", default_value_t = 60)]
    pub max_new_scenes_per_minute: u64,

    /// A scene of the P1 product is written back to `content_blocks` this long after its
    /// last change…
    #[arg(long, env = "TROUPE_P1_WRITE_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub p1_write_delay: Duration,

    /// …or this long after its first unwritten change while people keep typing: how far
    /// P1's readers may lag behind the editors.
    #[arg(long, env = "TROUPE_P1_MAX_LAG", default_value = "10s", value_parser = parse_duration)]
    pub p1_max_lag: Duration,

    /// How often a live scene of the P1 product looks for writes P1 made itself into
    /// `content_blocks`, to merge them into the document. 0: never (only on load).
    #[arg(long, env = "TROUPE_P1_CHECK_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub p1_check_interval: Duration,

    /// Shortest time between two automatic versions of a scene in its history (taken from
    /// compaction snapshots). 0: every snapshot becomes one.
    #[arg(long, env = "TROUPE_HISTORY_EVERY", default_value = "10m", value_parser = parse_duration)]
    pub history_every: Duration,

    /// Bytes of edits one user may write per hour, counted over the whole cluster (in steps
    /// of 64 KiB per connection); beyond, the connection closes with 4429. 0: no limit.
    #[arg(long, env = "TROUPE_MAX_BYTES_PER_HOUR", default_value_t = 256 << 20)]
    pub max_bytes_per_hour: u64,

    /// Most scenes this node holds live at once; a connection that would load one more is
    /// closed with 1013 (try again).
    #[arg(long, env = "TROUPE_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,

    /// The lease row of a scene that never got content is deleted once released and not
    /// claimed for this long.
    #[arg(long, env = "TROUPE_LEASE_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub lease_retention: Duration,

    /// How often a node collects such lease rows.
    #[arg(long, env = "TROUPE_LEASE_GC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub lease_gc_interval: Duration,
}

/// What one user and one node may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// 0: no limit.
    pub new_scenes_per_minute: u64,
    /// 0: no limit.
    pub bytes_per_hour: u64,
    pub max_rooms: usize,
    pub lease_retention: Duration,
    pub lease_gc_interval: Duration,
}

/// Settings the rooms and connections work with.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_doc_bytes: usize,
    pub max_connections_per_room: usize,
    pub client_queue: usize,
    pub client_queue_bytes: usize,
    pub max_awareness_bytes: usize,
    pub awareness_rate: u32,
    pub message_rate: u32,
    pub room_idle: Duration,
    pub ping_interval: Duration,
    pub compact_rows: u64,
    pub compact_bytes: u64,
    pub compact_age: Duration,
    /// How long after the last change a P1 scene is written back to `content_blocks`.
    pub p1_write_delay: Duration,
    /// The longest a P1 scene's projection may lag while people keep typing.
    pub p1_max_lag: Duration,
    /// How often a live P1 scene looks for P1's own writes.
    pub p1_check_interval: Duration,
    /// Shortest time between two automatic versions in a scene's history.
    pub history_every: Duration,
}

pub use troupe_proto::origin::OriginPolicy;

/// Where edits are stored.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    Postgres(String),
    Sqlite(PathBuf),
}

/// A checked configuration, ready to run.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub node_id: NodeId,
    pub rpc_listen: SocketAddr,
    pub rpc_advertise: Option<String>,
    /// How the internal port authenticates (mutual TLS, or nothing on loopback).
    pub transport: Transport,
    /// Initial voters: id -> internal address.
    pub peers: BTreeMap<NodeId, String>,
    /// Folder of this node's Raft log, vote and snapshot.
    pub raft_dir: PathBuf,
    pub down_after: Duration,
    pub raft_timing: RaftTiming,
    /// Whether this node puts itself on the ring when it starts.
    pub join: bool,
    pub on_stop: OnStop,
    pub redis_url: Option<String>,
    pub public_url: Option<String>,
    pub store: StoreLocation,
    pub verifier: Verifier,
    pub origins: OriginPolicy,
    pub limits: Limits,
    /// The public port's connection, header and body limits.
    pub port: troupe_runtime::listen::Limits,
    pub quotas: Quotas,
    pub commit_batch: usize,
    pub commit_interval: Duration,
    pub worker_threads: usize,
    /// What `/metrics` requires, if anything.
    pub metrics_token: Option<String>,
    /// Where change notifications go, if anywhere.
    pub webhooks: Option<crate::webhooks::WebhookSettings>,
    /// How long a critical rollback trigger must hold before this node rolls back, if ever.
    pub auto_rollback: Option<Duration>,
}

impl Config {
    fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_doc_bytes: self.max_doc_bytes,
            max_connections_per_room: self.max_connections_per_room,
            client_queue: self.client_queue,
            client_queue_bytes: self.client_queue_bytes,
            max_awareness_bytes: self.max_awareness_bytes,
            awareness_rate: self.awareness_rate,
            message_rate: self.message_rate,
            room_idle: self.room_idle,
            ping_interval: self.ping_interval,
            compact_rows: self.compact_rows,
            compact_bytes: self.compact_bytes,
            compact_age: self.compact_age,
            p1_write_delay: self.p1_write_delay,
            p1_max_lag: self.p1_max_lag,
            p1_check_interval: self.p1_check_interval,
            history_every: self.history_every,
        }
    }

    /// The internal port's credentials: a certificate naming this node, or plain HTTP on
    /// loopback when asked for explicitly.
    /// `{id}` in the certificate's and key's paths is this node's id, so that the pods of
    /// a StatefulSet share one setting.
    fn transport(&self) -> Result<Transport, String> {
        let mut files = self.internal.clone();
        let id = self.node_id.to_string();
        for path in [&mut files.cert, &mut files.key].into_iter().flatten() {
            if let Some(text) = path.to_str().filter(|t| t.contains("{id}")) {
                *path = PathBuf::from(text.replace("{id}", &id));
            }
        }
        let transport = Transport::load(&files).map_err(|e| e.to_string())?;
        match transport.identity() {
            None if !self.rpc_listen.ip().is_loopback() => Err(format!(
                "TROUPE_INTERNAL_INSECURE=1 is refused: TROUPE_RPC_LISTEN {} is not on loopback, so \
                 anyone on the network could take over the cluster; give the node a certificate \
                 (`troupectl certs node --id {}`)",
                self.rpc_listen, self.node_id
            )),
            None => Ok(transport),
            Some(Identity::Node(id)) if id.0 == self.node_id => Ok(transport),
            Some(other) => Err(format!(
                "TROUPE_INTERNAL_CERT names {other}, not node {} (make one with `troupectl certs node --id {}`)",
                self.node_id, self.node_id
            )),
        }
    }

    /// The allowed origins: as set, or the local ones for a node on loopback. A node that
    /// browsers reach from elsewhere must say which app they come from.
    fn origins(&self) -> Result<Vec<String>, String> {
        match &self.allowed_origins {
            Some(origins) => Ok(origins.clone()),
            None if self.listen.ip().is_loopback() => Ok(LOCAL_ORIGINS.iter().map(|o| o.to_string()).collect()),
            None => Err(format!(
                "TROUPE_ALLOWED_ORIGINS must be set: this node listens on {}, not on loopback, and the default \
                 ({}) only suits a node on this machine; set your app's origins, e.g. https://app.example.com \
                 (or * to allow any)",
                self.listen,
                LOCAL_ORIGINS.join(",")
            )),
        }
    }

    /// Checks every setting; the error is one line naming the setting.
    pub fn validate(&self) -> Result<Settings, String> {
        let verifier = match (&self.jwt_secret, &self.jwt_public_key_file) {
            (Some(_), Some(_)) => {
                return Err("set either TROUPE_JWT_SECRET or TROUPE_JWT_PUBLIC_KEY_FILE, not both".into())
            }
            (None, None) => {
                return Err(
                    "TROUPE_JWT_SECRET (or TROUPE_JWT_PUBLIC_KEY_FILE) is required to verify client tokens"
                        .into(),
                )
            }
            (Some(secret), None) => {
                if secret.len() < auth::MIN_SECRET_LEN {
                    return Err(format!(
                        "TROUPE_JWT_SECRET must be at least {} bytes (make one with `openssl rand -hex 32`)",
                        auth::MIN_SECRET_LEN
                    ));
                }
                Verifier::from_secret(secret.as_bytes(), &self.jwt_audience)
            }
            (None, Some(path)) => {
                let alg = auth::parse_algorithm(&self.jwt_algorithm).map_err(|e| e.to_string())?;
                if alg == jsonwebtoken::Algorithm::HS256 {
                    return Err("TROUPE_JWT_ALGORITHM must be RS256 or EdDSA with a public key file".into());
                }
                Verifier::from_public_key_file(path, alg, &self.jwt_audience).map_err(|e| e.to_string())?
            }
        };
        let verifier = match self.jwt_issuer.as_deref().map(str::trim) {
            Some("") | None => verifier,
            Some(issuer) => verifier.with_issuer(issuer),
        };
        let verifier = match self.jwt_max_lifetime {
            Some(max) if max.is_zero() => return Err("TROUPE_JWT_MAX_LIFETIME must be more than 0".into()),
            Some(max) => verifier.with_max_lifetime(max),
            None => verifier,
        };
        let verifier = if self.accept_dev_tokens {
            verifier.with_dev_tokens()
        } else {
            verifier
        };
        if self.node_id == 0 {
            return Err("TROUPE_NODE_ID must be a positive integer".into());
        }
        let peers = parse_peers(&self.peers)?;
        let transport = self.transport()?;
        if let Some(addr) = &self.rpc_advertise {
            check_host_port("TROUPE_RPC_ADVERTISE", addr)?;
        }
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url).map_err(|e| format!("TROUPE_PUBLIC_URL {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "ws" | "wss") {
                return Err(format!(
                    "TROUPE_PUBLIC_URL {url:?} must start with ws:// or wss://"
                ));
            }
        }
        let store = match &self.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreLocation::Postgres(url.clone())
            }
            Some(_) => return Err("TROUPE_DATABASE_URL must start with postgres://".into()),
            None => StoreLocation::Sqlite(self.data_dir.join("troupe.sqlite3")),
        };
        if self.max_frame_bytes < 1024 {
            return Err("TROUPE_MAX_FRAME_BYTES must be at least 1024".into());
        }
        if self.max_doc_bytes < self.max_frame_bytes {
            return Err("TROUPE_MAX_DOC_BYTES must be at least TROUPE_MAX_FRAME_BYTES".into());
        }
        for (name, value) in [
            ("TROUPE_MAX_CONNECTIONS_PER_ROOM", self.max_connections_per_room),
            ("TROUPE_CLIENT_QUEUE", self.client_queue),
            ("TROUPE_COMMIT_BATCH", self.commit_batch),
            ("TROUPE_WORKER_THREADS", self.worker_threads),
            ("TROUPE_AWARENESS_RATE", self.awareness_rate as usize),
            ("TROUPE_MESSAGE_RATE", self.message_rate as usize),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://"))
            {
                return Err("TROUPE_REDIS_URL must start with redis:// or rediss://".into());
            }
        }
        if self.down_after < Duration::from_millis(200) {
            return Err("TROUPE_DOWN_AFTER must be at least 200ms".into());
        }
        if !(Duration::from_millis(30)..=Duration::from_secs(60)).contains(&self.election_timeout) {
            return Err("TROUPE_ELECTION_TIMEOUT must be between 30ms and 60s".into());
        }
        if self.max_rooms == 0 {
            return Err("TROUPE_MAX_ROOMS must be at least 1".into());
        }
        if self.lease_gc_interval < Duration::from_millis(100) {
            return Err("TROUPE_LEASE_GC_INTERVAL must be at least 100ms".into());
        }
        if self.ping_interval < Duration::from_millis(100) {
            return Err("TROUPE_PING_INTERVAL must be at least 100ms".into());
        }
        Ok(Settings {
            listen: self.listen,
            node_id: NodeId(self.node_id),
            rpc_listen: self.rpc_listen,
            rpc_advertise: self.rpc_advertise.clone(),
            transport,
            peers,
            raft_dir: self.data_dir.join(format!("raft-{}", self.node_id)),
            down_after: self.down_after,
            raft_timing: RaftTiming::from_election_timeout(self.election_timeout),
            join: self.join,
            on_stop: self.on_stop,
            redis_url: self.redis_url.clone(),
            public_url: self.public_url.clone(),
            store,
            verifier,
            origins: OriginPolicy::new(&self.origins()?)?,
            limits: self.limits(),
            port: self.port.limits()?,
            quotas: Quotas {
                new_scenes_per_minute: self.max_new_scenes_per_minute,
                bytes_per_hour: self.max_bytes_per_hour,
                max_rooms: self.max_rooms,
                lease_retention: self.lease_retention,
                lease_gc_interval: self.lease_gc_interval,
            },
            commit_batch: self.commit_batch,
            commit_interval: self.commit_interval,
            worker_threads: self.worker_threads,
            metrics_token: self.metrics_token.clone().filter(|t| !t.trim().is_empty()),
            webhooks: self.webhooks()?,
            auto_rollback: self.auto_rollback,
        })
    }

    /// The webhook settings: a URL and a secret together, or neither.
    fn webhooks(&self) -> Result<Option<crate::webhooks::WebhookSettings>, String> {
        let url = self
            .webhook_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let secret = self.webhook_secret.as_deref().filter(|s| !s.is_empty());
        let (url, secret) = match (url, secret) {
            (None, None) => return Ok(None),
            (Some(url), Some(secret)) => (url, secret),
            (Some(_), None) => {
                return Err(
                    "TROUPE_WEBHOOK_URL needs TROUPE_WEBHOOK_SECRET (the key bodies are signed with)".into(),
                )
            }
            (None, Some(_)) => {
                return Err("TROUPE_WEBHOOK_SECRET is set but TROUPE_WEBHOOK_URL is not".into())
            }
        };
        let parsed: hyper::Uri = url
            .parse()
            .map_err(|_| format!("TROUPE_WEBHOOK_URL {url:?} is not a URL"))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(format!(
                "TROUPE_WEBHOOK_URL {url:?} must be http://host/… or https://host/…"
            ));
        }
        if secret.len() < 16 {
            return Err("TROUPE_WEBHOOK_SECRET must be at least 16 bytes".into());
        }
        if self.webhook_debounce < Duration::from_millis(10) || self.webhook_retry < Duration::from_millis(10)
        {
            return Err("TROUPE_WEBHOOK_DEBOUNCE and TROUPE_WEBHOOK_RETRY must be at least 10ms".into());
        }
        Ok(Some(crate::webhooks::WebhookSettings {
            url: parsed,
            secret: secret.as_bytes().to_vec(),
            debounce: self.webhook_debounce,
            retry_base: self.webhook_retry,
        }))
    }
}

/// Parses `TROUPE_PEERS`: `id=host:port` items separated by commas.
/// A node id as TROUPE_NODE_ID gives it: a number, or `from-hostname`.
fn parse_node_id(raw: &str) -> Result<u64, String> {
    if raw.trim() != "from-hostname" {
        return raw
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?} is neither a positive integer nor from-hostname"));
    }
    let host = crate::self_membership::host_name()
        .ok_or("from-hostname: this machine's host name cannot be read (set HOSTNAME)")?;
    crate::self_membership::ordinal(&host)
        .map(|(_, ordinal)| ordinal + 1)
        .ok_or_else(|| {
            format!("from-hostname: host name {host:?} does not end in -<number> (a StatefulSet pod's does)")
        })
}

fn parse_peers(raw: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("TROUPE_PEERS: {item:?} must look like id=host:port"))?;
        let id = id
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .map(NodeId)
            .ok_or_else(|| format!("TROUPE_PEERS: {id:?} is not a positive node id"))?;
        let addr = addr.trim();
        check_host_port("TROUPE_PEERS", addr)?;
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("TROUPE_PEERS: node {id} is listed twice"));
        }
    }
    if !matches!(peers.len(), 0 | 1 | 3 | 5) {
        return Err(format!(
            "TROUPE_PEERS lists {} voters: use 1, 3 or 5 (an even count tolerates no more failures \
             than one fewer, and more voters only slow every change down)",
            peers.len()
        ));
    }
    Ok(peers)
}

fn check_host_port(name: &str, addr: &str) -> Result<(), String> {
    if troupe_membership::state::is_host_port(addr) {
        Ok(())
    } else {
        Err(format!("{name}: {addr:?} must be host:port"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let mut all = vec![
            "troupe-node",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
            "--internal-insecure",
        ];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_run_locally() {
        let settings = config(&[]).validate().unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:4000");
        assert!(matches!(settings.store, StoreLocation::Sqlite(_)));
        assert!(settings.peers.is_empty());
        assert_eq!(settings.rpc_listen.to_string(), "127.0.0.1:4100");
        // A dead leader is replaced 0.45-0.6 s after its last heartbeat.
        let raft = &settings.raft_timing;
        assert_eq!(
            raft.election_timeout_min + raft.election_timeout_max,
            Duration::from_millis(450)
        );
        assert_eq!(raft.heartbeat, Duration::from_millis(50));
    }

    #[test]
    fn token_rules_apply_to_the_verifier() {
        use troupe_proto::token::{Claims, Role, Signer};
        let settings = config(&["--jwt-max-lifetime", "1h", "--jwt-issuer", "https://app.example"])
            .validate()
            .unwrap();
        let sign = |ttl: u64, iss: Option<&str>| {
            let claims = Claims::grant(
                "ada",
                "troupe",
                &[("s1", Role::Edit)],
                std::time::Duration::from_secs(ttl),
            );
            let mut value = serde_json::to_value(&claims).unwrap();
            if let Some(iss) = iss {
                value["iss"] = iss.into();
            }
            let key = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &value, &key).unwrap()
        };
        assert!(settings
            .verifier
            .verify(&sign(600, Some("https://app.example")))
            .is_ok());
        assert!(settings.verifier.verify(&sign(600, None)).is_err(), "no issuer");
        assert!(
            settings
                .verifier
                .verify(&sign(2 * 3600, Some("https://app.example")))
                .is_err(),
            "too long"
        );
        // Without the settings, neither rule applies.
        let plain = config(&[]).validate().unwrap();
        let token = Signer::from_secret(b"0123456789abcdef0123456789abcdef")
            .sign(&Claims::grant(
                "ada",
                "troupe",
                &[("s1", Role::Edit)],
                std::time::Duration::from_secs(7 * 24 * 3600),
            ))
            .unwrap();
        assert!(plain.verifier.verify(&token).is_ok());
        assert!(config(&["--jwt-max-lifetime", "0s"]).validate().is_err());
    }

    #[test]
    fn peers_parse() {
        let settings = config(&[
            "--peers",
            " 1=10.0.0.1:4100, 2=h2:4100,3=h3:4100 ",
            "--node-id",
            "2",
        ])
        .validate()
        .unwrap();
        assert_eq!(settings.peers.len(), 3);
        assert_eq!(settings.peers[&NodeId(2)], "h2:4100");
        assert!(settings.raft_dir.ends_with("raft-2"));
    }

    #[test]
    fn webhooks_need_a_url_and_a_secret() {
        assert!(config(&[]).validate().unwrap().webhooks.is_none());
        let hooks = config(&[
            "--webhook-url",
            "https://hooks.example/troupe",
            "--webhook-secret",
            "0123456789abcdef",
        ])
        .validate()
        .unwrap()
        .webhooks
        .unwrap();
        assert_eq!(hooks.url.host(), Some("hooks.example"));
        assert_eq!(hooks.debounce, Duration::from_secs(2));
    }

    #[test]
    fn bad_settings_fail_with_one_line() {
        for args in [
            &["--database-url", "mysql://x"][..],
            &["--node-id", "0"],
            &["--peers", "1=a:1,2=b:2"],
            &["--peers", "1=a:1,2=b:2,3=c:3,4=d:4,5=e:5,6=f:6,7=g:7"],
            &["--peers", "1=a:1,x=b:2,3=c:3"],
            &["--peers", "1=a:1,1=b:2,3=c:3"],
            &["--peers", "1=a"],
            &["--rpc-advertise", "nohost"],
            &["--redis-url", "http://localhost:6379"],
            &["--public-url", "http://x"],
            &["--max-frame-bytes", "10"],
            &["--election-timeout", "10ms"],
            &["--allowed-origins", "example.com"],
            &["--rpc-listen", "0.0.0.0:4100"],
            &["--listen", "0.0.0.0:4000"],
            &["--internal-ca", "/nonexistent/ca.crt"],
            &["--webhook-url", "http://hooks.example/troupe"],
            &["--webhook-secret", "0123456789abcdef"],
            &[
                "--webhook-url",
                "ftp://hooks.example",
                "--webhook-secret",
                "0123456789abcdef",
            ],
            &[
                "--webhook-url",
                "not a url",
                "--webhook-secret",
                "0123456789abcdef",
            ],
            &[
                "--webhook-url",
                "https://hooks.example",
                "--webhook-secret",
                "short",
            ],
        ] {
            let err = config(args).validate().err().unwrap();
            assert!(!err.contains('\n'), "{err}");
        }
        let no_secret = Config::try_parse_from(["troupe-node"]).unwrap();
        if std::env::var_os("TROUPE_JWT_SECRET").is_none() {
            assert!(no_secret.validate().is_err());
        }
    }

    #[test]
    fn secrets_shorter_than_32_bytes_are_refused() {
        let with = |secret: &str| {
            Config::try_parse_from(["troupe-node", "--internal-insecure", "--jwt-secret", secret])
                .unwrap()
                .validate()
        };
        let err = with(&"x".repeat(31)).err().unwrap();
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(with(&"x".repeat(32)).is_ok());
    }

    #[test]
    fn the_internal_certificate_must_name_this_node() {
        use troupe_membership::tls::issue::CertDir;
        let dir = std::env::temp_dir().join(format!("troupe-node-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CertDir::init(&dir, "test").unwrap();
        let files = ca.issue(&Identity::Node(NodeId(2)), &[], 1).unwrap();
        let (ca_file, cert, key) = (files.ca.unwrap(), files.cert.unwrap(), files.key.unwrap());
        let with = |id: &str, listen: &str| {
            Config::try_parse_from([
                "troupe-node",
                "--jwt-secret",
                "0123456789abcdef0123456789abcdef",
                "--node-id",
                id,
                "--rpc-listen",
                listen,
                "--internal-ca",
                ca_file.to_str().unwrap(),
                "--internal-cert",
                cert.to_str().unwrap(),
                "--internal-key",
                key.to_str().unwrap(),
            ])
            .unwrap()
            .validate()
        };
        assert!(with("2", "0.0.0.0:4100").is_ok(), "TLS works on any address");
        let err = with("1", "127.0.0.1:4100").err().unwrap();
        assert!(err.contains("names node 2, not node 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_origins_only_for_a_node_on_loopback() {
        let local = config(&[]).validate().unwrap();
        assert!(local.origins.allows("http://localhost:5173"));
        assert!(!local.origins.allows("https://app.example.com"));
        let err = config(&["--listen", "0.0.0.0:4000"]).validate().err().unwrap();
        assert!(err.starts_with("TROUPE_ALLOWED_ORIGINS must be set"), "{err}");
        let public = config(&[
            "--listen",
            "0.0.0.0:4000",
            "--allowed-origins",
            "https://app.example.com",
        ])
        .validate()
        .unwrap();
        assert!(public.origins.allows("https://app.example.com"));
        assert!(!public.origins.allows("http://localhost:5173"));
    }

    #[test]
    fn origin_patterns() {
        let policy = OriginPolicy::new(&["http://localhost:*".into(), "https://app.example".into()]).unwrap();
        assert!(policy.allows("http://localhost:5173"));
        assert!(policy.allows("https://app.example"));
        assert!(!policy.allows("http://localhost.evil:80"));
        assert!(!policy.allows("http://localhost:"));
        assert!(!policy.allows("https://evil.example"));
        assert!(OriginPolicy::new(&["*".into()])
            .unwrap()
            .allows("https://anything"));
    }
}
