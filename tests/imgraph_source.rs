//! A source that is another project's image (`source "platform-base" { imgraph
//! image="base" { s3 … } }`), with the real binary against moto's S3 API: the producer
//! (the quickstart with a shared state and a shared store) applies; the consumer builds
//! on the newest Ready version of its `base`, fetched from the producer's shared store;
//! a new Ready version there shows here as `source-changed`.
//!
//! Each test uses its own bucket. Under CI a missing server fails the test.
#![cfg(all(feature = "aws", feature = "s3"))]

#[path = "common/aws.rs"]
mod aws;
mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};

use common::*;

/// The quickstart sharing its state under `platform/` and its artifacts under `images/`.
fn producer(endpoint: &str, bucket: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = copy_project("examples/quickstart");
    let config = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&config).expect("read imgraph.kdl");
    let place = format!("bucket=\"{bucket}\" region=\"us-east-1\" endpoint=\"{endpoint}\"");
    let shared = text
        .replace(
            "store \".imgraph/images\"",
            &format!("store \".imgraph/images\" {{ s3 {place} prefix=\"images/\"; }}"),
        )
        .replace(
            "imgraph version=1\n",
            &format!("imgraph version=1\nstate {{ s3 {place} prefix=\"platform/\"; }}\n"),
        );
    assert!(
        shared.contains("state {") && shared.contains("images/"),
        "{shared}"
    );
    write(&config, &shared);
    (tmp, dir)
}

/// A project whose image `app` is built from the producer's `base`.
fn consumer(endpoint: &str, bucket: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("consumer");
    std::fs::create_dir_all(dir.join("scripts")).expect("mkdir");
    std::fs::create_dir_all(dir.join("tests")).expect("mkdir");
    write(
        &dir.join("imgraph.kdl"),
        &format!(
            r#"imgraph version=1
provider "local" {{
    sandbox "none"
}}
source "platform-base" {{
    imgraph image="base" {{
        s3 bucket="{bucket}" prefix="platform/" region="us-east-1" endpoint="{endpoint}"
    }}
}}
image "app" {{
    from "platform-base"
    version "3.0"
    build "rootfs" {{
        run "sh scripts/app.sh"
    }}
    test "smoke" {{
        run "sh tests/smoke.sh"
    }}
}}
"#
        ),
    );
    write(
        &dir.join("scripts/app.sh"),
        "echo app > \"$IMGRAPH_ROOT/etc/app\"\n",
    );
    // The producer's base put its motd in /etc/acme: the app is built on it.
    write(
        &dir.join("tests/smoke.sh"),
        "test -f \"$IMGRAPH_INSTANCE_ROOT/etc/acme/motd\" && test -f \"$IMGRAPH_INSTANCE_ROOT/etc/app\"\n",
    );
    (tmp, dir)
}

/// The id of the newest Ready version of `image` in `dir`.
fn ready_artifact(dir: &Path, image: &str) -> String {
    let images = json_of(dir, &["images", image, "--json"]);
    let versions = images["images"].as_array().expect("a list of versions");
    versions
        .iter()
        .filter(|v| v["status"] == "Ready")
        .max_by_key(|v| v["built_at_ms"].as_i64())
        .and_then(|v| v["id"].as_str())
        .expect("a Ready version")
        .to_owned()
}

fn source_id(plan: &serde_json::Value, name: &str) -> String {
    plan["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no source {name}: {plan:#}"))
        .to_owned()
}

#[test]
fn a_consumer_builds_on_the_producers_ready_image_and_sees_a_new_one_as_source_changed() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "xproj");
    let (_p_tmp, producer) = producer(&url, &bucket);
    let (_c_tmp, consumer) = consumer(&url, &bucket);
    stdout_of(&producer, &["apply", "--target", "base", "-q"]);
    let base_1 = ready_artifact(&producer, "base");

    let plan = plan_json(&consumer, &[]);
    assert_eq!(source_id(&plan, "platform-base"), base_1, "{plan:#}");
    assert_eq!(reason_kinds(&plan, "build:app"), vec!["new"]);
    stdout_of(&consumer, &["apply", "-q"]);
    let log = std::fs::read_to_string(consumer.join(".imgraph/logs/run-1/build_app.log"))
        .expect("the build's log");
    assert!(
        log.contains(&format!("imgraph: fetched {base_1}")) && log.contains("images/"),
        "the origin came from the producer's shared store:\n{log}"
    );
    let out = imgraph(&consumer)
        .args(["plan", "--detailed-exitcode"])
        .output()
        .expect("run imgraph");
    assert_eq!(out.status.code(), Some(0), "nothing changed");

    // The producer makes a new Ready version of base.
    append(&producer.join("config/base/motd"), "A new base.\n");
    stdout_of(&producer, &["apply", "--target", "base", "-q"]);
    let base_2 = ready_artifact(&producer, "base");
    assert_ne!(base_1, base_2);

    let plan = plan_json(&consumer, &[]);
    assert_eq!(source_id(&plan, "platform-base"), base_2);
    assert_eq!(
        reason_kinds(&plan, "build:app"),
        vec!["source-changed"],
        "{plan:#}"
    );
    let reason = &plan_node(&plan, "build:app")["reasons"][0];
    assert_eq!(reason["old"], base_1.as_str(), "{reason:#}");
    assert_eq!(reason["new"], base_2.as_str(), "{reason:#}");
    let out = imgraph(&consumer)
        .args(["plan", "--detailed-exitcode"])
        .output()
        .expect("run imgraph");
    assert_eq!(out.status.code(), Some(2), "a change is pending");
    stdout_of(&consumer, &["apply", "-q"]);
}

#[test]
fn a_producer_without_a_ready_version_is_refused_naming_the_place() {
    let Some(url) = s3::endpoint() else { return };
    let bucket = s3::fresh_bucket(&url, "xproj-empty");
    let (_c_tmp, consumer) = consumer(&url, &bucket);
    let out = imgraph(&consumer)
        .arg("plan")
        .output()
        .expect("run imgraph");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("platform-base"), "{stderr}");
    assert!(stderr.contains("no Ready version"), "{stderr}");
    assert!(
        stderr.contains(&format!("s3://{bucket}/platform/")),
        "{stderr}"
    );
}
