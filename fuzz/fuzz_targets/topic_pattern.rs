//! Topic names and claim patterns (`wire::topic`): what a token's `topics`
//! and `pub` claims hold and what every request names, plus the mapping of
//! topics to NATS subjects and back (`broker::nats::subject`,
//! `topic_of_subject`), which decodes subjects other nodes publish on.
//!
//! Input: lines; the last is a topic (or subject), the others patterns.
//!
//! Checks: never panics; `Pattern::parse` accepts exactly `*`, a valid
//! topic, or a valid topic followed by `.*` that leaves room for one more
//! byte; `matches` and `Patterns::allows` agree with a plain reference
//! matcher; `partition` stays in range; a valid topic survives the subject
//! round trip, and a subject decodes to a topic only if it is exactly that
//! topic's subject.
#![no_main]

use herald::broker::nats::{subject, topic_of_subject};
use herald::wire::topic::{is_valid_topic, partition, Pattern, Patterns, MAX_TOPIC_LEN};
use libfuzzer_sys::fuzz_target;

/// What a pattern string means, written plainly.
fn reference(pattern: &str, topic: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => {
            topic.len() > prefix.len() && topic.starts_with(prefix)
        }
        _ => pattern == topic,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let topic = lines.pop().unwrap_or("");
    let valid = is_valid_topic(topic);
    assert_eq!(
        valid,
        !topic.is_empty()
            && topic.len() <= MAX_TOPIC_LEN
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    );

    let mut all_ok = true;
    for &s in &lines {
        match Pattern::parse(s) {
            Ok(p) => {
                match &p {
                    Pattern::Any => assert_eq!(s, "*"),
                    Pattern::Exact(t) => {
                        assert_eq!(&**t, s);
                        assert!(is_valid_topic(t));
                    }
                    Pattern::Prefix(pre) => {
                        assert_eq!(format!("{pre}*"), s);
                        let base = &pre[..pre.len() - 1];
                        assert!(is_valid_topic(base) && pre.len() < MAX_TOPIC_LEN);
                        // The shortest topic it is meant for matches.
                        let t = format!("{pre}x");
                        assert!(is_valid_topic(&t) && p.matches(&t));
                    }
                }
                if valid {
                    assert_eq!(p.matches(topic), reference(s, topic), "{s:?} vs {topic:?}");
                }
            }
            Err(_) => {
                all_ok = false;
                let base = s.strip_suffix(".*").unwrap_or(s);
                assert!(
                    s != "*" && !(is_valid_topic(base) && base.len() + 2 <= MAX_TOPIC_LEN),
                    "{s:?} refused"
                );
            }
        }
    }
    match Patterns::parse(&lines) {
        Ok(ps) => {
            assert!(all_ok);
            assert_eq!(ps.is_empty(), lines.is_empty());
            if valid {
                let want = lines.iter().any(|s| reference(s, topic));
                assert_eq!(ps.allows(topic), want);
            }
        }
        Err(_) => assert!(!all_ok),
    }

    for n in [0usize, 1, 2, 7, 64] {
        assert!(partition(topic, n) < n.max(1));
    }

    // The cluster's subject mapping, with a prefix shaped like the real one.
    let prefix = "herald.c1.d.";
    if valid {
        let subj = subject(prefix, topic);
        assert_eq!(topic_of_subject(prefix, &subj).as_deref(), Some(topic));
    }
    if let Some(t) = topic_of_subject(prefix, topic) {
        assert!(is_valid_topic(&t));
        assert_eq!(
            subject(prefix, &t),
            topic,
            "subject is not the canonical one for {t:?}"
        );
    }
});
