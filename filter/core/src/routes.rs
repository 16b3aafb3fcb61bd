//! Routes that pass without a session: oauth2-proxy's `skip_auth_routes` (`METHOD=^regex$`,
//! the method optional) and `skip_auth_regex`. Patterns are compiled at configure time and
//! matched, anchored, on the normalised path; a path whose meaning an upstream could read
//! otherwise (an encoded `/` or `\`, `;` parameters, dot segments above the root) is never
//! skipped, so a pattern cannot be bypassed through `//`, `/./`, `/../`, `%2F`, `%2e` or `;`.

use regex_lite::Regex;

#[derive(Debug, Clone)]
pub struct SkipRoute {
    /// Upper case; `None`: any method.
    pub method: Option<String>,
    pub path: Regex,
    /// As configured, for errors and equality.
    pub source: String,
}

impl PartialEq for SkipRoute {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for SkipRoute {}

/// `GET=^/health$`, or `^/static/` for any method. The regex must be anchored at the start:
/// an unanchored pattern matches anywhere in the path (`/admin?x=/health`, `/x/health`), which
/// is rarely what the author meant and would let protected paths through.
pub fn parse_skip_route(raw: &str, with_method: bool) -> Result<SkipRoute, String> {
    let (method, pattern) = match raw.split_once('=') {
        Some((m, p))
            if with_method && !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            (Some(m.to_ascii_uppercase()), p)
        }
        _ => (None, raw),
    };
    if !pattern.starts_with('^') {
        return Err(format!(
            "{raw:?}: the path pattern must start with ^ (unanchored, it matches anywhere in the path)"
        ));
    }
    let path = Regex::new(pattern).map_err(|e| format!("{raw:?}: {e}"))?;
    Ok(SkipRoute {
        method,
        path,
        source: raw.to_string(),
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path as an upstream would resolve it: no query; `%XX` of unreserved characters
/// decoded (other escapes kept, in upper case); `//` collapsed; `.` and `..` segments
/// resolved. `None` when its meaning is ambiguous: `\`, `;`, an encoded `/`, `\` or control
/// character, a bad escape, or `..` above the root.
pub fn normalise_path(path: &str) -> Option<String> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') || path.contains(['\\', ';']) {
        return None;
    }
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) else {
                return None;
            };
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(c));
            } else if c < 0x20 || c == 0x7f || matches!(c, b'/' | b'\\' | b';') {
                return None;
            } else {
                decoded.push_str(&format!("%{c:02X}"));
            }
            i += 3;
        } else {
            decoded.push(char::from(b[i]));
            i += 1;
        }
    }
    if !decoded.is_ascii() {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || (decoded.ends_with('/') && !out.is_empty()) {
        s.push('/');
    }
    Some(s)
}

/// Whether a request with `method` and `path` (as sent) is on one of `routes`.
pub fn skips(routes: &[SkipRoute], method: &str, path: &str) -> bool {
    if routes.is_empty() {
        return false;
    }
    let Some(p) = normalise_path(path) else {
        return false;
    };
    routes.iter().any(|r| {
        r.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && r.path.is_match(&p)
    })
}

/// How a `routes` entry matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `path`: ending in `/`, any path under it; else that path exactly or under it as a
    /// directory (`/admin` matches `/admin` and `/admin/x`, not `/administrator`).
    Prefix(String),
    /// `regex`, anchored with `^`.
    Regex(Regex),
}

/// What a `routes` entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction<P> {
    /// Sign-in as for the host, then this policy (the host's, with the entry's keys).
    Allow(Box<P>),
    /// Pass without a session and without identity (as `skip_auth_routes`).
    Skip,
    /// Refused for everyone: `403 route_denied`.
    Deny,
}

/// One `routes` entry: methods and a path → an action.
#[derive(Debug, Clone)]
pub struct RouteRule<P> {
    /// Upper case; empty: any method.
    pub methods: Vec<String>,
    pub path: PathMatch,
    /// Compare the path case-insensitively (for upstreams that do).
    pub ignore_case: bool,
    pub action: RouteAction<P>,
    /// The entry's `path` or `regex` as configured, for equality.
    pub source: String,
}

impl<P: PartialEq> PartialEq for RouteRule<P> {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.methods == other.methods
            && self.ignore_case == other.ignore_case
            && self.action == other.action
    }
}

impl<P: Eq> Eq for RouteRule<P> {}

impl<P> RouteRule<P> {
    /// Whether this entry takes `method` on `path` (normalised, hence ASCII). With
    /// `ignore_case`, a regex is compiled case-insensitive and a prefix compared so.
    fn matches(&self, method: &str, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        let starts = |p: &str| match path.get(..p.len()) {
            Some(head) if self.ignore_case => head.eq_ignore_ascii_case(p),
            Some(head) => head == p,
            None => false,
        };
        match &self.path {
            PathMatch::Prefix(p) if p.ends_with('/') => starts(p),
            PathMatch::Prefix(p) => {
                starts(p) && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// What `routes` say of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'a, P> {
    /// The first entry that matches.
    Rule(&'a RouteRule<P>),
    /// None matches: the host's policy applies.
    None,
    /// The path's meaning is ambiguous (see `normalise_path`) and an entry could refuse or
    /// narrow it: the request is refused rather than guessed at.
    Ambiguous,
}

/// The first of `routes` that takes `method` on `path` (as sent), matched on the normalised
/// path.
pub fn route_for<'a, P>(routes: &'a [RouteRule<P>], method: &str, path: &str) -> RouteMatch<'a, P> {
    if routes.is_empty() {
        return RouteMatch::None;
    }
    let Some(p) = normalise_path(path) else {
        return if routes.iter().all(|r| matches!(r.action, RouteAction::Skip)) {
            RouteMatch::None
        } else {
            RouteMatch::Ambiguous
        };
    };
    routes
        .iter()
        .find(|r| r.matches(method, &p))
        .map_or(RouteMatch::None, RouteMatch::Rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let n = |p: &str| normalise_path(p);
        assert_eq!(n("/").as_deref(), Some("/"));
        assert_eq!(n("/a/b?x=/health").as_deref(), Some("/a/b"));
        assert_eq!(n("//health").as_deref(), Some("/health"));
        assert_eq!(n("/./health").as_deref(), Some("/health"));
        assert_eq!(n("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(n("/public/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(n("/%68ealth").as_deref(), Some("/health"));
        assert_eq!(n("/a%20b/").as_deref(), Some("/a%20b/"));
        assert_eq!(n("/dir/").as_deref(), Some("/dir/"));
        assert_eq!(n("/%c3%a9").as_deref(), Some("/%C3%A9"));
        for bad in [
            "/public%2F..%2Fadmin",
            "/public;/admin",
            "/a\\b",
            "/..",
            "/a/../..",
            "/%zz",
            "/%0a",
            "x",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn parsing() {
        let r = parse_skip_route("GET=^/health$", true).unwrap();
        assert_eq!(r.method.as_deref(), Some("GET"));
        let r = parse_skip_route("^/q=1$", true).unwrap();
        assert_eq!(r.method, None);
        // skip_auth_regex takes no method: `GET=...` is a pattern (and unanchored).
        assert!(parse_skip_route("GET=^/x$", false).is_err());
        assert!(parse_skip_route("/health", true).is_err());
        assert!(parse_skip_route("GET=/health", true).is_err());
        assert!(parse_skip_route("^/(unclosed", true).is_err());
    }

    #[test]
    fn matching_and_bypass_attempts() {
        let routes = vec![
            parse_skip_route("GET=^/health$", true).unwrap(),
            parse_skip_route("^/public/", true).unwrap(),
        ];
        let s = |m: &str, p: &str| skips(&routes, m, p);
        assert!(s("GET", "/health"));
        assert!(s("get", "/health?probe=1"));
        assert!(!s("POST", "/health"));
        assert!(s("POST", "/public/x.css"));
        assert!(s("GET", "//public//x.css"));
        for p in [
            "/healthz",
            "/x/health",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public%2F..%2Fadmin",
            "/public/..;/admin",
            "/public;x/../admin",
            "/PUBLIC/../admin",
            "/admin?/public/",
            "/admin#/public/",
        ] {
            assert!(!s("GET", p), "{p}");
        }
        assert!(!skips(&[], "GET", "/health"));
    }
}
