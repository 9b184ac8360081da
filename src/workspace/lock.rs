//! The state lease as commands take it: waiting for it, breaking it, and watching a lease
//! with a heartbeat while an apply runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::state::{
    Lease, LeaseGuard, LeaseHolder, LeaseOutcome, LeaseStore, LeaseWatch, Liveness, StateError,
};

use super::Workspace;

/// How often a command waiting for the state lock tries again.
const LOCK_POLL: Duration = Duration::from_millis(200);

impl Workspace {
    /// Takes the state's lease for `command` (invariant 5: one writer at a time),
    /// waiting up to `wait` for its holder to finish, or says who holds it (holder,
    /// host, pid, age). The lease is given back when the returned guard is released or
    /// dropped. Cancelling `cancel` stops the wait with [`Error::Interrupted`].
    pub fn lock(
        &self,
        command: &str,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<LeaseGuard> {
        let me = LeaseHolder::this_process(&format!("imgraph {command}"));
        let deadline = Instant::now() + wait;
        loop {
            match take(&self.leases, &me)? {
                Ok(guard) => {
                    // What others recorded before we held the lease (a shared state).
                    self.state.sync()?;
                    return Ok(guard);
                }
                Err(_) if cancel.is_cancelled() => {
                    return Err(Error::Interrupted("waiting for the state lock".into()));
                }
                Err(locked) if Instant::now() >= deadline => return Err(locked),
                Err(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(LOCK_POLL));
        }
    }

    /// `imgraph lock break`: removes the state lock unless its holder still runs on this
    /// host (or runs on another host, where that cannot be checked); `force` removes it
    /// all the same.
    pub fn break_lock(&self, force: bool) -> Result<Option<Lease>> {
        let Some(lease) = self.leases.status()? else {
            return Ok(None);
        };
        let why = match lease.liveness {
            Liveness::Gone => None,
            Liveness::Alive => Some("and that process is still running"),
            Liveness::OtherHost => {
                Some("on another host, where imgraph cannot check that it is gone")
            }
        };
        if let (Some(why), false) = (why, force) {
            return Err(Error::LockHolderAlive {
                pid: lease.pid,
                host: lease.host,
                holder: lease.holder,
                since: lease.since,
                now: crate::state::now_ms(),
                why: why.into(),
            });
        }
        self.leases.break_lease()?;
        Ok(Some(lease))
    }
}

/// An apply's watch on its lease: `task` ends with the error once the lease is lost (and
/// cancels the run), or with `None` when `stop` is cancelled.
pub(super) struct LeaseWatcher {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Option<StateError>>,
}

pub(super) fn watch_lease(
    watch: LeaseWatch,
    ttl: Duration,
    run: CancellationToken,
) -> LeaseWatcher {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let every = (ttl / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stopped.cancelled() => return None,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = watch.check() {
                run.cancel();
                return Some(e);
            }
        }
    });
    LeaseWatcher { stop, task }
}

/// Asks `leases` once for `me`: the guard, or [`Error::Locked`] naming the holder.
pub(super) fn take(
    leases: &Arc<dyn LeaseStore>,
    me: &LeaseHolder,
) -> Result<std::result::Result<LeaseGuard, Error>> {
    Ok(match leases.acquire(me)? {
        LeaseOutcome::Acquired => Ok(LeaseGuard::new(leases.clone(), me.clone())),
        LeaseOutcome::HeldBy {
            pid,
            host,
            holder,
            since,
        } => Err(Error::Locked {
            pid,
            host,
            holder,
            since,
            now: crate::state::now_ms(),
        }),
    })
}
