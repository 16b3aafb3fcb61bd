#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! One test per finding of the security review (issue "Security review findings"), at the
//! core tier: each fails on the code before its fix.

mod common;

use common::*;
use oidc_filter_core::config::Config;
use oidc_filter_core::flow::{
    self, Decision, TokenOutcome, MAX_KEPT_RETURN_URL, MAX_LOGINS_IN_PROGRESS,
};
use oidc_filter_core::oidc::KeySet;
use serde_json::json;

fn session_request(
    path: &str,
    session: &(String, String),
) -> oidc_filter_core::http::Request<'static> {
    with_cookies(get(path), std::slice::from_ref(session))
}

fn passes(w: &mut World, session: &(String, String)) -> bool {
    matches!(
        w.request(&session_request("/app", session)),
        Decision::Continue(_)
    )
}

/// Finding 1: a `__Host-` login cookie must have Path=/ and no Domain, or browsers drop it.
#[test]
fn host_prefixed_login_cookie_is_path_root_without_domain() {
    let mut w = World::new(config_with(json!({
        "cookie_name": "__Host-s", "cookie_domains": [], "cookie_secure": true, "cookie_path": "/",
    })));
    let r = reply(w.request(&get("/app")));
    let c = set_cookies(&r);
    let flow = c.last().unwrap();
    assert!(flow.starts_with("__Host-s_csrf_"), "{flow}");
    assert!(flow.contains("; Path=/;"), "{flow}");
    assert!(!flow.contains("Domain="), "{flow}");
    assert!(flow.contains("; Secure"), "{flow}");
    // And the whole login completes with it.
    let s = login(&mut w, "/app");
    assert!(s.0 == "__Host-s", "{s:?}");
    assert!(passes(&mut w, &s));
}

/// Finding 2: policy and lifetime as configured now, and the MAC bound to issuer and client.
#[test]
fn sessions_follow_the_current_policy_and_deployment() {
    let mut w = World::new(config_with(json!({"email_domains": ["example.com"]})));
    let s = login(&mut w, "/app");
    assert!(passes(&mut w, &s));
    // email_domains narrowed: refused.
    w.config = config_with(json!({"email_domains": ["corp.example.org"]}));
    assert!(!passes(&mut w, &s));
    // cookie_expire shortened below the session's age: refused.
    w.config = config_with(json!({"email_domains": ["example.com"], "cookie_expire": "1h"}));
    assert!(passes(&mut w, &s));
    w.now += 3600;
    assert!(!passes(&mut w, &s));
    w.now -= 3600;
    // Same secret and cookie name, another client_id or issuer: refused.
    w.config = config_with(json!({"client_id": "other-app"}));
    assert!(!passes(&mut w, &s));
    w.config = config_with(json!({"oidc_issuer_url": "https://other-issuer.example.com"}));
    assert!(!passes(&mut w, &s));
    w.config = config();
    assert!(passes(&mut w, &s));
}

/// Finding 5: `nbf` in the future (beyond the leeway) is refused.
#[test]
fn nbf_in_the_future_is_refused() {
    for (nbf, ok) in [(NOW + 61, false), (NOW + 59, true), (NOW - 10, true)] {
        let mut w = World::new(config());
        let (auth, flow_cookie) = start_login(&mut w, "/");
        let nonce = param(&query(&auth), "nonce");
        let Decision::ExchangeCode { pending, .. } =
            w.request(&callback_request(&auth, &flow_cookie))
        else {
            panic!()
        };
        let mut c = claims(&nonce);
        c["nbf"] = json!(nbf);
        let k = rsa_key(0);
        let t = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
        let TokenOutcome::Reply(r) = w.token_response(&pending, Some(200), &token_body(&t), false)
        else {
            panic!()
        };
        assert_eq!(r.status == 302, ok, "nbf {nbf}: {r:?}");
        if !ok {
            assert_eq!(r.reason, "id_token_invalid");
            assert!(r.detail.as_deref().unwrap_or("").contains("nbf"), "{r:?}");
        }
    }
}

/// Finding 6: the callback's decision names the login it spends, and what a replay gets.
#[test]
fn a_second_callback_gets_a_reply_without_a_callout() {
    let mut w = World::new(config());
    let (auth, flow_cookie) = start_login(&mut w, "/app?x=1");
    let cb = callback_request(&auth, &flow_cookie);
    let Decision::ExchangeCode {
        claim, replayed, ..
    } = w.request(&cb)
    else {
        panic!()
    };
    assert_eq!(claim.id, flow_cookie.0);
    assert_eq!(claim.expires_at, NOW + flow::LOGIN_TTL_SECS);
    assert_eq!(replayed.status, 403);
    assert_eq!(replayed.reason, "callback_replayed");
    assert!(set_cookies(&replayed)[0].starts_with(&format!("{}=;", flow_cookie.0)));
    // With a session already (the first callback completed), the replay goes where the login
    // was going.
    let s = login(&mut w, "/");
    let mut cb2 = cb.clone();
    cb2.headers
        .push(("cookie".into(), format!("{}={}", s.0, s.1).into()));
    let Decision::ExchangeCode { replayed, .. } = w.request(&cb2) else {
        panic!()
    };
    assert_eq!(replayed.status, 302);
    assert_eq!(header(&replayed, "location"), Some("/app?x=1"));
    // The shared record refuses the second claim.
    let list = oidc_filter_core::replay::claim(b"", &claim.id, NOW, claim.expires_at).unwrap();
    assert!(oidc_filter_core::replay::claim(&list, &claim.id, NOW + 1, claim.expires_at).is_err());
}

/// Finding 7: login cookies are bounded in number and size.
#[test]
fn login_cookies_do_not_pile_up() {
    let mut w = World::new(config());
    let mut jar: Vec<(String, String)> = Vec::new();
    let long = format!("/report?q={}", "x".repeat(1900));
    for i in 0..10 {
        w.now = NOW + i;
        let r = reply(w.request(&with_cookies(get(&long), &jar)));
        assert_eq!(r.status, 302);
        for c in set_cookies(&r) {
            let (k, v) = cookie_pair(c);
            jar.retain(|(n, _)| *n != k);
            if !v.is_empty() {
                jar.push((k, v));
            }
        }
        assert!(
            jar.len() <= MAX_LOGINS_IN_PROGRESS,
            "{} cookies after {i}",
            jar.len()
        );
        let bytes: usize = jar.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        assert!(
            bytes < MAX_LOGINS_IN_PROGRESS * (MAX_KEPT_RETURN_URL + 400),
            "{bytes}"
        );
    }
    // The newest logins are the ones kept: the last one still completes.
    let (k, v) = jar.last().unwrap().clone();
    assert!(k.starts_with("_oauth2_proxy_csrf_"));
    // A forged login cookie is cleared on the next start.
    let forged = vec![(
        "_oauth2_proxy_csrf_AAAAAAAAAAAAAAAA".to_string(),
        "2.AA.AA".to_string(),
    )];
    let r = reply(w.request(&with_cookies(get("/"), &forged)));
    assert!(set_cookies(&r)[0].starts_with("_oauth2_proxy_csrf_AAAAAAAAAAAAAAAA=;"));
    let _ = v;
}

/// Finding 7 (size): a long return URL loses its query rather than filling the cookie.
#[test]
fn long_return_urls_are_cut_to_their_path() {
    let mut w = World::new(config());
    let long = format!("/report?q={}", "x".repeat(1500));
    let s = {
        let (auth, flow_cookie) = start_login(&mut w, &long);
        assert!(flow_cookie.1.len() < MAX_KEPT_RETURN_URL + 400);
        let nonce = param(&query(&auth), "nonce");
        let Decision::ExchangeCode { pending, .. } =
            w.request(&callback_request(&auth, &flow_cookie))
        else {
            panic!()
        };
        assert_eq!(pending.return_url, "/report");
        w.token_response(&pending, Some(200), &token_body(&id_token(&nonce)), false)
    };
    assert!(matches!(s, TokenOutcome::Reply(r) if r.status == 302));
}

/// Finding 8: a return URL into our own endpoints becomes `/`.
#[test]
fn start_never_returns_into_our_own_endpoints() {
    let mut w = World::new(config_with(
        json!({"whitelist_domains": ["app.example.com"]}),
    ));
    for rd in [
        "/oauth2/start",
        "/oauth2/start?rd=/oauth2/start",
        "/oauth2/callback?code=x&state=y",
        "/OAUTH2/START",
        "/oauth2/./start",
        "/x/../oauth2/start",
        "/oauth2%2Fstart",
        "/%6Fauth2/start",
        "/oauth2/sign_out",
        "https://app.example.com/oauth2/start",
    ] {
        let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        let (auth, flow_cookie) = {
            let r = reply(w.request(&get(&format!("/oauth2/start?rd={enc}"))));
            assert_eq!(r.status, 302);
            (
                header(&r, "location").unwrap().to_string(),
                cookie_pair(set_cookies(&r).last().unwrap()),
            )
        };
        let Decision::ExchangeCode { pending, .. } =
            w.request(&callback_request(&auth, &flow_cookie))
        else {
            panic!()
        };
        assert_eq!(pending.return_url, "/", "{rd}");
    }
    // An ordinary rd is kept.
    let r = reply(w.request(&get("/oauth2/start?rd=%2Foauth2x%2Fpage")));
    let (auth, fc) = (
        header(&r, "location").unwrap().to_string(),
        cookie_pair(set_cookies(&r).last().unwrap()),
    );
    let Decision::ExchangeCode { pending, .. } = w.request(&callback_request(&auth, &fc)) else {
        panic!()
    };
    assert_eq!(pending.return_url, "/oauth2x/page");
}

/// Finding 9: a cookie whose name only looks like ours after Unicode trimming is not ours,
/// for the lookup and for the strip alike.
#[test]
fn nbsp_cookie_name_neither_authenticates_nor_is_stripped() {
    let mut w = World::new(config());
    let s = login(&mut w, "/");
    let req = with_header(get("/app"), "cookie", &format!("\u{a0}{}={}", s.0, s.1));
    assert_eq!(reply(w.request(&req)).status, 302, "must not authenticate");
    let req = with_header(
        get("/app"),
        "cookie",
        &format!("{}={}; \u{a0}{}={}", s.0, s.1, s.0, s.1),
    );
    let Decision::Continue(f) = w.request(&req) else {
        panic!()
    };
    let out = forwarded(&w.config, &req, &f);
    let cookie: Vec<&String> = out
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(cookie, vec![&format!("\u{a0}{}={}", s.0, s.1)]);
}

/// Finding 10: identity values the upstream could read differently are refused.
#[test]
fn claim_values_are_taken_exactly_or_not_at_all() {
    for bad in [
        " alice@example.com",
        "alice@example.com ",
        "alice\u{202e}@example.com",
        "a\u{200b}lice@example.com",
        "alice@example.com\u{2028}",
    ] {
        assert_eq!(flow::clean_claim(Some(bad)), "", "{bad:?}");
    }
    assert_eq!(flow::clean_claim(Some("Ålice Smith")), "Ålice Smith");
    // With email_domains, an email refused this way is no email: the login is refused.
    let mut w = World::new(config_with(json!({"email_domains": ["example.com"]})));
    let (auth, fc) = start_login(&mut w, "/");
    let nonce = param(&query(&auth), "nonce");
    let Decision::ExchangeCode { pending, .. } = w.request(&callback_request(&auth, &fc)) else {
        panic!()
    };
    let mut c = claims(&nonce);
    c["email"] = json!("alice@example.com ");
    let k = rsa_key(0);
    let t = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
    let TokenOutcome::Reply(r) = w.token_response(&pending, Some(200), &token_body(&t), false)
    else {
        panic!()
    };
    assert_eq!((r.status, r.reason.code()), (403, "email_not_allowed"));
}

/// Finding 11: errors about provider documents hold no byte of the document.
#[test]
fn provider_document_errors_hold_no_body_bytes() {
    let secret = "SENSITIVE-7f3a";
    let docs: Vec<Vec<u8>> = vec![
        format!("{{\"issuer\": \"{secret}\"}}").into_bytes(),
        format!("{{\"issuer\": {{\"{secret}\": 1}}}}").into_bytes(),
        format!("[\"{secret}\"]").into_bytes(),
        secret.as_bytes().to_vec(),
        format!("{{\"issuer\": \"{ISSUER}\", \"authorization_endpoint\": \"{secret}\", \"token_endpoint\": 1, \"jwks_uri\": \"x\"}}").into_bytes(),
    ];
    for d in &docs {
        let e = oidc_filter_core::oidc::Provider::from_discovery(d, ISSUER).unwrap_err();
        assert!(!e.contains(secret), "{e}");
        let e = KeySet::parse(d).unwrap_err();
        assert!(!e.contains(secret), "{e}");
        let e = oidc_filter_core::oidc::id_token_from_response(d).unwrap_err();
        assert!(!e.contains(secret), "{e}");
    }
    let e = KeySet::parse(format!("{{\"keys\": \"{secret}\"}}").as_bytes()).unwrap_err();
    assert!(!e.contains(secret), "{e}");
}

/// Finding 12: one key of a shape we do not use never fails the whole set.
#[test]
fn odd_keys_are_skipped_one_by_one() {
    let good = rsa_jwk(rsa_key(0));
    let odd = [
        json!({"kty": "RSA", "use": "enc", "kid": "enc1", "n": "AQAB", "e": "AQAB", "alg": "RSA-OAEP"}),
        json!({"kty": "OKP", "crv": "X25519", "x": "AAAA"}),
        json!({"kty": "EC", "crv": "P-521", "x": "AAAA", "y": "AAAA"}),
        json!({"kty": "oct", "k": "c2VjcmV0"}),
        json!({"kty": "RSA", "kid": "x5c-only", "x5c": ["MIIB"]}),
        json!({"kty": "RSA", "kid": 42, "n": 1, "e": true}),
        json!({"kty": 7}),
        json!("not an object"),
        json!(null),
        json!({"kty": "EC", "crv": "P-256", "use": null, "key_ops": ["verify"], "x": 1}),
    ];
    let mut all = odd.to_vec();
    all.insert(3, good);
    let body = json!({"keys": all}).to_string();
    let ks = KeySet::parse(body.as_bytes()).unwrap();
    assert_eq!(ks.keys.len(), 1);
    assert!(ks.has_kid(&rsa_key(0).kid));
}

/// Findings 4 and 14: weak cookie secrets refused with the reason; a client secret is one
/// secret, whole, commas and all.
#[test]
fn weak_secrets_refused_and_client_secret_taken_whole() {
    let parse = |extra: serde_json::Value, env: &dyn Fn(&str) -> Option<String>| {
        let mut v = json!({
            "oidc_issuer_url": ISSUER, "client_id": "app", "client_secret": "s",
            "cookie_secret": SECRET_A, "idp_cluster": "idp",
        });
        for (k, val) in extra.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        Config::parse(v.to_string().as_bytes(), env)
    };
    let none = |_: &str| None;
    for weak in [
        "passwordpasswordpassword",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "abcdabcdabcdabcdabcdabcdabcdabcd",
        "MySuperSecretCookieKey2024!!",
        "ZGVtby1jb29raWUtc2VjcmV0LWNoYW5nZS1tZSE", // base64 of "demo-cookie-secret-change-me!"
        "correcthorsebatterystaple",
    ] {
        let errs = parse(json!({"cookie_secret": weak}), &none).unwrap_err();
        assert_eq!(errs.len(), 1, "{weak}: {errs:?}");
        assert_eq!(errs[0].field, "cookie_secret");
        assert!(
            errs[0].message.contains("looks like a password"),
            "{}",
            errs[0].message
        );
    }
    for good in [
        SECRET_A,
        SECRET_B,
        "PnFPvm78Z8mu_Yt3GEuCgBtptYYsEeYj7HzlKSLe4qA=",
        "8f14e45fceea167a5a36dedd4bea2543",
    ] {
        assert!(
            parse(json!({"cookie_secret": good}), &none).is_ok(),
            "{good}"
        );
    }
    // Client secret: a comma is part of it, inline or from the environment.
    let env = |n: &str| (n == "CS").then(|| "abc,def ghi".to_string());
    let c = parse(
        json!({"client_secret": null, "client_secret_env": "CS"}),
        &env,
    )
    .unwrap();
    assert_eq!(c.providers[0].client_secret.expose(), "abc,def ghi");
    let c = parse(json!({"client_secret": "abc,def"}), &none).unwrap();
    assert_eq!(c.providers[0].client_secret.expose(), "abc,def");
    let errs = parse(json!({"client_secret": ["a", "b"]}), &none).unwrap_err();
    assert_eq!(errs[0].field, "client_secret");
}

#[test]
fn non_ascii_host_names_are_refused() {
    // IDNA is ASCII-only (idna_adapter 1.0.0): a host written with other letters, such as a
    // Cyrillic "а" in place of "a", is no host at all, in a return URL or in the config.
    let wl = vec![oidc_filter_core::domain::DomainPattern::parse(
        ".example.com",
        oidc_filter_core::domain::LeadingDot::WithSubdomains,
        false,
    )
    .unwrap()];
    let ok = oidc_filter_core::redirect::validate_return_url(
        "https://apps.example.com/x",
        "app.example.com",
        &wl,
    );
    assert_eq!(ok.as_deref(), Some("https://apps.example.com/x"));
    for rd in [
        "https://аpps.example.com/x",
        "https://apps.exаmple.com/x",
        "https://ex\u{0430}mple.com/",
    ] {
        assert_eq!(
            oidc_filter_core::redirect::validate_return_url(rd, "app.example.com", &wl),
            None,
            "{rd}"
        );
    }
    let errs = oidc_filter_core::config::Config::parse(
        serde_json::json!({
            "oidc_issuer_url": "https://іssuer.example.com", "client_id": "c",
            "client_secret": "s", "cookie_secret": SECRET_A, "idp_cluster": "idp",
        })
        .to_string()
        .as_bytes(),
        &|_| None,
    )
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("oidc_issuer_url")),
        "{errs:?}"
    );
}
