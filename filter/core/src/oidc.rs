//! OpenID Connect: provider metadata (Discovery 1.0), the key set (RFC 7517), the token
//! response (RFC 6749 §5.1) and ID token validation (OIDC Core §3.1.3.7).

use crate::claims::{CLAIMS, EMAIL};
use std::borrow::Cow;

use jwt_compact::alg::Es256;
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmExt, AlgorithmSignature, Claims, UntrustedToken};
use serde::Deserialize;
use url::Url;

use crate::rsa::{self, Hash};
use crate::util::{b64url_decode, ct_eq};

/// The parts of the provider's metadata we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Url,
    /// RP-Initiated Logout 1.0 §2.1, if the provider has it.
    pub end_session_endpoint: Option<Url>,
}

/// Why a document from the provider was refused, in words that hold no byte of the document:
/// the field and the kind of error only (an IdP body may carry anything, and logs are read
/// by many).
fn json_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

fn string_field<'a>(m: &'a serde_json::Value, field: &str) -> Result<&'a str, String> {
    m.get(field)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("discovery document: {field} missing or not a string"))
}

fn url_field(m: &serde_json::Value, field: &str) -> Result<Url, String> {
    let url = Url::parse(string_field(m, field)?)
        .map_err(|_| format!("discovery document: {field} is not a URL"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!("discovery document: {field} is not an http(s) URL"));
    }
    Ok(url)
}

impl Provider {
    /// OpenID Connect Discovery 1.0 §4.3: the `issuer` in the metadata must be identical to
    /// the issuer URL configured.
    #[cfg_attr(oidc_size, optimize(size))]
    pub fn from_discovery(body: &[u8], expected_issuer: &str) -> Result<Provider, String> {
        let m: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("discovery document: {}", json_kind(&e)))?;
        if !m.is_object() {
            return Err("discovery document: not a JSON object".into());
        }
        if string_field(&m, "issuer")? != expected_issuer {
            return Err("discovery document: issuer differs from oidc_issuer_url".into());
        }
        Ok(Provider {
            issuer: expected_issuer.to_string(),
            authorization_endpoint: url_field(&m, "authorization_endpoint")?,
            token_endpoint: url_field(&m, "token_endpoint")?,
            jwks_uri: url_field(&m, "jwks_uri")?,
            end_session_endpoint: match m.get("end_session_endpoint") {
                None | Some(serde_json::Value::Null) => None,
                Some(_) => Some(url_field(&m, "end_session_endpoint")?),
            },
        })
    }
}

/// A verifying key from the provider's JWKS.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    Rsa(rsa::PublicKey),
    P256(<Es256 as jwt_compact::Algorithm>::VerifyingKey),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub material: KeyMaterial,
}

#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// RSA keys shorter than this are refused (NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;

impl KeySet {
    /// Parses a JWKS. Each key is read on its own: one we cannot use (an encryption key,
    /// another key type or curve, a weak RSA key, members of unexpected types, x5c only) is
    /// skipped without touching the others; a document that is not a JWKS is an error.
    #[cfg_attr(oidc_size, optimize(size))]
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        let raw: RawJwks =
            serde_json::from_slice(body).map_err(|e| format!("JWKS: {}", json_kind(&e)))?;
        let mut keys = Vec::new();
        for k in raw.keys {
            let Ok(k) = serde_json::from_value::<RawJwk>(k) else {
                continue;
            };
            if k.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let material = match k.kty.as_str() {
                "RSA" => {
                    let (Some(n), Some(e)) = (
                        k.n.as_deref().and_then(b64url_decode),
                        k.e.as_deref().and_then(b64url_decode),
                    ) else {
                        continue;
                    };
                    match rsa::PublicKey::new(&n, &e) {
                        Some(key) if key.bits() >= MIN_RSA_BITS => KeyMaterial::Rsa(key),
                        _ => continue,
                    }
                }
                "EC" if k.crv.as_deref() == Some("P-256") => {
                    let (Some(x), Some(y)) = (
                        k.x.as_deref().and_then(b64url_decode),
                        k.y.as_deref().and_then(b64url_decode),
                    ) else {
                        continue;
                    };
                    let jwk = JsonWebKey::EllipticCurve {
                        curve: Cow::Borrowed("P-256"),
                        x: Cow::Owned(x),
                        y: Cow::Owned(y),
                        secret: None,
                    };
                    match <Es256 as jwt_compact::Algorithm>::VerifyingKey::try_from(&jwk) {
                        Ok(key) => KeyMaterial::P256(key),
                        Err(_) => continue,
                    }
                }
                _ => continue,
            };
            keys.push(Key {
                kid: k.kid,
                alg: k.alg,
                material,
            });
        }
        Ok(KeySet { keys })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// What a token response (RFC 6749 §5.1) holds besides the ID token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtherTokens {
    pub access_token: String,
    pub refresh_token: String,
    /// `expires_in` (seconds), if given.
    pub expires_in: Option<u64>,
}

/// The access and refresh tokens of a token response, as far as they are well formed
/// (a token is kept only as a visible-ASCII string under 8 KB).
#[cfg_attr(oidc_size, optimize(size))]
pub fn other_tokens(body: &[u8]) -> OtherTokens {
    let Ok(serde_json::Value::Object(r)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return OtherTokens::default();
    };
    let token = |k: &str| {
        r.get(k)
            .and_then(serde_json::Value::as_str)
            .filter(|t| t.len() <= 8192 && t.bytes().all(|b| (0x21..0x7f).contains(&b)))
            .unwrap_or_default()
            .to_string()
    };
    OtherTokens {
        access_token: token("access_token"),
        refresh_token: token("refresh_token"),
        expires_in: r.get("expires_in").and_then(serde_json::Value::as_u64),
    }
}

/// RFC 6749 §5.1 / OIDC Core §3.1.3.3: the token response is a JSON object that must carry
/// an `id_token`.
#[cfg_attr(oidc_size, optimize(size))]
pub fn id_token_from_response(body: &[u8]) -> Result<String, &'static str> {
    let r: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "token response is not JSON")?;
    if !r.is_object() {
        return Err("token response is not a JSON object");
    }
    r.get("id_token")
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or("token response has no id_token")
}

/// `aud` is a string or an array of strings (OIDC Core §2).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// `email_verified` is a boolean; some providers send the string "true".
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

#[derive(Deserialize, Debug)]
struct IdClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    azp: Option<String>,
    nonce: Option<String>,
    email_verified: Option<Flag>,
    /// Every other claim, read by name (`claims::CLAIMS`).
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl IdClaims {
    /// A claim of `claims::CLAIMS` by name, if it is a string.
    fn text(&self, name: &str) -> Option<String> {
        match name {
            "sub" => self.sub.clone(),
            _ => self.other.get(name)?.as_str().map(str::to_string),
        }
    }
}

/// The identity a validated ID token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    /// `None` when the claim is absent.
    pub email_verified: Option<bool>,
    /// The claims of `claims::CLAIMS`, in its order (`None`: absent or not a string).
    pub claims: [Option<String>; CLAIMS.len()],
    /// Every other claim (groups, claim rules' and claim headers' claims are read from it).
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Identity {
    pub fn email(&self) -> Option<&str> {
        self.claims[EMAIL].as_deref()
    }
}

/// Why an ID token was refused. The name is logged; the client sees `id_token_invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenError {
    Malformed,
    /// `none`, HMAC, or an algorithm we do not accept.
    Algorithm(String),
    /// No key with this `kid`: the caller may refetch the JWKS once and retry.
    UnknownKid(String),
    NoUsableKey,
    Signature,
    Issuer,
    Audience,
    AuthorizedParty,
    Expired,
    IssuedInFuture,
    /// `nbf` is later than now (with leeway).
    NotYetValid,
    MissingClaim(&'static str),
    Nonce,
    /// A refreshed ID token names another user than the session's (OIDC Core §12.2).
    Subject,
    /// The `typ` header is not the one required (RFC 9068: `at+jwt`).
    Type,
}

impl IdTokenError {
    pub fn describe(&self) -> String {
        match self {
            IdTokenError::Malformed => "malformed token".into(),
            IdTokenError::Algorithm(a) => format!("algorithm {} not accepted", loggable(a)),
            IdTokenError::UnknownKid(k) => format!("no key with kid {} in the JWKS", loggable(k)),
            IdTokenError::NoUsableKey => "no key in the JWKS fits the token".into(),
            IdTokenError::Signature => "signature does not verify".into(),
            IdTokenError::Issuer => "iss is not the issuer".into(),
            IdTokenError::Audience => "aud does not contain client_id".into(),
            IdTokenError::AuthorizedParty => "azp is not client_id".into(),
            IdTokenError::Expired => "token expired".into(),
            IdTokenError::IssuedInFuture => "iat is in the future".into(),
            IdTokenError::NotYetValid => "nbf is in the future".into(),
            IdTokenError::MissingClaim(c) => format!("claim {c} missing"),
            IdTokenError::Nonce => "nonce does not match this login".into(),
            IdTokenError::Subject => "sub is not the session's".into(),
            IdTokenError::Type => "typ is not the one required".into(),
        }
    }
}

/// A value from a token, quoted for a log line only if it is short and plain (a `kid`, an
/// `alg`): never a way to write arbitrary bytes into the proxy's log.
fn loggable(v: &str) -> String {
    if v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(&b))
    {
        format!("{v:?}")
    } else {
        "(not shown)".into()
    }
}

/// Algorithms accepted for ID token signatures. `none` and the HMAC family never are
/// (OIDC Core §3.1.3.7 steps 6–8: the client secret must not verify a token here).
pub const ACCEPTED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
];

pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub now: u64,
    pub leeway: u64,
}

/// `RS*` and `PS*` as jwt-compact algorithms, verified by our own RSA (`crate::rsa`).
#[derive(Debug, Clone, Copy)]
struct RsaAlg {
    name: &'static str,
    hash: Hash,
    pss: bool,
}

fn rsa_alg(name: &str) -> Option<RsaAlg> {
    let (name, hash, pss) = match name {
        "RS256" => ("RS256", Hash::Sha256, false),
        "RS384" => ("RS384", Hash::Sha384, false),
        "RS512" => ("RS512", Hash::Sha512, false),
        "PS256" => ("PS256", Hash::Sha256, true),
        "PS384" => ("PS384", Hash::Sha384, true),
        "PS512" => ("PS512", Hash::Sha512, true),
        _ => return None,
    };
    Some(RsaAlg { name, hash, pss })
}

/// An RSA signature as the token carries it; its length is checked against the modulus.
struct RsaSignature(Vec<u8>);

impl AlgorithmSignature for RsaSignature {
    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Ok(RsaSignature(slice.to_vec()))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

/// The filter never signs a token.
enum NoSigningKey {}

impl Algorithm for RsaAlg {
    type SigningKey = NoSigningKey;
    type VerifyingKey = rsa::PublicKey;
    type Signature = RsaSignature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.name)
    }

    fn sign(&self, key: &NoSigningKey, _message: &[u8]) -> RsaSignature {
        match *key {}
    }

    fn verify_signature(&self, sig: &RsaSignature, key: &rsa::PublicKey, message: &[u8]) -> bool {
        if self.pss {
            key.verify_pss(self.hash, message, &sig.0)
        } else {
            key.verify_pkcs1v15(self.hash, message, &sig.0)
        }
    }
}

fn verify_with(
    key: &Key,
    alg: &str,
    token: &UntrustedToken<'_>,
) -> Option<Result<Claims<IdClaims>, IdTokenError>> {
    if key.alg.as_deref().is_some_and(|a| a != alg) {
        return None;
    }
    let result = match (&key.material, alg) {
        (KeyMaterial::Rsa(pk), _) => {
            let rsa = rsa_alg(alg)?;
            rsa.validator::<IdClaims>(pk).validate(token)
        }
        (KeyMaterial::P256(pk), "ES256") => Es256.validator::<IdClaims>(pk).validate(token),
        _ => return None,
    };
    Some(match result {
        Ok(t) => Ok(t.into_parts().1),
        Err(jwt_compact::ValidationError::InvalidSignature) => Err(IdTokenError::Signature),
        Err(jwt_compact::ValidationError::InvalidSignatureLen { .. }) => {
            Err(IdTokenError::Signature)
        }
        Err(_) => Err(IdTokenError::Malformed),
    })
}

/// The token's signature, by a key of `keys` (the `kid`'s, else any that fits) and an `alg`
/// of `algs`; returns its claims and its `typ` header.
#[cfg_attr(oidc_size, optimize(size))]
fn verified_claims(
    raw: &str,
    keys: &KeySet,
    algs: &[&str],
) -> Result<(Claims<IdClaims>, Option<String>), IdTokenError> {
    let token = UntrustedToken::new(raw).map_err(|_| IdTokenError::Malformed)?;
    let alg = token.algorithm().to_string();
    if !algs.contains(&alg.as_str()) || !ACCEPTED_ALGS.contains(&alg.as_str()) {
        return Err(IdTokenError::Algorithm(alg));
    }
    let kid = token.header().key_id.clone();
    let candidates: Vec<&Key> = match &kid {
        Some(kid) => {
            let found: Vec<&Key> = keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect();
            if found.is_empty() {
                return Err(IdTokenError::UnknownKid(kid.clone()));
            }
            found
        }
        None => keys.keys.iter().collect(),
    };
    let mut last_err = IdTokenError::NoUsableKey;
    for key in candidates {
        match verify_with(key, &alg, &token) {
            Some(Ok(c)) => return Ok((c, token.header().token_type.clone())),
            Some(Err(e)) => last_err = e,
            None => {}
        }
    }
    Err(last_err)
}

/// `exp` (required), `iat` (required for ID tokens) and `nbf`, with `leeway`.
fn check_times(
    claims: &Claims<IdClaims>,
    now: u64,
    leeway: u64,
    iat_required: bool,
) -> Result<u64, IdTokenError> {
    let exp = claims
        .expiration
        .ok_or(IdTokenError::MissingClaim("exp"))?
        .timestamp();
    if exp.saturating_add(leeway as i64) <= now as i64 {
        return Err(IdTokenError::Expired);
    }
    match claims.issued_at {
        Some(iat) if iat.timestamp() > now.saturating_add(leeway) as i64 => {
            return Err(IdTokenError::IssuedInFuture)
        }
        None if iat_required => return Err(IdTokenError::MissingClaim("iat")),
        _ => {}
    }
    // RFC 7519 §4.1.5, with the same leeway as `iat`.
    if let Some(nbf) = claims.not_before {
        if nbf.timestamp() > now.saturating_add(leeway) as i64 {
            return Err(IdTokenError::NotYetValid);
        }
    }
    Ok(u64::try_from(exp).unwrap_or(0))
}

fn identity_of(c: &IdClaims) -> Result<Identity, IdTokenError> {
    let sub = match &c.sub {
        Some(s) if !s.is_empty() => s.clone(),
        _ => return Err(IdTokenError::MissingClaim("sub")),
    };
    Ok(Identity {
        sub,
        email_verified: match &c.email_verified {
            Some(Flag::Bool(b)) => Some(*b),
            Some(Flag::Text(t)) => Some(t.eq_ignore_ascii_case("true")),
            None => None,
        },
        claims: CLAIMS.map(|spec| c.text(spec.name)),
        other: c.other.clone(),
    })
}

fn audiences(c: &IdClaims) -> Vec<&str> {
    match &c.aud {
        Some(Audience::One(a)) => vec![a.as_str()],
        Some(Audience::Many(a)) => a.iter().map(String::as_str).collect(),
        None => Vec::new(),
    }
}

/// The `iss` and `aud` of a token, read without checking anything: only to pick the issuer
/// entry whose keys and rules then validate it.
pub fn unverified_iss_aud(raw: &str) -> Option<(String, Vec<String>)> {
    let token = UntrustedToken::new(raw).ok()?;
    #[derive(Deserialize)]
    struct IssAud {
        iss: Option<String>,
        aud: Option<Audience>,
    }
    let c = token.deserialize_claims_unchecked::<IssAud>().ok()?.custom;
    let aud = match c.aud {
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(a)) => a,
        None => Vec::new(),
    };
    Some((c.iss?, aud))
}

/// What a bearer token must be (RFC 9068 §4 for access tokens; an ID token of the host's
/// provider passes with its `client_id` as the audience, as oauth2-proxy takes them).
pub struct BearerExpected<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub algorithms: &'a [&'a str],
    /// `at+jwt`: the `typ` header must be it (`application/at+jwt` too).
    pub typ: Option<&'a str>,
    pub now: u64,
    pub leeway: u64,
}

/// A bearer JWT: signature, `alg`, `typ`, `iss`, `aud`, `exp`, `nbf`, `iat`. Returns the
/// identity and `exp`.
pub fn validate_bearer(
    raw: &str,
    keys: &KeySet,
    expected: &BearerExpected<'_>,
) -> Result<(Identity, u64), IdTokenError> {
    let (claims, typ) = verified_claims(raw, keys, expected.algorithms)?;
    if let Some(want) = expected.typ {
        let got = typ.as_deref().unwrap_or("");
        let got = got
            .strip_prefix("application/")
            .or_else(|| got.strip_prefix("APPLICATION/"))
            .unwrap_or(got);
        if !got.eq_ignore_ascii_case(want) {
            return Err(IdTokenError::Type);
        }
    }
    let c = &claims.custom;
    if c.iss.as_deref() != Some(expected.issuer) {
        return Err(IdTokenError::Issuer);
    }
    if !audiences(c)
        .iter()
        .any(|a| expected.audiences.iter().any(|e| e == a))
    {
        return Err(IdTokenError::Audience);
    }
    let exp = check_times(&claims, expected.now, expected.leeway, false)?;
    Ok((identity_of(c)?, exp))
}

/// OIDC Core §3.1.3.7, in its order: signature (6–8), `iss` (2), `aud` (3), `azp` (4–5),
/// `exp` (9), `iat` (10), `nbf` (RFC 7519 §4.1.5), `nonce` (11).
pub fn validate_id_token(
    raw: &str,
    keys: &KeySet,
    expected: &Expected<'_>,
) -> Result<Identity, IdTokenError> {
    validate(raw, keys, expected, true)
}

/// An ID token from a refresh (OIDC Core §12.2): checked as at login, but for the nonce (the
/// login's is not kept; the token came from the token endpoint to our client credentials, not
/// through a browser) and with the login's `sub`.
pub fn validate_refreshed_id_token(
    raw: &str,
    keys: &KeySet,
    expected: &Expected<'_>,
    sub: &str,
) -> Result<Identity, IdTokenError> {
    let identity = validate(raw, keys, expected, false)?;
    if identity.sub != sub {
        return Err(IdTokenError::Subject);
    }
    Ok(identity)
}

fn validate(
    raw: &str,
    keys: &KeySet,
    expected: &Expected<'_>,
    nonce: bool,
) -> Result<Identity, IdTokenError> {
    let (claims, _) = verified_claims(raw, keys, ACCEPTED_ALGS)?;
    let c = &claims.custom;

    if c.iss.as_deref() != Some(expected.issuer) {
        return Err(IdTokenError::Issuer);
    }
    let audiences = audiences(c);
    if !audiences.contains(&expected.client_id) {
        return Err(IdTokenError::Audience);
    }
    match &c.azp {
        Some(azp) if azp != expected.client_id => return Err(IdTokenError::AuthorizedParty),
        None if audiences.len() > 1 => return Err(IdTokenError::AuthorizedParty),
        _ => {}
    }
    check_times(&claims, expected.now, expected.leeway, true)?;
    match &c.nonce {
        _ if !nonce => {}
        Some(n) if ct_eq(n.as_bytes(), expected.nonce.as_bytes()) => {}
        _ => return Err(IdTokenError::Nonce),
    }
    identity_of(c)
}
