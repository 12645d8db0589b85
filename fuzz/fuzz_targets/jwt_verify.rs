//! The JWT verify path (`auth::Verifier::verify_at`): header parsing, `alg`
//! pinning, `kid` selection, signature check and claims, with the keys a
//! deployment may configure.
//!
//! Two verifiers: `plain` has an HS256 secret and an RSA public key file
//! (a `kid` is not its business); `set` has a JWKS file with one key of
//! each type (`oct`, RSA, P-256, Ed25519) plus `iss`/`aud` to check.
//!
//! Input, by its first byte:
//! - even: the rest is a token, given to both verifiers as it is;
//! - odd: the rest is `header JSON \n claims JSON`, which the target
//!   signs (HS256 with `plain`'s secret, and with the `oct` key of the set)
//!   so that the fuzzer reaches the claim checks behind the signature.
//!
//! Checks: never panics; a token is accepted only with a non-empty `sub`,
//! an `exp` not past (with leeway), no `crit` and an algorithm some key
//! pins (only HS256 when the target signed it); `set` accepts only tokens
//! of its issuer.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine as _;
use herald::auth::Verifier;
use herald::config::Auth;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

/// "Now" for every verification, so runs are reproducible.
const NOW: u64 = 1_800_000_000;
const SECRET: &str = "herald-fuzz-hs256-secret-32-bytes-long!";
/// The set's `oct` key, base64url.
const OCT_K: &str = "aGVyYWxkLWZ1enotb2N0LWtleS0zMi1ieXRlcy1sb25nISE";

struct Keys {
    plain: Verifier,
    set: Verifier,
}

fn key_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/keys")
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let jwks = herald_fuzz_jwks();
        let path =
            std::env::temp_dir().join(format!("herald-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks).expect("temp dir is writable");
        let plain = Verifier::new(&Auth {
            hs256_secret: SECRET.into(),
            public_key_file: Some(key_dir().join("rsa_public.pem")),
            default_topics: vec!["public.*".into()],
            ..Auth::default()
        })
        .expect("plain verifier");
        let set = Verifier::new(&Auth {
            jwks_file: Some(path.clone()),
            issuer: Some("https://idp.example".into()),
            audience: Some("herald".into()),
            ..Auth::default()
        })
        .expect("set verifier");
        let _ = std::fs::remove_file(&path);
        Keys { plain, set }
    })
}

/// The JWKS the `set` verifier loads: public halves of tests/keys plus an
/// `oct` key (the seed generator writes the same one to the corpus).
fn herald_fuzz_jwks() -> String {
    let jwk = |stem: &str, alg: Algorithm, kid: &str| {
        let pem = std::fs::read(key_dir().join(format!("{stem}_private.pem"))).expect("test key");
        let enc = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("test key parses");
        let mut v = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).expect("jwk"),
        )
        .expect("jwk json");
        v["kid"] = kid.into();
        v
    };
    serde_json::json!({"keys": [
        {"kty": "oct", "kid": "oct-1", "k": OCT_K},
        jwk("rsa", Algorithm::RS256, "rsa-1"),
        jwk("ec_p256", Algorithm::ES256, "ec-1"),
        jwk("ed25519", Algorithm::EdDSA, "ed-1"),
    ]})
    .to_string()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn check(v: &Verifier, token: &str, allowed: &[Algorithm], want_iss: bool) {
    let Ok(claims) = v.verify_at(token, NOW) else {
        return;
    };
    assert!(!claims.sub.is_empty());
    assert!(
        claims.exp.saturating_add(5) >= NOW,
        "expired token accepted"
    );
    let header = jsonwebtoken::decode_header(token).expect("accepted token has a header");
    assert!(allowed.contains(&header.alg), "{:?} accepted", header.alg);
    assert!(header.crit.is_none());
    if want_iss {
        let payload = token.split('.').nth(1).expect("three parts");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("payload is base64url");
        // Read the way the verifier reads claims (a struct of the members
        // it knows): serde then skips other members without checking them,
        // so a payload need not be valid JSON text as a whole (a string
        // with invalid UTF-8 in an unknown member passes: the issuer
        // signed it, so that is accepted, not a finding).
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: serde_json::Value,
        }
        let c: Iss = serde_json::from_slice(&raw).expect("payload has an iss");
        assert_eq!(c.iss, "https://idp.example");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = keys();
    if mode & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        check(
            &k.plain,
            token,
            &[Algorithm::HS256, Algorithm::RS256],
            false,
        );
        check(
            &k.set,
            token,
            &[
                Algorithm::HS256,
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
            ],
            true,
        );
        return;
    }
    let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let oct = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(OCT_K)
        .expect("constant");
    for (v, secret, allowed, iss) in [
        (&k.plain, SECRET.as_bytes(), &[Algorithm::HS256][..], false),
        (&k.set, &oct[..], &[Algorithm::HS256][..], true),
    ] {
        let sig = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .expect("HMAC signs anything");
        check(v, &format!("{signing_input}.{sig}"), allowed, iss);
    }
});
