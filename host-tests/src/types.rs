//! What a test hands the fake Envoy and what it gets back: requests, header lists, callouts
//! and outcomes. Nothing here knows about the plugin under test.

use std::fmt;
use std::time::Duration;

/// An ordered list of header fields, as Envoy keeps them (repeats allowed, order kept).
/// Lookups ignore ASCII case.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        Headers(
            pairs
                .iter()
                .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All header names, lower-cased.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(k, _)| k.to_ascii_lowercase()).collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The cookies of every `cookie` header, in order (`name`, `value`).
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.get_all("cookie")
            .into_iter()
            .flat_map(|h| h.split(';'))
            .filter_map(|c| {
                let c = c.trim();
                let (k, v) = c.split_once('=')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| format!("{k}: {v}")))
            .finish()
    }
}

/// A downstream request as a test describes it. Envoy lower-cases header names before a
/// filter sees them, and so does [`Request::header`]; [`Request::header_raw`] keeps the case
/// as given (other hosts do not all normalise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

pub const DEFAULT_AUTHORITY: &str = "app.example.com";

impl Request {
    /// `method` on `path` (path and query) at `https://app.example.com`.
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            method: method.to_string(),
            scheme: "https".to_string(),
            authority: DEFAULT_AUTHORITY.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// A GET of an absolute URL (`https://host[:port]/path?query`), e.g. a `Location` the
    /// plugin sent. Panics on anything else: this is test input.
    pub fn get_url(url: &str) -> Self {
        let (scheme, rest) = url
            .split_once("://")
            .unwrap_or_else(|| panic!("get_url: not an absolute URL: {url:?}"));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Request::get(path).scheme(scheme).authority(authority)
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.to_string();
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_string();
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_string();
        self
    }

    /// Adds a header; the name is lower-cased as Envoy does.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Adds a header with its name exactly as given.
    pub fn header_raw(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `name=value` to the request's `cookie` header (one header, `; `-separated, as a
    /// browser sends it over HTTP/1.1).
    pub fn cookie(mut self, name: &str, value: &str) -> Self {
        let pair = format!("{name}={value}");
        match self.headers.iter_mut().find(|(k, _)| k == "cookie") {
            Some((_, v)) => {
                v.push_str("; ");
                v.push_str(&pair);
            }
            None => self.headers.push(("cookie".to_string(), pair)),
        }
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The header list the plugin sees: pseudo-headers first, then the rest.
    pub fn to_header_list(&self) -> Vec<(String, String)> {
        let mut h = vec![
            (":authority".to_string(), self.authority.clone()),
            (":path".to_string(), self.path.clone()),
            (":method".to_string(), self.method.clone()),
            (":scheme".to_string(), self.scheme.clone()),
        ];
        h.extend(self.headers.iter().cloned());
        if !self.body.is_empty()
            && !self
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            h.push(("content-length".to_string(), self.body.len().to_string()));
        }
        h
    }
}

/// An HTTP call the plugin dispatched (`proxy_http_call`) and that waits for an answer
/// ([`crate::Host::respond`]) or a timeout ([`crate::Host::timeout`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    pub token: u32,
    /// The context that made the call (the root context, or an HTTP stream).
    pub context_id: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout: Duration,
}

impl Callout {
    pub fn method(&self) -> &str {
        self.headers.get(":method").unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.headers.get(":path").unwrap_or("")
    }
    pub fn authority(&self) -> &str {
        self.headers.get(":authority").unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A local reply the plugin sent (`proxy_send_local_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// `status_code_details` as the plugin gave it.
    pub details: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request that went on upstream, as the upstream saw it, and the response the client got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub request_headers: Headers,
    pub request_body: Vec<u8>,
    pub response_status: u32,
    pub response_headers: Headers,
    pub response_body: Vec<u8>,
}

/// What became of a request (or of a callout's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request went upstream with these headers; the client got the (possibly modified)
    /// upstream response.
    Continued {
        request_headers: Headers,
        request_body: Vec<u8>,
        response_status: u32,
        response_headers: Headers,
    },
    /// The plugin answered the request itself.
    Replied {
        status: u32,
        headers: Headers,
        body: Vec<u8>,
    },
    /// The request is paused; these callouts of its context are pending. An empty list means
    /// the request would hang in Envoy.
    Paused { callouts: Vec<Callout> },
    /// The plugin reset the stream (`proxy_close_stream`).
    Reset,
    /// A callout of the root context was answered; these are the callouts now pending
    /// (of any context).
    Background { callouts: Vec<Callout> },
}

impl Outcome {
    /// The reply, or a panic describing what happened instead.
    #[track_caller]
    pub fn expect_reply(self) -> Reply {
        match self {
            Outcome::Replied {
                status,
                headers,
                body,
            } => Reply {
                status,
                headers,
                body,
                details: String::new(),
            },
            other => panic!("expected a local reply, got {other:#?}"),
        }
    }

    /// The request as forwarded upstream, or a panic.
    #[track_caller]
    pub fn expect_continued(self) -> Headers {
        match self {
            Outcome::Continued {
                request_headers, ..
            } => request_headers,
            other => panic!("expected the request to continue upstream, got {other:#?}"),
        }
    }

    /// The pending callouts of a paused request, or a panic.
    #[track_caller]
    pub fn expect_paused(self) -> Vec<Callout> {
        match self {
            Outcome::Paused { callouts } => callouts,
            other => panic!("expected the request to be paused on callouts, got {other:#?}"),
        }
    }

    /// The status the client got.
    pub fn status(&self) -> Option<u32> {
        match self {
            Outcome::Replied { status, .. } => Some(*status),
            Outcome::Continued {
                response_status, ..
            } => Some(*response_status),
            _ => None,
        }
    }

    pub fn is_continued(&self) -> bool {
        matches!(self, Outcome::Continued { .. })
    }
}

/// One `proxy_log` (or WASI stdout/stderr) line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.level, self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// A metric the plugin defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub value: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}
