//! Deliveries follow the artifact: every newly published version reaches the environments
//! that want it, in `after` order, whatever the build's key; a change to one environment's
//! delivery redelivers that environment only. Real binary, local provider, quickstart.

mod common;

use std::path::Path;

use common::*;

/// The versions an environment received, in order (the quickstart's deliver script
/// appends one line per delivery).
fn delivered(dir: &Path, env: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(".imgraph/deliveries").join(env))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .collect()
}

fn set_delivery_command(dir: &Path, env: &str, command: &str) {
    let path = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&path).expect("read config");
    let block = format!("environment \"{env}\" {{");
    let start = text.find(&block).expect("environment block");
    let run = start + text[start..].find("run \"").expect("run in block");
    let end = run + text[run..].find('\n').expect("end of line");
    let edited = format!("{}run \"{command}\"{}", &text[..run], &text[end..]);
    std::fs::write(&path, edited).expect("write config");
}

#[test]
fn a_version_published_by_a_stopped_apply_is_delivered_by_the_next() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(delivered(&dir, "staging"), ["2.3.0"]);

    // Rebuild with unchanged keys (base writes its version into the image, so web changes
    // too) and stop after publish: deliveries not selected.
    imgraph(&dir)
        .args(["apply", "--force", "base", "--target", "web"])
        .assert()
        .code(0);
    assert_eq!(delivered(&dir, "staging"), ["2.3.0"]);

    let plan = plan_json(&dir, &[]);
    for env in ["staging", "production"] {
        let id = format!("deliver:web@{env}");
        assert_eq!(plan_node(&plan, &id)["action"], "run", "{id}");
        let reason = &plan_node(&plan, &id)["reasons"][0];
        assert_eq!(reason["kind"], "new-version", "{id}: {reason}");
        assert_eq!(reason["version"], "2.3.1");
        assert_eq!(reason["previous"], "2.3.0");
    }
    for id in ["build:base", "build:web", "publish:web"] {
        assert_eq!(plan_node(&plan, id)["action"], "up-to-date", "{id}");
    }
    let text = imgraph(&dir).arg("plan").output().expect("plan text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("web 2.3.1 is the current version; this environment got 2.3.0 last"),
        "{text}"
    );

    // A production-only change at the same time: both environments get 2.3.1, in order.
    set_delivery_command(&dir, "production", "sh deliver/deliver.sh && true");
    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(delivered(&dir, "staging"), ["2.3.0", "2.3.1"]);
    assert_eq!(delivered(&dir, "production"), ["2.3.0", "2.3.1"]);
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
}

#[test]
fn editing_only_stagings_delivery_command_redelivers_staging_only() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);

    set_delivery_command(&dir, "staging", "sh deliver/deliver.sh && echo staged");
    let plan = plan_json(&dir, &[]);
    assert_eq!(plan_node(&plan, "deliver:web@staging")["action"], "run");
    assert_eq!(
        reason_kinds(&plan, "deliver:web@staging"),
        ["config-changed"]
    );
    assert_eq!(
        plan_node(&plan, "deliver:web@production")["action"],
        "up-to-date"
    );
    assert_eq!(plan["summary"]["run"], 1);

    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(delivered(&dir, "staging"), ["2.3.0", "2.3.0"]);
    assert_eq!(delivered(&dir, "production"), ["2.3.0"]);
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
}

#[test]
fn a_rebuild_of_the_upstream_image_reaches_every_environment_in_order() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);

    // base rebuilt with its key unchanged: web is rebuilt from it and delivered again.
    let plan = plan_json(&dir, &["--force", "base"]);
    for env in ["staging", "production"] {
        let id = format!("deliver:web@{env}");
        assert_eq!(plan_node(&plan, &id)["action"], "run", "{id}");
        assert_eq!(reason_kinds(&plan, &id), ["upstream-changed"], "{id}");
        assert_eq!(plan_node(&plan, &id)["reasons"][0]["node"], "publish:web");
    }
    imgraph(&dir)
        .args(["apply", "--force", "base"])
        .assert()
        .code(0);
    assert_eq!(delivered(&dir, "staging"), ["2.3.0", "2.3.1"]);
    assert_eq!(delivered(&dir, "production"), ["2.3.0", "2.3.1"]);
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
}
