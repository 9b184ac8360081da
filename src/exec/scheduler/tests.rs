//! The scheduler against a scripted node runner (sccache's mock storage is the model):
//! each node has a script of what its task does, and the runner records every call the
//! scheduler makes, how many tasks run at once, and which tasks saw the stop token.
//! Nothing here measures time: tasks interleave at `yield_now` on one thread (a generous
//! timeout only turns a scheduler that would wait forever into a failure).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{schedule, Finished, Limits, NodeRunner, Started};
use crate::exec::events::{Event, NodeOutcome, NodeReport};
use crate::exec::ExecError;
use crate::graph::NodeId;

/// What a node's task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Succeed,
    Fail,
    Panic,
    /// Runs until it is told to stop, then ends cancelled (a command killed by Ctrl-C).
    RunUntilStopped,
    /// Presses Ctrl-C (cancels the whole run), then runs until it is told to stop.
    PressCtrlC,
    /// Recorded up to date instead of running (early cutoff).
    CutOff,
    /// Its start cannot be recorded.
    StartFails,
}

/// Everything the scheduler asked of the runner, in order.
#[derive(Debug, Default)]
struct Calls {
    /// `start X`, `end X` (its task ended), `finish X` (its end recorded), `not-run X`,
    /// `cut-off X`, `crashed X`.
    log: Vec<String>,
    /// The nodes of each call to `start` and to `finish`: what was recorded together.
    start_groups: Vec<Vec<String>>,
    finish_groups: Vec<Vec<String>>,
    not_run: HashMap<String, (NodeOutcome, String)>,
    running: usize,
    most_running: usize,
    /// Tasks that saw the stop token cancelled while they ran.
    told: HashSet<String>,
}

struct FakeRunner {
    script: HashMap<String, Script>,
    calls: Arc<Mutex<Calls>>,
    /// The run's own token (Ctrl-C); the scheduler's `stop` is its child.
    ctrl_c: CancellationToken,
}

impl FakeRunner {
    fn note(&self, line: String) {
        self.calls.lock().unwrap().log.push(line);
    }

    fn start_one(&self, node: &str, stop: &CancellationToken) -> Started<Finished> {
        let script = self.script[node];
        self.note(format!("start {node}"));
        let log_path = format!("{node}.log").into();
        let (calls, stop, ctrl_c, node) = (
            self.calls.clone(),
            stop.clone(),
            self.ctrl_c.clone(),
            node.to_string(),
        );
        let task = Box::pin(async move {
            {
                let mut c = calls.lock().unwrap();
                c.running += 1;
                c.most_running = c.most_running.max(c.running);
            }
            // Let every other started task run before this one ends.
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            let outcome = match script {
                Script::Succeed => NodeOutcome::Succeeded,
                Script::Fail => NodeOutcome::Failed,
                Script::PressCtrlC | Script::RunUntilStopped => {
                    if script == Script::PressCtrlC {
                        ctrl_c.cancel();
                    }
                    stop.cancelled().await;
                    calls.lock().unwrap().told.insert(node.clone());
                    NodeOutcome::Cancelled
                }
                Script::Panic | Script::CutOff | Script::StartFails => NodeOutcome::Failed,
            };
            {
                let mut c = calls.lock().unwrap();
                c.running -= 1;
                c.log.push(format!("end {node}"));
            }
            if script == Script::Panic {
                panic!("scripted panic in {node}");
            }
            Finished {
                outcome,
                error: (outcome != NodeOutcome::Succeeded).then(|| format!("{node} scripted")),
            }
        });
        Started { log_path, task }
    }
}

impl NodeRunner for FakeRunner {
    type Id = String;
    type Done = Finished;

    fn cut_off(&mut self, node: &String) -> Result<Option<String>, ExecError> {
        if self.script[node] != Script::CutOff {
            return Ok(None);
        }
        self.note(format!("cut-off {node}"));
        Ok(Some(format!("{node}: same artifact")))
    }

    fn start(
        &mut self,
        nodes: &[&String],
        stop: &CancellationToken,
    ) -> Result<Vec<Started<Finished>>, ExecError> {
        // One record for the group: when it fails, none of them starts.
        if let Some(bad) = nodes
            .iter()
            .find(|n| self.script[**n] == Script::StartFails)
        {
            return Err(ExecError::NotPlanned {
                node: NodeId::build(bad),
            });
        }
        self.calls
            .lock()
            .unwrap()
            .start_groups
            .push(nodes.iter().map(|n| n.to_string()).collect());
        Ok(nodes.iter().map(|n| self.start_one(n, stop)).collect())
    }

    fn finish(&mut self, done: Vec<(String, Finished)>) -> Vec<Finished> {
        let mut c = self.calls.lock().unwrap();
        c.finish_groups
            .push(done.iter().map(|(n, _)| n.clone()).collect());
        for (node, _) in &done {
            c.log.push(format!("finish {node}"));
        }
        done.into_iter().map(|(_, f)| f).collect()
    }

    fn not_run(
        &mut self,
        node: &String,
        outcome: NodeOutcome,
        cause: &str,
    ) -> Result<(), ExecError> {
        let mut c = self.calls.lock().unwrap();
        c.log.push(format!("not-run {node}"));
        c.not_run
            .insert(node.to_string(), (outcome, cause.to_string()));
        Ok(())
    }

    fn crashed(&mut self, node: &String, _error: &str) {
        self.note(format!("crashed {node}"));
    }
}

/// What one scripted run left behind.
struct Ran {
    result: Result<HashMap<String, NodeReport<String>>, ExecError>,
    calls: Calls,
    events: Vec<Event<String>>,
    stopped: bool,
}

impl Ran {
    fn outcome(&self, node: &str) -> NodeOutcome {
        let reports = self.result.as_ref().expect("the run ends normally");
        reports[node].outcome
    }

    fn started(&self) -> Vec<&str> {
        self.calls
            .log
            .iter()
            .filter_map(|l| l.strip_prefix("start "))
            .collect()
    }

    fn position(&self, line: &str) -> usize {
        let log = &self.calls.log;
        log.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("`{line}` is not in {log:?}"))
    }
}

/// Runs `nodes` (in this order, each with its script and the nodes it needs).
async fn run(nodes: &[(&str, Script, &[&str])], parallelism: usize, fail_fast: bool) -> Ran {
    let ctrl_c = CancellationToken::new();
    let stop = ctrl_c.child_token();
    let mut runner = FakeRunner {
        script: nodes.iter().map(|(n, s, _)| (n.to_string(), *s)).collect(),
        calls: Arc::new(Mutex::new(Calls::default())),
        ctrl_c: ctrl_c.clone(),
    };
    let ids: Vec<String> = nodes.iter().map(|(n, _, _)| n.to_string()).collect();
    let deps = nodes
        .iter()
        .map(|(n, _, d)| (n.to_string(), d.iter().map(|d| d.to_string()).collect()))
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let limits = Limits {
        parallelism,
        fail_fast,
    };
    // A guard, not a measure: a scheduler that waits forever fails here instead of hanging.
    let scheduled = schedule(&mut runner, &ids, &deps, limits, &stop, &tx);
    let result = tokio::time::timeout(std::time::Duration::from_secs(30), scheduled)
        .await
        .expect("the run ends")
        .map(|reports| reports.into_iter().collect());
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let calls = std::mem::take(&mut *runner.calls.lock().unwrap());
    Ran {
        result,
        calls,
        events,
        stopped: stop.is_cancelled(),
    }
}

use Script::*;

#[tokio::test]
async fn a_failure_skips_its_dependants_and_independent_branches_still_run() {
    let ran = run(
        &[
            ("a", Fail, &[]),
            ("b", Succeed, &["a"]),
            ("c", Succeed, &["b"]),
            ("d", Succeed, &[]),
        ],
        1,
        false,
    )
    .await;
    assert_eq!(ran.outcome("a"), NodeOutcome::Failed);
    assert_eq!(ran.outcome("b"), NodeOutcome::Skipped);
    assert_eq!(ran.outcome("c"), NodeOutcome::Skipped);
    assert_eq!(ran.outcome("d"), NodeOutcome::Succeeded);
    assert_eq!(ran.started(), ["a", "d"]);
    // Recorded not run with the cause, and told to the reporters.
    assert_eq!(
        ran.calls.not_run["b"],
        (NodeOutcome::Skipped, "a did not succeed".to_string())
    );
    assert_eq!(
        ran.calls.not_run["c"],
        (NodeOutcome::Skipped, "b did not succeed".to_string())
    );
    let skipped: Vec<&str> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            Event::NodeSkipped { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, ["b", "c"]);
    assert!(!ran.stopped, "without fail-fast a failure stops nothing");
}

#[tokio::test]
async fn fail_fast_starts_nothing_after_a_failure_and_stops_what_runs() {
    let nodes: &[(&str, Script, &[&str])] = &[
        ("a", Fail, &[]),
        ("b", RunUntilStopped, &[]),
        ("c", Succeed, &[]),
    ];
    let ran = run(nodes, 2, true).await;
    assert!(ran.stopped);
    assert_eq!(ran.started(), ["a", "b"]);
    assert_eq!(ran.outcome("a"), NodeOutcome::Failed);
    assert_eq!(ran.outcome("b"), NodeOutcome::Cancelled);
    assert!(ran.calls.told.contains("b"), "the running node is told");
    assert_eq!(ran.outcome("c"), NodeOutcome::Cancelled);
    assert_eq!(
        ran.calls.not_run["c"],
        (
            NodeOutcome::Cancelled,
            "not started: the run was stopped".to_string()
        )
    );

    // The same failure without fail-fast: the independent node runs.
    let nodes: &[(&str, Script, &[&str])] = &[("a", Fail, &[]), ("c", Succeed, &[])];
    let ran = run(nodes, 1, false).await;
    assert_eq!(ran.started(), ["a", "c"]);
    assert_eq!(ran.outcome("c"), NodeOutcome::Succeeded);
}

#[tokio::test]
async fn cancel_starts_no_new_node_and_tells_the_running_ones() {
    let ran = run(
        &[
            ("a", PressCtrlC, &[]),
            ("b", RunUntilStopped, &[]),
            ("c", Succeed, &[]),
            ("d", Succeed, &["a"]),
        ],
        2,
        false,
    )
    .await;
    assert!(ran.stopped);
    assert_eq!(ran.started(), ["a", "b"], "nothing starts after Ctrl-C");
    assert_eq!(
        ran.calls.told,
        HashSet::from(["a".to_string(), "b".to_string()])
    );
    for node in ["a", "b", "c", "d"] {
        assert_eq!(ran.outcome(node), NodeOutcome::Cancelled, "{node}");
    }
    assert_eq!(
        ran.calls.not_run["c"].1,
        "not started: the run was stopped".to_string()
    );
    // A dependant of a cancelled node is cancelled with it, not skipped.
    assert_eq!(
        ran.calls.not_run["d"],
        (NodeOutcome::Cancelled, "a did not succeed".to_string())
    );
}

#[tokio::test]
async fn a_panicking_task_is_a_failed_node_and_the_run_ends() {
    let ran = run(
        &[
            ("a", Panic, &[]),
            ("b", Succeed, &["a"]),
            ("c", Succeed, &[]),
        ],
        2,
        false,
    )
    .await;
    assert_eq!(ran.outcome("a"), NodeOutcome::Failed);
    let reports = ran.result.as_ref().expect("the run ends normally");
    let error = reports["a"].error.clone().unwrap_or_default();
    assert!(error.contains("crashed"), "{error}");
    assert!(ran.calls.log.contains(&"crashed a".to_string()));
    assert_eq!(ran.outcome("b"), NodeOutcome::Skipped);
    assert_eq!(ran.outcome("c"), NodeOutcome::Succeeded);
    assert!(ran.events.iter().any(|e| matches!(
        e,
        Event::NodeFinished { node, outcome: NodeOutcome::Failed, .. } if node == "a"
    )));
}

#[tokio::test]
async fn never_more_than_parallelism_nodes_run_at_once() {
    let nodes: Vec<(&str, Script, &[&str])> = ["a", "b", "c", "d", "e", "f"]
        .into_iter()
        .map(|n| (n, Succeed, &[][..]))
        .collect();
    for (parallelism, most) in [(2, 2), (4, 4), (0, 1), (10, 6)] {
        let ran = run(&nodes, parallelism, false).await;
        assert_eq!(ran.calls.most_running, most, "parallelism {parallelism}");
        for (n, _, _) in &nodes {
            assert_eq!(ran.outcome(n), NodeOutcome::Succeeded);
        }
    }
}

#[tokio::test]
async fn a_node_starts_only_after_every_node_it_needs_succeeded() {
    let nodes: &[(&str, Script, &[&str])] = &[
        ("d", Succeed, &["b", "c"]),
        ("b", Succeed, &["a"]),
        ("c", Succeed, &["a"]),
        ("a", Succeed, &[]),
        ("e", CutOff, &["d"]),
        ("f", Succeed, &["e"]),
    ];
    let ran = run(nodes, 4, false).await;
    for (node, _, deps) in nodes {
        for dep in *deps {
            // Its end recorded, not only its task ended.
            let done = match ran.outcome(dep) {
                NodeOutcome::UpToDate => format!("cut-off {dep}"),
                _ => format!("finish {dep}"),
            };
            let first = match ran.outcome(node) {
                NodeOutcome::UpToDate => format!("cut-off {node}"),
                _ => format!("start {node}"),
            };
            assert!(
                ran.position(&done) < ran.position(&first),
                "{node} began before {dep} was done: {:?}",
                ran.calls.log
            );
        }
    }
    // A cut-off node is up to date without running, and what needs it runs.
    assert_eq!(ran.outcome("e"), NodeOutcome::UpToDate);
    assert!(!ran.started().contains(&"e"));
    assert_eq!(ran.outcome("f"), NodeOutcome::Succeeded);
    assert!(ran.calls.most_running >= 2, "b and c ran side by side");
}

#[tokio::test]
async fn a_record_error_ends_the_run_after_the_running_nodes_ended() {
    // b becomes ready while a runs (after c), and its start cannot be recorded.
    let ran = run(
        &[
            ("a", RunUntilStopped, &[]),
            ("c", Succeed, &[]),
            ("b", StartFails, &["c"]),
        ],
        3,
        false,
    )
    .await;
    assert!(matches!(ran.result, Err(ExecError::NotPlanned { ref node }) if *node == "build:b"));
    assert!(ran.stopped);
    assert!(ran.calls.told.contains("a"));
    assert!(
        ran.calls.log.contains(&"end a".to_string()),
        "a was awaited"
    );
    assert!(
        ran.calls.log.contains(&"finish a".to_string()),
        "and its end recorded"
    );
    assert!(!ran.started().contains(&"b"));
}

#[tokio::test]
async fn nodes_ready_together_start_in_one_record_and_ends_are_recorded_in_groups() {
    let ran = run(
        &[
            ("a", Succeed, &[]),
            ("b", Succeed, &[]),
            ("c", Fail, &[]),
            ("d", Succeed, &["a", "b"]),
            ("e", Succeed, &["a"]),
        ],
        4,
        false,
    )
    .await;
    // a, b and c were ready at once: one record of their starts.
    assert_eq!(ran.calls.start_groups[0], ["a", "b", "c"]);
    // Every task that had ended when the scheduler woke was recorded with the others;
    // each node exactly once, whatever the grouping.
    let mut recorded: Vec<&str> = ran
        .calls
        .finish_groups
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    recorded.sort_unstable();
    assert_eq!(recorded, ["a", "b", "c", "d", "e"]);
    assert!(
        ran.calls.finish_groups.len() < 5,
        "tasks that end together share a record: {:?}",
        ran.calls.finish_groups
    );
    assert_eq!(ran.outcome("c"), NodeOutcome::Failed);
    // d and e became ready with the same group of ends: one record of their starts.
    assert_eq!(ran.calls.start_groups[1..], [vec!["d", "e"]]);
    assert_eq!(ran.outcome("d"), NodeOutcome::Succeeded);
}

#[tokio::test]
async fn a_ready_node_with_more_waiting_on_it_takes_a_free_slot_first() {
    // One slot. `root` ends; then `leaf1` (nothing waits on it) and `gate` (two nodes wait
    // on it, as on a publish node) are ready together: `gate` goes first although
    // `leaf1` comes first in the given order.
    let nodes: &[(&str, Script, &[&str])] = &[
        ("root", Succeed, &[]),
        ("leaf1", Succeed, &["root"]),
        ("gate", Succeed, &["root"]),
        ("after1", Succeed, &["gate"]),
        ("after2", Succeed, &["after1"]),
    ];
    let ran = run(nodes, 1, false).await;
    assert_eq!(
        ran.started(),
        // `after1` (one waits on it) before `leaf1`; then `leaf1` and `after2`, alike,
        // in the given order.
        vec!["root", "gate", "after1", "leaf1", "after2"],
        "{:?}",
        ran.calls.log
    );
    // With nothing to choose between, the given order holds.
    let flat: Vec<(&str, Script, &[&str])> = ["c", "a", "b"]
        .into_iter()
        .map(|n| (n, Succeed, &[][..]))
        .collect();
    assert_eq!(run(&flat, 1, false).await.started(), vec!["c", "a", "b"]);
}
