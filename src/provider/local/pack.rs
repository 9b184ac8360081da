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
//!   cannot recreate them, and a sandbox provides its own `/dev`.
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
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};
use walkdir::WalkDir;

use super::{effective_uid, io_err, LocalError};

/// zstd level: level 3 is zstd's default and packs a root file system in about the time it
/// takes to read it; higher levels cost far more time than they save in bytes.
pub const ZSTD_LEVEL: i32 = 3;

/// Writes the deterministic tar.zst of `tree` into `out`.
///
/// See the module docs for what is kept and what is normalised.
pub fn pack_deterministic(tree: &Path, out: impl Write) -> Result<(), LocalError> {
    let meta = fs::metadata(tree).map_err(io_err("read tree", tree))?;
    if !meta.is_dir() {
        return Err(LocalError::io(
            "pack tree",
            tree,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
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
        .sort_by_file_name()
        .min_depth(1);
    for entry in walk {
        let entry = entry.map_err(|e| walk_error(e, tree))?;
        append_entry(&mut builder, tree, entry.path())?;
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
    path: &Path,
) -> Result<(), LocalError> {
    let rel = path.strip_prefix(tree).map_err(|_| {
        LocalError::io(
            "walk tree",
            path,
            io::Error::other("the walk left the tree"),
        )
    })?;
    let meta = fs::symlink_metadata(path).map_err(io_err("read metadata of", path))?;
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
        header.set_entry_type(EntryType::Regular);
        header.set_size(meta.len());
        let file = open_readable(path, &meta)?;
        let data = ExactReader {
            inner: file,
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
