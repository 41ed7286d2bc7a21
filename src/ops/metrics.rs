//! The Prometheus text exposition of `/metrics`: the screening service's
//! statistics (every front-end), the certificate cache, the state store, the
//! policy reloads and the decision log, read from a running [`Proxy`]
//! (which only counts; rendering lives here, with operations).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Exposition;
use crate::proxy::Proxy;

/// `/metrics` for `p` and everything it shares.
pub fn render(p: &Proxy) -> String {
    let s = &p.stats;
    let f = &p.fetcher().stats;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut e = Exposition::default();
    e.info(
        "stirscreen_build_info",
        "Build information.",
        &[("version", env!("CARGO_PKG_VERSION"))],
    );
    e.gauge(
        "stirscreen_ready",
        "1 when trust anchors and a policy are loaded and the proxy is not draining.",
        if p.readiness().is_ok() { 1.0 } else { 0.0 },
    );
    e.counter(
        "stirscreen_sip_messages_received_total",
        "SIP messages received (all methods and responses).",
        n(&s.received),
    );
    e.counter(
        "stirscreen_sip_bad_requests_total",
        "Requests answered 4xx/5xx by validation (RFC 3261 section 16.3) or unparseable.",
        n(&s.bad_requests),
    );
    e.counter(
        "stirscreen_sip_dropped_total",
        "Messages dropped: unparseable with no way to answer, or responses not for us.",
        n(&s.dropped),
    );
    e.gauge(
        "stirscreen_tcp_connections",
        "TCP connections open.",
        n(&s.tcp_open) as f64,
    );
    e.gauge(
        "stirscreen_tcp_connection_limit",
        "TCP connections served at once: tcp_max_connections, lowered to fit the open-file limit.",
        p.connection_cap() as f64,
    );
    e.rows(
        "stirscreen_tcp_connections_closed_total",
        "TCP connections closed by stirscreen, by reason (limit: tcp_max_connections reached at accept; timeout: idle or a message too slow).",
        &["reason"],
        &[(&["limit"], n(&s.tcp_refused)), (&["timeout"], n(&s.tcp_timeouts))],
    );
    e.counter(
        "stirscreen_tcp_accept_errors_total",
        "TCP accept failures (e.g. out of file descriptors), each followed by a back-off.",
        n(&s.tcp_accept_errors),
    );
    e.counter(
        "stirscreen_tls_handshake_failures_total",
        "TLS handshakes that failed or took longer than [tls] handshake_timeout_ms (accepted and opened connections).",
        n(&s.tls_handshake_failures),
    );
    e.counter(
        "stirscreen_invites_total",
        "Initial INVITEs received (new transactions).",
        n(&s.invites),
    );
    e.family(
        "stirscreen_calls_screened_total",
        "Calls verified and decided, by verstat and attestation.",
        &s.calls,
    );
    e.family(
        "stirscreen_verification_failures_total",
        "Verification failures by kind and RFC 8224 code.",
        &s.failures,
    );
    e.family(
        "stirscreen_policy_decisions_total",
        "Policy decisions by matched rule and action.",
        &s.decisions,
    );
    e.family(
        "stirscreen_front_end_calls_total",
        "Screened calls by front-end (proxy, redirect), action and the code answered (000: forwarded inline).",
        &s.front_ends,
    );
    e.family(
        "stirscreen_invite_responses_total",
        "Final responses to INVITEs sent upstream, by code and origin (local or downstream).",
        &s.responses,
    );
    e.counter(
        "stirscreen_overload_rejections_total",
        "INVITEs answered 503 unscreened: queued longer than queue_budget_ms, max_in_flight reached, or draining.",
        n(&s.overload),
    );
    e.counter(
        "stirscreen_overload_shed_total",
        "Of those, INVITEs that waited longer than queue_budget_ms for verification.",
        n(&s.shed),
    );
    let kernel = p.udp_kernel_stats();
    e.counter(
        "stirscreen_udp_kernel_drops_total",
        "Datagrams the kernel dropped for stirscreen's UDP sockets (receive buffer full; /proc/net/udp).",
        kernel.drops,
    );
    e.gauge(
        "stirscreen_udp_receive_queue_bytes",
        "Bytes waiting in stirscreen's UDP receive queues now.",
        kernel.rx_queue as f64,
    );
    e.counter(
        "stirscreen_cancelled_during_verification_total",
        "INVITEs cancelled while being verified (answered 487).",
        n(&s.cancelled),
    );
    e.gauge(
        "stirscreen_inflight_transactions",
        "INVITE transactions open (including those waiting out their completion timers).",
        p.open_transactions() as f64,
    );
    e.gauge(
        "stirscreen_calls_in_setup",
        "INVITEs being screened or set up: no final response yet.",
        p.calls_in_setup() as f64,
    );
    e.gauge(
        "stirscreen_inflight_verifications",
        "INVITEs being verified and decided now.",
        p.in_flight() as f64,
    );
    e.histogram(
        "stirscreen_verification_duration_seconds",
        "Time to verify an INVITE's Identity headers (including any certificate fetch).",
        &s.verify_seconds,
    );
    e.histogram(
        "stirscreen_decision_duration_seconds",
        "Time from verification result to decision (facts, policy, response built).",
        &s.decide_seconds,
    );
    e.rows(
        "stirscreen_cert_cache_lookups_total",
        "Certificate cache lookups by result.",
        &["result"],
        &[
            (&["hit"], n(&f.hits)),
            (&["miss"], n(&f.misses)),
            (&["negative_hit"], n(&f.negative_hits)),
        ],
    );
    e.rows(
        "stirscreen_cert_fetches_total",
        "HTTPS certificate fetches by result (limited: not made, max_concurrent_fetches or fetch_rate_per_second reached).",
        &["result"],
        &[
            (
                &["ok"],
                f.fetch_seconds.count().saturating_sub(n(&f.fetch_errors)),
            ),
            (&["error"], n(&f.fetch_errors)),
            (&["limited"], n(&f.limited)),
        ],
    );
    e.rows(
        "stirscreen_crl_fetches_total",
        "CRLs fetched from cRLDistributionPoints ([fetch] crl_distribution_points), by result.",
        &["result"],
        &[
            (&["ok"], n(&f.crl_fetches)),
            (&["error"], n(&f.crl_fetch_errors)),
        ],
    );
    let (entries, bytes) = p.fetcher().cache_usage();
    e.gauge(
        "stirscreen_cert_cache_entries",
        "x5u URLs in the certificate cache (bound: cache_capacity).",
        entries as f64,
    );
    e.gauge(
        "stirscreen_cert_cache_bytes",
        "Bytes the certificate cache accounts for (bound: cache_max_bytes).",
        bytes as f64,
    );
    e.counter(
        "stirscreen_cert_cache_evictions_total",
        "Certificate cache entries evicted to stay within its bounds.",
        n(&f.evictions),
    );
    e.histogram(
        "stirscreen_cert_fetch_duration_seconds",
        "Time to fetch and validate a certificate chain from its x5u URL.",
        &f.fetch_seconds,
    );
    e.rows(
        "stirscreen_policy_reloads_total",
        "Policy reloads by result (failed: the previous policy stayed in force).",
        &["result"],
        &[
            (&["ok"], n(&p.engine.reloads_ok)),
            (&["failed"], n(&p.engine.reloads_failed)),
        ],
    );
    let st = &p.store.stats;
    e.gauge(
        "stirscreen_state_store_up",
        "1 when the screening state store answers (always 1 for the embedded backend).",
        if p.store.health().is_ok() { 1.0 } else { 0.0 },
    );
    e.counter(
        "stirscreen_state_unavailable_lookups_total",
        "Calls decided without the shared state store (state = unavailable).",
        n(&st.unavailable_lookups),
    );
    e.counter(
        "stirscreen_state_store_errors_total",
        "Failed or late requests to the shared state store.",
        n(&st.remote_errors),
    );
    e.histogram(
        "stirscreen_state_round_trip_seconds",
        "The one round trip to the shared state store an INVITE makes (answered ones).",
        &st.round_trip,
    );
    e.gauge(
        "stirscreen_state_outbox_pending",
        "607 feedback waiting on this node for the shared state store.",
        n(&st.outbox) as f64,
    );
    e.counter(
        "stirscreen_state_reloads_total",
        "Reloads of this node's copy of flags and reports.",
        n(&st.reloads),
    );
    e.gauge(
        "stirscreen_crls_stale",
        "Configured CRLs past their nextUpdate.",
        p.fetcher().stale_crls(crate::time::Clock.now()).len() as f64,
    );
    let sti_pa = &p.config().sti_pa;
    if let Some(m) = sti_pa
        .store
        .as_deref()
        .and_then(crate::fetch::trustlist::installed)
    {
        let now = crate::time::Clock.now().0;
        e.gauge(
            "stirscreen_trust_list_sequence",
            "Sequence of the STI-PA CA list in force ([sti_pa] store).",
            m.sequence as f64,
        );
        e.gauge(
            "stirscreen_trust_list_age_seconds",
            "Seconds since the STI-PA trust set in force was installed.",
            (now - m.installed_at) as f64,
        );
        e.gauge(
            "stirscreen_trust_list_expires_in_seconds",
            "Seconds until the STI-PA CA list in force passes its exp (negative: past).",
            (m.exp - now) as f64,
        );
        if let Some(n) = m.crl_next_update {
            e.gauge(
                "stirscreen_trust_crl_next_update_in_seconds",
                "Seconds until the installed STI-PA CRL passes its nextUpdate (negative: past).",
                (n - now) as f64,
            );
        }
    }
    e.rows(
        "stirscreen_trust_updates_total",
        "STI-PA trust updates by serve's refresh ([sti_pa] refresh_hours), by result.",
        &["result"],
        &[
            (&["installed"], n(&s.trust_updates_installed)),
            (&["refused"], n(&s.trust_updates_refused)),
        ],
    );
    let (replay_entries, replay_evicted) = p.store.replay_stats();
    e.gauge(
        "stirscreen_replay_cache_entries",
        "PASSporTs remembered for replay detection on this node.",
        replay_entries as f64,
    );
    e.counter(
        "stirscreen_replay_cache_evictions_total",
        "PASSporTs forgotten before their window ended because the replay cache was full.",
        replay_evicted,
    );
    let (written, dropped) = p.decision_counts();
    e.counter(
        "stirscreen_decision_log_records_total",
        "Decision records written.",
        written,
    );
    e.counter(
        "stirscreen_decision_log_dropped_total",
        "Decision records dropped because the writer fell behind.",
        dropped,
    );
    e.finish()
}
