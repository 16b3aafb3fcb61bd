//! Writes the seed corpus of every target under filter/fuzz/corpus/ (run from anywhere):
//!
//!     cargo run --manifest-path filter/fuzz/Cargo.toml --example make_seeds
//!
//! Deterministic: the RSA key comes from a seeded generator, the EC key from a fixed scalar
//! (`EC_SCALAR`, the same as in fuzz_targets/token_response.rs). Rerun after changing the
//! cookie format or the fixtures; the targets check at start-up that they still agree.

use std::fs;
use std::path::{Path, PathBuf};

use oidc_filter_core::config::Config;
use oidc_filter_core::headermap;
use oidc_filter_core::session::{flow_cookie_name, LoginFlow, Session};
use oidc_filter_core::util::b64url;
use rand_chacha::rand_core::SeedableRng;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://issuer.example.com";
const NONCE: &str = "n-0S6_WzA2Mj";
const EC_SCALAR: [u8; 32] = *b"oidc-filter fuzz ec-0 scalar 32b";
const SECRET_A: &str = "q83vEjRWeJCrze8SNFZ4kA==";
const SECRET_B: &str = "BjsqLqI3hVQyzn3bvtp9kg==";
const STATE: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn put(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = corpus().join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn mode(m: u8, rest: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = vec![m];
    v.extend_from_slice(rest.as_ref());
    v
}

fn lp(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn cfg() -> Config {
    let json = json!({
        "oidc_issuer_url": ISSUER, "client_id": "app", "client_secret": "x",
        "idp_cluster": "idp", "cookie_secret": [SECRET_A, SECRET_B],
    });
    Config::parse(json.to_string().as_bytes(), &|_| None).unwrap()
}

fn cookies() {
    let c = cfg();
    let scope = c.providers[0].scope("_oauth2_proxy");
    let s = Session {
        expires_at: NOW + 3600,
        issued_at: NOW - 60,
        claims: [
            "248289761001".into(),
            "alice@example.com".into(),
            "alice".into(),
        ],
        groups: vec![],
        attrs: vec![],
        tokens: None,
    };
    put(
        "session_cookie",
        "valid-key-a",
        mode(0, s.encode(&c.keys[0], &scope).unwrap()),
    );
    put(
        "session_cookie",
        "valid-key-b",
        mode(0, s.encode(&c.keys[1], &scope).unwrap()),
    );
    let old = Session {
        expires_at: NOW - 1,
        ..s.clone()
    };
    put(
        "session_cookie",
        "expired",
        mode(0, old.encode(&c.keys[0], &scope).unwrap()),
    );
    let other = c.providers[0].scope("_other");
    put(
        "session_cookie",
        "other-name",
        mode(0, s.encode(&c.keys[0], &other).unwrap()),
    );
    put("session_cookie", "malformed", mode(0, "2.AAAA.AAAA"));
    let mut p = Vec::new();
    p.extend_from_slice(&(NOW + 3600).to_be_bytes());
    p.extend_from_slice(&(NOW - 60).to_be_bytes());
    for f in ["248289761001", "alice@example.com", "alice"] {
        lp(&mut p, f);
    }
    put("session_cookie", "payload-sealed-key-a", mode(1, &p));
    put("session_cookie", "payload-sealed-key-b", mode(3, &p));

    let name = flow_cookie_name(&c.providers[0].cookie_name, STATE).unwrap();
    let fscope = c.providers[0].scope(&name);
    let flow = LoginFlow {
        expires_at: NOW + 600,
        state: STATE.into(),
        return_url: "/reports/2024?tab=q3".into(),
    };
    put(
        "login_cookie",
        "valid-key-a",
        mode(0, flow.encode(&c.keys[0], &fscope).unwrap()),
    );
    put(
        "login_cookie",
        "valid-key-b",
        mode(0, flow.encode(&c.keys[1], &fscope).unwrap()),
    );
    let old = LoginFlow {
        expires_at: NOW,
        ..flow.clone()
    };
    put(
        "login_cookie",
        "expired",
        mode(0, old.encode(&c.keys[0], &fscope).unwrap()),
    );
    // A session cookie where a flow cookie should be: the MAC labels differ.
    put(
        "login_cookie",
        "session-mac",
        mode(0, s.encode(&c.keys[0], &fscope).unwrap()),
    );
    let mut p = Vec::new();
    p.extend_from_slice(&(NOW + 600).to_be_bytes());
    lp(&mut p, STATE);
    lp(&mut p, "https://app.example.com/x");
    put("login_cookie", "payload-sealed-key-a", mode(1, &p));
    put("login_cookie", "payload-sealed-key-b", mode(3, &p));
}

fn return_urls() {
    for (i, raw) in [
        "/dashboard?tab=1#top",
        "app.example.com:8443\nhttps://app.example.com:8443/x",
        "https://sub.trusted.example/p?q=1",
        "https://exact.example:8443/",
        "https://anyport.example:9000/",
        "//evil.example/",
        "/\\evil.example",
        "https://app.example.com@evil.example/",
        "HTTPS://APP.EXAMPLE.COM/%2e%2e/x",
        "[::1]:8080\nhttp://[::1]:8080/",
        "javascript:alert(1)",
    ]
    .iter()
    .enumerate()
    {
        put("return_url", &format!("{i:02}"), raw);
    }
}

fn cookie_headers() {
    for (i, raw) in [
        &b"_oauth2_proxy=2.AAAA.BBBB; theme=dark; _oauth2_proxy_csrf_AAAAAAAAAAAAAAAA=2.x.y"[..],
        b"a=1;b=2; c=\"quoted\" ;  ; flag; =novalue; d==e",
        b"sid,theme\nsid=1; theme=light; lang=en; sid=2",
        b"\t _oauth2_proxy = v \t; x=caf\xe9; y=\xff\xfe",
        b"_oauth2_proxy",
    ]
    .iter()
    .enumerate()
    {
        put("cookie_header", &format!("{i:02}"), raw);
    }
}

fn header_maps() {
    let maps: Vec<Vec<(&[u8], &[u8])>> = vec![
        vec![
            (b":authority", b"app.example.com"),
            (b":path", b"/oauth2/callback?code=abc&state=xyz"),
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b"cookie", b"_oauth2_proxy=2.AAAA.BBBB; theme=dark"),
            (b"accept", b"text/html"),
        ],
        vec![
            (b":path", b"/x"),
            (b"host", b"Example.COM:8080"),
            (b"x-note", b"caf\xe9 \xff"),
            (b"empty", b""),
        ],
        vec![],
    ];
    for (i, m) in maps.iter().enumerate() {
        put(
            "header_map",
            &format!("{i:02}"),
            headermap::serialize(m).unwrap(),
        );
    }
}

fn configs() {
    let configs = [
        json!({"oidc_issuer_url": ISSUER, "client_id": "app", "client_secret": "s3cret",
               "cookie_secret": SECRET_A, "idp_cluster": "idp"}),
        json!({"oidc_issuer_url": "https://login.example.org/tenant/v2.0/", "client_id": "web",
               "client_secret_env": "CLIENT", "cookie_secret_env": "COOKIE",
               "idp_cluster": "outbound|443||login.example.org", "idp_authority": "login.example.org",
               "idp_timeout": "2s", "idp_clusters": {"keys.example.net": "keys"},
               "redirect_url": "https://app.example.com/oauth2/callback",
               "cookie_name": "__Host-sess", "cookie_samesite": "strict", "cookie_expire": "12h",
               "email_domains": ["example.com", ".corp.example"],
               "whitelist_domains": [".example.com", "other.example:8443", "any.example:*"],
               "set_xauthrequest": true, "pass_user_headers": false, "skip_auth_preflight": true,
               "token_endpoint_auth_method": "client_secret_post", "scope": "openid email",
               "proxy_prefix": "/auth", "jwks_refresh_interval": "1h30m"}),
        json!({"oidc_issuer_url": "http://localhost:9000", "client_id": "app", "client_secret": "x",
               "cookie_secret": [SECRET_A, "correct horse battery staple, ok!"], "idp_cluster": "idp",
               "skip_oidc_discovery": true, "login_url": "http://localhost:9000/authorize",
               "redeem_url": "http://localhost:9000/token", "oidc_jwks_url": "http://localhost:9000/jwks",
               "cookie_secure": false, "cookie_domains": [".localhost"], "cookie_path": "/app"}),
        json!({"oidc_issuer_url": "ftp://x", "client_id": "", "cookie_secret": "short",
               "cookie_samesite": "none", "cookie_secure": false, "frobnicate": 1}),
    ];
    for (i, c) in configs.iter().enumerate() {
        put(
            "config",
            &format!("{i:02}.json"),
            serde_json::to_vec_pretty(c).unwrap(),
        );
    }
}

struct Keys {
    rsa: rsa::RsaPrivateKey,
    ec: p256::ecdsa::SigningKey,
}

fn jwk_rsa(k: &rsa::RsaPublicKey, kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
           "n": b64url(&k.n().to_bytes_be()), "e": b64url(&k.e().to_bytes_be())})
}

fn jwk_ec(k: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let p = k.verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
           "x": b64url(p.x().unwrap()), "y": b64url(p.y().unwrap())})
}

fn jwks(k: &Keys) {
    let main = json!({"keys": [jwk_rsa(&k.rsa.to_public_key(), "rsa-0"), jwk_ec(&k.ec, "ec-0")]});
    put(
        "jwks",
        "rsa-and-ec.json",
        serde_json::to_vec_pretty(&main).unwrap(),
    );
    let weak =
        rsa::RsaPrivateKey::new(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1), 1024).unwrap();
    let mixed = json!({"keys": [
        jwk_rsa(&weak.to_public_key(), "weak-1024"),
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "x5c-only", "x5c": ["MIIC"]},
        {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64url(&[1u8; 32]), "y": b64url(&[2u8; 32])},
        {"kty": 3, "kid": []},
        "not an object"
    ]});
    put(
        "jwks",
        "skipped-keys.json",
        serde_json::to_vec_pretty(&mixed).unwrap(),
    );
    put("jwks", "empty.json", br#"{"keys":[]}"#);
}

fn discovery() {
    let good = json!({
        "issuer": ISSUER,
        "authorization_endpoint": "https://issuer.example.com/authorize?tenant=t1",
        "token_endpoint": "https://issuer.example.com/oauth/token",
        "jwks_uri": "https://keys.example.net/jwks.json",
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    });
    put(
        "discovery",
        "good.json",
        serde_json::to_vec_pretty(&good).unwrap(),
    );
    let mut other = good.clone();
    other["issuer"] = "https://issuer.example.com/".into();
    other["jwks_uri"] = "file:///etc/passwd".into();
    put(
        "discovery",
        "wrong.json",
        serde_json::to_vec_pretty(&other).unwrap(),
    );
}

fn claims(nonce: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": "app", "sub": "248289761001",
        "exp": NOW + 300, "iat": NOW - 5, "nonce": nonce,
        "email": "alice@example.com", "email_verified": true, "preferred_username": "alice",
    })
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

fn rs256(k: &Keys, claims: &Value) -> String {
    let input = signing_input(
        &json!({"alg": "RS256", "kid": "rsa-0", "typ": "JWT"}),
        claims,
    );
    let sk = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k.rsa.clone());
    format!("{input}.{}", b64url(&sk.sign(input.as_bytes()).to_vec()))
}

fn es256(k: &Keys, header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let sig: p256::ecdsa::Signature = k.ec.sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

fn body(t: &str) -> Vec<u8> {
    json!({"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": t})
        .to_string()
        .into_bytes()
}

fn tokens(k: &Keys) {
    let c = claims(NONCE);
    put(
        "token_response",
        "rs256-valid",
        mode(0, body(&rs256(k, &c))),
    );
    let h = json!({"alg": "ES256", "kid": "ec-0"});
    put(
        "token_response",
        "es256-valid",
        mode(0, body(&es256(k, &h, &c))),
    );
    put(
        "token_response",
        "es256-no-kid",
        mode(0, body(&es256(k, &json!({"alg": "ES256"}), &c))),
    );
    put(
        "token_response",
        "rs256-bad-nonce",
        mode(0, body(&rs256(k, &claims("other")))),
    );
    let none = format!("{}.", signing_input(&json!({"alg": "none"}), &c));
    put("token_response", "alg-none", mode(0, body(&none)));
    put(
        "token_response",
        "no-id-token",
        mode(0, br#"{"access_token":"at","token_type":"Bearer"}"#),
    );
    put(
        "token_response",
        "error",
        mode(0, br#"{"error":"invalid_grant"}"#),
    );
    // Claims signed by the target itself (mode 1), and header + claims (mode 3).
    put("token_response", "claims-valid", mode(1, c.to_string()));
    let many = json!({"iss": ISSUER, "aud": ["app", "api"], "azp": "app", "sub": "u",
                      "exp": NOW + 60, "iat": NOW, "nbf": NOW - 10, "nonce": NONCE,
                      "email_verified": "true"});
    put(
        "token_response",
        "claims-many-aud",
        mode(1, many.to_string()),
    );
    put(
        "token_response",
        "header-claims-valid",
        mode(3, format!("{h}\n{c}")),
    );
    put(
        "token_response",
        "header-claims-rs256",
        mode(
            3,
            format!("{}\n{c}", json!({"alg": "RS256", "kid": "rsa-0"})),
        ),
    );
}

fn main() {
    let rsa =
        rsa::RsaPrivateKey::new(&mut rand_chacha::ChaCha20Rng::seed_from_u64(100), 2048).unwrap();
    let ec = p256::ecdsa::SigningKey::from_slice(&EC_SCALAR).unwrap();
    let k = Keys { rsa, ec };
    cookies();
    return_urls();
    cookie_headers();
    header_maps();
    configs();
    jwks(&k);
    discovery();
    tokens(&k);
    println!("seeds written under {}", corpus().display());
}
