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
//!
//! Cost: a walk lists each folder once and takes the metadata of each entry it yields
//! relative to the open folder (`statx(dirfd, name)`), so the kernel resolves one name
//! instead of the whole path, and hands that metadata on: hashing a walked file does not
//! `stat` it again. Sibling folders are walked in parallel (each into a list of its own,
//! joined in walk order), and a big folder's entries are spread over threads. Project-relative paths are built by appending names, never by
//! stripping the root off full paths. (This walk replaced walkdir's, which gave neither.)

use std::io;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use super::cache::FileStat;
use super::HashError;

/// A folder with at least this many entries has their metadata taken in parallel; below
/// it, the hand-off to other threads costs more than the `statx` calls it spreads, and
/// sibling folders are walked in parallel instead.
const PARALLEL_ENTRIES: usize = 256;

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

    /// Entries for a literal path (normalised), with what `lstat` said of each: the file
    /// or link itself, or a directory and every entry below it except the excluded ones.
    /// Excludes never drop a path named directly.
    pub(crate) fn literal(&self, rel: &str, excludes: &Excludes) -> Result<Vec<Walked>, HashError> {
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
            self.walk(rel, excludes, &|_| true)
        } else if kind.is_file() || kind.is_symlink() {
            Ok(vec![Walked {
                path: rel.to_owned(),
                stat: FileStat::of(&md),
            }])
        } else {
            Err(not_hashable(rel))
        }
    }

    /// Entries matching a glob (normalised), walking from its literal prefix only.
    pub(crate) fn glob(
        &self,
        pattern: &str,
        excludes: &Excludes,
    ) -> Result<Vec<Walked>, HashError> {
        let matcher: GlobMatcher = glob(pattern, pattern)?.compile_matcher();
        let prefix = literal_prefix(pattern);
        self.check_dir_inside(&prefix, pattern)?;
        match std::fs::symlink_metadata(full_path(self.root, &prefix)) {
            Ok(md) if md.is_dir() => {}
            // Nothing to match: a glob over a missing folder matches nothing, like a glob
            // over a folder without matching files.
            _ => return Ok(Vec::new()),
        }
        self.walk(&prefix, excludes, &|leaf| {
            matches_self_or_ancestor(&matcher, leaf, &prefix)
        })
    }

    /// Every file, symlink and directory below `start` (and `start` itself unless it is
    /// the project folder) whose project-relative path `keep` takes, in walk order: a
    /// folder's entries sorted by name, each folder before its entries. Skipped and
    /// excluded folders are not entered; links are never followed.
    pub(crate) fn walk(
        &self,
        start: &str,
        excludes: &Excludes,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<Walked>, HashError> {
        let io_err = |source| HashError::Io {
            path: PathBuf::from(start),
            source,
        };
        let md = std::fs::symlink_metadata(full_path(self.root, start)).map_err(io_err)?;
        let stat = FileStat::of(&md);
        let mut out = Vec::new();
        if !(stat.is_file() || stat.is_symlink() || stat.is_dir()) {
            return Ok(out);
        }
        if !start.is_empty() && keep(start) {
            out.push(Walked {
                path: start.to_owned(),
                stat,
            });
        }
        if stat.is_dir() {
            let walk = Walk {
                project: self,
                excludes,
                keep,
            };
            // On a thread of rayon's pool: each folder's parallel `statx` then runs as
            // work of that thread, instead of being handed to the pool from outside and
            // waited for (a sleep and a wake-up per folder: 950 context switches for a
            // tree of 200 folders).
            rayon::scope(|_| walk.folder(start, &mut out))?;
        }
        Ok(out)
    }
}

/// A walked entry: its project-relative path and what `lstat` said of it.
#[derive(Debug, Clone)]
pub(crate) struct Walked {
    pub path: String,
    pub stat: FileStat,
}

/// One walk in progress (see [`Project::walk`]).
struct Walk<'w> {
    project: &'w Project<'w>,
    excludes: &'w Excludes,
    keep: &'w (dyn Fn(&str) -> bool + Sync),
}

/// An entry of a folder's listing, kept until the listing is sorted.
struct Listed {
    path: String,
    is_dir: bool,
    stat: Option<FileStat>,
}

impl Walk<'_> {
    /// Lists the folder `rel` and takes its entries' metadata (in parallel, relative to
    /// the open folder), closes it before going deeper (so a deep tree does not hold a
    /// handle per level), then appends its entries to `out` in name order, each folder
    /// followed by what is in it.
    fn folder(&self, rel: &str, out: &mut Vec<Walked>) -> Result<(), HashError> {
        let io_err = |path: &str, source| HashError::Io {
            path: PathBuf::from(path),
            source,
        };
        let dir = full_path(self.project.root, rel);
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(rel, e))? {
            let entry = entry.map_err(|e| io_err(rel, e))?;
            // The type from the listing itself (no system call where the file system
            // gives it, as ext4 and most do).
            let kind = entry.file_type().map_err(|e| io_err(rel, e))?;
            if !(kind.is_file() || kind.is_symlink() || kind.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                let mut path = dir.join(&name);
                if let Ok(inside) = path.strip_prefix(self.project.root) {
                    path = inside.to_path_buf();
                }
                return Err(HashError::Io {
                    path,
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "file name is not valid UTF-8",
                    ),
                });
            };
            let path = join(rel, name);
            if self.project.skipped.contains(&path) || self.excludes.matches(&path) {
                continue;
            }
            entries.push((entry, path, kind.is_dir()));
        }
        // `statx(folder, name)`: the kernel resolves one name, not the whole path. A big
        // folder's entries are taken in parallel; a small one's on this thread, its
        // sibling folders being walked on the others.
        let stat_of = |(entry, path, is_dir): (std::fs::DirEntry, String, bool)| {
            let stat = if (self.keep)(&path) {
                Some(FileStat::of(
                    &entry.metadata().map_err(|e| io_err(&path, e))?,
                ))
            } else {
                None
            };
            Ok(Listed { path, is_dir, stat })
        };
        let mut listed = if entries.len() >= PARALLEL_ENTRIES {
            entries
                .into_par_iter()
                .map(stat_of)
                .collect::<Result<Vec<_>, HashError>>()?
        } else {
            entries
                .into_iter()
                .map(stat_of)
                .collect::<Result<Vec<_>, HashError>>()?
        };
        // In name order, as walkdir's `sort_by_file_name` gave (a local origin folder's
        // digest depends on the order): siblings' paths differ only in their names.
        listed.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        // The folders below, walked in parallel, each into a list of its own.
        let mut below = listed
            .par_iter()
            .filter(|entry| entry.is_dir)
            .map(|entry| {
                let mut inside = Vec::new();
                self.folder(&entry.path, &mut inside)?;
                Ok(inside)
            })
            .collect::<Result<Vec<_>, HashError>>()?
            .into_iter();
        for entry in listed {
            match (entry.is_dir, entry.stat) {
                (true, stat) => {
                    if let Some(stat) = stat {
                        out.push(Walked {
                            path: entry.path,
                            stat,
                        });
                    }
                    out.append(&mut below.next().unwrap_or_default());
                }
                (false, Some(stat)) => out.push(Walked {
                    path: entry.path,
                    stat,
                }),
                (false, None) => {}
            }
        }
        Ok(())
    }
}

/// `rel/name`, or `name` at the project root.
fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        let mut path = String::with_capacity(rel.len() + 1 + name.len());
        path.push_str(rel);
        path.push('/');
        path.push_str(name);
        path
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
    use super::*;

    /// A walk yields a folder's entries in name order, each folder right before what is in
    /// it: `a/x` comes before `a-b`, though `a-b` sorts before `a/x` as a whole path.
    #[test]
    fn a_walk_is_in_name_order_folder_first() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["B", "a/x", "a-b", "a.c", "\u{e9}", "a/y/z"] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file).unwrap();
        }
        let project = Project {
            root: dir.path(),
            canonical_root: dir.path().canonicalize().unwrap(),
            skipped: Vec::new(),
        };
        let seen: Vec<String> = project
            .walk("", &Excludes::default(), &|_| true)
            .unwrap()
            .into_iter()
            .map(|w| w.path)
            .collect();
        assert_eq!(
            seen,
            ["B", "a", "a/x", "a/y", "a/y/z", "a-b", "a.c", "\u{e9}"]
        );
        let kept = project
            .walk("a", &Excludes::default(), &|p| p.ends_with('z'))
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].path, "a/y/z");
        assert!(kept[0].stat.is_file());
    }
}
