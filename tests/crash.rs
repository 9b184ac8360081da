//! The crash harness: the real binary's `apply` killed by SIGKILL at many distinct moments
//! — state commits, unpacks, build steps, packs, registry writes, test instances and
//! commands, publish, deliveries, clean-up — and after each, what a user relies on:
//!
//! - right after the kill: the state reads (`plan` works), the lease is free or held by
//!   a process that is gone (so the next apply takes it over), no version is `Ready`
//!   without every test passed on it, and nothing is recorded succeeded that did not
//!   finish (a succeeded delivery was delivered, a succeeded test printed its pass line);
//! - after the next `apply`: it succeeds and the plan is empty; no version recorded before
//!   is lost, none is used twice (the state and the store's registry files agree on every
//!   version's artifact); each image's newest version has the artifact an uninterrupted
//!   run makes, is `Ready`, and is what both environments hold and received last; nothing
//!   is left in `.imgraph/tmp` or as a half-written pack, and the lock is free.
//!
//! The moments come from `IMGRAPH_CRASH_LOG` on an uninterrupted run (`src/crash.rs`);
//! `IMGRAPH_CRASH_AT=N` kills the Nth. `--parallelism 1` keeps the order of moments the
//! same from run to run. The fixture is the quickstart (two images, two tests, two
//! environments) with artifacts that do not name their version, so that a run that
//! skipped a version makes the same bytes as the uninterrupted one. By default 40 moments
//! spread over the run are tried; `IMGRAPH_CRASH_CASES=all` tries every one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The fixture: the quickstart, its base image no longer stamped with its version.
fn template() -> (tempfile::TempDir, PathBuf) {
    let (t, dir) = copy_project("examples/quickstart");
    let script = dir.join("scripts/provision-base.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("build-info")).collect();
    assert_ne!(kept.len(), text.lines().count(), "the stamp line moved");
    write(&script, &(kept.join("\n") + "\n"));
    (t, dir)
}

/// A fresh copy of the fixture (the same bytes and modes every time).
fn fresh(template: &Path) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("project");
    copy_dir(template, &dir);
    (t, dir)
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let out = imgraph(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "imgraph {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn apply(dir: &Path, crash: &[(&str, String)]) -> std::process::Output {
    let mut cmd = imgraph(dir);
    cmd.args(["apply", "--parallelism", "1", "-q"]);
    for (k, v) in crash {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// (image, version) → artifact id, for every version in the state.
fn versions(dir: &Path) -> BTreeMap<(String, String), String> {
    let images = json(dir, &["images", "--json"]);
    let mut seen = BTreeMap::new();
    for r in images["images"].as_array().unwrap() {
        let key = (
            r["image"].as_str().unwrap().to_string(),
            r["version"].as_str().unwrap().to_string(),
        );
        let id = r["id"].as_str().unwrap().to_string();
        assert!(
            seen.insert(key.clone(), id).is_none(),
            "version {key:?} is recorded twice"
        );
    }
    seen
}

/// What an uninterrupted run ends with: each image's newest artifact and status, and the
/// artifact each environment holds.
#[derive(Debug, PartialEq)]
struct Finals {
    newest: BTreeMap<String, (String, String)>,
    holding: BTreeMap<String, String>,
}

fn finals(dir: &Path) -> Finals {
    let images = json(dir, &["images", "--json"]);
    let mut newest: BTreeMap<String, (i64, String, String)> = BTreeMap::new();
    let mut holding = BTreeMap::new();
    for r in images["images"].as_array().unwrap() {
        let image = r["image"].as_str().unwrap().to_string();
        let built = r["built_at_ms"].as_i64().unwrap();
        let id = r["id"].as_str().unwrap().to_string();
        let status = r["status"].as_str().unwrap().to_string();
        if newest.get(&image).is_none_or(|(b, _, _)| built > *b) {
            newest.insert(image.clone(), (built, id.clone(), status));
        }
        for env in r["holding"].as_array().unwrap() {
            let env = format!("{image}@{}", env.as_str().unwrap());
            assert!(
                holding.insert(env.clone(), id.clone()).is_none(),
                "{env} holds two versions"
            );
        }
    }
    Finals {
        newest: newest
            .into_iter()
            .map(|(k, (_, id, st))| (k, (id, st)))
            .collect(),
        holding,
    }
}

/// What must hold right after a kill, before anything recovers.
fn check_after_kill(dir: &Path, at: &str) {
    // The state reads, and plans.
    let plan = imgraph(dir).args(["plan", "--json"]).output().unwrap();
    assert!(
        plan.status.success(),
        "plan after a kill at {at}: {}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let lock = json(dir, &["lock", "status", "--json"]);
    assert!(
        lock["locked"] == false || lock["liveness"] == "gone",
        "the lock after a kill at {at}: {lock}"
    );
    if !dir.join(".imgraph/state.db").exists() {
        return;
    }
    let history = json(dir, &["history", "--json"]);
    let mut tests_passed: BTreeSet<(String, String)> = BTreeSet::new();
    for run in history["runs"].as_array().unwrap() {
        for node in run["nodes"].as_array().unwrap() {
            if node["status"] != "succeeded" {
                continue;
            }
            let id = node["id"].as_str().unwrap();
            let version = node["outputs"]["version"].as_str().unwrap_or_default();
            if let Some(test) = id.strip_prefix("test:") {
                // Recorded succeeded only after its command passed.
                let log =
                    std::fs::read_to_string(node["log_path"].as_str().unwrap()).unwrap_or_default();
                assert!(
                    log.contains("passed"),
                    "{id} recorded succeeded without passing (kill at {at}): {log}"
                );
                tests_passed.insert((test.to_string(), version.to_string()));
            }
            if let Some(rest) = id.strip_prefix("deliver:") {
                // Recorded succeeded only after the delivery command delivered it.
                let (image, env) = rest.split_once('@').unwrap();
                let got = std::fs::read_to_string(dir.join(".imgraph/deliveries").join(env))
                    .unwrap_or_default();
                let artifact = node["outputs"]["artifact_id"].as_str().unwrap();
                assert!(
                    got.lines()
                        .any(|l| l == format!("{image} {version} {artifact}")),
                    "{id} {version} recorded succeeded but never delivered (kill at {at}): {got:?}"
                );
            }
        }
    }
    // Nothing Ready without its tests: base has `smoke`, web has `http`.
    let suites = [("base", "base/smoke"), ("web", "web/http")];
    let images = json(dir, &["images", "--json"]);
    for r in images["images"].as_array().unwrap() {
        if r["status"] != "Ready" {
            continue;
        }
        let image = r["image"].as_str().unwrap();
        let version = r["version"].as_str().unwrap().to_string();
        for (i, suite) in suites {
            if i == image {
                assert!(
                    tests_passed.contains(&(suite.to_string(), version.clone())),
                    "{image} {version} is Ready without test {suite} (kill at {at})"
                );
            }
        }
    }
}

/// What must hold once the next apply finished.
fn check_recovered(
    dir: &Path,
    before: &BTreeMap<(String, String), String>,
    want: &Finals,
    at: &str,
) {
    let after = versions(dir);
    for (v, id) in before {
        assert_eq!(
            after.get(v),
            Some(id),
            "version {v:?} was lost or changed by the recovery (kill at {at})"
        );
    }
    // The store's registry files and the state agree on every version: no number was
    // given to two artifacts.
    let registry = dir.join(".imgraph/images/registry");
    for entry in std::fs::read_dir(&registry).unwrap() {
        let path = entry.unwrap().path();
        let meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let v = (
            meta["image"].as_str().unwrap().to_string(),
            meta["version"].as_str().unwrap().to_string(),
        );
        assert_eq!(
            after.get(&v).map(String::as_str),
            meta["artifact_id"].as_str(),
            "{} and the state disagree (kill at {at})",
            path.display()
        );
    }
    assert_eq!(&finals(dir), want, "the end state after a kill at {at}");
    // Each environment received the newest web last.
    let web = &want.newest["web"].0;
    for env in ["staging", "production"] {
        let got = std::fs::read_to_string(dir.join(".imgraph/deliveries").join(env)).unwrap();
        let last = got.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("web ") && last.ends_with(web.as_str()),
            "{env} last received {last:?}, not {web} (kill at {at})"
        );
    }
    let plan = imgraph(dir)
        .args(["plan", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(
        plan.status.code(),
        Some(0),
        "work left after recovering from a kill at {at}: {}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let tmp: Vec<_> = std::fs::read_dir(dir.join(".imgraph/tmp"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        tmp.is_empty(),
        "left in .imgraph/tmp after a kill at {at}: {tmp:?}"
    );
    let store: Vec<_> = std::fs::read_dir(dir.join(".imgraph/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pack-"))
        .collect();
    assert!(
        store.is_empty(),
        "half-written packs after a kill at {at}: {store:?}"
    );
    assert_eq!(json(dir, &["lock", "status", "--json"])["locked"], false);
}

/// Which moments to try (numbered from 1): all, or `IMGRAPH_CRASH_CASES` of them (40 by
/// default): the first of each kind, then others spread evenly over the run.
fn moments(points: &[String]) -> Vec<usize> {
    let count = points.len();
    let wanted = match std::env::var("IMGRAPH_CRASH_CASES").as_deref() {
        Ok("all") => count,
        Ok(n) => n.parse().expect("IMGRAPH_CRASH_CASES is a number or `all`"),
        Err(_) => 40,
    };
    let mut chosen = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for (i, p) in points.iter().enumerate() {
        if kinds.insert(p) {
            chosen.insert(i + 1);
        }
    }
    // Ever finer even grids over the run, until enough are chosen.
    let target = wanted.min(count);
    let mut parts = 1;
    while chosen.len() < target {
        for j in 0..=parts {
            if chosen.len() >= target {
                break;
            }
            chosen.insert(1 + j * (count - 1) / parts);
        }
        parts *= 2;
    }
    chosen.into_iter().collect()
}

#[test]
fn apply_killed_at_any_moment_loses_nothing_and_the_next_apply_finishes() {
    let (_t, template) = template();

    // The uninterrupted run: its moments, and the end state every recovery must reach.
    let (_r, reference) = fresh(&template);
    let log = reference.join("crash-points.log");
    let out = apply(
        &reference,
        &[("IMGRAPH_CRASH_LOG", log.display().to_string())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let points: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect();
    let want = finals(&reference);
    assert_eq!(want.newest.len(), 2, "{want:?}");
    assert!(
        want.newest.values().all(|(_, st)| st == "Ready"),
        "{want:?}"
    );
    assert_eq!(want.holding.len(), 2, "{want:?}");

    let chosen = moments(&points);
    assert!(
        chosen.len() >= 30,
        "only {} moments to kill at: {points:?}",
        chosen.len()
    );
    let mut kinds = BTreeSet::new();
    for n in chosen {
        let (_c, dir) = fresh(&template);
        let log = dir.join("crash-points.log");
        let killed = apply(
            &dir,
            &[
                ("IMGRAPH_CRASH_AT", n.to_string()),
                ("IMGRAPH_CRASH_LOG", log.display().to_string()),
            ],
        );
        let at = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            killed.status.signal(),
            Some(libc::SIGKILL),
            "apply was to be killed at moment {n} ({}), it ended {:?}: {}",
            points.get(n - 1).map_or("?", String::as_str),
            killed.status,
            String::from_utf8_lossy(&killed.stdout)
        );
        assert!(at.starts_with(&format!("{n} ")), "{at}");
        kinds.insert(at.split_once(' ').unwrap().1.to_string());
        check_after_kill(&dir, &at);
        let before = versions_if_any(&dir);

        let next = apply(&dir, &[]);
        assert_eq!(
            next.status.code(),
            Some(0),
            "the apply after a kill at {at}: {}{}",
            String::from_utf8_lossy(&next.stdout),
            String::from_utf8_lossy(&next.stderr)
        );
        check_recovered(&dir, &before, &want, &at);
    }
    // Every kind of moment the run has was tried at least once.
    let all: BTreeSet<String> = points.into_iter().collect();
    assert_eq!(kinds, all, "kinds of moments never tried");
}

fn versions_if_any(dir: &Path) -> BTreeMap<(String, String), String> {
    if dir.join(".imgraph/state.db").exists() {
        versions(dir)
    } else {
        BTreeMap::new()
    }
}
