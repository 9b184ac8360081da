//! Group commit for `fsync`: threads that each need the same file or folder synced share
//! one sync instead of queueing one each.
//!
//! A sync makes durable everything written to its file before it *started*. So a caller
//! that wrote (a commit in the state's write-ahead log, a rename in the store folder) and
//! now needs it durable does not need a sync of its own: any sync that starts after its
//! write will do. [`GroupSync::sync`] gives it exactly that: if no sync runs, it runs one;
//! if one runs (it may have started before the write), it waits for it to end and then
//! for, or runs, the next one, which then covers every caller that came in meanwhile.
//! With eight builds finishing together, eight syncs of the store folder become two.
//!
//! What each caller gets is what a sync of its own gave: when `sync` returns `Ok`, its
//! write is on disk. A failed sync is returned to the caller that ran it; the callers
//! that waited for it try again themselves, so each sees its own error.

use std::sync::{Condvar, Mutex, MutexGuard};

/// The syncs of one file or folder (see the module docs).
#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<Progress>,
    ended: Condvar,
}

#[derive(Debug, Default)]
struct Progress {
    /// Callers so far; caller `n` needs a sync that started after it came in.
    callers: u64,
    /// Every caller up to this one is covered by a sync that succeeded.
    covered: u64,
    /// Whether a sync is running now.
    running: bool,
}

impl GroupSync {
    pub fn new() -> GroupSync {
        GroupSync::default()
    }

    /// Makes durable what the caller wrote before this call, with `sync` (a `fsync` of
    /// the file or folder) run by this caller or by another one that came in at the same
    /// time. Blocks while another caller's sync runs.
    pub fn sync<E>(&self, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut progress = self.lock();
        progress.callers += 1;
        let me = progress.callers;
        loop {
            if progress.covered >= me {
                return Ok(());
            }
            if !progress.running {
                // Every caller that came in so far wrote before this sync starts.
                let upto = progress.callers;
                progress.running = true;
                drop(progress);
                let result = sync();
                let mut after = self.lock();
                after.running = false;
                if result.is_ok() {
                    after.covered = after.covered.max(upto);
                }
                self.ended.notify_all();
                return result;
            }
            progress = self.ended.wait(progress).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        // A panic while syncing leaves the counters sound: nothing is half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn a_lone_caller_runs_its_own_sync_each_time() {
        let group = GroupSync::new();
        let runs = AtomicU64::new(0);
        for _ in 0..3 {
            group
                .sync(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn callers_that_come_in_during_a_sync_share_the_next_one() {
        let group = Arc::new(GroupSync::new());
        let runs = Arc::new(AtomicU64::new(0));
        // The first sync blocks until the other callers are waiting behind it.
        let (started, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let first = {
            let (group, runs) = (group.clone(), runs.clone());
            let (started, release) = (started.clone(), release.clone());
            std::thread::spawn(move || {
                group.sync(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    started.wait();
                    release.wait();
                    Ok::<(), ()>(())
                })
            })
        };
        started.wait();
        let others: Vec<_> = (0..6)
            .map(|_| {
                let (group, runs) = (group.clone(), runs.clone());
                std::thread::spawn(move || {
                    group.sync(|| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<(), ()>(())
                    })
                })
            })
            .collect();
        // Every other caller has come in (and counted itself) before the first ends.
        while group.lock().callers < 7 {
            std::thread::yield_now();
        }
        release.wait();
        first.join().unwrap().unwrap();
        for other in others {
            other.join().unwrap().unwrap();
        }
        // The first sync started before they came in, so it covers none of them; one
        // more sync covers all six.
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_sync_covers_nobody_and_its_error_goes_to_its_caller() {
        let group = GroupSync::new();
        assert_eq!(group.sync(|| Err("disk full")), Err("disk full"));
        let mut ran = false;
        group
            .sync(|| {
                ran = true;
                Ok::<(), &str>(())
            })
            .unwrap();
        assert!(ran, "a later caller must sync again");
    }
}
