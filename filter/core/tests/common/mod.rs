//! Test fixtures: a provider with keys made here, ID tokens minted here, fixed time and
//! seeded randomness.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oidc_filter_core::config::Config;
use oidc_filter_core::flow::{self, Ctx, Decision, Idp, LocalReply, PendingLogin, TokenOutcome};
use oidc_filter_core::http::Request;
use oidc_filter_core::oidc::{KeySet, Provider};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

pub const NOW: u64 = 1_800_000_000;
pub const ISSUER: &str = "https://issuer.example.com";
pub const CLIENT_ID: &str = "app";
pub const SECRET_A: &str = "q83vEjRWeJCrze8SNFZ4kA==";
pub const SECRET_B: &str = "BjsqLqI3hVQyzn3bvtp9kg==";

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub struct RsaKey {
    pub kid: String,
    pub key: rsa::RsaPrivateKey,
}

/// RSA keys are slow to make: each test binary makes these two once.
pub fn rsa_key(n: usize) -> &'static RsaKey {
    static KEYS: OnceLock<Vec<RsaKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        (0..2)
            .map(|i| RsaKey {
                kid: format!("rsa-{i}"),
                key: rsa::RsaPrivateKey::new(&mut rng(100 + i as u64), 2048).unwrap(),
            })
            .collect()
    });
    &keys[n]
}

pub fn ec_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::random(&mut rng(7))
}

pub fn rsa_jwk(k: &RsaKey) -> Value {
    let pk = k.key.to_public_key();
    json!({"kty": "RSA", "kid": k.kid, "use": "sig", "alg": "RS256",
           "n": b64(&pk.n().to_bytes_be()), "e": b64(&pk.e().to_bytes_be())})
}

pub fn ec_jwk(kid: &str, k: &p256::ecdsa::SigningKey) -> Value {
    let p = k.verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
           "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())})
}

pub fn jwks(keys: &[Value]) -> KeySet {
    KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
}

pub fn default_jwks() -> KeySet {
    jwks(&[rsa_jwk(rsa_key(0)), ec_jwk("ec-0", &ec_key())])
}

pub fn provider() -> Provider {
    Provider::from_discovery(
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://issuer.example.com/authorize?tenant=t1",
            "token_endpoint": "https://issuer.example.com/oauth/token",
            "jwks_uri": "https://keys.example.net/jwks.json",
        })
        .to_string()
        .as_bytes(),
        ISSUER,
    )
    .unwrap()
}

pub fn config_with(extra: Value) -> Config {
    let mut v = json!({
        "oidc_issuer_url": ISSUER,
        "client_id": CLIENT_ID,
        "client_secret": "s3cr:t&",
        "cookie_secret": SECRET_A,
        "idp_cluster": "idp",
        "idp_clusters": {"keys.example.net": "keys"},
        "set_xauthrequest": true,
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    Config::parse(v.to_string().as_bytes(), &|_| None).unwrap()
}

pub fn config() -> Config {
    config_with(json!({}))
}

pub fn sign_rs256(k: &RsaKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sk = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k.key.clone());
    let sig = sk.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", b64(&sig))
}

pub fn sign_es256(k: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = k.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

pub fn claims(nonce: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": CLIENT_ID, "sub": "user-1",
        "exp": NOW + 300, "iat": NOW - 5, "nonce": nonce,
        "email": "alice@example.com", "email_verified": true,
        "preferred_username": "alice",
    })
}

pub fn id_token(nonce: &str) -> String {
    let k = rsa_key(0);
    sign_rs256(
        k,
        &json!({"alg": "RS256", "kid": k.kid, "typ": "JWT"}),
        &claims(nonce),
    )
}

pub fn token_body(id_token: &str) -> Vec<u8> {
    json!({"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": id_token})
        .to_string()
        .into_bytes()
}

/// The header map the proxy holds after `f` is applied to `req`'s, as Envoy carries out each
/// operation (names compared case-insensitively; `replace` drops all, then appends).
pub fn forwarded(cfg: &Config, req: &Request<'_>, f: &flow::Forward) -> Vec<(String, String)> {
    let mut raw: Vec<(&[u8], &[u8])> = vec![
        (b":method", req.method.as_bytes()),
        (b":path", req.path.as_bytes()),
    ];
    for (k, v) in &req.headers {
        raw.push((k.as_bytes(), v.as_bytes()));
    }
    let mut map: Vec<(Vec<u8>, Vec<u8>)> =
        raw.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    for op in flow::header_ops(cfg, &raw, f) {
        match op {
            flow::HeaderOp::Remove(k) => map.retain(|(n, _)| !n.eq_ignore_ascii_case(k)),
            flow::HeaderOp::Replace(k, v) => {
                map.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
                map.push((k.to_ascii_lowercase(), v.to_vec()));
            }
            flow::HeaderOp::Add(k, v) => map.push((k.to_ascii_lowercase(), v.to_vec())),
        }
    }
    map.into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

/// `req`'s headers as the host's header map gives them (names and values as bytes).
pub fn raw_pairs<'r>(req: &'r Request<'_>) -> Vec<(&'r [u8], &'r [u8])> {
    req.headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect()
}

/// A request as Envoy presents it.
pub fn get(path: &str) -> Request<'static> {
    Request {
        method: "GET".into(),
        scheme: "https".into(),
        authority: "app.example.com".into(),
        path: path.to_string().into(),
        headers: vec![("accept".into(), "text/html,application/xhtml+xml".into())],
        body_follows: false,
    }
}

pub fn with_header(mut r: Request<'static>, k: &str, v: &str) -> Request<'static> {
    r.headers.push((k.to_string().into(), v.to_string().into()));
    r
}

pub fn with_cookies(r: Request<'static>, cookies: &[(String, String)]) -> Request<'static> {
    let v: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    with_header(r, "cookie", &v.join("; "))
}

pub struct World {
    pub config: Config,
    pub provider: Provider,
    pub keys: KeySet,
    pub now: u64,
    pub rng: ChaCha20Rng,
    pub ready: bool,
    /// Providers after the first (a config with several), then extra JWT issuers, each ready.
    pub others: Vec<(Provider, KeySet)>,
    pub bearer: std::cell::RefCell<oidc_filter_core::bearer::BearerCache>,
    /// The VM's cache of verified session cookies: off unless a test turns it on, since
    /// tests change `config` under one World and a cache belongs to one configuration.
    pub verified: Option<std::cell::RefCell<oidc_filter_core::verified::VerifiedSessions>>,
}

impl flow::Idps for World {
    fn idp(&self, i: usize) -> Option<Idp<'_>> {
        if i == 0 {
            return self.ready.then_some(Idp {
                provider: &self.provider,
                keys: &self.keys,
            });
        }
        let (provider, keys) = self.others.get(i - 1)?;
        Some(Idp { provider, keys })
    }
}

impl World {
    pub fn new(config: Config) -> Self {
        World {
            config,
            provider: provider(),
            keys: default_jwks(),
            now: NOW,
            rng: rng(1),
            ready: true,
            others: Vec::new(),
            bearer: Default::default(),
            verified: None,
        }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            config: &self.config,
            idps: self,
            now: self.now,
            bearer: Some(&self.bearer),
            sessions: self.verified.as_ref(),
        }
    }

    pub fn request(&mut self, req: &Request) -> Decision {
        let mut rng = self.rng.clone();
        let mut random = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            Some(b)
        };
        let d = flow::on_request(&self.ctx(), req, &mut random);
        self.rng = rng;
        d
    }

    pub fn token_response(
        &self,
        pending: &PendingLogin,
        status: Option<u32>,
        body: &[u8],
        may_refetch: bool,
    ) -> TokenOutcome {
        flow::on_token_response(&self.ctx(), pending, status, body, may_refetch)
    }
}

pub fn reply(d: Decision) -> LocalReply {
    match d {
        Decision::Reply(r) => r,
        other => panic!("expected a local reply, got {other:?}"),
    }
}

pub fn header<'a>(r: &'a LocalReply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub fn set_cookies(r: &LocalReply) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// name=value of a Set-Cookie line.
pub fn cookie_pair(set_cookie: &str) -> (String, String) {
    let first = set_cookie.split(';').next().unwrap();
    let (k, v) = first.split_once('=').unwrap();
    (k.to_string(), v.to_string())
}

pub fn query(url: &str) -> Vec<(String, String)> {
    let u = url::Url::parse(url).unwrap();
    u.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param(pairs: &[(String, String)], name: &str) -> String {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Starts a login for `path` and returns (authorization URL, flow cookie).
pub fn start_login(w: &mut World, path: &str) -> (String, (String, String)) {
    let r = reply(w.request(&get(path)));
    assert_eq!(r.status, 302, "{r:?}");
    let loc = header(&r, "location").unwrap().to_string();
    // Clears of stale login cookies come first; the new one is last.
    let c = cookie_pair(set_cookies(&r).last().unwrap());
    (loc, c)
}

/// The callback for a login, carrying the flow cookie.
pub fn callback_request(auth_url: &str, flow_cookie: &(String, String)) -> Request<'static> {
    let q = query(auth_url);
    let state = param(&q, "state");
    with_cookies(
        get(&format!("/oauth2/callback?code=the-code&state={state}")),
        std::slice::from_ref(flow_cookie),
    )
}

/// Runs a whole login and returns the session cookie.
pub fn login(w: &mut World, path: &str) -> (String, String) {
    let (auth, flow) = start_login(w, path);
    let nonce = param(&query(&auth), "nonce");
    let Decision::ExchangeCode { pending, .. } = w.request(&callback_request(&auth, &flow)) else {
        panic!("no code exchange");
    };
    match w.token_response(&pending, Some(200), &token_body(&id_token(&nonce)), true) {
        TokenOutcome::Reply(r) => {
            assert_eq!(r.status, 302, "{r:?}");
            cookie_pair(set_cookies(&r)[0])
        }
        other => panic!("{other:?}"),
    }
}

/// What reaches the upstream for `req` (it must be forwarded).
pub fn upstream(w: &mut World, req: &Request<'static>) -> Vec<(String, String)> {
    let Decision::Continue(f) = w.request(req) else {
        panic!("not forwarded: {req:?}")
    };
    let cfg = w.config.clone();
    forwarded(&cfg, req, &f)
}

/// The values of header `name` in `h`.
pub fn values<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}
