//! Running user commands (build steps, tests, deliveries, Packer): `sh -c` in a process
//! group of its own, stdout and stderr appended to the node's log file, with a timeout
//! and cancellation that kill the whole group (SIGTERM, then SIGKILL after a grace
//! period), so no grandchild outlives its node.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::model::Sandbox;

/// Where the project folder appears inside a `bwrap` sandbox (read-only).
pub const SANDBOX_PROJECT: &str = "/tmp/imgraph-project";

/// How long a process group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    pub command: String,
    /// Working directory on the host (the project folder).
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Run inside this root with the given sandbox (`none` runs on the host).
    pub sandbox: Sandbox,
    pub root: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// The first signal sent on timeout or cancellation (default SIGTERM; Packer wants SIGINT).
    pub stop_signal: Option<i32>,
    /// How long the group gets after the first signal before SIGKILL (default [`KILL_GRACE`]).
    pub grace: Option<Duration>,
    /// Where to record the running process group, so that if imgraph itself is killed
    /// the next run can kill what it left running.
    pub ledger: Option<ProcessLedger>,
}

/// A ledger for running process groups: `(ledger, node id)`.
#[derive(Clone)]
pub struct ProcessLedger {
    pub ledger: crate::provider::Ledger,
    pub node: String,
}

impl std::fmt::Debug for ProcessLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessLedger({})", self.node)
    }
}

/// The ledger `kind` of a running process group; its resource is `"PGID IDENTITY"`.
pub const LEDGER_KIND: &str = "process";

/// Kills a process group a killed run left running, if it is still the same one.
pub fn kill_leftover(resource: &str) {
    let mut parts = resource.splitn(2, ' ');
    let Some(pgid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
        return;
    };
    let identity = parts.next().filter(|i| !i.is_empty());
    if crate::state::process_is_alive(pgid, identity) {
        signal_group(pgid as i32, libc::SIGKILL);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    Exited(i32),
    Signalled(i32),
    TimedOut(Duration),
    Cancelled,
}

impl ProcessOutcome {
    pub fn success(&self) -> bool {
        matches!(self, ProcessOutcome::Exited(0))
    }
    /// A sentence fragment for errors: "exited with status 3", "timed out after 1m".
    pub fn describe(&self) -> String {
        match self {
            ProcessOutcome::Exited(c) => format!("exited with status {c}"),
            ProcessOutcome::Signalled(s) => format!("was killed by signal {s}"),
            ProcessOutcome::TimedOut(d) => {
                format!("timed out after {}", humantime::format_duration(*d))
            }
            ProcessOutcome::Cancelled => "was cancelled".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("failed to open log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to wait for `{command}`")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// Builds the argv for a command in a sandbox.
pub fn argv(spec: &CommandSpec) -> Vec<String> {
    let root = spec
        .root
        .as_ref()
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_default();
    match (spec.sandbox, spec.root.is_some()) {
        (Sandbox::Chroot, true) => vec![
            "chroot".into(),
            root,
            "/bin/sh".into(),
            "-c".into(),
            spec.command.clone(),
        ],
        (Sandbox::Bwrap, true) => vec![
            "bwrap".into(),
            "--bind".into(),
            root,
            "/".into(),
            "--dev".into(),
            "/dev".into(),
            "--proc".into(),
            "/proc".into(),
            "--tmpfs".into(),
            "/tmp".into(),
            "--unshare-all".into(),
            "--die-with-parent".into(),
            // The project, read-only, inside the tmpfs: visible to steps and tests
            // (`sh tests/smoke/check.sh` works) and never packed into the image.
            "--ro-bind".into(),
            spec.cwd.to_string_lossy().into_owned(),
            SANDBOX_PROJECT.into(),
            "--chdir".into(),
            SANDBOX_PROJECT.into(),
            "--setenv".into(),
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "/bin/sh".into(),
            "-c".into(),
            spec.command.clone(),
        ],
        _ => vec!["sh".into(), "-c".into(), spec.command.clone()],
    }
}

/// Runs the command to completion, timeout or cancellation; output goes to `log`.
pub async fn run(
    spec: &CommandSpec,
    log: &Path,
    cancel: &CancellationToken,
) -> Result<ProcessOutcome, ProcessError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| ProcessError::Log {
            path: log.to_path_buf(),
            source,
        })?;
    let err_file = file.try_clone().map_err(|source| ProcessError::Log {
        path: log.to_path_buf(),
        source,
    })?;
    let args = argv(spec);
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err_file))
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: args[0].clone(),
        source,
    })?;
    let pgid = child.id().map(|p| p as i32);
    let ledger_id = match (&spec.ledger, child.id()) {
        (Some(pl), Some(pid)) => {
            let identity = crate::state::process_identity(pid).unwrap_or_default();
            pl.ledger
                .add(
                    &pl.node,
                    "host",
                    LEDGER_KIND,
                    &format!("{pid} {identity}"),
                    "command",
                )
                .ok()
                .map(|id| (pl, id))
        }
        _ => None,
    };
    let outcome = wait_or_stop(spec, &mut child, pgid, cancel).await;
    if let Some((pl, id)) = ledger_id {
        let _ = pl.ledger.destroyed(id);
    }
    outcome
}

async fn wait_or_stop(
    spec: &CommandSpec,
    child: &mut tokio::process::Child,
    pgid: Option<i32>,
    cancel: &CancellationToken,
) -> Result<ProcessOutcome, ProcessError> {
    // No timeout: a century is "never" for a build step, and stays clear of Instant overflow.
    let timeout = spec
        .timeout
        .unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600));

    let outcome = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|source| ProcessError::Wait { command: spec.command.clone(), source })?;
            // The leader is gone; its group may not be. Leave nothing behind.
            if let Some(pg) = pgid { signal_group(pg, libc::SIGKILL); }
            return Ok(exit_outcome(status));
        }
        _ = tokio::time::sleep(timeout) => ProcessOutcome::TimedOut(timeout),
        _ = cancel.cancelled() => ProcessOutcome::Cancelled,
    };
    if let Some(pg) = pgid {
        signal_group(pg, spec.stop_signal.unwrap_or(libc::SIGTERM));
        if tokio::time::timeout(spec.grace.unwrap_or(KILL_GRACE), child.wait())
            .await
            .is_err()
        {
            signal_group(pg, libc::SIGKILL);
            let _ = child.wait().await;
        }
        signal_group(pg, libc::SIGKILL);
    }
    Ok(outcome)
}

fn exit_outcome(status: std::process::ExitStatus) -> ProcessOutcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ProcessOutcome::Exited(c),
        (None, Some(s)) => ProcessOutcome::Signalled(s),
        (None, None) => ProcessOutcome::Exited(-1),
    }
}

fn signal_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: killpg only sends a signal; an unknown group yields ESRCH, which is fine.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

/// The last `n` lines of a log file (for failure summaries); empty when unreadable.
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &str, timeout: Option<Duration>) -> CommandSpec {
        CommandSpec {
            command: cmd.into(),
            cwd: std::env::temp_dir(),
            env: vec![("GREETING".into(), "hi".into())],
            sandbox: Sandbox::None,
            root: None,
            timeout,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn output_and_env_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let out = run(
            &spec("echo $GREETING; echo oops >&2; exit 3", None),
            &log,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out, ProcessOutcome::Exited(3));
        assert_eq!(log_tail(&log, 10), vec!["hi", "oops"]);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let marker = dir.path().join("grandchild-survived");
        // The grandchild would write the marker after 2 s if it outlived the timeout.
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let out = run(
            &spec(&cmd, Some(Duration::from_millis(300))),
            &log,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(matches!(out, ProcessOutcome::TimedOut(_)));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a grandchild outlived its timed-out node");
    }

    #[tokio::test]
    async fn cancellation_stops_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let token = CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            t2.cancel();
        });
        let out = run(&spec("sleep 30", None), &log, &token).await.unwrap();
        assert_eq!(out, ProcessOutcome::Cancelled);
    }
}
