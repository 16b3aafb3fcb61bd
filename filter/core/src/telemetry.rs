//! What the filter counts and logs of its decisions: metric names (defined through
//! proxy-wasm, seen in Envoy's `/stats/prometheus`), and the labels of a request for the
//! decision log.
//!
//! A metric is defined per family and label values: its proxy-wasm name is the family and
//! each label as a `.name.value` segment, e.g.
//! `oidc_filter_decisions_total.reason.login_redirect.provider.default`. Envoy's
//! `stats_config.stats_tags` (see `STATS_TAGS`, and envoy/envoy.yaml) turns the segments into
//! Prometheus labels: `oidc_filter_decisions_total{reason="login_redirect",provider="default"}`.
//! Without those tags the segments stay in the name (`..._reason_login_redirect_...`).

/// Every request's decision: a local reply's reason code, or how it was let through
/// (`flow::Via`). Labels: `reason`, `provider`.
pub const DECISIONS: &str = "oidc_filter_decisions_total";
/// Refreshes (`cookie_refresh`) by outcome. Label: `outcome`.
pub const REFRESHES: &str = "oidc_filter_refreshes_total";
/// Callouts to the provider by endpoint and outcome. Labels: `endpoint`, `outcome`.
pub const CALLOUTS: &str = "oidc_filter_callouts_total";
/// Callout latency, from dispatch to answer. Label: `endpoint`.
pub const CALLOUT_DURATION: &str = "oidc_filter_callout_duration_milliseconds";

/// The label names, each with the regex Envoy's `stats_tags` needs to extract it.
pub const STATS_TAGS: &[(&str, &str)] = &[
    ("reason", r"\.reason\.([a-z0-9_-]+)"),
    ("provider", r"\.provider\.([a-z0-9_-]+)"),
    ("endpoint", r"\.endpoint\.([a-z0-9_-]+)"),
    ("outcome", r"\.outcome\.([a-z0-9_-]+)"),
];

/// A label value as a metric name can hold it: lower-case letters, digits, `_` and `-`
/// (others become `_`), at most 48 bytes.
pub fn label_value(v: &str) -> String {
    let mut out: String = v
        .chars()
        .take(48)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '_',
        })
        .collect();
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// The proxy-wasm name of `family` with these labels.
pub fn metric_name(family: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(family.len() + 48);
    s.push_str(family);
    for (k, v) in labels {
        s.push('.');
        s.push_str(k);
        s.push('.');
        s.push_str(&label_value(v));
    }
    s
}

/// A callout's outcome label from its answer's status (`None`: no answer, a timeout or a
/// reset).
pub fn callout_outcome(status: Option<u32>, too_large: bool) -> &'static str {
    match status {
        _ if too_large => "too_large",
        None => "no_answer",
        Some(200..=299) => "ok",
        Some(400..=499) => "status_4xx",
        Some(500..=599) => "status_5xx",
        Some(_) => "status_other",
    }
}

/// What a request is, for the decision log: provider, host, and path without the query, each
/// cut to a length and to visible ASCII (a log line is one line, whatever a client sends).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Label {
    pub provider: String,
    pub host: String,
    pub path: String,
}

fn loggable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

impl Label {
    pub fn new(provider: &str, host: &str, path: &str) -> Self {
        Label {
            provider: loggable(provider, 48),
            host: loggable(host, 128),
            path: loggable(path, 200),
        }
    }

    /// `provider=… host=… path=…`.
    pub fn fields(&self) -> String {
        format!(
            "provider={} host={} path={}",
            self.provider, self.host, self.path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert_eq!(
            metric_name(
                DECISIONS,
                &[("reason", "login_redirect"), ("provider", "Corp IdP")]
            ),
            "oidc_filter_decisions_total.reason.login_redirect.provider.corp_idp"
        );
        assert_eq!(label_value(""), "none");
        assert_eq!(label_value(&"x".repeat(100)).len(), 48);
        assert_eq!(callout_outcome(Some(200), false), "ok");
        assert_eq!(callout_outcome(Some(503), false), "status_5xx");
        assert_eq!(callout_outcome(None, false), "no_answer");
        assert_eq!(callout_outcome(Some(200), true), "too_large");
        let l = Label::new("default", "a.test", "/x\ny\u{7f}");
        assert_eq!(l.fields(), "provider=default host=a.test path=/x?y?");
        assert!(Label::new("p", "h", &"/a".repeat(200)).path.ends_with('…'));
    }
}
