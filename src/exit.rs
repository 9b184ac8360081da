//! The one table of exit codes, and the one function, [`code`], that maps how a command
//! ended to its code. Every command returns one of these; nothing else calls
//! `std::process::exit` with a literal.

use crate::error::Error;

/// Success; for `plan --detailed-exitcode`, also "no changes".
pub const OK: i32 = 0;
/// An error: bad config, bad arguments, state or I/O failure.
pub const ERROR: i32 = 1;
/// `plan --detailed-exitcode`: the plan has nodes to run.
pub const CHANGES_PENDING: i32 = 2;
/// `apply` ran, and at least one node failed (or was skipped because of a failure).
pub const APPLY_FAILED: i32 = 3;
/// Another `apply` holds the state lease (or, on a shared state, took it over from this
/// one).
pub const LOCKED: i32 = 4;
/// Interrupted by Ctrl-C (SIGINT), SIGTERM or SIGHUP.
pub const INTERRUPTED: i32 = 130;

/// How a command ended, as far as its exit code is concerned.
#[derive(Debug)]
pub enum Ended<'a> {
    /// The arguments could not be parsed; `help` when clap printed help or a version
    /// (which is no error).
    BadArguments { help: bool },
    /// A plan was made; `detailed` is `--detailed-exitcode`.
    Planned { detailed: bool, has_changes: bool },
    /// An apply ran to its end (or was stopped by a signal).
    Applied { interrupted: bool, succeeded: bool },
    /// A second signal arrived while the first one's clean-up ran.
    SignalledTwice,
    /// The command failed.
    Failed(&'a Error),
}

/// The exit code for how a command ended.
pub fn code(ended: Ended<'_>) -> i32 {
    match ended {
        Ended::BadArguments { help: true } => OK,
        Ended::BadArguments { help: false } => ERROR,
        Ended::Planned {
            detailed: true,
            has_changes: true,
        } => CHANGES_PENDING,
        Ended::Planned { .. } => OK,
        Ended::Applied {
            interrupted: true, ..
        }
        | Ended::SignalledTwice => INTERRUPTED,
        Ended::Applied {
            succeeded: true, ..
        } => OK,
        Ended::Applied { .. } => APPLY_FAILED,
        Ended::Failed(
            Error::Locked { .. }
            | Error::LockHolderAlive { .. }
            | Error::State(crate::state::StateError::LeaseLost { .. }),
        ) => LOCKED,
        Ended::Failed(Error::Interrupted(_)) => INTERRUPTED,
        Ended::Failed(_) => ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_has_its_documented_code() {
        assert_eq!(code(Ended::BadArguments { help: true }), OK);
        assert_eq!(code(Ended::BadArguments { help: false }), ERROR);
        let planned = |detailed, has_changes| {
            code(Ended::Planned {
                detailed,
                has_changes,
            })
        };
        assert_eq!(planned(true, true), CHANGES_PENDING);
        assert_eq!(planned(false, true), OK);
        assert_eq!(planned(true, false), OK);
        let applied = |interrupted, succeeded| {
            code(Ended::Applied {
                interrupted,
                succeeded,
            })
        };
        assert_eq!(applied(false, true), OK);
        assert_eq!(applied(false, false), APPLY_FAILED);
        assert_eq!(applied(true, false), INTERRUPTED);
        assert_eq!(code(Ended::SignalledTwice), INTERRUPTED);
        let interrupted = Error::Interrupted("waiting for the lock".into());
        assert_eq!(code(Ended::Failed(&interrupted)), INTERRUPTED);
        let locked = Error::Locked {
            pid: 1,
            host: None,
            holder: "apply".into(),
            since: 0,
            now: 0,
        };
        assert_eq!(code(Ended::Failed(&locked)), LOCKED);
        let lost = Error::State(crate::state::StateError::LeaseLost {
            lease: "s3://team/".into(),
            detail: "the shared lease was taken over".into(),
        });
        assert_eq!(code(Ended::Failed(&lost)), LOCKED);
        let other = Error::StateKeptChanging;
        assert_eq!(code(Ended::Failed(&other)), ERROR);
    }
}
