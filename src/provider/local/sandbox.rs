//! The `bwrap` sandbox: how a build step, a test or a probe runs inside an image root.
//!
//! # What a command sees
//!
//! - `/` is the image root, writable (a build's changes are what it makes); the image's
//!   own `/tmp` is kept from step to step (copy to `/tmp`, use it in the next `run`) and
//!   emptied before packing.
//! - `/proc` (a new one, for the sandbox's own processes), `/dev` (null, zero, full,
//!   random, urandom, tty, a new `/dev/pts` and `/dev/shm`), `/sys` read-only and a fresh
//!   tmpfs on `/run`. None of them is ever packed.
//! - [`PROJECT_MOUNT`]: exactly the node's inputs, read-only, at their project-relative
//!   paths, on a read-only tmpfs, and the working directory. Any other project file is
//!   simply not there, so a step that reads an undeclared file fails, naming it.
//! - With network `host`, the host's network and its `/etc/resolv.conf`, bound read-only
//!   over the image's (or onto what the image's symlink names, inside the image); with
//!   `none`, a network namespace of its own with only loopback.
//!
//! # Why it is a boundary
//!
//! When imgraph runs as root, the command runs as root *without a user namespace*: uid 0
//! owns the image's files, so apt can `setgroups`/`setuid` to `_apt`, dpkg and useradd can
//! `chown`, exactly as on a machine. What makes it a sandbox is what it cannot do:
//!
//! - its capabilities are the short list in [`CAPABILITIES`] (Docker's default set less
//!   `CAP_MKNOD` and `CAP_NET_RAW`): no `CAP_SYS_ADMIN` (no mount, remount or
//!   namespace-owning tricks), no `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_PTRACE`,
//!   `CAP_NET_ADMIN`, `CAP_DAC_READ_SEARCH` (`open_by_handle_at`), and bwrap sets
//!   `NO_NEW_PRIVS`, so no setuid file or file capability gives any back;
//! - `/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq`, `/proc/bus` and `/proc/fs` are
//!   read-only binds, because writing them needs only uid 0 (`core_pattern` is global);
//!   `/proc/keys` and `/proc/key-users` are empty (uid 0 may view the host root's keys);
//! - a system call filter ([`super::seccomp`]) refuses the kernel keyrings, new user
//!   namespaces and calls that act on the whole machine;
//! - new pid, ipc, uts and cgroup namespaces (and net, for `none`): host processes are
//!   invisible, and every process dies with the sandbox (`--die-with-parent`; the
//!   sandbox's pid 1 takes its namespace with it); `--new-session` keeps it off the
//!   caller's terminal;
//! - the project, the state file, the store and the logs are not in its file system at
//!   all; the inputs it sees are read-only mounts it cannot remount;
//! - a nested user namespace is refused by the filter, and would hold only locked copies
//!   of these mounts anyway, so it could not make them writable either;
//! - its environment is [`crate::process::command_env`]: nothing of imgraph's own.
//!
//! Mount destinations are resolved inside the image first
//! ([`super::tree::resolve_in_image`]) and created by imgraph, never by bwrap: bwrap
//! creates missing destinations while the host's root is still reachable, so an image
//! whose `/tmp` is a symlink to `/oldroot/...` would otherwise have it write on the host.
//! Whatever imgraph creates for a mount is removed after the command ([`Prepared::finish`]).
//!
//! When imgraph does not run as root, bwrap runs in a user namespace of its own with the
//! caller mapped to uid 0 and no capabilities: steps that write files work (they belong to
//! the caller), while changing owners, `setgroups`/`setuid` (apt's `_apt` sandbox; use
//! `-o APT::Sandbox::User=root`), and anything else that needs a capability fail.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::tree::{make_folders, resolve_in_image};
use super::{io_err, running_as_root, LocalError};
use crate::provider::{NodeInput, NodeInputKind};

/// Where a command's inputs appear (read-only) and its working directory.
pub const PROJECT_MOUNT: &str = "/tmp/imgraph-project";

/// The capabilities a command keeps when imgraph runs as root: what package managers
/// and account tools need (`chown`, modes, `setuid`/`setgroups`, binding low ports, file
/// capabilities) and nothing that acts on the host.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_SETFCAP",
    "CAP_AUDIT_WRITE",
];

/// The host name inside every sandbox: a constant, so nothing a step writes depends on
/// which machine built it (ssh host key comments, `/etc/hosts` written by scripts).
pub const HOSTNAME: &str = "localhost";

/// `/proc` entries that only uid 0 is needed to write, bound read-only from the host.
const READ_ONLY_PROC: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// `/proc` entries that show the host's secrets to uid 0, hidden behind `/dev/null`.
const HIDDEN_PROC: &[&str] = &["/proc/keys", "/proc/key-users"];

/// Everything that decides one sandboxed command's view.
#[derive(Debug, Clone)]
pub struct SandboxSpec<'a> {
    /// The image root on the host.
    pub root: &'a Path,
    /// The project folder on the host (inputs are relative to it).
    pub project: &'a Path,
    pub inputs: &'a [NodeInput],
    /// The host's network (and resolver) or a namespace with loopback only.
    pub host_network: bool,
}

/// A sandbox ready to run: the bwrap arguments (up to, not including, the command) and
/// what was created in the image for its mounts.
#[derive(Debug)]
pub struct Prepared {
    pub argv: Vec<String>,
    /// The system call filter bwrap reads from fd 3 ([`super::seccomp`]), when the
    /// arguments ask for one.
    pub seccomp: Option<Vec<u8>>,
    /// Paths created in the image for mounts, in creation order.
    created: Vec<PathBuf>,
}

impl Prepared {
    /// Removes what [`prepare`] created in the image (empty folders and empty files
    /// only; anything a command left in them stays), latest first.
    pub fn finish(self) -> Result<(), LocalError> {
        for path in self.created.into_iter().rev() {
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LocalError::io("read", &path, e)),
            };
            let result = if meta.is_dir() {
                fs::remove_dir(&path)
            } else if meta.is_file() && meta.len() == 0 {
                fs::remove_file(&path)
            } else {
                continue;
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
                Err(e) => return Err(LocalError::io("remove the mount point", &path, e)),
            }
        }
        Ok(())
    }
}

/// Prepares the image for a sandboxed command and builds bwrap's arguments.
pub fn prepare(spec: &SandboxSpec<'_>) -> Result<Prepared, LocalError> {
    let mut created = Vec::new();
    let mut args: Vec<String> = vec!["bwrap".into()];
    let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));

    push(&["--bind", &path_str(spec.root), "/"]);

    let proc = mount_dir(spec.root, "/proc", &mut created)?;
    push(&["--proc", &proc]);
    for entry in READ_ONLY_PROC {
        let under = entry.strip_prefix("/proc").unwrap_or(entry);
        push(&["--ro-bind-try", entry, &format!("{proc}{under}")]);
    }
    // The keys uid 0 may view include the host root's own keyrings.
    for entry in HIDDEN_PROC {
        if Path::new(entry).exists() {
            let under = entry.strip_prefix("/proc").unwrap_or(entry);
            push(&["--ro-bind", "/dev/null", &format!("{proc}{under}")]);
        }
    }
    let dev = mount_dir(spec.root, "/dev", &mut created)?;
    push(&["--dev", &dev]);
    let sys = mount_dir(spec.root, "/sys", &mut created)?;
    push(&["--ro-bind", "/sys", &sys]);
    let run = mount_dir(spec.root, "/run", &mut created)?;
    push(&["--tmpfs", &run]);

    if spec.host_network {
        if let Some(dest) = resolver_mount(spec.root, &run, &mut created)? {
            push(&["--ro-bind", "/etc/resolv.conf", &dest]);
        }
    }

    // The image's own /tmp stays; the project's inputs go on a tmpfs inside it.
    let tmp_rel = resolve_in_image(spec.root, Path::new("/tmp"), true)?;
    if !spec.root.join(&tmp_rel).exists() {
        make_folders(spec.root, &tmp_rel)?;
        let tmp = spec.root.join(&tmp_rel);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
            .map_err(io_err("set the mode of", &tmp))?;
    }
    let project = mount_dir(spec.root, PROJECT_MOUNT, &mut created)?;
    push(&["--tmpfs", &project]);
    let mut folders: Vec<String> = Vec::new();
    for input in spec.inputs {
        let dest = format!("{project}/{}", input.path);
        let mut parent = Path::new(&input.path).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let folder = format!("{project}/{}", p.display());
            if folders.contains(&folder) {
                break;
            }
            missing.push(folder);
            parent = p.parent();
        }
        for folder in missing.into_iter().rev() {
            push(&["--perms", "0755", "--dir", &folder]);
            folders.push(folder);
        }
        let source = path_str(&spec.project.join(&input.path));
        match input.kind {
            NodeInputKind::File => push(&["--ro-bind", &source, &dest]),
            NodeInputKind::Dir => {
                push(&["--perms", "0755", "--dir", &dest]);
                folders.push(dest);
            }
            NodeInputKind::Symlink => {
                let link = spec.project.join(&input.path);
                let target = fs::read_link(&link).map_err(io_err("read symlink", &link))?;
                push(&["--symlink", &path_str(&target), &dest]);
            }
        }
    }
    push(&["--remount-ro", &project, "--chdir", &project]);

    push(&[
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]);
    if !spec.host_network {
        push(&["--unshare-net"]);
    }
    push(&["--hostname", HOSTNAME, "--die-with-parent", "--new-session"]);
    if running_as_root() {
        push(&["--cap-drop", "ALL"]);
        for cap in CAPABILITIES {
            push(&["--cap-add", cap]);
        }
    } else {
        push(&["--unshare-user", "--uid", "0", "--gid", "0"]);
    }
    let seccomp = super::seccomp::program();
    if seccomp.is_some() {
        push(&["--seccomp", "3"]);
    }
    Ok(Prepared {
        argv: args,
        seccomp,
        created,
    })
}

/// Makes an in-image folder exist for a mount and returns the in-image path bwrap gets
/// (symlinks resolved inside the image, so bwrap follows none).
fn mount_dir(root: &Path, at: &str, created: &mut Vec<PathBuf>) -> Result<String, LocalError> {
    let rel = resolve_in_image(root, Path::new(at), true)?;
    ensure_folders(root, &rel, created)?;
    Ok(format!("/{}", rel.display()))
}

/// [`make_folders`], recording what it created.
fn ensure_folders(root: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<(), LocalError> {
    created.extend(make_folders(root, rel)?);
    Ok(())
}

/// Where the host's `/etc/resolv.conf` is bound: the image's `/etc/resolv.conf`, or the
/// file its symlink names (inside the image). A missing file is created empty (and
/// removed afterwards); a target under `/run` lives on the sandbox's tmpfs. `None` when
/// the image has a folder there.
fn resolver_mount(
    root: &Path,
    run: &str,
    created: &mut Vec<PathBuf>,
) -> Result<Option<String>, LocalError> {
    let rel = resolve_in_image(root, Path::new("/etc/resolv.conf"), true)?;
    let in_image = format!("/{}", rel.display());
    if Path::new(&in_image).starts_with(run) {
        // bwrap creates it on the tmpfs it mounted there, never on disk.
        return Ok(Some(in_image));
    }
    let host = root.join(&rel);
    match fs::symlink_metadata(&host) {
        Ok(meta) if meta.is_dir() => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = rel.parent() {
                ensure_folders(root, parent, created)?;
            }
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&host)
                .map_err(io_err("create the mount point", &host))?;
            created.push(host);
        }
        Err(e) => return Err(LocalError::io("read", &host, e)),
    }
    Ok(Some(in_image))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
