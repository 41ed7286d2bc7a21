//! The TOML configuration file shared by `verify`, `serve` and the admin
//! commands. Unknown keys are errors, reported as `file:line:col`; omitted
//! sections and keys take their defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::stir::cert::{TrustStore, split_chain};
use crate::stir::verify::{CodeProfile, DateCheck, FailureKind, VerifyConfig, X5uPolicy};

/// The embedded default configuration (`serve` and `verify` without
/// `--config`). Its certificate, key and policy paths name the files
/// below, compiled in and unpacked at load: it works from any directory.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The files the embedded default names, by the path it names them with.
const EMBEDDED_FILES: &[(&str, &[u8])] = &[
    (
        "certs/demo/sti-root.pem",
        include_bytes!("../certs/demo/sti-root.pem"),
    ),
    (
        "certs/demo/sp-a.pem",
        include_bytes!("../certs/demo/sp-a.pem"),
    ),
    (
        "certs/demo/operator.key",
        include_bytes!("../certs/demo/operator.key"),
    ),
    (
        "policies/default.toml",
        include_bytes!("../policies/default.toml"),
    ),
    (
        "policies/lists/do-not-originate.txt",
        include_bytes!("../policies/lists/do-not-originate.txt"),
    ),
];

/// A private directory holding the embedded default's files, removed when
/// the last [`Config`] that uses it is dropped. Created with a random name
/// by `mkdir` (which fails on an existing name), so nobody else's files
/// can stand in for the trust anchors.
#[derive(Debug)]
pub struct Unpacked(PathBuf);

impl Unpacked {
    fn create() -> Result<Unpacked, ConfigError> {
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..8 {
            let dir = base.join(format!(
                "stirscreen-default-{}-{}",
                std::process::id(),
                crate::ids::random_hex(6)
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let u = Unpacked(dir);
                    for (rel, body) in EMBEDDED_FILES {
                        let p = u.0.join(rel);
                        let io = |source| ConfigError::Read {
                            path: p.display().to_string(),
                            source,
                        };
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent).map_err(io)?;
                        }
                        std::fs::write(&p, body).map_err(io)?;
                    }
                    return Ok(u);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ConfigError::Read {
            path: base.display().to_string(),
            source: last.unwrap_or_else(|| std::io::Error::other("no directory")),
        })
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub verify: VerifySection,
    pub fetch: FetchSection,
    pub proxy: ProxySection,
    pub policy: PolicySection,
    pub store: StoreSection,
    pub operator: OperatorSection,
    pub admin: AdminSection,
    pub log: LogSection,
    pub tls: crate::net::tls::TlsSection,
    pub redirect: RedirectSection,
    pub api: ApiSection,
    pub sti_pa: StiPaSection,
    /// Named peers and trunks, matched by source address (the `source` fact).
    pub peers: Vec<Peer>,
    /// The embedded default's files, while this configuration uses them.
    #[serde(skip)]
    pub unpacked: Option<Arc<Unpacked>>,
}

/// `[[peers]]`: a named peer or trunk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    /// Addresses or CIDR blocks (`192.0.2.0/24`, `2001:db8::/32`), parsed
    /// when the file is read (a bad one is a configuration error).
    pub addresses: Vec<crate::net::Cidr>,
    /// The SPCs this peer's calls are expected to be signed with (fact
    /// `peer_spc`); empty: no expectation.
    #[serde(default)]
    pub spc_expected: Vec<String>,
    /// How verified results are written toward this peer when calls are
    /// forwarded to it (`next_hop` in its addresses).
    #[serde(default)]
    pub annotation: crate::policy::render::Annotation,
    /// Display-name tags toward this peer, for user agents that show only
    /// a name: prefixed to the caller's display name (the verified rcd
    /// name, the name it sent, or else its number) when verification
    /// passed (`display_tag_passed`, e.g. "[V] ") or failed
    /// (`display_tag_failed`); empty: the display name is left alone.
    #[serde(default)]
    pub display_tag_passed: String,
    #[serde(default)]
    pub display_tag_failed: String,
    /// Attestation levels this source may ask the signing API for; empty:
    /// `[api] signing_attest`.
    #[serde(default)]
    pub sign_attest: Vec<String>,
}

impl Config {
    /// The name of the first peer whose addresses contain `ip`, or `unknown`.
    /// The annotation of the peer that `ip` belongs to (default: the
    /// policy's).
    pub fn annotation_of(&self, ip: std::net::IpAddr) -> crate::policy::render::Annotation {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a.contains(ip)))
            .map(|p| p.annotation)
            .unwrap_or_default()
    }

    /// The display-name tags (passed, failed) of the peer `ip` belongs to.
    pub fn display_tags_of(&self, ip: std::net::IpAddr) -> (&str, &str) {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a.contains(ip)))
            .map_or(("", ""), |p| {
                (p.display_tag_passed.as_str(), p.display_tag_failed.as_str())
            })
    }

    /// The SPCs the peer that `ip` belongs to is expected to sign with.
    pub fn spc_expected_of(&self, ip: std::net::IpAddr) -> &[String] {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a.contains(ip)))
            .map_or(&[], |p| p.spc_expected.as_slice())
    }

    /// The attestation levels `ip` may ask the signing API for.
    pub fn sign_attest_of(&self, ip: std::net::IpAddr) -> &[String] {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a.contains(ip)))
            .map(|p| p.sign_attest.as_slice())
            .filter(|a| !a.is_empty())
            .unwrap_or(self.api.signing_attest.as_slice())
    }

    pub fn source_of(&self, ip: std::net::IpAddr) -> &str {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a.contains(ip)))
            .map_or("unknown", |p| p.name.as_str())
    }
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// The policy file (its lists are relative to it).
    pub file: PathBuf,
    /// How often the files are checked for changes (SIGHUP also reloads).
    pub reload_check_ms: u64,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            file: PathBuf::from("policies/default.toml"),
            reload_check_ms: 1000,
        }
    }
}

/// `[api]`: the ATIS-1000082 HTTP API (read by `serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// `address:port`; empty: off. Plain HTTP on a loopback address,
    /// HTTPS with the `[tls]` certificate otherwise.
    pub listen: String,
    /// Bearer token every request must carry when set; required (the API
    /// refuses to start without it) on a listener that is not loopback.
    pub token: String,
    /// Request bodies larger than this are answered 413.
    pub max_body_bytes: usize,
    /// Headers and body must arrive within this (then 408 / closed).
    pub read_timeout_ms: u64,
    /// HTTP connections at once; more are closed at accept.
    pub max_connections: usize,
    /// `POST /stir/v1/signing`: the PKCS#8 PEM key of our STI certificate
    /// (unset: signing answers 404).
    pub signing_key: Option<PathBuf>,
    /// The x5u URL of that certificate.
    pub signing_x5u: String,
    /// Attestation levels callers of the signing API may ask for (a
    /// `[[peers]] sign_attest` narrows it per source).
    pub signing_attest: Vec<String>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: String::new(),
            token: String::new(),
            max_body_bytes: 64 * 1024,
            read_timeout_ms: 10_000,
            max_connections: 1024,
            signing_key: None,
            signing_x5u: String::new(),
            signing_attest: vec!["A".into(), "B".into(), "C".into()],
        }
    }
}

/// `[redirect]`: the SIP redirect server (read by `serve`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectSection {
    /// `udp:|tcp:|tls:address:port` like `[proxy] listen`; empty: off.
    pub listen: Vec<String>,
}

/// `[admin]`: the HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// `address:port` (IPv6 as `[::1]:9090`); empty turns the listener off.
    pub listen: String,
    /// Bearer token the `/v1/flags` endpoints require when set. On a
    /// listener that is not loopback they are refused until one is set.
    pub token: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:9090".into(),
            token: String::new(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`: operational logs and the decision log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter
    /// (`stirscreen=debug,info`); `RUST_LOG`, when set, wins.
    pub level: String,
    pub format: LogFormat,
    /// The decision log: a file path, `-` for stdout, empty for none.
    pub decisions: String,
    /// Rotate the decision log file when it would pass this size.
    pub decisions_max_bytes: u64,
    /// Rotated files kept (`decisions.jsonl.1` … `.N`).
    pub decisions_keep: usize,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: LogFormat::Text,
            decisions: "decisions.jsonl".into(),
            decisions_max_bytes: 100 * 1024 * 1024,
            decisions_keep: 5,
        }
    }
}

/// Where screening state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One node: SQLite (WAL) and memory.
    Embedded,
    /// Shared by every node: Redis or Valkey.
    Redis,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `embedded` (default) or `redis`.
    pub backend: Backend,
    /// SQLite database: the state itself (`embedded`), or the outbox of
    /// writes waiting for Redis to come back (`redis`).
    pub path: PathBuf,
    /// Redis/Valkey URL (`redis://host:6379/0`, `rediss://…` for TLS); with
    /// `cluster = true`, comma-separated seed nodes of a Redis Cluster.
    pub url: String,
    pub cluster: bool,
    /// Prefix of every key and of the pub/sub channel (several
    /// deployments can share one Redis).
    pub key_prefix: String,
    /// Deadline of the one round trip to Redis an INVITE makes.
    pub timeout_ms: u64,
    /// How long an unwanted-call report counts, in days.
    pub report_window_days: i64,
    /// PASSporTs remembered for replay detection (on each node; sized for
    /// 10,000 calls/s over the freshness window by default).
    pub replay_capacity: usize,
    /// `embedded`: how often changes made by other processes (`stirscreen
    /// flags`) are looked for.
    pub sync_ms: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: Backend::Embedded,
            path: PathBuf::from("stirscreen.db"),
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            key_prefix: "stirscreen:".into(),
            timeout_ms: 50,
            report_window_days: 30,
            replay_capacity: 1_200_000,
            sync_ms: 250,
        }
    }
}

/// `[operator]`: who rejects calls, and how blocked callers reach you.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorSection {
    pub name: String,
    /// The Warning header's agent.
    pub agent: String,
    /// Where a blocked caller seeks redress (URL).
    pub redress_url: String,
    pub redress_tel: String,
    pub redress_email: String,
    /// The operator's P-256 key (PKCS#8 PEM) that signs the 608/603 jCard.
    pub jcard_key: Option<PathBuf>,
    /// x5u of the operator's certificate.
    pub jcard_x5u: String,
    /// Point Call-Info at this URL instead of carrying the JWS inline.
    pub jcard_url: Option<String>,
}

impl Default for OperatorSection {
    fn default() -> Self {
        OperatorSection {
            name: "Demo Terminating Operator".into(),
            agent: "stirscreen".into(),
            redress_url: "https://redress.stirscreen.example/".into(),
            redress_tel: "+18005550199".into(),
            redress_email: "redress@stirscreen.example".into(),
            jcard_key: Some(PathBuf::from("certs/demo/operator.key")),
            jcard_x5u: "https://sti.stirscreen.example/operator.pem".into(),
            jcard_url: None,
        }
    }
}

/// `[sti_pa]`: trust anchors and CRL kept current from the STI-PA
/// (`stirscreen trust update`, and `serve` every `refresh_hours`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StiPaSection {
    /// The STI-PA API base URL (HTTPS); empty: off.
    pub api_url: String,
    /// Appended to `api_url`: the login (POST `{"userId","password"}`,
    /// answer `{"accessToken"}`); empty: no login (a static `token`).
    pub login_path: String,
    /// Appended to `api_url`: the signed CA list (a JWS).
    pub ca_list_path: String,
    /// The STI-PA CRL (GET with `Accept: application/pkix-crl`); empty:
    /// `api_url` + `/crl`.
    pub crl_url: String,
    pub user: String,
    /// A file holding the password (never the password itself here).
    pub password_file: Option<PathBuf>,
    /// A bearer token to use instead of logging in.
    pub token: String,
    /// The STI-PA root (PEM) the CA list's signer must chain to.
    pub root: Option<PathBuf>,
    /// Where installed sets live (`current` → the set in force). When it
    /// holds a set, its anchors replace `[verify] trust_anchors` and its
    /// CRL joins `[verify] crls`.
    pub store: Option<PathBuf>,
    /// `serve` fetches again after this many hours (and when the CRL is
    /// past its nextUpdate); 0: only `stirscreen trust update`.
    pub refresh_hours: u64,
    /// How often `serve` checks whether a refresh is due (seconds).
    pub check_secs: u64,
    /// An installed set older than this makes `/readyz` report degraded.
    pub max_age_hours: u64,
    /// Largest CA list, CRL and signer certificate body accepted (bytes).
    pub max_body_bytes: usize,
}

impl Default for StiPaSection {
    fn default() -> Self {
        StiPaSection {
            api_url: String::new(),
            login_path: "/auth/login".into(),
            ca_list_path: "/ca-list".into(),
            crl_url: String::new(),
            user: String::new(),
            password_file: None,
            token: String::new(),
            root: None,
            store: None,
            refresh_hours: 24,
            check_secs: 60,
            max_age_hours: 72,
            max_body_bytes: 4 << 20,
        }
    }
}

/// The installed set in force, relative to `[sti_pa] store`.
pub const INSTALLED_CURRENT: &str = "current";
/// Files of an installed set.
pub const INSTALLED_ANCHORS: &str = "anchors.pem";
pub const INSTALLED_CRL: &str = "crl.der";
pub const INSTALLED_META: &str = "meta.json";

/// `[verify]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySection {
    /// PEM files or directories of PEM files: the STI-PA trust anchors.
    pub trust_anchors: Vec<PathBuf>,
    /// Extra intermediate CA certificates (for signers that serve only the leaf).
    pub intermediates: Vec<PathBuf>,
    /// CRL files (DER or PEM).
    pub crls: Vec<PathBuf>,
    pub max_iat_age: i64,
    pub max_iat_future: i64,
    pub date_check: DateCheck,
    pub max_date_age: i64,
    pub x5u_ports: Vec<u16>,
    pub allow_http_x5u: bool,
    pub code_profile: CodeProfile,
    /// Per failure kind code overrides, e.g. `wrong-typ = 437`.
    pub codes: BTreeMap<FailureKind, RejectCode>,
    /// Verified tokens remembered so retransmissions skip ECDSA.
    pub memo_capacity: usize,
    /// Country code that completes numbers written without one (`1` for
    /// NANP: `2155551212` → `12155551212`); empty: numbers as written.
    pub default_country_code: CountryCode,
    /// `per-failure` (default) or `failed`: see README "Failure kinds".
    pub failed_verstat: crate::stir::verify::FailedVerstat,
    /// `use` (default) or `fail`: a CRL past its nextUpdate.
    pub stale_crl: crate::stir::verify::StaleCrl,
    /// Fetch the content `rcdi` digests cover (RFC 9795: `icn`, `jcl`) and
    /// check it before the rich call data counts as signed. Off by default:
    /// it is one more fetch a caller chooses the URL of (same SSRF guard,
    /// limits and cache as x5u; ≤ 1 MiB per URL).
    pub check_rcdi: bool,
}

/// `default_country_code`: one to three digits, or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryCode(pub String);

impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix('+').unwrap_or(&s);
        if digits.is_empty()
            || (digits.len() <= 3
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0'))
        {
            Ok(CountryCode(digits.to_owned()))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not a country code: one to three digits such as \"1\" (NANP) or \"44\", or \"\" for none"
            )))
        }
    }
}

impl Default for VerifySection {
    fn default() -> Self {
        let v = VerifyConfig::default();
        VerifySection {
            trust_anchors: vec![PathBuf::from("certs/demo/sti-root.pem")],
            intermediates: Vec::new(),
            crls: Vec::new(),
            max_iat_age: v.max_iat_age,
            max_iat_future: v.max_iat_future,
            date_check: v.date_check,
            max_date_age: v.max_date_age,
            x5u_ports: v.x5u.ports,
            allow_http_x5u: v.x5u.allow_http,
            code_profile: v.code_profile,
            codes: BTreeMap::new(),
            memo_capacity: 16_384,
            default_country_code: CountryCode::default(),
            failed_verstat: crate::stir::verify::FailedVerstat::PerFailure,
            stale_crl: crate::stir::verify::StaleCrl::Use,
            check_rcdi: false,
        }
    }
}

/// A SIP status code a failure may be answered with: one of RFC 8224's
/// (403, 428, 436, 437, 438) or another final error code, 400-699.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectCode(pub u16);

impl<'de> Deserialize<'de> for RejectCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(c @ 400..=699) => Ok(RejectCode(c)),
            _ => Err(serde::de::Error::custom(format!(
                "`{n}` is not a SIP error code: use 403, 428, 436, 437 or 438 (RFC 8224), or another code from 400 to 699"
            ))),
        }
    }
}

/// `[fetch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchSection {
    /// PEM files trusted for HTTPS x5u fetches, besides the system roots.
    pub extra_tls_roots: Vec<PathBuf>,
    /// Trust the operating system's web PKI roots for the HTTPS fetch (never
    /// for the SHAKEN chain).
    pub system_tls_roots: bool,
    /// Allow x5u hosts on loopback, private and other special addresses.
    pub allow_private_addresses: bool,
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
    /// Shortest time a fetched certificate is cached (ATIS-1000074: 24 h).
    pub min_cache_secs: u64,
    /// How long a failed fetch is remembered.
    pub negative_cache_secs: u64,
    /// Most URLs cached (least recently used evicted first; pinned ones
    /// never).
    pub cache_capacity: usize,
    /// Most bytes the cache may account for (each entry: twice its body,
    /// plus its URL and 256 bytes of bookkeeping).
    pub cache_max_bytes: usize,
    /// Certificate fetches in progress at once; beyond it a call whose
    /// certificate is not cached fails `x5u-unreachable` at once.
    pub max_concurrent_fetches: usize,
    /// Fetches of URLs not in the cache, per second, on average (a token
    /// bucket; `fetch_burst` tokens when full). Beyond: `x5u-unreachable`
    /// at once, counted. A caller choosing fresh x5u URLs cannot make the
    /// proxy fetch at its call rate.
    pub fetch_rate_per_second: f64,
    pub fetch_burst: u32,
    /// Fetch the CRLs named by the cRLDistributionPoints of fetched
    /// credentials (http or https, ≤ 1 MiB, SSRF-guarded), in the
    /// background, refreshed by nextUpdate; they join the configured CRLs.
    pub crl_distribution_points: bool,
    /// Call placement services (ATIS-1000096 out-of-band SHAKEN): for an
    /// INVITE without an Identity header, `GET {url}/passports/{dest}/{orig}`
    /// on each, and the PASSporTs returned are verified like in-band ones.
    /// Empty (default): off.
    pub cps_urls: Vec<String>,
    /// Bearer token for the CPS (empty: none).
    pub cps_token: String,
    /// Static name overrides for fetches, like curl's `--resolve`: host →
    /// `ip:port` (port 0 or absent: the URL's). For split-horizon DNS and
    /// labs; the SSRF rules still apply to the address.
    pub resolve: BTreeMap<String, String>,
    /// When non-empty, only these hosts (or `*.suffix`) are fetched from.
    pub allow_hosts: Vec<String>,
    /// Never fetched from.
    pub deny_hosts: Vec<String>,
    /// Credentials served from local files instead of fetched: x5u URL →
    /// PEM chain file. Still checked against the trust anchors and dates.
    pub pinned: BTreeMap<String, PathBuf>,
    /// Credentials imported ahead of calls (`stirscreen certs import`):
    /// loaded into the cache at start and on SIGHUP, each until its
    /// notAfter; none when unset.
    pub preload_dir: Option<PathBuf>,
}

impl Default for FetchSection {
    fn default() -> Self {
        FetchSection {
            extra_tls_roots: Vec::new(),
            system_tls_roots: true,
            allow_private_addresses: false,
            connect_timeout_ms: 2000,
            timeout_ms: 4000,
            min_cache_secs: 86_400,
            negative_cache_secs: 30,
            cache_capacity: 10_000,
            cache_max_bytes: 64 * 1024 * 1024,
            max_concurrent_fetches: 32,
            fetch_rate_per_second: 20.0,
            fetch_burst: 200,
            crl_distribution_points: false,
            cps_urls: Vec::new(),
            cps_token: String::new(),
            resolve: BTreeMap::new(),
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            pinned: BTreeMap::new(),
            preload_dir: None,
        }
    }
}

/// `[proxy]` (read by `serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// `transport:address:port`, IPv6 as `[::1]`.
    pub listen: Vec<String>,
    pub next_hop: String,
    /// INVITEs being verified at once; beyond it, 503 with Retry-After (a
    /// memory bound; overload is shed by `queue_budget_ms` well before).
    pub max_in_flight: usize,
    /// Per-call verification deadline, from the INVITE's arrival; then
    /// `verification-timeout`.
    pub verify_deadline_ms: u64,
    /// An INVITE that waited longer than this for a verify worker, with
    /// others queued behind it, is answered 503 (shedding by queueing delay: well under T1 = 500 ms, so
    /// the caller's first retransmission finds an answer, not a queue).
    pub queue_budget_ms: u64,
    /// How long SIGTERM waits for open transactions.
    pub drain_ms: u64,
    /// Add Record-Route to forwarded INVITEs, so in-dialog requests come
    /// through the proxy (routed by their Route set and Request-URI).
    pub record_route: bool,
    /// TCP (and later TLS) connections served at once; more are closed at
    /// accept (counted).
    pub tcp_max_connections: usize,
    /// A TCP connection with no traffic for this long is closed. RFC 5626
    /// flows send keep-alives every 95-120 s, so the default (300 s)
    /// outlasts two of them.
    pub tcp_idle_timeout_ms: u64,
    /// A message whose first byte arrived must be complete within this
    /// (slowloris); then the connection is closed.
    pub tcp_message_timeout_ms: u64,
    /// Runtime threads: 1 (default) = one event loop (measured cheapest per
    /// call, README "Performance"); N = a work-stealing pool of N; 0 = one
    /// per core.
    pub threads: usize,
    /// SO_RCVBUF/SO_SNDBUF of the UDP sockets (bytes; the kernel caps it at
    /// net.core.rmem_max / wmem_max). Bursts beyond the default ~208 KiB
    /// were dropped by the kernel under load.
    pub udp_buffer_bytes: usize,
    /// Threads that verify, decide and forward INVITEs beside the event
    /// loop (ECDSA off the loop); 0 = verify on the event loop itself.
    pub verify_threads: usize,
    /// What the callee is told of verified rich call data: `none`
    /// (default), `strip`, `call-info`, `display-name` or `both`.
    pub forward_rcd: crate::policy::render::RcdForward,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            listen: vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()],
            next_hop: "udp:127.0.0.1:5080".into(),
            max_in_flight: 10_000,
            verify_deadline_ms: 2000,
            queue_budget_ms: 100,
            drain_ms: 5000,
            record_route: false,
            tcp_max_connections: 4096,
            tcp_idle_timeout_ms: 300_000,
            tcp_message_timeout_ms: 10_000,
            threads: 1,
            udp_buffer_bytes: 4 * 1024 * 1024,
            verify_threads: 1,
            forward_rcd: crate::policy::render::RcdForward::None,
        }
    }
}

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}:{col}: {message}\n{snippet}\nhelp: {help}")]
    Syntax {
        file: String,
        line: usize,
        col: usize,
        message: String,
        snippet: String,
        help: String,
    },
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}`: {detail}")]
    Certificates { path: String, detail: String },
    #[error("[operator] {key}: {why}")]
    Operator { key: &'static str, why: String },
    #[error("no trust anchors: `verify.trust_anchors` names no certificate")]
    NoAnchors,
}

impl Config {
    /// Parses TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, col, snippet) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (1, 1, String::new()),
            };
            let message = e.message().trim().replace('\n', " ");
            let help = if message.contains("unknown field") {
                "remove the key or fix its spelling; the README lists every key".to_owned()
            } else if message.contains("unknown variant") {
                "use one of the values the message lists".to_owned()
            } else {
                "see the annotated example in README.md".to_owned()
            };
            ConfigError::Syntax {
                file: file.to_owned(),
                line,
                col,
                message,
                snippet,
                help,
            }
        })
    }

    /// Reads and parses a file, or the embedded default when `path` is None.
    /// Relative input paths (certificates, keys, the policy) resolve
    /// against the file's directory, never the working directory; the
    /// embedded default's against its unpacked files. Output paths (the
    /// state database, the decision log) of the embedded default stay
    /// relative to the working directory.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let mut cfg = Config::parse(DEFAULT_CONFIG, "<embedded default>")?;
            let u = Unpacked::create()?;
            cfg.rebase_inputs(&u.0);
            cfg.unpacked = Some(Arc::new(u));
            return Ok(cfg);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // A key the file leaves out keeps the embedded default's value;
        // when that names an embedded file absent beside the file, the
        // embedded copy is used.
        let mut unpacked: Option<Unpacked> = None;
        for p in cfg.input_paths_mut() {
            let name = p.to_string_lossy().into_owned();
            if p.is_relative()
                && !dir.join(&*p).exists()
                && EMBEDDED_FILES.iter().any(|(n, _)| *n == name)
            {
                if unpacked.is_none() {
                    unpacked = Some(Unpacked::create()?);
                }
                if let Some(u) = &unpacked {
                    *p = u.0.join(&*p);
                }
            }
        }
        cfg.unpacked = unpacked.map(Arc::new);
        cfg.rebase_inputs(&dir);
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        rebase(&mut cfg.store.path);
        if !matches!(cfg.log.decisions.as_str(), "" | "-") {
            let mut d = PathBuf::from(&cfg.log.decisions);
            rebase(&mut d);
            cfg.log.decisions = d.display().to_string();
        }
        Ok(cfg)
    }

    /// Every input file the configuration names.
    fn input_paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        self.verify
            .trust_anchors
            .iter_mut()
            .chain(self.verify.intermediates.iter_mut())
            .chain(self.verify.crls.iter_mut())
            .chain(self.fetch.extra_tls_roots.iter_mut())
            .chain(self.fetch.pinned.values_mut())
            .chain(self.fetch.preload_dir.iter_mut())
            .chain(std::iter::once(&mut self.policy.file))
            .chain(self.operator.jcard_key.iter_mut())
            .chain(self.tls.certificate.iter_mut())
            .chain(self.tls.private_key.iter_mut())
            .chain(self.tls.client_ca.iter_mut())
            .chain(self.tls.server_ca.iter_mut())
            .chain(self.api.signing_key.iter_mut())
            .chain(self.sti_pa.password_file.iter_mut())
            .chain(self.sti_pa.root.iter_mut())
            .chain(self.sti_pa.store.iter_mut())
    }

    /// Makes relative input paths relative to `dir`.
    fn rebase_inputs(&mut self, dir: &Path) {
        for p in self.input_paths_mut() {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }

    /// The core verifier settings.
    pub fn verify_config(&self) -> VerifyConfig {
        let v = &self.verify;
        VerifyConfig {
            max_iat_age: v.max_iat_age,
            max_iat_future: v.max_iat_future,
            date_check: v.date_check,
            max_date_age: v.max_date_age,
            x5u: X5uPolicy {
                ports: v.x5u_ports.clone(),
                allow_http: v.allow_http_x5u,
                any_port_on_private: self.fetch.allow_private_addresses,
            },
            code_profile: v.code_profile,
            code_overrides: v.codes.iter().map(|(k, c)| (*k, c.0)).collect(),
            numbering: crate::stir::tn::Numbering {
                country_code: v.default_country_code.0.clone(),
            },
            failed_verstat: v.failed_verstat,
            stale_crl: v.stale_crl,
            check_rcdi: v.check_rcdi,
        }
    }

    /// The STI-PA set in force (`[sti_pa] store`/current), if one was
    /// installed.
    pub fn installed_set(&self) -> Option<PathBuf> {
        let dir = self.sti_pa.store.as_ref()?.join(INSTALLED_CURRENT);
        dir.join(INSTALLED_ANCHORS).is_file().then_some(dir)
    }

    /// Loads trust anchors, intermediates and CRLs from disk: the STI-PA
    /// set installed by `trust update` when there is one, else
    /// `[verify] trust_anchors`.
    pub fn trust_store(&self) -> Result<TrustStore, ConfigError> {
        let installed = self.installed_set();
        let anchors = match &installed {
            Some(dir) => read_certs(&[dir.join(INSTALLED_ANCHORS)])?,
            None => read_certs(&self.verify.trust_anchors)?,
        };
        if anchors.is_empty() {
            return Err(ConfigError::NoAnchors);
        }
        let intermediates = read_certs(&self.verify.intermediates)?;
        let mut crls = Vec::new();
        let installed_crl = installed
            .map(|d| d.join(INSTALLED_CRL))
            .filter(|p| p.is_file());
        for p in self.verify.crls.iter().chain(installed_crl.iter()) {
            let bytes = read(p)?;
            if bytes.starts_with(b"-----") {
                for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
                    let pem = pem.map_err(|e| ConfigError::Certificates {
                        path: p.display().to_string(),
                        detail: e.to_string(),
                    })?;
                    crls.push(pem.contents);
                }
            } else {
                crls.push(bytes);
            }
        }
        TrustStore::new(anchors, intermediates, &crls).map_err(|e| ConfigError::Certificates {
            path: "verify.trust_anchors".into(),
            detail: e.to_string(),
        })
    }
}

fn read(p: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(p).map_err(|source| ConfigError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// Reads every certificate in PEM files or directories of `.pem`/`.crt` files.
pub fn read_certs(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, ConfigError> {
    let mut out = Vec::new();
    for p in paths {
        let files: Vec<PathBuf> = if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "pem" || x == "crt" || x == "cer")
                })
                .collect();
            v.sort();
            v
        } else {
            vec![p.clone()]
        };
        for f in files {
            let bytes = read(&f)?;
            let certs = split_chain(&bytes).map_err(|e| ConfigError::Certificates {
                path: f.display().to_string(),
                detail: e.to_string(),
            })?;
            out.extend(certs);
        }
    }
    Ok(out)
}

/// Line, column (1-based) and a caret snippet for a byte offset.
pub fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    let line_text = text
        .get(line_start..)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default();
    let snippet = format!(
        "{line:>4} | {line_text}\n     | {}^",
        " ".repeat(col.saturating_sub(1))
    );
    (line, col, snippet)
}

impl Config {
    /// The operator as the policy renderer needs it; loads the jCard key.
    pub fn operator(&self) -> Result<crate::policy::render::Operator, ConfigError> {
        let o = &self.operator;
        // ATIS-1000099 field rules for the redress data a 603+ carries.
        let bad = |key, why: &str| ConfigError::Operator {
            key,
            why: why.to_owned(),
        };
        let text_ok = |v: &str| {
            !v.contains(|c: char| c.is_whitespace() || c.is_control() || "\";<>".contains(c))
        };
        if !o.redress_url.is_empty()
            && (!o.redress_url.starts_with("https://") || !text_ok(&o.redress_url))
        {
            return Err(bad(
                "redress_url",
                "must be an https URL without spaces, quotes or `;`",
            ));
        }
        let e164 = |t: &str| {
            t.strip_prefix('+').is_some_and(|d| {
                (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
            })
        };
        if !o.redress_tel.is_empty() && !e164(&o.redress_tel) {
            return Err(bad(
                "redress_tel",
                "must be an E.164 number: `+` and 2 to 15 digits",
            ));
        }
        if !o.redress_email.is_empty()
            && (!o.redress_email.contains('@') || !text_ok(&o.redress_email))
        {
            return Err(bad(
                "redress_email",
                "must be an e-mail address without spaces, quotes or `;`",
            ));
        }
        if o.redress_url.is_empty() && o.redress_tel.is_empty() && o.redress_email.is_empty() {
            return Err(bad(
                "redress_url",
                "one of redress_url, redress_tel, redress_email is needed (a 603+ must say where to seek redress)",
            ));
        }
        let jcard = match &o.jcard_key {
            None => None,
            Some(path) => {
                let pem = read(path)?;
                let key = crate::stir::passport::SigningKey::from_pem(&pem).map_err(|e| {
                    ConfigError::Certificates {
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    }
                })?;
                Some(crate::policy::render::JcardSigner {
                    key,
                    x5u: o.jcard_x5u.clone(),
                    card: serde_json::json!(["vcard", [
                        ["version", {}, "text", "4.0"],
                        ["fn", {}, "text", o.name],
                        ["org", {}, "text", o.name],
                        ["tel", {"type": ["work", "voice"]}, "uri", format!("tel:{}", o.redress_tel)],
                        ["email", {}, "text", o.redress_email],
                        ["url", {}, "uri", o.redress_url],
                        ["note", {}, "text", "Contact us to dispute a blocked call."]
                    ]]),
                    url: o.jcard_url.clone(),
                })
            }
        };
        Ok(crate::policy::render::Operator {
            name: o.name.clone(),
            agent: o.agent.clone(),
            redress: [&o.redress_url, &o.redress_tel, &o.redress_email]
                .into_iter()
                .find(|v| !v.is_empty())
                .cloned()
                .unwrap_or_default(),
            redress_url: o.redress_url.clone(),
            redress_tel: o.redress_tel.clone(),
            redress_email: o.redress_email.clone(),
            jcard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_codes_accept_only_sip_error_codes() {
        for bad in ["200", "0", "700", "-1", "399"] {
            let text = format!("[verify.codes]\nwrong-typ = {bad}\n");
            let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
            assert!(e.starts_with("x.toml:2:13"), "{bad}: {e}");
            assert!(e.contains("is not a SIP error code"), "{e}");
        }
        for good in ["403", "438", "488", "603"] {
            let text = format!("[verify.codes]\nwrong-typ = {good}\n");
            assert!(Config::parse(&text, "x.toml").is_ok(), "{good}");
        }
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(c.verify.max_iat_age, 60);
        assert_eq!(c.proxy.next_hop, "udp:127.0.0.1:5080");
    }

    #[test]
    fn unknown_key_in_every_table_is_located() {
        for (table, line) in [
            ("verify", 2),
            ("fetch", 2),
            ("proxy", 2),
            ("policy", 2),
            ("store", 2),
            ("operator", 2),
        ] {
            let text = format!("[{table}]\nbogus_key = 1\n");
            let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("x.toml:{line}:1: unknown field `bogus_key`")),
                "{e}"
            );
            assert!(e.contains("help: remove the key"), "{e}");
        }
        let e = Config::parse("bogus = 1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:1:1: unknown field `bogus`"), "{e}");
        let e = Config::parse("[verify.codes]\nno-such-kind = 400\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:2:1:"), "{e}");
    }

    #[test]
    fn peers_match_by_cidr() {
        let c = Config::parse(
            "[[peers]]\nname = \"wholesale\"\naddresses = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n[[peers]]\nname = \"retail\"\naddresses = [\"198.51.100.7\"]\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.source_of("192.0.2.77".parse().unwrap()), "wholesale");
        assert_eq!(c.source_of("2001:db8::1".parse().unwrap()), "wholesale");
        assert_eq!(c.source_of("198.51.100.7".parse().unwrap()), "retail");
        assert_eq!(c.source_of("198.51.100.8".parse().unwrap()), "unknown");
        // A bad block is an error with its position, not a peer that never
        // matches.
        for bad in ["192.0.2.0/33", "2001:db8::/129", "192.0.2.x", "10.0.0.0/"] {
            let e = Config::parse(
                &format!("[[peers]]\nname = \"p\"\naddresses = [\"{bad}\"]\n"),
                "x.toml",
            )
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("x.toml:3:"), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn interface_keys_parse() {
        let c = Config::parse(
            "[verify]\ntrust_anchors = [\"a.pem\"]\nmax_iat_age = 30\n[fetch]\nextra_tls_roots = [\"r.pem\"]\nallow_private_addresses = true\n[verify.codes]\nwrong-typ = 437\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.verify.max_iat_age, 30);
        assert!(c.fetch.allow_private_addresses);
        assert_eq!(c.verify_config().code(FailureKind::WrongTyp), 437);
    }
}
