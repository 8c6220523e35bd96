//! Configuration: command line, environment and an optional TOML file, parsed once into
//! [`Config`] and passed down (never global). Precedence: flag > environment > file > default.

use clap::Parser;
use huddle_protocol::{IceServer, IceTransportPolicy, Limits};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// huddle — a self-hosted video meeting server in one binary.
///
/// Every option can also be set by an environment variable (shown in brackets) or in a TOML
/// file given with --config (keys are the option names with `_` instead of `-`; see
/// `huddle.example.toml`).
#[derive(Parser, Debug, Default)]
#[command(name = "huddle", version)]
pub struct Cli {
    /// Address and port to listen on; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, env = "HUDDLE_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// TOML configuration file
    #[arg(long, short = 'c', env = "HUDDLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTPS: `self-signed` makes a certificate at start for every address huddle listens on
    /// (browsers warn once; phones on the LAN need HTTPS for the camera), `off` is plain HTTP.
    /// With --tls-cert and --tls-key HTTPS uses that certificate instead [default: off]
    #[arg(long, env = "HUDDLE_TLS", value_name = "MODE")]
    pub tls: Option<TlsMode>,
    /// PEM certificate chain for HTTPS (e.g. Let's Encrypt's fullchain.pem); needs --tls-key
    #[arg(long, env = "HUDDLE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (e.g. privkey.pem)
    #[arg(long, env = "HUDDLE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Where huddle keeps what must survive a restart: the self-signed certificate, the keys of
    /// invite links and TURN credentials, and (from a graceful stop to the next start) the
    /// sessions in rooms [default: $XDG_DATA_HOME/huddle, else ~/.local/share/huddle]
    #[arg(long, env = "HUDDLE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run as one node of several sharing this Redis (e.g. redis://10.0.0.5:6379): rooms are
    /// owned by one node each and reachable through every node [default: none, a single node]
    #[arg(long, env = "HUDDLE_REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// Most participants in one room [default: 50; 6 with `--topology p2p`, where a mesh gets heavy
    /// beyond that]
    #[arg(long, env = "HUDDLE_ROOM_CAPACITY", value_name = "N")]
    pub room_capacity: Option<u32>,
    /// How media flows: `auto` (peer-to-peer for two people, the server's SFU from the third),
    /// `p2p` (always a mesh) or `sfu` (always through the server) [default: auto]
    #[arg(long, env = "HUDDLE_TOPOLOGY", value_name = "MODE")]
    pub topology: Option<TopologyMode>,
    /// Workers: each owns a share of the rooms (chosen by the room's name), with their own SFU
    /// thread and UDP port; one per core spreads the load over the machine. One node of several
    /// (--redis) runs one [default: one per core, at most 64]
    #[arg(long, env = "HUDDLE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// UDP port of the SFU, shared by all participants; worker N (of --workers) uses this port
    /// + N [default: the HTTP port number, or any free port if that one is taken]
    #[arg(long, env = "HUDDLE_MEDIA_PORT", value_name = "PORT")]
    pub media_port: Option<u16>,
    /// Address announced to browsers for the SFU instead of the interface addresses, e.g. the
    /// public IP of a server behind 1:1 NAT (repeatable)
    #[arg(long = "media-public-ip", env = "HUDDLE_MEDIA_PUBLIC_IPS", value_delimiter = ',', value_name = "IP")]
    pub media_public_ips: Vec<IpAddr>,
    /// ICE over TCP to the SFU, for browsers whose UDP to the server is blocked (RFC 6544: the
    /// SFU offers passive TCP candidates, less preferred than UDP) [default: true]
    #[arg(long, env = "HUDDLE_ICE_TCP", value_name = "BOOL")]
    pub ice_tcp: Option<bool>,
    /// Hosts may record meetings (the SFU writes what it forwards; see the README) [default: true]
    #[arg(long, env = "HUDDLE_RECORDINGS", value_name = "BOOL")]
    pub recordings: Option<bool>,
    /// Where recordings are kept [default: recordings/ in --data-dir, else a new directory under
    /// the system's temporary directory]
    #[arg(long, env = "HUDDLE_RECORDINGS_DIR", value_name = "DIR")]
    pub recordings_dir: Option<PathBuf>,
    /// Most bytes all recordings may take; a recording stops, and new ones are refused, when they
    /// are full [default: 10737418240 (10 GiB)]
    #[arg(long, env = "HUDDLE_RECORDINGS_MAX_BYTES", value_name = "BYTES")]
    pub recordings_max_bytes: Option<u64>,
    /// Longest recording, in minutes: it stops there [default: 240]
    #[arg(long, env = "HUDDLE_RECORDING_MAX_MINUTES", value_name = "N")]
    pub recording_max_minutes: Option<u32>,
    /// Days a recording is kept (and its download link works) [default: 7]
    #[arg(long, env = "HUDDLE_RECORDING_RETENTION_DAYS", value_name = "N")]
    pub recording_retention_days: Option<u32>,
    /// The ffmpeg that composes a recording into one file [default: `ffmpeg` on the PATH;
    /// without it only the raw tracks are kept]
    #[arg(long, env = "HUDDLE_FFMPEG", value_name = "FILE")]
    pub ffmpeg: Option<PathBuf>,
    /// TCP port of a listener for ICE over TCP only (e.g. behind a reverse proxy that takes the
    /// HTTP port) [default: none: ICE over TCP comes to the HTTP port itself]
    #[arg(long, env = "HUDDLE_MEDIA_TCP_PORT", value_name = "PORT")]
    pub media_tcp_port: Option<u16>,
    /// Estimate each SFU participant's downlink bandwidth (str0m's BWE, from the browser's
    /// congestion feedback) and send it the video layers that fit; `false` leaves only the
    /// loss-based cap and saves CPU per forwarded packet [default: true]
    #[arg(long, env = "HUDDLE_BANDWIDTH_ESTIMATION", value_name = "BOOL")]
    pub bandwidth_estimation: Option<bool>,
    /// The built-in STUN/TURN server, which gets calls through NATs and firewalls: credentials
    /// are handed to each page when it connects [default: true]
    #[arg(long, env = "HUDDLE_TURN", value_name = "BOOL")]
    pub turn: Option<bool>,
    /// UDP and TCP port of the built-in STUN/TURN server [default: 3478, or any free port if
    /// that one is taken]
    #[arg(long, env = "HUDDLE_TURN_PORT", value_name = "PORT")]
    pub turn_port: Option<u16>,
    /// TURN over TLS port, used with --tls-cert/--tls-key (browsers cannot be told to accept a
    /// self-signed certificate for TURN) [default: 5349, or any free port if taken]
    #[arg(long, env = "HUDDLE_TURN_TLS_PORT", value_name = "PORT")]
    pub turn_tls_port: Option<u16>,
    /// Shared secret of the TURN REST credentials (coturn's `static-auth-secret`); set it to
    /// let another service hand out credentials for this server [default: a random key kept in
    /// the data directory]
    #[arg(long, env = "HUDDLE_TURN_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// File holding --turn-secret (its first line), so the secret is not on the command line
    /// where every local user can read it with `ps`
    #[arg(long, env = "HUDDLE_TURN_SECRET_FILE", value_name = "FILE")]
    pub turn_secret_file: Option<PathBuf>,
    /// Name or address browsers use to reach the TURN server [default: the first
    /// --media-public-ip, else the host name the page was loaded from]
    #[arg(long, env = "HUDDLE_TURN_HOST", value_name = "HOST")]
    pub turn_host: Option<String>,
    /// Address range TURN may relay to although it is loopback, private or otherwise special
    /// (refused by default, so the relay is no way into your own network), e.g. 10.0.0.0/8
    /// (repeatable or comma-separated)
    #[arg(long = "turn-allow-peer", env = "HUDDLE_TURN_ALLOW_PEERS", value_delimiter = ',', value_name = "CIDR")]
    pub turn_allow_peers: Vec<huddle_turn::IpNet>,
    /// Port range of TURN relay sockets, one port per allocation [default: 49152-65535]
    #[arg(long, env = "HUDDLE_TURN_RELAY_PORTS", value_name = "LOW-HIGH")]
    pub turn_relay_ports: Option<String>,
    /// TURN allocations one participant may hold at once [default: 64]
    #[arg(long, env = "HUDDLE_TURN_USER_QUOTA", value_name = "N")]
    pub turn_user_quota: Option<u32>,
    /// Relay users (participants, checks) with TURN allocations from one client IP address at
    /// once; 0: no limit [default: 64]
    #[arg(long, env = "HUDDLE_TURN_IP_USERS", value_name = "N")]
    pub turn_ip_users: Option<u32>,
    /// TURN allocations clients at one IP address may hold together; 0: no limit [default: 1024]
    #[arg(long, env = "HUDDLE_TURN_IP_ALLOCATIONS", value_name = "N")]
    pub turn_ip_allocations: Option<u32>,
    /// Bits per second one participant may relay through TURN, both directions together; 0: no
    /// limit [default: 50000000]
    #[arg(long, env = "HUDDLE_TURN_USER_BANDWIDTH", value_name = "BITS")]
    pub turn_user_bandwidth: Option<u64>,
    /// How long the TURN credentials handed to a participant stay valid for new relays; renewed
    /// while they are in the room, and relays in use live as long as their session [default: 600]
    #[arg(long, env = "HUDDLE_TURN_CREDENTIAL_TTL_SECS", value_name = "SECS")]
    pub turn_credential_ttl_secs: Option<u64>,
    /// `relay` makes browsers use only TURN relays (hides their addresses from each other, and
    /// tests the relay); `all` lets ICE pick the best path [default: all]
    #[arg(long, env = "HUDDLE_ICE_TRANSPORT_POLICY", value_name = "POLICY", value_parser = parse_ice_transport_policy)]
    pub ice_transport_policy: Option<IceTransportPolicy>,
    /// Shared secret (at least 32 bytes) of the HS256 access tokens your own service signs for
    /// embedding huddle (claims: room, exp, name, role, sub; see the README)
    #[arg(long, env = "HUDDLE_TOKEN_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// File holding --token-secret (its first line); better than the flag, which `ps` shows
    #[arg(long, env = "HUDDLE_TOKEN_SECRET_FILE", value_name = "FILE")]
    pub token_secret_file: Option<PathBuf>,
    /// Ed25519 public key (base64 of the 32 bytes, or PEM) of the EdDSA access tokens your own
    /// service signs
    #[arg(long, env = "HUDDLE_TOKEN_PUBLIC_KEY", value_name = "KEY")]
    pub token_public_key: Option<String>,
    /// Admit only people with an access token (yours, or a host's invite link) [default: false]
    #[arg(long, env = "HUDDLE_REQUIRE_TOKEN", value_name = "BOOL")]
    pub require_token: Option<bool>,
    /// How long a participant whose connection dropped keeps their place (same id, room, role,
    /// raised hand) for the page to reconnect; 0 turns resuming off [default: 30]
    #[arg(long, env = "HUDDLE_RESUME_GRACE_SECS", value_name = "SECS")]
    pub resume_grace_secs: Option<u64>,
    /// Most rooms at once [default: 10000]
    #[arg(long, env = "HUDDLE_MAX_ROOMS", value_name = "N")]
    pub max_rooms: Option<u32>,
    /// Longest display name, in characters [default: 32]
    #[arg(long, env = "HUDDLE_MAX_NAME_CHARS", value_name = "N")]
    pub max_name_chars: Option<u32>,
    /// Longest room name, in characters [default: 64]
    #[arg(long, env = "HUDDLE_MAX_ROOM_CHARS", value_name = "N")]
    pub max_room_chars: Option<u32>,
    /// Longest chat message, in characters [default: 2000]
    #[arg(long, env = "HUDDLE_MAX_CHAT_CHARS", value_name = "N")]
    pub max_chat_chars: Option<u32>,
    /// Chat messages kept per room for people who join later [default: 100]
    #[arg(long, env = "HUDDLE_CHAT_HISTORY", value_name = "N")]
    pub chat_history: Option<u32>,
    /// Largest file pages may send each other, in bytes [default: 104857600 (100 MB)]
    #[arg(long, env = "HUDDLE_MAX_FILE_BYTES", value_name = "BYTES")]
    pub max_file_bytes: Option<u64>,
    /// Total bytes of files the server keeps for rooms at once (files shared in sfu rooms go
    /// through the server) [default: 1073741824]
    #[arg(long, env = "HUDDLE_FILE_STORAGE_BYTES", value_name = "BYTES")]
    pub file_storage_bytes: Option<u64>,
    /// Directory for files shared through the server [default: a new directory under the
    /// system's temporary directory]
    #[arg(long, env = "HUDDLE_FILE_DIR", value_name = "DIR")]
    pub file_dir: Option<PathBuf>,
    /// Bytes of files one participant may have on the server at once, offered, uploading or
    /// shared [default: 209715200, two of the largest files]
    #[arg(long, env = "HUDDLE_FILE_CONNECTION_BYTES", value_name = "BYTES")]
    pub file_connection_bytes: Option<u64>,
    /// Bytes of files the participants of one IP address may have on the server at once
    /// [default: 209715200: five addresses cannot fill the default storage]
    #[arg(long, env = "HUDDLE_FILE_IP_BYTES", value_name = "BYTES")]
    pub file_ip_bytes: Option<u64>,
    /// Bytes of files one room may have on the server at once [default: 536870912]
    #[arg(long, env = "HUDDLE_FILE_ROOM_BYTES", value_name = "BYTES")]
    pub file_room_bytes: Option<u64>,
    /// Seconds a file transfer through the server may wait: for the upload to start after the
    /// offer, and for the next bytes of an upload or a download [default: 30]
    #[arg(long, env = "HUDDLE_FILE_TRANSFER_TIMEOUT_SECS", value_name = "SECS")]
    pub file_transfer_timeout_secs: Option<u64>,
    /// The slowest average rate, in bytes a second, an upload or a download is given time for
    /// (its deadline: the timeout plus its size at this rate) [default: 65536]
    #[arg(long, env = "HUDDLE_FILE_MIN_RATE", value_name = "BYTES")]
    pub file_min_rate: Option<u64>,
    /// Largest signalling message, in bytes [default: 65536, plus 4096 per seat of a room when the
    /// SFU is used (a browser's SDP answer grows with every participant it receives)]
    #[arg(long, env = "HUDDLE_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// Messages queued for one connection before it counts as too slow and is dropped [default: 256]
    #[arg(long, env = "HUDDLE_OUTBOX_CAPACITY", value_name = "N")]
    pub outbox_capacity: Option<usize>,
    /// Bytes of messages queued for one connection before it counts as too slow and is dropped;
    /// also the most kept per participant for a resume [default: 2097152 (ten SDP offers of a full
    /// 50-person SFU room)]
    #[arg(long, env = "HUDDLE_OUTBOX_BYTES", value_name = "BYTES")]
    pub outbox_bytes: Option<usize>,
    /// ICE server URL handed to browsers (repeatable or comma-separated), e.g. stun:stun.example.org:3478.
    /// Default: none (host candidates only: right for one machine or a LAN). TURN credentials go in the config file.
    #[arg(long = "ice-server", env = "HUDDLE_ICE_SERVERS", value_delimiter = ',', value_name = "URL")]
    pub ice_servers: Vec<String>,
    /// Other origins whose pages may open the WebSocket (repeatable or comma-separated),
    /// e.g. https://meet.example.org. Default: same origin only.
    #[arg(long = "allowed-origin", env = "HUDDLE_ALLOWED_ORIGINS", value_delimiter = ',', value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Seconds between WebSocket pings [default: 15]
    #[arg(long, env = "HUDDLE_PING_SECS", value_name = "SECS")]
    pub ping_secs: Option<u64>,
    /// Seconds of silence after which a connection counts as dead, and the longest a write to a
    /// client may take [default: 40]
    #[arg(long, env = "HUDDLE_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds each step of opening a connection may take: telling ICE over TCP from HTTP, the
    /// TLS handshake, a request's headers (also how long an idle keep-alive connection stays
    /// open), and a WebSocket's first frame (a pong counts) [default: 10]
    #[arg(long, env = "HUDDLE_HANDSHAKE_TIMEOUT_SECS", value_name = "SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Serve the page from this directory instead of the copy built into the binary (for
    /// working on the page)
    #[arg(long, env = "HUDDLE_WEB_DIR", value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
    /// Reverse proxies whose X-Forwarded-For header names the client (repeatable or
    /// comma-separated), e.g. 127.0.0.1/32 for a proxy on the same machine. Default: none (the
    /// client is the TCP peer, and X-Forwarded-For is ignored)
    #[arg(long = "trusted-proxies", env = "HUDDLE_TRUSTED_PROXIES", value_delimiter = ',', value_name = "CIDR")]
    pub trusted_proxies: Vec<huddle_turn::IpNet>,
    /// WebSocket connections at once, server-wide [default: 10000]
    #[arg(long, env = "HUDDLE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// WebSocket connections at once from one IP address (an office behind one NAT address
    /// counts once per person); 0: no limit [default: 64]
    #[arg(long, env = "HUDDLE_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// Open TCP connections at once on the HTTP port (and the ICE-TCP port), server-wide, counted
    /// from accept to close; more are closed at once [default: three quarters of the open file
    /// limit]
    #[arg(long, env = "HUDDLE_MAX_TCP_CONNECTIONS", value_name = "N")]
    pub max_tcp_connections: Option<usize>,
    /// Open TCP connections at once from one IP address (page loads, WebSockets, ICE over TCP);
    /// 0: no limit [default: 256]
    #[arg(long, env = "HUDDLE_MAX_TCP_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_tcp_connections_per_ip: Option<u32>,
    /// Room joins per minute from one IP address, all its connections together (up to this many
    /// at once); 0: no limit [default: 120]
    #[arg(long, env = "HUDDLE_IP_JOINS_PER_MINUTE", value_name = "N")]
    pub ip_joins_per_minute: Option<u32>,
    /// Multiplies every per-connection message rate limit (chat, signalling, joins, files,
    /// other); 2 doubles them, 0 turns them off [default: 1]
    #[arg(long, env = "HUDDLE_MESSAGE_RATE_SCALE", value_name = "FACTOR")]
    pub message_rate_scale: Option<f64>,
    /// Serve Prometheus metrics at /metrics [default: true]
    #[arg(long, env = "HUDDLE_METRICS", value_name = "BOOL")]
    pub metrics: Option<bool>,
    /// Bearer token /metrics requires (`Authorization: Bearer TOKEN`) [default: none: open]
    #[arg(long, env = "HUDDLE_METRICS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// File holding --metrics-token (its first line); better than the flag, which `ps` shows
    #[arg(long, env = "HUDDLE_METRICS_TOKEN_FILE", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Log lines as `text` or `json` (one JSON object per line) [default: text]
    #[arg(long, env = "HUDDLE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The TOML file: the same settings as [`Cli`], plus ICE servers with credentials.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    tls: Option<TlsMode>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    redis: Option<String>,
    room_capacity: Option<u32>,
    topology: Option<TopologyMode>,
    workers: Option<usize>,
    media_port: Option<u16>,
    media_public_ips: Option<Vec<IpAddr>>,
    ice_tcp: Option<bool>,
    recordings: Option<bool>,
    recordings_dir: Option<PathBuf>,
    recordings_max_bytes: Option<u64>,
    recording_max_minutes: Option<u32>,
    recording_retention_days: Option<u32>,
    ffmpeg: Option<PathBuf>,
    media_tcp_port: Option<u16>,
    bandwidth_estimation: Option<bool>,
    turn: Option<bool>,
    turn_port: Option<u16>,
    turn_tls_port: Option<u16>,
    turn_secret: Option<String>,
    turn_secret_file: Option<PathBuf>,
    turn_host: Option<String>,
    turn_allow_peers: Option<Vec<String>>,
    turn_relay_ports: Option<String>,
    turn_user_quota: Option<u32>,
    turn_ip_users: Option<u32>,
    turn_ip_allocations: Option<u32>,
    turn_user_bandwidth: Option<u64>,
    turn_credential_ttl_secs: Option<u64>,
    ice_transport_policy: Option<IceTransportPolicy>,
    token_secret: Option<String>,
    token_secret_file: Option<PathBuf>,
    token_public_key: Option<String>,
    require_token: Option<bool>,
    resume_grace_secs: Option<u64>,
    max_rooms: Option<u32>,
    max_name_chars: Option<u32>,
    max_room_chars: Option<u32>,
    max_chat_chars: Option<u32>,
    chat_history: Option<u32>,
    max_file_bytes: Option<u64>,
    file_storage_bytes: Option<u64>,
    file_dir: Option<PathBuf>,
    file_connection_bytes: Option<u64>,
    file_ip_bytes: Option<u64>,
    file_room_bytes: Option<u64>,
    file_transfer_timeout_secs: Option<u64>,
    file_min_rate: Option<u64>,
    max_frame_bytes: Option<u32>,
    outbox_capacity: Option<usize>,
    outbox_bytes: Option<usize>,
    ice_servers: Option<Vec<IceServer>>,
    allowed_origins: Option<Vec<String>>,
    ping_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    web_dir: Option<PathBuf>,
    trusted_proxies: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<u32>,
    max_tcp_connections: Option<usize>,
    max_tcp_connections_per_ip: Option<u32>,
    ip_joins_per_minute: Option<u32>,
    message_rate_scale: Option<f64>,
    metrics: Option<bool>,
    metrics_token: Option<String>,
    metrics_token_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
}

/// One worker per core this process may use, at most [`crate::workers::MAX_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, crate::workers::MAX_WORKERS)
}

/// `$XDG_DATA_HOME/huddle`, else `$HOME/.local/share/huddle`; `None` without either.
pub fn default_data_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = || std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/share"));
    xdg.or_else(home).map(|d| d.join("huddle"))
}

/// `--tls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain HTTP (or HTTPS from --tls-cert and --tls-key).
    #[default]
    Off,
    /// A certificate made at start for every address huddle listens on.
    SelfSigned,
}

/// HTTPS, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tls {
    #[default]
    Off,
    SelfSigned,
    /// A certificate chain and its key, PEM files.
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

fn parse_ice_transport_policy(s: &str) -> Result<IceTransportPolicy, String> {
    match s {
        "all" => Ok(IceTransportPolicy::All),
        "relay" => Ok(IceTransportPolicy::Relay),
        _ => Err("`all` or `relay`".into()),
    }
}

/// `LOW-HIGH`, e.g. `49152-65535`.
fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let bad = || ConfigError::Invalid(format!("turn_relay_ports {s:?} must be LOW-HIGH, e.g. 49152-65535"));
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
    if lo == 0 || lo > hi || hi - lo < 15 {
        return Err(ConfigError::Invalid(format!("turn_relay_ports {s:?} must span at least 16 ports above 0")));
    }
    Ok((lo, hi))
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// How a room's media flows (`--topology`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TopologyMode {
    /// Peer-to-peer while two people are in a room, the SFU from the third person on.
    #[default]
    Auto,
    /// Always a peer-to-peer mesh; the SFU is not started.
    P2p,
    /// Always through the server's SFU.
    Sfu,
}

/// Room capacity when not configured: a mesh gets heavy beyond 6; the SFU takes 50.
pub const DEFAULT_P2P_CAPACITY: u32 = 6;
pub const DEFAULT_SFU_CAPACITY: u32 = 50;

/// The server's settings, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Tls,
    /// `None`: nothing is kept across restarts.
    pub data_dir: Option<PathBuf>,
    /// The Redis URL of a cluster of nodes; `None`: a single node.
    pub redis: Option<String>,
    pub room_capacity: u32,
    pub topology: TopologyMode,
    /// Workers, each with its share of the rooms and its own SFU (see [`crate::workers`]).
    pub workers: usize,
    /// `None`: the HTTP port number if free, else any (worker N: this + N).
    pub media_port: Option<u16>,
    /// Announced instead of interface addresses when not empty.
    pub media_public_ips: Vec<IpAddr>,
    /// ICE over TCP to the SFU.
    pub ice_tcp: bool,
    /// Hosts may record meetings.
    pub recordings: bool,
    /// `None`: `recordings/` in the data dir, else a directory under the temporary directory.
    pub recordings_dir: Option<PathBuf>,
    pub recordings_max_bytes: u64,
    pub recording_max: Duration,
    pub recording_retention: Duration,
    /// `None`: `ffmpeg` on the PATH, if there is one.
    pub ffmpeg: Option<PathBuf>,
    /// `None`: ICE over TCP shares the HTTP port.
    pub media_tcp_port: Option<u16>,
    /// str0m's bandwidth estimate per SFU participant, for its video layers.
    pub bandwidth_estimation: bool,
    /// The built-in STUN/TURN server.
    pub turn: bool,
    /// `None`: 3478 if free, else any.
    pub turn_port: Option<u16>,
    /// `None`: 5349 if free, else any (only with a certificate from files).
    pub turn_tls_port: Option<u16>,
    /// `None`: random at each start.
    pub turn_secret: Option<String>,
    pub turn_host: Option<String>,
    pub turn_allow_peers: Vec<huddle_turn::IpNet>,
    pub turn_relay_ports: (u16, u16),
    pub turn_user_quota: u32,
    /// Relay users at one client IP address; 0: no limit.
    pub turn_ip_users: u32,
    /// Relay allocations at one client IP address; 0: no limit.
    pub turn_ip_allocations: u32,
    /// Bits per second; 0: no limit.
    pub turn_user_bandwidth: u64,
    /// For new relays; the hub renews them at half this.
    pub turn_credential_ttl: Duration,
    pub ice_transport_policy: IceTransportPolicy,
    pub token_secret: Option<String>,
    /// The raw 32 bytes of the Ed25519 key of operator tokens.
    pub token_public_key: Option<Vec<u8>>,
    pub require_token: bool,
    pub resume_grace: Duration,
    pub max_rooms: u32,
    pub max_name_chars: u32,
    pub max_room_chars: u32,
    pub max_chat_chars: u32,
    pub chat_history: u32,
    pub max_file_bytes: u64,
    pub file_storage_bytes: u64,
    /// `None`: a directory under the system's temporary directory, named after the process (and
    /// the hub, for several in one process).
    pub file_dir: Option<PathBuf>,
    /// Quotas of files through the server: per participant, per IP address, per room.
    pub file_connection_bytes: u64,
    pub file_ip_bytes: u64,
    pub file_room_bytes: u64,
    /// How long an offer waits for its upload, and an upload or a download for its next bytes.
    pub file_transfer_timeout: Duration,
    /// Bytes a second: a transfer of `n` bytes ends at the latest `n / file_min_rate` seconds
    /// after the timeout.
    pub file_min_rate: u64,
    pub max_frame_bytes: u32,
    pub outbox_capacity: usize,
    /// Bytes queued for one connection (and kept for its resume) at most.
    pub outbox_bytes: usize,
    pub ice_servers: Vec<IceServer>,
    pub allowed_origins: Vec<String>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// Each step of opening a connection: ICE-TCP sniffing, TLS handshake, request headers (and
    /// keep-alive idle), a WebSocket's first frame.
    pub handshake_timeout: Duration,
    pub web_dir: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<huddle_turn::IpNet>,
    pub max_connections: usize,
    /// 0: no limit.
    pub max_connections_per_ip: u32,
    /// Open TCP connections, server-wide; 0: three quarters of the open file limit.
    pub max_tcp_connections: usize,
    /// 0: no limit.
    pub max_tcp_connections_per_ip: u32,
    /// 0: no limit.
    pub ip_joins_per_minute: u32,
    /// Multiplies the per-connection message limits; 0: none.
    pub message_rate_scale: f64,
    pub metrics: bool,
    pub metrics_token: Option<String>,
    pub log_format: LogFormat,
    /// For the tests of what a worker does after a bug: a join of this room panics in the hub
    /// (see `hub::run`). Not a flag, an environment variable or a file setting: only code that
    /// builds a `Config` can set it.
    #[doc(hidden)]
    pub test_panic_room: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: Tls::Off,
            data_dir: None,
            redis: None,
            room_capacity: DEFAULT_SFU_CAPACITY,
            topology: TopologyMode::Auto,
            workers: default_workers(),
            media_port: None,
            media_public_ips: Vec::new(),
            ice_tcp: true,
            recordings: true,
            recordings_dir: None,
            recordings_max_bytes: 10 * 1024 * 1024 * 1024,
            recording_max: Duration::from_secs(240 * 60),
            recording_retention: Duration::from_secs(7 * 24 * 3600),
            ffmpeg: None,
            media_tcp_port: None,
            bandwidth_estimation: true,
            turn: true,
            turn_port: None,
            turn_tls_port: None,
            turn_secret: None,
            turn_host: None,
            turn_allow_peers: Vec::new(),
            turn_relay_ports: (49152, 65535),
            turn_user_quota: 64,
            turn_ip_users: 64,
            turn_ip_allocations: 1024,
            turn_user_bandwidth: 50_000_000,
            turn_credential_ttl: Duration::from_secs(600),
            ice_transport_policy: IceTransportPolicy::All,
            token_secret: None,
            token_public_key: None,
            require_token: false,
            resume_grace: Duration::from_secs(30),
            max_rooms: 10_000,
            max_name_chars: 32,
            max_room_chars: 64,
            max_chat_chars: 2000,
            chat_history: 100,
            max_file_bytes: 100 * 1024 * 1024,
            file_storage_bytes: 1024 * 1024 * 1024,
            file_dir: None,
            file_connection_bytes: 200 * 1024 * 1024,
            file_ip_bytes: 200 * 1024 * 1024,
            file_room_bytes: 512 * 1024 * 1024,
            file_transfer_timeout: Duration::from_secs(30),
            file_min_rate: 64 * 1024,
            max_frame_bytes: default_max_frame_bytes(TopologyMode::Auto, DEFAULT_SFU_CAPACITY),
            outbox_capacity: 256,
            outbox_bytes: 2 * 1024 * 1024,
            ice_servers: Vec::new(),
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(40),
            handshake_timeout: Duration::from_secs(10),
            web_dir: None,
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            max_tcp_connections: 0,
            max_tcp_connections_per_ip: 256,
            ip_joins_per_minute: 120,
            message_rate_scale: 1.0,
            metrics: true,
            metrics_token: None,
            log_format: LogFormat::Text,
            test_panic_room: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0}")]
    Invalid(String),
}

/// The names of the secrets that can also be read from a file (`--<name>-file`).
pub const SECRET_OPTIONS: [&str; 3] = ["token_secret", "turn_secret", "metrics_token"];

/// A secret given directly, or read from `file` (its first line, without the line ending): a flag
/// is visible to every local user in `ps`, a file can be readable by huddle's user only (or come
/// from systemd's `LoadCredential=`). Both at once is a mistake worth stopping for.
fn secret(name: &str, value: Option<String>, file: Option<PathBuf>) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!("give {name} or {name}_file, not both"))),
        (Some(v), None) => Ok(Some(v)),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
            if first.is_empty() {
                return Err(ConfigError::Invalid(format!("{name}_file {} is empty", path.display())));
            }
            Ok(Some(first.to_string()))
        }
    }
}

/// The secrets given as command-line flags (not from the environment or a file), which `ps`
/// shows to everyone: the server warns about each.
pub fn secrets_on_command_line(matches: &clap::ArgMatches) -> Vec<&'static str> {
    SECRET_OPTIONS
        .into_iter()
        .filter(|id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .collect()
}

/// What a browser's SDP answer may add per participant it receives through the SFU (an audio and
/// a video m-line of about 1 KB each, JSON-escaped), with room to spare.
pub const SDP_BYTES_PER_SEAT: u32 = 4096;

/// The frame limit when none is configured: 64 KiB, or enough for the SDP of a full SFU room.
fn default_max_frame_bytes(topology: TopologyMode, room_capacity: u32) -> u32 {
    let base = 64 * 1024;
    match topology {
        TopologyMode::P2p => base,
        TopologyMode::Auto | TopologyMode::Sfu => base
            .saturating_add(room_capacity.saturating_mul(SDP_BYTES_PER_SEAT))
            .min(crate::ws::HARD_MAX_FRAME_BYTES as u32),
    }
}

impl Config {
    /// Resolves flags and environment (already in `cli`) over the config file over defaults.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let ice_servers = if !cli.ice_servers.is_empty() {
            vec![IceServer { urls: cli.ice_servers, username: None, credential: None }]
        } else {
            file.ice_servers.unwrap_or(d.ice_servers)
        };
        let allowed_origins = if !cli.allowed_origins.is_empty() {
            cli.allowed_origins
        } else {
            file.allowed_origins.unwrap_or(d.allowed_origins)
        };
        let topology = cli.topology.or(file.topology).unwrap_or(d.topology);
        let default_capacity = match topology {
            TopologyMode::P2p => DEFAULT_P2P_CAPACITY,
            TopologyMode::Auto | TopologyMode::Sfu => DEFAULT_SFU_CAPACITY,
        };
        let media_public_ips = if !cli.media_public_ips.is_empty() {
            cli.media_public_ips
        } else {
            file.media_public_ips.unwrap_or(d.media_public_ips)
        };
        let turn_allow_peers = if !cli.turn_allow_peers.is_empty() {
            cli.turn_allow_peers
        } else {
            file.turn_allow_peers
                .unwrap_or_default()
                .iter()
                .map(|s| s.parse::<huddle_turn::IpNet>().map_err(ConfigError::Invalid))
                .collect::<Result<_, _>>()?
        };
        let trusted_proxies = if !cli.trusted_proxies.is_empty() {
            cli.trusted_proxies
        } else {
            file.trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|s| s.parse::<huddle_turn::IpNet>().map_err(ConfigError::Invalid))
                .collect::<Result<_, _>>()?
        };
        let turn_relay_ports = match cli.turn_relay_ports.or(file.turn_relay_ports) {
            Some(r) => parse_port_range(&r)?,
            None => d.turn_relay_ports,
        };
        let tls_files = (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key));
        let tls = match (cli.tls.or(file.tls), tls_files) {
            (Some(TlsMode::SelfSigned), (None, None)) => Tls::SelfSigned,
            (Some(TlsMode::SelfSigned), _) => {
                return Err(ConfigError::Invalid(
                    "--tls self-signed and --tls-cert/--tls-key are alternatives: choose one".into(),
                ))
            }
            (_, (Some(cert), Some(key))) => Tls::Files { cert, key },
            (_, (None, None)) => Tls::Off,
            (_, _) => return Err(ConfigError::Invalid("--tls-cert and --tls-key go together".into())),
        };
        let one_of_several = cli.redis.as_deref().or(file.redis.as_deref()).is_some_and(|u| !u.is_empty());
        let config = Config {
            listen: cli.listen.or(file.listen).unwrap_or(d.listen),
            tls,
            data_dir: cli.data_dir.or(file.data_dir).or_else(default_data_dir),
            redis: cli.redis.or(file.redis).filter(|u| !u.is_empty()),
            room_capacity: cli.room_capacity.or(file.room_capacity).unwrap_or(default_capacity),
            topology,
            // One node of several runs one worker: its rooms are placed by the cluster.
            workers: if one_of_several { 1 } else { cli.workers.or(file.workers).unwrap_or(d.workers) },
            media_port: cli.media_port.or(file.media_port),
            media_public_ips,
            ice_tcp: cli.ice_tcp.or(file.ice_tcp).unwrap_or(d.ice_tcp),
            recordings: cli.recordings.or(file.recordings).unwrap_or(d.recordings),
            recordings_dir: cli.recordings_dir.or(file.recordings_dir),
            recordings_max_bytes: cli
                .recordings_max_bytes
                .or(file.recordings_max_bytes)
                .unwrap_or(d.recordings_max_bytes),
            recording_max: cli
                .recording_max_minutes
                .or(file.recording_max_minutes)
                .map_or(d.recording_max, |m| Duration::from_secs(u64::from(m.max(1)) * 60)),
            recording_retention: cli
                .recording_retention_days
                .or(file.recording_retention_days)
                .map_or(d.recording_retention, |n| Duration::from_secs(u64::from(n.max(1)) * 24 * 3600)),
            ffmpeg: cli.ffmpeg.or(file.ffmpeg),
            media_tcp_port: cli.media_tcp_port.or(file.media_tcp_port),
            bandwidth_estimation: cli
                .bandwidth_estimation
                .or(file.bandwidth_estimation)
                .unwrap_or(d.bandwidth_estimation),
            turn: cli.turn.or(file.turn).unwrap_or(d.turn),
            turn_port: cli.turn_port.or(file.turn_port),
            turn_tls_port: cli.turn_tls_port.or(file.turn_tls_port),
            turn_secret: secret(
                "turn_secret",
                cli.turn_secret.or(file.turn_secret),
                cli.turn_secret_file.or(file.turn_secret_file),
            )?,
            turn_host: cli.turn_host.or(file.turn_host),
            turn_allow_peers,
            turn_relay_ports,
            turn_user_quota: cli.turn_user_quota.or(file.turn_user_quota).unwrap_or(d.turn_user_quota),
            turn_ip_users: cli.turn_ip_users.or(file.turn_ip_users).unwrap_or(d.turn_ip_users),
            turn_ip_allocations: cli.turn_ip_allocations.or(file.turn_ip_allocations).unwrap_or(d.turn_ip_allocations),
            turn_user_bandwidth: cli.turn_user_bandwidth.or(file.turn_user_bandwidth).unwrap_or(d.turn_user_bandwidth),
            turn_credential_ttl: cli
                .turn_credential_ttl_secs
                .or(file.turn_credential_ttl_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.turn_credential_ttl),
            ice_transport_policy: cli
                .ice_transport_policy
                .or(file.ice_transport_policy)
                .unwrap_or(d.ice_transport_policy),
            token_secret: secret(
                "token_secret",
                cli.token_secret.or(file.token_secret),
                cli.token_secret_file.or(file.token_secret_file),
            )?,
            token_public_key: match cli.token_public_key.or(file.token_public_key) {
                Some(text) => Some(crate::tokens::parse_ed25519_public_key(&text).ok_or_else(|| {
                    ConfigError::Invalid(
                        "token_public_key must be an Ed25519 public key: base64 of 32 bytes, or PEM".into(),
                    )
                })?),
                None => None,
            },
            require_token: cli.require_token.or(file.require_token).unwrap_or(d.require_token),
            resume_grace: cli
                .resume_grace_secs
                .or(file.resume_grace_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.resume_grace),
            max_rooms: cli.max_rooms.or(file.max_rooms).unwrap_or(d.max_rooms),
            max_name_chars: cli.max_name_chars.or(file.max_name_chars).unwrap_or(d.max_name_chars),
            max_room_chars: cli.max_room_chars.or(file.max_room_chars).unwrap_or(d.max_room_chars),
            max_chat_chars: cli.max_chat_chars.or(file.max_chat_chars).unwrap_or(d.max_chat_chars),
            chat_history: cli.chat_history.or(file.chat_history).unwrap_or(d.chat_history),
            max_file_bytes: cli.max_file_bytes.or(file.max_file_bytes).unwrap_or(d.max_file_bytes),
            file_storage_bytes: cli.file_storage_bytes.or(file.file_storage_bytes).unwrap_or(d.file_storage_bytes),
            file_dir: cli.file_dir.or(file.file_dir),
            file_connection_bytes: cli
                .file_connection_bytes
                .or(file.file_connection_bytes)
                .unwrap_or(d.file_connection_bytes),
            file_ip_bytes: cli.file_ip_bytes.or(file.file_ip_bytes).unwrap_or(d.file_ip_bytes),
            file_room_bytes: cli.file_room_bytes.or(file.file_room_bytes).unwrap_or(d.file_room_bytes),
            file_transfer_timeout: cli
                .file_transfer_timeout_secs
                .or(file.file_transfer_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.file_transfer_timeout),
            file_min_rate: cli.file_min_rate.or(file.file_min_rate).unwrap_or(d.file_min_rate),
            max_frame_bytes: cli.max_frame_bytes.or(file.max_frame_bytes).unwrap_or_else(|| {
                let capacity = cli.room_capacity.or(file.room_capacity).unwrap_or(default_capacity);
                default_max_frame_bytes(topology, capacity)
            }),
            outbox_capacity: cli.outbox_capacity.or(file.outbox_capacity).unwrap_or(d.outbox_capacity),
            outbox_bytes: cli.outbox_bytes.or(file.outbox_bytes).unwrap_or(d.outbox_bytes),
            ice_servers,
            allowed_origins,
            ping_interval: cli.ping_secs.or(file.ping_secs).map(Duration::from_secs).unwrap_or(d.ping_interval),
            idle_timeout: cli
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.idle_timeout),
            handshake_timeout: cli
                .handshake_timeout_secs
                .or(file.handshake_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.handshake_timeout),
            web_dir: cli.web_dir.or(file.web_dir),
            trusted_proxies,
            max_connections: cli.max_connections.or(file.max_connections).unwrap_or(d.max_connections),
            max_connections_per_ip: cli
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(d.max_connections_per_ip),
            max_tcp_connections: cli.max_tcp_connections.or(file.max_tcp_connections).unwrap_or(d.max_tcp_connections),
            max_tcp_connections_per_ip: cli
                .max_tcp_connections_per_ip
                .or(file.max_tcp_connections_per_ip)
                .unwrap_or(d.max_tcp_connections_per_ip),
            ip_joins_per_minute: cli.ip_joins_per_minute.or(file.ip_joins_per_minute).unwrap_or(d.ip_joins_per_minute),
            message_rate_scale: cli.message_rate_scale.or(file.message_rate_scale).unwrap_or(d.message_rate_scale),
            metrics: cli.metrics.or(file.metrics).unwrap_or(d.metrics),
            metrics_token: secret(
                "metrics_token",
                cli.metrics_token.or(file.metrics_token),
                cli.metrics_token_file.or(file.metrics_token_file),
            )?,
            log_format: cli.log_format.or(file.log_format).unwrap_or(d.log_format),
            test_panic_room: None,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if self.room_capacity < 1 {
            return bad("room_capacity must be at least 1");
        }
        if self.max_rooms < 1 {
            return bad("max_rooms must be at least 1");
        }
        if !(1..=crate::workers::MAX_WORKERS).contains(&self.workers) {
            return bad("workers must be between 1 and 64");
        }
        if self.media_port.is_some_and(|p| p != 0 && usize::from(p) + self.workers > 65_536) {
            return bad("media_port + workers must stay below 65536 (worker N uses media_port + N)");
        }
        if self.max_name_chars < 1 || self.max_room_chars < 1 || self.max_chat_chars < 1 {
            return bad("name, room and chat limits must be at least 1 character");
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > crate::ws::HARD_MAX_FRAME_BYTES as u32 {
            return bad("max_frame_bytes must be between 1024 and 1048576");
        }
        if self.media_tcp_port.is_some_and(|p| p != 0 && p == self.listen.port()) {
            return bad(
                "media_tcp_port is the HTTP port, which carries ICE over TCP anyway: leave media_tcp_port unset",
            );
        }
        if self.outbox_capacity < 8 {
            return bad("outbox_capacity must be at least 8");
        }
        if self.file_transfer_timeout.is_zero() || self.file_min_rate == 0 {
            return bad("file_transfer_timeout_secs and file_min_rate must be at least 1");
        }
        if self.outbox_bytes < 64 * 1024 {
            return bad("outbox_bytes must be at least 65536");
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > Duration::from_secs(300) {
            return bad("handshake_timeout_secs must be between 1 and 300");
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return bad("idle_timeout_secs must be longer than ping_secs, and both above zero");
        }
        if self.turn_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return bad("turn_secret must be at least 16 characters");
        }
        if self
            .turn_host
            .as_deref()
            .is_some_and(|h| crate::turn::host_of(h).as_deref() != Some(&*h.to_ascii_lowercase()))
        {
            return bad("turn_host must be a host name or an IP address, without a port");
        }
        if self.max_connections < 1 {
            return bad("max_connections must be at least 1");
        }
        if !(self.message_rate_scale.is_finite() && (0.0..=1000.0).contains(&self.message_rate_scale)) {
            return bad("message_rate_scale must be between 0 and 1000");
        }
        if self.metrics_token.as_deref().is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic())) {
            return bad("metrics_token must be at least 16 printable characters without spaces");
        }
        if self.turn_user_quota < 1 {
            return bad("turn_user_quota must be at least 1");
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&self.turn_credential_ttl) {
            return bad("turn_credential_ttl_secs must be between 60 and 86400");
        }
        if self.token_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return bad("token_secret must be at least 32 bytes");
        }
        if self.require_token && self.token_secret.is_none() && self.token_public_key.is_none() {
            return bad("require_token needs token_secret or token_public_key (else nobody could enter)");
        }
        if self.resume_grace > Duration::from_secs(600) {
            return bad("resume_grace_secs must be at most 600");
        }
        if self.ice_transport_policy == IceTransportPolicy::Relay && !self.turn && self.ice_servers.is_empty() {
            return bad(
                "ice_transport_policy = relay needs a TURN server: the built-in one (turn = true) or ice_servers",
            );
        }
        for s in &self.ice_servers {
            if s.urls.is_empty() {
                return bad("every ICE server needs at least one URL");
            }
            for u in &s.urls {
                if !(u.starts_with("stun:")
                    || u.starts_with("stuns:")
                    || u.starts_with("turn:")
                    || u.starts_with("turns:"))
                {
                    return Err(ConfigError::Invalid(format!(
                        "ICE server URL {u:?} must start with stun:, stuns:, turn: or turns:"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The per-connection message budgets.
    pub fn message_rates(&self) -> crate::limits::MessageRates {
        crate::limits::MessageRates::scaled(self.message_rate_scale)
    }

    /// The server-wide and per-IP connection limits.
    pub fn admission_limits(&self) -> crate::limits::AdmissionLimits {
        let per_minute = f64::from(self.ip_joins_per_minute);
        crate::limits::AdmissionLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            ip_joins: (self.ip_joins_per_minute > 0).then(|| crate::limits::Rate::new(per_minute, per_minute / 60.0)),
        }
    }

    /// The caps on open TCP connections. `fd_limit`: the process's open file limit; unless
    /// configured, the server-wide cap is three quarters of it (the rest is for the SFU's and
    /// TURN's sockets, files and the process itself).
    pub fn tcp_limits(&self, fd_limit: u64) -> crate::limits::TcpLimits {
        let derived = usize::try_from(fd_limit / 4 * 3).unwrap_or(usize::MAX).max(16);
        crate::limits::TcpLimits {
            max: if self.max_tcp_connections > 0 { self.max_tcp_connections } else { derived },
            per_ip: self.max_tcp_connections_per_ip,
            exempt: self.trusted_proxies.clone(),
        }
    }

    /// The limits announced to clients.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_name_chars: self.max_name_chars,
            max_room_chars: self.max_room_chars,
            max_chat_chars: self.max_chat_chars,
            room_capacity: self.room_capacity,
            chat_history: self.chat_history,
            max_file_bytes: self.max_file_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("huddle").chain(args.iter().copied())).expect("valid test args")
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_cli(parse(&[])).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.room_capacity, DEFAULT_SFU_CAPACITY);
        assert_eq!(c.topology, TopologyMode::Auto);
        assert!(c.ice_servers.is_empty(), "never a third-party STUN default");
        assert!(c.bandwidth_estimation, "on by default");
        let off = Config::from_cli(parse(&["--bandwidth-estimation", "false"])).expect("valid");
        assert!(!off.bandwidth_estimation);
        let p2p = Config::from_cli(parse(&["--topology", "p2p"])).expect("valid");
        assert_eq!(p2p.room_capacity, DEFAULT_P2P_CAPACITY, "a mesh defaults to a small room");
        // A browser's SDP answer in a full SFU room of 50 is well over 64 KiB.
        assert_eq!(c.max_frame_bytes, 64 * 1024 + DEFAULT_SFU_CAPACITY * SDP_BYTES_PER_SEAT);
        assert_eq!(p2p.max_frame_bytes, 64 * 1024);
        let big = Config::from_cli(parse(&["--room-capacity", "1000"])).expect("valid");
        assert_eq!(big.max_frame_bytes as usize, crate::ws::HARD_MAX_FRAME_BYTES, "capped");
        let set = Config::from_cli(parse(&["--max-frame-bytes", "100000"])).expect("valid");
        assert_eq!(set.max_frame_bytes, 100_000, "a configured limit wins");
    }

    #[test]
    fn help_states_the_room_capacity_defaults() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        let at = help.find("--room-capacity").expect("the option is listed");
        let text = &help[at..at + 200];
        assert!(text.contains(&format!("default: {DEFAULT_SFU_CAPACITY};")), "{text}");
        assert!(text.contains(&format!("{DEFAULT_P2P_CAPACITY} with `--topology p2p`")), "{text}");
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = std::env::temp_dir().join(format!("huddle-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("huddle.toml");
        std::fs::write(
            &path,
            "room_capacity = 3\nchat_history = 5\n[[ice_servers]]\nurls = [\"turn:turn.example.org:3478\"]\nusername = \"u\"\ncredential = \"p\"\n",
        )
        .expect("write config");
        let c = Config::from_cli(parse(&["--config", path.to_str().expect("utf-8 path"), "--room-capacity", "4"]))
            .expect("valid config");
        assert_eq!(c.room_capacity, 4);
        assert_eq!(c.chat_history, 5);
        assert_eq!(c.ice_servers[0].username.as_deref(), Some("u"));
    }

    #[test]
    fn the_example_file_is_valid_and_matches_the_defaults() {
        let file: FileConfig = toml::from_str(include_str!("../../../huddle.example.toml")).expect("example parses");
        let d = Config::default();
        assert_eq!(file.listen, Some(d.listen));
        assert_eq!(file.room_capacity, Some(d.room_capacity));
        assert_eq!(file.topology, Some(d.topology));
        assert_eq!(file.tls, Some(TlsMode::Off));
        assert_eq!(d.tls, Tls::Off);
        assert_eq!(file.bandwidth_estimation, Some(d.bandwidth_estimation));
        assert_eq!(file.ice_tcp, Some(d.ice_tcp));
        assert_eq!(file.max_file_bytes, Some(d.max_file_bytes));
        assert_eq!(file.idle_timeout_secs, Some(d.idle_timeout.as_secs()));
        assert_eq!(file.handshake_timeout_secs, Some(d.handshake_timeout.as_secs()));
        assert_eq!(file.outbox_capacity, Some(d.outbox_capacity));
        assert_eq!(file.outbox_bytes, Some(d.outbox_bytes));
        assert_eq!(file.max_tcp_connections, None, "derived from the open file limit");
        assert_eq!(file.max_tcp_connections_per_ip, Some(d.max_tcp_connections_per_ip));
        assert_eq!(file.turn, Some(d.turn));
        assert_eq!(file.turn_port, Some(crate::turn::DEFAULT_PORT));
        assert_eq!(
            file.turn_relay_ports.as_deref().map(parse_port_range).and_then(Result::ok),
            Some(d.turn_relay_ports)
        );
        assert_eq!(file.turn_user_quota, Some(d.turn_user_quota));
        assert_eq!(file.turn_ip_users, Some(d.turn_ip_users));
        assert_eq!(file.turn_ip_allocations, Some(d.turn_ip_allocations));
        assert_eq!(file.turn_user_bandwidth, Some(d.turn_user_bandwidth));
        assert_eq!(file.turn_credential_ttl_secs, Some(d.turn_credential_ttl.as_secs()));
        assert_eq!(file.require_token, Some(d.require_token));
        assert_eq!(file.resume_grace_secs, Some(d.resume_grace.as_secs()));
        assert_eq!(file.ice_transport_policy, Some(d.ice_transport_policy));
        assert_eq!(file.trusted_proxies, Some(Vec::new()));
        assert_eq!(file.max_connections, Some(d.max_connections));
        assert_eq!(file.max_connections_per_ip, Some(d.max_connections_per_ip));
        assert_eq!(file.ip_joins_per_minute, Some(d.ip_joins_per_minute));
        assert_eq!(file.message_rate_scale, Some(d.message_rate_scale));
        assert_eq!(file.metrics, Some(d.metrics));
        assert_eq!(file.log_format, Some(d.log_format));
    }

    #[test]
    fn turn_options() {
        let d = Config::from_cli(parse(&[])).expect("valid");
        assert!(d.turn, "on by default");
        assert_eq!(
            (d.turn_port, d.turn_secret.as_deref(), d.ice_transport_policy),
            (None, None, IceTransportPolicy::All)
        );
        let c = Config::from_cli(parse(&[
            "--turn-port",
            "3479",
            "--turn-secret",
            "0123456789abcdef",
            "--turn-allow-peer",
            "10.0.0.0/8,127.0.0.1",
            "--turn-relay-ports",
            "40000-40100",
            "--turn-host",
            "turn.example.org",
            "--ice-transport-policy",
            "relay",
            "--turn-ip-users",
            "8",
            "--turn-ip-allocations",
            "0",
            "--turn-credential-ttl-secs",
            "300",
        ]))
        .expect("valid");
        assert_eq!((c.turn_ip_users, c.turn_ip_allocations, c.turn_credential_ttl.as_secs()), (8, 0, 300));
        assert_eq!(c.turn_port, Some(3479));
        assert_eq!(c.turn_allow_peers.len(), 2);
        assert!(c.turn_allow_peers[0].contains(&"10.9.8.7".parse().unwrap()));
        assert_eq!(c.turn_relay_ports, (40000, 40100));
        assert_eq!(c.ice_transport_policy, IceTransportPolicy::Relay);
        for bad in [
            &["--turn-secret", "short"][..],
            &["--turn-relay-ports", "5000"],
            &["--turn-relay-ports", "6000-5000"],
            &["--turn-relay-ports", "5000-5001"],
            &["--turn-host", "evil.org:80"],
            &["--turn-host", "a/b"],
            &["--turn-user-quota", "0"],
            &["--turn-credential-ttl-secs", "59"],
            &["--turn-credential-ttl-secs", "86401"],
            &["--turn", "false", "--ice-transport-policy", "relay"],
        ] {
            assert!(Config::from_cli(parse(bad)).is_err(), "{bad:?} must be refused");
        }
        assert!(Cli::try_parse_from(["huddle", "--turn-allow-peer", "not-an-ip"]).is_err());
        assert!(Cli::try_parse_from(["huddle", "--ice-transport-policy", "none"]).is_err());
    }

    #[test]
    fn tls_modes() {
        assert_eq!(Config::from_cli(parse(&[])).expect("valid").tls, Tls::Off);
        assert_eq!(Config::from_cli(parse(&["--tls", "self-signed"])).expect("valid").tls, Tls::SelfSigned);
        let files = Config::from_cli(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"])).expect("valid");
        assert_eq!(files.tls, Tls::Files { cert: "c.pem".into(), key: "k.pem".into() });
        let e = Config::from_cli(parse(&["--tls-cert", "c.pem"])).expect_err("refused").to_string();
        assert!(e.contains("go together"), "{e}");
        let both = parse(&["--tls", "self-signed", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert!(Config::from_cli(both).expect_err("refused").to_string().contains("alternatives"));
        assert!(Cli::try_parse_from(["huddle", "--tls", "on"]).is_err(), "only off and self-signed");
        let kept = Config::from_cli(parse(&["--data-dir", "/srv/huddle"])).expect("valid");
        assert_eq!(kept.data_dir, Some(PathBuf::from("/srv/huddle")));
    }

    #[test]
    fn ice_over_tcp_is_on_by_default_on_the_http_port() {
        let c = Config::from_cli(parse(&[])).expect("valid");
        assert!(c.ice_tcp);
        assert_eq!(c.media_tcp_port, None);
        let off = Config::from_cli(parse(&["--ice-tcp", "false"])).expect("valid");
        assert!(!off.ice_tcp);
        let own = Config::from_cli(parse(&["--media-tcp-port", "8443"])).expect("valid");
        assert_eq!(own.media_tcp_port, Some(8443));
        assert!(Cli::try_parse_from(["huddle", "--media-tcp-port", "70000"]).is_err());
        let same = Config::from_cli(parse(&["--listen", "0.0.0.0:8443", "--media-tcp-port", "8443"]));
        assert!(same.expect_err("refused").to_string().contains("leave media_tcp_port unset"));
        assert!(Cli::try_parse_from(["huddle", "--ice-tcp", "maybe"]).is_err());

        let dir = std::env::temp_dir().join(format!("huddle-cfg-tcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("huddle.toml");
        std::fs::write(&path, "ice_tcp = false\nmedia_tcp_port = 3479\n").expect("write config");
        let file = Config::from_cli(parse(&["--config", path.to_str().expect("utf-8 path")])).expect("valid");
        assert!(!file.ice_tcp);
        assert_eq!(file.media_tcp_port, Some(3479));
        let flag = Config::from_cli(parse(&["--config", path.to_str().expect("utf-8 path"), "--ice-tcp", "true"]))
            .expect("valid");
        assert!(flag.ice_tcp, "the flag wins over the file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn operations_options() {
        let d = Config::from_cli(parse(&[])).expect("valid");
        assert!(d.trusted_proxies.is_empty() && d.metrics && d.metrics_token.is_none());
        assert_eq!((d.max_connections, d.max_connections_per_ip, d.ip_joins_per_minute), (10_000, 64, 120));
        assert_eq!(d.log_format, LogFormat::Text);
        let c = Config::from_cli(parse(&[
            "--trusted-proxies",
            "10.0.0.0/8,::1",
            "--max-connections",
            "5",
            "--max-connections-per-ip",
            "0",
            "--ip-joins-per-minute",
            "0",
            "--message-rate-scale",
            "2.5",
            "--metrics",
            "false",
            "--metrics-token",
            "0123456789abcdef",
            "--log-format",
            "json",
        ]))
        .expect("valid");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[0].contains(&"10.1.2.3".parse().unwrap()));
        assert_eq!(c.admission_limits().ip_joins, None);
        assert_eq!(c.admission_limits().max_connections, 5);
        assert!(!c.metrics);
        assert_eq!(c.log_format, LogFormat::Json);
        for bad in [
            &["--max-connections", "0"][..],
            &["--message-rate-scale=-1"],
            &["--message-rate-scale", "NaN"],
            &["--metrics-token", "short"],
        ] {
            assert!(Config::from_cli(parse(bad)).is_err(), "{bad:?} must be refused");
        }
        assert!(Cli::try_parse_from(["huddle", "--trusted-proxies", "proxy.example"]).is_err());
        assert!(Cli::try_parse_from(["huddle", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn secrets_can_come_from_files_and_flags_are_pointed_out() {
        let dir = std::env::temp_dir().join(format!("huddle-cfg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let token = dir.join("token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("write");
        let turn = dir.join("turn");
        std::fs::write(&turn, "turn-secret-from-a-file\r\nsecond line ignored\n").expect("write");
        let metrics = dir.join("metrics");
        std::fs::write(&metrics, "metrics-token-0123456789").expect("write");
        let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_string();
        let c = Config::from_cli(parse(&[
            "--token-secret-file",
            &path(&token),
            "--turn-secret-file",
            &path(&turn),
            "--metrics-token-file",
            &path(&metrics),
        ]))
        .expect("valid");
        assert_eq!(c.token_secret.as_deref(), Some("0123456789abcdef0123456789abcdef"), "without the newline");
        assert_eq!(c.turn_secret.as_deref(), Some("turn-secret-from-a-file"), "the first line only");
        assert_eq!(c.metrics_token.as_deref(), Some("metrics-token-0123456789"));
        // The file's secret is checked like the flag's.
        std::fs::write(&token, "too short\n").expect("write");
        assert!(Config::from_cli(parse(&["--token-secret-file", &path(&token)])).is_err());
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").expect("write");
        assert!(Config::from_cli(parse(&["--metrics-token-file", &path(&empty)])).is_err());
        assert!(Config::from_cli(parse(&["--turn-secret-file", &path(&dir.join("missing"))])).is_err());
        let both = ["--turn-secret", "0123456789abcdef", "--turn-secret-file", &path(&turn)];
        assert!(Config::from_cli(parse(&both)).expect_err("refused").to_string().contains("not both"));

        use clap::CommandFactory as _;
        let flags = Cli::command()
            .try_get_matches_from(["huddle", "--turn-secret", "0123456789abcdef", "--metrics-token-file", "f"])
            .expect("valid args");
        assert_eq!(secrets_on_command_line(&flags), vec!["turn_secret"], "a file is not a flag");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::from_cli(parse(&["--room-capacity", "0"])).is_err());
        assert!(Config::from_cli(parse(&["--ice-server", "http://x"])).is_err());
        assert!(Config::from_cli(parse(&["--ping-secs", "50"])).is_err());
        assert!(Config::from_cli(parse(&["--outbox-bytes", "1000"])).is_err());
        assert!(Config::from_cli(parse(&["--handshake-timeout-secs", "0"])).is_err());
    }

    #[test]
    fn connection_limits_and_deadlines() {
        let d = Config::from_cli(parse(&[])).expect("valid");
        assert_eq!((d.handshake_timeout, d.outbox_bytes), (Duration::from_secs(10), 2 * 1024 * 1024));
        let tcp = d.tcp_limits(1024);
        assert_eq!((tcp.max, tcp.per_ip), (768, 256), "three quarters of the open file limit");
        let c = Config::from_cli(parse(&[
            "--max-tcp-connections",
            "500",
            "--max-tcp-connections-per-ip",
            "0",
            "--handshake-timeout-secs",
            "3",
            "--trusted-proxies",
            "10.0.0.0/8",
        ]))
        .expect("valid");
        let tcp = c.tcp_limits(1024);
        assert_eq!((tcp.max, tcp.per_ip, tcp.exempt.len()), (500, 0, 1), "a configured cap wins");
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
    }
}
