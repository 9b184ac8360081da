//! examples/ci: the GitHub Actions and GitLab CI definitions parse as YAML, define the four
//! jobs, and their commands do what examples/ci/README.md says when run, in order, against
//! a copy of examples/quickstart with the binary under test on PATH.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::Value;

fn load(rel: &str) -> Value {
    let text = std::fs::read_to_string(common::repo_root().join(rel)).expect("read CI file");
    let mut doc: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    doc.apply_merge().expect("YAML merge keys");
    doc
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A job: the shell scripts it runs, in order, and its environment.
#[derive(Debug, Default)]
struct Job {
    scripts: Vec<String>,
    env: BTreeMap<String, String>,
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (text(k).to_string(), text(v).to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// GitHub: every `run` step but the install step, with the workflow's `env`.
fn github_jobs(doc: &Value) -> BTreeMap<String, Job> {
    let env = string_map(&doc["env"]);
    let mut jobs = BTreeMap::new();
    for (name, job) in doc["jobs"].as_mapping().expect("jobs") {
        let mut j = Job {
            env: env.clone(),
            ..Job::default()
        };
        for step in job["steps"].as_sequence().expect("steps") {
            if text(&step["name"]) == "Install imgraph" {
                assert!(text(&step["run"]).contains("cargo install"), "{step:?}");
                continue;
            }
            let Some(run) = step["run"].as_str() else {
                assert!(step["uses"].is_string(), "a step runs or uses: {step:?}");
                continue;
            };
            assert!(
                !run.contains("${{"),
                "scripts take values from env, never from expressions: {run}"
            );
            j.scripts.push(run.to_string());
        }
        jobs.insert(text(name).to_string(), j);
    }
    jobs
}

/// GitLab: every job's `script` (the `before_script` only installs imgraph), with the
/// file's `variables`.
fn gitlab_jobs(doc: &Value) -> BTreeMap<String, Job> {
    let env = string_map(&doc["variables"]);
    let before = doc["default"]["before_script"]
        .as_sequence()
        .expect("default before_script");
    assert!(
        before.iter().all(|l| text(l).contains("cargo install")),
        "{before:?}"
    );
    let mut jobs = BTreeMap::new();
    for (name, job) in doc.as_mapping().expect("top level") {
        let name = text(name);
        if name.starts_with('.') || ["variables", "default", "stages"].contains(&name) {
            continue;
        }
        let lines: Vec<&str> = job["script"]
            .as_sequence()
            .unwrap_or_else(|| panic!("job {name} has a script"))
            .iter()
            .map(text)
            .collect();
        jobs.insert(
            name.to_string(),
            Job {
                scripts: vec![lines.join("\n")],
                env: env.clone(),
            },
        );
    }
    jobs
}

/// A checkout: `examples/quickstart` (as committed) inside a temporary folder.
fn checkout() -> (tempfile::TempDir, PathBuf) {
    let (tmp, project) = common::copy_project("examples/quickstart");
    let root = tmp.path().join("checkout");
    std::fs::create_dir_all(root.join("examples")).expect("mkdir");
    std::fs::rename(&project, root.join("examples/quickstart")).expect("move");
    (tmp, root)
}

struct Ran {
    code: i32,
    output: String,
    summary: String,
}

/// Runs a job's scripts as CI would (bash, errexit, pipefail), stopping at the first
/// failing one.
fn run(job: &Job, root: &Path) -> Ran {
    let bin = assert_cmd::cargo::cargo_bin("imgraph");
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let summary = root.join("step-summary.md");
    let _ = std::fs::remove_file(&summary);
    let mut output = String::new();
    for script in &job.scripts {
        let out = std::process::Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
            .current_dir(root)
            .envs(&job.env)
            .env("PATH", &path)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITLAB_CI")
            .env_remove("RUST_LOG")
            .output()
            .expect("run bash");
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        let code = out.status.code().unwrap_or(-1);
        if code != 0 {
            return Ran {
                code,
                output,
                summary: std::fs::read_to_string(&summary).unwrap_or_default(),
            };
        }
    }
    Ran {
        code: 0,
        output,
        summary: std::fs::read_to_string(&summary).unwrap_or_default(),
    }
}

fn job<'a>(jobs: &'a BTreeMap<String, Job>, name: &str) -> &'a Job {
    jobs.get(name)
        .unwrap_or_else(|| panic!("no job `{name}` in {:?}", jobs.keys()))
}

/// The four jobs, in the order a project lives through them.
fn lifecycle(jobs: &BTreeMap<String, Job>, markdown_summary: bool) {
    let (_t, root) = checkout();
    let project = root.join("examples/quickstart");

    let pr = run(job(jobs, "plan"), &root);
    assert_eq!(
        pr.code, 0,
        "pending changes do not fail a pull request: {}",
        pr.output
    );
    let plan_md = if markdown_summary {
        pr.summary.clone()
    } else {
        std::fs::read_to_string(root.join("plan.md")).expect("plan.md artifact")
    };
    assert!(plan_md.contains("### imgraph plan"), "{plan_md}");
    assert!(plan_md.contains("| + | `build:base` |"), "{plan_md}");
    assert!(
        !project.join(".imgraph/images").exists(),
        "a plan builds nothing"
    );

    let main = run(job(jobs, "apply"), &root);
    assert_eq!(main.code, 0, "{}", main.output);
    assert!(main.output.contains("Apply complete"), "{}", main.output);

    let quiet_night = run(job(jobs, "nightly"), &root);
    assert_eq!(quiet_night.code, 0, "{}", quiet_night.output);

    common::append(&project.join("config/base/motd"), "changed by a commit\n");
    let night = run(job(jobs, "nightly"), &root);
    assert_eq!(
        night.code, 2,
        "immediate changes pending fail the nightly job: {}",
        night.output
    );
    assert_eq!(run(job(jobs, "apply"), &root).code, 0);

    common::append(&project.join("packages/base.txt"), "htop\n");
    let deferred = run(job(jobs, "nightly"), &root);
    assert_eq!(
        deferred.code, 0,
        "a rollup change waits for the weekly job: {}",
        deferred.output
    );
    let weekly = run(job(jobs, "weekly"), &root);
    assert_eq!(weekly.code, 0, "{}", weekly.output);
    assert!(weekly.output.contains("build:base"), "{}", weekly.output);
    let plan = common::imgraph(&project)
        .args(["plan", "--detailed-exitcode", "--json"])
        .output()
        .expect("plan");
    assert_eq!(plan.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("json");
    assert_eq!(
        doc["summary"]["deferred"], 0,
        "the roll-up applied the change"
    );
}

#[test]
fn github_actions_workflow_runs_its_four_jobs_against_the_quickstart() {
    let doc = load("examples/ci/github/imgraph.yml");
    let crons: Vec<&str> = doc["on"]["schedule"]
        .as_sequence()
        .expect("on.schedule")
        .iter()
        .map(|s| text(&s["cron"]))
        .collect();
    assert_eq!(crons.len(), 2, "a nightly and a weekly schedule");
    let jobs = &doc["jobs"];
    assert!(text(&jobs["plan"]["if"]).contains("pull_request"));
    assert!(text(&jobs["apply"]["if"]).contains("push"));
    assert!(text(&jobs["nightly"]["if"]).contains(crons[0]));
    assert!(text(&jobs["weekly"]["if"]).contains(crons[1]));
    for name in ["apply", "weekly"] {
        assert_eq!(
            text(&jobs[name]["concurrency"]["group"]),
            "imgraph-state",
            "{name} writes the state: one at a time"
        );
    }
    lifecycle(&github_jobs(&doc), true);
}

#[test]
fn gitlab_ci_pipeline_runs_its_four_jobs_against_the_quickstart() {
    let doc = load("examples/ci/gitlab/.gitlab-ci.yml");
    for (name, rule, policy) in [
        ("plan", "merge_request_event", "pull"),
        ("apply", "CI_DEFAULT_BRANCH", "pull-push"),
        ("nightly", "nightly", "pull"),
        ("weekly", "weekly", "pull-push"),
    ] {
        let job = &doc[name];
        assert!(
            text(&job["rules"][0]["if"]).contains(rule),
            "{name}: {job:?}"
        );
        assert_eq!(text(&job["cache"]["policy"]), policy, "{name}");
        assert_eq!(text(&job["cache"]["key"]), "imgraph-state", "{name}");
    }
    for name in ["apply", "weekly"] {
        assert_eq!(
            text(&doc[name]["resource_group"]),
            "imgraph-state",
            "{name}"
        );
    }
    lifecycle(&gitlab_jobs(&doc), false);
}
