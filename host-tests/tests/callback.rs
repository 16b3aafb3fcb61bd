//! The callback and the token response: every way they go wrong ends in a reply with a
//! reason code, never a session and never a trap.
mod common;

use std::time::Duration;

use common::*;
use host_tests::{Callout, Host, Outcome, Request};
use serde_json::{json, Value};

/// Runs a login whose token endpoint answers `status` / `body` and expects `code`.
#[track_caller]
fn token_fails(
    host: &mut Host,
    status: u32,
    body: impl Fn(&Login, u64) -> String,
    code: &str,
) -> String {
    let (_, out) = login_with_response(host, "/app", status, body);
    let expected = match code {
        "token_request_failed" | "token_response_invalid" | "id_token_invalid" => 502,
        _ => 403,
    };
    let r = assert_reply(out, expected, code);
    assert!(
        set_cookies(&r.headers)
            .iter()
            .all(|c| c.name != COOKIE || c.value.is_empty()),
        "no session on failure: {r:#?}"
    );
    host.log_text()
}

/// A token response whose ID token has `claims` edited by `edit`, signed by key 0.
fn with_claims(edit: impl Fn(&mut Value) + Copy) -> impl Fn(&Login, u64) -> String {
    move |l, now| {
        let mut c = claims(now, &l.nonce);
        edit(&mut c);
        token_response(&id_token(key(0), &c))
    }
}

#[test]
fn token_endpoint_errors() {
    let mut host = ready_host(json!({}));
    token_fails(&mut host, 500, |_, _| "{}".into(), "token_request_failed");
    token_fails(
        &mut host,
        400,
        |_, _| r#"{"error":"invalid_grant"}"#.into(),
        "token_request_failed",
    );
    token_fails(
        &mut host,
        200,
        |_, _| "<html>garbage".into(),
        "token_response_invalid",
    );
    token_fails(
        &mut host,
        200,
        |_, _| r#"{"access_token":"x","token_type":"Bearer"}"#.into(),
        "token_response_invalid",
    );
    token_fails(
        &mut host,
        200,
        |_, _| r#"{"id_token": 42}"#.into(),
        "token_response_invalid",
    );
    token_fails(
        &mut host,
        200,
        |_, _| String::new(),
        "token_response_invalid",
    );
    token_fails(
        &mut host,
        200,
        |_, _| token_response("not.a.jwt"),
        "id_token_invalid",
    );
    assert!(!host.log_text().contains("at-opaque"), "no token in logs");
}

#[test]
fn token_endpoint_timeout() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-1");
    assert_reply(host.timeout(c[0].token), 502, "token_request_failed");
    // The same through the clock: the callout's deadline passes.
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-2");
    assert_eq!(c[0].timeout, Duration::from_secs(5));
    let outs = host.advance(Duration::from_secs(6));
    assert_eq!(outs.len(), 1, "{outs:#?}");
    assert_reply(
        outs.into_iter().next().unwrap(),
        502,
        "token_request_failed",
    );
    assert!(host.open_streams().is_empty());
}

#[test]
fn id_token_signature_and_algorithm() {
    let mut host = ready_host(json!({}));
    // Signed by a key the JWKS does not hold, under a kid it does hold.
    let log = token_fails(
        &mut host,
        200,
        |l, now| token_response(&sign(key(2), &header_for(key(0)), &claims(now, &l.nonce))),
        "id_token_invalid",
    );
    assert!(log.contains("signature"), "{log}");
    // A good token with one signature byte flipped.
    token_fails(
        &mut host,
        200,
        |l, now| {
            let t = id_token(key(0), &claims(now, &l.nonce));
            let (head, sig) = t.rsplit_once('.').unwrap();
            let mut sig = sig.to_string();
            let last = if sig.ends_with('A') { "B" } else { "A" };
            sig.replace_range(sig.len() - 1.., last);
            token_response(&format!("{head}.{sig}"))
        },
        "id_token_invalid",
    );
    // alg none, empty signature.
    let log = token_fails(
        &mut host,
        200,
        |l, now| {
            let h = b64url(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes());
            let c = b64url(claims(now, &l.nonce).to_string().as_bytes());
            token_response(&format!("{h}.{c}."))
        },
        "id_token_invalid",
    );
    assert!(log.contains("algorithm") || log.contains("alg"), "{log}");
    // HS256 with the client secret as the key (the classic confusion).
    token_fails(
        &mut host,
        200,
        |l, now| {
            use hmac::{Hmac, Mac};
            let h = b64url(
                json!({"alg": "HS256", "typ": "JWT", "kid": "key-0"})
                    .to_string()
                    .as_bytes(),
            );
            let c = b64url(claims(now, &l.nonce).to_string().as_bytes());
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(CLIENT_SECRET.as_bytes()).unwrap();
            mac.update(format!("{h}.{c}").as_bytes());
            token_response(&format!("{h}.{c}.{}", b64url(&mac.finalize().into_bytes())))
        },
        "id_token_invalid",
    );
}

#[test]
fn id_token_claims() {
    let mut host = ready_host(json!({}));
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "iss",
            Box::new(|c| c["iss"] = json!("https://evil.example")),
        ),
        ("aud", Box::new(|c| c["aud"] = json!("someone-else"))),
        ("aud", Box::new(|c| c["aud"] = json!(["someone-else"]))),
        (
            "azp",
            Box::new(|c| {
                c["aud"] = json!(["app", "other"]);
                c["azp"] = json!("other");
            }),
        ),
        (
            "expired",
            Box::new(|c| {
                let n = c["iat"].as_u64().unwrap();
                c["exp"] = json!(n - 120);
                c["iat"] = json!(n - 600);
            }),
        ),
        (
            "future",
            Box::new(|c| {
                let n = c["iat"].as_u64().unwrap();
                c["iat"] = json!(n + 3600);
                c["exp"] = json!(n + 7200);
            }),
        ),
        ("nonce", Box::new(|c| c["nonce"] = json!("another-login"))),
        (
            "nonce",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
        ),
        (
            "sub",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        (
            "exp",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
    ];
    for (what, edit) in cases {
        host.clear_logs();
        let (_, out) = login_with_response(&mut host, "/app", 200, |l, now| {
            let mut c = claims(now, &l.nonce);
            edit(&mut c);
            token_response(&id_token(key(0), &c))
        });
        assert_eq!(
            reason(&out).as_deref(),
            Some("id_token_invalid"),
            "{what}: {out:#?}"
        );
        assert_eq!(out.status(), Some(502), "{what}");
        assert!(
            host.log_text().contains("ID token refused"),
            "{what}: {}",
            host.log_text()
        );
    }
    // A multi-audience token with azp = client_id is fine.
    let (_, out) = login_with_response(
        &mut host,
        "/app",
        200,
        with_claims(|c| {
            c["aud"] = json!(["app", "other"]);
            c["azp"] = json!("app");
        }),
    );
    assert_eq!(out.status(), Some(302), "{out:#?}");
}

#[test]
fn email_rules() {
    let mut host = ready_host(json!({"email_domains": ["example.com"]}));
    token_fails(
        &mut host,
        200,
        with_claims(|c| c["email"] = json!("mallory@evil.example")),
        "email_not_allowed",
    );
    token_fails(
        &mut host,
        200,
        with_claims(|c| {
            c.as_object_mut().unwrap().remove("email");
        }),
        "email_not_allowed",
    );
    token_fails(
        &mut host,
        200,
        with_claims(|c| c["email_verified"] = json!(false)),
        "email_unverified",
    );
    let (_, out) = login_with_response(&mut host, "/app", 200, with_claims(|_| {}));
    assert_eq!(out.status(), Some(302));
}

/// The login waits; the root fetches the JWKS on its next tick and answers the login.
fn wait_for_keys(host: &mut Host, waiting: u32) -> Callout {
    assert!(host.is_paused(waiting));
    assert!(
        host.pending_callouts().is_empty(),
        "no fetch from the request itself"
    );
    host.advance(Duration::from_secs(1));
    let pending = host.pending_callouts();
    assert_eq!(pending.len(), 1, "one JWKS refetch: {pending:#?}");
    assert_eq!(pending[0].path(), "/jwks");
    pending[0].clone()
}

#[test]
fn unknown_kid_refetches_the_jwks_then_accepts() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-1");
    let now = host.now_secs();
    // The provider rotated to key 1 since we loaded the JWKS.
    let out = host.respond(
        c[0].token,
        200,
        &[],
        token_response(&id_token(key(1), &claims(now, &login.nonce))),
    );
    assert!(out.expect_paused().is_empty());
    let fetch = wait_for_keys(&mut host, c[0].context_id);
    host.respond(fetch.token, 200, &[], jwks(&[key(0), key(1)]));
    let r = host.outcome_of(c[0].context_id).expect_reply();
    assert_eq!(r.status, 302, "{r:#?}");
    assert_eq!(r.header("location"), Some("/app"));
}

#[test]
fn logins_waiting_for_keys_share_one_fetch() {
    let mut host = ready_host(json!({}));
    let mut waiting = Vec::new();
    for code in ["code-1", "code-2", "code-3"] {
        let login = begin_login(&mut host, browser("/app"));
        let c = callback_paused(&mut host, &login, code);
        let now = host.now_secs();
        let t = token_response(&id_token(key(1), &claims(now, &login.nonce)));
        assert!(host
            .respond(c[0].token, 200, &[], t)
            .expect_paused()
            .is_empty());
        waiting.push(c[0].context_id);
    }
    let fetch = wait_for_keys(&mut host, waiting[0]);
    host.respond(fetch.token, 200, &[], jwks(&[key(0), key(1)]));
    for id in waiting {
        assert_eq!(host.outcome_of(id).expect_reply().status, 302);
    }
}

#[test]
fn unknown_kid_still_unknown_after_refetch_is_refused_and_rate_limited() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-1");
    let now = host.now_secs();
    let forged = token_response(&id_token(key(2), &claims(now, &login.nonce)));
    host.respond(c[0].token, 200, &[], &forged);
    let fetch = wait_for_keys(&mut host, c[0].context_id);
    host.respond(fetch.token, 200, &[], jwks(&[key(0)]));
    assert_reply(host.outcome_of(c[0].context_id), 502, "id_token_invalid");
    // The same unknown kid right after: no second refetch, refused at once.
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-2");
    let forged = token_response(&id_token(key(2), &claims(now, &login.nonce)));
    assert_reply(
        host.respond(c[0].token, 200, &[], forged),
        502,
        "id_token_invalid",
    );
    // A real rotation right after the forged kid (here 2 s later): it is not blocked; its
    // refetch waits for the overall interval, then the login completes.
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-3");
    let now = host.now_secs();
    let rotated = token_response(&id_token(key(1), &claims(now, &login.nonce)));
    assert!(host
        .respond(c[0].token, 200, &[], rotated)
        .expect_paused()
        .is_empty());
    host.advance(Duration::from_secs(6));
    let pending = host.pending_callouts();
    assert_eq!(pending.len(), 1, "{pending:#?}");
    host.respond(pending[0].token, 200, &[], jwks(&[key(0), key(1)]));
    assert_eq!(host.outcome_of(c[0].context_id).expect_reply().status, 302);
}

#[test]
fn a_replayed_callback_makes_no_second_token_request() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-1");
    // The same callback again (reload, back button, replayed URL) while the first waits:
    // answered at once, no callout.
    let again = host.request(callback_request(&login, "code-1"));
    assert_reply(again, 403, "callback_replayed");
    assert_eq!(host.pending_callouts().len(), 1);
    let now = host.now_secs();
    let out = host.respond(
        c[0].token,
        200,
        &[],
        token_response(&id_token(key(0), &claims(now, &login.nonce))),
    );
    assert_eq!(out.expect_reply().status, 302);
}

#[test]
fn body_data_never_resumes_a_paused_login() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app"));
    let c = callback_paused(&mut host, &login, "code-1");
    assert_eq!(
        host.body_while_paused(c[0].context_id, 10, true),
        1,
        "must pause"
    );
    assert!(host.is_paused(c[0].context_id));
}

#[test]
fn callback_without_a_valid_flow() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app"));
    // No flow cookie.
    let mut req = callback_request(&login, "c");
    req.headers.retain(|(k, _)| k != "cookie");
    assert_reply(host.request(req), 403, "login_expired");
    // Flow cookie tampered.
    let mut bad = login.clone();
    bad.flow_cookie.value = bad.flow_cookie.value.replacen('.', ".A", 1);
    assert_reply(
        host.request(callback_request(&bad, "c")),
        403,
        "login_expired",
    );
    // The flow cookie of another login, presented with this login's state.
    let other = begin_login(&mut host, browser("/app"));
    let mut mixed = login.clone();
    mixed.flow_cookie = other.flow_cookie.clone();
    let o = host.request(callback_request(&mixed, "c"));
    assert!(
        matches!(
            reason(&o).as_deref(),
            Some("login_expired" | "state_mismatch")
        ),
        "{o:#?}"
    );
    // State not of the right shape / missing code / provider error.
    assert_reply(
        host.request(browser("/oauth2/callback?code=c&state=short")),
        403,
        "callback_invalid",
    );
    assert_reply(
        host.request(browser(&format!("/oauth2/callback?state={}", login.state))),
        403,
        "callback_invalid",
    );
    let r = assert_reply(
        host.request(browser("/oauth2/callback?error=access_denied&state=x")),
        403,
        "idp_error",
    );
    assert!(r.body_str().contains("access_denied"));
    let r = assert_reply(
        host.request(browser("/oauth2/callback?error=%3Cscript%3E")),
        403,
        "idp_error",
    );
    assert!(
        !r.body_str().contains("<script>"),
        "unknown error codes are not echoed"
    );
    let dup = format!("/oauth2/callback?code=a&code=b&state={}", login.state);
    assert_reply(
        host.request(browser(&dup).cookie(&login.flow_cookie.name, &login.flow_cookie.value)),
        403,
        "callback_invalid",
    );
    // Mix-up defence: iss naming another provider.
    let req = Request::get(&format!(
        "/oauth2/callback?code=c&state={}&iss=https%3A%2F%2Fevil.example",
        login.state
    ))
    .cookie(&login.flow_cookie.name, &login.flow_cookie.value);
    assert_reply(host.request(req), 403, "callback_invalid");
    // None of these reached the token endpoint.
    assert!(
        host.pending_callouts().is_empty(),
        "{:#?}",
        host.pending_callouts()
    );
    // The genuine callback still works afterwards.
    let c = callback_paused(&mut host, &login, "c");
    assert_eq!(c.len(), 1);
}

#[test]
fn flow_cookie_expires_after_ten_minutes() {
    let mut host = ready_host(json!({}));
    let login = begin_login(&mut host, browser("/app"));
    host.advance(Duration::from_secs(601));
    serve_refresh(&mut host, &[key(0)]);
    assert_reply(
        host.request(callback_request(&login, "c")),
        403,
        "login_expired",
    );
}

#[test]
fn two_logins_in_flight_are_kept_apart() {
    let mut host = ready_host(json!({}));
    let a = begin_login(&mut host, browser("/a"));
    let b = begin_login(&mut host, browser("/b"));
    let ca = callback_paused(&mut host, &a, "ca");
    let cb = callback_paused(&mut host, &b, "cb");
    assert_eq!(host.open_streams().len(), 2);
    let now = host.now_secs();
    // Answer in the opposite order.
    let rb = host
        .respond(cb[0].token, 200, &[], good_token(now, &b.nonce))
        .expect_reply();
    assert_eq!(rb.header("location"), Some("/b"));
    let ra = host
        .respond(ca[0].token, 200, &[], good_token(now, &a.nonce))
        .expect_reply();
    assert_eq!(ra.header("location"), Some("/a"));
    // Answers cross-wired (a's code with b's nonce) fail.
    let a = begin_login(&mut host, browser("/a"));
    let b = begin_login(&mut host, browser("/b"));
    let ca = callback_paused(&mut host, &a, "ca");
    let out = host.respond(ca[0].token, 200, &[], good_token(now, &b.nonce));
    assert!(
        matches!(out, Outcome::Replied { status: 502, .. }),
        "{out:#?}"
    );
}

#[test]
fn client_gone_while_waiting_for_the_token_endpoint() {
    let mut host = ready_host(json!({}));
    let a = begin_login(&mut host, browser("/a"));
    let c = callback_paused(&mut host, &a, "ca");
    host.abandon(c[0].context_id);
    assert!(
        host.pending_callouts().is_empty(),
        "Envoy cancels the callout"
    );
    assert!(host.open_streams().is_empty());
    // The plugin carries on.
    let b = begin_login(&mut host, browser("/b"));
    let c = callback_paused(&mut host, &b, "cb");
    let now = host.now_secs();
    let r = host
        .respond(c[0].token, 200, &[], good_token(now, &b.nonce))
        .expect_reply();
    assert_eq!(r.status, 302);
}
