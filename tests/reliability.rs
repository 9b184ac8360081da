//! Reliability promises through the real binary (see RELIABILITY.md): signals, locks,
//! read-only use of the state, bounded memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Folders left under `.imgraph/tmp` (staging roots and test instances).
fn leftovers(dir: &Path) -> Vec<String> {
    tmp_leftovers(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The slow fixture with its test command replaced by `test_cmd`.
fn slow_project(test_cmd: &str) -> (tempfile::TempDir, PathBuf) {
    let (t, dir) = copy_project("tests/fixtures/projects/slow");
    let cfg = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("echo started; sleep 30", test_cmd)
        .replace("timeout \"2s\"", "timeout \"60s\"");
    write(&cfg, &text);
    (t, dir)
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("imgraph"))
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `ready` holds, failing the test after a minute.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) only sends a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// stderr with miette's line wrapping undone.
fn flat(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ")
}

fn history(dir: &Path) -> Value {
    json_of(dir, &["history", "--json"])
}

#[test]
fn sigterm_and_sighup_stop_apply_like_ctrl_c() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")] {
        // The test command would leave a marker 3 s on if its process group outlived the stop.
        let (_t, dir) = slow_project("echo started; (sleep 3; touch orphan-survived) & sleep 30");
        let child = spawn(&dir, &["apply"]);
        wait_for("the test instance", || {
            leftovers(&dir).iter().any(|l| l.starts_with("instance-"))
        });
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{name}: {stderr}");
        assert!(stderr.contains(&format!("stopping on {name}")), "{stderr}");
        assert!(leftovers(&dir).is_empty(), "{name}: {:?}", leftovers(&dir));
        let runs = history(&dir);
        assert_eq!(runs["runs"][0]["status"], "cancelled", "{name}: {runs}");
        let test = runs["runs"][0]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == "test:slow/sleepy")
            .unwrap()
            .clone();
        assert_eq!(test["status"], "cancelled", "{name}: {runs}");
        // The lease was released: another apply starts at once and finishes the job.
        let cfg = dir.join("imgraph.kdl");
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("(sleep 3; touch orphan-survived) & sleep 30", "true");
        write(&cfg, &text);
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !dir.join("orphan-survived").exists(),
            "{name}: a command outlived the stop"
        );
        imgraph(&dir).arg("apply").assert().code(0);
    }
}

#[test]
fn a_second_signal_of_another_kind_exits_at_once() {
    // The test command ignores SIGTERM, so the clean-up waits out the kill grace period;
    // a SIGHUP during that wait exits at once.
    let (_t, dir) = slow_project("trap '' TERM; echo started; sleep 30");
    let mut child = spawn(&dir, &["apply"]);
    wait_for("the test command", || some_log_contains(&dir, "started"));
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGHUP);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(
        leftovers(&dir).iter().any(|l| l.starts_with("instance-")),
        "exiting at once leaves the instance for the next run"
    );
    imgraph(&dir).arg("gc").assert().code(0);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn sigterm_during_a_big_origin_copy_stops_the_copy() {
    // A 2 GiB sparse file in a directory origin: copying it writes 2 GiB. SIGTERM once the
    // copy is under way cancels it; the staging folder is removed and the run cancelled.
    let (_t, dir) = slow_project("true");
    let big = std::fs::File::create(dir.join("origin/big")).unwrap();
    big.set_len(2 << 30).unwrap();
    let mut child = spawn(&dir, &["apply"]);
    let copying = || {
        tmp_leftovers(&dir)
            .iter()
            .any(|l| std::fs::metadata(l.join("root/big")).is_ok_and(|m| m.len() > 0))
    };
    wait_for("the copy of the big file", copying);
    signal(&child, libc::SIGTERM);
    let out = child.wait().unwrap();
    assert_eq!(out.code(), Some(130));
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let runs = history(&dir);
    let build = runs["runs"][0]["nodes"][0].clone();
    assert_eq!(build["id"], "build:slow", "{runs}");
    assert_eq!(build["status"], "cancelled", "{runs}");
    assert!(
        build["error"].as_str().unwrap_or("").contains("cancelled"),
        "{runs}"
    );
}

// ---- locks ---------------------------------------------------------------------------

fn start_apply_until_instance(dir: &Path) -> Child {
    let child = spawn(dir, &["apply"]);
    wait_for("the test instance", || {
        leftovers(dir).iter().any(|l| l.starts_with("instance-"))
    });
    child
}

fn interrupt(mut child: Child) {
    signal(&child, libc::SIGINT);
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

#[test]
fn a_held_lock_fails_at_once_naming_holder_host_pid_and_age() {
    let (_t, dir) = slow_project("echo started; sleep 30");
    let first = start_apply_until_instance(&dir);
    let pid = first.id().to_string();
    let host = imgraph::state::host_name().unwrap_or("");

    for cmd in [&["apply"][..], &["gc"][..]] {
        let out = imgraph(&dir).args(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{cmd:?}");
        let err = flat(&out.stderr);
        assert!(err.contains("failed to take the state lock"), "{err}");
        assert!(err.contains("imgraph apply holds it"), "{err}");
        assert!(err.contains(&format!("pid {pid} on host {host}")), "{err}");
        assert!(err.contains(" for ") && err.contains(" since "), "{err}");
    }

    let status = imgraph(&dir).args(["lock", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.starts_with("locked: imgraph apply holds the state lock"),
        "{text}"
    );
    assert!(text.contains("the process is running"), "{text}");
    let json: Value = serde_json::from_slice(
        &imgraph(&dir)
            .args(["lock", "status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["locked"], true);
    assert_eq!(json["pid"].to_string(), pid);
    assert_eq!(json["liveness"], "alive");

    // Breaking a live holder's lock is refused without --force.
    let out = imgraph(&dir).args(["lock", "break"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = flat(&out.stderr);
    assert!(
        err.contains("still running") && err.contains("--force"),
        "{err}"
    );
    interrupt(first);
    let text = imgraph(&dir)
        .args(["lock", "status"])
        .output()
        .unwrap()
        .stdout;
    assert!(String::from_utf8_lossy(&text).starts_with("unlocked"));
}

#[test]
fn lock_timeout_waits_for_the_holder_to_finish() {
    // The first apply holds the lock for about 2 s after its instance appears.
    let (_t, dir) = slow_project("sleep 2");
    let first = start_apply_until_instance(&dir);
    let out = imgraph(&dir)
        .args(["apply", "--lock-timeout", "5m"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(first.wait_with_output().unwrap().status.code(), Some(0));
    // The second apply waited, then found the first one's work done: nothing to run,
    // which is not a run of its own.
    let second = String::from_utf8_lossy(&out.stdout);
    assert!(second.contains("Nothing to run"), "{second}");
    let runs = history(&dir);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs["runs"][0]["status"], "succeeded");
}

#[test]
fn a_dead_holders_lock_can_be_seen_and_broken_and_a_live_one_only_by_force() {
    let (_t, dir) = slow_project("echo started; sleep 30");
    let mut killed = start_apply_until_instance(&dir);
    killed.kill().unwrap(); // SIGKILL: the lease stays behind
    killed.wait().unwrap();
    let text = imgraph(&dir)
        .args(["lock", "status"])
        .output()
        .unwrap()
        .stdout;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("the process is gone"), "{text}");
    let out = imgraph(&dir).args(["lock", "break"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("broke the state lock of imgraph apply")
    );

    // The killed run's instance folder is still there: clean it up first, or the wait
    // below would see it and not the live run's own instance.
    imgraph(&dir).arg("gc").assert().code(0);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let live = start_apply_until_instance(&dir);
    imgraph(&dir)
        .args(["lock", "break", "--force"])
        .assert()
        .code(0);
    let text = imgraph(&dir)
        .args(["lock", "status"])
        .output()
        .unwrap()
        .stdout;
    assert!(
        String::from_utf8_lossy(&text).starts_with("unlocked"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    interrupt(live);
}

// ---- read-only commands ----------------------------------------------------------------

/// The read-only commands, each expected to exit 0.
const READ_ONLY: &[&[&str]] = &[
    &["validate"],
    &["plan"],
    &["plan", "--json"],
    &["images"],
    &["history"],
    &["graph"],
    &["lock", "status"],
];

#[test]
fn read_only_commands_never_create_a_state_file() {
    let (_t, dir) = copy_project("examples/quickstart");
    for args in READ_ONLY {
        let out = imgraph(&dir).args(*args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !dir.join(".imgraph").exists(),
        "a read-only command created .imgraph"
    );
}

/// Tools this test needs from Debian (installed by scripts/test.sh): in CI their absence
/// fails the test; elsewhere it is said out loud and the test returns.
fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| !Path::new(t).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("missing {missing:?}: scripts/test.sh installs them (bubblewrap)");
    }
    eprintln!("NOT RUN: missing {missing:?}; run scripts/test.sh to install them");
    false
}

#[test]
fn read_only_commands_work_on_a_read_only_state_folder() {
    if !require_tools(&["/usr/bin/bwrap"]) {
        return;
    }
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    let state = dir.join(".imgraph/state.db");
    let before = std::fs::read(&state).unwrap();
    // A read-only mount: not even root can write there.
    let work = dir.join(".imgraph");
    for args in READ_ONLY {
        let out = std::process::Command::new("bwrap")
            .args([
                "--bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--ro-bind",
            ])
            .arg(&work)
            .arg(&work)
            .arg(assert_cmd::cargo::cargo_bin("imgraph"))
            .arg("-C")
            .arg(&dir)
            .args(*args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if args == &["images"] {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("base") && text.contains("Ready"), "{text}");
        }
        if args == &["plan"] {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("No changes to run"), "{text}");
        }
    }
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "the state file changed"
    );
}

/// A corrupt artifact in the local store (its bytes no longer match its id): the apply
/// that reads it fails once, saying so and what happens next; the artifact is set aside,
/// the next plan rebuilds the image that made it as missing, and that apply succeeds.
#[test]
fn a_corrupt_artifact_is_set_aside_and_rebuilt_by_the_next_apply() {
    let (_t, dir) = copy_project("examples/quickstart");
    let first = imgraph(&dir).arg("apply").output().unwrap();
    assert!(first.status.success(), "{}", flat(&first.stderr));
    let ws = imgraph::workspace::Workspace::open(&dir).unwrap();
    let base = ws
        .state
        .images(Some("base"))
        .unwrap()
        .into_iter()
        .max_by_key(|r| r.version.built_at)
        .unwrap();
    let store = ws.local_store().unwrap();
    drop(ws);
    let path = store.path_of(&base.version.artifact_id).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    // web rebuilds from base's artifact, which is now damaged.
    append(&dir.join("scripts/provision-web.sh"), "# changed\n");
    let failed = imgraph(&dir).arg("apply").output().unwrap();
    // The node that read it failed: the run reports it with the error, on stdout.
    let err = format!("{} {}", flat(&failed.stdout), flat(&failed.stderr));
    assert_eq!(failed.status.code(), Some(3), "{err}");
    assert!(
        err.contains("not the") && err.contains("its id names"),
        "{err}"
    );
    assert!(err.contains("next `imgraph apply` rebuilds"), "{err}");
    assert!(!path.exists());
    assert!(store
        .root()
        .join("corrupt")
        .join(path.file_name().unwrap())
        .is_file());

    let plan = imgraph(&dir).args(["plan", "--json"]).output().unwrap();
    assert!(plan.status.success(), "{}", flat(&plan.stderr));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let build_base = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "build:base")
        .unwrap();
    assert_eq!(build_base["action"], "run", "{build_base}");
    assert!(
        build_base["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "artifact-missing"),
        "{build_base}"
    );

    let again = imgraph(&dir).arg("apply").output().unwrap();
    assert!(again.status.success(), "{}", flat(&again.stderr));
    let after = imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(after.status.code(), Some(0), "{}", flat(&after.stderr));
    assert!(leftovers(&dir).is_empty());
}

/// The manifest a node run recorded, as JSON.
fn recorded_manifest(dir: &Path, run: i64, node: &str) -> Value {
    let ws = imgraph::workspace::Workspace::open(dir).unwrap();
    let rec = ws
        .state
        .node_in_run(run, &node.parse().unwrap())
        .unwrap()
        .unwrap();
    serde_json::from_str(&rec.manifest_json).unwrap()
}

/// `gc` cuts the manifests no plan reads down to their package lists, keeps each node's
/// latest, removes the local artifacts no version references and never one that a
/// version references; the next plan still compares file by file.
#[test]
fn gc_prunes_old_manifests_and_removes_only_unreferenced_artifacts() {
    let (_t, dir) = copy_project("examples/quickstart");
    // Enough inputs for manifests worth pruning.
    let many = dir.join("config/base/many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..200 {
        write(&many.join(format!("f{i}")), &format!("{i}\n"));
    }
    for _ in 0..2 {
        let out = imgraph(&dir).arg("apply").output().unwrap();
        assert!(out.status.success(), "{}", flat(&out.stdout));
        append(&dir.join("config/base/motd"), "again\n");
    }
    std::fs::write(dir.join("config/base/motd"), b"back\n").unwrap();
    let versions = |dir: &Path| -> Vec<String> {
        let out = imgraph(dir).args(["images", "--json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let referenced = versions(&dir);
    assert_eq!(referenced.len(), 4, "{referenced:?}");

    // An artifact nothing references (what a build killed before its record leaves).
    let store = imgraph::workspace::Workspace::open(&dir)
        .unwrap()
        .local_store()
        .unwrap();
    let tree = dir.join("stray-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("x"), b"stray").unwrap();
    let (stray, _) = store
        .pack_tree(&tree, &tokio_util::sync::CancellationToken::new())
        .unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
    assert!(store.contains(&stray));
    let entries = |m: &Value| m["entries"].as_array().unwrap().len();
    assert!(entries(&recorded_manifest(&dir, 1, "build:base")) > 200);

    let out = imgraph(&dir).arg("gc").output().unwrap();
    let text = flat(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text} {}", flat(&out.stderr));
    assert!(text.contains("1 unreferenced artifacts removed"), "{text}");
    assert!(!store.contains(&stray));
    for id in &referenced {
        assert!(
            store.contains(id),
            "gc removed {id}, which a version references"
        );
    }
    assert_eq!(versions(&dir), referenced);

    // Run 1's build manifest keeps only its package list; run 2's (the latest) is whole.
    let old = recorded_manifest(&dir, 1, "build:base");
    let old_entries = old["entries"].as_array().unwrap();
    assert_eq!(old_entries.len(), 1, "{old}");
    assert_eq!(old_entries[0]["path"], "packages/base.txt");
    assert!(entries(&recorded_manifest(&dir, 2, "build:base")) > 200);
    let again = imgraph(&dir).arg("gc").output().unwrap();
    assert!(flat(&again.stdout).contains("0 old manifests pruned"));

    // Plans still compare with the latest records, file by file.
    let plan = imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(2), "{}", flat(&plan.stdout));
    append(&many.join("f7"), "changed\n");
    let plan = imgraph(&dir).arg("plan").output().unwrap();
    let text = flat(&plan.stdout);
    assert!(text.contains("`config/base/many/f7` modified"), "{text}");
    assert!(!text.contains("f8"), "{text}");
}
