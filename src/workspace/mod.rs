//! A loaded project with its graph and state: the place where the impure work of
//! planning happens (hashing inputs, resolving sources, checking artifacts) before the
//! pure planner decides.

mod lifecycle;
mod lock;
mod probes;
mod prune;
mod recover;
mod share;

pub use recover::Recovered;
pub use share::{pull_state, push_state, Pulled};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::config::model::{FromRef, Project, ProviderKind, ProviderType, SourceKind};
use crate::error::{Error, Result};
use crate::exec::{Event, ExecContext, ExecOptions};
use crate::graph::{NodeId, Stage, StageGraph};
use crate::hash::{Hasher, NodeInputs, StatCache};
use crate::plan::saved::{SavedPlan, StateStamp};
use crate::plan::{self, BuildOutputs, Facts, Plan, PlanOptions};
use crate::provider::local::Store;
use crate::provider::ConnectError;
pub use crate::provider::Providers;
use crate::state::{LeaseStore, State};

pub struct Workspace {
    pub project: Project,
    pub graph: StageGraph,
    pub state: State,
    /// Where the apply lease is kept (beside the state, by [`crate::state::open`]).
    pub leases: Arc<dyn LeaseStore>,
}

impl Workspace {
    /// Loads `imgraph.kdl` from `path` (a folder or the file), builds the graph and opens
    /// (creating if needed) the state file.
    pub fn open(path: &Path) -> Result<Workspace> {
        let project = crate::config::load(path)?;
        let graph = StageGraph::build(&project)?;
        Workspace::with_state(project, graph, crate::state::Access::ReadWrite)
    }

    /// Opens the project's state (see [`crate::state::open`]): the local file, or with
    /// `state { s3 … }` the shared state with the local file as its mirror.
    fn with_state(
        project: Project,
        graph: StageGraph,
        access: crate::state::Access,
    ) -> Result<Workspace> {
        let (state, leases) = crate::state::open(&backend_of(&project), access)?;
        Ok(Workspace::loaded(project, graph, state, leases))
    }

    fn loaded(
        project: Project,
        graph: StageGraph,
        state: State,
        leases: Arc<dyn LeaseStore>,
    ) -> Workspace {
        tracing::info!(
            config = %project.config_path.display(),
            state = %project.state_path.display(),
            stages = graph.graph.node_count(),
            "project loaded"
        );
        Workspace {
            project,
            graph,
            state,
            leases,
        }
    }

    /// Like [`Workspace::open`] for commands that only read the state (`plan`, `images`,
    /// `history`, `lock status`): a missing state file is not created, and a read-only one
    /// is read as it is (see [`State::open_for_reading`]).
    pub fn open_read_only(path: &Path) -> Result<Workspace> {
        let project = crate::config::load(path)?;
        let graph = StageGraph::build(&project)?;
        Workspace::with_state(project, graph, crate::state::Access::ReadOnly)
    }

    /// The local image store, when the project declares (or implies) the local provider.
    pub fn local_store(&self) -> Option<Store> {
        self.project.providers.iter().find_map(|p| match &p.kind {
            ProviderKind::Local { store, .. } => Some(Store::new(store.clone())),
            ProviderKind::Aws { .. } => None,
        })
    }

    /// Hashes every input, resolves every source and checks recorded artifacts.
    pub async fn gather(&self, providers: &Providers) -> Result<Facts> {
        let (facts, updates) = self.gather_unrecorded(providers).await?;
        self.store_stat_cache(&updates);
        Ok(facts)
    }

    /// Keeps what hashing learnt for the next plan (best effort: see `state/stat_cache.rs`).
    fn store_stat_cache(&self, updates: &[(String, crate::state::StatEntry)]) {
        if !self.state.is_read_only() {
            self.state.store_stat_cache(updates);
        }
    }

    /// [`Workspace::gather`] without writing anything: the stat cache updates are
    /// returned for the caller to store.
    async fn gather_unrecorded(
        &self,
        providers: &Providers,
    ) -> Result<(Facts, Vec<(String, crate::state::StatEntry)>)> {
        let cache = StatCache::new(self.state.load_stat_cache());
        let hasher = Hasher::new(&self.project.root, &cache)
            .skipping(self.project.own_paths_in_project())
            .with_env(std::env::vars_os());
        let mut facts = Facts {
            now_ms: crate::state::now_ms(),
            ..Facts::default()
        };

        let image_probes = self.image_probe_digests(providers).await?;
        let (graph, project, manifests) = (&self.graph, &self.project, &mut facts.manifests);
        // On a thread of rayon's pool: hashing's parallel work (each folder's `statx`,
        // each node's files) is then that thread's own, instead of being handed to the
        // pool from outside and waited for, several times for each of 2,000 nodes.
        rayon::scope(|_| -> Result<()> {
            for idx in graph.topo_order() {
                let node = graph.node(*idx);
                if let Some(mut inputs) = node_inputs(project, node) {
                    if let (Stage::Build, Some(image)) = (node.stage, node.image.as_deref()) {
                        inputs.image_probes = image_probes.get(image).cloned().unwrap_or_default();
                    }
                    manifests.insert(node.id.clone(), Arc::new(hasher.manifest(&inputs)?));
                }
            }
            Ok(())
        })?;

        for source in &self.project.sources {
            let id = match &source.kind {
                SourceKind::Local { path } => hasher.tree_digest(path.as_str())?,
                SourceKind::Aws { owners, name, tags } => {
                    resolve_aws_source(providers, &source.name, owners, name.as_deref(), tags)
                        .await?
                }
                SourceKind::Imgraph { image, .. } => {
                    resolve_imgraph_source(providers, &source.name, image).await?
                }
            };
            facts.sources.insert(source.name.clone(), id);
        }

        let updates = cache.take_updates();
        facts.history = self.state.snapshot()?;
        self.gather_revocations(&mut facts)?;
        // Every image's recorded build artifact is checked with the image's provider
        // (invariant 4: never a cache hit on an artifact that is gone).
        let mut checked: HashMap<String, bool> = HashMap::new();
        for image in &self.project.images {
            let Some(out) = facts
                .history
                .get(&NodeId::build(&image.name))
                .and_then(BuildOutputs::last)
                .filter(|o| !o.artifact_id.is_empty())
            else {
                continue;
            };
            if checked.contains_key(&out.artifact_id) {
                continue;
            }
            let provider = providers.all.get(&image.provider);
            let present =
                match provider {
                    Some(p) => p.artifact_exists(&out.artifact_id).await.map_err(|e| {
                        Error::CheckArtifact {
                            artifact: out.artifact_id.clone(),
                            source: Box::new(e),
                        }
                    })?,
                    // A provider this build of imgraph lacks: the artifact cannot be checked.
                    None => false,
                };
            checked.insert(out.artifact_id.clone(), present);
            if !present {
                facts.missing_artifacts.insert(out.artifact_id);
            }
        }
        Ok((facts, updates))
    }

    /// Revoked versions, and for each image whose current version was revoked itself
    /// the build record of its newest good version ([`Facts::fallback`]).
    fn gather_revocations(&self, facts: &mut Facts) -> Result<()> {
        let records = self.state.images(None)?;
        for r in &records {
            if r.version.status == crate::state::ReleaseStatus::Revoked {
                facts
                    .revoked
                    .entry(r.version.image.clone())
                    .or_default()
                    .insert(
                        r.version.version.clone(),
                        r.version.revoked_reason.clone().unwrap_or_default(),
                    );
            }
        }
        for (image, revoked) in &facts.revoked {
            let build = NodeId::build(image);
            let current = facts.history.get(&build).and_then(BuildOutputs::last);
            let Some(current) = current.filter(|c| revoked.contains_key(&c.version)) else {
                continue;
            };
            if self.state.revoked_via(image, &current.version)?.is_some() {
                continue;
            }
            let newest_good = records
                .iter()
                .filter(|r| {
                    r.version.image == *image
                        && r.version.status == crate::state::ReleaseStatus::Ready
                })
                .max_by(|a, b| {
                    crate::state::compare_versions(&a.version.version, &b.version.version)
                });
            if let Some(good) = newest_good {
                if let Some(rec) = self
                    .state
                    .success_with_version(&build, &good.version.version)?
                {
                    facts.fallback.insert(image.clone(), rec);
                }
            }
        }
        Ok(())
    }

    /// Gathers facts and decides. Builds that the state does not know but a provider's own
    /// records do (AMI tags, the local registry: an ephemeral CI runner, a lost state file)
    /// are recorded first, so they are not rebuilt and their versions are not reused.
    pub async fn plan(&self, providers: &Providers, options: &PlanOptions) -> Result<Plan> {
        let facts = self.gather(providers).await?;
        tracing::info!(
            manifests = facts.manifests.len(),
            sources = facts.sources.len(),
            missing_artifacts = facts.missing_artifacts.len(),
            "inputs hashed and sources resolved"
        );
        let plan = plan::decide(&self.project, &self.graph, &facts, options)?;
        if self
            .recover_from_providers(providers, &plan)
            .await?
            .is_empty()
        {
            return Ok(plan);
        }
        let facts = self.gather(providers).await?;
        Ok(plan::decide(&self.project, &self.graph, &facts, options)?)
    }

    /// [`Workspace::plan`] for callers without a runtime (tests, benches).
    pub fn plan_blocking(&self, options: &PlanOptions) -> Result<Plan> {
        let rt = current_thread_runtime()?;
        rt.block_on(async {
            let providers = self.providers().await?;
            self.plan(&providers, options).await
        })
    }

    /// [`Workspace::gather`] for callers without a runtime.
    pub fn gather_blocking(&self) -> Result<Facts> {
        let rt = current_thread_runtime()?;
        rt.block_on(async {
            let providers = self.providers().await?;
            self.gather(&providers).await
        })
    }
}

/// Where `project` keeps its state.
pub fn backend_of(project: &Project) -> crate::state::Backend {
    let path = project.state_path.clone();
    match &project.shared_state {
        None => crate::state::Backend::Local { path },
        Some(shared) => crate::state::Backend::S3 {
            path,
            shared: shared.clone(),
        },
    }
}

/// What a node reads, from the config: `build:` nodes their inputs, copy sources, local
/// origin folder, step commands and `env` variables (the image's and the build's);
/// `test:` and `deliver:` nodes their own inputs, command and variables (the image's and
/// their own). Others (`publish:`, `source:`) read nothing of the project.
fn node_inputs<'a>(project: &'a Project, node: &crate::graph::StageNode) -> Option<NodeInputs<'a>> {
    let image = project.image(node.image.as_deref()?)?;
    match node.stage {
        Stage::Build => {
            let origin = match &image.from {
                FromRef::Source(name) => match project.source(name).map(|s| &s.kind) {
                    Some(SourceKind::Local { path }) => Some(path.clone()),
                    _ => None,
                },
                FromRef::Image(_) => None,
            };
            let commands = image.build.project_commands();
            Some(NodeInputs {
                declared: &image.inputs,
                builder_reads: image.build.referenced_paths(),
                origin,
                commands,
                env: image.build_env().hashed.into_iter().collect(),
                image_probes: BTreeMap::new(),
            })
        }
        Stage::Test => {
            let suite = image.suite(node.suite.as_deref()?)?;
            Some(NodeInputs {
                declared: &suite.inputs,
                commands: vec![suite.command.as_str()],
                env: image.test_env(suite).hashed.into_iter().collect(),
                ..NodeInputs::default()
            })
        }
        Stage::Deliver => {
            let env = project.environment(node.environment.as_deref()?)?;
            let delivery = env.deliveries.iter().find(|d| d.image == image.name)?;
            Some(NodeInputs {
                declared: &delivery.inputs,
                commands: vec![delivery.command.as_str()],
                env: image.delivery_env(delivery).hashed.into_iter().collect(),
                ..NodeInputs::default()
            })
        }
        Stage::Publish | Stage::Source => None,
    }
}

/// Reads every local origin archive through (see [`crate::provider::local::check_origin`]),
/// so a damaged or truncated origin fails before anything is recorded: all of them, or
/// with a plan, those of the builds it runs.
pub fn check_origins(
    project: &Project,
    plan: Option<&Plan>,
    cancel: &CancellationToken,
) -> Result<()> {
    for image in &project.images {
        let crate::config::model::FromRef::Source(name) = &image.from else {
            continue;
        };
        let Some(SourceKind::Local { path }) = project.source(name).map(|s| &s.kind) else {
            continue;
        };
        let runs = plan.is_none_or(|p| {
            p.node(&NodeId::build(&image.name))
                .is_some_and(|n| n.action == plan::Action::Run)
        });
        if runs {
            crate::provider::local::check_origin(&project.root.join(path.as_str()), cancel)
                .map_err(|source| Error::Origin {
                    name: name.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "failed to start the async runtime".into(),
            path: std::path::PathBuf::new(),
            source,
        })
}

async fn resolve_aws_source(
    providers: &Providers,
    name: &str,
    owners: &[String],
    pattern: Option<&str>,
    tags: &std::collections::BTreeMap<String, String>,
) -> Result<String> {
    if let Some(aws) = providers.of_type(ProviderType::Aws) {
        return aws
            .resolve_source(owners, pattern, tags)
            .await
            .map_err(|e| Error::ResolveSource {
                name: name.into(),
                source: Box::new(e),
            });
    }
    Err(Error::ProviderUnavailable {
        name: name.to_string(),
        provider: "aws".into(),
    })
}

/// The artifact id of the newest Ready version of `image` in the other project an
/// `imgraph` source names (see `provider::upstream`).
async fn resolve_imgraph_source(providers: &Providers, name: &str, image: &str) -> Result<String> {
    let resolve_err = |source| Error::ResolveSource {
        name: name.into(),
        source: Box::new(source),
    };
    let Some(upstream) = providers.upstream.get(name) else {
        return Err(resolve_err(crate::provider::ProviderError::Unsupported {
            provider: "local",
            capability: "read other projects' shared state in this build of imgraph",
        }));
    };
    match upstream.newest_ready(image).await.map_err(resolve_err)? {
        Some(ready) => Ok(ready.artifact_id),
        None => Err(resolve_err(
            crate::provider::ProviderError::NoReadyUpstream {
                image: image.into(),
                place: upstream.name(),
            },
        )),
    }
}

/// Where an apply's plan comes from.
#[derive(Debug, Clone, Copy)]
pub enum PlanSource<'a> {
    /// Plan now, with these options.
    Fresh(&'a PlanOptions),
    /// Run exactly this saved plan (read from `path`), once it is checked to still
    /// describe the project.
    Saved { plan: &'a SavedPlan, path: &'a Path },
}

impl PlanSource<'_> {
    /// The options the plan is (or was) made with.
    pub fn options(&self) -> PlanOptions {
        match self {
            PlanSource::Fresh(options) => (*options).clone(),
            PlanSource::Saved { plan, .. } => plan.options(),
        }
    }
}

/// What `apply` returns besides the run summary.
pub struct ApplyOutcome {
    pub plan: Plan,
    pub summary: crate::exec::RunSummary,
}

impl Workspace {
    /// `.imgraph/` (the folder of the state file): logs and temporary folders go here.
    pub fn work_root(&self) -> std::path::PathBuf {
        self.project
            .state_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.project.root.join(".imgraph"))
    }

    /// The providers this project declares, connected and ready to run work.
    pub async fn providers(&self) -> Result<Providers> {
        crate::provider::connect(&self.project)
            .await
            .map_err(|e| match e {
                ConnectError::Unavailable { name, provider } => Error::ProviderUnavailable {
                    name,
                    provider: provider.to_string(),
                },
                ConnectError::Setup { provider, source } => Error::ProviderSetup {
                    provider,
                    source: Box::new(source),
                },
            })
    }

    /// Destroys what killed runs left behind (found through the instance ledger) and marks
    /// their runs abandoned. Returns the events describing what was cleaned.
    ///
    /// With `by_tags`, also terminates cloud instances tagged for this project that no
    /// ledger knows (a lost state file). `apply` leaves that to an explicit `imgraph gc`:
    /// two CI runners with separate state files but the same checkout path would otherwise
    /// reap each other's live test instances.
    pub async fn collect_garbage(
        &self,
        providers: &Providers,
        by_tags: bool,
    ) -> Result<Vec<Event>> {
        self.state.abandon_stale_runs(None)?;
        let mut events = Vec::new();
        for entry in self.state.ledger_open()? {
            if entry.kind == crate::process::LEDGER_KIND {
                // A command of a killed run may still be running: kill its group.
                crate::process::kill_leftover(&entry.resource);
                self.state.ledger_mark_destroyed(entry.id)?;
                events.push(Event::LeftoverDestroyed {
                    resource: format!(
                        "process group {}",
                        entry.resource.split(' ').next().unwrap_or("")
                    ),
                    kind: "command".into(),
                    node: entry.node_id.clone(),
                });
                continue;
            }
            let Some(provider) = providers.all.get(&entry.provider) else {
                continue;
            };
            provider
                .destroy_leftover(&entry)
                .await
                .map_err(|e| Error::DestroyLeftover {
                    kind: entry.kind.clone(),
                    resource: entry.resource.clone(),
                    source: Box::new(e),
                })?;
            self.state.ledger_mark_destroyed(entry.id)?;
            events.push(Event::LeftoverDestroyed {
                resource: entry.resource.clone(),
                kind: entry.kind.clone(),
                node: entry.node_id.clone(),
            });
        }
        // A killed run's folder, whatever its ledger rows say (they are not synced: a
        // power loss may have taken them back).
        let work_root = self.work_root();
        let folders =
            crate::exec::leftover_run_folders(&work_root).map_err(|source| Error::Io {
                what: "failed to list".into(),
                path: work_root.join("tmp"),
                source,
            })?;
        for folder in folders {
            crate::provider::local::remove_tree(&folder)?;
            events.push(Event::LeftoverDestroyed {
                resource: folder.display().to_string(),
                kind: "run folder".into(),
                node: "a killed run".into(),
            });
        }
        if let Some(store) = self.local_store() {
            for path in store.remove_unfinished_packs()? {
                events.push(Event::LeftoverDestroyed {
                    resource: path.display().to_string(),
                    kind: "unfinished pack".into(),
                    node: "a killed build".into(),
                });
            }
        }
        // Instances tagged by imgraph whose ledger entry was never written (a crash
        // between the ledger and the cloud call cannot cause this, but a lost state file can).
        if by_tags {
            for provider in providers.all.values() {
                let ids = provider
                    .sweep_tagged_leftovers()
                    .await
                    .map_err(|e| Error::SweepTagged(Box::new(e)))?;
                for id in ids {
                    events.push(Event::LeftoverDestroyed {
                        resource: id,
                        kind: "instance".into(),
                        node: "a run imgraph has no record of".into(),
                    });
                }
            }
        }
        Ok(events)
    }

    /// `imgraph why NODE`: plans (writing nothing) and explains one node, or says it
    /// is no stage node of this project. `node` may be an image name (its build).
    pub async fn why(
        &self,
        providers: &Providers,
        options: &PlanOptions,
        node: &str,
    ) -> Result<plan::why::Explanation> {
        let (facts, _) = self.gather_unrecorded(providers).await?;
        let plan = plan::decide(&self.project, &self.graph, &facts, options)?;
        // A node id first (image names may look like one), then an image name.
        let id = match NodeId::parse(node) {
            Ok(id) if self.graph.get(&id).is_some() => Some(id),
            _ if self.project.image(node).is_some() => Some(NodeId::build(node)),
            parsed => parsed.ok(),
        };
        let explained =
            id.and_then(|id| plan::why::explain(&plan, &facts.history, facts.now_ms, &id));
        explained.ok_or_else(|| {
            let ids = plan.nodes.iter().map(|n| n.id.as_str());
            Error::UnknownNode {
                node: node.to_string(),
                suggestion: crate::config::did_you_mean(node, ids).map(str::to_string),
            }
        })
    }

    /// Which state file, at which write: what a saved plan is checked against.
    pub fn state_stamp(&self) -> Result<StateStamp> {
        let l = self.state.lineage()?;
        Ok(StateStamp {
            lineage: l.lineage,
            serial: l.serial,
        })
    }

    /// Plans for `plan --out`: the plan with the lineage and serial of the state it was
    /// decided from. Planning can itself record builds found by their tags; the serial is
    /// the one after that, and a state that moves under the plan (another apply) is planned
    /// again.
    pub async fn plan_to_save(
        &self,
        providers: &Providers,
        options: &PlanOptions,
    ) -> Result<SavedPlan> {
        for _ in 0..3 {
            let before = self.state_stamp()?;
            let plan = self.plan(providers, options).await?;
            let after = self.state_stamp()?;
            if before == after {
                return Ok(SavedPlan::new(plan, after, crate::state::now_ms()));
            }
        }
        Err(Error::StateKeptChanging)
    }

    /// The saved plan, ready to run, if it still describes the project exactly (`facts`
    /// gathered now, `fresh` decided from them with the saved options); else the refusal
    /// naming every difference (see [`crate::plan::saved`]).
    fn check_saved(
        &self,
        saved: &SavedPlan,
        path: &Path,
        facts: &Facts,
        fresh: &Plan,
    ) -> Result<Plan> {
        let drift = plan::saved::drift(saved, &self.state_stamp()?, facts, fresh);
        if !drift.is_empty() {
            return Err(Error::StalePlan {
                path: path.to_path_buf(),
                changes: drift.iter().map(crate::report::saved::drift_text).collect(),
            });
        }
        Ok(saved.to_plan())
    }

    /// Takes the lease, cleans up after killed runs, plans (or checks a saved plan) and
    /// runs the plan.
    pub async fn apply(
        self,
        source: PlanSource<'_>,
        exec: &ExecOptions,
        events: UnboundedSender<Event>,
        cancel: CancellationToken,
    ) -> Result<ApplyOutcome> {
        // Bad input (config, input files, origins) fails here, before anything is
        // written: the state stays byte for byte as it was (invariant 6).
        let options = source.options();
        let options = &options;
        let providers = self.providers().await?;
        // The serial before the history is read: if it is the same once the lease is
        // held, no write came in between and the first plan is the one to run.
        let seen = self.state.lineage()?.serial;
        let (mut facts, cache_updates) = self.gather_unrecorded(&providers).await?;
        let first = plan::decide(&self.project, &self.graph, &facts, options)?;
        check_origins(&self.project, Some(&first), &cancel)?;
        for provider in providers.all.values() {
            provider
                .check_before_apply()
                .await
                .map_err(|source| Error::PrepareProvider {
                    provider: provider.name(),
                    source: Box::new(source),
                })?;
        }
        // Every way out of here, a panic included, gives the lease back (the guard).
        let lease = self.lock("apply", exec.lock_wait, &cancel)?;
        let prepared = async {
            self.store_stat_cache(&cache_updates);
            for ev in self.collect_garbage(&providers, false).await? {
                let _ = events.send(ev);
            }
            // Clean-up may have marked killed runs abandoned, and another apply may have
            // run before the lease was ours: decide on today's history. Every write to the
            // history moves the serial, so an unchanged one means the first plan stands
            // (reading and deciding 2,000 nodes again was a third of a no-change apply).
            let plan = if self.state.lineage()?.serial == seen {
                first
            } else {
                facts.history = self.state.snapshot()?;
                plan::decide(&self.project, &self.graph, &facts, options)?
            };
            if let PlanSource::Saved { plan: saved, path } = source {
                return self.check_saved(saved, path, &facts, &plan);
            }
            if self
                .recover_from_providers(&providers, &plan)
                .await?
                .is_empty()
            {
                return Ok(plan);
            }
            let facts = self.gather(&providers).await?;
            Ok(plan::decide(&self.project, &self.graph, &facts, options)?)
        }
        .await;
        let plan = prepared?;
        let work_root = self.work_root();
        let Workspace {
            project,
            graph,
            state,
            leases: _,
        } = self;
        let state = Arc::new(Mutex::new(state));
        let ctx = ExecContext {
            project: Arc::new(project),
            graph: Arc::new(graph),
            state: state.clone(),
            providers: Arc::new(providers.all),
            work_root,
            resolved_sources: Arc::new(
                plan.sources
                    .iter()
                    .map(|s| (s.name.clone(), s.id.clone()))
                    .collect(),
            ),
            commands: Arc::new(crate::process::Host),
        };
        // A lease with a heartbeat can be lost (another runner took it over): the run
        // then stops as if interrupted, and the apply fails with that.
        let run_cancel = cancel.child_token();
        let watcher = lease
            .time_to_live()
            .map(|ttl| lock::watch_lease(lease.watch(), ttl, run_cancel.clone()));
        let summary = crate::exec::execute(ctx, &plan, "apply", exec, events, run_cancel).await;
        let lost = match watcher {
            Some(w) => {
                w.stop.cancel();
                w.task.await.ok().flatten()
            }
            None => None,
        };
        // Through its own connection: a task that panicked holding the state mutex
        // (poisoning it) does not keep the lease.
        lease.release()?;
        if let Some(lost) = lost {
            return Err(lost.into());
        }
        let summary = summary?;
        Ok(ApplyOutcome { plan, summary })
    }
}
