//! Probes with `in="image"`: run inside a throwaway instance of the image's current
//! version, they make a nightly `plan --detailed-exitcode` notice what the archive
//! published for what the image has installed.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn plan(dir: &Path, feed: &Path, extra: &[&str]) -> (i32, String) {
    let out = imgraph(dir)
        .arg("plan")
        .args(extra)
        .env("FEED", feed)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn apply(dir: &Path, feed: &Path) {
    let out = imgraph(dir)
        .arg("apply")
        .env("FEED", feed)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_changed_probe_inside_the_image_is_noticed_nightly() {
    let (tmp, dir) = copy_project("tests/fixtures/projects/image-probe");
    let feed = tmp.path().join("security-feed");
    std::fs::write(&feed, "zlib 1.2.13 fixed\n").unwrap();

    // No version yet: the probe has nothing to run in, and forces nothing of its own.
    let (code, text) = plan(&dir, &feed, &["--detailed-exitcode"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("build:app") && !text.contains("probe"),
        "{text}"
    );
    apply(&dir, &feed);

    // What the probe saw in the new image was recorded with the build: nothing to do.
    let (code, text) = plan(&dir, &feed, &["--detailed-exitcode"]);
    assert_eq!(code, 0, "{text}");

    // The archive announces a fix for something the image has: exit 2, one cause.
    std::fs::write(&feed, "zlib 1.2.13 fixed\nopenssl 3.0.11 fixed in 3.0.15\n").unwrap();
    let (code, text) = plan(&dir, &feed, &["--detailed-exitcode"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("probe `security` output changed"), "{text}");
    let (_, json) = plan(&dir, &feed, &["--json"]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    let build = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "build:app")
        .unwrap();
    assert_eq!(build["action"], "run");
    assert_eq!(
        build["reasons"],
        serde_json::json!([{"kind": "input-changed", "path": "probe:security",
                            "change": "modified", "trigger": "immediate"}])
    );
    apply(&dir, &feed);
    let (code, text) = plan(&dir, &feed, &["--detailed-exitcode"]);
    assert_eq!(code, 0, "{text}");

    // A fix for something the image does not have changes nothing.
    std::fs::write(
        &feed,
        "zlib 1.2.13 fixed\nopenssl 3.0.11 fixed in 3.0.15\ncurl 8 fixed\n",
    )
    .unwrap();
    let (code, text) = plan(&dir, &feed, &["--detailed-exitcode"]);
    assert_eq!(code, 0, "{text}");
    // Every probe instance was removed.
    let tmp_dir = dir.join(".imgraph/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_failing_probe_inside_the_image_fails_the_plan_naming_it() {
    let (tmp, dir) = copy_project("tests/fixtures/projects/image-probe");
    let feed = tmp.path().join("security-feed");
    std::fs::write(&feed, "").unwrap();
    apply(&dir, &feed);
    let config = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("|| true", "; echo broken archive >&2; exit 7");
    std::fs::write(&config, text).unwrap();
    let (code, text) = plan(&dir, &feed, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("run probe `security` inside app"), "{text}");
    assert!(text.contains("exited with status 7"), "{text}");
    assert!(text.contains("broken archive"), "{text}");
}
