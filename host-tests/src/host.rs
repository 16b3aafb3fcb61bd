//! The fake Envoy: loads the module, links the host calls, drives the contexts in Envoy's
//! order, keeps the clock, and turns what the plugin did into [`Outcome`]s.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, WasmParams, WasmResults};

use crate::abi;
use crate::state::{headers_of, CallResponse, Phase, State, Step, Stream};
use crate::types::{Callout, Headers, LogLevel, LogLine, Metric, Outcome, Request};

/// The env var naming the module to load.
pub const WASM_ENV: &str = "OIDC_FILTER_WASM";

/// Host clock at start unless set: 2026-01-01T00:00:00Z.
pub const DEFAULT_START_SECS: u64 = 1_767_225_600;

/// Fuel (≈ wasm instructions) one callback may burn before it counts as a runaway loop.
pub const FUEL_PER_CALLBACK: u64 = 20_000_000_000;

/// Ticks `advance` fires one by one; past this, the rest of the interval collapses into one
/// late tick, as a timer does after the process was suspended.
const MAX_TICKS_PER_ADVANCE: u32 = 100;

/// `<workspace>/dist/oidc_filter.wasm`, or `$OIDC_FILTER_WASM`.
pub fn default_wasm_path() -> PathBuf {
    match std::env::var_os(WASM_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("dist")
            .join("oidc_filter.wasm"),
    }
}

/// One engine per process (fuel metering on) and each module compiled once per process:
/// compiled code is immutable, so sharing it shares no state between tests.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = Config::new();
        cfg.consume_fuel(true);
        match Engine::new(&cfg) {
            Ok(e) => e,
            Err(e) => panic!("cannot create the wasmtime engine: {e:?}"),
        }
    })
}

fn compiled(path: &Path) -> Result<Module, StartError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    let cache = MODULES.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.get(path) {
        return Ok(m.clone());
    }
    let bytes = std::fs::read(path).map_err(|e| StartError::MissingWasm {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    let module = Module::from_binary(engine(), &bytes).map_err(|e| StartError::Load {
        message: format!("{}: {e:?}", path.display()),
    })?;
    cache.insert(path.to_path_buf(), module.clone());
    Ok(module)
}

/// Why a host did not start.
pub enum StartError {
    /// No module at the path: build it first.
    MissingWasm { path: PathBuf, error: String },
    /// The module does not compile or is not a proxy-wasm module.
    Load { message: String },
    /// The module imports host calls this fake Envoy does not have.
    UnknownImports { imports: Vec<String> },
    /// A lifecycle callback returned false (`proxy_on_vm_start` or `proxy_on_configure`).
    Refused {
        callback: &'static str,
        logs: Vec<LogLine>,
        transcript: Vec<String>,
    },
    /// The module trapped while starting.
    Trap {
        message: String,
        logs: Vec<LogLine>,
        transcript: Vec<String>,
    },
}

impl StartError {
    /// The plugin's log lines (empty when it never ran).
    pub fn logs(&self) -> &[LogLine] {
        match self {
            StartError::Refused { logs, .. } | StartError::Trap { logs, .. } => logs,
            _ => &[],
        }
    }

    /// All log messages, one per line.
    pub fn log_text(&self) -> String {
        join_messages(self.logs())
    }
}

/// The messages of `logs`, one per line.
fn join_messages(logs: &[LogLine]) -> String {
    logs.iter()
        .map(|l| l.message.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::MissingWasm { path, error } => write!(
                f,
                "no wasm module at {} ({error}): run `make wasm` first, or set {WASM_ENV}",
                path.display()
            ),
            StartError::Load { message } => write!(f, "cannot load the module: {message}"),
            StartError::UnknownImports { imports } => write!(
                f,
                "the module imports host calls this fake Envoy lacks: {}",
                imports.join(", ")
            ),
            StartError::Refused {
                callback,
                logs,
                transcript,
            } => {
                writeln!(f, "{callback} returned false; plugin logs:")?;
                write_logs_and_transcript(f, logs, transcript)
            }
            StartError::Trap {
                message,
                logs,
                transcript,
            } => {
                writeln!(f, "the module trapped while starting: {message}")?;
                write_logs_and_transcript(f, logs, transcript)
            }
        }
    }
}

/// The plugin's log lines (indented), then the transcript, as a start error shows them.
fn write_logs_and_transcript(
    f: &mut fmt::Formatter<'_>,
    logs: &[LogLine],
    transcript: &[String],
) -> fmt::Result {
    for l in logs {
        writeln!(f, "  {l}")?;
    }
    writeln!(f, "transcript:")?;
    for t in transcript {
        writeln!(f, "{t}")?;
    }
    Ok(())
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StartError {}

/// Options for a host; [`Host::start`] uses the defaults.
#[derive(Clone, Debug)]
pub struct HostBuilder {
    wasm: Option<PathBuf>,
    env: Vec<(String, String)>,
    vm_config: Vec<u8>,
    seed: u64,
    start: SystemTime,
    log_level: LogLevel,
    properties: Vec<(Vec<u8>, Vec<u8>)>,
    clusters: Option<Vec<String>>,
    upstream: (u32, Vec<(String, String)>, Vec<u8>),
    fuel_per_callback: u64,
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            wasm: None,
            env: Vec::new(),
            vm_config: Vec::new(),
            seed: 0x5eed,
            start: UNIX_EPOCH + Duration::from_secs(DEFAULT_START_SECS),
            log_level: LogLevel::Trace,
            properties: vec![
                (b"plugin_name".to_vec(), b"oidc-filter".to_vec()),
                (b"plugin_root_id".to_vec(), Vec::new()),
                (b"plugin_vm_id".to_vec(), Vec::new()),
            ],
            clusters: None,
            upstream: (
                200,
                vec![("content-type".into(), "text/plain".into())],
                b"upstream".to_vec(),
            ),
            fuel_per_callback: FUEL_PER_CALLBACK,
        }
    }
}

impl HostBuilder {
    /// The module to load (default: [`default_wasm_path`]).
    pub fn wasm(mut self, path: impl Into<PathBuf>) -> Self {
        self.wasm = Some(path.into());
        self
    }
    /// A VM environment variable (Envoy `vm_config.environment_variables`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.vm_config = bytes.into();
        self
    }
    /// Seed of `random_get`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Host clock at start.
    pub fn start_time(mut self, t: SystemTime) -> Self {
        self.start = t;
        self
    }
    /// What `proxy_get_log_level` answers (all `proxy_log` lines are kept regardless).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }
    /// A property (`path` parts joined with NUL, as the SDK sends them).
    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        let key = path.join("\0").into_bytes();
        self.properties.retain(|(k, _)| *k != key);
        self.properties.push((key, value.into()));
        self
    }
    /// The clusters Envoy knows; a callout to any other is refused with BadArgument as
    /// Envoy does. Default: any name is accepted.
    pub fn clusters(mut self, names: &[&str]) -> Self {
        self.clusters = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }
    /// What the upstream answers to requests that continue.
    pub fn upstream_response(mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Self {
        self.upstream = (
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_vec(),
        );
        self
    }

    /// Fuel one callback may use before it traps as a runaway (default
    /// [`FUEL_PER_CALLBACK`]).
    pub fn fuel_per_callback(mut self, fuel: u64) -> Self {
        self.fuel_per_callback = fuel;
        self
    }

    /// Loads the module and runs Envoy's start sequence with `plugin_config` as the
    /// plugin configuration: `_initialize` (or `_start`), `proxy_on_context_create(root, 0)`,
    /// `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn start(self, plugin_config: &str) -> Result<Host, StartError> {
        let path = self.wasm.clone().unwrap_or_else(default_wasm_path);
        let module = compiled(&path)?;
        let now_ns = self
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut state = State::new(
            now_ns,
            ChaCha20Rng::seed_from_u64(self.seed),
            self.env.clone(),
            self.log_level,
            self.clusters.clone(),
        );
        state.vm_config = self.vm_config.clone();
        state.plugin_config = plugin_config.as_bytes().to_vec();
        state.properties = self.properties.iter().cloned().collect();
        let mut store = Store::new(engine(), state);

        let mut linker: Linker<State> = Linker::new(engine());
        abi::define(&mut linker).map_err(|e| StartError::Load {
            message: format!("defining host calls: {e:?}"),
        })?;
        let mut unknown = Vec::new();
        for imp in module.imports() {
            if linker.get(&mut store, imp.module(), imp.name()).is_err() {
                unknown.push(format!("{}::{} {:?}", imp.module(), imp.name(), imp.ty()));
            }
        }
        if !unknown.is_empty() {
            return Err(StartError::UnknownImports { imports: unknown });
        }
        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        let abi_version = exports
            .iter()
            .find(|n| n.starts_with("proxy_abi_version_"))
            .cloned();
        match abi_version.as_deref() {
            Some("proxy_abi_version_0_2_0" | "proxy_abi_version_0_2_1") => {}
            other => {
                return Err(StartError::Load {
                    message: format!(
                        "{}: not a proxy-wasm 0.2.x module (ABI marker {other:?})",
                        path.display()
                    ),
                })
            }
        }
        if !exports.iter().any(|n| n == "memory") {
            return Err(StartError::Load {
                message: "the module exports no memory".into(),
            });
        }
        if !exports
            .iter()
            .any(|n| n == "proxy_on_memory_allocate" || n == "malloc")
        {
            return Err(StartError::Load {
                message: "the module exports neither proxy_on_memory_allocate nor malloc".into(),
            });
        }

        store.data_mut().note(format!(
            "load {} ({}; {} imports)",
            path.display(),
            abi_version.unwrap_or_default(),
            module.imports().len()
        ));
        store
            .set_fuel(self.fuel_per_callback)
            .map_err(|e| StartError::Load {
                message: format!("{e:?}"),
            })?;
        let instance = match linker.instantiate(&mut store, &module) {
            Ok(i) => i,
            Err(e) => {
                let st = store.data();
                return Err(StartError::Trap {
                    message: format!("instantiation: {e:?}"),
                    logs: st.logs.clone(),
                    transcript: st.transcript.clone(),
                });
            }
        };
        let mut host = Host {
            store,
            instance,
            upstream: self.upstream,
            next_context: 1,
            fuel: 0,
            trapped: None,
            print_transcript: true,
            fuel_budget: self.fuel_per_callback,
        };
        match host.boot() {
            Ok(()) => Ok(host),
            Err(e) => {
                host.print_transcript = false;
                Err(e)
            }
        }
    }
}

/// A fake Envoy with one plugin (one VM, one root context) loaded.
pub struct Host {
    store: Store<State>,
    instance: Instance,
    upstream: (u32, Vec<(String, String)>, Vec<u8>),
    next_context: u32,
    fuel: u64,
    trapped: Option<String>,
    print_transcript: bool,
    fuel_budget: u64,
}

/// A trap (or a refusal) inside a callback.
#[derive(Debug)]
struct Trap(String);

impl Host {
    /// A host with default options and `plugin_config`.
    pub fn start(plugin_config: &str) -> Result<Host, StartError> {
        HostBuilder::default().start(plugin_config)
    }

    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    fn boot(&mut self) -> Result<(), StartError> {
        let as_start_error = |h: &Host, t: Trap| StartError::Trap {
            message: t.0,
            logs: h.store.data().logs.clone(),
            transcript: h.store.data().transcript.clone(),
        };
        // Integration: _initialize (+ main), else _start.
        let has = |h: &mut Host, n: &str| h.instance.get_func(&mut h.store, n).is_some();
        if has(self, "_initialize") {
            self.call::<(), ()>("_initialize", (), 0)
                .map_err(|t| as_start_error(self, t))?;
            if has(self, "main") {
                self.call::<(i32, i32), i32>("main", (0, 0), 0)
                    .map_err(|t| as_start_error(self, t))?;
            }
        } else if has(self, "_start") {
            self.call::<(), ()>("_start", (), 0)
                .map_err(|t| as_start_error(self, t))?;
        }
        let root = self.new_context_id();
        self.store.data_mut().root_id = root;
        self.call::<(i32, i32), ()>("proxy_on_context_create", (root as i32, 0), root)
            .map_err(|t| as_start_error(self, t))?;
        let vm_len = self.store.data().vm_config.len() as i32;
        self.store.data_mut().phase = Phase::VmStart;
        let ok = self
            .call::<(i32, i32), i32>("proxy_on_vm_start", (root as i32, vm_len), root)
            .map_err(|t| as_start_error(self, t))?;
        if ok == Some(0) {
            return Err(self.refused("proxy_on_vm_start"));
        }
        let cfg_len = self.store.data().plugin_config.len() as i32;
        self.store.data_mut().phase = Phase::Configure;
        let ok = self
            .call::<(i32, i32), i32>("proxy_on_configure", (root as i32, cfg_len), root)
            .map_err(|t| as_start_error(self, t))?;
        self.store.data_mut().phase = Phase::Idle;
        if ok == Some(0) {
            return Err(self.refused("proxy_on_configure"));
        }
        Ok(())
    }

    fn refused(&self, callback: &'static str) -> StartError {
        StartError::Refused {
            callback,
            logs: self.store.data().logs.clone(),
            transcript: self.store.data().transcript.clone(),
        }
    }

    fn new_context_id(&mut self) -> u32 {
        let id = self.next_context;
        self.next_context += 1;
        id
    }

    /// Calls export `name` with `context` as the effective context; `Ok(None)` when the
    /// module does not export it (every callback is optional).
    fn call<P, R>(&mut self, name: &str, params: P, context: u32) -> Result<Option<R>, Trap>
    where
        P: WasmParams + fmt::Debug,
        R: WasmResults + fmt::Debug,
    {
        if let Some(t) = &self.trapped {
            return Err(Trap(format!(
                "the VM trapped earlier ({t}); Envoy would have failed it"
            )));
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            self.store
                .data_mut()
                .note(format!("→ {name}{params:?}: not exported"));
            return Ok(None);
        };
        let shown = format!("{params:?}");
        let func = func
            .typed::<P, R>(&self.store)
            .map_err(|e| Trap(format!("{name} has an unexpected signature: {e:?}")))?;
        self.store.data_mut().effective = context;
        self.store.data_mut().note(format!("→ {name}{params:?}"));
        if let Err(e) = self.store.set_fuel(self.fuel_budget) {
            return Err(Trap(format!("{e:?}")));
        }
        let result = func.call(&mut self.store, params);
        let left = self.store.get_fuel().unwrap_or(0);
        let used = self.fuel_budget - left;
        self.fuel += used;
        match result {
            Ok(r) => {
                self.store
                    .data_mut()
                    .note(format!("  = {r:?}   [fuel {used}]"));
                Ok(Some(r))
            }
            Err(e) => {
                let msg = format!("{name}{shown} trapped: {e:?}");
                self.store.data_mut().note(format!("  TRAP: {e:?}"));
                self.trapped = Some(msg.clone());
                Err(Trap(msg))
            }
        }
    }

    /// A trap fails the test, with the plugin's logs (the transcript follows from Drop).
    #[track_caller]
    fn must<T>(&mut self, r: Result<T, Trap>) -> T {
        match r {
            Ok(v) => v,
            Err(Trap(msg)) => {
                let logs: Vec<String> = self.logs().iter().map(|l| l.to_string()).collect();
                panic!("{msg}\nplugin logs:\n  {}", logs.join("\n  "))
            }
        }
    }

    /// Sends `req` through the filter: creates an HTTP context and calls its callbacks until
    /// the request is answered, paused, or done (upstream answered with the builder's
    /// upstream response).
    #[track_caller]
    pub fn request(&mut self, req: Request) -> Outcome {
        let id = self.new_context_id();
        let root = self.store.data().root_id;
        let (status, headers, body) = self.upstream.clone();
        self.store.data_mut().streams.insert(
            id,
            Stream {
                next: Step::RequestHeaders,
                paused: false,
                resumed: false,
                reset: false,
                request_headers: req.to_header_list(),
                request_body: req.body.clone(),
                request_trailers: req.trailers.clone(),
                response_status: status,
                response_headers: {
                    let mut h = vec![(":status".to_string(), status.to_string())];
                    h.extend(headers);
                    h
                },
                response_body: body,
                response_trailers: Vec::new(),
                local_reply: None,
                forwarded: None,
            },
        );
        self.store.data_mut().note(format!(
            "== request {} {}://{}{} (context {id})",
            req.method, req.scheme, req.authority, req.path
        ));
        let r =
            self.call::<(i32, i32), ()>("proxy_on_context_create", (id as i32, root as i32), id);
        self.must(r);
        self.drive(id)
    }

    fn stream_flag<T>(&self, id: u32, f: impl FnOnce(&Stream) -> T) -> Option<T> {
        self.store.data().streams.get(&id).map(f)
    }

    /// Runs stream `id` forward from where it is.
    #[track_caller]
    fn drive(&mut self, id: u32) -> Outcome {
        loop {
            let Some(s) = self.store.data().streams.get(&id).cloned() else {
                return Outcome::Paused { callouts: vec![] };
            };
            if let Some(reply) = s.local_reply {
                self.finish(id);
                return Outcome::Replied {
                    status: reply.status,
                    headers: reply.headers,
                    body: reply.body,
                };
            }
            if s.reset {
                self.finish(id);
                return Outcome::Reset;
            }
            if s.paused {
                if s.resumed {
                    self.set_stream(id, |s| {
                        s.paused = false;
                        s.resumed = false;
                    });
                } else {
                    return Outcome::Paused {
                        callouts: self.store.data().pending_for(id),
                    };
                }
            }
            self.set_stream(id, |s| s.resumed = false);
            let has_body = !s.request_body.is_empty();
            let has_trailers = !s.request_trailers.is_empty();
            let resp_body = !s.response_body.is_empty();
            // What follows the request body (or the headers, when there is no body).
            let after_body = if has_trailers {
                Step::RequestTrailers
            } else {
                Step::Upstream
            };
            let action = match s.next {
                Step::RequestHeaders => {
                    let next = if has_body {
                        Step::RequestBody
                    } else {
                        after_body
                    };
                    let (n, eos) = (s.request_headers.len(), !has_body && !has_trailers);
                    self.step(id, next, "proxy_on_request_headers", n, eos)
                }
                Step::RequestBody => {
                    let n = s.request_body.len();
                    self.step(id, after_body, "proxy_on_request_body", n, !has_trailers)
                }
                Step::RequestTrailers => {
                    self.set_stream(id, |s| s.next = Step::Upstream);
                    let n = s.request_trailers.len() as i32;
                    self.stream_call("proxy_on_request_trailers", (id as i32, n), id)
                }
                Step::Upstream => {
                    self.set_stream(id, |s| {
                        s.forwarded = Some((s.request_headers.clone(), s.request_body.clone()));
                        s.next = Step::ResponseHeaders;
                    });
                    self.store.data_mut().note(format!(
                        "== upstream gets {:?}",
                        headers_of(&s.request_headers)
                    ));
                    0
                }
                Step::ResponseHeaders => {
                    let next = if resp_body {
                        Step::ResponseBody
                    } else {
                        Step::Complete
                    };
                    let n = s.response_headers.len();
                    self.step(id, next, "proxy_on_response_headers", n, !resp_body)
                }
                Step::ResponseBody => {
                    let n = s.response_body.len();
                    self.step(id, Step::Complete, "proxy_on_response_body", n, true)
                }
                Step::Complete => {
                    self.finish(id);
                    let (fh, fb) = s.forwarded.clone().unwrap_or_default();
                    return Outcome::Continued {
                        request_headers: Headers(fh),
                        request_body: fb,
                        response_status: s
                            .response_headers
                            .iter()
                            .find(|(k, _)| k == ":status")
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(s.response_status),
                        response_headers: Headers(s.response_headers.clone()),
                    };
                }
            };
            match action {
                0 => {}
                1 => self.set_stream(id, |s| s.paused = true),
                other => panic!("a callback returned the unknown action {other}"),
            }
        }
    }

    /// Moves stream `id` on to `next` and calls `name(id, n, end_of_stream)`: the action.
    #[track_caller]
    fn step(&mut self, id: u32, next: Step, name: &str, n: usize, end_of_stream: bool) -> i32 {
        self.set_stream(id, |s| s.next = next);
        let params = (id as i32, n as i32, i32::from(end_of_stream));
        self.stream_call(name, params, id)
    }

    #[track_caller]
    fn stream_call<P>(&mut self, name: &str, params: P, id: u32) -> i32
    where
        P: WasmParams + fmt::Debug,
    {
        self.store.data_mut().phase = Phase::Stream;
        let r = self.call::<P, i32>(name, params, id);
        self.store.data_mut().phase = Phase::Idle;
        self.must(r).unwrap_or(0)
    }

    fn set_stream(&mut self, id: u32, f: impl FnOnce(&mut Stream)) {
        if let Some(s) = self.store.data_mut().streams.get_mut(&id) {
            f(s);
        }
    }

    /// The end of a stream, in Envoy's order: `proxy_on_log`, `proxy_on_done`,
    /// `proxy_on_delete`; its pending callouts are cancelled.
    #[track_caller]
    fn finish(&mut self, id: u32) {
        let r = self.call::<(i32,), ()>("proxy_on_log", (id as i32,), id);
        self.must(r);
        self.store.data_mut().done_called = false;
        let r = self.call::<(i32,), i32>("proxy_on_done", (id as i32,), id);
        let done = self.must(r);
        if done == Some(0) && !self.store.data().done_called {
            self.store.data_mut().note(format!(
                "  (context {id} not done yet: proxy_on_done returned false)"
            ));
        }
        let st = self.store.data_mut();
        let cancelled: Vec<u32> = st
            .callouts
            .iter()
            .filter(|p| p.callout.context_id == id)
            .map(|p| p.callout.token)
            .collect();
        st.callouts.retain(|p| p.callout.context_id != id);
        if !cancelled.is_empty() {
            st.note(format!(
                "  (callouts {cancelled:?} of context {id} cancelled)"
            ));
        }
        let r = self.call::<(i32,), ()>("proxy_on_delete", (id as i32,), id);
        self.must(r);
        self.store.data_mut().streams.remove(&id);
    }

    /// The client goes away while request `context_id` is paused: Envoy ends the stream
    /// (`proxy_on_log`, `proxy_on_done`, `proxy_on_delete`) and cancels its callouts.
    #[track_caller]
    pub fn abandon(&mut self, context_id: u32) {
        assert!(
            self.store.data().streams.contains_key(&context_id),
            "no open stream {context_id} (open: {:?})",
            self.open_streams()
        );
        self.store
            .data_mut()
            .note(format!("== client of context {context_id} went away"));
        self.finish(context_id);
    }

    /// What became of stream `id` after something else moved it (a root-context callout or
    /// tick that answered it, say).
    #[track_caller]
    pub fn outcome_of(&mut self, id: u32) -> Outcome {
        self.drive(id)
    }

    /// Envoy delivering request body data (`proxy_on_request_body`) to stream `id` while the
    /// plugin holds it paused after its headers, as Envoy does when data arrives. Returns the
    /// action (0 continue, 1 pause); a continue would resume the request upstream.
    #[track_caller]
    pub fn body_while_paused(&mut self, id: u32, size: usize, end_of_stream: bool) -> i32 {
        let r = self.call::<(i32, i32, i32), i32>(
            "proxy_on_request_body",
            (id as i32, size as i32, i32::from(end_of_stream)),
            id,
        );
        self.must(r).unwrap_or(0)
    }

    /// Answers callout `token` with `status`, `headers` (`:status` is added) and `body`,
    /// through `proxy_on_http_call_response`. Returns what became of the stream that made
    /// the call, or [`Outcome::Background`] for a root-context callout.
    #[track_caller]
    pub fn respond(
        &mut self,
        token: u32,
        status: u32,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Outcome {
        let mut h = vec![(":status".to_string(), status.to_string())];
        h.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())),
        );
        self.deliver(
            token,
            Some(CallResponse {
                headers: h,
                body: body.as_ref().to_vec(),
                trailers: Vec::new(),
            }),
        )
    }

    /// Envoy's answer to a callout that timed out (or whose cluster failed): no headers,
    /// no body.
    #[track_caller]
    pub fn timeout(&mut self, token: u32) -> Outcome {
        self.deliver(token, None)
    }

    #[track_caller]
    fn deliver(&mut self, token: u32, response: Option<CallResponse>) -> Outcome {
        let st = self.store.data_mut();
        let Some(i) = st.callouts.iter().position(|p| p.callout.token == token) else {
            let pending: Vec<u32> = st.callouts.iter().map(|p| p.callout.token).collect();
            panic!("no pending callout {token} (pending: {pending:?}); was its stream finished?");
        };
        let p = st.callouts.remove(i);
        let ctx = p.callout.context_id;
        let (nh, nb, nt) = response
            .as_ref()
            .map(|r| (r.headers.len(), r.body.len(), r.trailers.len()))
            .unwrap_or((0, 0, 0));
        st.note(format!(
            "== callout {token} ({} {}) {}",
            p.callout.method(),
            p.callout.path(),
            match &response {
                Some(r) => format!(
                    "answered {:?}, body {}",
                    headers_of(&r.headers),
                    abi::show(&r.body)
                ),
                None => "failed (timeout)".to_string(),
            }
        ));
        st.call_response = Some(response.unwrap_or_default());
        st.phase = Phase::HttpCallResponse;
        let r = self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            (ctx as i32, token as i32, nh as i32, nb as i32, nt as i32),
            ctx,
        );
        let st = self.store.data_mut();
        st.call_response = None;
        st.phase = Phase::Idle;
        self.must(r);
        if ctx == self.store.data().root_id {
            Outcome::Background {
                callouts: self.pending_callouts(),
            }
        } else {
            self.drive(ctx)
        }
    }

    /// Moves the clock forward by `d`, firing `proxy_on_tick` at each tick period and timing
    /// out callouts whose deadline passes (in time order). Returns the outcomes of requests
    /// that a timeout moved on.
    #[track_caller]
    pub fn advance(&mut self, d: Duration) -> Vec<Outcome> {
        let end = self.store.data().now_ns.saturating_add(d.as_nanos() as u64);
        self.store.data_mut().note(format!("== advance {d:?}"));
        let mut outcomes = Vec::new();
        let mut ticks = 0u32;
        loop {
            let st = self.store.data();
            let period = u64::from(st.tick_period_ms) * 1_000_000;
            let next_tick = (period > 0).then(|| st.last_tick_ns + period);
            let next_deadline = st
                .callouts
                .iter()
                .filter_map(|p| p.deadline.map(|t| (t, p.callout.token)))
                .min();
            let tick_due = next_tick.filter(|t| *t <= end);
            let deadline_due = next_deadline.filter(|(t, _)| *t <= end);
            match (tick_due, deadline_due) {
                (None, None) => break,
                (Some(t), dl) if dl.is_none_or(|(dt, _)| t < dt) => {
                    ticks += 1;
                    let st = self.store.data_mut();
                    if ticks == MAX_TICKS_PER_ADVANCE && end > t + period {
                        // Catch up like a suspended process: one late tick at the end.
                        st.note(format!(
                            "  (skipping {} ticks: the next one fires late, at the end)",
                            (end - t) / period
                        ));
                        st.last_tick_ns = end - period;
                        continue;
                    }
                    st.now_ns = t;
                    st.last_tick_ns = t;
                    self.tick();
                }
                (_, Some((t, token))) => {
                    self.store.data_mut().now_ns = t;
                    let ctx = self
                        .store
                        .data()
                        .callouts
                        .iter()
                        .find(|p| p.callout.token == token)
                        .map(|p| p.callout.context_id);
                    let o = self.timeout(token);
                    if ctx != Some(self.store.data().root_id) {
                        outcomes.push(o);
                    }
                }
                (Some(_), None) => unreachable!("a due tick with no deadline takes the first arm"),
            }
        }
        self.store.data_mut().now_ns = end;
        outcomes
    }

    /// One `proxy_on_tick` of the root context now.
    #[track_caller]
    pub fn tick(&mut self) {
        let root = self.store.data().root_id;
        self.store.data_mut().phase = Phase::Tick;
        let r = self.call::<(i32,), ()>("proxy_on_tick", (root as i32,), root);
        self.store.data_mut().phase = Phase::Idle;
        self.must(r);
    }

    /// Every callout not yet answered, oldest first.
    pub fn pending_callouts(&self) -> Vec<Callout> {
        self.store
            .data()
            .callouts
            .iter()
            .map(|p| p.callout.clone())
            .collect()
    }

    /// The plugin's log lines so far (`proxy_log` and WASI stdout/stderr).
    pub fn logs(&self) -> &[LogLine] {
        &self.store.data().logs
    }

    /// Log messages so far, one per line.
    pub fn log_text(&self) -> String {
        join_messages(self.logs())
    }

    /// Forgets the log lines so far (the transcript keeps them).
    pub fn clear_logs(&mut self) {
        self.store.data_mut().logs.clear();
    }

    /// Every host call and callback so far.
    pub fn transcript(&self) -> &[String] {
        &self.store.data().transcript
    }

    /// The host clock.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.store.data().now_ns)
    }

    /// The host clock in whole seconds since the epoch.
    pub fn now_secs(&self) -> u64 {
        self.store.data().now_ns / 1_000_000_000
    }

    /// Fuel the module consumed so far, across all callbacks (deterministic: it depends on
    /// the module and the inputs only).
    pub fn fuel_consumed(&self) -> u64 {
        self.fuel
    }

    /// Changes the fuel one callback may use from now on.
    pub fn set_fuel_per_callback(&mut self, fuel: u64) {
        self.fuel_budget = fuel;
    }

    pub fn metrics(&self) -> &[Metric] {
        &self.store.data().metrics
    }

    /// Current tick period set by the plugin (zero: none).
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(u64::from(self.store.data().tick_period_ms))
    }

    /// HTTP contexts still alive (paused requests).
    pub fn open_streams(&self) -> Vec<u32> {
        self.store.data().streams.keys().copied().collect()
    }

    /// Whether the VM trapped (every later callback fails).
    pub fn trapped(&self) -> Option<&str> {
        self.trapped.as_deref()
    }

    /// Prints the transcript to stderr (captured by the test harness, shown on failure).
    pub fn print_transcript(&self) {
        let t = &self.store.data().transcript;
        eprintln!("---- fake Envoy transcript ({} entries) ----", t.len());
        for line in t {
            eprintln!("{line}");
        }
        eprintln!("---- end of transcript ----");
    }

    /// Whether the stream `id` is paused.
    pub fn is_paused(&self, id: u32) -> bool {
        self.stream_flag(id, |s| s.paused).unwrap_or(false)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() && self.print_transcript {
            self.print_transcript();
        }
    }
}
