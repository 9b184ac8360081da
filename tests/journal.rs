//! The state seam: the history goes through a journal of records, so runners with their
//! own state files converge on one history. Proven with an in-memory journal (the shared
//! object-storage one implements the same trait) and real SQLite files.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use imgraph::state::{
    decode_batch, encode_batch, ImageVersion, Journal, JournalError, NodeStart, NodeStatus, Record,
    ReleaseStatus, RunStatus, Seq, State,
};
use proptest::prelude::*;

/// A journal in memory: each append is one encoded batch, as an object store keeps it.
#[derive(Debug, Default)]
struct MemoryJournal {
    batches: Mutex<Vec<Vec<u8>>>,
}

impl Journal for MemoryJournal {
    fn name(&self) -> String {
        "memory://team".into()
    }

    fn append(&self, after: Seq, records: &[Record]) -> Result<Seq, JournalError> {
        let mut batches = self.batches.lock().unwrap();
        let current = batches.len() as Seq;
        if current != after {
            return Err(JournalError::Conflict { after, current });
        }
        let bytes = encode_batch(records).map_err(|e| JournalError::Store {
            context: "encode records".into(),
            source: Box::new(e),
        })?;
        batches.push(bytes);
        Ok(current + 1)
    }

    fn read_since(&self, seq: Seq) -> Result<Vec<(Seq, Record)>, JournalError> {
        let batches = self.batches.lock().unwrap();
        let mut out = Vec::new();
        for (i, bytes) in batches.iter().enumerate().skip(seq as usize) {
            let records = decode_batch(bytes).map_err(|e| JournalError::Store {
                context: format!("read batch {}", i + 1),
                source: Box::new(e),
            })?;
            out.extend(records.into_iter().map(|r| (i as Seq + 1, r)));
        }
        Ok(out)
    }
}

fn state_path(dir: &Path) -> std::path::PathBuf {
    dir.join(".imgraph/state.db")
}

/// A real `apply` of the project in `dir`, its history going through `journal`.
fn apply_through(dir: &Path, journal: Arc<dyn Journal>) {
    let mut ws = imgraph::workspace::Workspace::open(dir).expect("open the project");
    ws.state = State::open(&state_path(dir))
        .and_then(|s| s.with_journal(journal))
        .expect("attach the journal");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let options = imgraph::plan::PlanOptions::default();
        let outcome = ws
            .apply(
                imgraph::workspace::PlanSource::Fresh(&options),
                &imgraph::exec::ExecOptions::default(),
                tx,
                tokio_util::sync::CancellationToken::new(),
            )
            .await;
        let _ = drain.await;
        outcome
    });
    let outcome = outcome.expect("apply");
    assert_eq!(outcome.summary.status, RunStatus::Succeeded);
}

#[test]
fn a_runner_that_syncs_sees_the_images_and_history_another_runner_recorded() {
    let (_ta, a) = copy_project("examples/quickstart");
    let (_tb, b) = copy_project("examples/quickstart");
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::default());

    apply_through(&a, journal.clone());

    let runner_b = State::open(&state_path(&b))
        .and_then(|s| s.with_journal(journal.clone()))
        .unwrap();
    assert!(
        runner_b.images(None).unwrap().is_empty(),
        "nothing before sync"
    );
    let applied = runner_b.sync().unwrap();
    assert!(applied > 0);
    assert_eq!(runner_b.sync().unwrap(), 0, "a second sync has nothing new");
    drop(runner_b);

    // Replayed into an empty file, the records give byte for byte what A's file shows.
    let images = stdout_of(&a, &["images", "--json"]);
    let listed = String::from_utf8_lossy(&images);
    assert!(
        listed.contains("\"base\"") && listed.contains("\"web\""),
        "{listed}"
    );
    assert_eq!(stdout_of(&b, &["images", "--json"]), images);
    let history = stdout_of(&a, &["history", "--json"]);
    let runs = String::from_utf8_lossy(&history);
    assert!(runs.contains("deliver:web@production"), "{runs}");
    assert_eq!(stdout_of(&b, &["history", "--json"]), history);

    // B numbers its next version after A's, as A would.
    let b_state = State::open(&state_path(&b)).unwrap();
    assert_eq!(b_state.next_version("base", "1.0").unwrap(), "1.0.1");
}

fn node<'a>(node_id: &'a imgraph::graph::NodeId) -> NodeStart<'a> {
    NodeStart {
        node_id,
        key: "k1",
        manifest_json: "{}",
        stanza: "{}",
        upstream_json: "{}",
        reasons_json: "[]",
        log_path: None,
    }
}

/// Every row of the history tables, in row order, as text: what two files must agree on.
fn history_rows(path: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut out = Vec::new();
    for table in [
        "runs",
        "node_runs",
        "images",
        "deliveries",
        "package_lists",
        "packages",
    ] {
        let mut stmt = db
            .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
            .or_else(|_| db.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5")))
            .unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                let mut line = format!("{table}:");
                for i in 0..columns {
                    let v: rusqlite::types::Value = row.get(i)?;
                    line.push_str(&format!(" {v:?}"));
                }
                Ok(line)
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    let serial: i64 = db
        .query_row("SELECT serial FROM lineage", [], |r| r.get(0))
        .unwrap();
    out.push(format!("serial {serial}"));
    out
}

#[test]
fn an_append_after_someone_elses_fails_as_a_conflict_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::default());
    let a = State::open(&dir.path().join("a.db"))
        .and_then(|s| s.with_journal(journal.clone()))
        .unwrap();
    let b = State::open(&dir.path().join("b.db"))
        .and_then(|s| s.with_journal(journal.clone()))
        .unwrap();

    let run = a.begin_run("apply", "{}").unwrap();
    a.start_node(run, &node(&imgraph::graph::NodeId::build("base")))
        .unwrap();
    let before = history_rows(&dir.path().join("b.db"));

    let err = b.begin_run("apply", "{}").unwrap_err();
    assert!(err.is_journal_conflict(), "{err}");
    let message = imgraph::text::error_chain(&err);
    assert!(
        message.contains("memory://team") && message.contains("another writer appended first"),
        "{message}"
    );
    assert_eq!(
        history_rows(&dir.path().join("b.db")),
        before,
        "B unchanged"
    );
    assert_eq!(b.journal_position(), Some(0));

    // Synced, B decides again from the shared history: its run gets the next id.
    assert_eq!(b.sync().unwrap(), 2);
    let second = b.begin_run("apply", "{}").unwrap();
    assert_eq!(second, run + 1);
    assert_eq!(b.journal_position(), Some(3), "two batches of A, one of B");
    assert_eq!(a.sync().unwrap(), 1);
    assert_eq!(
        history_rows(&dir.path().join("a.db")),
        history_rows(&dir.path().join("b.db"))
    );
}

#[test]
fn a_file_with_history_of_its_own_is_not_mixed_into_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.db");
    let local = State::open(&path).unwrap();
    local.begin_run("apply", "{}").unwrap();
    drop(local);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::default());
    let err = State::open(&path)
        .and_then(|s| s.with_journal(journal))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("holds history that is not in the journal"),
        "{err}"
    );
}

#[test]
fn without_a_journal_a_state_file_has_no_journal_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.db");
    let state = State::open(&path).unwrap();
    let run = state.begin_run("apply", "{}").unwrap();
    state.finish_run(run, RunStatus::Succeeded).unwrap();
    assert_eq!(state.journal_position(), None);
    assert_eq!(state.sync().unwrap(), 0);
    let db = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM journal_position", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "the local default writes nothing for a journal");
}

/// One step of a random history, chosen by numbers so proptest can shrink it.
#[derive(Debug, Clone)]
enum Step {
    BeginRun,
    StartNode(u8),
    FinishNode(u8, bool),
    NotRun(u8),
    Build(u8),
    SetStatus(u8, bool),
    Deliver(u8, u8),
    Revoke(u8),
    Unrevoke(u8),
    Remove(u8),
    FinishRun,
    Abandon,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::BeginRun),
        any::<u8>().prop_map(Step::StartNode),
        (any::<u8>(), any::<bool>()).prop_map(|(n, ok)| Step::FinishNode(n, ok)),
        any::<u8>().prop_map(Step::NotRun),
        any::<u8>().prop_map(Step::Build),
        (any::<u8>(), any::<bool>()).prop_map(|(n, ok)| Step::SetStatus(n, ok)),
        (any::<u8>(), any::<u8>()).prop_map(|(n, e)| Step::Deliver(n, e)),
        any::<u8>().prop_map(Step::Revoke),
        any::<u8>().prop_map(Step::Unrevoke),
        any::<u8>().prop_map(Step::Remove),
        Just(Step::FinishRun),
        Just(Step::Abandon),
    ]
}

/// Runs `steps` against `state`; a step that is refused (no run yet, a version not
/// revoked, …) is skipped, as a caller would see its error.
fn play(state: &State, steps: &[Step]) {
    let images = ["base", "web"];
    let mut runs = Vec::new();
    let mut nodes = Vec::new();
    let mut versions: Vec<(String, String)> = Vec::new();
    let pick = |n: u8, len: usize| (len > 0).then(|| n as usize % len);
    for s in steps {
        match s {
            Step::BeginRun => runs.extend(state.begin_run("apply", "{}").ok()),
            Step::StartNode(n) => {
                if let Some(&run) = runs.last() {
                    let id = ["build:base", "test:base/smoke", "build:web"][*n as usize % 3];
                    let id = id.parse().unwrap();
                    nodes.extend(state.start_node(run, &node(&id)).ok());
                }
            }
            Step::FinishNode(n, ok) => {
                if let Some(i) = pick(*n, nodes.len()) {
                    let status = if *ok {
                        NodeStatus::Succeeded
                    } else {
                        NodeStatus::Failed
                    };
                    let _ = state.finish_node(nodes[i], status, Some("{}"), None);
                }
            }
            Step::NotRun(n) => {
                if let Some(&run) = runs.last() {
                    let id = ["publish:base", "deliver:web@staging"][*n as usize % 2];
                    let id = id.parse().unwrap();
                    let _ = state.record_not_run(run, &node(&id), NodeStatus::Skipped, "upstream");
                }
            }
            Step::Build(n) => {
                let image = images[*n as usize % 2];
                let version = state.next_version(image, "1.0").unwrap();
                let origin = (image == "web")
                    .then(|| versions.iter().find(|(i, _)| i == "base"))
                    .flatten()
                    .map(|(i, v)| format!("{i}@{v}"));
                let rec = ImageVersion {
                    image: image.into(),
                    version: version.clone(),
                    artifact_id: format!("sha-{image}-{version}"),
                    provider: "local".into(),
                    key: format!("key-{n}"),
                    status: ReleaseStatus::Candidate,
                    built_at: 1_000 + i64::from(*n),
                    run: runs.last().copied(),
                    origin,
                    revoked_reason: None,
                };
                let inventory = (*n % 2 == 0).then(imgraph::packages::Inventory::default);
                if state.record_built_image(&rec, inventory.as_ref()).is_ok() {
                    versions.push((image.into(), version));
                }
            }
            Step::SetStatus(n, ready) => {
                if let Some(i) = pick(*n, versions.len()) {
                    let status = if *ready {
                        ReleaseStatus::Ready
                    } else {
                        ReleaseStatus::Failed
                    };
                    let (img, ver) = &versions[i];
                    let _ = state.set_image_status(img, ver, status);
                }
            }
            Step::Deliver(n, e) => {
                if let (Some(i), Some(&run)) = (pick(*n, versions.len()), runs.last()) {
                    let (img, ver) = &versions[i];
                    let env = ["staging", "production"][*e as usize % 2];
                    let _ = state.record_delivery(img, ver, env, run);
                }
            }
            Step::Revoke(n) => {
                if let Some(i) = pick(*n, versions.len()) {
                    let (img, ver) = &versions[i];
                    let _ = state.revoke(img, ver, "bad");
                }
            }
            Step::Unrevoke(n) => {
                if let Some(i) = pick(*n, versions.len()) {
                    let (img, ver) = &versions[i];
                    let _ = state.unrevoke(img, ver);
                }
            }
            Step::Remove(n) => {
                if let Some(i) = pick(*n, versions.len()) {
                    let (img, ver) = &versions[i];
                    let _ = state.mark_removed(img, ver);
                }
            }
            Step::FinishRun => {
                if let Some(&run) = runs.last() {
                    let _ = state.finish_run(run, RunStatus::Succeeded);
                }
            }
            Step::Abandon => {
                let _ = state.abandon_running_runs(None);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the history, replaying its records into an empty file gives the same rows.
    #[test]
    fn replaying_the_journal_gives_the_same_rows(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::default());
        let original = State::open(&dir.path().join("a.db"))
            .and_then(|s| s.with_journal(journal.clone()))
            .unwrap();
        play(&original, &steps);
        let replica = State::open(&dir.path().join("b.db"))
            .and_then(|s| s.with_journal(journal.clone()))
            .unwrap();
        replica.sync().unwrap();
        prop_assert_eq!(replica.journal_position(), original.journal_position());
        prop_assert_eq!(
            history_rows(&dir.path().join("a.db")),
            history_rows(&dir.path().join("b.db"))
        );
    }
}

#[test]
fn a_pushed_local_history_replays_into_the_same_rows_and_is_pushed_once() {
    let (_ta, a) = copy_project("examples/quickstart");
    stdout_of(&a, &["apply", "-q"]);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::default());
    let pushed = State::open(&state_path(&a))
        .unwrap()
        .push(journal.as_ref())
        .unwrap();
    assert_eq!(pushed.rows[0], ("runs", 1));
    assert_eq!(pushed.rows[1], ("node_runs", 8));

    // Replayed into an empty file, the journal gives the pushed file's rows.
    let (_tb, b) = copy_project("examples/quickstart");
    let replica = State::open(&state_path(&b))
        .and_then(|s| s.with_journal(journal.clone()))
        .unwrap();
    assert!(replica.sync().unwrap() > 0);
    drop(replica);
    let rows = |p: &Path| {
        history_rows(p)
            .into_iter()
            .filter(|l| !l.starts_with("serial"))
            .collect::<Vec<_>>()
    };
    assert!(
        rows(&state_path(&a)).len() >= 13,
        "1 run, 8 node runs, 2 versions, 2 deliveries"
    );
    assert_eq!(rows(&state_path(&b)), rows(&state_path(&a)));

    // The pushed file mirrors the journal now, and nothing is pushed twice.
    let err = State::open(&state_path(&a))
        .unwrap()
        .push(journal.as_ref())
        .unwrap_err();
    assert!(
        err.to_string().contains("already mirrors memory://team"),
        "{err}"
    );
    let (_tc, c) = copy_project("examples/quickstart");
    stdout_of(&c, &["apply", "-q"]);
    let before = history_rows(&state_path(&c));
    let err = State::open(&state_path(&c))
        .unwrap()
        .push(journal.as_ref())
        .unwrap_err();
    assert!(err.to_string().contains("already holds history"), "{err}");
    assert_eq!(history_rows(&state_path(&c)), before, "C unchanged");
}
