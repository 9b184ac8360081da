//! Shared by the AWS suites (`tests/aws_cli.rs`, `tests/aws_provider.rs`): the EC2-compatible
//! test server (moto) on loopback, an SDK client for it, and what the harness reads back
//! through the EC2 API (AMI tags, `Release_Status`, instance states).
//!
//! The server's URL comes from `IMGRAPH_TEST_EC2_ENDPOINT` (default
//! `http://127.0.0.1:5055`; `bash scripts/moto.sh` starts one). When it does not answer,
//! the tests fail under CI (`CI` set) and otherwise print a note and return. Tests share
//! the server, so each uses its own image name and only looks at resources tagged with it.
//!
//! The harness plays two parts moto cannot: it powers off the `ec2` build instance (moto
//! never runs user data, so the instance would never stop by itself) by calling
//! StopInstances on instances tagged `imgraph:purpose=build`, and it holds each test
//! command until it has seen the AMI's status while the test instance runs.
#![allow(dead_code)]

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, Image, Instance, InstanceAttributeName};
use aws_sdk_ec2::Client;

use crate::common;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:5055";

/// The test server's URL, or `None` (with a note) when it is not running outside CI.
pub fn endpoint() -> Option<String> {
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
/// The server's endpoint when the packer CLI is installed too (under CI both must be there:
/// a missing one fails the test; elsewhere the test is skipped with a note).
pub fn packer_endpoint() -> Option<String> {
    let url = endpoint()?;
    packer_available().then_some(url)
}

pub fn packer_available() -> bool {
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
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub fn ec2(url: &str) -> Client {
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

pub fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

pub fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Self-owned AMIs tagged `imgraph:image=IMAGE` (any state).
pub async fn amis_of(ec2: &Client, image: &str) -> Vec<Image> {
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
pub async fn instances_of(
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

pub async fn assert_no_live_instances(ec2: &Client, image: &str) {
    let live = instances_of(ec2, image, None, &["pending", "running"]).await;
    let ids: Vec<_> = live.iter().filter_map(|i| i.instance_id()).collect();
    assert!(ids.is_empty(), "instances of {image} left running: {ids:?}");
    let tested = instances_of(ec2, image, Some("test"), &["shutting-down", "terminated"]).await;
    assert!(
        !tested.is_empty(),
        "no terminated test instance of {image}: was one ever launched?"
    );
}

/// Plays the instance's shutdown for `ec2` builds and releases test commands (which wait
/// for the file `released` in the project) once the AMI's status was read.
pub async fn harness(ec2: Client, image: String, project: PathBuf, stop: Arc<AtomicBool>) -> Seen {
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

/// What the harness saw while `imgraph apply` ran.
#[derive(Debug, Default)]
pub struct Seen {
    /// `Release_Status` of the AMI while its test instance was running.
    pub status_during_test: Option<String>,
    /// Build instances it powered off, with their user data (decoded).
    pub stopped_builds: Vec<(String, String)>,
    pub test_instance_types: Vec<String>,
}

pub fn decode_base64(text: &str) -> String {
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

/// examples/aws-packer's moto variant (`moto.kdl`, its Packer template without SSH since
/// moto's instances have no network) pointed at the test server, its image renamed to
/// `image`.
pub fn packer_project(url: &str, image: &str) -> (tempfile::TempDir, PathBuf) {
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

pub fn set_test_script(dir: &Path, script: &str) {
    common::write(&dir.join("tests/instance.sh"), script);
}

/// The newest available `amzn2-ami-hvm-*-x86_64-gp2` AMI owned by amazon, found here
/// independently of imgraph: latest creation date, then the later name.
pub async fn newest_amazon_linux(ec2: &Client) -> String {
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
