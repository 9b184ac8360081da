//! Differences between two recorded things: manifests entry by entry, the package lists
//! in them, and canonical stanzas field by field.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::model::Trigger;
use crate::hash::{Manifest, Via};

use super::{Change, ModeChange, PackageChange};

impl ModeChange {
    fn of(old: Option<u32>, new: Option<u32>) -> Option<ModeChange> {
        match (old, new) {
            (Some(o), Some(n)) if o != n => Some(ModeChange {
                old: format!("{o:04o}"),
                new: format!("{n:04o}"),
            }),
            _ => None,
        }
    }
}

/// One changed entry between two manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDiff {
    pub path: String,
    pub change: Change,
    /// The trigger of the entry now (of the old entry when it was removed).
    pub trigger: Trigger,
    pub via: Via,
    pub mode: Option<ModeChange>,
}

/// Which packages a package list gained and lost between two manifests (`None` when the
/// entry is no package list, or when nothing on its list changed, e.g. only comments).
pub(super) fn package_change(old: &Manifest, new: &Manifest, path: &str) -> Option<PackageChange> {
    let before = old.get(path).and_then(|e| e.packages.as_ref());
    let after = new.get(path).and_then(|e| e.packages.as_ref());
    if before.is_none() && after.is_none() {
        return None;
    }
    let empty = Vec::new();
    let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let change = PackageChange {
        added: after
            .iter()
            .filter(|p| !before.contains(p))
            .cloned()
            .collect(),
        removed: before
            .iter()
            .filter(|p| !after.contains(p))
            .cloned()
            .collect(),
    };
    (!change.added.is_empty() || !change.removed.is_empty()).then_some(change)
}

/// What every package list of a node gained and lost between two manifests, or `None`
/// when neither manifest has a package list. Lists are told apart by path; a package on
/// two lists counts once.
pub fn package_changes(old: &Manifest, new: &Manifest) -> Option<PackageChange> {
    let paths: BTreeSet<&str> = old
        .entries
        .iter()
        .chain(&new.entries)
        .filter(|e| e.packages.is_some())
        .map(|e| e.path.as_str())
        .collect();
    if paths.is_empty() {
        return None;
    }
    let mut all = PackageChange::default();
    for path in paths {
        if let Some(c) = package_change(old, new, path) {
            all.added.extend(c.added);
            all.removed.extend(c.removed);
        }
    }
    for list in [&mut all.added, &mut all.removed] {
        list.sort();
        list.dedup();
    }
    Some(all)
}

/// Entry-by-entry differences between two manifests, sorted by path. A changed trigger
/// or way of declaring alone is no difference (it changes when a change counts, not what
/// the node is made of).
pub fn diff_manifests(old: &Manifest, new: &Manifest) -> Vec<EntryDiff> {
    let old_map: BTreeMap<&str, _> = old.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let new_map: BTreeMap<&str, _> = new.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = Vec::new();
    let diff = |path: &str, change, e: &crate::hash::ManifestEntry, mode| EntryDiff {
        path: path.to_string(),
        change,
        trigger: e.trigger,
        via: e.via,
        mode,
    };
    for (path, e) in &new_map {
        match old_map.get(path) {
            None => out.push(diff(path, Change::Added, e, None)),
            Some(o) => {
                let mode = ModeChange::of(o.mode, e.mode);
                if o.digest != e.digest || o.kind != e.kind {
                    out.push(diff(path, Change::Modified, e, mode));
                } else if mode.is_some() || o.mode != e.mode {
                    out.push(diff(path, Change::Mode, e, mode));
                }
            }
        }
    }
    for (path, e) in &old_map {
        if !new_map.contains_key(path) {
            out.push(diff(path, Change::Removed, e, None));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Names the parts of two canonical stanzas that differ (`build.steps`, `version`, …).
pub fn diff_fields(old: &str, new: &str) -> Vec<String> {
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<serde_json::Value>(old),
        serde_json::from_str::<serde_json::Value>(new),
    ) else {
        return vec!["stanza".into()];
    };
    let mut out = Vec::new();
    diff_values("", &a, &b, 0, &mut out);
    if out.is_empty() {
        out.push("stanza".into());
    }
    out
}

fn diff_values(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    depth: usize,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if depth < 2 => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if k == "v" {
                    continue;
                }
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let null = Value::Null;
                diff_values(
                    &name,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    depth + 1,
                    out,
                );
            }
        }
        _ => out.push(if prefix.is_empty() {
            "stanza".into()
        } else {
            prefix.to_string()
        }),
    }
}
