//! Probes with `in="image"`: commands run inside a throwaway instance of an image, whose
//! output decides whether the image is rebuilt ("is there a security fix for what this
//! image has installed?").
//!
//! They are measured twice. At plan time, in the image's current version (its newest
//! `Ready` version, else its newest) - before any version exists there is nothing to run
//! in, and each such probe has the constant digest [`crate::hash::no_image_yet`], which
//! never changes by itself: the first build runs anyway, being new. And right after each
//! build, in the image it made: that is what the build records, so the next plan
//! compares today's output in the new image with the output in the same image at build
//! time, and a rebuild that took a fix in does not read as a change of its own.

use std::collections::BTreeMap;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{Job, Ledger, ProbeRequest, Provider, ProviderError};
use crate::config::model::{Image, InputKind, Network, ProbePlace, Project};
use crate::hash::{no_image_yet, PROBE_TIMEOUT};

/// Where and with what an image's probes run.
pub struct ProbeSite<'a> {
    pub project: &'a Project,
    /// Instances are made under this folder.
    pub work_dir: &'a Path,
    /// Each probe's standard error goes to `<log_dir>/probe-IMAGE-NAME.log`.
    pub log_dir: &'a Path,
    pub ledger: &'a Ledger,
    pub cancel: &'a CancellationToken,
}

/// Whether an image has probes that run inside it.
pub fn has_image_probes(image: &Image) -> bool {
    image.inputs.iter().any(|i| {
        matches!(
            i.kind,
            InputKind::Probe {
                place: ProbePlace::Image,
                ..
            }
        )
    })
}

/// The digest of each of `image`'s `in="image"` probes, by name, measured in `version`
/// (`(artifact id, version)`), or [`no_image_yet`] for all of them when there is none.
pub async fn measure_image_probes(
    provider: &dyn Provider,
    site: &ProbeSite<'_>,
    image: &Image,
    version: Option<(&str, &str)>,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let mut out = BTreeMap::new();
    for input in &image.inputs {
        let InputKind::Probe {
            name,
            command,
            place: ProbePlace::Image,
            network,
            timeout,
            env,
        } = &input.kind
        else {
            continue;
        };
        let Some((artifact_id, number)) = version else {
            out.insert(name.clone(), no_image_yet());
            continue;
        };
        let names = image.env.merged(env);
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        std::fs::create_dir_all(site.log_dir).map_err(|source| ProviderError::ProbeLogDir {
            path: site.log_dir.to_path_buf(),
            source,
        })?;
        let log = site
            .log_dir
            .join(format!("probe-{}-{}.log", safe(&image.name), safe(name)));
        // One log per probe, of its latest run.
        let _ = std::fs::remove_file(&log);
        let digest = provider
            .probe(ProbeRequest {
                image,
                name,
                command,
                host_network: *network == Network::Host,
                timeout: timeout.unwrap_or(PROBE_TIMEOUT),
                env: names.hashed.iter().chain(&names.passed).cloned().collect(),
                artifact_id,
                version: number,
                job: Job {
                    project: site.project,
                    log: &log,
                    work_dir: site.work_dir,
                    ledger: site.ledger,
                    cancel: site.cancel,
                },
            })
            .await?;
        out.insert(name.clone(), digest);
    }
    Ok(out)
}
