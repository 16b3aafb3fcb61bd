//! One domain-pattern type for every option that names domains: `hosts[].host`,
//! `cookie_domains`, `whitelist_domains` and `email_domains`. Each is parsed once at configure
//! time (lower-cased, checked) and matched without allocating.

/// What a pattern covers besides its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// `example.com`: that name only.
    Exact,
    /// `.example.com` in `cookie_domains` and `whitelist_domains` (oauth2-proxy's meaning):
    /// the domain and its subdomains.
    WithSubdomains,
    /// `*.example.com` anywhere, and `.example.com` in `email_domains` (oauth2-proxy's
    /// meaning there): subdomains only.
    Subdomains,
}

/// Which port a whitelisted return URL may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// No port in the URL (the scheme's default).
    Default,
    Any,
    Is(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern {
    /// Lower case, without the leading `.` or `*.`.
    pub domain: String,
    pub reach: Reach,
    pub port: Port,
}

/// How a leading `.` reads in the option being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadingDot {
    WithSubdomains,
    Subdomains,
    /// Not allowed (host patterns take `*.example.com`).
    Refused,
}

impl DomainPattern {
    /// Parses `raw`; `ports` allows a `:port` or `:*` suffix. The error says what is wrong.
    pub fn parse(raw: &str, dot: LeadingDot, ports: bool) -> Result<Self, String> {
        let lower = raw.trim().to_ascii_lowercase();
        let (name, port) = match lower.rsplit_once(':') {
            Some((n, p)) if ports => {
                let port = match p {
                    "*" => Port::Any,
                    _ => match p.parse::<u16>() {
                        Ok(n) if n > 0 => Port::Is(n),
                        _ => return Err(format!("{raw:?} has a bad port")),
                    },
                };
                (n, port)
            }
            _ => (lower.as_str(), Port::Default),
        };
        let (domain, reach) = if let Some(rest) = name.strip_prefix("*.") {
            (rest, Reach::Subdomains)
        } else if let Some(rest) = name.strip_prefix('.') {
            match dot {
                LeadingDot::WithSubdomains => (rest, Reach::WithSubdomains),
                LeadingDot::Subdomains => (rest, Reach::Subdomains),
                LeadingDot::Refused => {
                    return Err(format!("{raw:?}: write *.{rest} for its subdomains"))
                }
            }
        } else {
            (name, Reach::Exact)
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
            return Err(format!("{raw:?} is not a domain"));
        }
        Ok(DomainPattern {
            domain: domain.to_string(),
            reach,
            port,
        })
    }

    /// Whether `host` (lower case, no port) is covered.
    pub fn matches(&self, host: &str) -> bool {
        let sub = || {
            host.len() > self.domain.len() + 1
                && host.ends_with(self.domain.as_str())
                && host.as_bytes()[host.len() - self.domain.len() - 1] == b'.'
        };
        match self.reach {
            Reach::Exact => host == self.domain,
            Reach::WithSubdomains => host == self.domain || sub(),
            Reach::Subdomains => sub(),
        }
    }

    /// Whether `host` and `port` (as a URL names them) are covered.
    pub fn matches_with_port(&self, host: &str, port: Option<u16>) -> bool {
        let port_ok = match self.port {
            Port::Default => port.is_none(),
            Port::Any => true,
            Port::Is(p) => port == Some(p),
        };
        port_ok && self.matches(host)
    }

    /// The `Domain` attribute a cookie for this pattern is set with.
    pub fn cookie_domain(&self) -> String {
        match self.reach {
            Reach::Exact => self.domain.clone(),
            _ => format!(".{}", self.domain),
        }
    }

    /// The pattern as written in a config, normalised.
    pub fn to_text(&self) -> String {
        let name = match self.reach {
            Reach::Exact => self.domain.clone(),
            Reach::WithSubdomains => format!(".{}", self.domain),
            Reach::Subdomains => format!("*.{}", self.domain),
        };
        match self.port {
            Port::Default => name,
            Port::Any => format!("{name}:*"),
            Port::Is(p) => format!("{name}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str, dot: LeadingDot) -> DomainPattern {
        DomainPattern::parse(raw, dot, true).unwrap()
    }

    #[test]
    fn reaches() {
        let exact = p("App.Example.com", LeadingDot::Refused);
        assert!(exact.matches("app.example.com"));
        assert!(!exact.matches("x.app.example.com"));
        let star = p("*.example.com", LeadingDot::Refused);
        assert!(star.matches("a.example.com") && star.matches("a.b.example.com"));
        assert!(!star.matches("example.com") && !star.matches("evilexample.com"));
        let dot = p(".example.com", LeadingDot::WithSubdomains);
        assert!(dot.matches("example.com") && dot.matches("a.example.com"));
        assert!(!dot.matches("badexample.com"));
        let email = p(".example.com", LeadingDot::Subdomains);
        assert!(!email.matches("example.com") && email.matches("corp.example.com"));
        assert_eq!(dot.cookie_domain(), ".example.com");
        assert_eq!(star.to_text(), "*.example.com");
    }

    #[test]
    fn ports_and_refusals() {
        let w = p("exact.example:8443", LeadingDot::WithSubdomains);
        assert!(w.matches_with_port("exact.example", Some(8443)));
        assert!(!w.matches_with_port("exact.example", None));
        let any = p(".t.example:*", LeadingDot::WithSubdomains);
        assert!(any.matches_with_port("a.t.example", Some(1)));
        for bad in [
            "", ".", "*.", "a..b", "-a.b", "a b", "a@b", "x:0", "x:70000", "x:y",
        ] {
            assert!(
                DomainPattern::parse(bad, LeadingDot::WithSubdomains, true).is_err(),
                "{bad:?}"
            );
        }
        assert!(DomainPattern::parse(".x.com", LeadingDot::Refused, false).is_err());
        assert!(DomainPattern::parse("x.com:80", LeadingDot::Refused, false).is_err());
    }
}
