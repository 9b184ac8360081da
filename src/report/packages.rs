//! Renderings of what is inside image versions: `imgraph packages` and `imgraph diff`,
//! as text and as JSON (`format_version` 1).

use std::fmt::Write as _;

use serde_json::json;

use super::{short_id, Palette};
use crate::packages::{FileChanges, Inventory, Package, PackageDiff};
use crate::state::ImageRecord;

pub const FORMAT_VERSION: u32 = 1;

// The values these renderings take; `crate::contents` gathers them from a workspace.

/// One image version and its packages.
#[derive(Debug, Clone)]
pub struct VersionContents {
    pub record: ImageRecord,
    pub inventory: Inventory,
}

/// Two versions of one image compared.
#[derive(Debug, Clone)]
pub struct VersionDiff {
    pub from: ImageRecord,
    pub to: ImageRecord,
    pub packages: PackageDiff,
    /// Paths added, removed and modified, or why they could not be counted.
    pub files: std::result::Result<FileChanges, String>,
}

fn version_json(r: &ImageRecord) -> serde_json::Value {
    json!({
        "image": r.version.image, "version": r.version.version, "id": r.version.artifact_id,
        "status": r.version.status.as_str(),
    })
}

fn managers(inv: &Inventory) -> String {
    if inv.managers.is_empty() {
        "no package database found".into()
    } else {
        inv.managers
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn packages_json(c: &VersionContents) -> String {
    let inv = &c.inventory;
    let doc = json!({
        "format_version": FORMAT_VERSION,
        "image": version_json(&c.record),
        "os": inv.os,
        "managers": inv.managers,
        "packages": inv.packages,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

pub fn packages_text(c: &VersionContents, p: Palette) -> String {
    let (r, inv) = (&c.record, &c.inventory);
    let mut out = String::new();
    let os = inv
        .os
        .pretty_name
        .clone()
        .or_else(|| inv.os.id.clone())
        .unwrap_or_else(|| "unknown system".into());
    let _ = writeln!(
        out,
        "{} {} ({}, {}): {os}, {} packages ({})",
        p.bold(&r.version.image),
        r.version.version,
        short_id(&r.version.artifact_id),
        r.version.status.as_str(),
        inv.packages.len(),
        managers(inv)
    );
    if inv.packages.is_empty() {
        return out;
    }
    let wn = inv
        .packages
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let wv = inv
        .packages
        .iter()
        .map(|p| p.version.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(out, "{:wn$}  {:wv$}  ARCH", "NAME", "VERSION");
    for pkg in &inv.packages {
        let _ = writeln!(out, "{:wn$}  {:wv$}  {}", pkg.name, pkg.version, pkg.arch);
    }
    out
}

pub fn diff_json(d: &VersionDiff) -> String {
    let files = match &d.files {
        Ok(c) => {
            json!({"added": c.added, "removed": c.removed, "modified": c.modified, "changed": c.total()})
        }
        Err(why) => json!({"unknown": why}),
    };
    let doc = json!({
        "format_version": FORMAT_VERSION,
        "from": version_json(&d.from),
        "to": version_json(&d.to),
        "packages": d.packages,
        "files": files,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn arch(pkg: &Package) -> String {
    if pkg.arch.is_empty() {
        String::new()
    } else {
        format!(" ({})", pkg.arch)
    }
}

pub fn diff_text(d: &VersionDiff, p: Palette) -> String {
    let mut out = String::new();
    let pk = &d.packages;
    let _ = writeln!(
        out,
        "{} {} → {}",
        p.bold(&d.from.version.image),
        d.from.version.version,
        d.to.version.version
    );
    let _ = writeln!(
        out,
        "Packages: {} added, {} removed, {} upgraded, {} downgraded",
        pk.added.len(),
        pk.removed.len(),
        pk.upgraded.len(),
        pk.downgraded.len()
    );
    for a in &pk.added {
        let _ = writeln!(
            out,
            "  {} {} {}{}",
            p.green("+"),
            a.name,
            a.version,
            arch(a)
        );
    }
    for r in &pk.removed {
        let _ = writeln!(out, "  {} {} {}{}", p.red("-"), r.name, r.version, arch(r));
    }
    for (mark, list) in [("↑", &pk.upgraded), ("↓", &pk.downgraded)] {
        for c in list {
            let a = if c.arch.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.arch)
            };
            let _ = writeln!(
                out,
                "  {} {} {} → {}{a}",
                p.yellow(mark),
                c.name,
                c.from,
                c.to
            );
        }
    }
    match &d.files {
        Ok(c) => {
            let _ = writeln!(
                out,
                "Files: {} changed ({} added, {} removed, {} modified)",
                c.total(),
                c.added,
                c.removed,
                c.modified
            );
        }
        Err(why) => {
            let _ = writeln!(out, "Files: not compared: {why}");
        }
    }
    out
}
