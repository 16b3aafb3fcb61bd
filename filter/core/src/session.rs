//! The session cookie and the per-login flow cookie.
//!
//! Both are `2.<payload>.<mac>` in base64url. The MAC is HMAC-SHA256 over a label naming the
//! format and version, the cookie's name and the deployment's binding (issuer and client_id),
//! each length-prefixed, and the payload, whose fields are fixed-width integers and
//! length-prefixed strings: no two different cookies share MAC input, and a cookie minted for
//! another issuer or client with the same secret and name is refused.
//! Verification checks the MAC first, in constant time, against every configured key (the
//! first one signs), and only then reads the payload.

use crate::claims::{ClaimValues, EMAIL, SUB};
use crate::config::KeySet;
use crate::util::{b64url, b64url_decode, ct_eq, push_b64url, put_lp, MacKey, Reader};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};

const VERSION: &str = "2";
const SESSION_LABEL: &[u8] = b"oidc-filter session v2\0";
const FLOW_LABEL: &[u8] = b"oidc-filter login v2\0";
/// Browsers keep at most 4096 bytes per cookie; we refuse to set larger ones.
pub const MAX_COOKIE_VALUE: usize = 3800;
/// Each identity string kept in a session is at most this long.
pub const MAX_CLAIM_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub expires_at: u64,
    pub issued_at: u64,
    /// Values of `claims::CLAIMS`, in its order.
    pub claims: ClaimValues,
    /// The user's groups the config needs (see `policy::carried_groups`).
    pub groups: Vec<String>,
    /// Other claims the config needs (claim rules, claim headers), by claim path.
    pub attrs: Vec<(String, Vec<String>)>,
    /// The provider's tokens, when a feature needs them (`pass_access_token`, the
    /// `Authorization` options, sign-out at the provider): the cookie is then encrypted
    /// (format 3) and may span chunk cookies.
    pub tokens: Option<Tokens>,
}

/// What a format-3 session holds besides the format-2 fields: the tokens a feature needs (a
/// field no feature needs is left empty), and the marks of refresh and use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: String,
    /// When the access token expires (`expires_in` from the token response; 0: unknown).
    pub access_expires_at: u64,
    /// When the tokens came from the token endpoint (the login, or the last refresh).
    pub refreshed_at: u64,
    /// The last-seen mark of `session_idle_timeout` (re-issued at most every few minutes).
    pub seen_at: u64,
}

/// Chunk cookies a session may span: `name`, `name_1` … `name_4`.
pub const MAX_CHUNKS: usize = 5;
const SEALED_VERSION: &str = "3";
const SEALED_LABEL: &[u8] = b"oidc-filter session v3\0";

/// The name of chunk `i` of the session cookie `name` (0: `name` itself).
pub fn chunk_name(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_string()
    } else {
        format!("{name}_{i}")
    }
}

/// Whether `cookie` is chunk 1.. of the session cookie `name`.
pub fn is_chunk_of(name: &[u8], cookie: &[u8]) -> bool {
    cookie
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(b"_"))
        .is_some_and(|n| n.len() == 1 && (b'1'..=b'0' + (MAX_CHUNKS as u8 - 1)).contains(&n[0]))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    Malformed,
    BadMac,
    Expired,
}

fn name_bytes(name: &str) -> [u8; 2] {
    // Cookie names are short; a longer one is cut to its first 65535 bytes by the length only.
    u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes()
}

/// The one function that defines a cookie's signed bytes.
fn mac_of(key: &MacKey, label: &[u8], scope: &Scope<'_>, payload: &[u8]) -> [u8; 32] {
    key.mac(&[
        label,
        &name_bytes(scope.name),
        scope.name.as_bytes(),
        &name_bytes(scope.binding),
        scope.binding.as_bytes(),
        payload,
    ])
}

/// What a cookie is bound to besides its key: its own name, and the deployment (issuer and
/// client_id, see `Config::cookie_binding`).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub name: &'a str,
    pub binding: &'a str,
}

fn seal(key: &MacKey, label: &[u8], scope: &Scope<'_>, payload: &[u8]) -> String {
    let mac = mac_of(key, label, scope, payload);
    let mut s = String::with_capacity(VERSION.len() + 2 + (payload.len() + mac.len()) * 4 / 3 + 2);
    s.push_str(VERSION);
    s.push('.');
    push_b64url(&mut s, payload);
    s.push('.');
    push_b64url(&mut s, &mac);
    s
}

/// Checks the MAC against each key and returns the payload and the index of the key that
/// verified it.
fn open<'k>(
    keys: &'k [KeySet],
    pick: fn(&KeySet) -> &MacKey,
    label: &[u8],
    scope: &Scope<'_>,
    value: &str,
) -> Result<(Vec<u8>, usize), SessionError> {
    if value.len() > MAX_COOKIE_VALUE {
        return Err(SessionError::Malformed);
    }
    let mut parts = value.split('.');
    let (Some(ver), Some(p), Some(m), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SessionError::Malformed);
    };
    if ver != VERSION {
        return Err(SessionError::Malformed);
    }
    let payload = b64url_decode(p).ok_or(SessionError::Malformed)?;
    let mac = b64url_decode(m).ok_or(SessionError::Malformed)?;
    if mac.len() != 32 {
        return Err(SessionError::Malformed);
    }
    for (i, k) in keys.iter().enumerate() {
        if ct_eq(&mac_of(pick(k), label, scope, &payload), &mac) {
            return Ok((payload, i));
        }
    }
    Err(SessionError::BadMac)
}

fn sealed_aad(scope: &Scope<'_>) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(SEALED_LABEL.len() + scope.name.len() + scope.binding.len() + 4);
    aad.extend_from_slice(SEALED_LABEL);
    aad.extend_from_slice(&name_bytes(scope.name));
    aad.extend_from_slice(scope.name.as_bytes());
    aad.extend_from_slice(&name_bytes(scope.binding));
    aad.extend_from_slice(scope.binding.as_bytes());
    aad
}

/// Splits `body` into the values of chunk cookies: the first is `3.<count>.<part>`, the
/// others hold the following parts; each at most `MAX_COOKIE_VALUE`.
fn chunk(body: &str) -> Option<Vec<String>> {
    let first_cap = MAX_COOKIE_VALUE - SEALED_VERSION.len() - 3;
    let rest = body.len().saturating_sub(first_cap);
    let n = 1 + rest.div_ceil(MAX_COOKIE_VALUE);
    if n > MAX_CHUNKS {
        return None;
    }
    let (head, mut tail) = body.split_at(body.len().min(first_cap));
    let mut out = vec![format!("{SEALED_VERSION}.{n}.{head}")];
    while !tail.is_empty() {
        let (part, more) = tail.split_at(tail.len().min(MAX_COOKIE_VALUE));
        out.push(part.to_string());
        tail = more;
    }
    Some(out)
}

impl Session {
    /// The cookie values of this session: one format-2 value (MAC only) without tokens;
    /// with tokens, format 3 (XChaCha20-Poly1305, see `seal_tokens`) over as many chunk
    /// cookies as it needs, at most `MAX_CHUNKS`. `None`: it does not fit.
    pub fn encode_cookies(&self, key: &KeySet, scope: &Scope<'_>) -> Option<Vec<String>> {
        let Some(t) = &self.tokens else {
            return self.encode(key, scope).map(|v| vec![v]);
        };
        let mut plain = Vec::with_capacity(256 + t.id_token.len() + t.access_token.len());
        put_lp(&mut plain, &self.payload()?)?;
        put_lp(&mut plain, t.id_token.as_bytes())?;
        put_lp(&mut plain, t.access_token.as_bytes())?;
        put_lp(&mut plain, t.refresh_token.as_bytes())?;
        plain.extend_from_slice(&t.access_expires_at.to_be_bytes());
        plain.extend_from_slice(&t.refreshed_at.to_be_bytes());
        plain.extend_from_slice(&t.seen_at.to_be_bytes());
        let aad = sealed_aad(scope);
        // A synthetic nonce (SIV): a MAC of the whole input under a key of its own, so no
        // randomness is needed and a nonce never repeats for different sessions.
        let mac = key.siv.mac(&[&aad, &plain]);
        let mut nonce = chacha20poly1305::XNonce::default();
        nonce.copy_from_slice(&mac[..24]);
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.seal.as_key());
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut sealed = Vec::with_capacity(24 + ct.len());
        sealed.extend_from_slice(&mac[..24]);
        sealed.extend_from_slice(&ct);
        chunk(&b64url(&sealed))
    }

    /// A session from its cookies: `first` is the value of the cookie `scope.name`; `chunk(i)`
    /// the value of chunk cookie `i` (format 3 only). Checks as `verify`.
    pub fn verify_cookies<'v>(
        keys: &[KeySet],
        scope: &Scope<'_>,
        first: &'v str,
        chunk: &dyn Fn(usize) -> Option<&'v str>,
        now: u64,
        max_age: u64,
    ) -> Result<Session, SessionError> {
        let Some(rest) = first
            .strip_prefix(SEALED_VERSION)
            .and_then(|r| r.strip_prefix('.'))
        else {
            return Session::verify(keys, scope, first, now, max_age);
        };
        let (n, head) = rest.split_once('.').ok_or(SessionError::Malformed)?;
        let n: usize = n.parse().map_err(|_| SessionError::Malformed)?;
        if !(1..=MAX_CHUNKS).contains(&n) || head.len() > MAX_COOKIE_VALUE {
            return Err(SessionError::Malformed);
        }
        let mut body = String::with_capacity(n * MAX_COOKIE_VALUE);
        body.push_str(head);
        for i in 1..n {
            let part = chunk(i).ok_or(SessionError::Malformed)?;
            if part.len() > MAX_COOKIE_VALUE {
                return Err(SessionError::Malformed);
            }
            body.push_str(part);
        }
        let sealed = b64url_decode(&body).ok_or(SessionError::Malformed)?;
        if sealed.len() < 24 + 16 {
            return Err(SessionError::Malformed);
        }
        let (n, ct) = sealed.split_at(24);
        let mut nonce = chacha20poly1305::XNonce::default();
        nonce.copy_from_slice(n);
        let aad = sealed_aad(scope);
        let plain = keys
            .iter()
            .find_map(|k| {
                chacha20poly1305::XChaCha20Poly1305::new(k.seal.as_key())
                    .decrypt(&nonce, Payload { msg: ct, aad: &aad })
                    .ok()
            })
            .ok_or(SessionError::BadMac)?;
        let mut r = Reader::new(&plain);
        let inner = r.lp().ok_or(SessionError::Malformed)?;
        let mut s = Session::from_payload(inner)?;
        let mut text = || {
            r.lp_str()
                .map(str::to_string)
                .ok_or(SessionError::Malformed)
        };
        let (id_token, access_token, refresh_token) = (text()?, text()?, text()?);
        let access_expires_at = r.u64().ok_or(SessionError::Malformed)?;
        let refreshed_at = r.u64().ok_or(SessionError::Malformed)?;
        let seen_at = r.u64().ok_or(SessionError::Malformed)?;
        if !r.is_empty() {
            return Err(SessionError::Malformed);
        }
        s.tokens = Some(Tokens {
            id_token,
            access_token,
            refresh_token,
            access_expires_at,
            refreshed_at,
            seen_at,
        });
        s.check_age(now, max_age)?;
        Ok(s)
    }

    /// Refuses a session past its `expires_at` or `max_age` after its login.
    pub fn check_age(&self, now: u64, max_age: u64) -> Result<(), SessionError> {
        if now >= self.expires_at || now >= self.issued_at.saturating_add(max_age) {
            return Err(SessionError::Expired);
        }
        Ok(())
    }

    /// The format-2 payload: times, identity claims, and the optional tail.
    fn payload(&self) -> Option<Vec<u8>> {
        let mut p = Vec::with_capacity(64);
        p.extend_from_slice(&self.expires_at.to_be_bytes());
        p.extend_from_slice(&self.issued_at.to_be_bytes());
        for s in &self.claims {
            if s.len() > MAX_CLAIM_LEN {
                return None;
            }
            put_lp(&mut p, s.as_bytes())?;
        }
        // Optional tail (a cookie without it has neither): the groups, then each carried
        // claim as its path and its values. Values hold no NUL (see `flow::clean_claim`).
        if !self.groups.is_empty() || !self.attrs.is_empty() {
            put_lp(&mut p, self.groups.join("\0").as_bytes())?;
            for (path, values) in &self.attrs {
                put_lp(&mut p, path.as_bytes())?;
                put_lp(&mut p, values.join("\0").as_bytes())?;
            }
        }
        Some(p)
    }

    /// The format-2 cookie value (MAC only; tokens are not in it).
    pub fn encode(&self, key: &KeySet, scope: &Scope<'_>) -> Option<String> {
        let v = seal(&key.session, SESSION_LABEL, scope, &self.payload()?);
        (v.len() <= MAX_COOKIE_VALUE).then_some(v)
    }

    /// `verify_session`: MAC (constant time, any key), then the payload, then expiry: the one
    /// it was issued with, and `max_age` from `issued_at` (the lifetime configured now, which
    /// may be shorter than when it was issued).
    pub fn verify(
        keys: &[KeySet],
        scope: &Scope<'_>,
        value: &str,
        now: u64,
        max_age: u64,
    ) -> Result<Session, SessionError> {
        let (payload, _) = open(keys, |k| &k.session, SESSION_LABEL, scope, value)?;
        let s = Session::from_payload(&payload)?;
        s.check_age(now, max_age)?;
        Ok(s)
    }

    fn from_payload(payload: &[u8]) -> Result<Session, SessionError> {
        let mut r = Reader::new(payload);
        let expires_at = r.u64().ok_or(SessionError::Malformed)?;
        let issued_at = r.u64().ok_or(SessionError::Malformed)?;
        let mut claims = ClaimValues::default();
        for c in &mut claims {
            *c = r.lp_str().ok_or(SessionError::Malformed)?.to_string();
        }
        let list = |s: &str| -> Vec<String> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split('\0').map(str::to_string).collect()
            }
        };
        let mut groups = Vec::new();
        let mut attrs = Vec::new();
        if !r.is_empty() {
            groups = list(r.lp_str().ok_or(SessionError::Malformed)?);
            while !r.is_empty() {
                let path = r.lp_str().ok_or(SessionError::Malformed)?.to_string();
                let values = list(r.lp_str().ok_or(SessionError::Malformed)?);
                attrs.push((path, values));
            }
            // `payload` writes the tail only when it holds something: an empty one is a
            // second spelling of the same session, never minted.
            if groups.is_empty() && attrs.is_empty() {
                return Err(SessionError::Malformed);
            }
        }
        Ok(Session {
            expires_at,
            issued_at,
            claims,
            groups,
            attrs,
            tokens: None,
        })
    }

    pub fn sub(&self) -> &str {
        &self.claims[SUB]
    }

    pub fn email(&self) -> &str {
        &self.claims[EMAIL]
    }

    /// The values of a carried claim (`None`: not carried, or absent from the ID token).
    pub fn attr(&self, path: &str) -> Option<&[String]> {
        self.attrs
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.as_slice())
    }
}

/// A login in progress, kept in its own short-lived cookie so that several tabs can log in at
/// once. The PKCE verifier and the nonce are not stored: they are derived from the state with
/// the server's key (see `derive_verifier`, `derive_nonce`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFlow {
    pub expires_at: u64,
    pub state: String,
    pub return_url: String,
}

/// Length of the state prefix that names a flow cookie.
pub const FLOW_ID_LEN: usize = 16;

pub fn flow_cookie_name(cookie_name: &str, state: &str) -> Option<String> {
    let id = state.get(..FLOW_ID_LEN)?;
    Some([cookie_name, "_csrf_", id].concat())
}

impl LoginFlow {
    pub fn encode(&self, key: &KeySet, scope: &Scope<'_>) -> Option<String> {
        let mut p = Vec::with_capacity(96 + self.return_url.len());
        p.extend_from_slice(&self.expires_at.to_be_bytes());
        put_lp(&mut p, self.state.as_bytes())?;
        put_lp(&mut p, self.return_url.as_bytes())?;
        let v = seal(&key.flow, FLOW_LABEL, scope, &p);
        (v.len() <= MAX_COOKIE_VALUE).then_some(v)
    }

    /// Returns the flow and the index of the key that signed it.
    pub fn verify(
        keys: &[KeySet],
        scope: &Scope<'_>,
        value: &str,
        now: u64,
    ) -> Result<(LoginFlow, usize), SessionError> {
        let (payload, idx) = open(keys, |k| &k.flow, FLOW_LABEL, scope, value)?;
        let mut r = Reader::new(&payload);
        let expires_at = r.u64().ok_or(SessionError::Malformed)?;
        let state = r.lp_str().ok_or(SessionError::Malformed)?.to_string();
        let return_url = r.lp_str().ok_or(SessionError::Malformed)?.to_string();
        if !r.is_empty() {
            return Err(SessionError::Malformed);
        }
        if now >= expires_at {
            return Err(SessionError::Expired);
        }
        Ok((
            LoginFlow {
                expires_at,
                state,
                return_url,
            },
            idx,
        ))
    }
}

/// RFC 7636 §4.1: a code verifier of 43 characters from the unreserved set, derived from the
/// state so that it never has to be stored.
pub fn derive_verifier(key: &KeySet, state: &str) -> String {
    b64url(&key.derive.mac(&[b"pkce\0", state.as_bytes()]))
}

/// OIDC Core §3.1.2.1 `nonce`, bound to this login's state.
pub fn derive_nonce(key: &KeySet, state: &str) -> String {
    b64url(&key.derive.mac(&[b"nonce\0", state.as_bytes()]))
}

/// RFC 7636 §4.2: `S256` code challenge.
pub fn code_challenge(verifier: &str) -> String {
    b64url(&crate::util::sha256(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    pub fn keys(secrets: &[&str]) -> Vec<KeySet> {
        let cfg = serde_json::json!({
            "oidc_issuer_url": "https://issuer.example.com",
            "client_id": "app", "client_secret": "x", "idp_cluster": "idp",
            "cookie_secret": secrets,
        });
        Config::parse(cfg.to_string().as_bytes(), &|_| None)
            .unwrap()
            .keys
    }

    const BIND: &str = "https://issuer.example.com\napp";
    fn sc(name: &str) -> Scope<'_> {
        Scope {
            name,
            binding: BIND,
        }
    }
    const DAY: u64 = 86_400;

    const A: &str = "q83vEjRWeJCrze8SNFZ4kA==";
    const B: &str = "BjsqLqI3hVQyzn3bvtp9kg==";

    fn sample() -> Session {
        Session {
            expires_at: 2000,
            issued_at: 1000,
            claims: ["u1".into(), "alice@example.com".into(), "alice".into()],
            groups: vec![],
            attrs: vec![],
            tokens: None,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let k = keys(&[A]);
        let v = sample().encode(&k[0], &sc("_s")).unwrap();
        assert!(v.starts_with("2."));
        assert_eq!(
            Session::verify(&k, &sc("_s"), &v, 1999, DAY).unwrap(),
            sample()
        );
        assert_eq!(
            Session::verify(&k, &sc("_s"), &v, 2000, DAY),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let k = keys(&[A]);
        let v = sample().encode(&k[0], &sc("_s")).unwrap();
        // Under another cookie name the MAC does not hold.
        assert_eq!(
            Session::verify(&k, &sc("_t"), &v, 1, DAY),
            Err(SessionError::BadMac)
        );
        // Flip each character of the payload and MAC in turn.
        for i in 2..v.len() {
            let mut b = v.clone().into_bytes();
            if b[i] == b'.' {
                continue;
            }
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert!(Session::verify(&k, &sc("_s"), &t, 1, DAY).is_err(), "{i}");
        }
        for bad in [
            "",
            "1",
            "1..",
            "1.AAAA.AAAA",
            "3.AAAA.AAAA",
            "1.AAAA.AAAA.AAAA",
            "1.!!.AAAA",
        ] {
            assert_eq!(
                Session::verify(&k, &sc("_s"), bad, 1, DAY),
                Err(SessionError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn bound_to_issuer_and_client_and_current_lifetime() {
        let k = keys(&[A]);
        let v = sample().encode(&k[0], &sc("_s")).unwrap();
        // Same secret and cookie name, another deployment: refused.
        for other in [
            "https://other.example.com\napp",
            "https://issuer.example.com\napp2",
        ] {
            let scope = Scope {
                name: "_s",
                binding: other,
            };
            assert_eq!(
                Session::verify(&k, &scope, &v, 1001, DAY),
                Err(SessionError::BadMac)
            );
        }
        // issued_at 1000: a lifetime shortened to 100 s ends it at 1100, before expires_at.
        assert!(Session::verify(&k, &sc("_s"), &v, 1099, 100).is_ok());
        assert_eq!(
            Session::verify(&k, &sc("_s"), &v, 1100, 100),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn wrong_key_rejected_rotated_key_accepted() {
        let old = keys(&[A]);
        let v = sample().encode(&old[0], &sc("_s")).unwrap();
        assert_eq!(
            Session::verify(&keys(&[B]), &sc("_s"), &v, 1, DAY),
            Err(SessionError::BadMac)
        );
        assert!(Session::verify(&keys(&[B, A]), &sc("_s"), &v, 1, DAY).is_ok());
    }

    #[test]
    fn session_and_flow_macs_do_not_mix() {
        let k = keys(&[A]);
        let flow = LoginFlow {
            expires_at: 10,
            state: "s".repeat(43),
            return_url: "/".into(),
        };
        let v = flow.encode(&k[0], &sc("_s")).unwrap();
        assert!(Session::verify(&k, &sc("_s"), &v, 1, DAY).is_err());
        assert_eq!(LoginFlow::verify(&k, &sc("_s"), &v, 1).unwrap(), (flow, 0));
        assert_eq!(
            LoginFlow::verify(&k, &sc("_s"), &v, 10),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn groups_and_claims_round_trip_and_old_cookies_still_verify() {
        let k = keys(&[A]);
        let plain = sample();
        let old = plain.encode(&k[0], &sc("_s")).unwrap();
        let mut s = sample();
        s.groups = vec!["admins".into(), "staff".into()];
        s.attrs = vec![
            ("realm_access.roles".into(), vec!["viewer".into()]),
            ("tenant".into(), vec![]),
        ];
        let v = s.encode(&k[0], &sc("_s")).unwrap();
        assert_eq!(Session::verify(&k, &sc("_s"), &v, 1500, DAY).unwrap(), s);
        assert_eq!(
            s.attr("realm_access.roles"),
            Some(&["viewer".to_string()][..])
        );
        assert_eq!(s.attr("nothing"), None);
        // A cookie without the tail (made before groups existed) is a session without them.
        assert_eq!(
            Session::verify(&k, &sc("_s"), &old, 1500, DAY).unwrap(),
            plain
        );
        // Groups only, no attrs.
        let mut g = sample();
        g.groups = vec!["a".into()];
        let v = g.encode(&k[0], &sc("_s")).unwrap();
        assert_eq!(Session::verify(&k, &sc("_s"), &v, 1500, DAY).unwrap(), g);
        // Too many groups for one cookie: no cookie rather than a cut list.
        let mut big = sample();
        big.groups = (0..400).map(|i| format!("group-number-{i}")).collect();
        assert_eq!(big.encode(&k[0], &sc("_s")), None);
    }

    #[test]
    fn an_empty_tail_is_not_a_second_spelling() {
        // Found by fuzzing: the tail with no group and no claim decoded to the session
        // without a tail, whose cookie is other bytes.
        let k = keys(&[A]);
        let mut p = sample().payload().unwrap();
        assert_eq!(from_payload_ok(&p), Ok(sample()));
        p.extend_from_slice(&[0, 0]);
        let v = seal(&k[0].session, SESSION_LABEL, &sc("_s"), &p);
        assert_eq!(
            Session::verify(&k, &sc("_s"), &v, 1100, DAY),
            Err(SessionError::Malformed)
        );
    }

    fn from_payload_ok(p: &[u8]) -> Result<Session, SessionError> {
        Session::from_payload(p)
    }

    #[test]
    fn oversized_claims_refused() {
        let k = keys(&[A]);
        let mut s = sample();
        s.claims[EMAIL] = "a".repeat(MAX_CLAIM_LEN + 1);
        assert_eq!(s.encode(&k[0], &sc("_s")), None);
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let k = keys(&[A]);
        let v = derive_verifier(&k[0], "state");
        assert_eq!(v.len(), 43);
        assert_ne!(v, derive_verifier(&keys(&[B])[0], "state"));
        assert_ne!(derive_nonce(&k[0], "state"), derive_nonce(&k[0], "state2"));
    }

    fn with_tokens(len: usize) -> Session {
        let filler = |c: char| std::iter::repeat_n(c, len).collect::<String>();
        Session {
            tokens: Some(Tokens {
                id_token: filler('i'),
                access_token: filler('a'),
                refresh_token: "rt".into(),
                access_expires_at: 1500,
                refreshed_at: 1000,
                seen_at: 1100,
            }),
            ..sample()
        }
    }

    fn read(keys: &[KeySet], name: &str, values: &[String]) -> Result<Session, SessionError> {
        Session::verify_cookies(
            keys,
            &sc(name),
            &values[0],
            &|i| values.get(i).map(String::as_str),
            1100,
            DAY,
        )
    }

    #[test]
    fn sealed_sessions_round_trip_and_span_chunks() {
        let k = keys(&[A]);
        // Small: one cookie, format 3, no token readable in it.
        let s = with_tokens(100);
        let v = s.encode_cookies(&k[0], &sc("c")).unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].starts_with("3.1."), "{}", v[0]);
        assert!(
            !v[0].contains("iiii")
                && !b64url_decode(&v[0][4..])
                    .unwrap()
                    .windows(4)
                    .any(|w| w == b"iiii")
        );
        assert_eq!(read(&k, "c", &v).unwrap(), s);
        // Large: three chunks, each under the browser's limit.
        let s = with_tokens(4000);
        let v = s.encode_cookies(&k[0], &sc("c")).unwrap();
        assert_eq!(
            v.len(),
            3,
            "{:?}",
            v.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(v.iter().all(|c| c.len() <= MAX_COOKIE_VALUE));
        assert!(v[0].starts_with("3.3."));
        assert_eq!(read(&k, "c", &v).unwrap(), s);
        // Deterministic (synthetic nonce): the same session, the same cookies.
        assert_eq!(s.encode_cookies(&k[0], &sc("c")).unwrap(), v);
        // Without tokens: format 2, as before.
        let plain = sample().encode_cookies(&k[0], &sc("c")).unwrap();
        assert!(plain[0].starts_with("2."));
        assert_eq!(read(&k, "c", &plain).unwrap(), sample());
        // Too large for MAX_CHUNKS: refused, not cut.
        assert!(with_tokens(10_000)
            .encode_cookies(&k[0], &sc("c"))
            .is_none());
    }

    #[test]
    fn sealed_sessions_refuse_tampering_missing_chunks_and_other_scopes() {
        let k = keys(&[A]);
        let s = with_tokens(4000);
        let v = s.encode_cookies(&k[0], &sc("c")).unwrap();
        for i in 0..v.len() {
            let mut bad = v.clone();
            let mut b = bad[i].clone().into_bytes();
            let at = b.len() - 3;
            b[at] = if b[at] == b'A' { b'B' } else { b'A' };
            bad[i] = String::from_utf8(b).unwrap();
            assert!(read(&k, "c", &bad).is_err(), "chunk {i} tampered");
        }
        // A chunk missing, or the chunks of an older session mixed in.
        assert_eq!(read(&k, "c", &v[..2]), Err(SessionError::Malformed));
        let other = with_tokens(3990).encode_cookies(&k[0], &sc("c")).unwrap();
        let mixed = vec![v[0].clone(), other[1].clone(), v[2].clone()];
        assert_eq!(read(&k, "c", &mixed), Err(SessionError::BadMac));
        // Another cookie name, another binding, another key: refused.
        assert_eq!(read(&k, "d", &v), Err(SessionError::BadMac));
        let other_bind = Scope {
            name: "c",
            binding: "https://x\napp",
        };
        assert!(Session::verify_cookies(
            &k,
            &other_bind,
            &v[0],
            &|i| v.get(i).map(String::as_str),
            1100,
            DAY
        )
        .is_err());
        assert_eq!(read(&keys(&[B]), "c", &v), Err(SessionError::BadMac));
        // Rotation: signed with the new key, read with both; the old key's still read.
        let both = keys(&[B, A]);
        assert_eq!(read(&both, "c", &v).unwrap(), s);
        // Expiry as format 2.
        assert_eq!(
            Session::verify_cookies(
                &k,
                &sc("c"),
                &v[0],
                &|i| v.get(i).map(String::as_str),
                2000,
                DAY
            ),
            Err(SessionError::Expired)
        );
        for junk in ["3.", "3.0.x", "3.9.x", "3.1.", "3.1.%%%", "3.x.y"] {
            assert!(read(&k, "c", &[junk.to_string()]).is_err(), "{junk}");
        }
    }

    #[test]
    fn chunk_names() {
        assert_eq!(chunk_name("_s", 0), "_s");
        assert_eq!(chunk_name("_s", 2), "_s_2");
        assert!(is_chunk_of(b"_s", b"_s_1") && is_chunk_of(b"_s", b"_s_4"));
        for no in [
            &b"_s_5"[..],
            b"_s_0",
            b"_s_12",
            b"_s_",
            b"_s",
            b"_s_csrf_x",
            b"_t_1",
        ] {
            assert!(!is_chunk_of(b"_s", no), "{:?}", String::from_utf8_lossy(no));
        }
    }
}
