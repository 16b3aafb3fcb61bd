//! The fake Envoy itself: it fails loudly (missing module, unknown imports, traps), and it
//! is deterministic.
mod common;

use common::*;
use host_tests::{Host, Outcome, StartError};
use serde_json::json;

fn temp_wasm(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("host-tests-{}-{name}.wasm", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn missing_module_says_to_build_it() {
    let e = Host::builder()
        .wasm("/nonexistent/oidc_filter.wasm")
        .start("{}")
        .err()
        .expect("fails");
    assert!(matches!(e, StartError::MissingWasm { .. }));
    assert!(e.to_string().contains("make wasm"), "{e}");
}

#[test]
fn unknown_imports_are_listed() {
    // (module (import "env" "proxy_nonexistent" (func)) (import "env" "proxy_other" (func)))
    let mut m = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0".to_vec();
    let mut imports = vec![2u8];
    for name in ["proxy_nonexistent", "proxy_other"] {
        imports.extend([3, b'e', b'n', b'v', name.len() as u8]);
        imports.extend(name.as_bytes());
        imports.extend([0, 0]);
    }
    m.push(2);
    m.push(imports.len() as u8);
    m.extend(imports);
    let e = Host::builder()
        .wasm(temp_wasm("imports", &m))
        .start("{}")
        .err()
        .expect("fails");
    let msg = e.to_string();
    assert!(
        msg.contains("env::proxy_nonexistent") && msg.contains("env::proxy_other"),
        "{msg}"
    );
}

#[test]
fn a_module_that_is_not_proxy_wasm_is_refused() {
    let e = Host::builder()
        .wasm(temp_wasm("empty", b"\0asm\x01\0\0\0"))
        .start("{}")
        .err()
        .expect("fails");
    assert!(e.to_string().contains("not a proxy-wasm"), "{e}");
}

#[test]
fn runaway_callback_traps_at_start() {
    let e = builder()
        .fuel_per_callback(10_000)
        .start(&config(json!({})))
        .err()
        .expect("traps");
    match &e {
        StartError::Trap {
            message,
            transcript,
            ..
        } => {
            assert!(message.contains("fuel"), "{message}");
            assert!(!transcript.is_empty());
        }
        other => panic!("{other}"),
    }
}

#[test]
#[should_panic(expected = "trapped")]
fn trap_in_a_request_fails_the_test() {
    let mut host = ready_host(json!({}));
    host.set_fuel_per_callback(5_000);
    let _ = host.request(browser("/"));
}

#[test]
fn same_seed_same_run() {
    let run = |seed: u64| {
        let mut host = ready_host_with(builder().seed(seed), &config(json!({})), &[key(0)]);
        let out = host.request(browser("/"));
        (out, host.fuel_consumed())
    };
    let (a, fa) = run(1);
    let (b, fb) = run(1);
    assert_eq!(a, b);
    assert_eq!(fa, fb, "fuel is deterministic");
    let (c, _) = run(2);
    assert_ne!(a, c, "another seed, another state");
    assert!(matches!(a, Outcome::Replied { status: 302, .. }));
}
