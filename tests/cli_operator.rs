//! What an operator meets around the core commands, through the real binary: `init`,
//! completions and the manual, colour and log levels, CI annotations, the Markdown plan,
//! and the messages a newcomer trips over (missing folders, misspelt targets, missing
//! origins, missing AWS credentials).

mod common;

use std::path::Path;

use common::*;

fn output(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = imgraph(dir).args(args).output().expect("run imgraph");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn init_writes_a_local_project_that_validates_and_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new-project");
    let (code, out, err) = output(&dir, &["init"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("wrote a new local project"), "{out}");
    let (code, out, err) = output(&dir, &["validate"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 image, 1 source, 1 environment"), "{out}");
    let (code, out, err) = output(&dir, &["apply"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Apply complete: 4 succeeded"), "{out}");
    let (_, images, _) = output(&dir, &["images"]);
    assert!(images.contains("app    0.1.0"), "{images}");
    assert!(images.contains("Ready"), "{images}");
    assert!(images.trim_end().ends_with("staging"), "{images}");
    let (code, _, _) = output(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, Some(0), "nothing left to do after the apply");

    // A second init changes nothing.
    let before = std::fs::read_to_string(dir.join("imgraph.kdl")).unwrap();
    common::write(&dir.join("imgraph.kdl"), &format!("{before}// mine\n"));
    let (code, _, err) = output(&dir, &["init"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("imgraph.kdl already exists"), "{err}");
    assert!(std::fs::read_to_string(dir.join("imgraph.kdl"))
        .unwrap()
        .ends_with("// mine\n"));
}

#[test]
fn init_aws_writes_a_project_that_validates_without_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ami");
    let (code, _, err) = output(&dir, &["init", "--aws"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = output(&dir, &["validate"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 image, 1 source, 0 environments"), "{out}");
    let text = std::fs::read_to_string(dir.join("imgraph.kdl")).unwrap();
    assert!(text.contains("provider \"aws\""), "{text}");
}

#[test]
fn completions_for_bash_zsh_and_fish_name_the_commands() {
    let tmp = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _imgraph"),
        ("zsh", "#compdef imgraph"),
        ("fish", "complete -c imgraph"),
    ] {
        let (code, script, err) = output(tmp.path(), &["completions", shell]);
        assert_eq!(code, Some(0), "{err}");
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["apply", "plan", "detailed-exitcode", "rollup"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    // The bash script is valid bash.
    let (_, script, _) = output(tmp.path(), &["completions", "bash"]);
    let file = tmp.path().join("imgraph.bash");
    common::write(&file, &script);
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn the_manual_renders_with_man_and_covers_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, page, _) = output(tmp.path(), &["man"]);
    assert_eq!(code, Some(0));
    assert!(page.starts_with(".ie"), "{page}");
    assert!(page.contains(".TH imgraph 1"), "{page}");
    let file = tmp.path().join("imgraph.1");
    common::write(&file, &page);
    let rendered = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .arg(&file)
        .output()
        .expect("groff (Debian's groff-base) renders manual pages");
    assert!(rendered.status.success());
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("SUBCOMMANDS"), "{text}");

    let pages = tmp.path().join("man");
    let (code, _, err) = output(tmp.path(), &["man", "--out-dir", pages.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    for name in [
        "imgraph.1",
        "imgraph-plan.1",
        "imgraph-apply.1",
        "imgraph-init.1",
    ] {
        assert!(pages.join(name).is_file(), "{name}");
    }
}

#[test]
fn a_missing_project_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-folder");
    let (code, _, err) = output(&missing, &["plan"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("folder {} does not exist", missing.display())),
        "{err}"
    );
    assert!(!missing.exists(), "nothing was created");
}

#[test]
fn a_misspelt_target_or_forced_image_gets_a_suggestion() {
    let (_t, dir) = copy_project("examples/quickstart");
    let (code, _, err) = output(&dir, &["plan", "--target", "wbe"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("unknown target `wbe`: did you mean `web`?"),
        "{err}"
    );
    let (_, _, err) = output(&dir, &["plan", "--target", "deliver:web@stagign"]);
    assert!(err.contains("did you mean `deliver:web@staging`?"), "{err}");
    let (code, _, err) = output(&dir, &["apply", "--force", "bsae"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("did you mean `base`?"), "{err}");
}

#[test]
fn a_missing_origin_points_at_the_script_that_makes_it() {
    let (_t, dir) = copy_project("examples/busybox-bwrap");
    let (code, _, err) = output(&dir, &["validate"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("`make-root.sh` names `bases/busybox-root`: run `sh make-root.sh` first"),
        "{err}"
    );
}

#[test]
fn plan_as_markdown_for_a_job_summary() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    common::append(&dir.join("config/web/index.html"), "<p>v2</p>\n");
    common::append(&dir.join("packages/base.txt"), "htop\n");
    let (code, md, _) = output(
        &dir,
        &["plan", "--format", "markdown", "--detailed-exitcode"],
    );
    assert_eq!(code, Some(2), "the exit code does not depend on the format");
    insta::assert_snapshot!("quickstart_changed_markdown", md);
    let (_, json, _) = output(&dir, &["plan", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["format_version"], 1);
    let (code, _, err) = output(&dir, &["plan", "--json", "--format", "markdown"]);
    assert_eq!(code, Some(1), "--json and --format conflict: {err}");
}

#[test]
fn colour_follows_the_color_flag_then_the_environment() {
    let (_t, dir) = copy_project("examples/quickstart");
    let (_, out, _) = output(&dir, &["--color", "always", "plan"]);
    assert!(out.contains('\u{1b}'), "--color always wins over NO_COLOR");
    let out = imgraph(&dir)
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1")
        .args(["--color", "never", "plan"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\u{1b}'));

    // Errors: plain ASCII text in a pipe, still located; colour when asked for.
    common::write(
        &dir.join("imgraph.kdl"),
        "image \"a\" {\n    form \"x\"\n}\n",
    );
    let (_, _, err) = output(&dir, &["validate"]);
    assert!(err.contains("imgraph.kdl:2:5]"), "{err}");
    assert!(err.is_ascii(), "no box drawing off a terminal: {err}");
    let (_, _, err) = output(&dir, &["--color", "always", "validate"]);
    assert!(err.contains('\u{1b}'), "{err}");
}

#[test]
fn verbose_quiet_and_rust_log_set_what_goes_to_stderr() {
    let (_t, dir) = copy_project("examples/quickstart");
    let (_, _, err) = output(&dir, &["plan"]);
    assert!(!err.contains("INFO"), "{err}");
    let (_, _, err) = output(&dir, &["-v", "plan"]);
    assert!(
        err.contains("INFO") && err.contains("project loaded"),
        "{err}"
    );
    let out = imgraph(&dir)
        .env("RUST_LOG", "debug")
        .args(["apply", "-q"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DEBUG") && err.contains("node started"),
        "{err}"
    );
    // -q: no progress lines, but the summary.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("start "), "{stdout}");
    assert!(stdout.contains("Apply complete"), "{stdout}");
    let (code, _, _) = output(&dir, &["-v", "-q", "plan"]);
    assert_eq!(code, Some(1), "-v and -q conflict");
}

#[test]
fn under_github_actions_failures_are_also_workflow_commands() {
    let (_t, dir) = copy_project("examples/quickstart");
    let config = std::fs::read_to_string(dir.join("imgraph.kdl")).unwrap();
    common::write(
        &dir.join("imgraph.kdl"),
        &config.replacen("from \"tiny-root\"", "form \"tiny-root\"", 1),
    );
    let out = imgraph(&dir)
        .env("GITHUB_ACTIONS", "true")
        .env_remove("GITHUB_WORKSPACE")
        .arg("validate")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = config
        .lines()
        .position(|l| l.contains("from \"tiny-root\""))
        .unwrap()
        + 1;
    let file = format!("{}/imgraph.kdl", dir.display());
    assert!(
        err.contains(&format!(
            "::error file={file},line={line},col=5,title=imgraph%3A%3Aconfig%3A%3Aunknown_node::"
        )),
        "{err}"
    );
    // Relative to the checkout when GITHUB_WORKSPACE holds the project.
    let out = imgraph(&dir)
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_WORKSPACE", dir.parent().unwrap())
        .arg("validate")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("::error file=project/imgraph.kdl,"), "{err}");

    // A failed node: its error and log tail.
    common::write(&dir.join("imgraph.kdl"), &config);
    common::write(
        &dir.join("tests/base/smoke.sh"),
        "echo checking the motd\necho 'motd is missing' >&2\nexit 1\n",
    );
    let out = imgraph(&dir)
        .env("GITHUB_ACTIONS", "true")
        .arg("apply")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let annotation = err
        .lines()
        .find(|l| l.starts_with("::error title=imgraph%3A test%3Abase/smoke failed::"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(annotation.contains("%0Amotd is missing%0A"), "{annotation}");
    assert!(annotation.contains("full log: "), "{annotation}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("::error"),
        "annotations stay off stdout"
    );
}

#[test]
fn under_gitlab_ci_failures_get_their_own_log_section() {
    let (_t, dir) = copy_project("examples/quickstart");
    common::write(&dir.join("tests/web/check.sh"), "exit 1\n");
    let out = imgraph(&dir)
        .env("GITLAB_CI", "true")
        .arg("apply")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("section_start:"), "{err}");
    assert!(err.contains("ERROR imgraph: test:web/http failed"), "{err}");
    assert!(err.contains("section_end:"), "{err}");
}

#[test]
fn an_apply_with_nothing_to_run_is_not_a_run_in_history() {
    let (_t, dir) = copy_project("examples/quickstart");
    for _ in 0..3 {
        imgraph(&dir).arg("apply").assert().code(0);
    }
    let (_, json, _) = output(&dir, &["history", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["runs"].as_array().unwrap().len(), 1, "{json}");
    let (_, text, _) = output(&dir, &["history"]);
    assert_eq!(text.matches("run ").count(), 1, "{text}");
}

#[test]
fn images_show_what_each_environment_holds_now() {
    let (_t, dir) = copy_project("examples/quickstart");
    imgraph(&dir).arg("apply").assert().code(0);
    common::append(&dir.join("config/web/index.html"), "<p>v2</p>\n");
    imgraph(&dir).arg("apply").assert().code(0);
    let (_, text, _) = output(&dir, &["images", "web"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("HELD BY"), "{text}");
    assert!(lines[1].starts_with("web    2.3.1"), "{text}");
    assert!(lines[1].ends_with("staging, production"), "{text}");
    assert!(lines[2].starts_with("web    2.3.0"), "{text}");
    assert!(!lines[2].contains("staging"), "replaced everywhere: {text}");
    let (_, json, _) = output(&dir, &["images", "web", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        doc["images"][1]["environments"],
        serde_json::json!(["staging", "production"]),
        "the history of deliveries stays in the JSON"
    );
    assert_eq!(doc["images"][1]["holding"], serde_json::json!([]));
}

#[cfg(feature = "aws")]
#[test]
fn without_aws_credentials_the_message_says_how_to_give_them() {
    let (tmp, dir) = copy_project("examples/aws-packer");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    common::write(&home.join("config"), "");
    common::write(&home.join("credentials"), "");
    let mut cmd = imgraph(&dir);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .env("HOME", &home)
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .arg("plan")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert!(!err.contains("SdkBody"), "{err}");
    assert!(
        err.lines().count() < 8,
        "a few lines, not the SDK's internals: {err}"
    );
}
