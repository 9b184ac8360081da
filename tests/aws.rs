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
    let url =
        std::env::var("IMGRAPH_TEST_EC2_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
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
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "imgraph-tests",
        ))
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

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
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
async fn instances_of(
    ec2: &Client,
    image: &str,
    purpose: Option<&str>,
    states: &[&str],
) -> Vec<Instance> {
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
    assert!(
        !tested.is_empty(),
        "no terminated test instance of {image}: was one ever launched?"
    );
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
            let Some(id) = i.instance_id().map(str::to_string) else {
                continue;
            };
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
            ec2.stop_instances()
                .instance_ids(&id)
                .send()
                .await
                .expect("StopInstances");
            seen.stopped_builds.push((id, user_data));
        }
        if seen.status_during_test.is_none() {
            let tests = instances_of(&ec2, &image, Some("test"), &["running"]).await;
            if let Some(t) = tests.first() {
                let amis = amis_of(&ec2, &image).await;
                let status = amis
                    .first()
                    .and_then(|a| tag(a.tags(), "Release_Status"))
                    .map(str::to_string);
                seen.status_during_test = Some(status.unwrap_or_else(|| "untagged".into()));
                seen.test_instance_types.push(
                    t.instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                );
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
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
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

/// examples/aws-packer's moto variant (`moto.kdl`, its Packer template without SSH since
/// moto's instances have no network) pointed at the test server, its image renamed to
/// `image`.
fn packer_project(url: &str, image: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = common::copy_project("examples/aws-packer");
    let kdl = std::fs::read_to_string(dir.join("moto.kdl")).expect("read moto.kdl");
    assert!(
        kdl.contains("endpoint \"http://127.0.0.1:5055\"") && kdl.contains("image \"base\""),
        "moto.kdl names moto's endpoint and the image `base`"
    );
    let kdl = kdl
        .replace("http://127.0.0.1:5055", url)
        .replace("image \"base\"", &format!("image \"{image}\""));
    common::write(&dir.join("imgraph.kdl"), &kdl);
    std::fs::remove_file(dir.join("moto.kdl")).expect("remove moto.kdl");
    (tmp, dir)
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

fn set_test_script(dir: &Path, script: &str) {
    common::write(&dir.join("tests/instance.sh"), script);
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
        .max_by_key(|i| {
            (
                i.creation_date().map(str::to_string),
                i.name().map(str::to_string),
            )
        })
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
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
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
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
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
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
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
async fn a_lost_state_file_is_recovered_from_the_ami_tags() {
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
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

// ---------------------------------------------------------------------------------------
// The provider through the library API, against the same server: these need nothing from
// the workspace (they call `AwsProvider` the way the executor and `gc` do).
// ---------------------------------------------------------------------------------------

use imgraph::exec::process::ProcessOutcome;
use imgraph::provider::aws::{AwsProvider, WaitSettings};
use imgraph::provider::{BuildRequest, Ledger, Origin, Provider, TestRequest};
use imgraph::state::{ReleaseStatus, State};
use tokio_util::sync::CancellationToken;

/// A provider on the test server; Packer gets moto's credentials through its environment.
fn lib_provider(url: &str) -> AwsProvider {
    AwsProvider::from_client(ec2(url))
        .with_endpoint(Some(url.to_string()))
        .with_packer_env(vec![
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ])
        .with_waits(WaitSettings {
            poll_initial: Duration::from_millis(50),
            poll_max: Duration::from_millis(200),
            ..WaitSettings::default()
        })
}

/// A loaded project and an open state with one run, as the executor would have them.
struct Lib {
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    project: imgraph::config::model::Project,
    ledger: Ledger,
}

impl Lib {
    fn open(tmp: Option<tempfile::TempDir>, dir: PathBuf) -> Lib {
        let project = imgraph::config::load(&dir).expect("load project");
        std::fs::create_dir_all(dir.join(".imgraph")).expect("mkdir");
        let state = State::open(&dir.join(".imgraph/state.db")).expect("state");
        let run = state.begin_run("apply", "{}").expect("run");
        Lib {
            _tmp: tmp,
            dir,
            project,
            ledger: Ledger {
                state: Arc::new(std::sync::Mutex::new(state)),
                run: Some(run),
            },
        }
    }

    fn open_entries(&self) -> Vec<imgraph::state::LedgerEntry> {
        self.ledger
            .state
            .lock()
            .expect("state")
            .ledger_open()
            .expect("ledger")
    }

    async fn build(
        &self,
        aws: &AwsProvider,
        image: &str,
        origin: &str,
        cancel: &CancellationToken,
    ) -> Result<String, String> {
        let img = self.project.image(image).expect("image");
        aws.build(BuildRequest {
            project: &self.project,
            image: img,
            node_id: &format!("build:{image}"),
            version: "1.0.0",
            key: "k-lib",
            origin: Origin::Artifact(origin.to_string()),
            inputs: &[],
            log: &self.dir.join("build.log"),
            work_dir: &self.dir,
            ledger: &self.ledger,
            cancel,
        })
        .await
        .map(|b| b.artifact_id)
        .map_err(|e| imgraph::exec::error_chain(&e))
    }

    async fn test(
        &self,
        aws: &AwsProvider,
        image: &str,
        ami: &str,
    ) -> Result<ProcessOutcome, String> {
        let img = self.project.image(image).expect("image");
        aws.test(TestRequest {
            project: &self.project,
            image: img,
            suite: &img.tests[0],
            node_id: &format!("test:{image}/{}", img.tests[0].name),
            artifact_id: ami,
            version: "1.0.0",
            inputs: &[],
            log: &self.dir.join("test.log"),
            work_dir: &self.dir,
            ledger: &self.ledger,
            cancel: &CancellationToken::new(),
        })
        .await
        .map_err(|e| imgraph::exec::error_chain(&e))
    }
}

fn packer_lib(url: &str, image: &str) -> Lib {
    let (tmp, dir) = packer_project(url, image);
    Lib::open(Some(tmp), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_packer_build_test_status_and_recovery_against_moto() {
    let Some(url) = endpoint() else { return };
    if !packer_available() {
        return;
    }
    let image = unique("libpk");
    let lib = packer_lib(&url, &image);
    set_test_script(
        &lib.dir,
        "#!/bin/sh\ncase \"$IMGRAPH_INSTANCE_ID\" in i-*) ;; *) exit 1 ;; esac\n",
    );
    let aws = lib_provider(&url);
    let client = ec2(&url);

    let origin = aws
        .resolve_source(
            &["amazon".to_string()],
            Some("amzn2-ami-hvm-*-x86_64-gp2"),
            &Default::default(),
        )
        .await
        .expect("resolve source");
    assert_eq!(origin, newest_amazon_linux(&client).await);

    let ami = lib
        .build(&aws, &image, &origin, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}",
                std::fs::read_to_string(lib.dir.join("build.log")).unwrap_or_default()
            )
        });
    assert!(ami.starts_with("ami-"), "{ami}");
    let log = std::fs::read_to_string(lib.dir.join("build.log")).expect("build log");
    assert!(
        log.contains(",artifact,0,id,"),
        "Packer's output goes to the node log:\n{log}"
    );
    assert!(
        lib.open_entries().is_empty(),
        "the packer ledger entry is closed"
    );

    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1);
    assert_eq!(amis[0].image_id(), Some(ami.as_str()));
    assert_eq!(tag(amis[0].tags(), "Release_Status"), Some("Candidate"));
    assert_eq!(tag(amis[0].tags(), "imgraph:key"), Some("k-lib"));

    let outcome = lib.test(&aws, &image, &ami).await.expect("test");
    assert_eq!(outcome, ProcessOutcome::Exited(0));
    assert!(
        lib.open_entries().is_empty(),
        "the test instance's ledger entry is closed"
    );
    assert_no_live_instances(&client, &image).await;

    let record = imgraph::state::ImageRecord {
        image: image.clone(),
        version: "1.0.0".into(),
        artifact_id: ami.clone(),
        provider: "aws".into(),
        key: "k-lib".into(),
        status: ReleaseStatus::Candidate,
        built_at: 0,
        run_id: None,
        environments: Vec::new(),
        holding: Vec::new(),
    };
    aws.set_status(&record, ReleaseStatus::Ready)
        .await
        .expect("set status");
    assert_eq!(
        tag(amis_of(&client, &image).await[0].tags(), "Release_Status"),
        Some("Ready")
    );

    // Tags-only changes go onto the AMI in place: set, changed, removed (DeleteTags);
    // imgraph's own tags stay.
    let tags = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let first = tags(&[("Team", "platform"), ("Cost", "cc-1")]);
    aws.set_tags(&record, &first, None).await.expect("set tags");
    let second = tags(&[("Team", "infra"), ("Owner", "ops")]);
    aws.set_tags(&record, &second, Some(&first))
        .await
        .expect("change tags");
    let now = amis_of(&client, &image).await;
    assert_eq!(now.len(), 1, "a tags change made no new AMI");
    let t = now[0].tags();
    assert_eq!(tag(t, "Team"), Some("infra"));
    assert_eq!(tag(t, "Owner"), Some("ops"));
    assert_eq!(tag(t, "Cost"), None, "a removed tag is deleted");
    assert_eq!(tag(t, "Release_Status"), Some("Ready"));
    assert_eq!(tag(t, "imgraph:key"), Some("k-lib"));

    assert!(aws.artifact_exists(&ami).await.expect("exists"));
    let found = aws
        .find_by_key(&image, "k-lib")
        .await
        .expect("find by key")
        .expect("found");
    assert_eq!(
        (found.ami_id.as_str(), found.version.as_str()),
        (ami.as_str(), "1.0.0")
    );
    assert_eq!(found.status.as_deref(), Some("Ready"));
    assert_eq!(
        aws.find_by_key(&image, "another-key")
            .await
            .expect("find by key"),
        None
    );
    let listed = aws.list_tagged_images().await.expect("list");
    assert!(
        listed.iter().any(|t| t.ami_id == ami && t.image == image),
        "{listed:?}"
    );

    client
        .deregister_image()
        .image_id(&ami)
        .send()
        .await
        .expect("DeregisterImage");
    assert!(!aws
        .artifact_exists(&ami)
        .await
        .expect("exists after deregistration"));
    assert_eq!(
        aws.find_by_key(&image, "k-lib").await.expect("find by key"),
        None
    );
    assert!(!aws
        .artifact_exists("ami-00000000deadbeef0")
        .await
        .expect("unknown ami"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_test_instances_are_terminated_after_failure_and_timeout() {
    let Some(url) = endpoint() else { return };
    let image = unique("libfail");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir).expect("mkdir");
    common::write(
        &dir.join("imgraph.kdl"),
        &format!(
            r#"imgraph version=1
provider "aws" {{ region "us-east-1"; endpoint "{url}"; }}
source "amazon-linux" {{ aws owner="amazon" name="amzn2-ami-hvm-*-x86_64-gp2"; }}
image "{image}" {{
    from "amazon-linux"
    build "ec2" {{ run "true"; }}
    test "fails" {{ run "exit 3"; timeout "1m"; }}
}}
image "{image}-slow" {{
    from "amazon-linux"
    build "ec2" {{ run "true"; }}
    test "hangs" {{ run "sleep 30"; timeout "1s"; }}
}}
"#
        ),
    );
    let lib = Lib::open(Some(tmp), dir);
    let aws = lib_provider(&url);
    let client = ec2(&url);
    let ami = newest_amazon_linux(&client).await;

    let failed = lib.test(&aws, &image, &ami).await.expect("test ran");
    assert_eq!(failed, ProcessOutcome::Exited(3));
    assert_no_live_instances(&client, &image).await;

    let slow = format!("{image}-slow");
    let timed_out = lib.test(&aws, &slow, &ami).await.expect("test ran");
    assert!(
        matches!(timed_out, ProcessOutcome::TimedOut(_)),
        "{timed_out:?}"
    );
    assert_no_live_instances(&client, &slow).await;
    assert!(lib.open_entries().is_empty());
}

/// The ec2 project used by the library-level ec2 tests.
fn ec2_lib(url: &str, image: &str) -> Lib {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir).expect("mkdir");
    common::write(
        &dir.join("imgraph.kdl"),
        &format!(
            r#"imgraph version=1
provider "aws" {{ region "us-east-1"; endpoint "{url}"; }}
source "amazon-linux" {{ aws owner="amazon" name="amzn2-ami-hvm-*-x86_64-gp2"; }}
image "{image}" {{
    from "amazon-linux"
    build "ec2" {{ run "echo one"; run "echo two"; }}
    instance {{ type "t3.nano"; }}
    test "smoke" {{ run "true"; }}
    tags {{ Team "lib"; }}
}}
"#
        ),
    );
    Lib::open(Some(tmp), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_ec2_build_images_the_stopped_instance_and_terminates_it() {
    let Some(url) = endpoint() else { return };
    let image = unique("libec2");
    let lib = ec2_lib(&url, &image);
    let aws = lib_provider(&url);
    let client = ec2(&url);
    let origin = newest_amazon_linux(&client).await;

    let stop = Arc::new(AtomicBool::new(false));
    let harness = tokio::spawn(harness(
        client.clone(),
        image.clone(),
        lib.dir.clone(),
        stop.clone(),
    ));
    let built = lib
        .build(&aws, &image, &origin, &CancellationToken::new())
        .await;
    stop.store(true, Ordering::SeqCst);
    let seen = harness.await.expect("harness");
    let ami = built.unwrap_or_else(|e| panic!("{e}\n{seen:?}"));

    assert_eq!(seen.stopped_builds.len(), 1, "{seen:?}");
    let script = &seen.stopped_builds[0].1;
    assert!(
        script.contains("echo one\necho two\nshutdown -h now\n"),
        "{script}"
    );
    let builds = instances_of(
        &client,
        &image,
        Some("build"),
        &["shutting-down", "terminated"],
    )
    .await;
    assert_eq!(builds.len(), 1);
    assert_eq!(
        builds[0].instance_type().map(|t| t.as_str()),
        Some("t3.nano")
    );
    assert_eq!(builds[0].image_id(), Some(origin.as_str()));
    let tags = builds[0].tags();
    assert_eq!(
        tag(tags, "imgraph:run"),
        lib.ledger.run.map(|r| r.to_string()).as_deref()
    );
    assert_eq!(tag(tags, "imgraph:purpose"), Some("build"));

    let amis = amis_of(&client, &image).await;
    assert_eq!(amis.len(), 1);
    assert_eq!(amis[0].image_id(), Some(ami.as_str()));
    assert_eq!(tag(amis[0].tags(), "Release_Status"), Some("Candidate"));
    assert_eq!(tag(amis[0].tags(), "Team"), Some("lib"));
    assert!(lib.open_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_ec2_build_terminates_its_instance() {
    let Some(url) = endpoint() else { return };
    let image = unique("libcancel");
    let lib = ec2_lib(&url, &image);
    let aws = lib_provider(&url);
    let client = ec2(&url);
    let origin = newest_amazon_linux(&client).await;

    // Ctrl-C once the build instance runs (nobody stops it: the build would wait 30 min).
    let cancel = CancellationToken::new();
    let watcher = {
        let (client, image, cancel) = (client.clone(), image.clone(), cancel.clone());
        tokio::spawn(async move {
            for _ in 0..300 {
                if !instances_of(&client, &image, Some("build"), &["running"])
                    .await
                    .is_empty()
                {
                    cancel.cancel();
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    };
    let err = lib
        .build(&aws, &image, &origin, &cancel)
        .await
        .expect_err("cancelled");
    assert!(
        watcher.await.expect("watcher"),
        "the build instance never ran"
    );
    assert!(err.contains("the run was cancelled"), "{err}");
    let live = instances_of(
        &client,
        &image,
        None,
        &["pending", "running", "stopping", "stopped"],
    )
    .await;
    assert!(live.is_empty(), "{live:?}");
    assert!(
        amis_of(&client, &image).await.is_empty(),
        "no AMI from a cancelled build"
    );
    assert!(lib.open_entries().is_empty());
}

/// Launches a bare instance carrying `tags`, as a killed run would have left it.
async fn leftover(client: &Client, ami: &str, tags: &[(&str, &str)]) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build();
    client
        .run_instances()
        .image_id(ami)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec)
        .send()
        .await
        .expect("RunInstances")
        .instances()[0]
        .instance_id()
        .expect("id")
        .to_string()
}

async fn state_of(client: &Client, id: &str) -> String {
    client
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()[0]
        .instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_are_terminated_from_the_ledger_and_from_tags() {
    let Some(url) = endpoint() else { return };
    let client = ec2(&url);
    let ami = newest_amazon_linux(&client).await;
    let project = unique("proj");
    // Scoped to this test's project: other tests' instances on the same server are spared.
    let aws = lib_provider(&url).with_project(project.clone());
    let image = unique("left");
    let token = unique("imgraph-tok");

    let by_id = leftover(&client, &ami, &[("imgraph:image", &image)]).await;
    let by_token = leftover(
        &client,
        &ami,
        &[("imgraph:image", &image), ("imgraph:token", &token)],
    )
    .await;
    let entry = |kind: &str, resource: String| imgraph::state::LedgerEntry {
        id: 1,
        run_id: Some(7),
        node_id: format!("test:{image}/smoke"),
        provider: "aws".into(),
        kind: kind.into(),
        resource,
        purpose: "test".into(),
        created_at: 0,
        destroyed_at: None,
    };
    aws.destroy_leftover(&entry("instance", by_id.clone()))
        .await
        .expect("by id");
    aws.destroy_leftover(&entry("instance", format!("pending:{token}")))
        .await
        .expect("by token");
    assert_eq!(state_of(&client, &by_id).await, "terminated");
    assert_eq!(state_of(&client, &by_token).await, "terminated");
    // Already gone is fine: `gc` may retry an entry.
    aws.destroy_leftover(&entry("instance", by_id.clone()))
        .await
        .expect("again");
    aws.destroy_leftover(&entry("instance", "i-00000000deadbeef0".into()))
        .await
        .expect("unknown id");

    let killed_run = leftover(
        &client,
        &ami,
        &[
            ("imgraph:run", "41"),
            ("imgraph:purpose", "test"),
            ("imgraph:project", &project),
        ],
    )
    .await;
    let current_run = leftover(
        &client,
        &ami,
        &[
            ("imgraph:run", "42"),
            ("imgraph:purpose", "build"),
            ("imgraph:project", &project),
        ],
    )
    .await;
    let terminated = aws
        .terminate_tagged_leftovers(Some(42))
        .await
        .expect("leftovers");
    assert_eq!(terminated, vec![killed_run.clone()]);
    assert_eq!(state_of(&client, &killed_run).await, "terminated");
    assert_eq!(state_of(&client, &current_run).await, "running");
    assert_eq!(
        aws.terminate_tagged_leftovers(None).await.expect("all"),
        vec![current_run.clone()]
    );
}
