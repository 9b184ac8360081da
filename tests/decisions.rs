//! The key matches the image: regression tests for decisions that used to be wrong, each
//! named after the behaviour, on copies of `examples/quickstart` through the real binary
//! (real files, real state, real local builds).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::Value;

/// A quickstart copy after one full apply (every node succeeded).
fn applied() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, dir) = copy_project("examples/quickstart");
    apply_ok(&dir, &[]);
    (tmp, dir)
}

fn apply_ok(dir: &Path, extra: &[&str]) -> String {
    let out = imgraph(dir).arg("apply").args(extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "apply failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `plan --detailed-exitcode`: (exit code, text).
fn plan_text(dir: &Path) -> (i32, String) {
    let out = imgraph(dir)
        .args(["plan", "--detailed-exitcode"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 2,
        "plan failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `plan --json`, checked against `schema/plan.schema.json`.
fn checked_plan_json(dir: &Path) -> Value {
    let plan = json_of(dir, &["plan", "--json"]);
    let schema_text = std::fs::read_to_string(repo_root().join("schema/plan.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&schema_text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&plan)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "plan JSON breaks the schema: {errors:?}");
    plan
}

/// Ids of the nodes the plan runs.
fn running(plan: &Value) -> Vec<String> {
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["action"] == "run")
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "imgraph.kdl has no `{from}`");
    write(&path, &text.replacen(from, to, 1));
}

/// Every entry of the newest artifact of `image`, from the local store.
fn artifact_entries(dir: &Path, image: &str) -> Vec<String> {
    let ws = imgraph::workspace::Workspace::open(dir).unwrap();
    let record = ws
        .state
        .images(Some(image))
        .unwrap()
        .into_iter()
        .max_by_key(|r| r.version.built_at)
        .unwrap();
    let store = ws.local_store().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("root");
    store
        .unpack(&record.version.artifact_id, &root, &Default::default())
        .unwrap();
    walkdir::WalkDir::new(&root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
            if e.file_type().is_dir() {
                format!("{rel}/")
            } else {
                rel
            }
        })
        .collect()
}

#[test]
fn editing_a_script_named_in_run_rebuilds() {
    let (_t, dir) = copy_project("examples/quickstart");
    std::fs::create_dir(dir.join("extra")).unwrap();
    write(
        &dir.join("extra/x.sh"),
        "printf 'one\\n' > \"$IMGRAPH_ROOT/etc/extra\"\n",
    );
    edit_config(
        &dir,
        "run \"sh scripts/provision-web.sh\"",
        "run \"sh scripts/provision-web.sh\"\n        run \"sh extra/x.sh\"",
    );
    apply_ok(&dir, &[]);
    assert_eq!(plan_text(&dir).0, 0);

    write(
        &dir.join("extra/x.sh"),
        "printf 'two\\n' > \"$IMGRAPH_ROOT/etc/extra\"\n",
    );
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("+ build:web") && text.contains("`extra/x.sh` modified (named in run)"),
        "{text}"
    );
    let plan = checked_plan_json(&dir);
    let reason = &plan_node(&plan, "build:web")["reasons"][0];
    assert_eq!(reason["kind"], "input-changed");
    assert_eq!(reason["path"], "extra/x.sh");
    assert_eq!(reason["via"], "run");
    assert_eq!(plan_node(&plan, "build:base")["action"], "up-to-date");
}

#[test]
fn editing_a_delivery_script_redelivers() {
    let (_t, dir) = applied();
    append(&dir.join("deliver/deliver.sh"), "echo again\n");
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("`deliver/deliver.sh` modified (named in run)"),
        "{text}"
    );
    let plan = checked_plan_json(&dir);
    let runs = running(&plan);
    assert!(
        runs.contains(&"deliver:web@staging".to_string()),
        "{runs:?}"
    );
    assert!(
        runs.iter().all(|id| id.starts_with("deliver:")),
        "only deliveries run: {runs:?}"
    );
}

#[test]
fn chmod_of_a_copied_file_rebuilds() {
    let (_t, dir) = applied();
    chmod(&dir.join("config/base/acme.conf"), 0o600);
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("+ build:base") && text.contains("`config/base/acme.conf` mode 0644 → 0600"),
        "{text}"
    );
    let plan = checked_plan_json(&dir);
    let reason = &plan_node(&plan, "build:base")["reasons"][0];
    assert_eq!(reason["change"], "mode");
    assert_eq!(reason["mode"]["old"], "0644");
    assert_eq!(reason["mode"]["new"], "0600");
}

#[test]
fn chmod_of_a_copied_folder_rebuilds() {
    let (_t, dir) = applied();
    chmod(&dir.join("config/base"), 0o700);
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("`config/base` mode 0755 → 0700"), "{text}");
}

#[test]
fn empty_directory_in_a_copied_folder_rebuilds() {
    let (_t, dir) = applied();
    std::fs::create_dir(dir.join("config/base/conf.d")).unwrap();
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("+ build:base") && text.contains("`config/base/conf.d` added"),
        "{text}"
    );
    apply_ok(&dir, &[]);
    assert!(artifact_entries(&dir, "base").contains(&"etc/acme/conf.d/".to_string()));
    assert_eq!(plan_text(&dir).0, 0);
}

#[test]
fn changing_an_exclude_that_selects_the_same_files_runs_nothing() {
    let (_t, dir) = copy_project("examples/quickstart");
    edit_config(
        &dir,
        "input \"tests/base\"",
        "input \"tests/base\" exclude=\"*.tmp\"",
    );
    apply_ok(&dir, &[]);
    edit_config(&dir, "exclude=\"*.tmp\"", "exclude=\"*.bak\"");
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 0, "{text}");
    // A file the exclude leaves out changes nothing either.
    write(&dir.join("tests/base/notes.bak"), "scratch\n");
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn duplicate_input_line_runs_nothing() {
    let (_t, dir) = applied();
    edit_config(
        &dir,
        "input \"scripts/provision-base.sh\"",
        "input \"scripts/provision-base.sh\"\n    input \"scripts/provision-base.sh\"",
    );
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 0, "{text}");
    // Nor do comments, or the order of inputs.
    edit_config(
        &dir,
        "    packages \"packages/base.txt\"",
        "    // the package list\n    packages \"packages/base.txt\"",
    );
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn origin_directory_change_is_listed_file_by_file() {
    let (_t, dir) = applied();
    append(&dir.join("bases/tiny-root/etc/hostname"), "renamed\n");
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("`bases/tiny-root/etc/hostname` modified (origin)"),
        "{text}"
    );
    assert!(!text.contains("source `tiny-root` changed"), "{text}");
    let plan = checked_plan_json(&dir);
    let reasons = plan_node(&plan, "build:base")["reasons"]
        .as_array()
        .unwrap();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0]["via"], "origin");
}

#[test]
fn retest_after_a_failed_test_says_previous_failure() {
    let (tmp, dir) = applied();
    // The web test fails while a marker outside the project exists.
    let marker = tmp.path().join("fail-web");
    append(
        &dir.join("tests/web/check.sh"),
        &format!("test ! -e '{}'\n", marker.display()),
    );
    append(&dir.join("config/web/index.html"), "<!-- v2 -->\n");
    write(&marker, "");
    let out = imgraph(&dir).arg("apply").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "the web test fails");

    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    let plan = checked_plan_json(&dir);
    assert_eq!(plan_node(&plan, "build:web")["action"], "up-to-date");
    let test = plan_node(&plan, "test:web/http");
    assert_eq!(test["action"], "run");
    let kinds: Vec<&str> = test["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["previous-failure"], "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("test:web/http") && !l.contains("cascade"))
        .unwrap_or_else(|| panic!("no line of its own for the retest:\n{text}"));
    assert!(line.contains("+ test:web/http"), "{text}");
    assert!(
        line.contains("the last run with this key failed: test `http` exited with status 1"),
        "{text}"
    );

    std::fs::remove_file(&marker).unwrap();
    apply_ok(&dir, &[]);
    assert_eq!(plan_text(&dir).0, 0);
}

#[test]
fn control_characters_in_file_names_are_escaped() {
    let (_t, dir) = applied();
    let evil = "evil\u{1b}[2K\rname\n  + build:forged";
    write(&dir.join("config/base").join(evil), "x\n");
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2);
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(
        text.contains("`config/base/evil\\x1b[2K\\rname\\n  + build:forged` added"),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("  + build:forged")),
        "{text}"
    );
    // JSON keeps the exact name.
    let plan = checked_plan_json(&dir);
    assert_eq!(
        plan_node(&plan, "build:base")["reasons"][0]["path"],
        format!("config/base/{evil}")
    );
}

#[test]
fn the_plan_text_explains_its_markers() {
    let (_t, dir) = applied();
    append(&dir.join("config/web/index.html"), "<!-- v2 -->\n");
    let (_, text) = plan_text(&dir);
    let legend = text.lines().next().unwrap();
    for marker in ["+ ", "~ ", "… ", "= "] {
        assert!(legend.contains(marker), "{legend}");
    }
}

#[test]
fn host_env_var_named_with_env_changes_the_key() {
    let (_t, dir) = copy_project("examples/quickstart");
    edit_config(
        &dir,
        "    from \"base\"",
        "    from \"base\"\n    env \"APP_FLAVOR\"",
    );
    let with = |value: Option<&str>, args: &[&str]| {
        let mut cmd = imgraph(&dir);
        match value {
            Some(v) => cmd.env("APP_FLAVOR", v),
            None => cmd.env_remove("APP_FLAVOR"),
        };
        cmd.args(args).output().unwrap()
    };
    let out = with(Some("flavour-one-3f9a"), &["apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with(Some("flavour-one-3f9a"), &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "same value, same key");

    let out = with(Some("flavour-two-8c1d"), &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("+ build:web") && text.contains("env APP_FLAVOR changed"),
        "{text}"
    );
    let json = with(Some("flavour-two-8c1d"), &["plan", "--json"]).stdout;
    let plan: Value = serde_json::from_slice(&json).unwrap();
    let reason = &plan_node(&plan, "build:web")["reasons"][0];
    assert_eq!(reason["path"], "env:APP_FLAVOR");
    assert_eq!(plan_node(&plan, "build:base")["action"], "up-to-date");
    // Unset and empty differ from each other and from a value.
    for value in [None, Some("")] {
        let out = with(value, &["plan", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(2), "{value:?}");
    }
    // The value is shown nowhere and kept nowhere.
    let out = with(Some("flavour-two-8c1d"), &["apply"]);
    assert!(out.status.success());
    for bytes in [
        json,
        out.stdout,
        std::fs::read(dir.join(".imgraph/state.db")).unwrap(),
    ] {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("flavour-one-3f9a") && !text.contains("flavour-two-8c1d"),
            "a value leaked"
        );
    }
}

#[test]
fn input_inside_deliver_is_hashed() {
    let (_t, dir) = copy_project("examples/quickstart");
    std::fs::create_dir(dir.join("deliver/staging")).unwrap();
    write(&dir.join("deliver/staging/targets"), "host-a\n");
    edit_config(
        &dir,
        "    deliver \"web\" {\n        run \"sh deliver/deliver.sh\"",
        "    deliver \"web\" {\n        input \"deliver/staging\"\n        run \"sh deliver/deliver.sh\"",
    );
    apply_ok(&dir, &[]);
    assert_eq!(plan_text(&dir).0, 0);
    append(&dir.join("deliver/staging/targets"), "host-b\n");
    let (code, text) = plan_text(&dir);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("+ deliver:web@staging")
            && text.contains("`deliver/staging/targets` modified"),
        "{text}"
    );
    let runs = running(&checked_plan_json(&dir));
    assert!(
        runs.iter().all(|id| id.starts_with("deliver:")),
        "builds stay: {runs:?}"
    );
}
