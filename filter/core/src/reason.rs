//! Every outcome the filter replies with or logs, in one place: its HTTP status, the stable
//! code sent in `x-oidc-filter-reason` (and, later, the metric label) and the log level. No
//! code is spelled anywhere else.

/// How loud a reason is in the proxy's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $v:ident = $code:literal, $status:literal, $level:ident;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $v,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$v,)*];

            /// The stable code: `x-oidc-filter-reason`, the log line, the metric label.
            pub const fn code(self) -> &'static str {
                match self { $(Reason::$v => $code,)* }
            }

            /// The status of the reply this reason is sent with.
            pub const fn status(self) -> u32 {
                match self { $(Reason::$v => $status,)* }
            }

            pub const fn level(self) -> Level {
                match self { $(Reason::$v => Level::$level,)* }
            }
        }
    };
}

reasons! {
    /// `/oauth2/auth` with a valid session.
    Authenticated = "authenticated", 202, Debug;
    /// `/oauth2/userinfo` with a valid session: its identity as JSON.
    UserInfo = "userinfo", 200, Debug;
    /// `ping_path`: the filter is running.
    Ping = "ping", 200, Debug;
    /// `ready_path`: every provider's metadata and keys are loaded.
    Ready = "ready", 200, Debug;
    /// No valid session, and not a browser navigation (or `/oauth2/auth`).
    Unauthenticated = "unauthenticated", 401, Debug;
    /// Sent to the provider's authorization endpoint.
    LoginRedirect = "login_redirect", 302, Debug;
    /// The callback set the session.
    LoginComplete = "login_complete", 302, Info;
    /// A second callback of a login that already has its session.
    LoginAlreadyComplete = "login_already_complete", 302, Debug;
    SignedOut = "signed_out", 302, Info;
    /// The provider's metadata or keys are not loaded yet.
    IdpNotReady = "idp_not_ready", 503, Warn;
    /// Too many logins wait for the provider's keys at once.
    KeyWaitersFull = "idp_busy", 503, Warn;
    BadRequest = "bad_request", 400, Info;
    /// The callback's parameters are missing, repeated or malformed.
    CallbackInvalid = "callback_invalid", 403, Info;
    /// The login cookie for this state is missing, expired or forged.
    LoginExpired = "login_expired", 403, Info;
    StateMismatch = "state_mismatch", 403, Info;
    /// This login's code was exchanged already.
    CallbackReplayed = "callback_replayed", 403, Info;
    /// The provider sent an error to the callback.
    IdpError = "idp_error", 403, Info;
    TokenRequestFailed = "token_request_failed", 502, Warn;
    TokenResponseInvalid = "token_response_invalid", 502, Warn;
    IdTokenInvalid = "id_token_invalid", 502, Warn;
    EmailNotAllowed = "email_not_allowed", 403, Info;
    EmailUnverified = "email_unverified", 403, Info;
    /// The user is in none of the host's `allowed_groups`.
    GroupNotAllowed = "group_not_allowed", 403, Info;
    /// A claim rule of the host does not hold.
    ClaimNotAllowed = "claim_not_allowed", 403, Info;
    /// What the session must carry does not fit in a cookie (too many groups or claims).
    SessionTooLarge = "session_too_large", 500, Warn;
    /// A bearer token that does not validate (RFC 6750 `invalid_token`).
    BearerInvalid = "bearer_invalid", 401, Info;
    /// A bearer token names a key its issuer's JWKS lacks; the keys are being refetched.
    BearerKeyUnknown = "bearer_key_unknown", 503, Info;
    /// The provider refused to refresh the session (`invalid_grant`: revoked, expired, or
    /// a refresh token used twice): an API client must sign in again (a browser is sent to).
    RefreshRefused = "refresh_refused", 401, Info;
    /// A `routes` entry with `"action": "deny"` matches.
    RouteDenied = "route_denied", 403, Info;
    /// The path's meaning is ambiguous (`;`, `\`, an encoded `/`, `..` above the root) on a
    /// host whose `routes` could refuse or narrow it.
    PathAmbiguous = "path_ambiguous", 400, Info;
    /// The request's host matches no `hosts` entry and `unmatched_hosts` is `deny`.
    HostNotConfigured = "host_not_configured", 403, Info;
    /// The host's shared data (where spent logins are kept) failed.
    SharedDataUnavailable = "shared_data_unavailable", 503, Warn;
    InternalError = "internal_error", 500, Warn;
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.code())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.code() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert!(a
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
            }
            assert!((200..600).contains(&a.status()));
        }
    }

    /// The README's table of reason codes names every one, with its status.
    #[test]
    fn the_readme_lists_every_reason() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        for r in Reason::ALL {
            let row = format!("| {} | `{}` |", r.status(), r.code());
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }
}
