//! Content hashing of inputs: walking, blake3 digests, the stat cache and manifests.
//!
//! This module is synchronous and pure: it reads project files and runs probe commands,
//! but never touches the state database (the caller loads a [`StatCache`] and stores its
//! updates) and never decides anything (the plan compares manifests).
//!
//! What is hashed, and what deliberately is not:
//! - a regular file: its content and its executable bit (`mode & 0o111`). Not its mtime,
//!   owner or other permission bits: touching a file or checking it out again does not
//!   rebuild anything, `chmod +x` on a provisioning script does.
//! - a symlink: its target string. Links are never followed, so a link pointing outside the
//!   project is fine and what it points at is not an input.
//! - a directory: every file and link below it (sorted, `.git` and `.imgraph` at the project
//!   root skipped); empty directories contribute nothing.
//! - a probe: the stdout of its command (`sh -c`, in the project folder, 60 s limit).
//!
//! Every digest is `b3v1:` + 64 hex characters; the prefix versions the encoding (see
//! `digest.rs`). A [`Manifest`] lists the leaves of one node with digest and trigger, and
//! its own digest goes into the node's key, while the plan diffs two manifests entry by
//! entry to explain a rebuild file by file.
//!
//! Cost: files are hashed in parallel (rayon), big files additionally with blake3's own
//! parallelism, and the stat cache skips reading files whose size, times, inode and mode
//! are unchanged (see `cache.rs` for the racy-entry rule). Walking and `stat` remain per
//! plan; the [`Hasher`] memo makes a file shared by many nodes cost one read per plan.

mod cache;
mod digest;
mod manifest;
mod probe;
mod walk;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use cache::{CacheStats, CachedStat, StatCache, RACY_WINDOW_NS};
pub use digest::digest_parts;
pub use manifest::{EntryKind, Hasher, Manifest, ManifestEntry, PROBE_PREFIX, PROBE_TIMEOUT};
pub use probe::run_probe;

/// The digest format: every digest string is `b3v1:` followed by 64 lowercase hex chars.
pub const FORMAT: &str = "b3v1";

/// A hashing failure. Messages read after "failed to ..."; `Io` and `Glob` keep the
/// underlying error as their `source()` (render the chain to show it). Paths are
/// project-relative, as the user wrote them in the config.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("hash input `{}`", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("compile glob `{pattern}`")]
    Glob {
        pattern: String,
        source: globset::Error,
    },
    #[error("run probe `{name}`: {detail}")]
    Probe { name: String, detail: String },
    #[error("hash input `{}`: the path leads outside the project", path.display())]
    OutsideProject { path: PathBuf },
}
