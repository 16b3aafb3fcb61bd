//! Mints what `make bench` (envoy/bench) needs to drive the filter without a real login:
//! a valid session cookie, a login in progress (state, flow cookie, nonce) and an ID token for
//! that login, signed by an RSA key whose JWKS is printed too. Uses the filter's own code for
//! the cookies and the nonce, so what it prints is exactly what the filter accepts.
//!
//!     cargo run -q -p oidc-filter --example mint-session -- CONFIG.json [--now SECS] [--ttl SECS]
//!         [--bearer N [--bearer-aud AUD]] [--groups N] [--chunked [--access-bytes N]]
//!         [--refresh N [--refresh-offset K] [--refresh-age SECS]]
//!         [--flows N [--flow-offset K]] [--threads N] [--skip-base]
//!
//! CONFIG.json is the plugin configuration; the first cookie secret signs. Prints one JSON
//! object: session_cookie {name, value}, flow {state, cookie_name, cookie_value, nonce},
//! id_token, jwks, and for each option asked for:
//! - `--bearer N`: `bearer` {audience, sub, tokens}: N distinct RS256 access tokens (JWTs for
//!   `skip_jwt_bearer_tokens` with an `extra_jwt_issuers` entry `<issuer>=<AUD>`, default
//!   audience `urn:bench-api`), each with its own `jti`.
//! - `--groups N`: `groups_session` {groups, cookie, denied_cookie}: a session carrying N
//!   groups `team-00` … (the rule `allowed_groups: ["team-07"]` lets it in), and one carrying
//!   N groups none of which is `team-07` or `admins`.
//! - `--chunked`: `chunked_session` {cookies [{name, value}], access_token, id_token}: a
//!   sealed session (format 3) holding the ID token and an access token of `--access-bytes`
//!   bytes (default 7000), as `pass_access_token` + `pass_authorization_header` keep them;
//!   that size spans three chunk cookies.
//! - `--refresh N`: `refresh` {sessions, token_response, refresh_id_token}: N sealed sessions
//!   (values of the session cookie), numbered from `--refresh-offset`, each with a refresh
//!   token of its own and tokens `--refresh-age` seconds old (default 7200: due for any
//!   `cookie_refresh` below that); and a token endpoint answer to a refresh (a new access and
//!   refresh token, `expires_in`, an ID token for the same `sub` without a nonce).
//! - `--flows N`: `flows` [{state, cookie_name, cookie_value, code, token_response}]: N logins
//!   in progress, numbered from `--flow-offset` (state and code derived from the number: two
//!   runs with the same numbers print the same logins), each with the token endpoint's answer
//!   to its code: an ID token carrying that login's nonce. Signing costs about a millisecond
//!   per token; `--threads` (default 2) sign in parallel.
//!
//! `--skip-base` leaves out the session cookie, the flow and the ID token (not the JWKS).
//!
//! Everything expires `--ttl` seconds (default 7200) after `--now` (default: the clock). The
//! RSA key and the states are derived from fixed seeds: two runs with the same arguments print
//! the same values.

use std::error::Error;

use oidc_filter::config::{Config, KeySet, ProviderConfig};
use oidc_filter::session::{derive_nonce, flow_cookie_name, LoginFlow, Session, Tokens};
use oidc_filter::util::b64url;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const KID: &str = "bench-rsa-0";
const USAGE: &str = "usage: mint-session CONFIG.json [--now SECS] [--ttl SECS] \
    [--bearer N [--bearer-aud AUD]] [--groups N] [--chunked [--access-bytes N]] \
    [--refresh N [--refresh-offset K] [--refresh-age SECS]] [--flows N [--flow-offset K]] \
    [--threads N] [--skip-base]";

fn usage() -> Box<dyn Error> {
    USAGE.into()
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

/// `f(i)` for `i` in `range`, on `threads` threads, in order.
fn par_map<T: Send>(
    range: std::ops::Range<u64>,
    threads: usize,
    f: &(dyn Fn(u64) -> T + Sync),
) -> Result<Vec<T>, Box<dyn Error>> {
    let items: Vec<u64> = range.collect();
    let per = items.len().div_ceil(threads.max(1)).max(1);
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| s.spawn(move || chunk.iter().map(|&i| f(i)).collect::<Vec<T>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a minting thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(parts.into_iter().flatten().collect())
}

#[derive(Default)]
struct Opts {
    file: Option<String>,
    now: Option<u64>,
    ttl: u64,
    bearer: u64,
    bearer_aud: String,
    groups: usize,
    chunked: bool,
    access_bytes: usize,
    refresh: u64,
    refresh_offset: u64,
    refresh_age: u64,
    flows: u64,
    flow_offset: u64,
    threads: usize,
    skip_base: bool,
}

fn parse_args() -> Result<Opts, Box<dyn Error>> {
    let mut o = Opts {
        ttl: 7200,
        bearer_aud: "urn:bench-api".into(),
        access_bytes: 7000,
        refresh_age: 7200,
        threads: 2,
        ..Opts::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> Result<u64, Box<dyn Error>> {
            Ok(args.next().ok_or_else(usage)?.parse::<u64>()?)
        };
        match a.as_str() {
            "--now" => o.now = Some(num()?),
            "--ttl" => o.ttl = num()?,
            "--bearer" => o.bearer = num()?,
            "--groups" => o.groups = usize::try_from(num()?)?,
            "--access-bytes" => o.access_bytes = usize::try_from(num()?)?,
            "--refresh" => o.refresh = num()?,
            "--refresh-offset" => o.refresh_offset = num()?,
            "--refresh-age" => o.refresh_age = num()?,
            "--flows" => o.flows = num()?,
            "--flow-offset" => o.flow_offset = num()?,
            "--threads" => o.threads = usize::try_from(num()?)?.max(1),
            "--bearer-aud" => o.bearer_aud = args.next().ok_or_else(usage)?,
            "--chunked" => o.chunked = true,
            "--skip-base" => o.skip_base = true,
            _ if o.file.is_none() && !a.starts_with("--") => o.file = Some(a),
            _ => return Err(usage()),
        }
    }
    Ok(o)
}

/// The identity every minted session and ID token is for.
const SUB: &str = "bench-user-0001";
const EMAIL: &str = "bench.user@example.com";
const USERNAME: &str = "bench.user";

fn session(now: u64, ttl: u64) -> Session {
    Session {
        expires_at: now + ttl,
        issued_at: now,
        claims: [SUB.into(), EMAIL.into(), USERNAME.into()],
        groups: vec![],
        attrs: vec![],
        tokens: None,
    }
}

/// Claims of an ID token for `SUB` from provider `p`, with `nonce` (none when empty).
fn id_claims(p: &ProviderConfig, now: u64, ttl: u64, nonce: &str) -> Value {
    let mut c = json!({
        "iss": p.issuer, "aud": p.client_id, "azp": p.client_id,
        "sub": SUB, "email": EMAIL, "email_verified": true,
        "preferred_username": USERNAME, "name": "Bench User",
        "exp": now + ttl, "iat": now, "auth_time": now,
    });
    if !nonce.is_empty() {
        c["nonce"] = json!(nonce);
    }
    c
}

/// A login in progress: its state (32 bytes from `rng`), flow cookie and nonce.
fn login(
    key: &KeySet,
    p: &ProviderConfig,
    rng: &mut ChaCha20Rng,
    expires_at: u64,
) -> Result<(String, String, String, String), Box<dyn Error>> {
    let name = &p.cookie_name;
    let mut state_bytes = [0u8; 32];
    rng.fill_bytes(&mut state_bytes);
    let state = b64url(&state_bytes);
    let flow_name = flow_cookie_name(name, &state).ok_or("state too short")?;
    let flow = LoginFlow {
        expires_at,
        state: state.clone(),
        return_url: "/".into(),
    };
    let flow_value = flow
        .encode(key, &p.scope(&flow_name))
        .ok_or("flow cookie too large")?;
    let nonce = derive_nonce(key, &state);
    Ok((state, flow_name, flow_value, nonce))
}

fn main() -> Result<(), Box<dyn Error>> {
    let o = parse_args()?;
    let file = o.file.clone().ok_or_else(usage)?;
    let ttl = o.ttl;
    let now = match o.now {
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
    let scope = p.scope(name);

    let base = session(now, ttl);
    let session_value = base.encode(key, &scope).ok_or("session cookie too large")?;

    let mut rng = ChaCha20Rng::seed_from_u64(0xbe7c);
    let (state, flow_name, flow_value, nonce) = login(key, p, &mut rng, now + ttl)?;

    let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048)?;
    let public = rsa_key.to_public_key();
    let jwks = json!({"keys": [{
        "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
        "n": b64url(&public.n().to_bytes_be()), "e": b64url(&public.e().to_bytes_be()),
    }]});
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
    let sign = |claims: &Value| sign_rs256(&rsa_key, &header, claims);

    let mut out = json!({"now": now, "expires_at": now + ttl, "jwks": jwks});
    let id_token = if o.skip_base && !o.chunked {
        String::new()
    } else {
        sign(&id_claims(p, now, ttl, &nonce))
    };
    if !o.skip_base {
        out["session_cookie"] = json!({"name": name, "value": session_value});
        out["flow"] = json!({
            "state": state,
            "cookie_name": flow_name,
            "cookie_value": flow_value,
            "nonce": nonce,
        });
        out["id_token"] = json!(id_token);
    }

    if o.bearer > 0 {
        let api_sub = "bench-api-client";
        let at_header = json!({"alg": "RS256", "typ": "at+jwt", "kid": KID});
        let tokens = par_map(0..o.bearer, o.threads, &|i| {
            let claims = json!({
                "iss": p.issuer, "aud": o.bearer_aud, "sub": api_sub,
                "email": "bench.api@example.com", "email_verified": true,
                "preferred_username": "bench.api", "client_id": "bench-api-caller",
                "scope": "orders:read", "exp": now + ttl, "iat": now, "jti": format!("bench-jti-{i:06}"),
            });
            sign_rs256(&rsa_key, &at_header, &claims)
        })?;
        out["bearer"] = json!({"audience": o.bearer_aud, "sub": api_sub, "tokens": tokens});
    }

    if o.groups > 0 {
        let with = |groups: Vec<String>| -> Result<String, Box<dyn Error>> {
            let s = Session {
                groups,
                ..session(now, ttl)
            };
            Ok(s.encode(key, &scope)
                .ok_or("session with groups too large")?)
        };
        let groups: Vec<String> = (0..o.groups).map(|i| format!("team-{i:02}")).collect();
        let others: Vec<String> = (0..o.groups).map(|i| format!("guild-{i:02}")).collect();
        out["groups_session"] = json!({
            "groups": groups,
            "cookie": {"name": name, "value": with(groups.clone())?},
            "denied_cookie": {"name": name, "value": with(others)?},
        });
    }

    if o.chunked {
        let access_token = "t".repeat(o.access_bytes);
        let s = Session {
            tokens: Some(Tokens {
                id_token: id_token.clone(),
                access_token: access_token.clone(),
                refresh_token: String::new(),
                access_expires_at: now + ttl,
                refreshed_at: now,
                seen_at: now,
            }),
            ..session(now, ttl)
        };
        let values = s
            .encode_cookies(key, &scope)
            .ok_or("sealed session too large")?;
        let cookies: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"name": oidc_filter::session::chunk_name(name, i), "value": v}))
            .collect();
        out["chunked_session"] = json!({
            "cookies": cookies,
            "access_token": access_token,
            "id_token": id_token,
        });
    }

    if o.refresh > 0 {
        let then = now.saturating_sub(o.refresh_age);
        let range = o.refresh_offset..o.refresh_offset + o.refresh;
        let sessions = par_map(range, o.threads, &|i| {
            let mut r = ChaCha20Rng::seed_from_u64(0x5e55_0000_0000 + i);
            let mut b = [0u8; 18];
            r.fill_bytes(&mut b);
            let s = Session {
                issued_at: then,
                tokens: Some(Tokens {
                    refresh_token: format!("bench-rt-{i:07}-{}", b64url(&b)),
                    refreshed_at: then,
                    seen_at: then,
                    ..Tokens::default()
                }),
                ..session(now, ttl)
            };
            s.encode_cookies(key, &scope)
                .and_then(|v| (v.len() == 1).then(|| v[0].clone()))
        })?;
        let sessions: Vec<String> = sessions
            .into_iter()
            .collect::<Option<_>>()
            .ok_or("a refresh session does not fit in one cookie")?;
        let refresh_id_token = sign(&id_claims(p, now, ttl, ""));
        let response = json!({
            "access_token": "bench-access-token-refreshed",
            "token_type": "Bearer",
            "refresh_token": "bench-rt-rotated",
            "expires_in": 3600,
            "id_token": refresh_id_token,
        });
        out["refresh"] = json!({
            "offset": o.refresh_offset,
            "sessions": sessions,
            "token_response": response.to_string(),
            "refresh_id_token": refresh_id_token,
        });
    }

    if o.flows > 0 {
        let range = o.flow_offset..o.flow_offset + o.flows;
        let flows = par_map(range, o.threads, &|i| -> Result<Value, String> {
            let mut r = ChaCha20Rng::seed_from_u64(0xf10e_0000_0000 + i);
            let (state, cookie_name, cookie_value, nonce) =
                login(key, p, &mut r, now + ttl).map_err(|e| e.to_string())?;
            let response = json!({
                "access_token": "bench-access-token",
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": sign(&id_claims(p, now, ttl, &nonce)),
            });
            Ok(json!({
                "state": state,
                "cookie_name": cookie_name,
                "cookie_value": cookie_value,
                "code": format!("bench-code-{i}"),
                "token_response": response.to_string(),
            }))
        })?;
        let flows: Vec<Value> = flows.into_iter().collect::<Result<_, _>>()?;
        out["flows"] = json!(flows);
        out["flow_offset"] = json!(o.flow_offset);
    }

    println!("{out}");
    Ok(())
}
