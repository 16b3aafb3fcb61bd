//! The identity claims a session carries, by name, and the headers each one reaches: adding a
//! claim is one row in `CLAIMS`. The session cookie stores their values in this order (see
//! `session`); a cookie made with another row count does not verify, so adding a row logs
//! every user in again (once).

/// One claim of the ID token kept in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimSpec {
    /// The ID token's claim name.
    pub name: &'static str,
    /// The header upstream with `pass_user_headers` (oauth2-proxy's `X-Forwarded-*`).
    pub forwarded: &'static str,
    /// The header with `set_xauthrequest`, and in `/oauth2/auth` replies.
    pub auth_request: &'static str,
}

pub const CLAIMS: [ClaimSpec; 3] = [
    ClaimSpec {
        name: "sub",
        forwarded: "x-forwarded-user",
        auth_request: "x-auth-request-user",
    },
    ClaimSpec {
        name: "email",
        forwarded: "x-forwarded-email",
        auth_request: "x-auth-request-email",
    },
    ClaimSpec {
        name: "preferred_username",
        forwarded: "x-forwarded-preferred-username",
        auth_request: "x-auth-request-preferred-username",
    },
];

/// Positions in `CLAIMS` of the claims the filter itself reads.
pub const SUB: usize = 0;
pub const EMAIL: usize = 1;
pub const PREFERRED_USERNAME: usize = 2;

/// A session's claim values, in `CLAIMS` order; empty when the ID token had none fit for a
/// header (see `flow::clean_claim`).
pub type ClaimValues = [String; CLAIMS.len()];

/// The position of the claim `name`, if a session carries it.
pub fn index_of(name: &str) -> Option<usize> {
    CLAIMS.iter().position(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers_are_distinct_and_lower_case() {
        assert_eq!(CLAIMS[SUB].name, "sub");
        assert_eq!(CLAIMS[EMAIL].name, "email");
        let mut all: Vec<&str> = Vec::new();
        for c in CLAIMS {
            for h in [c.forwarded, c.auth_request] {
                assert_eq!(h, h.to_ascii_lowercase());
                assert!(!all.contains(&h), "{h} twice");
                all.push(h);
            }
            assert_eq!(index_of(c.name).map(|i| CLAIMS[i].name), Some(c.name));
        }
        assert_eq!(index_of("groups"), None);
    }
}
