//! The project-level stanzas: `imgraph version=1`, `state`, and imgraph's own folders
//! (state, logs, staging, image stores), which no input or copy may name.

use std::path::{Path, PathBuf};

use super::{Str, V};
use crate::config::model::{ProviderDef, ProviderKind, SharedState};
use crate::config::raw::{Node, Scalar};

impl V<'_> {
    pub(super) fn imgraph(&mut self, node: &Node) {
        self.props(node, &["version"]);
        self.no_children(node);
        let _ = self.args(node, &[], "imgraph version=1");
        let Some(prop) = node.prop("version") else {
            return;
        };
        match prop.value.value {
            Scalar::Integer(1) => {}
            Scalar::Integer(n) => {
                self.diags
                    .error(
                        "unsupported_version",
                        prop.value.span,
                        format!("config version {n} is not supported"),
                        "unsupported version",
                    )
                    .help(
                        "this imgraph reads config version 1; a newer file needs a newer imgraph",
                    );
            }
            ref other => {
                self.diags
                    .error(
                        "wrong_type",
                        prop.value.span,
                        format!("expected a version number, found {}", other.kind()),
                        other.kind(),
                    )
                    .help("write it as `imgraph version=1` (without quotes)");
            }
        }
    }

    /// False (with a diagnostic) when `path` (normalised, maybe a glob) holds one of
    /// imgraph's own folders or lies inside one: the state, logs, staging folders and the
    /// image store change with every run, and copying them into an image would copy the
    /// state (and a build's own staging folder) into itself.
    pub(super) fn not_own(&mut self, path: &str, raw: &Str, what: &str) -> bool {
        let Some((own, kind, holds)) = self.own_clash(path) else {
            return true;
        };
        let (message, label) = if holds {
            (
                format!("{what} `{}` holds imgraph's {kind} `{own}`", raw.value),
                format!("holds `{own}`"),
            )
        } else {
            (
                format!("{what} `{}` is inside imgraph's {kind} `{own}`", raw.value),
                format!("inside `{own}`"),
            )
        };
        self.diags
            .error("own_folder", raw.span, message, label)
            .help("imgraph's own folders (state, logs, staging, image store) are never inputs nor copied into images: name the folders you mean (e.g. `input \"config\"`), or keep the state elsewhere in the project with `state path=\"...\"`");
        false
    }

    /// The first own folder `path` holds (`true`) or lies in (`false`).
    pub(super) fn own_clash(&self, path: &str) -> Option<(String, &'static str, bool)> {
        let glob = crate::config::paths::is_glob(path).then(|| {
            globset::GlobBuilder::new(path)
                .literal_separator(true)
                .build()
                .ok()
                .map(|g| g.compile_matcher())
        });
        for (own, kind) in &self.own {
            let holds = match &glob {
                // A glob takes a folder it matches whole: does it match the own folder
                // or a folder above it?
                Some(matcher) => {
                    let mut prefix = String::new();
                    own.split('/').any(|part| {
                        if !prefix.is_empty() {
                            prefix.push('/');
                        }
                        prefix.push_str(part);
                        matcher.as_ref().is_some_and(|m| m.is_match(&prefix))
                    })
                }
                None => {
                    path.is_empty()
                        || path == own
                        || own.strip_prefix(path).is_some_and(|r| r.starts_with('/'))
                }
            };
            if holds {
                return Some((own.clone(), kind, true));
            }
            if glob.is_none()
                && path
                    .strip_prefix(own.as_str())
                    .is_some_and(|r| r.starts_with('/'))
            {
                return Some((own.clone(), kind, false));
            }
        }
        None
    }

    /// `state path="..."` and/or `state { s3 ...; lease-ttl "60s"; }`: the local state
    /// file (the cache and mirror of a shared state) and the shared state.
    pub(super) fn state(&mut self, node: &Node) -> (Option<PathBuf>, Option<SharedState>) {
        self.props(node, &["path"]);
        let usage = "state path=\".imgraph/state.db\"";
        let _ = self.args(node, &[], usage);
        if node.children().is_empty() {
            return (self.state_path(node, usage), None);
        }
        let path = match node.prop("path") {
            Some(_) => self.state_path(node, usage),
            None => None,
        };
        (path, self.shared_state(node))
    }

    fn state_path(&mut self, node: &Node, usage: &str) -> Option<PathBuf> {
        let path = self.required_prop(node, "path", usage)?;
        if Path::new(&path.value).is_absolute() {
            let absolute = PathBuf::from(&path.value);
            if absolute.starts_with(&self.paths.root) && absolute != self.paths.root {
                return Some(absolute);
            }
            self.diags
                .error(
                    "state_outside",
                    path.span,
                    format!("state path `{}` is outside the project folder", path.value),
                    "outside the project",
                )
                .help("the state belongs to its project (its stat cache and logs are about these files): keep it inside the project folder, e.g. the default `.imgraph/state.db`");
            return None;
        }
        let rel = self
            .paths
            .relative(self.diags, &path.value, path.span, "state path")?;
        if rel.is_empty() {
            self.diags.error(
                "bad_value",
                path.span,
                "state path names the project folder itself",
                "not a file",
            );
            return None;
        }
        Some(self.paths.root.join(rel))
    }
}

/// imgraph's own folders (see [`crate::config::model::own_folders`]) that lie inside the
/// project, project-relative, with what each is; the project folder itself stands for
/// "every path".
pub(super) fn own_folders_in(
    root: &Path,
    state_path: &Path,
    providers: &[ProviderDef],
) -> Vec<(String, &'static str)> {
    let stores: Vec<PathBuf> = providers
        .iter()
        .filter_map(|p| match &p.kind {
            ProviderKind::Local { store, .. } => Some(store.clone()),
            ProviderKind::Aws { .. } => None,
        })
        .collect();
    let folders = crate::config::model::own_folders(state_path, stores.iter().cloned());
    let kinds = ["state folder", "logs folder", "staging folder"];
    folders
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let rel = f.strip_prefix(root).ok()?.to_str()?.to_owned();
            Some((rel, kinds.get(i).copied().unwrap_or("image store")))
        })
        .collect()
}
