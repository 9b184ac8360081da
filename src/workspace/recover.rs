//! Recovery after a lost state file, from the providers' own records (AMI tags, the local
//! store's registry files).
//!
//! Two callers: every plan, for the builds it finds without any history (a new image, or
//! a state file that was lost: an ephemeral CI runner), and `imgraph state recover`, for
//! everything the providers know. Recovery puts the versions it finds into the image
//! registry (with the environments they reached), so version numbers are never reused;
//! and where a version's key equals the key the plan computed, it records the build — and
//! for a Ready version its tests, publish and deliveries — as succeeded, so the plan finds
//! it up to date instead of rebuilding what exists. Whether the artifact still exists is
//! checked by the next gather, as for any recorded build.
//!
//! Recovery writes, so it needs the lease; when another process holds it (an apply is
//! running), a plan skips recovery rather than wait.

use crate::error::Result;
use crate::graph::Stage;
use crate::plan::{BuildOutputs, Plan, PlanOptions, Reason};
use crate::provider::RecordedVersion;
use crate::state::{
    ImageVersion, LeaseGuard, LeaseHolder, LeaseOutcome, NodeStatus, RunId, RunStatus,
};

use super::{Providers, Workspace};

/// A version put back into the image registry from a provider's records.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub image: String,
    pub version: String,
    pub artifact_id: String,
    pub status: String,
}

impl From<&RecordedVersion> for Recovered {
    fn from(v: &RecordedVersion) -> Self {
        Recovered {
            image: v.image.clone(),
            version: v.version.clone(),
            artifact_id: v.artifact_id.clone(),
            status: v.status.as_str().to_string(),
        }
    }
}

/// One recovery: its run, begun (and the lease taken) only once there is something to
/// record.
struct Recovery<'w> {
    ws: &'w Workspace,
    run: Option<RunId>,
    /// The lease, when this recovery took it (rather than the apply it runs in).
    lease: Option<LeaseGuard>,
    found: Vec<Recovered>,
}

impl<'w> Recovery<'w> {
    fn new(ws: &'w Workspace) -> Self {
        Recovery {
            ws,
            run: None,
            lease: None,
            found: Vec::new(),
        }
    }

    /// The recovery run, begun now if needed; `None` when another process holds the lease.
    fn run(&mut self) -> Result<Option<RunId>> {
        if let Some(r) = self.run {
            return Ok(Some(r));
        }
        // A read-only command (plan) records nothing: apply or `state recover` will.
        if self.ws.state.is_read_only() {
            return Ok(None);
        }
        let me = LeaseHolder::this_process("imgraph (recovery)");
        match self.ws.leases.acquire(&me)? {
            LeaseOutcome::Acquired => {
                self.lease = Some(LeaseGuard::new(self.ws.leases.clone(), me));
            }
            // Inside apply or `state recover`, this process holds it already.
            LeaseOutcome::HeldBy { pid, .. } if pid == std::process::id() => {}
            LeaseOutcome::HeldBy { .. } => return Ok(None),
        }
        let r = self.ws.state.begin_run("recover", "{}")?;
        self.run = Some(r);
        Ok(Some(r))
    }

    /// Puts one version (and the deliveries it records) into the image registry unless
    /// the registry knows that version already. Returns whether it was new.
    fn import(&mut self, v: &RecordedVersion, provider: &str, run: RunId) -> Result<bool> {
        let state = &self.ws.state;
        if state
            .images(Some(&v.image))?
            .iter()
            .any(|r| r.version.version == v.version)
        {
            return Ok(false);
        }
        state.record_image(&ImageVersion {
            image: v.image.clone(),
            version: v.version.clone(),
            artifact_id: v.artifact_id.clone(),
            provider: provider.to_string(),
            key: v.key.clone(),
            status: v.status,
            built_at: v.built_at_ms.unwrap_or_else(crate::state::now_ms),
            run: Some(run),
            origin: None,
            revoked_reason: None,
        })?;
        for env in &v.environments {
            state.record_delivery(&v.image, &v.version, env, run)?;
        }
        self.found.push(Recovered::from(v));
        Ok(true)
    }

    fn finish(self) -> Result<Vec<Recovered>> {
        if let Some(r) = self.run {
            self.ws.state.finish_run(r, RunStatus::Succeeded)?;
        }
        if let Some(lease) = self.lease {
            lease.release()?;
        }
        Ok(self.found)
    }
}

impl Workspace {
    /// For each `build:` node the plan finds without any history, imports the versions
    /// its provider records for that image and, when one was built with the planned key,
    /// records its nodes as succeeded (see the module docs).
    pub async fn recover_from_providers(
        &self,
        providers: &Providers,
        plan: &Plan,
    ) -> Result<Vec<Recovered>> {
        let mut recovery = Recovery::new(self);
        let outcome = self.recover_builds(providers, plan, &mut recovery).await;
        let found = recovery.finish()?;
        outcome.map(|()| found)
    }

    async fn recover_builds(
        &self,
        providers: &Providers,
        plan: &Plan,
        recovery: &mut Recovery<'_>,
    ) -> Result<()> {
        for n in &plan.nodes {
            if n.stage != Stage::Build || n.reasons != [Reason::New] {
                continue;
            }
            let Some(image) = n.image.as_deref().and_then(|i| self.project.image(i)) else {
                continue;
            };
            let Some(provider) = providers.all.get(&image.provider) else {
                continue;
            };
            let versions = provider
                .recorded_versions(Some(&image.name))
                .await
                .map_err(|e| crate::error::Error::Recovery {
                    image: image.name.clone(),
                    source: Box::new(e),
                })?;
            if versions.is_empty() {
                continue;
            }
            let Some(run) = recovery.run()? else {
                return Ok(());
            };
            for v in &versions {
                recovery.import(v, provider.name(), run)?;
            }
            let newest_with_key = versions
                .iter()
                .filter(|v| v.key == n.key)
                .max_by(|a, b| crate::state::compare_versions(&a.version, &b.version));
            if let Some(v) = newest_with_key {
                self.record_recovered_nodes(plan, &image.name, v, run)?;
            }
        }
        Ok(())
    }

    /// Records the build of `v` (and for a Ready version its tests, publish and the
    /// deliveries it reached) as the plan would have recorded them.
    fn record_recovered_nodes(
        &self,
        plan: &Plan,
        image: &str,
        v: &RecordedVersion,
        run: RunId,
    ) -> Result<()> {
        let built = BuildOutputs {
            artifact_id: v.artifact_id.clone(),
            version: v.version.clone(),
            built_at_ms: v.built_at_ms,
            tags: v.tags.clone(),
        };
        let outputs = serde_json::to_string(&built).unwrap_or_default();
        let ready = v.status == crate::state::ReleaseStatus::Ready;
        let nodes = plan.nodes.iter().filter(|m| {
            m.image.as_deref() == Some(image)
                && match m.stage {
                    Stage::Build => true,
                    Stage::Test | Stage::Publish => ready,
                    Stage::Deliver => {
                        ready
                            && m.environment
                                .as_ref()
                                .is_some_and(|e| v.environments.contains(e))
                    }
                    Stage::Source => false,
                }
        });
        for m in nodes {
            // Build, tests, publish and deliveries all stand for this artifact.
            crate::exec::record_finished(
                &self.state,
                run,
                &m.for_artifact(&built),
                NodeStatus::Succeeded,
                Some(&outputs),
                None,
            )?;
        }
        Ok(())
    }

    /// `imgraph state recover`: puts every version the providers record for this
    /// project's images into the image registry; versions built with the keys the
    /// current config gives also get their node records back (they are not rebuilt).
    pub async fn recover(&self, providers: &Providers) -> Result<Vec<Recovered>> {
        let facts = self.gather(providers).await?;
        let plan =
            crate::plan::decide(&self.project, &self.graph, &facts, &PlanOptions::default())?;
        let mut recovery = Recovery::new(self);
        let outcome = async {
            self.recover_builds(providers, &plan, &mut recovery).await?;
            let mut names: Vec<&String> = providers.all.keys().collect();
            names.sort();
            for name in names {
                let provider = &providers.all[name];
                let versions = provider.recorded_versions(None).await.map_err(|e| {
                    crate::error::Error::Recovery {
                        image: format!("the images of provider `{name}`"),
                        source: Box::new(e),
                    }
                })?;
                for v in versions
                    .iter()
                    .filter(|v| self.project.image(&v.image).is_some())
                {
                    let Some(run) = recovery.run()? else {
                        return Ok(());
                    };
                    recovery.import(v, provider.name(), run)?;
                }
            }
            Ok(())
        }
        .await;
        let found = recovery.finish()?;
        outcome.map(|()| found)
    }
}
