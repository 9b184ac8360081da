//! The AWS provider against scripted EC2 answers: throttling and 5xx are retried with
//! backoff up to the configured attempts, an authorisation failure names the action and
//! the resource, and a wait that never ends times out clearly and still terminates the
//! instance.
//!
//! The script is served by a small HTTP server on loopback rather than injected into the
//! SDK, so the SDK's real retry classifiers see real status codes and EC2 error documents.
#![cfg(feature = "aws")]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use imgraph::provider::aws::{AwsProvider, RetrySettings, WaitSettings};
use imgraph::provider::{Job, Ledger, Provider, TestRequest};
use imgraph::state::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Answers per EC2 action, in order; the last answer of an action repeats.
#[derive(Default)]
struct Script {
    answers: Mutex<HashMap<String, VecDeque<(u16, String)>>>,
    /// (action, form body) of every request received.
    seen: Mutex<Vec<(String, String)>>,
}

impl Script {
    fn on(self: &Arc<Self>, action: &str, answers: Vec<(u16, String)>) -> Arc<Self> {
        self.answers
            .lock()
            .unwrap()
            .insert(action.to_string(), answers.into());
        self.clone()
    }

    fn calls(&self, action: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn answer(&self, action: &str) -> (u16, String) {
        let mut all = self.answers.lock().unwrap();
        match all.get_mut(action) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap(),
            Some(q) if q.len() == 1 => q[0].clone(),
            _ => (
                400,
                error_doc(
                    "InvalidAction",
                    &format!("the script has no answer for {action}"),
                ),
            ),
        }
    }
}

fn error_doc(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>req-1</RequestID></Response>"
    )
}

fn ok_doc(action: &str, inner: &str) -> (u16, String) {
    (
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NS}\">\
             <requestId>req-1</requestId>{inner}</{action}Response>"
        ),
    )
}

fn images_doc(images: &[(&str, &str, &str)]) -> (u16, String) {
    let items: String = images
        .iter()
        .map(|(id, name, date)| {
            format!(
                "<item><imageId>{id}</imageId><name>{name}</name><imageState>available</imageState>\
                 <creationDate>{date}</creationDate></item>"
            )
        })
        .collect();
    ok_doc("DescribeImages", &format!("<imagesSet>{items}</imagesSet>"))
}

fn instance_item(id: &str, state: &str) -> String {
    let code = match state {
        "pending" => 0,
        "running" => 16,
        "shutting-down" => 32,
        _ => 80,
    };
    format!(
        "<item><instanceId>{id}</instanceId><imageId>ami-123</imageId>\
         <instanceState><code>{code}</code><name>{state}</name></instanceState></item>"
    )
}

fn run_instances_doc(id: &str) -> (u16, String) {
    ok_doc(
        "RunInstances",
        &format!(
            "<reservationId>r-1</reservationId><ownerId>123456789012</ownerId>\
             <instancesSet>{}</instancesSet>",
            instance_item(id, "pending")
        ),
    )
}

fn describe_instances_doc(instances: &[(&str, &str)]) -> (u16, String) {
    let reservations: String = instances
        .iter()
        .map(|(id, state)| {
            format!(
                "<item><reservationId>r-1</reservationId><instancesSet>{}</instancesSet></item>",
                instance_item(id, state)
            )
        })
        .collect();
    ok_doc(
        "DescribeInstances",
        &format!("<reservationSet>{reservations}</reservationSet>"),
    )
}

fn terminate_doc(id: &str) -> (u16, String) {
    ok_doc(
        "TerminateInstances",
        &format!(
            "<instancesSet><item><instanceId>{id}</instanceId>\
             <currentState><code>32</code><name>shutting-down</name></currentState>\
             <previousState><code>0</code><name>pending</name></previousState></item></instancesSet>"
        ),
    )
}

fn throttled() -> (u16, String) {
    (
        503,
        error_doc("RequestLimitExceeded", "Request limit exceeded."),
    )
}

/// Serves the script on a loopback port; returns its URL.
async fn serve(script: Arc<Script>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            tokio::spawn(handle(sock, script));
        }
    });
    url
}

async fn handle(mut sock: tokio::net::TcpStream, script: Arc<Script>) {
    // One request per connection (`Connection: close`): enough for the SDK, simple here.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..]).to_string();
    let action = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("")
        .to_string();
    script.seen.lock().unwrap().push((action.clone(), body));
    let (status, doc) = script.answer(&action);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml;charset=UTF-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{doc}",
        doc.len()
    );
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// A provider talking to `url` with `attempts` attempts per call and tiny backoff.
fn provider(url: &str, attempts: u32) -> AwsProvider {
    let retry = RetrySettings {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        attempt_timeout: Duration::from_secs(10),
    };
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(url)
        .retry_config(retry.retry_config())
        .timeout_config(retry.timeout_config())
        .build();
    AwsProvider::from_client(aws_sdk_ec2::Client::from_conf(conf)).with_waits(WaitSettings {
        launch_timeout: Duration::from_millis(300),
        build_timeout: Duration::from_millis(300),
        image_timeout: Duration::from_millis(300),
        poll_initial: Duration::from_millis(5),
        poll_max: Duration::from_millis(20),
    })
}

fn owners() -> Vec<String> {
    vec!["amazon".to_string()]
}

#[tokio::test]
async fn throttling_is_retried_until_ec2_answers() {
    let script = Arc::new(Script::default()).on(
        "DescribeImages",
        vec![
            throttled(),
            throttled(),
            throttled(),
            images_doc(&[
                (
                    "ami-old",
                    "amzn2-ami-hvm-2.0.2018-x86_64-gp2",
                    "2018-08-10T00:00:00.000Z",
                ),
                (
                    "ami-new",
                    "amzn2-ami-hvm-2.0.2024-x86_64-gp2",
                    "2024-01-01T00:00:00.000Z",
                ),
            ]),
        ],
    );
    let aws = provider(&serve(script.clone()).await, 5);
    let ami = aws
        .resolve_source(
            &owners(),
            Some("amzn2-ami-hvm-*-x86_64-gp2"),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(ami, "ami-new");
    assert_eq!(
        script.calls("DescribeImages").len(),
        4,
        "3 throttled answers, then the real one"
    );
    let body = &script.calls("DescribeImages")[3];
    assert!(body.contains("Owner.1=amazon"), "{body}");
    assert!(body.contains("amzn2-ami-hvm-%2A-x86_64-gp2"), "{body}");
}

#[tokio::test]
async fn server_errors_are_retried() {
    let script = Arc::new(Script::default()).on(
        "DescribeImages",
        vec![
            (
                500,
                error_doc("InternalError", "An internal error has occurred."),
            ),
            (503, error_doc("Unavailable", "The server is overloaded.")),
            images_doc(&[("ami-1", "base-1.0.0", "2024-01-01T00:00:00.000Z")]),
        ],
    );
    let aws = provider(&serve(script.clone()).await, 5);
    let ami = aws
        .resolve_source(&owners(), None, &Default::default())
        .await
        .unwrap();
    assert_eq!(ami, "ami-1");
    assert_eq!(script.calls("DescribeImages").len(), 3);
}

#[tokio::test]
async fn retries_stop_at_the_configured_attempts() {
    let script = Arc::new(Script::default()).on("DescribeImages", vec![throttled()]);
    let aws = provider(&serve(script.clone()).await, 3);
    let err = aws
        .resolve_source(&owners(), Some("amzn2-*"), &Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(script.calls("DescribeImages").len(), 3, "max_attempts is 3");
    assert!(err.contains("ec2:DescribeImages"), "{err}");
    assert!(
        err.contains("RequestLimitExceeded: Request limit exceeded."),
        "{err}"
    );
    assert!(err.contains("owned by amazon named `amzn2-*`"), "{err}");
}

#[tokio::test]
async fn no_matching_source_names_the_query() {
    let script = Arc::new(Script::default()).on("DescribeImages", vec![images_doc(&[])]);
    let aws = provider(&serve(script.clone()).await, 3);
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("Release_Status".to_string(), "Ready".to_string());
    let err = aws
        .resolve_source(&["self".to_string()], Some("base-*"), &tags)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "find a source AMI: no available image owned by self named `base-*` tagged {Release_Status=Ready}"
    );
    let body = &script.calls("DescribeImages")[0];
    assert!(body.contains("tag%3ARelease_Status"), "{body}");
}

#[tokio::test]
async fn an_authorisation_failure_on_tagging_names_the_action_and_the_ami() {
    let script = Arc::new(Script::default()).on(
        "CreateTags",
        vec![(
            403,
            error_doc(
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
            ),
        )],
    );
    let aws = provider(&serve(script.clone()).await, 5);
    let err = aws
        .set_status(
            &imgraph::state::ImageVersion {
                image: "web".into(),
                version: "1.0.0".into(),
                artifact_id: "ami-9".into(),
                provider: "aws".into(),
                key: "k".into(),
                status: imgraph::state::ReleaseStatus::Candidate,
                built_at: 0,
                run: None,
                origin: None,
                revoked_reason: None,
            },
            imgraph::state::ReleaseStatus::Ready,
        )
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "not authorised to call ec2:CreateTags on ami-9: You are not authorized to perform this operation."
    );
    assert_eq!(
        script.calls("CreateTags").len(),
        1,
        "an authorisation failure is not retried"
    );
}

/// A project with one aws image and one test suite, and an open state, in a temp folder.
struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    project: imgraph::config::model::Project,
    state: Arc<Mutex<State>>,
    run: i64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let project = imgraph::config::load_str(
        &root,
        "imgraph.kdl",
        r#"imgraph version=1
provider "aws" { region "us-east-1"; }
source "al2" { aws owner="amazon" name="amzn2-ami-hvm-*-x86_64-gp2"; }
image "web" {
    from "al2"
    build "ec2" { run "true"; }
    test "smoke" { run "true"; timeout "1m"; }
}
"#,
    )
    .unwrap();
    let state = State::open(&root.join("state.db")).unwrap();
    let run = state.begin_run("apply", "{}").unwrap();
    Fixture {
        _dir: dir,
        root,
        project,
        state: Arc::new(Mutex::new(state)),
        run,
    }
}

async fn run_test(
    aws: &AwsProvider,
    f: &Fixture,
) -> Result<imgraph::process::ProcessOutcome, String> {
    let image = f.project.image("web").unwrap();
    let ledger = Ledger {
        state: f.state.clone(),
        run: Some(f.run),
        in_run_folder: false,
    };
    let log = f.root.join("test.log");
    aws.test(TestRequest {
        image,
        suite: &image.tests[0],
        node_id: &imgraph::graph::NodeId::test("web", "smoke"),
        artifact_id: "ami-123",
        version: "1.0.0",
        inputs: &[],
        job: Job {
            project: &f.project,
            log: &log,
            work_dir: &f.root,
            ledger: &ledger,
            cancel: &CancellationToken::new(),
        },
    })
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_unauthorised_launch_names_run_instances_and_the_ami_and_leaves_no_ledger_entry() {
    let script = Arc::new(Script::default())
        .on(
            "RunInstances",
            vec![(
                403,
                error_doc(
                    "UnauthorizedOperation",
                    "You are not authorized to perform this operation.",
                ),
            )],
        )
        .on("DescribeInstances", vec![describe_instances_doc(&[])]);
    let aws = provider(&serve(script.clone()).await, 5);
    let f = fixture();
    let err = run_test(&aws, &f).await.unwrap_err();
    assert_eq!(
        err,
        "not authorised to call ec2:RunInstances on ami-123: You are not authorized to perform this operation."
    );
    assert_eq!(script.calls("RunInstances").len(), 1);
    // The clean-up looked for an instance carrying the launch's token (none exists).
    let lookups = script.calls("DescribeInstances");
    assert_eq!(lookups.len(), 1);
    assert!(
        lookups[0].contains("tag%3Aimgraph%3Atoken"),
        "{}",
        lookups[0]
    );
    assert!(f.state.lock().unwrap().ledger_open().unwrap().is_empty());
}

#[tokio::test]
async fn an_instance_that_never_starts_times_out_and_is_terminated() {
    let script = Arc::new(Script::default())
        .on("RunInstances", vec![run_instances_doc("i-0stuck")])
        .on(
            "DescribeInstances",
            vec![describe_instances_doc(&[("i-0stuck", "pending")])],
        )
        .on("TerminateInstances", vec![terminate_doc("i-0stuck")]);
    let aws = provider(&serve(script.clone()).await, 5);
    let f = fixture();
    let err = run_test(&aws, &f).await.unwrap_err();
    assert_eq!(
        err,
        "timed out after 300ms waiting for instance i-0stuck to start (it is pending)"
    );
    let run = &script.calls("RunInstances")[0];
    for tag in ["imgraph%3Arun", "imgraph%3Apurpose", "ClientToken="] {
        assert!(run.contains(tag), "RunInstances lacks {tag}: {run}");
    }
    let terminated = script.calls("TerminateInstances");
    assert_eq!(terminated.len(), 1);
    assert!(
        terminated[0].contains("InstanceId.1=i-0stuck"),
        "{}",
        terminated[0]
    );
    assert!(f.state.lock().unwrap().ledger_open().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_termination_keeps_the_ledger_entry_for_gc() {
    let script = Arc::new(Script::default())
        .on("RunInstances", vec![run_instances_doc("i-0kept")])
        .on(
            "DescribeInstances",
            vec![describe_instances_doc(&[("i-0kept", "pending")])],
        )
        .on(
            "TerminateInstances",
            vec![(
                403,
                error_doc(
                    "UnauthorizedOperation",
                    "You are not authorized to perform this operation.",
                ),
            )],
        );
    let aws = provider(&serve(script.clone()).await, 5);
    let f = fixture();
    let err = run_test(&aws, &f).await.unwrap_err();
    assert!(
        err.starts_with("timed out after 300ms waiting for instance i-0kept to start"),
        "{err}"
    );
    assert!(
        err.contains("not authorised to call ec2:TerminateInstances on i-0kept"),
        "{err}"
    );
    let open = f.state.lock().unwrap().ledger_open().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].kind.as_str(), open[0].resource.as_str()),
        ("instance", "i-0kept")
    );
}
