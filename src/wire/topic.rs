//! Topic names and the patterns of the `topics` / `pub` token claims.
//!
//! Topic names are restricted to a small ASCII alphabet so that they are
//! safe to log, to use as metric labels and as broker subjects without
//! escaping, and so that a `.`-separated prefix is unambiguous.

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// 1..=128 bytes of `[A-Za-z0-9._:-]`.
/// The partition (home) of `topic` among `n`. Fixed hasher keys: every
/// thread, and every node of a cluster, must agree.
pub fn partition(topic: &str, n: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(topic);
    (h % n.max(1) as u64) as usize
}

pub fn is_valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOPIC_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// One entry of a `topics` or `pub` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every topic.
    Any,
    /// A topic name that must match exactly.
    Exact(Box<str>),
    /// `md.*`, stored as `"md."`: topics that start with it and go on.
    Prefix(Box<str>),
}

/// A list of patterns; empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Box<[Pattern]>);

#[derive(Debug, thiserror::Error)]
#[error("invalid topic pattern {0:?}")]
pub struct PatternError(pub String);

impl Pattern {
    /// `*`, `<topic>.*` or an exact topic. A prefix pattern only makes sense
    /// if some valid topic could match it, so the part before `.*` must be a
    /// valid topic short enough to leave room for at least one more byte.
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(base) = s.strip_suffix(".*") {
            // `base` + '.' + at least one byte must still fit in a topic.
            if is_valid_topic(base) && base.len() + 2 <= MAX_TOPIC_LEN {
                let prefix = &s[..s.len() - 1];
                return Ok(Pattern::Prefix(prefix.into()));
            }
            return Err(PatternError(s.to_owned()));
        }
        if is_valid_topic(s) {
            Ok(Pattern::Exact(s.into()))
        } else {
            Err(PatternError(s.to_owned()))
        }
    }

    /// Whether `topic` (assumed already validated) matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(t) => **t == *topic,
            Pattern::Prefix(p) => topic.len() > p.len() && topic.starts_with(&**p),
        }
    }
}

impl Patterns {
    /// Parses every entry; one bad entry rejects the whole list, since a
    /// silently dropped pattern would be a confusing permission bug.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Patterns, PatternError> {
        let mut out: Vec<Pattern> = Vec::with_capacity(list.len());
        let mut any = false;
        for s in list {
            // Every entry is checked, also after a `*`: otherwise
            // `["*", "bad"]` passed where `["bad", "*"]` failed (found by
            // fuzz/topic_pattern).
            let p = Pattern::parse(s.as_ref())?;
            any |= p == Pattern::Any;
            if !any && !out.contains(&p) {
                out.push(p);
            }
        }
        if any {
            // Nothing else can widen `*`; keep the check to one compare.
            return Ok(Patterns::any());
        }
        Ok(Patterns(out.into_boxed_slice()))
    }

    /// Allows nothing.
    pub fn none() -> Patterns {
        Patterns::default()
    }

    /// Allows everything.
    pub fn any() -> Patterns {
        Patterns(Box::new([Pattern::Any]))
    }

    pub fn allows(&self, topic: &str) -> bool {
        self.0.iter().any(|p| p.matches(topic))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Pattern] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_validity() {
        assert!(is_valid_topic("a"));
        assert!(is_valid_topic("md.BTC-USD"));
        assert!(is_valid_topic("A-z_0.9:x"));
        assert!(is_valid_topic(&"x".repeat(128)));
        assert!(!is_valid_topic(&"x".repeat(129)));
        assert!(!is_valid_topic(""));
        for bad in ["a b", "a/b", "a*", "é", "a\0", "a\n", "#", "a+b"] {
            assert!(!is_valid_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn parse_patterns() {
        assert_eq!(Pattern::parse("*").unwrap(), Pattern::Any);
        assert_eq!(
            Pattern::parse("md.*").unwrap(),
            Pattern::Prefix("md.".into())
        );
        assert_eq!(
            Pattern::parse("a.b.*").unwrap(),
            Pattern::Prefix("a.b.".into())
        );
        assert_eq!(Pattern::parse("md").unwrap(), Pattern::Exact("md".into()));
        for bad in [
            "",
            ".*",
            "md*",
            "md.**",
            "*.md",
            "m d.*",
            "a.*.b",
            "**",
            &format!("{}.*", "x".repeat(127)),
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        // Longest useful prefix: 126 + '.' leaves one byte for the topic.
        let base = "x".repeat(126);
        let p = Pattern::parse(&format!("{base}.*")).unwrap();
        assert!(p.matches(&format!("{base}.y")));
        let err = Pattern::parse("bad pattern").unwrap_err();
        assert_eq!(err.to_string(), "invalid topic pattern \"bad pattern\"");
    }

    #[test]
    fn prefix_matching() {
        let p = Pattern::parse("md.*").unwrap();
        assert!(p.matches("md.BTC-USD"));
        assert!(p.matches("md.eu.SAP"));
        assert!(!p.matches("md"));
        assert!(!p.matches("md."));
        assert!(!p.matches("mdx.a"));
        assert!(!p.matches("xmd.a"));
        let e = Pattern::parse("md").unwrap();
        assert!(e.matches("md"));
        assert!(!e.matches("md.a"));
        assert!(Pattern::Any.matches("anything"));
    }

    #[test]
    fn pattern_lists() {
        let ps = Patterns::parse(&["news", "md.*"]).unwrap();
        assert!(ps.allows("news"));
        assert!(ps.allows("md.x"));
        assert!(!ps.allows("md"));
        assert!(!ps.allows("newsx"));
        assert!(!ps.is_empty());

        let none = Patterns::none();
        assert!(none.is_empty());
        assert!(!none.allows("news"));
        let empty: [&str; 0] = [];
        assert_eq!(Patterns::parse(&empty).unwrap(), Patterns::none());

        let any = Patterns::parse(&["a".to_string(), "*".to_string()]).unwrap();
        assert_eq!(any, Patterns::any());
        assert!(any.allows("whatever"));

        let dup = Patterns::parse(&["a", "a", "b.*", "b.*"]).unwrap();
        assert_eq!(dup.as_slice().len(), 2);

        assert!(Patterns::parse(&["ok", "not ok"]).is_err());
    }

    /// Regression (fuzz/topic_pattern): a `*` stopped the parse, so the
    /// entries after it went unchecked and the same list was accepted or
    /// refused depending on its order.
    #[test]
    fn entries_after_a_star_are_still_checked() {
        assert!(Patterns::parse(&["*", "h.*x.*"]).is_err());
        assert!(Patterns::parse(&["h.*x.*", "*"]).is_err());
        assert!(Patterns::parse(&["*", "not ok"]).is_err());
        assert_eq!(
            Patterns::parse(&["*", "a", "b.*"]).unwrap(),
            Patterns::any()
        );
    }
}
