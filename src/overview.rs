//! What `imgraph report` shows ([`crate::report::html::Overview`]), gathered from a
//! workspace in one place: the pending plan (and each node's mark for the picture), every
//! image's versions with their package changes and the environments holding them now,
//! and the last runs.
//!
//! Gathering reads the state and plans; it writes nothing but the stat cache (as every
//! plan does). A plan that cannot be made (a source that cannot be resolved, no cloud
//! credentials) does not stop the report: the page says why the plan is missing and
//! still shows what the state knows.

use std::collections::{BTreeMap, HashMap};

use crate::error::Result;
use crate::graph::Paint;
use crate::hash::Manifest;
use crate::plan::PlanOptions;
use crate::report::html::{ImageOverview, Overview, Packages, RunOverview, VersionOverview};
use crate::state::{ImageRecord, NodeStatus};
use crate::workspace::Workspace;

impl Workspace {
    /// Plans (with `options`) and reads the state for a report of the last `run_limit` runs.
    pub async fn overview(&self, options: &PlanOptions, run_limit: usize) -> Result<Overview> {
        let plan = match self.providers().await {
            Ok(providers) => self.plan(&providers, options).await,
            Err(e) => Err(e),
        }
        .map_err(|e| crate::text::error_chain(&e));
        let paint = match &plan {
            Ok(p) => crate::report::graph::paint(p, &self.state.snapshot()?),
            Err(_) => Paint::default(),
        };
        let mut runs = Vec::new();
        for run in self.state.runs(run_limit)? {
            let nodes = self.state.node_runs(run.id)?;
            runs.push(RunOverview { run, nodes });
        }
        Ok(Overview {
            project: self
                .project
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.project.root.display().to_string()),
            config_path: self.project.config_path.display().to_string(),
            generated_at_ms: crate::state::now_ms(),
            plan,
            paint,
            images: self.image_overviews()?,
            runs,
        })
    }

    fn image_overviews(&self) -> Result<Vec<ImageOverview>> {
        let mut by_image: BTreeMap<String, Vec<ImageRecord>> = self
            .project
            .images
            .iter()
            .map(|i| (i.name.clone(), Vec::new()))
            .collect();
        for rec in self.state.images(None)? {
            by_image
                .entry(rec.version.image.clone())
                .or_default()
                .push(rec);
        }
        let mut out = Vec::new();
        for (name, records) in by_image {
            // Environment → the version it holds now.
            let mut held: HashMap<String, Vec<String>> = HashMap::new();
            for env in &self.project.environments {
                if !env.deliveries.iter().any(|d| d.image == name) {
                    continue;
                }
                if let Some(v) = self.state.delivered_version(&name, &env.name)? {
                    held.entry(v).or_default().push(env.name.clone());
                }
            }
            // Records come newest version first: each is compared with the one after it.
            let manifests = records
                .iter()
                .map(|r| self.build_manifest(&name, r))
                .collect::<Result<Vec<_>>>()?;
            let versions = records
                .into_iter()
                .enumerate()
                .map(|(i, record)| {
                    let change = match (&manifests[i], manifests.get(i + 1)) {
                        (Some(new), Some(Some(old))) => {
                            Some(crate::plan::package_changes(old, new))
                        }
                        (Some(new), None) => {
                            Some(crate::plan::package_changes(&Manifest::default(), new))
                        }
                        _ => None,
                    };
                    let packages = match change {
                        Some(Some(c)) => Packages::Changed(c),
                        Some(None) => Packages::NoList,
                        None => Packages::Unknown,
                    };
                    VersionOverview {
                        held_by: held.remove(&record.version.version).unwrap_or_default(),
                        record,
                        packages,
                    }
                })
                .collect();
            out.push(ImageOverview {
                declared: self.project.image(&name).is_some(),
                delivered: self
                    .project
                    .environments
                    .iter()
                    .any(|e| e.deliveries.iter().any(|d| d.image == name)),
                name,
                versions,
            });
        }
        Ok(out)
    }

    /// The manifest the build of one version recorded, when the state has it.
    fn build_manifest(&self, image: &str, rec: &ImageRecord) -> Result<Option<Manifest>> {
        let Some(run) = rec.version.run else {
            return Ok(None);
        };
        let node = self
            .state
            .node_in_run(run, &crate::graph::NodeId::build(image))?;
        Ok(node
            .filter(|n| n.status == NodeStatus::Succeeded)
            .and_then(|n| serde_json::from_str(&n.manifest_json).ok()))
    }
}
