//! Manifests (the sorted leaf inputs of one node) and the [`Hasher`] that builds them.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cache::{lock, FileStat, StatCache};
use super::digest::{self, Encoder, MANIFEST_DOMAIN, TREE_DOMAIN};
use super::walk::{self, Excludes, Project};
use super::{run_probe, HashError};
use crate::config::model::{Input, InputKind, RelPath, Trigger};

/// How long a probe may run before it is killed and the plan fails.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Entry paths of probes start with this (`probe:apt-index`).
pub const PROBE_PREFIX: &str = "probe:";

/// One leaf input of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Project-relative path with `/`, or `probe:NAME` for probes.
    pub path: String,
    /// `b3v1:` digest of the file, link or probe output.
    pub digest: String,
    pub trigger: Trigger,
    pub kind: EntryKind,
    /// For package lists: the packages named (one per line; blank lines and `#` comments
    /// left out), sorted, so a plan can say which packages came and went. Not part of
    /// the digest (the file's digest already covers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
}

/// The largest package list whose names a manifest keeps.
const MAX_PACKAGE_LIST: u64 = 1 << 20;

/// The package names of a package list file: one per line, `#` starts a comment.
pub fn parse_package_list(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    File,
    Symlink,
    Probe,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Probe => "probe",
        }
    }
}

/// Every leaf input of a node, sorted by path, one entry per path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// `b3v1:` digest of the canonical encoding: every entry's path, kind, trigger and
    /// digest, in order, each length-prefixed.
    pub fn digest(&self) -> String {
        let mut encoder = Encoder::new(MANIFEST_DOMAIN);
        encoder.count(self.entries.len());
        for entry in &self.entries {
            encoder
                .field(entry.path.as_bytes())
                .field(entry.kind.as_str().as_bytes())
                .field(entry.trigger.as_str().as_bytes())
                .field(entry.digest.as_bytes());
        }
        encoder.finish()
    }

    pub fn get(&self, path: &str) -> Option<&ManifestEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }
}

#[derive(Debug, Clone)]
struct Leaf {
    kind: EntryKind,
    digest: String,
}

/// Hashes inputs of one project for one plan.
///
/// It remembers every digest it computed, so a file or probe shared by several nodes is
/// read (or run) once per plan; make a new `Hasher` for each plan so edits between plans
/// are seen.
pub struct Hasher<'a> {
    root: &'a Path,
    project: Project<'a>,
    cache: &'a StatCache,
    leaves: Mutex<HashMap<String, Leaf>>,
    /// Probe digests by command (two probes running the same command run it once).
    probes: Mutex<HashMap<String, String>>,
}

impl<'a> Hasher<'a> {
    pub fn new(root: &'a Path, cache: &'a StatCache) -> Self {
        // A root that cannot be canonicalised fails on the first file read anyway.
        let canonical_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        Hasher {
            root,
            project: Project {
                root,
                canonical_root,
            },
            cache,
            leaves: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// Leaf entries of the given inputs (files below directories, glob matches, probes),
    /// plus `extra_immediate` paths (files the builder reads, like copy sources: hashed as
    /// immediate inputs). Sorted by path; a path reached with both triggers is immediate.
    pub fn manifest(
        &self,
        inputs: &[Input],
        extra_immediate: &[RelPath],
    ) -> Result<Manifest, HashError> {
        let mut files: BTreeMap<String, Trigger> = BTreeMap::new();
        let mut probes: BTreeMap<String, (Trigger, String)> = BTreeMap::new();
        let add = |files: &mut BTreeMap<String, Trigger>, paths: Vec<String>, t: Trigger| {
            for path in paths {
                let slot = files.entry(path).or_insert(t);
                *slot = (*slot).min(t);
            }
        };
        let mut package_lists: std::collections::BTreeSet<String> =
            std::collections::BTreeSet::new();
        for input in inputs {
            match &input.kind {
                InputKind::Path { pattern } => {
                    let excludes = Excludes::compile(&input.exclude)?;
                    let norm = walk::normalize(pattern)?;
                    let paths = if walk::is_glob(&norm) {
                        self.project.glob(&norm, &excludes)?
                    } else {
                        self.project.literal(&norm, &excludes)?
                    };
                    add(&mut files, paths, input.trigger);
                }
                InputKind::Packages { path } => {
                    let excludes = Excludes::compile(&input.exclude)?;
                    let norm = walk::normalize(path.as_str())?;
                    package_lists.insert(norm.clone());
                    add(
                        &mut files,
                        self.project.literal(&norm, &excludes)?,
                        input.trigger,
                    );
                }
                InputKind::Probe { name, command } => {
                    let digest = self.probe(name, command)?;
                    let slot = probes
                        .entry(format!("{PROBE_PREFIX}{name}"))
                        .or_insert((input.trigger, digest));
                    slot.0 = slot.0.min(input.trigger);
                }
            }
        }
        for path in extra_immediate {
            let norm = walk::normalize(path.as_str())?;
            let paths = self.project.literal(&norm, &Excludes::default())?;
            add(&mut files, paths, Trigger::Immediate);
        }

        let files: Vec<(String, Trigger)> = files.into_iter().collect();
        let mut entries = files
            .into_par_iter()
            .map(|(path, trigger)| {
                let leaf = self.leaf(&path)?;
                let packages = if package_lists.contains(&path) && leaf.kind == EntryKind::File {
                    self.package_names(&path)
                } else {
                    None
                };
                Ok(ManifestEntry {
                    path,
                    digest: leaf.digest,
                    trigger,
                    kind: leaf.kind,
                    packages,
                })
            })
            .collect::<Result<Vec<_>, HashError>>()?;
        entries.extend(
            probes
                .into_iter()
                .map(|(path, (trigger, digest))| ManifestEntry {
                    path,
                    digest,
                    packages: None,
                    trigger,
                    kind: EntryKind::Probe,
                }),
        );
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // A file literally named `probe:NAME` at the project root would collide with a
        // probe; keep the first (sort is stable, files come first) so paths stay unique.
        entries.dedup_by(|later, earlier| later.path == earlier.path);
        Ok(Manifest { entries })
    }

    /// Digest of a whole file or directory tree (a local source: tarball bytes or a
    /// directory). A directory's digest covers each leaf's path relative to it and its
    /// digest, so renames and moves change it; a file's digest is its file digest.
    pub fn tree_digest(&self, rel: &str) -> Result<String, HashError> {
        let norm = walk::normalize(rel)?;
        let parent = norm.rsplit_once('/').map_or("", |(dir, _)| dir);
        self.project.check_dir_inside(parent, &norm)?;
        let md =
            std::fs::symlink_metadata(walk::full_path(self.root, &norm)).map_err(|source| {
                HashError::Io {
                    path: PathBuf::from(&norm),
                    source,
                }
            })?;
        if !md.is_dir() {
            return Ok(self.leaf(&norm)?.digest);
        }
        let mut leaves = Vec::new();
        self.project
            .walk(&norm, &Excludes::default(), |leaf| leaves.push(leaf))?;
        leaves.sort();
        let digests = leaves
            .par_iter()
            .map(|path| self.leaf(path).map(|leaf| leaf.digest))
            .collect::<Result<Vec<_>, HashError>>()?;
        let skip = if norm.is_empty() { 0 } else { norm.len() + 1 };
        let mut encoder = Encoder::new(TREE_DOMAIN);
        encoder.count(leaves.len());
        for (path, digest) in leaves.iter().zip(&digests) {
            encoder
                .field(&path.as_bytes()[skip..])
                .field(digest.as_bytes());
        }
        Ok(encoder.finish())
    }

    fn probe(&self, name: &str, command: &str) -> Result<String, HashError> {
        if let Some(digest) = lock(&self.probes).get(command) {
            return Ok(digest.clone());
        }
        let digest = run_probe(self.root, name, command, PROBE_TIMEOUT)?;
        lock(&self.probes).insert(command.to_owned(), digest.clone());
        Ok(digest)
    }

    /// The names in a package list, when it is small enough and valid UTF-8 (best effort:
    /// the digest, not this, decides whether the node runs).
    fn package_names(&self, rel: &str) -> Option<Vec<String>> {
        let path = walk::full_path(self.root, rel);
        let md = std::fs::metadata(&path).ok()?;
        if md.len() > MAX_PACKAGE_LIST {
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        Some(parse_package_list(&text))
    }

    /// Digest of one leaf (project-relative, normalised): memo, then stat cache, then read.
    fn leaf(&self, rel: &str) -> Result<Leaf, HashError> {
        if let Some(leaf) = lock(&self.leaves).get(rel) {
            return Ok(leaf.clone());
        }
        let path = walk::full_path(self.root, rel);
        let io_err = |source| HashError::Io {
            path: PathBuf::from(rel),
            source,
        };
        let md = std::fs::symlink_metadata(&path).map_err(io_err)?;
        let leaf = if md.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_err)?;
            Leaf {
                kind: EntryKind::Symlink,
                digest: digest::symlink(target.as_os_str()),
            }
        } else if md.is_file() {
            let stat = FileStat::of(&md);
            let digest = match self.cache.lookup(rel, &stat) {
                Some(digest) => digest,
                None => self.read_file(rel, &path)?,
            };
            Leaf {
                kind: EntryKind::File,
                digest,
            }
        } else {
            return Err(walk::not_hashable(rel));
        };
        lock(&self.leaves).insert(rel.to_owned(), leaf.clone());
        Ok(leaf)
    }

    /// Reads and hashes a file, recording the metadata of the handle actually read.
    fn read_file(&self, rel: &str, path: &Path) -> Result<String, HashError> {
        let io_err = |source| HashError::Io {
            path: PathBuf::from(rel),
            source,
        };
        // O_NOFOLLOW: if the file was swapped for a symlink since it was listed, fail
        // instead of reading whatever the link points at.
        let mut file: File = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let md = file.metadata().map_err(io_err)?;
        if !md.is_file() {
            return Err(walk::not_hashable(rel));
        }
        let executable = md.permissions().mode() & 0o111 != 0;
        let digest = digest::file(&mut file, executable, md.len()).map_err(io_err)?;
        self.cache.record(rel, FileStat::of(&md), &digest);
        Ok(digest)
    }
}
