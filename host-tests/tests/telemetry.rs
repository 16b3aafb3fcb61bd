//! Metrics and the decision log through the real .wasm: counts reach the host's counters on
//! the tick (no host call per request for them), callouts are counted with their outcome and
//! latency, and a refusal's log line names the reason, provider, host and path (no query).
mod common;

use common::*;
use host_tests::{MetricKind, Request};
use serde_json::json;

fn counter(host: &host_tests::Host, name: &str) -> u64 {
    host.metrics()
        .iter()
        .filter(|m| m.name == name && m.kind == MetricKind::Counter)
        .map(|m| m.value)
        .sum()
}

#[test]
fn decisions_and_callouts_are_counted_on_the_tick() {
    let mut host = ready_host(json!({}));
    login(&mut host);
    // Not yet: counts wait for the tick.
    assert_eq!(
        counter(
            &host,
            "oidc_filter_decisions_total.reason.login_complete.provider.default"
        ),
        0
    );
    host.tick();
    assert_eq!(
        counter(
            &host,
            "oidc_filter_decisions_total.reason.login_redirect.provider.default"
        ),
        1
    );
    assert_eq!(
        counter(
            &host,
            "oidc_filter_decisions_total.reason.login_complete.provider.default"
        ),
        1,
        "{:#?}",
        host.metrics()
    );
    for endpoint in ["discovery", "jwks", "token"] {
        assert_eq!(
            counter(
                &host,
                &format!("oidc_filter_callouts_total.endpoint.{endpoint}.outcome.ok")
            ),
            1,
            "{endpoint}: {:#?}",
            host.metrics()
        );
    }
    assert!(host
        .metrics()
        .iter()
        .any(|m| m.kind == MetricKind::Histogram
            && m.name == "oidc_filter_callout_duration_milliseconds.endpoint.token"));
    // Many requests, one increment per name on the next tick.
    for _ in 0..5 {
        host.request(Request::get("/x?secret=1").header("accept", "application/json"));
    }
    host.tick();
    assert_eq!(
        counter(
            &host,
            "oidc_filter_decisions_total.reason.unauthenticated.provider.default"
        ),
        5
    );
}

#[test]
fn a_refusal_is_logged_with_its_reason_provider_host_and_path() {
    let mut host = ready_host(json!({"routes": [{"path": "/admin", "action": "deny"}]}));
    host.clear_logs();
    host.request(browser("/admin/panel?token=abc"));
    let log = host.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("route_denied"))
        .unwrap_or_else(|| panic!("no line for the refusal: {log}"));
    assert!(line.contains("403 route_denied"), "{line}");
    assert!(
        line.contains("provider=default host=app.example.com path=/admin/panel"),
        "{line}"
    );
    assert!(!line.contains("token=abc"), "no query in the log: {line}");
}
