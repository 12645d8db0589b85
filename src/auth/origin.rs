//! `Origin` allow-list for the WebSocket upgrade.
//!
//! Browsers attach `Origin` to every WebSocket handshake, so checking it stops
//! other sites from opening connections with a user's ambient credentials.
//! Non-browser clients send no `Origin` and are not refused for that: the
//! token is what authenticates them.

use std::collections::HashSet;

#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Normalized `scheme://host[:port]` entries.
    allowed: HashSet<String>,
    /// Kept separate from `allowed.is_empty()` so that a list whose entries
    /// all failed to parse denies everything instead of allowing everything.
    allow_all: bool,
}

impl OriginPolicy {
    /// An empty list allows every origin. Entries that are not of the form
    /// `scheme://host[:port]` never match (config validation reports them).
    pub fn new(allowed: &[String]) -> Self {
        OriginPolicy {
            allowed: allowed.iter().filter_map(|o| normalize(o)).collect(),
            allow_all: allowed.is_empty(),
        }
    }

    pub fn allows(&self, origin: Option<&str>) -> bool {
        if self.allow_all {
            return true;
        }
        match origin {
            None => true,
            Some(o) => normalize(o).is_some_and(|o| self.allowed.contains(&o)),
        }
    }
}

/// Canonical form of an origin: lowercase, no trailing `/`, no default port
/// (so `https://a.example:443/` and `HTTPS://A.example` compare equal).
/// `None` when the input is not `scheme://host[:port]`, which includes the
/// opaque origin `null`.
pub fn normalize(origin: &str) -> Option<String> {
    let origin = origin.trim();
    let origin = origin.strip_suffix('/').unwrap_or(origin);
    let (scheme, authority) = origin.split_once("://")?;

    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }

    let (host, port) = split_host_port(authority)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if !host_ok {
        return None;
    }

    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match port {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        OriginPolicy::new(&list)
    }

    #[test]
    fn empty_list_allows_every_origin() {
        let p = policy(&[]);
        assert!(p.allows(Some("https://evil.example")));
        assert!(p.allows(Some("null")));
        assert!(p.allows(None));
    }

    #[test]
    fn request_without_origin_is_allowed_even_with_a_list() {
        assert!(policy(&["https://app.example"]).allows(None));
    }

    #[test]
    fn listed_origin_is_allowed_and_others_are_not() {
        let p = policy(&["https://app.example", "http://localhost:3000"]);
        assert!(p.allows(Some("https://app.example")));
        assert!(p.allows(Some("http://localhost:3000")));
        assert!(!p.allows(Some("https://evil.example")));
        assert!(!p.allows(Some("http://app.example")), "scheme differs");
        assert!(!p.allows(Some("http://localhost:3001")), "port differs");
        assert!(!p.allows(Some("https://app.example.evil.example")));
        assert!(!p.allows(Some("null")));
        assert!(!p.allows(Some("")));
    }

    #[test]
    fn comparison_ignores_case_trailing_slash_and_default_port() {
        let p = policy(&["https://App.Example/"]);
        assert!(p.allows(Some("HTTPS://app.example")));
        assert!(p.allows(Some("https://app.example/")));
        assert!(p.allows(Some("https://app.example:443")));
        assert!(!p.allows(Some("https://app.example:8443")));
    }

    #[test]
    fn ipv6_origins_are_understood() {
        let p = policy(&["http://[::1]:8080"]);
        assert!(p.allows(Some("http://[::1]:8080")));
        assert!(!p.allows(Some("http://[::1]")));
    }

    #[test]
    fn list_of_only_invalid_entries_denies_instead_of_allowing_all() {
        let p = policy(&["not an origin"]);
        assert!(!p.allows(Some("https://app.example")));
    }

    #[test]
    fn normalize_rejects_what_is_not_scheme_host_port() {
        for bad in [
            "example.com",
            "https://",
            "https://a/path",
            "https://a?x=1",
            "https://user@a",
            "https://a:",
            "https://a:0",
            "https://a:99999",
            "https://a b",
            "1http://a",
            "null",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
        assert_eq!(
            normalize("chrome-extension://abc").as_deref(),
            Some("chrome-extension://abc")
        );
        assert_eq!(normalize("http://a:80/").as_deref(), Some("http://a"));
    }
}
