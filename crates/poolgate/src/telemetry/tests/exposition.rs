//! What a scrape shows: family names and types, backend state read at scrape time, the sinks'
//! own series, opt-in client-key series.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::super::*;
use super::{backend, end, observer, start, value};
use crate::domain::{BackendStatus, Outcome};

/// Touches every family once (a retried, failed-over request; sinks; backend state).
fn populate(observer: &Observer) {
    let alpha = backend(observer, "alpha", "primary");
    let beta = backend(observer, "beta", "fallback");
    let model = observer.model("gpt-4o");
    let headers = HeaderMap::new();
    let mut request = observer.start_request(start(&model, &headers));
    request.start_attempt(&observer.route("gpt-4o", &alpha), "gpt-4o");
    request.end_attempt(AttemptEnd::result(AttemptResult::ServerError, Some(502)));
    request.start_attempt(&observer.route("gpt-4o", &beta), "gpt-4o");
    request.first_byte();
    let mut finished = end(
        200,
        Outcome::Success,
        TokenCounts {
            prompt: Some(1),
            completion: Some(1),
            cached: Some(1),
        },
    );
    finished.cost_usd = Some(0.01);
    request.finish(finished);
    observer.metrics().store_errors().error("usage_insert");
    observer.metrics().redis().error("admit");
    observer.watch_backends(Arc::new(FakeBackends)).unwrap();
}

#[test]
fn every_family_follows_the_naming_conventions() {
    let observer = observer(ObserverOptions {
        client_key_labels: true,
        access_log: false,
        ..ObserverOptions::default()
    });
    populate(&observer);
    let text = observer.render();
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned(), kind.to_owned());
        }
    }
    assert_eq!(families.len(), 32, "{families:?}");
    for (name, kind) in &families {
        assert!(
            name.starts_with("poolgate_") || name.starts_with("process_"),
            "{name}"
        );
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("{name}: unexpected type {other}"),
        }
        assert!(!name.contains("milli") && !name.ends_with("_ms"), "{name}");
    }
    assert_eq!(
        value(
            &text,
            "poolgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(families.contains_key("process_cpu_seconds_total"));
    assert!(families.contains_key("process_resident_memory_bytes"));
    assert!(families.contains_key("process_open_fds"));
}

#[test]
fn client_key_series_only_when_enabled() {
    let off = observer(ObserverOptions::default());
    let model = off.model("gpt-4o");
    off.start_request(start(&model, &HeaderMap::new()))
        .finish(end(429, Outcome::Error, TokenCounts::default()));
    assert!(!off.render().contains("client_key"));

    let on = observer(ObserverOptions {
        client_key_labels: true,
        access_log: false,
        ..ObserverOptions::default()
    });
    let model = on.model("gpt-4o");
    on.start_request(start(&model, &HeaderMap::new()))
        .finish(end(429, Outcome::Error, TokenCounts::default()));
    let text = on.render();
    assert_eq!(
        value(
            &text,
            "poolgate_client_requests_total",
            &[
                ("client_key", "key_abc"),
                ("status_class", "4xx"),
                ("outcome", "error")
            ]
        ),
        Some(1.0)
    );
    // Never a request id in any label.
    assert!(!text.contains("req_1"));
}

#[test]
fn a_models_handle_makes_no_series_before_its_first_request() {
    let observer = observer(ObserverOptions::default());
    let _model = observer.model("gpt-4o");
    let _alpha = backend(&observer, "alpha", "primary");
    let text = observer.render();
    assert!(!text.contains("model=\"gpt-4o\""), "{text}");
    // The attempt counters of a backend exist from the start (rate() sees the first one).
    assert_eq!(
        value(
            &text,
            "poolgate_upstream_attempts_total",
            &[("backend", "alpha"), ("result", "timeout")]
        ),
        Some(0.0)
    );
}

struct FakeBackends;

impl BackendStatsSource for FakeBackends {
    fn for_each_backend(&self, visit: &mut dyn FnMut(BackendStats<'_>)) {
        visit(BackendStats {
            backend: "alpha",
            pool: "primary",
            state: BackendStatus::Cooling,
            cooldown_remaining: Duration::from_millis(42_500),
            rpm_limit: Some(60),
            rpm_tokens_remaining: Some(17.0),
            in_flight: 3,
        });
        visit(BackendStats {
            backend: "beta",
            pool: "fallback",
            state: BackendStatus::Disabled,
            cooldown_remaining: Duration::ZERO,
            rpm_limit: None,
            rpm_tokens_remaining: None,
            in_flight: 0,
        });
    }
}

#[test]
fn backend_state_is_read_at_scrape_time() {
    let observer = observer(ObserverOptions::default());
    observer.watch_backends(Arc::new(FakeBackends)).unwrap();
    let text = observer.render();
    let state = |backend: &str, state: &str| {
        value(
            &text,
            "poolgate_backend_state",
            &[("backend", backend), ("state", state)],
        )
    };
    assert_eq!(state("alpha", "cooling"), Some(1.0));
    assert_eq!(state("alpha", "healthy"), Some(0.0));
    assert_eq!(state("beta", "disabled"), Some(1.0));
    assert_eq!(
        value(
            &text,
            "poolgate_backend_cooldown_remaining_seconds",
            &[("backend", "alpha")]
        ),
        Some(42.5)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_backend_rpm_tokens_remaining",
            &[("backend", "alpha")]
        ),
        Some(17.0)
    );
    // Unlimited backends have no RPM series.
    assert_eq!(
        value(
            &text,
            "poolgate_backend_rpm_tokens_remaining",
            &[("backend", "beta")]
        ),
        None
    );
    assert_eq!(
        value(&text, "poolgate_backend_in_flight", &[("backend", "alpha")]),
        Some(3.0)
    );
}

#[test]
fn sinks_get_their_own_handles() {
    let observer = observer(ObserverOptions::default());
    let usage = observer.metrics().usage();
    usage.queue_depth.set(7);
    usage.records_written.inc_by(512);
    usage.write_errors.inc();
    observer.metrics().store_errors().error("health_save");
    // Without Redis configured, no Redis series.
    assert!(!observer.render().contains("poolgate_redis"));
    observer.metrics().redis().error("admit");
    observer.metrics().redis().degraded.set(1);
    let text = observer.render();
    assert_eq!(value(&text, "poolgate_usage_queue_depth", &[]), Some(7.0));
    assert_eq!(
        value(&text, "poolgate_usage_records_written_total", &[]),
        Some(512.0)
    );
    assert_eq!(
        value(&text, "poolgate_usage_write_errors_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_store_errors_total",
            &[("operation", "health_save")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_redis_errors_total",
            &[("operation", "admit")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "poolgate_redis_degraded", &[]), Some(1.0));
}
