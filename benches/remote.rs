//! What sharing work on S3 adds, against the S3 test server (moto on loopback,
//! `IMGRAPH_TEST_EC2_ENDPOINT`, default `http://127.0.0.1:5055`; `bash scripts/moto.sh`):
//! one journal append (what one recorded outcome adds), a lease renewal, the
//! conditional-write check at start, a lease taken and given back, the shared-state work
//! of an apply of N recorded outcomes, and an artifact published and fetched. It also
//! prints the objects an apply writes. Loopback moto answers in about a millisecond of
//! network but is a Python server: real S3 adds its own round trips (tens of ms).

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use imgraph::config::model::S3Location;
use imgraph::remote::artifacts::ArtifactStore;
use imgraph::remote::journal::ObjectJournal;
use imgraph::remote::lease::{Acquired, ObjectLease};
use imgraph::remote::ObjectClient;

/// Recorded outcomes of one apply of the quickstart example (2 builds, 2 tests, 2
/// publishes, 2 deliveries).
const OUTCOMES: u64 = 8;

fn endpoint() -> String {
    std::env::var("IMGRAPH_TEST_EC2_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

fn bucket(endpoint: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("imgraph-bench-{}-{nanos:x}", std::process::id());
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap_or_else(|e| {
        panic!("no S3 test server at {endpoint} ({e}): run `bash scripts/moto.sh`")
    });
    use std::io::{Read, Write};
    write!(
        stream,
        "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("create bucket");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create bucket: {answer}"
    );
    name
}

fn remote(c: &mut Criterion) {
    // Any credentials do for moto.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let url = endpoint();
    let bucket = bucket(&url);
    let location = |prefix: &str| S3Location {
        bucket: bucket.clone(),
        prefix: prefix.to_owned(),
        region: "us-east-1".to_owned(),
        endpoint: Some(url.clone()),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = ObjectClient::new(&location("bench")).expect("client");
    let mut group = c.benchmark_group("remote");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));

    let journal = ObjectJournal::new(client.clone());
    let mut seq = 0;
    let record = serde_json::json!({
        "kind": "node-finished", "node": "build:base", "status": "succeeded",
        "key": "b3:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "outputs": {"artifact": "local:5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978879", "version": "1.4.7"}
    });
    group.bench_function("journal-append", |b| {
        b.iter(|| {
            seq = rt
                .block_on(journal.append(seq, std::slice::from_ref(&record)))
                .expect("append");
        })
    });

    let lease = ObjectLease::new(client.clone(), Duration::from_secs(60));
    let Acquired::Held {
        lease: mut held, ..
    } = rt
        .block_on(lease.acquire("imgraph bench", "bench"))
        .expect("acquire")
    else {
        panic!("the bench's lease is free");
    };
    group.bench_function("lease-renew", |b| {
        b.iter(|| black_box(rt.block_on(lease.renew(&mut held)).expect("renew")))
    });
    rt.block_on(lease.release(held)).expect("release");

    group.bench_function("conditional-write-check", |b| {
        b.iter(|| {
            rt.block_on(client.probe_conditional_writes())
                .expect("check")
        })
    });

    group.bench_function("lease-acquire-release", |b| {
        b.iter(|| {
            let Acquired::Held { lease: held, .. } = rt
                .block_on(lease.acquire("imgraph bench", "bench"))
                .expect("acquire")
            else {
                panic!("free");
            };
            rt.block_on(lease.release(held)).expect("release");
        })
    });

    // The shared-state work of one apply: check, lease, one append per outcome, release.
    let mut apply_n = 0u64;
    let apply = |apply_n: &mut u64| {
        *apply_n += 1;
        let c = ObjectClient::new(&location(&format!("apply-{apply_n}"))).expect("client");
        rt.block_on(async {
            c.check_conditional_writes().await.expect("check");
            let lease = ObjectLease::new(c.clone(), Duration::from_secs(60));
            let Acquired::Held { lease: held, .. } = lease
                .acquire("imgraph apply", "apply")
                .await
                .expect("acquire")
            else {
                panic!("free");
            };
            let journal = ObjectJournal::new(c.clone());
            let mut seq = 0;
            for _ in 0..OUTCOMES {
                seq = journal
                    .append(seq, std::slice::from_ref(&record))
                    .await
                    .expect("append");
            }
            lease.release(held).await.expect("release");
        });
        c
    };
    let counted = apply(&mut apply_n);
    eprintln!(
        "remote/apply-{OUTCOMES}-outcomes: {} write requests, {} read requests; objects left: 1 lease + {OUTCOMES} journal entries (+ artifacts)",
        counted.counters().writes.load(Ordering::Relaxed),
        counted.counters().reads.load(Ordering::Relaxed),
    );
    group.bench_function(format!("apply-{OUTCOMES}-outcomes"), |b| {
        b.iter(|| black_box(apply(&mut apply_n)))
    });

    // A 16 MiB artifact (incompressible bytes, like a tar.zst).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = vec![0u8; 16 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let artifacts = ArtifactStore::new(ObjectClient::new(&location("images")).expect("client"));
    let mut n = 0u64;
    group.sample_size(10);
    group.bench_function("artifact-publish-16MiB", |b| {
        b.iter_batched(
            || {
                n += 1;
                bytes[..8].copy_from_slice(&n.to_le_bytes());
                let hex = blake3::hash(&bytes).to_hex().to_string();
                let file = dir.path().join(format!("{hex}.tar.zst"));
                std::fs::write(&file, &bytes).expect("write");
                (hex, file)
            },
            |(hex, file)| {
                rt.block_on(artifacts.publish(&hex, &file))
                    .expect("publish")
            },
            BatchSize::PerIteration,
        )
    });
    let hex = blake3::hash(&bytes).to_hex().to_string();
    let mut m = 0u64;
    group.bench_function("artifact-fetch-16MiB", |b| {
        b.iter(|| {
            m += 1;
            let cache = dir.path().join(format!("cache-{m}"));
            rt.block_on(artifacts.ensure_local(&hex, &cache))
                .expect("fetch")
                .expect("published")
        })
    });
    group.finish();
}

criterion_group!(benches, remote);
criterion_main!(benches);
