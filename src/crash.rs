//! Crash points: the moments of an apply at which a test can make imgraph die by SIGKILL,
//! to prove that a crash at any of them loses nothing and leaves nothing behind
//! (`tests/crash.rs`, RELIABILITY.md).
//!
//! Two environment variables, read once; without them every point costs one atomic load:
//! - `IMGRAPH_CRASH_LOG=FILE` appends one line per point reached, `N name`, where `N`
//!   counts from 1 in this process;
//! - `IMGRAPH_CRASH_AT=N` makes the process send itself SIGKILL at the `N`th point. No
//!   clean-up code runs, no destructor, no signal handler: it is the `kill -9` a CI runner
//!   or the kernel's OOM killer delivers, at a moment a test can choose and repeat.
//!
//! Points sit at every state commit (before SQLite makes it durable: the transaction is
//! lost, as in a real crash there), inside unpacks and packs, between build steps, around
//! test and delivery commands and registry writes. Commands imgraph runs never see these
//! variables (their environment is built from scratch, see `env`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Kill the process at the Nth point.
pub const AT_VAR: &str = "IMGRAPH_CRASH_AT";
/// Append each point reached to this file.
pub const LOG_VAR: &str = "IMGRAPH_CRASH_LOG";

struct Config {
    at: Option<u64>,
    log: Option<std::path::PathBuf>,
}

fn config() -> Option<&'static Config> {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let at = std::env::var(AT_VAR)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            let log = std::env::var_os(LOG_VAR).map(std::path::PathBuf::from);
            (at.is_some() || log.is_some()).then_some(Config { at, log })
        })
        .as_ref()
}

/// Whether crash points are being counted in this process.
pub fn enabled() -> bool {
    config().is_some()
}

/// A crash point named `what`; see the module docs.
pub fn point(what: &str) {
    let Some(cfg) = config() else { return };
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(log) = &cfg.log {
        // Best effort: a test that asked for the log reads it; nothing else depends on it.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{n} {what}");
        }
    }
    if cfg.at == Some(n) {
        // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, so this never returns.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        loop {
            std::thread::park();
        }
    }
}
