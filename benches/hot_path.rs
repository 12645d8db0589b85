//! Micro-benchmarks of the per-message and per-connection hot paths.
//!
//! `cargo bench --bench hot_path` (CI only builds them: `cargo bench --no-run`).

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald::auth::Verifier;
use herald::config::Auth;
use herald::hub::ring::Ring;
use herald::hub::HomeState;
use herald::wire::{client, feed, ws};

fn encode(c: &mut Criterion) {
    let payload = [0x5au8; 100];
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publication_frame_100B", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            black_box(client::publication_frame(
                black_box("md.BTC-USD"),
                seq,
                &payload,
            ))
        })
    });
    g.bench_function("home_publish_100B", |b| {
        let mut home = HomeState::new(2, 128, std::time::Duration::from_secs(300));
        let topic: std::sync::Arc<str> = "md.BTC-USD".into();
        let now = Instant::now();
        b.iter(|| black_box(home.publish(&topic, &payload, now).seq))
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    let frame = client::publication_frame("t", 1, &[0u8; 100]);
    c.bench_function("ring/push_evicting", |b| {
        let mut r = Ring::new(128);
        let mut seq = 0;
        b.iter(|| {
            seq += 1;
            r.push(seq, frame.clone());
        })
    });
    c.bench_function("ring/replay_64", |b| {
        let mut r = Ring::new(128);
        for seq in 1..=128 {
            r.push(seq, frame.clone());
        }
        b.iter(|| black_box(r.replay(64, 128).map(|it| it.count())))
    });
}

fn parse(c: &mut Criterion) {
    let sub = client::encode_subscribe(7, "md.BTC-USD", None);
    let framed = ws::client_frame(ws::OP_BINARY, true, [1, 2, 3, 4], &sub);
    c.bench_function("parse/client_frame_and_request", |b| {
        let mut dec = ws::Decoder::new(65536);
        b.iter_batched_ref(
            || framed.clone(),
            |buf| {
                if let Ok(Some((Some(ws::Event::Binary(m)), _))) = dec.decode(buf) {
                    black_box(client::decode_request(m).is_ok());
                }
            },
            BatchSize::SmallInput,
        )
    });
    let publish = feed::encode_publish("md.BTC-USD", &[0u8; 100]);
    c.bench_function("parse/ingest_publish", |b| {
        b.iter(|| black_box(feed::decode_frame(&publish[4..]).is_ok()))
    });
}

fn jwt(c: &mut Criterion) {
    let secret = "bench-secret-bench-secret-bench-secret";
    let auth = Auth {
        hs256_secret: secret.into(),
        ..Auth::default()
    };
    let v = Verifier::new(&auth).expect("verifier");
    let exp = herald::auth::token::now_unix() + 3600;
    let token = herald::auth::token::mint_hs256(secret, "user-1", exp, Some(&["md.*"]), None);
    c.bench_function("jwt/verify_hs256", |b| {
        b.iter(|| black_box(v.verify(&token).is_ok()))
    });

    // Asymmetric keys: the test key pairs shipped in tests/keys.
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");
    for (name, private, public) in [
        ("rs256", "rsa_private.pem", "rsa_public.pem"),
        ("es256", "ec_p256_private.pem", "ec_p256_public.pem"),
        ("eddsa", "ed25519_private.pem", "ed25519_public.pem"),
    ] {
        let pem = std::fs::read(format!("{keys}{private}")).expect("test key");
        let token = herald::auth::token::mint_with_private_pem(&pem, "user-1", exp)
            .expect("signs with the test key");
        let auth = Auth {
            public_key_file: Some(format!("{keys}{public}").into()),
            ..Auth::default()
        };
        let v = Verifier::new(&auth).expect("verifier");
        assert!(v.verify(&token).is_ok(), "{name} token verifies");
        c.bench_function(&format!("jwt/verify_{name}"), |b| {
            b.iter(|| black_box(v.verify(&token).is_ok()))
        });
    }
}

fn frames(c: &mut Criterion) {
    let payload = Bytes::from_static(&[0u8; 100]);
    c.bench_function("frame/clone_shared_bytes", |b| {
        let f = client::publication_frame("t", 1, &payload);
        b.iter(|| black_box(f.clone()))
    });
}

criterion_group!(benches, encode, ring, parse, jwt, frames);
criterion_main!(benches);
