//! Tags-only changes: the current version's tags are updated in place, shown as their own
//! action; nothing is rebuilt, retested or redelivered. Real binary, local provider.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn registry_tags(dir: &Path, file: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(".imgraph/images/registry").join(file))
        .expect("registry entry");
    let v: Value = serde_json::from_str(&text).expect("registry json");
    v["tags"].clone()
}

#[test]
fn a_tags_only_change_updates_the_current_version_in_place() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(
        registry_tags(&dir, "base@1.0.0.json"),
        serde_json::json!({"Team": "platform"})
    );

    let config = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&config).expect("config");
    let edited = text.replace(
        "        Team \"platform\"\n",
        "        Team \"infra\"\n        Owner \"ops\"\n",
    );
    assert_ne!(text, edited, "the quickstart's tags block moved");
    std::fs::write(&config, edited).expect("write config");

    let plan = plan_json(&dir, &[]);
    let nodes = plan["nodes"].as_array().expect("nodes");
    for n in nodes {
        let want = if n["id"] == "build:base" {
            "update-tags"
        } else {
            "up-to-date"
        };
        assert_eq!(n["action"], want, "{}", n["id"]);
    }
    let base = nodes
        .iter()
        .find(|n| n["id"] == "build:base")
        .expect("base");
    assert_eq!(
        base["reasons"],
        serde_json::json!([{"kind": "tags-changed", "added": ["Owner"], "removed": [], "changed": ["Team"]}])
    );
    assert_eq!(plan["summary"]["update_tags"], 1);
    assert_eq!(plan["summary"]["run"], 0);
    let text = imgraph(&dir).arg("plan").output().expect("plan");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("tags changed: +Owner ~Team"), "{text}");
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(2);

    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(
        registry_tags(&dir, "base@1.0.0.json"),
        serde_json::json!({"Owner": "ops", "Team": "infra"})
    );
    assert!(
        !dir.join(".imgraph/images/registry/base@1.0.1.json")
            .exists(),
        "a tags change made a new version"
    );
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);

    // Removing the block removes the tags.
    let text = std::fs::read_to_string(&config).expect("config");
    let start = text.find("    tags {").expect("tags block");
    let end = start + text[start..].find("    }\n").expect("end of block") + "    }\n".len();
    std::fs::write(&config, format!("{}{}", &text[..start], &text[end..])).expect("write");
    imgraph(&dir).arg("apply").assert().code(0);
    assert_eq!(
        registry_tags(&dir, "base@1.0.0.json"),
        serde_json::json!({})
    );
    imgraph(&dir)
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0);
}
