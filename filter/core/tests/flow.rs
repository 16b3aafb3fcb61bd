//! The login flow, step by step and failure by failure, with a fixed clock and seeded
//! randomness. ID tokens are minted here with keys made here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::flow::{Decision, TokenOutcome};
use oidc_filter_core::session::code_challenge;
use serde_json::json;

fn token_outcome_reply(o: TokenOutcome) -> oidc_filter_core::flow::LocalReply {
    match o {
        TokenOutcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn exchange(
    w: &mut World,
    path: &str,
) -> (
    oidc_filter_core::flow::Callout,
    oidc_filter_core::flow::PendingLogin,
    String,
) {
    let (auth, flow) = start_login(w, path);
    let nonce = param(&query(&auth), "nonce");
    match w.request(&callback_request(&auth, &flow)) {
        Decision::ExchangeCode {
            callout, pending, ..
        } => (callout, pending, nonce),
        other => panic!("{other:?}"),
    }
}

#[test]
fn browser_without_session_is_sent_to_the_authorization_endpoint() {
    let mut w = World::new(config());
    let r = reply(w.request(&get("/dashboard?tab=1")));
    assert_eq!(r.status, 302);
    let loc = header(&r, "location").unwrap();
    assert!(
        loc.starts_with("https://issuer.example.com/authorize?tenant=t1&"),
        "{loc}"
    );
    let q = query(loc);
    assert_eq!(param(&q, "response_type"), "code");
    assert_eq!(param(&q, "client_id"), CLIENT_ID);
    assert_eq!(
        param(&q, "redirect_uri"),
        "https://app.example.com/oauth2/callback"
    );
    assert_eq!(param(&q, "scope"), "openid email profile");
    assert_eq!(param(&q, "code_challenge_method"), "S256");
    let state = param(&q, "state");
    assert_eq!(state.len(), 43);
    assert_eq!(param(&q, "nonce").len(), 43);
    assert_eq!(param(&q, "code_challenge").len(), 43);
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "x-oidc-filter-reason"), Some("login_redirect"));

    let cookies = set_cookies(&r);
    assert_eq!(cookies.len(), 1);
    let flow = cookies[0];
    assert!(
        flow.starts_with(&format!("_oauth2_proxy_csrf_{}=2.", &state[..16])),
        "{flow}"
    );
    assert!(
        flow.ends_with("; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"),
        "{flow}"
    );

    // A second login (another tab) gets its own state and cookie.
    let r2 = reply(w.request(&get("/other")));
    let state2 = param(&query(header(&r2, "location").unwrap()), "state");
    assert_ne!(state, state2);
    assert_ne!(cookie_pair(set_cookies(&r2)[0]).0, cookie_pair(flow).0);
}

#[test]
fn non_navigation_requests_get_401() {
    let mut w = World::new(config());
    let cases = [
        with_header(get("/api"), "x-requested-with", "XMLHttpRequest"),
        with_header(get("/api"), "sec-fetch-mode", "cors"),
        {
            let mut r = get("/api");
            r.headers = vec![("accept".into(), "application/json".into())];
            r
        },
        {
            let mut r = get("/api");
            r.method = "POST".into();
            r
        },
        {
            let mut r = get("/logo.png");
            r.headers = vec![("accept".into(), "image/avif,image/webp,image/png".into())];
            r
        },
    ];
    for req in cases {
        let r = reply(w.request(&req));
        assert_eq!(r.status, 401, "{req:?}");
        assert_eq!(r.reason, "unauthenticated");
        assert_eq!(header(&r, "x-oidc-filter-reason"), Some("unauthenticated"));
        assert!(header(&r, "www-authenticate").is_some());
        assert!(set_cookies(&r).is_empty());
    }
    // A navigation with Sec-Fetch-Mode: navigate is a browser; so is a client taking */*.
    let r = reply(w.request(&with_header(get("/x"), "sec-fetch-mode", "navigate")));
    assert_eq!(r.status, 302);
    let mut curl = get("/x");
    curl.headers = vec![("accept".into(), "*/*".into())];
    assert_eq!(reply(w.request(&curl)).status, 302);
    curl.headers.clear();
    assert_eq!(reply(w.request(&curl)).status, 302);
}

#[test]
fn nothing_passes_before_the_provider_is_loaded() {
    let mut w = World::new(config());
    w.ready = false;
    let r = reply(w.request(&get("/")));
    assert_eq!((r.status, r.reason.code()), (503, "idp_not_ready"));
    assert_eq!(header(&r, "retry-after"), Some("5"));
    let r = reply(w.request(&get("/oauth2/start?rd=/x")));
    assert_eq!(r.status, 503);
    // A valid session needs no provider: it still passes.
    w.ready = true;
    let session = login(&mut w, "/");
    w.ready = false;
    assert!(matches!(
        w.request(&with_cookies(get("/"), &[session])),
        Decision::Continue(_)
    ));
}

#[test]
fn callback_exchanges_the_code_with_pkce_and_basic_auth() {
    let mut w = World::new(config());
    let (auth, flow) = start_login(&mut w, "/app?x=1");
    let challenge = param(&query(&auth), "code_challenge");
    let Decision::ExchangeCode {
        callout, pending, ..
    } = w.request(&callback_request(&auth, &flow))
    else {
        panic!()
    };
    let h = |n: &str| {
        callout
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(callout.cluster, "idp");
    assert_eq!(h(":method").as_deref(), Some("POST"));
    assert_eq!(h(":path").as_deref(), Some("/oauth/token"));
    assert_eq!(h(":authority").as_deref(), Some("issuer.example.com"));
    assert_eq!(
        h("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    // RFC 6749 §2.3.1: client id and secret form-encoded, then Basic.
    assert_eq!(
        h("authorization").as_deref(),
        Some(
            format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    "app:s3cr%3At%26"
                )
            )
            .as_str()
        )
    );
    let body: Vec<(String, String)> = url::form_urlencoded::parse(&callout.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(param(&body, "grant_type"), "authorization_code");
    assert_eq!(param(&body, "code"), "the-code");
    assert_eq!(
        param(&body, "redirect_uri"),
        "https://app.example.com/oauth2/callback"
    );
    assert_eq!(code_challenge(&param(&body, "code_verifier")), challenge);
    assert!(!body.iter().any(|(k, _)| k == "client_secret"));
    assert_eq!(pending.return_url, "/app?x=1");
    assert_eq!(pending.nonce, param(&query(&auth), "nonce"));
    assert_eq!(callout.timeout_ms, 5000);

    // client_secret_post puts the credentials in the body instead.
    let mut w = World::new(config_with(
        json!({"token_endpoint_auth_method": "client_secret_post"}),
    ));
    let (callout, _, _) = exchange(&mut w, "/");
    assert!(!callout.headers.iter().any(|(k, _)| k == "authorization"));
    let body: Vec<(String, String)> = url::form_urlencoded::parse(&callout.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(param(&body, "client_id"), "app");
    assert_eq!(param(&body, "client_secret"), "s3cr:t&");
}

#[test]
fn token_response_sets_the_session_and_returns_to_the_original_url() {
    let mut w = World::new(config_with(json!({"cookie_domains": [".example.com"]})));
    let (_, pending, nonce) = exchange(&mut w, "/app?x=1");
    let r = token_outcome_reply(w.token_response(
        &pending,
        Some(200),
        &token_body(&id_token(&nonce)),
        true,
    ));
    assert_eq!(r.status, 302);
    assert_eq!(header(&r, "location"), Some("/app?x=1"));
    let cookies = set_cookies(&r);
    assert_eq!(cookies.len(), 2);
    assert!(cookies[0].starts_with("_oauth2_proxy=2."), "{}", cookies[0]);
    assert!(
        cookies[0].ends_with(
            "; Path=/; Domain=.example.com; Max-Age=604800; HttpOnly; Secure; SameSite=Lax"
        ),
        "{}",
        cookies[0]
    );
    // The flow cookie is cleared with the attributes it was set with.
    assert_eq!(
        cookies[1],
        format!(
            "{}=; Path=/; Domain=.example.com; Max-Age=0; HttpOnly; Secure; SameSite=Lax; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            pending.flow_cookie
        )
    );
}

#[test]
fn session_passes_with_identity_headers_and_without_forgeries_or_our_cookies() {
    let mut w = World::new(config());
    let session = login(&mut w, "/");
    let mut req = with_cookies(
        get("/data"),
        &[("theme".into(), "dark".into()), session.clone()],
    );
    for (k, v) in [
        ("x-forwarded-email", "evil@attacker.example"),
        ("X-Auth-Request-User", "admin"),
        ("x_auth_request_email", "evil@attacker.example"),
        ("X_FORWARDED_USER", "root"),
        ("x-forwarded-for", "10.0.0.1"),
    ] {
        req = with_header(req, k, v);
    }
    let Decision::Continue(f) = w.request(&req) else {
        panic!()
    };
    let out = forwarded(&w.config, &req, &f);
    let names: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    for n in [
        "X-Auth-Request-User",
        "x_auth_request_email",
        "X_FORWARDED_USER",
    ] {
        assert!(!names.contains(&n), "{n} kept: {out:?}");
    }
    let vals = |n: &str| -> Vec<&str> {
        out.iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(vals(":method"), ["GET"]);
    assert_eq!(vals(":path"), ["/data"]);
    assert_eq!(vals("x-forwarded-for"), ["10.0.0.1"]);
    assert_eq!(vals("cookie"), ["theme=dark"]);
    assert_eq!(vals("x-forwarded-user"), ["user-1"]);
    assert_eq!(vals("x-forwarded-email"), ["alice@example.com"]);
    assert_eq!(vals("x-forwarded-preferred-username"), ["alice"]);
    assert_eq!(vals("x-auth-request-user"), ["user-1"]);
    assert_eq!(vals("x-auth-request-email"), ["alice@example.com"]);
    assert_eq!(vals("x-auth-request-preferred-username"), ["alice"]);

    // Only the session cookie: the Cookie header goes away entirely.
    let req = with_cookies(get("/"), &[session]);
    let Decision::Continue(f) = w.request(&req) else {
        panic!()
    };
    let out = forwarded(&w.config, &req, &f);
    assert!(!out.iter().any(|(k, _)| k == "cookie"), "{out:?}");
}

#[test]
fn our_cookies_leave_every_cookie_header_one_host_call_each() {
    let mut w = World::new(config());
    let (name, value) = login(&mut w, "/");
    // HTTP/2 may deliver cookies as several headers.
    let req = with_header(
        with_header(get("/"), "cookie", &format!("a=1; {name}={value}")),
        "cookie",
        "b=2",
    );
    let Decision::Continue(f) = w.request(&req) else {
        panic!()
    };
    let out = forwarded(&w.config, &req, &f);
    let cookies: Vec<&str> = out
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);

    // One Cookie header: one replace for it, one per identity header, nothing else.
    let req = with_cookies(get("/"), &[("a".into(), "1".into()), (name, value)]);
    let Decision::Continue(f) = w.request(&req) else {
        panic!()
    };
    let raw = raw_pairs(&req);
    let ops = oidc_filter_core::flow::header_ops(&w.config, &raw, &f);
    let adds = ops
        .iter()
        .filter(|o| matches!(o, oidc_filter_core::flow::HeaderOp::Add(..)))
        .count();
    assert!(adds >= 2, "{ops:?}");
    assert_eq!(ops.len(), 1 + adds, "{ops:?}");
    assert!(ops.contains(&oidc_filter_core::flow::HeaderOp::Replace(
        b"cookie",
        std::borrow::Cow::Borrowed(b"a=1")
    )));
    // Identity headers the request lacks are added; one it has (a forgery, in any spelling)
    // is replaced, so that only ours reaches the upstream.
    use oidc_filter_core::flow::HeaderOp;
    let added = |ops: &[HeaderOp<'_>], name: &[u8]| {
        ops.iter()
            .any(|o| matches!(o, HeaderOp::Add(k, _) if *k == name))
    };
    assert!(added(&ops, b"x-forwarded-user"), "{ops:?}");
    assert!(added(&ops, b"x-auth-request-email"), "{ops:?}");
    let forged = with_header(req.clone(), "X-Forwarded-User", "mallory");
    let Decision::Continue(f) = w.request(&forged) else {
        panic!()
    };
    let raw = raw_pairs(&forged);
    let ops = oidc_filter_core::flow::header_ops(&w.config, &raw, &f);
    assert!(
        ops.iter()
            .any(|o| matches!(o, HeaderOp::Replace(k, _) if *k == b"x-forwarded-user")),
        "{ops:?}"
    );
    assert!(!added(&ops, b"x-forwarded-user"), "{ops:?}");
    let out = forwarded(&w.config, &forged, &f);
    let users: Vec<&str> = out
        .iter()
        .filter(|(k, _)| k == "x-forwarded-user")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(users.len(), 1, "{out:?}");
    assert_ne!(users[0], "mallory");
}

#[test]
fn identity_headers_follow_the_options() {
    let mut w = World::new(config_with(
        json!({"set_xauthrequest": false, "pass_user_headers": false}),
    ));
    let session = login(&mut w, "/");
    let req = with_header(
        with_cookies(get("/"), &[session]),
        "x-auth-request-email",
        "forged",
    );
    let Decision::Continue(f) = w.request(&req) else {
        panic!()
    };
    let out = forwarded(&w.config, &req, &f);
    assert!(
        !out.iter()
            .any(|(k, _)| k.starts_with("x-forwarded-") || k.starts_with("x-auth-request-")),
        "{out:?}"
    );
    assert!(f.remove.iter().any(|r| r == "x-auth-request-email"));
}

#[test]
fn bad_sessions_start_a_new_login() {
    let mut w = World::new(config());
    let (name, value) = login(&mut w, "/");
    let mut tampered = value.clone().into_bytes();
    let i = 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for v in [tampered, "garbage".to_string(), String::new()] {
        let r = reply(w.request(&with_cookies(get("/"), &[(name.clone(), v)])));
        assert_eq!(r.status, 302);
    }
    // Expired.
    w.now += 7 * 24 * 3600;
    let r = reply(w.request(&with_cookies(get("/"), &[(name.clone(), value.clone())])));
    assert_eq!(r.status, 302);
    w.now -= 1;
    assert!(matches!(
        w.request(&with_cookies(get("/"), &[(name.clone(), value.clone())])),
        Decision::Continue(_)
    ));
    // Another secret: refused; the old secret second in the list: accepted.
    let mut other = World::new(config_with(json!({"cookie_secret": SECRET_B})));
    assert_eq!(
        reply(other.request(&with_cookies(get("/"), &[(name.clone(), value.clone())]))).status,
        302
    );
    let mut rotated = World::new(config_with(json!({"cookie_secret": [SECRET_B, SECRET_A]})));
    assert!(matches!(
        rotated.request(&with_cookies(get("/"), &[(name.clone(), value.clone())])),
        Decision::Continue(_)
    ));
    // A session made under one name is not valid under another.
    let mut renamed = World::new(config_with(json!({"cookie_name": "other"})));
    assert_eq!(
        reply(renamed.request(&with_cookies(get("/"), &[("other".into(), value)]))).status,
        302
    );
}

#[test]
fn rotated_secret_signs_with_the_first() {
    let mut w = World::new(config_with(json!({"cookie_secret": [SECRET_B, SECRET_A]})));
    let session = login(&mut w, "/");
    let mut only_new = World::new(config_with(json!({"cookie_secret": SECRET_B})));
    assert!(matches!(
        only_new.request(&with_cookies(get("/"), &[session])),
        Decision::Continue(_)
    ));
}

#[test]
fn callback_failures() {
    let mut w = World::new(config());
    let (auth, flow) = start_login(&mut w, "/");
    let state = param(&query(&auth), "state");
    let cb = |q: &str| {
        with_cookies(
            get(&format!("/oauth2/callback?{q}")),
            std::slice::from_ref(&flow),
        )
    };
    let cases: Vec<(String, u32, &str)> = vec![
        ("error=access_denied".into(), 403, "idp_error"),
        (format!("error=<script>&state={state}"), 403, "idp_error"),
        ("code=c".into(), 403, "callback_invalid"),
        (format!("state={state}"), 403, "callback_invalid"),
        (
            format!("code=c&state={state}&state={state}"),
            403,
            "callback_invalid",
        ),
        (
            format!("code=c&code=d&state={state}"),
            403,
            "callback_invalid",
        ),
        ("code=c&state=short".into(), 403, "callback_invalid"),
        (
            format!("code=c&state={state}&iss=https://evil.example"),
            403,
            "callback_invalid",
        ),
        // Same 16-character prefix (same cookie), different state.
        (
            format!("code=c&state={}{}", &state[..16], "A".repeat(27)),
            403,
            "state_mismatch",
        ),
        // A well-formed state with no cookie for it.
        (
            format!("code=c&state={}", "B".repeat(43)),
            403,
            "login_expired",
        ),
    ];
    for (q, status, reason) in cases {
        let r = reply(w.request(&cb(&q)));
        assert_eq!((r.status, r.reason.code()), (status, reason), "{q}");
        assert!(!r.body.contains("<script>"), "{q}");
    }
    let r = reply(w.request(&cb("error=access_denied")));
    assert!(r.body.contains("access_denied"));
    let r = reply(w.request(&cb("error=%3Cscript%3E")));
    assert!(r.body.contains("other") && !r.body.contains("script"));

    // The correct iss is accepted (RFC 9207).
    let ok = cb(&format!("code=c&state={state}&iss={ISSUER}"));
    assert!(matches!(w.request(&ok), Decision::ExchangeCode { .. }));
    // Without the cookie, or after it expired.
    let r = reply(w.request(&get(&format!("/oauth2/callback?code=c&state={state}"))));
    assert_eq!(r.reason, "login_expired");
    w.now += 601;
    let r = reply(w.request(&cb(&format!("code=c&state={state}"))));
    assert_eq!(r.reason, "login_expired");
    // A flow cookie made with another secret.
    let mut other = World::new(config_with(json!({"cookie_secret": SECRET_B})));
    let r = reply(other.request(&cb(&format!("code=c&state={state}"))));
    assert_eq!(r.reason, "login_expired");
}

#[test]
fn token_endpoint_failures() {
    let mut w = World::new(config());
    let (_, pending, nonce) = exchange(&mut w, "/");
    let cases: Vec<(Option<u32>, Vec<u8>, u32, &str)> = vec![
        (None, vec![], 502, "token_request_failed"),
        (Some(500), b"{}".to_vec(), 502, "token_request_failed"),
        (
            Some(400),
            br#"{"error":"invalid_grant"}"#.to_vec(),
            502,
            "token_request_failed",
        ),
        (Some(200), b"<html>".to_vec(), 502, "token_response_invalid"),
        (
            Some(200),
            br#"{"access_token":"x"}"#.to_vec(),
            502,
            "token_response_invalid",
        ),
        (
            Some(200),
            br#"{"id_token":""}"#.to_vec(),
            502,
            "token_response_invalid",
        ),
        (Some(200), token_body("not.a.jwt"), 502, "id_token_invalid"),
        (
            Some(200),
            token_body(&id_token(&nonce)).into_iter().take(40).collect(),
            502,
            "token_response_invalid",
        ),
    ];
    for (status, body, want_status, reason) in cases {
        let r = token_outcome_reply(w.token_response(&pending, status, &body, true));
        assert_eq!(
            (r.status, r.reason.code()),
            (want_status, reason),
            "{status:?}"
        );
        assert!(set_cookies(&r).is_empty());
    }
}

fn id_token_case(
    w: &World,
    pending: &oidc_filter_core::flow::PendingLogin,
    token: &str,
) -> oidc_filter_core::flow::LocalReply {
    token_outcome_reply(w.token_response(pending, Some(200), &token_body(token), false))
}

#[test]
fn id_token_validation_oidc_core_3_1_3_7() {
    let mut w = World::new(config());
    let (_, pending, nonce) = exchange(&mut w, "/");
    let k = rsa_key(0);
    let hdr = json!({"alg": "RS256", "kid": k.kid});
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(&nonce);
        f(&mut c);
        sign_rs256(k, &hdr, &c)
    };
    let bad: Vec<(&str, String)> = vec![
        (
            "wrong iss",
            with(&|c| c["iss"] = "https://evil.example".into()),
        ),
        (
            "iss with slash",
            with(&|c| c["iss"] = format!("{ISSUER}/").into()),
        ),
        (
            "no iss",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        ("wrong aud", with(&|c| c["aud"] = "other".into())),
        (
            "aud list without azp",
            with(&|c| c["aud"] = json!([CLIENT_ID, "other"])),
        ),
        (
            "wrong azp",
            with(&|c| {
                c["aud"] = json!([CLIENT_ID, "other"]);
                c["azp"] = "other".into();
            }),
        ),
        ("expired", with(&|c| c["exp"] = (NOW - 61).into())),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        ("exp not numeric", with(&|c| c["exp"] = "tomorrow".into())),
        ("iat in future", with(&|c| c["iat"] = (NOW + 120).into())),
        (
            "no iat",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
        ),
        ("wrong nonce", with(&|c| c["nonce"] = "other".into())),
        (
            "no nonce",
            with(&|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
        ),
        (
            "no sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        (
            "signed by another key",
            sign_rs256(rsa_key(1), &hdr, &claims(&nonce)),
        ),
        ("alg none", {
            let t = id_token(&nonce);
            let mut parts = t.split('.');
            let _ = parts.next();
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","kid":"rsa-0"}"#),
                parts.next().unwrap()
            )
        }),
        ("HS256 with the client secret", {
            use hmac::Mac;
            let input = format!(
                "{}.{}",
                b64(br#"{"alg":"HS256","kid":"rsa-0"}"#),
                b64(claims(&nonce).to_string().as_bytes())
            );
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cr:t&").unwrap();
            m.update(input.as_bytes());
            format!("{input}.{}", b64(&m.finalize().into_bytes()))
        }),
        (
            "alg swapped to RS512",
            sign_rs256(k, &json!({"alg": "RS512", "kid": k.kid}), &claims(&nonce)),
        ),
        (
            "ES256 header on an RSA key",
            sign_rs256(k, &json!({"alg": "ES256", "kid": k.kid}), &claims(&nonce)),
        ),
        ("signature cut", {
            let t = id_token(&nonce);
            t[..t.len() - 4].to_string()
        }),
    ];
    for (name, token) in bad {
        let r = id_token_case(&w, &pending, &token);
        assert_eq!(
            (r.status, r.reason.code()),
            (502, "id_token_invalid"),
            "{name}: {r:?}"
        );
        assert!(set_cookies(&r).is_empty(), "{name}");
    }
    // Within the leeway, and with azp for several audiences: accepted.
    let good = [
        with(&|c| c["exp"] = (NOW - 30).into()),
        with(&|c| {
            c["aud"] = json!([CLIENT_ID, "other"]);
            c["azp"] = CLIENT_ID.into();
        }),
        with(&|c| c["aud"] = json!([CLIENT_ID])),
        with(&|c| c["email_verified"] = "true".into()),
        sign_rs256(k, &json!({"alg": "RS256"}), &claims(&nonce)), // no kid: try each key
        sign_es256(
            &ec_key(),
            &json!({"alg": "ES256", "kid": "ec-0"}),
            &claims(&nonce),
        ),
    ];
    for (i, token) in good.iter().enumerate() {
        let r = id_token_case(&w, &pending, token);
        assert_eq!(r.status, 302, "good #{i}: {r:?}");
    }
}

#[test]
fn unknown_kid_asks_for_the_jwks_once() {
    let mut w = World::new(config());
    let (_, pending, nonce) = exchange(&mut w, "/");
    let k1 = rsa_key(1);
    let token = sign_rs256(k1, &json!({"alg": "RS256", "kid": k1.kid}), &claims(&nonce));
    assert_eq!(
        w.token_response(&pending, Some(200), &token_body(&token), true),
        TokenOutcome::RefetchJwks(k1.kid.to_string())
    );
    let r = token_outcome_reply(w.token_response(&pending, Some(200), &token_body(&token), false));
    assert_eq!(r.reason, "id_token_invalid");
    // After the refetch the new key is there.
    w.keys = jwks(&[rsa_jwk(k1)]);
    let r = token_outcome_reply(w.token_response(&pending, Some(200), &token_body(&token), false));
    assert_eq!(r.status, 302);
}

#[test]
fn email_rules() {
    let check = |extra: serde_json::Value, f: &dyn Fn(&mut serde_json::Value)| {
        let mut w = World::new(config_with(extra));
        let (_, pending, nonce) = exchange(&mut w, "/");
        let mut c = claims(&nonce);
        f(&mut c);
        let k = rsa_key(0);
        let t = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
        let r = id_token_case(&w, &pending, &t);
        (r.status, r.reason.code())
    };
    let domains = json!({"email_domains": ["example.com"]});
    assert_eq!(check(domains.clone(), &|_| {}), (302, "login_complete"));
    assert_eq!(
        check(domains.clone(), &|c| c["email"] =
            "ALICE@EXAMPLE.COM".into()),
        (302, "login_complete")
    );
    assert_eq!(
        check(domains.clone(), &|c| c["email"] =
            "a@evil.com@example.com".into()),
        (403, "email_not_allowed")
    );
    assert_eq!(
        check(domains.clone(), &|c| c["email"] =
            "a@sub.example.com".into()),
        (403, "email_not_allowed")
    );
    assert_eq!(
        check(domains.clone(), &|c| c["email"] =
            "a@example.com.evil".into()),
        (403, "email_not_allowed")
    );
    assert_eq!(
        check(domains.clone(), &|c| {
            c.as_object_mut().unwrap().remove("email");
        }),
        (403, "email_not_allowed")
    );
    assert_eq!(
        check(json!({"email_domains": [".example.com"]}), &|c| c
            ["email"] =
            "a@sub.example.com".into()),
        (302, "login_complete")
    );
    assert_eq!(
        check(domains.clone(), &|c| c["email_verified"] = false.into()),
        (403, "email_unverified")
    );
    assert_eq!(
        check(json!({}), &|c| c["email_verified"] = false.into()),
        (403, "email_unverified")
    );
    assert_eq!(
        check(
            json!({"insecure_oidc_allow_unverified_email": true}),
            &|c| c["email_verified"] = false.into()
        ),
        (302, "login_complete")
    );
}

#[test]
fn return_urls_are_validated() {
    // The URL first asked for: //evil.example/ never becomes Location: //evil.example/.
    let mut w = World::new(config());
    let (_, pending, _) = exchange(&mut w, "//evil.example/");
    assert_eq!(pending.return_url, "/");
    let (_, pending, _) = exchange(&mut w, "/\\evil.example/");
    assert_eq!(pending.return_url, "/");

    let mut w = World::new(config_with(
        json!({"whitelist_domains": [".trusted.example"]}),
    ));
    let start = |w: &mut World, rd: &str| {
        let r = reply(w.request(&get(&format!(
            "/oauth2/start?rd={}",
            url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
        ))));
        assert_eq!(r.status, 302);
        let auth = header(&r, "location").unwrap().to_string();
        let flow = cookie_pair(set_cookies(&r)[0]);
        let Decision::ExchangeCode { pending, .. } = w.request(&callback_request(&auth, &flow))
        else {
            panic!()
        };
        pending.return_url
    };
    assert_eq!(start(&mut w, "/reports?id=3"), "/reports?id=3");
    assert_eq!(
        start(&mut w, "https://app.trusted.example/x"),
        "https://app.trusted.example/x"
    );
    for evil in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "javascript:alert(1)",
        "https://app.example.com@evil.example/",
    ] {
        assert_eq!(start(&mut w, evil), "/", "{evil}");
    }
}

#[test]
fn sign_out_clears_the_cookie_as_it_was_set() {
    let mut w = World::new(config_with(
        json!({"cookie_domains": [".example.com"], "whitelist_domains": ["idp.example.org"]}),
    ));
    let r = reply(w.request(&get("/oauth2/sign_out")));
    assert_eq!(r.status, 302);
    assert_eq!(header(&r, "location"), Some("/"));
    assert_eq!(
        set_cookies(&r),
        vec!["_oauth2_proxy=; Path=/; Domain=.example.com; Max-Age=0; HttpOnly; Secure; SameSite=Lax; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    );
    let r = reply(w.request(&get(
        "/oauth2/sign_out?rd=https%3A%2F%2Fidp.example.org%2Flogout",
    )));
    assert_eq!(
        header(&r, "location"),
        Some("https://idp.example.org/logout")
    );
    let r = reply(w.request(&get("/oauth2/sign_out?rd=https%3A%2F%2Fevil.example%2F")));
    assert_eq!(header(&r, "location"), Some("/"));
}

#[test]
fn paths_are_classified_exactly() {
    let mut w = World::new(config());
    // Not the callback: protected like anything else.
    for p in [
        "/oauth2/callbackX?code=c&state=s",
        "/oauth2/callback/x",
        "/oauth2/unknown",
        "/OAUTH2/CALLBACK",
    ] {
        let r = reply(w.request(&get(p)));
        assert_eq!((r.status, r.reason.code()), (302, "login_redirect"), "{p}");
    }
    // The callback with a fragment-free query is the callback.
    let r = reply(w.request(&get("/oauth2/callback?error=access_denied")));
    assert_eq!(r.reason, "idp_error");
    // A custom redirect_url moves the callback.
    let mut w = World::new(config_with(
        json!({"redirect_url": "https://auth.example.com/cb"}),
    ));
    let r = reply(w.request(&get("/cb?error=access_denied")));
    assert_eq!(r.reason, "idp_error");
    let r = reply(w.request(&get("/x")));
    assert_eq!(
        param(&query(header(&r, "location").unwrap()), "redirect_uri"),
        "https://auth.example.com/cb"
    );
}

#[test]
fn redirect_uri_comes_from_the_request_itself() {
    let mut w = World::new(config());
    let mut req = get("/");
    req.authority = "app.example.com:8443".into();
    req.scheme = "http".into();
    let req = with_header(
        with_header(req, "x-forwarded-host", "evil.example"),
        "x-forwarded-proto",
        "https",
    );
    let r = reply(w.request(&req));
    assert_eq!(
        param(&query(header(&r, "location").unwrap()), "redirect_uri"),
        "http://app.example.com:8443/oauth2/callback"
    );
    let mut bad = get("/");
    bad.authority = "evil.example/path?".into();
    assert_eq!(reply(w.request(&bad)).status, 400);
}

#[test]
fn auth_endpoint_answers_202_or_401() {
    let mut w = World::new(config());
    let r = reply(w.request(&with_header(
        get("/oauth2/auth"),
        "accept",
        "application/json",
    )));
    assert_eq!(r.status, 401);
    let session = login(&mut w, "/");
    let r = reply(w.request(&with_cookies(get("/oauth2/auth"), &[session])));
    assert_eq!(r.status, 202);
    assert_eq!(
        header(&r, "x-auth-request-email"),
        Some("alice@example.com")
    );
}

#[test]
fn strict_samesite_keeps_the_login_cookie_lax() {
    let mut w = World::new(config_with(json!({"cookie_samesite": "strict"})));
    let (_, flow) = start_login(&mut w, "/");
    let r = reply(w.request(&get("/")));
    let c = set_cookies(&r)[0];
    assert!(c.ends_with("SameSite=Lax"), "{c}");
    let _ = flow;
    let session = login(&mut w, "/");
    let _ = session;
}

#[test]
fn cors_preflight_passes_only_when_configured_and_without_identity() {
    let preflight = || {
        let mut r = with_header(get("/api"), "access-control-request-method", "GET");
        r.method = "OPTIONS".into();
        let r = with_header(r, "origin", "https://web.example.com");
        with_header(r, "x-forwarded-email", "forged@evil.example")
    };
    let mut w = World::new(config());
    assert_eq!(reply(w.request(&preflight())).status, 401);
    let mut w = World::new(config_with(json!({"skip_auth_preflight": true})));
    let Decision::Continue(f) = w.request(&preflight()) else {
        panic!()
    };
    assert_eq!(f.remove, vec!["x-forwarded-email"]);
    assert!(f.identity.is_none());
    // An OPTIONS that is not a preflight is not skipped.
    let mut r = get("/api");
    r.method = "OPTIONS".into();
    assert_eq!(reply(w.request(&r)).status, 401);
    // Nor one without Origin, or with a body (announced, or following the headers).
    let mut no_origin = preflight();
    no_origin.headers.retain(|(k, _)| k != "origin");
    assert_eq!(reply(w.request(&no_origin)).status, 401);
    let with_length = with_header(preflight(), "content-length", "12");
    assert_eq!(reply(w.request(&with_length)).status, 401);
    let chunked = with_header(preflight(), "transfer-encoding", "chunked");
    assert_eq!(reply(w.request(&chunked)).status, 401);
    let mut body = preflight();
    body.body_follows = true;
    assert_eq!(reply(w.request(&body)).status, 401);
    let zero = with_header(preflight(), "content-length", "0");
    assert!(matches!(w.request(&zero), Decision::Continue(_)));
}

/// Random request parts: a fixed candidate, or fragments glued together.
struct Gen {
    seed: u64,
    frags: Vec<Vec<u8>>,
}

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed % n as u64) as usize
    }

    fn junk(&mut self) -> Vec<u8> {
        let len = 1 + self.below(5);
        let mut out = Vec::new();
        for _ in 0..len {
            let i = self.below(self.frags.len());
            out.extend_from_slice(&self.frags[i]);
        }
        out
    }

    fn one_of(&mut self, fixed: &[&[u8]]) -> Vec<u8> {
        match self.below(fixed.len() + 1) {
            i if i < fixed.len() => fixed[i].to_vec(),
            _ => self.junk(),
        }
    }
}

/// Any bytes a client can put in a request, through the same path the glue takes (the host's
/// serialized map, parsed in place, the core's view, the decision, the header operations),
/// end in a decision: nothing panics. Requests are mostly well formed, so that every branch
/// is reached, with parts made of fragments that reach the parsers (paths, queries, cookies,
/// our cookie names, MAC-shaped values, bytes that are not UTF-8).
#[test]
fn arbitrary_requests_never_panic() {
    use oidc_filter_core::headermap;
    let mut w = World::new(config_with(json!({"skip_auth_preflight": true})));
    let (name, value) = login(&mut w, "/");
    let (auth, flow_cookie) = start_login(&mut w, "/");
    let state = param(&query(&auth), "state");
    let callback = format!("/oauth2/callback?code=c&state={state}");
    let cookies = [
        format!("{name}={value}"),
        format!("{}={}", flow_cookie.0, flow_cookie.1),
        format!("a=1; {name}={value}; b=2"),
    ];
    let frags = [
        "/",
        "/oauth2/callback",
        "/oauth2/start",
        "/oauth2/sign_out",
        "/oauth2/auth",
        "?",
        "#",
        "&",
        "=",
        "%",
        "%zz",
        "%2F",
        "code=",
        "state=",
        "rd=",
        "iss=",
        "error=",
        "//evil.example",
        "\\",
        "é",
        ";",
        " ",
        "\"",
        ".",
        "1.",
        "1..",
        "_csrf_",
        "a=b",
        "*/*",
        "text/html",
        "XMLHttpRequest",
        "navigate",
        "OPTIONS",
        "GET",
        "POST",
        "https://",
        ":443",
        "[::1]",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        vec![0xff],
        vec![0xc3],
        vec![0xe9],
        name.clone().into_bytes(),
        flow_cookie.0.clone().into_bytes(),
        value.clone().into_bytes(),
        value.as_bytes()[..value.len() / 2].to_vec(),
    ])
    .collect();
    let mut g = Gen {
        seed: 0x9e37_79b9_7f4a_7c15,
        frags,
    };
    let names: [&[u8]; 10] = [
        b"cookie",
        b"accept",
        b"x-requested-with",
        b"sec-fetch-mode",
        b"access-control-request-method",
        b"x-forwarded-email",
        b"X_Auth_Request_User",
        b"host",
        b"x-note",
        b"\xffname",
    ];
    let mut seen = [0usize; 4]; // continue, redirect, other reply, code exchange
    for _ in 0..5000 {
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (
                b":method".to_vec(),
                g.one_of(&[b"GET", b"GET", b"POST", b"OPTIONS"]),
            ),
            (b":scheme".to_vec(), b"https".to_vec()),
            (
                b":authority".to_vec(),
                g.one_of(&[&b"app.example.com"[..]; 3]),
            ),
            (
                b":path".to_vec(),
                g.one_of(&[
                    callback.as_bytes(),
                    callback.as_bytes(),
                    b"/",
                    b"/oauth2/start?rd=/x",
                ]),
            ),
        ];
        for _ in 0..g.below(6) {
            let n = names[g.below(names.len())];
            let v = if n == b"cookie" {
                g.one_of(&[
                    cookies[0].as_bytes(),
                    cookies[1].as_bytes(),
                    cookies[2].as_bytes(),
                ])
            } else {
                g.one_of(&[b"text/html", b"navigate"])
            };
            pairs.push((n.to_vec(), v));
        }
        let borrowed: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let map = headermap::serialize(&borrowed).unwrap();
        let raw = headermap::parse(&map).unwrap();
        let req = oidc_filter_core::http::Request::from_pairs(&raw);
        match w.request(&req) {
            Decision::Continue(f) => {
                seen[0] += 1;
                let _ = oidc_filter_core::flow::header_ops(&w.config, &raw, &f);
            }
            Decision::Reply(r) => seen[if r.status == 302 { 1 } else { 2 }] += 1,
            Decision::ExchangeCode { .. } => seen[3] += 1,
            Decision::Refresh(_) => panic!("no refresh without cookie_refresh"),
        }
    }
    // The inputs reach every kind of decision.
    assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
}
