//! `imgraph apply` end to end through the real binary on the local provider.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn images_json(dir: &Path) -> Value {
    json_of(dir, &["images", "--json"])
}

/// (image, version, status) of every recorded image version.
fn versions(dir: &Path) -> Vec<(String, String, String)> {
    let v = images_json(dir);
    let mut out: Vec<(String, String, String)> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["image"].as_str().unwrap().to_string(),
                i["version"].as_str().unwrap().to_string(),
                i["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn node_action(plan: &Value, id: &str) -> String {
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["action"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{id} not in plan"))
}

/// Node ids that ran in the newest run, from `imgraph history --json`.
fn last_run_nodes(dir: &Path) -> Vec<(String, String)> {
    let v = json_of(dir, &["history", "--json", "--limit", "1"]);
    v["runs"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Folders left under `.imgraph/tmp` (staging roots and test instances).
fn leftovers(dir: &Path) -> Vec<String> {
    tmp_leftovers(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn quickstart_applies_end_to_end_and_then_has_nothing_to_do() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(
        versions(&dir),
        vec![
            ("base".into(), "1.0.0".into(), "Ready".into()),
            ("web".into(), "2.3.0".into(), "Ready".into()),
        ]
    );
    let web = &images_json(&dir)["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == "web")
        .unwrap()
        .clone();
    assert_eq!(
        web["environments"],
        serde_json::json!(["staging", "production"])
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

    let second = imgraph(&dir).arg("apply").assert().code(0);
    let out = String::from_utf8_lossy(&second.get_output().stdout).to_string();
    assert!(out.contains("Nothing to run"), "{out}");
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
}

#[test]
fn a_failing_test_blocks_ready_and_downstream_and_a_fix_reruns_only_the_test() {
    let (_t, dir) = copy_project("examples/quickstart");
    let smoke = dir.join("tests/base/smoke.sh");
    let original = std::fs::read_to_string(&smoke).unwrap();
    write(
        &smoke,
        &format!("{original}echo 'motd is wrong' >&2; exit 1\n"),
    );

    let out = imgraph(&dir).arg("apply").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("motd is wrong"),
        "log tail shown for the failure:\n{text}"
    );
    assert_eq!(
        versions(&dir),
        vec![("base".into(), "1.0.0".into(), "Failed".into())]
    );
    let ran = last_run_nodes(&dir);
    assert!(ran.contains(&("test:base/smoke".into(), "failed".into())));
    for id in ["publish:base", "build:web", "deliver:web@production"] {
        assert!(
            ran.contains(&(id.into(), "skipped".into())),
            "{id}: {ran:?}"
        );
    }
    assert!(leftovers(&dir).is_empty());

    write(&smoke, &original);
    let plan = plan_json(&dir, &[]);
    assert_eq!(node_action(&plan, "build:base"), "up-to-date");
    assert_eq!(node_action(&plan, "test:base/smoke"), "run");
    imgraph(&dir).arg("apply").assert().code(0);
    let ran: Vec<String> = last_run_nodes(&dir).into_iter().map(|(id, _)| id).collect();
    assert!(!ran.contains(&"build:base".to_string()), "{ran:?}");
    assert!(ran.contains(&"test:base/smoke".to_string()));
    assert!(ran.contains(&"publish:base".to_string()));
    assert!(ran.contains(&"deliver:web@production".to_string()));
    assert_eq!(
        versions(&dir),
        vec![
            ("base".into(), "1.0.0".into(), "Ready".into()),
            ("web".into(), "2.3.0".into(), "Ready".into()),
        ]
    );
}

#[test]
fn a_deleted_artifact_and_an_edited_file_rebuild_with_next_versions() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    // The artifacts go; the store's registry of versions stays.
    for e in std::fs::read_dir(dir.join(".imgraph/images")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "zst") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let plan = plan_json(&dir, &[]);
    let base = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "build:base")
        .unwrap();
    assert_eq!(base["reasons"][0]["kind"], "artifact-missing");
    imgraph(&dir).arg("apply").assert().code(0);
    assert!(versions(&dir).contains(&("base".into(), "1.0.1".into(), "Ready".into())));

    append(&dir.join("config/web/index.html"), "<p>v2</p>\n");
    let plan = plan_json(&dir, &[]);
    assert_eq!(node_action(&plan, "build:base"), "up-to-date");
    assert_eq!(node_action(&plan, "build:web"), "run");
    imgraph(&dir).arg("apply").assert().code(0);
    let v = versions(&dir);
    assert!(
        v.contains(&("web".into(), "2.3.2".into(), "Ready".into())),
        "{v:?}"
    );
    assert!(
        !v.contains(&("base".into(), "1.0.2".into(), "Ready".into())),
        "{v:?}"
    );
}

#[test]
fn independent_builds_really_run_in_parallel() {
    let (_t, dir) = copy_project("tests/fixtures/projects/parallel");
    imgraph(&dir)
        .args(["apply", "--parallelism", "2"])
        .assert()
        .code(0);

    let (_t1, serial) = copy_project("tests/fixtures/projects/parallel");
    let out = imgraph(&serial)
        .args(["apply", "--parallelism", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gave up waiting"), "{text}");
}

#[test]
fn a_test_timeout_fails_the_node_and_removes_the_instance() {
    let (_t, dir) = copy_project("tests/fixtures/projects/slow");
    let out = imgraph(&dir).arg("apply").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("timed out after 2s"), "{text}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    assert_eq!(
        versions(&dir),
        vec![("slow".into(), "1.0.0".into(), "Failed".into())]
    );
}

#[test]
fn ctrl_c_stops_kills_cleans_up_and_records_cancelled() {
    let (_t, dir) = copy_project("tests/fixtures/projects/slow");
    let cfg = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("timeout \"2s\"", "timeout \"60s\"");
    write(&cfg, &text);
    let bin = assert_cmd::cargo::cargo_bin("imgraph");
    let mut child = std::process::Command::new(bin)
        .arg("-C")
        .arg(&dir)
        .arg("apply")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the test instance exists, so the interrupt lands mid-test.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leftovers(&dir).iter().any(|l| l.starts_with("instance-")) {
        assert!(
            Instant::now() < deadline,
            "the test instance never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let ran = last_run_nodes(&dir);
    assert!(
        ran.contains(&("test:slow/sleepy".into(), "cancelled".into())),
        "{ran:?}"
    );
    assert!(
        ran.contains(&("publish:slow".into(), "cancelled".into()))
            || ran.contains(&("publish:slow".into(), "skipped".into())),
        "{ran:?}"
    );
}

#[test]
fn production_only_gets_what_staging_got_first() {
    let (_t, dir) = copy_project("examples/quickstart");
    // Staging's rollout fails the first time.
    let deliver = dir.join("deliver/deliver.sh");
    let original = std::fs::read_to_string(&deliver).unwrap();
    write(
        &deliver,
        &original.replace("set -eu\n", "set -eu\nif [ \"$IMGRAPH_ENVIRONMENT\" = staging ] && [ ! -e .allow-staging ]; then echo 'staging rollout failed' >&2; exit 1; fi\n"),
    );
    imgraph(&dir).arg("apply").assert().code(3);
    let ran = last_run_nodes(&dir);
    assert!(ran.contains(&("deliver:web@staging".into(), "failed".into())));
    assert!(
        ran.contains(&("deliver:web@production".into(), "skipped".into())),
        "{ran:?}"
    );
    assert!(!dir.join(".imgraph/deliveries/production").exists());

    write(&dir.join(".allow-staging"), "");
    imgraph(&dir).arg("apply").assert().code(0);
    let staging = std::fs::read_to_string(dir.join(".imgraph/deliveries/staging")).unwrap();
    let production = std::fs::read_to_string(dir.join(".imgraph/deliveries/production")).unwrap();
    assert_eq!(
        staging, production,
        "production got exactly what staging got"
    );
    let order: Vec<String> = last_run_nodes(&dir).into_iter().map(|(id, _)| id).collect();
    let s = order
        .iter()
        .position(|i| i == "deliver:web@staging")
        .unwrap();
    let p = order
        .iter()
        .position(|i| i == "deliver:web@production")
        .unwrap();
    assert!(s < p, "{order:?}");
}

#[test]
fn a_busybox_root_builds_and_tests_inside_bwrap() {
    if !require_tools(&["/usr/bin/bwrap", "/bin/busybox"]) {
        return;
    }
    let (_t, dir) = copy_project("examples/busybox-bwrap");
    let made = std::process::Command::new("sh")
        .arg(dir.join("make-root.sh"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = imgraph(&dir).arg("apply").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        versions(&dir),
        vec![("mini".into(), "0.1.0".into(), "Ready".into())]
    );
    // The test ran inside the image: its log carries the in-image check's words.
    let logs = dir.join(".imgraph/logs");
    let run = std::fs::read_dir(&logs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let test_log = std::fs::read_to_string(run.join("test_mini_inside.log")).unwrap();
    assert!(
        test_log.contains("inside busybox: all checks passed"),
        "{test_log}"
    );
    // Nothing of the sandbox's mounts is packed into the image.
    let id = images_json(&dir)["images"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ws = imgraph::workspace::Workspace::open(&dir).unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    let root = unpacked.path().join("root");
    ws.local_store()
        .unwrap()
        .unpack(&id, &root, &Default::default())
        .unwrap();
    assert!(root.join("etc/app/build-info").exists());
    assert!(!root.join("tmp/imgraph-project").exists());
    assert!(leftovers(&dir).is_empty());
}

/// Starts `imgraph apply` on `dir` in the background and waits until a test instance exists.
fn start_apply_until_instance(dir: &Path) -> std::process::Child {
    let bin = assert_cmd::cargo::cargo_bin("imgraph");
    let child = std::process::Command::new(bin)
        .arg("-C")
        .arg(dir)
        .arg("apply")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The instance exists, its test command has started (it prints `started`) and imgraph
    // has recorded the command's process group (just after spawning it), so what follows
    // acts on a running, recorded command, however loaded the machine is.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leftovers(dir).iter().any(|l| l.starts_with("instance-"))
        || !test_started(dir)
        || !process_recorded(dir)
    {
        assert!(
            Instant::now() < deadline,
            "the test instance never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Whether the running apply's ledger holds a command's process group.
fn process_recorded(dir: &Path) -> bool {
    imgraph::state::State::open_for_reading(&dir.join(".imgraph/state.db"))
        .and_then(|state| state.ledger_open())
        .is_ok_and(|open| open.iter().any(|e| e.kind == "process"))
}

/// Whether a test log of the running apply says `started`.
fn test_started(dir: &Path) -> bool {
    let Ok(runs) = std::fs::read_dir(dir.join(".imgraph/logs")) else {
        return false;
    };
    runs.filter_map(|r| r.ok())
        .filter_map(|r| std::fs::read_dir(r.path()).ok())
        .flatten()
        .filter_map(|f| f.ok())
        .filter(|f| f.file_name().to_string_lossy().starts_with("test_"))
        .any(|f| std::fs::read_to_string(f.path()).is_ok_and(|t| t.lines().any(|l| l == "started")))
}

fn slow_project(test_timeout: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let (t, dir) = copy_project("tests/fixtures/projects/slow");
    let cfg = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("timeout \"2s\"", &format!("timeout \"{test_timeout}\""));
    write(&cfg, &text);
    (t, dir)
}

#[test]
fn a_killed_run_is_cleaned_up_and_finished_by_the_next_apply() {
    let (_t, dir) = slow_project("60s");
    // The test command outlives a SIGKILLed imgraph (it runs in its own process group)
    // and would leave a marker 3 s later unless the next run kills it.
    let cfg = dir.join("imgraph.kdl");
    let slow = "echo started; sleep 3; touch orphan-survived; sleep 30";
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("echo started; sleep 30", slow);
    write(&cfg, &text);
    let mut child = start_apply_until_instance(&dir);
    child.kill().unwrap(); // SIGKILL: no clean-up code runs
    child.wait().unwrap();
    assert!(
        !leftovers(&dir).is_empty(),
        "the killed run left its instance behind"
    );

    // The next apply finds the leftover through the ledger, destroys it, marks the killed
    // run abandoned and redoes only the unfinished work (the build is kept).
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(slow, "echo quick");
    write(&cfg, &text);
    let out = imgraph(&dir).arg("apply").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("cleaned up instance"), "{stdout}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let ran: Vec<String> = last_run_nodes(&dir).into_iter().map(|(id, _)| id).collect();
    assert!(
        !ran.contains(&"build:slow".to_string()),
        "the finished build is not redone: {ran:?}"
    );
    let history: Value = serde_json::from_slice(
        &imgraph(&dir)
            .args(["history", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(history["runs"][1]["status"], "abandoned");
    assert!(
        stdout.contains("cleaned up command process group"),
        "{stdout}"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !dir.join("orphan-survived").exists(),
        "the killed run's command was left running"
    );
}

#[test]
fn a_second_apply_on_the_same_state_fails_clearly() {
    let (_t, dir) = slow_project("60s");
    let mut first = start_apply_until_instance(&dir);
    let out = imgraph(&dir).arg("apply").output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed to take the state lock"), "{err}");
    assert!(
        err.contains(&first.id().to_string()),
        "names the holder's pid: {err}"
    );
    unsafe {
        libc::kill(first.id() as i32, libc::SIGINT);
    }
    assert_eq!(first.wait().unwrap().code(), Some(130));
    assert!(leftovers(&dir).is_empty());
}

#[test]
fn apply_json_is_versioned_ndjson() {
    let (_t, dir) = copy_project("examples/quickstart");
    let out = imgraph(&dir).args(["apply", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(events.iter().all(|e| e["v"] == 1 && e["ts_ms"].is_i64()));
    assert_eq!(events.first().unwrap()["event"], "run-started");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "run-finished");
    assert_eq!(last["status"], "succeeded");
    let finished = events
        .iter()
        .filter(|e| e["event"] == "node-finished")
        .count();
    assert_eq!(finished, 8);
}

#[test]
fn gc_removes_what_killed_runs_left_in_the_store_and_work_folders() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    let unfinished = dir.join(".imgraph/images/.pack-killed.tmp");
    write(&unfinished, "half an image");
    let out = imgraph(&dir).arg("gc").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!unfinished.exists(), "{text}");
    assert!(text.contains("unfinished pack"), "{text}");
    // Finished artifacts stay, so nothing needs to run again.
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_the_next_run_cleans_up() {
    // The test command ignores SIGTERM, so the first Ctrl-C's clean-up has to wait out the
    // kill grace period; a second Ctrl-C during that wait exits at once.
    let (_t, dir) = slow_project("60s");
    let cfg = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "echo started; sleep 30",
        "trap '' TERM; echo started; sleep 30",
    );
    write(&cfg, &text);
    let child = start_apply_until_instance(&dir);
    // The instance is unpacked (a cancelled unpack stops at once): wait for the command.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !some_log_contains(&dir, "started") {
        assert!(Instant::now() < deadline, "the test command never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id() as i32;
    let mut child = child;
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(
        leftovers(&dir).iter().any(|l| l.starts_with("instance-")),
        "exiting at once leaves the instance for the next run"
    );
    imgraph(&dir).arg("gc").assert().code(0);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

/// Staging folders and test instances are made inside the run's own folder
/// (`.imgraph/tmp/run-<id>/`), and their ledger rows are committed but not synced. A run
/// whose machine lost power can leave such a folder with its rows taken back: the next
/// apply removes the whole run folder by its place, whatever the ledger says, and leaves
/// every other folder in `tmp` alone.
#[test]
fn a_run_folder_left_without_ledger_rows_is_removed_by_the_next_apply() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let tmp = dir.join(".imgraph/tmp");
    let lost = tmp.join("run-77/staging-build_base-1-0/root/etc");
    std::fs::create_dir_all(&lost).unwrap();
    std::fs::write(lost.join("hostname"), "left by a power loss\n").unwrap();
    let other = tmp.join("notes-of-someone");
    std::fs::create_dir_all(&other).unwrap();

    let out = imgraph(&dir).args(["apply", "--json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !tmp.join("run-77").exists(),
        "the lost run folder is still there"
    );
    assert!(other.is_dir(), "a folder imgraph did not make was removed");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("run-77"), "no leftover reported: {events}");
}
