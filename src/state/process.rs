//! Is the process that wrote a row still alive?
//!
//! A pid alone is not enough: pids are reused, and in CI containers every job's main
//! process tends to get the same small pid, so a killed run's pid can belong to the next
//! run. On Linux a row also keeps the process's identity - the boot id and the start time
//! from `/proc/PID/stat` - and a live pid with a different identity counts as gone. Where
//! that identity cannot be read (other platforms, `hidepid` mounts, rows written without
//! it) the pid check alone decides, erring on the side of "alive".

use std::sync::OnceLock;

/// This process's identity, computed once.
pub(crate) fn own_identity() -> Option<&'static str> {
    static OWN: OnceLock<Option<String>> = OnceLock::new();
    OWN.get_or_init(|| identity(std::process::id())).as_deref()
}

/// This machine's host name (see [`crate::host::name`]).
pub(crate) fn own_host() -> Option<&'static str> {
    crate::host::name()
}

/// Whether `pid` is a live process and, when `recorded` is known, the same one.
pub(crate) fn is_alive(pid: u32, recorded: Option<&str>) -> bool {
    if !pid_exists(pid) {
        return false;
    }
    match (recorded, identity(pid)) {
        (Some(recorded), Some(current)) => recorded == current,
        _ => true,
    }
}

#[cfg(unix)]
fn pid_exists(pid: u32) -> bool {
    // 0 and values that turn negative as pid_t address process groups, not a process.
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(raw, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn pid_exists(pid: u32) -> bool {
    // Without a cheap check, never declare another process dead.
    pid != 0
}

/// The identity of any process (boot id and start time), to recognise it later.
pub(crate) fn identity_of(pid: u32) -> Option<String> {
    identity(pid)
}

#[cfg(target_os = "linux")]
fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); field 22 is the start time.
    let start_time = after_name.split_whitespace().nth(19)?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(format!("{}/{}", boot_id.trim(), start_time))
}

#[cfg(not(target_os = "linux"))]
fn identity(_pid: u32) -> Option<String> {
    None
}
