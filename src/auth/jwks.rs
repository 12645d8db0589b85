//! JSON Web Key Sets (RFC 7517) into keys with a pinned algorithm.
//!
//! [`parse`] is pure (bytes in, [`KeySet`] out, no I/O, no clock, no logs),
//! so the file loader, the URL refresher and the fuzz target share it. Every
//! key must name a `kid`; the algorithm comes from the key (its `alg`
//! member, else its type and curve), never from a token. A key that is
//! meant for signatures but cannot be used is an error naming its `kid`:
//! half a key set is worse than the last good one. Keys that are plainly
//! not for signatures (`use: "enc"`, an encryption `alg`, `key_ops`
//! without `verify`) are skipped and listed in [`KeySet::skipped`], because
//! identity providers publish those beside their signing keys.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// A key set larger than this is refused before it is parsed (and a fetch
/// stops reading there). Real sets are a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// More keys than this in one set is refused; rotation needs two or three.
pub const MAX_KEYS: usize = 64;
/// Longest `kid` accepted in a key set.
pub const MAX_KID_BYTES: usize = 256;

/// One usable key of a set.
#[derive(Debug, Clone)]
pub struct SetKey {
    pub kid: Arc<str>,
    pub alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The usable keys of one JWKS document, in document order.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<SetKey>,
    skipped: Vec<(String, &'static str)>,
}

impl KeySet {
    pub fn keys(&self) -> &[SetKey] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, kid: &str) -> Option<&SetKey> {
        self.keys.iter().find(|k| &*k.kid == kid)
    }

    /// Keys left out because they are not signature keys: `(kid, why)`.
    pub fn skipped(&self) -> &[(String, &'static str)] {
        &self.skipped
    }
}

/// Why a key set cannot be used. Messages name the offending `kid` (or the
/// key's index when it has none) and never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("key set is {len} bytes; at most {MAX_JWKS_BYTES} are accepted")]
    TooLarge { len: usize },
    #[error("not a JWKS document: {0}")]
    Json(String),
    #[error("key set has {0} keys; at most {MAX_KEYS} are accepted")]
    TooManyKeys(usize),
    #[error("key set holds no signature key")]
    Empty,
    #[error("key #{index} has no \"kid\" (a non-empty string of at most {MAX_KID_BYTES} bytes)")]
    MissingKid { index: usize },
    #[error("kid {0:?} appears twice")]
    DuplicateKid(String),
    #[error("kid {kid:?}: {reason}")]
    Key { kid: String, reason: String },
}

/// Parses a JWKS document (`{"keys": [...]}`) into its usable keys.
pub fn parse(bytes: &[u8]) -> Result<KeySet, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge { len: bytes.len() });
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| JwksError::Json("no \"keys\" array".into()))?;
    if keys.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys(keys.len()));
    }
    let mut set = KeySet::default();
    let mut seen = HashSet::new();
    for (index, raw) in keys.iter().enumerate() {
        let kid = raw
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && k.len() <= MAX_KID_BYTES)
            .ok_or(JwksError::MissingKid { index })?;
        if !seen.insert(kid) {
            return Err(JwksError::DuplicateKid(kid.to_owned()));
        }
        let key_err = |reason: String| JwksError::Key {
            kid: kid.to_owned(),
            reason,
        };
        // serde's message could quote a member's value, and `k` is a secret.
        let jwk: Jwk = serde_json::from_value(raw.clone())
            .map_err(|_| key_err("not a JWK (a member is missing or ill-typed)".into()))?;
        if let Some(why) = not_for_signatures(&jwk) {
            set.skipped.push((kid.to_owned(), why));
            continue;
        }
        let alg = pinned_algorithm(&jwk).map_err(key_err)?;
        check_material(&jwk.algorithm).map_err(key_err)?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| key_err(format!("invalid key material: {e}")))?;
        // Building a verifier checks what from_jwk only copies (an EC point
        // on its curve, an RSA modulus and exponent that make a key).
        jsonwebtoken::crypto::verify("AA", b"probe", &key, alg)
            .map_err(|e| key_err(format!("invalid key material: {e}")))?;
        set.keys.push(SetKey {
            kid: Arc::from(kid),
            alg,
            key,
        });
    }
    if set.keys.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(set)
}

fn not_for_signatures(jwk: &Jwk) -> Option<&'static str> {
    let c = &jwk.common;
    match &c.public_key_use {
        Some(PublicKeyUse::Signature) | None => {}
        Some(_) => return Some("\"use\" is not \"sig\""),
    }
    if let Some(ops) = &c.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Some("\"key_ops\" does not include \"verify\"");
        }
    }
    match c.key_algorithm {
        Some(KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256) => {
            Some("\"alg\" is an encryption algorithm")
        }
        _ => None,
    }
}

/// The key's `alg` when present and consistent with its type, else the
/// default for its type.
fn pinned_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    use Algorithm::*;
    let (default, allowed): (Algorithm, &[Algorithm]) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (RS256, &[RS256, RS384, RS512, PS256, PS384, PS512]),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (ES256, &[ES256]),
            EllipticCurve::P384 => (ES384, &[ES384]),
            _ => return Err("unsupported EC curve (use P-256 or P-384)".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (EdDSA, &[EdDSA]),
            _ => return Err("unsupported OKP curve (use Ed25519)".into()),
        },
        AlgorithmParameters::OctetKey(_) => (HS256, &[HS256, HS384, HS512]),
        _ => return Err("unsupported key type (use RSA, EC, OKP or oct)".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => default,
        Some(a) => Algorithm::try_from(a)
            .map_err(|_| format!("unsupported \"alg\" {:?}", a.to_string()))?,
    };
    if !allowed.contains(&alg) {
        return Err(format!(
            "\"alg\" {alg:?} does not fit the key type (allowed: {allowed:?})"
        ));
    }
    Ok(alg)
}

/// Length checks that the crypto backends would otherwise turn into a
/// panic or a key that accepts nothing.
fn check_material(params: &AlgorithmParameters) -> Result<(), String> {
    let b64 = |what: &str, s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| format!("\"{what}\" is not base64url"))
    };
    match params {
        AlgorithmParameters::RSA(p) => {
            let n = b64("n", &p.n)?;
            let e = b64("e", &p.e)?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA modulus of about {bits} bits (2048 to 8192 accepted)"
                ));
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent is empty or too long".into());
            }
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let len = match p.curve {
                EllipticCurve::P256 => 32,
                _ => 48,
            };
            if b64("x", &p.x)?.len() != len || b64("y", &p.y)?.len() != len {
                return Err(format!("EC coordinates must be {len} bytes each"));
            }
        }
        AlgorithmParameters::OctetKeyPair(p) if b64("x", &p.x)?.len() != 32 => {
            return Err("Ed25519 public key must be 32 bytes".into());
        }
        AlgorithmParameters::OctetKey(p) if b64("k", &p.value)?.is_empty() => {
            return Err("HMAC key is empty".into());
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn key_path(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    /// The public JWK of a PEM key in tests/keys, with a kid.
    fn jwk_of(stem: &str, alg: Algorithm, kid: &str) -> Value {
        let pem = std::fs::read(key_path(&format!("{stem}_private.pem"))).unwrap();
        let enc = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        let mut v = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).unwrap()).unwrap();
        v["kid"] = json!(kid);
        v.as_object_mut().unwrap().remove("alg");
        v
    }

    fn doc(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn each_key_type_pins_its_default_algorithm() {
        let set = parse(&doc(vec![
            jwk_of("rsa", Algorithm::RS256, "r"),
            jwk_of("ec_p256", Algorithm::ES256, "p256"),
            jwk_of("ec_p384", Algorithm::ES384, "p384"),
            jwk_of("ed25519", Algorithm::EdDSA, "ed"),
            json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}),
        ]))
        .expect("valid set");
        let algs: Vec<_> = set.keys().iter().map(|k| (&*k.kid, k.alg)).collect();
        assert_eq!(
            algs,
            [
                ("r", Algorithm::RS256),
                ("p256", Algorithm::ES256),
                ("p384", Algorithm::ES384),
                ("ed", Algorithm::EdDSA),
                ("h", Algorithm::HS256),
            ]
        );
    }

    #[test]
    fn alg_member_pins_and_must_fit_the_key_type() {
        let mut k = jwk_of("rsa", Algorithm::RS256, "r");
        k["alg"] = json!("PS256");
        assert_eq!(
            parse(&doc(vec![k.clone()])).unwrap().keys()[0].alg,
            Algorithm::PS256
        );
        k["alg"] = json!("HS256");
        let e = parse(&doc(vec![k])).unwrap_err();
        assert!(
            matches!(&e, JwksError::Key { kid, .. } if kid == "r"),
            "{e}"
        );
        let mut k = json!({"kty": "oct", "kid": "h", "k": "AAAA", "alg": "ES256"});
        assert!(parse(&doc(vec![k.clone()])).is_err());
        k["alg"] = json!("XX999");
        assert!(parse(&doc(vec![k])).is_err());
    }

    #[test]
    fn encryption_keys_are_skipped_not_fatal() {
        let mut enc = jwk_of("rsa", Algorithm::RS256, "enc");
        enc["use"] = json!("enc");
        let mut oaep = jwk_of("rsa", Algorithm::RS256, "oaep");
        oaep["alg"] = json!("RSA-OAEP");
        let set = parse(&doc(vec![
            enc,
            oaep,
            jwk_of("ed25519", Algorithm::EdDSA, "sig"),
        ]))
        .unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.skipped().len(), 2);
        assert!(set.get("sig").is_some() && set.get("enc").is_none());
    }

    #[test]
    fn unusable_keys_are_errors_naming_the_kid() {
        let mut short_ed = jwk_of("ed25519", Algorithm::EdDSA, "short");
        short_ed["x"] = json!("AAAA");
        let mut off_curve = jwk_of("ec_p256", Algorithm::ES256, "off");
        off_curve["y"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 32]));
        let mut small_rsa = jwk_of("rsa", Algorithm::RS256, "small");
        small_rsa["n"] = json!("AQAB");
        let cases = [
            (short_ed, "short"),
            (off_curve, "off"),
            (small_rsa, "small"),
            (
                json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}),
                "p521",
            ),
            (
                json!({"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AA"}),
                "x",
            ),
            (json!({"kty": "oct", "kid": "empty", "k": ""}), "empty"),
            (json!({"kty": "weird", "kid": "w"}), "w"),
        ];
        for (key, kid) in cases {
            match parse(&doc(vec![key.clone()])) {
                Err(JwksError::Key { kid: k, .. }) => assert_eq!(k, kid),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn document_level_errors() {
        assert!(matches!(parse(b"not json"), Err(JwksError::Json(_))));
        assert!(matches!(parse(b"{}"), Err(JwksError::Json(_))));
        assert!(matches!(parse(b"{\"keys\": 5}"), Err(JwksError::Json(_))));
        assert_eq!(parse(b"{\"keys\": []}").unwrap_err(), JwksError::Empty);
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(matches!(parse(&big), Err(JwksError::TooLarge { .. })));
        let many: Vec<Value> = (0..=MAX_KEYS)
            .map(|i| json!({"kty": "oct", "kid": i.to_string(), "k": "AAAA"}))
            .collect();
        assert!(matches!(parse(&doc(many)), Err(JwksError::TooManyKeys(_))));
        for bad_kid in [
            json!(null),
            json!(5),
            json!(""),
            json!("k".repeat(MAX_KID_BYTES + 1)),
        ] {
            let k = json!({"kty": "oct", "kid": bad_kid, "k": "AAAA"});
            assert_eq!(
                parse(&doc(vec![k])).unwrap_err(),
                JwksError::MissingKid { index: 0 }
            );
        }
        let k = json!({"kty": "oct", "kid": "same", "k": "AAAA"});
        assert_eq!(
            parse(&doc(vec![k.clone(), k])).unwrap_err(),
            JwksError::DuplicateKid("same".into())
        );
    }

    #[test]
    fn parsed_keys_verify_tokens() {
        let set = parse(&doc(vec![jwk_of("ec_p256", Algorithm::ES256, "p")])).unwrap();
        let pem = std::fs::read(key_path("ec_p256_private.pem")).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "a"}),
            &EncodingKey::from_ec_pem(&pem).unwrap(),
        )
        .unwrap();
        let k = set.get("p").unwrap();
        let mut v = jsonwebtoken::Validation::new(k.alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        assert!(jsonwebtoken::decode::<Value>(&token, &k.key, &v).is_ok());
    }

    /// What a fuzzer would do, bounded: mutated and truncated sets must be
    /// answered with a result, never a panic.
    #[test]
    fn mutated_documents_never_panic() {
        let mut ed = jwk_of("ed25519", Algorithm::EdDSA, "ed");
        ed["use"] = json!("sig");
        let base = doc(vec![
            jwk_of("rsa", Algorithm::RS256, "r"),
            jwk_of("ec_p256", Algorithm::ES256, "p"),
            ed,
            json!({"kty": "oct", "kid": "h", "k": "AAAA", "alg": "HS384"}),
        ]);
        assert!(parse(&base).is_ok());
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"{}[]\":,0123456789AZaz-_=+/ \\\x00\xff";
        for _ in 0..3000 {
            let mut d = base.clone();
            for _ in 0..(1 + next() % 4) {
                if d.is_empty() {
                    break;
                }
                let at = (next() as usize) % d.len();
                match next() % 3 {
                    0 => d[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        d.remove(at);
                    }
                    _ => d.truncate(at.max(1)),
                }
            }
            let _ = parse(&d);
        }

        // Well-formed documents with random key material of every length
        // near the accepted ones: this is what reaches the crypto code.
        let mut bytes = |n: usize| -> String {
            let v: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
        };
        for round in 0..400 {
            let len = [0, 1, 31, 32, 33, 47, 48, 49, 255, 256, 257, 512, 1025][round % 13];
            let keys = [
                json!({"kty": "RSA", "kid": "r", "n": bytes(len), "e": bytes(1 + round % 9)}),
                json!({"kty": "EC", "kid": "p", "crv": "P-256", "x": bytes(len), "y": bytes(len)}),
                json!({"kty": "EC", "kid": "q", "crv": "P-384", "x": bytes(len), "y": bytes(len)}),
                json!({"kty": "OKP", "kid": "e", "crv": "Ed25519", "x": bytes(len)}),
                json!({"kty": "oct", "kid": "h", "k": bytes(len)}),
            ];
            for k in keys {
                let _ = parse(&doc(vec![k]));
            }
        }
    }

    #[test]
    fn errors_never_carry_key_material() {
        let secret = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw";
        let k = json!({"kty": "oct", "kid": "h", "k": secret, "alg": "RS256"});
        let e = parse(&doc(vec![k])).unwrap_err().to_string();
        assert!(!e.contains(secret), "{e}");
    }
}
