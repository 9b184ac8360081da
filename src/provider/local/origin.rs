//! Origins: the root file systems a build starts from, as users hand them over.
//!
//! The format is taken from the file name (`.tar`, `.tar.gz`/`.tgz`, `.tar.zst`/`.tzst`,
//! any case); a name that says nothing is recognised by its first bytes (gzip and zstd
//! magic numbers, the `ustar` mark of a tar header). A name is trusted over the bytes so a
//! mislabelled file fails loudly as what it claims to be rather than being guessed at.
//! Unpacking goes through the `unpack` module, which refuses entries that would land outside
//! the destination.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::tree::copy_tree;
use super::unpack::{check_tar, read_ahead, unpack_tar};
use super::{io_err, running_as_root, LocalError};

/// The archive formats an origin may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    TarZst,
}

/// Unpacks an origin (a source): a directory (copied, preserving modes and symlinks, and
/// ownership when running as root), `.tar`, `.tar.gz`/`.tgz` or `.tar.zst`/`.tzst`
/// (detected by extension, falling back to magic bytes), into `dest`, which must be empty
/// or not exist. Stops with [`LocalError::Cancelled`] once `cancel` is cancelled.
pub fn unpack_origin(
    origin: &Path,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<(), LocalError> {
    match open_origin(origin)? {
        None => copy_tree(origin, dest, running_as_root(), cancel),
        Some(archive) => {
            let archive =
                read_ahead(archive).map_err(io_err("start a read-ahead thread for", origin))?;
            unpack_tar(archive, dest, origin, cancel)
        }
    }
}

/// Reads an origin archive through to its end without unpacking it, with every check an
/// unpack makes (format, safe entry names, complete entries, the end-of-archive marker),
/// so a damaged or truncated origin is refused before a run records anything. A
/// directory origin needs no reading.
pub fn check_origin(origin: &Path, cancel: &CancellationToken) -> Result<(), LocalError> {
    match open_origin(origin)? {
        None => Ok(()),
        Some(archive) => check_tar(archive, origin, cancel),
    }
}

/// `None` for a directory origin; the decompressed tar stream of an archive.
fn open_origin(origin: &Path) -> Result<Option<Box<dyn Read + Send>>, LocalError> {
    // Following a symlink here is fine: the origin path is the user's choice, not an
    // entry inside an image.
    let meta = fs::metadata(origin).map_err(io_err("read origin", origin))?;
    if meta.is_dir() {
        return Ok(None);
    }
    if !meta.is_file() {
        return Err(LocalError::UnsupportedOrigin {
            path: origin.to_path_buf(),
        });
    }
    let format = match format_from_name(origin) {
        Some(format) => format,
        None => format_from_magic(origin)?,
    };
    let file = File::open(origin).map_err(io_err("open origin", origin))?;
    let reader = BufReader::with_capacity(256 * 1024, file);
    Ok(Some(match format {
        ArchiveFormat::Tar => Box::new(reader),
        // Multi-member gzip is what `pigz` and concatenated tarballs produce.
        ArchiveFormat::TarGz => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        ArchiveFormat::TarZst => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(io_err("start zstd decoding of", origin))?,
        ),
    }))
}

/// The format a file name claims, if any.
pub fn format_from_name(path: &Path) -> Option<ArchiveFormat> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(ArchiveFormat::TarGz)
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Some(ArchiveFormat::TarZst)
    } else if name.ends_with(".tar") {
        Some(ArchiveFormat::Tar)
    } else {
        None
    }
}

/// The format a file's first bytes show.
pub fn format_from_magic(path: &Path) -> Result<ArchiveFormat, LocalError> {
    let file = File::open(path).map_err(io_err("open origin", path))?;
    let mut head = Vec::with_capacity(512);
    file.take(512)
        .read_to_end(&mut head)
        .map_err(io_err("read origin", path))?;
    detect_magic(&head).ok_or_else(|| LocalError::UnsupportedOrigin {
        path: path.to_path_buf(),
    })
}

fn detect_magic(head: &[u8]) -> Option<ArchiveFormat> {
    const GZIP: &[u8] = &[0x1f, 0x8b];
    const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
    // Both POSIX `ustar\0` and GNU `ustar  ` begin with these five bytes at offset 257.
    const USTAR: &[u8] = b"ustar";
    if head.starts_with(GZIP) {
        Some(ArchiveFormat::TarGz)
    } else if head.starts_with(ZSTD) {
        Some(ArchiveFormat::TarZst)
    } else if head.get(257..262) == Some(USTAR) {
        Some(ArchiveFormat::Tar)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decide_the_format_case_insensitively() {
        let f = |n: &str| format_from_name(Path::new(n));
        assert_eq!(f("bases/debian.tar"), Some(ArchiveFormat::Tar));
        assert_eq!(f("debian.TAR.GZ"), Some(ArchiveFormat::TarGz));
        assert_eq!(f("debian.tgz"), Some(ArchiveFormat::TarGz));
        assert_eq!(f("debian.tar.zst"), Some(ArchiveFormat::TarZst));
        assert_eq!(f("debian.tzst"), Some(ArchiveFormat::TarZst));
        assert_eq!(f("debian.img"), None);
        assert_eq!(f("tar"), None);
    }

    #[test]
    fn magic_bytes_decide_when_the_name_does_not() {
        assert_eq!(
            detect_magic(&[0x1f, 0x8b, 8, 0]),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(
            detect_magic(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(ArchiveFormat::TarZst)
        );
        let mut block = vec![0u8; 512];
        block[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(detect_magic(&block), Some(ArchiveFormat::Tar));
        assert_eq!(detect_magic(b"PK\x03\x04 a zip file"), None);
        assert_eq!(detect_magic(&[]), None);
    }
}
