//! Saved plans through the real binary: `plan --out FILE`, `show FILE [--json]` and
//! `apply FILE`, which runs exactly the saved plan or refuses (exit 1), naming what moved:
//! the state (lineage + serial), a source, an input, the config, the file's format.

mod common;

use std::path::Path;

use common::*;

/// Exit code, stdout, and stderr with its diagnostic frame and line wrapping taken out
/// (one space between words).
fn run(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = imgraph(dir).args(args).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    let err = err
        .split_whitespace()
        .filter(|w| !matches!(*w, "│" | "×" | "help:"))
        .collect::<Vec<_>>()
        .join(" ");
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        err,
    )
}

fn save(dir: &Path) -> String {
    let file = dir.join("tonight.plan").display().to_string();
    let (code, out, err) = run(dir, &["plan", "--out", &file, "--detailed-exitcode"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("Saved the plan to"), "{out}");
    file
}

/// Nothing ran: no run recorded, no image built.
fn assert_nothing_ran(dir: &Path) {
    let (_, history, _) = run(dir, &["history"]);
    assert_eq!(history, "No runs yet.\n");
}

#[test]
fn a_saved_plan_is_shown_and_applied_exactly_once() {
    let (_t, dir) = copy_project("examples/quickstart");
    let file = save(&dir);

    // `show` prints the plan as `plan` printed it, under where it comes from.
    let (_, plan_text, _) = run(&dir, &["plan"]);
    let (code, shown, _) = run(&dir, &["show", &file]);
    assert_eq!(code, Some(0));
    assert!(shown.starts_with("Saved plan "), "{shown}");
    assert!(shown.contains("at serial 0"), "{shown}");
    assert!(shown.ends_with(&plan_text), "{shown}\n---\n{plan_text}");
    // `show --json` is the plan document `plan --json` prints (same schema).
    let (_, plan_json, _) = run(&dir, &["plan", "--json"]);
    let (_, shown_json, _) = run(&dir, &["show", &file, "--json"]);
    assert_eq!(shown_json, plan_json);

    let (code, out, err) = run(&dir, &["apply", &file]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, _) = run(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "the saved plan did everything");

    // The apply itself moved the state: the same plan is not applied twice.
    let (code, _, err) = run(&dir, &["apply", &file]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("the state changed since the plan: serial 0 →"),
        "{err}"
    );
    assert!(
        err.contains("imgraph plan --out FILE"),
        "says what to do: {err}"
    );
}

#[test]
fn apply_refuses_a_plan_whose_input_source_or_config_moved() {
    let (_t, dir) = copy_project("examples/quickstart");

    let file = save(&dir);
    append(&dir.join("config/base/motd"), "changed\n");
    let (code, _, err) = run(&dir, &["apply", &file]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("`config/base/motd` modified: ") && err.contains(" (an input of build:base)"),
        "{err}"
    );
    // Short old → new digests, 12 hex digits each.
    let digests: Vec<&str> = err
        .split("`config/base/motd` modified: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .take(3)
        .collect();
    assert_eq!(digests[1], "→", "{err}");
    assert!(
        digests[0].len() == 12 && digests[2].len() == 12 && digests[0] != digests[2],
        "{err}"
    );
    assert_nothing_ran(&dir);

    let file = save(&dir);
    append(&dir.join("bases/tiny-root/etc/hostname"), "other\n");
    let (code, _, err) = run(&dir, &["apply", &file]);
    assert_eq!(code, Some(1));
    assert!(err.contains("source `tiny-root` now resolves to "), "{err}");
    assert_nothing_ran(&dir);

    let file = save(&dir);
    let config = dir.join("imgraph.kdl");
    let text = std::fs::read_to_string(&config).unwrap();
    write(
        &config,
        &text.replace(
            "run \"sh tests/web/check.sh\"",
            "run \"sh tests/web/check.sh --all\"",
        ),
    );
    let (code, _, err) = run(&dir, &["apply", &file]);
    assert_eq!(code, Some(1));
    assert!(err.contains("the config of test:web/http changed"), "{err}");
    assert_nothing_ran(&dir);
}

#[test]
fn apply_refuses_another_state_file_a_newer_format_and_a_stranger() {
    let (_t, dir) = copy_project("examples/quickstart");
    let file = save(&dir);
    // The same project with its own state file: another lineage.
    let (_t2, other) = copy_project("examples/quickstart");
    let (code, _, err) = run(&other, &["apply", &file]);
    assert_eq!(code, Some(1));
    assert!(err.contains("another state file"), "{err}");

    let text = std::fs::read_to_string(&file).unwrap();
    let newer = dir.join("newer.plan");
    write(
        &newer,
        &text.replacen("\"format_version\": 1,", "\"format_version\": 99,", 1),
    );
    let (code, _, err) = run(&dir, &["apply", newer.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("format version 99"), "{err}");
    let (code, _, err) = run(&dir, &["show", newer.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");

    let stranger = dir.join("imgraph.kdl");
    let (code, _, err) = run(&dir, &["apply", stranger.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not an imgraph saved plan"), "{err}");

    // A saved plan carries its own options: none may be added at apply time.
    let (code, _, _) = run(&dir, &["apply", &file, "--rollup"]);
    assert_eq!(code, Some(1));
    assert_nothing_ran(&dir);
}
