//! Deterministic packing: the same tree gives the same `tar.zst` bytes, wherever and
//! whenever it is packed.
//!
//! What is kept, because it changes what the image does: relative paths, file contents,
//! permission bits (including setuid, setgid and sticky), numeric uid and gid as recorded
//! on disk, symlink targets byte for byte, and empty directories.
//!
//! What is normalised, because it changes with every unpack or copy and would make every
//! build a new image:
//! - the order of entries: the walk sorts each directory's names bytewise, so creation
//!   order and the file system's own order do not matter;
//! - times: every header's mtime is 0, and no atime/ctime or pax time records are written;
//! - user and group names: left empty, the numeric ids are what a root file system means;
//! - the tree root itself is not stored (its mode belongs to whoever unpacks the image);
//! - hard links are stored as separate regular files: link identity depends on how a tree
//!   was copied, not on what it contains, and unpacking gives each path its own copy;
//! - fifos, sockets and device nodes are skipped with a warning: an unprivileged build
//!   cannot recreate them, and a sandbox provides its own `/dev`;
//! - holes: a file of at least [`SPARSE_MIN_HOLES`] bytes of all-zero 4 KiB blocks is stored
//!   as a GNU sparse entry listing its non-zero blocks, and unpacking it leaves holes
//!   again. Which blocks are holes is read from the content (all-zero blocks), never from
//!   how a file system happened to allocate the file, so the bytes stay the same wherever
//!   the tree was made; the file system's own holes only spare reading them.
//!
//! Packing never leaves the tree: it refuses a tree with a mount point below it (naming
//! it; the build detaches what a step left before packing), does not cross into another
//! file system, and never follows a symlink.
//!
//! The header format is GNU throughout (long names and long link targets use GNU
//! `././@LongLink` records, whose own headers carry fixed fields), and compression is
//! zstd level 3 on one thread with a content checksum and no pledged size. Level and
//! threading both change the output bytes, so they are constants here. Artifact ids are
//! therefore stable for a given zstd library version; the lock file pins it, and an
//! upgrade that changes zstd's output gives new ids (a one-off rebuild), never a wrong one.
//!
//! The uid/gid are kept as recorded: a tree unpacked by root (who keeps ownership) and one
//! unpacked by an ordinary user (who owns everything) pack to different ids. That is
//! deliberate; they are different images.

use std::fs::{self, File};
use std::io::{self, Read, Seek as _, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, GnuExtSparseHeader, Header};
use tokio_util::sync::CancellationToken;
use walkdir::WalkDir;

use super::{check_cancel, effective_uid, io_err, unless_cancelled, Cancellable, LocalError};

/// zstd level: level 3 is zstd's default and packs a root file system in about the time it
/// takes to read it; higher levels cost far more time than they save in bytes.
pub const ZSTD_LEVEL: i32 = 3;

/// Writes the deterministic tar.zst of `tree` into `out`.
///
/// See the module docs for what is kept and what is normalised. Stops with
/// [`LocalError::Cancelled`] once `cancel` is cancelled.
pub fn pack_deterministic(
    tree: &Path,
    out: impl Write,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    unless_cancelled(cancel, pack_entries(tree, out, cancel))
}

fn pack_entries(
    tree: &Path,
    out: impl Write,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    let meta = fs::metadata(tree).map_err(io_err("read tree", tree))?;
    if !meta.is_dir() {
        return Err(LocalError::io(
            "pack tree",
            tree,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    if let Some(point) = super::mounts::mounts_under(tree)?.into_iter().next() {
        return Err(LocalError::MountLeft {
            path: point,
            detail: "packing never enters a mount point".into(),
        });
    }
    let write_err = io_err("write the archive of", tree);
    let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(write_err)?;
    encoder
        .include_checksum(true)
        .map_err(io_err("configure zstd for", tree))?;
    let mut builder = tar::Builder::new(encoder);

    let walk = WalkDir::new(tree)
        .follow_links(false)
        .follow_root_links(true)
        .same_file_system(true)
        .sort_by_file_name()
        .min_depth(1);
    for entry in walk {
        check_cancel(cancel)?;
        let entry = entry.map_err(|e| walk_error(e, tree))?;
        append_entry(&mut builder, tree, meta.dev(), entry.path(), cancel)?;
    }

    let encoder = builder
        .into_inner()
        .map_err(io_err("write the archive of", tree))?;
    let mut out = encoder
        .finish()
        .map_err(io_err("write the archive of", tree))?;
    out.flush().map_err(io_err("write the archive of", tree))?;
    Ok(())
}

fn walk_error(err: walkdir::Error, tree: &Path) -> LocalError {
    let path = err.path().unwrap_or(tree).to_path_buf();
    let source = err
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("file system loop"));
    LocalError::io("walk tree", &path, source)
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    tree: &Path,
    tree_dev: u64,
    path: &Path,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    let rel = path.strip_prefix(tree).map_err(|_| {
        LocalError::io(
            "walk tree",
            path,
            io::Error::other("the walk left the tree"),
        )
    })?;
    let meta = fs::symlink_metadata(path).map_err(io_err("read metadata of", path))?;
    if meta.dev() != tree_dev {
        // The walk does not enter another file system; its mount point is refused too.
        return Err(LocalError::MountLeft {
            path: path.to_path_buf(),
            detail: "packing never enters another file system".into(),
        });
    }
    let kind = meta.file_type();

    let mut header = Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(0);

    let append_err = io_err("pack", path);
    if kind.is_dir() {
        header.set_entry_type(EntryType::Directory);
        header.set_size(0);
        // The trailing slash is what tar tools expect of a directory name.
        let mut name = rel.as_os_str().to_owned();
        name.push("/");
        builder
            .append_data(&mut header, PathBuf::from(name), io::empty())
            .map_err(append_err)
    } else if kind.is_file() {
        let mut file = open_readable(path, &meta)?;
        if let Some(map) = sparse_map(&file, meta.len()).map_err(io_err("read", path))? {
            return append_sparse(builder, header, rel, file, map).map_err(append_err);
        }
        // Looking for holes moved the offset.
        file.seek(io::SeekFrom::Start(0))
            .map_err(io_err("read", path))?;
        header.set_entry_type(EntryType::Regular);
        header.set_size(meta.len());
        let data = ExactReader {
            inner: Cancellable {
                inner: file,
                cancel,
            },
            remaining: meta.len(),
        };
        builder
            .append_data(&mut header, rel, data)
            .map_err(append_err)
    } else if kind.is_symlink() {
        let target = fs::read_link(path).map_err(io_err("read symlink", path))?;
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        let bytes = target.as_os_str().as_bytes();
        if bytes.len() <= header.as_old().linkname.len() {
            // Literal bytes: `set_link_name` would normalise `a/./b` or `a//b`, and the
            // target must come back exactly as it was.
            header
                .set_link_name_literal(bytes)
                .map_err(io_err("pack", path))?;
            builder
                .append_data(&mut header, rel, io::empty())
                .map_err(append_err)
        } else {
            // Too long for the header: a GNU long-link record carries the raw bytes.
            builder
                .append_link(&mut header, rel, &target)
                .map_err(append_err)
        }
    } else {
        tracing::warn!(
            path = %path.display(),
            "skipping a fifo, socket or device node: images hold only directories, files and symlinks"
        );
        Ok(())
    }
}

/// The block size holes are counted in.
const HOLE_BLOCK: u64 = 4096;

/// The least number of bytes in all-zero blocks that makes a file a sparse entry. Below
/// it, storing a map costs more than it saves; above it are the files that matter
/// (disk and database images, `/var/log/lastlog`).
pub const SPARSE_MIN_HOLES: u64 = 1 << 20;

/// Where a sparse file's data is: `(offset, length)` runs of non-zero blocks, in order.
struct SparseMap {
    size: u64,
    data: Vec<(u64, u64)>,
}

impl SparseMap {
    fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, len)| len).sum()
    }
}

/// The data runs of `file` when its all-zero 4 KiB blocks (the last, partial one
/// included) add up to [`SPARSE_MIN_HOLES`] or more; `None` for an ordinary file.
///
/// Regions the file system reports as holes (`SEEK_DATA`) are known to be zero and are
/// not read; everything else is read and checked, so the map depends on the content only.
fn sparse_map(file: &File, size: u64) -> io::Result<Option<SparseMap>> {
    if size < SPARSE_MIN_HOLES {
        return Ok(None);
    }
    let blocks = size.div_ceil(HOLE_BLOCK);
    let mut data: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut block = 0;
    while block < blocks {
        // The next region that may hold data, in whole blocks.
        let Some(start) = next_data(file, block * HOLE_BLOCK)? else {
            break;
        };
        let first = start / HOLE_BLOCK;
        let end = next_hole(file, start)?.min(size);
        let last = end.div_ceil(HOLE_BLOCK).max(first + 1);
        let mut b = first;
        while b < last {
            let off = b * HOLE_BLOCK;
            let want = ((last - b) * HOLE_BLOCK)
                .min(buf.len() as u64)
                .min(size - off) as usize;
            let chunk = &mut buf[..want];
            file.read_exact_at(chunk, off)?;
            for (i, piece) in chunk.chunks(HOLE_BLOCK as usize).enumerate() {
                if piece.iter().all(|&x| x == 0) {
                    continue;
                }
                let at = off + i as u64 * HOLE_BLOCK;
                let len = piece.len() as u64;
                match data.last_mut() {
                    Some((o, l)) if *o + *l == at => *l += len,
                    _ => data.push((at, len)),
                }
            }
            b += chunk.len().div_ceil(HOLE_BLOCK as usize) as u64;
        }
        block = last;
    }
    let map = SparseMap { size, data };
    if size - map.data_len() < SPARSE_MIN_HOLES {
        return Ok(None);
    }
    Ok(Some(map))
}

/// `lseek(SEEK_DATA)`: the first offset at or after `from` that may hold data, `None` past
/// the last data. A file system without hole reporting has data everywhere.
fn next_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    Ok(match seek(file, from, libc::SEEK_DATA)? {
        Found::At(n) => Some(n),
        Found::End => None,
        Found::Unknown => Some(from),
    })
}

/// `lseek(SEEK_HOLE)`: the end of the data region that holds `from`.
fn next_hole(file: &File, from: u64) -> io::Result<u64> {
    Ok(match seek(file, from, libc::SEEK_HOLE)? {
        Found::At(n) => n,
        Found::End | Found::Unknown => u64::MAX,
    })
}

enum Found {
    At(u64),
    /// ENXIO: nothing of that kind at or after the offset.
    End,
    /// EINVAL: the file system cannot tell.
    Unknown,
}

fn seek(file: &File, from: u64, whence: i32) -> io::Result<Found> {
    let Ok(offset) = libc::off_t::try_from(from) else {
        return Ok(Found::Unknown);
    };
    // SAFETY: lseek on a file descriptor we own; it moves the offset only, and every read
    // here is positioned (`read_exact_at`), so the moved offset is never relied on.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if let Ok(at) = u64::try_from(r) {
        return Ok(Found::At(at));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENXIO) => Ok(Found::End),
        Some(libc::EINVAL) => Ok(Found::Unknown),
        _ => Err(err),
    }
}

/// Appends a GNU sparse entry (the old GNU format GNU tar and the tar crate read): the
/// first four runs in the header, the rest in extension headers, then the runs' bytes.
/// A file that ends in a hole gets a last, empty run at its size.
fn append_sparse<W: Write>(
    builder: &mut tar::Builder<W>,
    mut header: Header,
    rel: &Path,
    file: File,
    map: SparseMap,
) -> io::Result<()> {
    let mut runs = map.data.clone();
    if runs.last().is_none_or(|(o, l)| o + l < map.size) {
        runs.push((map.size, 0));
    }
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(map.data_len());
    let gnu = header
        .as_gnu_mut()
        .ok_or_else(|| io::Error::other("a sparse entry needs a GNU header"))?;
    gnu.set_real_size(map.size);
    let in_header = gnu.sparse.len();
    for (slot, (offset, len)) in gnu.sparse.iter_mut().zip(&runs) {
        slot.set_offset(*offset);
        slot.set_length(*len);
    }
    gnu.set_is_extended(runs.len() > in_header);
    let mut extensions = Vec::new();
    let mut rest = runs.iter().skip(in_header).peekable();
    while rest.peek().is_some() {
        let mut ext = GnuExtSparseHeader::new();
        for slot in ext.sparse.iter_mut() {
            let Some((offset, len)) = rest.next() else {
                break;
            };
            slot.set_offset(*offset);
            slot.set_length(*len);
        }
        ext.set_is_extended(rest.peek().is_some());
        extensions.extend_from_slice(ext.as_bytes());
    }
    let data = SparseReader {
        file,
        runs: map.data,
        run: 0,
        done: 0,
    };
    builder.append_data(&mut header, rel, io::Cursor::new(extensions).chain(data))
}

/// Reads a sparse file's data runs one after the other.
struct SparseReader {
    file: File,
    runs: Vec<(u64, u64)>,
    run: usize,
    /// Bytes of the current run already read.
    done: u64,
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(&(offset, len)) = self.runs.get(self.run) else {
            return Ok(0);
        };
        let want = usize::try_from(len - self.done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.file.read_at(&mut buf[..want], offset + self.done)?;
        if n == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.done += n as u64;
        if self.done == len {
            self.run += 1;
            self.done = 0;
        }
        Ok(n)
    }
}

/// Opens a file for reading; a file this process owns but made unreadable (an image's
/// `/etc/gshadow` is often mode 000) is opened by lending it `u+r` for the open only.
pub(crate) fn open_readable(path: &Path, meta: &fs::Metadata) -> Result<File, LocalError> {
    match File::open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && meta.uid() == effective_uid() => {
            let mode = meta.mode() & 0o7777;
            fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o400))
                .map_err(|_| LocalError::io("open", path, e))?;
            let opened = File::open(path);
            let restored = fs::set_permissions(path, fs::Permissions::from_mode(mode));
            let file = opened.map_err(io_err("open", path))?;
            restored.map_err(io_err("restore the mode of", path))?;
            Ok(file)
        }
        Err(e) => Err(LocalError::io("open", path, e)),
    }
}

/// Yields exactly the size written in the header: a file that shrinks while it is packed
/// fails the pack instead of silently corrupting the archive, and bytes appended after the
/// stat are not read.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}
