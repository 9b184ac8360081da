//! Image lifecycle with the real binary on the quickstart (local provider): a rebuild
//! that comes out byte-identical cuts off its cascade (early cutoff).

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn plan_json(dir: &Path, extra: &[&str]) -> Value {
    let out = imgraph(dir)
        .arg("plan")
        .arg("--json")
        .args(extra)
        .output()
        .expect("run imgraph plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan json")
}

/// `image version status` of every registry row, as `images --json` prints them.
fn versions(dir: &Path) -> Vec<(String, String, String)> {
    let out = imgraph(dir)
        .args(["images", "--json"])
        .output()
        .expect("run imgraph images");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("images json");
    let rows = v
        .as_array()
        .or_else(|| v["images"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut rows: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["image"].as_str().unwrap_or_default().to_string(),
                r["version"].as_str().unwrap_or_default().to_string(),
                r["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The quickstart, made reproducible: its base build writes its own version number into
/// the image, so no two of its builds can be byte-identical. This copy does not.
fn reproducible_quickstart() -> (tempfile::TempDir, std::path::PathBuf) {
    let (t, dir) = copy_project("examples/quickstart");
    let script = dir.join("scripts/provision-base.sh");
    let text = std::fs::read_to_string(&script).expect("read provision script");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("IMGRAPH_VERSION"))
        .collect();
    assert_ne!(kept.len(), text.lines().count(), "the version line is gone");
    write(&script, &(kept.join("\n") + "\n"));
    (t, dir)
}

fn deliveries(dir: &Path, env: &str) -> String {
    std::fs::read_to_string(dir.join(".imgraph/deliveries").join(env)).unwrap_or_default()
}

#[test]
fn a_forced_rebuild_with_the_same_bytes_cuts_off_its_cascade() {
    let (_t, dir) = reproducible_quickstart();
    imgraph(&dir).arg("apply").assert().code(0);
    let before = versions(&dir);
    let (staging, production) = (deliveries(&dir, "staging"), deliveries(&dir, "production"));
    assert_eq!(staging.lines().count(), 1);

    // The plan says which cascades a same-artifact build may cut off.
    let plan = plan_json(&dir, &["--force", "base"]);
    assert_eq!(plan_node(&plan, "build:base")["action"], "run");
    assert!(plan_node(&plan, "build:base").get("cut_off_by").is_none());
    for id in [
        "test:base/smoke",
        "publish:base",
        "build:web",
        "deliver:web@staging",
    ] {
        assert_eq!(plan_node(&plan, id)["action"], "run", "{id}");
        assert_eq!(plan_node(&plan, id)["cut_off_by"][0], "build:base", "{id}");
    }
    let text = imgraph(&dir)
        .args(["plan", "--force", "base"])
        .output()
        .expect("plan text");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("early cutoff: 7 cascades from it are skipped if it makes its newest Ready artifact again"),
        "{text}"
    );

    let out = imgraph(&dir)
        .args(["apply", "--force", "base"])
        .output()
        .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("build:web: early cutoff: build:base produced the same artifact"),
        "{stdout}"
    );
    // No new version of either image, nothing rebuilt or redelivered.
    assert_eq!(versions(&dir), before);
    assert_eq!(deliveries(&dir, "staging"), staging);
    assert_eq!(deliveries(&dir, "production"), production);
    assert!(
        some_log_contains(&dir, "early cutoff: the artifact is base 1.0.0 again"),
        "the build says why it made no version"
    );
    // The cut-off nodes are recorded up to date with the keys they were planned with.
    let plan = plan_json(&dir, &[]);
    assert_eq!(plan["summary"]["run"], 0, "{plan:#}");

    // A real change still goes all the way.
    append(&dir.join("config/base/motd"), "changed\n");
    let plan = plan_json(&dir, &[]);
    assert_eq!(plan_node(&plan, "build:web")["action"], "run");
    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(deliveries(&dir, "staging").lines().count(), 2);
    assert!(versions(&dir)
        .iter()
        .any(|(i, v, _)| i == "web" && v == "2.3.1"));
}

#[test]
fn an_environment_that_missed_the_current_version_still_gets_it_after_a_cutoff() {
    let (_t, dir) = reproducible_quickstart();
    // The delivery fails while `stop-delivery` exists (a file no node hashes).
    let script = dir.join("deliver/deliver.sh");
    let text = std::fs::read_to_string(&script).expect("read deliver script");
    write(
        &script,
        &text.replacen(
            "set -eu\n",
            "set -eu\n[ ! -e stop-delivery ] || exit 1\n",
            1,
        ),
    );
    imgraph(&dir).arg("apply").assert().code(0);
    append(&dir.join("config/web/index.html"), "<p>new</p>\n");
    write(&dir.join("stop-delivery"), "");
    imgraph(&dir).arg("apply").assert().code(3);
    assert!(!deliveries(&dir, "staging").contains("2.3.1"));
    std::fs::remove_file(dir.join("stop-delivery")).expect("remove stop-delivery");

    // base comes out the same and web is not rebuilt, but staging never got web 2.3.1:
    // its delivery runs, and production's after it.
    let out = imgraph(&dir)
        .args(["apply", "--force", "base"])
        .output()
        .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("build:web: early cutoff: build:base produced the same artifact"),
        "{stdout}"
    );
    assert!(
        deliveries(&dir, "staging").contains("web 2.3.1"),
        "{stdout}"
    );
    assert!(
        deliveries(&dir, "production").contains("web 2.3.1"),
        "{stdout}"
    );
    assert_eq!(plan_json(&dir, &[])["summary"]["run"], 0);
    let history = imgraph(&dir)
        .args(["history", "--limit", "1"])
        .output()
        .expect("history");
    let history = String::from_utf8_lossy(&history.stdout).into_owned();
    assert!(
        history.contains("early cutoff: same artifact as base 1.0.0, no new version"),
        "{history}"
    );
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = imgraph(dir).args(args).output().expect("run imgraph");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn status_of(dir: &Path, image: &str, version: &str) -> String {
    versions(dir)
        .into_iter()
        .find(|(i, v, _)| i == image && v == version)
        .map(|(_, _, s)| s)
        .unwrap_or_else(|| panic!("{image} {version} not listed"))
}

#[test]
fn revoking_a_base_version_rebuilds_its_descendants_and_redelivers_every_environment() {
    let (_t, dir) = copy_project("examples/quickstart");
    run_ok(&dir, &["apply"]);
    append(&dir.join("config/base/motd"), "a bad change\n");
    run_ok(&dir, &["apply"]);
    assert_eq!(deliveries(&dir, "production").lines().count(), 2);

    let out = run_ok(&dir, &["revoke", "base@1.0.1", "--reason", "CVE-2026-0001"]);
    assert!(out.contains("revoked base 1.0.1: CVE-2026-0001"), "{out}");
    assert!(
        out.contains("revoked web 2.3.1: built from revoked base 1.0.1: CVE-2026-0001"),
        "{out}"
    );
    assert_eq!(status_of(&dir, "base", "1.0.1"), "Revoked");
    assert_eq!(status_of(&dir, "web", "2.3.1"), "Revoked");
    assert_eq!(status_of(&dir, "base", "1.0.0"), "Ready");
    // The local registry says so too.
    let meta: Value = serde_json::from_slice(
        &std::fs::read(dir.join(".imgraph/images/registry/base@1.0.1.json")).expect("registry"),
    )
    .expect("registry json");
    assert_eq!(meta["status"], "Revoked");
    assert_eq!(meta["revoked_reason"], "CVE-2026-0001");

    // The plan: base goes back to its newest good version, web is rebuilt from it, and
    // both environments get the replacement, all with reason `revoked`.
    let plan = plan_json(&dir, &[]);
    let base = plan_node(&plan, "build:base");
    assert_eq!(base["action"], "run");
    assert_eq!(base["reasons"][0]["kind"], "revoked");
    assert_eq!(base["reasons"][0]["back_to"], "1.0.0");
    assert!(reason_kinds(&plan, "build:web").contains(&"revoked".to_string()));
    for env in ["staging", "production"] {
        let id = format!("deliver:web@{env}");
        assert_eq!(plan_node(&plan, &id)["action"], "run", "{id}");
        assert!(
            reason_kinds(&plan, &id).contains(&"revoked".to_string()),
            "{id}"
        );
    }
    let text = run_ok(&dir, &["plan"]);
    assert!(
        text.contains(
            "base 1.0.1 is revoked (CVE-2026-0001): back to 1.0.0, its newest good version"
        ),
        "{text}"
    );

    run_ok(&dir, &["apply"]);
    // No base version was built; web built from base 1.0.0 comes out as web 2.3.0 again
    // (early cutoff), and that is what staging, then production, hold now.
    assert!(!versions(&dir)
        .iter()
        .any(|(i, v, _)| i == "base" && v == "1.0.2"));
    for env in ["staging", "production"] {
        let last = deliveries(&dir, env)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(last.starts_with("web 2.3.0 "), "{env}: {last}");
    }
    let images = run_ok(&dir, &["images"]);
    let held = images
        .lines()
        .find(|l| l.starts_with("web ") && l.contains("2.3.0"))
        .unwrap_or_default();
    assert!(held.ends_with("staging, production"), "{images}");
    assert!(
        images
            .lines()
            .any(|l| l.contains("2.3.1") && l.contains("Revoked")),
        "{images}"
    );
    // What the project still says is the change that was revoked: the plan says so
    // rather than pretending base is up to date.
    let plan = plan_json(&dir, &[]);
    assert_eq!(reason_kinds(&plan, "build:base"), ["input-changed"]);

    // A version revoked through its origin is restored from there.
    let out = imgraph(&dir)
        .args(["revoke", "--undo", "web@2.3.1"])
        .output()
        .expect("undo");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked because base 1.0.1 was"), "{err}");
    let out = run_ok(&dir, &["revoke", "--undo", "base@1.0.1"]);
    assert!(out.contains("restored base 1.0.1 (Ready)"), "{out}");
    assert!(out.contains("restored web 2.3.1 (Ready)"), "{out}");
    assert_eq!(status_of(&dir, "web", "2.3.1"), "Ready");
}

#[test]
fn a_revoked_artifact_is_never_made_again() {
    let (_t, dir) = reproducible_quickstart();
    run_ok(&dir, &["apply"]);
    run_ok(&dir, &["revoke", "base@1.0.0", "--reason", "broken"]);
    // Nothing to go back to: the plan rebuilds base, which makes the same bytes.
    let plan = plan_json(&dir, &[]);
    assert_eq!(reason_kinds(&plan, "build:base"), ["revoked"]);
    assert!(plan_node(&plan, "build:base")["reasons"][0]
        .get("back_to")
        .is_none());
    let out = imgraph(&dir).arg("apply").output().expect("apply");
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the build made the artifact of revoked base 1.0.0 again"),
        "{text}"
    );
    assert_eq!(deliveries(&dir, "staging").lines().count(), 1);
    assert_eq!(status_of(&dir, "base", "1.0.0"), "Revoked");
}

/// The artifacts in the local store (`*.tar.zst`).
fn artifacts(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(".imgraph/images"))
        .expect("store")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.zst"))
        .collect();
    names.sort();
    names
}

fn gc_json(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["gc", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&run_ok(dir, &args)).expect("gc json")
}

/// `image version` → `action kind` of a gc document.
fn decisions(doc: &Value) -> std::collections::BTreeMap<String, String> {
    doc["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                format!(
                    "{} {}",
                    v["image"].as_str().unwrap_or(""),
                    v["version"].as_str().unwrap_or("")
                ),
                format!(
                    "{} {}",
                    v["action"].as_str().unwrap_or(""),
                    v["retention"]["kind"].as_str().unwrap_or("")
                ),
            )
        })
        .collect()
}

/// The quickstart with `retain { keep 1; }`, left with eight versions in use in every way
/// gc must respect: web 2.3.0 held by production (its deliveries failed since), web 2.3.2
/// held by staging, base 1.0.2 the origin of web's current 2.3.2, base 1.0.3 the newest
/// Ready version under a newer Failed 1.0.4 (base's current version); base 1.0.0, 1.0.1
/// and web 2.3.1 nothing uses. Production's delivery fails while `stop-production`
/// exists, the base smoke test while `fail-smoke` exists, deliveries wait while `hold`
/// exists.
fn versions_in_use() -> (tempfile::TempDir, std::path::PathBuf) {
    let (t, dir) = copy_project("examples/quickstart");
    append(&dir.join("imgraph.kdl"), "\nretain { keep 1; }\n");
    // Production's delivery fails while `stop-production` exists, the base smoke test
    // while `fail-smoke` exists, and deliveries wait while `hold` exists.
    let deliver = dir.join("deliver/deliver.sh");
    let text = std::fs::read_to_string(&deliver).expect("deliver script");
    write(
        &deliver,
        &text.replacen(
            "set -eu\n",
            "set -eu\n[ \"$IMGRAPH_ENVIRONMENT\" != production ] || [ ! -e stop-production ] || exit 1\nwhile [ -e hold ]; do sleep 0.1; done\n",
            1,
        ),
    );
    let smoke = dir.join("tests/base/smoke.sh");
    let text = std::fs::read_to_string(&smoke).expect("smoke script");
    write(
        &smoke,
        &text.replacen("set -eu\n", "set -eu\n[ ! -e fail-smoke ] || exit 1\n", 1),
    );

    run_ok(&dir, &["apply"]); // base 1.0.0, web 2.3.0 everywhere
    write(&dir.join("stop-production"), "");
    imgraph(&dir)
        .args(["apply", "--force", "base"])
        .assert()
        .code(3); // 1.0.1, 2.3.1 to staging
    imgraph(&dir)
        .args(["apply", "--force", "base"])
        .assert()
        .code(3); // 1.0.2, 2.3.2 to staging
    run_ok(&dir, &["apply", "--force", "base", "--target", "base"]); // base 1.0.3, web stays
    write(&dir.join("fail-smoke"), "");
    imgraph(&dir)
        .args(["apply", "--force", "base", "--target", "base"])
        .assert()
        .code(3); // base 1.0.4 Failed
    assert_eq!(status_of(&dir, "base", "1.0.4"), "Failed");
    (t, dir)
}

/// `image version` is still listed and its artifact still in the store after a real gc,
/// which gave `kind` as the reason it stays.
fn gc_keeps(dir: &Path, image: &str, version: &str, kind: &str) {
    let id_of = |dir: &Path| -> Option<String> {
        json_of(dir, &["images", "--json"])["images"]
            .as_array()
            .expect("images")
            .iter()
            .find(|r| r["image"] == image && r["version"] == version)
            .and_then(|r| r["id"].as_str().map(str::to_owned))
    };
    let id = id_of(dir).unwrap_or_else(|| panic!("{image} {version} not listed"));
    let done = gc_json(dir, &[]);
    let name = format!("{image} {version}");
    assert_eq!(
        decisions(&done).get(&name).map(String::as_str),
        Some(format!("keep {kind}").as_str()),
        "{done:#}"
    );
    assert!(
        decisions(&done).values().any(|d| d == "remove beyond"),
        "gc removed something else: {done:#}"
    );
    assert_eq!(
        id_of(dir).as_deref(),
        Some(id.as_str()),
        "{name} still listed"
    );
    let hex = id.trim_start_matches("local:");
    assert!(
        dir.join(format!(".imgraph/images/{hex}.tar.zst")).is_file(),
        "{name}'s artifact is still in the store"
    );
}

#[test]
fn gc_never_removes_a_version_an_environment_holds() {
    let (_t, dir) = versions_in_use();
    gc_keeps(&dir, "web", "2.3.0", "held");
}

#[test]
fn gc_never_removes_the_newest_ready_version() {
    let (_t, dir) = versions_in_use();
    gc_keeps(&dir, "base", "1.0.3", "newest-ready");
}

#[test]
fn gc_never_removes_the_origin_of_a_descendants_current_version() {
    let (_t, dir) = versions_in_use();
    gc_keeps(&dir, "base", "1.0.2", "origin");
}

#[test]
fn gc_never_removes_the_current_version() {
    let (_t, dir) = versions_in_use();
    gc_keeps(&dir, "base", "1.0.4", "current");
}

#[test]
fn gc_removes_nothing_while_an_apply_holds_the_lease() {
    let (_t, dir) = versions_in_use();
    let before = artifacts(&dir);
    // The apply has work to do (base's test, production's delivery) and waits in it.
    std::fs::remove_file(dir.join("stop-production")).expect("rm stop-production");
    std::fs::remove_file(dir.join("fail-smoke")).expect("rm fail-smoke");
    // While an apply holds the lease, gc (dry or not) refuses and removes nothing.
    write(&dir.join("hold"), "");
    let mut apply = std::process::Command::new(assert_cmd::cargo::cargo_bin("imgraph"))
        .arg("-C")
        .arg(&dir)
        .args(["apply", "-q"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn apply");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = imgraph(&dir)
            .args(["lock", "status"])
            .output()
            .expect("lock status");
        if String::from_utf8_lossy(&status.stdout).starts_with("locked") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the apply never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for args in [&["gc"][..], &["gc", "--dry-run"][..]] {
        let out = imgraph(&dir).args(args).output().expect("gc");
        assert_eq!(out.status.code(), Some(4), "{args:?}");
    }
    assert_eq!(artifacts(&dir), before);
    std::fs::remove_file(dir.join("hold")).expect("rm hold");
    assert!(apply.wait().expect("wait apply").success());
    // Once the apply is done, gc removes what nothing uses.
    assert!(decisions(&gc_json(&dir, &[]))
        .values()
        .any(|d| d == "remove beyond"));
    assert!(artifacts(&dir).len() < before.len());
}

#[test]
fn gc_removes_versions_beyond_retain_but_never_one_in_use() {
    let (_t, dir) = versions_in_use();
    let before = artifacts(&dir);
    assert_eq!(before.len(), 8, "{before:?}");

    // The dry run lists every version with why it stays or goes, and changes nothing.
    let dry = gc_json(&dir, &["--dry-run"]);
    let expected: std::collections::BTreeMap<String, String> = [
        ("base 1.0.4", "keep current"),
        ("base 1.0.3", "keep newest-ready"),
        ("base 1.0.2", "keep origin"),
        ("base 1.0.1", "remove beyond"),
        ("base 1.0.0", "remove beyond"),
        ("web 2.3.2", "keep held"),
        ("web 2.3.1", "remove beyond"),
        ("web 2.3.0", "keep held"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(decisions(&dry), expected, "{dry:#}");
    assert_eq!(artifacts(&dir), before);
    let text = run_ok(&dir, &["gc", "--dry-run"]);
    assert!(
        text.contains("web 2.3.0   keep          held by production"),
        "{text}"
    );
    assert!(
        text.contains("base 1.0.2  keep          origin of current web 2.3.2"),
        "{text}"
    );
    assert!(
        text.contains("base 1.0.1  would remove  beyond keep 1"),
        "{text}"
    );

    std::fs::remove_file(dir.join("stop-production")).expect("rm stop-production");
    std::fs::remove_file(dir.join("fail-smoke")).expect("rm fail-smoke");
    run_ok(&dir, &["apply"]);
    // That apply made base 1.0.4 Ready (its test passes now) and delivered web 2.3.2 to
    // production: base 1.0.3 is no longer the newest Ready one, web 2.3.0 no longer held.
    let after_apply = artifacts(&dir);

    let done = gc_json(&dir, &[]);
    let removed: Vec<String> = done["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["action"] == "remove")
        .map(|v| {
            format!(
                "{} {}",
                v["image"].as_str().unwrap_or(""),
                v["version"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        removed,
        [
            "base 1.0.3",
            "base 1.0.1",
            "base 1.0.0",
            "web 2.3.1",
            "web 2.3.0"
        ],
        "{done:#}"
    );
    let left = artifacts(&dir);
    assert_eq!(left.len(), after_apply.len() - 5, "{left:?}");
    let listed: Vec<(String, String, String)> = versions(&dir);
    assert!(
        !listed.iter().any(|(i, v, _)| i == "web" && v == "2.3.0"),
        "{listed:?}"
    );
    let meta: Value = serde_json::from_slice(
        &std::fs::read(dir.join(".imgraph/images/registry/web@2.3.0.json")).expect("registry"),
    )
    .expect("registry json");
    assert!(meta["removed_at_ms"].is_i64(), "{meta}");
    // What is in use is untouched: nothing needs to run, and a removed version's number
    // is never given again.
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
    run_ok(&dir, &["apply", "--force", "base"]);
    assert!(versions(&dir)
        .iter()
        .any(|(i, v, _)| i == "base" && v == "1.0.5"));
}
