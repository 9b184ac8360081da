use std::path::Path;

use rusqlite::params;

use super::*;
use crate::graph::NodeId;
use crate::hash::StatEntries;

fn open_in(dir: &Path) -> State {
    State::open(&dir.join("state.db")).expect("open state")
}

/// A node id written out in a test.
fn id(text: &str) -> NodeId {
    text.parse().expect("a node id")
}

fn start<'a>(node_id: &'a NodeId, key: &'a str) -> NodeStart<'a> {
    NodeStart {
        node_id,
        key,
        manifest_json: "[]",
        stanza: "{}",
        upstream_json: "{}",
        reasons_json: "[]",
        log_path: None,
    }
}

fn image(name: &str, version: &str, artifact: &str, key: &str, built_at: i64) -> ImageVersion {
    ImageVersion {
        image: name.into(),
        version: version.into(),
        artifact_id: artifact.into(),
        provider: "local".into(),
        key: key.into(),
        status: ReleaseStatus::Candidate,
        built_at,
        run: None,
        origin: None,
        revoked_reason: None,
    }
}

/// A pid that certainly belonged to a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait for true");
    pid
}

fn insert_run(state: &State, pid: u32, proc_start: Option<&str>) -> RunId {
    state
        .conn
        .execute(
            "INSERT INTO runs (command, options_json, status, started_at, pid, proc_start)
             VALUES ('apply', '{}', 'running', 0, ?1, ?2)",
            params![pid, proc_start],
        )
        .expect("insert run");
    state.conn.last_insert_rowid()
}

#[test]
fn migrating_twice_keeps_version_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let run = {
        let state = open_in(dir.path());
        assert_eq!(state.schema_version().unwrap(), MIGRATIONS.len() as u32);
        state.begin_run("apply", r#"{"rollup":true}"#).unwrap()
    };
    let state = open_in(dir.path());
    assert_eq!(state.schema_version().unwrap(), MIGRATIONS.len() as u32);
    let runs = state.runs(10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run);
    assert_eq!(runs[0].options_json, r#"{"rollup":true}"#);
    assert_eq!(runs[0].status, RunStatus::Running);
    assert_eq!(runs[0].pid, std::process::id());
}

#[test]
fn a_failing_migration_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let err = State::open_with(&path, &[MIGRATIONS[0], "CREATE TABLE extra (a); NOT SQL;"])
        .expect_err("the broken migration must fail");
    assert!(matches!(err, StateError::Sqlite { .. }), "{err:?}");
    assert!(
        err.to_string().contains("apply schema migration 2"),
        "{err}"
    );

    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 0);
    let tables: i64 = raw
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        tables, 0,
        "migration 1 must be rolled back with migration 2"
    );
    drop(raw);

    let state = State::open(&path).unwrap();
    assert_eq!(state.schema_version().unwrap(), MIGRATIONS.len() as u32);
}

#[test]
fn newer_schema_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);

    let err = State::open(&path).expect_err("newer schema must be refused");
    assert!(
        matches!(err, StateError::NewerSchema { found: 99, known, .. } if known == MIGRATIONS.len() as u32),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "state file was written by a newer imgraph (schema 99, this build knows {})",
            MIGRATIONS.len()
        )),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn journal_is_wal_and_foreign_keys_are_on() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let mode: String = state
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // A node run of a run that does not exist is refused.
    assert!(state
        .start_node(12345, &start(&id("build:base"), "k"))
        .is_err());
}

#[test]
fn commits_skip_fsync_and_ledger_rows_and_versions_are_synced_by_their_callers() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let level = |s: &State| -> i64 {
        s.conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    };
    const NORMAL: i64 = 1;
    assert_eq!(level(&state), NORMAL);
    // A ledger row and a new version are committed like any other, and synced by their
    // caller, outside the state: the sync names the state file (its write-ahead log is
    // what gets synced), and every sync of one connection is one group.
    let row = state
        .ledger_add(None, "build:web", "local", "staging", "/x", "build")
        .unwrap();
    assert_eq!(row.file.as_deref(), Some(state.path()));
    let version = state
        .record_built_image(&image("web", "1.0.0", "a", "k", 1), None)
        .unwrap();
    assert_eq!(version.file.as_deref(), Some(state.path()));
    assert!(std::sync::Arc::ptr_eq(&row.syncs, &version.syncs));
    assert_eq!(level(&state), NORMAL);
    row.sync().unwrap();
    version.sync().unwrap();
    // Committed before the sync: the version is there for every reader.
    assert_eq!(state.images(Some("web")).unwrap().len(), 1);
    state
        .record_image(&image("web", "1.0.1", "b", "k2", 2))
        .unwrap();
    assert_eq!(level(&state), NORMAL);
}

#[test]
fn unwritable_parent_is_reported_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file, not a folder").unwrap();
    let path = blocker.join("sub").join("state.db");
    let err = State::open(&path).expect_err("parent cannot be created");
    assert!(matches!(err, StateError::CreateDir { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn statuses_round_trip_through_text() {
    for s in [
        NodeStatus::Running,
        NodeStatus::Succeeded,
        NodeStatus::Failed,
        NodeStatus::Skipped,
        NodeStatus::Cancelled,
        NodeStatus::Abandoned,
    ] {
        assert_eq!(NodeStatus::parse(s.as_str()), Some(s));
    }
    for s in [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Abandoned,
    ] {
        assert_eq!(RunStatus::parse(s.as_str()), Some(s));
    }
    for s in [
        ReleaseStatus::Candidate,
        ReleaseStatus::Ready,
        ReleaseStatus::Failed,
    ] {
        assert_eq!(ReleaseStatus::parse(s.as_str()), Some(s));
    }
    assert_eq!(ReleaseStatus::Ready.as_str(), "Ready");
    assert_eq!(NodeStatus::parse("Succeeded"), None);
}

#[test]
fn history_keeps_last_success_behind_a_later_failure() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let run1 = state.begin_run("apply", "{}").unwrap();
    let ok = state
        .start_node(run1, &start(&id("build:base"), "k1"))
        .unwrap();
    state
        .finish_node(
            ok,
            NodeStatus::Succeeded,
            Some(r#"{"artifact":"a1"}"#),
            None,
        )
        .unwrap();
    let other = state
        .start_node(run1, &start(&id("build:web"), "w1"))
        .unwrap();
    state
        .finish_node(other, NodeStatus::Succeeded, None, None)
        .unwrap();
    state.finish_run(run1, RunStatus::Succeeded).unwrap();

    let run2 = state.begin_run("apply", "{}").unwrap();
    let bad = state
        .start_node(run2, &start(&id("build:base"), "k2"))
        .unwrap();
    state
        .finish_node(bad, NodeStatus::Failed, None, Some("exit status 1"))
        .unwrap();
    // Skipped afterwards: must not become the last attempt.
    let skipped = state
        .record_not_run(
            run2,
            &start(&id("build:web"), "w2"),
            NodeStatus::Skipped,
            "build:base failed",
        )
        .unwrap();
    state.finish_run(run2, RunStatus::Failed).unwrap();

    let base = state.history(&id("build:base")).unwrap();
    let success = base.last_success.expect("last success");
    assert_eq!(success.id, ok);
    assert_eq!(success.key, "k1");
    assert_eq!(
        success.outputs_json.as_deref(),
        Some(r#"{"artifact":"a1"}"#)
    );
    assert!(success.finished_at.is_some());
    let attempt = base.last_attempt.expect("last attempt");
    assert_eq!((attempt.id, attempt.status), (bad, NodeStatus::Failed));
    assert_eq!(attempt.error.as_deref(), Some("exit status 1"));

    let web = state.history(&id("build:web")).unwrap();
    assert_eq!(web.last_success.as_ref().map(|r| r.id), Some(other));
    assert_eq!(web.last_attempt.as_ref().map(|r| r.id), Some(other));

    let snap = state.snapshot().unwrap();
    assert_eq!(snap.len(), 2);
    assert_eq!(
        snap[&id("build:base")].last_success.as_ref().map(|r| r.id),
        Some(ok)
    );
    assert_eq!(
        snap[&id("build:base")].last_attempt.as_ref().map(|r| r.id),
        Some(bad)
    );
    assert_eq!(
        snap[&id("build:web")].last_attempt.as_ref().map(|r| r.id),
        Some(other)
    );
    // One row that is both: read once, given to both, whole.
    let web_success = snap[&id("build:web")]
        .last_success
        .as_ref()
        .expect("success");
    assert_eq!((web_success.id, web_success.key.as_str()), (other, "w1"));
    assert_eq!(
        snap[&id("build:base")]
            .last_success
            .as_ref()
            .map(|r| r.key.as_str()),
        Some("k1")
    );
    assert!(state
        .history(&id("test:base/smoke"))
        .unwrap()
        .last_attempt
        .is_none());

    let nodes: Vec<_> = state
        .node_runs(run2)
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.status))
        .collect();
    assert_eq!(
        nodes,
        vec![(bad, NodeStatus::Failed), (skipped, NodeStatus::Skipped)]
    );
    let runs = state.runs(1).unwrap();
    assert_eq!((runs[0].id, runs[0].status), (run2, RunStatus::Failed));
}

#[test]
fn finishing_an_unknown_node_or_run_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let err = state
        .finish_node(77, NodeStatus::Succeeded, None, None)
        .unwrap_err();
    assert!(matches!(err, StateError::NotFound { .. }), "{err:?}");
    assert!(matches!(
        state.finish_run(77, RunStatus::Failed),
        Err(StateError::NotFound { .. })
    ));
}

#[test]
fn next_version_numbers_patches_numerically_per_series() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    assert_eq!(state.next_version("base", "1.4").unwrap(), "1.4.0");
    for patch in 0..=9 {
        let v = state.next_version("base", "1.4").unwrap();
        assert_eq!(v, format!("1.4.{patch}"));
        let mut rec = image("base", &v, &format!("a{patch}"), "k", patch);
        if patch == 9 {
            // A failed version's number is still taken.
            rec.status = ReleaseStatus::Failed;
        }
        state.record_image(&rec).unwrap();
    }
    assert_eq!(state.next_version("base", "1.4").unwrap(), "1.4.10");
    state
        .record_image(&image("base", "1.4.10", "a10", "k", 10))
        .unwrap();
    assert_eq!(state.next_version("base", "1.4").unwrap(), "1.4.11");
    // Other series, and other images, count separately.
    assert_eq!(state.next_version("base", "1.5").unwrap(), "1.5.0");
    assert_eq!(state.next_version("base", "1").unwrap(), "1.0");
    assert_eq!(state.next_version("web", "1.4").unwrap(), "1.4.0");
    state
        .record_image(&image("base", "1.40.3", "x", "k", 11))
        .unwrap();
    assert_eq!(state.next_version("base", "1.40").unwrap(), "1.40.4");
    assert_eq!(state.next_version("base", "1.4").unwrap(), "1.4.11");
    assert!(matches!(
        state.next_version("base", "1.x"),
        Err(StateError::InvalidSeries { .. })
    ));
}

#[test]
fn recording_a_version_twice_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    state
        .record_image(&image("base", "1.4.0", "a", "k", 1))
        .unwrap();
    let err = state
        .record_image(&image("base", "1.4.0", "b", "k2", 2))
        .unwrap_err();
    assert!(matches!(err, StateError::VersionExists { .. }), "{err:?}");
    assert!(err.to_string().contains("base 1.4.0"), "{err}");
    assert_eq!(
        state.images(Some("base")).unwrap()[0].version.artifact_id,
        "a"
    );
}

#[test]
fn image_registry_sorts_finds_and_tracks_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let run = state.begin_run("apply", "{}").unwrap();
    state
        .record_image(&image("web", "1.0.0", "w0", "kw", 5))
        .unwrap();
    state
        .record_image(&image("base", "1.4.9", "same", "k1", 1))
        .unwrap();
    state
        .record_image(&image("base", "1.4.10", "same", "k2", 2))
        .unwrap();
    state
        .record_image(&image("base", "1.4.2", "b2", "k1", 0))
        .unwrap();
    state
        .set_image_status("base", "1.4.10", ReleaseStatus::Ready)
        .unwrap();
    assert!(matches!(
        state.set_image_status("base", "9.9.9", ReleaseStatus::Ready),
        Err(StateError::NotFound { .. })
    ));

    state
        .record_delivery("base", "1.4.9", "staging", run)
        .unwrap();
    state
        .record_delivery("base", "1.4.10", "staging", run)
        .unwrap();
    state
        .record_delivery("base", "1.4.10", "production", run)
        .unwrap();
    state
        .record_delivery("base", "1.4.10", "staging", run)
        .unwrap();
    assert!(state
        .record_delivery("base", "0.0.1", "staging", run)
        .is_err());

    let all: Vec<_> = state
        .images(None)
        .unwrap()
        .into_iter()
        .map(|r| (r.version.image, r.version.version, r.environments))
        .collect();
    assert_eq!(
        all,
        vec![
            (
                "base".into(),
                "1.4.10".into(),
                vec!["staging".to_string(), "production".into()]
            ),
            ("base".into(), "1.4.9".into(), vec!["staging".to_string()]),
            ("base".into(), "1.4.2".into(), vec![]),
            ("web".into(), "1.0.0".into(), vec![]),
        ]
    );
    assert_eq!(state.images(Some("web")).unwrap().len(), 1);
    // 1.4.9 went to staging, then 1.4.10 replaced it there: staging holds 1.4.10 now.
    let holding: Vec<_> = state
        .images(Some("base"))
        .unwrap()
        .into_iter()
        .map(|r| (r.version.version, r.holding))
        .collect();
    assert_eq!(
        holding,
        vec![
            (
                "1.4.10".to_string(),
                vec!["production".to_string(), "staging".into()]
            ),
            ("1.4.9".into(), vec![]),
            ("1.4.2".into(), vec![]),
        ]
    );

    let by_artifact = state.image_by_artifact("same").unwrap().expect("found");
    assert_eq!(by_artifact.version.version, "1.4.10");
    assert_eq!(by_artifact.version.status, ReleaseStatus::Ready);
    assert_eq!(by_artifact.environments, vec!["staging", "production"]);
    assert!(state.image_by_artifact("nope").unwrap().is_none());
    assert_eq!(
        state
            .image_by_key("base", "k1")
            .unwrap()
            .map(|r| r.version.version),
        Some("1.4.9".into())
    );
    assert!(state.image_by_key("web", "k1").unwrap().is_none());

    assert_eq!(
        state
            .delivered_version("base", "staging")
            .unwrap()
            .as_deref(),
        Some("1.4.10")
    );
    assert_eq!(state.delivered_version("web", "staging").unwrap(), None);
}

#[test]
fn stat_cache_round_trips_and_upserts() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let big = StatEntry {
        size: u64::MAX,
        mtime_ns: i128::from(i64::MAX) * 4,
        ctime_ns: -5,
        inode: u64::MAX - 1,
        mode: 0o100755,
        digest: "b3v1:aa".into(),
        recorded_at_ns: 1_700_000_000_123_456_789,
    };
    let small = StatEntry {
        size: 3,
        mtime_ns: 1,
        ctime_ns: 2,
        inode: 4,
        mode: 0o100644,
        digest: "b3v1:bb".into(),
        recorded_at_ns: 5,
    };
    state.store_stat_cache(&[
        ("a.txt".into(), big.clone()),
        ("b/c.txt".into(), small.clone()),
    ]);
    let mut changed = small.clone();
    changed.digest = "b3v1:cc".into();
    state.store_stat_cache(&[("b/c.txt".into(), changed.clone())]);

    drop(state);
    let loaded = open_in(dir.path()).load_stat_cache();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded.entry("a.txt"), Some(big));
    assert_eq!(loaded.entry("b/c.txt"), Some(changed));
    assert!(dir.path().join("state.db-statcache").is_file());
}

#[test]
fn a_damaged_stat_cache_file_reads_as_empty_and_is_written_whole_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let entry = |digest: &str| StatEntry {
        size: 1,
        mtime_ns: 2,
        ctime_ns: 3,
        inode: 4,
        mode: 0o100644,
        digest: digest.into(),
        recorded_at_ns: 5,
    };
    state.store_stat_cache(&[("a".into(), entry("b3v1:aa"))]);
    let file = dir.path().join("state.db-statcache");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    assert!(state.load_stat_cache().is_empty());
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert!(state.load_stat_cache().is_empty());

    // The next write starts from nothing: the damaged entries are not carried over.
    state.store_stat_cache(&[("b".into(), entry("b3v1:bb"))]);
    let loaded = state.load_stat_cache();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded.entry("b"), Some(entry("b3v1:bb")));
}

#[test]
fn a_state_in_memory_keeps_no_stat_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open_for_reading(&dir.path().join("state.db")).unwrap();
    let entry = StatEntry {
        size: 1,
        mtime_ns: 2,
        ctime_ns: 3,
        inode: 4,
        mode: 0o100644,
        digest: "b3v1:aa".into(),
        recorded_at_ns: 5,
    };
    state.store_stat_cache(&[("a".into(), entry)]);
    assert!(state.load_stat_cache().is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn ledger_lists_only_entries_not_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let run = state.begin_run("apply", "{}").unwrap();
    let a = state
        .ledger_add(
            Some(run),
            "test:base/smoke",
            "aws",
            "instance",
            "pending",
            "smoke test",
        )
        .and_then(Durable::sync)
        .unwrap();
    let b = state
        .ledger_add(
            None,
            "build:base",
            "local",
            "staging",
            "/tmp/x",
            "build root",
        )
        .and_then(Durable::sync)
        .unwrap();
    state
        .ledger_set_resource(a, "i-0123")
        .and_then(Durable::sync)
        .unwrap();
    state.ledger_mark_destroyed(b).unwrap();
    state.ledger_mark_destroyed(b).unwrap();

    let open = state.ledger_open().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, a);
    assert_eq!(open[0].resource, "i-0123");
    assert_eq!(open[0].run_id, Some(run));
    assert_eq!(open[0].destroyed_at, None);
    assert!(matches!(
        state.ledger_mark_destroyed(999),
        Err(StateError::NotFound { .. })
    ));
    assert!(matches!(
        state.ledger_set_resource(999, "x"),
        Err(StateError::NotFound { .. })
    ));
}

#[test]
fn lease_is_exclusive_and_taken_over_from_dead_holders() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let me = std::process::id();

    assert_eq!(
        state.acquire_lease("apply A").unwrap(),
        LeaseOutcome::Acquired
    );
    assert_eq!(
        state.acquire_lease("apply A").unwrap(),
        LeaseOutcome::Acquired
    );
    match state.acquire_lease("apply B").unwrap() {
        LeaseOutcome::HeldBy { pid, holder, .. } => {
            assert_eq!((pid, holder.as_str()), (me, "apply A"))
        }
        other => panic!("expected HeldBy, got {other:?}"),
    }
    // A second connection sees the same lease.
    let other = open_in(dir.path());
    assert!(matches!(
        other.acquire_lease("apply B").unwrap(),
        LeaseOutcome::HeldBy { .. }
    ));
    state.release_lease().unwrap();
    assert_eq!(
        other.acquire_lease("apply B").unwrap(),
        LeaseOutcome::Acquired
    );
    other.release_lease().unwrap();

    // Held by another live process (pid 1 always exists).
    state
        .conn
        .execute(
            "INSERT INTO lease (id, pid, proc_start, holder, since) VALUES (1, 1, NULL, 'ci', 42)",
            [],
        )
        .unwrap();
    assert_eq!(
        state.acquire_lease("apply A").unwrap(),
        LeaseOutcome::HeldBy {
            pid: 1,
            host: None,
            holder: "ci".into(),
            since: 42
        }
    );
    // Releasing only gives up a lease this process holds.
    state.release_lease().unwrap();
    assert!(matches!(
        state.acquire_lease("apply A").unwrap(),
        LeaseOutcome::HeldBy { pid: 1, .. }
    ));

    // Held by a process that is gone: taken over.
    state
        .conn
        .execute("UPDATE lease SET pid = ?1", [dead_pid()])
        .unwrap();
    assert_eq!(
        state.acquire_lease("apply A").unwrap(),
        LeaseOutcome::Acquired
    );
    assert!(
        matches!(other.acquire_lease("apply B").unwrap(), LeaseOutcome::HeldBy { pid, .. } if pid == me)
    );
}

#[test]
fn a_lease_guard_gives_the_lease_back_when_released_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (state, leases) = super::open(
        &super::Backend::Local { path: path.clone() },
        super::Access::ReadWrite,
    )
    .unwrap();
    let other = open_in(dir.path());
    let me = LeaseHolder::this_process("imgraph apply");
    assert_eq!(leases.acquire(&me).unwrap(), LeaseOutcome::Acquired);
    let guard = LeaseGuard::new(leases.clone(), me.clone());
    assert!(matches!(
        other.acquire_lease("gc").unwrap(),
        LeaseOutcome::HeldBy { .. }
    ));
    let held = leases.status().unwrap().expect("held");
    assert_eq!((held.pid, held.holder.as_str()), (me.pid, "imgraph apply"));
    drop(guard);
    assert!(state.lease().unwrap().is_none(), "dropped: given back");

    assert_eq!(leases.acquire(&me).unwrap(), LeaseOutcome::Acquired);
    LeaseGuard::new(leases.clone(), me).release().unwrap();
    assert!(leases.status().unwrap().is_none(), "released: given back");
    assert_eq!(other.acquire_lease("gc").unwrap(), LeaseOutcome::Acquired);
}

#[test]
fn a_read_only_lease_store_never_creates_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (_state, leases) = super::open(
        &super::Backend::Local { path: path.clone() },
        super::Access::ReadOnly,
    )
    .unwrap();
    assert_eq!(leases.status().unwrap(), None);
    let me = LeaseHolder::this_process("imgraph plan");
    assert_eq!(leases.acquire(&me).unwrap(), LeaseOutcome::Acquired);
    assert!(!leases.break_lease().unwrap());
    assert!(!path.exists(), "nothing created at {}", path.display());
}

#[test]
fn a_lease_held_on_another_host_is_never_taken_over_and_can_be_broken() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    assert_eq!(state.lease().unwrap(), None);
    // A pid that does not exist here, on another host: it may well be alive there.
    state
        .conn
        .execute(
            "INSERT INTO lease (id, pid, proc_start, holder, since, host)
             VALUES (1, ?1, NULL, 'imgraph apply', 7, 'elsewhere.example')",
            [dead_pid()],
        )
        .unwrap();
    let lease = state.lease().unwrap().expect("a lease");
    assert_eq!(lease.liveness, Liveness::OtherHost);
    assert_eq!(lease.host.as_deref(), Some("elsewhere.example"));
    assert!(matches!(
        state.acquire_lease("imgraph apply").unwrap(),
        LeaseOutcome::HeldBy { host: Some(h), .. } if h == "elsewhere.example"
    ));
    assert!(state.break_lease().unwrap());
    assert!(!state.break_lease().unwrap());
    assert_eq!(
        state.acquire_lease("imgraph apply").unwrap(),
        LeaseOutcome::Acquired
    );
    let mine = state.lease().unwrap().expect("our lease");
    assert_eq!(mine.liveness, Liveness::Alive);
    assert_eq!(mine.host.as_deref(), host_name());
    assert_eq!(mine.pid, std::process::id());
}

#[test]
fn abandon_stale_runs_marks_only_runs_whose_process_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let mine = state.begin_run("apply", "{}").unwrap();
    let alive = insert_run(&state, 1, None);
    let dead = insert_run(&state, dead_pid(), None);
    let node = state
        .start_node(dead, &start(&id("build:base"), "k"))
        .unwrap();
    let done = state
        .start_node(dead, &start(&id("build:web"), "k"))
        .unwrap();
    state
        .finish_node(done, NodeStatus::Succeeded, None, None)
        .unwrap();

    assert_eq!(state.abandon_stale_runs(Some(mine)).unwrap(), vec![dead]);
    let status = |id| state.run(id).unwrap().expect("run").status;
    assert_eq!(status(dead), RunStatus::Abandoned);
    assert_eq!(status(alive), RunStatus::Running);
    assert_eq!(status(mine), RunStatus::Running);
    let nodes = state.node_runs(dead).unwrap();
    assert_eq!(nodes[0].id, node);
    assert_eq!(nodes[0].status, NodeStatus::Abandoned);
    assert!(nodes[0].finished_at.is_some());
    assert_eq!(nodes[1].status, NodeStatus::Succeeded);
    // Nothing left to do the second time.
    assert!(state.abandon_stale_runs(Some(mine)).unwrap().is_empty());

    // Forced (the caller holds the lease): everything but the caller's run.
    assert_eq!(state.abandon_running_runs(Some(mine)).unwrap(), vec![alive]);
    assert_eq!(status(mine), RunStatus::Running);
}

#[cfg(target_os = "linux")]
#[test]
fn a_reused_pid_does_not_keep_a_dead_run_alive() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    // Same pid as this process, but another process identity: a killed run in an
    // earlier container whose main process had the same pid.
    let stale = insert_run(&state, std::process::id(), Some("other-boot/123"));
    let current = state.begin_run("apply", "{}").unwrap();
    assert_eq!(
        state.abandon_stale_runs(Some(current)).unwrap(),
        vec![stale]
    );

    state
        .conn
        .execute(
            "INSERT INTO lease (id, pid, proc_start, holder, since) VALUES (1, ?1, 'other-boot/123', 'old', 0)",
            [std::process::id()],
        )
        .unwrap();
    assert_eq!(state.acquire_lease("new").unwrap(), LeaseOutcome::Acquired);
}

#[test]
fn the_serial_counts_history_writes_and_the_lineage_stays() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let first = state.lineage().unwrap();
    assert_eq!(first.serial, 0);
    assert_eq!(first.lineage.len(), 32, "{first:?}");

    // Bookkeeping leaves the serial alone: a plan's stat cache, the lease, the ledger.
    let entry = StatEntry {
        size: 1,
        mtime_ns: 1,
        ctime_ns: 1,
        inode: 1,
        mode: 0o100644,
        digest: "b3v1:aa".into(),
        recorded_at_ns: 1,
    };
    state.store_stat_cache(&[("a".into(), entry)]);
    state.acquire_lease("test").unwrap();
    state.release_lease().unwrap();
    let l = state
        .ledger_add(None, "build:a", "local", "staging", "/tmp/x", "build")
        .and_then(Durable::sync)
        .unwrap();
    state.ledger_mark_destroyed(l).unwrap();
    assert_eq!(state.lineage().unwrap(), first);

    // Runs, node runs, images and deliveries each move it.
    let run = state.begin_run("apply", "{}").unwrap();
    let after_run = state.lineage().unwrap().serial;
    assert!(after_run > 0);
    let node = state.start_node(run, &start(&id("build:a"), "k")).unwrap();
    state
        .finish_node(node, NodeStatus::Succeeded, None, None)
        .unwrap();
    let after_node = state.lineage().unwrap().serial;
    assert!(after_node > after_run);
    state
        .record_image(&image("a", "1.0.0", "x", "k", 1))
        .unwrap();
    let after_image = state.lineage().unwrap().serial;
    assert!(after_image > after_node);
    state.record_delivery("a", "1.0.0", "staging", run).unwrap();
    assert!(state.lineage().unwrap().serial > after_image);

    // The same file reopened keeps its lineage; another file gets another one.
    let serial = state.lineage().unwrap().serial;
    drop(state);
    let again = open_in(dir.path()).lineage().unwrap();
    assert_eq!(again.lineage, first.lineage);
    assert_eq!(again.serial, serial);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        open_in(other.path()).lineage().unwrap().lineage,
        first.lineage
    );
}

#[test]
fn migration_2_empties_the_stat_cache_of_old_file_digests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let state = State::open_with(&path, &MIGRATIONS[..1]).unwrap();
        state
            .conn
            .execute(
                "INSERT INTO stat_cache VALUES ('a.txt', 1, '0', '0', 1, 33188, 'b3v1:old', '0')",
                [],
            )
            .unwrap();
    }
    let state = State::open_with(&path, &MIGRATIONS[..2]).unwrap();
    let rows: i64 = state
        .conn
        .query_row("SELECT count(*) FROM stat_cache", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn migration_8_drops_the_stat_cache_table_for_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(State::open_with(&path, &MIGRATIONS[..7]).unwrap());
    let state = State::open(&path).unwrap();
    let tables: i64 = state
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'stat_cache'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

#[test]
fn migration_5_rebuilds_images_keeping_rows_deliveries_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let state = State::open_with(&path, &MIGRATIONS[..4]).unwrap();
        let run = state.begin_run("apply", "{}").unwrap();
        state
            .conn
            .execute(
                "INSERT INTO images (image, version, artifact_id, provider, key, status, built_at, run_id)
                 VALUES ('base', '1.0.0', 'local:a', 'local', 'k', 'Ready', 1, ?1)",
                [run],
            )
            .unwrap();
        state
            .record_delivery("base", "1.0.0", "staging", run)
            .unwrap();
    }
    let state = State::open_with(&path, &MIGRATIONS[..5]).unwrap();
    assert_eq!(state.schema_version().unwrap(), 5);
    let rows = state.images(None).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].holding, ["staging"]);
    let fk: bool = state
        .conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert!(fk, "foreign keys are enforced again after the migration");
    let run = state.begin_run("apply", "{}").unwrap();
    assert!(state
        .record_delivery("base", "9.9.9", "staging", run)
        .is_err());
    // The serial still moves with the registry.
    let before = state.lineage().unwrap().serial;
    state
        .set_image_status("base", "1.0.0", ReleaseStatus::Failed)
        .unwrap();
    assert!(state.lineage().unwrap().serial > before);
}

#[test]
fn revoking_cascades_to_versions_built_from_it_and_undo_restores_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    state
        .record_image(&image("base", "1.0.0", "a", "k", 1))
        .unwrap();
    state
        .record_image(&image("base", "1.0.1", "b", "k", 2))
        .unwrap();
    let mut web = image("web", "2.3.0", "c", "k", 3);
    web.origin = Some("base@1.0.1".into());
    state.record_image(&web).unwrap();
    let mut app = image("app", "1.0.0", "d", "k", 4);
    app.origin = Some("web@2.3.0".into());
    state.record_image(&app).unwrap();
    let mut other = image("web", "2.3.1", "e", "k", 5);
    other.origin = Some("base@1.0.0".into());
    state.record_image(&other).unwrap();
    state
        .set_image_status("web", "2.3.0", ReleaseStatus::Failed)
        .unwrap();

    let revoked = state.revoke("base", "1.0.1", "CVE").unwrap();
    let names: Vec<String> = revoked
        .iter()
        .map(|r| format!("{}@{}", r.version.image, r.version.version))
        .collect();
    assert_eq!(names, ["base@1.0.1", "web@2.3.0", "app@1.0.0"]);
    assert!(revoked
        .iter()
        .all(|r| r.version.status == ReleaseStatus::Revoked));
    assert_eq!(
        revoked[2].version.revoked_reason.as_deref(),
        Some("built from revoked base 1.0.1: CVE")
    );
    assert_eq!(
        state.revoked_via("app", "1.0.0").unwrap().as_deref(),
        Some("base@1.0.1")
    );
    let status = |i: &str, v: &str| {
        state
            .images(Some(i))
            .unwrap()
            .into_iter()
            .find(|r| r.version.version == v)
            .unwrap()
            .version
            .status
    };
    assert_eq!(
        status("web", "2.3.1"),
        ReleaseStatus::Candidate,
        "built from 1.0.0"
    );
    assert!(matches!(
        state.unrevoke("web", "2.3.0"),
        Err(StateError::NotRevoked { .. })
    ));
    assert!(matches!(
        state.revoke("base", "9.9.9", "x"),
        Err(StateError::NotFound { .. })
    ));
    let restored = state.unrevoke("base", "1.0.1").unwrap();
    assert_eq!(restored.len(), 3);
    assert_eq!(status("base", "1.0.1"), ReleaseStatus::Candidate);
    assert_eq!(
        status("web", "2.3.0"),
        ReleaseStatus::Failed,
        "its own status comes back"
    );
    assert_eq!(status("app", "1.0.0"), ReleaseStatus::Candidate);
}

#[test]
fn a_version_is_recorded_with_its_packages_in_one_go() {
    use crate::packages::{Inventory, Manager, OsRelease, Package};
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let inv = Inventory {
        managers: vec![Manager::Dpkg],
        os: OsRelease {
            id: Some("debian".into()),
            version_id: Some("12".into()),
            pretty_name: None,
        },
        packages: vec![
            Package {
                manager: Manager::Dpkg,
                name: "libssl3".into(),
                version: "3.0.15-1~deb12u1".into(),
                arch: "amd64".into(),
                source: Some("openssl".into()),
            },
            Package {
                manager: Manager::Dpkg,
                name: "adduser".into(),
                version: "3.134".into(),
                arch: "all".into(),
                source: None,
            },
        ],
    };
    state
        .record_built_image(&image("web", "1.0.0", "a", "k", 1), Some(&inv))
        .and_then(Durable::sync)
        .unwrap();
    state
        .record_built_image(&image("web", "1.0.1", "b", "k2", 2), None)
        .and_then(Durable::sync)
        .unwrap();
    let mut sorted = inv.clone();
    sorted.sort();
    assert_eq!(state.packages_of("web", "1.0.0").unwrap(), Some(sorted));
    assert_eq!(state.packages_of("web", "1.0.1").unwrap(), None);
    assert_eq!(state.images(Some("web")).unwrap().len(), 2);

    // A version that cannot be recorded takes its package list with it.
    let err = state
        .record_built_image(&image("web", "1.0.0", "c", "k3", 3), Some(&inv))
        .unwrap_err();
    assert!(matches!(err, StateError::VersionExists { .. }), "{err}");
    assert_eq!(state.images(Some("web")).unwrap().len(), 2);
}

#[test]
fn the_current_version_is_the_newest_ready_else_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    assert!(state.current_version("web").unwrap().is_none());
    for (v, at) in [("1.0.0", 1), ("1.0.1", 2), ("1.0.10", 3)] {
        state.record_image(&image("web", v, v, "k", at)).unwrap();
    }
    assert_eq!(
        state
            .current_version("web")
            .unwrap()
            .unwrap()
            .version
            .version,
        "1.0.10"
    );
    state
        .set_image_status("web", "1.0.1", ReleaseStatus::Ready)
        .unwrap();
    assert_eq!(
        state
            .current_version("web")
            .unwrap()
            .unwrap()
            .version
            .version,
        "1.0.1"
    );
}

#[test]
fn a_node_id_changed_outside_imgraph_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_in(dir.path());
    let run = state.begin_run("apply", "{}").unwrap();
    state
        .start_node(run, &start(&id("build:base"), "k"))
        .unwrap();
    assert!(state.snapshot().unwrap().contains_key(&id("build:base")));
    state
        .conn
        .execute("UPDATE node_runs SET node_id = 'base'", [])
        .unwrap();
    let err = state.snapshot().unwrap_err();
    let chain = crate::text::error_chain(&err);
    assert!(chain.contains("failed to read node id `base`"), "{chain}");
    assert!(chain.contains("`build:IMAGE`"), "{chain}");
}

fn wal_len(path: &Path) -> Option<u64> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).ok().map(|m| m.len())
}

/// Runs recorded through a connection that is then closed, read back (a) by a new
/// connection, through the log, and (b) by the `immutable` open, which reads the file
/// alone: what a copy of `state.db` or a read-only mount without the log index sees.
fn runs_seen(path: &Path) -> (usize, usize) {
    let through_log = State::open(path).unwrap().runs(10).unwrap().len();
    // Before anything was folded in, the file alone lacks even the tables.
    let file_alone = State::connect_read_only(path, true)
        .unwrap()
        .runs(10)
        .map_or(0, |runs| runs.len());
    (through_log, file_alone)
}

#[test]
fn the_log_outlives_the_connection_and_every_commit_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let state = State::open(&path).unwrap();
    let run = state.begin_run("apply", "{}").unwrap();
    state.finish_run(run, RunStatus::Succeeded).unwrap();
    drop(state);
    // Not folded in on close: the next open reads the log.
    assert!(
        wal_len(&path).is_some_and(|n| n > 0),
        "the log was folded in"
    );
    assert_eq!(runs_seen(&path).0, 1);
}

#[test]
fn giving_the_lease_back_after_a_run_folds_the_log_into_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (state, leases) = super::open(
        &super::Backend::Local { path: path.clone() },
        super::Access::ReadWrite,
    )
    .unwrap();
    let me = LeaseHolder::this_process("imgraph apply");
    // A lease taken and given back with no history written: the log keeps it.
    assert_eq!(leases.acquire(&me).unwrap(), LeaseOutcome::Acquired);
    leases.release(&me).unwrap();
    assert!(
        wal_len(&path).is_some_and(|n| n > 0),
        "folded in for nothing"
    );

    assert_eq!(leases.acquire(&me).unwrap(), LeaseOutcome::Acquired);
    let run = state.begin_run("apply", "{}").unwrap();
    state.finish_run(run, RunStatus::Succeeded).unwrap();
    assert_eq!(runs_seen(&path), (1, 0), "the run is in the log only");
    leases.release(&me).unwrap();
    assert_eq!(wal_len(&path), Some(0), "the log was not emptied");
    // The file alone now holds the run, and the lease given back.
    assert_eq!(runs_seen(&path), (1, 1));
    assert_eq!(state.lease().unwrap(), None);
}
