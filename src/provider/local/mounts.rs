//! Mount points inside imgraph's own folders.
//!
//! A step that runs on the host (sandbox `none`, as root) can leave a mount behind in the
//! image root: `mount --bind /srv/data $IMGRAPH_ROOT/mnt` and exit. Removing the staging
//! folder would then delete the host's `/srv/data`, and packing it would put the host's
//! files into the image. Bind mounts of the same file system share its device number, so
//! only the kernel's mount table tells them apart: [`mounts_under`] reads
//! `/proc/self/mountinfo`, and [`release_mounts`] detaches (`umount2(MNT_DETACH)`, deepest
//! first) every mount found strictly below a folder, or fails naming the first one it
//! cannot detach, before anything below that folder is removed or packed.
//!
//! Mounts made inside a `bwrap` sandbox live in the sandbox's own mount namespace and end
//! with it; this guards against the host side.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{io_err, LocalError};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Every mount point strictly below `dir` (in this process's mount namespace), deepest
/// first. A missing `dir` has none.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, LocalError> {
    let dir = match dir.canonicalize() {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LocalError::io("resolve", dir, e)),
    };
    let table = std::fs::read_to_string(MOUNTINFO)
        .map_err(io_err("read the mount table", Path::new(MOUNTINFO)))?;
    let dir = dir.as_os_str().as_bytes();
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter_map(|field| {
            // Most points have nothing escaped: compared as they are, no copy made.
            if !field.contains('\\') {
                return is_below(field.as_bytes(), dir).then(|| PathBuf::from(field));
            }
            let point = unescape(field);
            is_below(point.as_bytes(), dir).then(|| PathBuf::from(point))
        })
        .collect();
    found.sort();
    found.dedup();
    // Deepest first: a mount on top of another goes before the one below it.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// Detaches every mount below `dir` (see the module docs). Fails with
/// [`LocalError::MountLeft`] naming a mount it cannot detach (imgraph runs without the
/// right to unmount it); nothing is removed or packed then.
pub fn release_mounts(dir: &Path) -> Result<Vec<PathBuf>, LocalError> {
    let mut released = Vec::new();
    // A mount can hide another one below it: go on until none is left.
    loop {
        let points = mounts_under(dir)?;
        let Some(point) = points.into_iter().next() else {
            return Ok(released);
        };
        let c = CString::new(point.as_os_str().as_bytes()).map_err(|_| LocalError::MountLeft {
            path: point.clone(),
            detail: "its path holds a NUL byte".into(),
        })?;
        // SAFETY: `c` is a valid NUL-terminated path; umount2 reads it and nothing else.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        if rc != 0 {
            return Err(LocalError::MountLeft {
                path: point,
                detail: io::Error::last_os_error().to_string(),
            });
        }
        tracing::warn!(path = %point.display(), "detached a mount a step left behind");
        released.push(point);
    }
}

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space, and so on).
/// Whether the mount point `point` is strictly below the folder `dir`, both absolute
/// and canonical, as the mount table and `canonicalize` give them: compared as bytes
/// (comparing them as paths, component by component, was most of the cost of reading
/// the table, which happens three times a build).
fn is_below(point: &[u8], dir: &[u8]) -> bool {
    point.len() > dir.len()
        && point.starts_with(dir)
        && (dir.ends_with(b"/") || point[dir.len()] == b'/')
}

fn unescape(field: &str) -> std::ffi::OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn a_folder_without_mounts_has_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).unwrap().is_empty());
        assert!(mounts_under(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
        assert!(release_mounts(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_mount_point_is_below_a_folder_only_past_a_separator() {
        assert!(is_below(b"/a/b/c", b"/a/b"));
        assert!(is_below(b"/a", b"/"));
        assert!(!is_below(b"/a/b", b"/a/b"));
        assert!(!is_below(b"/a/bc", b"/a/b"));
        assert!(!is_below(b"/a", b"/a/b"));
        assert!(!is_below(b"/", b"/"));
    }
}
