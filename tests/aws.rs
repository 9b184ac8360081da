//! The `aws` provider end to end through the real binary, against an EC2-compatible server
//! (moto) on loopback and the real Packer CLI.
//!
//! The server's URL comes from `IMGRAPH_TEST_EC2_ENDPOINT` (default
//! `http://127.0.0.1:5055`; `bash scripts/moto.sh` starts one). When it does not answer,
//! the tests fail under CI (`CI` set) and otherwise print a note and return. Tests share
//! the server, so each uses its own image name and only looks at resources tagged with it.
//!
//! The harness reads everything back through the EC2 API with the SDK (AMI tags,
//! `Release_Status`, instance states) and plays two parts moto cannot: it powers off the
//! `ec2` build instance (moto never runs user data, so the instance would never stop by
//! itself) by calling StopInstances on instances tagged `imgraph:purpose=build`, and it
//! holds each test command until it has seen the AMI's status while the test instance runs.
#![cfg(feature = "aws")]

mod common;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, Image, Instance, InstanceAttributeName};
use aws_sdk_ec2::Client;
use serde_json::Value;

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:5055";

/// The test server's URL, or `None` (with a note) when it is not running outside CI.
fn endpoint() -> Option<String> {
    let url = std::env::var("IMGRAPH_TEST_EC2_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
    let host_port = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(url);
    }
    if std::env::var_os("CI").is_some() {
        panic!("the EC2 test server is not reachable at {url}: start it with `bash scripts/moto.sh` before the tests");
    }
    eprintln!("note: skipping this AWS test: no EC2 test server answers at {url} (start one with `bash scripts/moto.sh`)");
    None
}

/// Whether the Packer CLI is installed (required under CI).
fn packer_available() -> bool {
    let found = std::process::Command::new("packer")
        .arg("version")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("the packer CLI is not installed: `apt-get install -y packer` (scripts/test.sh does this)");
        }
        eprintln!("note: skipping this Packer test: the packer CLI is not installed");
    }
    found
}

/// A name no other test (or earlier run against the same server) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn ec2(url: &str) -> Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "imgraph-tests"))
        .endpoint_url(url)
        .build();
    Client::from_conf(conf)
}

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
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials"))
        .env("CHECKPOINT_DISABLE", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .timeout(Duration::from_secs(300));
    cmd
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Self-owned AMIs tagged `imgraph:image=IMAGE` (any state).
async fn amis_of(ec2: &Client, image: &str) -> Vec<Image> {
    ec2.describe_images()
        .owners("self")
        .filters(filter("tag:imgraph:image", &[image]))
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .to_vec()
}

/// Instances tagged `imgraph:image=IMAGE` that carry `imgraph:purpose`, in `states`.
async fn instances_of(ec2: &Client, image: &str, purpose: Option<&str>, states: &[&str]) -> Vec<Instance> {
    let mut call = ec2
        .describe_instances()
        .filters(filter("tag:imgraph:image", &[image]))
        .filters(filter("instance-state-name", states))
        .filters(filter("tag-key", &["imgraph:purpose"]));
    if let Some(p) = purpose {
        call = call.filters(filter("tag:imgraph:purpose", &[p]));
    }
    call.send()
        .await
        .expect("DescribeInstances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

async fn assert_no_live_instances(ec2: &Client, image: &str) {
    let live = instances_of(ec2, image, None, &["pending", "running"]).await;
    let ids: Vec<_> = live.iter().filter_map(|i| i.instance_id()).collect();
    assert!(ids.is_empty(), "instances of {image} left running: {ids:?}");
    let tested = instances_of(ec2, image, Some("test"), &["shutting-down", "terminated"]).await;
    assert!(!tested.is_empty(), "no terminated test instance of {image}: was one ever launched?");
}

/// What the harness saw while `imgraph apply` ran.
#[derive(Debug, Default)]
struct Seen {
    /// `Release_Status` of the AMI while its test instance was running.
    status_during_test: Option<String>,
    /// Build instances it powered off, with their user data (decoded).
    stopped_builds: Vec<(String, String)>,
    test_instance_types: Vec<String>,
}

/// Plays the instance's shutdown for `ec2` builds and releases test commands (which wait
/// for the file `released` in the project) once the AMI's status was read.
async fn harness(ec2: Client, image: String, project: PathBuf, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::SeqCst) {
        for i in instances_of(&ec2, &image, Some("build"), &["running"]).await {
            let Some(id) = i.instance_id().map(str::to_string) else { continue };
            if seen.stopped_builds.iter().any(|(s, _)| *s == id) {
                continue;
            }
            let attr = ec2
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(InstanceAttributeName::UserData)
                .send()
                .await
                .expect("DescribeInstanceAttribute");
            let user_data = attr
                .user_data()
                .and_then(|u| u.value())
                .map(decode_base64)
                .unwrap_or_default();
            // The user data would end in `shutdown -h now`; moto runs none of it.
            ec2.stop_instances().instance_ids(&id).send().await.expect("StopInstances");
            seen.stopped_builds.push((id, user_data));
        }
        if seen.status_during_test.is_none() {
            let tests = instances_of(&ec2, &image, Some("test"), &["running"]).await;
            if let Some(t) = tests.first() {
                let amis = amis_of(&ec2, &image).await;
                let status = amis.first().and_then(|a| tag(a.tags(), "Release_Status")).map(str::to_string);
                seen.status_during_test = Some(status.unwrap_or_else(|| "untagged".into()));
                seen.test_instance_types
                    .push(t.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default());
                std::fs::write(project.join("released"), b"").expect("release the test");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

fn decode_base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else { continue };
        bits = (bits << 6) | v as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `imgraph apply` while the harness plays its parts; returns the apply's output and
/// what the harness saw.
async fn apply_with_harness(dir: &Path, url: &str, image: &str) -> (std::process::Output, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(harness(ec2(url), image.to_string(), dir.to_path_buf(), stop.clone()));
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
    format!(
        "#!/bin/sh\nset -eu\nwhile [ ! -f released ]; do sleep 0.1; done\n{body}\n"
    )
}

/// examples/aws-packer pointed at the test server, its image renamed to `image`, the
/// Packer template without SSH (moto's instances have no network).
fn packer_project(url: &str, image: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = common::copy_project("examples/aws-packer");
    let kdl = std::fs::read_to_string(dir.join("imgraph.kdl")).expect("read imgraph.kdl");
    let endpoint_line = kdl
        .lines()
        .find(|l| l.trim_start().starts_with("// endpoint"))
        .expect("the example shows an optional endpoint")
        .to_string();
    let kdl = kdl
        .replace(&endpoint_line, &format!("    endpoint \"{url}\""))
        .replace("image \"base\"", &format!("image \"{image}\""));
    common::write(&dir.join("imgraph.kdl"), &kdl);

    let path = dir.join("packer/base.json");
    let mut template: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read template")).expect("json");
    let builder = &mut template["builders"][0];
    builder["communicator"] = Value::from("none");
    builder["skip_region_validation"] = Value::from(true);
    builder["skip_metadata_api_check"] = Value::from(true);
    if let Some(obj) = template.as_object_mut() {
        obj.remove("provisioners");
    }
    common::write(&path, &serde_json::to_string_pretty(&template).expect("json"));
    (tmp, dir)
}

fn set_test_script(dir: &Path, script: &str) {
    common::write(&dir.join("tests/instance.sh"), script);
}

fn plan_json(dir: &Path, url: &str) -> Value {
    let out = imgraph_aws(dir, url).args(["plan", "--json"]).output().expect("run plan");
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("plan json")
}

/// The newest available `amzn2-ami-hvm-*-x86_64-gp2` AMI owned by amazon, found here
/// independently of imgraph: latest creation date, then the later name.
async fn newest_amazon_linux(ec2: &Client) -> String {
    let images = ec2
        .describe_images()
        .owners("amazon")
        .filters(filter("name", &["amzn2-ami-hvm-*-x86_64-gp2"]))
        .filters(filter("state", &["available"]))
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .to_vec();
    images
        .iter()
        .max_by_key(|i| (i.creation_date().map(str::to_string), i.name().map(str::to_string)))
        .and_then(|i| i.image_id())
        .expect("moto ships Amazon Linux 2 AMIs")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amazon_linux_source_resolves_to_the_newest_matching_ami() {
    let Some(url) = endpoint() else { return };
    let image = unique("src");
    let (_t, dir) = packer_project(&url, &image);
    let expected = newest_amazon_linux(&ec2(&url)).await;
    let plan = tokio::task::spawn_blocking({
        let (dir, url) = (dir.clone(), url.clone());
        move || plan_json(&dir, &url)
    })
    .await
    .expect("plan thread");
    let sources = plan["sources"].as_array().expect("sources in plan json");
    let source = sources
        .iter()
        .find(|s| s["name"] == "amazon-linux")
        .unwrap_or_else(|| panic!("amazon-linux not in {sources:?}"));
    assert_eq!(source["id"], Value::from(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packer_build_is_tagged_tested_on_a_fresh_instance_and_marked_ready() {
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
    let image = unique("pk");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(
        &dir,
        &held_test(r#"case "$IMGRAPH_INSTANCE_ID" in i-*) ;; *) exit 1 ;; esac; test -n "$IMGRAPH_INSTANCE_IP""#),
    );
    let (out, seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(seen.status_during_test.as_deref(), Some("Candidate"), "{seen:?}");
    assert_eq!(seen.test_instance_types, vec!["t3.micro".to_string()]);

    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1, "one AMI per build");
    let tags = amis[0].tags();
    assert_eq!(tag(tags, "Release_Status"), Some("Ready"));
    assert_eq!(tag(tags, "imgraph:version"), Some("1.0.0"));
    assert_eq!(tag(tags, "Name"), Some(format!("{image}-1.0.0").as_str()));
    assert_eq!(tag(tags, "Team"), Some("platform"));
    assert!(tag(tags, "imgraph:key").is_some_and(|k| !k.is_empty()), "{tags:?}");
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
    common::write(&dir.join("tests/smoke.sh"), &held_test(r#"test -n "$IMGRAPH_INSTANCE_ID""#));
    let (out, seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}\n{seen:?}", output_text(&out));

    assert_eq!(seen.stopped_builds.len(), 1, "{seen:?}");
    let script = &seen.stopped_builds[0].1;
    assert!(script.starts_with("#!/bin/sh\nset -e\n"), "{script}");
    let motd = script.find("echo built-by-imgraph > /etc/motd\n").expect("first step in user data");
    let nginx = script.find("yum -y install nginx\n").expect("second step in user data");
    assert!(motd < nginx, "steps keep their order: {script}");
    assert!(script.ends_with("shutdown -h now\n"), "{script}");
    assert_eq!(seen.status_during_test.as_deref(), Some("Candidate"), "{seen:?}");
    assert_eq!(seen.test_instance_types, vec!["t3.small".to_string()]);

    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1);
    let tags = amis[0].tags();
    assert_eq!(tag(tags, "Release_Status"), Some("Ready"));
    assert_eq!(tag(tags, "imgraph:version"), Some("2.1.0"));
    assert_eq!(tag(tags, "Team"), Some("web"));
    let builds = instances_of(&client, &image, Some("build"), &["shutting-down", "terminated"]).await;
    assert_eq!(builds.len(), 1, "the build instance is terminated after imaging");
    assert_no_live_instances(&client, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_marks_the_ami_failed_and_terminates_its_instance() {
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
    let image = unique("fail");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\necho 'the service did not answer' >&2\nexit 3\n");
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
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
    let image = unique("slow");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\nsleep 60\n");
    let kdl = std::fs::read_to_string(dir.join("imgraph.kdl")).expect("read");
    common::write(&dir.join("imgraph.kdl"), &kdl.replace("timeout \"15m\"", "timeout \"1s\""));
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("timed out"), "{}", output_text(&out));

    let client = ec2(&url);
    assert_no_live_instances(&client, &image).await;
    let amis = amis_of(&client, &image).await;
    assert_eq!(tag(amis[0].tags(), "Release_Status"), Some("Failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_ami_is_planned_as_artifact_missing() {
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
    let image = unique("gone");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\ntrue\n");
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));

    let client = ec2(&url);
    let amis = amis_of(&client, &image).await;
    let ami = amis[0].image_id().expect("ami id").to_string();
    client.deregister_image().image_id(&ami).send().await.expect("DeregisterImage");

    let plan = tokio::task::spawn_blocking({
        let (dir, url) = (dir.clone(), url.clone());
        move || plan_json(&dir, &url)
    })
    .await
    .expect("plan thread");
    let build = plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == Value::from(format!("build:{image}")))
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
async fn a_lost_state_file_is_recovered_from_the_ami_tags() {
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
    let image = unique("lost");
    let (_t, dir) = packer_project(&url, &image);
    set_test_script(&dir, "#!/bin/sh\ntrue\n");
    let (out, _seen) = apply_with_harness(&dir, &url, &image).await;
    assert!(out.status.success(), "{}", output_text(&out));

    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = dir.join(".imgraph").join(name);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove state");
        }
    }
    let out = tokio::task::spawn_blocking({
        let (dir, url) = (dir.clone(), url.clone());
        move || {
            imgraph_aws(&dir, &url)
                .args(["plan", "--detailed-exitcode"])
                .output()
                .expect("run plan")
        }
    })
    .await
    .expect("plan thread");
    assert_eq!(out.status.code(), Some(0), "nothing to do after recovery: {}", output_text(&out));
}
