//! Content hashing of inputs: walking, blake3 digests, the stat cache and manifests.
//!
//! This module is synchronous and pure: it reads project files and runs probe commands,
//! but never touches the state database (the caller loads a [`StatCache`] and stores its
//! updates) and never decides anything (the plan compares manifests).
//!
//! What is hashed, and what deliberately is not (the rule: whatever a copy keeps in an
//! image counts, nothing else does):
//! - a regular file: its content, and beside it its permission bits (`mode & 0o7777`,
//!   setuid, setgid and sticky included). Not its mtime or owner: touching a file or
//!   checking it out again does not rebuild anything, `chmod 600` does.
//! - a symlink: its target string. Links are never followed, so a link pointing outside the
//!   project is fine and what it points at is not an input.
//! - a directory: itself (its mode; an empty one is created in the image) and every file,
//!   link and directory below it (sorted; `.git`, `.imgraph` and imgraph's own folders
//!   skipped).
//! - a probe: the stdout of its command (`sh -c`, in the project folder, 60 s limit).
//! - a variable named by `env`: a digest of its value (unset and empty differ); the value
//!   itself is never kept.
//! - implicitly, every word of a command run in the project folder that names a project
//!   file or folder (`run "sh scripts/x.sh"`); see `words.rs` for what cannot be seen.
//! - a local origin folder: every entry below it, so a plan names the files that changed.
//!
//! Every digest is `b3v1:` + 64 hex characters; the domain string inside versions the
//! encoding (see `digest.rs`). A [`Manifest`] lists the inputs of one node with digest,
//! mode and trigger, and its own digest (of paths, kinds, digests and modes: not of
//! triggers or how an input was declared, so an `exclude` or a duplicate `input` line that
//! selects the same files changes nothing) goes into the node's key, while the plan diffs
//! two manifests entry by entry to explain a rebuild file by file.
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
mod words;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use cache::{CacheStats, CachedStat, StatCache, StatEntries, StatMap, RACY_WINDOW_NS};
pub use digest::{digest_parts, FILE_DOMAIN};
pub use manifest::{
    no_image_yet, probe_output_digest, EntryKind, Hasher, Manifest, ManifestEntry, NodeInputs, Via,
    ENV_PREFIX, MANIFEST_FORMAT, PROBE_PREFIX, PROBE_TIMEOUT,
};
pub use probe::{run_probe, MAX_PROBE_OUTPUT};

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
