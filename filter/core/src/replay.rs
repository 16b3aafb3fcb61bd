//! One code exchange per login (the security review's finding 6). A login cookie is good for
//! `LOGIN_TTL_SECS`; without a record of spent logins, each replay of the callback URL would
//! be one more token-endpoint call made with our client credentials. The record is a list in
//! proxy-wasm shared data, so every worker VM of one Envoy sees it; the glue updates it with
//! compare-and-swap, and this module is the pure part: the list's format and the claim.
//!
//! Format: entries of `expires_at` (u64, big-endian), a length byte, and the login's id.

/// Most entries kept. When full, the entry closest to expiry goes first; 4096 logins in the
/// ten minutes a login lasts is far beyond one Envoy's users, and the oldest is the one least
/// likely to be replayed.
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyClaimed;

fn entries(list: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut rest = list;
    while rest.len() >= 9 {
        let (head, tail) = rest.split_at(9);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&head[..8]);
        let len = usize::from(head[8]);
        if tail.len() < len {
            break;
        }
        let (id, tail) = tail.split_at(len);
        out.push((u64::from_be_bytes(exp), id));
        rest = tail;
    }
    out
}

/// The list after claiming `id` (good until `expires_at`) at `now`, with expired entries
/// dropped; `Err` when `id` was claimed already and has not expired. A malformed list (from
/// another version) is read as far as it parses.
pub fn claim(list: &[u8], id: &str, now: u64, expires_at: u64) -> Result<Vec<u8>, AlreadyClaimed> {
    let id = id.as_bytes();
    let id = &id[..id.len().min(255)];
    let mut live: Vec<(u64, &[u8])> = entries(list)
        .into_iter()
        .filter(|(exp, _)| *exp > now)
        .collect();
    if live.iter().any(|(_, e)| *e == id) {
        return Err(AlreadyClaimed);
    }
    if live.len() >= MAX_ENTRIES {
        live.sort_by_key(|(exp, _)| *exp);
        live.drain(..=live.len() - MAX_ENTRIES);
    }
    live.push((expires_at, id));
    let mut out = Vec::with_capacity(live.len() * 30);
    for (exp, e) in live {
        out.extend_from_slice(&exp.to_be_bytes());
        out.push(e.len() as u8);
        out.extend_from_slice(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_claimed_once_until_it_expires() {
        let l = claim(b"", "a", 100, 700).unwrap();
        assert_eq!(claim(&l, "a", 200, 800), Err(AlreadyClaimed));
        let l = claim(&l, "b", 200, 800).unwrap();
        assert_eq!(claim(&l, "b", 799, 900), Err(AlreadyClaimed));
        // Past its expiry the login cookie is refused anyway; the entry is dropped.
        let l2 = claim(&l, "c", 700, 1300).unwrap();
        assert_eq!(entries(&l2).len(), 2);
        assert!(claim(&l2, "a", 701, 1300).is_ok());
    }

    #[test]
    fn bounded_and_tolerant_of_garbage() {
        let mut l = Vec::new();
        for i in 0..MAX_ENTRIES + 10 {
            l = claim(&l, &format!("id{i}"), 0, 1000 + i as u64).unwrap();
        }
        assert_eq!(entries(&l).len(), MAX_ENTRIES);
        // The most recent claims are still there; the ones closest to expiry went.
        assert_eq!(
            claim(&l, &format!("id{}", MAX_ENTRIES + 9), 0, 1),
            Err(AlreadyClaimed)
        );
        assert!(claim(&l, "id0", 0, 1).is_ok());
        assert!(claim(b"\x01\x02garbage", "x", 0, 10).is_ok());
        let mut truncated = claim(b"", "abc", 0, 10).unwrap();
        truncated.pop();
        assert!(claim(&truncated, "abc", 0, 10).is_ok());
    }
}
