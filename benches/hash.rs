//! Hashing a project tree: cold (empty stat cache, every file read) against warm (every file
//! a stat cache hit). The tree has 2,000 small files in 20 folders and 20 files of 1 MiB,
//! with mtimes an hour in the past so warm entries are not racy. `hash_files` scales the
//! count of small files: 1,000, 10,000 and 100,000 (100 to a folder), cold and warm.

use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime};

mod common;

use common::{scale, write_old};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use imgraph::config::model::{Input, InputKind, Trigger};
use imgraph::hash::{Hasher, NodeInputs, StatCache};

fn generate(root: &Path) {
    let when = SystemTime::now() - Duration::from_secs(3600);
    for dir in 0..20 {
        let d = root.join(format!("conf/d{dir:02}"));
        fs::create_dir_all(&d).expect("create bench folder");
        for file in 0..100 {
            let content = format!("# file {dir}/{file}\nkey_{file} = {}\n", dir * file);
            write_old(
                &d.join(format!("f{file:03}.conf")),
                content.as_bytes(),
                when,
            );
        }
    }
    let big = root.join("blobs");
    fs::create_dir_all(&big).expect("create bench folder");
    for i in 0..20u8 {
        let content: Vec<u8> = (0..1usize << 20).map(|j| (j as u8) ^ i).collect();
        write_old(&big.join(format!("blob{i:02}.bin")), &content, when);
    }
}

/// `count` small files, 100 to a folder.
fn generate_small(root: &Path, count: usize) {
    let when = SystemTime::now() - Duration::from_secs(3600);
    for file in 0..count {
        let d = root.join(format!("conf/d{:04}", file / 100));
        if file % 100 == 0 {
            fs::create_dir_all(&d).expect("create bench folder");
        }
        let content = format!("# file {file}\nkey = {}\n", file * 7);
        write_old(
            &d.join(format!("f{:03}.conf", file % 100)),
            content.as_bytes(),
            when,
        );
    }
}

fn inputs() -> Vec<Input> {
    vec![Input {
        kind: InputKind::Path {
            pattern: ".".to_owned(),
        },
        trigger: Trigger::Immediate,
        exclude: Vec::new(),
        span: (0, 0).into(),
    }]
}

/// Benches hashing `dir` as `cold{suffix}` (an empty stat cache: every file read) and
/// `warm{suffix}` (every file a stat-cache hit, checked).
fn cold_and_warm(
    group: &mut BenchmarkGroup<'_, WallTime>,
    suffix: &str,
    dir: &Path,
    node: &NodeInputs<'_>,
) {
    group.bench_function(format!("cold{suffix}"), |b| {
        b.iter(|| {
            let cache = StatCache::empty();
            let manifest = Hasher::new(dir, &cache).manifest(node).expect("hash tree");
            black_box(manifest.digest())
        })
    });
    let seed = StatCache::empty();
    Hasher::new(dir, &seed).manifest(node).expect("hash tree");
    let entries: imgraph::hash::StatMap = seed.take_updates().into_iter().collect();
    group.bench_function(format!("warm{suffix}"), |b| {
        b.iter(|| {
            let cache = StatCache::new(entries.clone());
            let manifest = Hasher::new(dir, &cache).manifest(node).expect("hash tree");
            assert_eq!(cache.stats().misses, 0, "warm run must not read files");
            black_box(manifest.digest())
        })
    });
}

fn bench_hash(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create temp dir");
    generate(dir.path());
    let inputs = inputs();
    let node = NodeInputs {
        declared: &inputs,
        ..NodeInputs::default()
    };

    let mut group = c.benchmark_group("hash_tree_2000_small_20_mib");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    cold_and_warm(&mut group, "", dir.path(), &node);
    group.finish();
}

fn bench_hash_files(c: &mut Criterion) {
    let inputs = inputs();
    let node = NodeInputs {
        declared: &inputs,
        ..NodeInputs::default()
    };
    let mut group = c.benchmark_group("hash_files");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    for &count in scale(&[1_000, 10_000, 100_000]) {
        let dir = tempfile::tempdir().expect("create temp dir");
        generate_small(dir.path(), count);
        cold_and_warm(&mut group, &format!("/{count}"), dir.path(), &node);
    }
    group.finish();
}

criterion_group!(benches, bench_hash, bench_hash_files);
criterion_main!(benches);
