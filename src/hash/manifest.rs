//! Manifests (the sorted inputs of one node) and the [`Hasher`] that builds them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cache::{lock, FileStat, StatCache};
use super::digest::{self, Encoder, MANIFEST_DOMAIN, TREE_DOMAIN};
use super::walk::{self, Excludes, Project, Walked};
use super::{run_probe, words, HashError};
use crate::config::model::{Input, InputKind, ProbePlace, RelPath, Trigger};

/// How long a probe may run before it is killed and the plan fails.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Entry paths of probes start with this (`probe:apt-index`).
pub const PROBE_PREFIX: &str = "probe:";

/// Entry paths of `env` variables start with this (`env:APP_FLAVOR`).
pub const ENV_PREFIX: &str = "env:";

/// The encoding of manifests this build writes; records without the field are format 1
/// (file digests with the executable bit, no modes, no folders, no variables).
pub const MANIFEST_FORMAT: u32 = 2;

/// One input of a node: a file, symlink or folder, a probe's output or a variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Project-relative path with `/`, `probe:NAME` for probes, `env:NAME` for variables.
    pub path: String,
    /// `b3v1:` digest of the file's content, the link's target, the probe's output or the
    /// variable's value (the value itself is never kept).
    pub digest: String,
    pub trigger: Trigger,
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`) of a file or folder: copies keep them in images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// How the path became an input. Not part of the digest: declaring a file that a
    /// command already named changes nothing.
    #[serde(default, skip_serializing_if = "Via::is_input")]
    pub via: Via,
    /// For package lists: the packages named (one per line; blank lines and `#` comments
    /// left out), sorted, so a plan can say which packages came and went. Not part of
    /// the digest (the file's digest already covers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
}

/// How an entry became an input of its node; a path reached several ways shows the first
/// of these.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Declared: `input`, `packages`, `probe`, `env`.
    #[default]
    Input,
    /// Read by the builder: a `copy` source, a Packer template.
    Copy,
    /// Inside the image's local origin folder.
    Origin,
    /// Named by a word of a command (`run "sh scripts/x.sh"`).
    Run,
}

impl Via {
    pub fn is_input(&self) -> bool {
        *self == Via::Input
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Input => "input",
            Via::Copy => "copy",
            Via::Origin => "origin",
            Via::Run => "run",
        }
    }
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
    Dir,
    Probe,
    /// A probe run inside an instance of the image (`in="image"`): its output is a fact
    /// about the image the build makes, so it decides whether the build runs but stays
    /// out of the key (see [`Manifest::digest`]).
    ImageProbe,
    Env,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Dir => "dir",
            EntryKind::Probe => "probe",
            EntryKind::ImageProbe => "image-probe",
            EntryKind::Env => "env",
        }
    }
}

/// Every input of a node, sorted by path, one entry per path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] when written by this build.
    #[serde(default = "legacy_format")]
    pub format: u32,
    pub entries: Vec<ManifestEntry>,
}

fn legacy_format() -> u32 {
    1
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            entries: Vec::new(),
        }
    }
}

impl Manifest {
    /// `b3v1:` digest of the canonical encoding: every entry's path, kind, digest and mode,
    /// in order, each length-prefixed. Not the trigger, nor how the entry was declared:
    /// those decide when a change counts, not what the node is made of.
    ///
    /// Probes run inside the image (`in="image"`) are left out: they observe what the
    /// previous build made, and after each build imgraph records what they observe in the
    /// new image (so the next plan compares against that, and a rebuild that took a fix
    /// in is not taken for a new change). A key that counted them would change after the
    /// build it names. They still decide: a changed output is a reason to run.
    pub fn digest(&self) -> String {
        let keyed: Vec<&ManifestEntry> = self
            .entries
            .iter()
            .filter(|e| e.kind != EntryKind::ImageProbe)
            .collect();
        let mut encoder = Encoder::new(MANIFEST_DOMAIN);
        encoder.count(keyed.len());
        for entry in keyed {
            encode_entry(&mut encoder, &entry.path, entry);
        }
        encoder.finish()
    }

    /// Whether the manifest has `in="image"` probes, whose digests decide but are not in
    /// the key (so an equal key does not mean equal inputs).
    pub fn has_image_probes(&self) -> bool {
        self.entries.iter().any(|e| e.kind == EntryKind::ImageProbe)
    }

    /// Replaces the digests of `in="image"` probes (by probe name) with `measured`.
    pub fn set_image_probes(&mut self, measured: &BTreeMap<String, String>) {
        for entry in &mut self.entries {
            if entry.kind != EntryKind::ImageProbe {
                continue;
            }
            let name = entry.path.strip_prefix(PROBE_PREFIX).unwrap_or(&entry.path);
            if let Some(digest) = measured.get(name) {
                entry.digest = digest.clone();
            }
        }
    }

    pub fn get(&self, path: &str) -> Option<&ManifestEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }
}

fn encode_entry(encoder: &mut Encoder, path: &str, entry: &ManifestEntry) {
    let mode = entry.mode.map(u32::to_le_bytes);
    encoder
        .field(path.as_bytes())
        .field(entry.kind.as_str().as_bytes())
        .field(entry.digest.as_bytes())
        .field(mode.as_ref().map_or(&[][..], |m| &m[..]));
}

/// What one node reads, as the config says it: the hasher turns it into a [`Manifest`].
#[derive(Debug, Clone, Default)]
pub struct NodeInputs<'a> {
    /// `input`, `packages` and `probe` children.
    pub declared: &'a [Input],
    /// Paths the builder reads (copy sources, a Packer template): immediate inputs.
    pub builder_reads: Vec<RelPath>,
    /// The image's local origin: a folder is listed entry by entry (a tarball is the
    /// source's own digest, outside the manifest).
    pub origin: Option<RelPath>,
    /// Commands run with the project folder as working folder; every word naming a
    /// project file or folder is an immediate input (see `words.rs`).
    pub commands: Vec<&'a str>,
    /// `env` names whose values are hashed (immediate).
    pub env: Vec<String>,
    /// Digests of the `in="image"` probes, by probe name, measured by the caller inside
    /// an instance of the image's current version (see [`no_image_yet`]).
    pub image_probes: BTreeMap<String, String>,
}

/// The digest an `in="image"` probe has while its image has no version to run in: a
/// constant, so it never changes by itself (the first build runs anyway, being new, and
/// records what the probe sees in the image it made).
pub fn no_image_yet() -> String {
    let marker: &[u8] = b"imgraph: no image yet";
    // Reading from memory cannot fail.
    digest::probe_stream(marker.len() as u64, &mut &marker[..]).unwrap_or_default()
}

/// The digest of `len` bytes of a probe's standard output, read from `stdout` as they
/// come (the same digest a probe run in the project gets for the same output).
pub fn probe_output_digest(len: u64, stdout: &mut impl std::io::Read) -> std::io::Result<String> {
    digest::probe_stream(len, stdout)
}

#[derive(Debug, Clone)]
struct Leaf {
    kind: EntryKind,
    digest: String,
    mode: Option<u32>,
}

/// Hashes inputs of one project for one plan.
///
/// It remembers the digest of every file it read and every path it looked up by name, so
/// a file or probe shared by several nodes is read (or run) once per plan; make a new
/// `Hasher` for each plan so edits between plans are seen. Entries a walk listed come
/// with their metadata and are not remembered when the stat cache answers for them (it
/// answers as fast as the memo would).
pub struct Hasher<'a> {
    root: &'a Path,
    project: Project<'a>,
    cache: &'a StatCache,
    leaves: Mutex<HashMap<String, Leaf, foldhash::fast::RandomState>>,
    /// Probe digests by command (two probes running the same command run it once).
    probes: Mutex<HashMap<String, String>>,
    /// The caller's environment, read once for the plan.
    env: HashMap<OsString, OsString>,
}

/// Where a path in the manifest comes from, while a manifest is put together.
#[derive(Default)]
struct Collected {
    /// Every path in the order found, a path found twice listed twice: `assemble` sorts
    /// and merges them (cheaper than keeping 20,000 paths of one folder in a sorted map).
    paths: Vec<Found>,
    probes: BTreeMap<String, (Trigger, String, EntryKind)>,
    env: BTreeMap<String, Trigger>,
    package_lists: BTreeSet<String>,
}

struct Found {
    walked: Walked,
    trigger: Trigger,
    via: Via,
}

impl Collected {
    fn add(&mut self, paths: Vec<Walked>, trigger: Trigger, via: Via) {
        self.paths.extend(paths.into_iter().map(|walked| Found {
            walked,
            trigger,
            via,
        }));
    }

    /// The paths sorted, each once, with the strongest trigger and first way it was
    /// reached.
    fn merged_paths(&mut self) -> Vec<Found> {
        let mut found = std::mem::take(&mut self.paths);
        found.sort_by(|a, b| a.walked.path.cmp(&b.walked.path));
        let mut merged: Vec<Found> = Vec::with_capacity(found.len());
        for f in found {
            match merged.last_mut() {
                Some(last) if last.walked.path == f.walked.path => {
                    last.trigger = last.trigger.min(f.trigger);
                    last.via = last.via.min(f.via);
                }
                _ => merged.push(f),
            }
        }
        merged
    }
    fn add_env(&mut self, name: &str, trigger: Trigger) {
        let slot = self.env.entry(name.to_owned()).or_insert(trigger);
        *slot = (*slot).min(trigger);
    }
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
                skipped: walk::SKIPPED_AT_ROOT
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            },
            cache,
            leaves: Mutex::new(HashMap::default()),
            probes: Mutex::new(HashMap::new()),
            env: HashMap::new(),
        }
    }

    /// Also never walks into these project-relative folders (imgraph's own: state, store,
    /// logs), and never takes a command word naming them or a folder holding them.
    pub fn skipping(mut self, folders: impl IntoIterator<Item = String>) -> Self {
        for folder in folders {
            if !folder.is_empty() && !self.project.skipped.contains(&folder) {
                self.project.skipped.push(folder);
            }
        }
        self
    }

    /// The variables `env` names are looked up in (without this, every one is unset).
    pub fn with_env(mut self, vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        self.env = vars.into_iter().collect();
        self
    }

    /// Every input of one node: declared inputs (files below folders, glob matches,
    /// probes), what the builder reads, the origin folder, files named in commands and
    /// variables. Sorted by path; a path reached with both triggers is immediate.
    pub fn manifest(&self, node: &NodeInputs<'_>) -> Result<Manifest, HashError> {
        let mut c = Collected::default();
        for input in node.declared {
            match &input.kind {
                InputKind::Path { pattern } => {
                    let excludes = Excludes::compile(&input.exclude)?;
                    let norm = walk::normalize(pattern)?;
                    let paths = if walk::is_glob(&norm) {
                        self.project.glob(&norm, &excludes)?
                    } else {
                        self.project.literal(&norm, &excludes)?
                    };
                    c.add(paths, input.trigger, Via::Input);
                }
                InputKind::Packages { path } => {
                    let excludes = Excludes::compile(&input.exclude)?;
                    let norm = walk::normalize(path.as_str())?;
                    c.package_lists.insert(norm.clone());
                    c.add(
                        self.project.literal(&norm, &excludes)?,
                        input.trigger,
                        Via::Input,
                    );
                }
                InputKind::Probe {
                    name,
                    command,
                    place,
                    env,
                    timeout,
                    ..
                } => {
                    let (digest, kind) = match place {
                        ProbePlace::Project => {
                            let mut names = env.names();
                            names.extend(node.env.iter().cloned());
                            let timeout = timeout.unwrap_or(PROBE_TIMEOUT);
                            (
                                self.probe(name, command, &names, timeout)?,
                                EntryKind::Probe,
                            )
                        }
                        ProbePlace::Image => (
                            node.image_probes.get(name).cloned().ok_or_else(|| {
                                HashError::Probe {
                                    name: name.clone(),
                                    detail: "it runs inside the image, and was not run".into(),
                                }
                            })?,
                            EntryKind::ImageProbe,
                        ),
                    };
                    let slot = c.probes.entry(format!("{PROBE_PREFIX}{name}")).or_insert((
                        input.trigger,
                        digest,
                        kind,
                    ));
                    slot.0 = slot.0.min(input.trigger);
                    // A probe in the image reads the image, not the project folder.
                    if *place == ProbePlace::Project {
                        for path in self.named_in(command)? {
                            c.add(path, input.trigger, Via::Run);
                        }
                    }
                    for name in &env.hashed {
                        c.add_env(name, input.trigger);
                    }
                }
            }
        }
        for path in &node.builder_reads {
            let norm = walk::normalize(path.as_str())?;
            let paths = self.project.literal(&norm, &Excludes::default())?;
            c.add(paths, Trigger::Immediate, Via::Copy);
        }
        if let Some(origin) = &node.origin {
            let norm = walk::normalize(origin.as_str())?;
            let paths = self.origin_paths(&norm)?.unwrap_or_default();
            c.add(paths, Trigger::Immediate, Via::Origin);
        }
        for command in &node.commands {
            for paths in self.named_in(command)? {
                c.add(paths, Trigger::Immediate, Via::Run);
            }
        }
        for name in &node.env {
            c.add_env(name, Trigger::Immediate);
        }
        self.assemble(c)
    }

    fn assemble(&self, mut c: Collected) -> Result<Manifest, HashError> {
        let paths = c.merged_paths();
        let package_lists = c.package_lists;
        let mut entries = paths
            .into_par_iter()
            .map(
                |Found {
                     walked,
                     trigger,
                     via,
                 }| {
                    let path = walked.path;
                    let leaf = self.leaf(&path, Some(walked.stat))?;
                    let packages = if package_lists.contains(&path) && leaf.kind == EntryKind::File
                    {
                        self.package_names(&path)
                    } else {
                        None
                    };
                    Ok(ManifestEntry {
                        path,
                        digest: leaf.digest,
                        trigger,
                        kind: leaf.kind,
                        mode: leaf.mode,
                        via,
                        packages,
                    })
                },
            )
            .collect::<Result<Vec<_>, HashError>>()?;
        entries.extend(
            c.probes
                .into_iter()
                .map(|(path, (trigger, digest, kind))| ManifestEntry {
                    path,
                    digest,
                    trigger,
                    kind,
                    mode: None,
                    via: Via::Input,
                    packages: None,
                }),
        );
        entries.extend(c.env.into_iter().map(|(name, trigger)| {
            let value = self.env.get(std::ffi::OsStr::new(&name));
            ManifestEntry {
                digest: digest::env(value.map(OsString::as_os_str)),
                path: format!("{ENV_PREFIX}{name}"),
                trigger,
                kind: EntryKind::Env,
                mode: None,
                via: Via::Input,
                packages: None,
            }
        }));
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // A file literally named `probe:NAME` or `env:NAME` at the project root would
        // collide; keep the first (sort is stable, files come first) so paths stay unique.
        entries.dedup_by(|later, earlier| later.path == earlier.path);
        Ok(Manifest {
            format: MANIFEST_FORMAT,
            entries,
        })
    }

    /// The project paths a command names (see `words.rs`), each as the entries it stands
    /// for (a folder with everything below it). Words that name nothing in the project,
    /// leave it, or name imgraph's own folders (or a folder holding them, like `.`) are
    /// not inputs.
    fn named_in(&self, command: &str) -> Result<Vec<Vec<Walked>>, HashError> {
        let mut out = Vec::new();
        for word in words::candidates(command) {
            let mut word = word.as_str();
            while let Some(rest) = word.strip_prefix("./") {
                word = rest;
            }
            if word.starts_with('/') {
                continue;
            }
            let Ok(norm) = walk::normalize(word) else {
                continue;
            };
            if norm.is_empty() || self.is_own(&norm) {
                continue;
            }
            let parent = norm.rsplit_once('/').map_or("", |(dir, _)| dir);
            if self.project.check_dir_inside(parent, &norm).is_err() {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(walk::full_path(self.root, &norm)) else {
                continue;
            };
            let kind = md.file_type();
            if kind.is_file() || kind.is_symlink() || kind.is_dir() {
                out.push(self.project.literal(&norm, &Excludes::default())?);
            }
        }
        Ok(out)
    }

    /// Whether `norm` is one of the skipped folders, inside one, or holds one.
    fn is_own(&self, norm: &str) -> bool {
        self.project.skipped.iter().any(|own| {
            norm == own
                || norm
                    .strip_prefix(own.as_str())
                    .is_some_and(|r| r.starts_with('/'))
                || own.strip_prefix(norm).is_some_and(|r| r.starts_with('/'))
        })
    }

    /// The entries of a local origin folder: everything below it (not the folder itself,
    /// which an image does not keep); `None` for a tarball.
    fn origin_paths(&self, norm: &str) -> Result<Option<Vec<Walked>>, HashError> {
        let parent = norm.rsplit_once('/').map_or("", |(dir, _)| dir);
        self.project.check_dir_inside(parent, norm)?;
        let md = std::fs::metadata(walk::full_path(self.root, norm)).map_err(|source| {
            HashError::Io {
                path: PathBuf::from(norm),
                source,
            }
        })?;
        if !md.is_dir() {
            return Ok(None);
        }
        let paths = self
            .project
            .walk(norm, &Excludes::default(), &|p| p != norm)?;
        Ok(Some(paths))
    }

    /// Digest of a local source: a tarball's file digest, or for a folder the digest of
    /// every entry below it (path relative to the folder, kind, digest, mode), so renames,
    /// moves, mode changes and empty folders change it, and moving the folder does not.
    pub fn tree_digest(&self, rel: &str) -> Result<String, HashError> {
        let norm = walk::normalize(rel)?;
        let Some(paths) = self.origin_paths(&norm)? else {
            return Ok(self.leaf(&norm, None)?.digest);
        };
        let leaves = paths
            .par_iter()
            .map(|w| self.leaf(&w.path, Some(w.stat)))
            .collect::<Result<Vec<_>, HashError>>()?;
        let skip = if norm.is_empty() { 0 } else { norm.len() + 1 };
        let mut encoder = Encoder::new(TREE_DOMAIN);
        encoder.count(paths.len());
        for (Walked { path, .. }, leaf) in paths.iter().zip(leaves) {
            let entry = ManifestEntry {
                path: String::new(),
                digest: leaf.digest,
                trigger: Trigger::Immediate,
                kind: leaf.kind,
                mode: leaf.mode,
                via: Via::Origin,
                packages: None,
            };
            encode_entry(&mut encoder, &path[skip..], &entry);
        }
        Ok(encoder.finish())
    }

    fn probe(
        &self,
        name: &str,
        command: &str,
        env: &[String],
        timeout: Duration,
    ) -> Result<String, HashError> {
        if let Some(digest) = lock(&self.probes).get(command) {
            return Ok(digest.clone());
        }
        let digest = run_probe(self.root, name, command, env, timeout)?;
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

    /// Digest and mode of one entry (project-relative, normalised). `seen` is the
    /// metadata a walk took when it listed the entry; without it, the memo answers or the
    /// entry is looked up. A file's digest comes from the stat cache when its metadata
    /// matches, else from the memo (another node read it), else from reading it.
    fn leaf(&self, rel: &str, seen: Option<FileStat>) -> Result<Leaf, HashError> {
        let io_err = |source| HashError::Io {
            path: PathBuf::from(rel),
            source,
        };
        let stat = match seen {
            Some(stat) => stat,
            None => match self.remembered(rel) {
                Some(leaf) => return Ok(leaf),
                None => FileStat::of(
                    &std::fs::symlink_metadata(walk::full_path(self.root, rel)).map_err(io_err)?,
                ),
            },
        };
        let mode = Some(stat.mode & 0o7777);
        let cached = if stat.is_file() {
            self.cache.lookup(rel, &stat)
        } else {
            None
        };
        let hit = cached.is_some();
        let leaf = if let Some(digest) = cached {
            Leaf {
                kind: EntryKind::File,
                digest,
                mode,
            }
        } else if stat.is_dir() {
            Leaf {
                kind: EntryKind::Dir,
                digest: digest::dir(),
                mode,
            }
        } else if let Some(leaf) = seen.and_then(|_| self.remembered(rel)) {
            return Ok(leaf);
        } else if stat.is_file() {
            let (digest, mode) = self.read_file(rel, &walk::full_path(self.root, rel))?;
            Leaf {
                kind: EntryKind::File,
                digest,
                mode: Some(mode),
            }
        } else if stat.is_symlink() {
            let target = std::fs::read_link(walk::full_path(self.root, rel)).map_err(io_err)?;
            Leaf {
                kind: EntryKind::Symlink,
                digest: digest::symlink(target.as_os_str()),
                mode: None,
            }
        } else {
            return Err(walk::not_hashable(rel));
        };
        // A walked entry the stat cache answered for, or a folder, costs nothing to
        // find again; everything else is remembered.
        if seen.is_none() || !(hit || stat.is_dir()) {
            lock(&self.leaves).insert(rel.to_owned(), leaf.clone());
        }
        Ok(leaf)
    }

    fn remembered(&self, rel: &str) -> Option<Leaf> {
        lock(&self.leaves).get(rel).cloned()
    }

    /// Reads and hashes a file, recording the metadata of the handle actually read.
    /// Returns the digest and the permission bits of that handle.
    fn read_file(&self, rel: &str, path: &Path) -> Result<(String, u32), HashError> {
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
        let digest = digest::file(&mut file, md.len()).map_err(io_err)?;
        self.cache.record(rel, FileStat::of(&md), &digest);
        Ok((digest, md.permissions().mode() & 0o7777))
    }
}
