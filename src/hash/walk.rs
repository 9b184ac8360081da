//! Turning inputs (paths, directories, globs) into sorted lists of leaf paths.
//!
//! Entries are regular files, symlinks and directories. Walks never follow symlinks (a
//! link is an entry, hashed as its target string), visit entries in file-name order, skip
//! `.git` and `.imgraph` at the project root, and skip sockets, FIFOs and devices (they
//! have no content to hash, reading a FIFO would block, and images do not keep them).
//! Every directory below a named one is an entry of its own (its mode is copied into an
//! image, and an empty one is created there), and so is the named directory itself; the
//! project folder never is.
//!
//! A glob is walked from its literal prefix (`roles/*/tasks/*.yml` walks `roles/`), not from
//! the project root, so a narrow glob in a big project stays cheap. `*` does not cross `/`;
//! `**` does. A glob matching a directory takes it and everything below it, like naming
//! the directory would; the folders a glob only passes through are not entries.
//!
//! Paths are checked to stay inside the project twice: lexically (no absolute paths, no
//! `..` above the root) and by canonicalising the directory a walk or a file lookup starts
//! from, which catches a symlinked directory leading out of the project.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

use super::HashError;

/// Folders at the project root that are imgraph's or git's own bookkeeping.
pub(crate) const SKIPPED_AT_ROOT: [&str; 2] = [".git", ".imgraph"];

/// Compiled `exclude` patterns of one input.
#[derive(Debug, Default)]
pub(crate) struct Excludes(Option<GlobSet>);

impl Excludes {
    /// A pattern without `/` matches a name anywhere below (`**/PAT`); one with `/` is a
    /// project-relative glob.
    pub(crate) fn compile(patterns: &[String]) -> Result<Self, HashError> {
        if patterns.is_empty() {
            return Ok(Excludes(None));
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let full = if pattern.contains('/') {
                pattern.trim_start_matches("./").to_owned()
            } else {
                format!("**/{pattern}")
            };
            builder.add(glob(&full, pattern)?);
        }
        let set = builder.build().map_err(|source| HashError::Glob {
            pattern: patterns.join(", "),
            source,
        })?;
        Ok(Excludes(Some(set)))
    }

    fn matches(&self, rel: &str) -> bool {
        self.0.as_ref().is_some_and(|set| set.is_match(rel))
    }
}

fn glob(pattern: &str, shown: &str) -> Result<Glob, HashError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|source| HashError::Glob {
            pattern: shown.to_owned(),
            source,
        })
}

/// Lexically normalised project-relative path: no `.`, no empty components, `..` resolved;
/// `""` is the project root.
pub(crate) fn normalize(path: &str) -> Result<String, HashError> {
    let outside = || HashError::OutsideProject {
        path: PathBuf::from(path),
    };
    if Path::new(path).is_absolute() {
        return Err(outside());
    }
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(outside());
                }
            }
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// The directory part of a glob before its first component with a glob character.
pub(crate) fn literal_prefix(normalized: &str) -> String {
    normalized
        .split('/')
        .take_while(|component| !is_glob(component))
        .collect::<Vec<_>>()
        .join("/")
}

pub(crate) fn full_path(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Walks and lookups see the project through this: its root, canonical once.
pub(crate) struct Project<'a> {
    pub root: &'a Path,
    pub canonical_root: PathBuf,
    /// Project-relative folders a walk never enters: [`SKIPPED_AT_ROOT`] and imgraph's own
    /// folders (state, store, logs, staging) wherever the config put them.
    pub skipped: Vec<String>,
}

impl Project<'_> {
    /// Refuses a directory (project-relative) that resolves outside the project. A directory
    /// that does not exist passes: the lookup that follows reports it properly.
    pub(crate) fn check_dir_inside(&self, dir: &str, shown: &str) -> Result<(), HashError> {
        if dir.is_empty() {
            return Ok(());
        }
        match full_path(self.root, dir).canonicalize() {
            Ok(real) if !real.starts_with(&self.canonical_root) => Err(HashError::OutsideProject {
                path: PathBuf::from(shown),
            }),
            _ => Ok(()),
        }
    }

    /// Entries for a literal path (normalised): the file or link itself, or a directory and
    /// every entry below it except the excluded ones. Excludes never drop a path named
    /// directly.
    pub(crate) fn literal(&self, rel: &str, excludes: &Excludes) -> Result<Vec<String>, HashError> {
        let parent = rel.rsplit_once('/').map_or("", |(dir, _)| dir);
        self.check_dir_inside(parent, rel)?;
        let md = std::fs::symlink_metadata(full_path(self.root, rel)).map_err(|source| {
            HashError::Io {
                path: PathBuf::from(rel),
                source,
            }
        })?;
        let kind = md.file_type();
        if kind.is_dir() {
            let mut leaves = Vec::new();
            self.walk(rel, excludes, |leaf| {
                leaves.push(leaf);
            })?;
            Ok(leaves)
        } else if kind.is_file() || kind.is_symlink() {
            Ok(vec![rel.to_owned()])
        } else {
            Err(not_hashable(rel))
        }
    }

    /// Entries matching a glob (normalised), walking from its literal prefix only.
    pub(crate) fn glob(
        &self,
        pattern: &str,
        excludes: &Excludes,
    ) -> Result<Vec<String>, HashError> {
        let matcher: GlobMatcher = glob(pattern, pattern)?.compile_matcher();
        let prefix = literal_prefix(pattern);
        self.check_dir_inside(&prefix, pattern)?;
        match std::fs::symlink_metadata(full_path(self.root, &prefix)) {
            Ok(md) if md.is_dir() => {}
            // Nothing to match: a glob over a missing folder matches nothing, like a glob
            // over a folder without matching files.
            _ => return Ok(Vec::new()),
        }
        let mut leaves = Vec::new();
        self.walk(&prefix, excludes, |leaf| {
            if matches_self_or_ancestor(&matcher, &leaf, &prefix) {
                leaves.push(leaf);
            }
        })?;
        Ok(leaves)
    }

    /// Calls `found` with the project-relative path of every file, symlink and directory
    /// below `start`, and of `start` itself unless it is the project folder.
    pub(crate) fn walk(
        &self,
        start: &str,
        excludes: &Excludes,
        mut found: impl FnMut(String),
    ) -> Result<(), HashError> {
        let root = self.root;
        let skipped = &self.skipped;
        let walker = WalkDir::new(full_path(root, start))
            .follow_links(false)
            .follow_root_links(false)
            .sort_by(|a, b| sibling_order(a.path(), b.path()))
            .into_iter()
            .filter_entry(|entry| {
                // The start itself was named by the user: never skip it.
                if entry.depth() == 0 {
                    return true;
                }
                match strip_root(root, entry.path()).to_str() {
                    Some(rel) => !(skipped.iter().any(|s| s == rel) || excludes.matches(rel)),
                    // Reported below, where errors can be returned.
                    None => true,
                }
            });
        for entry in walker {
            let entry = entry.map_err(|err| {
                let path = err
                    .path()
                    .map(|p| p.strip_prefix(root).unwrap_or(p).to_path_buf())
                    .unwrap_or_else(|| PathBuf::from(start));
                HashError::Io {
                    path,
                    source: io::Error::from(err),
                }
            })?;
            let kind = entry.file_type();
            if !(kind.is_file() || kind.is_symlink() || kind.is_dir()) {
                continue;
            }
            let rel = relative_str(root, entry.path())?;
            if !rel.is_empty() {
                found(rel);
            }
        }
        Ok(())
    }
}

fn matches_self_or_ancestor(matcher: &GlobMatcher, leaf: &str, prefix: &str) -> bool {
    if matcher.is_match(leaf) {
        return true;
    }
    // Ancestors strictly below the literal prefix: a glob never matches its own prefix.
    let floor = prefix.len();
    leaf.match_indices('/')
        .map(|(i, _)| &leaf[..i])
        .filter(|ancestor| ancestor.len() > floor)
        .any(|ancestor| matcher.is_match(ancestor))
}

/// The project-relative path with `/`, or an error for a name manifests cannot hold.
fn relative_str(root: &Path, path: &Path) -> Result<String, HashError> {
    let rel = strip_root(root, path);
    rel.to_str()
        .map(str::to_owned)
        .ok_or_else(|| HashError::Io {
            path: rel.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "file name is not valid UTF-8"),
        })
}

/// The order of two entries of one folder's listing: their file names' bytes, the order
/// walkdir's `sort_by_file_name` gives (a local origin's digest depends on it). Siblings
/// are `folder.join(name)` with the same `folder`, so comparing their whole paths' bytes
/// compares their names, without parsing each path into components for every comparison
/// (that parse was 14 % of a no-change plan's instructions).
fn sibling_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes())
}

/// `path` relative to `root`, for paths a walk from below `root` yields: they start with
/// `root`'s bytes, so comparing bytes gives the same answer as [`Path::strip_prefix`]
/// without parsing both into components for each of (say) 100,000 entries. Anything else
/// falls back to `strip_prefix`, and to `path` itself.
fn strip_root<'p>(root: &Path, path: &'p Path) -> &'p Path {
    let (r, p) = (root.as_os_str().as_bytes(), path.as_os_str().as_bytes());
    let rest = p
        .strip_prefix(r)
        .filter(|_| !r.is_empty())
        .and_then(|rest| match rest {
            _ if r.ends_with(b"/") => Some(rest),
            [] => Some(rest),
            [b'/', tail @ ..] => Some(tail),
            _ => None,
        });
    match rest {
        // A leading `/` or `.` component would be read differently by `Path`.
        Some(rel) if !(rel.starts_with(b"/") || rel == b"." || rel.starts_with(b"./")) => {
            Path::new(std::ffi::OsStr::from_bytes(rel))
        }
        _ => path.strip_prefix(root).unwrap_or(path),
    }
}

pub(crate) fn not_hashable(rel: &str) -> HashError {
    HashError::Io {
        path: PathBuf::from(rel),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file, symlink or directory",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{sibling_order, strip_root};
    use proptest::prelude::*;
    use std::path::Path;

    #[test]
    fn strip_root_is_strip_prefix_on_walked_paths() {
        for (root, path, rel) in [
            ("/p", "/p/a/b", "a/b"),
            ("/p/", "/p/a", "a"),
            ("/p", "/p", ""),
            (".", "./tree/f", "tree/f"),
            ("/p", "/pq/a", "/pq/a"),
            ("/p", "/p//a", "a"),
            ("/p", "/p/./a", "a"),
            ("./", "././", ""),
            ("", "/a", "/a"),
        ] {
            assert_eq!(strip_root(Path::new(root), Path::new(path)), Path::new(rel));
        }
    }

    proptest! {
        #[test]
        fn strip_root_agrees_with_strip_prefix(
            root in "(/|\\.)?([a-c.]{1,2}/){0,3}[a-c]{0,2}",
            tail in "(/|\\./)?([a-c.]{1,2}/){0,3}[a-c.]{0,2}",
        ) {
            let path = format!("{root}{tail}");
            let (root, path) = (Path::new(&root), Path::new(&path));
            let expected = path.strip_prefix(root).unwrap_or(path);
            prop_assert_eq!(strip_root(root, path), expected);
        }
    }

    proptest! {
        /// Siblings in a walk are ordered as walkdir's own sort orders them: by file name,
        /// so the walk order (and a local origin folder's digest) is unchanged.
        #[test]
        fn sibling_order_is_file_name_order(
            parent in "(/|\\./)?([a-c.]{1,3}/){0,3}[a-c]{1,2}/?",
            a in "[a-c.\\-\\x{e9}]{1,4}",
            b in "[a-c.\\-\\x{e9}]{1,4}",
        ) {
            prop_assume!(![".", ".."].contains(&a.as_str()) && ![".", ".."].contains(&b.as_str()));
            let (pa, pb) = (Path::new(&parent).join(&a), Path::new(&parent).join(&b));
            let expected = pa.file_name().cmp(&pb.file_name());
            prop_assert_eq!(sibling_order(&pa, &pb), expected);
        }
    }
}
