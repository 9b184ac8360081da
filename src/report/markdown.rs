//! `imgraph plan --format markdown`: the plan as GitHub-flavoured Markdown, for a CI job
//! summary or a bot's pull-request comment. Same values and sentences as the text view
//! ([`super::plan::reason_lines`]); only the layout differs: a table of what runs, and
//! folded sections for what is deferred or up to date.

use std::fmt::Write as _;

use super::plan::{reason_lines, summary_line};
use super::short_id;
use crate::plan::{Action, Plan, PlannedNode};

pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### imgraph plan\n");
    let _ = writeln!(out, "**{}**\n", summary_line(&plan.summary));

    let of = |action: Action| -> Vec<&PlannedNode> {
        plan.nodes.iter().filter(|n| n.action == action).collect()
    };
    let runs = of(Action::Run);
    if !runs.is_empty() {
        table(&mut out, &runs, |n| if n.cascade { "~" } else { "+" });
    }
    let deferred = of(Action::Deferred);
    if !deferred.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>Deferred until a roll-up run (<code>imgraph apply --rollup</code>) or max-age: {}</summary>\n",
            deferred.len()
        );
        table(&mut out, &deferred, |_| "…");
        let _ = writeln!(out, "</details>\n");
    }
    let fresh = of(Action::UpToDate);
    if !fresh.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>Up to date: {}</summary>\n",
            fresh.len()
        );
        for n in &fresh {
            let key = n.previous_key.as_deref().map(short_id).unwrap_or_default();
            let _ = writeln!(out, "- `{}` {}", n.id, key);
        }
        let _ = writeln!(out, "\n</details>\n");
    }
    if !plan.sources.is_empty() {
        let _ = writeln!(out, "Sources:");
        for s in &plan.sources {
            let was = match &s.previous_id {
                Some(old) if old != &s.id => format!(" (was {})", short_id(old)),
                _ => String::new(),
            };
            let _ = writeln!(out, "- `{}` {}{}", s.name, short_id(&s.id), was);
        }
    }
    out
}

fn table(out: &mut String, nodes: &[&PlannedNode], mark: impl Fn(&PlannedNode) -> &'static str) {
    let _ = writeln!(out, "| | node | why |\n|---|---|---|");
    for n in nodes {
        let why: Vec<String> = reason_lines(n).iter().map(|l| cell(l)).collect();
        let _ = writeln!(out, "| {} | `{}` | {} |", mark(n), n.id, why.join("<br>"));
    }
    out.push('\n');
}

/// Text that stays inside one table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('\n', " ")
}
