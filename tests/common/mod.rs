//! Shared helpers for integration tests: each test gets its own copy of a project in a
//! temporary folder and runs the real binary against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use imgraph::plan::{Action, BuildOutputs, Plan};
use imgraph::state::{NodeStatus, State};
use imgraph::workspace::Workspace;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies a folder (relative to the repository) into a fresh temporary folder.
///
/// A folder under `examples/` is copied as committed (`git archive HEAD`), so trying the
/// README's tour in place (editing `examples/quickstart/config/base/motd`, applying there)
/// never changes what the tests see; commit a change to an example to test it. Outside a
/// git checkout (a source tarball) the files on disk are copied.
pub fn copy_project(rel: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("project");
    if !(rel.starts_with("examples/") && copy_committed(rel, &dest)) {
        copy_dir(&repo_root().join(rel), &dest);
    }
    (tmp, dest)
}

/// `rel` as committed in HEAD, unpacked at `dest`; false when git or HEAD cannot give it.
fn copy_committed(rel: &str, dest: &Path) -> bool {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args([
            "-c",
            "tar.umask=022",
            "archive",
            "--format=tar",
            "HEAD",
            "--",
            rel,
        ])
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return false };
    if !out.status.success() || out.stdout.is_empty() {
        return false;
    }
    let unpacked = dest.with_file_name("committed");
    tar::Archive::new(out.stdout.as_slice())
        .unpack(&unpacked)
        .expect("unpack the committed example");
    if !unpacked.join(rel).is_dir() {
        return false;
    }
    std::fs::rename(unpacked.join(rel), dest).expect("move the committed example");
    std::fs::remove_dir_all(&unpacked).expect("remove the unpack folder");
    checkout_modes(dest);
    true
}

/// The modes a fresh clone gets with umask 022 (folders 755; files 755 or 644 as git
/// records them), whatever the unpacking did: modes are part of a source's digest.
fn checkout_modes(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).expect("stat");
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir") {
            checkout_modes(&entry.expect("entry").path());
        }
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let ty = entry.file_type().expect("file type");
        let target = to.join(entry.file_name());
        if entry.file_name() == ".imgraph" {
            continue;
        }
        if ty.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if ty.is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("readlink");
            std::os::unix::fs::symlink(link, &target).expect("symlink");
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The real binary, run in `dir` with colour off.
pub fn imgraph(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("imgraph").expect("binary");
    cmd.arg("-C")
        .arg(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    cmd
}

/// `imgraph ARGS` in `dir`, which must succeed: its standard output.
pub fn stdout_of(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = imgraph(dir).args(args).output().expect("run imgraph");
    assert!(
        out.status.success(),
        "imgraph {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `imgraph ARGS` in `dir`, which must succeed, its standard output read as JSON
/// (`images --json`, `history --json`, …).
pub fn json_of(dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&stdout_of(dir, args)).expect("imgraph prints JSON")
}

/// `imgraph plan --json EXTRA…` in `dir`.
pub fn plan_json(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["plan", "--json"];
    args.extend_from_slice(extra);
    json_of(dir, &args)
}

/// Records every `run` node of `plan` as succeeded, as an apply would, through the
/// library API. Build nodes get an artifact that exists in the local store.
/// The node `id` of a plan's JSON (`plan --json`); panics naming it when it is absent.
pub fn plan_node<'a>(plan: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    plan["nodes"]
        .as_array()
        .expect("nodes in plan json")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in plan"))
}

/// The kinds of the reasons the plan gives for node `id`, in order.
pub fn reason_kinds(plan: &serde_json::Value, id: &str) -> Vec<String> {
    plan_node(plan, id)["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn seed_success(dir: &Path, plan: &Plan) {
    let ws = Workspace::open(dir).expect("open workspace");
    let store = ws.local_store().expect("local store");
    let state: &State = &ws.state;
    let run = state.begin_run("seed", "{}").expect("begin run");
    // Build outputs of this seeding, which the image's tests and publish record as seen.
    let mut built: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for n in plan.nodes.iter().filter(|n| n.action == Action::Run) {
        let image_build = n.image.as_deref().map(|i| format!("build:{i}"));
        let outputs = if let Some(seen) = image_build
            .as_ref()
            .filter(|_| {
                !n.id.as_str().starts_with("build:") && !n.id.as_str().starts_with("deliver:")
            })
            .and_then(|b| built.get(b))
        {
            Some(seen.clone())
        } else if n.id.as_str().starts_with("build:") {
            let hex = blake3::hash(n.key.as_bytes()).to_hex().to_string();
            let artifact_id = format!("local:{hex}");
            let path = store.path_of(&artifact_id).expect("artifact path");
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir store");
            std::fs::write(&path, b"seeded").expect("write artifact");
            Some(
                serde_json::to_string(&BuildOutputs {
                    artifact_id,
                    version: "1.0.0".into(),
                    // As an apply records them: the tags the image has now.
                    tags: n
                        .image
                        .as_deref()
                        .and_then(|i| ws.project.image(i))
                        .map(|i| i.tags.clone()),
                    ..BuildOutputs::default()
                })
                .expect("json"),
            )
        } else {
            None
        };
        if n.id.as_str().starts_with("build:") {
            if let Some(o) = &outputs {
                built.insert(n.id.to_string(), o.clone());
            }
        }
        // A delivery is recorded with the artifact it delivered, as the executor does.
        let delivered = n
            .image
            .as_ref()
            .filter(|_| n.id.as_str().starts_with("deliver:"))
            .and_then(|i| built.get(&format!("build:{i}")))
            .and_then(|o| serde_json::from_str::<BuildOutputs>(o).ok());
        let n = match &delivered {
            Some(b) => n.for_artifact(b),
            None => n.clone(),
        };
        imgraph::exec::record_finished(
            state,
            run,
            &n,
            NodeStatus::Succeeded,
            outputs.as_deref(),
            None,
        )
        .expect("record node");
    }
    state
        .finish_run(run, imgraph::state::RunStatus::Succeeded)
        .expect("finish run");
}

/// Records one failed attempt of `node_id` with the key the current plan gives it.
pub fn seed_failure(dir: &Path, plan: &Plan, node_id: &str, error: &str) {
    let ws = Workspace::open(dir).expect("open workspace");
    let id = node_id.parse().expect("a node id");
    let n = plan.node(&id).expect("node in plan");
    let run = ws.state.begin_run("seed", "{}").expect("begin run");
    imgraph::exec::record_finished(&ws.state, run, n, NodeStatus::Failed, None, Some(error))
        .expect("record node");
}

pub fn plan_of(dir: &Path, options: &imgraph::plan::PlanOptions) -> Plan {
    let ws = Workspace::open(dir).expect("open workspace");
    ws.plan_blocking(options).expect("plan")
}

/// (node id, action, reason kinds) for compact assertions.
pub fn actions(plan: &Plan) -> Vec<(String, &'static str, Vec<&'static str>)> {
    plan.nodes
        .iter()
        .map(|n| {
            (
                n.id.to_string(),
                n.action.as_str(),
                n.reasons.iter().map(|r| r.kind()).collect(),
            )
        })
        .collect()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    f.write_all(text.as_bytes()).expect("append");
}

/// Tools a test needs from Debian (installed by scripts/test.sh): in CI their absence
/// fails the test; elsewhere it is said out loud and the test returns.
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| !Path::new(t).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("missing {missing:?}: scripts/test.sh installs them (bubblewrap, busybox-static)");
    }
    eprintln!("NOT RUN: missing {missing:?}; run scripts/test.sh to install them");
    false
}

/// Whether this test runs as root (CI does): in CI its absence fails the test; elsewhere
/// it is said out loud and the test returns.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root (CI runs as root)");
    }
    eprintln!("NOT RUN: this test needs root");
    false
}

/// The Debian 12 root file system `examples/debian-server/make-origin.sh` makes with
/// `debootstrap --variant=minbase bookworm`, cached under the target directory next to the
/// binary under test (`<target>/debian-origin/bookworm-minbase.tar.zst`; scripts/test.sh
/// fills it first, so repeated runs download nothing). Needs root and bwrap, and to make
/// the cache debootstrap and zstd: in CI a missing one fails the test, elsewhere it is
/// said out loud and `None` returned.
pub fn debian_origin() -> Option<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_imgraph"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/");
    let cache = target.join("debian-origin/bookworm-minbase.tar.zst");
    let mut tools = vec!["/usr/bin/bwrap"];
    if !cache.exists() {
        tools.extend(["/usr/sbin/debootstrap", "/usr/bin/zstd"]);
    }
    if !require_root() || !require_tools(&tools) {
        return None;
    }
    let out = std::process::Command::new("sh")
        .arg(repo_root().join("examples/debian-server/make-origin.sh"))
        .arg("--cache-only")
        .env("IMGRAPH_DEBIAN_ORIGIN", &cache)
        .output()
        .expect("run make-origin.sh");
    assert!(
        out.status.success(),
        "make-origin.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(cache)
}

/// Whether any node log under `.imgraph/logs` contains `text` (e.g. a test command's
/// first words, to know it is running).
pub fn some_log_contains(dir: &Path, text: &str) -> bool {
    let Ok(runs) = std::fs::read_dir(dir.join(".imgraph/logs")) else {
        return false;
    };
    runs.flatten()
        .filter_map(|run| std::fs::read_dir(run.path()).ok())
        .flatten()
        .flatten()
        .any(|log| std::fs::read_to_string(log.path()).is_ok_and(|t| t.contains(text)))
}

/// The temporary folders nodes made under `.imgraph/tmp` (staging roots, test instances)
/// and are still there: those inside each run's folder (`tmp/run-<id>/`), and a run's
/// folder itself when it is left empty. Paths are full.
pub fn tmp_leftovers(dir: &Path) -> Vec<PathBuf> {
    let list = |d: &Path| -> Vec<PathBuf> {
        match std::fs::read_dir(d) {
            Ok(rd) => rd.map(|e| e.expect("entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    };
    let mut out = Vec::new();
    for entry in list(&dir.join(".imgraph/tmp")) {
        let is_run = entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("run-"));
        let inside = if is_run { list(&entry) } else { Vec::new() };
        if inside.is_empty() {
            out.push(entry);
        } else {
            out.extend(inside);
        }
    }
    out
}
