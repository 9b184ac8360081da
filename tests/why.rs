//! `imgraph why NODE` through the real binary, on the quickstart after a real apply: the
//! chain of causes down to the root, with digests, config lines, env names (never
//! values or their digests), the failed run and the max-age arithmetic; `--json`.

mod common;

use std::path::Path;

use common::*;

fn why(dir: &Path, flavor: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = imgraph(dir)
        .arg("why")
        .args(args)
        .env("APP_FLAVOR", flavor)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn apply(dir: &Path, flavor: &str) -> Option<i32> {
    imgraph(dir)
        .arg("apply")
        .env("APP_FLAVOR", flavor)
        .output()
        .unwrap()
        .status
        .code()
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} in {}", path.display());
    write(path, &text.replacen(from, to, 1));
}

/// `digest OLD → NEW` with 12 hex digits each, on the line after `after`.
fn assert_digests_after(text: &str, after: &str) {
    let mut lines = text.lines().skip_while(|l| !l.contains(after));
    assert!(lines.next().is_some(), "{after} in\n{text}");
    let line = lines.next().unwrap_or_default().trim();
    let parts: Vec<&str> = line.split(' ').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "digest"
            && parts[2] == "→"
            && parts[1].len() == 12
            && parts[3].len() == 12
            && parts[1] != parts[3],
        "digests after {after}: {line}"
    );
}

#[test]
fn why_follows_a_cascade_to_its_root_causes() {
    let (_t, dir) = copy_project("examples/quickstart");
    let config = dir.join("imgraph.kdl");
    edit(
        &config,
        "    from \"base\"\n",
        "    from \"base\"\n    env \"APP_FLAVOR\"\n",
    );
    assert_eq!(apply(&dir, "flavour-alpha-1"), Some(0));

    let (code, text, _) = why(&dir, "flavour-alpha-1", &["publish:web"]);
    assert_eq!(code, Some(0));
    assert!(
        text.starts_with("publish:web is up to date (key "),
        "{text}"
    );
    assert!(
        text.contains("nothing changed since its last success of run 1"),
        "{text}"
    );

    // Three changes: a file of base, the web test's config, web's env value.
    append(&dir.join("config/base/motd"), "changed\n");
    edit(
        &config,
        "run \"sh tests/web/check.sh\"\n        timeout \"1m\"",
        "run \"sh tests/web/check.sh\"\n        timeout \"2m\"",
    );
    let (code, text, err) = why(&dir, "flavour-beta-2", &["deliver:web@production"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        text.starts_with("deliver:web@production will run (key "),
        "{text}"
    );
    // The chain, nested down to the root cause, in the words of `imgraph plan`.
    for line in [
        // A delivery follows the artifact: its cascade comes from the image's publish.
        "- cascade from publish:web",
        "publish:web will run",
        "build:web will run",
        "build:base will run",
        "- `config/base/motd` modified",
        "- env APP_FLAVOR changed",
        "test:web/http will run",
        "(explained above)",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    assert_digests_after(&text, "`config/base/motd` modified");
    // An env value is never shown, nor a digest of it.
    let env_next = text
        .lines()
        .skip_while(|l| !l.contains("env APP_FLAVOR changed"))
        .nth(1)
        .unwrap_or_default();
    assert!(!env_next.contains("digest"), "{env_next}");
    assert!(!text.contains("flavour-"), "{text}");
    // The config stanza, line by line: the old line, then the new.
    let line_of = |mark: char, body: &str| {
        text.lines()
            .position(|l| l.trim_start().starts_with(mark) && l.contains(body))
            .unwrap_or_else(|| panic!("{mark} {body} in\n{text}"))
    };
    let removed = line_of('-', "\"timeout_secs\": 60");
    let added = line_of('+', "\"timeout_secs\": 120");
    assert!(removed < added, "{text}");
    // The root cause is indented deeper than the node it explains.
    let indent = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .map(|l| l.len() - l.trim_start().len())
            .unwrap()
    };
    assert!(indent("build:base will run") > indent("build:web will run"));

    // The same as one JSON document, with the full digests.
    let (code, json, _) = why(&dir, "flavour-beta-2", &["build:base", "--json"]);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["format_version"], 1);
    let e = &doc["explanation"];
    assert_eq!(e["node"], "build:base");
    assert_eq!(e["action"], "run");
    let cause = &e["causes"][0];
    assert_eq!(cause["reason"]["kind"], "input-changed");
    assert_eq!(cause["reason"]["path"], "config/base/motd");
    assert_eq!(cause["detail"]["kind"], "digests");
    let (old, new) = (
        cause["detail"]["old"].as_str().unwrap(),
        cause["detail"]["new"].as_str().unwrap(),
    );
    assert!(old.starts_with("b3v1:") && new.starts_with("b3v1:") && old != new);

    // An image names its build; a typo is an error with a suggestion.
    let (code, text, _) = why(&dir, "flavour-beta-2", &["base"]);
    assert_eq!(code, Some(0));
    assert!(text.starts_with("build:base will run"), "{text}");
    let (code, _, err) = why(&dir, "flavour-beta-2", &["biuld:base"]);
    assert_eq!(code, Some(1));
    // Without the diagnostic's frame and line wrapping.
    let err = err
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(err.contains("did you mean `build:base`?"), "{err}");
}

#[test]
fn why_names_the_failed_run_and_the_max_age_arithmetic() {
    let (_t, dir) = copy_project("examples/quickstart");
    write(&dir.join("tests/web/check.sh"), "echo broken >&2\nexit 1\n");
    assert_eq!(
        apply(&dir, "flavour-alpha-1"),
        Some(3),
        "the web test fails"
    );
    let (code, text, _) = why(&dir, "flavour-alpha-1", &["test:web/http"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("- the last run with this key failed"),
        "{text}"
    );
    assert!(text.contains("run 1 failed at "), "{text}");
    assert!(text.contains("; log "), "{text}");

    // A build older than its max-age: how old, and by how much past it.
    edit(
        &dir.join("imgraph.kdl"),
        "max-age \"30d\"",
        "max-age \"1s\"",
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, text, _) = why(&dir, "flavour-alpha-1", &["build:base"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("- older than max-age 1s (built "), "{text}");
    let arithmetic = text
        .lines()
        .find(|l| l.trim_start().starts_with("now "))
        .unwrap_or_else(|| panic!("arithmetic in\n{text}"));
    assert!(
        arithmetic.contains(" old, ") && arithmetic.ends_with(" past max-age"),
        "{arithmetic}"
    );
}
