//! The `aws` provider end to end through the real binary, against an EC2-compatible server
//! (moto) on loopback and the real Packer CLI. The server, the SDK client that reads
//! results back and the harness that plays moto's missing parts are in
//! `tests/common/aws.rs`, shared with `tests/aws_provider.rs`.
#![cfg(feature = "aws")]

#[path = "common/aws.rs"]
mod aws;
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws::*;
use serde_json::Value;

/// The binary with moto's credentials, and nothing from the developer's own AWS setup.
fn imgraph_aws(dir: &Path, url: &str) -> assert_cmd::Command {
    let mut cmd = common::imgraph(dir);
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_REGION", "us-east-1")
        // Never ask an instance metadata service for credentials or a region.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("CHECKPOINT_DISABLE", "1")
        // Test commands that want to look at EC2 themselves find the server here.
        .env("IMGRAPH_TEST_EC2_ENDPOINT", url)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .timeout(Duration::from_secs(300));
    cmd
}

/// Runs `imgraph apply` while the harness plays its parts; returns the apply's output and
/// what the harness saw.
async fn apply_with_harness(dir: &Path, url: &str, image: &str) -> (std::process::Output, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(harness(
        ec2(url),
        image.to_string(),
        dir.to_path_buf(),
        stop.clone(),
    ));
    let mut cmd = imgraph_aws(dir, url);
    cmd.arg("apply");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run imgraph apply"))
        .await
        .expect("apply thread");
    stop.store(true, Ordering::SeqCst);
    let seen = task.await.expect("harness");
    (out, seen)
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The test command waits for the harness before doing `body`.
fn held_test(body: &str) -> String {
    format!("#!/bin/sh\nset -eu\nwhile [ ! -f released ]; do sleep 0.1; done\n{body}\n")
}

/// Deletes the state file, as an ephemeral CI runner would lose it.
fn remove_state(dir: &Path) {
    for name in [
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "moto-state.db",
        "moto-state.db-wal",
        "moto-state.db-shm",
    ] {
        let path = dir.join(".imgraph").join(name);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove state");
        }
    }
}

/// Runs `imgraph ARGS` against the server, off the async test's threads.
async fn run_imgraph(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let (dir, url) = (dir.to_path_buf(), url.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        imgraph_aws(&dir, &url)
            .args(&args)
            .output()
            .expect("run imgraph")
    })
    .await
    .expect("imgraph thread")
}

async fn plan_json(dir: &Path, url: &str) -> Value {
    let out = run_imgraph(dir, url, &["plan", "--json"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("plan json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amazon_linux_source_resolves_to_the_newest_matching_ami() {
    let Some(url) = endpoint() else { return };
    let image = unique("src");
    let (_t, dir) = packer_project(&url, &image);
    let expected = newest_amazon_linux(&ec2(&url)).await;
    let plan = plan_json(&dir, &url).await;
    let sources = plan["sources"].as_array().expect("sources in plan json");
    let source = sources
        .iter()
        .find(|s| s["name"] == "amazon-linux")
        .unwrap_or_else(|| panic!("amazon-linux not in {sources:?}"));
    assert_eq!(source["id"], Value::from(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packer_build_is_tagged_tested_on_a_fresh_instance_and_marked_ready() {
    let Some(url) = packer_endpoint() else { return };
    let image = unique("pk");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(
        &dir,
        &held_test(
            r#"case "$IMGRAPH_INSTANCE_ID" in i-*) ;; *) exit 1 ;; esac; test -n "$IMGRAPH_INSTANCE_IP""#,
        ),
    );
    let (out, seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        seen.status_during_test.as_deref(),
        Some("Candidate"),
        "{seen:?}"
    );
    assert_eq!(seen.test_instance_types, vec!["t3.micro".to_string()]);

    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1, "one AMI per build");
    let tags = amis[0].tags();
    assert_eq!(tag(tags, "Release_Status"), Some("Ready"));
    assert_eq!(tag(tags, "imgraph:version"), Some("1.0.0"));
    assert_eq!(tag(tags, "Name"), Some(format!("{image}-1.0.0").as_str()));
    assert_eq!(tag(tags, "Team"), Some("platform"));
    assert!(
        tag(tags, "imgraph:key").is_some_and(|k| !k.is_empty()),
        "{tags:?}"
    );
    assert_no_live_instances(&client, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_build_runs_the_steps_as_user_data_and_images_the_stopped_instance() {
    let Some(url) = endpoint() else { return };
    let image = unique("ec2");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(dir.join("tests")).expect("mkdir");
    common::write(
        &dir.join("imgraph.kdl"),
        &format!(
            r#"imgraph version=1
provider "aws" {{
    region "us-east-1"
    endpoint "{url}"
}}
source "amazon-linux" {{
    aws owner="amazon" name="amzn2-ami-hvm-*-x86_64-gp2"
}}
image "{image}" {{
    from "amazon-linux"
    version "2.1"
    build "ec2" {{
        run "echo built-by-imgraph > /etc/motd"
        run "yum -y install nginx"
    }}
    instance {{
        type "t3.small"
    }}
    test "smoke" {{
        run "sh tests/smoke.sh"
        timeout "2m"
    }}
    tags {{ Team "web"; }}
}}
"#
        ),
    );
    common::write(
        &dir.join("tests/smoke.sh"),
        &held_test(r#"test -n "$IMGRAPH_INSTANCE_ID""#),
    );
    let (out, seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}\n{seen:?}", output_text(&out));

    assert_eq!(seen.stopped_builds.len(), 1, "{seen:?}");
    let script = &seen.stopped_builds[0].1;
    assert!(script.starts_with("#!/bin/sh\nset -e\n"), "{script}");
    let motd = script
        .find("echo built-by-imgraph > /etc/motd\n")
        .expect("first step in user data");
    let nginx = script
        .find("yum -y install nginx\n")
        .expect("second step in user data");
    assert!(motd < nginx, "steps keep their order: {script}");
    assert!(script.ends_with("shutdown -h now\n"), "{script}");
    assert_eq!(
        seen.status_during_test.as_deref(),
        Some("Candidate"),
        "{seen:?}"
    );
    assert_eq!(seen.test_instance_types, vec!["t3.small".to_string()]);

    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1);
    let tags = amis[0].tags();
    assert_eq!(tag(tags, "Release_Status"), Some("Ready"));
    assert_eq!(tag(tags, "imgraph:version"), Some("2.1.0"));
    assert_eq!(tag(tags, "Team"), Some("web"));
    let builds = instances_of(
        &client,
        &image,
        Some("build"),
        &["shutting-down", "terminated"],
    )
    .await;
    assert_eq!(
        builds.len(),
        1,
        "the build instance is terminated after imaging"
    );
    assert_no_live_instances(&client, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_marks_the_ami_failed_and_terminates_its_instance() {
    let Some(url) = packer_endpoint() else { return };
    let image = unique("fail");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(
        &dir,
        "#!/bin/sh\necho 'the service did not answer' >&2\nexit 3\n",
    );
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(!out.status.success(), "{}", output_text(&out));

    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1);
    assert_eq!(tag(amis[0].tags(), "Release_Status"), Some("Failed"));
    assert_no_live_instances(&client, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_timeout_terminates_its_instance() {
    let Some(url) = packer_endpoint() else { return };
    let image = unique("slow");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\nsleep 60\n");
    let kdl = std::fs::read_to_string(dir.join("imgraph.kdl")).expect("read");
    common::write(
        &dir.join("imgraph.kdl"),
        &kdl.replace("timeout \"15m\"", "timeout \"1s\""),
    );
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("timed out"),
        "{}",
        output_text(&out)
    );

    let client = ec2(&url);
    assert_no_live_instances(&client, &image).await;
    let amis = amis_of(&client, &image).await;
    assert_eq!(tag(amis[0].tags(), "Release_Status"), Some("Failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_ami_is_planned_as_artifact_missing() {
    let Some(url) = packer_endpoint() else { return };
    let image = unique("gone");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\ntrue\n");
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));

    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    let ami = amis[0].image_id().expect("ami id").to_string();
    client
        .deregister_image()
        .image_id(&ami)
        .send()
        .await
        .expect("DeregisterImage");

    let plan = plan_json(&dir, &url).await;
    let build = plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"].as_str() == Some(format!("build:{image}").as_str()))
        .expect("build node")
        .clone();
    assert_eq!(build["action"], "run", "{build}");
    let reasons: Vec<&str> = build["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(reasons.contains(&"artifact-missing"), "{build}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_ami_tags_it_revoked_with_the_reason_and_undo_restores_it() {
    let Some(url) = packer_endpoint() else { return };
    let image = unique("rv");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\ntrue\n");
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));

    let target = format!("{image}@1.0.0");
    let out = run_imgraph(
        &dir,
        &url,
        &["revoke", &target, "--reason", "CVE-2026-0002"],
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1);
    assert_eq!(tag(amis[0].tags(), "Release_Status"), Some("Revoked"));
    assert_eq!(
        tag(amis[0].tags(), "imgraph:revoked-reason"),
        Some("CVE-2026-0002")
    );
    // The plan rebuilds it (nothing older to go back to), with reason `revoked`.
    let plan = plan_json(&dir, &url).await;
    let build = plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"].as_str() == Some(format!("build:{image}").as_str()))
        .expect("build node")
        .clone();
    assert_eq!(build["action"], "run", "{build}");
    assert_eq!(build["reasons"][0]["kind"], "revoked", "{build}");

    let out = run_imgraph(&dir, &url, &["revoke", "--undo", &target]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let amis = amis_of(&client, &image).await;
    assert_eq!(tag(amis[0].tags(), "Release_Status"), Some("Ready"));
    assert_eq!(tag(amis[0].tags(), "imgraph:revoked-reason"), None);
    let plan = plan_json(&dir, &url).await;
    assert_eq!(plan["summary"]["run"], 0, "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deregisters_amis_beyond_retain_and_deletes_their_snapshots() {
    let Some(url) = packer_endpoint() else { return };
    let image = unique("gc");
    let (_t, dir) = packer_project(&url, &image);
    common::append(&dir.join("imgraph.kdl"), "\nretain { keep 1; }\n");
    set_test_script(&dir, "#!/bin/sh\ntrue\n");
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let out = run_imgraph(&dir, &url, &["apply", "--force", &image]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 2);
    let old = amis
        .iter()
        .find(|a| tag(a.tags(), "imgraph:version") == Some("1.0.0"))
        .expect("1.0.0");
    let old_ami = old.image_id().expect("ami id").to_string();
    let snapshots: Vec<String> = old
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
        .map(str::to_owned)
        .collect();
    assert!(
        !snapshots.is_empty(),
        "moto gives the AMI a snapshot: {old:?}"
    );

    let out = run_imgraph(&dir, &url, &["gc", "--json"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("gc json");
    let removed: Vec<String> = doc["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["action"] == "remove")
        .flat_map(|v| v["removed"].as_array().cloned().unwrap_or_default())
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    let mut expected = vec![old_ami.clone()];
    expected.extend(snapshots.iter().cloned());
    assert_eq!(removed, expected, "{doc:#}");
    let left = amis_of(&client, &image).await;
    assert_eq!(left.len(), 1, "the older AMI is deregistered");
    assert_eq!(tag(left[0].tags(), "imgraph:version"), Some("1.0.1"));
    let found = client
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .expect("DescribeSnapshots");
    for s in &snapshots {
        assert!(
            !found
                .snapshots()
                .iter()
                .any(|f| f.snapshot_id() == Some(s.as_str())),
            "snapshot {s} is deleted"
        );
    }
    let plan = plan_json(&dir, &url).await;
    assert_eq!(plan["summary"]["run"], 0, "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_file_is_recovered_from_the_ami_tags() {
    let Some(url) = packer_endpoint() else { return };
    let image = unique("lost");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\ntrue\n");
    // Two environments: deliveries must not run again on a runner that lost its state.
    common::append(
        &dir.join("imgraph.kdl"),
        &format!(
            "environment \"staging\" {{ deliver \"{image}\" {{ run \"echo staged >> delivered.log\"; }} }}\n\
             environment \"production\" {{ after \"staging\"; deliver \"{image}\" {{ run \"echo live >> delivered.log\"; }} }}\n"
        ),
    );
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let amis = amis_of(&ec2(&url), &image).await;
    let tags = amis[0].tags();
    assert!(tag(tags, "imgraph:delivered:staging").is_some(), "{tags:?}");
    assert!(
        tag(tags, "imgraph:delivered:production").is_some(),
        "{tags:?}"
    );

    remove_state(&dir);
    let out = run_imgraph(&dir, &url, &["plan", "--detailed-exitcode"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing to do after recovery: {}",
        output_text(&out)
    );

    // `imgraph state recover` on an empty state rebuilds the registry from the same tags.
    remove_state(&dir);
    let out = run_imgraph(&dir, &url, &["state", "recover"]).await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("recovered {image} ")), "{text}");
    assert!(text.contains("(Ready)"), "{text}");
    let images = run_imgraph(&dir, &url, &["images", "--json"]).await;
    let v: Value = serde_json::from_slice(&images.stdout).expect("images json");
    assert_eq!(v["images"][0]["image"], image.as_str());
    assert_eq!(v["images"][0]["status"], "Ready");
    assert!(v["images"][0]["id"]
        .as_str()
        .unwrap_or("")
        .starts_with("ami-"));
}
