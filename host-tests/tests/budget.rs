//! A deterministic guard on the hot paths' cost: wasmtime fuel (≈ wasm instructions) for the
//! authenticated request, the 401 and the login redirect, against a committed budget. Fuel is
//! a count, not a timing: the same module and requests give the same number on any machine,
//! so a regression fails `make test` here rather than showing up in a benchmark later.
//!
//! The budgets sit about 15 % above what the module costs now (the median of 11 runs, as
//! `make bench-host` measures them: 50,722 / 26,563 / 135,499 here); lower them when a change makes a
//! path cheaper, raise them only with a reason in the commit.
mod common;

use common::*;
use host_tests::{Host, Outcome, Request};
use serde_json::json;

const AUTHENTICATED: u64 = 58_000;
const UNAUTHENTICATED_API: u64 = 30_500;
const LOGIN_REDIRECT: u64 = 160_000;

fn median_fuel(host: &mut Host, f: &dyn Fn(&mut Host) -> Outcome, check: &dyn Fn(&Outcome)) -> u64 {
    let mut fuels: Vec<u64> = (0..11)
        .map(|_| {
            let before = host.fuel_consumed();
            let o = f(host);
            check(&o);
            host.fuel_consumed() - before
        })
        .collect();
    fuels.sort_unstable();
    fuels[fuels.len() / 2]
}

#[test]
fn hot_paths_stay_within_their_fuel_budget() {
    let mut host = ready_host(json!({}));
    let (_, cookie) = login(&mut host);
    let authed = browser("/app/page?x=1")
        .cookie("theme", "dark")
        .cookie(COOKIE, &cookie);
    let a = median_fuel(&mut host, &|h| h.request(authed.clone()), &|o| {
        assert!(o.is_continued(), "{o:?}")
    });
    let u = median_fuel(
        &mut host,
        &|h| h.request(Request::get("/api").header("accept", "application/json")),
        &|o| assert_eq!(o.status(), Some(401)),
    );
    let r = median_fuel(&mut host, &|h| h.request(browser("/app/page?x=1")), &|o| {
        assert_eq!(o.status(), Some(302))
    });
    println!("fuel: authenticated {a} (budget {AUTHENTICATED}), 401 {u} (budget {UNAUTHENTICATED_API}), redirect {r} (budget {LOGIN_REDIRECT})");
    assert!(
        a <= AUTHENTICATED,
        "authenticated request: {a} fuel > budget {AUTHENTICATED}"
    );
    assert!(
        u <= UNAUTHENTICATED_API,
        "401: {u} fuel > budget {UNAUTHENTICATED_API}"
    );
    assert!(
        r <= LOGIN_REDIRECT,
        "login redirect: {r} fuel > budget {LOGIN_REDIRECT}"
    );
}
