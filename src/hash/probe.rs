//! Probe inputs: a shell command whose standard output is hashed.
//!
//! The command runs as `sh -c COMMAND` in the project folder with stdin closed, in its own
//! process group so that a timeout kills the whole pipeline it started, not just `sh`.
//! stdout and stderr are drained on two threads (a chatty stderr must not fill its pipe and
//! stall the command) and the wait is bounded by the timeout, including a grandchild that
//! keeps the pipes open after `sh` exits.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{digest, HashError};

/// How much of stderr a failed probe's error shows.
const STDERR_TAIL_BYTES: usize = 2000;
const STDERR_TAIL_LINES: usize = 10;

enum Stream {
    Out(std::io::Result<Vec<u8>>),
    Err(std::io::Result<Vec<u8>>),
}

/// Runs a probe and returns the `b3v1:` digest of its stdout. It sees the strict
/// environment with the caller's values of `env` (its `env`/`pass-env` names).
///
/// A non-zero exit is a [`HashError::Probe`] with the tail of stderr; so is running longer
/// than `timeout`, after the probe's process group has been killed.
pub fn run_probe(
    root: &Path,
    name: &str,
    command: &str,
    env: &[String],
    timeout: Duration,
) -> Result<String, HashError> {
    let fail = |detail: String| HashError::Probe {
        name: name.to_owned(),
        detail,
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(root)
        // The strict environment every command gets, never imgraph's own.
        .env_clear()
        .envs(crate::exec::process::command_env(
            crate::exec::process::Place::Host,
            env,
            &[],
            Vec::new(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("start `sh -c`: {e}")))?;
    let deadline = Instant::now() + timeout;

    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let res = out.read_to_end(&mut buf).map(|_| buf);
            let _ = tx.send(Stream::Out(res));
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let res = err.read_to_end(&mut buf).map(|_| buf);
            let _ = tx.send(Stream::Err(res));
        });
    }
    drop(tx);

    let timed_out = |child: &mut Child| {
        kill_group(child);
        fail(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        ))
    };

    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Stream::Out(res)) => {
                stdout = Some(res.map_err(|e| fail(format!("read its output: {e}")))?)
            }
            Ok(Stream::Err(res)) => stderr = Some(res.unwrap_or_default()),
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(timed_out(&mut child)),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out(&mut child));
                }
                thread::sleep(left.min(Duration::from_millis(10)));
            }
            Err(e) => {
                kill_group(&mut child);
                return Err(fail(format!("wait for it: {e}")));
            }
        }
    };
    if !status.success() {
        return Err(fail(format!(
            "{}: {}",
            describe(status),
            tail(&stderr.unwrap_or_default())
        )));
    }
    Ok(digest::probe(&stdout.unwrap_or_default()))
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("it exited with status {code}"),
        (None, Some(signal)) => format!("it was killed by signal {signal}"),
        (None, None) => format!("it ended with {status}"),
    }
}

fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
    let text = String::from_utf8_lossy(&stderr[start..]);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let shown = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    if shown.trim().is_empty() {
        "no output on stderr".to_owned()
    } else {
        shown
    }
}

/// Kills the probe's whole process group and reaps `sh`.
fn kill_group(child: &mut Child) {
    match i32::try_from(child.id()) {
        Ok(pid) => {
            // SAFETY: kill(2) with a negative pid signals the process group we created with
            // `process_group(0)`; it touches no memory of ours.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}
