//! The shared state on object storage (`state { s3 … }`): the [`Journal`] and the
//! [`LeaseStore`] over [`crate::remote`]'s journal of objects and lease object, with the
//! local SQLite file as mirror and cache.
//!
//! How it fits together:
//! - The object client runs on a runtime of its own (one worker thread), so its connection
//!   pool and the lease's heartbeat never depend on the caller's runtime: a blocking call
//!   hands its future to that runtime and waits for the answer (inside imgraph's
//!   multi-threaded runtime, with `block_in_place`).
//! - While the lease is held, a heartbeat task on that runtime renews it every third of
//!   `lease-ttl`, whatever the command does meanwhile (an apply, a long `gc`). A renewal
//!   that is refused means another runner took the lease over: the lease is lost, and
//!   [`LeaseStore::check`] says so, which stops an apply.
//! - The journal is fenced by the lease on this side too: once the lease is lost, or not
//!   renewed for two thirds of `lease-ttl` (a runner whose heartbeat stalled may already
//!   be taken over), nothing more is appended. The conditional create of each journal
//!   object fences the rest: an append on top of someone else's is a conflict.
//! - At start, a command that may write proves the store honours conditional writes, and
//!   refuses to share anything on one that does not.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::model::SharedState;
use crate::remote::journal::{JournalError as ObjectJournalError, ObjectJournal};
use crate::remote::lease::{Acquired, HeldLease, LeaseRecord, ObjectLease, Renewed};
use crate::remote::{ObjectClient, RemoteError};
use crate::state::{
    Access, Journal, JournalError, Lease, LeaseHolder, LeaseOutcome, LeaseStore, Liveness, Record,
    Seq, SharedParts, State, StateError,
};

/// Opens the shared state `shared` with `path` as its local mirror: the local file is
/// attached to the journal (refused when it holds history of its own: `imgraph state
/// push` first) and brought up to date. With [`Access::ReadWrite`] the store is checked
/// to honour conditional writes first.
pub(super) fn open(
    path: &Path,
    shared: &SharedState,
    access: Access,
) -> Result<(State, Arc<dyn LeaseStore>), StateError> {
    let ((journal, lease), check) = parts(shared)?;
    let local = match access {
        Access::ReadWrite => State::open(path)?,
        Access::ReadOnly => {
            let state = State::open_for_reading(path)?;
            // A mirror that cannot be written is read from the journal into memory.
            if state.is_read_only() {
                State::in_memory(path)?
            } else {
                state
            }
        }
    };
    // Refused before anything is sent when the file holds history of its own.
    let state = local.with_journal(journal)?;
    if access == Access::ReadWrite {
        check()?;
    }
    state.sync()?;
    Ok((state, lease))
}

/// The journal and the lease of `shared`, on one client and runtime (without touching
/// any local file). With [`Access::ReadWrite`] the store must honour conditional writes.
pub(super) fn connect(shared: &SharedState, access: Access) -> Result<SharedParts, StateError> {
    let ((journal, lease), check) = parts(shared)?;
    if access == Access::ReadWrite {
        check()?;
    }
    Ok((journal, lease))
}

/// The conditional-write check of a shared state's store, run when called.
type Check = Box<dyn FnOnce() -> Result<(), StateError>>;

/// The journal and lease of `shared` (nothing sent yet), and its store's check.
fn parts(shared: &SharedState) -> Result<(SharedParts, Check), StateError> {
    let location = shared.location.to_string();
    let store_err = {
        let location = location.clone();
        move |context: &str, e: RemoteError| StateError::SharedStore {
            location: location.clone(),
            context: context.to_owned(),
            source: Box::new(e),
        }
    };
    let blocking = Arc::new(Blocking::new().map_err(|e| StateError::SharedStore {
        location: location.clone(),
        context: "start the object-storage runtime".into(),
        source: Box::new(e),
    })?);
    let client = ObjectClient::new(&shared.location)
        .map_err(|e| store_err.clone()("connect to the shared state", e))?;
    let check: Check = {
        let (probe, blocking) = (client.clone(), blocking.clone());
        Box::new(move || {
            blocking
                .run(async move { probe.check_conditional_writes().await })
                .map_err(|e| store_err("check the shared state's store", e.into()))?
                .map_err(|e| store_err("check the shared state's store", e))
        })
    };
    let guard = Arc::new(Guard {
        ttl: shared.lease_ttl,
        fence: Mutex::new(Fence::default()),
        held: tokio::sync::Mutex::new(None),
        beat: Mutex::new(None),
    });
    let journal = S3Journal {
        journal: ObjectJournal::new(client.clone()),
        name: location.clone(),
        blocking: blocking.clone(),
        guard: guard.clone(),
    };
    let lease = S3Lease {
        lease: ObjectLease::new(client, shared.lease_ttl),
        name: location,
        blocking,
        guard,
    };
    Ok(((Arc::new(journal), Arc::new(lease)), check))
}

/// The object-storage runtime ended without answering (it was shut down, or its task
/// panicked).
#[derive(Debug, thiserror::Error)]
#[error("the object-storage task ended without an answer")]
struct NoAnswer;

impl From<NoAnswer> for RemoteError {
    fn from(_: NoAnswer) -> Self {
        RemoteError::Io {
            op: "wait for",
            path: "the object-storage task".into(),
            source: std::io::Error::other(NoAnswer),
        }
    }
}

/// A runtime of its own for the object client and the heartbeat.
#[derive(Debug)]
struct Blocking {
    rt: Option<tokio::runtime::Runtime>,
}

impl Blocking {
    fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("imgraph-s3")
            .enable_all()
            .build()?;
        Ok(Blocking { rt: Some(rt) })
    }

    /// Runs `fut` on the object-storage runtime and waits for its answer.
    fn run<F>(&self, fut: F) -> Result<F::Output, NoAnswer>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let Some(rt) = &self.rt else {
            return Err(NoAnswer);
        };
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let wait = move || rx.recv().map_err(|_| NoAnswer);
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            // No runtime, or a current-thread one: waiting blocks only this thread, and
            // the object-storage runtime answers on its own.
            _ => wait(),
        }
    }

    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.rt {
            rt.spawn(fut);
        }
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        // Dropping a runtime may not block inside another runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What the lease knows that the journal must respect.
#[derive(Debug, Default)]
struct Fence {
    /// When the last acquisition or renewal that succeeded was sent (while held).
    beat: Option<Instant>,
    /// Why the lease was lost, once a renewal was refused.
    lost: Option<String>,
}

/// The lease this process holds, shared by the lease store, its heartbeat and the journal.
#[derive(Debug)]
struct Guard {
    ttl: Duration,
    fence: Mutex<Fence>,
    /// The held lease; every write to the lease object goes through this lock, so a
    /// heartbeat and a release never race on its ETag.
    held: tokio::sync::Mutex<Option<HeldLease>>,
    /// Stops the heartbeat.
    beat: Mutex<Option<CancellationToken>>,
}

impl Guard {
    fn fence(&self) -> std::sync::MutexGuard<'_, Fence> {
        // A poisoned mutex only means a panic elsewhere; the fence is plain data.
        self.fence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why this process may not append now, if it may not: the lease was lost, or not
    /// renewed for two thirds of its time to live.
    fn closed(&self) -> Option<String> {
        let fence = self.fence();
        if let Some(lost) = &fence.lost {
            return Some(lost.clone());
        }
        let age = fence.beat?.elapsed();
        (age > self.ttl * 2 / 3).then(|| {
            format!(
                "the shared lease was last renewed {} ago (lease-ttl {}): another runner may have taken it over",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(self.ttl)
            )
        })
    }

    /// Records the answer to a renewal sent at `sent` of the lease `held` holds: a lease
    /// lost is let go and closes the fence. Gives why it was lost.
    fn renewed(
        &self,
        held: &mut Option<HeldLease>,
        sent: Instant,
        answer: Renewed,
    ) -> Option<String> {
        match answer {
            Renewed::Renewed => {
                self.fence().beat = Some(sent);
                None
            }
            Renewed::Lost(by) => {
                *held = None;
                let why = lost_text(by.as_ref());
                let mut fence = self.fence();
                fence.lost = Some(why.clone());
                fence.beat = None;
                Some(why)
            }
        }
    }

    fn stop_heartbeat(&self) {
        if let Some(token) = self.beat.lock().unwrap_or_else(|p| p.into_inner()).take() {
            token.cancel();
        }
    }
}

fn lost_text(by: Option<&LeaseRecord>) -> String {
    match by {
        Some(r) if r.released => {
            "the shared lease was broken (`imgraph lock break`) while this runner held it".into()
        }
        Some(r) => format!(
            "the shared lease was taken over by {} on host {} (pid {})",
            r.holder, r.host, r.pid
        ),
        None => "the shared lease was taken over by another runner".into(),
    }
}

/// [`Journal`] on an [`ObjectJournal`].
#[derive(Debug)]
struct S3Journal {
    journal: ObjectJournal,
    name: String,
    blocking: Arc<Blocking>,
    guard: Arc<Guard>,
}

fn journal_store_err(context: &str, e: RemoteError) -> JournalError {
    JournalError::Store {
        context: context.to_owned(),
        source: Box::new(e),
    }
}

impl Journal for S3Journal {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn append(&self, after: Seq, records: &[Record]) -> Result<Seq, JournalError> {
        if let Some(reason) = self.guard.closed() {
            return Err(JournalError::Fenced { reason });
        }
        let journal = self.journal.clone();
        let records = records.to_vec();
        let appended = self
            .blocking
            .run(async move { journal.append(after, &records).await })
            .map_err(|e| journal_store_err("append to the shared journal", e.into()))?;
        match appended {
            Ok(seq) => Ok(seq),
            Err(ObjectJournalError::Conflict { seq }) => Err(JournalError::Conflict {
                after,
                current: seq,
            }),
            Err(ObjectJournalError::Remote(e)) => {
                Err(journal_store_err("append to the shared journal", e))
            }
        }
    }

    fn read_since(&self, seq: Seq) -> Result<Vec<(Seq, Record)>, JournalError> {
        let journal = self.journal.clone();
        let entries = self
            .blocking
            .run(async move { journal.read_since::<Record>(seq).await })
            .map_err(|e| journal_store_err("read the shared journal", e.into()))?
            .map_err(|e| journal_store_err("read the shared journal", e))?;
        Ok(entries
            .into_iter()
            .flat_map(|e| {
                let seq = e.seq;
                e.records.into_iter().map(move |r| (seq, r))
            })
            .collect())
    }
}

/// [`LeaseStore`] on an [`ObjectLease`], with its heartbeat.
#[derive(Debug)]
struct S3Lease {
    lease: ObjectLease,
    name: String,
    blocking: Arc<Blocking>,
    guard: Arc<Guard>,
}

impl S3Lease {
    fn err(&self, context: &str, e: RemoteError) -> StateError {
        StateError::SharedStore {
            location: self.name.clone(),
            context: context.to_owned(),
            source: Box::new(e),
        }
    }

    fn run<T: Send + 'static>(
        &self,
        context: &str,
        fut: impl Future<Output = Result<T, RemoteError>> + Send + 'static,
    ) -> Result<T, StateError> {
        self.blocking
            .run(fut)
            .map_err(|e| self.err(context, e.into()))?
            .map_err(|e| self.err(context, e))
    }

    /// Renews the lease every third of its time to live until stopped or lost.
    fn start_heartbeat(&self) {
        let token = CancellationToken::new();
        if let Some(old) = self
            .guard
            .beat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(token.clone())
        {
            old.cancel();
        }
        let (guard, lease) = (self.guard.clone(), self.lease.clone());
        let every = (self.guard.ttl / 3).max(Duration::from_millis(50));
        self.blocking.spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let mut held = guard.held.lock().await;
                if token.is_cancelled() {
                    return;
                }
                let Some(current) = held.as_mut() else {
                    return;
                };
                let sent = Instant::now();
                match lease.renew(current).await {
                    Ok(answer) => {
                        if let Some(why) = guard.renewed(&mut held, sent, answer) {
                            tracing::warn!(reason = %why, "the shared lease was lost");
                            return;
                        }
                    }
                    // Tried again at the next beat; the fence closes if none gets through.
                    Err(e) => tracing::warn!(error = %crate::text::error_chain(&e), "failed to renew the shared lease"),
                }
            }
        });
    }
}

/// The answer to a taker of the lease `record` stands for.
fn held_by(record: LeaseRecord) -> LeaseOutcome {
    LeaseOutcome::HeldBy {
        pid: record.pid,
        host: Some(record.host),
        holder: record.holder,
        since: i64::try_from(record.acquired_ms).unwrap_or(i64::MAX),
    }
}

fn same_holder(record: &LeaseRecord, holder: &LeaseHolder) -> bool {
    record.pid == holder.pid && record.holder == holder.command
}

impl LeaseStore for S3Lease {
    fn acquire(&self, holder: &LeaseHolder) -> Result<LeaseOutcome, StateError> {
        let (guard, lease) = (self.guard.clone(), self.lease.clone());
        let who = holder.clone();
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let outcome = self.run("take the shared lease", async move {
            let mut held = guard.held.lock().await;
            if let Some(current) = held.as_ref() {
                return Ok(if same_holder(&current.record, &who) {
                    LeaseOutcome::Acquired
                } else {
                    // Another command of this process holds it (an apply, for recovery).
                    held_by(current.record.clone())
                });
            }
            let sent = Instant::now();
            match lease.acquire(&who.command, &command).await? {
                Acquired::Held {
                    lease: taken,
                    took_over,
                } => {
                    if let Some(old) = took_over {
                        tracing::warn!(holder = %old.holder, host = %old.host, pid = old.pid, "took over a shared lease whose heartbeat was older than lease-ttl");
                    }
                    *held = Some(taken);
                    *guard.fence() = Fence {
                        beat: Some(sent),
                        lost: None,
                    };
                    Ok(LeaseOutcome::Acquired)
                }
                Acquired::HeldBy(r) => Ok(held_by(r)),
            }
        })?;
        let taken = matches!(outcome, LeaseOutcome::Acquired)
            && self.guard.beat.lock().map(|b| b.is_none()).unwrap_or(true);
        if taken {
            self.start_heartbeat();
        }
        Ok(outcome)
    }

    /// Renews now (the heartbeat also does, on its own); fails with
    /// [`StateError::LeaseLost`] when someone took the lease over.
    fn renew(&self, holder: &LeaseHolder) -> Result<(), StateError> {
        let (guard, lease) = (self.guard.clone(), self.lease.clone());
        let who = holder.clone();
        let lost = self.run("renew the shared lease", async move {
            let mut held = guard.held.lock().await;
            let Some(current) = held.as_mut().filter(|c| same_holder(&c.record, &who)) else {
                return Ok(guard.fence().lost.clone());
            };
            let sent = Instant::now();
            let answer = lease.renew(current).await?;
            Ok(guard.renewed(&mut held, sent, answer))
        })?;
        match lost {
            None => Ok(()),
            Some(detail) => Err(StateError::LeaseLost {
                lease: self.name.clone(),
                detail,
            }),
        }
    }

    fn release(&self, holder: &LeaseHolder) -> Result<(), StateError> {
        let (guard, lease) = (self.guard.clone(), self.lease.clone());
        let who = holder.clone();
        self.run("release the shared lease", async move {
            let mut held = guard.held.lock().await;
            let Some(current) = held.take_if(|c| same_holder(&c.record, &who)) else {
                return Ok(());
            };
            guard.stop_heartbeat();
            guard.fence().beat = None;
            if !lease.release(current).await? {
                tracing::warn!("the shared lease had been taken over before it was released");
            }
            Ok(())
        })
    }

    fn check(&self, _holder: &LeaseHolder) -> Result<(), StateError> {
        match self.guard.closed() {
            None => Ok(()),
            Some(detail) => Err(StateError::LeaseLost {
                lease: self.name.clone(),
                detail,
            }),
        }
    }

    fn status(&self) -> Result<Option<Lease>, StateError> {
        let lease = self.lease.clone();
        let status = self.run("read the shared lease", async move { lease.status().await })?;
        Ok(status.map(|s| {
            let r = s.record;
            let here = crate::host::name() == Some(r.host.as_str());
            let liveness = if s.stale || (here && !crate::state::process::is_alive(r.pid, None)) {
                Liveness::Gone
            } else if here {
                Liveness::Alive
            } else {
                Liveness::OtherHost
            };
            Lease {
                pid: r.pid,
                host: Some(r.host),
                holder: r.holder,
                since: i64::try_from(r.acquired_ms).unwrap_or(i64::MAX),
                liveness,
                command: Some(r.command),
                heartbeat: Some(i64::try_from(r.heartbeat_ms).unwrap_or(i64::MAX)),
            }
        }))
    }

    fn break_lease(&self) -> Result<bool, StateError> {
        let lease = self.lease.clone();
        Ok(self
            .run("break the shared lease", async move {
                lease.break_lease().await
            })?
            .is_some())
    }

    fn time_to_live(&self) -> Option<Duration> {
        Some(self.guard.ttl)
    }
}
