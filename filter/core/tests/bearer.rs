//! Bearer tokens for API clients: `skip_jwt_bearer_tokens` and `extra_jwt_issuers`. Each
//! check of RFC 9068 §4 / RFC 7519 fails on its own; refusals are RFC 6750's; the per-VM cache
//! serves a token until its `exp` and stays bounded; a new key id asks for a refetch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use oidc_filter_core::bearer::{MAX_CACHED, MAX_CACHED_BYTES};
use oidc_filter_core::config::Config;
use oidc_filter_core::engine::{Engine, Response, Step, Stream};
use oidc_filter_core::flow::{Decision, LocalReply};
use oidc_filter_core::http::Request;
use oidc_filter_core::idp::FetchKind;
use oidc_filter_core::oidc::Provider;
use serde_json::{json, Value};

const API_ISSUER: &str = "https://api-issuer.example.com";

fn bearer_config(extra: Value) -> Config {
    let mut base = json!({
        "skip_jwt_bearer_tokens": true,
        "extra_jwt_issuers": [
            format!("{API_ISSUER}=api"),
        ],
        "idp_clusters": {"keys.example.net": "keys", "api-issuer.example.com": "api-idp"},
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    config_with(base)
}

fn api_provider() -> Provider {
    Provider::from_discovery(
        json!({
            "issuer": API_ISSUER,
            "authorization_endpoint": "https://api-issuer.example.com/auth",
            "token_endpoint": "https://api-issuer.example.com/token",
            "jwks_uri": "https://api-issuer.example.com/jwks",
        })
        .to_string()
        .as_bytes(),
        API_ISSUER,
    )
    .unwrap()
}

/// A world whose extra issuer (fetch index 1) signs with the EC key and RSA key 1.
fn world(cfg: Config) -> World {
    let mut w = World::new(cfg);
    w.others.push((
        api_provider(),
        jwks(&[ec_jwk("api-ec", &ec_key()), rsa_jwk(rsa_key(1))]),
    ));
    w
}

fn access_claims() -> Value {
    json!({"iss": API_ISSUER, "aud": "api", "sub": "client-7", "exp": NOW + 300,
           "iat": NOW - 5, "client_id": "ci", "groups": ["robots"]})
}

fn es256(claims: &Value, header: Value) -> String {
    sign_es256(&ec_key(), &header, claims)
}

fn access_token(claims: &Value) -> String {
    es256(
        claims,
        json!({"alg": "ES256", "kid": "api-ec", "typ": "at+jwt"}),
    )
}

/// An API client's GET: it accepts JSON only.
fn api_get(path: &str) -> Request<'static> {
    let mut r = get(path);
    r.headers = vec![("accept".into(), "application/json".into())];
    r
}

fn with_bearer(token: &str) -> Request<'static> {
    with_header(
        api_get("/api/items"),
        "authorization",
        &format!("Bearer {token}"),
    )
}

fn forwarded_headers(w: &mut World, req: &Request<'static>) -> Vec<(String, String)> {
    match w.request(req) {
        Decision::Continue(f) => forwarded(&w.config.clone(), req, &f),
        Decision::Reply(r) => panic!("refused: {r:?}"),
        _ => panic!("not forwarded"),
    }
}

fn get_header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn refused(w: &mut World, req: &Request<'static>) -> LocalReply {
    reply(w.request(req))
}

fn challenges(r: &LocalReply) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect()
}

fn assert_invalid(r: &LocalReply, why: &str) {
    assert_eq!(
        (r.status, r.reason.code()),
        (401, "bearer_invalid"),
        "{why}: {r:?}"
    );
    let c = challenges(r);
    assert_eq!(c.len(), 1, "{why}");
    assert!(
        c[0].starts_with("Bearer realm=\"oidc-filter\", error=\"invalid_token\""),
        "{why}: {}",
        c[0]
    );
    assert!(header(r, "location").is_none(), "never a redirect");
}

#[test]
fn a_valid_access_token_passes_with_its_identity_and_forged_headers_go() {
    let mut w = world(bearer_config(json!({})));
    let token = access_token(&access_claims());
    let req = with_header(with_bearer(&token), "X-Forwarded-User", "admin");
    let h = forwarded_headers(&mut w, &req);
    assert_eq!(get_header(&h, "x-forwarded-user"), Some("client-7"));
    assert_eq!(get_header(&h, "x-auth-request-user"), Some("client-7"));
    assert_eq!(h.iter().filter(|(k, _)| k == "x-forwarded-user").count(), 1);
    // The token itself goes on to the upstream, as oauth2-proxy passes it.
    assert_eq!(
        get_header(&h, "authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}

#[test]
fn the_providers_own_tokens_pass_with_client_id_as_audience() {
    let mut w = world(bearer_config(json!({})));
    // An ID token of the provider (aud = client_id), as oauth2-proxy takes them.
    let k = rsa_key(0);
    let mut c = claims("n");
    c["sub"] = json!("user-9");
    let t = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
    let h = forwarded_headers(&mut w, &with_bearer(&t));
    assert_eq!(get_header(&h, "x-forwarded-user"), Some("user-9"));
    assert_eq!(
        get_header(&h, "x-forwarded-email"),
        Some("alice@example.com")
    );
    // Another audience of the provider's issuer is not ours.
    c["aud"] = json!("someone-else");
    let t = sign_rs256(k, &json!({"alg": "RS256", "kid": k.kid}), &c);
    assert_invalid(
        &refused(&mut w, &with_bearer(&t)),
        "provider token for another aud",
    );
}

#[test]
fn each_check_refuses_on_its_own() {
    let mut w = world(bearer_config(json!({})));
    let base = access_claims();
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let h = json!({"alg": "ES256", "kid": "api-ec", "typ": "at+jwt"});
    let cases: Vec<(&str, String)> = vec![
        ("expired", access_token(&with("exp", json!(NOW - 61)))),
        ("no exp", access_token(&without("exp"))),
        ("nbf ahead", access_token(&with("nbf", json!(NOW + 120)))),
        ("iat ahead", access_token(&with("iat", json!(NOW + 120)))),
        ("wrong aud", access_token(&with("aud", json!("other")))),
        (
            "aud list without ours",
            access_token(&with("aud", json!(["a", "b"]))),
        ),
        (
            "unknown iss",
            access_token(&with("iss", json!("https://evil.example"))),
        ),
        ("no sub", access_token(&without("sub"))),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"at+jwt"}"#),
                b64(base.to_string().as_bytes())
            ),
        ),
        (
            "HS256 with a guessable key",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"HS256","kid":"api-ec"}"#),
                b64(base.to_string().as_bytes()),
                b64(b"sig")
            ),
        ),
        ("signature of other claims", {
            let good = access_token(&base);
            let other = access_token(&with("sub", json!("admin")));
            let p: Vec<&str> = good.split('.').collect();
            let q: Vec<&str> = other.split('.').collect();
            format!("{}.{}.{}", p[0], q[1], p[2])
        }),
        ("key of another issuer", {
            // Signed by the provider's key 0, which the extra issuer does not hold.
            let k = rsa_key(0);
            let mut hh = h.clone();
            hh["alg"] = json!("RS256");
            hh["kid"] = json!("rsa-1");
            sign_rs256(k, &hh, &base)
        }),
    ];
    for (why, token) in cases {
        assert_invalid(&refused(&mut w, &with_bearer(&token)), why);
    }
    // The same token, well formed, passes: the cases above fail for their one reason.
    forwarded_headers(&mut w, &with_bearer(&access_token(&base)));
}

/// The provider's issuer with another audience (access tokens for an API, as the OP's
/// client-credentials grant issues them): its keys are the provider's, fetched once.
#[test]
fn the_providers_issuer_with_an_api_audience() {
    let cfg = bearer_config(json!({"extra_jwt_issuers": [format!("{ISSUER}=urn:api")]}));
    assert_eq!(cfg.jwt_issuers[0].fetch, 0);
    assert_eq!(cfg.sources().count(), 1, "no second fetch of the same keys");
    let mut w = World::new(cfg);
    let k = rsa_key(0);
    let h = json!({"alg": "RS256", "kid": k.kid, "typ": "at+jwt"});
    let mut c = access_claims();
    c["iss"] = json!(ISSUER);
    c["aud"] = json!("urn:api");
    let got = forwarded_headers(&mut w, &with_bearer(&sign_rs256(k, &h, &c)));
    assert_eq!(get_header(&got, "x-forwarded-user"), Some("client-7"));
    // ID tokens for the client still pass; an audience neither names does not.
    let mut idt = claims("n");
    idt["aud"] = json!(CLIENT_ID);
    forwarded_headers(&mut w, &with_bearer(&sign_rs256(k, &h, &idt)));
    c["aud"] = json!("urn:other");
    assert_invalid(
        &refused(&mut w, &with_bearer(&sign_rs256(k, &h, &c))),
        "neither audience",
    );
}

#[test]
fn typ_and_algorithms_are_enforced_where_configured() {
    let cfg = bearer_config(json!({"extra_jwt_issuers": [{
        "issuer": API_ISSUER, "audiences": ["api"], "typ": "at+jwt",
        "algorithms": ["ES256"], "idp_cluster": "api-idp",
    }]}));
    let mut w = world(cfg);
    let c = access_claims();
    // typ at+jwt and application/at+jwt pass; JWT or none does not.
    forwarded_headers(&mut w, &with_bearer(&access_token(&c)));
    let app = es256(
        &c,
        json!({"alg": "ES256", "kid": "api-ec", "typ": "application/at+jwt"}),
    );
    forwarded_headers(&mut w, &with_bearer(&app));
    for typ in [json!("JWT"), Value::Null] {
        let t = es256(&c, json!({"alg": "ES256", "kid": "api-ec", "typ": typ}));
        assert_invalid(&refused(&mut w, &with_bearer(&t)), "typ");
    }
    // RS256 by a key the issuer holds, but not in its algorithms.
    let k = rsa_key(1);
    let t = sign_rs256(
        k,
        &json!({"alg": "RS256", "kid": k.kid, "typ": "at+jwt"}),
        &c,
    );
    let r = refused(&mut w, &with_bearer(&t));
    assert_invalid(&r, "alg outside the allow-list");
    assert!(challenges(&r)[0].contains("algorithm"), "{r:?}");
}

#[test]
fn without_the_option_or_without_a_jwt_the_session_decides() {
    // Off: a valid token is not a session.
    let mut w = world(config());
    let token = access_token(&access_claims());
    let r = refused(&mut w, &with_bearer(&token));
    assert_eq!((r.status, r.reason.code()), (401, "unauthenticated"));
    assert_eq!(challenges(&r), ["Cookie realm=\"oidc-filter\""]);
    // On, with an opaque token or Basic: the session decides, and the 401 offers Bearer.
    let mut w = world(bearer_config(json!({})));
    for auth in [
        "Bearer opaque-token-123",
        "Basic dXNlcjpwYXNz",
        "Bearer a.b",
    ] {
        let req = with_header(api_get("/api"), "authorization", auth);
        let r = refused(&mut w, &req);
        assert_eq!(
            (r.status, r.reason.code()),
            (401, "unauthenticated"),
            "{auth}"
        );
        assert!(
            challenges(&r).contains(&"Bearer realm=\"oidc-filter\""),
            "{auth}"
        );
    }
    // Two Authorization headers: not ours to pick one.
    let req = with_header(with_bearer(&token), "authorization", "Bearer x.y.z");
    assert_eq!(refused(&mut w, &req).reason.code(), "unauthenticated");
}

#[test]
fn a_browser_with_a_bad_token_is_refused_not_redirected() {
    let mut w = world(bearer_config(json!({})));
    let mut c = access_claims();
    c["exp"] = json!(NOW - 100);
    let req = with_header(
        get("/app"),
        "authorization",
        &format!("Bearer {}", access_token(&c)),
    );
    assert_invalid(&refused(&mut w, &req), "browser");
}

#[test]
fn the_policy_applies_to_tokens_with_insufficient_scope() {
    let cfg = bearer_config(json!({
        "extra_jwt_issuers": [{"issuer": API_ISSUER, "audiences": "api",
            "idp_cluster": "api-idp", "oidc_groups_claim": "scope_groups"}],
        "allowed_groups": ["robots"], "pass_groups": true,
    }));
    let mut w = world(cfg);
    let mut c = access_claims();
    // The issuer's own groups claim is read, not the provider's.
    c["scope_groups"] = json!(["robots", "x"]);
    let h = forwarded_headers(&mut w, &with_bearer(&access_token(&c)));
    assert_eq!(get_header(&h, "x-forwarded-groups"), Some("robots,x"));
    c["scope_groups"] = json!(["humans"]);
    let r = refused(&mut w, &with_bearer(&access_token(&c)));
    assert_eq!((r.status, r.reason.code()), (403, "group_not_allowed"));
    assert_eq!(
        challenges(&r),
        ["Bearer realm=\"oidc-filter\", error=\"insufficient_scope\""]
    );
    // An unverified address is refused like a login's, unless the policy allows it.
    let mut c = access_claims();
    c["scope_groups"] = json!(["robots"]);
    c["email"] = json!("bot@example.com");
    c["email_verified"] = json!(false);
    assert_eq!(
        refused(&mut w, &with_bearer(&access_token(&c)))
            .reason
            .code(),
        "email_unverified"
    );
}

#[test]
fn auth_endpoint_takes_bearer_tokens() {
    let mut w = world(bearer_config(json!({})));
    let token = access_token(&access_claims());
    let mut req = with_bearer(&token);
    req.path = "/oauth2/auth".into();
    let r = refused(&mut w, &req);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(header(&r, "x-auth-request-user"), Some("client-7"));
}

#[test]
fn cache_serves_until_exp_and_stays_bounded() {
    let mut w = world(bearer_config(json!({})));
    let token = access_token(&access_claims());
    for _ in 0..3 {
        forwarded_headers(&mut w, &with_bearer(&token));
    }
    {
        let c = w.bearer.borrow();
        assert_eq!((c.misses, c.hits, c.len()), (1, 2, 1));
    }
    // Past exp (and the leeway) the cached entry no longer serves.
    w.now = NOW + 300 + 61;
    assert_invalid(&refused(&mut w, &with_bearer(&token)), "expired in cache");
    w.now = NOW;
    // Distinct tokens: the cache never holds more than MAX_CACHED.
    for i in 0..MAX_CACHED + 40 {
        let mut c = access_claims();
        c["jti"] = json!(i);
        forwarded_headers(&mut w, &with_bearer(&access_token(&c)));
    }
    assert!(w.bearer.borrow().len() <= MAX_CACHED);
    assert!(w.bearer.borrow().bytes() <= MAX_CACHED_BYTES);
    // A cached token of one provider's host is not one of another's: the key holds both.
}

/// The cache finds a token by its first and last bytes and length, and serves only the very
/// same token: one that differs in the middle alone (its claims) is verified, and refused.
#[test]
fn cache_serves_only_the_exact_token() {
    let mut w = world(bearer_config(json!({})));
    let mut claims = access_claims();
    claims["sub"] = json!("client-7-and-a-long-enough-subject-to-keep-the-ends-apart-0000000000");
    let token = access_token(&claims);
    forwarded_headers(&mut w, &with_bearer(&token));
    assert_eq!(w.bearer.borrow().len(), 1);
    let (head, rest) = token.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    assert!(payload.len() > 100 && head.len() + 1 + payload.len() > 48 + 48);
    // The middle of the payload: another sub, the same length, the same 48 bytes either end.
    let forged_claims = {
        let mut c = claims.clone();
        c["sub"] = json!("client-7-and-a-long-enough-subject-to-keep-the-ends-apart-0000000001");
        c
    };
    let forged_payload = b64(forged_claims.to_string().as_bytes());
    assert_eq!(forged_payload.len(), payload.len());
    let forged = format!("{head}.{forged_payload}.{sig}");
    assert_eq!(forged.len(), token.len());
    assert_eq!(forged[..48], token[..48]);
    assert_eq!(forged[forged.len() - 48..], token[token.len() - 48..]);
    assert_ne!(forged, token);
    assert_invalid(&refused(&mut w, &with_bearer(&forged)), "a forged middle");
    let c = w.bearer.borrow();
    assert_eq!((c.hits, c.misses), (0, 2));
    drop(c);
    // The real one is still served from the cache.
    forwarded_headers(&mut w, &with_bearer(&token));
    assert_eq!(w.bearer.borrow().hits, 1);
}

#[test]
fn config_errors_name_each_field() {
    let parse = |extra: Value| {
        let mut v = json!({"oidc_issuer_url": ISSUER, "client_id": "c", "client_secret": "s",
            "cookie_secret": SECRET_A, "idp_cluster": "idp"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Config::parse(v.to_string().as_bytes(), &|_| None)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };
    let errs = parse(json!({"extra_jwt_issuers": ["https://issuer.example.com/x=api"]}));
    assert!(
        errs.iter()
            .any(|e| e.contains("extra_jwt_issuers: has no effect without")),
        "{errs:?}"
    );
    let errs = parse(
        json!({"skip_jwt_bearer_tokens": true, "extra_jwt_issuers": [
            "no-audience", "https://other.example=aud", 7,
            {"issuer": "https://x.example", "audiences": [], "colour": 1, "algorithms": ["HS256"],
             "typ": "weird"},
        ]}),
    );
    for want in [
        "extra_jwt_issuers[0]: must be \"issuer=audience\"",
        "extra_jwt_issuers[1]: no provider's idp_cluster or idp_clusters reaches \"other.example\"",
        "extra_jwt_issuers[2]: must be",
        "extra_jwt_issuers[3].colour: unknown option",
        "extra_jwt_issuers[3].audiences: must list at least one audience",
        "extra_jwt_issuers[3].algorithms: must list algorithms among",
        "extra_jwt_issuers[3].typ: must be at+jwt",
        "extra_jwt_issuers[3].idp_cluster: is required",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "missing {want:?} in {errs:?}"
        );
    }
    let errs = parse(json!({"skip_jwt_bearer_tokens": true,
        "extra_jwt_issuers": [format!("{ISSUER}/x=api"), format!("{ISSUER}/x=web")]}));
    assert!(
        errs.iter()
            .any(|e| e.contains("extra_jwt_issuers[1]: ") && e.contains("listed already")),
        "{errs:?}"
    );
    // Per host.
    let ok = parse(
        json!({"hosts": [{"host": "api.example.com", "skip_jwt_bearer_tokens": true}],
        "extra_jwt_issuers": [format!("{ISSUER}/other=api")]}),
    );
    assert!(ok.is_empty(), "{ok:?}");
}

fn discovery_of(issuer: &str, jwks: &str) -> Vec<u8> {
    json!({"issuer": issuer, "authorization_endpoint": format!("{issuer}/a"),
           "token_endpoint": format!("{issuer}/t"), "jwks_uri": jwks})
    .to_string()
    .into_bytes()
}

fn ok(body: Vec<u8>) -> Response {
    Response {
        status: Some(200),
        body,
        too_large: false,
    }
}

/// The engine fetches the extra issuer's metadata and keys; a token with a new kid gets 503
/// and a refetch, after which it passes; a forged kid, refetched for already, gets 401.
#[test]
fn engine_fetches_issuer_keys_and_refetches_for_a_new_kid() {
    let mut e = Engine::new(bearer_config(json!({})));
    let mut log = Vec::new();
    let mut token = 0u32;
    let mut keys = vec![ec_jwk("api-ec", &ec_key())];
    let mut answer = |e: &mut Engine, now: u64, keys: &[Value]| {
        let mut seen = Vec::new();
        loop {
            let due = e.poll_fetches(now, &mut log);
            if due.is_empty() {
                return seen;
            }
            for f in due {
                token += 1;
                e.fetch_sent(&f, Ok(token), now, &mut log);
                let url = f.url.clone();
                let body = match (f.kind, url.contains("api-issuer")) {
                    (FetchKind::Discovery, false) => {
                        discovery_of(ISSUER, "https://keys.example.net/jwks.json")
                    }
                    (FetchKind::Discovery, true) => {
                        discovery_of(API_ISSUER, "https://api-issuer.example.com/jwks")
                    }
                    (FetchKind::Jwks, false) => json!({"keys": [rsa_jwk(rsa_key(0))]})
                        .to_string()
                        .into_bytes(),
                    (FetchKind::Jwks, true) => json!({ "keys": keys }).to_string().into_bytes(),
                };
                assert!(e.handle_fetch_response(token, &ok(body), now, &mut log));
                seen.push((f.kind, f.callout.cluster.clone()));
            }
        }
    };
    let seen = answer(&mut e, NOW, &keys);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen.contains(&(FetchKind::Jwks, "api-idp".to_string())),
        "{seen:?}"
    );
    let mut rand = || Some([7u8; 32]);
    let run =
        |e: &mut Engine, req: &Request, now: u64, rand: &mut dyn FnMut() -> Option<[u8; 32]>| {
            Stream::new(1).handle_request(e, req, now, rand)
        };
    let t = access_token(&access_claims());
    assert!(matches!(
        run(&mut e, &with_bearer(&t), NOW, &mut rand),
        Step::Forward(_)
    ));
    // A token by a key published after our fetch.
    let k = rsa_key(1);
    let new = sign_rs256(
        k,
        &json!({"alg": "RS256", "kid": "rotated"}),
        &access_claims(),
    );
    let Step::Reply(r) = run(&mut e, &with_bearer(&new), NOW, &mut rand) else {
        panic!()
    };
    assert_eq!(
        (r.status, r.reason.code()),
        (503, "bearer_key_unknown"),
        "{r:?}"
    );
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let mut jwk = rsa_jwk(k);
    jwk["kid"] = json!("rotated");
    keys.push(jwk);
    let seen = answer(&mut e, NOW + 1, &keys);
    assert_eq!(
        seen,
        [(FetchKind::Jwks, "api-idp".to_string())],
        "one refetch"
    );
    assert!(matches!(
        run(&mut e, &with_bearer(&new), NOW + 1, &mut rand),
        Step::Forward(_)
    ));
    // A forged kid: one refetch, then 401 for REFUSED_KID_SECS without more fetches.
    let forged = sign_rs256(
        k,
        &json!({"alg": "RS256", "kid": "forged"}),
        &access_claims(),
    );
    let Step::Reply(r) = run(&mut e, &with_bearer(&forged), NOW + 10, &mut rand) else {
        panic!()
    };
    assert_eq!(r.reason.code(), "bearer_key_unknown");
    assert_eq!(answer(&mut e, NOW + 10, &keys).len(), 1);
    // The engine marks the kid refused when a login waits for it; a bearer token's kid is
    // marked when the fetch answered without it (see `Engine::handle_fetch_response`).
    let Step::Reply(r) = run(&mut e, &with_bearer(&forged), NOW + 11, &mut rand) else {
        panic!()
    };
    assert_eq!(
        (r.status, r.reason.code()),
        (401, "bearer_invalid"),
        "{r:?}"
    );
    assert!(
        answer(&mut e, NOW + 20, &keys).is_empty(),
        "no fetch for a refused kid"
    );
    let (hits, misses, _) = e.bearer_stats();
    assert!(hits == 0 && misses >= 4, "{hits} {misses}");
}
