//! Shared state on S3 (`state { s3 … }`) with the real binary: several runner folders
//! (separate copies of one project, each with its own local state file and image store)
//! share one history and one lease on moto's S3 API, directly or through a scripted proxy
//! for the faults moto cannot produce.
//!
//! The builds of the project write a line to a markers file shared by the runners when
//! they start (`start IMAGE PID`), so a test counts how often each build really ran. The
//! image store is not shared here (that is the shared artifact store's part): where a
//! runner must reuse another's builds, the test copies the artifact files (never the
//! store's registry, which would let a runner recover versions without the shared state).
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

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use proxy::{Fault, Rule};

/// A runner folder: a copy of the quickstart whose builds write markers (and whose web
/// build sleeps `$SHARED_TEST_SLOW` seconds), sharing its state at `endpoint`.
fn runner(endpoint: &str, bucket: &str, lease_ttl: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = local_runner();
    share(&dir, endpoint, bucket, lease_ttl);
    (tmp, dir)
}

/// The same folder without shared state: its history stays in its own state file.
fn local_runner() -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = copy_project("examples/quickstart");
    for (script, slow) in [
        ("scripts/provision-base.sh", ""),
        (
            "scripts/provision-web.sh",
            "sleep \"${SHARED_TEST_SLOW:-0}\"\n",
        ),
    ] {
        let path = dir.join(script);
        let text = std::fs::read_to_string(&path).expect("read the build script");
        let text = text.replacen(
            "set -eu\n",
            &format!(
                "set -eu\necho \"start $IMGRAPH_IMAGE $$\" >> \"$SHARED_TEST_MARKERS\"\n{slow}"
            ),
            1,
        );
        std::fs::write(&path, text).expect("write the build script");
    }
    let config = dir.join("imgraph.kdl");
    let mut kdl = std::fs::read_to_string(&config).expect("read imgraph.kdl");
    for version in ["1.0", "2.3"] {
        kdl = kdl.replacen(
            &format!("    version \"{version}\"\n"),
            &format!(
                "    version \"{version}\"\n    pass-env \"SHARED_TEST_MARKERS\"\n    pass-env \"SHARED_TEST_SLOW\"\n"
            ),
            1,
        );
    }
    std::fs::write(&config, kdl).expect("write imgraph.kdl");
    (tmp, dir)
}

/// Declares the shared state in `dir`'s config.
fn share(dir: &Path, endpoint: &str, bucket: &str, lease_ttl: &str) {
    let config = dir.join("imgraph.kdl");
    let mut kdl = std::fs::read_to_string(&config).expect("read imgraph.kdl");
    kdl.push_str(&format!(
        "\nstate {{\n    s3 bucket=\"{bucket}\" prefix=\"platform/\" region=\"us-east-1\" endpoint=\"{endpoint}\"\n    lease-ttl \"{lease_ttl}\"\n}}\n"
    ));
    std::fs::write(&config, kdl).expect("write imgraph.kdl");
}

/// The markers file the runners of one test share.
struct Markers {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Markers {
    fn new() -> Markers {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("builds.log");
        std::fs::write(&path, "").expect("create the markers file");
        Markers { _dir: dir, path }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .expect("read the markers")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many builds of `image` started.
    fn starts(&self, image: &str) -> usize {
        let prefix = format!("start {image} ");
        self.lines()
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .count()
    }

    /// Waits until a build of `image` has started (at most two minutes); its shell's pid.
    fn wait_for_start(&self, image: &str, child: &mut Child) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let prefix = format!("start {image} ");
        loop {
            if let Some(line) = self.lines().iter().find(|l| l.starts_with(&prefix)) {
                return line[prefix.len()..].trim().parse().expect("a pid");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the apply ended ({status}) before building {image}");
            }
            assert!(
                Instant::now() < deadline,
                "no build of {image} started: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `imgraph ARGS` in `dir` as a child process, with the markers file (and `slow`).
fn spawn(dir: &Path, markers: &Markers, slow: u32, args: &[&str]) -> Child {
    StdCommand::new(assert_cmd::cargo::cargo_bin("imgraph"))
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env("SHARED_TEST_MARKERS", &markers.path)
        .env("SHARED_TEST_SLOW", slow.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imgraph")
}

fn run(dir: &Path, markers: &Markers, args: &[&str]) -> Output {
    spawn(dir, markers, 0, args)
        .wait_with_output()
        .expect("wait for imgraph")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Copies the artifact files of `from`'s image store into `to`'s (not its registry).
fn copy_artifacts(from: &Path, to: &Path) {
    let (src, dst) = (from.join(".imgraph/images"), to.join(".imgraph/images"));
    std::fs::create_dir_all(&dst).expect("create the store");
    for entry in std::fs::read_dir(&src).expect("read the store") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().ends_with(".tar.zst") {
            std::fs::copy(&path, dst.join(path.file_name().expect("a name"))).expect("copy");
        }
    }
}

/// Each image's versions, as `images --json` lists them.
fn versions(images: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = images["images"]
        .as_array()
        .expect("a list of versions")
        .iter()
        .map(|v| {
            (
                v["image"].as_str().unwrap_or_default().to_owned(),
                v["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn kill(pid: i32, group: bool) {
    let target = if group { -pid } else { pid };
    // SAFETY: sends a signal; no memory is involved.
    unsafe {
        libc::kill(target, libc::SIGKILL);
    }
}

#[test]
fn a_runner_sees_what_another_runner_applied() {
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let bucket = s3::fresh_bucket(&endpoint, "shared-seen");
    let markers = Markers::new();
    let (_ta, a) = runner(&endpoint, &bucket, "60s");
    let (_tb, b) = runner(&endpoint, &bucket, "60s");

    let applied = run(&a, &markers, &["apply", "-q"]);
    assert_code(&applied, 0, "runner A's apply");
    copy_artifacts(&a, &b);

    // B has no state file of its own: what it knows comes from the shared journal.
    let planned = run(&b, &markers, &["plan", "--detailed-exitcode"]);
    assert_code(&planned, 0, "runner B's plan after A's apply");
    assert!(
        text(&planned.stdout).contains("No changes to run"),
        "{}",
        text(&planned.stdout)
    );
    assert!(
        !b.join(".imgraph/state.db").exists(),
        "plan wrote a state file"
    );
    assert_eq!(
        json_of(&b, &["images", "--json"]),
        json_of(&a, &["images", "--json"])
    );
    assert_eq!(
        json_of(&b, &["history", "--json"]),
        json_of(&a, &["history", "--json"])
    );
    let status = json_of(&b, &["lock", "status", "--json"]);
    assert_eq!(status["locked"], false, "{status}");

    let again = run(&b, &markers, &["apply"]);
    assert_code(&again, 0, "runner B's apply");
    assert!(
        text(&again.stdout).contains("Nothing to run"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!((markers.starts("base"), markers.starts("web")), (1, 1));
}

#[test]
fn concurrent_applies_from_two_runners_never_both_build() {
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let bucket = s3::fresh_bucket(&endpoint, "shared-race");
    let markers = Markers::new();
    let (_ta, a) = runner(&endpoint, &bucket, "60s");
    let (_tb, b) = runner(&endpoint, &bucket, "60s");

    // Both start at once; the web build takes a few seconds, so they overlap.
    let first = spawn(&a, &markers, 5, &["apply", "-q"]);
    let second = spawn(&b, &markers, 5, &["apply", "-q"]);
    let outs = [
        first.wait_with_output().expect("wait for A"),
        second.wait_with_output().expect("wait for B"),
    ];
    let mut codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![0, 4],
        "one applies, the other is refused: {:?}",
        outs.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
    );
    let refused = outs
        .iter()
        .find(|o| o.status.code() == Some(4))
        .map(|o| text(&o.stderr))
        .unwrap_or_default();
    assert!(
        refused.contains("imgraph apply holds it"),
        "the refusal names the holder: {refused}"
    );
    assert_eq!(
        (markers.starts("base"), markers.starts("web")),
        (1, 1),
        "every build ran once: {:?}",
        markers.lines()
    );
    // Both runners read one history: one run, by the winner.
    let history = json_of(&b, &["history", "--json"]);
    assert_eq!(history, json_of(&a, &["history", "--json"]));
    assert_eq!(
        history["runs"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
}

#[test]
fn a_killed_runner_is_taken_over_after_lease_ttl_and_only_its_running_node_reruns() {
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let bucket = s3::fresh_bucket(&endpoint, "shared-kill");
    let markers = Markers::new();
    let (_ta, a) = runner(&endpoint, &bucket, "5s");
    let (_tb, b) = runner(&endpoint, &bucket, "5s");

    let mut runner_a = spawn(&a, &markers, 120, &["apply", "-q"]);
    let step = markers.wait_for_start("web", &mut runner_a);

    // B sees A's lease on the shared state: holder, pid, command, heartbeat.
    let status = json_of(&b, &["lock", "status", "--json"]);
    assert_eq!(status["locked"], true, "{status}");
    assert_eq!(status["holder"], "imgraph apply", "{status}");
    assert_eq!(status["pid"], runner_a.id(), "{status}");
    assert!(
        status["command"]
            .as_str()
            .unwrap_or_default()
            .contains("apply"),
        "{status}"
    );
    assert!(status["heartbeat_age_ms"].is_i64(), "{status}");

    kill(i32::try_from(runner_a.id()).expect("a pid"), false);
    kill(step, true);
    runner_a.wait().expect("reap runner A");
    copy_artifacts(&a, &b);

    // B waits for A's lease to go stale, takes it over and finishes the job.
    let finished = run(&b, &markers, &["apply", "--lock-timeout", "2m"]);
    assert_code(&finished, 0, "runner B's apply after A was killed");
    let shown = text(&finished.stdout);
    assert!(shown.contains("build:web"), "{shown}");
    assert!(!shown.contains("build:base "), "base was reused: {shown}");
    assert_eq!(
        (markers.starts("base"), markers.starts("web")),
        (1, 2),
        "only A's running build ran again: {:?}",
        markers.lines()
    );

    let history = json_of(&b, &["history", "--json"]);
    let runs = history["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{history}");
    let statuses: Vec<&str> = runs
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default())
        .collect();
    assert!(statuses.contains(&"abandoned"), "{history}");
    assert!(statuses.contains(&"succeeded"), "{history}");

    // Versions never repeat, and A's folder reads the same history.
    let images = json_of(&b, &["images", "--json"]);
    let listed = versions(&images);
    let mut unique = listed.clone();
    unique.dedup();
    assert_eq!(listed, unique, "a version was issued twice: {images}");
    assert!(listed.iter().any(|(i, _)| i == "web"), "{images}");
    assert_eq!(json_of(&a, &["images", "--json"]), images);
}

#[test]
fn an_apply_whose_lease_is_broken_stops_and_records_nothing_more() {
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let bucket = s3::fresh_bucket(&endpoint, "shared-broken");
    let markers = Markers::new();
    let (_ta, a) = runner(&endpoint, &bucket, "5s");
    let (_tb, b) = runner(&endpoint, &bucket, "5s");

    let runner_a = {
        let mut child = spawn(&a, &markers, 120, &["apply", "-q"]);
        markers.wait_for_start("web", &mut child);
        child
    };
    let refused = run(&b, &markers, &["lock", "break"]);
    assert_code(&refused, 4, "lock break while the holder runs");
    let broken = run(&b, &markers, &["lock", "break", "--force"]);
    assert_code(&broken, 0, "lock break --force");

    let stopped = runner_a.wait_with_output().expect("wait for A");
    assert_code(&stopped, 4, "runner A after its lease was broken");
    let said = text(&stopped.stderr);
    assert!(said.contains("lease"), "{said}");
    assert!(said.contains("broken"), "{said}");

    // Nothing A did after losing the lease reached the shared history: its run never
    // finished there, and the build it was running has no end.
    let history = json_of(&b, &["history", "--json"]);
    assert_eq!(history["runs"][0]["status"], "running", "{history}");
}

#[test]
fn state_writes_survive_a_503_and_a_lost_answer() {
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let bucket = s3::fresh_bucket(&endpoint, "shared-faults");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let proxy = rt.block_on(proxy::start(
        &endpoint,
        vec![
            Rule {
                fault: Fault::Unavailable,
                path_part: "/journal/".into(),
                nth: 2,
            },
            Rule {
                fault: Fault::LoseAnswer,
                path_part: "/journal/".into(),
                nth: 4,
            },
        ],
    ));
    let markers = Markers::new();
    let (_ta, a) = runner(&proxy.endpoint, &bucket, "60s");
    let (_tc, c) = runner(&endpoint, &bucket, "60s");

    let applied = run(&a, &markers, &["apply", "-q"]);
    assert_code(&applied, 0, "an apply through the faulty proxy");
    let applied_faults: Vec<Fault> = proxy
        .log
        .applied
        .lock()
        .expect("proxy log")
        .iter()
        .map(|(f, _)| *f)
        .collect();
    assert_eq!(
        applied_faults,
        vec![Fault::Unavailable, Fault::LoseAnswer],
        "both faults happened"
    );

    // The journal holds each batch once, in order: the 503 was retried, the lost answer
    // was read back as ours rather than appended again.
    let journal = imgraph::remote::journal::ObjectJournal::new(
        imgraph::remote::ObjectClient::new(&s3::location(&endpoint, &bucket, "platform"))
            .expect("object client"),
    );
    let entries = rt
        .block_on(journal.read_since::<serde_json::Value>(0))
        .expect("read the journal");
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<_>>());
    let finished: Vec<&serde_json::Value> = entries
        .iter()
        .flat_map(|e| e.records.iter())
        .filter(|r| r["record"] == "node-finished")
        .map(|r| &r["node_run"])
        .collect();
    let mut unique = finished.clone();
    unique.sort_by_key(|v| v.as_i64());
    unique.dedup();
    assert_eq!(finished.len(), 8, "{finished:?}");
    assert_eq!(unique.len(), 8, "{finished:?}");

    // A runner talking to the store directly reads the same, complete history.
    let history = json_of(&c, &["history", "--json"]);
    assert_eq!(history, json_of(&a, &["history", "--json"]));
    assert_eq!(history["runs"][0]["status"], "succeeded", "{history}");
}

#[test]
fn a_local_history_is_pushed_once_and_pulled_by_another_runner() {
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let bucket = s3::fresh_bucket(&endpoint, "shared-push");
    let markers = Markers::new();
    let (_ta, a) = local_runner();
    assert_code(&run(&a, &markers, &["apply", "-q"]), 0, "a local apply");
    let local_images = json_of(&a, &["images", "--json"]);

    // Declared shared, the file's own history is refused until it is pushed.
    share(&a, &endpoint, &bucket, "60s");
    let refused = run(&a, &markers, &["plan"]);
    assert_code(&refused, 1, "plan over a local history");
    assert!(
        text(&refused.stderr).contains("imgraph state push"),
        "{}",
        text(&refused.stderr)
    );
    let pushed = run(&a, &markers, &["state", "push"]);
    assert_code(&pushed, 0, "state push");
    assert!(
        text(&pushed.stdout).contains("1 runs, 8 node runs, 2 images"),
        "{}",
        text(&pushed.stdout)
    );
    assert_eq!(json_of(&a, &["images", "--json"]), local_images);
    let again = run(&a, &markers, &["state", "push"]);
    assert_code(&again, 1, "a second push");
    assert!(
        text(&again.stderr).contains("already mirrors"),
        "{}",
        text(&again.stderr)
    );

    // Another runner pulls it: the same history, nothing to run.
    let (_tb, b) = runner(&endpoint, &bucket, "60s");
    copy_artifacts(&a, &b);
    let pulled = run(&b, &markers, &["state", "pull"]);
    assert_code(&pulled, 0, "state pull");
    assert!(
        text(&pulled.stdout).contains("up to journal entry 1 (1 runs, 2 image versions)"),
        "{}",
        text(&pulled.stdout)
    );
    assert!(b.join(".imgraph/state.db").is_file());
    assert_eq!(
        json_of(&b, &["history", "--json"]),
        json_of(&a, &["history", "--json"])
    );
    assert_code(
        &run(&b, &markers, &["plan", "--detailed-exitcode"]),
        0,
        "plan after the pull",
    );
    assert_code(
        &run(&b, &markers, &["apply", "-q"]),
        0,
        "apply after the pull",
    );
    assert_eq!((markers.starts("base"), markers.starts("web")), (1, 1));

    // A history of its own is never pushed on top of the shared one.
    let (_tc, c) = local_runner();
    assert_code(
        &run(&c, &markers, &["apply", "-q"]),
        0,
        "another local apply",
    );
    share(&c, &endpoint, &bucket, "60s");
    let over = run(&c, &markers, &["state", "push"]);
    assert_code(&over, 1, "a push onto a shared history");
    assert!(
        text(&over.stderr).contains("already holds history"),
        "{}",
        text(&over.stderr)
    );
    assert_eq!(
        json_of(&b, &["history", "--json"])["runs"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Without `state { s3 … }` there is nothing to push to.
    let (_td, d) = local_runner();
    let unshared = run(&d, &markers, &["state", "pull"]);
    assert_code(&unshared, 1, "state pull without shared state");
    assert!(
        text(&unshared.stderr).contains("declares no"),
        "{}",
        text(&unshared.stderr)
    );
}
