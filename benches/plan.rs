//! A whole `plan` on a generated project: 40 images in chains of four from one source,
//! each with its own config folder of 250 files (10,000 input files in all), a test and a
//! delivery. "cold" has no state (every file read, every node new); "warm" plans again
//! after history was recorded (stat cache hits, every node up to date); "one-change" edits
//! one file of the first image in each chain, giving 10 causes and their cascades.
//! `plan_images` scales the graph: 100, 1,000 and 10,000 images from one source (one
//! config file, a build and a test each), planned warm (every node up to date), so the
//! figure is config loading, graph building and deciding, not hashing.

use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime};

mod common;

use common::{scale, write_old};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use imgraph::plan::{Action, PlanOptions};
use imgraph::state::NodeStatus;
use imgraph::workspace::Workspace;

const CHAINS: usize = 10;
const DEPTH: usize = 4;
const FILES: usize = 250;

fn generate(root: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::create_dir_all(root.join("origin/etc")).expect("mkdir");
    fs::write(root.join("origin/etc/os-release"), "ID=bench\n").expect("write");
    let mut kdl = String::from("source \"origin\" { local \"origin\"; }\n");
    for c in 0..CHAINS {
        for d in 0..DEPTH {
            let name = format!("img-{c}-{d}");
            let from = if d == 0 {
                "origin".to_string()
            } else {
                format!("img-{c}-{}", d - 1)
            };
            let conf = root.join(format!("conf/{name}"));
            fs::create_dir_all(&conf).expect("mkdir");
            for f in 0..FILES {
                let content = format!("setting_{f} = {c}-{d}\n");
                write_old(&conf.join(format!("f{f:03}.conf")), content.as_bytes(), old);
            }
            kdl.push_str(&format!(
                "image \"{name}\" {{\n  from \"{from}\"\n  build \"rootfs\" {{ copy \"conf/{name}\" to=\"/etc/{name}\"; }}\n  test \"t\" {{ run \"true\"; }}\n}}\n"
            ));
        }
    }
    kdl.push_str("environment \"staging\" {\n");
    for c in 0..CHAINS {
        kdl.push_str(&format!(
            "  deliver \"img-{c}-{}\" {{ run \"true\"; }}\n",
            DEPTH - 1
        ));
    }
    kdl.push_str("}\n");
    fs::write(root.join("imgraph.kdl"), kdl).expect("write config");
}

/// `images` images from one local source, each copying its own small file.
fn generate_flat(root: &Path, images: usize) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::create_dir_all(root.join("origin/etc")).expect("mkdir");
    fs::create_dir_all(root.join("files")).expect("mkdir");
    fs::write(root.join("origin/etc/os-release"), "ID=bench\n").expect("write");
    let mut kdl = String::from("source \"origin\" { local \"origin\"; }\n");
    for i in 0..images {
        let content = format!("n = {i}\n");
        write_old(
            &root.join(format!("files/f{i:05}.conf")),
            content.as_bytes(),
            old,
        );
        kdl.push_str(&format!(
            "image \"i{i:05}\" {{\n  from \"origin\"\n  build \"rootfs\" {{ copy \"files/f{i:05}.conf\" to=\"/etc/f.conf\"; }}\n  test \"t\" {{ run \"true\"; }}\n}}\n"
        ));
    }
    fs::write(root.join("imgraph.kdl"), kdl).expect("write config");
}

/// Records every planned node as succeeded, as an apply without artifacts would. A
/// delivery's key holds what its image's current build delivers, known only once the
/// builds are recorded, so the deliveries are recorded in a second pass.
fn record_all(dir: &Path) {
    let ws = Workspace::open(dir).expect("open");
    for _ in 0..2 {
        let plan = ws.plan_blocking(&PlanOptions::default()).expect("plan");
        let run = ws.state.begin_run("bench", "{}").expect("run");
        for n in plan.nodes.iter().filter(|n| n.action == Action::Run) {
            imgraph::exec::record_finished(&ws.state, run, n, NodeStatus::Succeeded, None, None)
                .expect("record");
        }
    }
}

fn bench_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    group.bench_function("cold-10k-files-40-images", |b| {
        b.iter_with_setup(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                generate(dir.path());
                dir
            },
            |dir| {
                let ws = Workspace::open(dir.path()).expect("open");
                black_box(ws.plan_blocking(&PlanOptions::default()).expect("plan"));
                dir
            },
        )
    });
    let warm = tempfile::tempdir().expect("tempdir");
    generate(warm.path());
    record_all(warm.path());
    group.bench_function("warm-10k-files-40-images", |b| {
        b.iter(|| {
            let ws = Workspace::open(warm.path()).expect("open");
            let plan = ws.plan_blocking(&PlanOptions::default()).expect("plan");
            assert_eq!(plan.summary.run, 0);
            black_box(plan)
        })
    });
    for c in 0..CHAINS {
        fs::write(
            warm.path().join(format!("conf/img-{c}-0/f000.conf")),
            "changed\n",
        )
        .expect("edit");
    }
    group.bench_function("one-change-per-chain", |b| {
        b.iter(|| {
            let ws = Workspace::open(warm.path()).expect("open");
            let plan = ws.plan_blocking(&PlanOptions::default()).expect("plan");
            assert_eq!(plan.summary.causes, CHAINS);
            black_box(plan)
        })
    });
    group.finish();
}

fn bench_plan_images(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan_images");
    group.sample_size(10);
    for &images in scale(&[100, 1_000, 10_000]) {
        let warm = tempfile::tempdir().expect("tempdir");
        generate_flat(warm.path(), images);
        record_all(warm.path());
        group.bench_with_input(BenchmarkId::new("warm", images), &images, |b, _| {
            b.iter(|| {
                let ws = Workspace::open(warm.path()).expect("open");
                let plan = ws.plan_blocking(&PlanOptions::default()).expect("plan");
                assert_eq!(plan.summary.run, 0);
                black_box(plan)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan, bench_plan_images);
criterion_main!(benches);
