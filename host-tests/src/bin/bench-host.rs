//! Deterministic per-request cost of the filter: wasmtime fuel (≈ wasm instructions executed)
//! for each kind of request, through the same fake Envoy as the tests. Fuel depends only on
//! the module and its inputs, so two runs on any machine give the same numbers; the
//! wall-clock column is for orientation only.
//!
//! `cargo run -p host-tests --bin bench-host -- [path/to/oidc_filter.wasm] [--json out.json]`
//! Writes `<workspace>/target/bench/host.json` unless `--json` says otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use host_tests::{Host, HostBuilder, Outcome, Request};
use serde_json::json;

struct Row {
    name: &'static str,
    what: &'static str,
    /// Median over the runs.
    fuel: u64,
    min: u64,
    max: u64,
    micros: f64,
}

/// (median, min, max) of `v`.
fn stats(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn row(name: &'static str, what: &'static str, fuels: Vec<u64>, micros: f64) -> Row {
    let (fuel, min, max) = stats(fuels);
    Row {
        name,
        what,
        fuel,
        min,
        max,
        micros,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut wasm: Option<PathBuf> = None;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/host.json");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => out = PathBuf::from(args.next().expect("--json PATH")),
            "-h" | "--help" => {
                eprintln!("usage: bench-host [WASM] [--json OUT]");
                return;
            }
            p => wasm = Some(PathBuf::from(p)),
        }
    }
    let wasm = wasm.unwrap_or_else(host_tests::default_wasm_path);
    let wasm = std::fs::canonicalize(&wasm).unwrap_or(wasm);
    let b = || -> HostBuilder { builder().wasm(&wasm) };
    let cfg = config(json!({}));

    // Start: on_configure + discovery + JWKS parsing (timed after a first start compiled the
    // module).
    drop(b().start(&cfg).unwrap_or_else(|e| panic!("{e}")));
    let t = Instant::now();
    let mut host = b().start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let _ = Outcome::Reset;
    let start_fuel = host.fuel_consumed();
    let start_micros = t.elapsed().as_secs_f64() * 1e6;
    serve_discovery_and_jwks(&mut host, &[key(0)]);
    let idp_fuel = host.fuel_consumed() - start_fuel;
    let (_, cookie) = login(&mut host);

    let mut rows = vec![
        row(
            "start",
            "instantiate + VM start + on_configure",
            vec![start_fuel],
            start_micros,
        ),
        row(
            "idp_load",
            "discovery + JWKS responses parsed",
            vec![idp_fuel],
            f64::NAN,
        ),
    ];

    // Per-request rows: the same request N times (fuel varies a little with the allocator's
    // and the SDK's hash maps' state; the median is reported), time averaged.
    const N: u32 = 101;
    let mut measure = |host: &mut Host,
                       name: &'static str,
                       what: &'static str,
                       f: &dyn Fn(&mut Host) -> Outcome,
                       check: &dyn Fn(&Outcome)| {
        let mut fuels = Vec::new();
        let t = Instant::now();
        for _ in 0..N {
            let before = host.fuel_consumed();
            let o = f(host);
            fuels.push(host.fuel_consumed() - before);
            check(&o);
        }
        let micros = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        rows.push(row(name, what, fuels, micros));
    };
    let authed = browser("/app/page?x=1")
        .cookie("theme", "dark")
        .cookie(COOKIE, &cookie);
    measure(
        &mut host,
        "authenticated",
        "valid session cookie → continue with identity headers",
        &|h| h.request(authed.clone()),
        &|o| assert!(o.is_continued(), "{o:?}"),
    );
    measure(
        &mut host,
        "unauthenticated_redirect",
        "browser, no session → 302 to the provider",
        &|h| h.request(browser("/app/page?x=1")),
        &|o| assert_eq!(o.status(), Some(302)),
    );
    measure(
        &mut host,
        "unauthenticated_api",
        "XHR, no session → 401",
        &|h| h.request(Request::get("/api").header("accept", "application/json")),
        &|o| assert_eq!(o.status(), Some(401)),
    );
    measure(
        &mut host,
        "forged_headers",
        "valid session + 3 forged identity headers stripped",
        &|h| {
            h.request(
                authed
                    .clone()
                    .header("x-forwarded-user", "a")
                    .header("X_Forwarded_Email", "b")
                    .header("x-auth-request-user", "c"),
            )
        },
        &|o| assert!(o.is_continued()),
    );

    // Bearer tokens (skip_jwt_bearer_tokens): first sight (RS256 verified, then cached; each
    // run a token of its own) and a cached one.
    let bcfg = config(json!({
        "skip_jwt_bearer_tokens": true,
        "extra_jwt_issuers": [format!("{ISSUER}=urn:api")],
    }));
    let mut bhost = b().start(&bcfg).unwrap_or_else(|e| panic!("{e}"));
    serve_discovery_and_jwks(&mut bhost, &[key(0)]);
    let now = bhost.now_secs();
    let k = key(0);
    let tokens: Vec<String> = (0..N)
        .map(|i| {
            let c = json!({"iss": ISSUER, "aud": "urn:api", "sub": "client-7",
                "exp": now + 3600, "iat": now, "jti": i});
            sign(
                k,
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": k.kid}),
                &c,
            )
        })
        .collect();
    let api = |t: &str| {
        Request::get("/api/orders")
            .header("accept", "application/json")
            .header("authorization", &format!("Bearer {t}"))
    };
    let next = std::cell::Cell::new(0usize);
    measure(
        &mut bhost,
        "bearer_first_sight",
        "bearer JWT never seen: RS256 verified, cached → continue",
        &|h| {
            let i = next.get();
            next.set(i + 1);
            h.request(api(&tokens[i % tokens.len()]))
        },
        &|o| assert!(o.is_continued(), "{o:?}"),
    );
    measure(
        &mut bhost,
        "bearer_cached",
        "bearer JWT seen before: from the VM's cache → continue",
        &|h| h.request(api(&tokens[0])),
        &|o| assert!(o.is_continued(), "{o:?}"),
    );

    // Sessions that carry more: 50 groups with a group rule and the groups header; and a
    // sealed session with an access token and the ID token, over three chunk cookies.
    let session_with = |cfg: serde_json::Value, extra: serde_json::Value, access: String| {
        let mut h = b().start(&config(cfg)).unwrap_or_else(|e| panic!("{e}"));
        serve_discovery_and_jwks(&mut h, &[key(0)]);
        let (_, out) = login_with_response(&mut h, "/app", 200, |l, now| {
            let mut c = claims(now, &l.nonce);
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                   "id_token": id_token(key(0), &c)})
            .to_string()
        });
        let r = out.expect_reply();
        assert_eq!(r.status, 302, "{r:?}");
        let mut req = browser("/app/page?x=1").cookie("theme", "dark");
        let mut n = 0;
        for c in set_cookies(&r.headers) {
            if c.name.starts_with(COOKIE) && !c.name.contains("_csrf_") && !c.value.is_empty() {
                req = req.cookie(&c.name, &c.value);
                n += 1;
            }
        }
        (h, req, n)
    };
    let groups: Vec<String> = (0..50).map(|i| format!("team-{i:02}")).collect();
    let (mut ghost, greq, _) = session_with(
        json!({"allowed_groups": ["team-07", "admins"], "pass_groups": true}),
        json!({"groups": groups}),
        "at".into(),
    );
    measure(
        &mut ghost,
        "session_50_groups",
        "valid session with 50 groups, a group rule, X-Forwarded-Groups",
        &|h| h.request(greq.clone()),
        &|o| assert!(o.is_continued(), "{o:?}"),
    );
    let (mut chost, creq, chunks) = session_with(
        json!({"pass_access_token": true, "pass_authorization_header": true}),
        json!({}),
        "t".repeat(7000),
    );
    assert_eq!(chunks, 3, "a three-chunk session");
    measure(
        &mut chost,
        "chunked_session_tokens",
        "sealed session over 3 cookies (7 KB access token + ID token) → tokens upstream",
        &|h| h.request(creq.clone()),
        &|o| assert!(o.is_continued(), "{o:?}"),
    );

    // skip_auth_routes: eight regexes a request with a session is checked against (none
    // matches, so every one runs) before its session is.
    let (mut rhost, rreq, _) = session_with(
        json!({"skip_auth_routes": [
            "GET=^/health$", "^/public/", "^/static/.*\\.(css|js|png)$",
            "POST=^/webhooks/[a-z]+$", "^/metrics$", "^/api/v[0-9]+/status$",
            "^/favicon\\.ico$", "^/robots\\.txt$"
        ]}),
        json!({}),
        "at".into(),
    );
    measure(
        &mut rhost,
        "session_8_skip_routes",
        "valid session, 8 skip_auth_routes checked (none matches) → continue",
        &|h| h.request(rreq.clone()),
        &|o| assert!(o.is_continued(), "{o:?}"),
    );

    // Callback: the request up to the token request, then the token response (RS256 check).
    // Each run is a login of its own: a login's code is exchanged once.
    let (mut req_f, mut resp_f, mut total_f) = (Vec::new(), Vec::new(), Vec::new());
    let mut elapsed = std::time::Duration::ZERO;
    let runs = 21;
    for _ in 0..runs {
        let login = begin_login(&mut host, browser("/app"));
        let now = host.now_secs();
        let body = token_response(&id_token(key(0), &claims(now, &login.nonce)));
        let t = Instant::now();
        let before = host.fuel_consumed();
        let c = host
            .request(callback_request(&login, "code-1"))
            .expect_paused();
        let mid = host.fuel_consumed();
        let r = host.respond(c[0].token, 200, &[], &body).expect_reply();
        assert_eq!(r.status, 302, "{r:?}");
        elapsed += t.elapsed();
        req_f.push(mid - before);
        resp_f.push(host.fuel_consumed() - mid);
        total_f.push(host.fuel_consumed() - before);
    }
    let cb_micros = elapsed.as_secs_f64() * 1e6 / f64::from(runs);
    rows.push(row(
        "callback_request",
        "callback → token request dispatched",
        req_f,
        f64::NAN,
    ));
    rows.push(row(
        "token_response",
        "token response → ID token verified (RS256) → session + 302",
        resp_f,
        f64::NAN,
    ));
    rows.push(row(
        "callback_total",
        "callback + token response",
        total_f,
        cb_micros,
    ));

    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    println!("oidc-filter per-request cost in the fake Envoy (wasmtime fuel ≈ wasm instructions; deterministic for a given module and sequence)");
    println!("module: {} ({} bytes)", wasm.display(), size);
    println!();
    println!(
        "| {:<24} | {:>10} | {:>19} | {:>9} | what",
        "case", "fuel", "min..max", "µs (info)"
    );
    println!(
        "|{}|{}|{}|{}|{}",
        "-".repeat(26),
        "-".repeat(12),
        "-".repeat(21),
        "-".repeat(11),
        "-".repeat(40)
    );
    for r in &rows {
        let us = if r.micros.is_nan() {
            "-".to_string()
        } else {
            format!("{:.1}", r.micros)
        };
        println!(
            "| {:<24} | {:>10} | {:>19} | {:>9} | {}",
            r.name,
            r.fuel,
            format!("{}..{}", r.min, r.max),
            us,
            r.what
        );
    }
    let fuel_of = |n: &str| rows.iter().find(|r| r.name == n).map_or(0, |r| r.fuel);
    let (first, cached, authed) = (
        fuel_of("bearer_first_sight"),
        fuel_of("bearer_cached"),
        fuel_of("authenticated"),
    );
    if cached > 0 && authed > 0 {
        println!();
        println!(
            "bearer: first sight / cached = {:.1}x; cached / session cookie = {:.2}x",
            first as f64 / cached as f64,
            cached as f64 / authed as f64
        );
        println!(
            "vs the authenticated request: 50 groups {:.2}x, chunked session with tokens {:.2}x",
            fuel_of("session_50_groups") as f64 / authed as f64,
            fuel_of("chunked_session_tokens") as f64 / authed as f64
        );
    }
    let json = json!({
        "module": wasm.display().to_string(),
        "module_bytes": size,
        "unit": "wasmtime fuel (≈ wasm instructions), per request",
        "cases": rows.iter().map(|r| (r.name.to_string(), json!({
            "fuel": r.fuel,
            "fuel_min": r.min,
            "fuel_max": r.max,
            "what": r.what,
            "micros_info": if r.micros.is_nan() { serde_json::Value::Null } else { json!((r.micros * 10.0).round() / 10.0) },
        }))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("create the output folder");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap() + "\n").expect("write json");
    println!();
    let out = std::fs::canonicalize(&out).unwrap_or(out);
    println!("wrote {}", out.display());
}
