//! The `aws` provider through the library API, against the EC2-compatible test server
//! (moto) of `tests/common/aws.rs`: these need nothing from the workspace (they call
//! `AwsProvider` the way the executor and `gc` do).
#![cfg(feature = "aws")]

#[path = "common/aws.rs"]
mod aws;
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws::*;
use aws_sdk_ec2::Client;
use imgraph::process::ProcessOutcome;
use imgraph::provider::aws::{AwsProvider, WaitSettings};
use imgraph::provider::{BuildRequest, Job, Ledger, Origin, Provider, TestRequest};
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
                in_run_folder: false,
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
            image: img,
            node_id: &imgraph::graph::NodeId::build(image),
            version: "1.0.0",
            key: "k-lib",
            origin: Origin::Artifact(origin.to_string()),
            inputs: &[],
            job: Job {
                project: &self.project,
                log: &self.dir.join("build.log"),
                work_dir: &self.dir,
                ledger: &self.ledger,
                cancel,
            },
        })
        .await
        .map(|b| b.artifact_id)
        .map_err(|e| imgraph::text::error_chain(&e))
    }

    async fn test(
        &self,
        aws: &AwsProvider,
        image: &str,
        ami: &str,
    ) -> Result<ProcessOutcome, String> {
        let img = self.project.image(image).expect("image");
        aws.test(TestRequest {
            image: img,
            suite: &img.tests[0],
            node_id: &imgraph::graph::NodeId::test(image, &img.tests[0].name),
            artifact_id: ami,
            version: "1.0.0",
            inputs: &[],
            job: Job {
                project: &self.project,
                log: &self.dir.join("test.log"),
                work_dir: &self.dir,
                ledger: &self.ledger,
                cancel: &CancellationToken::new(),
            },
        })
        .await
        .map_err(|e| imgraph::text::error_chain(&e))
    }
}

fn packer_lib(url: &str, image: &str) -> Lib {
    let (tmp, dir) = packer_project(url, image);
    Lib::open(Some(tmp), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_packer_build_test_status_and_recovery_against_moto() {
    let Some(url) = packer_endpoint() else { return };
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

    let record = imgraph::state::ImageVersion {
        image: image.clone(),
        version: "1.0.0".into(),
        artifact_id: ami.clone(),
        provider: "aws".into(),
        key: "k-lib".into(),
        status: ReleaseStatus::Candidate,
        built_at: 0,
        run: None,
        origin: None,
        revoked_reason: None,
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
