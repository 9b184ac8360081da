//! Copying into and removing image trees without ever following a symlink.
//!
//! An image root is full of symlinks that make sense only inside the image (`/etc/mtab ->
//! /proc/self/mounts`, `/sbin -> usr/sbin`). On the host, following one would read or write
//! the host's files, so the host never follows them: [`resolve_in_image`] reads each link
//! itself and resolves it *within the image root*, as the image would see it (an absolute
//! target starts again at the root, `..` stops at the root). [`copy_into`] resolves the
//! parent folders of its destination that way (so `to="/sbin/tool"` lands in `usr/sbin`
//! on a merged-/usr root), replaces a symlink that sits where a file goes instead of
//! writing through it, and copies symlinks from the project as links.
//!
//! Directory modes are applied after their contents are written, deepest first, so a
//! read-only folder (in the project or in an origin) can still be filled. Ownership is
//! kept for directory origins when running as root (they are images); files copied from
//! the project belong to whoever runs the build (as root, that is root, which is what an
//! image wants).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tokio_util::sync::CancellationToken;
use walkdir::WalkDir;

use super::pack::open_readable;
use super::unpack::prepare_dest;
use super::{check_cancel, io_err, unless_cancelled, Cancellable, LocalError};

/// A directory whose final mode (and owner) is set once its contents are in place.
struct PendingDir {
    path: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
}

/// Copies the directory `src` into `dest` (empty or missing), keeping modes and symlinks,
/// and uid/gid when `preserve_owner`. Fifos, sockets and devices are skipped with a warning.
pub(crate) fn copy_tree(
    src: &Path,
    dest: &Path,
    preserve_owner: bool,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    unless_cancelled(cancel, copy_tree_entries(src, dest, preserve_owner, cancel))
}

fn copy_tree_entries(
    src: &Path,
    dest: &Path,
    preserve_owner: bool,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    prepare_dest(dest)?;
    let mut dirs = Vec::new();
    let walk = WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1);
    for entry in walk {
        check_cancel(cancel)?;
        let entry = entry.map_err(|e| walk_error(e, src))?;
        let rel = relative(entry.path(), src)?;
        let target = dest.join(rel);
        let meta =
            fs::symlink_metadata(entry.path()).map_err(io_err("read metadata of", entry.path()))?;
        let owner = preserve_owner.then(|| (meta.uid(), meta.gid()));
        let kind = meta.file_type();
        if kind.is_dir() {
            create_dir(&target)?;
            dirs.push(PendingDir {
                path: target,
                mode: meta.mode() & 0o7777,
                owner,
            });
        } else if kind.is_file() {
            copy_file(entry.path(), &meta, &target, owner, cancel)?;
        } else if kind.is_symlink() {
            copy_symlink(entry.path(), &target, owner)?;
        } else {
            warn_skipped(entry.path());
        }
    }
    finish_dirs(dirs)
}

/// How many symlinks one in-image path may pass through (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Resolves an in-image path (absolute or not, read from the image root) to the path
/// relative to `root` that the image itself would reach, following symlinks as the image
/// sees them: an absolute target starts again at the root, and `..` never climbs above it.
/// The last component is followed only when `follow_last`; components that do not exist
/// (yet) are kept as written. The result has no symlink among its existing components and
/// always lies inside `root`.
pub fn resolve_in_image(
    root: &Path,
    path: &Path,
    follow_last: bool,
) -> Result<PathBuf, LocalError> {
    let too_many = || {
        LocalError::io(
            "resolve",
            &root.join(path.strip_prefix("/").unwrap_or(path)),
            io::Error::other("too many levels of symbolic links inside the image"),
        )
    };
    let mut pending: Vec<std::ffi::OsString> = components_of(path);
    pending.reverse();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let last = pending.is_empty();
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() && (!last || follow_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(too_many());
                }
                let host = root.join(&candidate);
                let target = fs::read_link(&host).map_err(io_err("read symlink", &host))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut more = components_of(&target);
                more.reverse();
                pending.extend(more);
            }
            Ok(_) => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => resolved = candidate,
            Err(e) => return Err(LocalError::io("read", &root.join(&candidate), e)),
        }
    }
    Ok(resolved)
}

/// The normal and `..` components of a path, `/` and `.` left out.
fn components_of(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Makes every folder of `rel` (relative to `root`, free of symlinks, see
/// [`resolve_in_image`]) exist, creating missing ones with mode 0755; returns the ones
/// it created, outermost first.
pub(crate) fn make_folders(root: &Path, rel: &Path) -> Result<Vec<PathBuf>, LocalError> {
    let mut created = Vec::new();
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(LocalError::io(
                    "create folder",
                    &cur,
                    io::Error::new(io::ErrorKind::NotADirectory, "a file is in the way"),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(io_err("create folder", &cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("set the mode of", &cur))?;
                created.push(cur.clone());
            }
            Err(e) => return Err(LocalError::io("read", &cur, e)),
        }
    }
    Ok(created)
}

/// Copy a project file or directory into an image root at an absolute in-image path
/// (`to`), creating missing parent folders (mode 0755); preserves modes and symlinks
/// (links are copied as links, never followed).
///
/// `to` is read from the image root whether or not it starts with `/`; a `..` component
/// in it is refused with [`LocalError::UnsafeEntry`]. Symlinks among the folders on the
/// way are resolved inside the image ([`resolve_in_image`]), as the image would: with
/// `/sbin -> usr/sbin`, `to="/sbin/tool"` writes `usr/sbin/tool`. A directory is merged
/// into an existing directory at `to` (or one a symlink there leads to, inside the image);
/// an existing file or symlink at a path being written is replaced; a file never replaces
/// a directory or the other way round. Stops with [`LocalError::Cancelled`] once `cancel`
/// is cancelled.
pub fn copy_into(
    from: &Path,
    root: &Path,
    to: &str,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    unless_cancelled(cancel, copy_into_entries(from, root, to, cancel))
}

fn copy_into_entries(
    from: &Path,
    root: &Path,
    to: &str,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    let to_path = Path::new(to);
    if to_path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(LocalError::UnsafeEntry {
            path: root.to_path_buf(),
            entry: to.to_string(),
        });
    }
    let from_meta = fs::symlink_metadata(from).map_err(io_err("read", from))?;

    if !from_meta.is_dir() {
        let rel = resolve_in_image(root, to_path, false)?;
        if let Some(parent) = rel.parent() {
            make_folders(root, parent)?;
        }
        return copy_leaf(from, &from_meta, &root.join(rel), cancel);
    }

    let mut dirs = Vec::new();
    // `from` is known to be a real directory here, so following the walk root is moot.
    let walk = WalkDir::new(from).follow_links(false).sort_by_file_name();
    for entry in walk {
        check_cancel(cancel)?;
        let entry = entry.map_err(|e| walk_error(e, from))?;
        let sub = relative(entry.path(), from)?;
        let meta =
            fs::symlink_metadata(entry.path()).map_err(io_err("read metadata of", entry.path()))?;
        // Pre-order walk: each entry's folders were made (or found) before it, and every
        // path is resolved inside the image again, so no write can pass through a link
        // that leads out of it.
        let rel = resolve_in_image(root, &to_path.join(sub), meta.is_dir())?;
        if let Some(parent) = rel.parent() {
            make_folders(root, parent)?;
        }
        let dest = root.join(&rel);
        if meta.is_dir() {
            match fs::symlink_metadata(&dest) {
                Ok(existing) if existing.is_dir() => {}
                Ok(_) => {
                    return Err(LocalError::io(
                        "copy a folder to",
                        &dest,
                        io::Error::new(io::ErrorKind::AlreadyExists, "a file is in the way"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&dest)?,
                Err(e) => return Err(LocalError::io("read", &dest, e)),
            }
            dirs.push(PendingDir {
                path: dest,
                mode: meta.mode() & 0o7777,
                owner: None,
            });
        } else {
            copy_leaf(entry.path(), &meta, &dest, cancel)?;
        }
    }
    finish_dirs(dirs)
}

/// Copies a file or symlink to `dest`, replacing a file or symlink already there.
fn copy_leaf(
    src: &Path,
    meta: &fs::Metadata,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_symlink() {
        warn_skipped(src);
        return Ok(());
    }
    match fs::symlink_metadata(dest) {
        Ok(existing) if existing.is_dir() => {
            return Err(LocalError::io(
                "copy a file to",
                dest,
                io::Error::new(io::ErrorKind::IsADirectory, "a folder is in the way"),
            ))
        }
        // Unlinking replaces a symlink instead of writing to wherever it points.
        Ok(_) => fs::remove_file(dest).map_err(io_err("replace", dest))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LocalError::io("read", dest, e)),
    }
    if kind.is_file() {
        copy_file(src, meta, dest, None, cancel)
    } else {
        copy_symlink(src, dest, None)
    }
}

/// Creates a folder that only its owner can use yet; [`finish_dirs`] sets its real mode.
fn create_dir(path: &Path) -> Result<(), LocalError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(io_err("create folder", path))
}

fn copy_file(
    src: &Path,
    meta: &fs::Metadata,
    dest: &Path,
    owner: Option<(u32, u32)>,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    let mut input = Cancellable {
        inner: open_readable(src, meta)?,
        cancel,
    };
    // `create_new` (O_EXCL) refuses to open through a symlink that appeared meanwhile.
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io_err("create", dest))?;
    io::copy(&mut input, &mut output)
        .map_err(|e| LocalError::io(format!("copy `{}` to", src.display()), dest, e))?;
    // Ownership first: chown clears setuid/setgid, the mode then puts them back.
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&output, Some(uid), Some(gid))
            .map_err(io_err("set the owner of", dest))?;
    }
    output
        .set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("set the mode of", dest))
}

fn copy_symlink(src: &Path, dest: &Path, owner: Option<(u32, u32)>) -> Result<(), LocalError> {
    let target = fs::read_link(src).map_err(io_err("read symlink", src))?;
    std::os::unix::fs::symlink(&target, dest).map_err(io_err("create symlink", dest))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
            .map_err(io_err("set the owner of", dest))?;
    }
    Ok(())
}

/// Sets folder modes and owners, children before parents.
fn finish_dirs(dirs: Vec<PendingDir>) -> Result<(), LocalError> {
    for dir in dirs.into_iter().rev() {
        if let Some((uid, gid)) = dir.owner {
            std::os::unix::fs::lchown(&dir.path, Some(uid), Some(gid))
                .map_err(io_err("set the owner of", &dir.path))?;
        }
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))
            .map_err(io_err("set the mode of", &dir.path))?;
    }
    Ok(())
}

/// Remove a folder tree even if the image made some entries read-only (folders without
/// `u+rwx` get it, so their contents can be listed and unlinked). A missing path is not an
/// error: removal is what cleanup after a crash retries. A symlink is removed, not followed.
///
/// Removal never leaves the folder: mounts a step left below it are detached first
/// ([`super::mounts::release_mounts`]); one that cannot be detached fails the removal,
/// naming it, before anything is deleted.
pub fn remove_tree(path: &Path) -> Result<(), LocalError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LocalError::io("read", path, e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(io_err("remove", path));
    }
    super::mounts::release_mounts(path)?;
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    // Something refused: open up every folder that is not fully ours, then try again.
    make_dirs_writable(path)?;
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalError::io("remove", path, e)),
    }
}

/// Empties the image's `/tmp` before it is packed: what steps left there is scratch, not
/// part of the image. The folder itself and its mode stay; a `/tmp` that is not a real
/// folder of the image (a symlink) is left alone.
pub fn empty_tmp(root: &Path) -> Result<(), LocalError> {
    let tmp = root.join("tmp");
    match fs::symlink_metadata(&tmp) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LocalError::io("read", &tmp, e)),
    }
    for entry in fs::read_dir(&tmp).map_err(io_err("read folder", &tmp))? {
        let entry = entry.map_err(io_err("read folder", &tmp))?;
        remove_tree(&entry.path())?;
    }
    Ok(())
}

/// Creates a folder (and missing parents) that only imgraph's user can enter: staging
/// folders and test instances hold whole root file systems, setuid files included.
pub fn create_private_dir(path: &Path) -> Result<(), LocalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create folder", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(io_err("set the mode of", path))
}

fn make_dirs_writable(dir: &Path) -> Result<(), LocalError> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LocalError::io("read", dir, e)),
    };
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o700 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))
            .map_err(io_err("make writable", dir))?;
    }
    let entries = fs::read_dir(dir).map_err(io_err("read folder", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read folder", dir))?;
        // `file_type` does not follow symlinks, so a link to a folder elsewhere is left alone.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

fn relative<'a>(path: &'a Path, base: &Path) -> Result<&'a Path, LocalError> {
    path.strip_prefix(base)
        .map_err(|_| LocalError::io("walk", path, io::Error::other("the walk left its folder")))
}

fn walk_error(err: walkdir::Error, base: &Path) -> LocalError {
    let path = err.path().unwrap_or(base).to_path_buf();
    let source = err
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("file system loop"));
    LocalError::io("walk", &path, source)
}

fn warn_skipped(path: &Path) {
    tracing::warn!(
        path = %path.display(),
        "skipping a fifo, socket or device node: images hold only directories, files and symlinks"
    );
}
