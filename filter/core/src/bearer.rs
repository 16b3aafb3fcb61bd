//! Bearer tokens for API clients (oauth2-proxy's `skip_jwt_bearer_tokens` and
//! `extra_jwt_issuers`): a request with `Authorization: Bearer <JWT>` is let in on the token,
//! validated against the host's provider (audience: its `client_id`) or an extra issuer, and
//! its identity is passed upstream like a session's. Refusals follow RFC 6750 §3: 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, never a redirect.
//!
//! An RSA signature costs about 0.2 ms in wasm, so verified tokens are kept per VM by
//! their exact value and the provider (found by `verified::slot`, the token compared in
//! constant time, as session cookies are), until their `exp`, at most `MAX_CACHED` of them
//! and `MAX_CACHED_BYTES` (the oldest goes first). Only a fully validated token is kept; the
//! policy is checked on every request from what the entry carries, as for sessions.

use crate::util::ct_eq;
use crate::verified::{size_of, slot, Kept, Slots};

use crate::claims::{EMAIL, SUB};
use crate::config::{Config, JwtIssuer, ProviderConfig};
use crate::flow::{clean_claim, error_reply, Idps, LocalReply, RETRY_AFTER_SECS};
use crate::http::Request;
use crate::oidc::{self, BearerExpected, IdTokenError, ACCEPTED_ALGS};
use crate::reason::Reason;
use crate::session::Session;
use std::rc::Rc;

/// Verified tokens kept per VM.
pub const MAX_CACHED: usize = 1024;
/// Most bytes of tokens and their identities kept per VM (an estimate per entry).
pub const MAX_CACHED_BYTES: usize = 2 << 20;
/// Clock skew allowed on `exp`, `iat` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;
/// A longer `Authorization` value is refused unread.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme in any case), if
/// the request has exactly one `Authorization` header and its token looks like a JWS (three
/// base64url parts). Anything else (no header, Basic, an opaque token) is not ours to judge:
/// the request goes on to the session check.
pub fn bearer_token<'r>(req: &'r Request<'_>) -> Option<&'r str> {
    let mut auth = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    let (_, v) = auth.next()?;
    if auth.next().is_some() {
        return None;
    }
    let v: &str = v.as_ref();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_matches(' ');
    // Base64url characters in three parts, the first two not empty.
    let jws_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !token.bytes().all(jws_byte) {
        return None;
    }
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !header.is_empty() && !payload.is_empty()).then_some(token)
}

struct Cached {
    provider: usize,
    token: String,
    /// Shared with the requests that hit it, as `verified` does.
    session: Rc<Session>,
    /// The token says `email_verified: false` (each host's policy decides).
    unverified: bool,
    /// `exp` plus the leeway: the entry serves until then.
    until: u64,
    bytes: usize,
}

impl Kept for Cached {
    fn bytes(&self) -> usize {
        self.bytes
    }
    fn live(&self, now: u64) -> bool {
        self.until > now
    }
}

/// Verified bearer tokens of one VM, and the key ids tokens named that the keys held lack
/// (the engine asks for a refetch of those).
#[derive(Default)]
pub struct BearerCache {
    kept: Slots<Cached, MAX_CACHED, MAX_CACHED_BYTES>,
    /// (fetch index of the issuer, kid): drained by the engine after each request.
    pub unknown_kids: Vec<(usize, String)>,
    pub hits: u64,
    pub misses: u64,
}

impl BearerCache {
    /// The identity kept for exactly this token of `provider`, if it has not expired.
    fn get(&mut self, provider: usize, token: &str, now: u64) -> Option<(Rc<Session>, bool)> {
        let h = slot(provider, token);
        let c = self.kept.get(h)?;
        if c.provider != provider || !ct_eq(c.token.as_bytes(), token.as_bytes()) {
            return None;
        }
        if c.live(now) {
            self.hits += 1;
            return Some((Rc::clone(&c.session), c.unverified));
        }
        self.kept.remove(h);
        None
    }

    fn put(
        &mut self,
        provider: usize,
        token: &str,
        entry: (Rc<Session>, bool),
        until: u64,
        now: u64,
    ) {
        let (session, unverified) = entry;
        let cached = Cached {
            provider,
            token: token.to_string(),
            bytes: size_of(token, &session),
            session,
            unverified,
            until,
        };
        // A token in the same slot gives way; expired entries go first, then the oldest.
        self.kept.insert(slot(provider, token), cached, now);
    }

    /// Bytes kept (the estimate `MAX_CACHED_BYTES` bounds).
    pub fn bytes(&self) -> usize {
        self.kept.bytes()
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.len() == 0
    }
}

/// One issuer a host accepts: the provider's own, or an extra one, with the fetch index its
/// keys are kept at.
struct Signer<'a> {
    fetch: usize,
    source: &'a ProviderConfig,
    audiences: std::borrow::Cow<'a, [String]>,
    algorithms: &'a [String],
    typ: Option<&'a str>,
}

fn signers<'a>(cfg: &'a Config, provider: usize) -> impl Iterator<Item = Signer<'a>> {
    let own = cfg.providers.get(provider).map(|p| Signer {
        fetch: provider,
        source: p,
        audiences: std::borrow::Cow::Owned(vec![p.client_id.clone()]),
        algorithms: &[],
        typ: None,
    });
    own.into_iter()
        .chain(cfg.jwt_issuers.iter().map(|j: &JwtIssuer| Signer {
            fetch: j.fetch,
            source: &j.source,
            audiences: std::borrow::Cow::Borrowed(&j.audiences),
            algorithms: &j.algorithms,
            typ: j.typ.as_deref(),
        }))
}

/// RFC 6750 §3.1: `invalid_token`, with a description of the kind of fault only.
pub fn invalid_token(description: &str, detail: String) -> LocalReply {
    let mut r = error_reply(Reason::BearerInvalid, Some(detail));
    r.headers.push((
        "www-authenticate".into(),
        format!("Bearer realm=\"oidc-filter\", error=\"invalid_token\", error_description=\"{description}\""),
    ));
    r
}

fn description(e: &IdTokenError) -> &'static str {
    match e {
        IdTokenError::Expired => "the token expired",
        IdTokenError::NotYetValid | IdTokenError::IssuedInFuture => "the token is not valid yet",
        IdTokenError::Audience => "the token is not for this audience",
        IdTokenError::Issuer => "the token's issuer is not accepted",
        IdTokenError::Algorithm(_) => "the token's algorithm is not accepted",
        IdTokenError::Type => "the token's typ is not accepted",
        IdTokenError::MissingClaim(_) => "the token lacks a required claim",
        _ => "the token does not verify",
    }
}

/// The identity a bearer token proves on a host of provider `provider`: a session-like value
/// (from the cache, or validated now and cached) and whether its email is marked unverified,
/// or the reply that refuses it.
pub fn authenticate(
    cfg: &Config,
    idps: &dyn Idps,
    cache: &mut BearerCache,
    provider: usize,
    token: &str,
    now: u64,
) -> Result<(Rc<Session>, bool), LocalReply> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid_token(
            "the token is too long",
            "bearer token too long".into(),
        ));
    }
    if let Some(s) = cache.get(provider, token, now) {
        return Ok(s);
    }
    cache.misses += 1;
    let Some((iss, aud)) = oidc::unverified_iss_aud(token) else {
        return Err(invalid_token(
            "the token does not verify",
            "bearer token malformed".into(),
        ));
    };
    // The issuer's entry for the token's audience (a provider's issuer may sign ID tokens
    // for its client and access tokens for an API); any entry of the issuer otherwise, which
    // then refuses the audience.
    let of_issuer = || signers(cfg, provider).filter(|s| s.source.issuer == iss);
    let signer = of_issuer()
        .find(|s| s.audiences.iter().any(|a| aud.contains(a)))
        .or_else(|| of_issuer().next());
    let Some(signer) = signer else {
        return Err(invalid_token(
            "the token's issuer is not accepted",
            "bearer token from an issuer this host does not accept".into(),
        ));
    };
    let Some(idp) = idps.idp(signer.fetch) else {
        let mut r = error_reply(
            Reason::IdpNotReady,
            Some(format!(
                "keys of issuer {} not loaded yet",
                signer.source.name
            )),
        );
        r.headers
            .push(("retry-after".into(), RETRY_AFTER_SECS.to_string()));
        return Err(r);
    };
    let algs: Vec<&str> = if signer.algorithms.is_empty() {
        ACCEPTED_ALGS.to_vec()
    } else {
        signer.algorithms.iter().map(String::as_str).collect()
    };
    let expected = BearerExpected {
        issuer: &signer.source.issuer,
        audiences: &signer.audiences,
        algorithms: &algs,
        typ: signer.typ,
        now,
        leeway: LEEWAY_SECS,
    };
    let (identity, exp) = match oidc::validate_bearer(token, idp.keys, &expected) {
        Ok(v) => v,
        Err(IdTokenError::UnknownKid(kid)) => {
            if idps.kid_refused(signer.fetch, &kid, now) {
                return Err(invalid_token(
                    "the token does not verify",
                    "bearer token names a key its issuer does not have".into(),
                ));
            }
            cache.unknown_kids.push((signer.fetch, kid));
            let mut r = error_reply(
                Reason::BearerKeyUnknown,
                Some(format!(
                    "issuer {}: fetching its keys for a new kid",
                    signer.source.name
                )),
            );
            r.headers.push(("retry-after".into(), "1".into()));
            return Err(r);
        }
        Err(e) => {
            return Err(invalid_token(
                description(&e),
                format!("bearer token refused: {}", e.describe()),
            ))
        }
    };
    let Some(p) = cfg.providers.get(provider) else {
        return Err(error_reply(Reason::InternalError, None));
    };
    let email = clean_claim(identity.email());
    let (groups, attrs) = p
        .carry
        .take_from(&identity.other, &signer.source.groups_claim);
    let session = Session {
        expires_at: exp,
        issued_at: now,
        claims: std::array::from_fn(|i| match i {
            SUB => clean_claim(Some(&identity.sub)),
            EMAIL => email.clone(),
            _ => clean_claim(identity.claims[i].as_deref()),
        }),
        groups,
        attrs,
        tokens: None,
    };
    if session.sub().is_empty() {
        return Err(invalid_token(
            "the token lacks a required claim",
            "bearer token with an unusable sub".into(),
        ));
    }
    let unverified = !email.is_empty() && identity.email_verified == Some(false);
    let session = Rc::new(session);
    cache.put(
        provider,
        token,
        (Rc::clone(&session), unverified),
        exp.saturating_add(LEEWAY_SECS),
        now,
    );
    Ok((session, unverified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_of(values: &[&str]) -> Option<String> {
        let req = Request {
            headers: values
                .iter()
                .map(|v| ("authorization".into(), (*v).into()))
                .collect(),
            ..Request::default()
        };
        bearer_token(&req).map(str::to_string)
    }

    #[test]
    fn only_a_single_bearer_jws_is_a_bearer_token() {
        for (v, want) in [
            ("Bearer aGVhZA.cGF5.c2ln", Some("aGVhZA.cGF5.c2ln")),
            ("bearer  a-_9.B.c ", Some("a-_9.B.c")),
            ("BEARER a.b.", Some("a.b.")),
            ("Bearer .b.c", None),
            ("Bearer a..c", None),
            ("Bearer a.b", None),
            ("Bearer a.b.c.d", None),
            ("Bearer a.b.c=", None),
            ("Bearer a+b.c.d", None),
            ("Bearer a.b.c/", None),
            ("Bearer a.b.\u{e9}", None),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic a.b.c", None),
        ] {
            assert_eq!(token_of(&[v]).as_deref(), want, "{v:?}");
        }
        assert_eq!(token_of(&[]), None);
        assert_eq!(token_of(&["Bearer a.b.c", "Bearer a.b.c"]), None);
    }
}
