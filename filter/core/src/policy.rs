//! Who may pass: a host's rules (email domains and addresses, groups, claim rules), checked
//! at login and again on every request against what the session carries, so that a narrowed
//! config takes effect at once. And what a session must carry for them: only the claims the
//! config references, and of the groups only those some rule names (unless `pass_groups`).

use serde_json::{Map, Value};

use crate::config::{EmailDomains, Policy};
use crate::domain::DomainPattern;
use crate::reason::Reason;
use crate::session::Session;

/// How a claim rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOp {
    /// The claim is one value, and it is one of the listed.
    Equals,
    /// The claim (a list, or one value) holds at least one of the listed.
    Contains,
}

/// `{"claim": "realm_access.roles", "contains": ["admin"]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub claim: String,
    pub op: RuleOp,
    pub values: Vec<String>,
}

/// Longest claim value kept (as `session::MAX_CLAIM_LEN`).
const MAX_VALUE_LEN: usize = crate::session::MAX_CLAIM_LEN;

/// A JSON scalar as text: strings as they are, numbers and booleans as JSON writes them.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The values of the claim at `path` in an ID token's claims: the whole name first (namespaced
/// claims such as `https://example.com/groups` hold dots), else a dotted path into nested
/// objects (`realm_access.roles`). A scalar gives one value, an array its scalar elements;
/// values unfit for a header (see `flow::clean_claim`) are dropped. `None`: no such claim.
pub fn claim_values(claims: &Map<String, Value>, path: &str) -> Option<Vec<String>> {
    let v = match claims.get(path) {
        Some(v) => v,
        None => {
            let mut parts = path.split('.');
            let mut v = claims.get(parts.next()?)?;
            for p in parts {
                v = v.as_object()?.get(p)?;
            }
            v
        }
    };
    let raw: Vec<String> = match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    };
    Some(
        raw.into_iter()
            .filter(|s| {
                !s.is_empty() && s.len() <= MAX_VALUE_LEN && crate::flow::clean_claim(Some(s)) == *s
            })
            .collect(),
    )
}

/// Whether `email` passes `email_domains` and `allowed_emails`: with `allowed_emails`, an
/// address on the list passes, and so does one in a listed domain (`email_domains` other than
/// `*`); without, the domain alone decides.
pub fn email_allowed(policy: &Policy, email: &str) -> bool {
    let listed = || {
        policy
            .allowed_emails
            .iter()
            .any(|a| a.eq_ignore_ascii_case(email))
    };
    match (&policy.email_domains, policy.allowed_emails.is_empty()) {
        (EmailDomains::Any, true) => true,
        (EmailDomains::Any, false) => listed(),
        (EmailDomains::List(d), _) => in_domains(d, email) || listed(),
    }
}

/// The domain of `email` (the part after its only `@`) is covered by one of `domains`.
pub fn in_domains(domains: &[DomainPattern], email: &str) -> bool {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if local.is_empty() || domain.is_empty() {
        return false;
    }
    let domain = domain.to_ascii_lowercase();
    domains.iter().any(|d| d.matches(&domain))
}

fn rule_holds(rule: &ClaimRule, values: Option<&[String]>) -> bool {
    let Some(values) = values else {
        return false;
    };
    match rule.op {
        RuleOp::Equals => values.len() == 1 && rule.values.contains(&values[0]),
        RuleOp::Contains => values.iter().any(|v| rule.values.contains(v)),
    }
}

/// Every rule of `policy`, on what `s` carries; the first that fails names the reason.
pub fn check(policy: &Policy, s: &Session) -> Result<(), Reason> {
    if !email_allowed(policy, s.email()) {
        return Err(Reason::EmailNotAllowed);
    }
    if !policy.allowed_groups.is_empty()
        && !s.groups.iter().any(|g| policy.allowed_groups.contains(g))
    {
        return Err(Reason::GroupNotAllowed);
    }
    for rule in &policy.claim_rules {
        if !rule_holds(rule, s.attr(&rule.claim)) {
            return Err(Reason::ClaimNotAllowed);
        }
    }
    Ok(())
}

/// `/oauth2/auth`'s query (oauth2-proxy): `allowed_groups`, `allowed_emails` and
/// `allowed_email_domains`, each comma-separated (or repeated), narrow the host's policy for
/// this one check.
pub fn check_auth_query(params: &[(String, String)], s: &Session) -> Result<(), Reason> {
    let list = |name: &str| -> Vec<&str> {
        params
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    };
    let groups = list("allowed_groups");
    if !groups.is_empty() && !s.groups.iter().any(|g| groups.contains(&g.as_str())) {
        return Err(Reason::GroupNotAllowed);
    }
    let emails = list("allowed_emails");
    let domains: Vec<DomainPattern> = list("allowed_email_domains")
        .into_iter()
        .filter_map(|d| DomainPattern::parse(d, crate::domain::LeadingDot::Subdomains, false).ok())
        .collect();
    let by_email = emails.iter().any(|e| e.eq_ignore_ascii_case(s.email()));
    let by_domain = in_domains(&domains, s.email());
    match (emails.is_empty(), domains.is_empty()) {
        (true, true) => Ok(()),
        _ if by_email || by_domain => Ok(()),
        _ => Err(Reason::EmailNotAllowed),
    }
}

/// What a session of one provider carries besides its identity claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carry {
    /// The provider's groups claim path, if any rule or header needs groups.
    pub groups_claim: Option<String>,
    /// `None`: every group (`pass_groups`); else only these (the union of `allowed_groups`).
    pub groups_only: Option<Vec<String>>,
    /// Other claim paths (claim rules, claim headers).
    pub claims: Vec<String>,
}

impl Carry {
    /// The groups and claims of a validated ID token that a session keeps.
    pub fn take(&self, token: &Map<String, Value>) -> (Vec<String>, Vec<(String, Vec<String>)>) {
        let path = self.groups_claim.as_deref().unwrap_or_default();
        self.take_from(token, path)
    }

    /// As `take`, with the groups read from `groups_claim` (a bearer token's issuer may name
    /// its groups claim otherwise than the provider), if groups are carried at all.
    pub fn take_from(
        &self,
        token: &Map<String, Value>,
        groups_claim: &str,
    ) -> (Vec<String>, Vec<(String, Vec<String>)>) {
        let mut groups = match &self.groups_claim {
            Some(_) => claim_values(token, groups_claim).unwrap_or_default(),
            None => Vec::new(),
        };
        if let Some(only) = &self.groups_only {
            groups.retain(|g| only.contains(g));
        }
        groups.dedup();
        let attrs = self
            .claims
            .iter()
            .filter_map(|path| Some((path.clone(), claim_values(token, path)?)))
            .collect();
        (groups, attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!(),
        }
    }

    #[test]
    fn claim_paths() {
        let c = claims(json!({
            "groups": ["a", "b", 3, true, {"x": 1}, "bad\nvalue", ""],
            "realm_access": {"roles": ["admin"]},
            "https://example.com/roles": ["ns"],
            "tenant": "acme",
            "deep": {"er": {"est": "yes"}},
        }));
        let v = |p: &str| claim_values(&c, p);
        assert_eq!(v("groups").unwrap(), ["a", "b", "3", "true"]);
        assert_eq!(v("realm_access.roles").unwrap(), ["admin"]);
        assert_eq!(v("https://example.com/roles").unwrap(), ["ns"]);
        assert_eq!(v("tenant").unwrap(), ["acme"]);
        assert_eq!(v("deep.er.est").unwrap(), ["yes"]);
        assert_eq!(v("realm_access"), Some(vec![]));
        assert_eq!(v("realm_access.nothing"), None);
        assert_eq!(v("tenant.x"), None);
        assert_eq!(v("nothing"), None);
    }

    fn session(email: &str, groups: &[&str], attrs: &[(&str, &[&str])]) -> Session {
        Session {
            expires_at: 10,
            issued_at: 0,
            claims: ["u".into(), email.into(), "".into()],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            attrs: attrs
                .iter()
                .map(|(p, v)| (p.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            tokens: None,
        }
    }

    fn policy(v: Value) -> Policy {
        let mut base = json!({"oidc_issuer_url": "https://i.example", "client_id": "c",
            "client_secret": "s", "cookie_secret": "q83vEjRWeJCrze8SNFZ4kA==", "idp_cluster": "i"});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        crate::config::Config::parse(base.to_string().as_bytes(), &|_| None)
            .unwrap()
            .default_policy
    }

    #[test]
    fn emails_domains_and_addresses() {
        let alice = session("alice@example.com", &[], &[]);
        let eve = session("Eve@Other.test", &[], &[]);
        assert_eq!(check(&policy(json!({})), &eve), Ok(()));
        let p = policy(json!({"email_domains": ["example.com"]}));
        assert_eq!(check(&p, &alice), Ok(()));
        assert_eq!(check(&p, &eve), Err(Reason::EmailNotAllowed));
        // A listed address passes besides the domains...
        let p =
            policy(json!({"email_domains": ["example.com"], "allowed_emails": ["eve@other.test"]}));
        assert_eq!(check(&p, &alice), Ok(()));
        assert_eq!(check(&p, &eve), Ok(()));
        // ...and with any domain, only listed addresses do (not everyone).
        let p = policy(json!({"allowed_emails": ["eve@other.test"]}));
        assert_eq!(check(&p, &alice), Err(Reason::EmailNotAllowed));
        assert_eq!(check(&p, &eve), Ok(()));
        assert_eq!(
            check(&p, &session("", &[], &[])),
            Err(Reason::EmailNotAllowed)
        );
    }

    #[test]
    fn groups_and_claim_rules() {
        let p = policy(json!({"allowed_groups": ["admins", "ops"]}));
        assert_eq!(check(&p, &session("a@x.y", &["staff", "ops"], &[])), Ok(()));
        assert_eq!(
            check(&p, &session("a@x.y", &["staff"], &[])),
            Err(Reason::GroupNotAllowed)
        );
        assert_eq!(
            check(&p, &session("a@x.y", &[], &[])),
            Err(Reason::GroupNotAllowed)
        );
        let p = policy(json!({"claim_rules": [
            {"claim": "realm_access.roles", "contains": ["grafana-admin"]},
            {"claim": "tenant", "equals": ["acme", "globex"]},
        ]}));
        let ok = session(
            "a@x.y",
            &[],
            &[
                ("realm_access.roles", &["viewer", "grafana-admin"]),
                ("tenant", &["acme"]),
            ],
        );
        assert_eq!(check(&p, &ok), Ok(()));
        let no_role = session(
            "a@x.y",
            &[],
            &[("realm_access.roles", &["viewer"]), ("tenant", &["acme"])],
        );
        assert_eq!(check(&p, &no_role), Err(Reason::ClaimNotAllowed));
        // equals: one value, listed; two values are not "equal" to one.
        let two = session(
            "a@x.y",
            &[],
            &[
                ("realm_access.roles", &["grafana-admin"]),
                ("tenant", &["acme", "evil"]),
            ],
        );
        assert_eq!(check(&p, &two), Err(Reason::ClaimNotAllowed));
        let missing = session("a@x.y", &[], &[("realm_access.roles", &["grafana-admin"])]);
        assert_eq!(check(&p, &missing), Err(Reason::ClaimNotAllowed));
    }

    #[test]
    fn auth_query_narrows() {
        let q = |s: &str| crate::http::query_params(s);
        let s = session("alice@example.com", &["staff"], &[]);
        assert_eq!(check_auth_query(&q(""), &s), Ok(()));
        assert_eq!(
            check_auth_query(&q("allowed_groups=admins,staff"), &s),
            Ok(())
        );
        assert_eq!(
            check_auth_query(&q("allowed_groups=admins"), &s),
            Err(Reason::GroupNotAllowed)
        );
        assert_eq!(
            check_auth_query(&q("allowed_emails=bob@example.com"), &s),
            Err(Reason::EmailNotAllowed)
        );
        assert_eq!(
            check_auth_query(&q("allowed_emails=bob@example.com,Alice@example.com"), &s),
            Ok(())
        );
        assert_eq!(
            check_auth_query(&q("allowed_email_domains=example.com"), &s),
            Ok(())
        );
        assert_eq!(
            check_auth_query(&q("allowed_email_domains=*.example.com"), &s),
            Err(Reason::EmailNotAllowed)
        );
        assert_eq!(
            check_auth_query(
                &q("allowed_email_domains=other.test&allowed_emails=alice@example.com"),
                &s
            ),
            Ok(())
        );
    }

    #[test]
    fn a_session_carries_what_the_config_needs() {
        let token = claims(json!({"groups": ["a", "b", "c"], "tenant": "t1", "other": "x"}));
        let c = Carry {
            groups_claim: Some("groups".into()),
            groups_only: Some(vec!["b".into(), "z".into()]),
            claims: vec!["tenant".into(), "absent".into()],
        };
        let (g, a) = c.take(&token);
        assert_eq!(g, ["b"]);
        assert_eq!(a, [("tenant".to_string(), vec!["t1".to_string()])]);
        let all = Carry {
            groups_only: None,
            ..c
        };
        assert_eq!(all.take(&token).0, ["a", "b", "c"]);
        assert_eq!(Carry::default().take(&token), (vec![], vec![]));
    }
}
