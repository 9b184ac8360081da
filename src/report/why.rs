//! `imgraph why NODE`: an [`Explanation`] as an indented chain of causes. Each cause is
//! the sentence `imgraph plan` prints for it ([`reason_text`]), followed by its evidence;
//! a cascade nests the upstream node's own explanation one level deeper.

use std::fmt::Write as _;
use std::time::Duration;

use super::plan::reason_text;
use super::{short_id, timestamp, Palette};
use crate::plan::why::{Detail, DiffOp, Explanation, FORMAT_VERSION};
use crate::plan::Action;

pub fn render_text(e: &Explanation, p: Palette) -> String {
    let mut out = String::new();
    write_node(&mut out, e, 0, p);
    out
}

fn headline(e: &Explanation) -> String {
    let key = short_id(&e.key);
    let was = match &e.previous_key {
        Some(old) if old != &e.key => format!(", was {}", short_id(old)),
        _ => String::new(),
    };
    let action = match e.action {
        Action::Run => "will run",
        Action::Deferred => "is deferred until a roll-up run",
        Action::UpToDate => "is up to date",
        Action::UpdateTags => "is up to date; its tags are updated in place",
    };
    format!("{} {action} (key {key}{was})", e.node)
}

fn write_node(out: &mut String, e: &Explanation, depth: usize, p: Palette) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(out, "{pad}{}", p.bold(&headline(e)));
    if e.causes.is_empty() {
        let run = e
            .compared_with_run
            .map(|r| format!(" of run {r}"))
            .unwrap_or_default();
        let _ = writeln!(out, "{pad}  nothing changed since its last success{run}");
    }
    for cause in &e.causes {
        let _ = writeln!(out, "{pad}  - {}", reason_text(&cause.reason));
        let Some(detail) = &cause.detail else {
            continue;
        };
        let more = format!("{pad}      ");
        match detail {
            Detail::Digests { old, new } => {
                let show = |d: &Option<String>| {
                    d.as_deref()
                        .map(short_id)
                        .unwrap_or_else(|| "(none)".into())
                };
                let _ = writeln!(out, "{more}digest {} → {}", show(old), show(new));
            }
            Detail::Stanza { lines } => {
                for l in lines {
                    let line = match l.op {
                        DiffOp::Same => format!("  {}", l.text),
                        DiffOp::Added => p.green(&format!("+ {}", l.text)),
                        DiffOp::Removed => p.red(&format!("- {}", l.text)),
                        DiffOp::Gap => p.dim("  …"),
                    };
                    let _ = writeln!(out, "{more}{line}");
                }
            }
            Detail::Age {
                now_ms,
                age_secs,
                over_secs,
            } => {
                let _ = writeln!(
                    out,
                    "{more}now {}: {} old, {} past max-age",
                    timestamp(*now_ms),
                    humantime::format_duration(Duration::from_secs(*age_secs)),
                    humantime::format_duration(Duration::from_secs(*over_secs)),
                );
            }
            Detail::Failure {
                run,
                finished_at_ms,
                log_path,
            } => {
                let when = finished_at_ms
                    .map(|t| format!(" at {}", timestamp(t)))
                    .unwrap_or_default();
                let log = log_path
                    .as_deref()
                    .map(|l| format!("; log {l}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{more}run {run} failed{when}{log}");
            }
            Detail::Upstream { explanation } => match explanation {
                Some(up) => write_node(out, up, depth + 2, p),
                None => {
                    let _ = writeln!(out, "{more}(explained above)");
                }
            },
        }
    }
}

/// `why --json`: `{"format_version": 1, "explanation": {…}}`.
pub fn render_json(e: &Explanation) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "format_version": FORMAT_VERSION,
        "explanation": e,
    }))
    .unwrap_or_default()
}
