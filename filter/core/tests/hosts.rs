//! Several providers and per-host configuration: each host logs in at its own provider,
//! sessions do not cross providers, `"auth": false` hosts pass, unmatched hosts are denied.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::config::Config;
use oidc_filter_core::flow::{Callout, Decision, TokenOutcome};
use oidc_filter_core::http::Request;
use oidc_filter_core::oidc::Provider;
use serde_json::json;

const ISSUER_B: &str = "https://partners.example";

fn provider_b() -> Provider {
    Provider::from_discovery(
        json!({
            "issuer": ISSUER_B,
            "authorization_endpoint": "https://partners.example/auth",
            "token_endpoint": "https://partners.example/token",
            "jwks_uri": "https://partners.example/jwks",
        })
        .to_string()
        .as_bytes(),
        ISSUER_B,
    )
    .unwrap()
}

/// Two providers with the same cookie name (host-only cookies), so that only the MAC's
/// binding to the provider keeps their sessions apart.
fn config_two(unmatched: &str) -> Config {
    let v = json!({
        "cookie_secret": SECRET_A,
        "set_xauthrequest": true,
        "providers": {
            "corp": {"oidc_issuer_url": ISSUER, "client_id": CLIENT_ID,
                     "client_secret": "a", "idp_cluster": "idp",
                     "idp_clusters": {"keys.example.net": "keys"}},
            "partners": {"oidc_issuer_url": ISSUER_B, "client_id": "partners-app",
                         "client_secret": "b", "idp_cluster": "partners"},
        },
        "hosts": [
            {"host": "app.example.com", "provider": "corp", "email_domains": ["example.com"]},
            {"host": "*.partners.example.com", "provider": "partners"},
            {"host": "status.example.com", "auth": false},
        ],
        "unmatched_hosts": unmatched,
    });
    Config::parse(v.to_string().as_bytes(), &|_| None).unwrap()
}

fn world(unmatched: &str) -> World {
    let mut w = World::new(config_two(unmatched));
    w.others.push((provider_b(), default_jwks()));
    w
}

fn at(host: &str, mut r: Request<'static>) -> Request<'static> {
    r.authority = host.to_string().into();
    r
}

/// A login at `host` up to the token response: an ID token with `claims` changed by `set`.
/// The token request's callout, and the outcome.
fn answer_login(w: &mut World, host: &str, set: &[(&str, &str)]) -> (Callout, TokenOutcome) {
    let r = reply(w.request(&at(host, get("/x"))));
    assert_eq!(r.status, 302, "{r:?}");
    let auth = header(&r, "location").unwrap().to_string();
    let flow = cookie_pair(set_cookies(&r).last().unwrap());
    let nonce = param(&query(&auth), "nonce");
    let cb = at(host, callback_request(&auth, &flow));
    let Decision::ExchangeCode {
        pending, callout, ..
    } = w.request(&cb)
    else {
        panic!("no code exchange");
    };
    let mut c = claims(&nonce);
    for (k, v) in set {
        c[*k] = (*v).into();
    }
    let k = rsa_key(0);
    let token = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
    let outcome = w.token_response(&pending, Some(200), &token_body(&token), true);
    (callout, outcome)
}

fn reason_of(o: TokenOutcome) -> &'static str {
    match o {
        TokenOutcome::Reply(r) => r.reason.code(),
        other => panic!("{other:?}"),
    }
}

/// A whole login at `host`, with an ID token from `issuer` for `aud`; the session cookie.
fn login_at(w: &mut World, host: &str, issuer: &str, aud: &str) -> (String, String) {
    let (callout, outcome) = answer_login(w, host, &[("iss", issuer), ("aud", aud)]);
    // The token request goes to this host's provider, with its client.
    let want_cluster = if issuer == ISSUER { "idp" } else { "partners" };
    assert_eq!(callout.cluster, want_cluster);
    let basic = callout
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .and_then(|(_, v)| v.strip_prefix("Basic "))
        .unwrap();
    use base64::Engine;
    let who = base64::engine::general_purpose::STANDARD
        .decode(basic)
        .unwrap();
    assert!(who.starts_with(format!("{aud}:").as_bytes()));
    match outcome {
        TokenOutcome::Reply(r) => {
            assert_eq!(r.status, 302, "{r:?}");
            cookie_pair(set_cookies(&r)[0])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_host_logs_in_at_its_own_provider() {
    let mut w = world("deny");
    let r = reply(w.request(&at("app.example.com", get("/"))));
    let loc = header(&r, "location").unwrap();
    assert!(
        loc.starts_with("https://issuer.example.com/authorize?"),
        "{loc}"
    );
    assert_eq!(param(&query(loc), "client_id"), CLIENT_ID);
    let r = reply(w.request(&at("a.partners.example.com", get("/"))));
    let loc = header(&r, "location").unwrap();
    assert!(loc.starts_with("https://partners.example/auth?"), "{loc}");
    assert_eq!(param(&query(loc), "client_id"), "partners-app");
    // A host pattern matches whatever the port.
    let r = reply(w.request(&at("b.partners.example.com:8443", get("/"))));
    assert!(header(&r, "location")
        .unwrap()
        .starts_with("https://partners.example/auth?"));
}

#[test]
fn sessions_do_not_cross_providers() {
    let mut w = world("deny");
    let a = login_at(&mut w, "app.example.com", ISSUER, CLIENT_ID);
    let b = login_at(&mut w, "x.partners.example.com", ISSUER_B, "partners-app");
    assert_eq!(
        a.0, b.0,
        "same cookie name: only the MAC binding tells them apart"
    );
    let on = |w: &mut World, host: &str, c: &(String, String)| {
        w.request(&with_cookies(
            at(host, get("/api")),
            std::slice::from_ref(c),
        ))
    };
    assert!(matches!(
        on(&mut w, "app.example.com", &a),
        Decision::Continue(_)
    ));
    assert!(matches!(
        on(&mut w, "x.partners.example.com", &b),
        Decision::Continue(_)
    ));
    // A's session presented on B's host (and the other way round) is no session there.
    // A browser is sent to log in at that host's own provider.
    for (host, c, idp) in [
        ("x.partners.example.com", &a, "https://partners.example/"),
        ("app.example.com", &b, "https://issuer.example.com/"),
    ] {
        let r = reply(on(&mut w, host, c));
        assert_eq!(
            (r.status, r.reason.code()),
            (302, "login_redirect"),
            "{host}"
        );
        assert!(header(&r, "location").unwrap().starts_with(idp), "{host}");
    }
}

#[test]
fn an_id_token_from_the_other_provider_is_refused() {
    let mut w = world("deny");
    let (_, o) = answer_login(&mut w, "app.example.com", &[("iss", ISSUER_B)]);
    assert_eq!(reason_of(o), "id_token_invalid");
}

#[test]
fn the_host_policy_applies() {
    let mut w = world("deny");
    // app.example.com takes example.com addresses only; the partners' host takes any.
    let outside = [("email", "bob@partner.example")];
    let (_, o) = answer_login(&mut w, "app.example.com", &outside);
    assert_eq!(reason_of(o), "email_not_allowed");
    let partners = [outside[0], ("iss", ISSUER_B), ("aud", "partners-app")];
    let (_, o) = answer_login(&mut w, "a.partners.example.com", &partners);
    assert_eq!(reason_of(o), "login_complete");
}

#[test]
fn an_unprotected_host_passes_without_identity() {
    let mut w = world("deny");
    let a = login_at(&mut w, "app.example.com", ISSUER, CLIENT_ID);
    let req = with_header(
        with_cookies(at("status.example.com", get("/health")), &[a]),
        "x-forwarded-email",
        "forged@evil.example",
    );
    let Decision::Continue(f) = w.request(&req) else {
        panic!("an auth:false host must pass");
    };
    let cfg = w.config.clone();
    let out = forwarded(&cfg, &req, &f);
    assert!(out.iter().all(|(k, _)| k != "x-forwarded-email"), "{out:?}");
    assert!(
        out.iter().all(|(k, _)| k != "x-auth-request-email"),
        "{out:?}"
    );
    // Not even our endpoints answer there: they are the upstream's paths.
    assert!(matches!(
        w.request(&at("status.example.com", get("/oauth2/start"))),
        Decision::Continue(_)
    ));
}

#[test]
fn unmatched_hosts_are_denied_or_passed_as_configured() {
    let mut w = world("deny");
    for path in ["/", "/oauth2/start", "/oauth2/callback?code=x&state=y"] {
        let r = reply(w.request(&at("other.example.org", get(path))));
        assert_eq!(
            (r.status, r.reason.code()),
            (403, "host_not_configured"),
            "{path}"
        );
    }
    let mut w = world("pass");
    assert!(matches!(
        w.request(&at("other.example.org", get("/"))),
        Decision::Continue(_)
    ));
}

#[test]
fn sign_out_clears_the_hosts_own_session() {
    let mut w = world("deny");
    let r = reply(w.request(&at("x.partners.example.com", get("/oauth2/sign_out"))));
    assert_eq!(r.status, 302);
    let cleared: Vec<(String, String)> = set_cookies(&r).iter().map(|c| cookie_pair(c)).collect();
    assert!(
        cleared
            .iter()
            .any(|(k, v)| k == "_oauth2_proxy" && v.is_empty()),
        "{cleared:?}"
    );
}
