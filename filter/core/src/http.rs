//! HTTP pieces: the request view the core decides on, Cookie parsing (RFC 6265 §5.4),
//! Set-Cookie building, query parameters, and the names of identity headers.

use crate::claims::CLAIMS;
use std::borrow::Cow;

use crate::config::CookieConfig;

/// What the core sees of a request. Built by the glue from the host's header map.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: Cow<'a, str>,
    pub scheme: Cow<'a, str>,
    pub authority: Cow<'a, str>,
    /// `:path` as received: path, query and (rarely) fragment.
    pub path: Cow<'a, str>,
    /// Every request header but the pseudo-headers, names lower-case as the proxy delivers
    /// them. A value that is not UTF-8 is seen here with U+FFFD in place of its bad bytes;
    /// only the header map the proxy holds is forwarded.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// A body (or trailers) follows these headers: the proxy did not mark them end of stream.
    pub body_follows: bool,
}

impl<'a> Request<'a> {
    /// The core's view of a header map as the proxy serializes it (see `headermap`). `host`
    /// stands in for a missing `:authority`.
    pub fn from_pairs(pairs: &[(&'a [u8], &'a [u8])]) -> Request<'a> {
        let mut req = Request {
            headers: Vec::with_capacity(pairs.len()),
            ..Default::default()
        };
        for &(k, v) in pairs {
            let v = text(v);
            match k {
                b":method" => req.method = v,
                b":scheme" => req.scheme = v,
                b":authority" => req.authority = v,
                b":path" => req.path = v,
                _ if k.first() == Some(&b':') => {}
                _ => req.headers.push((text(k), v)),
            }
        }
        if req.authority.is_empty() {
            if let Some((_, h)) = req.headers.iter().find(|(k, _)| k == "host") {
                req.authority = h.clone();
            }
        }
        req
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// The path alone: no query, no fragment.
    pub fn path_only(&self) -> &str {
        let end = self.path.bytes().position(|b| b == b'?' || b == b'#');
        &self.path[..end.unwrap_or(self.path.len())]
    }

    pub fn query(&self) -> &str {
        let before_fragment = &self.path[..self.path.find('#').unwrap_or(self.path.len())];
        match before_fragment.find('?') {
            Some(i) => &before_fragment[i + 1..],
            None => "",
        }
    }

    /// Every cookie of every `Cookie` header, in order.
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| parse_cookie_header(v))
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The `host` part of `:authority`, lower-case.
    pub fn host(&self) -> String {
        host_of_authority(&self.authority).to_ascii_lowercase()
    }
}

/// `b` as text: borrowed when it is UTF-8 (the validator's word-at-a-time path), else with
/// U+FFFD for each bad sequence (`from_utf8_lossy`'s slower scan only then).
fn text(b: &[u8]) -> Cow<'_, str> {
    match core::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

pub fn host_of_authority(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// An `:authority` we are willing to build URLs from: `host[:port]`, no userinfo, no path.
pub fn valid_authority(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// RFC 6265 §5.2: the whitespace around cookie pieces, names and values is SP and HTAB
/// only. Every reader of Cookie headers trims with this, so the session lookup and the
/// Cookie rewrite can never disagree on what a name is.
fn trim_wsp(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// One `;`-separated piece of a Cookie header (RFC 6265 §5.4 as browsers send it, §5.2 for
/// the splitting): the piece trimmed, its name (before the first `=`, trimmed; the whole
/// piece when there is no `=`), and its value (trimmed, one pair of quotes removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookiePiece<'a> {
    pub piece: &'a [u8],
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// The one Cookie-header parser. Empty pieces are skipped.
pub fn cookie_pieces(v: &[u8]) -> impl Iterator<Item = CookiePiece<'_>> {
    // `v.split(';')`, with the word-at-a-time search: a session's cookie is long.
    let mut rest = Some(v);
    let split = std::iter::from_fn(move || {
        let r = rest?;
        Some(match crate::util::find_byte(r, b';') {
            Some(i) => {
                rest = r.get(i + 1..);
                &r[..i]
            }
            None => {
                rest = None;
                r
            }
        })
    });
    split.filter_map(|raw| {
        let piece = trim_wsp(raw);
        if piece.is_empty() {
            return None;
        }
        let (name, value) = match piece.iter().position(|&b| b == b'=') {
            Some(i) => {
                let v = trim_wsp(&piece[i + 1..]);
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|x| x.strip_suffix(b"\""))
                    .unwrap_or(v);
                (trim_wsp(&piece[..i]), Some(v))
            }
            None => (piece, None),
        };
        Some(CookiePiece { piece, name, value })
    })
}

/// Name/value pairs of a `Cookie` header; pieces without `=` are skipped.
pub fn parse_cookie_header(v: &str) -> impl Iterator<Item = (&str, &str)> {
    // Pieces split and trimmed at ASCII bytes of a `str` start and end on char boundaries:
    // each is taken back out of `v` by its offsets (`get` checks the boundaries in O(1)),
    // not validated again byte by byte.
    let of = move |part: &[u8]| {
        let start = (part.as_ptr() as usize).wrapping_sub(v.as_ptr() as usize);
        v.get(start..start.checked_add(part.len())?)
    };
    cookie_pieces(v.as_bytes()).filter_map(move |p| Some((of(p.name)?, of(p.value?)?)))
}

/// A `Cookie` header value without the cookies whose names `drop` picks; every other piece is
/// kept byte for byte (whatever its encoding), joined by `; `. `None` when `drop` picks none
/// (the header stays as it is); empty when nothing is left.
pub fn strip_cookies(v: &[u8], drop: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    let mut dropped = false;
    for p in cookie_pieces(v) {
        if drop(p.name) {
            dropped = true;
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(p.piece);
    }
    dropped.then_some(out)
}

/// The attributes a cookie of ours is set with; deletion must repeat them exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub httponly: bool,
    pub samesite: &'static str,
}

impl CookieAttrs {
    /// Session cookie attributes for a request to `host`: the first configured cookie domain
    /// that the host is in (as oauth2-proxy picks it), else a host-only cookie.
    pub fn session(c: &CookieConfig, host: &str) -> Self {
        let domain = c
            .domains
            .iter()
            .find(|d| d.matches(host))
            .map(|d| d.cookie_domain());
        CookieAttrs {
            path: c.path.clone(),
            domain,
            secure: c.secure,
            httponly: c.httponly,
            samesite: c.samesite.as_str(),
        }
    }

    pub fn set(&self, name: &str, value: &str, max_age: u64) -> String {
        let mut s = String::with_capacity(name.len() + value.len() + self.path.len() + 96);
        s.push_str(name);
        s.push('=');
        s.push_str(value);
        s.push_str("; Path=");
        s.push_str(&self.path);
        if let Some(d) = &self.domain {
            s.push_str("; Domain=");
            s.push_str(d);
        }
        s.push_str("; Max-Age=");
        crate::util::push_decimal(&mut s, max_age);
        if self.httponly {
            s.push_str("; HttpOnly");
        }
        if self.secure {
            s.push_str("; Secure");
        }
        s.push_str("; SameSite=");
        s.push_str(self.samesite);
        s
    }

    /// A Set-Cookie that deletes the cookie set with these attributes (RFC 6265 §3.1).
    pub fn clear(&self, name: &str) -> String {
        let mut s = self.set(name, "", 0);
        s.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        s
    }
}

/// Query parameters, decoded (application/x-www-form-urlencoded).
pub fn query_params(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Identity headers no claim of ours sets (yet) that upstreams of oauth2-proxy trust: a
/// client's copies are removed like those of `claims::CLAIMS`.
pub const RESERVED_IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-request-groups",
    "x-auth-request-access-token",
];

/// Every header a client may not send us: each claim's two headers, and the reserved ones.
pub fn identity_header_names() -> impl Iterator<Item = &'static str> {
    CLAIMS
        .iter()
        .flat_map(|c| [c.forwarded, c.auth_request])
        .chain(RESERVED_IDENTITY_HEADERS.iter().copied())
}

/// True when `name` spells one of the identity headers in any case, with `_` for `-`.
pub fn is_identity_header(name: &str) -> bool {
    // All of them start with `x-`: most request headers are out after one byte.
    let first = name.as_bytes().first().copied().unwrap_or(0);
    if first != b'x' && first != b'X' {
        return false;
    }
    identity_header_names().any(|h| same_header_spelling(h, name))
}

/// Whether `name` spells `lower` (a lower-case header name) in any case, with `_` for `-`:
/// the spellings a proxy or an upstream framework may take for the same header.
pub fn same_header_spelling(lower: &str, name: &str) -> bool {
    lower.len() == name.len()
        && lower.bytes().zip(name.bytes()).all(|(a, b)| {
            let b = b.to_ascii_lowercase();
            a == b || (a == b'-' && b == b'_')
        })
}

/// Percent-encodes a value for a query string or form body.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;

    #[test]
    fn identity_header_spellings() {
        for n in [
            "x-forwarded-email",
            "X-Forwarded-Email",
            "x_forwarded_email",
            "X_AUTH_REQUEST_USER",
            "x-auth-request_preferred-username",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "cookie",
            "x-forwarded-emails",
            "",
        ] {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn cookies_across_headers() {
        let r = Request {
            headers: vec![
                ("cookie".into(), "a=1; _oauth2_proxy=v; b=\"q\"".into()),
                ("cookie".into(), "c=3;junk; d=".into()),
            ],
            ..Default::default()
        };
        let all: Vec<_> = r.cookies().collect();
        assert_eq!(
            all,
            vec![
                ("a", "1"),
                ("_oauth2_proxy", "v"),
                ("b", "q"),
                ("c", "3"),
                ("d", "")
            ]
        );
        assert_eq!(r.cookie("_oauth2_proxy"), Some("v"));
        assert_eq!(r.cookie("x"), None);
    }

    #[test]
    fn strip_cookies_keeps_other_bytes() {
        let ours = |n: &[u8]| n == b"_s" || n.starts_with(b"_s_csrf_");
        assert_eq!(
            strip_cookies(b"a=1; _s=v;b=caf\xe9 ; _s_csrf_x=y;;junk", ours).as_deref(),
            Some(&b"a=1; b=caf\xe9; junk"[..])
        );
        assert_eq!(strip_cookies(b" _s = v ; _s_csrf_1=2", ours), Some(vec![]));
        assert_eq!(strip_cookies(b"x=\"q\"; _t=_s", ours), None);
    }

    #[test]
    fn request_from_pairs() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"app.example.com"),
            (b":path", b"/a?b"),
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":protocol", b"x"),
            (b"x-note", b"caf\xe9"),
            (b"cookie", b"a=1"),
        ];
        let r = Request::from_pairs(&pairs);
        assert_eq!(
            (&*r.authority, &*r.path, &*r.method, &*r.scheme),
            ("app.example.com", "/a?b", "GET", "https")
        );
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.header("x-note"), Some("caf\u{fffd}"));
        assert_eq!(r.cookie("a"), Some("1"));
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"host", b"h.example"), (b":path", b"/")];
        assert_eq!(Request::from_pairs(&pairs).authority, "h.example");
    }

    #[test]
    fn path_query_split() {
        let r = Request {
            path: "/oauth2/callback?code=1&state=2#frag".into(),
            ..Default::default()
        };
        assert_eq!(r.path_only(), "/oauth2/callback");
        assert_eq!(r.query(), "code=1&state=2");
        let r = Request {
            path: "/x#a?b".into(),
            ..Default::default()
        };
        assert_eq!(r.path_only(), "/x");
        assert_eq!(r.query(), "");
    }

    #[test]
    fn authority_host() {
        assert_eq!(host_of_authority("example.com:8443"), "example.com");
        assert_eq!(host_of_authority("example.com"), "example.com");
        assert_eq!(host_of_authority("[::1]:80"), "[::1]");
        assert!(valid_authority("127.0.0.1:8080"));
        assert!(!valid_authority("evil.com/x"));
        assert!(!valid_authority("a@b"));
        assert!(!valid_authority(""));
    }

    #[test]
    fn set_and_clear_cookie_match_attributes() {
        let c = CookieConfig {
            name: "_oauth2_proxy".into(),
            domains: vec![crate::domain::DomainPattern::parse(
                ".example.com",
                crate::domain::LeadingDot::WithSubdomains,
                false,
            )
            .unwrap()],
            path: "/".into(),
            expire_secs: 60,
            refresh_secs: 0,
            idle_secs: 0,
            secure: true,
            httponly: true,
            samesite: SameSite::Lax,
        };
        let a = CookieAttrs::session(&c, "app.example.com");
        assert_eq!(
            a.set("n", "v", 60),
            "n=v; Path=/; Domain=.example.com; Max-Age=60; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(
            a.clear("n"),
            "n=; Path=/; Domain=.example.com; Max-Age=0; HttpOnly; Secure; SameSite=Lax; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            CookieAttrs::session(&c, "example.com").domain.as_deref(),
            Some(".example.com")
        );
        assert_eq!(CookieAttrs::session(&c, "badexample.com").domain, None);
    }

    #[test]
    fn one_whitespace_rule_for_lookup_and_strip() {
        // U+00A0 and other non-ASCII spaces are part of the name: not our cookie for the
        // lookup, and not stripped either (RFC 6265 §5.2 trims SP and HTAB only).
        let h = "\u{a0}_oauth2_proxy=forged; \t_oauth2_proxy = real ;x=1";
        let names: Vec<&str> = parse_cookie_header(h).map(|(k, _)| k).collect();
        assert_eq!(names, ["\u{a0}_oauth2_proxy", "_oauth2_proxy", "x"]);
        assert_eq!(
            parse_cookie_header(h).find(|(k, _)| *k == "_oauth2_proxy"),
            Some(("_oauth2_proxy", "real"))
        );
        let out = strip_cookies(h.as_bytes(), |n| n == b"_oauth2_proxy").unwrap();
        assert_eq!(out, "\u{a0}_oauth2_proxy=forged; x=1".as_bytes());
        // A vertical tab or form feed is not trimmed either, in both readers.
        let h = "\x0b_s=v";
        assert_eq!(parse_cookie_header(h).next(), Some(("\x0b_s", "v")));
        assert_eq!(strip_cookies(h.as_bytes(), |n| n == b"_s"), None);
    }
}
