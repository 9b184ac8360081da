//! Running user commands (build steps, tests, deliveries, Packer): `sh -c` in a process
//! group of its own, stdout and stderr appended to the node's log file, with a timeout
//! and cancellation that kill the whole group (SIGTERM, then SIGKILL after a grace
//! period), so no grandchild outlives its node.
//!
//! A leaf: it knows nothing of providers or the executor. Whoever starts a command hands
//! it a [`ProcessRecorder`] (the provider's instance ledger, in practice), which hears of
//! each process group before it is waited on and after it is gone, so that a killed
//! imgraph's next run can kill what it left running ([`kill_leftover`]).

use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long a process group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

pub use crate::env::{
    command_env, Place, AWS_VARIABLES, PACKER_VARIABLES, SANDBOX_PATH, SOURCE_DATE_EPOCH,
};

#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    pub command: String,
    /// Working directory on the host (the project folder).
    pub cwd: PathBuf,
    /// The whole environment (see [`command_env`]); nothing else is inherited.
    pub env: Vec<(String, String)>,
    /// A program and arguments that run `/bin/sh -c COMMAND` elsewhere (a sandbox's
    /// `bwrap …`); empty runs `sh -c COMMAND` on the host.
    pub wrapper: Vec<String>,
    /// Bytes the wrapper reads from file descriptor 3 (bwrap's `--seccomp 3`).
    pub fd3: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// The first signal sent on timeout or cancellation (default SIGTERM; Packer wants SIGINT).
    pub stop_signal: Option<i32>,
    /// How long the group gets after the first signal before SIGKILL (default [`KILL_GRACE`]).
    pub grace: Option<Duration>,
    /// Where to record the running process group, so that if imgraph itself is killed
    /// the next run can kill what it left running.
    pub recorder: Option<Arc<dyn ProcessRecorder>>,
    /// A file that receives standard output instead of the log (a probe's output, to
    /// be hashed); standard error still goes to the log.
    pub stdout: Option<PathBuf>,
}

/// Hears of every process group [`run`] starts: before it is waited on, and once it is
/// gone. Recording is best effort: a command still runs when it cannot be recorded.
pub trait ProcessRecorder: Send + Sync + std::fmt::Debug {
    /// A group is running; `resource` is `"PGID IDENTITY"` (what [`kill_leftover`] reads
    /// back). Returns the record's id, or `None` when it could not be recorded.
    fn started(&self, resource: &str) -> Option<i64>;
    /// The group of record `id` has ended.
    fn ended(&self, id: i64);
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

/// The argv of a command: `sh -c COMMAND` on the host, or the wrapper's program and
/// arguments followed by `/bin/sh -c COMMAND`.
pub fn argv(spec: &CommandSpec) -> Vec<String> {
    let shell = if spec.wrapper.is_empty() {
        "sh"
    } else {
        "/bin/sh"
    };
    let mut args = spec.wrapper.clone();
    args.extend([shell.to_string(), "-c".to_string(), spec.command.clone()]);
    args
}

/// Runs the command to completion, timeout or cancellation; output goes to `log`.
/// Runs the commands the executor starts itself (a delivery's): [`Host`] in an apply, a
/// script in the executor's unit tests.
#[async_trait::async_trait]
pub trait CommandRunner: Send + Sync {
    async fn run(
        &self,
        spec: &CommandSpec,
        log: &Path,
        cancel: &CancellationToken,
    ) -> Result<ProcessOutcome, ProcessError>;
}

/// Commands run on this host with [`run`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

#[async_trait::async_trait]
impl CommandRunner for Host {
    async fn run(
        &self,
        spec: &CommandSpec,
        log: &Path,
        cancel: &CancellationToken,
    ) -> Result<ProcessOutcome, ProcessError> {
        run(spec, log, cancel).await
    }
}

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
    let out_file = match &spec.stdout {
        Some(path) => std::fs::File::create(path).map_err(|source| ProcessError::Log {
            path: path.clone(),
            source,
        })?,
        None => file,
    };
    let args = argv(spec);
    let mut cmd = Command::new(crate::env::program_in(&args[0], &spec.env));
    cmd.args(&args[1..])
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_file))
        .stderr(Stdio::from(err_file))
        .process_group(0)
        .kill_on_drop(true);
    // Only what `spec.env` says (built by [`command_env`]): never imgraph's own environment.
    cmd.env_clear();
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // Kept open until spawned: the child gets its own copy as fd 3.
    let fd3 = match &spec.fd3 {
        Some(data) => Some(pipe_with(data).map_err(|source| ProcessError::Spawn {
            program: args[0].clone(),
            source,
        })?),
        None => None,
    };
    if let Some(read) = fd3.as_ref().map(|f| f.as_raw_fd()) {
        // SAFETY: between fork and exec the closure only calls dup2, which is
        // async-signal-safe; the new fd 3 has no close-on-exec flag, the pipe's own
        // descriptor keeps it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(read, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: args[0].clone(),
        source,
    })?;
    drop(fd3);
    let pgid = child.id().map(|p| p as i32);
    let recorded = match (&spec.recorder, child.id()) {
        (Some(recorder), Some(pid)) => {
            let identity = crate::state::process_identity(pid).unwrap_or_default();
            recorder
                .started(&format!("{pid} {identity}"))
                .map(|id| (recorder, id))
        }
        _ => None,
    };
    crate::crash::point("command: running");
    let outcome = wait_or_stop(spec, &mut child, pgid, cancel).await;
    if let Some((recorder, id)) = recorded {
        recorder.ended(id);
    }
    outcome
}

/// A pipe whose read end (returned) holds `data` to the end: small data only (a pipe
/// buffer is 64 KiB), written before the reader starts.
fn pipe_with(data: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read, write) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    std::fs::File::from(write).write_all(data)?;
    Ok(read)
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

/// How much of a log's end [`log_tail`] reads, whatever the log's size.
const TAIL_BYTES: u64 = 64 << 10;
/// The longest log line a failure summary shows.
pub const SHOWN_LINE_MAX: usize = 300;

/// The last `n` lines of a log file (for failure summaries), each cut to
/// [`SHOWN_LINE_MAX`] characters; empty when unreadable. Only the last 64 KiB are read,
/// so memory stays flat whatever a command printed; a line cut by that window starts
/// with `…`.
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.len().saturating_sub(n);
    lines[first..]
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let shown = crate::text::cap_line(line, SHOWN_LINE_MAX);
            if start > 0 && first + i == 0 {
                format!("…{shown}")
            } else {
                shown
            }
        })
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

    #[test]
    fn log_tail_reads_only_the_end_and_cuts_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        // 1 MiB without a newline, then two short lines.
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nsecond\nlast\n");
        std::fs::write(&log, &text).unwrap();
        let tail = log_tail(&log, 15);
        assert_eq!(tail.len(), 3, "{tail:?}");
        assert!(tail[0].starts_with("…xxx"), "{}", &tail[0][..20]);
        assert!(tail[0].ends_with("more bytes]"), "{}", tail[0]);
        assert!(tail[0].chars().count() < SHOWN_LINE_MAX + 40);
        assert_eq!(&tail[1..], ["second", "last"]);
    }

    #[tokio::test]
    async fn a_command_sees_only_the_environment_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        // `cargo test` runs this with CARGO_* variables set: none may reach the command.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO_")));
        let out = run(&spec("env", None), &log, &CancellationToken::new())
            .await
            .unwrap();
        assert!(out.success());
        let lines = log_tail(&log, 100);
        assert!(lines.contains(&"GREETING=hi".to_string()), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("CARGO_")), "{lines:?}");
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
