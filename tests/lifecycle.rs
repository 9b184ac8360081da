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

fn node<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in plan"))
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
    assert_eq!(node(&plan, "build:base")["action"], "run");
    assert!(node(&plan, "build:base").get("cut_off_by").is_none());
    for id in [
        "test:base/smoke",
        "publish:base",
        "build:web",
        "deliver:web@staging",
    ] {
        assert_eq!(node(&plan, id)["action"], "run", "{id}");
        assert_eq!(node(&plan, id)["cut_off_by"][0], "build:base", "{id}");
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
    assert_eq!(node(&plan, "build:web")["action"], "run");
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

fn reason_kinds(plan: &Value, id: &str) -> Vec<String> {
    node(plan, id)["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
        .collect()
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
    let base = node(&plan, "build:base");
    assert_eq!(base["action"], "run");
    assert_eq!(base["reasons"][0]["kind"], "revoked");
    assert_eq!(base["reasons"][0]["back_to"], "1.0.0");
    assert!(reason_kinds(&plan, "build:web").contains(&"revoked".to_string()));
    for env in ["staging", "production"] {
        let id = format!("deliver:web@{env}");
        assert_eq!(node(&plan, &id)["action"], "run", "{id}");
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
    assert!(node(&plan, "build:base")["reasons"][0]
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
