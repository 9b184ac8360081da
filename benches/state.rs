//! State writes per second: what recording a run's nodes costs in the SQLite state file.
//! `state_writes/group-N` records 64 nodes' starts and ends (128 records) in groups of N
//! records per transaction, as the executor does for nodes that start or end together
//! (`group-1` is one transaction per record, how every start and end was written before
//! grouping). `state_writes/durable` is one ledger row committed and synced (what a
//! staging folder, instance or command costs before it is created): one fsync each.
//! Throughput is in records.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imgraph::graph::NodeId;
use imgraph::state::{Durable, NodeEnd, NodeStart, NodeStatus, State};

const NODES: usize = 64;

/// A node's start with fields of a realistic size (a manifest of a few entries).
fn starts<'a>(manifest: &'a str, names: &'a [NodeId]) -> Vec<NodeStart<'a>> {
    names
        .iter()
        .map(|n| NodeStart {
            node_id: n,
            key: "5f0c6a4e9a1d3b7c2e8f1a0b6d4c3e2f5f0c6a4e9a1d3b7c2e8f1a0b6d4c3e2f",
            manifest_json: manifest,
            stanza: "build \"rootfs\" { copy \"files/f.conf\" to=\"/etc/f.conf\"; }",
            upstream_json: "{\"source:origin\":\"0f1e2d3c\"}",
            reasons_json: "[{\"kind\":\"new\"}]",
            log_path: Some("/project/.imgraph/logs/run-1/build_x.log"),
        })
        .collect()
}

/// A fresh state file with one run, so each measure starts from the same history.
fn fresh(dir: &std::path::Path, name: &str) -> (State, i64) {
    let state = State::open(&dir.join(format!("{name}.db"))).expect("open state");
    let run = state.begin_run("apply", "{}").expect("begin run");
    (state, run)
}

fn state_writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = format!(
        "[{}]",
        (0..8)
            .map(|i| format!("{{\"path\":\"files/f{i}.conf\",\"digest\":\"{i:064x}\",\"trigger\":\"immediate\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let names: Vec<NodeId> = (0..NODES)
        .map(|i| NodeId::build(&format!("img{i:03}")))
        .collect();
    let all = starts(&manifest, &names);

    let mut group = c.benchmark_group("state_writes");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * NODES as u64));
    for size in [1, 8, 64] {
        let (state, run) = fresh(dir.path(), &format!("group-{size}"));
        group.bench_function(BenchmarkId::new("group", size), |b| {
            b.iter(|| {
                for chunk in all.chunks(size) {
                    let ids = state.start_nodes(run, chunk).expect("record starts");
                    let ends: Vec<NodeEnd> = ids
                        .iter()
                        .map(|id| NodeEnd {
                            id: *id,
                            status: NodeStatus::Succeeded,
                            outputs_json: Some("{\"artifact_id\":\"a\",\"version\":\"1.0.0\"}"),
                            error: None,
                        })
                        .collect();
                    state.finish_nodes(black_box(&ends)).expect("record ends");
                }
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    let (state, run) = fresh(dir.path(), "durable");
    group.bench_function("durable", |b| {
        b.iter(|| {
            state
                .ledger_add(Some(run), "build:img000", "local", "staging", "/x", "build")
                .and_then(Durable::sync)
                .expect("ledger row")
        })
    });
    group.finish();
}

criterion_group!(benches, state_writes);
criterion_main!(benches);
