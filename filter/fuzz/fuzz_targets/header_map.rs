//! `headermap::parse`: the proxy-wasm serialized header map (u32 LE count, u32 LE name and
//! value lengths per pair, then each name and value NUL-terminated), and the request view
//! built from it.
//!
//! Invariants: a map that parses serializes back to a prefix of the buffer (the same bytes),
//! parse(serialize(pairs)) == pairs, and `Request::from_pairs` and its accessors never panic
//! and agree with the pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::headermap::{parse, serialize};
use oidc_filter_core::http::Request;

fuzz_target!(|data: &[u8]| {
    let Some(pairs) = parse(data) else {
        return;
    };
    let again = serialize(&pairs).expect("parsed pairs serialize");
    if data.is_empty() {
        assert!(pairs.is_empty());
    } else {
        assert!(
            data.starts_with(&again),
            "serialize(parse(buf)) is not a prefix of buf"
        );
    }
    assert_eq!(parse(&again).as_deref(), Some(&pairs[..]), "round trip");

    let req = Request::from_pairs(&pairs);
    let _ = (
        req.path_only(),
        req.query(),
        req.host(),
        req.header("cookie"),
    );
    let _ = req.cookies().count();
    assert!(req.path.starts_with(req.path_only()));
    for (k, _) in &req.headers {
        assert!(
            !k.starts_with(':'),
            "a pseudo-header among the headers: {k:?}"
        );
    }
    let n_plain = pairs
        .iter()
        .filter(|(k, _)| k.first() != Some(&b':'))
        .count();
    assert_eq!(req.headers.len(), n_plain);
    if let Some((_, p)) = pairs.iter().rev().find(|(k, _)| *k == b":path") {
        assert_eq!(req.path, String::from_utf8_lossy(p));
    }
});
