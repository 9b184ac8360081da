//! The walk over the graph: nodes in topological order, each decided once what it needs is
//! decided, then the summary and the early cutoffs over the whole plan.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use petgraph::graph::NodeIndex;

use crate::config::model::{Project, Trigger};
use crate::graph::{NodeId, Stage, StageGraph};

use super::cutoff::mark_cutoffs;
use super::keys::{current_build, node_key, stanza_of, UpstreamEntry, UpstreamKeys, PENDING};
use super::node::{tags_change, DecideCtx};
use super::revoked::apply_revocations;
use super::{
    Action, Facts, InputChange, Plan, PlanError, PlanOptions, PlannedNode, Reason, SourceView,
    Summary, FORMAT_VERSION,
};

/// Decides every selected node's action and reasons.
pub fn decide(
    project: &Project,
    graph: &StageGraph,
    facts: &Facts,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    check_forced(project, &options.force)?;
    let selected: BTreeSet<NodeIndex> = if options.targets.is_empty() {
        graph.topo_order().iter().copied().collect()
    } else {
        graph.select(&options.targets)?
    };

    let mut walk = Walk {
        project,
        graph,
        facts,
        options,
        nodes: Vec::new(),
        position: HashMap::new(),
        output_keys: HashMap::new(),
        new_output: HashSet::new(),
        sources: Vec::new(),
    };
    for &idx in graph.topo_order() {
        if selected.contains(&idx) {
            walk.visit(idx)?;
        }
    }
    let Walk {
        mut nodes,
        mut sources,
        ..
    } = walk;

    let not_selected = graph
        .graph
        .node_indices()
        .filter(|i| graph.node(*i).stage != Stage::Source && !selected.contains(i))
        .count();
    let mut summary = summarize(&mut nodes, not_selected);
    mark_cutoffs(project, &mut nodes);
    summary.may_cut_off = nodes.iter().filter(|n| !n.cut_off_by.is_empty()).count();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Plan {
        format_version: FORMAT_VERSION,
        rollup: options.rollup,
        targets: options.targets.clone(),
        forced: options.force.clone(),
        sources,
        nodes,
        summary,
    })
}

/// Every image given to `--force` must exist; a near miss is suggested.
fn check_forced(project: &Project, force: &[String]) -> Result<(), PlanError> {
    for f in force {
        if project.image(f).is_none() {
            let names = project.images.iter().map(|i| i.name.as_str());
            let hint = match crate::config::did_you_mean(f, names) {
                Some(close) => format!("did you mean `{close}`?"),
                None => "name an image".into(),
            };
            return Err(PlanError::UnknownForced(f.clone(), hint));
        }
    }
    Ok(())
}

/// What the walk knows of the nodes decided so far.
struct Walk<'a> {
    project: &'a Project,
    graph: &'a StageGraph,
    facts: &'a Facts,
    options: &'a PlanOptions,
    /// The decided nodes, in topological order.
    nodes: Vec<PlannedNode>,
    /// Where each decided node is in `nodes`.
    position: HashMap<NodeIndex, usize>,
    /// What each decided node hands downstream (see the module docs: a publish hands on
    /// its build's key, a source its resolved id).
    output_keys: HashMap<NodeIndex, String>,
    /// Nodes that run in this apply and yield a new result.
    new_output: HashSet<NodeIndex>,
    sources: Vec<SourceView>,
}

impl Walk<'_> {
    /// Decides one node: its key, the reasons against its history, revocations and tags,
    /// and what it hands downstream.
    fn visit(&mut self, idx: NodeIndex) -> Result<(), PlanError> {
        let node = self.graph.node(idx);
        if node.stage == Stage::Source {
            return self.resolve_source(idx);
        }
        let mut planned = self.draft(idx);
        let key = planned.key.clone();
        let ctx = DecideCtx {
            project: self.project,
            facts: self.facts,
            options: self.options,
            // Forcing an image rebuilds it; its tests and publish follow as cascades.
            forced: node.stage == Stage::Build
                && node
                    .image
                    .as_ref()
                    .is_some_and(|i| self.options.force.contains(i)),
            upstream_news: self
                .graph
                .upstream(idx)
                .into_iter()
                .filter(|u| self.new_output.contains(u))
                .map(|u| self.graph.node(u).id.clone())
                .collect(),
        };
        ctx.decide_node(
            &mut planned,
            self.facts.history.get(&node.id),
            &mut self.sources,
        )?;
        apply_revocations(self.facts, &mut planned);
        self.only_tags(&mut planned);
        planned.effective_key = match planned.action {
            Action::Run => key.clone(),
            _ => planned.previous_key.clone().unwrap_or(key),
        };
        self.hand_on(idx, &planned);
        self.position.insert(idx, self.nodes.len());
        self.nodes.push(planned);
        Ok(())
    }

    /// A source node is not decided: its resolved id is what it hands on.
    fn resolve_source(&mut self, idx: NodeIndex) -> Result<(), PlanError> {
        let name = self.graph.node(idx).source.clone().unwrap_or_default();
        let id = self
            .facts
            .sources
            .get(&name)
            .cloned()
            .ok_or_else(|| PlanError::UnresolvedSource(name.clone()))?;
        self.output_keys.insert(idx, id.clone());
        self.sources.push(SourceView {
            name,
            id,
            previous_id: None,
        });
        Ok(())
    }

    /// The node as it is now, not yet decided: its manifest, stanza, upstream keys, key
    /// and the key of its last success.
    fn draft(&self, idx: NodeIndex) -> PlannedNode {
        let node = self.graph.node(idx);
        let manifest = self
            .facts
            .manifests
            .get(&node.id)
            .cloned()
            .unwrap_or_default();
        let stanza = stanza_of(self.project, self.graph, idx);
        let upstream = self.upstream_keys(idx);
        let key = node_key(&node.id, &manifest, &stanza, &upstream);
        PlannedNode {
            id: node.id.clone(),
            stage: node.stage,
            image: node.image.clone(),
            suite: node.suite.clone(),
            environment: node.environment.clone(),
            action: Action::UpToDate,
            key,
            previous_key: self
                .facts
                .history
                .get(&node.id)
                .and_then(|h| h.last_success.as_ref())
                .map(|r| r.key.clone()),
            reasons: Vec::new(),
            cascade: false,
            cut_off_by: Vec::new(),
            manifest,
            stanza,
            upstream,
            effective_key: String::new(),
        }
    }

    /// Upstream node id → output key, as hashed into the node's key. A delivery has one
    /// entry instead, the artifact it delivers ([`UpstreamEntry::Delivered`]).
    fn upstream_keys(&self, idx: NodeIndex) -> UpstreamKeys {
        let node = self.graph.node(idx);
        if node.stage == Stage::Deliver {
            let image = node.image.as_deref().unwrap_or_default();
            let build = self
                .graph
                .index_of(&NodeId::build(image))
                .and_then(|b| self.position.get(&b))
                .map(|&at| &self.nodes[at]);
            let value = match build {
                Some(b) if b.action == Action::Run => format!("{PENDING}{}", b.key),
                _ => current_build(self.facts, image)
                    .map(|o| o.identity())
                    .unwrap_or_default(),
            };
            return BTreeMap::from([(UpstreamEntry::Delivered, value)]);
        }
        self.graph
            .upstream(idx)
            .into_iter()
            .map(|u| {
                let k = self.output_keys.get(&u).cloned().unwrap_or_default();
                (UpstreamEntry::Node(self.graph.node(u).id.clone()), k)
            })
            .collect()
    }

    /// An up-to-date build whose image's tags changed updates them in place.
    fn only_tags(&self, planned: &mut PlannedNode) {
        if planned.stage != Stage::Build || planned.action != Action::UpToDate {
            return;
        }
        if let Some(change) = planned
            .image
            .as_deref()
            .and_then(|i| tags_change(self.project, self.facts, i))
        {
            planned.action = Action::UpdateTags;
            planned.reasons = vec![change];
        }
    }

    /// Records what the decided node hands downstream, and whether it is new.
    fn hand_on(&mut self, idx: NodeIndex, planned: &PlannedNode) {
        // Publish hands its build's artifact on (see the module docs): its output key is
        // the build's, and it yields something new only when the build does.
        let build = planned
            .image
            .as_deref()
            .filter(|_| planned.stage == Stage::Publish)
            .and_then(|i| self.graph.index_of(&NodeId::build(i)));
        let output = build
            .and_then(|b| self.output_keys.get(&b).cloned())
            .unwrap_or_else(|| planned.effective_key.clone());
        let yields_new = planned.action == Action::Run
            && match planned.stage {
                Stage::Publish => build.is_some_and(|b| self.new_output.contains(&b)),
                // A test checks an artifact; it makes nothing downstream nodes use.
                Stage::Test => false,
                Stage::Build | Stage::Deliver | Stage::Source => true,
            };
        if yields_new {
            self.new_output.insert(idx);
        }
        self.output_keys.insert(idx, output);
    }
}

/// Counts the actions, and tells causes from cascades among the nodes that run.
fn summarize(nodes: &mut [PlannedNode], not_selected: usize) -> Summary {
    let mut summary = Summary {
        not_selected,
        ..Summary::default()
    };
    for n in nodes {
        match n.action {
            Action::Run => {
                summary.run += 1;
                n.cascade = is_cascade(&n.reasons);
                if n.cascade {
                    summary.cascades += 1;
                } else {
                    summary.causes += 1;
                }
            }
            Action::Deferred => summary.deferred += 1,
            Action::UpToDate => summary.up_to_date += 1,
            Action::UpdateTags => summary.update_tags += 1,
        }
    }
    summary
}

/// A cascade runs because something it needs runs; pending rollup changes it picks up on
/// the way do not make it a cause of its own.
fn is_cascade(reasons: &[Reason]) -> bool {
    reasons
        .iter()
        .any(|r| matches!(r, Reason::UpstreamChanged { .. }))
        && reasons.iter().all(|r| {
            matches!(
                r,
                Reason::UpstreamChanged { .. }
                    | Reason::InputChanged(InputChange {
                        trigger: Some(Trigger::Rollup),
                        ..
                    })
            )
        })
}
