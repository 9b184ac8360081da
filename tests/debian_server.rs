//! examples/debian-server end to end: a real Debian 12 root from debootstrap (made once by
//! the example's make-origin.sh and cached under the target directory), nginx installed
//! from the archive inside bwrap, tests inside fresh instances, probes inside the image,
//! deliveries; then a broken site config and one more package.
//!
//! Needs root, bwrap and the archive (deb.debian.org); scripts/test.sh installs
//! debootstrap and fills the cache. Under CI a missing piece fails the test.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = imgraph(dir).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let (code, text) = run(dir, args);
    assert_eq!(code, 0, "imgraph {args:?}: {text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_debian_server_example_applies_end_to_end() {
    let Some(origin) = debian_origin() else {
        return;
    };
    let (_t, dir) = copy_project("examples/debian-server");
    let made = std::process::Command::new("sh")
        .arg(dir.join("make-origin.sh"))
        .env("IMGRAPH_DEBIAN_ORIGIN", &origin)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let (code, text) = run(&dir, &["apply"]);
    assert_eq!(code, 0, "{text}");
    let images = json(&dir, &["images", "--json"]);
    assert_eq!(images["images"][0]["version"], "1.0.0");
    assert_eq!(images["images"][0]["status"], "Ready");
    assert_eq!(
        images["images"][0]["environments"],
        serde_json::json!(["staging", "production"])
    );
    // The tests ran inside the instance: nginx answered on its loopback.
    let logs: Vec<PathBuf> = std::fs::read_dir(dir.join(".imgraph/logs/run-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let serve = logs
        .iter()
        .find(|p| p.ends_with("test_web_serve.log"))
        .expect("serve log");
    let serve = std::fs::read_to_string(serve).unwrap();
    assert!(serve.contains("served the site on 127.0.0.1:80"), "{serve}");

    // What is inside: nginx from the archive, recorded with the version.
    let pkgs = json(&dir, &["packages", "web", "--json"]);
    assert_eq!(pkgs["os"]["id"], "debian");
    let names: Vec<&str> = pkgs["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"nginx") && names.contains(&"base-files"),
        "{names:?}"
    );
    assert!(!names.contains(&"less"), "{names:?}");

    // Nothing changed: the probes inside the image see what they saw after the build.
    let (code, text) = run(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{text}");

    // A broken site config and one more package: the build succeeds, `nginx -t` fails,
    // the version is Failed and never delivered.
    let site = dir.join("site/site.conf");
    let broken = std::fs::read_to_string(&site).unwrap().replace(
        "index index.html;",
        "index index.html;\n    this_is_not_a_directive on;",
    );
    std::fs::write(&site, broken).unwrap();
    let list = dir.join("packages/server.txt");
    let more = format!("{}less\n", std::fs::read_to_string(&list).unwrap());
    std::fs::write(&list, more).unwrap();
    let (code, text) = run(&dir, &["apply", "--rollup"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("test:web/config"), "{text}");
    let images = json(&dir, &["images", "--json"]);
    let failed = images["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["version"] == "1.0.1")
        .expect("1.0.1");
    assert_eq!(failed["status"], "Failed");
    assert_eq!(failed["environments"], serde_json::json!([]));
    let delivered = std::fs::read_to_string(dir.join(".imgraph/deliveries/production")).unwrap();
    assert!(!delivered.contains("1.0.1"), "{delivered}");

    // The two versions differ by exactly that package.
    let diff = json(&dir, &["diff", "web", "1.0.0", "1.0.1", "--json"]);
    let added: Vec<&str> = diff["packages"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(added, vec!["less"], "{diff}");
    assert_eq!(diff["packages"]["removed"], serde_json::json!([]));
    assert_eq!(diff["packages"]["upgraded"], serde_json::json!([]));
    assert_eq!(diff["packages"]["downgraded"], serde_json::json!([]));
    assert!(diff["files"]["changed"].as_u64().unwrap() > 0, "{diff}");

    // Nothing of the runs is left behind.
    let tmp = dir.join(".imgraph/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
