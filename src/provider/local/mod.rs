//! The embedded local provider's storage layer: root file systems as deterministic
//! `tar.zst` images in a content-addressed store.
//!
//! An image is a folder tree (a root file system) packed by [`pack_deterministic`] into a
//! tar stream compressed with zstd. The bytes depend only on the tree's names, contents,
//! modes, ownership and symlink targets, so the same tree always gives the same bytes, and
//! the store ([`Store`]) names each artifact after the blake3 of those bytes
//! (`local:<64 hex>`). Two builds that produce the same tree produce the same artifact id,
//! which is what lets a rebuild that changed nothing be recognised as such.
//!
//! Trees come in from outside through [`unpack_origin`] (a directory, `.tar`, `.tar.gz` or
//! `.tar.zst`) and from project files through [`copy_into`]; both, and [`Store::unpack`],
//! refuse anything that would write outside their destination: absolute entry paths, `..`
//! components, and writes through a symlink that points out of the tree. Symlinks are
//! created as they are (a root file system is full of absolute links such as
//! `/bin/sh -> /bin/busybox`) but never followed.
//!
//! Everything here is synchronous and blocking; the async runtime calls it from
//! `spawn_blocking`. Long operations (unpack, pack, copy, verifying an artifact) take the
//! run's cancellation token and look at it before each entry and on every read, so a
//! cancelled run stops them within a read of a few hundred kilobytes, not at the end of
//! an 8 GB copy; they then fail with [`LocalError::Cancelled`].
//!
//! Layout: [`pack`] writes archives, `unpack` reads them safely, [`inspect`] reads package
//! databases and file lists out of stored images, [`origin`] recognises
//! origin formats, [`tree`] copies and removes folder trees, [`store`] is the store,
//! [`shared`] publishes to and fetches from a shared store with the store as its cache, and
//! [`provider`] runs builds and test instances on top of them.

pub mod inspect;
pub mod mounts;
pub mod origin;
pub mod pack;
pub mod provider;
pub mod registry;
pub mod sandbox;
pub mod seccomp;
pub mod shared;
pub mod store;
pub mod tree;
mod unpack;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

pub use origin::{check_origin, unpack_origin};
pub use pack::pack_deterministic;
pub use provider::LocalProvider;
pub use registry::VersionMeta;
pub use shared::{OwnArtifacts, SharedArtifacts, SharedError, SharedStores};
pub use store::Store;
pub use tree::{copy_into, remove_tree, resolve_in_image};

/// What can go wrong while packing, storing, unpacking or copying image trees.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file system operation failed; `context` says what was being done to `path`.
    #[error("{context} `{}`", path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The origin is neither a directory nor a tar, tar.gz or tar.zst archive.
    #[error(
        "unpack origin `{}`: it is not a directory nor a .tar, .tar.gz or .tar.zst archive",
        path.display()
    )]
    UnsupportedOrigin { path: PathBuf },
    /// A stored artifact's bytes no longer match its id, or an archive is malformed.
    #[error("read `{}`: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// An archive entry or an in-image path would land outside its destination: it is
    /// absolute, contains `..`, or passes through a symlink.
    #[error(
        "unpack `{entry}` from `{}`: the path is absolute, contains `..` or passes through a symlink",
        path.display()
    )]
    UnsafeEntry { path: PathBuf, entry: String },
    /// A mount point below a folder imgraph removes or packs could not be detached:
    /// removing or packing it would reach the host folder mounted there.
    #[error(
        "clean up `{}`: it is a mount point a step left behind, and unmounting it failed ({detail}); nothing below it was removed or packed: unmount it by hand",
        path.display()
    )]
    MountLeft { path: PathBuf, detail: String },
    /// The id is not of the form `local:<64 lowercase hex digits>`.
    #[error("find artifact `{id}`: a local artifact id is `local:` followed by 64 hex digits")]
    InvalidArtifactId { id: String },
    /// The run was cancelled while this operation was under way.
    #[error("finish: the run was cancelled")]
    Cancelled,
    /// A shared artifact store failed (see [`shared`]).
    #[error("{op} {subject} (shared store {store})")]
    Shared {
        op: &'static str,
        subject: String,
        store: String,
        #[source]
        source: Box<SharedError>,
    },
    /// An object of a shared artifact store does not hold the bytes its name promises.
    #[error(
        "fetch `{}` from the shared store {}: its bytes hash to {}, not to the {} its name promises, so it was not used and nothing was written to the local store; delete that object (e.g. `aws s3 rm {}`) and run `imgraph apply` again, which builds and publishes the image again",
        .0.object, .0.store, .0.actual, .0.expected, .0.object
    )]
    SharedCorrupt(Box<shared::CorruptObject>),
    /// The image's package database could not be parsed.
    #[error("list the packages of `{}`", path.display())]
    PackageDatabase {
        path: PathBuf,
        #[source]
        source: crate::packages::ParseError,
    },
}

impl LocalError {
    pub(crate) fn io(context: impl Into<String>, path: &Path, source: io::Error) -> Self {
        LocalError::Io {
            context: context.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Builds a `map_err` closure that wraps an [`io::Error`] with what was being done.
pub(crate) fn io_err<'a>(
    context: &'a str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LocalError + 'a {
    move |source| LocalError::io(context, path, source)
}

/// Turns the failure of an operation that was cancelled into [`LocalError::Cancelled`]:
/// a read stopped by [`Cancellable`] surfaces as an I/O error with some context, and
/// that context would only confuse.
pub(crate) fn unless_cancelled<T>(
    cancel: &CancellationToken,
    result: Result<T, LocalError>,
) -> Result<T, LocalError> {
    match result {
        Err(_) if cancel.is_cancelled() => Err(LocalError::Cancelled),
        other => other,
    }
}

/// Fails with [`LocalError::Cancelled`] once the run is cancelled (checked between entries).
pub(crate) fn check_cancel(cancel: &CancellationToken) -> Result<(), LocalError> {
    if cancel.is_cancelled() {
        Err(LocalError::Cancelled)
    } else {
        Ok(())
    }
}

/// A reader that fails once the run is cancelled, so a copy, pack or unpack stops within
/// one read of a huge file.
pub(crate) struct Cancellable<'a, R> {
    pub inner: R,
    pub cancel: &'a CancellationToken,
}

impl<R: io::Read> io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("the run was cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Whether this process may set file ownership. Only then do unpacks and directory
/// origins keep the uid/gid recorded in the image; otherwise every file belongs to the
/// user running imgraph (chown would fail, and a non-root build cannot use them anyway).
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The effective uid, to tell files this process owns (and may chmod) from others.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
