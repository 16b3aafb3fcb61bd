//! Mints what `make bench` (envoy/bench) needs to drive the filter without a real login:
//! a valid session cookie, a login in progress (state, flow cookie, nonce) and an ID token for
//! that login, signed by an RSA key whose JWKS is printed too. Uses the filter's own code for
//! the cookies and the nonce, so what it prints is exactly what the filter accepts.
//!
//!     cargo run -q -p oidc-filter --example mint-session -- CONFIG.json [--now SECS] [--ttl SECS]
//!
//! CONFIG.json is the plugin configuration; the first cookie secret signs. Prints one JSON
//! object: session_cookie {name, value}, flow {state, cookie_name, cookie_value, nonce},
//! id_token, jwks. Everything expires `--ttl` seconds (default 7200) after `--now` (default:
//! the clock). The RSA key and the state are derived from fixed seeds: two runs with the same
//! arguments print the same values.

use std::error::Error;

use oidc_filter::config::Config;
use oidc_filter::session::{derive_nonce, flow_cookie_name, LoginFlow, Session};
use oidc_filter::util::b64url;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const KID: &str = "bench-rsa-0";

fn usage() -> Box<dyn Error> {
    "usage: mint-session CONFIG.json [--now SECS] [--ttl SECS]".into()
}

fn sign_rs256(key: &rsa::RsaPrivateKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let sig = signer.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", b64url(&sig))
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut file = None;
    let mut now = None;
    let mut ttl = 7200u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--now" => now = Some(args.next().ok_or_else(usage)?.parse::<u64>()?),
            "--ttl" => ttl = args.next().ok_or_else(usage)?.parse::<u64>()?,
            _ if file.is_none() && !a.starts_with("--") => file = Some(a),
            _ => return Err(usage()),
        }
    }
    let file = file.ok_or_else(usage)?;
    let now = match now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    let raw = std::fs::read(&file)?;
    let cfg = Config::parse(&raw, &|_| None).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        lines.join("\n")
    })?;
    let key = cfg.keys.first().ok_or("no cookie secret")?;
    let p = cfg.providers.first().ok_or("no provider")?;
    let name = &p.cookie_name;

    let session = Session {
        expires_at: now + ttl,
        issued_at: now,
        claims: [
            "bench-user-0001".into(),
            "bench.user@example.com".into(),
            "bench.user".into(),
        ],
        groups: vec![],
        attrs: vec![],
        tokens: None,
    };
    let session_value = session
        .encode(key, &p.scope(name))
        .ok_or("session cookie too large")?;

    let mut rng = ChaCha20Rng::seed_from_u64(0xbe7c);
    let mut state_bytes = [0u8; 32];
    rng.fill_bytes(&mut state_bytes);
    let state = b64url(&state_bytes);
    let flow_name = flow_cookie_name(name, &state).ok_or("state too short")?;
    let flow = LoginFlow {
        expires_at: now + ttl,
        state: state.clone(),
        return_url: "/".into(),
    };
    let flow_value = flow
        .encode(key, &p.scope(&flow_name))
        .ok_or("flow cookie too large")?;
    let nonce = derive_nonce(key, &state);

    let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048)?;
    let public = rsa_key.to_public_key();
    let jwks = json!({"keys": [{
        "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
        "n": b64url(&public.n().to_bytes_be()), "e": b64url(&public.e().to_bytes_be()),
    }]});
    let claims = json!({
        "iss": p.issuer, "aud": p.client_id, "azp": p.client_id,
        "sub": session.claims[0], "email": session.claims[1], "email_verified": true,
        "preferred_username": session.claims[2], "name": "Bench User",
        "exp": now + ttl, "iat": now, "auth_time": now, "nonce": nonce,
    });
    let id_token = sign_rs256(
        &rsa_key,
        &json!({"alg": "RS256", "typ": "JWT", "kid": KID}),
        &claims,
    );

    let out = json!({
        "now": now,
        "expires_at": now + ttl,
        "session_cookie": {"name": name, "value": session_value},
        "flow": {
            "state": state,
            "cookie_name": flow_name,
            "cookie_value": flow_value,
            "nonce": nonce,
        },
        "id_token": id_token,
        "jwks": jwks,
    });
    println!("{out}");
    Ok(())
}
