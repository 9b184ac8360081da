//! Probe inputs: a shell command whose standard output is hashed.
//!
//! The command runs as `sh -c COMMAND` in the project folder with stdin closed, in its own
//! process group so that a timeout kills the whole pipeline it started, not just `sh`.
//! stdout and stderr are drained on two threads (a chatty stderr must not fill its pipe and
//! stall the command) and the wait is bounded by the timeout, including a grandchild that
//! keeps the pipes open after `sh` exits.
//!
//! Memory stays flat whatever a probe prints: stdout is kept in memory up to 1 MiB and
//! spilled to an unnamed temporary file past that, then hashed from there; past
//! [`MAX_PROBE_OUTPUT`] the probe is stopped and fails. Of stderr only the last 2000 bytes
//! are kept, for the error message.

use std::fs::File;
use std::io::{Read, Seek, Write};
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
/// The longest stderr line an error shows.
const STDERR_LINE_MAX: usize = 300;

/// The most a probe may print on stdout. A probe is meant to print a summary (package
/// versions, an index digest); one that prints more is stopped and fails.
pub const MAX_PROBE_OUTPUT: u64 = 256 << 20;
/// How much stdout is kept in memory before it goes to a temporary file.
const IN_MEMORY: usize = 1 << 20;

enum Stream {
    Out(Result<Captured, String>),
    Err(Vec<u8>),
}

/// A probe's stdout: in memory while small, in an unnamed temporary file past that.
#[derive(Default)]
struct Captured {
    head: Vec<u8>,
    spill: Option<File>,
    len: u64,
}

impl Captured {
    /// Reads `out` to its end, refusing more than [`MAX_PROBE_OUTPUT`] bytes.
    fn read(mut out: impl Read) -> Result<Captured, String> {
        let mut captured = Captured::default();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) => return Ok(captured),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read its output: {e}")),
            };
            captured.len += n as u64;
            if captured.len > MAX_PROBE_OUTPUT {
                return Err(format!(
                    "it printed more than {} MiB on stdout; a probe should print a summary (pipe a long listing through `sha256sum`)",
                    MAX_PROBE_OUTPUT >> 20
                ));
            }
            if captured.spill.is_none() && captured.head.len() + n <= IN_MEMORY {
                captured.head.extend_from_slice(&buf[..n]);
                continue;
            }
            let spill = match captured.spill.as_mut() {
                Some(f) => f,
                None => {
                    let mut f = tempfile::tempfile()
                        .map_err(|e| format!("create a temporary file for its output: {e}"))?;
                    f.write_all(&captured.head)
                        .map_err(|e| format!("keep its output: {e}"))?;
                    captured.head = Vec::new();
                    captured.spill.insert(f)
                }
            };
            spill
                .write_all(&buf[..n])
                .map_err(|e| format!("keep its output: {e}"))?;
        }
    }

    fn digest(self) -> Result<String, String> {
        let hashed = match self.spill {
            None => digest::probe_stream(self.len, &mut &self.head[..]),
            Some(mut f) => f
                .rewind()
                .and_then(|()| digest::probe_stream(self.len, &mut std::io::BufReader::new(f))),
        };
        hashed.map_err(|e| format!("read back its output: {e}"))
    }
}

/// Reads `err` to its end, keeping only its last [`STDERR_TAIL_BYTES`].
fn stderr_tail(mut err: impl Read) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match err.read(&mut buf) {
            Ok(0) => return tail,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                tail.drain(..excess);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return tail,
        }
    }
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
    // The strict environment every command gets, never imgraph's own.
    let env = crate::env::command_env(crate::env::Place::Host, env, &[], Vec::new());
    let mut child = Command::new(crate::env::program_in("sh", &env))
        .arg("-c")
        .arg(command)
        .current_dir(root)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("start `sh -c`: {e}")))?;
    let deadline = Instant::now() + timeout;

    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        thread::spawn(move || {
            let _ = tx.send(Stream::Out(Captured::read(out)));
        });
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        thread::spawn(move || {
            let _ = tx.send(Stream::Err(stderr_tail(err)));
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
            Ok(Stream::Out(Ok(captured))) => stdout = Some(captured),
            Ok(Stream::Out(Err(detail))) => {
                kill_group(&mut child);
                return Err(fail(detail));
            }
            Ok(Stream::Err(tail)) => stderr = Some(tail),
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
    stdout.unwrap_or_default().digest().map_err(fail)
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
    let lines: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| crate::text::cap_line(l, STDERR_LINE_MAX))
        .collect();
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
