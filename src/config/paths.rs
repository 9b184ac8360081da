//! Path checks for the config: every path is relative to the project folder and must stay
//! inside it, both as written (no absolute paths, no `..` above the root) and on disk (a
//! symlink leading out of the project is refused, found by canonicalising).
//!
//! Paths are normalised to `/`-separated strings without `.` or empty components, which is
//! what [`RelPath`] holds and what the hash module expects. Globs use the hash module's
//! rules (`*` stays within one folder, `**` crosses folders) and are checked to match at
//! least one entry; the walk starts at the glob's literal prefix and stops at the first
//! match, so a narrow glob in a big project stays cheap.

use std::path::{Path, PathBuf};

use globset::GlobBuilder;
use miette::SourceSpan;
use walkdir::WalkDir;

use super::diag::{did_you_mean, Diags};
use super::model::RelPath;

/// Folders at the project root that belong to imgraph or git, never inputs.
const SKIPPED_AT_ROOT: [&str; 2] = [".git", ".imgraph"];

/// What must be found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    File,
    FileOrDir,
}

pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// The project folder, canonical, that every path is checked against.
pub(crate) struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub(crate) fn new(root: PathBuf) -> Self {
        Paths { root }
    }

    /// Lexically normalised project-relative form of `raw`, or a diagnostic when it is
    /// empty, absolute or climbs above the project. `""` means the project folder itself.
    pub(crate) fn relative(
        &self,
        diags: &mut Diags,
        raw: &str,
        span: SourceSpan,
        what: &str,
    ) -> Option<String> {
        if raw.trim().is_empty() {
            diags.error(
                "empty_path",
                span,
                format!("{what} path is empty"),
                "empty path",
            );
            return None;
        }
        if raw.chars().any(char::is_control) {
            diags.error(
                "control_character",
                span,
                format!("{what} path {raw:?} contains a control character"),
                "control character in this path",
            );
            return None;
        }
        if Path::new(raw).is_absolute() || raw.starts_with('/') {
            diags
                .error(
                    "path_absolute",
                    span,
                    format!("{what} `{raw}` is an absolute path"),
                    "absolute path",
                )
                .help("paths are relative to the project folder (the folder holding imgraph.kdl); move the file into the project");
            return None;
        }
        match normalize(raw) {
            Some(normal) => Some(normal),
            None => {
                diags
                    .error(
                        "path_outside",
                        span,
                        format!("{what} `{raw}` leaves the project folder"),
                        "`..` climbs above the project folder",
                    )
                    .help("everything imgraph reads must live inside the project folder (the folder holding imgraph.kdl)");
                None
            }
        }
    }

    /// A path that must exist (as `expect` says) and resolve inside the project.
    pub(crate) fn existing(
        &self,
        diags: &mut Diags,
        raw: &str,
        span: SourceSpan,
        what: &str,
        expect: Expect,
    ) -> Option<RelPath> {
        let rel = self.relative(diags, raw, span, what)?;
        if !own_folder_left_alone(diags, &rel, raw, span, what) {
            return None;
        }
        let full = self.full(&rel);
        let meta = match std::fs::metadata(&full) {
            Ok(meta) => meta,
            Err(_) => {
                let hint = self
                    .sibling_hint(&rel)
                    .or_else(|| self.maker_hint(&rel))
                    .unwrap_or_else(|| {
                        "paths are relative to the project folder (the folder holding imgraph.kdl)"
                            .to_owned()
                    });
                diags
                    .error(
                        "missing_file",
                        span,
                        format!("{what} `{raw}` does not exist"),
                        "not found in the project folder",
                    )
                    .help(hint);
                return None;
            }
        };
        if !self.resolves_inside(&full) {
            outside_via_symlink(diags, raw, span, what);
            return None;
        }
        if !meta.is_file() && !meta.is_dir() {
            diags.error(
                "not_a_file",
                span,
                format!("{what} `{raw}` is a FIFO, socket or device, not a file or folder"),
                "not a file or folder",
            );
            return None;
        }
        if expect == Expect::File && !meta.is_file() {
            diags.error(
                "not_a_file",
                span,
                format!("{what} `{raw}` is a directory, not a file"),
                "expected a file",
            );
            return None;
        }
        Some(RelPath(rel))
    }

    /// A path that need not exist yet (e.g. the image store): checked lexically, and on disk
    /// when it does exist.
    pub(crate) fn maybe_existing(
        &self,
        diags: &mut Diags,
        raw: &str,
        span: SourceSpan,
        what: &str,
    ) -> Option<String> {
        let rel = self.relative(diags, raw, span, what)?;
        let full = self.full(&rel);
        if full.exists() && !self.resolves_inside(&full) {
            outside_via_symlink(diags, raw, span, what);
            return None;
        }
        Some(rel)
    }

    /// An input: a glob that must match something, or a plain path that must exist.
    /// Returns the normalised pattern.
    pub(crate) fn input(&self, diags: &mut Diags, raw: &str, span: SourceSpan) -> Option<String> {
        if !is_glob(raw) {
            return self
                .existing(diags, raw, span, "input", Expect::FileOrDir)
                .map(|p| p.0);
        }
        let pattern = self.relative(diags, raw, span, "input")?;
        if !own_folder_left_alone(diags, &pattern, raw, span, "input") {
            return None;
        }
        let matcher = match GlobBuilder::new(&pattern).literal_separator(true).build() {
            Ok(glob) => glob.compile_matcher(),
            Err(err) => {
                diags
                    .error(
                        "bad_glob",
                        span,
                        format!("invalid glob `{raw}`: {}", err.kind()),
                        "invalid glob",
                    )
                    .help("`*` matches within one folder, `**` across folders, `?` one character, `[abc]` a set, `{a,b}` alternatives");
                return None;
            }
        };
        let prefix = literal_prefix(&pattern);
        let base = self.full(&prefix);
        if base.exists() && !self.resolves_inside(&base) {
            outside_via_symlink(diags, raw, span, "input");
            return None;
        }
        if !self.any_match(&prefix, &matcher) {
            diags
                .error(
                    "glob_no_match",
                    span,
                    format!("input glob `{raw}` matches no file"),
                    "matches nothing in the project folder",
                )
                .help("`*` matches within one folder and `**` across folders; paths are relative to the project folder");
            return None;
        }
        Some(pattern)
    }

    /// Checks an `exclude` pattern compiles the way the hash module will compile it.
    pub(crate) fn exclude(&self, diags: &mut Diags, raw: &str, span: SourceSpan) -> Option<String> {
        if raw.trim().is_empty() {
            diags.error(
                "empty_path",
                span,
                "exclude pattern is empty",
                "empty pattern",
            );
            return None;
        }
        let full = if raw.contains('/') {
            raw.trim_start_matches("./").to_owned()
        } else {
            format!("**/{raw}")
        };
        match GlobBuilder::new(&full).literal_separator(true).build() {
            Ok(_) => Some(raw.to_owned()),
            Err(err) => {
                diags.error(
                    "bad_glob",
                    span,
                    format!("invalid exclude pattern `{raw}`: {}", err.kind()),
                    "invalid glob",
                );
                None
            }
        }
    }

    fn full(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn resolves_inside(&self, full: &Path) -> bool {
        match full.canonicalize() {
            Ok(real) => real.starts_with(&self.root),
            // It exists (we looked) but cannot be resolved: let the reader report it later.
            Err(_) => true,
        }
    }

    /// Walks from the glob's literal prefix and stops at the first entry that matches.
    fn any_match(&self, prefix: &str, matcher: &globset::GlobMatcher) -> bool {
        let base = self.full(prefix);
        let walk = WalkDir::new(&base)
            .min_depth(1)
            .follow_links(false)
            .into_iter()
            .filter_entry(|entry| {
                let at_root = prefix.is_empty() && entry.depth() == 1;
                !(at_root
                    && entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| SKIPPED_AT_ROOT.contains(&n)))
            });
        for entry in walk.flatten() {
            let Ok(below) = entry.path().strip_prefix(&base) else {
                continue;
            };
            let Some(below) = slash_path(below) else {
                continue;
            };
            let rel = if prefix.is_empty() {
                below
            } else {
                format!("{prefix}/{below}")
            };
            if matcher.is_match(&rel) {
                return true;
            }
        }
        false
    }

    /// "did you mean `scripts/provision.sh`?" from the names next to a missing file.
    fn sibling_hint(&self, rel: &str) -> Option<String> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let entries = std::fs::read_dir(self.full(parent)).ok()?;
        let names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        let close = did_you_mean(name, names.iter().map(String::as_str))?;
        let shown = if parent.is_empty() {
            close.to_owned()
        } else {
            format!("{parent}/{close}")
        };
        Some(format!("did you mean `{shown}`?"))
    }
}

impl Paths {
    /// "run `sh make-root.sh` first" when a shell script at the top of the project (or in
    /// `scripts/`) names the missing path: examples that assemble their origin say so.
    fn maker_hint(&self, rel: &str) -> Option<String> {
        if rel.is_empty() {
            return None;
        }
        for folder in ["", "scripts"] {
            let Ok(entries) = std::fs::read_dir(self.full(folder)) else {
                continue;
            };
            let mut scripts: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.ends_with(".sh"))
                .collect();
            scripts.sort();
            for name in scripts {
                let shown = if folder.is_empty() {
                    name
                } else {
                    format!("{folder}/{name}")
                };
                let Ok(text) = std::fs::read_to_string(self.full(&shown)) else {
                    continue;
                };
                if text.contains(rel) {
                    return Some(format!(
                        "`{shown}` names `{rel}`: run `sh {shown}` first to create it"
                    ));
                }
            }
        }
        None
    }
}

fn outside_via_symlink(diags: &mut Diags, raw: &str, span: SourceSpan, what: &str) {
    diags
        .error(
            "path_outside",
            span,
            format!("{what} `{raw}` resolves outside the project folder"),
            "a symlink on this path leads outside the project",
        )
        .help("everything imgraph reads must live inside the project folder; copy the file in instead of linking to it");
}

/// `./a//b/../c` → `a/c`; `None` when `..` climbs above the start.
pub(crate) fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// The folders of a normalised glob before its first component with a glob character.
fn literal_prefix(pattern: &str) -> String {
    let components: Vec<&str> = pattern.split('/').collect();
    let literal = components
        .iter()
        .take_while(|c| !is_glob(c))
        .count()
        // The last component is the name being matched, never a folder to walk from.
        .min(components.len().saturating_sub(1));
    components[..literal].join("/")
}

fn slash_path(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        parts.push(component.as_os_str().to_str()?);
    }
    Some(parts.join("/"))
}

/// imgraph's own folder at the project root (state, store, logs) changes with every run:
/// as an input it would make every plan a rebuild, as a copy source it would pack the
/// store into the image.
fn own_folder_left_alone(
    diags: &mut Diags,
    rel: &str,
    raw: &str,
    span: SourceSpan,
    what: &str,
) -> bool {
    let first = rel.split('/').next().unwrap_or("");
    if first != ".imgraph" {
        return true;
    }
    diags
        .error(
            "own_folder",
            span,
            format!("{what} `{raw}` is inside .imgraph, imgraph's own folder"),
            "imgraph's own folder",
        )
        .help("the state, the image store and the logs change with every run; name project files instead");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_without_leaving_the_root() {
        assert_eq!(normalize("./a//b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("a/..").as_deref(), Some(""));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("a/../../x"), None);
    }

    #[test]
    fn walks_globs_from_their_literal_prefix() {
        assert_eq!(literal_prefix("roles/*/tasks/*.yml"), "roles");
        assert_eq!(literal_prefix("*.sh"), "");
        assert_eq!(literal_prefix("scripts/**"), "scripts");
        assert_eq!(literal_prefix("a/b/c"), "a/b");
    }
}
