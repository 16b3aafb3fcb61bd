//! Plugin start, configuration refusal, the provider's metadata and keys (fetch, retry,
//! refresh), and the time before they are loaded.
mod common;

use std::time::Duration;

use common::*;
use host_tests::{Host, Outcome, Request, StartError};
use serde_json::json;

#[test]
fn start_fetches_discovery_then_jwks_then_is_ready() {
    let mut host = builder().start(&config(json!({}))).expect("plugin starts");
    assert!(!host.tick_period().is_zero(), "a tick drives refreshes");
    let d = only_callout(&host, "/.well-known/openid-configuration");
    assert_eq!(d.header("accept"), Some("application/json"));
    assert_eq!(d.timeout, Duration::from_secs(5), "idp_timeout default");
    let out = host.respond(d.token, 200, &[], discovery());
    let Outcome::Background { callouts } = out else {
        panic!("{out:?}")
    };
    assert_eq!(callouts.len(), 1);
    let j = only_callout(&host, "/jwks");
    host.respond(j.token, 200, &[], jwks(&[key(0)]));
    assert!(host.pending_callouts().is_empty());
    assert!(
        host.log_text().contains("discovery document loaded"),
        "{}",
        host.log_text()
    );
    assert!(
        host.log_text().contains("JWKS loaded (1 keys)"),
        "{}",
        host.log_text()
    );
    // Ready: a browser is sent to the provider.
    let login = begin_login(&mut host, browser("/"));
    assert_eq!(login.redirect_uri, format!("https://{APP}/oauth2/callback"));
}

fn refused(cfg: &str) -> String {
    match builder().start(cfg) {
        Err(
            e @ StartError::Refused {
                callback: "proxy_on_configure",
                ..
            },
        ) => e.log_text(),
        Err(e) => panic!("expected on_configure to refuse, got {e}"),
        Ok(h) => {
            h.print_transcript();
            panic!("expected the configuration {cfg} to be refused")
        }
    }
}

#[test]
fn bad_config_is_refused_naming_each_field() {
    let logs = refused(&config(json!({
        "cookie_secret": "short",
        "oidc_issuer_url": "ftp://idp",
        "cookie_samesite": "sometimes",
        "cookie_expire": "forever",
        "no_such_option": 1,
    })));
    for field in [
        "cookie_secret",
        "oidc_issuer_url",
        "cookie_samesite",
        "cookie_expire",
        "no_such_option",
    ] {
        assert!(
            logs.lines()
                .any(|l| l.starts_with(&format!("oidc-filter: config: {field}: "))),
            "a log line names {field}:\n{logs}"
        );
    }
    // Nothing leaks the secrets into the log.
    assert!(!logs.contains(CLIENT_SECRET), "{logs}");
}

#[test]
fn missing_required_fields_are_refused() {
    let logs = refused(&config(
        json!({"client_id": null, "idp_cluster": null, "cookie_secret": null}),
    ));
    for field in ["client_id", "idp_cluster", "cookie_secret"] {
        assert!(
            logs.contains(&format!("oidc-filter: config: {field}: ")),
            "{field}:\n{logs}"
        );
    }
    let logs = refused("not json at all");
    assert!(logs.contains("oidc-filter: config: "), "{logs}");
    let logs = refused("");
    assert!(logs.contains("oidc-filter: config: "), "{logs}");
}

#[test]
fn secrets_from_vm_environment() {
    let cfg = config(json!({
        "client_secret": null, "client_secret_env": "OIDC_CLIENT_SECRET",
        "cookie_secret": null, "cookie_secret_env": "OIDC_COOKIE_SECRET",
    }));
    // Env var missing: refused, naming the field.
    let logs = refused(&cfg);
    assert!(logs.contains("client_secret"), "{logs}");
    // Present: starts, and the token request uses it.
    let b = builder()
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("OIDC_COOKIE_SECRET", &format!("{SECRET_B},{SECRET_A}"));
    let mut host = ready_host_with(b, &cfg, &[key(0)]);
    let (name, value) = login(&mut host);
    assert_eq!(name, COOKIE);
    // A cookie signed with SECRET_A (second in the env list) verifies.
    let mut other = ready_host(json!({}));
    let (_, old) = login(&mut other);
    assert!(host
        .request(browser("/x").cookie(COOKIE, &old))
        .is_continued());
    assert!(host
        .request(browser("/x").cookie(COOKIE, &value))
        .is_continued());
}

#[test]
fn before_keys_are_loaded_nothing_unauthenticated_passes() {
    let mut host = builder().start(&config(json!({}))).expect("starts");
    // Browser: 503 with Retry-After, never a pass.
    let r = assert_reply(host.request(browser("/app")), 503, "idp_not_ready");
    assert!(r.header("retry-after").is_some(), "{r:#?}");
    // API client: 401 (no login is possible anyway).
    let o = host.request(Request::get("/api").header("accept", "application/json"));
    assert!(matches!(o.status(), Some(401 | 503)), "{o:#?}");
    // Login start and callback: 503.
    assert_reply(
        host.request(browser("/oauth2/start?rd=/x")),
        503,
        "idp_not_ready",
    );
    // Discovery answered but JWKS not yet: still not ready.
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(d.token, 200, &[], discovery());
    assert_reply(host.request(browser("/app")), 503, "idp_not_ready");
    // A forged identity header does not help either.
    let o = host.request(browser("/app").header("x-forwarded-user", "admin"));
    assert!(!o.is_continued(), "{o:#?}");
}

#[test]
fn valid_session_passes_before_keys_are_loaded() {
    let mut ready = ready_host(json!({}));
    let (_, cookie) = login(&mut ready);
    let mut host = builder().start(&config(json!({}))).expect("starts");
    let h = host
        .request(browser("/app").cookie(COOKIE, &cookie))
        .expect_continued();
    assert_eq!(h.get("x-forwarded-user"), Some("user-123"));
}

#[test]
fn callback_before_keys_are_loaded_is_503() {
    let mut ready = ready_host(json!({}));
    let login = begin_login(&mut ready, browser("/app"));
    let mut host = builder().start(&config(json!({}))).expect("starts");
    assert_reply(
        host.request(callback_request(&login, "c")),
        503,
        "idp_not_ready",
    );
    assert!(
        host.pending_callouts().iter().all(|c| c.method() == "GET"),
        "no token request"
    );
}

#[test]
fn discovery_failure_is_retried_with_backoff() {
    let mut host = builder().start(&config(json!({}))).expect("starts");
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(d.token, 500, &[], "oops");
    assert!(host.log_text().contains("retry in"), "{}", host.log_text());
    assert!(host.pending_callouts().is_empty(), "no hammering");
    host.advance(Duration::from_secs(3));
    // Timed out this time (no answer at all): Envoy reports a failure.
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.timeout(d.token);
    host.advance(Duration::from_secs(5));
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(d.token, 200, &[], "{ garbage");
    host.advance(Duration::from_secs(10));
    let d = only_callout(&host, "/.well-known/openid-configuration");
    // A document for another issuer is refused (OIDC Discovery §4.3).
    host.respond(
        d.token,
        200,
        &[],
        discovery().replace(ISSUER, "https://evil.example"),
    );
    host.advance(Duration::from_secs(20));
    let d = only_callout(&host, "/.well-known/openid-configuration");
    host.respond(d.token, 200, &[], discovery());
    let j = only_callout(&host, "/jwks");
    host.respond(j.token, 200, &[], jwks(&[key(0)]));
    begin_login(&mut host, browser("/"));
}

#[test]
fn callouts_time_out_when_the_clock_passes_their_deadline() {
    let mut host = builder()
        .start(&config(json!({"idp_timeout": "2s"})))
        .expect("starts");
    let d = only_callout(&host, "/.well-known/openid-configuration");
    assert_eq!(d.timeout, Duration::from_secs(2));
    host.advance(Duration::from_secs(3));
    assert!(
        host.transcript()
            .iter()
            .any(|l| l.contains(&format!("callout {} ", d.token)) && l.contains("failed")),
        "Envoy answered the timed-out callout"
    );
    assert!(
        host.log_text().to_lowercase().contains("timed out"),
        "{}",
        host.log_text()
    );
    // It retries later and gets there.
    advance_until_callout(&mut host, Duration::from_secs(10));
    serve_discovery_and_jwks(&mut host, &[key(0)]);
    begin_login(&mut host, browser("/"));
}

/// Moves the clock a second at a time until something is pending.
fn advance_until_callout(host: &mut Host, max: Duration) {
    let mut waited = Duration::ZERO;
    while host.pending_callouts().is_empty() {
        assert!(waited < max, "no callout within {max:?}");
        host.advance(Duration::from_secs(1));
        waited += Duration::from_secs(1);
    }
}

#[test]
fn jwks_is_refreshed_on_the_timer() {
    let mut host = ready_host(json!({"jwks_refresh_interval": "10m"}));
    host.advance(Duration::from_secs(9 * 60));
    assert!(
        host.pending_callouts().is_empty(),
        "{:#?}",
        host.pending_callouts()
    );
    host.advance(Duration::from_secs(61));
    let pending = host.pending_callouts();
    assert!(!pending.is_empty(), "a refresh after 10 minutes");
    // Serve the rotated keys: tokens from the new key verify afterwards.
    for c in pending {
        let body = if c.path() == "/jwks" {
            jwks(&[key(1)])
        } else {
            discovery()
        };
        host.respond(c.token, 200, &[], body);
    }
    for c in host.pending_callouts() {
        assert_eq!(c.path(), "/jwks");
        host.respond(c.token, 200, &[], jwks(&[key(1)]));
    }
    let (_, out) = login_with_response(&mut host, "/app", 200, |l, now| {
        token_response(&id_token(key(1), &claims(now, &l.nonce)))
    });
    assert_eq!(out.status(), Some(302), "{out:#?}");
    assert!(host.log_text().matches("JWKS loaded").count() >= 2);
}

#[test]
fn failed_refresh_keeps_the_old_keys() {
    let mut host = ready_host(json!({"jwks_refresh_interval": "1m"}));
    host.advance(Duration::from_secs(61));
    for c in host.pending_callouts() {
        host.respond(c.token, 503, &[], "down");
    }
    let (_, out) = login_with_response(&mut host, "/app", 200, |l, now| good_token(now, &l.nonce));
    assert_eq!(out.status(), Some(302), "{out:#?}");
}

#[test]
fn module_imports_are_all_linked() {
    // Host::start fails listing unknown imports; a started host proves every import linked.
    let host = Host::builder()
        .start(&config(json!({})))
        .expect("all imports linked");
    assert!(
        host.transcript()[0].contains("proxy_abi_version_0_2_1"),
        "{:?}",
        host.transcript()[0]
    );
}

/// The names filter/wasm-exports lists.
fn listed_exports() -> Vec<&'static str> {
    include_str!("../../filter/wasm-exports")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_callback_the_glue_implements_is_exported() {
    // `fn on_http_request_headers` is `proxy_on_request_headers`, `fn on_tick` `proxy_on_tick`,
    // `fn on_http_call_response` `proxy_on_http_call_response`.
    let glue = include_str!("../../filter/src/wasm.rs");
    let implemented: Vec<String> = glue
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("fn on_"))
        .filter_map(|rest| rest.split('(').next())
        .map(|name| match name.strip_prefix("http_") {
            Some(r) if r.starts_with("request_") || r.starts_with("response_") => {
                format!("proxy_on_{r}")
            }
            _ => format!("proxy_on_{name}"),
        })
        .collect();
    assert!(
        implemented.len() >= 8,
        "the callbacks in wasm.rs were not found: {implemented:?}"
    );
    let listed = listed_exports();
    for name in &implemented {
        assert!(
            listed.contains(&name.as_str()),
            "wasm.rs implements {name} but filter/wasm-exports does not keep it"
        );
    }
}

#[test]
fn the_module_exports_exactly_the_listed_callbacks() {
    let path = host_tests::default_wasm_path();
    let module = wasmtime::Module::from_file(&wasmtime::Engine::default(), &path)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    let mut exported: Vec<&str> = module.exports().map(|e| e.name()).collect();
    let mut listed = listed_exports();
    exported.sort_unstable();
    listed.sort_unstable();
    assert_eq!(
        exported, listed,
        "the module's exports differ from filter/wasm-exports (was it built by filter/build-wasm.sh?)"
    );
    // What an authenticated request no longer enters the VM for.
    for dropped in [
        "proxy_on_log",
        "proxy_on_response_body",
        "proxy_on_grpc_receive",
    ] {
        assert!(!exported.contains(&dropped), "{dropped} is exported");
    }
}
