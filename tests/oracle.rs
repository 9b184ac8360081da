//! The oracle: `plan` says an image's build runs **iff** a forced rebuild of it produces
//! a different artifact.
//!
//! Local artifacts are deterministic `tar.zst` files (same tree, same bytes, same id), so
//! a forced rebuild after a change tells exactly whether the change reached the image.
//! Each case generates a small local project (sandbox `none`: an origin folder, two
//! images with copies, run steps naming scripts, a declared input read by a script with
//! an `exclude`, a test and a delivery), applies it, then checks a sequence of random
//! mutations one by one: content, mode, rename, delete, empty folder, symlink retarget,
//! exclude edits, comment and order edits, a duplicate input line, mtime, edits of
//! scripts named in commands, edits of excluded files, the value of a variable named by
//! `env` and of one no `env` names. After each mutation it compares
//! the builds `plan` runs with the images whose artifact a forced `apply` changed, and
//! checks that the forced apply delivered the image it built.
//!
//! What the generator leaves out on purpose, because imgraph documents it as a
//! conservative over-approximation (a rebuild whose bytes may not change): comment-only
//! edits of scripts named in commands, mode changes of those scripts, and mode changes of
//! files a script reads with `cat`. And what imgraph documents as not detected: files a
//! script reads without naming them or declaring them.
//!
//! Cases: `IMGRAPH_ORACLE_CASES` projects (default 40), each with 6 mutations.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::imgraph;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

const IMAGES: [&str; 2] = ["base", "web"];
const MODES: [u32; 6] = [0o600, 0o640, 0o644, 0o700, 0o750, 0o755];

/// One generated file: where it lives among the copied folders, content, mode.
#[derive(Debug, Clone)]
struct GenFile {
    dir: usize,
    name: String,
    content: String,
    mode: u32,
}

/// Folders whose content ends up in an image entry for entry (copies, the origin).
const TREES: [&str; 3] = ["config/app", "config/web", "bases/root/etc"];

#[derive(Debug, Clone)]
struct GenProject {
    files: Vec<GenFile>,
    data: Vec<(String, String)>,
    gen_word: String,
    web_word: String,
    link_target: String,
}

#[derive(Debug, Clone)]
enum Mutation {
    Content {
        file: usize,
        text: String,
    },
    Mode {
        file: usize,
        mode: usize,
    },
    DirMode {
        tree: usize,
        mode: usize,
    },
    Rename {
        file: usize,
        name: String,
    },
    Delete {
        file: usize,
    },
    EmptyDir {
        tree: usize,
        name: String,
    },
    Retarget {
        target: String,
    },
    ExcludeEdit {
        variant: usize,
    },
    CommentOrOrder {
        variant: usize,
    },
    DuplicateInput,
    Touch {
        file: usize,
    },
    ScriptEdit {
        web: bool,
        word: String,
    },
    DataEdit {
        excluded: bool,
        text: String,
    },
    /// The value of `FLAVOR`, which image `web` names with `env` and its step writes.
    Env {
        value: Option<String>,
    },
    /// A caller variable no `env` names, which a step would write if it saw it.
    UnnamedVar {
        value: String,
    },
}

impl Mutation {
    fn kind(&self) -> &'static str {
        match self {
            Mutation::Content { .. } => "content",
            Mutation::Mode { .. } => "mode",
            Mutation::DirMode { .. } => "folder mode",
            Mutation::Rename { .. } => "rename",
            Mutation::Delete { .. } => "delete",
            Mutation::EmptyDir { .. } => "empty folder",
            Mutation::Retarget { .. } => "symlink retarget",
            Mutation::ExcludeEdit { .. } => "exclude edit",
            Mutation::CommentOrOrder { .. } => "comment/order edit",
            Mutation::DuplicateInput => "duplicate input",
            Mutation::Touch { .. } => "mtime",
            Mutation::ScriptEdit { .. } => "script named in run",
            Mutation::DataEdit {
                excluded: false, ..
            } => "declared input read by a script",
            Mutation::DataEdit { excluded: true, .. } => "excluded file",
            Mutation::Env { .. } => "env value",
            Mutation::UnnamedVar { .. } => "variable not named by env",
        }
    }
}

fn word() -> impl Strategy<Value = String> {
    "[a-z]{3,8}"
}

fn gen_project() -> impl Strategy<Value = GenProject> {
    let file = (0..TREES.len(), word(), "[a-z ]{0,40}", 0..MODES.len()).prop_map(
        |(dir, name, content, mode)| GenFile {
            dir,
            name: format!("{name}.conf"),
            content,
            mode: MODES[mode],
        },
    );
    (
        prop::collection::vec(file, 3..8),
        prop::collection::vec((word(), "[a-z]{1,20}"), 1..4),
        word(),
        word(),
        word(),
    )
        .prop_map(
            |(files, data, gen_word, web_word, link_target)| GenProject {
                files,
                data,
                gen_word,
                web_word,
                link_target,
            },
        )
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), "[a-z ]{1,20}").prop_map(|(file, text)| Mutation::Content { file, text }),
        (any::<usize>(), 0..MODES.len()).prop_map(|(file, mode)| Mutation::Mode { file, mode }),
        (0..TREES.len(), 0..MODES.len()).prop_map(|(tree, mode)| Mutation::DirMode { tree, mode }),
        (any::<usize>(), word()).prop_map(|(file, name)| Mutation::Rename { file, name }),
        any::<usize>().prop_map(|file| Mutation::Delete { file }),
        (0..TREES.len(), word()).prop_map(|(tree, name)| Mutation::EmptyDir { tree, name }),
        word().prop_map(|target| Mutation::Retarget { target }),
        (0..3usize).prop_map(|variant| Mutation::ExcludeEdit { variant }),
        (0..3usize).prop_map(|variant| Mutation::CommentOrOrder { variant }),
        Just(Mutation::DuplicateInput),
        any::<usize>().prop_map(|file| Mutation::Touch { file }),
        (any::<bool>(), word()).prop_map(|(web, word)| Mutation::ScriptEdit { web, word }),
        (any::<bool>(), "[a-z]{1,20}")
            .prop_map(|(excluded, text)| Mutation::DataEdit { excluded, text }),
        proptest::option::of("[a-z]{0,3}").prop_map(|value| Mutation::Env { value }),
        "[a-z]{1,6}".prop_map(|value| Mutation::UnnamedVar { value }),
    ]
}

/// The config, with its variable parts: the `exclude` of `data` and a comment/order form.
fn config(exclude: usize, layout: usize, duplicate: bool) -> String {
    let data_input = match exclude {
        0 => "input \"data\" exclude=\"*.bak\"".to_string(),
        1 => "input \"data\" {\n        exclude \"*.bak\"\n        exclude \"*.tmp\"\n    }"
            .to_string(),
        _ => "input \"data\" exclude=\"data/*.bak\"".to_string(),
    };
    let dup = if duplicate {
        format!("\n    {data_input}")
    } else {
        String::new()
    };
    let (head, comment) = match layout {
        0 => ("    from \"root\"\n    version \"1.0\"", ""),
        1 => ("    version \"1.0\"\n    from \"root\"", ""),
        _ => (
            "    from \"root\"   // the origin folder\n    version \"1.0\"",
            "// generated by the oracle\n",
        ),
    };
    format!(
        r#"{comment}provider "local" {{
    sandbox "none"
}}
source "root" {{
    local "bases/root"
}}
image "base" {{
{head}
    build "rootfs" {{
        copy "config/app" to="/etc/app"
        run "sh scripts/gen.sh"
        run "sh scripts/data.sh"
    }}
    {data_input}{dup}
    test "smoke" {{
        run "sh tests/smoke.sh"
    }}
}}
image "web" {{
    from "base"
    version "2.0"
    env "FLAVOR"
    build "rootfs" {{
        copy "config/web" to="/srv/www"
        run "sh scripts/web.sh"
    }}
    test "http" {{
        run "sh tests/smoke.sh"
    }}
}}
environment "staging" {{
    deliver "web" {{
        run "sh deliver/deliver.sh"
    }}
}}
"#
    )
}

struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<(PathBuf, bool)>,
    exclude: usize,
    layout: usize,
    duplicate: bool,
    flavor: Option<String>,
    unnamed: String,
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn gen_script(word: &str) -> String {
    format!(
        "mkdir -p \"$IMGRAPH_ROOT/etc\"\nprintf '{word}\\n' > \"$IMGRAPH_ROOT/etc/gen\"\n\
         printf '%s\\n' \"${{ORACLE_UNNAMED-<unset>}}\" >> \"$IMGRAPH_ROOT/etc/gen\"\n"
    )
}

fn web_script(word: &str) -> String {
    format!(
        "printf '{word}\\n' > \"$IMGRAPH_ROOT/srv/www/web\"\n\
         printf '%s\\n' \"${{FLAVOR-<unset>}}\" > \"$IMGRAPH_ROOT/srv/www/flavor\"\n"
    )
}

impl Project {
    fn create(g: &GenProject) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("project");
        write(&dir.join("imgraph.kdl"), &config(0, 0, false));
        write(&dir.join("bases/root/etc/hostname"), "oracle\n");
        write(&dir.join("bases/root/usr/share/doc/README"), "origin\n");
        std::fs::create_dir_all(dir.join("bases/root/var/empty")).unwrap();
        let mut files = Vec::new();
        for f in &g.files {
            let path = dir.join(TREES[f.dir]).join(&f.name);
            write(&path, &f.content);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode)).unwrap();
            if !files.iter().any(|(p, _)| p == &path) {
                files.push((path, true));
            }
        }
        std::fs::create_dir_all(dir.join("config/web")).unwrap();
        std::fs::create_dir_all(dir.join("config/app")).unwrap();
        std::os::unix::fs::symlink(&g.link_target, dir.join("config/app/link")).unwrap();
        for (name, text) in &g.data {
            write(&dir.join(format!("data/{name}.txt")), text);
            write(&dir.join(format!("data/{name}.bak")), "scratch");
        }
        write(&dir.join("scripts/gen.sh"), &gen_script(&g.gen_word));
        write(
            &dir.join("scripts/data.sh"),
            "cat data/*.txt > \"$IMGRAPH_ROOT/etc/data\"\n",
        );
        write(&dir.join("scripts/web.sh"), &web_script(&g.web_word));
        write(
            &dir.join("tests/smoke.sh"),
            "test -s \"$IMGRAPH_INSTANCE_ROOT/etc/gen\"\n",
        );
        write(
            &dir.join("deliver/deliver.sh"),
            "mkdir -p .imgraph/deliveries\necho \"$IMGRAPH_VERSION\" >> .imgraph/deliveries/web\n",
        );
        Project {
            _tmp: tmp,
            dir,
            files,
            exclude: 0,
            layout: 0,
            duplicate: false,
            flavor: Some("plain".into()),
            unnamed: "first".into(),
        }
    }

    fn rewrite_config(&self) {
        write(
            &self.dir.join("imgraph.kdl"),
            &config(self.exclude, self.layout, self.duplicate),
        );
    }

    /// A file that still exists, picked by `i`.
    fn pick(&self, i: usize) -> Option<PathBuf> {
        let live: Vec<&PathBuf> = self
            .files
            .iter()
            .filter(|(p, live)| *live && p.exists())
            .map(|(p, _)| p)
            .collect();
        (!live.is_empty()).then(|| live[i % live.len()].clone())
    }

    /// Applies `m`; returns false when it had nothing to act on.
    fn mutate(&mut self, m: &Mutation) -> bool {
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        match m {
            Mutation::Content { file, text } => match self.pick(*file) {
                Some(p) => {
                    let mut old = std::fs::read_to_string(&p).unwrap();
                    old.push_str(text);
                    std::fs::write(&p, old).unwrap();
                }
                None => return false,
            },
            Mutation::Mode { file, mode } => match self.pick(*file) {
                Some(p) => chmod(&p, MODES[*mode]),
                None => return false,
            },
            Mutation::DirMode { tree, mode } => chmod(&self.dir.join(TREES[*tree]), MODES[*mode]),
            Mutation::Rename { file, name } => match self.pick(*file) {
                Some(p) => {
                    let to = p.with_file_name(format!("{name}.renamed"));
                    if to.exists() {
                        return false;
                    }
                    std::fs::rename(&p, &to).unwrap();
                    self.files.push((to, true));
                }
                None => return false,
            },
            Mutation::Delete { file } => match self.pick(*file) {
                Some(p) => std::fs::remove_file(&p).unwrap(),
                None => return false,
            },
            Mutation::EmptyDir { tree, name } => {
                let p = self.dir.join(TREES[*tree]).join(format!("{name}.d"));
                if p.exists() {
                    return false;
                }
                std::fs::create_dir_all(p).unwrap();
            }
            Mutation::Retarget { target } => {
                let link = self.dir.join("config/app/link");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(target, link).unwrap();
            }
            Mutation::ExcludeEdit { variant } => {
                self.exclude = *variant;
                self.rewrite_config();
            }
            Mutation::CommentOrOrder { variant } => {
                self.layout = *variant;
                self.rewrite_config();
            }
            Mutation::DuplicateInput => {
                self.duplicate = !self.duplicate;
                self.rewrite_config();
            }
            Mutation::Touch { file } => match self.pick(*file) {
                Some(p) => {
                    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(7);
                    std::fs::File::options()
                        .write(true)
                        .open(&p)
                        .unwrap()
                        .set_modified(later)
                        .unwrap();
                }
                None => return false,
            },
            Mutation::ScriptEdit { web, word } => {
                if *web {
                    write(&self.dir.join("scripts/web.sh"), &web_script(word));
                } else {
                    write(&self.dir.join("scripts/gen.sh"), &gen_script(word));
                }
            }
            Mutation::Env { value } => self.flavor = value.clone(),
            Mutation::UnnamedVar { value } => self.unnamed = value.clone(),
            Mutation::DataEdit { excluded, text } => {
                let ext = if *excluded { "bak" } else { "txt" };
                let first = std::fs::read_dir(self.dir.join("data"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == ext))
                    .min();
                match first {
                    Some(p) => {
                        let mut old = std::fs::read_to_string(&p).unwrap();
                        old.push_str(text);
                        std::fs::write(&p, old).unwrap();
                    }
                    None => return false,
                }
            }
        }
        true
    }

    /// The real binary with the caller's variables of this project's moment.
    fn run(&self, args: &[&str]) -> Vec<u8> {
        let mut cmd = imgraph(&self.dir);
        match &self.flavor {
            Some(v) => cmd.env("FLAVOR", v),
            None => cmd.env_remove("FLAVOR"),
        };
        let out = cmd
            .env("ORACLE_UNNAMED", &self.unnamed)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "imgraph {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The newest artifact id of each image, and where the newest web version went.
    fn artifacts(&self) -> (BTreeMap<String, String>, Vec<String>) {
        let v: Value = serde_json::from_slice(&self.run(&["images", "--json"])).unwrap();
        let mut newest: BTreeMap<String, (u64, String, Vec<String>)> = BTreeMap::new();
        for i in v["images"].as_array().unwrap() {
            let image = i["image"].as_str().unwrap().to_string();
            let patch: u64 = i["version"]
                .as_str()
                .unwrap()
                .rsplit('.')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let envs = i["environments"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().or_else(|| e["environment"].as_str()))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let slot = newest
                .entry(image)
                .or_insert((0, String::new(), Vec::new()));
            if patch >= slot.0 {
                *slot = (patch, i["id"].as_str().unwrap().to_string(), envs);
            }
        }
        let delivered = newest.get("web").map(|n| n.2.clone()).unwrap_or_default();
        (
            newest.into_iter().map(|(k, v)| (k, v.1)).collect(),
            delivered,
        )
    }

    /// Images whose build the plan runs.
    fn planned_builds(&self) -> Vec<String> {
        let plan: Value = serde_json::from_slice(&self.run(&["plan", "--json"])).unwrap();
        plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["stage"] == "build" && n["action"] == "run")
            .map(|n| n["image"].as_str().unwrap().to_string())
            .collect()
    }
}

#[derive(Default)]
struct Tally {
    cases: u64,
    checks: u64,
    skipped: u64,
    by_kind: BTreeMap<&'static str, u64>,
    rebuilds: u64,
}

fn check_case(
    g: &GenProject,
    mutations: &[Mutation],
    tally: &mut Tally,
) -> Result<(), TestCaseError> {
    let mut p = Project::create(g);
    p.run(&["apply"]);
    let (mut before, _) = p.artifacts();
    tally.cases += 1;
    for m in mutations {
        if !p.mutate(m) {
            tally.skipped += 1;
            continue;
        }
        tally.checks += 1;
        *tally.by_kind.entry(m.kind()).or_default() += 1;
        let planned = p.planned_builds();
        p.run(&["apply", "--force", "base", "--force", "web"]);
        let (after, delivered) = p.artifacts();
        let changed: Vec<String> = IMAGES
            .iter()
            .filter(|i| before.get(**i) != after.get(**i))
            .map(|i| i.to_string())
            .collect();
        tally.rebuilds += changed.len() as u64;
        prop_assert_eq!(
            &planned,
            &changed,
            "after {:?}: plan runs {:?}, a forced rebuild changed {:?}",
            m,
            planned,
            changed
        );
        prop_assert!(
            delivered.iter().any(|e| e == "staging"),
            "the newest web version was not delivered to staging: {:?}",
            delivered
        );
        before = after;
    }
    Ok(())
}

#[test]
fn plan_runs_a_build_iff_a_forced_rebuild_changes_the_artifact() {
    let cases: u32 = std::env::var("IMGRAPH_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let tally = std::cell::RefCell::new(Tally::default());
    let strategy = (gen_project(), prop::collection::vec(mutation(), 6));
    let result = runner.run(&strategy, |(g, mutations)| {
        check_case(&g, &mutations, &mut tally.borrow_mut())
    });
    let t = tally.borrow();
    eprintln!(
        "oracle: {} projects, {} mutations checked ({} had nothing to act on), {} artifacts changed",
        t.cases, t.checks, t.skipped, t.rebuilds
    );
    for (kind, n) in &t.by_kind {
        eprintln!("oracle:   {kind}: {n}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        t.checks >= u64::from(cases),
        "too few mutations were checked"
    );
}
