//! Checks a plugin configuration with the filter's own validation, as `on_configure` would.
//!
//!     cargo run -q -p oidc-filter --example check-config -- FILE.json [--env NAME=VALUE ...]
//!
//! Exits 0 when the configuration is accepted; otherwise prints one line per wrong field and
//! exits 1. `--env` provides the VM environment for `client_secret_env` / `cookie_secret_env`.

use std::collections::HashMap;
use std::process::ExitCode;

use oidc_filter::config::Config;

fn main() -> ExitCode {
    let mut file = None;
    let mut env = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--env" {
            match args.next().as_deref().and_then(|kv| kv.split_once('=')) {
                Some((k, v)) => {
                    env.insert(k.to_string(), v.to_string());
                }
                None => {
                    eprintln!("usage: check-config FILE.json [--env NAME=VALUE ...]");
                    return ExitCode::from(2);
                }
            }
        } else {
            file = Some(a);
        }
    }
    let Some(file) = file else {
        eprintln!("usage: check-config FILE.json [--env NAME=VALUE ...]");
        return ExitCode::from(2);
    };
    let raw = match std::fs::read(&file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::from(2);
        }
    };
    match Config::parse(&raw, &|name| env.get(name).cloned()) {
        Ok(_) => {
            println!("{file}: accepted");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                println!("{e}");
            }
            ExitCode::from(1)
        }
    }
}
