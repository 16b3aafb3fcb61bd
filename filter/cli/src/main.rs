//! `oidc-filter check FILE... [--env NAME=VALUE ...]`: runs the filter's own configuration
//! validation (the same `Config::parse` as `on_configure`) on
//! - the filter's JSON configuration;
//! - an Envoy config (YAML or JSON, a bootstrap or ECDS resources): every Wasm HTTP filter of
//!   ours, its `configuration` string and `vm_config.environment_variables`;
//! - an Istio `WasmPlugin` (YAML, several documents allowed): its `pluginConfig` and
//!   `vmConfig.env`.
//!
//! Prints one line per wrong field (`FILE: WHERE: oidc-filter: config: FIELD: ...`), or
//! `accepted`. Exit codes: 0 every configuration found is accepted, 1 one is refused, 2 the
//! command could not check (usage, an unreadable or unparsable file, no configuration in it).
//!
//! Environment values: `--env` gives them; Envoy `key_values` and Istio `INLINE` values are
//! taken from the file; a variable the host supplies (`host_env_keys`, Istio `valueFrom:
//! HOST`) and not given with `--env` gets a stand-in value of the right shape, and the output
//! says it was not checked.

use std::collections::BTreeMap;
use std::process::ExitCode;

use oidc_filter_core::config::Config;
use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

const USAGE: &str = "usage: oidc-filter check FILE... [--env NAME=VALUE ...]";
/// A value for a host-supplied variable nobody gave: random-looking, so that it passes the
/// secret checks and the rest of the configuration is still checked.
const STAND_IN: &str = "k3Jd9QmX2vLp8RtZ5wYc7NfB4hGa6SeU1oKi0TqVxEs=";
const WASM_FILTER: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";

/// One configuration of the filter found in a file.
struct Found {
    place: String,
    config: Vec<u8>,
    env: BTreeMap<String, String>,
    /// Variables the host supplies.
    host_env: Vec<String>,
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("check") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut files = Vec::new();
    let mut given = BTreeMap::new();
    while let Some(a) = args.next() {
        if a == "--env" {
            match args.next().as_deref().and_then(|kv| kv.split_once('=')) {
                Some((k, v)) => {
                    given.insert(k.to_string(), v.to_string());
                }
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            }
        } else if a == "-h" || a == "--help" {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        } else {
            files.push(a);
        }
    }
    if files.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut worst = 0u8;
    for file in &files {
        worst = worst.max(check_file(file, &given));
    }
    ExitCode::from(worst)
}

fn check_file(file: &str, given: &BTreeMap<String, String>) -> u8 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            println!("{file}: cannot read: {e}");
            return 2;
        }
    };
    let docs = match documents(&text) {
        Ok(d) => d,
        Err(e) => {
            println!("{file}: {e}");
            return 2;
        }
    };
    let mut found = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let at = if docs.len() > 1 {
            format!("document {}", i + 1)
        } else {
            String::new()
        };
        find(doc, &at, &mut found);
    }
    if found.is_empty() {
        println!(
            "{file}: no oidc-filter configuration found (a JSON config, an Envoy Wasm filter, or an Istio WasmPlugin)"
        );
        return 2;
    }
    let mut worst = 0;
    for f in found {
        let lookup = |name: &str| {
            given
                .get(name)
                .or_else(|| f.env.get(name))
                .cloned()
                .or_else(|| {
                    f.host_env
                        .iter()
                        .any(|h| h == name)
                        .then(|| STAND_IN.to_string())
                })
        };
        let place = if f.place.is_empty() {
            file.to_string()
        } else {
            format!("{file}: {}", f.place)
        };
        let unchecked: Vec<&str> = f
            .host_env
            .iter()
            .filter(|h| !given.contains_key(h.as_str()) && !f.env.contains_key(h.as_str()))
            .map(String::as_str)
            .collect();
        match Config::parse(&f.config, &lookup) {
            Ok(_) => {
                print!("{place}: accepted");
                if !unchecked.is_empty() {
                    print!(
                        " (from the host, not checked: {}; give --env NAME=VALUE to check them)",
                        unchecked.join(", ")
                    );
                }
                println!();
            }
            Err(errors) => {
                for e in errors {
                    println!("{place}: {e}");
                }
                worst = 1;
            }
        }
    }
    worst
}

/// The file's documents as JSON values: one JSON document, or YAML (several allowed).
fn documents(text: &str) -> Result<Vec<Value>, String> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(vec![v]);
    }
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not JSON, nor YAML: {e}"))?;
    Ok(docs.iter().map(to_json).collect())
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => continue,
                };
                m.insert(key, to_json(v));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

/// The configurations of ours in `doc`.
fn find(doc: &Value, at: &str, out: &mut Vec<Found>) {
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}: {b}")
        }
    };
    // The filter's own JSON: an object with its keys at the top.
    if let Some(o) = doc.as_object() {
        let ours = [
            "oidc_issuer_url",
            "providers",
            "client_id",
            "cookie_secret",
            "cookie_secret_env",
        ];
        if ours.iter().any(|k| o.contains_key(*k)) && !o.contains_key("kind") {
            out.push(Found {
                place: at.to_string(),
                config: doc.to_string().into_bytes(),
                env: BTreeMap::new(),
                host_env: Vec::new(),
            });
            return;
        }
        // A ConfigMap holding an Envoy config (or the filter's JSON) in its data.
        if o.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
            let name = o
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            for (key, text) in o
                .get("data")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let Some(text) = text.as_str() else { continue };
                let Ok(inner) = documents(text) else { continue };
                let here = join(at, &format!("ConfigMap {name} {key}"));
                for d in &inner {
                    find(d, &here, out);
                }
            }
            return;
        }
        if o.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
            let name = o
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            out.push(wasm_plugin(doc, &join(at, &format!("WasmPlugin {name}"))));
            return;
        }
    }
    let mut wasm = Vec::new();
    wasm_filters(doc, &mut Vec::new(), &mut wasm);
    let any_ours = wasm.iter().any(|(_, w)| looks_ours(w));
    for (path, w) in wasm {
        if any_ours && !looks_ours(w) {
            continue;
        }
        out.push(envoy_wasm(w, &join(at, &path)));
    }
}

/// Every Wasm HTTP filter config (`typed_config` of type `...wasm.v3.Wasm`) in `v`, with a
/// path naming where it is.
fn wasm_filters<'a>(v: &'a Value, path: &mut Vec<String>, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(o) => {
            if o.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(WASM_FILTER))
            {
                out.push((path.join("."), v));
                return;
            }
            for (k, child) in o {
                let label = child
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| k.clone(), |n| format!("{k}[{n}]"));
                path.push(label);
                wasm_filters(child, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let label = child
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), str::to_string);
                path.push(label);
                wasm_filters(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn looks_ours(w: &Value) -> bool {
    let s = w.get("config").map(Value::to_string).unwrap_or_default();
    s.contains("oidc")
}

fn envoy_wasm(w: &Value, place: &str) -> Found {
    let c = w.get("config").cloned().unwrap_or(Value::Null);
    let configuration = c.get("configuration");
    let config = match configuration.and_then(|v| v.get("value")) {
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
        None => Vec::new(),
    };
    let vars = c
        .get("vm_config")
        .and_then(|v| v.get("environment_variables"));
    let env = vars
        .and_then(|e| e.get("key_values"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let host_env = vars
        .and_then(|e| e.get("host_env_keys"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|k| Some(k.as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default();
    Found {
        place: place.to_string(),
        config,
        env,
        host_env,
    }
}

fn wasm_plugin(doc: &Value, place: &str) -> Found {
    let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    let config = spec
        .get("pluginConfig")
        .map_or_else(|| b"{}".to_vec(), |c| c.to_string().into_bytes());
    let mut env = BTreeMap::new();
    let mut host_env = Vec::new();
    for e in spec
        .get("vmConfig")
        .and_then(|v| v.get("env"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = e.get("name").and_then(Value::as_str) else {
            continue;
        };
        if e.get("valueFrom").and_then(Value::as_str) == Some("HOST") {
            host_env.push(name.to_string());
        } else if let Some(v) = e.get("value").and_then(Value::as_str) {
            env.insert(name.to_string(), v.to_string());
        }
    }
    Found {
        place: place.to_string(),
        config,
        env,
        host_env,
    }
}
