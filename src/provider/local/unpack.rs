//! Safe tar extraction, shared by origins (which come from outside) and stored artifacts.
//!
//! Each entry is checked before anything is written: an absolute path or a `..` component
//! (in the name, or in a hard link's target) is refused with [`LocalError::UnsafeEntry`]
//! rather than skipped, because a silently incomplete root file system is worse than a
//! clear error. Writes then go through the tar crate's `unpack_in`, which resolves each
//! parent folder and refuses to write through a symlink that leads out of the destination;
//! such a refusal is reported as [`LocalError::UnsafeEntry`] too. Symlinks themselves are
//! created as recorded, absolute targets included, and never followed.
//!
//! Permissions are restored in full (setuid included). Ownership is restored only when
//! running as root. Directories are created first as plain folders and get their recorded
//! modes last, deepest first, so a read-only directory does not block its own contents.
//! Device nodes and fifos are skipped with a warning, as [`super::pack`] skips them.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;
use tokio_util::sync::CancellationToken;

use super::{check_cancel, io_err, running_as_root, unless_cancelled, Cancellable, LocalError};

/// Makes sure `dest` is an empty directory, creating it (and its parents) if needed.
pub(crate) fn prepare_dest(dest: &Path) -> Result<(), LocalError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(dest).map_err(io_err("read destination", dest))?;
            if entries.next().is_some() {
                return Err(LocalError::io(
                    "unpack into",
                    dest,
                    io::Error::new(io::ErrorKind::DirectoryNotEmpty, "the folder is not empty"),
                ));
            }
            Ok(())
        }
        Ok(_) => Err(LocalError::io(
            "unpack into",
            dest,
            io::Error::new(io::ErrorKind::AlreadyExists, "a file is in the way"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_err("create destination", dest))
        }
        Err(e) => Err(LocalError::io("read destination", dest, e)),
    }
}

/// Unpacks the tar stream `reader` into `dest` (empty or missing). `source` names the
/// archive in errors. Stops with [`LocalError::Cancelled`] once `cancel` is cancelled.
pub(crate) fn unpack_tar<R: Read>(
    reader: R,
    dest: &Path,
    source: &Path,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    let reader = EofWatch::new(Cancellable {
        inner: reader,
        cancel,
    });
    unless_cancelled(cancel, unpack_entries(reader, dest, source, cancel))
}

/// Bytes of decompressed archive a [`read_ahead`] thread may hold ahead of the reader.
const READ_AHEAD_CHUNK: usize = 256 * 1024;
const READ_AHEAD_CHUNKS: usize = 4;

/// Reads `inner` (a decompressor) on a thread of its own, up to one MiB ahead, so that
/// decompressing overlaps creating files, as `zstd -d | tar -x` overlaps them in two
/// processes. The thread ends at the stream's end, at its first error (handed to the
/// reader as that read's error) or when the reader is dropped (its next send fails).
/// Fails when the thread cannot be started.
pub(crate) fn read_ahead<R: Read + Send + 'static>(inner: R) -> io::Result<impl Read> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(READ_AHEAD_CHUNKS);
    let thread = std::thread::Builder::new()
        .name("imgraph-read-ahead".into())
        .spawn(move || {
            let mut inner = inner;
            loop {
                let mut chunk = vec![0; READ_AHEAD_CHUNK];
                let (n, error) = read_full(&mut inner, &mut chunk);
                chunk.truncate(n);
                // The bytes read before an error go first, then the error.
                if n > 0 && tx.send(Ok(chunk)).is_err() {
                    break;
                }
                if let Some(e) = error {
                    let _ = tx.send(Err(e));
                    break;
                }
                if n < READ_AHEAD_CHUNK {
                    break;
                }
            }
        })?;
    Ok(ReadAhead {
        rx: Some(rx),
        chunk: Vec::new(),
        at: 0,
        thread: Some(thread),
    })
}

/// Fills `buf` as far as the stream allows (fewer bytes only at its end or at an error),
/// returning how many bytes it holds and the error that stopped it, if any.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

struct ReadAhead {
    /// `None` only while being dropped.
    rx: Option<std::sync::mpsc::Receiver<io::Result<Vec<u8>>>>,
    chunk: Vec<u8>,
    at: usize,
    /// Joined when the reader is dropped, so no thread outlives the unpack.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The thread ended after sending everything: the end of the stream.
                Err(std::sync::mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Letting go of the receiver makes the thread's next send fail, so it ends after
        // at most the read it is in; then it is joined (a panic in it was already seen by
        // the reader as the end of the stream, which the tar checks refuse).
        self.rx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the tar stream `reader` to its end without writing anything, with the checks
/// an unpack makes: every entry name safe, every entry complete, the end-of-archive
/// marker present. `source` names the archive in errors.
pub(crate) fn check_tar<R: Read>(
    reader: R,
    source: &Path,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    let reader = EofWatch::new(Cancellable {
        inner: reader,
        cancel,
    });
    let ended = reader.ended.clone();
    let checked = (|| {
        let mut archive = tar::Archive::new(reader);
        let read_err = |e| LocalError::io("read archive", source, e);
        for entry in archive.entries().map_err(read_err)? {
            check_cancel(cancel)?;
            let mut entry = entry.map_err(read_err)?;
            let name = entry.path_bytes().into_owned();
            let link = entry.link_name_bytes().map(|t| t.into_owned());
            let hard_link = entry.header().entry_type() == EntryType::Link;
            if !is_safe_relative(&name)
                || (hard_link && !link.as_deref().is_some_and(is_safe_relative))
            {
                return Err(LocalError::UnsafeEntry {
                    path: source.to_path_buf(),
                    entry: String::from_utf8_lossy(&name).into_owned(),
                });
            }
            io::copy(&mut entry, &mut io::sink()).map_err(read_err)?;
        }
        end_marker(&ended, source)
    })();
    unless_cancelled(cancel, checked)
}

/// An archive whose entries ran into the end of the stream, instead of into the zero
/// block that ends every tar archive, was cut short at an entry boundary: the tar crate
/// reads that as a normal end, which would silently unpack part of an image.
fn end_marker(ended: &std::rc::Rc<std::cell::Cell<bool>>, source: &Path) -> Result<(), LocalError> {
    if ended.get() {
        return Err(LocalError::Corrupt {
            path: source.to_path_buf(),
            detail: "the archive ends without its end-of-archive marker: it was cut short".into(),
        });
    }
    Ok(())
}

/// Notes whether a read ever hit the end of the stream.
struct EofWatch<R> {
    inner: R,
    ended: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R> EofWatch<R> {
    fn new(inner: R) -> Self {
        EofWatch {
            inner,
            ended: Default::default(),
        }
    }
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.set(true);
        }
        Ok(n)
    }
}

fn unpack_entries<R: Read>(
    reader: EofWatch<R>,
    dest: &Path,
    source: &Path,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    prepare_dest(dest)?;
    let ended = reader.ended.clone();
    let dest = dest
        .canonicalize()
        .map_err(io_err("resolve destination", dest))?;

    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(running_as_root());
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);

    let read_err = |e| LocalError::io("read archive", source, e);
    // Directory entries wait until the end; see the module docs.
    let mut directories = Vec::new();
    let mut wrote_a_file = false;
    for entry in archive.entries().map_err(read_err)? {
        check_cancel(cancel)?;
        let mut entry = entry.map_err(read_err)?;
        let name = entry.path_bytes().into_owned();
        let unsafe_entry = || LocalError::UnsafeEntry {
            path: source.to_path_buf(),
            entry: String::from_utf8_lossy(&name).into_owned(),
        };
        if !is_safe_relative(&name) {
            return Err(unsafe_entry());
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                directories.push((name, entry));
                continue;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                tracing::warn!(
                    archive = %source.display(),
                    entry = %String::from_utf8_lossy(&name),
                    "skipping a device node or fifo: images hold only directories, files and symlinks"
                );
                continue;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                if !target.as_deref().is_some_and(is_safe_relative) {
                    return Err(unsafe_entry());
                }
            }
            _ => {}
        }
        match entry.unpack_in(&dest) {
            Ok(true) if kind.is_file() && !wrote_a_file => {
                wrote_a_file = true;
                crate::crash::point("unpack: partway");
            }
            Ok(true) => {}
            Ok(false) => return Err(unsafe_entry()),
            Err(e) => {
                let link = entry.link_name_bytes().map(|t| t.into_owned());
                if escapes(&dest, &name, kind, link.as_deref()) {
                    return Err(unsafe_entry());
                }
                return Err(unpack_error(&dest, &name, e));
            }
        }
    }

    end_marker(&ended, source)?;

    // Deepest first, so a parent's restrictive mode is applied after its children's.
    directories.sort_by(|a, b| b.0.cmp(&a.0));
    for (name, mut entry) in directories {
        match entry.unpack_in(&dest) {
            Ok(true) => {}
            Ok(false) => {
                return Err(LocalError::UnsafeEntry {
                    path: source.to_path_buf(),
                    entry: String::from_utf8_lossy(&name).into_owned(),
                })
            }
            Err(e) => {
                if escapes(&dest, &name, EntryType::Directory, None) {
                    return Err(LocalError::UnsafeEntry {
                        path: source.to_path_buf(),
                        entry: String::from_utf8_lossy(&name).into_owned(),
                    });
                }
                return Err(unpack_error(&dest, &name, e));
            }
        }
    }
    Ok(())
}

fn unpack_error(dest: &Path, name: &[u8], source: io::Error) -> LocalError {
    LocalError::io(
        format!("unpack entry `{}` into", String::from_utf8_lossy(name)),
        dest,
        source,
    )
}

/// A relative path without `..`: the only entry names (and hard link targets) that can
/// stay inside the destination by construction.
pub(crate) fn is_safe_relative(name: &[u8]) -> bool {
    !name.is_empty() && !name.starts_with(b"/") && name.split(|&b| b == b'/').all(|c| c != b"..")
}

/// After a failed write: did the entry fail because a folder on its way (or a hard link's
/// target) resolves outside `dest`? Then it is an unsafe entry, not an I/O problem.
fn escapes(dest: &Path, name: &[u8], kind: EntryType, link: Option<&[u8]>) -> bool {
    let rel = bytes_to_path(name);
    // The entry itself is replaced, never written through, so only its parents count.
    let parents = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    if walks_through_outside_link(dest, &parents) {
        return true;
    }
    if kind == EntryType::Link {
        if let Some(target) = link {
            return walks_through_outside_link(dest, &bytes_to_path(target));
        }
    }
    false
}

/// Whether some prefix of `rel` under `dest` is a symlink that resolves outside `dest`
/// (or cannot be resolved at all, as with an absolute link to a host path that is missing).
fn walks_through_outside_link(dest: &Path, rel: &Path) -> bool {
    let mut cur = dest.to_path_buf();
    for comp in rel.components() {
        match comp {
            Component::Normal(part) => cur.push(part),
            _ => continue,
        }
        match fs::symlink_metadata(&cur) {
            Ok(meta) if meta.file_type().is_symlink() => match cur.canonicalize() {
                Ok(resolved) if resolved.starts_with(dest) => {}
                _ => return true,
            },
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}
