//! The stage graph: one node per pipeline stage, edges from what a stage needs to the stage
//! that needs it, on petgraph.
//!
//! ```text
//! source:S ─► build:I ─► test:I/T ─► publish:I ─► build:J (J from I) …
//!                                         └─────► deliver:I@E ─► deliver:I@F (F after E)
//! ```
//!
//! Node ids ([`NodeId`], see [`id`]) read `build:web`, `test:web/http`,
//! `deliver:web@staging` and are the keys in the state file, so they never depend on the
//! order of the config file. Node indices are assigned in sorted-id order, which makes
//! every traversal deterministic.

pub mod id;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;

use crate::config::model::{FromRef, Project};

pub use id::{NodeId, NodeIdError, NodeIdProblem, NodeKind};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Source,
    Build,
    Test,
    Publish,
    Deliver,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::Source,
        Stage::Build,
        Stage::Test,
        Stage::Publish,
        Stage::Deliver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Build => "build",
            Stage::Test => "test",
            Stage::Publish => "publish",
            Stage::Deliver => "deliver",
        }
    }
}

/// One stage node: its id and, for convenience, the names its id is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageNode {
    pub id: NodeId,
    pub stage: Stage,
    /// The image this stage belongs to (none for sources).
    pub image: Option<String>,
    /// Test suite name (`test:` nodes).
    pub suite: Option<String>,
    /// Environment name (`deliver:` nodes).
    pub environment: Option<String>,
    /// Source name (`source:` nodes).
    pub source: Option<String>,
}

impl From<NodeId> for StageNode {
    fn from(id: NodeId) -> Self {
        let mut n = StageNode {
            id: id.clone(),
            stage: id.stage(),
            image: id.image().map(str::to_owned),
            suite: None,
            environment: None,
            source: None,
        };
        match id.kind() {
            NodeKind::Source { name } => n.source = Some(name.to_owned()),
            NodeKind::Test { suite, .. } => n.suite = Some(suite.to_owned()),
            NodeKind::Deliver { environment, .. } => n.environment = Some(environment.to_owned()),
            NodeKind::Build { .. } | NodeKind::Publish { .. } => {}
        }
        n
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("stages form a cycle: {}", .0.iter().map(NodeId::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle(Vec<NodeId>),
    /// A `--target` that names no image or node; the second field is what to say instead.
    #[error("unknown target `{0}`: {1}")]
    UnknownTarget(String, String),
}

/// How a rendering marks nodes: a class per node id (`run`, `failed`, …) and each class's
/// fill colour, in legend order. The graph knows nothing of plans; `report::graph` builds
/// this from one.
#[derive(Debug, Clone, Default)]
pub struct Paint {
    pub classes: BTreeMap<NodeId, &'static str>,
    pub fills: Vec<(&'static str, &'static str)>,
}

impl Paint {
    pub fn class_of(&self, id: &NodeId) -> Option<&'static str> {
        self.classes.get(id).copied()
    }

    pub fn fill_of(&self, class: &str) -> &'static str {
        self.fills
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, f)| *f)
            .unwrap_or("#ffffff")
    }
}

#[derive(Debug, Clone)]
pub struct StageGraph {
    pub graph: DiGraph<StageNode, ()>,
    index: HashMap<NodeId, NodeIndex>,
    order: Vec<NodeIndex>,
}

impl StageGraph {
    /// Builds the graph from a validated project. Config validation already rejects
    /// cycles among images and environments; a cycle here is still reported, never looped on.
    pub fn build(project: &Project) -> Result<StageGraph, GraphError> {
        let mut nodes: BTreeMap<NodeId, StageNode> = BTreeMap::new();
        let mut edges: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
        let mut add = |id: NodeId| {
            nodes.entry(id.clone()).or_insert_with(|| id.clone().into());
            id
        };
        for s in &project.sources {
            add(NodeId::source(&s.name));
        }
        for img in &project.images {
            let b = add(NodeId::build(&img.name));
            let upstream = match &img.from {
                FromRef::Source(s) => NodeId::source(s),
                FromRef::Image(i) => NodeId::publish(i),
            };
            edges.insert((upstream, b.clone()));
            let p = add(NodeId::publish(&img.name));
            edges.insert((b.clone(), p.clone()));
            for t in &img.tests {
                let t = add(NodeId::test(&img.name, &t.name));
                edges.insert((b.clone(), t.clone()));
                edges.insert((t, p.clone()));
            }
        }
        for env in &project.environments {
            for d in &env.deliveries {
                let id = add(NodeId::deliver(&d.image, &env.name));
                edges.insert((NodeId::publish(&d.image), id.clone()));
                for before in &env.after {
                    let delivers_too = project
                        .environment(before)
                        .is_some_and(|e| e.deliveries.iter().any(|x| x.image == d.image));
                    if delivers_too {
                        edges.insert((NodeId::deliver(&d.image, before), id.clone()));
                    }
                }
            }
        }

        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for (id, n) in nodes {
            index.insert(id, graph.add_node(n));
        }
        for (a, b) in edges {
            if let (Some(&ia), Some(&ib)) = (index.get(&a), index.get(&b)) {
                graph.add_edge(ia, ib, ());
            }
        }
        let order = match petgraph::algo::toposort(&graph, None) {
            Ok(o) => o,
            Err(_) => return Err(GraphError::Cycle(describe_cycle(&graph))),
        };
        Ok(StageGraph {
            graph,
            index,
            order,
        })
    }

    /// Nodes in a dependency order (every node after all it needs).
    pub fn topo_order(&self) -> &[NodeIndex] {
        &self.order
    }

    pub fn index_of(&self, id: &NodeId) -> Option<NodeIndex> {
        self.index.get(id).copied()
    }

    pub fn node(&self, idx: NodeIndex) -> &StageNode {
        &self.graph[idx]
    }

    pub fn get(&self, id: &NodeId) -> Option<&StageNode> {
        self.index_of(id).map(|i| &self.graph[i])
    }

    /// Direct upstream nodes (what `idx` needs), sorted by id.
    pub fn upstream(&self, idx: NodeIndex) -> Vec<NodeIndex> {
        self.neighbours(idx, Direction::Incoming)
    }

    /// Direct downstream nodes, sorted by id.
    pub fn downstream(&self, idx: NodeIndex) -> Vec<NodeIndex> {
        self.neighbours(idx, Direction::Outgoing)
    }

    fn neighbours(&self, idx: NodeIndex, dir: Direction) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self
            .graph
            .edges_directed(idx, dir)
            .map(|e| match dir {
                Direction::Incoming => e.source(),
                Direction::Outgoing => e.target(),
            })
            .collect();
        v.sort_by(|a, b| self.graph[*a].id.cmp(&self.graph[*b].id));
        v.dedup();
        v
    }

    /// The nodes a `--target` list selects: for an image name, its build, tests and
    /// publish; for a node id, that node; in both cases with everything they need.
    pub fn select(&self, targets: &[String]) -> Result<BTreeSet<NodeIndex>, GraphError> {
        let mut wanted = Vec::new();
        for t in targets {
            // A node id first (image names may look like one), then an image name.
            if let Some(idx) = NodeId::parse(t).ok().and_then(|id| self.index_of(&id)) {
                wanted.push(idx);
                continue;
            }
            let of_image: Vec<NodeIndex> = self
                .graph
                .node_indices()
                .filter(|&i| {
                    let n = &self.graph[i];
                    n.image.as_deref() == Some(t.as_str()) && n.stage != Stage::Deliver
                })
                .collect();
            if of_image.is_empty() {
                return Err(GraphError::UnknownTarget(t.clone(), self.target_hint(t)));
            }
            wanted.extend(of_image);
        }
        let mut selected = BTreeSet::new();
        while let Some(i) = wanted.pop() {
            if selected.insert(i) {
                wanted.extend(self.upstream(i));
            }
        }
        Ok(selected)
    }

    /// "did you mean `web`?" among image names and node ids, or what a target looks like.
    fn target_hint(&self, name: &str) -> String {
        let mut candidates: Vec<&str> = self
            .graph
            .node_weights()
            .filter_map(|n| n.image.as_deref())
            .collect();
        candidates.extend(
            self.graph
                .node_weights()
                .filter(|n| n.stage != Stage::Source)
                .map(|n| n.id.as_str()),
        );
        match crate::config::did_you_mean(name, candidates) {
            Some(close) => format!("did you mean `{close}`?"),
            None => "name an image or a node id such as `deliver:web@staging`".into(),
        }
    }

    /// Graphviz DOT, one node per stage, clustered by nothing: stable and diffable.
    pub fn to_dot(&self) -> String {
        self.to_dot_painted(&Paint::default())
    }

    /// [`StageGraph::to_dot`] with each node of `paint` filled in its class's colour and
    /// tagged with the class (`class="run"`), so a picture shows what a plan would do.
    pub fn to_dot_painted(&self, paint: &Paint) -> String {
        let mut out = String::from(
            "digraph imgraph {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for &i in &self.order {
            let n = &self.graph[i];
            let shape = match n.stage {
                Stage::Source => ", shape=ellipse",
                Stage::Deliver => ", shape=cds",
                Stage::Build | Stage::Test | Stage::Publish => "",
            };
            let fill = match paint.class_of(&n.id) {
                Some(class) => format!(
                    ", class=\"{class}\", style=filled, fillcolor=\"{}\", tooltip=\"{}: {class}\"",
                    paint.fill_of(class),
                    n.id
                ),
                None => String::new(),
            };
            out.push_str(&format!(
                "  \"{}\" [label=\"{}\"{}{}];\n",
                n.id, n.id, shape, fill
            ));
        }
        for e in self.sorted_edges() {
            out.push_str(&format!("  \"{}\" -> \"{}\";\n", e.0, e.1));
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart (renders in GitHub markdown).
    pub fn to_mermaid(&self) -> String {
        self.to_mermaid_painted(&Paint::default())
    }

    /// [`StageGraph::to_mermaid`] with a `classDef` per class of `paint` and each node put
    /// in its class.
    pub fn to_mermaid_painted(&self, paint: &Paint) -> String {
        let ids: HashMap<&NodeId, String> = self
            .order
            .iter()
            .enumerate()
            .map(|(k, &i)| (&self.graph[i].id, format!("n{k}")))
            .collect();
        let mut out = String::from("flowchart LR\n");
        for &i in &self.order {
            let n = &self.graph[i];
            let (open, close) = match n.stage {
                Stage::Source => ("([", "])"),
                Stage::Deliver => ("[/", "/]"),
                Stage::Build | Stage::Test | Stage::Publish => ("[", "]"),
            };
            out.push_str(&format!("  {}{}\"{}\"{}\n", ids[&n.id], open, n.id, close));
        }
        for (a, b) in self.sorted_edges() {
            out.push_str(&format!("  {} --> {}\n", ids[a], ids[b]));
        }
        for (class, fill) in &paint.fills {
            let members: Vec<&str> = self
                .order
                .iter()
                .map(|&i| &self.graph[i].id)
                .filter(|id| paint.class_of(id) == Some(*class))
                .map(|id| ids[id].as_str())
                .collect();
            if members.is_empty() {
                continue;
            }
            // Mermaid class names take no hyphen.
            let name = class.replace('-', "_");
            out.push_str(&format!("  classDef {name} fill:{fill},color:#000\n"));
            out.push_str(&format!("  class {} {name}\n", members.join(",")));
        }
        out
    }

    fn sorted_edges(&self) -> Vec<(&NodeId, &NodeId)> {
        let mut v: Vec<(&NodeId, &NodeId)> = self
            .graph
            .edge_references()
            .map(|e| (&self.graph[e.source()].id, &self.graph[e.target()].id))
            .collect();
        v.sort();
        v
    }
}

/// Names every stage on the first cycle of `graph`, in order, the first again at the end.
fn describe_cycle(graph: &DiGraph<StageNode, ()>) -> Vec<NodeId> {
    let edges: Vec<(usize, usize)> = graph
        .edge_references()
        .map(|e| (e.source().index(), e.target().index()))
        .collect();
    let names: Vec<&str> = graph.node_weights().map(|n| n.id.as_str()).collect();
    match crate::config::find_cycles(names.len(), &edges).first() {
        Some(cycle) => crate::config::cycle_names(&names, &edges, cycle)
            .into_iter()
            .filter_map(|name| graph.node_weights().find(|n| n.id == name))
            .map(|n| n.id.clone())
            .collect(),
        None => Vec::new(),
    }
}
