//! A lost state file on the local provider: the store's registry files bring the image
//! registry back, versions are never reused, and nothing that exists is rebuilt.
//! Real binary, local provider, quickstart.

mod common;

use std::path::Path;

use common::*;

fn images(dir: &Path) -> Vec<(String, String, String, Vec<String>)> {
    let v = json_of(dir, &["images", "--json"]);
    let mut rows: Vec<(String, String, String, Vec<String>)> = v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["image"].as_str().unwrap_or_default().to_string(),
                i["version"].as_str().unwrap_or_default().to_string(),
                i["status"].as_str().unwrap_or_default().to_string(),
                i["environments"]
                    .as_array()
                    .map(|e| {
                        e.iter()
                            .map(|x| x.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn lose_state(dir: &Path) {
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = dir.join(".imgraph").join(name);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove state file");
        }
    }
}

fn row(
    image: &str,
    version: &str,
    status: &str,
    envs: &[&str],
) -> (String, String, String, Vec<String>) {
    (
        image.into(),
        version.into(),
        status.into(),
        envs.iter().map(|e| e.to_string()).collect(),
    )
}

#[test]
fn a_lost_state_file_is_recovered_from_the_local_registry_without_rebuilding() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    let before = images(&dir);
    assert_eq!(
        before,
        [
            row("base", "1.0.0", "Ready", &[]),
            row("web", "2.3.0", "Ready", &["staging", "production"]),
        ]
    );
    let registry = dir.join(".imgraph/images/registry");
    assert!(registry.join("web@2.3.0.json").is_file());

    lose_state(&dir);
    let out = imgraph(&dir).arg("apply").output().expect("apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Nothing to run"), "{text}");
    assert_eq!(images(&dir), before);
    assert_eq!(
        std::fs::read_to_string(dir.join(".imgraph/deliveries/production"))
            .expect("deliveries")
            .lines()
            .count(),
        1,
        "production was not delivered again"
    );

    // A change after the loss takes the next version number, never 1.0.0 again.
    append(&dir.join("config/base/motd"), "after the loss\n");
    imgraph(&dir).arg("apply").assert().code(0);
    let versions: Vec<(String, String)> = images(&dir)
        .into_iter()
        .map(|(i, v, _, _)| (i, v))
        .collect();
    assert_eq!(
        versions,
        [
            ("base".to_string(), "1.0.0".to_string()),
            ("base".to_string(), "1.0.1".to_string()),
            ("web".to_string(), "2.3.0".to_string()),
            ("web".to_string(), "2.3.1".to_string()),
        ]
    );
}

#[test]
fn state_recover_rebuilds_the_registry_of_local_images() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    append(&dir.join("config/base/motd"), "second version\n");
    imgraph(&dir).arg("apply").assert().code(0);
    let before = images(&dir);
    assert_eq!(before.len(), 4, "{before:?}");

    lose_state(&dir);
    let out = imgraph(&dir)
        .args(["state", "recover"])
        .output()
        .expect("state recover");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("recovered base 1.0.0 local:"), "{text}");
    assert!(text.contains("4 image versions recovered"), "{text}");
    assert_eq!(images(&dir), before);
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
}

#[test]
fn a_plan_after_a_lost_state_changes_nothing_on_disk() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    lose_state(&dir);
    // plan is read-only: it shows what it would do and creates no state file.
    imgraph(&dir).arg("plan").assert().code(0);
    assert!(!dir.join(".imgraph/state.db").exists());
}
