//! What `plan` decides, and why, after history was seeded through the library API.

mod common;

use common::*;
use imgraph::config::model::Trigger;
use imgraph::hash::Via;
use imgraph::plan::{Action, Change, InputChange, PackageChange, PlanOptions, Reason};

const ALL: [&str; 8] = [
    "build:base",
    "test:base/smoke",
    "publish:base",
    "build:web",
    "test:web/http",
    "publish:web",
    "deliver:web@staging",
    "deliver:web@production",
];

fn seeded() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, dir) = copy_project("examples/quickstart");
    let plan = plan_of(&dir, &PlanOptions::default());
    seed_success(&dir, &plan);
    (tmp, dir)
}

/// A node id written out in a test.
fn node_id(text: &str) -> imgraph::graph::NodeId {
    text.parse().expect("a node id")
}

fn action(plan: &imgraph::plan::Plan, id: &str) -> Action {
    plan.node(&node_id(id))
        .unwrap_or_else(|| panic!("{id} not in plan"))
        .action
}

#[test]
fn fresh_project_runs_every_node_as_new() {
    let (_t, dir) = copy_project("examples/quickstart");
    let plan = plan_of(&dir, &PlanOptions::default());
    let ids: Vec<&str> = plan.nodes.iter().map(|n| n.id.as_str()).collect();
    for id in ALL {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    for n in &plan.nodes {
        assert_eq!(n.action, Action::Run, "{}", n.id);
        assert_eq!(n.reasons, vec![Reason::New], "{}", n.id);
    }
    assert_eq!(plan.summary.run, ALL.len());
}

#[test]
fn after_a_full_record_nothing_runs() {
    let (_t, dir) = seeded();
    let plan = plan_of(&dir, &PlanOptions::default());
    assert_eq!(plan.summary.run, 0, "{:?}", actions(&plan));
    assert_eq!(plan.summary.up_to_date, ALL.len());
}

#[test]
fn editing_a_config_file_rebuilds_base_and_cascades_everything_downstream() {
    let (_t, dir) = seeded();
    append(&dir.join("config/base/motd"), "one more line\n");
    let plan = plan_of(&dir, &PlanOptions::default());
    let base = plan.node(&node_id("build:base")).unwrap();
    assert_eq!(base.action, Action::Run);
    assert_eq!(
        base.reasons,
        vec![Reason::InputChanged(InputChange {
            path: "config/base/motd".into(),
            change: Change::Modified,
            via: Via::Copy,
            mode: None,
            trigger: Some(Trigger::Immediate),
            packages: None,
        })]
    );
    assert!(!base.cascade);
    for id in &ALL[1..] {
        let n = plan.node(&node_id(id)).unwrap();
        assert_eq!(n.action, Action::Run, "{id}");
        assert!(n.cascade, "{id} should be a cascade: {:?}", n.reasons);
        assert!(n
            .reasons
            .iter()
            .all(|r| matches!(r, Reason::UpstreamChanged { .. })));
    }
    assert_eq!(plan.summary.causes, 1);
    assert_eq!(plan.summary.cascades, ALL.len() - 1);
}

#[test]
fn touching_mtimes_only_changes_nothing() {
    let (_t, dir) = seeded();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    for f in [
        "config/base/motd",
        "scripts/provision-base.sh",
        "packages/base.txt",
        "tests/base/smoke.sh",
    ] {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(f))
            .unwrap();
        file.set_modified(later).unwrap();
    }
    let plan = plan_of(&dir, &PlanOptions::default());
    assert_eq!(plan.summary.run, 0, "{:?}", actions(&plan));
}

#[test]
fn a_package_list_change_waits_for_a_rollup() {
    let (_t, dir) = seeded();
    append(&dir.join("packages/base.txt"), "htop\n");
    let plan = plan_of(&dir, &PlanOptions::default());
    let base = plan.node(&node_id("build:base")).unwrap();
    assert_eq!(base.action, Action::Deferred);
    assert_eq!(
        base.reasons,
        vec![Reason::InputChanged(InputChange {
            path: "packages/base.txt".into(),
            change: Change::Modified,
            via: Via::Input,
            mode: None,
            trigger: Some(Trigger::Rollup),
            packages: Some(PackageChange {
                added: vec!["htop".into()],
                removed: vec![],
            }),
        })]
    );
    assert_eq!(
        plan.summary.run,
        0,
        "nothing runs until the roll-up: {:?}",
        actions(&plan)
    );
    assert_eq!(plan.summary.deferred, 1);

    let rollup = plan_of(
        &dir,
        &PlanOptions {
            rollup: true,
            ..Default::default()
        },
    );
    let base = rollup.node(&node_id("build:base")).unwrap();
    assert_eq!(base.action, Action::Run);
    assert_eq!(
        base.reasons,
        vec![Reason::Rollup(InputChange {
            path: "packages/base.txt".into(),
            change: Change::Modified,
            trigger: None,
            via: Via::Input,
            mode: None,
            packages: Some(PackageChange {
                added: vec!["htop".into()],
                removed: vec![],
            }),
        })]
    );
    assert_eq!(action(&rollup, "build:web"), Action::Run);
}

#[test]
fn changing_a_test_input_reruns_that_test_and_its_publish_only() {
    let (_t, dir) = seeded();
    append(&dir.join("tests/base/smoke.sh"), "# one more check\n");
    let plan = plan_of(&dir, &PlanOptions::default());
    assert_eq!(action(&plan, "build:base"), Action::UpToDate);
    let t = plan.node(&node_id("test:base/smoke")).unwrap();
    assert_eq!(t.action, Action::Run);
    assert_eq!(
        t.reasons,
        vec![Reason::InputChanged(InputChange {
            path: "tests/base/smoke.sh".into(),
            change: Change::Modified,
            via: Via::Input,
            mode: None,
            trigger: Some(Trigger::Immediate),
            packages: None,
        })]
    );
    assert_eq!(action(&plan, "publish:base"), Action::Run);
    // Re-verifying base does not rebuild what was made from the same artifact.
    for id in [
        "build:web",
        "test:web/http",
        "publish:web",
        "deliver:web@staging",
    ] {
        assert_eq!(action(&plan, id), Action::UpToDate, "{id}");
    }
}

#[test]
fn a_changed_origin_folder_names_its_files_and_the_source_its_old_id() {
    let (_t, dir) = seeded();
    let before = plan_of(&dir, &PlanOptions::default()).sources[0].id.clone();
    write(&dir.join("bases/tiny-root/etc/hostname"), "renamed\n");
    let plan = plan_of(&dir, &PlanOptions::default());
    let after = plan.sources[0].id.clone();
    assert_ne!(before, after);
    let base = plan.node(&node_id("build:base")).unwrap();
    assert_eq!(
        base.reasons,
        vec![Reason::InputChanged(InputChange {
            path: "bases/tiny-root/etc/hostname".into(),
            change: Change::Modified,
            trigger: Some(Trigger::Immediate),
            via: Via::Origin,
            mode: None,
            packages: None,
        })]
    );
    assert_eq!(
        plan.sources[0].previous_id.as_deref(),
        Some(before.as_str())
    );
}

#[test]
fn a_changed_build_step_is_a_config_change() {
    let (_t, dir) = seeded();
    let cfg = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&cfg).unwrap();
    write(
        &cfg,
        &text.replace(
            "run \"sh scripts/provision-web.sh\"",
            "run \"sh scripts/provision-web.sh --verbose\"",
        ),
    );
    let plan = plan_of(&dir, &PlanOptions::default());
    let web = plan.node(&node_id("build:web")).unwrap();
    assert_eq!(web.action, Action::Run);
    assert!(
        matches!(&web.reasons[0], Reason::ConfigChanged { fields } if fields.iter().any(|f| f.starts_with("build"))),
        "{:?}",
        web.reasons
    );
    assert_eq!(action(&plan, "build:base"), Action::UpToDate);
}

#[test]
fn comments_whitespace_order_and_tags_do_not_change_keys() {
    let (_t, dir) = seeded();
    let cfg = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let edited = text
        .replace(
            "    version \"1.0\"\n    max-age \"30d\"\n",
            "    max-age \"30d\"   // moved\n\n    version  \"1.0\"\n",
        )
        .replace("Team \"platform\"", "Team \"platform-eng\"");
    assert_ne!(text, edited);
    write(&cfg, &format!("// a new comment\n{edited}"));
    let plan = plan_of(&dir, &PlanOptions::default());
    assert_eq!(plan.summary.run, 0, "{:?}", actions(&plan));
}

#[test]
fn a_missing_artifact_is_never_a_cache_hit() {
    let (_t, dir) = seeded();
    let ws = imgraph::workspace::Workspace::open(&dir).unwrap();
    let store = ws.local_store().unwrap();
    for e in std::fs::read_dir(dir.join(".imgraph/images")).unwrap() {
        let e = e.unwrap();
        std::fs::remove_file(e.path()).unwrap();
    }
    drop((ws, store));
    let plan = plan_of(&dir, &PlanOptions::default());
    let base = plan.node(&node_id("build:base")).unwrap();
    assert_eq!(base.action, Action::Run);
    assert!(
        matches!(base.reasons[0], Reason::ArtifactMissing { .. }),
        "{:?}",
        base.reasons
    );
    // The rebuilt artifact must be tested again before it is published.
    assert_eq!(action(&plan, "test:base/smoke"), Action::Run);
    assert_eq!(action(&plan, "publish:base"), Action::Run);
}

#[test]
fn a_failed_run_with_the_same_key_is_retried() {
    let (_t, dir) = seeded();
    append(&dir.join("tests/web/check.sh"), "# flaky?\n");
    let plan = plan_of(&dir, &PlanOptions::default());
    seed_failure(
        &dir,
        &plan,
        "test:web/http",
        "test `http` exited with status 1",
    );
    let again = plan_of(&dir, &PlanOptions::default());
    let t = again.node(&node_id("test:web/http")).unwrap();
    assert_eq!(t.action, Action::Run);
    assert!(
        t.reasons.iter().any(
            |r| matches!(r, Reason::PreviousFailure { error: Some(e) } if e.contains("status 1"))
        ),
        "{:?}",
        t.reasons
    );
}

#[test]
fn max_age_rebuilds_an_old_image() {
    let (_t, dir) = seeded();
    let ws = imgraph::workspace::Workspace::open(&dir).unwrap();
    let mut facts = ws.gather_blocking().unwrap();
    facts.now_ms += 31 * 24 * 3600 * 1000;
    let plan =
        imgraph::plan::decide(&ws.project, &ws.graph, &facts, &PlanOptions::default()).unwrap();
    let base = plan.node(&node_id("build:base")).unwrap();
    assert_eq!(base.action, Action::Run);
    assert!(
        matches!(base.reasons[0], Reason::MaxAge { max_age_secs, .. } if max_age_secs == 30 * 24 * 3600)
    );
    // web has no max-age of its own, but is rebuilt from the new base.
    assert_eq!(action(&plan, "build:web"), Action::Run);
}

#[test]
fn force_and_target_select_what_runs() {
    let (_t, dir) = seeded();
    let plan = plan_of(
        &dir,
        &PlanOptions {
            force: vec!["web".into()],
            ..Default::default()
        },
    );
    assert_eq!(action(&plan, "build:base"), Action::UpToDate);
    assert_eq!(
        plan.node(&node_id("build:web")).unwrap().reasons,
        vec![Reason::Forced]
    );
    assert_eq!(action(&plan, "deliver:web@staging"), Action::Run);

    let (_t2, fresh) = copy_project("examples/quickstart");
    let plan = plan_of(
        &fresh,
        &PlanOptions {
            targets: vec!["base".into()],
            ..Default::default()
        },
    );
    let ids: Vec<&str> = plan.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["build:base", "test:base/smoke", "publish:base"]);
    assert_eq!(plan.summary.not_selected, 5);
}

#[test]
fn moving_the_project_folder_keeps_every_key() {
    let (_t, dir) = seeded();
    let moved_root = tempfile::tempdir().unwrap();
    let moved = moved_root.path().join("elsewhere/project");
    copy_dir(&dir, &moved);
    // copy_dir leaves `.imgraph` out; bring the state and the store along.
    copy_dir(&dir.join(".imgraph"), &moved.join(".imgraph"));
    let plan = plan_of(&moved, &PlanOptions::default());
    assert_eq!(plan.summary.run, 0, "{:?}", actions(&plan));
}

#[test]
fn a_rebuilt_artifact_whose_tests_never_finished_is_tested_before_anything_else() {
    // Regression: a build re-ran with the same key (max-age, --force, a missing artifact)
    // and its tests were interrupted; the new artifact must not pass as tested.
    let (_t, dir) = seeded();
    let plan = plan_of(&dir, &PlanOptions::default());
    let build = plan.node(&node_id("build:base")).unwrap();
    let ws = imgraph::workspace::Workspace::open(&dir).unwrap();
    let (m, u, r) = build.record_fields();
    let run = ws.state.begin_run("seed", "{}").unwrap();
    let id = ws
        .state
        .start_node(
            run,
            &imgraph::state::NodeStart {
                node_id: &build.id,
                key: &build.key,
                manifest_json: &m,
                stanza: &build.stanza,
                upstream_json: &u,
                reasons_json: &r,
                log_path: None,
            },
        )
        .unwrap();
    let store = ws.local_store().unwrap();
    let artifact = format!("local:{}", "ab".repeat(32));
    std::fs::write(store.path_of(&artifact).unwrap(), b"rebuilt").unwrap();
    // As the executor records a build: with the tags the image has.
    let outputs = serde_json::json!({
        "artifact_id": artifact, "version": "1.0.1", "tags": {"Team": "platform"}
    })
    .to_string();
    ws.state
        .finish_node(
            id,
            imgraph::state::NodeStatus::Succeeded,
            Some(&outputs),
            None,
        )
        .unwrap();
    drop(ws);

    let plan = plan_of(&dir, &PlanOptions::default());
    assert_eq!(action(&plan, "build:base"), Action::UpToDate);
    let t = plan.node(&node_id("test:base/smoke")).unwrap();
    assert_eq!(t.action, Action::Run, "{:?}", t.reasons);
    assert_eq!(
        t.reasons,
        vec![Reason::UpstreamChanged {
            node: node_id("build:base")
        }]
    );
    assert_eq!(action(&plan, "publish:base"), Action::Run);
}

#[test]
fn an_image_that_never_built_is_not_deferred_by_a_rollup_change() {
    let (_t, dir) = copy_project("examples/quickstart");
    let plan = plan_of(&dir, &PlanOptions::default());
    seed_failure(&dir, &plan, "build:base", "build step failed");
    append(&dir.join("packages/base.txt"), "htop\n");
    let plan = plan_of(&dir, &PlanOptions::default());
    let base = plan.node(&node_id("build:base")).unwrap();
    assert_eq!(base.action, Action::Run, "{:?}", base.reasons);
    assert!(base.reasons.contains(&Reason::New));
}

#[test]
fn a_package_list_change_names_the_packages_and_ignores_comments() {
    let (_t, dir) = seeded();
    let list = dir.join("packages/base.txt");
    let text = std::fs::read_to_string(&list).unwrap();
    write(
        &list,
        &format!("{}\nhtop  # for debugging\n", text.replace("curl\n", "")),
    );
    let plan = plan_of(&dir, &PlanOptions::default());
    let base = plan.node(&node_id("build:base")).unwrap();
    assert!(
        matches!(
            &base.reasons[0],
            Reason::InputChanged(InputChange { packages: Some(p), .. })
                if p.added == vec!["htop".to_string()] && p.removed == vec!["curl".to_string()]
        ),
        "{:?}",
        base.reasons
    );
}

#[test]
fn records_of_an_older_hash_format_rerun_once_with_one_reason() {
    let (_t, dir) = seeded();
    let db = rusqlite::Connection::open(dir.join(".imgraph/state.db")).unwrap();
    // An older encoding gives other digests, so other keys too.
    db.execute(
        "UPDATE node_runs SET manifest_json = replace(manifest_json, '\"format\":2,', ''),
                              key = 'v1-' || key",
        [],
    )
    .unwrap();
    drop(db);
    let plan = plan_of(&dir, &PlanOptions::default());
    let base = plan.node(&node_id("build:base")).unwrap();
    assert_eq!(base.action, Action::Run);
    assert_eq!(
        base.reasons,
        vec![Reason::ConfigChanged {
            fields: vec!["hash-format".into()]
        }],
        "one reason, not every file"
    );
}

#[test]
fn a_damaged_recorded_manifest_is_an_error_not_every_input_added() {
    let (_t, dir) = seeded();
    // The stored manifest is read only when the key moved (an unchanged key proves the
    // inputs are the same), so the damaged record must be one whose key differs.
    append(&dir.join("config/base/motd"), "one more line\n");
    let db = rusqlite::Connection::open(dir.join(".imgraph/state.db")).unwrap();
    db.execute(
        "UPDATE node_runs SET manifest_json = '{\"entries\": [' WHERE node_id = 'build:base'",
        [],
    )
    .unwrap();
    drop(db);
    let out = imgraph(&dir).arg("plan").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed to read the recorded manifest of `build:base`")
            && stderr.contains("the state file is damaged"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no plan is printed from a damaged record"
    );
}
