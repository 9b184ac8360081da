//! Loader tests on the DESIGN.md example project, canonical forms, and garbage input.
//! Broken configs and their rendered diagnostics live in `tests/config_diagnostics.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::{
    canonical_build, Build, FromRef, InputKind, ProviderKind, Sandbox, SourceKind, Step, Trigger,
};
use super::*;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/design-example")
}

fn example_text() -> String {
    std::fs::read_to_string(example_dir().join("imgraph.kdl")).expect("fixture is readable")
}

fn load_example(text: &str) -> model::Project {
    match load_str(&example_dir(), "imgraph.kdl", text) {
        Ok(p) => p,
        Err(e) => panic!("example must load:\n{}", render_plain(&e)),
    }
}

#[test]
fn design_example_loads_into_the_expected_model() {
    let project = match load(&example_dir()) {
        Ok(p) => p,
        Err(e) => panic!("example must load:\n{}", render_plain(&e)),
    };
    let root = example_dir().canonicalize().expect("fixture exists");
    assert_eq!(project.root, root);
    assert_eq!(project.config_path, root.join("imgraph.kdl"));
    assert_eq!(project.state_path, root.join(".imgraph/state.db"));

    let local = project.provider("local").expect("local provider");
    assert_eq!(
        local.kind,
        ProviderKind::Local {
            store: root.join(".imgraph/images"),
            sandbox: Sandbox::None
        }
    );
    let aws = project.provider("aws").expect("aws provider");
    assert_eq!(
        aws.kind,
        ProviderKind::Aws {
            region: Some("eu-west-1".into()),
            profile: None,
            endpoint: Some("http://127.0.0.1:5055".into()),
        }
    );

    let names: Vec<&str> = project.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["debian-12", "amazon-linux", "platform-base"]);
    assert_eq!(
        project.source("debian-12").map(|s| &s.kind),
        Some(&SourceKind::Local {
            path: model::RelPath("bases/debian-12.tar.zst".into())
        })
    );
    match &project.source("platform-base").expect("source").kind {
        SourceKind::Aws { owners, name, tags } => {
            assert_eq!(owners, &["self"]);
            assert_eq!(name, &None);
            assert_eq!(tags.get("imgraph:image").map(String::as_str), Some("base"));
            assert_eq!(
                tags.get("Release_Status").map(String::as_str),
                Some("Ready")
            );
        }
        other => panic!("expected an aws source, got {other:?}"),
    }

    let base = project.image("base").expect("image base");
    assert_eq!(base.provider, "local");
    assert_eq!(base.from, FromRef::Source("debian-12".into()));
    assert_eq!(base.version, "1.4");
    assert_eq!(base.max_age, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(
        base.build,
        Build::Rootfs {
            steps: vec![
                Step::Copy {
                    from: model::RelPath("config/common".into()),
                    to: "/etc/acme".into()
                },
                Step::Run {
                    command: "sh /opt/provision.sh".into()
                },
            ]
        }
    );
    // The `security` probe is checked in `design_example_loads_env_network_and_probe_settings`.
    let inputs: Vec<(&InputKind, Trigger)> = base
        .inputs
        .iter()
        .filter(|i| !matches!(&i.kind, InputKind::Probe { name, .. } if name == "security"))
        .map(|i| (&i.kind, i.trigger))
        .collect();
    assert_eq!(
        inputs,
        [
            (
                &InputKind::Path {
                    pattern: "scripts/provision.sh".into()
                },
                Trigger::Immediate
            ),
            (
                &InputKind::Packages {
                    path: model::RelPath("packages/base.txt".into())
                },
                Trigger::Rollup
            ),
            (
                &InputKind::Probe {
                    name: "apt-index".into(),
                    command: "./scripts/apt-versions.sh".into(),
                    place: model::ProbePlace::Project,
                    network: model::Network::None,
                    timeout: None,
                    env: Default::default(),
                },
                Trigger::Rollup
            ),
        ]
    );
    assert_eq!(base.tests.len(), 1);
    assert_eq!(base.tests[0].name, "smoke");
    assert_eq!(base.tests[0].command, "sh tests/smoke/check.sh");
    assert_eq!(base.tests[0].timeout, Duration::from_secs(600));
    assert_eq!(base.tags.get("Team").map(String::as_str), Some("platform"));

    let web = project.image("web").expect("image web");
    // Two providers are declared; the packer builder implies `aws`.
    assert_eq!(web.provider, "aws");
    assert_eq!(web.from, FromRef::Image("base".into()));
    assert_eq!(web.version, "1.0");
    assert_eq!(web.max_age, None);
    match &web.build {
        Build::Packer { template, vars } => {
            assert_eq!(template.as_str(), "packer/web.pkr.hcl");
            assert_eq!(
                vars.get("instance_type").map(String::as_str),
                Some("t3.small")
            );
        }
        other => panic!("expected a packer build, got {other:?}"),
    }
    // The default timeout applies when a test names none.
    assert_eq!(web.tests[0].timeout, Duration::from_secs(600));
    assert!(web.tags.is_empty());

    let staging = project.environment("staging").expect("staging");
    assert!(staging.after.is_empty());
    assert_eq!(staging.deliveries[0].image, "web");
    let production = project.environment("production").expect("production");
    assert_eq!(production.after, ["staging"]);
    assert_eq!(production.deliveries[0].command, "./deliver.sh");
}

#[test]
fn design_example_loads_env_network_and_probe_settings() {
    let project = load(&example_dir()).unwrap_or_else(|e| panic!("{}", render_plain(&e)));
    let base = project.image("base").expect("image base");
    assert_eq!(base.build_network, model::Network::Host);
    let security = base
        .inputs
        .iter()
        .find_map(|i| match &i.kind {
            InputKind::Probe {
                name,
                place,
                network,
                timeout,
                ..
            } if name == "security" => Some((*place, *network, *timeout, i.trigger)),
            _ => None,
        })
        .expect("probe security");
    assert_eq!(
        security,
        (
            model::ProbePlace::Image,
            model::Network::Host,
            Some(Duration::from_secs(300)),
            Trigger::Immediate
        )
    );
    let web = project.image("web").expect("image web");
    assert!(web.env.hashed.contains("APP_FLAVOR"));
    assert!(web.env.passed.contains("ARTIFACTORY_TOKEN"));
    assert_eq!(web.tests[0].network, model::Network::None);
    // Tests default to no network; builds to the host's.
    assert_eq!(
        project.image("base").map(|b| b.tests[0].network),
        Some(model::Network::None)
    );
    let staging = project.environment("staging").expect("staging");
    assert!(staging.deliveries[0].env.hashed.contains("DEPLOY_REGION"));
    assert_eq!(staging.deliveries[0].inputs.len(), 1);
}

#[test]
fn image_env_applies_to_the_build_and_a_hashed_name_wins() {
    let project = load_example(
        r#"
        source "debian" { local "bases/debian-12.tar.zst"; }
        image "base" {
            from "debian"
            env "A"
            pass-env "B"
            build "rootfs" { env "B"; pass-env "C"; }
        }
        "#,
    );
    let env = project.images[0].build_env();
    assert_eq!(env.hashed.iter().collect::<Vec<_>>(), ["A", "B"]);
    assert_eq!(env.passed.iter().collect::<Vec<_>>(), ["C"]);
}

#[test]
fn a_config_file_path_works_like_its_folder() {
    let by_file = load(&example_dir().join("imgraph.kdl")).map(|p| p.root);
    let by_dir = load(&example_dir()).map(|p| p.root);
    assert_eq!(by_file.ok(), by_dir.ok());
}

#[test]
fn no_provider_means_an_implicit_local_one() {
    let project = load_example(
        r#"
        source "debian" { local "bases/debian-12.tar.zst"; }
        image "base" { from "debian"; build "rootfs"; }
        "#,
    );
    assert_eq!(project.providers.len(), 1);
    assert_eq!(project.providers[0].name, "local");
    assert_eq!(project.images[0].provider, "local");
    assert_eq!(project.images[0].version, "1.0");
}

#[test]
fn excludes_triggers_and_globs_are_kept_as_written() {
    let project = load_example(
        r#"
        source "debian" { local "./bases//debian-12.tar.zst"; }
        image "base" {
            from "debian"
            build "rootfs"
            input "./scripts/*.sh" trigger="rollup" exclude="*.tmp" { exclude "old/**"; }
            packages "packages/base.txt" trigger="immediate"
            instance { type "t3.small"; security-group "sg-1"; security-group "sg-2"; }
        }
        "#,
    );
    let image = &project.images[0];
    assert_eq!(
        project.sources[0].kind,
        SourceKind::Local {
            path: model::RelPath("bases/debian-12.tar.zst".into())
        }
    );
    assert_eq!(
        image.inputs[0].kind,
        InputKind::Path {
            pattern: "scripts/*.sh".into()
        }
    );
    assert_eq!(image.inputs[0].trigger, Trigger::Rollup);
    assert_eq!(image.inputs[0].exclude, ["*.tmp", "old/**"]);
    assert_eq!(image.inputs[1].trigger, Trigger::Immediate);
    assert_eq!(image.instance.instance_type.as_deref(), Some("t3.small"));
    assert_eq!(image.instance.security_groups, ["sg-1", "sg-2"]);
}

#[test]
fn an_absolute_state_path_must_stay_in_the_project() {
    let inside = example_dir().canonicalize().unwrap().join("var/state.db");
    let project = load_example(&format!("state path=\"{}\"", inside.display()));
    assert_eq!(project.state_path, inside);
    let err = load_str(
        &example_dir(),
        "imgraph.kdl",
        "state path=\"/var/lib/imgraph/state.db\"",
    )
    .expect_err("a state outside the project is refused");
    let kinds: Vec<&str> = err.diagnostics().iter().map(|d| d.kind()).collect();
    assert_eq!(kinds, ["state_outside"]);
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let err = load_str(
        &example_dir(),
        "imgraph.kdl",
        r#"
        imag "x"
        image "a" { from "nope"; build "rootfs"; }
        image "b" { build "rootfs"; max-age "soon"; }
        "#,
    )
    .expect_err("config is broken");
    let kinds: Vec<&str> = err.diagnostics().iter().map(|d| d.kind()).collect();
    assert_eq!(
        kinds,
        [
            "unknown_node",
            "unknown_reference",
            "missing_node",
            "bad_duration"
        ]
    );
    let rendered = render_plain(&err);
    assert!(rendered.contains("[imgraph.kdl:2:9]"), "{rendered}");
    assert!(rendered.contains("did you mean `image`?"), "{rendered}");
}

#[test]
fn unreadable_config_names_the_path_and_how_to_fix_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load(dir.path()).expect_err("no config there");
    assert!(matches!(err, ConfigError::Read { .. }));
    let rendered = render_plain(&err);
    assert!(rendered.contains("imgraph.kdl"), "{rendered}");
    assert!(rendered.contains("pass -C DIR"), "{rendered}");
}

// -------------------------------------------------------------------------------------
// Canonical forms.
// -------------------------------------------------------------------------------------

const CANONICAL_A: &str = r#"
source "debian" { local "bases/debian-12.tar.zst"; }
image "base" {
    from "debian"
    version "1.4"
    build "rootfs" {
        copy "config/common" to="/etc/acme"
        run "sh /opt/provision.sh"
    }
    input "scripts/provision.sh"
    packages "packages/base.txt"
    tags { Team "platform"; }
}
"#;

/// Same meaning as A: other whitespace, comments, child order (not step order).
const CANONICAL_B: &str = r#"
// the base image
image "base" {
    tags {
        Team "platform"
    }
    packages "./packages/base.txt"      /* list */
    input "scripts/provision.sh" trigger="immediate"
    build "rootfs" { copy "config/common" to="/etc/acme"; run "sh /opt/provision.sh"; }
    version "1.4"; from "debian"
}
source "debian" {
    local "bases/debian-12.tar.zst"
}
"#;

fn canonical_of(text: &str) -> String {
    let project = load_example(text);
    let image = project.image("base").expect("image base");
    canonical_build(&project, image)
}

#[test]
fn canonical_build_ignores_layout_comments_and_child_order() {
    assert_eq!(canonical_of(CANONICAL_A), canonical_of(CANONICAL_B));
}

#[test]
fn canonical_build_changes_with_a_build_step_but_not_with_a_tag() {
    let changed_step = CANONICAL_A.replace("sh /opt/provision.sh", "sh /opt/provision.sh -v");
    assert_ne!(canonical_of(CANONICAL_A), canonical_of(&changed_step));

    let swapped_steps = CANONICAL_B.replace(
        "copy \"config/common\" to=\"/etc/acme\"; run \"sh /opt/provision.sh\";",
        "run \"sh /opt/provision.sh\"; copy \"config/common\" to=\"/etc/acme\";",
    );
    assert_ne!(canonical_of(CANONICAL_B), canonical_of(&swapped_steps));

    let changed_tag = CANONICAL_A.replace("Team \"platform\"", "Team \"web\"");
    assert_eq!(canonical_of(CANONICAL_A), canonical_of(&changed_tag));
}

// -------------------------------------------------------------------------------------
// Garbage in, diagnostics out: never a panic.
// -------------------------------------------------------------------------------------

fn assert_no_panic(text: &str) {
    let result = std::panic::catch_unwind(|| {
        if let Err(err) = load_str(&example_dir(), "imgraph.kdl", text) {
            let _ = render_plain(&err);
            assert!(
                !err.diagnostics().is_empty(),
                "an invalid config reports at least one diagnostic"
            );
        }
    });
    assert!(result.is_ok(), "panicked on input {text:?}");
}

#[test]
fn edge_cases_never_panic() {
    let cases = [
        "",
        "\u{feff}",
        "\0",
        "{",
        "}",
        "image",
        "image {}",
        "image 1 2 3 a=1 a=2",
        "image \"a\" { from; build; version; max-age; tags 1; instance 2; }",
        "image #null { from #true; build #false { run 1; copy 2 to=3; } }",
        "image \"é\" { from \"é\"; build \"rootfs\"; input \"\"; input \"/\"; input \"..\"; }",
        "image \"a\" { from \"a\"; build \"rootfs\"; input \"[\"; input \"**\"; exclude \"{\" }",
        "source \"s\" { local; aws; }",
        "source \"s\" { aws { tag; tag \"a\"; owner 1; } }",
        "environment \"e\" { after \"e\"; after \"e\"; deliver; deliver \"x\" { run; } }",
        "provider; provider 1; provider \"local\" { store \"/\"; sandbox 1; }",
        "state path=1; state; imgraph version=\"1\"; imgraph version=99999999999999999999999",
        "max-age \"99999999999999999999999999999d\"",
        "image \"a\" { max-age \"99999999999999999999999999999d\"; timeout \"-1s\" }",
        "/- image \"a\" { from \"b\" }",
        "(type)image (t)\"a\" { (x)from \"b\"; }",
        "r#\"raw\"#",
        "\"\"\"\nmultiline\n\"\"\"",
        "a\r\nb\rc\u{2028}d",
    ];
    for case in cases {
        assert_no_panic(case);
    }
    let deep = format!("{}{}", "a {".repeat(200), "}".repeat(200));
    assert_no_panic(&deep);
}

#[test]
fn mutated_example_never_panics() {
    let text = example_text();
    let chars: Vec<char> = text.chars().collect();
    let inserts = [
        '{', '}', '"', ';', '=', '/', '\\', '(', ')', '#', '\n', '*', '-', '.',
    ];
    // A fixed linear congruential sequence: the same mutations every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |bound: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % bound.max(1)
    };
    for _ in 0..150 {
        let mut mutated = chars.clone();
        for _ in 0..=next(3) {
            let at = next(mutated.len());
            match next(3) {
                0 => {
                    mutated.remove(at);
                }
                1 => mutated.insert(at, inserts[next(inserts.len())]),
                _ => mutated.truncate(at),
            }
        }
        let mutated: String = mutated.into_iter().collect();
        assert_no_panic(&mutated);
    }
}

#[test]
fn retain_applies_per_image_with_the_project_default_and_rejects_what_keeps_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("root")).expect("root");
    let project = load_str(
        dir.path(),
        "imgraph.kdl",
        r#"
        retain { keep 5; keep-days 30; }
        source "s" { local "root"; }
        image "a" { from "s"; build "rootfs"; retain { keep 2; } }
        image "b" { from "a"; build "rootfs"; }
        "#,
    )
    .unwrap_or_else(|e| panic!("{}", render_plain(&e)));
    let a = project.image("a").expect("a");
    let b = project.image("b").expect("b");
    assert_eq!(
        project.retain_of(a),
        Some(model::Retain {
            keep: Some(2),
            keep_days: None
        })
    );
    assert_eq!(
        project.retain_of(b),
        Some(model::Retain {
            keep: Some(5),
            keep_days: Some(30)
        })
    );
    // Retention is no input: it changes no key.
    assert!(!canonical_build(&project, a).contains("retain"));

    let err = load_str(
        dir.path(),
        "imgraph.kdl",
        r#"
        retain { }
        source "s" { local "root"; }
        image "a" { from "s"; build "rootfs"; retain { keep "2"; keep-days 0; kep 1; } }
        "#,
    )
    .expect_err("config is broken");
    let kinds: Vec<&str> = err.diagnostics().iter().map(|d| d.kind()).collect();
    assert_eq!(
        kinds,
        ["missing_node", "wrong_type", "bad_number", "unknown_node"],
        "{}",
        render_plain(&err)
    );
}

#[test]
fn shared_state_and_store_name_one_kind_of_s3_location() {
    let project = load_example(
        r#"
        state path=".imgraph/cache.db" {
            s3 bucket="acme-imgraph" prefix="/platform/" region="eu-west-1" endpoint="http://127.0.0.1:5055"
            lease-ttl "90s"
        }
        provider "local" {
            store ".imgraph/images" { s3 bucket="acme-imgraph" prefix="images" region="eu-west-1"; }
        }
        source "debian" { local "bases/debian-12.tar.zst"; }
        image "base" { from "debian"; build "rootfs"; }
        "#,
    );
    let root = example_dir().canonicalize().expect("fixture exists");
    assert_eq!(project.state_path, root.join(".imgraph/cache.db"));
    let shared = project.shared_state.as_ref().expect("shared state");
    assert_eq!(
        shared.location,
        model::S3Location {
            bucket: "acme-imgraph".into(),
            prefix: "platform".into(),
            region: "eu-west-1".into(),
            endpoint: Some("http://127.0.0.1:5055".into()),
        }
    );
    assert_eq!(shared.lease_ttl, Duration::from_secs(90));
    assert_eq!(
        shared.location.to_string(),
        "s3://acme-imgraph/platform/ at http://127.0.0.1:5055"
    );
    let local = project.provider("local").expect("local provider");
    let store = local.shared_store.as_ref().expect("shared store");
    assert_eq!(store.prefix, "images");
    assert_eq!(store.endpoint, None);
    assert_eq!(
        local.kind,
        ProviderKind::Local {
            store: root.join(".imgraph/images"),
            sandbox: Sandbox::None
        }
    );

    // Defaults: the state file where it always is, a 60 s lease, the default store folder.
    let project = load_example(
        r#"
        state { s3 bucket="acme-imgraph" region="eu-west-1"; }
        provider "local" { store { s3 bucket="acme-imgraph" prefix="images/" region="eu-west-1"; }; }
        source "debian" { local "bases/debian-12.tar.zst"; }
        image "base" { from "debian"; build "rootfs"; }
        "#,
    );
    assert_eq!(project.state_path, root.join(".imgraph/state.db"));
    let shared = project.shared_state.clone().expect("shared state");
    assert_eq!(shared.location.prefix, "");
    assert_eq!(shared.lease_ttl, Duration::from_secs(60));
    let local = project.provider("local").expect("local provider");
    assert!(local.shared_store.is_some());
    assert!(
        matches!(&local.kind, ProviderKind::Local { store, .. } if *store == root.join(".imgraph/images"))
    );
    // Without a `state` block nothing is shared.
    assert!(load(&example_dir()).expect("loads").shared_state.is_none());
}

#[test]
fn an_imgraph_source_names_an_image_and_the_other_projects_shared_state() {
    let project = load_example(
        r#"
        source "platform-base" {
            imgraph image="base" { s3 bucket="acme-imgraph" prefix="platform/" region="eu-west-1"; }
        }
        image "web" { from "platform-base"; build "rootfs"; }
        "#,
    );
    let source = project.source("platform-base").expect("the source");
    assert_eq!(
        source.kind,
        SourceKind::Imgraph {
            image: "base".into(),
            state: model::S3Location {
                bucket: "acme-imgraph".into(),
                prefix: "platform".into(),
                region: "eu-west-1".into(),
                endpoint: None,
            },
        }
    );
    let web = project.image("web").expect("web");
    assert_eq!(web.from, FromRef::Source("platform-base".into()));
}
