//! `imgraph report`: one self-contained HTML page (inline CSS and SVG, no script, no
//! font, image or stylesheet from anywhere else), so it can be kept as a CI artifact and
//! opened offline.
//!
//! It shows the stage graph coloured by the pending plan, the plan with its reasons (in
//! the same words as `imgraph plan`, from the same renderer), every image's versions with
//! status, build time, package changes and the environments holding them, and the last
//! runs with their durations.

use std::fmt::Write as _;

use super::graph::Mark;
use super::{short_id, timestamp};
use crate::graph::{NodeId, Paint, StageGraph};
use crate::plan::{Action, PackageChange, Plan};
use crate::state::{ImageRecord, NodeRecord, NodeStatus, ReleaseStatus, RunRecord, RunStatus};

// What the page shows: values only. `crate::overview` gathers them from a workspace, so
// this renderer depends on no engine.

#[derive(Debug, Clone)]
pub struct Overview {
    /// The project folder's name.
    pub project: String,
    pub config_path: String,
    pub generated_at_ms: i64,
    /// The plan, or why none could be made.
    pub plan: std::result::Result<Plan, String>,
    /// Each planned node's mark (empty without a plan).
    pub paint: Paint,
    pub images: Vec<ImageOverview>,
    /// Newest first.
    pub runs: Vec<RunOverview>,
}

#[derive(Debug, Clone)]
pub struct ImageOverview {
    pub name: String,
    /// False for an image the state knows but the config no longer declares.
    pub declared: bool,
    /// Whether any environment delivers it.
    pub delivered: bool,
    /// Newest first.
    pub versions: Vec<VersionOverview>,
}

#[derive(Debug, Clone)]
pub struct VersionOverview {
    pub record: ImageRecord,
    pub packages: Packages,
    /// Environments whose newest delivery of this image is this version.
    pub held_by: Vec<String>,
}

/// What a version changed in its package lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packages {
    /// Gained and lost since the version before (for the first version, every package).
    Changed(PackageChange),
    /// The image has no package list.
    NoList,
    /// The build of this version or of the one before is not recorded (e.g. recovered
    /// from cloud tags).
    Unknown,
}

#[derive(Debug, Clone)]
pub struct RunOverview {
    pub run: RunRecord,
    pub nodes: Vec<NodeRecord>,
}

impl RunOverview {
    pub fn duration_ms(&self) -> Option<i64> {
        self.run.finished_at.map(|f| f - self.run.started_at)
    }

    pub fn count(&self, status: NodeStatus) -> usize {
        self.nodes.iter().filter(|n| n.status == status).count()
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `850ms`, `4.2s`, `3m 04s`, `2h 05m`.
pub fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    if secs < 60 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    if secs < 3600 {
        return format!("{}m {:02}s", secs / 60, secs % 60);
    }
    format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
}

/// The widest drawing that is shrunk to the page's width rather than scrolled.
const FIT_WIDTH: f64 = 1800.0;

const STYLE: &str = r#"
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #0f172a; background: #f8fafc; }
header, section { max-width: 1200px; margin: 0 auto; padding: 12px 24px; }
header { border-bottom: 1px solid #e2e8f0; background: #fff; max-width: none; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 18px 0 8px; border-bottom: 1px solid #e2e8f0; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.meta { color: #475569; margin: 0; }
.summary { font-weight: 600; margin: 6px 0; }
table { border-collapse: collapse; width: 100%; background: #fff; margin-bottom: 8px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #f1f5f9; font-weight: 600; }
ul.reasons { margin: 0; padding-left: 16px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 12px; border: 1px solid #94a3b8; white-space: nowrap; }
.legend { list-style: none; padding: 0; margin: 4px 0 8px; display: flex; gap: 14px; flex-wrap: wrap; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #334155; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
.graph { overflow: auto; border: 1px solid #e2e8f0; background: #fff; max-height: 80vh; }
.graph.fit svg { max-width: 100%; height: auto; }
.graph svg text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.error { color: #991b1b; background: #fef2f2; border: 1px solid #fecaca; padding: 8px; border-radius: 4px; }
.muted { color: #64748b; }
.pkg-add { color: #166534; }
.pkg-del { color: #991b1b; }
.s-ready, .s-succeeded { background: #bbf7d0; }
.s-candidate, .s-running { background: #fde68a; }
.s-failed, .s-abandoned, .s-cancelled { background: #fca5a5; }
.s-skipped { background: #e2e8f0; }
details summary { cursor: pointer; }
"#;

/// The whole page.
pub fn render(graph: &StageGraph, o: &Overview) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let title = format!("imgraph report: {}", o.project);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&title)
    );
    let _ = write!(
        out,
        "<header>\n<h1>{}</h1>\n<p class=\"meta\"><code>{}</code> · generated {} by imgraph {}</p>\n",
        escape(&title),
        escape(&o.config_path),
        timestamp(o.generated_at_ms),
        env!("CARGO_PKG_VERSION"),
    );
    match &o.plan {
        Ok(plan) => {
            let _ = writeln!(
                out,
                "<p class=\"summary\" id=\"plan-summary\">{}</p>",
                escape(&super::plan::summary_line(&plan.summary))
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"error\">no plan: failed to plan: {}</p>",
                escape(e)
            );
        }
    }
    out.push_str("</header>\n");
    graph_section(&mut out, graph, o);
    if let Ok(plan) = &o.plan {
        plan_section(&mut out, plan, o);
    }
    images_section(&mut out, &o.images);
    runs_section(&mut out, &o.runs);
    out.push_str("</body>\n</html>\n");
    out
}

fn graph_section(out: &mut String, graph: &StageGraph, o: &Overview) {
    out.push_str("<section id=\"graph\">\n<h2>Stage graph</h2>\n");
    if o.plan.is_ok() {
        out.push_str("<ul class=\"legend\">");
        for m in Mark::ALL {
            let _ = write!(
                out,
                "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
                m.fill(),
                m.label()
            );
        }
        out.push_str("</ul>\n");
    }
    let svg = super::graph::svg(graph, &o.paint);
    // A drawing up to half again wider than the page shrinks to fit it; a larger one
    // keeps its size (readable) and scrolls.
    let fit = if svg.width <= FIT_WIDTH { " fit" } else { "" };
    let _ = writeln!(
        out,
        "<div class=\"graph{fit}\">{}</div>\n</section>",
        svg.markup
    );
}

fn mark_badge(o: &Overview, id: &NodeId) -> String {
    match o.paint.class_of(id) {
        Some(class) => format!(
            "<span class=\"badge\" style=\"background:{}\">{}</span>",
            o.paint.fill_of(class),
            escape(class)
        ),
        None => String::new(),
    }
}

fn plan_section(out: &mut String, plan: &Plan, o: &Overview) {
    out.push_str("<section id=\"plan\">\n<h2>Pending plan</h2>\n");
    if !plan.sources.is_empty() {
        out.push_str("<p>Sources: ");
        let parts: Vec<String> = plan
            .sources
            .iter()
            .map(|s| {
                let was = match &s.previous_id {
                    Some(old) if old != &s.id => {
                        format!(
                            " <span class=\"muted\">(was {})</span>",
                            escape(&short_id(old))
                        )
                    }
                    _ => String::new(),
                };
                format!(
                    "<code>{}</code> → <code>{}</code>{was}",
                    escape(&s.name),
                    escape(&short_id(&s.id))
                )
            })
            .collect();
        out.push_str(&parts.join(", "));
        out.push_str("</p>\n");
    }
    let pending: Vec<_> = plan
        .nodes
        .iter()
        .filter(|n| n.action != Action::UpToDate)
        .collect();
    if pending.is_empty() {
        out.push_str("<p>Nothing to run: every selected stage is up to date.</p>\n</section>\n");
        return;
    }
    out.push_str("<table class=\"plan\">\n<tr><th>Node</th><th>Action</th><th>Why</th></tr>\n");
    for n in pending {
        let kind = if n.action == Action::Run && n.cascade {
            "cascade"
        } else if n.action == Action::Run {
            "cause"
        } else {
            "pending"
        };
        let _ = write!(
            out,
            "<tr data-node=\"{}\"><td><code>{}</code></td><td>{} <span class=\"muted\">{kind}</span></td><td><ul class=\"reasons\">",
            escape(n.id.as_str()),
            escape(n.id.as_str()),
            mark_badge(o, &n.id),
        );
        for line in super::plan::reason_lines(n) {
            let _ = write!(out, "<li>{}</li>", escape(&line));
        }
        out.push_str("</ul></td></tr>\n");
    }
    out.push_str("</table>\n</section>\n");
}

fn status_class(s: ReleaseStatus) -> String {
    format!("s-{}", s.as_str().to_ascii_lowercase())
}

fn packages_html(p: &Packages) -> String {
    match p {
        Packages::Unknown => "<span class=\"muted\">not recorded</span>".into(),
        Packages::NoList => "<span class=\"muted\">no package list</span>".into(),
        Packages::Changed(c) if c.added.is_empty() && c.removed.is_empty() => {
            "<span class=\"muted\">unchanged</span>".into()
        }
        Packages::Changed(c) => {
            let mut parts: Vec<String> = c
                .added
                .iter()
                .map(|a| format!("<span class=\"pkg-add\">+{}</span>", escape(a)))
                .collect();
            parts.extend(
                c.removed
                    .iter()
                    .map(|r| format!("<span class=\"pkg-del\">-{}</span>", escape(r))),
            );
            format!("<span class=\"mono\">{}</span>", parts.join(" "))
        }
    }
}

fn images_section(out: &mut String, images: &[ImageOverview]) {
    out.push_str("<section id=\"images\">\n<h2>Images</h2>\n");
    for img in images {
        let _ = writeln!(
            out,
            "<h3 id=\"image-{}\">{}{}</h3>",
            escape(&img.name),
            escape(&img.name),
            if img.declared {
                ""
            } else {
                " <span class=\"muted\">(no longer in the config)</span>"
            }
        );
        if img.versions.is_empty() {
            out.push_str("<p class=\"muted\">No version built yet.</p>\n");
            continue;
        }
        out.push_str(
            "<table>\n<tr><th>Version</th><th>Id</th><th>Status</th><th>Built</th>\
             <th>Packages</th><th>Held by</th></tr>\n",
        );
        for v in &img.versions {
            let r = &v.record;
            let held = if !img.delivered {
                "<span class=\"muted\">not delivered</span>".to_string()
            } else if v.held_by.is_empty() {
                "<span class=\"muted\">none</span>".to_string()
            } else {
                escape(&v.held_by.join(", "))
            };
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td><code title=\"{}\">{}</code></td>\
                 <td><span class=\"badge {}\">{}</span></td><td>{}</td><td>{}</td><td>{held}</td></tr>",
                escape(&r.version.version),
                escape(&r.version.artifact_id),
                escape(&short_id(&r.version.artifact_id)),
                status_class(r.version.status),
                r.version.status.as_str(),
                timestamp(r.version.built_at),
                packages_html(&v.packages),
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</section>\n");
}

fn node_status_class(s: NodeStatus) -> String {
    format!("s-{}", s.as_str())
}

fn run_status_class(s: RunStatus) -> String {
    format!("s-{}", s.as_str())
}

fn runs_section(out: &mut String, runs: &[RunOverview]) {
    out.push_str("<section id=\"runs\">\n<h2>Last runs</h2>\n");
    if runs.is_empty() {
        out.push_str("<p class=\"muted\">No runs yet.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table>\n<tr><th>Run</th><th>Command</th><th>Started</th><th>Duration</th>\
         <th>Status</th><th>Nodes</th></tr>\n",
    );
    for r in runs {
        let duration = r
            .duration_ms()
            .map(duration_text)
            .unwrap_or_else(|| "-".into());
        let mut counts = Vec::new();
        for s in [
            NodeStatus::Succeeded,
            NodeStatus::Failed,
            NodeStatus::Skipped,
            NodeStatus::Cancelled,
            NodeStatus::Abandoned,
            NodeStatus::Running,
        ] {
            let n = r.count(s);
            if n > 0 {
                counts.push(format!("{n} {}", s.as_str()));
            }
        }
        let summary = if counts.is_empty() {
            "no nodes".to_string()
        } else {
            counts.join(", ")
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{duration}</td>\
             <td><span class=\"badge {}\">{}</span></td><td>",
            r.run.id,
            escape(&r.run.command),
            timestamp(r.run.started_at),
            run_status_class(r.run.status),
            r.run.status.as_str(),
        );
        if r.nodes.is_empty() {
            out.push_str(&summary);
        } else {
            let _ = write!(
                out,
                "<details><summary>{summary}</summary><table>\
                 <tr><th>Node</th><th>Status</th><th>Duration</th><th>Error</th></tr>"
            );
            for n in &r.nodes {
                let d = n
                    .finished_at
                    .map(|f| duration_text(f - n.started_at))
                    .unwrap_or_else(|| "-".into());
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td><span class=\"badge {}\">{}</span></td><td>{d}</td><td>{}</td></tr>",
                    escape(n.node_id.as_str()),
                    node_status_class(n.status),
                    n.status.as_str(),
                    escape(n.error.as_deref().unwrap_or("")),
                );
            }
            out.push_str("</table></details>");
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration_text(850), "850ms");
        assert_eq!(duration_text(4_200), "4.2s");
        assert_eq!(duration_text(184_000), "3m 04s");
        assert_eq!(duration_text(7_500_000), "2h 05m");
        assert_eq!(duration_text(-5), "0ms");
    }
}
