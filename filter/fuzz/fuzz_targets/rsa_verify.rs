//! `rsa::PublicKey` on any modulus, exponent, signature and message.
//!
//! Input: a selector byte (hash, scheme), the modulus' length (2 bytes, big-endian, at most
//! 520), the modulus, the exponent's length (1 byte, at most 8), the exponent, then a signature
//! of the key's size and the message. Invariants: no panic; a key exists only for an odd
//! modulus of 2 to `MAX_BITS` bits and an odd exponent in 3..2³²; a signature of another length
//! than the key's never verifies; verifying is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter_core::rsa::{Hash, PublicKey, MAX_BITS};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let n_len = usize::from(u16::from_be_bytes(*len)).min(520).min(rest.len());
    let (n, rest) = rest.split_at(n_len);
    let Some((&e_len, rest)) = rest.split_first() else {
        return;
    };
    let e_len = usize::from(e_len).min(8).min(rest.len());
    let (e, rest) = rest.split_at(e_len);
    let Some(key) = PublicKey::new(n, e) else {
        return;
    };
    let bits = key.bits();
    assert!((2..=MAX_BITS).contains(&bits), "{bits}-bit key");
    assert_eq!(n.last().map(|b| b & 1), Some(1), "even modulus kept");
    let hash = [Hash::Sha256, Hash::Sha384, Hash::Sha512][usize::from(sel % 3)];
    let pss = sel & 0x80 != 0;
    let verify = |msg: &[u8], sig: &[u8]| {
        if pss {
            key.verify_pss(hash, msg, sig)
        } else {
            key.verify_pkcs1v15(hash, msg, sig)
        }
    };
    let size = key.size().min(rest.len());
    let (sig, msg) = rest.split_at(size);
    let ok = verify(msg, sig);
    assert_eq!(ok, verify(msg, sig), "not deterministic");
    if sig.len() != key.size() {
        assert!(!ok, "a signature of {} bytes verified for a {}-byte key", sig.len(), key.size());
    }
    let mut long = sig.to_vec();
    long.push(0);
    assert!(!verify(msg, &long), "a signature longer than the key verified");
});
