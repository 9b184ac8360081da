//! A loaded project with its graph and state: the place where the impure work of
//! planning happens (hashing inputs, resolving sources, checking artifacts) before the
//! pure planner decides.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::config::model::{Project, ProviderKind, SourceKind};
use crate::error::{Error, Result};
use crate::graph::{Stage, StageGraph};
use crate::hash::{CachedStat, Hasher, StatCache};
use crate::plan::{self, BuildOutputs, Facts, Plan, PlanOptions};
use crate::exec::{Event, ExecContext, ExecOptions};
use crate::provider::local::Store;
use crate::provider::local::LocalProvider;
use crate::provider::Provider;
use crate::state::{LeaseOutcome, State, StatEntry};

pub struct Workspace {
    pub project: Project,
    pub graph: StageGraph,
    pub state: State,
}

impl Workspace {
    /// Loads `imgraph.kdl` from `path` (a folder or the file), builds the graph and opens
    /// (creating if needed) the state file.
    pub fn open(path: &Path) -> Result<Workspace> {
        let project = crate::config::load(path)?;
        let graph = StageGraph::build(&project)?;
        let state = State::open(&project.state_path)?;
        Ok(Workspace {
            project,
            graph,
            state,
        })
    }

    /// The local image store, when the project declares (or implies) the local provider.
    pub fn local_store(&self) -> Option<Store> {
        self.project.providers.iter().find_map(|p| match &p.kind {
            ProviderKind::Local { store, .. } => Some(Store::new(store.clone())),
            ProviderKind::Aws { .. } => None,
        })
    }

    /// Hashes every input, resolves every source and checks recorded artifacts.
    pub fn gather(&self) -> Result<Facts> {
        let cached = self.state.load_stat_cache()?;
        let cache = StatCache::new(
            cached
                .into_iter()
                .map(|(k, e)| {
                    (
                        k,
                        CachedStat {
                            size: e.size,
                            mtime_ns: e.mtime_ns,
                            ctime_ns: e.ctime_ns,
                            inode: e.inode,
                            mode: e.mode,
                            digest: e.digest,
                            recorded_at_ns: e.recorded_at_ns,
                        },
                    )
                })
                .collect(),
        );
        let hasher = Hasher::new(&self.project.root, &cache);
        let mut facts = Facts {
            now_ms: crate::state::now_ms(),
            ..Facts::default()
        };

        for idx in self.graph.topo_order() {
            let node = self.graph.node(*idx);
            let Some(image) = node.image.as_deref().and_then(|i| self.project.image(i)) else {
                continue;
            };
            let manifest = match node.stage {
                Stage::Build => hasher.manifest(&image.inputs, &image.build.referenced_paths())?,
                Stage::Test => {
                    let Some(suite) = image.tests.iter().find(|t| Some(&t.name) == node.suite.as_ref()) else {
                        continue;
                    };
                    hasher.manifest(&suite.inputs, &[])?
                }
                _ => continue,
            };
            facts.manifests.insert(node.id.clone(), manifest);
        }

        for source in &self.project.sources {
            let id = match &source.kind {
                SourceKind::Local { path } => hasher.tree_digest(path.as_str())?,
                SourceKind::Aws { .. } => {
                    return Err(Error::ProviderUnavailable {
                        name: source.name.clone(),
                        provider: "aws".into(),
                    })
                }
            };
            facts.sources.insert(source.name.clone(), id);
        }

        let updates: Vec<(String, StatEntry)> = cache
            .take_updates()
            .into_iter()
            .map(|(k, c)| {
                (
                    k,
                    StatEntry {
                        size: c.size,
                        mtime_ns: c.mtime_ns,
                        ctime_ns: c.ctime_ns,
                        inode: c.inode,
                        mode: c.mode,
                        digest: c.digest,
                        recorded_at_ns: c.recorded_at_ns,
                    },
                )
            })
            .collect();
        if !updates.is_empty() {
            self.state.store_stat_cache(&updates)?;
        }

        facts.history = self.state.snapshot()?;
        let store = self.local_store();
        let mut seen: HashMap<String, bool> = HashMap::new();
        for h in facts.history.values() {
            let Some(outputs) = h.last_success.as_ref().and_then(|s| s.outputs_json.as_deref()) else {
                continue;
            };
            let Ok(out) = serde_json::from_str::<BuildOutputs>(outputs) else {
                continue;
            };
            if out.artifact_id.is_empty() || seen.contains_key(&out.artifact_id) {
                continue;
            }
            let present = match &store {
                Some(s) if out.artifact_id.starts_with("local:") => s.contains(&out.artifact_id),
                // Artifacts of providers this project no longer declares cannot be checked.
                _ => false,
            };
            seen.insert(out.artifact_id.clone(), present);
            if !present {
                facts.missing_artifacts.insert(out.artifact_id);
            }
        }
        Ok(facts)
    }

    /// Gathers facts and decides.
    pub fn plan(&self, options: &PlanOptions) -> Result<Plan> {
        let facts = self.gather()?;
        Ok(plan::decide(&self.project, &self.graph, &facts, options)?)
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

    /// The providers this project declares, ready to run work.
    pub fn providers(&self) -> Result<HashMap<String, Arc<dyn Provider>>> {
        let mut out: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        for p in &self.project.providers {
            match &p.kind {
                ProviderKind::Local { store, sandbox } => {
                    out.insert(
                        p.name.clone(),
                        Arc::new(LocalProvider::new(Store::new(store.clone()), *sandbox)),
                    );
                }
                ProviderKind::Aws { .. } => {
                    return Err(Error::ProviderUnavailable {
                        name: p.name.clone(),
                        provider: "aws".into(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Destroys what killed runs left behind (found through the instance ledger) and marks
    /// their runs abandoned. Returns the events describing what was cleaned.
    pub async fn collect_garbage(&self, providers: &HashMap<String, Arc<dyn Provider>>) -> Result<Vec<Event>> {
        self.state.abandon_stale_runs(None)?;
        let mut events = Vec::new();
        for entry in self.state.ledger_open()? {
            // Entries of a live run belong to it (another apply holds the lease then).
            let Some(provider) = providers.get(&entry.provider) else {
                continue;
            };
            provider
                .destroy_leftover(&entry)
                .await
                .map_err(|e| Error::Other(format!("failed to destroy {} {}: {}", entry.kind, entry.resource, crate::exec::error_chain(&e))))?;
            self.state.ledger_mark_destroyed(entry.id)?;
            events.push(Event::LeftoverDestroyed {
                resource: entry.resource.clone(),
                kind: entry.kind.clone(),
                node: entry.node_id.clone(),
            });
        }
        Ok(events)
    }

    /// Takes the lease, cleans up after killed runs, plans and runs the plan.
    pub async fn apply(
        self,
        options: &PlanOptions,
        exec: &ExecOptions,
        events: UnboundedSender<Event>,
        cancel: CancellationToken,
    ) -> Result<ApplyOutcome> {
        let holder = format!("imgraph apply (pid {})", std::process::id());
        if let LeaseOutcome::HeldBy { pid, holder, since } = self.state.acquire_lease(&holder)? {
            return Err(Error::Locked {
                pid,
                holder,
                since: crate::report::timestamp(since),
            });
        }
        // Every path out of `apply_locked` releases the lease.
        self.apply_locked(options, exec, events, cancel).await
    }

    async fn apply_locked(
        self,
        options: &PlanOptions,
        exec: &ExecOptions,
        events: UnboundedSender<Event>,
        cancel: CancellationToken,
    ) -> Result<ApplyOutcome> {
        let providers = match self.providers() {
            Ok(p) => p,
            Err(e) => {
                self.state.release_lease()?;
                return Err(e);
            }
        };
        let prepared = async {
            for ev in self.collect_garbage(&providers).await? {
                let _ = events.send(ev);
            }
            self.plan(options)
        }
        .await;
        let plan = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.state.release_lease()?;
                return Err(e);
            }
        };
        let work_root = self.work_root();
        let Workspace {
            project,
            graph,
            state,
        } = self;
        let state = Arc::new(Mutex::new(state));
        let ctx = ExecContext {
            project: Arc::new(project),
            graph: Arc::new(graph),
            state: state.clone(),
            providers: Arc::new(providers),
            work_root,
            resolved_sources: Arc::new(plan.sources.iter().map(|s| (s.name.clone(), s.id.clone())).collect()),
        };
        let summary = crate::exec::execute(ctx, &plan, "apply", exec, events, cancel).await;
        let st = state.lock().map_err(|_| Error::Other("the state lock was poisoned".into()))?;
        st.release_lease()?;
        let summary = summary.map_err(|e| Error::Other(crate::exec::error_chain(&e)))?;
        Ok(ApplyOutcome { plan, summary })
    }
}
