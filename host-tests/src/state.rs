//! The fake Envoy's state for one VM: everything the host calls read and write. One per
//! wasmtime `Store`, so tests never share any of it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;

use crate::types::{Callout, Headers, LogLevel, LogLine, Metric, Reply};

/// A header list as the host keeps it.
pub type Pairs = Vec<(String, String)>;

/// proxy-wasm ABI status codes (`proxy_status_t`).
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const SERIALIZATION_FAILURE: i32 = 3;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// The callback the host is in, for the ABI's "readable only in ..." rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    VmStart,
    Configure,
    Stream,
    HttpCallResponse,
    Tick,
}

/// Where an HTTP stream is in its life; `next` is the callback the host makes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    Upstream,
    ResponseHeaders,
    ResponseBody,
    Complete,
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub next: Step,
    /// Waiting for `proxy_continue_stream` after a callback returned Pause.
    pub paused: bool,
    /// `proxy_continue_stream(HttpRequest | HttpResponse)` was called.
    pub resumed: bool,
    pub reset: bool,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub request_trailers: Vec<(String, String)>,
    pub response_status: u32,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub response_trailers: Vec<(String, String)>,
    pub local_reply: Option<Reply>,
    /// The request as it went upstream.
    pub forwarded: Option<(Pairs, Vec<u8>)>,
}

/// The answer to a callout while `proxy_on_http_call_response` runs.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct PendingCallout {
    pub callout: Callout,
    /// Host clock (ns) at which Envoy times the call out; `None` for no timeout.
    pub deadline: Option<u64>,
}

pub struct State {
    pub now_ns: u64,
    pub monotonic_base_ns: u64,
    pub rng: ChaCha20Rng,
    pub env: Vec<(String, String)>,
    pub log_level: LogLevel,
    pub logs: Vec<LogLine>,
    pub transcript: Vec<String>,
    pub effective: u32,
    pub root_id: u32,
    pub phase: Phase,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub streams: BTreeMap<u32, Stream>,
    pub callouts: Vec<PendingCallout>,
    pub next_token: u32,
    pub call_response: Option<CallResponse>,
    pub tick_period_ms: u32,
    pub last_tick_ns: u64,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub shared_data: HashMap<String, (Vec<u8>, u32)>,
    pub queues: Vec<(String, VecDeque<Vec<u8>>)>,
    pub metrics: Vec<Metric>,
    /// Known clusters; `None` accepts any name.
    pub clusters: Option<Vec<String>>,
    pub done_called: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl State {
    pub fn new(
        now_ns: u64,
        rng: ChaCha20Rng,
        env: Vec<(String, String)>,
        log_level: LogLevel,
        clusters: Option<Vec<String>>,
    ) -> Self {
        State {
            now_ns,
            monotonic_base_ns: now_ns,
            rng,
            env,
            log_level,
            logs: Vec::new(),
            transcript: Vec::new(),
            effective: 0,
            root_id: 0,
            phase: Phase::Idle,
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            streams: BTreeMap::new(),
            callouts: Vec::new(),
            next_token: 1,
            call_response: None,
            tick_period_ms: 0,
            last_tick_ns: now_ns,
            properties: HashMap::new(),
            shared_data: HashMap::new(),
            queues: Vec::new(),
            metrics: Vec::new(),
            clusters,
            done_called: false,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    pub fn note(&mut self, line: String) {
        self.transcript.push(line);
    }

    pub fn stream(&self) -> Option<&Stream> {
        self.streams.get(&self.effective)
    }

    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        self.streams.get_mut(&self.effective)
    }

    /// The header map `map_type`, or the status Envoy gives when it is not available.
    pub fn map(&self, map_type: i32) -> Result<&Vec<(String, String)>, i32> {
        match map_type {
            0..=3 => {
                let s = self.stream().ok_or(status::BAD_ARGUMENT)?;
                Ok(match map_type {
                    0 => &s.request_headers,
                    1 => &s.request_trailers,
                    2 => &s.response_headers,
                    _ => &s.response_trailers,
                })
            }
            6 | 7 => {
                let r = self.call_response.as_ref().ok_or(status::BAD_ARGUMENT)?;
                Ok(if map_type == 6 {
                    &r.headers
                } else {
                    &r.trailers
                })
            }
            _ => Err(status::BAD_ARGUMENT),
        }
    }

    pub fn map_mut(&mut self, map_type: i32) -> Result<&mut Vec<(String, String)>, i32> {
        match map_type {
            0..=3 => {
                let s = self.stream_mut().ok_or(status::BAD_ARGUMENT)?;
                Ok(match map_type {
                    0 => &mut s.request_headers,
                    1 => &mut s.request_trailers,
                    2 => &mut s.response_headers,
                    _ => &mut s.response_trailers,
                })
            }
            6 | 7 => {
                let r = self.call_response.as_mut().ok_or(status::BAD_ARGUMENT)?;
                Ok(if map_type == 6 {
                    &mut r.headers
                } else {
                    &mut r.trailers
                })
            }
            _ => Err(status::BAD_ARGUMENT),
        }
    }

    /// The buffer `buffer_type` as readable now, or the status for "not available".
    pub fn buffer(&self, buffer_type: i32) -> Result<&[u8], i32> {
        match buffer_type {
            0 => self
                .stream()
                .map(|s| s.request_body.as_slice())
                .ok_or(status::NOT_FOUND),
            1 => self
                .stream()
                .map(|s| s.response_body.as_slice())
                .ok_or(status::NOT_FOUND),
            4 => self
                .call_response
                .as_ref()
                .map(|r| r.body.as_slice())
                .ok_or(status::NOT_FOUND),
            6 => Ok(&self.vm_config),
            7 => Ok(&self.plugin_config),
            2 | 3 | 5 | 8 => Err(status::NOT_FOUND),
            _ => Err(status::BAD_ARGUMENT),
        }
    }

    pub fn buffer_mut(&mut self, buffer_type: i32) -> Result<&mut Vec<u8>, i32> {
        match buffer_type {
            0 => self
                .stream_mut()
                .map(|s| &mut s.request_body)
                .ok_or(status::NOT_FOUND),
            1 => self
                .stream_mut()
                .map(|s| &mut s.response_body)
                .ok_or(status::NOT_FOUND),
            2..=8 => Err(status::NOT_FOUND),
            _ => Err(status::BAD_ARGUMENT),
        }
    }

    pub fn pending_for(&self, context_id: u32) -> Vec<Callout> {
        self.callouts
            .iter()
            .filter(|p| p.callout.context_id == context_id)
            .map(|p| p.callout.clone())
            .collect()
    }

    pub fn deadline_for(&self, timeout: Duration) -> Option<u64> {
        if timeout.is_zero() {
            None
        } else {
            Some(self.now_ns.saturating_add(timeout.as_nanos() as u64))
        }
    }
}

pub fn map_type_name(t: i32) -> &'static str {
    match t {
        0 => "request_headers",
        1 => "request_trailers",
        2 => "response_headers",
        3 => "response_trailers",
        4 => "grpc_initial_metadata",
        5 => "grpc_trailing_metadata",
        6 => "http_call_response_headers",
        7 => "http_call_response_trailers",
        _ => "unknown_map",
    }
}

pub fn buffer_type_name(t: i32) -> &'static str {
    match t {
        0 => "request_body",
        1 => "response_body",
        2 => "downstream_data",
        3 => "upstream_data",
        4 => "http_call_response_body",
        5 => "grpc_receive_buffer",
        6 => "vm_configuration",
        7 => "plugin_configuration",
        8 => "call_data",
        _ => "unknown_buffer",
    }
}

/// proxy-wasm's header map serialization: count, (key len, value len) pairs, then each key
/// and value NUL-terminated.
pub fn serialize_map(map: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_map`]; `None` on malformed input.
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |i: usize| -> Option<usize> {
        let b = bytes.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    let mut p = 4usize.checked_add(n.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        let kl = u32_at(4 + i * 8)?;
        let vl = u32_at(8 + i * 8)?;
        let k = bytes.get(p..p + kl)?;
        p += kl + 1;
        let v = bytes.get(p..p + vl)?;
        p += vl + 1;
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Some(out)
}

pub fn headers_of(v: &[(String, String)]) -> Headers {
    Headers(v.to_vec())
}
