//! Every project under `tests/fixtures/broken/` must fail to load, and what the user sees
//! is pinned by a snapshot per project (`tests/snapshots/config_diagnostics__NAME.snap`).
//!
//! Add a case by adding a folder with an `imgraph.kdl` (and any files it needs), then run
//! `INSTA_UPDATE=always cargo test --test config_diagnostics` and read the new snapshot.

use std::path::{Path, PathBuf};

use imgraph::config::{load, render_plain, ConfigError};

const BROKEN: &str = "tests/fixtures/broken";

fn broken_projects() -> Vec<(String, PathBuf)> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut projects: Vec<(String, PathBuf)> = std::fs::read_dir(manifest.join(BROKEN))
        .expect("broken fixtures folder exists")
        .map(|entry| entry.expect("readable fixture entry"))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Relative to the package (cargo's working directory for tests), the way a
            // user passes `-C DIR`: diagnostics then show a short, stable file name.
            let path = Path::new(BROKEN).join(&name);
            (name, path)
        })
        .collect();
    projects.sort();
    projects
}

#[test]
fn every_broken_project_fails_with_located_diagnostics() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let projects = broken_projects();
    assert!(
        projects.len() >= 28,
        "only {} broken projects",
        projects.len()
    );
    for (name, path) in projects {
        let err = match load(&path) {
            Ok(_) => panic!("{name}: a broken project loaded without error"),
            Err(err) => err,
        };
        assert!(
            matches!(err, ConfigError::Invalid { .. }),
            "{name}: expected config diagnostics, got {err:?}"
        );
        let rendered = render_plain(&err).replace(manifest, "[ROOT]");
        let file = format!("[{BROKEN}/{name}/imgraph.kdl:");
        // miette shows one `[file:line:col]` per snippet; labels far apart get their own.
        assert!(
            rendered.matches(&file).count() >= err.diagnostics().len(),
            "{name}: every diagnostic shows file:line:col\n{rendered}"
        );
        insta::assert_snapshot!(name.as_str(), rendered);
    }
}

#[test]
fn a_missing_project_folder_says_the_folder_does_not_exist() {
    let err = load(Path::new("tests/fixtures/no-such-project")).expect_err("nothing to load");
    let rendered = render_plain(&err);
    assert!(matches!(err, ConfigError::NoFolder { .. }));
    assert!(
        rendered.contains("folder tests/fixtures/no-such-project does not exist"),
        "{rendered}"
    );
    assert!(rendered.contains("pass -C"), "{rendered}");
}
