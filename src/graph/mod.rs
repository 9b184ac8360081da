//! The stage graph: one node per pipeline stage, edges from what a stage needs to the stage
//! that needs it, on petgraph.
//!
//! ```text
//! source:S ─► build:I ─► test:I/T ─► publish:I ─► build:J (J from I) …
//!                                         └─────► deliver:I@E ─► deliver:I@F (F after E)
//! ```
//!
//! Node ids are stable strings (`build:web`, `test:web/http`, `deliver:web@staging`) used
//! as keys in the state file, so they never depend on the order of the config file. Node
//! indices are assigned in sorted-id order, which makes every traversal deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;

use crate::config::model::{FromRef, Project};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageNode {
    pub id: String,
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

impl StageNode {
    fn new(stage: Stage) -> Self {
        StageNode {
            id: String::new(),
            stage,
            image: None,
            suite: None,
            environment: None,
            source: None,
        }
    }
    pub fn source(name: &str) -> Self {
        let mut n = Self::new(Stage::Source);
        n.id = format!("source:{name}");
        n.source = Some(name.to_string());
        n
    }
    pub fn build(image: &str) -> Self {
        let mut n = Self::new(Stage::Build);
        n.id = build_id(image);
        n.image = Some(image.to_string());
        n
    }
    pub fn test(image: &str, suite: &str) -> Self {
        let mut n = Self::new(Stage::Test);
        n.id = format!("test:{image}/{suite}");
        n.image = Some(image.to_string());
        n.suite = Some(suite.to_string());
        n
    }
    pub fn publish(image: &str) -> Self {
        let mut n = Self::new(Stage::Publish);
        n.id = publish_id(image);
        n.image = Some(image.to_string());
        n
    }
    pub fn deliver(image: &str, env: &str) -> Self {
        let mut n = Self::new(Stage::Deliver);
        n.id = deliver_id(image, env);
        n.image = Some(image.to_string());
        n.environment = Some(env.to_string());
        n
    }
}

pub fn build_id(image: &str) -> String {
    format!("build:{image}")
}
pub fn publish_id(image: &str) -> String {
    format!("publish:{image}")
}
pub fn deliver_id(image: &str, env: &str) -> String {
    format!("deliver:{image}@{env}")
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("stages form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A `--target` that names no image or node; the second field is what to say instead.
    #[error("unknown target `{0}`: {1}")]
    UnknownTarget(String, String),
}

/// How a rendering marks nodes: a class per node id (`run`, `failed`, …) and each class's
/// fill colour, in legend order. The graph knows nothing of plans; `report::graph` builds
/// this from one.
#[derive(Debug, Clone, Default)]
pub struct Paint {
    pub classes: BTreeMap<String, &'static str>,
    pub fills: Vec<(&'static str, &'static str)>,
}

impl Paint {
    pub fn class_of(&self, id: &str) -> Option<&'static str> {
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
    index: HashMap<String, NodeIndex>,
    order: Vec<NodeIndex>,
}

impl StageGraph {
    /// Builds the graph from a validated project. Config validation already rejects
    /// cycles among images and environments; a cycle here is still reported, never looped on.
    pub fn build(project: &Project) -> Result<StageGraph, GraphError> {
        let mut nodes: BTreeMap<String, StageNode> = BTreeMap::new();
        let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
        let mut add = |n: StageNode| {
            let id = n.id.clone();
            nodes.entry(id.clone()).or_insert(n);
            id
        };
        for s in &project.sources {
            add(StageNode::source(&s.name));
        }
        for img in &project.images {
            let b = add(StageNode::build(&img.name));
            let upstream = match &img.from {
                FromRef::Source(s) => format!("source:{s}"),
                FromRef::Image(i) => publish_id(i),
            };
            edges.insert((upstream, b.clone()));
            let p = add(StageNode::publish(&img.name));
            edges.insert((b.clone(), p.clone()));
            for t in &img.tests {
                let t = add(StageNode::test(&img.name, &t.name));
                edges.insert((b.clone(), t.clone()));
                edges.insert((t, p.clone()));
            }
        }
        for env in &project.environments {
            for d in &env.deliveries {
                let id = add(StageNode::deliver(&d.image, &env.name));
                edges.insert((publish_id(&d.image), id.clone()));
                for before in &env.after {
                    let delivers_too = project
                        .environment(before)
                        .is_some_and(|e| e.deliveries.iter().any(|x| x.image == d.image));
                    if delivers_too {
                        edges.insert((deliver_id(&d.image, before), id.clone()));
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

    pub fn index_of(&self, id: &str) -> Option<NodeIndex> {
        self.index.get(id).copied()
    }

    pub fn node(&self, idx: NodeIndex) -> &StageNode {
        &self.graph[idx]
    }

    pub fn get(&self, id: &str) -> Option<&StageNode> {
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
            if let Some(idx) = self.index_of(t) {
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
                _ => "",
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
        let ids: HashMap<&str, String> = self
            .order
            .iter()
            .enumerate()
            .map(|(k, &i)| (self.graph[i].id.as_str(), format!("n{k}")))
            .collect();
        let mut out = String::from("flowchart LR\n");
        for &i in &self.order {
            let n = &self.graph[i];
            let (open, close) = match n.stage {
                Stage::Source => ("([", "])"),
                Stage::Deliver => ("[/", "/]"),
                _ => ("[", "]"),
            };
            out.push_str(&format!(
                "  {}{}\"{}\"{}\n",
                ids[n.id.as_str()],
                open,
                n.id,
                close
            ));
        }
        for (a, b) in self.sorted_edges() {
            out.push_str(&format!("  {} --> {}\n", ids[a.as_str()], ids[b.as_str()]));
        }
        for (class, fill) in &paint.fills {
            let members: Vec<&str> = self
                .order
                .iter()
                .map(|&i| self.graph[i].id.as_str())
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

    fn sorted_edges(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .graph
            .edge_references()
            .map(|e| {
                (
                    self.graph[e.source()].id.clone(),
                    self.graph[e.target()].id.clone(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// Names every stage on the first cycle of `graph`, in order, the first again at the end.
fn describe_cycle(graph: &DiGraph<StageNode, ()>) -> Vec<String> {
    let edges: Vec<(usize, usize)> = graph
        .edge_references()
        .map(|e| (e.source().index(), e.target().index()))
        .collect();
    let names: Vec<&str> = graph.node_weights().map(|n| n.id.as_str()).collect();
    match crate::config::find_cycles(names.len(), &edges).first() {
        Some(cycle) => crate::config::cycle_names(&names, &edges, cycle)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    }
}
