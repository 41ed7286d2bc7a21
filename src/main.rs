//! The `stirscreen` command line.

// jemalloc, with a background thread purging freed pages after 1 s
// (.cargo/config.toml), returns the memory of closed connections and
// finished bursts to the OS; glibc kept it (ARCHITECTURE.md, "Allocator").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use stirscreen::config::Config;
use stirscreen::fetch::{CertFetcher, verify_request};
use stirscreen::lab::InviteSpec;
use stirscreen::limits::MAX_SIP_MESSAGE;
use stirscreen::sip::Message;
use stirscreen::stir::cert::{describe_chain, profile_of, split_chain};
use stirscreen::stir::passport::sign_identity;
use stirscreen::stir::passport::{Attest, SigningKey};
use stirscreen::stir::verify::{FailureKind, Outcome, Verifier};
use stirscreen::time::{Clock, UnixTime};

/// `println!` without the panic when stdout is closed (`stirscreen … | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` without the panic when stdout is closed.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Parser, Debug)]
#[command(
    name = "stirscreen",
    version,
    about = "STIR/SHAKEN call screening: verify, sign and screen SIP calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify the Identity headers of one SIP INVITE.
    Verify {
        /// Configuration file (TOML); the embedded default when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
        /// Verify as if the INVITE arrived at this Unix time.
        #[arg(long)]
        now: Option<i64>,
        /// The message file, or `-` for standard input.
        message: PathBuf,
    },
    /// Run the inline screening proxy (embedded default configuration when
    /// no file is given).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the whole product on 127.0.0.1: a certificate repository, the
    /// proxy and a callee, then one call per outcome and a table (no
    /// network, no files needed).
    Demo {
        /// Place a live load of this many calls per second instead.
        #[arg(long)]
        rate: Option<u32>,
        /// How long the live load runs, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Also write the proxy's decision log (JSON lines) to this file.
        #[arg(long)]
        decision_log: Option<PathBuf>,
    },
    /// Sign a SHAKEN PASSporT (lab STI-AS) and print the Identity header.
    Sign {
        /// The signer's P-256 private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Where the signer's certificate chain is published.
        #[arg(long)]
        x5u: String,
        /// Calling number (digits, `+` and separators are stripped).
        #[arg(long)]
        orig: String,
        /// Called number; repeat for several.
        #[arg(long, required = true)]
        dest: Vec<String>,
        /// Attestation level: A, B or C.
        #[arg(long, default_value = "A")]
        attest: String,
        /// Issued-at time (Unix seconds); now by default.
        #[arg(long)]
        iat: Option<i64>,
        /// Origination identifier; a random UUID by default.
        #[arg(long)]
        origid: Option<String>,
        /// Print a complete INVITE carrying the Identity header.
        #[arg(long)]
        invite: bool,
        /// Print a SIPp injection file of N distinct PASSporTs instead
        /// (`orig;dest;token` per line; the scenario adds the parameters).
        #[arg(long, value_name = "N")]
        sipp_csv: Option<usize>,
        /// Rich call data (RFC 9795): the caller's name (`rcd.nam`).
        #[arg(long)]
        rcd_name: Option<String>,
        /// Rich call data: an https icon URL (`rcd.icn`); needs --rcd-name.
        #[arg(long, requires = "rcd_name")]
        rcd_icon: Option<String>,
    },
    /// Lab STI PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Screening policies: check, explain a decision, run regression cases.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Trust anchors and CRL from the STI-PA (`[sti_pa]`).
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Do-not-originate list: build it from downloaded files.
    Dno {
        #[command(subcommand)]
        command: DnoCommand,
    },
    /// Callee flags (the callee does not want calls from a caller).
    Flags {
        /// Configuration file (for `[store]`: the embedded database, or the
        /// Redis/Valkey every node shares).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: FlagsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// Log in to the STI-PA, fetch and verify the signed CA list and the
    /// CRL, install both as one set (exit 0); anything refused leaves the
    /// set in force and exits 1 with the reason. A running `serve` takes
    /// the new set on SIGHUP (or its own refresh).
    Update {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Check dates against this Unix time instead of the clock.
        #[arg(long)]
        now: Option<i64>,
    },
    /// Show the installed set (sequence, expiry, anchors, CRL, age) as JSON.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DnoCommand {
    /// Build a `kind = "tn"` list from NANP code lists (unassigned or
    /// unallocated NPA-NXX / NPA-NXX-X, as the administrator's CSV or one
    /// code a line) and telephone-number lists; written atomically (a
    /// running `serve` reloads it whole).
    Import {
        /// A code list (repeat for several).
        #[arg(long)]
        codes: Vec<PathBuf>,
        /// A telephone-number list (repeat for several).
        #[arg(long)]
        numbers: Vec<PathBuf>,
        /// The list file to write (e.g. policies/lists/do-not-originate.txt).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Validate a policy and its lists; report every problem (exit 3 if any).
    Check { file: PathBuf },
    /// Show the facts of a call, each rule with why it did or did not match,
    /// the decision and the exact SIP it produces.
    Explain {
        file: PathBuf,
        /// A SIP INVITE to verify and screen.
        #[arg(long, conflicts_with = "facts", required_unless_present = "facts")]
        call: Option<PathBuf>,
        /// Facts as JSON (the keys of a policy's conditions).
        #[arg(long)]
        facts: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        now: Option<i64>,
        /// The address the call came from (matched against `[[peers]]`).
        #[arg(long)]
        from_address: Option<std::net::IpAddr>,
    },
    /// Run regression cases (facts → expected action); non-zero on a mismatch.
    Test { file: PathBuf, cases: PathBuf },
}

#[derive(Subcommand, Debug)]
enum FlagsCommand {
    /// The callee does not want calls from the caller.
    Add { callee: String, caller: String },
    /// Remove a flag.
    Remove { callee: String, caller: String },
    /// List flags, for one callee or all.
    List { callee: Option<String> },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Generate a lab PKI (root, intermediate, SP certificates and failing variants).
    Gen {
        /// Output directory.
        dir: PathBuf,
    },
    /// Show a certificate chain from a file or an https URL: validity, SPC,
    /// trust and profile problems.
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Verify trust and validity at this Unix time.
        #[arg(long)]
        now: Option<i64>,
        /// A PEM/DER file or an https:// URL.
        source: String,
    },
    /// Load certificates into the cache ahead of calls (`[fetch]
    /// preload_dir`): each source is checked against the trust anchors
    /// now and stored; `serve` loads them at start and on SIGHUP. Exit 1
    /// when any source was refused (the others are stored).
    Import {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Check validity at this Unix time.
        #[arg(long)]
        now: Option<i64>,
        /// An https:// x5u URL (fetched now, under the same rules as a
        /// call's fetch), or URL=FILE (a chain file to serve for that URL).
        #[arg(required = true)]
        sources: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once: library errors
/// already put their cause (an OS error, say) in their own message.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Verify {
            config,
            json,
            now,
            message,
        } => verify(config.as_deref(), json, now, &message),
        Command::Sign {
            key,
            x5u,
            orig,
            dest,
            attest,
            iat,
            origid,
            invite,
            sipp_csv,
            rcd_name,
            rcd_icon,
        } => {
            let key = load_key(&key)?;
            let attest = match attest.as_str() {
                "A" => Attest::A,
                "B" => Attest::B,
                "C" => Attest::C,
                other => bail!("attestation `{other}` is not A, B or C"),
            };
            let canon = |s: &str| {
                stirscreen::stir::tn::Tn::canonical(s)
                    .map(|t| t.to_string())
                    .with_context(|| format!("`{s}` is not a telephone number"))
            };
            let orig = canon(&orig)?;
            let dest = dest
                .iter()
                .map(|d| canon(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let iat = iat.map_or_else(|| Clock.now(), UnixTime);
            // One Identity header value: SHAKEN, or with rich call data.
            let sign = |origid: Option<&str>| -> anyhow::Result<String> {
                let Some(nam) = &rcd_name else {
                    return Ok(sign_identity(
                        &key, &x5u, attest, &orig, &dest, iat, origid,
                    )?);
                };
                let req = stirscreen::stir::passport::SignRequest {
                    attest,
                    orig: orig.clone(),
                    dest: dest.clone(),
                    iat: iat.0,
                    origid: origid.map_or_else(stirscreen::ids::uuid_v4, str::to_owned),
                    x5u: x5u.clone(),
                };
                let token =
                    stirscreen::stir::passport::sign_rcd(&key, &req, nam, rcd_icon.as_deref())?;
                Ok(stirscreen::stir::passport::identity_header_value(
                    &token, &x5u,
                ))
            };
            if let Some(n) = sipp_csv {
                use std::io::Write as _;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                writeln!(out, "SEQUENTIAL")?;
                let first = dest.first().cloned().unwrap_or_default();
                for _ in 0..n {
                    let ident = sign(None)?;
                    let token = ident.split(';').next().unwrap_or_default();
                    writeln!(out, "{orig};{first};{token}")?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let ident = sign(origid.as_deref())?;
            if invite {
                let first = dest.first().cloned().unwrap_or_default();
                let mut spec = InviteSpec::new(&orig, &first);
                spec.date = Some(iat);
                spec.identities.push(ident);
                out!("{}", spec.build());
            } else {
                outln!("Identity: {ident}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config } => {
            let cfg = Config::load(config.as_deref())?;
            stirscreen::ops::logging::init(&cfg.log).map_err(anyhow::Error::msg)?;
            let drain = std::time::Duration::from_millis(cfg.proxy.drain_ms);
            let rt = match cfg.proxy.threads {
                1 => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
                0 => tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?,
                n => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(n)
                    .enable_all()
                    .build()?,
            };
            rt.block_on(stirscreen::ops::serve::serve(cfg, drain))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            rate,
            duration,
            decision_log,
        } => demo(rate, duration, decision_log),
        Command::Policy { command } => policy_cmd(command),
        Command::Flags { config, command } => flags_cmd(config.as_deref(), command),
        Command::Dno {
            command:
                DnoCommand::Import {
                    codes,
                    numbers,
                    out,
                },
        } => dno_import(&codes, &numbers, &out),
        Command::Trust { command } => match command {
            TrustCommand::Update { config, now } => trust_update(config.as_deref(), now),
            TrustCommand::Status { config } => trust_status(config.as_deref()),
        },
        Command::Certs { command } => match command {
            CertsCommand::Gen { dir } => {
                let files = stirscreen::lab::pki::generate(&dir)?;
                for f in files {
                    outln!("{}", f.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            CertsCommand::Show {
                config,
                now,
                source,
            } => certs_show(config.as_deref(), now, &source),
            CertsCommand::Import {
                config,
                now,
                sources,
            } => certs_import(config.as_deref(), now, &sources),
        },
    }
}

fn demo(
    rate: Option<u32>,
    duration: u64,
    decision_log: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use stirscreen::ops::demo::{DemoOptions, metric_sum, render_table, run_load, run_table};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let opts = DemoOptions {
        decision_log: decision_log.clone(),
    };
    if let Some(rate) = rate {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        outln!(
            "stirscreen demo: {rate} calls/s for {duration} s through the proxy on 127.0.0.1 (every outcome in turn)"
        );
        let s = rt.block_on(run_load(
            &opts,
            rate,
            std::time::Duration::from_secs(duration),
            |line| {
                if tty {
                    eprint!("\r{line}   ");
                } else {
                    eprintln!("{line}");
                }
            },
        ))?;
        if tty {
            eprintln!();
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        outln!(
            "calls: {} sent, {} answered in {:.1} s: {:.0} calls/s",
            s.sent,
            s.answered,
            s.elapsed.as_secs_f64(),
            s.answered as f64 / s.elapsed.as_secs_f64()
        );
        outln!("decisions:");
        for (k, n) in &s.decisions {
            outln!("  {k:<40} {n}");
        }
        outln!(
            "responses at the caller: {}",
            s.responses
                .iter()
                .map(|(c, n)| format!("{c}×{n}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        outln!(
            "INVITE → final response: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(s.percentile(0.5)),
            ms(s.percentile(0.9)),
            ms(s.percentile(0.99)),
            ms(s.percentile(1.0))
        );
        if let Some(p) = &decision_log {
            outln!("decision log: {}", p.display());
        }
        if s.answered < s.sent {
            eprintln!(
                "demo: {} of {} calls got no final response within 5 s of the end (the machine may be overloaded: try a lower --rate)",
                s.sent - s.answered,
                s.sent
            );
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "stirscreen demo: certificate repository (HTTPS), proxy, redirect server, HTTP API and callee on 127.0.0.1; policy policies/default.toml\n"
    );
    let report = rt.block_on(run_table(&opts))?;
    out!("{}", render_table(&report.rows));
    let delta = |name: &str| {
        metric_sum(&report.metrics_after, name) - metric_sum(&report.metrics_before, name)
    };
    outln!("\nmetrics ({}), moved by these calls:", report.metrics_url);
    for name in [
        "stirscreen_calls_screened_total",
        "stirscreen_verification_failures_total",
        "stirscreen_policy_decisions_total",
        "stirscreen_invite_responses_total",
        "stirscreen_cert_fetches_total",
        "stirscreen_verification_duration_seconds_count",
    ] {
        outln!("  {name:<50} +{}", delta(name));
    }
    outln!("\nthe same screening service behind the other front-ends (first call again):");
    for (front, sent, got) in &report.front_ends {
        outln!("  {front}\n    {sent}\n    -> {got}");
    }
    if let Some(first) = report.rows.first() {
        outln!(
            "\ndecision record (one JSON line per call; [log] decisions in serve):\n  {}",
            serde_json::to_string(&first.record)?
        );
    }
    if let Some(p) = &decision_log {
        outln!(
            "decision log: {} records written to {}",
            report.decision_records_written,
            p.display()
        );
    }
    outln!(
        "\nevery call above went through the real proxy and verifier; run `stirscreen serve` to screen your own"
    );
    Ok(ExitCode::SUCCESS)
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    SigningKey::from_pem(&text).with_context(|| format!("`{}`", path.display()))
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = (MAX_SIP_MESSAGE + 1) as u64;
    if path == Path::new("-") {
        std::io::stdin().take(limit).read_to_end(&mut buf)?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?
            .take(limit)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
    }
    if buf.len() > MAX_SIP_MESSAGE {
        bail!(
            "`{}` is larger than {MAX_SIP_MESSAGE} bytes",
            path.display()
        );
    }
    Ok(buf)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn build_fetcher(cfg: &Config) -> anyhow::Result<Arc<CertFetcher>> {
    let trust = Arc::new(cfg.trust_store()?);
    Ok(Arc::new(CertFetcher::new(
        cfg.fetch.clone(),
        cfg.verify_config().x5u,
        trust,
    )?))
}

fn verify(
    config: Option<&Path>,
    json: bool,
    now: Option<i64>,
    message: &Path,
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let bytes = read_input(message)?;
    let msg = Message::parse(&bytes)
        .with_context(|| format!("`{}` is not a SIP message", message.display()))?;
    if msg.method().is_none() {
        bail!("`{}` is a SIP response, not a request", message.display());
    }
    let fetcher = build_fetcher(&cfg)?;
    let verifier = Verifier::new(cfg.verify_config());
    let now = now.map_or_else(|| Clock.now(), UnixTime);
    let outcome = runtime()?.block_on(verify_request(&verifier, &fetcher, &msg, now));
    if json {
        outln!("{}", serde_json::to_string_pretty(&outcome_json(&outcome))?);
    } else {
        out!("{}", report(&outcome));
    }
    Ok(ExitCode::SUCCESS)
}

fn dno_import(codes: &[PathBuf], numbers: &[PathBuf], out: &Path) -> anyhow::Result<ExitCode> {
    if codes.is_empty() && numbers.is_empty() {
        bail!("give at least one --codes or --numbers file");
    }
    let started = std::time::Instant::now();
    let mut entries = Vec::new();
    let mut sources = Vec::new();
    let mut skipped_total = 0;
    let inputs = codes
        .iter()
        .map(|p| (p, true))
        .chain(numbers.iter().map(|p| (p, false)));
    for (path, is_codes) in inputs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let (got, skipped) = if is_codes {
            stirscreen::policy::dno::prefixes_from_codes(&text)
        } else {
            stirscreen::policy::dno::numbers_from_list(&text)
        };
        for (line, why) in skipped.iter().take(5) {
            eprintln!("{}:{line}: skipped: {why}", path.display());
        }
        if skipped.len() > 5 {
            eprintln!(
                "{}: {} more lines skipped",
                path.display(),
                skipped.len() - 5
            );
        }
        skipped_total += skipped.len();
        sources.push(format!(
            "{} ({}: {} entries)",
            path.display(),
            if is_codes { "codes" } else { "numbers" },
            got.len()
        ));
        entries.extend(got);
    }
    let (text, count) = stirscreen::policy::dno::render(entries, &sources);
    // Atomic: a reader (serve's reload) sees the old file or the new one.
    let tmp = out.with_extension("import-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot replace `{}`", out.display()))?;
    outln!(
        "{}: {count} entries ({skipped_total} lines skipped) in {:.2} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "verstat": o.verstat.as_str(),
        "attest": o.attest().map(Attest::as_str),
        "stir_code": o.stir_code,
        "reason": o.reason(),
        "failure": o.failure.as_ref().map(|f| f.kind.name()),
        "failure_detail": o.failure.as_ref().map(|f| f.detail.clone()),
        "orig": o.orig,
        "dest": o.dest,
        "spc": o.spc(),
        "origid": o.origid,
        "signer": o.verified.as_ref().map(|v| v.signer.clone()),
        "rcd": o.verified.as_ref().and_then(|v| v.rcd.clone()),
        "diversion": o.verified.as_ref().map(|v| v.diversion.clone()).unwrap_or_default(),
        "iat_age": o.iat_age,
        "date_note": o.date_note,
        "identity_headers": o.headers,
        "profile_problems": o.profile_problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn report(o: &Outcome) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let row = |s: &mut String, k: &str, v: &str| {
        let _ = writeln!(s, "{k:<10} {v}");
    };
    row(&mut s, "verstat", o.verstat.as_str());
    row(&mut s, "attest", o.attest().map_or("-", Attest::as_str));
    match &o.failure {
        Some(f) => {
            let code = o.stir_code.unwrap_or(0);
            row(
                &mut s,
                "failure",
                &format!(
                    "{} ({code} {})",
                    f.kind.name(),
                    FailureKind::reason_phrase(code)
                ),
            );
            row(&mut s, "reason", &f.detail);
        }
        None => row(&mut s, "result", &o.reason()),
    }
    let verified = if o.verified.is_some() {
        ""
    } else {
        " (claimed, not verified)"
    };
    row(
        &mut s,
        "orig",
        &format!("{}{verified}", o.orig.as_ref().map_or("-", |t| t.as_str())),
    );
    row(
        &mut s,
        "dest",
        &o.dest
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
    if let Some(v) = &o.verified {
        row(&mut s, "spc", &v.spc);
        row(&mut s, "signer", &v.signer);
        row(&mut s, "origid", &v.origid);
    }
    if let Some(age) = o.iat_age {
        row(&mut s, "iat age", &format!("{age} s"));
    }
    if let Some(n) = &o.date_note {
        row(&mut s, "date", n);
    }
    for h in &o.headers {
        let state = match (&h.failure, &h.ignored) {
            (Some(f), _) => format!("{}: {}", f.kind.name(), f.detail),
            (None, Some(i)) => format!("ignored: {i}"),
            (None, None) => "ok".into(),
        };
        row(
            &mut s,
            &format!("identity{}", h.index),
            &format!("ppt={} {}", h.ppt.as_deref().unwrap_or("-"), state),
        );
    }
    for p in &o.profile_problems {
        row(&mut s, "profile", &p.to_string());
    }
    s
}

fn trust_update(config: Option<&Path>, now: Option<i64>) -> anyhow::Result<ExitCode> {
    use stirscreen::fetch::trustlist::StiPa;
    let cfg = Config::load(config)?;
    let now = now.map_or_else(|| Clock.now(), UnixTime);
    let client = StiPa::new(
        &cfg.sti_pa,
        &cfg.fetch.extra_tls_roots,
        cfg.fetch.system_tls_roots,
        std::time::Duration::from_millis(cfg.fetch.timeout_ms.max(1000) * 4),
    )?;
    let rt = runtime()?;
    match rt.block_on(client.update(now)) {
        Ok(report) => {
            outln!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("trust update refused, the installed set stays in force: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn trust_status(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let Some(store) = cfg.sti_pa.store.as_deref() else {
        bail!("[sti_pa] store is not set");
    };
    match stirscreen::fetch::trustlist::installed(store) {
        Some(m) => {
            let age = Clock.now().0 - m.installed_at;
            let v = serde_json::json!({"installed": m, "age_seconds": age, "store": store});
            outln!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "no set installed in `{}` (run `stirscreen trust update`)",
                store.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn certs_import(
    config: Option<&Path>,
    now: Option<i64>,
    sources: &[String],
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let Some(dir) = cfg.fetch.preload_dir.clone() else {
        bail!("[fetch] preload_dir is not set: where should imported certificates go?");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let now = now.map_or_else(|| Clock.now(), UnixTime);
    let trust = cfg.trust_store()?;
    let fetcher = build_fetcher(&cfg)?;
    let rt = runtime()?;
    let mut refused = 0;
    for src in sources {
        let got: anyhow::Result<(String, Vec<u8>)> = match src.split_once('=') {
            Some((url, file)) if url.starts_with("https://") => std::fs::read(file)
                .with_context(|| format!("cannot read `{file}`"))
                .map(|b| (url.to_owned(), b)),
            _ => rt
                .block_on(fetcher.fetch_chain(src))
                .map(|b| (src.clone(), b))
                .map_err(anyhow::Error::from),
        };
        let checked = got.and_then(|(url, body)| {
            let chain = split_chain(&body)?;
            let cred = trust.credential(&chain)?;
            cred.check_time(now)?;
            let pem: Vec<u8> = chain
                .iter()
                .flat_map(|d| stirscreen::stir::cert::to_pem("CERTIFICATE", d).into_bytes())
                .collect();
            Ok((url, pem, cred.not_after()))
        });
        match checked {
            Ok((url, pem, not_after)) => {
                let (name, body) = stirscreen::fetch::preload_entry(&url, &pem);
                let tmp = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, &body)?;
                std::fs::rename(&tmp, dir.join(&name))?;
                outln!(
                    "imported {url} (until {}) -> {}",
                    stirscreen::time::format_sip_date(not_after),
                    dir.join(&name).display()
                );
            }
            Err(e) => {
                refused += 1;
                eprintln!("refused {src}: {e:#}");
            }
        }
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn certs_show(config: Option<&Path>, now: Option<i64>, source: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let now = now.map_or_else(|| Clock.now(), UnixTime);
    let body = if source.starts_with("https://") || source.starts_with("http://") {
        let fetcher = build_fetcher(&cfg)?;
        let url = source.to_owned();
        let rt = runtime()?;
        // Show the chain even when it is not trusted: fetch the body, then
        // describe it; trust is evaluated below like a file.
        let r = rt.block_on(async { fetcher.get(&url).await });
        if let Err(e) = &r {
            outln!("fetch/trust: {e}");
        }
        match r {
            Ok(cred) => {
                for (i, c) in cred.path.iter().enumerate() {
                    print_summary(i, c);
                }
                outln!("trusted    yes, anchor `{}`", cred.anchor);
                match cred.check_time(now) {
                    Ok(()) => outln!("valid now  yes"),
                    Err(e) => outln!("valid now  no: {e}"),
                }
                outln!("spc        {}", cred.spc);
                for p in &cred.problems {
                    outln!("profile    {p}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(_) => return Ok(ExitCode::from(1)),
        }
    } else {
        std::fs::read(source).with_context(|| format!("cannot read `{source}`"))?
    };
    let chain = split_chain(&body)?;
    for (i, c) in describe_chain(&chain)?.iter().enumerate() {
        print_summary(i, c);
        if let Some(der) = chain.get(i) {
            for p in profile_of(der)? {
                outln!("  profile  {}", p.rule);
            }
        }
    }
    match cfg.trust_store()?.credential(&chain) {
        Ok(cred) => {
            outln!("trusted    yes, anchor `{}`", cred.anchor);
            match cred.check_time(now) {
                Ok(()) => outln!("valid now  yes"),
                Err(e) => outln!("valid now  no: {e}"),
            }
            outln!("spc        {}", cred.spc);
        }
        Err(e) => outln!("trusted    no: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(i: usize, c: &stirscreen::stir::cert::CertSummary) {
    outln!("[{i}] subject  {}", c.subject);
    outln!("    issuer   {}", c.issuer);
    outln!("    serial   {}", c.serial);
    outln!(
        "    valid    {} .. {}",
        stirscreen::time::format_sip_date(UnixTime(c.not_before)),
        stirscreen::time::format_sip_date(UnixTime(c.not_after))
    );
    outln!("    ca       {}", c.is_ca);
    if let Some(spc) = &c.spc {
        outln!("    spc      {spc}");
    }
}

fn print_diagnostics(diags: &[stirscreen::policy::Diagnostic]) {
    for d in diags {
        eprintln!("error: {d}\n");
    }
}

fn policy_cmd(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    use stirscreen::policy::file::load_engine;
    match cmd {
        PolicyCommand::Check { file } => match load_engine(&file) {
            Ok(engine) => {
                let entries: usize = engine.lists.iter().map(|l| l.len()).sum();
                outln!(
                    "ok: `{}`: {} rules, {} lists ({entries} entries)",
                    file.display(),
                    engine.policy.rules.len(),
                    engine.lists.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(diags) => {
                print_diagnostics(&diags);
                eprintln!("`{}`: {} problem(s)", file.display(), diags.len());
                Ok(ExitCode::from(3))
            }
        },
        PolicyCommand::Explain {
            file,
            call,
            facts,
            config,
            now,
            from_address,
        } => {
            let engine = match load_engine(&file) {
                Ok(e) => e,
                Err(diags) => {
                    print_diagnostics(&diags);
                    return Ok(ExitCode::from(3));
                }
            };
            let cfg = Config::load(config.as_deref())?;
            let operator = cfg.operator()?;
            let now = now.map_or_else(|| Clock.now(), UnixTime);
            let (facts, message) = match (facts, call) {
                (Some(f), _) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read `{}`", f.display()))?;
                    let facts: stirscreen::policy::facts::Facts = serde_json::from_str(&text)
                        .with_context(|| format!("`{}` is not a facts object", f.display()))?;
                    (facts, None)
                }
                (None, Some(c)) => {
                    let bytes = read_input(&c)?;
                    (
                        call_facts(&cfg, &bytes, &c, now, from_address)?,
                        Some(bytes),
                    )
                }
                (None, None) => bail!("give --call MESSAGE.sip or --facts FACTS.json"),
            };
            out!(
                "{}",
                explain_text(&engine, &facts, &operator, now, message.as_deref())
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test { file, cases } => {
            let engine = match load_engine(&file) {
                Ok(e) => e,
                Err(diags) => {
                    print_diagnostics(&diags);
                    return Ok(ExitCode::from(3));
                }
            };
            let text = std::fs::read_to_string(&cases)
                .with_context(|| format!("cannot read `{}`", cases.display()))?;
            let cases_file: CaseFile = toml::from_str(&text).map_err(|e| {
                let (line, col, snippet) = e.span().map_or((1, 1, String::new()), |s| {
                    stirscreen::config::locate(&text, s.start)
                });
                anyhow::anyhow!(
                    "{}:{line}:{col}: {}\n{snippet}",
                    cases.display(),
                    e.message().trim()
                )
            })?;
            let (mut pass, mut fail) = (0, 0);
            for c in &cases_file.case {
                let d = engine.decide(&c.facts);
                let (action, code) = match d.action {
                    stirscreen::policy::Action::Forward(_) => ("forward", None),
                    stirscreen::policy::Action::Reject(r) => (
                        "reject",
                        Some(match r.code {
                            stirscreen::policy::RejectCode::Fixed(n) => n,
                            stirscreen::policy::RejectCode::Stir => {
                                if c.facts.stir_code == 0 {
                                    438
                                } else {
                                    c.facts.stir_code
                                }
                            }
                        }),
                    ),
                };
                let mut wrong = Vec::new();
                if c.expect.action != action {
                    wrong.push(format!("action {action} (expected {})", c.expect.action));
                }
                if c.expect.code.is_some() && c.expect.code != code {
                    wrong.push(format!(
                        "code {} (expected {})",
                        code.map_or("none".into(), |n| n.to_string()),
                        c.expect.code.map_or("none".into(), |n| n.to_string())
                    ));
                }
                if let Some(rule) = &c.expect.rule
                    && rule != d.rule_id()
                {
                    wrong.push(format!("rule `{}` (expected `{rule}`)", d.rule_id()));
                }
                if wrong.is_empty() {
                    pass += 1;
                    outln!("ok    {}", c.name);
                } else {
                    fail += 1;
                    outln!("FAIL  {}: got {}", c.name, wrong.join(", "));
                }
            }
            outln!("cases: {pass} passed, {fail} failed");
            Ok(if fail == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    facts: stirscreen::policy::facts::Facts,
    expect: Expect,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Expect {
    action: String,
    code: Option<u16>,
    rule: Option<String>,
}

/// Verifies a call and builds its facts (state from the configured store
/// when its database exists).
fn call_facts(
    cfg: &Config,
    bytes: &[u8],
    name: &Path,
    now: UnixTime,
    from: Option<std::net::IpAddr>,
) -> anyhow::Result<stirscreen::policy::facts::Facts> {
    use stirscreen::policy::facts::{CallInfo, Facts};
    let msg = Message::parse(bytes)
        .with_context(|| format!("`{}` is not a SIP message", name.display()))?;
    if msg.method().is_none() {
        bail!("`{}` is a SIP response, not a request", name.display());
    }
    let fetcher = build_fetcher(cfg)?;
    let verifier = Verifier::new(cfg.verify_config());
    let outcome = runtime()?.block_on(verify_request(&verifier, &fetcher, &msg, now));
    let source = from.map(|ip| cfg.source_of(ip)).unwrap_or_default();
    let mut call = CallInfo::from_request(&msg, source, &verifier.config.numbering);
    if let Some(ip) = from {
        call.spc_expected = cfg.spc_expected_of(ip).to_vec();
    }
    // The configured store when there is one (flags and reports as they
    // are), else an empty one: the call counts itself either way, as in
    // `serve`.
    let shared = cfg.store.backend == stirscreen::config::Backend::Redis;
    let store = if shared || cfg.store.path.exists() {
        stirscreen::state::Store::open(&cfg.store)?
    } else {
        stirscreen::state::Store::in_memory()?
    };
    runtime()?.block_on(store.refresh(now))?;
    let v = outcome.verified.as_ref();
    let q = stirscreen::state::CallQuery {
        caller: v.map_or(call.orig.as_str(), |v| v.orig.as_str()),
        caller_verified: v.is_some(),
        callee: &call.callee,
        spc: v.map_or("", |v| &v.spc),
        replay: None,
        count_rate: true,
        now,
    };
    let state = store.lookup_local(&q).info;
    Ok(Facts::from_outcome(&outcome, call, state))
}

fn explain_text(
    engine: &stirscreen::policy::Engine,
    facts: &stirscreen::policy::facts::Facts,
    operator: &stirscreen::policy::render::Operator,
    now: UnixTime,
    message: Option<&[u8]>,
) -> String {
    use std::fmt::Write as _;
    use stirscreen::policy::render::{Verdict, build_forward, build_response, verdict};
    let mut s = String::new();
    let _ = writeln!(s, "facts");
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(facts) {
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(t) if t.is_empty() => "(empty)".to_owned(),
                serde_json::Value::String(t) => t,
                serde_json::Value::Null => "(none)".to_owned(),
                other => other.to_string(),
            };
            let _ = writeln!(s, "  {k:<22} {v}");
        }
    }
    let ex = engine.explain(facts);
    let _ = writeln!(s, "rules");
    for (i, r) in ex.rules.iter().enumerate() {
        let state = match r.matched {
            Some(true) => "MATCH",
            Some(false) => "no",
            None => "-",
        };
        let _ = writeln!(s, "  {:>3}. {:<28} {state}  (line {})", i + 1, r.id, r.line);
        for reason in &r.reasons {
            let _ = writeln!(s, "         {reason}");
        }
    }
    let rule = ex.matched.and_then(|i| engine.policy.rules.get(i));
    let action = ex.action(&engine.policy);
    let rule_id = rule.map_or("default", |r| r.id.as_str());
    let _ = writeln!(s, "decision");
    match rule {
        Some(r) => {
            let _ = writeln!(
                s,
                "  rule `{}` (line {}): {}",
                r.id,
                r.line,
                action.summary()
            );
            if !r.description.is_empty() {
                let _ = writeln!(s, "  {}", r.description);
            }
        }
        None => {
            let _ = writeln!(s, "  no rule matched: default action, {}", action.summary());
        }
    }
    let msg = message.and_then(|b| Message::parse(b).ok());
    match verdict(action, rule_id, facts, operator, now, "explain") {
        Verdict::Reject(p) => {
            let _ = writeln!(s, "response");
            let text = match &msg {
                Some(m) => String::from_utf8_lossy(&build_response(
                    m,
                    p.code,
                    &p.phrase,
                    &p.headers,
                    "stirscreen",
                ))
                .into_owned(),
                None => {
                    let mut t = format!("SIP/2.0 {} {}\r\n", p.code, p.phrase);
                    for (k, v) in &p.headers {
                        t.push_str(&format!("{k}: {v}\r\n"));
                    }
                    t
                }
            };
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                let _ = writeln!(s, "  {line}");
            }
        }
        Verdict::Forward(p) => {
            let _ = writeln!(s, "forward");
            let places: Vec<&str> = [("P-Asserted-Identity", p.in_pai), ("From", p.in_from)]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect();
            match &p.verstat {
                Some(v) => {
                    let _ = writeln!(s, "  verstat {v} in {}", places.join(" and "));
                }
                None => {
                    let _ = writeln!(s, "  no verstat added (upstream verstat removed)");
                }
            }
            for (k, v) in &p.add {
                let _ = writeln!(s, "  add {k}: {v}");
            }
            if p.strip_identity {
                let _ = writeln!(s, "  Identity headers removed");
            }
            if let Some(r) = &p.upstream_reason {
                let _ = writeln!(
                    s,
                    "  upstream, on each relayed response without a STIR Reason: Reason: {r}"
                );
            }
            if let Some(m) = &msg {
                let _ = writeln!(s, "forwarded headers");
                let out = build_forward(m, &p);
                if let Ok(fwd) = Message::parse(&out) {
                    for h in &fwd.headers {
                        if matches!(
                            h.id,
                            stirscreen::sip::HeaderId::From
                                | stirscreen::sip::HeaderId::PAssertedIdentity
                        ) || p.add.iter().any(|(k, _)| k.eq_ignore_ascii_case(h.name))
                        {
                            let _ =
                                writeln!(s, "  {}: {}", h.name, fwd.text(h).unwrap_or_default());
                        }
                    }
                }
            }
        }
    }
    s
}

fn flags_cmd(config: Option<&Path>, cmd: FlagsCommand) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let canon = |s: &str| {
        stirscreen::stir::tn::Tn::canonical(s)
            .map(|t| t.to_string())
            .with_context(|| format!("`{s}` is not a telephone number"))
    };
    let store = stirscreen::state::Store::open(&cfg.store)?;
    let rt = runtime()?;
    match cmd {
        FlagsCommand::Add { callee, caller } => {
            let (callee, caller) = (canon(&callee)?, canon(&caller)?);
            rt.block_on(store.add_flag(&callee, &caller, "admin", Clock.now()))?;
            outln!("flagged: {callee} does not want calls from {caller}");
        }
        FlagsCommand::Remove { callee, caller } => {
            let (callee, caller) = (canon(&callee)?, canon(&caller)?);
            if rt.block_on(store.remove_flag(&callee, &caller))? {
                outln!("removed: {callee} / {caller}");
            } else {
                outln!("no flag: {callee} / {caller}");
                return Ok(ExitCode::from(1));
            }
        }
        FlagsCommand::List { callee } => {
            let callee = callee.map(|c| canon(&c)).transpose()?;
            let flags = rt.block_on(store.list_flags(callee.as_deref()))?;
            outln!("{:<16} {:<16} {:<29} origin", "callee", "caller", "since");
            for f in &flags {
                outln!(
                    "{:<16} {:<16} {:<29} {}",
                    f.callee,
                    f.caller,
                    stirscreen::time::format_sip_date(UnixTime(f.since)),
                    f.origin
                );
            }
            outln!("{} flag(s)", flags.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
