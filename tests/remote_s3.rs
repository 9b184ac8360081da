//! The object-storage side of shared work (`imgraph::remote`) against moto's S3 API on
//! loopback (the server of `tests/common/aws.rs`, path-style on the same port), and
//! against a scripted proxy in front of it for the faults moto cannot produce.
//!
//! Each test uses its own bucket. Under CI a missing server fails the test.
#![cfg(all(feature = "aws", feature = "s3"))]

#[path = "common/aws.rs"]
mod aws;
mod common;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/s3.rs"]
mod s3;

use std::time::Duration;

use imgraph::remote::artifacts::{ArtifactStore, Published};
use imgraph::remote::journal::{JournalError, ObjectJournal};
use imgraph::remote::lease::{Acquired, ObjectLease, Renewed};
use imgraph::remote::{ObjectClient, RemoteError, Written};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use proxy::{Fault, Rule};

fn client(endpoint: &str, bucket: &str, prefix: &str) -> ObjectClient {
    ObjectClient::new(&s3::location(endpoint, bucket, prefix)).expect("object client")
}

/// object_store itself on the bucket, without imgraph in between.
fn raw_store(url: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_endpoint(url)
        .with_allow_http(true)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .build()
        .expect("store")
}

/// The body of the object at `path`, read straight from the store.
async fn read(store: &object_store::aws::AmazonS3, path: &ObjectPath) -> Vec<u8> {
    let got = store.get(path).await.expect("get");
    got.bytes().await.expect("bytes").to_vec()
}

#[tokio::test]
async fn moto_honours_if_none_match_and_if_match() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "cond");
    // object_store directly, as the rest of imgraph::remote relies on it.
    let store = raw_store(&url, &bucket);
    let path = ObjectPath::from("probe/create.json");
    let create = || PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let first = store
        .put_opts(&path, "one".into(), create())
        .await
        .expect("the first create succeeds");
    let second = store.put_opts(&path, "two".into(), create()).await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "a second create must be refused: {second:?}"
    );
    let body = read(&store, &path).await;
    assert_eq!(&body[..], b"one", "the refused create changed nothing");

    let update = |v: &UpdateVersion| PutOptions {
        mode: PutMode::Update(v.clone()),
        ..PutOptions::default()
    };
    let v1 = UpdateVersion {
        e_tag: first.e_tag.clone(),
        version: first.version.clone(),
    };
    let third = store
        .put_opts(&path, "three".into(), update(&v1))
        .await
        .expect("an update on the current ETag succeeds");
    assert_ne!(third.e_tag, first.e_tag);
    let stale = store.put_opts(&path, "four".into(), update(&v1)).await;
    assert!(
        matches!(stale, Err(object_store::Error::Precondition { .. })),
        "an update on a stale ETag must be refused: {stale:?}"
    );
    let body = read(&store, &path).await;
    assert_eq!(&body[..], b"three");

    // And imgraph's own check agrees.
    client(&url, &bucket, "team")
        .check_conditional_writes()
        .await
        .expect("moto passes the conditional-write check");
}

#[tokio::test]
async fn a_store_that_ignores_conditional_headers_is_refused_at_the_check() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "nocond");
    let proxy = proxy::start(
        &url,
        vec![Rule {
            fault: Fault::IgnoreConditions,
            path_part: "/check/".into(),
            nth: 0,
        }],
    )
    .await;
    let err = client(&proxy.endpoint, &bucket, "team")
        .check_conditional_writes()
        .await
        .expect_err("a store without conditional writes must be refused");
    assert!(
        matches!(err, RemoteError::NoConditionalWrites { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("If-None-Match"), "{text}");
    assert!(
        text.contains(&bucket),
        "the message names the store: {text}"
    );
}

#[tokio::test]
async fn the_lease_is_held_by_one_runner_renewed_released_and_taken_over_when_stale() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "lease");
    let ttl = Duration::from_secs(1);
    let a = ObjectLease::new(client(&url, &bucket, "platform"), ttl);
    let b = ObjectLease::new(client(&url, &bucket, "platform"), ttl);

    let Acquired::Held {
        lease: mut held_a,
        took_over: None,
    } = a
        .acquire("imgraph apply", "imgraph apply A")
        .await
        .expect("acquire")
    else {
        panic!("a free lease is taken");
    };
    assert_eq!(held_a.record.pid, std::process::id());
    assert_eq!(held_a.record.command, "imgraph apply A");
    match b
        .acquire("imgraph apply", "imgraph apply B")
        .await
        .expect("acquire")
    {
        Acquired::HeldBy(holder) => assert_eq!(holder.command, "imgraph apply A"),
        other => panic!("a held lease is not taken: {other:?}"),
    }
    let status = b.status().await.expect("status").expect("held");
    assert_eq!(status.record.token, held_a.record.token);
    assert!(!status.stale);
    let beat = held_a.record.heartbeat_ms;
    assert_eq!(a.renew(&mut held_a).await.expect("renew"), Renewed::Renewed);
    assert!(held_a.record.heartbeat_ms >= beat);

    assert!(a.release(held_a).await.expect("release"), "ours to release");
    assert!(
        b.status().await.expect("status").is_none(),
        "released: free"
    );
    let Acquired::Held {
        lease: held_b,
        took_over: None,
    } = b
        .acquire("imgraph apply", "imgraph apply B")
        .await
        .expect("acquire")
    else {
        panic!("a released lease is taken without a take-over");
    };

    // B stops renewing (a killed runner); after the time to live two runners race for
    // it: exactly one wins, and B's renewal then finds it lost.
    tokio::time::sleep(ttl + Duration::from_millis(600)).await;
    assert!(b.status().await.expect("status").expect("held").stale);
    let c = ObjectLease::new(client(&url, &bucket, "platform"), ttl);
    let d = ObjectLease::new(client(&url, &bucket, "platform"), ttl);
    let (rc, rd) = tokio::join!(
        c.acquire("imgraph apply", "imgraph apply C"),
        d.acquire("imgraph apply", "imgraph apply D")
    );
    let outcomes = [rc.expect("acquire C"), rd.expect("acquire D")];
    let winners: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Acquired::Held { lease, took_over } => Some((lease, took_over)),
            Acquired::HeldBy(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "one taker wins: {outcomes:?}");
    let (winner, took_over) = &winners[0];
    assert_eq!(
        took_over.as_ref().map(|r| r.token.as_str()),
        Some(held_b.record.token.as_str()),
        "the winner names the stale lease it took over"
    );
    let mut held_b = held_b;
    match b.renew(&mut held_b).await.expect("renew") {
        Renewed::Lost(Some(now)) => assert_eq!(now.token, winner.record.token),
        other => panic!("a lease taken over is lost: {other:?}"),
    }
    // `lock break` frees it whoever holds it.
    let broken = c.break_lease().await.expect("break").expect("one was held");
    assert_eq!(broken.token, winner.record.token);
    assert!(c.status().await.expect("status").is_none());
}

#[tokio::test]
async fn two_writers_cannot_both_append_the_same_journal_entry() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "journal");
    let a = ObjectJournal::new(client(&url, &bucket, "platform/"));
    let b = ObjectJournal::new(client(&url, &bucket, "platform/"));
    assert_eq!(a.head().await.expect("head"), 0);
    assert_eq!(a.append(0, &["a1", "a2"]).await.expect("append"), 1);
    match b.append(0, &["b1"]).await {
        Err(JournalError::Conflict { seq: 1 }) => {}
        other => panic!("the second writer of entry 1 is refused: {other:?}"),
    }
    let missed = b.read_since::<String>(0).await.expect("read");
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].records, ["a1", "a2"]);
    assert_eq!(b.append(1, &["b1"]).await.expect("append after reading"), 2);
    for seq in 3..=11 {
        a.append(seq - 1, &[format!("a{seq}")])
            .await
            .expect("append");
    }
    assert_eq!(a.head().await.expect("head"), 11);
    let since_9: Vec<u64> = b
        .read_since::<String>(9)
        .await
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(since_9, [10, 11], "entries 10 and 11 sort after 9 by name");
    let all = a.read_since::<String>(0).await.expect("read");
    assert_eq!(all.len(), 11);
    assert_eq!(all[1].records, ["b1"]);
}

#[tokio::test]
async fn artifacts_are_written_once_verified_and_fetched_into_the_local_cache() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "artifacts");
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = b"not really a tar.zst, but content-addressed all the same".repeat(1000);
    let hex = blake3::hash(&bytes).to_hex().to_string();
    let file = dir.path().join(format!("{hex}.tar.zst"));
    std::fs::write(&file, &bytes).expect("write artifact");

    let store = ArtifactStore::new(client(&url, &bucket, "images"));
    assert!(!store.contains(&hex).await.expect("contains"));
    assert_eq!(
        store.publish(&hex, &file).await.expect("publish"),
        Published::Written
    );
    assert_eq!(
        store.publish(&hex, &file).await.expect("publish again"),
        Published::AlreadyThere
    );
    // A file that does not match its name is never published.
    let wrong = "0".repeat(64);
    let err = store.publish(&wrong, &file).await.expect_err("mismatch");
    assert!(matches!(err, RemoteError::Corrupt { .. }), "{err:?}");
    assert!(!store.contains(&wrong).await.expect("contains"));

    // Another runner's cache: empty, filled lazily.
    let cache = dir.path().join("runner-b/images");
    let got = store
        .ensure_local(&hex, &cache)
        .await
        .expect("fetch")
        .expect("the shared store has it");
    assert_eq!(std::fs::read(&got).expect("read"), bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&got).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    assert!(store
        .ensure_local(&"1".repeat(64), &cache)
        .await
        .expect("lookup")
        .is_none());

    // Bytes changed in the bucket behind imgraph's back: a typed error naming the object,
    // and nothing lands in the cache.
    raw_store(&url, &bucket)
        .put(
            &ObjectPath::from(format!("images/{hex}.tar.zst")),
            "tampered".into(),
        )
        .await
        .expect("overwrite the artifact");
    let other_cache = dir.path().join("runner-c/images");
    let err = store
        .ensure_local(&hex, &other_cache)
        .await
        .expect_err("a tampered artifact is refused");
    match &err {
        RemoteError::Corrupt {
            object, expected, ..
        } => {
            assert_eq!(object, &format!("images/{hex}.tar.zst"));
            assert_eq!(expected, &hex);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains(&hex));
    let left: Vec<_> = std::fs::read_dir(&other_cache)
        .expect("cache folder")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "nothing left in the cache: {left:?}");
}

#[tokio::test]
async fn a_503_on_a_journal_write_is_retried() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "retry");
    let proxy = proxy::start(
        &url,
        vec![Rule {
            fault: Fault::Unavailable,
            path_part: "/journal/".into(),
            nth: 1,
        }],
    )
    .await;
    let journal = ObjectJournal::new(client(&proxy.endpoint, &bucket, "platform"));
    assert_eq!(journal.append(0, &["outcome"]).await.expect("append"), 1);
    let puts: Vec<_> = proxy
        .log
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p)| m == "PUT" && p.contains("/journal/"))
        .cloned()
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "the 503 was answered, then the retry went through: {puts:?}"
    );
    assert_eq!(proxy.log.applied.lock().unwrap().len(), 1);
    // Straight from the server: the entry is there once.
    let direct = ObjectJournal::new(client(&url, &bucket, "platform"));
    let entries = direct.read_since::<String>(0).await.expect("read");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].records, ["outcome"]);
}

#[tokio::test]
async fn a_lost_answer_to_a_conditional_create_is_resolved_by_reading_back() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "lost");
    let proxy = proxy::start(
        &url,
        vec![
            Rule {
                fault: Fault::LoseAnswer,
                path_part: "/journal/".into(),
                nth: 1,
            },
            Rule {
                fault: Fault::LoseAnswer,
                path_part: "/lease.json".into(),
                nth: 2,
            },
            Rule {
                fault: Fault::LoseAnswer,
                path_part: "/other.json".into(),
                nth: 1,
            },
        ],
    )
    .await;
    let via_proxy = client(&proxy.endpoint, &bucket, "platform");
    let journal = ObjectJournal::new(via_proxy.clone());
    // The create reached the server and its answer was lost: reading back shows our
    // entry, so the append succeeded (and is not reported as a conflict with itself).
    assert_eq!(journal.append(0, &["outcome"]).await.expect("append"), 1);
    let applied = proxy.log.applied.lock().unwrap().clone();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].0, Fault::LoseAnswer);
    // Another writer's entry is not taken for ours.
    let other = ObjectJournal::new(client(&url, &bucket, "platform"));
    assert!(matches!(
        other.append(0, &["outcome"]).await,
        Err(JournalError::Conflict { seq: 1 })
    ));

    // The same for a conditional update: the lease's renewal (its second PUT).
    let lease = ObjectLease::new(via_proxy.clone(), Duration::from_secs(60));
    let Acquired::Held {
        lease: mut held, ..
    } = lease
        .acquire("imgraph apply", "imgraph apply")
        .await
        .expect("acquire")
    else {
        panic!("a free lease is taken");
    };
    assert_eq!(
        lease.renew(&mut held).await.expect("renew"),
        Renewed::Renewed
    );
    assert_eq!(proxy.log.applied.lock().unwrap().len(), 2);
    // The version it resolved to is the current one: the next renewal goes through.
    assert_eq!(
        lease.renew(&mut held).await.expect("renew"),
        Renewed::Renewed
    );

    // A create refused because another writer was first, whose answer is lost: reading
    // back finds the other writer's bytes, so it is refused, not taken for ours.
    let direct = client(&url, &bucket, "platform");
    assert!(matches!(
        direct
            .create("other.json", "theirs".into())
            .await
            .expect("create"),
        Written::Ours(_)
    ));
    assert_eq!(
        via_proxy
            .create("other.json", "ours".into())
            .await
            .expect("create"),
        Written::Refused
    );
    assert_eq!(proxy.log.applied.lock().unwrap().len(), 3);
    let found = direct
        .read("other.json")
        .await
        .expect("read")
        .expect("there");
    assert_eq!(&found.bytes[..], b"theirs");
}
