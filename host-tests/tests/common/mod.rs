//! The OpenID provider side of the scenarios, all made here: RSA keys generated in the test,
//! a discovery document and a JWKS served through the fake Envoy's callouts, ID tokens
//! minted and signed (RS256, hand-rolled JWS) with claims each test bends as it needs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use host_tests::{Callout, Headers, Host, HostBuilder, Outcome, Reply, Request};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ISSUER: &str = "https://idp.example.com";
pub const IDP_AUTHORITY: &str = "idp.example.com";
pub const IDP_CLUSTER: &str = "idp";
pub const CLIENT_ID: &str = "app";
/// Needs form-urlencoding in HTTP Basic (RFC 6749 §2.3.1).
pub const CLIENT_SECRET: &str = "s3cr:t&";
pub const COOKIE: &str = "_oauth2_proxy";
pub const SECRET_A: &str = "q83vEjRWeJCrze8SNFZ4kA==";
pub const SECRET_B: &str = "BjsqLqI3hVQyzn3bvtp9kg==";
pub const APP: &str = "app.example.com";

pub fn b64url(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

// ---------------------------------------------------------------- keys

pub struct RsaKey {
    pub kid: String,
    pub key: rsa::RsaPrivateKey,
}

/// Key `n` (kid `key-n`), generated once per test binary from a fixed seed.
pub fn key(n: usize) -> &'static RsaKey {
    static KEYS: [OnceLock<RsaKey>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    KEYS[n].get_or_init(|| RsaKey {
        kid: format!("key-{n}"),
        key: rsa::RsaPrivateKey::new(&mut ChaCha20Rng::seed_from_u64(1000 + n as u64), 2048)
            .expect("RSA key generation"),
    })
}

pub fn jwk(k: &RsaKey) -> Value {
    let pk = k.key.to_public_key();
    json!({"kty": "RSA", "kid": k.kid, "use": "sig", "alg": "RS256",
           "n": b64url(&pk.n().to_bytes_be()), "e": b64url(&pk.e().to_bytes_be())})
}

pub fn jwks(keys: &[&RsaKey]) -> String {
    json!({ "keys": keys.iter().map(|k| jwk(k)).collect::<Vec<_>>() }).to_string()
}

pub fn discovery() -> String {
    json!({
        "issuer": ISSUER,
        "authorization_endpoint": format!("{ISSUER}/authorize"),
        "token_endpoint": format!("{ISSUER}/token"),
        "jwks_uri": format!("{ISSUER}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string()
}

// ---------------------------------------------------------------- tokens

/// A compact JWS over `header` and `claims`, RS256 with `k`.
pub fn sign(k: &RsaKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sk = rsa::pkcs1v15::SigningKey::<Sha256>::new(k.key.clone());
    let sig = sk.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", b64url(&sig))
}

pub fn header_for(k: &RsaKey) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": k.kid})
}

/// Claims of a good ID token issued at `now` for `nonce`.
pub fn claims(now: u64, nonce: &str) -> Value {
    json!({
        "iss": ISSUER,
        "sub": "user-123",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": nonce,
        "email": "alice@example.com",
        "email_verified": true,
        "preferred_username": "alice",
    })
}

pub fn id_token(k: &RsaKey, claims: &Value) -> String {
    sign(k, &header_for(k), claims)
}

pub fn token_response(id_token: &str) -> String {
    json!({
        "access_token": "at-opaque",
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
    })
    .to_string()
}

/// A token response with a good ID token (key 0) issued at `now` for `nonce`.
pub fn good_token(now: u64, nonce: &str) -> String {
    token_response(&id_token(key(0), &claims(now, nonce)))
}

// ---------------------------------------------------------------- config and start

/// The plugin configuration with `extra` merged in (a `null` value removes a key).
pub fn config(extra: Value) -> String {
    let mut v = json!({
        "oidc_issuer_url": ISSUER,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "cookie_secret": SECRET_A,
        "idp_cluster": IDP_CLUSTER,
    });
    for (k, val) in extra.as_object().expect("extra is an object") {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    v.to_string()
}

pub fn builder() -> HostBuilder {
    Host::builder().clusters(&[IDP_CLUSTER])
}

/// A started host whose discovery and JWKS (with `keys`) are answered: ready for logins.
pub fn ready_host_with(b: HostBuilder, cfg: &str, keys: &[&RsaKey]) -> Host {
    let mut host = b
        .start(cfg)
        .unwrap_or_else(|e| panic!("plugin did not start: {e}"));
    serve_discovery_and_jwks(&mut host, keys);
    host
}

pub fn ready_host(extra: Value) -> Host {
    ready_host_with(builder(), &config(extra), &[key(0)])
}

/// Answers the pending discovery callout, then the JWKS callout it leads to.
pub fn serve_discovery_and_jwks(host: &mut Host, keys: &[&RsaKey]) {
    let d = only_callout(host, "/.well-known/openid-configuration");
    host.respond(
        d.token,
        200,
        &[("content-type", "application/json")],
        discovery(),
    );
    let j = only_callout(host, "/jwks");
    host.respond(
        j.token,
        200,
        &[("content-type", "application/json")],
        jwks(keys),
    );
    assert!(
        host.pending_callouts().is_empty(),
        "nothing else pending once ready: {:#?}",
        host.pending_callouts()
    );
}

/// Answers every pending callout of a refresh: the JWKS with `keys`, the rest with the
/// discovery document.
pub fn serve_refresh(host: &mut Host, keys: &[&RsaKey]) {
    for c in host.pending_callouts() {
        let body = if c.path() == "/jwks" {
            jwks(keys)
        } else {
            discovery()
        };
        host.respond(c.token, 200, &[], body);
    }
}

/// The single pending callout, which must be a GET of `path` to the IdP.
#[track_caller]
pub fn only_callout(host: &Host, path: &str) -> Callout {
    let pending = host.pending_callouts();
    assert_eq!(
        pending.len(),
        1,
        "expected one callout (GET {path}), got {pending:#?}"
    );
    let c = pending.into_iter().next().unwrap();
    assert_eq!(c.cluster, IDP_CLUSTER);
    assert_eq!(c.method(), "GET");
    assert_eq!(c.path(), path);
    assert_eq!(c.authority(), IDP_AUTHORITY);
    c
}

// ---------------------------------------------------------------- outcomes

/// A browser navigation (what `is_navigation` accepts).
pub fn browser(path: &str) -> Request {
    Request::get(path)
        .header("accept", "text/html,application/xhtml+xml")
        .header("sec-fetch-mode", "navigate")
}

/// The `x-oidc-filter-reason` of a local reply.
pub fn reason(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Replied { headers, .. } => headers.get("x-oidc-filter-reason").map(String::from),
        _ => None,
    }
}

/// Asserts a local reply with `status` and reason `code`; the body names the code.
#[track_caller]
pub fn assert_reply(o: Outcome, status: u32, code: &str) -> Reply {
    let r = o.expect_reply();
    assert_eq!(
        (r.status, r.header("x-oidc-filter-reason")),
        (status, Some(code)),
        "reply: {r:#?}"
    );
    if r.status != 302 {
        assert!(
            r.body_str().contains(code),
            "body names the code: {:?}",
            r.body_str()
        );
    }
    r
}

#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub attrs: Vec<String>,
}

impl SetCookie {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find_map(|a| {
            let (k, v) = a.split_once('=').unwrap_or((a.as_str(), ""));
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
    pub fn has(&self, flag: &str) -> bool {
        self.attrs
            .iter()
            .any(|a| a.trim().eq_ignore_ascii_case(flag))
    }
}

pub fn set_cookies(h: &Headers) -> Vec<SetCookie> {
    h.get_all("set-cookie")
        .into_iter()
        .map(|sc| {
            let mut parts = sc.split(';');
            let (name, value) = parts.next().unwrap().split_once('=').unwrap();
            SetCookie {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                attrs: parts.map(|p| p.trim().to_string()).collect(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------- a login

#[derive(Debug, Clone)]
pub struct Login {
    pub location: url::Url,
    pub state: String,
    pub nonce: String,
    pub code_challenge: String,
    pub redirect_uri: String,
    pub flow_cookie: SetCookie,
}

pub fn query(u: &url::Url, name: &str) -> Option<String> {
    u.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Sends a browser to `path`, expects the redirect to the authorization endpoint, and
/// checks its parameters and the flow cookie.
#[track_caller]
pub fn begin_login(host: &mut Host, req: Request) -> Login {
    let r = host.request(req).expect_reply();
    assert_eq!(r.status, 302, "login redirect: {r:#?}");
    let location = url::Url::parse(r.header("location").expect("Location")).unwrap();
    assert_eq!(
        format!(
            "{}://{}{}",
            location.scheme(),
            location.authority(),
            location.path()
        ),
        format!("{ISSUER}/authorize")
    );
    let q = |n: &str| query(&location, n).unwrap_or_else(|| panic!("{n} in {location}"));
    assert_eq!(q("response_type"), "code");
    assert_eq!(q("client_id"), CLIENT_ID);
    assert_eq!(q("scope"), "openid email profile");
    assert_eq!(q("code_challenge_method"), "S256");
    let state = q("state");
    let nonce = q("nonce");
    let code_challenge = q("code_challenge");
    assert!(state.len() >= 32, "state has 256 bits: {state}");
    assert!(nonce.len() >= 22, "nonce: {nonce}");
    assert_eq!(
        code_challenge.len(),
        43,
        "S256 challenge is 32 bytes base64url"
    );
    assert_ne!(state, nonce);
    let cookies = set_cookies(&r.headers);
    assert_eq!(cookies.len(), 1, "one flow cookie: {cookies:#?}");
    let flow_cookie = cookies[0].clone();
    assert_eq!(flow_cookie.name, format!("{COOKIE}_csrf_{}", &state[..16]));
    assert_eq!(flow_cookie.attr("Path"), Some("/"));
    assert_eq!(flow_cookie.attr("Max-Age"), Some("600"));
    assert!(
        flow_cookie.has("HttpOnly") && flow_cookie.has("Secure"),
        "{flow_cookie:?}"
    );
    assert_eq!(flow_cookie.attr("SameSite"), Some("Lax"));
    Login {
        redirect_uri: q("redirect_uri"),
        location,
        state,
        nonce,
        code_challenge,
        flow_cookie,
    }
}

/// The browser comes back to the callback with `code`, the state and the flow cookie.
pub fn callback_request(login: &Login, code: &str) -> Request {
    let mut u = url::Url::parse(&login.redirect_uri).unwrap();
    u.query_pairs_mut()
        .append_pair("code", code)
        .append_pair("state", &login.state)
        .append_pair("iss", ISSUER);
    Request::get_url(u.as_str())
        .header("accept", "text/html")
        .cookie(&login.flow_cookie.name, &login.flow_cookie.value)
}

/// Sends the callback of `login` with `code`; expects it paused on callouts (the token
/// request), which it returns.
#[track_caller]
pub fn callback_paused(host: &mut Host, login: &Login, code: &str) -> Vec<Callout> {
    host.request(callback_request(login, code)).expect_paused()
}

/// Checks the token request (RFC 6749 §4.1.3 + PKCE) and returns it.
#[track_caller]
pub fn check_token_request(c: &Callout, login: &Login, code: &str) {
    assert_eq!(c.cluster, IDP_CLUSTER);
    assert_eq!(c.method(), "POST");
    assert_eq!(c.path(), "/token");
    assert_eq!(c.authority(), IDP_AUTHORITY);
    assert_eq!(
        c.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let creds = STANDARD.encode(b"app:s3cr%3At%26");
    assert_eq!(
        c.header("authorization"),
        Some(format!("Basic {creds}").as_str())
    );
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&c.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let f = |n: &str| {
        form.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{n} in token request {form:?}"))
    };
    assert_eq!(f("grant_type"), "authorization_code");
    assert_eq!(f("code"), code);
    assert_eq!(f("redirect_uri"), login.redirect_uri);
    let verifier = f("code_verifier");
    assert!(
        (43..=128).contains(&verifier.len()),
        "RFC 7636 §4.1 verifier length"
    );
    assert_eq!(
        b64url(&Sha256::digest(verifier.as_bytes())),
        login.code_challenge,
        "RFC 7636 §4.6: S256(code_verifier) == code_challenge"
    );
    assert!(
        !form.iter().any(|(k, _)| k == "client_secret"),
        "secret only in Basic"
    );
}

/// Browser → redirect → callback → token request answered with `body` (status `status`).
/// Returns the login and the outcome of the callback.
pub fn login_with_response(
    host: &mut Host,
    path: &str,
    status: u32,
    body: impl Fn(&Login, u64) -> String,
) -> (Login, Outcome) {
    let login = begin_login(host, browser(path));
    let callouts = callback_paused(host, &login, "code-1");
    assert_eq!(callouts.len(), 1, "one token request: {callouts:#?}");
    check_token_request(&callouts[0], &login, "code-1");
    let now = host.now_secs();
    let out = host.respond(
        callouts[0].token,
        status,
        &[("content-type", "application/json")],
        body(&login, now),
    );
    (login, out)
}

/// A full login with a good ID token; returns the session cookie (name, value).
pub fn login(host: &mut Host) -> (String, String) {
    let (_, out) = login_with_response(host, "/app", 200, |l, now| good_token(now, &l.nonce));
    let r = out.expect_reply();
    assert_eq!(r.status, 302, "login complete: {r:#?}");
    assert_eq!(r.header("location"), Some("/app"));
    let c = set_cookies(&r.headers)
        .into_iter()
        .find(|c| c.name == COOKIE)
        .expect("session cookie");
    (c.name, c.value)
}
