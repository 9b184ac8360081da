//! Probes with `in="image"` at plan time: each runs inside a throwaway instance of its
//! image's current version (see `provider::probes`), outside any run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::provider::probes::{has_image_probes, measure_image_probes, ProbeSite};
use crate::provider::Ledger;
use crate::state::State;

use super::{Providers, Workspace};

impl Workspace {
    /// Runs every `in="image"` probe inside a throwaway instance of its image's current
    /// version (newest `Ready`, else newest; see `provider::probes`): image name → probe
    /// name → digest. Instances go to the ledger like test instances, without a run.
    pub(super) async fn image_probe_digests(
        &self,
        providers: &Providers,
    ) -> Result<HashMap<String, BTreeMap<String, String>>> {
        let mut out = HashMap::new();
        let images: Vec<&crate::config::model::Image> = self
            .project
            .images
            .iter()
            .filter(|i| has_image_probes(i))
            .collect();
        if images.is_empty() {
            return Ok(out);
        }
        let fail = |image: &str, e: crate::provider::ProviderError| Error::ImageProbes {
            image: image.into(),
            source: Box::new(e),
        };
        // The ledger wants a shared state; WAL makes a second connection cheap.
        let ledger = Ledger {
            state: Arc::new(Mutex::new(State::open(&self.project.state_path)?)),
            run: None,
            in_run_folder: false,
        };
        let work_root = self.work_root();
        let (work_dir, log_dir) = (work_root.join("tmp"), work_root.join("logs").join("probes"));
        std::fs::create_dir_all(&work_dir).map_err(|source| Error::Io {
            what: "failed to create".into(),
            path: work_dir.clone(),
            source,
        })?;
        let cancel = CancellationToken::new();
        let site = ProbeSite {
            project: &self.project,
            work_dir: &work_dir,
            log_dir: &log_dir,
            ledger: &ledger,
            cancel: &cancel,
        };
        for image in images {
            let Some(provider) = providers.all.get(&image.provider) else {
                continue;
            };
            let current = self.state.current_version(&image.name)?;
            let mut version = None;
            if let Some(rec) = &current {
                // A current version whose artifact is gone has nothing to run in either.
                let exists = provider
                    .artifact_exists(&rec.version.artifact_id)
                    .await
                    .map_err(|e| fail(&image.name, e))?;
                if exists {
                    version = Some((
                        rec.version.artifact_id.as_str(),
                        rec.version.version.as_str(),
                    ));
                }
            }
            let measured = measure_image_probes(provider.as_ref(), &site, image, version)
                .await
                .map_err(|e| fail(&image.name, e))?;
            out.insert(image.name.clone(), measured);
        }
        Ok(out)
    }
}
