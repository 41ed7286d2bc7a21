//! The `stirscreen` command line.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use stirscreen::cert::{describe_chain, profile_of, split_chain};
use stirscreen::config::Config;
use stirscreen::fetch::{CertFetcher, verify_request};
use stirscreen::lab::{InviteSpec, sign_identity};
use stirscreen::limits::MAX_SIP_MESSAGE;
use stirscreen::passport::{Attest, SigningKey};
use stirscreen::sip::Message;
use stirscreen::time::{Clock, UnixTime};
use stirscreen::verify::{FailureKind, Outcome, Verifier};

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
    },
    /// Lab STI PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
        } => {
            let key = load_key(&key)?;
            let attest = match attest.as_str() {
                "A" => Attest::A,
                "B" => Attest::B,
                "C" => Attest::C,
                other => bail!("attestation `{other}` is not A, B or C"),
            };
            let canon = |s: &str| {
                stirscreen::tn::Tn::canonical(s)
                    .map(|t| t.to_string())
                    .with_context(|| format!("`{s}` is not a telephone number"))
            };
            let orig = canon(&orig)?;
            let dest = dest
                .iter()
                .map(|d| canon(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let iat = iat.map_or_else(|| Clock.now(), UnixTime);
            let ident = sign_identity(&key, &x5u, attest, &orig, &dest, iat, origid.as_deref())?;
            if invite {
                let first = dest.first().cloned().unwrap_or_default();
                let mut spec = InviteSpec::new(&orig, &first);
                spec.date = Some(iat);
                spec.identities.push(ident);
                print!("{}", spec.build());
            } else {
                println!("Identity: {ident}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs { command } => match command {
            CertsCommand::Gen { dir } => {
                let files = stirscreen::pki::generate(&dir)?;
                for f in files {
                    println!("{}", f.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            CertsCommand::Show {
                config,
                now,
                source,
            } => certs_show(config.as_deref(), now, &source),
        },
    }
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let der = x509_pem_contents(&text, "PRIVATE KEY")
        .with_context(|| format!("`{}` holds no PKCS#8 `PRIVATE KEY`", path.display()))?;
    SigningKey::from_pkcs8(&der).with_context(|| format!("`{}`", path.display()))
}

fn x509_pem_contents(text: &[u8], label: &str) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(text)
        .filter_map(Result::ok)
        .find(|p| p.label == label)
        .map(|p| p.contents)
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
        println!("{}", serde_json::to_string_pretty(&outcome_json(&outcome))?);
    } else {
        print!("{}", report(&outcome));
    }
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
            println!("fetch/trust: {e}");
        }
        match r {
            Ok(cred) => {
                for (i, c) in cred.path.iter().enumerate() {
                    print_summary(i, c);
                }
                println!("trusted    yes, anchor `{}`", cred.anchor);
                match cred.check_time(now) {
                    Ok(()) => println!("valid now  yes"),
                    Err(e) => println!("valid now  no: {e}"),
                }
                println!("spc        {}", cred.spc);
                for p in &cred.problems {
                    println!("profile    {p}");
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
                println!("  profile  {}", p.rule);
            }
        }
    }
    match cfg.trust_store()?.credential(&chain) {
        Ok(cred) => {
            println!("trusted    yes, anchor `{}`", cred.anchor);
            match cred.check_time(now) {
                Ok(()) => println!("valid now  yes"),
                Err(e) => println!("valid now  no: {e}"),
            }
            println!("spc        {}", cred.spc);
        }
        Err(e) => println!("trusted    no: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(i: usize, c: &stirscreen::cert::CertSummary) {
    println!("[{i}] subject  {}", c.subject);
    println!("    issuer   {}", c.issuer);
    println!("    serial   {}", c.serial);
    println!(
        "    valid    {} .. {}",
        stirscreen::time::format_sip_date(UnixTime(c.not_before)),
        stirscreen::time::format_sip_date(UnixTime(c.not_after))
    );
    println!("    ca       {}", c.is_ca);
    if let Some(spc) = &c.spc {
        println!("    spc      {spc}");
    }
}
