//! `imgraph plan`, `validate` and `graph` through the real binary: text and JSON
//! snapshots, the JSON schema, exit codes and colour rules.

mod common;

use std::path::Path;

use common::*;
use imgraph::plan::PlanOptions;

fn stdout_of(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = imgraph(dir).args(args).output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_root().join("schema/plan.schema.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&value).unwrap()
}

fn assert_valid(doc: &str) {
    let value: serde_json::Value = serde_json::from_str(doc).unwrap();
    let validator = schema();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "plan JSON does not match schema/plan.schema.json:\n{}",
        errors.join("\n")
    );
}

#[test]
fn fresh_quickstart_plan_text_and_exit_codes() {
    let (_t, dir) = copy_project("examples/quickstart");
    let (code, text) = stdout_of(&dir, &["plan"]);
    assert_eq!(code, Some(0));
    insta::assert_snapshot!("quickstart_fresh_text", text);
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(2));
    assert!(!text.contains('\u{1b}'), "no colour when piped");
}

#[test]
fn one_cause_and_its_cascades_in_text_and_json() {
    let (_t, dir) = copy_project("examples/quickstart");
    let plan = plan_of(&dir, &PlanOptions::default());
    seed_success(&dir, &plan);
    append(&dir.join("config/base/motd"), "changed\n");
    append(&dir.join("packages/base.txt"), "htop\n");
    let (code, text) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(2));
    insta::assert_snapshot!("quickstart_cause_and_cascades_text", text);
    let (_, json) = stdout_of(&dir, &["plan", "--json"]);
    assert_valid(&json);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    insta::assert_json_snapshot!("quickstart_cause_and_cascades_json", value);
}

#[test]
fn deferred_and_rollup_plans_match_the_schema() {
    let (_t, dir) = copy_project("examples/quickstart");
    let (_, fresh) = stdout_of(&dir, &["plan", "--json"]);
    assert_valid(&fresh);
    let plan = plan_of(&dir, &PlanOptions::default());
    seed_success(&dir, &plan);
    let (code, json) = stdout_of(&dir, &["plan", "--json", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "nothing changed: {json}");
    assert_valid(&json);
    append(&dir.join("packages/base.txt"), "htop\n");
    let (code, deferred) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "a deferred change is not a pending change");
    insta::assert_snapshot!("quickstart_deferred_text", deferred);
    let (code, rollup) = stdout_of(&dir, &["plan", "--json", "--rollup", "--detailed-exitcode"]);
    assert_eq!(code, Some(2));
    assert_valid(&rollup);
    for extra in [["--target", "base"], ["--force", "web"]] {
        let (_, j) = stdout_of(&dir, &["plan", "--json", extra[0], extra[1]]);
        assert_valid(&j);
    }
}

#[test]
fn bad_config_exits_1_with_a_located_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("imgraph.kdl"),
        "image \"a\" {\n    form \"x\"\n}\n",
    );
    let out = imgraph(tmp.path())
        .args(["plan", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("imgraph.kdl:2:5"), "{err}");
    assert!(err.contains("from"), "suggests `from`: {err}");
    assert!(
        !tmp.path().join(".imgraph").exists(),
        "bad config changes nothing"
    );
}

#[test]
fn unknown_target_and_force_are_errors() {
    let (_t, dir) = copy_project("examples/quickstart");
    let out = imgraph(&dir)
        .args(["plan", "--target", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target `nope`"));
    let out = imgraph(&dir)
        .args(["plan", "--force", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn validate_and_graph() {
    let (_t, dir) = copy_project("examples/quickstart");
    let (code, text) = stdout_of(&dir, &["validate"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("2 images, 1 source, 2 environments, 9 stages: ok"),
        "{text}"
    );
    let (_, dot) = stdout_of(&dir, &["graph", "--format", "dot"]);
    insta::assert_snapshot!("quickstart_graph_dot", dot);
    let (_, mermaid) = stdout_of(&dir, &["graph", "--format", "mermaid"]);
    insta::assert_snapshot!("quickstart_graph_mermaid", mermaid);
}

#[test]
fn colour_only_when_asked_for_or_on_a_terminal() {
    let (_t, dir) = copy_project("examples/quickstart");
    let out = imgraph(&dir)
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1")
        .arg("plan")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('\u{1b}'),
        "CLICOLOR_FORCE gives colour"
    );
    let out = imgraph(&dir)
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1")
        .arg("plan")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains('\u{1b}'),
        "NO_COLOR wins"
    );
}

#[test]
fn a_closed_pipe_is_not_a_crash() {
    // Regression: `imgraph apply | head -1` panicked with "failed printing to stdout" once
    // head had gone; the apply must go on, finish and clean up regardless.
    let (_t, dir) = copy_project("examples/quickstart");
    let bin = assert_cmd::cargo::cargo_bin("imgraph");
    let script = format!(
        "'{}' -C '{}' apply | head -n 1 >/dev/null",
        bin.display(),
        dir.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        code,
        Some(0),
        "the apply finished although nobody read its output"
    );
}

/// The parse cache (`.imgraph/config.cache`) is keyed by the config's bytes: an edit that
/// keeps the file's size is seen at once, so is going back to the first text, a bad edit is
/// reported and not cached, and a damaged cache entry is only a miss.
#[test]
fn an_edited_config_is_seen_through_the_parse_cache() {
    let (_t, dir) = copy_project("examples/quickstart");
    let cache = dir.join(imgraph::config::CACHE_FILE);
    let config = dir.join("imgraph.kdl");
    let first = std::fs::read_to_string(&config).unwrap();
    let (code, _) = stdout_of(&dir, &["apply", "-q"]);
    assert_eq!(code, Some(0));
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0));
    assert!(
        cache.is_file(),
        "a clean load into an existing .imgraph writes the cache"
    );

    // Same length, same second: only the bytes tell the texts apart.
    let edited = first.replacen("timeout \"1m\"", "timeout \"9m\"", 1);
    assert_eq!(edited.len(), first.len());
    std::fs::write(&config, &edited).unwrap();
    let plan = plan_json(&dir, &[]);
    assert_eq!(
        reason_kinds(&plan, "test:base/smoke"),
        vec!["config-changed".to_string()]
    );
    std::fs::write(&config, &first).unwrap();
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "going back to the first text is seen too");

    let cached = std::fs::read(&cache).unwrap();
    std::fs::write(
        &config,
        first.replacen("timeout \"1m\"", "timeout \"1x\"", 1),
    )
    .unwrap();
    let (code, _) = stdout_of(&dir, &["plan"]);
    assert_eq!(
        code,
        Some(1),
        "a bad edit is reported, not hidden by the cache"
    );
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        cached,
        "a bad config is not cached"
    );

    std::fs::write(&config, &first).unwrap();
    let mut damaged = cached.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&cache, &damaged).unwrap();
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "a damaged entry is a miss, parsed again");
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        cached,
        "and written again whole"
    );
}

/// The reasons of node `id` that name input `path`, as `(kind, change)`.
fn input_changes(plan: &serde_json::Value, id: &str, path: &str) -> Vec<(String, String)> {
    plan_node(plan, id)["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter(|r| r["path"] == path)
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default().to_owned(),
                r["change"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn set_modified(path: &Path, when: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(when))
        .unwrap();
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// The stat cache (a file beside the state) is used, and never hides an edit: a rewrite
/// of the same size with the mtime set back, a rewrite in the same moment the file was
/// hashed, a deleted file; a damaged cache file is only a miss and is written whole again.
/// (The racy-entry rule on its own, with ctime equal too, which a test cannot produce on
/// a real file, is `hash::tests::stat_cache_reuses_matching_entry_and_rehashes_racy_or_changed_ones`.)
#[test]
fn the_stat_cache_is_used_and_never_hides_an_edit() {
    use std::os::unix::fs::MetadataExt;
    let (_t, dir) = copy_project("examples/quickstart");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let conf = dir.join("config/base/acme.conf");
    let motd = dir.join("config/base/motd");
    for file in [&conf, &motd] {
        set_modified(file, hour_ago);
    }
    let (code, _) = stdout_of(&dir, &["apply", "-q"]);
    assert_eq!(code, Some(0));
    let cache = dir.join(".imgraph/state.db-statcache");
    assert!(
        cache.is_file(),
        "hashing wrote the stat cache beside the state"
    );
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0));

    // Used: an entry matching the file's metadata is believed, even with a digest the
    // file does not have (so the checks below are not passing by reading every file).
    let md = std::fs::symlink_metadata(&conf).unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    let believed = imgraph::state::StatEntry {
        size: md.size(),
        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        inode: md.ino(),
        mode: md.mode(),
        digest: format!("b3v1:{}", "0".repeat(64)),
        recorded_at_ns: ns(md.mtime(), 0) + 3_600_000_000_000,
    };
    let good = std::fs::read(&cache).unwrap();
    imgraph::workspace::Workspace::open(&dir)
        .unwrap()
        .state
        .store_stat_cache(&[("config/base/acme.conf".into(), believed)]);
    let plan = plan_json(&dir, &[]);
    assert_eq!(
        input_changes(&plan, "build:base", "config/base/acme.conf"),
        vec![("input-changed".to_owned(), "modified".to_owned())]
    );

    // Damaged: a miss, every file read again (the false digest is gone), written whole.
    let mut damaged = std::fs::read(&cache).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&cache, &damaged).unwrap();
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "a damaged stat cache is a miss");
    assert_eq!(std::fs::read(&cache).unwrap().len(), good.len());
    std::fs::write(&cache, &good[..good.len() - 1]).unwrap();
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "a cut stat cache is a miss");
    std::fs::write(&cache, b"not a stat cache").unwrap();
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "a foreign file is a miss");
    assert_ne!(std::fs::read(&cache).unwrap(), b"not a stat cache");

    // Stale: the same size, the mtime set back to what the cache holds.
    let text = std::fs::read(&conf).unwrap();
    let mut edited = text.clone();
    edited[0] ^= 0x01;
    std::fs::write(&conf, &edited).unwrap();
    set_modified(&conf, hour_ago);
    assert_eq!(modified(&conf), hour_ago);
    let plan = plan_json(&dir, &[]);
    assert_eq!(
        input_changes(&plan, "build:base", "config/base/acme.conf"),
        vec![("input-changed".to_owned(), "modified".to_owned())]
    );
    std::fs::write(&conf, &text).unwrap();
    set_modified(&conf, hour_ago);
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "the first bytes again: up to date");

    // Racy: written, applied (hashed and recorded) and written again with the same size
    // and mtime, in one moment: neither bytes is taken for the other.
    std::fs::write(&motd, b"aaaa\n").unwrap();
    let when = modified(&motd);
    let (code, _) = stdout_of(&dir, &["apply", "-q"]);
    assert_eq!(code, Some(0));
    std::fs::write(&motd, b"bbbb\n").unwrap();
    set_modified(&motd, when);
    let plan = plan_json(&dir, &[]);
    assert_eq!(
        input_changes(&plan, "build:base", "config/base/motd"),
        vec![("input-changed".to_owned(), "modified".to_owned())],
        "the second write is seen"
    );
    std::fs::write(&motd, b"aaaa\n").unwrap();
    set_modified(&motd, when);
    let (code, _) = stdout_of(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "and so is going back to the applied bytes");

    // Deleted: reported as removed, the stale entry is not an error.
    std::fs::remove_file(&motd).unwrap();
    let plan = plan_json(&dir, &[]);
    assert_eq!(
        input_changes(&plan, "build:base", "config/base/motd"),
        vec![("input-changed".to_owned(), "removed".to_owned())]
    );
}
