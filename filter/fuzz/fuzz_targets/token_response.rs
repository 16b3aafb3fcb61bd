//! The token response and the ID token in it: `oidc::id_token_from_response`, then
//! `oidc::validate_id_token` against a fixed key set (corpus/jwks/rsa-and-ec.json: an RSA
//! key `rsa-0` and a P-256 key `ec-0`).
//!
//! Input: byte 0 picks the mode, the rest is the data.
//! - 0 mod 4 (and 2): the rest is the token endpoint's response body, verbatim;
//! - 1 mod 4: the rest is a claims set, signed here ES256 with `ec-0` under the header
//!   `{"alg":"ES256","kid":"ec-0"}`, so the claim checks past the signature are reached;
//! - 3 mod 4: the rest is `header \n claims`, both signed here with `ec-0` as given.
//!
//! Invariants on an accepted token, read back from the token independently: the algorithm is
//! one we accept (and ES256 when we signed it), `iss` is the issuer, `aud` holds the client id,
//! `azp` is the client id when present or when there are several audiences, `exp`, `iat` and
//! `nbf` hold at `NOW` with the leeway, the nonce matches, and the identity is the claims'.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::oidc::{
    id_token_from_response, validate_id_token, Expected, KeySet, ACCEPTED_ALGS,
};
use oidc_filter_core::util::{b64_any_decode, b64url};
use p256::ecdsa::signature::Signer;
use serde_json::Value;

const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 60;
const ISSUER: &str = "https://issuer.example.com";
const CLIENT_ID: &str = "app";
const NONCE: &str = "n-0S6_WzA2Mj";
/// The P-256 key `ec-0` (also in examples/make_seeds.rs, which writes its public half into
/// the JWKS below).
const EC_SCALAR: [u8; 32] = *b"oidc-filter fuzz ec-0 scalar 32b";
const JWKS: &[u8] = include_bytes!("../corpus/jwks/rsa-and-ec.json");

struct Fixture {
    keys: KeySet,
    ec: p256::ecdsa::SigningKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = KeySet::parse(JWKS).expect("fixed JWKS parses");
        assert!(
            keys.has_kid("rsa-0") && keys.has_kid("ec-0"),
            "fixed JWKS lost a key"
        );
        let ec = p256::ecdsa::SigningKey::from_slice(&EC_SCALAR).expect("a P-256 scalar");
        let f = Fixture { keys, ec };
        // The key set must hold ec-0's public half, or mode 1 and 3 test nothing.
        let tok = sign(&f.ec, br#"{"alg":"ES256","kid":"ec-0"}"#, br#"{"iss":"x"}"#);
        assert_eq!(
            validate_id_token(&tok, &f.keys, &expected()).err(),
            Some(oidc_filter_core::oidc::IdTokenError::Issuer),
            "ec-0 in corpus/jwks/rsa-and-ec.json is not EC_SCALAR's: rerun examples/make_seeds"
        );
        f
    })
}

fn expected() -> Expected<'static> {
    Expected {
        issuer: ISSUER,
        client_id: CLIENT_ID,
        nonce: NONCE,
        now: NOW,
        leeway: LEEWAY,
    }
}

fn sign(k: &p256::ecdsa::SigningKey, header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", b64url(header), b64url(claims));
    let sig: p256::ecdsa::Signature = k.sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let we_signed = mode & 1 == 1;
    let body: Vec<u8> = match mode & 3 {
        1 => {
            let t = sign(&f.ec, br#"{"alg":"ES256","kid":"ec-0"}"#, rest);
            serde_json::json!({"access_token": "at", "token_type": "Bearer", "id_token": t})
                .to_string()
                .into_bytes()
        }
        3 => {
            let (h, c) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let t = sign(&f.ec, h, c);
            serde_json::json!({"token_type": "Bearer", "id_token": t})
                .to_string()
                .into_bytes()
        }
        _ => rest.to_vec(),
    };
    let Ok(token) = id_token_from_response(&body) else {
        return;
    };
    assert!(!token.is_empty());
    let Ok(id) = validate_id_token(&token, &f.keys, &expected()) else {
        return;
    };

    // Read the accepted token again, by hand.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
    let header: Value = b64_any_decode(parts[0])
        .and_then(|b| serde_json::from_slice(&b).ok())
        .expect("accepted token's header is base64 JSON");
    let claims: Value = b64_any_decode(parts[1])
        .and_then(|b| serde_json::from_slice(&b).ok())
        .expect("accepted token's claims are base64 JSON");
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(ACCEPTED_ALGS.contains(&alg), "alg {alg:?} accepted");
    if we_signed {
        assert_eq!(
            alg, "ES256",
            "an ES256 signature verified under alg {alg:?}"
        );
    }
    if let Some(kid) = header.get("kid").and_then(Value::as_str) {
        assert!(f.keys.has_kid(kid));
    }
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(ISSUER),
        "iss"
    );
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        other => panic!("accepted aud {other:?}"),
    };
    assert!(auds.contains(&CLIENT_ID), "aud {auds:?}");
    match claims.get("azp") {
        Some(Value::String(azp)) => assert_eq!(azp, CLIENT_ID, "azp"),
        None => assert!(auds.len() <= 1, "several audiences and no azp"),
        Some(other) => panic!("accepted azp {other:?}"),
    }
    let now = NOW as f64;
    let leeway = LEEWAY as f64;
    let exp = num(&claims, "exp").expect("accepted without a numeric exp");
    assert!(exp + leeway > now, "expired token accepted: exp {exp}");
    let iat = num(&claims, "iat").expect("accepted without a numeric iat");
    assert!(iat <= now + leeway, "iat in the future accepted: {iat}");
    if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
        let nbf = nbf.as_f64().expect("numeric nbf");
        assert!(nbf <= now + leeway, "nbf in the future accepted: {nbf}");
    }
    assert_eq!(
        claims.get("nonce").and_then(Value::as_str),
        Some(NONCE),
        "nonce"
    );
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        !sub.is_empty() && id.sub == sub,
        "sub {sub:?} vs {:?}",
        id.sub
    );
    // Every claim a session keeps is the token's, by name.
    for (spec, got) in oidc_filter_core::claims::CLAIMS.iter().zip(&id.claims) {
        assert_eq!(
            got.as_deref(),
            claims.get(spec.name).and_then(Value::as_str),
            "{}",
            spec.name
        );
    }
});
