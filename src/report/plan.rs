//! `imgraph plan` renderings: a terraform-like text view and the versioned JSON document.
//!
//! The text groups nodes by action, puts one node per line with its first reason, and
//! shows root causes apart from cascades, so "1 changed file forces 40 nodes" reads as one
//! cause and 39 cascades. Names in the text (paths, node ids, messages) have their control
//! characters escaped (see [`escape`]): a file name cannot forge lines in a CI log. The
//! JSON keeps every string exactly.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use super::{short_id, timestamp, Palette};
use crate::hash::{Via, ENV_PREFIX, PROBE_PREFIX};
use crate::plan::{
    Action, Change, InputChange, ModeChange, PackageChange, Plan, PlannedNode, Reason,
};

/// The markers of the text view, explained in one line above the nodes.
pub const LEGEND: &str = "+ runs (a cause)  ~ runs (cascade of a cause)  * tags updated in place  … deferred until a roll-up  = up to date";

/// `text` with control characters (C0, DEL, C1) and bidirectional-override characters
/// written as escapes (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`), so that what a file
/// name contains cannot move the cursor, clear a line or recolour a terminal.
pub fn escape(text: &str) -> Cow<'_, str> {
    let needs =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// How a changed input reads: a file path (with its mode change, the packages a package
/// list gained and lost, and how it is an input when it was not declared), a probe's
/// output, or a variable (whose value is never shown).
pub(super) fn input_text(
    path: &str,
    change: Change,
    via: Via,
    mode: Option<&ModeChange>,
    packages: Option<&PackageChange>,
) -> String {
    let path = escape(path);
    let mut text = if let Some(name) = path.strip_prefix(PROBE_PREFIX) {
        match change {
            Change::Modified => format!("probe `{name}` output changed"),
            other => format!("probe `{name}` {}", other.as_str()),
        }
    } else if let Some(name) = path.strip_prefix(ENV_PREFIX) {
        match change {
            Change::Added => format!("env {name} now hashed"),
            Change::Removed => format!("env {name} no longer hashed"),
            _ => format!("env {name} changed"),
        }
    } else {
        match (change, mode) {
            (Change::Mode, Some(m)) => format!("`{path}` mode {} → {}", m.old, m.new),
            (Change::Modified, Some(m)) => {
                format!("`{path}` modified, mode {} → {}", m.old, m.new)
            }
            (other, _) => format!("`{path}` {}", other.as_str()),
        }
    };
    match via {
        Via::Run => text.push_str(" (named in run)"),
        Via::Origin => text.push_str(" (origin)"),
        Via::Input | Via::Copy => {}
    }
    if let Some(p) = packages {
        let mut parts: Vec<String> = p.added.iter().map(|a| format!("+{}", escape(a))).collect();
        parts.extend(p.removed.iter().map(|r| format!("-{}", escape(r))));
        text.push_str(&format!(": {}", parts.join(" ")));
    }
    text
}

/// [`input_text`] of a reason's input change.
fn change_text(c: &InputChange) -> String {
    input_text(
        &c.path,
        c.change,
        c.via,
        c.mode.as_ref(),
        c.packages.as_ref(),
    )
}

/// One sentence per reason, in the user's words.
pub fn reason_text(r: &Reason) -> String {
    match r {
        Reason::New => "new: never built or run successfully".into(),
        Reason::InputChanged(c) => {
            let text = change_text(c);
            match c.trigger {
                Some(crate::config::model::Trigger::Rollup) => {
                    format!("{text} (rollup: waits for a roll-up run)")
                }
                Some(crate::config::model::Trigger::Immediate) | None => text,
            }
        }
        Reason::ConfigChanged { fields } => format!("config changed: {}", fields.join(", ")),
        Reason::SourceChanged { source, old, new } => {
            let source = escape(source);
            if old.is_empty() {
                format!(
                    "source `{source}` now resolves to {}",
                    escape(&short_id(new))
                )
            } else {
                format!(
                    "source `{source}` changed: {} → {}",
                    escape(&short_id(old)),
                    escape(&short_id(new))
                )
            }
        }
        Reason::UpstreamChanged { node } => format!("cascade from {}", escape(node.as_str())),
        Reason::MaxAge {
            built_at_ms,
            max_age_secs,
        } => format!(
            "older than max-age {} (built {})",
            humantime::format_duration(Duration::from_secs(*max_age_secs)),
            timestamp(*built_at_ms)
        ),
        Reason::Rollup(c) => format!("roll-up: {}", change_text(c)),
        Reason::PreviousFailure { error } => match error {
            Some(e) => format!("the last run with this key failed: {}", escape(e)),
            None => "the last run with this key failed".into(),
        },
        Reason::ArtifactMissing { artifact } => {
            format!("artifact {} no longer exists", escape(&short_id(artifact)))
        }
        Reason::Forced => "forced with --force".into(),
        Reason::Revoked {
            image,
            version,
            reason,
            back_to,
        } => {
            let head = format!(
                "{} {} is revoked ({})",
                escape(image),
                escape(version),
                escape(reason)
            );
            match back_to {
                Some(v) => format!("{head}: back to {}, its newest good version", escape(v)),
                None => head,
            }
        }
        Reason::TagsChanged {
            added,
            removed,
            changed,
            unknown,
        } => {
            if *unknown {
                let keys: Vec<Cow<'_, str>> = added.iter().map(|k| escape(k)).collect();
                format!(
                    "tags to apply (this version's tags were never recorded): {}",
                    keys.join(", ")
                )
            } else {
                let mut parts: Vec<String> =
                    added.iter().map(|k| format!("+{}", escape(k))).collect();
                parts.extend(changed.iter().map(|k| format!("~{}", escape(k))));
                parts.extend(removed.iter().map(|k| format!("-{}", escape(k))));
                format!("tags changed: {}", parts.join(" "))
            }
        }
        Reason::NewVersion {
            image,
            version,
            previous,
        } => match previous {
            Some(p) => format!(
                "{} {} is the current version; this environment got {} last",
                escape(image),
                escape(version),
                escape(p)
            ),
            None => format!(
                "{} {} is the current version; no delivery of it is recorded",
                escape(image),
                escape(version)
            ),
        },
    }
}

/// The human rendering of a plan.
pub fn render_text(plan: &Plan, p: Palette) -> String {
    let mut out = String::new();
    let width = plan
        .nodes
        .iter()
        .map(|n| escape(n.id.as_str()).chars().count())
        .max()
        .unwrap_or(10)
        .max(10);

    if !plan.nodes.is_empty() {
        let _ = writeln!(out, "{}", p.dim(LEGEND));
        out.push('\n');
    }
    if !plan.sources.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Sources"));
        for s in &plan.sources {
            let tail = match &s.previous_id {
                Some(old) if old != &s.id => {
                    p.yellow(&format!("  (was {})", escape(&short_id(old))))
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:width$}  {}{}",
                escape(&s.name),
                escape(&short_id(&s.id)),
                tail
            );
        }
        out.push('\n');
    }

    let group = |action: Action| plan.nodes.iter().filter(move |n| n.action == action);
    let runs: Vec<&PlannedNode> = group(Action::Run).collect();
    let cutoffs = cutoff_counts(plan);
    if !runs.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Will run"));
        for n in &runs {
            let id = escape(n.id.as_str());
            let (mark, id) = if n.cascade {
                ("~", p.dim(&id))
            } else {
                ("+", p.green(&id))
            };
            let cutoff = cutoffs
                .get(n.id.as_str())
                .and_then(|&count| cutoff_line(count));
            write_node_with(&mut out, mark, &id, n, cutoff, width, p);
        }
        out.push('\n');
    }
    let retag: Vec<&PlannedNode> = group(Action::UpdateTags).collect();
    if !retag.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Will update tags in place (no rebuild)"));
        for n in &retag {
            write_node(&mut out, "*", &p.green(&escape(n.id.as_str())), n, width, p);
        }
        out.push('\n');
    }
    let deferred: Vec<&PlannedNode> = group(Action::Deferred).collect();
    if !deferred.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            p.bold("Deferred until a roll-up run (imgraph apply --rollup) or max-age")
        );
        for n in &deferred {
            write_node(
                &mut out,
                "…",
                &p.yellow(&escape(n.id.as_str())),
                n,
                width,
                p,
            );
        }
        out.push('\n');
    }
    let fresh: Vec<&PlannedNode> = group(Action::UpToDate).collect();
    if !fresh.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Up to date"));
        for n in &fresh {
            let key = n.previous_key.as_deref().map(short_id).unwrap_or_default();
            let id = escape(n.id.as_str());
            let _ = writeln!(
                out,
                "  = {}  {}",
                pad(&p.dim(&id), &id, width),
                p.dim(&escape(&key))
            );
        }
        out.push('\n');
    }

    let _ = writeln!(out, "{}", p.bold(&summary_line(&plan.summary)));
    out
}

/// `Plan: 8 to run (1 cause, 7 cascades), 0 deferred, 0 up to date.`
pub fn summary_line(s: &crate::plan::Summary) -> String {
    let mut line = if s.run == 0 {
        "No changes to run".to_string()
    } else {
        format!(
            "Plan: {} to run ({} {}, {} {})",
            s.run,
            s.causes,
            plural(s.causes, "cause", "causes"),
            s.cascades,
            plural(s.cascades, "cascade", "cascades"),
        )
    };
    let _ = write!(
        line,
        "{}{} deferred, {} up to date",
        if s.run == 0 { ": " } else { ", " },
        s.deferred,
        s.up_to_date
    );
    if s.update_tags > 0 {
        let _ = write!(line, ", {} with tags to update", s.update_tags);
    }
    if s.may_cut_off > 0 {
        let _ = write!(line, ", {} may be cut off early", s.may_cut_off);
    }
    if s.not_selected > 0 {
        let _ = write!(line, ", {} outside --target", s.not_selected);
    }
    line.push('.');
    line
}

/// A node's reasons as the lines a plan shows, its own causes first and then, in one
/// line, the nodes it cascades from.
pub fn reason_lines(n: &PlannedNode) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let cascades: Vec<Cow<'_, str>> = n
        .reasons
        .iter()
        .filter_map(|r| match r {
            Reason::UpstreamChanged { node } => Some(escape(node.as_str())),
            _ => None,
        })
        .collect();
    for r in &n.reasons {
        match r {
            Reason::UpstreamChanged { .. } => {}
            Reason::InputChanged(
                c @ InputChange {
                    trigger: Some(crate::config::model::Trigger::Rollup),
                    ..
                },
            ) if n.action == Action::Run => lines.push(format!(
                "{} (rollup change, included in this run)",
                change_text(c)
            )),
            other => lines.push(reason_text(other)),
        }
    }
    if !cascades.is_empty() {
        lines.push(format!("cascade from {}", cascades.join(", ")));
    }
    lines
}

/// How many nodes each node would cut off, by node id: counted once for the whole plan
/// (counting per node was quadratic: seconds for a plan of 10,000 images).
fn cutoff_counts(plan: &Plan) -> std::collections::HashMap<&str, usize> {
    let mut counts = std::collections::HashMap::new();
    for n in &plan.nodes {
        for (i, cut) in n.cut_off_by.iter().enumerate() {
            if !n.cut_off_by[..i].contains(cut) {
                *counts.entry(cut.as_str()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Early cutoff, said once at the build that may cause it: how many planned cascades
/// (`count`, from [`cutoff_counts`]) are skipped if it makes its image's newest Ready
/// artifact again.
fn cutoff_line(count: usize) -> Option<String> {
    (count > 0).then(|| {
        format!(
            "early cutoff: {count} {} from it {} skipped if it makes its newest Ready artifact again",
            plural(count, "cascade", "cascades"),
            plural(count, "is", "are"),
        )
    })
}

fn write_node(out: &mut String, mark: &str, id: &str, n: &PlannedNode, width: usize, p: Palette) {
    write_node_with(out, mark, id, n, None, width, p);
}

fn write_node_with(
    out: &mut String,
    mark: &str,
    id: &str,
    n: &PlannedNode,
    extra: Option<String>,
    width: usize,
    p: Palette,
) {
    let mut lines = reason_lines(n).into_iter().chain(extra);
    let first = lines.next().unwrap_or_default();
    let _ = writeln!(
        out,
        "  {mark} {}  {first}",
        pad(id, &escape(n.id.as_str()), width)
    );
    for line in lines {
        let _ = writeln!(out, "    {:width$}  {}", "", p.dim(&line));
    }
}

/// Pads a possibly coloured `shown` string to `width` visible characters of `plain`.
fn pad(shown: &str, plain: &str, width: usize) -> String {
    let fill = width.saturating_sub(plain.chars().count());
    format!("{shown}{}", " ".repeat(fill))
}

pub(crate) fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// The `plan --json` document (pretty-printed, stable field order).
pub fn render_json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
