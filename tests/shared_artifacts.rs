//! Shared artifacts of the local provider (`provider "local" { store ".imgraph/images" {
//! s3 … } }`), with the real binary against moto's S3 API on loopback: runner A builds
//! and publishes; runner B, a separate checkout with the same history but an empty local
//! store, fetches A's artifact for its tests and downstream builds instead of building it
//! again; a corrupted object is refused by name; a store that ignores conditional writes
//! is refused before anything runs.
//!
//! Runner B gets A's history by a copy of A's state file, or, in the last test, through the
//! shared state (`state { s3 … }`), as two CI runners do.
//! Each test uses its own bucket. Under CI a missing server fails the test.
#![cfg(all(feature = "aws", feature = "s3"))]

#[path = "common/aws.rs"]
mod aws;
mod common;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};

use common::*;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

const PREFIX: &str = "images";

/// A copy of the quickstart whose local store is shared in `bucket` at `endpoint`.
fn shared_quickstart(endpoint: &str, bucket: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = copy_project("examples/quickstart");
    let config = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&config).expect("read imgraph.kdl");
    let shared = text.replace(
        "store \".imgraph/images\"",
        &format!(
            "store \".imgraph/images\" {{ s3 bucket=\"{bucket}\" prefix=\"{PREFIX}/\" region=\"us-east-1\" endpoint=\"{endpoint}\"; }}"
        ),
    );
    assert_ne!(text, shared, "the quickstart declares its store");
    write(&config, &shared);
    (tmp, dir)
}

/// Runner B: a separate checkout of A's project with A's state file (its history) and
/// an empty local store.
fn second_runner(a: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = tmp.path().join("runner-b");
    copy_dir(a, &b);
    std::fs::create_dir_all(b.join(".imgraph")).expect("mkdir");
    for name in ["state.db", "state.db-wal"] {
        let from = a.join(".imgraph").join(name);
        if from.exists() {
            std::fs::copy(&from, b.join(".imgraph").join(name)).expect("copy the state");
        }
    }
    assert!(!b.join(".imgraph/images").exists());
    (tmp, b)
}

fn bucket_store(endpoint: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .build()
        .expect("store")
}

/// The artifact objects in the bucket: name → bytes.
async fn objects(endpoint: &str, bucket: &str) -> Vec<(String, Vec<u8>)> {
    use futures_util::TryStreamExt;
    let store = bucket_store(endpoint, bucket);
    let metas: Vec<_> = store
        .list(Some(&ObjectPath::from(PREFIX)))
        .try_collect()
        .await
        .expect("list the bucket");
    let mut out = Vec::new();
    for meta in metas {
        let got = store.get(&meta.location).await.expect("get");
        let bytes = got.bytes().await.expect("bytes").to_vec();
        out.push((meta.location.to_string(), bytes));
    }
    out.sort();
    out
}

/// The artifact id (`local:<hex>`) of the one version of `image` in `dir`.
fn artifact_of(dir: &Path, image: &str) -> String {
    let images = json_of(dir, &["images", image, "--json"]);
    let versions = images["images"].as_array().expect("a list of versions");
    assert_eq!(versions.len(), 1, "{images:#}");
    versions[0]["id"].as_str().expect("an id").to_owned()
}

fn hex(artifact: &str) -> &str {
    artifact
        .strip_prefix("local:")
        .expect("a local artifact id")
}

/// `imgraph apply --json ARGS` in `dir`: its exit code and events.
fn apply_events(dir: &Path, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let out = imgraph(dir)
        .arg("apply")
        .arg("--json")
        .args(args)
        .output()
        .expect("run imgraph");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code().unwrap_or(-1), events)
}

fn started(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "node-started")
        .map(|e| e["node"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn finished<'a>(events: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "node-finished" && e["node"] == node)
        .unwrap_or_else(|| panic!("no node-finished event for {node}: {events:#?}"))
}

fn log_of(event: &serde_json::Value) -> String {
    let path = event["log_path"].as_str().expect("a log path");
    std::fs::read_to_string(path).expect("read the node log")
}

#[tokio::test(flavor = "multi_thread")]
async fn runner_b_tests_and_builds_on_the_artifact_runner_a_published() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "art-share");
    let (_a_tmp, a) = shared_quickstart(&url, &bucket);
    stdout_of(&a, &["apply", "--target", "base", "-q"]);
    let base = artifact_of(&a, "base");
    let local = std::fs::read(
        a.join(".imgraph/images")
            .join(format!("{}.tar.zst", hex(&base))),
    )
    .expect("A's store has the artifact");

    // Published once, under its content hash, with exactly the bytes A packed.
    let published = objects(&url, &bucket).await;
    assert_eq!(
        published
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec![format!("{PREFIX}/{}.tar.zst", hex(&base))],
    );
    assert_eq!(published[0].1, local, "the object holds A's artifact");

    // Runner B: same history, empty store; its base test changed.
    let (_b_tmp, b) = second_runner(&a);
    append(
        &b.join("tests/base/smoke.sh"),
        "\n# checked again on runner B\n",
    );
    let plan = plan_json(&b, &[]);
    assert_eq!(
        plan_node(&plan, "build:base")["action"],
        "up-to-date",
        "the artifact is in the shared store, so it is not missing: {plan:#}"
    );
    assert_eq!(
        reason_kinds(&plan, "test:base/smoke"),
        vec!["input-changed"]
    );

    let (code, events) = apply_events(&b, &[]);
    assert_eq!(code, 0, "{events:#?}");
    let ran = started(&events);
    assert!(
        !ran.contains(&"build:base".to_owned()),
        "base is not built again: {ran:?}"
    );
    assert!(ran.contains(&"test:base/smoke".to_owned()), "{ran:?}");
    assert!(ran.contains(&"build:web".to_owned()), "{ran:?}");
    let test_log = log_of(finished(&events, "test:base/smoke"));
    assert!(
        test_log.contains(&format!("imgraph: fetched {base}")) && test_log.contains(&bucket),
        "the test fetched A's artifact from the shared store:\n{test_log}"
    );
    assert!(
        test_log.contains("imgraph: instance ") && test_log.contains(&format!("from {base}")),
        "{test_log}"
    );
    let fetched = std::fs::read(
        b.join(".imgraph/images")
            .join(format!("{}.tar.zst", hex(&base))),
    )
    .expect("B's store caches the fetched artifact");
    assert_eq!(fetched, local, "B tested exactly A's bytes");

    // web was built on B from A's base and published next to it.
    let web = artifact_of(&b, "web");
    let web_log = log_of(finished(&events, "build:web"));
    assert!(
        !web_log.contains("imgraph: fetching"),
        "the test had already fetched base into the cache: {web_log}"
    );
    assert!(
        web_log.contains(&format!("imgraph: published {web}")),
        "{web_log}"
    );
    let names: Vec<String> = objects(&url, &bucket)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut expected = vec![
        format!("{PREFIX}/{}.tar.zst", hex(&base)),
        format!("{PREFIX}/{}.tar.zst", hex(&web)),
    ];
    expected.sort();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downstream_build_fetches_its_origin_from_the_shared_store() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "art-origin");
    let (_a_tmp, a) = shared_quickstart(&url, &bucket);
    stdout_of(&a, &["apply", "--target", "base", "-q"]);
    let base = artifact_of(&a, "base");

    let (_b_tmp, b) = second_runner(&a);
    let (code, events) = apply_events(&b, &[]);
    assert_eq!(code, 0, "{events:#?}");
    let ran = started(&events);
    assert!(
        !ran.iter()
            .any(|n| n.ends_with(":base") || n.contains("base/")),
        "{ran:?}"
    );
    let log = log_of(finished(&events, "build:web"));
    assert!(
        log.contains(&format!("imgraph: fetched {base}")),
        "web's build fetched its origin, A's base:\n{log}"
    );
    assert!(b
        .join(".imgraph/images")
        .join(format!("{}.tar.zst", hex(&base)))
        .is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_shared_object_is_refused_naming_it() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "art-corrupt");
    let (_a_tmp, a) = shared_quickstart(&url, &bucket);
    stdout_of(&a, &["apply", "--target", "base", "-q"]);
    let base = artifact_of(&a, "base");
    let object = format!("{PREFIX}/{}.tar.zst", hex(&base));
    // Someone overwrites the object (no condition: the store lets them).
    bucket_store(&url, &bucket)
        .put(
            &ObjectPath::from(object.as_str()),
            b"not the image".to_vec().into(),
        )
        .await
        .expect("overwrite the object");

    let (_b_tmp, b) = second_runner(&a);
    append(
        &b.join("tests/base/smoke.sh"),
        "\n# checked again on runner B\n",
    );
    let (code, events) = apply_events(&b, &["--target", "base"]);
    assert_eq!(code, 3, "the test fails: {events:#?}");
    let failed = finished(&events, "test:base/smoke");
    assert_eq!(failed["outcome"], "failed");
    let error = failed["error"].as_str().expect("an error");
    assert!(
        error.contains(&format!("s3://{bucket}/{object}")),
        "the error names the object: {error}"
    );
    assert!(error.contains("not to the"), "{error}");
    assert!(
        error.contains("delete that object"),
        "and says what to do: {error}"
    );
    let store = b.join(".imgraph/images");
    let left: Vec<String> = std::fs::read_dir(&store)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|n| n.ends_with(".tar.zst") || n.ends_with(".tmp")),
        "nothing unverified reached B's store: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_ignoring_conditional_writes_is_refused_before_anything_runs() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "art-nocond");
    let proxy = proxy::start(
        &url,
        vec![proxy::Rule {
            fault: proxy::Fault::IgnoreConditions,
            path_part: "/check/".into(),
            nth: 0,
        }],
    )
    .await;
    let (_tmp, dir) = shared_quickstart(&proxy.endpoint, &bucket);
    let out = imgraph(&dir).arg("apply").output().expect("run imgraph");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("conditional writes"), "{stderr}");
    assert!(stderr.contains(&bucket), "{stderr}");
    assert!(!dir.join(".imgraph/images").exists(), "nothing was built");
    assert!(objects(&url, &bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_shared_state_runner_b_is_up_to_date_and_tests_on_the_artifact_a_stored() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "art-2runners");
    let (_a_tmp, a) = shared_quickstart(&url, &bucket);
    let config = a.join("imgraph.kdl");
    let text = std::fs::read_to_string(&config).expect("read imgraph.kdl");
    write(
        &config,
        &text.replace(
            "imgraph version=1\n",
            &format!("imgraph version=1\nstate {{ s3 bucket=\"{bucket}\" prefix=\"platform/\" region=\"us-east-1\" endpoint=\"{url}\"; }}\n"),
        ),
    );
    stdout_of(&a, &["apply", "-q"]);
    let base = artifact_of(&a, "base");

    // Runner B: a separate checkout, nothing local (no state file, no store).
    let b_tmp = tempfile::tempdir().expect("tempdir");
    let b = b_tmp.path().join("runner-b");
    copy_dir(&a, &b);
    assert!(!b.join(".imgraph").exists());
    let out = imgraph(&b)
        .args(["plan", "--detailed-exitcode"])
        .output()
        .expect("run imgraph");
    assert_eq!(
        out.status.code(),
        Some(0),
        "B sees A's work as up to date: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    append(
        &b.join("tests/base/smoke.sh"),
        "\n# checked again on runner B\n",
    );
    let (code, events) = apply_events(&b, &[]);
    assert_eq!(code, 0, "{events:#?}");
    // The changed test and the publish it cascades to; nothing is built again.
    assert_eq!(started(&events), vec!["test:base/smoke", "publish:base"]);
    let log = log_of(finished(&events, "test:base/smoke"));
    assert!(
        log.contains(&format!("imgraph: fetched {base}")) && log.contains(&format!("from {base}")),
        "B's test ran on the artifact A stored:\n{log}"
    );
    // A sees B's outcome in the shared history.
    let history = String::from_utf8_lossy(&stdout_of(&a, &["history", "--json"])).into_owned();
    assert!(history.matches("test:base/smoke").count() >= 2, "{history}");
}
