//! `cookie_refresh`: a session whose tokens are older than that is refreshed inline through
//! the token endpoint (RFC 6749 §6) before its request goes on, and its cookies re-issued.
//!
//! One refresh per session per Envoy. Requests of one session, on any worker VM, find the
//! refresh through a record in proxy-wasm shared data keyed by a hash of the refresh token
//! they carry (the glue updates it by compare-and-swap; this module is the pure part):
//! - no record: this request claims it (`InFlight`) and makes the one token call;
//! - `InFlight`: another request is refreshing; this one goes on with the session it carries
//!   (still inside its lifetime), unchanged;
//! - `Done`: the new session's cookie values; this request goes on as that session and sets
//!   its cookies (a request that carried the previous cookie, for `GRACE_SECS`);
//! - `Revoked`: the provider refused (`invalid_grant`): a new login, or 401;
//! - `Failed`: the token endpoint could not answer; requests go on unchanged and the next
//!   one after `BACKOFF_SECS` tries again.
//!
//! List format: entries of `expires_at` (u64 BE), a state byte, a length byte and the id,
//! then a u32 BE length and the value (the cookie values, joined with a space).

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::flow::{Callout, Forward, LocalReply};
use crate::session::Session;
use crate::util::b64url;

/// How long a request carrying the previous cookie is served the refreshed session.
pub const GRACE_SECS: u64 = 60;
/// After a failed refresh (no answer, a 5xx), how long requests go on without trying again.
pub const BACKOFF_SECS: u64 = 10;
/// How long a refreshed grant's refusal is remembered (others of that session get it too).
pub const REVOKED_SECS: u64 = 60;
/// How long after a session falls due a refusal of its refresh leaves it working (another
/// replica may have refreshed it, spending its refresh token): `cookie_refresh`, at most 60 s.
/// After that, a refusal is a new login.
pub fn refusal_grace(refresh_secs: u64) -> u64 {
    refresh_secs.min(60)
}

/// Most records kept; when full, the one closest to expiry goes.
pub const MAX_ENTRIES: usize = 512;

/// What the shared record says of a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Claimed now by this request: it makes the token call.
    Mine,
    InFlight,
    Done(Vec<String>),
    Revoked,
    Failed,
}

/// What a finished refresh leaves in the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Done(Vec<String>),
    Revoked,
    Failed,
}

impl Record {
    fn state(&self) -> u8 {
        match self {
            Record::Done(_) => 1,
            Record::Revoked => 2,
            Record::Failed => 3,
        }
    }

    /// How long the record lives from `now`.
    pub fn ttl(&self) -> u64 {
        match self {
            Record::Done(_) => GRACE_SECS,
            Record::Revoked => REVOKED_SECS,
            Record::Failed => BACKOFF_SECS,
        }
    }
}

/// The record id of a refresh token: it never leaves the VM's memory, but is a hash anyway.
pub fn record_id(refresh_token: &str) -> String {
    let h = Sha256::digest(refresh_token.as_bytes());
    b64url(&h[..16])
}

struct Entry<'a> {
    expires_at: u64,
    state: u8,
    id: &'a [u8],
    value: &'a [u8],
}

fn entries(list: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let mut rest = list;
    loop {
        if rest.len() < 10 {
            break;
        }
        let (head, tail) = rest.split_at(10);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&head[..8]);
        let state = head[8];
        let id_len = usize::from(head[9]);
        if tail.len() < id_len + 4 {
            break;
        }
        let (id, tail) = tail.split_at(id_len);
        let (len, tail) = tail.split_at(4);
        let mut l = [0u8; 4];
        l.copy_from_slice(len);
        let Ok(value_len) = usize::try_from(u32::from_be_bytes(l)) else {
            break;
        };
        if tail.len() < value_len {
            break;
        }
        let (value, tail) = tail.split_at(value_len);
        out.push(Entry {
            expires_at: u64::from_be_bytes(exp),
            state,
            id,
            value,
        });
        rest = tail;
    }
    out
}

fn write(live: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(live.iter().map(|e| 14 + e.id.len() + e.value.len()).sum());
    for e in live {
        out.extend_from_slice(&e.expires_at.to_be_bytes());
        out.push(e.state);
        out.push(e.id.len() as u8);
        out.extend_from_slice(e.id);
        out.extend_from_slice(&(e.value.len() as u32).to_be_bytes());
        out.extend_from_slice(e.value);
    }
    out
}

fn slot_of(e: &Entry<'_>) -> Slot {
    match e.state {
        0 => Slot::InFlight,
        1 => Slot::Done(
            String::from_utf8_lossy(e.value)
                .split(' ')
                .map(str::to_string)
                .collect(),
        ),
        2 => Slot::Revoked,
        _ => Slot::Failed,
    }
}

fn live<'a>(list: &'a [u8], now: u64, id: &[u8]) -> Vec<Entry<'a>> {
    let mut live: Vec<Entry<'_>> = entries(list)
        .into_iter()
        .filter(|e| e.expires_at > now && e.id != id)
        .collect();
    if live.len() >= MAX_ENTRIES {
        live.sort_by_key(|e| e.expires_at);
        live.drain(..=live.len() - MAX_ENTRIES);
    }
    live
}

/// Claims the refresh `id` at `now` until `until` (the token call's timeout, and a margin):
/// `Ok(list)` to store (the slot is `Mine`), or `Err(slot)`: what the live record says.
pub fn claim(list: &[u8], id: &str, now: u64, until: u64) -> Result<Vec<u8>, Slot> {
    let idb = &id.as_bytes()[..id.len().min(255)];
    if let Some(e) = entries(list)
        .iter()
        .find(|e| e.id == idb && e.expires_at > now)
    {
        return Err(slot_of(e));
    }
    let mut l = live(list, now, idb);
    l.push(Entry {
        expires_at: until,
        state: 0,
        id: idb,
        value: &[],
    });
    Ok(write(&l))
}

/// The list with `record` as refresh `id`'s outcome, from `now`.
pub fn publish(list: &[u8], id: &str, record: &Record, now: u64) -> Vec<u8> {
    let idb = &id.as_bytes()[..id.len().min(255)];
    let value = match record {
        Record::Done(values) => values.join(" ").into_bytes(),
        _ => Vec::new(),
    };
    let mut l = live(list, now, idb);
    l.push(Entry {
        expires_at: now.saturating_add(record.ttl()),
        state: record.state(),
        id: idb,
        value: &value,
    });
    write(&l)
}

/// What a request does after the refresh, whichever way it went.
// One per request, made and moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    Forward(Forward),
    Reply(LocalReply),
}

/// A request whose session is due for a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    /// The token request (`grant_type=refresh_token`).
    pub callout: Callout,
    pub pending: PendingRefresh,
    /// The request as it would go without a refresh (the session it carries).
    pub fallback: Pass,
    /// When the provider refuses: a new login for a browser (the session's cookies cleared),
    /// else 401 `refresh_refused`.
    pub relogin: LocalReply,
}

/// What the refresh's answer is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRefresh {
    pub provider: usize,
    pub host: String,
    /// The request's method and path: the policy (host, or route) is looked up again.
    pub method: String,
    pub path: String,
    pub session: Session,
    pub chunks_present: Vec<String>,
    /// The client's identity headers to remove (as `forward` found them).
    pub remove: Vec<Cow<'static, str>>,
    /// `/oauth2/auth`'s query parameters, when the request is one.
    pub auth_query: Option<Vec<(String, String)>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_then_its_outcome_for_everyone() {
        let l = claim(b"", "a", 100, 110).unwrap();
        assert_eq!(claim(&l, "a", 101, 111), Err(Slot::InFlight));
        // Another session's refresh is its own.
        let l = claim(&l, "b", 101, 111).unwrap();
        let done = Record::Done(vec!["3.2.x".into(), "y".into()]);
        let l = publish(&l, "a", &done, 105);
        assert_eq!(
            claim(&l, "a", 106, 116),
            Err(Slot::Done(vec!["3.2.x".into(), "y".into()]))
        );
        assert_eq!(claim(&l, "b", 106, 116), Err(Slot::InFlight));
        // Past the grace period the record is gone (the token it was for is spent anyway).
        assert!(claim(&l, "a", 105 + GRACE_SECS, 200).is_ok());
        // An in-flight claim whose request died expires too.
        assert!(claim(&l, "b", 111, 200).is_ok());
        let l = publish(&l, "b", &Record::Failed, 120);
        assert_eq!(claim(&l, "b", 121, 200), Err(Slot::Failed));
        assert!(claim(&l, "b", 120 + BACKOFF_SECS, 200).is_ok());
        let l = publish(&l, "b", &Record::Revoked, 130);
        assert_eq!(claim(&l, "b", 131, 200), Err(Slot::Revoked));
    }

    #[test]
    fn bounded_and_tolerant_of_garbage() {
        let mut l = Vec::new();
        for i in 0..(MAX_ENTRIES + 10) {
            l = claim(&l, &format!("id{i}"), 1, 1000 + i as u64).unwrap();
        }
        assert_eq!(entries(&l).len(), MAX_ENTRIES);
        // The ones closest to expiry went first.
        assert!(claim(&l, "id0", 2, 3000).is_ok());
        assert_eq!(
            claim(&l, &format!("id{}", MAX_ENTRIES + 9), 2, 3000),
            Err(Slot::InFlight)
        );
        for garbage in [&b"\xff\xff"[..], &[0u8; 9], &[0u8; 40], &[1u8; 300]] {
            let l = claim(garbage, "x", 1, 10).unwrap();
            assert_eq!(claim(&l, "x", 2, 10), Err(Slot::InFlight));
        }
        assert_ne!(record_id("rt-1"), record_id("rt-2"));
        assert_eq!(record_id("rt-1").len(), 22);
    }
}
