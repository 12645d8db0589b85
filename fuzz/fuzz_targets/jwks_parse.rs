//! The JWKS parser (`auth::jwks::parse`) on arbitrary bytes: what a
//! `jwks_file` holds or a `jwks_url` answers (the identity provider, or
//! whoever sits between it and herald).
//!
//! Checks: never panics (the crypto backends panic on some malformed key
//! material, so `parse` must refuse it first); an accepted set has 1 to
//! `MAX_KEYS` keys with distinct, non-empty `kid`s of at most
//! `MAX_KID_BYTES` that `get` finds; an error's message never contains a
//! key's secret (`k`, `d`, `p`, `q`: the members a private or symmetric key
//! has, 8 bytes or longer), since it is logged.
#![no_main]

use herald::auth::jwks::{self, MAX_KEYS, MAX_KID_BYTES};
use libfuzzer_sys::fuzz_target;

/// String values of the members named `names` anywhere in the document.
fn members(v: &serde_json::Value, names: &[&str], out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if let (true, Some(s)) = (names.contains(&k.as_str()), v.as_str()) {
                    out.push(s.to_owned());
                }
                members(v, names, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| members(v, names, out)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    match jwks::parse(data) {
        Ok(set) => {
            assert!(!set.is_empty() && set.len() <= MAX_KEYS);
            assert_eq!(set.len(), set.keys().len());
            let mut kids: Vec<&str> = set.keys().iter().map(|k| &*k.kid).collect();
            for k in set.keys() {
                assert!(!k.kid.is_empty() && k.kid.len() <= MAX_KID_BYTES);
                assert!(std::ptr::eq(set.get(&k.kid).expect("get finds it"), k));
            }
            kids.sort_unstable();
            kids.dedup();
            assert_eq!(kids.len(), set.len(), "duplicate kid accepted");
        }
        Err(e) => {
            let msg = e.to_string();
            if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
                let (mut secret, mut kids) = (Vec::new(), Vec::new());
                members(&doc, &["k", "d", "p", "q"], &mut secret);
                // Messages name the kid, so a secret that is also (part of)
                // a kid shows up legitimately.
                members(&doc, &["kid"], &mut kids);
                for s in secret {
                    if s.len() >= 8 && !kids.iter().any(|k| k.contains(&s)) {
                        assert!(!msg.contains(&s), "error message quotes a secret: {msg}");
                    }
                }
            }
        }
    }
});
