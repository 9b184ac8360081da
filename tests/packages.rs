//! `imgraph packages`, `diff` and `sbom` through the real binary: package lists are read
//! from each built image and recorded per version.

mod common;

use std::path::Path;

use common::*;
use cyclonedx_bom::prelude::{Bom, SpecVersion, Validate};
use serde_json::Value;

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = imgraph(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "imgraph {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A project built twice: 1.0.0 from `dpkg/status` as committed, 1.0.1 after adding
/// `curl` and upgrading `libssl3`.
fn two_versions() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, dir) = copy_project("tests/fixtures/projects/packages");
    run_ok(&dir, &["apply"]);
    let status = dir.join("dpkg/status");
    let text = std::fs::read_to_string(&status)
        .unwrap()
        .replace("Version: 3.0.11-1~deb12u2", "Version: 3.0.15-1~deb12u1");
    let curl = "\nPackage: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.88.1-10+deb12u8\n";
    std::fs::write(&status, format!("{text}{curl}")).unwrap();
    run_ok(&dir, &["apply"]);
    (tmp, dir)
}

#[test]
fn packages_lists_what_the_build_installed() {
    let (_t, dir) = copy_project("tests/fixtures/projects/packages");
    run_ok(&dir, &["apply"]);
    let doc: Value = serde_json::from_str(&run_ok(&dir, &["packages", "app", "--json"])).unwrap();
    assert_eq!(doc["format_version"], 1);
    assert_eq!(doc["image"]["version"], "1.0.0");
    assert_eq!(doc["managers"], serde_json::json!(["dpkg"]));
    assert_eq!(doc["os"]["id"], "debian");
    let names: Vec<(&str, &str)> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("base-files", "12.4+deb12u5"),
            ("libssl3", "3.0.11-1~deb12u2"),
            ("nginx", "1.22.1-9"),
            ("tzdata", "2024a-0+deb12u1"),
        ]
    );
    let text = run_ok(&dir, &["packages", "app@1.0.0"]);
    assert!(text.starts_with("app 1.0.0 (local:"), "{text}");
    assert!(
        text.contains("Debian GNU/Linux 12 (bookworm), 4 packages (dpkg)"),
        "{text}"
    );
    assert!(
        text.contains("libssl3     3.0.11-1~deb12u2  amd64"),
        "{text}"
    );
}

#[test]
fn diff_shows_exactly_the_packages_and_files_that_changed() {
    let (_t, dir) = two_versions();
    let text = run_ok(&dir, &["diff", "app", "1.0.0", "1.0.1"]);
    assert_eq!(
        text,
        "app 1.0.0 → 1.0.1\n\
         Packages: 1 added, 0 removed, 1 upgraded, 0 downgraded\n  \
         + curl 7.88.1-10+deb12u8 (amd64)\n  \
         ↑ libssl3 3.0.11-1~deb12u2 → 3.0.15-1~deb12u1 (amd64)\n\
         Files: 1 changed (0 added, 0 removed, 1 modified)\n"
    );
    let doc: Value =
        serde_json::from_str(&run_ok(&dir, &["diff", "app", "1.0.1", "1.0.0", "--json"])).unwrap();
    assert_eq!(doc["packages"]["removed"][0]["name"], "curl");
    assert_eq!(doc["packages"]["downgraded"][0]["name"], "libssl3");
    assert_eq!(doc["files"]["modified"], 1);
    assert_eq!(doc["files"]["changed"], 1);
}

#[test]
fn sbom_is_valid_cyclonedx_with_package_urls() {
    let (_t, dir) = two_versions();
    let out = run_ok(&dir, &["sbom", "app"]);
    let bom = Bom::parse_from_json_v1_5(out.as_bytes()).expect("CycloneDX 1.5 JSON");
    assert!(bom.validate_version(SpecVersion::V1_5).passed());
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["bomFormat"], "CycloneDX");
    assert_eq!(doc["specVersion"], "1.5");
    // Without @VERSION: the newest Ready version.
    assert_eq!(doc["metadata"]["component"]["version"], "1.0.1");
    let purls: Vec<&str> = doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    assert!(
        purls.contains(&"pkg:deb/debian/curl@7.88.1-10+deb12u8?arch=amd64&distro=debian-12"),
        "{purls:?}"
    );
    assert_eq!(purls.len(), 5);
    // The document is a function of the version: written twice, the same bytes.
    let file = dir.join("sbom.json");
    let said = run_ok(&dir, &["sbom", "app@1.0.1", "-o", file.to_str().unwrap()]);
    assert!(said.contains("5 packages"), "{said}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), out);
}

#[test]
fn an_unknown_version_is_an_error_listing_the_known_ones() {
    let (_t, dir) = copy_project("tests/fixtures/projects/packages");
    let out = imgraph(&dir).args(["packages", "app"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("it has no versions yet"), "{err}");
    run_ok(&dir, &["apply"]);
    let out = imgraph(&dir).args(["sbom", "app@9.9.9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed to find app 9.9.9: its versions are 1.0.0"),
        "{err}"
    );
}
