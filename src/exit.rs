//! The one table of exit codes. Every command maps its outcome here; nothing else calls
//! `std::process::exit` with a literal.

/// Success; for `plan --detailed-exitcode`, also "no changes".
pub const OK: i32 = 0;
/// An error: bad config, bad arguments, state or I/O failure.
pub const ERROR: i32 = 1;
/// `plan --detailed-exitcode`: the plan has nodes to run.
pub const CHANGES_PENDING: i32 = 2;
/// `apply` ran, and at least one node failed (or was skipped because of a failure).
pub const APPLY_FAILED: i32 = 3;
/// Another `apply` holds the state lease.
pub const LOCKED: i32 = 4;
/// Interrupted by Ctrl-C (SIGINT).
pub const INTERRUPTED: i32 = 130;
