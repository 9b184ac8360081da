//! Pictures of the stage graph coloured by a plan: `imgraph graph --plan` (DOT, Mermaid)
//! and the report's inline SVG.
//!
//! Each stage node gets one [`Mark`]: what the plan does with it (`run`, `deferred`,
//! `up-to-date`), or `failed` when its last attempt failed and the plan has not got past
//! that failure (nothing succeeded since with the current key). Sources carry no mark.
//! The SVG is laid out by `layout-rs` (a pure-Rust Sugiyama-style layered layout, the
//! same family of algorithm as Graphviz `dot`), so no external program is needed.

use std::collections::HashMap;

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::{Point, Position};
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use serde::Serialize;

use crate::graph::{NodeId, Paint, Stage, StageGraph};
use crate::plan::{Action, Plan, PlannedNode};
use crate::state::{NodeHistory, NodeStatus};

/// What a picture says about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mark {
    Run,
    Deferred,
    UpToDate,
    Failed,
}

impl Mark {
    /// Every mark, in legend order.
    pub const ALL: [Mark; 4] = [Mark::Run, Mark::Deferred, Mark::UpToDate, Mark::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Run => "run",
            Mark::Deferred => "deferred",
            Mark::UpToDate => "up-to-date",
            Mark::Failed => "failed",
        }
    }

    /// The words a legend shows.
    pub fn label(self) -> &'static str {
        match self {
            Mark::Run => "will run",
            Mark::Deferred => "deferred (roll-up)",
            Mark::UpToDate => "up to date",
            Mark::Failed => "last run failed",
        }
    }

    /// Fill colour: amber for work ahead, slate for waiting, green for done, red for broken.
    pub fn fill(self) -> &'static str {
        match self {
            Mark::Run => "#fcd34d",
            Mark::Deferred => "#cbd5e1",
            Mark::UpToDate => "#bbf7d0",
            Mark::Failed => "#fca5a5",
        }
    }
}

/// The mark of one planned node, given its history.
pub fn mark_of(node: &PlannedNode, history: Option<&NodeHistory>) -> Mark {
    let failed = history.is_some_and(|h| {
        h.last_attempt.as_ref().is_some_and(|a| {
            a.status == NodeStatus::Failed && h.last_success.as_ref().is_none_or(|s| s.id < a.id)
        })
    });
    match node.action {
        // A tags-only change rebuilds nothing: the image stays as it is.
        Action::UpToDate | Action::UpdateTags => Mark::UpToDate,
        _ if failed => Mark::Failed,
        Action::Run => Mark::Run,
        Action::Deferred => Mark::Deferred,
    }
}

/// The paint of a whole plan: every planned node's mark as its class.
pub fn paint(plan: &Plan, history: &HashMap<NodeId, NodeHistory>) -> Paint {
    Paint {
        classes: plan
            .nodes
            .iter()
            .map(|n| (n.id.clone(), mark_of(n, history.get(&n.id)).as_str()))
            .collect(),
        fills: Mark::ALL.iter().map(|m| (m.as_str(), m.fill())).collect(),
    }
}

const FONT_SIZE: usize = 14;

/// A drawing and its size in pixels.
#[derive(Debug, Clone)]
pub struct Svg {
    pub markup: String,
    pub width: f64,
    pub height: f64,
}

/// The stage graph as an SVG element (no XML prolog, ready to inline in HTML), laid out
/// left to right. Each node's box sits in `<g class="node MARK" data-node="ID">`.
pub fn svg(graph: &StageGraph, paint: &Paint) -> Svg {
    let mut vg = VisualGraph::new(Orientation::LeftToRight);
    let mut handles = HashMap::new();
    for &idx in graph.topo_order() {
        let node = graph.node(idx);
        let class = paint.class_of(&node.id);
        let fill = class.map(|c| paint.fill_of(c)).unwrap_or("#ffffff");
        let look = StyleAttr::new(
            Color::fast("#334155"),
            1,
            Some(Color::fast(fill)),
            if node.stage == Stage::Source { 14 } else { 4 },
            FONT_SIZE,
        );
        let shape = ShapeKind::new_box(node.id.as_str());
        let size = box_size(node.id.as_str());
        let props = format!(
            "class=\"node {}\" data-node=\"{}\" data-stage=\"{}\"",
            class.unwrap_or("none"),
            super::html::escape(node.id.as_str()),
            node.stage.as_str()
        );
        let mut element =
            Element::create_with_properties(shape, look, Orientation::LeftToRight, size, props);
        // A tighter halo than the library's 60 px: the page is the limit, not the ink.
        element.pos = Position::new(Point::zero(), size, Point::zero(), Point::splat(HALO));
        handles.insert(idx, vg.add_node(element));
    }
    for &idx in graph.topo_order() {
        for down in graph.downstream(idx) {
            if let (Some(&a), Some(&b)) = (handles.get(&idx), handles.get(&down)) {
                let mut arrow = Arrow::simple("");
                arrow.look = StyleAttr::new(Color::fast("#64748b"), 1, None, 0, FONT_SIZE);
                vg.add_edge(arrow, a, b);
            }
        }
    }
    if vg.num_nodes() == 0 {
        return Svg {
            markup: "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"0\" height=\"0\"></svg>"
                .into(),
            width: 0.0,
            height: 0.0,
        };
    }
    let mut writer = SVGWriter::new();
    vg.do_it(false, false, false, &mut writer);
    let text = writer.finalize();
    // The writer sizes the canvas from rough text extents (far too tall); the laid-out
    // boxes, edges' bends included, give the real one. Inline SVG takes no XML prolog.
    let (mut width, mut height) = (0f64, 0f64);
    for h in vg.iter_nodes() {
        let (_, bottom_right) = vg.pos(h).bbox(false);
        width = width.max(bottom_right.x);
        height = height.max(bottom_right.y);
    }
    let (width, height) = ((width + MARGIN).ceil(), (height + MARGIN).ceil());
    let body = text
        .find("<svg")
        .and_then(|at| text[at..].find('>').map(|end| &text[at + end + 1..]))
        .unwrap_or(&text);
    let body = compact(&drop_empty_labels(body));
    Svg {
        markup: format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"stage graph\">{body}"
        ),
        width,
        height,
    }
}

/// Space kept free around each box.
const HALO: f64 = 28.0;

/// The writer indents its markup generously and prints coordinates with every digit of
/// an `f64` (`718.4500000000006`). Blank space that holds a line break means nothing in SVG
/// (it only separates attributes or tags) and shrinks to one line break; numbers in
/// attribute values keep two decimals (a hundredth of a pixel). Text and the `data-`
/// attributes, which carry node ids, are left exactly as they are. Halves a large page.
fn compact(markup: &str) -> String {
    let mut out = String::with_capacity(markup.len() / 2);
    let mut blank = String::new();
    let mut in_tag = false;
    let mut quote: Option<char> = None;
    let mut attr = String::new();
    let mut round = false;
    // Digits seen after a decimal point in the number being copied, when rounding.
    let mut decimals: Option<usize> = None;
    let mut prev = '\0';
    for c in markup.chars() {
        if quote.is_none() && c.is_whitespace() {
            blank.push(c);
            continue;
        }
        if !blank.is_empty() {
            if blank.contains('\n') {
                out.push('\n');
            } else {
                out.push_str(&blank);
            }
            blank.clear();
            if in_tag {
                attr.clear();
            }
        }
        match quote {
            Some(q) if c == q => {
                quote = None;
                decimals = None;
                attr.clear();
            }
            Some(_) if round => {
                if c == '.' && prev.is_ascii_digit() {
                    decimals = Some(0);
                } else if c.is_ascii_digit() {
                    if let Some(d) = decimals.as_mut() {
                        *d += 1;
                        if *d > 2 {
                            prev = c;
                            continue;
                        }
                    }
                } else {
                    decimals = None;
                }
            }
            Some(_) => {}
            None if in_tag => match c {
                '"' | '\'' => {
                    quote = Some(c);
                    round = !attr.trim_end_matches('=').starts_with("data-");
                }
                '>' => in_tag = false,
                '=' => {}
                _ => attr.push(c),
            },
            None => {
                if c == '<' {
                    in_tag = true;
                    attr.clear();
                }
            }
        }
        prev = c;
        out.push(c);
    }
    if !blank.is_empty() {
        out.push('\n');
    }
    out
}

/// Edges have no labels, yet the writer draws an empty `<text><textPath …></textPath></text>`
/// for each: a seventh of a large page.
fn drop_empty_labels(markup: &str) -> String {
    const OPEN: &str = "<text><textPath ";
    const CLOSE: &str = "></textPath></text>";
    let mut out = String::with_capacity(markup.len());
    let mut rest = markup;
    while let Some(at) = rest.find(OPEN) {
        let Some(len) = rest[at + OPEN.len()..].find('>') else {
            break;
        };
        // Where the opening `<textPath …` ends: at its `>`, which CLOSE starts with.
        let after_open = at + OPEN.len() + len;
        if rest[after_open..].starts_with(CLOSE) {
            out.push_str(&rest[..at]);
            rest = &rest[after_open + CLOSE.len()..];
        } else {
            out.push_str(&rest[..after_open]);
            rest = &rest[after_open..];
        }
    }
    out.push_str(rest);
    out
}

/// Room around the drawing for strokes and arrow heads.
const MARGIN: f64 = 12.0;

/// A box that fits its id in the page's monospace font (about 0.6 em a character).
fn box_size(id: &str) -> Point {
    let chars = id.chars().count() as f64;
    Point::new(
        chars * FONT_SIZE as f64 * 0.62 + 28.0,
        FONT_SIZE as f64 * 2.2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    fn record(id: i64, status: NodeStatus) -> NodeRecord {
        NodeRecord {
            id,
            run_id: 1,
            node_id: NodeId::build("a"),
            key: "k".into(),
            manifest_json: "{}".into(),
            stanza: String::new(),
            upstream_json: "{}".into(),
            reasons_json: "[]".into(),
            status,
            outputs_json: None,
            error: None,
            log_path: None,
            started_at: 0,
            finished_at: None,
        }
    }

    fn planned(action: Action) -> PlannedNode {
        PlannedNode {
            id: NodeId::build("a"),
            stage: Stage::Build,
            image: Some("a".into()),
            suite: None,
            environment: None,
            action,
            key: "k".into(),
            previous_key: None,
            reasons: Vec::new(),
            cascade: false,
            cut_off_by: Vec::new(),
            manifest: Default::default(),
            stanza: String::new(),
            upstream: Default::default(),
            effective_key: String::new(),
        }
    }

    #[test]
    fn a_failure_newer_than_the_last_success_marks_the_node_failed() {
        let failed_last = NodeHistory {
            last_success: Some(record(1, NodeStatus::Succeeded)),
            last_attempt: Some(record(2, NodeStatus::Failed)),
        };
        let fixed = NodeHistory {
            last_success: Some(record(3, NodeStatus::Succeeded)),
            last_attempt: Some(record(3, NodeStatus::Succeeded)),
        };
        assert_eq!(
            mark_of(&planned(Action::Run), Some(&failed_last)),
            Mark::Failed
        );
        assert_eq!(mark_of(&planned(Action::Run), Some(&fixed)), Mark::Run);
        assert_eq!(mark_of(&planned(Action::Run), None), Mark::Run);
        // Up to date wins: the last success already has the current key.
        assert_eq!(
            mark_of(&planned(Action::UpToDate), Some(&failed_last)),
            Mark::UpToDate
        );
        assert_eq!(mark_of(&planned(Action::Deferred), None), Mark::Deferred);
    }

    #[test]
    fn only_empty_edge_labels_are_dropped() {
        assert_eq!(
            drop_empty_labels(
                "<g/><text><textPath href=\"#arrow0\" class=\"a14\"></textPath></text><text><textPath href=\"#arrow1\">x</textPath></text>"
            ),
            "<g/><text><textPath href=\"#arrow1\">x</textPath></text>"
        );
    }

    #[test]
    fn compacting_keeps_words_ids_and_attributes_apart() {
        assert_eq!(
            compact("<g a=\"1\">\n\n   <rect x=\"1.23456\" \n   y=\"2.5\"/>\n</g>  <text>a  1.23456</text>"),
            "<g a=\"1\">\n<rect x=\"1.23\"\ny=\"2.5\"/>\n</g>  <text>a  1.23456</text>"
        );
        assert_eq!(
            compact("<path d=\"M 10.0000001 2.999999 C 3.14159 4\" data-node=\"build:v1.23456\"/>"),
            "<path d=\"M 10.00 2.99 C 3.14 4\" data-node=\"build:v1.23456\"/>"
        );
    }
}
