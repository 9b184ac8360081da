//! `imgraph report` and `imgraph graph --plan` through the real binary. The report is
//! opened in headless Chromium (Debian's `chromium`, installed by scripts/test.sh): every
//! stage node must be in the rendered DOM with its plan mark, and a screenshot is kept
//! under the target dir (`target/tmp/report/*.png`) for people to look at.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use imgraph::plan::PlanOptions;
use imgraph::state::{ImageVersion, ReleaseStatus, RunStatus};
use imgraph::workspace::Workspace;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium is needed: in CI its absence fails the test; elsewhere it is said out loud
/// and the test returns.
fn require_chromium() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("missing {CHROMIUM}: scripts/test.sh installs Debian's `chromium`");
    }
    eprintln!("NOT RUN: missing {CHROMIUM}; run scripts/test.sh to install it");
    false
}

fn chromium(extra: &[String], page: &Path) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("180").arg(CHROMIUM).args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()));
    let out = cmd.output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rendered DOM of a page, as Chromium sees it after parsing and layout.
fn rendered_dom(page: &Path) -> String {
    let out = chromium(&["--dump-dom".into()], page);
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

/// Screenshots `page` into the target dir (next to a copy of the page) and returns the
/// PNG's path.
fn screenshot(page: &Path, name: &str, size: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join(format!("{name}.png"));
    std::fs::copy(page, dir.join(format!("{name}.html"))).unwrap();
    let _ = std::fs::remove_file(&png);
    chromium(
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={size}"),
            "--hide-scrollbars".into(),
        ],
        page,
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG: {png:?}");
    png
}

/// Every stage node id of a project, from its config.
fn stage_ids(dir: &Path) -> Vec<String> {
    let project = imgraph::config::load(dir).unwrap();
    let graph = imgraph::graph::StageGraph::build(&project).unwrap();
    graph
        .topo_order()
        .iter()
        .map(|&i| graph.node(i).id.to_string())
        .collect()
}

/// Attribute-escaped, as the page and Chromium's serializer write it.
fn attr(id: &str) -> String {
    id.replace('&', "&amp;").replace('"', "&quot;")
}

/// The page is one file that needs nothing else: no script, stylesheet, image or font
/// from anywhere (the only URL is the SVG namespace, which is a name, not a fetch).
fn assert_self_contained(html: &str) {
    for needle in [
        "<script", "<link", "<img", "<iframe", "@import", "url(http", "src=",
    ] {
        assert!(!html.contains(needle), "page contains {needle:?}");
    }
    let urls: Vec<&str> = html
        .match_indices("://")
        .map(|(i, _)| &html[i.saturating_sub(8)..(i + 40).min(html.len())])
        .filter(|u| !u.contains("http://www.w3.org/2000/svg\""))
        .collect();
    assert!(urls.is_empty(), "page refers to {urls:?}");
}

fn report(dir: &Path, out: &Path) -> String {
    let run = imgraph(dir)
        .args(["report", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stdout).unwrap()
}

#[test]
fn the_quickstart_report_renders_every_stage_in_chromium() {
    if !require_chromium() {
        return;
    }
    let (_t, dir) = copy_project("examples/quickstart");
    let applied = imgraph(&dir).arg("apply").output().unwrap();
    assert_eq!(
        applied.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // One change to web: its stages run again, base stays up to date.
    append(&dir.join("scripts/provision-web.sh"), "\n# changed\n");

    let page = dir.join("report.html");
    let said = report(&dir, &page);
    assert!(said.contains("report.html"), "{said}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);

    let dom = rendered_dom(&page);
    let ids = stage_ids(&dir);
    assert_eq!(ids.len(), 9, "{ids:?}");
    for id in &ids {
        assert!(
            dom.contains(&format!("data-node=\"{}\"", attr(id))),
            "{id} is not in the rendered DOM"
        );
    }
    for (id, mark) in [
        ("build:base", "up-to-date"),
        ("publish:base", "up-to-date"),
        ("build:web", "run"),
        ("deliver:web@production", "run"),
    ] {
        let box_ = format!("class=\"node {mark}\" data-node=\"{}\"", attr(id));
        assert!(dom.contains(&box_), "{id} is not drawn as {mark}");
    }
    // The plan table explains the change in the words of `imgraph plan`.
    assert!(
        dom.contains("`scripts/provision-web.sh` modified"),
        "the plan's reason is on the page"
    );
    // Versions, their status and where they are.
    for text in ["1.0.0", "2.3.0", "Ready", "staging, production", "apply"] {
        assert!(dom.contains(text), "{text} is on the page");
    }
    let png = screenshot(&page, "quickstart-report", "1400,1000");
    eprintln!("report: {} bytes; screenshot {}", html.len(), png.display());
}

/// A generated project of 100 images (ten chains of ten from one source), each tested,
/// the last of each chain delivered, with one recorded version each.
fn generate_100(root: &Path) {
    std::fs::create_dir_all(root.join("origin/etc")).unwrap();
    write(&root.join("origin/etc/os-release"), "ID=generated\n");
    let mut kdl = String::from("source \"origin\" { local \"origin\"; }\n");
    for c in 0..10 {
        for d in 0..10 {
            let name = format!("img-{c}-{d}");
            let from = if d == 0 {
                "origin".to_string()
            } else {
                format!("img-{c}-{}", d - 1)
            };
            let conf = root.join(format!("conf/{name}"));
            std::fs::create_dir_all(&conf).unwrap();
            write(&conf.join("app.conf"), &format!("chain={c} depth={d}\n"));
            write(&conf.join("packages.txt"), "curl\nnginx\n");
            kdl.push_str(&format!(
                "image \"{name}\" {{\n  from \"{from}\"\n  version \"1.0\"\n  build \"rootfs\" {{ copy \"conf/{name}\" to=\"/etc/{name}\"; }}\n  packages \"conf/{name}/packages.txt\"\n  test \"smoke\" {{ run \"true\"; }}\n}}\n"
            ));
        }
    }
    for env in ["staging", "production"] {
        kdl.push_str(&format!("environment \"{env}\" {{\n"));
        if env == "production" {
            kdl.push_str("  after \"staging\"\n");
        }
        for c in 0..10 {
            kdl.push_str(&format!("  deliver \"img-{c}-9\" {{ run \"true\"; }}\n"));
        }
        kdl.push_str("}\n");
    }
    write(&root.join("imgraph.kdl"), &kdl);
}

/// Records the plan as done, with a version of each image and the deliveries.
fn seed_versions(dir: &Path) {
    let plan = plan_of(dir, &PlanOptions::default());
    seed_success(dir, &plan);
    let ws = Workspace::open(dir).unwrap();
    let run = ws.state.begin_run("seed-registry", "{}").unwrap();
    for n in plan
        .nodes
        .iter()
        .filter(|n| n.id.as_str().starts_with("build:"))
    {
        let image = n.image.clone().unwrap();
        ws.state
            .record_image(&ImageVersion {
                image: image.clone(),
                version: "1.0.0".into(),
                artifact_id: format!("local:{}", blake3::hash(n.key.as_bytes()).to_hex()),
                provider: "local".into(),
                key: n.key.clone(),
                status: ReleaseStatus::Ready,
                built_at: imgraph::state::now_ms(),
                run: Some(run),
                origin: None,
                revoked_reason: None,
            })
            .unwrap();
        if image.ends_with("-9") {
            for env in ["staging", "production"] {
                ws.state.record_delivery(&image, "1.0.0", env, run).unwrap();
            }
        }
    }
    ws.state.finish_run(run, RunStatus::Succeeded).unwrap();
}

#[test]
fn a_100_image_report_has_every_stage_and_stays_one_page() {
    if !require_chromium() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hundred");
    generate_100(&dir);
    seed_versions(&dir);
    // A change at the root of one chain: ten builds and their cascades.
    append(&dir.join("conf/img-3-0/app.conf"), "changed\n");

    let page = dir.join("report.html");
    report(&dir, &page);
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);
    let dom = rendered_dom(&page);
    let ids = stage_ids(&dir);
    assert_eq!(
        ids.len(),
        1 + 100 * 3 + 20,
        "source, build/test/publish, deliveries"
    );
    for id in &ids {
        assert!(
            dom.contains(&format!("data-node=\"{}\"", attr(id))),
            "{id} is not in the rendered DOM"
        );
    }
    assert!(dom.contains("class=\"node run\" data-node=\"build:img-3-9\""));
    assert!(dom.contains("class=\"node up-to-date\" data-node=\"build:img-4-9\""));
    let png = screenshot(&page, "hundred-images-report", "1400,1800");
    eprintln!(
        "report of 100 images: {} bytes; screenshot {}",
        html.len(),
        png.display()
    );
}

#[test]
fn graph_plan_colours_run_deferred_up_to_date_and_failed() {
    let (_t, dir) = copy_project("examples/quickstart");
    let plan = plan_of(&dir, &PlanOptions::default());
    seed_success(&dir, &plan);
    append(&dir.join("scripts/provision-web.sh"), "\n# changed\n");
    append(&dir.join("packages/base.txt"), "htop\n");
    let plan = plan_of(&dir, &PlanOptions::default());
    seed_failure(&dir, &plan, "test:web/http", "smoke failed");

    let dot = imgraph(&dir).args(["graph", "--plan"]).output().unwrap();
    assert_eq!(dot.status.code(), Some(0));
    let dot = String::from_utf8(dot.stdout).unwrap();
    for (id, class) in [
        ("build:base", "deferred"),
        ("test:base/smoke", "up-to-date"),
        ("build:web", "run"),
        ("test:web/http", "failed"),
        ("deliver:web@staging", "run"),
    ] {
        let line = dot
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{id}\" [")))
            .unwrap_or_else(|| panic!("{id} in {dot}"));
        assert!(
            line.contains(&format!("class=\"{class}\"")) && line.contains("fillcolor="),
            "{id} should be {class}: {line}"
        );
    }
    assert!(dot.contains("\"source:tiny-root\" [label=\"source:tiny-root\", shape=ellipse];"));

    let mermaid = imgraph(&dir)
        .args(["graph", "--plan", "--format", "mermaid"])
        .output()
        .unwrap();
    let mermaid = String::from_utf8(mermaid.stdout).unwrap();
    for class in ["run", "deferred", "up_to_date", "failed"] {
        assert!(
            mermaid.contains(&format!("classDef {class} fill:")),
            "{class} in {mermaid}"
        );
        assert!(
            mermaid
                .lines()
                .any(|l| l.trim_start().starts_with("class ") && l.ends_with(&format!(" {class}"))),
            "nodes put in {class}: {mermaid}"
        );
    }

    // Without --plan, the graph is the config's alone: no colours, no state touched.
    let (_t2, fresh) = copy_project("examples/quickstart");
    let plain = imgraph(&fresh).arg("graph").output().unwrap();
    assert!(!String::from_utf8(plain.stdout)
        .unwrap()
        .contains("fillcolor"));
    assert!(!fresh.join(".imgraph").exists());
    // A roll-up plan runs the deferred change.
    let rollup = imgraph(&dir)
        .args(["graph", "--plan", "--rollup"])
        .output()
        .unwrap();
    let rollup = String::from_utf8(rollup.stdout).unwrap();
    assert!(rollup.contains("\"build:base\" [label=\"build:base\", class=\"run\""));
}
