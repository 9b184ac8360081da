//! Copying into and removing image trees without ever following a symlink.
//!
//! An image root is full of symlinks that make sense only inside the image (`/etc/mtab ->
//! /proc/self/mounts`, `/lib -> usr/lib`). On the host, following one would read or write
//! the host's files, so every path here is resolved component by component with
//! `symlink_metadata`: [`copy_into`] refuses an in-image destination whose parent folders
//! include a symlink ([`LocalError::UnsafeEntry`]), replaces a symlink that sits where a
//! file goes instead of writing through it, and copies symlinks from the project as links.
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

use walkdir::WalkDir;

use super::pack::open_readable;
use super::unpack::prepare_dest;
use super::{io_err, LocalError};

/// A directory whose final mode (and owner) is set once its contents are in place.
struct PendingDir {
    path: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
}

/// Copies the directory `src` into `dest` (empty or missing), keeping modes and symlinks,
/// and uid/gid when `preserve_owner`. Fifos, sockets and devices are skipped with a warning.
pub(crate) fn copy_tree(src: &Path, dest: &Path, preserve_owner: bool) -> Result<(), LocalError> {
    prepare_dest(dest)?;
    let mut dirs = Vec::new();
    let walk = WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1);
    for entry in walk {
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
            copy_file(entry.path(), &meta, &target, owner)?;
        } else if kind.is_symlink() {
            copy_symlink(entry.path(), &target, owner)?;
        } else {
            warn_skipped(entry.path());
        }
    }
    finish_dirs(dirs)
}

/// Copy a project file or directory into an image root at an absolute in-image path
/// (`to`), creating missing parent folders (mode 0755); preserves modes and symlinks
/// (links are copied as links, never followed).
///
/// `to` is read from the image root whether or not it starts with `/`; a `..` component,
/// or a parent folder of `to` that is a symlink inside the image, is refused with
/// [`LocalError::UnsafeEntry`]. A directory is merged into an existing directory at `to`;
/// an existing file or symlink at a path being written is replaced; a file never replaces
/// a directory or the other way round.
pub fn copy_into(from: &Path, root: &Path, to: &str) -> Result<(), LocalError> {
    let unsafe_to = |entry: &Path| LocalError::UnsafeEntry {
        path: root.to_path_buf(),
        entry: entry.display().to_string(),
    };
    let mut rel = PathBuf::new();
    for comp in Path::new(to).components() {
        match comp {
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(unsafe_to(Path::new(to))),
        }
    }
    let from_meta = fs::symlink_metadata(from).map_err(io_err("read", from))?;

    // Walk down to the parent of `to`, creating what is missing, refusing symlinks.
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for comp in parent.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(meta) if meta.file_type().is_symlink() => return Err(unsafe_to(Path::new(to))),
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
                }
                Err(e) => return Err(LocalError::io("read", &cur, e)),
            }
        }
    }
    let target = root.join(&rel);

    if !from_meta.is_dir() {
        return copy_leaf(from, &from_meta, &target);
    }

    let mut dirs = Vec::new();
    // `from` is known to be a real directory here, so following the walk root is moot.
    let walk = WalkDir::new(from).follow_links(false).sort_by_file_name();
    for entry in walk {
        let entry = entry.map_err(|e| walk_error(e, from))?;
        let sub = relative(entry.path(), from)?;
        let dest = if sub.as_os_str().is_empty() {
            target.clone()
        } else {
            target.join(sub)
        };
        let meta =
            fs::symlink_metadata(entry.path()).map_err(io_err("read metadata of", entry.path()))?;
        if meta.is_dir() {
            // Pre-order walk: every folder is checked here before anything is written in
            // it, so no write below can pass through a symlink.
            match fs::symlink_metadata(&dest) {
                Ok(existing) if existing.file_type().is_symlink() => {
                    return Err(unsafe_to(&Path::new("/").join(rel.join(sub))))
                }
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
            copy_leaf(entry.path(), &meta, &dest)?;
        }
    }
    finish_dirs(dirs)
}

/// Copies a file or symlink to `dest`, replacing a file or symlink already there.
fn copy_leaf(src: &Path, meta: &fs::Metadata, dest: &Path) -> Result<(), LocalError> {
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
        copy_file(src, meta, dest, None)
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
) -> Result<(), LocalError> {
    let mut input = open_readable(src, meta)?;
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
pub fn remove_tree(path: &Path) -> Result<(), LocalError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LocalError::io("read", path, e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(io_err("remove", path));
    }
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
