//! `stirscreen serve`: wires the front-ends (the inline proxy, the SIP
//! redirect server, the HTTP API) to one screening service, starts the
//! admin listener and the decision log, and handles SIGHUP (trust reload)
//! and SIGTERM/SIGINT (drain). The one module that knows every front-end.

use std::sync::Arc;
use std::time::Duration;

use crate::api::Api;
use crate::config::Config;
use crate::ops::admin::Admin;
use crate::ops::decisionlog::{DecisionLog, Sink};
use crate::proxy::{Proxy, ServeError};

/// Runs `serve` until SIGINT/SIGTERM, then drains (stops accepting, waits
/// for open transactions up to `drain`).
pub async fn serve(config: Config, drain: Duration) -> Result<(), ServeError> {
    let admin_listen = config.admin.listen.clone();
    let log = config.log.clone();
    let redirect_config = (!config.redirect.listen.is_empty()).then(|| config.clone());
    let api_config = (!config.api.listen.is_empty()).then(|| config.clone());
    let proxy = Proxy::start(config).await?;
    let redirect = match redirect_config {
        Some(c) => Some(Proxy::start_redirect(c, &proxy).await?),
        None => None,
    };
    let api = match api_config {
        Some(_) => Some(
            Api::start(proxy.screener())
                .await
                .map_err(ServeError::Config)?,
        ),
        None => None,
    };
    if !log.decisions.is_empty() {
        let sink = if log.decisions == "-" {
            Sink::Stdout
        } else {
            Sink::File {
                path: log.decisions.clone().into(),
                max_bytes: log.decisions_max_bytes,
                keep: log.decisions_keep,
            }
        };
        let d = DecisionLog::start(sink).map_err(|source| ServeError::Bind {
            addr: format!("[log] decisions = `{}`", log.decisions),
            source,
        })?;
        proxy.set_decision_log(Arc::new(d));
    }
    let _admin = if admin_listen.is_empty() {
        None
    } else {
        Some(
            Admin::start(&admin_listen, Arc::clone(&proxy))
                .await
                .map_err(|source| ServeError::Bind {
                    addr: format!("[admin] listen = `{admin_listen}`"),
                    source,
                })?,
        )
    };
    tracing::info!(
        udp = %proxy.udp_addr().map_or("-".into(), |a| a.to_string()),
        tcp = %proxy.tcp_addr().map_or("-".into(), |a| a.to_string()),
        tls = %proxy.tls_addr().map_or("-".into(), |a| a.to_string()),
        redirect = %redirect.as_ref().map_or("-".into(), |r| {
            [r.udp_addr(), r.tcp_addr(), r.tls_addr()]
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }),
        next_hop = %proxy.next_hop_label(),
        admin = %_admin.as_ref().map_or("-".into(), |a| format!("http://{}/metrics", a.addr)),
        api = %api.as_ref().map_or("-".into(), |a| format!("{}://{}/stir/v1/verification", if a.tls { "https" } else { "http" }, a.addr)),
        decisions = %if log.decisions.is_empty() { "-" } else { log.decisions.as_str() },
        "stirscreen serving"
    );
    spawn_trust_refresh(&proxy);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ServeError::Config(e.to_string()))?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => proxy.reload_trust(),
        }
    }
    tracing::info!("draining: no new calls; open transactions may finish");
    proxy.begin_shutdown();
    if let Some(r) = &redirect {
        r.begin_shutdown();
    }
    let deadline = tokio::time::Instant::now() + drain;
    while (proxy.busy() || redirect.as_deref().is_some_and(Proxy::busy))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last decision records reach the file before the process exits.
    let p = Arc::clone(&proxy);
    let _ = tokio::task::spawn_blocking(move || p.close_decision_log()).await;
    tracing::info!("stopped");
    Ok(())
}

/// With `[sti_pa] api_url`, `store` and `refresh_hours` set: checks every
/// `check_secs` (and at start) whether the installed set is due (none,
/// older than `refresh_hours`, CRL past its nextUpdate, list past its
/// `exp`), then runs the same update as `stirscreen trust update` and, when
/// a set was installed, reloads the trust store (as SIGHUP does). A refused
/// update keeps the set in force; it is logged and counted.
pub fn spawn_trust_refresh(proxy: &Arc<Proxy>) {
    let cfg = proxy.config();
    let sti_pa = cfg.sti_pa.clone();
    let (false, Some(store), true) = (
        sti_pa.api_url.is_empty(),
        sti_pa.store.clone(),
        sti_pa.refresh_hours > 0,
    ) else {
        return;
    };
    let client = match crate::fetch::trustlist::StiPa::new(
        &sti_pa,
        &cfg.fetch.extra_tls_roots,
        cfg.fetch.system_tls_roots,
        Duration::from_millis(cfg.fetch.timeout_ms.max(1000) * 4),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("STI-PA refresh off: {e}");
            return;
        }
    };
    let weak = Arc::downgrade(proxy);
    let every = Duration::from_secs(sti_pa.check_secs.max(1));
    tokio::spawn(async move {
        loop {
            let Some(p) = weak.upgrade() else { return };
            let now = crate::time::Clock.now();
            let meta = crate::fetch::trustlist::installed(&store);
            if let Some(why) =
                crate::fetch::trustlist::refresh_due(meta.as_ref(), now, sti_pa.refresh_hours)
            {
                match client.update(now).await {
                    Ok(r) => {
                        tracing::info!(
                            sequence = r.installed.sequence,
                            anchors = r.installed.anchors,
                            reason = why.as_str(),
                            "STI-PA trust set installed"
                        );
                        p.stats
                            .trust_updates_installed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        p.reload_trust();
                    }
                    Err(e) => {
                        tracing::warn!(
                            reason = why.as_str(),
                            "STI-PA trust update refused, the set in force stays: {e}"
                        );
                        p.stats
                            .trust_updates_refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            drop(p);
            tokio::time::sleep(every).await;
        }
    });
}
