//! The `local` provider at run time: `rootfs` builds in a staging folder and test
//! instances as fresh unpacks of the final artifact, both under the project's work folder
//! (`.imgraph/tmp`), both ledgered before they exist and removed before returning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::model::{Build, Network, ProviderType, Sandbox, Step};
use crate::process::{self, CommandSpec, Place, ProcessOutcome};
use crate::provider::local::sandbox::{self, SandboxSpec, PROJECT_MOUNT};
use crate::provider::local::{self, SharedStores, Store, VersionMeta};
use crate::provider::{
    append_log, BuildRequest, Built, Ledger, NodeInput, Origin, ProbeRequest, Provider,
    ProviderError, RecordedVersion, TestRequest,
};
use crate::state::{ImageVersion, LedgerEntry, ReleaseStatus};

pub struct LocalProvider {
    pub store: Store,
    pub sandbox: Sandbox,
    /// Where artifacts are shared with other runners and read from other projects; the
    /// store is then their cache (see `shared.rs`).
    pub(super) shared: SharedStores,
    counter: AtomicU64,
}

impl LocalProvider {
    pub fn new(store: Store, sandbox: Sandbox) -> Self {
        LocalProvider {
            store,
            sandbox,
            shared: SharedStores::default(),
            counter: AtomicU64::new(0),
        }
    }

    /// The provider publishing to and fetching from `shared`.
    pub fn with_shared(mut self, shared: SharedStores) -> Self {
        self.shared = shared;
        self
    }

    /// The image root as a command sees it: the host path, or `/` inside a sandbox.
    fn root_env(&self, root: &Path) -> String {
        match self.sandbox {
            Sandbox::None => root.to_string_lossy().into_owned(),
            Sandbox::Bwrap => "/".into(),
        }
    }

    /// Runs one command against an image root, in the sandbox when there is one: prepares
    /// the sandbox's mounts, runs, and removes what the mounts needed, whatever happened.
    async fn run_in(
        &self,
        call: RunIn<'_>,
        mut spec: CommandSpec,
    ) -> Result<ProcessOutcome, ProviderError> {
        let prepared = match self.sandbox {
            Sandbox::None => None,
            Sandbox::Bwrap => {
                let prepared = sandbox::prepare(&SandboxSpec {
                    root: call.root,
                    project: &spec.cwd,
                    inputs: call.inputs,
                    host_network: call.host_network,
                })?;
                spec.wrapper = prepared.argv.clone();
                spec.fd3 = prepared.seccomp.clone();
                Some(prepared)
            }
        };
        let outcome = process::run(&spec, call.log, call.cancel).await;
        if let Some(prepared) = prepared {
            prepared.finish()?;
        }
        let outcome = outcome?;
        if !outcome.success() && self.sandbox == Sandbox::Bwrap {
            append_log(
                call.log,
                &format!(
                    "imgraph: note: this command saw only its {} input(s) of the project, read-only at {PROJECT_MOUNT}; a project file it reads must be declared with `input`",
                    call.inputs.len()
                ),
            );
        }
        Ok(outcome)
    }

    /// A fresh, unique folder name under `work_dir`.
    fn fresh_dir(&self, work_dir: &Path, kind: &str, node: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let safe: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        work_dir.join(format!("{kind}-{safe}-{}-{n}", std::process::id()))
    }
}

/// Where and how [`LocalProvider::run_in`] runs a command.
struct RunIn<'a> {
    root: &'a Path,
    inputs: &'a [NodeInput],
    host_network: bool,
    log: &'a Path,
    cancel: &'a tokio_util::sync::CancellationToken,
}

/// A registry entry for a version the registry does not know yet.
fn registry_entry(v: &ImageVersion) -> VersionMeta {
    VersionMeta::new(
        &v.image,
        &v.version,
        &v.artifact_id,
        &v.key,
        v.status.as_str(),
        v.built_at,
    )
}

/// Runs `f` on the blocking pool (tar, zstd and file copies must not stall the runtime).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, local::LocalError> + Send + 'static,
) -> Result<T, ProviderError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(e.into()),
    }
}

/// Removes a ledgered folder and marks the ledger entry destroyed.
async fn remove_ledgered(ledger: &Ledger, id: i64, dir: PathBuf) -> Result<(), ProviderError> {
    // `remove_tree` of a folder that is already gone is fine.
    blocking(move || local::remove_tree(&dir)).await?;
    crate::crash::point("local: folder removed, ledger not yet told");
    ledger.destroyed(id)
}

/// Runs `work` in the private folder `dir`: the folder is ledgered (as `kind`, for
/// `purpose`) before `work` starts and removed afterwards whatever `work` returned. `work`
/// is a future, so nothing of it runs before the ledger row exists. The work's own error
/// wins over a failed clean-up.
async fn in_ledgered_dir<T>(
    ledger: &Ledger,
    node: &str,
    kind: &str,
    purpose: &str,
    dir: PathBuf,
    work: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    let id = ledger.add_folder(node, "local", kind, &dir.to_string_lossy(), purpose)?;
    let result = work.await;
    let cleanup = remove_ledgered(ledger, id, dir).await;
    let value = result?;
    cleanup?;
    Ok(value)
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn build(&self, req: BuildRequest<'_>) -> Result<Built, ProviderError> {
        // Every builder is named, so a new one is a compile error here until it is placed.
        let steps = match &req.image.build {
            Build::Rootfs { steps } => steps,
            Build::Packer { .. } | Build::Ec2 { .. } => {
                return Err(ProviderError::WrongBuilder {
                    provider: ProviderType::Local,
                    builder: req.image.build.builder(),
                })
            }
        };
        let staging = self.fresh_dir(req.job.work_dir, "staging", req.node_id.as_str());
        let work = self.build_in(&req, steps, &staging);
        in_ledgered_dir(
            req.job.ledger,
            req.node_id.as_str(),
            "staging",
            "build",
            staging.clone(),
            work,
        )
        .await
    }

    async fn test(&self, req: TestRequest<'_>) -> Result<ProcessOutcome, ProviderError> {
        let instance = self.fresh_dir(req.job.work_dir, "instance", req.node_id.as_str());
        let instance_id = instance
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let work = self.test_in(&req, &instance, &instance_id);
        in_ledgered_dir(
            req.job.ledger,
            req.node_id.as_str(),
            "instance",
            "test",
            instance.clone(),
            work,
        )
        .await
    }

    async fn probe(&self, req: ProbeRequest<'_>) -> Result<String, ProviderError> {
        let node = format!("probe:{}/{}", req.image.name, req.name);
        let instance = self.fresh_dir(req.job.work_dir, "probe", &node);
        let work = self.probe_in(&req, &node, &instance);
        in_ledgered_dir(
            req.job.ledger,
            &node,
            "instance",
            "probe",
            instance.clone(),
            work,
        )
        .await
    }

    async fn set_status(
        &self,
        version: &ImageVersion,
        status: ReleaseStatus,
    ) -> Result<(), ProviderError> {
        let (store, v) = (self.store.clone(), version.clone());
        blocking(move || {
            store.update_version_meta(
                &v.image,
                &v.version,
                || registry_entry(&v),
                |m| m.status = status.as_str().to_string(),
            )
        })
        .await?;
        crate::crash::point("registry: status written");
        Ok(())
    }

    async fn set_revoked(
        &self,
        version: &ImageVersion,
        reason: Option<&str>,
    ) -> Result<(), ProviderError> {
        let (store, v) = (self.store.clone(), version.clone());
        let reason = reason.map(str::to_owned);
        blocking(move || {
            store.update_version_meta(
                &v.image,
                &v.version,
                || registry_entry(&v),
                |m| {
                    m.status = match reason {
                        Some(_) => ReleaseStatus::Revoked.as_str().to_string(),
                        None => v.status.as_str().to_string(),
                    };
                    m.revoked_reason = reason;
                },
            )
        })
        .await
    }

    async fn record_delivery(
        &self,
        version: &ImageVersion,
        environment: &str,
    ) -> Result<(), ProviderError> {
        let (store, v, env) = (self.store.clone(), version.clone(), environment.to_string());
        blocking(move || {
            store.update_version_meta(
                &v.image,
                &v.version,
                || registry_entry(&v),
                |m| {
                    m.environments.retain(|e| *e != env);
                    m.environments.push(env);
                },
            )
        })
        .await?;
        crate::crash::point("registry: delivery written");
        Ok(())
    }

    async fn set_tags(
        &self,
        version: &ImageVersion,
        tags: &BTreeMap<String, String>,
        _previous: Option<&BTreeMap<String, String>>,
    ) -> Result<(), ProviderError> {
        let (store, v, tags) = (self.store.clone(), version.clone(), tags.clone());
        blocking(move || {
            store.update_version_meta(
                &v.image,
                &v.version,
                || registry_entry(&v),
                |m| m.tags = tags,
            )
        })
        .await
    }

    async fn recorded_versions(
        &self,
        image: Option<&str>,
    ) -> Result<Vec<RecordedVersion>, ProviderError> {
        let (store, image) = (self.store.clone(), image.map(str::to_string));
        let metas = blocking(move || store.version_metas(image.as_deref())).await?;
        Ok(metas
            .into_iter()
            // A version `imgraph gc` removed is not there to recover.
            .filter(|m| m.removed_at_ms.is_none())
            .map(|m| RecordedVersion {
                status: ReleaseStatus::parse(&m.status).unwrap_or(ReleaseStatus::Candidate),
                image: m.image,
                version: m.version,
                artifact_id: m.artifact_id,
                key: m.key,
                built_at_ms: Some(m.built_at_ms),
                environments: m.environments,
                tags: Some(m.tags),
            })
            .collect())
    }

    async fn inventory(
        &self,
        artifact_id: &str,
    ) -> Result<Option<crate::packages::Inventory>, ProviderError> {
        let (store, id) = (self.store.clone(), artifact_id.to_string());
        Ok(Some(
            blocking(move || {
                local::inspect::read_inventory(&store, &id, &CancellationToken::new())
            })
            .await?,
        ))
    }

    async fn artifact_exists(&self, artifact_id: &str) -> Result<bool, ProviderError> {
        self.artifact_anywhere(artifact_id).await
    }

    async fn check_before_apply(&self) -> Result<(), ProviderError> {
        self.check_shared().await
    }

    async fn fetch_artifact(&self, artifact_id: &str, log: &Path) -> Result<(), ProviderError> {
        self.ensure_local(artifact_id, log).await
    }

    async fn remove_version(
        &self,
        version: &ImageVersion,
        keep_artifact: bool,
    ) -> Result<Vec<String>, ProviderError> {
        let (store, v) = (self.store.clone(), version.clone());
        blocking(move || {
            let mut removed = Vec::new();
            if !keep_artifact && store.contains(&v.artifact_id) {
                store.remove(&v.artifact_id)?;
                removed.push(v.artifact_id.clone());
            }
            store.update_version_meta(
                &v.image,
                &v.version,
                || registry_entry(&v),
                |m| m.removed_at_ms = Some(crate::state::now_ms()),
            )?;
            Ok(removed)
        })
        .await
    }

    async fn destroy_leftover(&self, entry: &LedgerEntry) -> Result<(), ProviderError> {
        let dir = PathBuf::from(&entry.resource);
        blocking(move || local::remove_tree(&dir)).await
    }
}

impl LocalProvider {
    async fn build_in(
        &self,
        req: &BuildRequest<'_>,
        steps: &[Step],
        staging: &Path,
    ) -> Result<Built, ProviderError> {
        local::tree::create_private_dir(staging)?;
        let root = staging.join("root");
        if let Origin::Artifact(a) = &req.origin {
            self.ensure_local(a, req.job.log).await?;
        }
        let origin = req.origin.clone();
        let store = self.store.clone();
        let dest = root.clone();
        let cancel = req.job.cancel.clone();
        blocking(move || match origin {
            Origin::LocalPath(p) => local::unpack_origin(&p, &dest, &cancel),
            Origin::Artifact(a) => store.unpack(&a, &dest, &cancel),
        })
        .await?;
        crate::crash::point("build: origin unpacked");

        for step in steps {
            if req.job.cancel.is_cancelled() {
                return Err(local::LocalError::Cancelled.into());
            }
            crate::crash::point("build: a step starts");
            match step {
                Step::Copy { from, to } => {
                    let src = req.job.project.root.join(from.as_str());
                    let (r, to, cancel) = (root.clone(), to.clone(), req.job.cancel.clone());
                    append_log(req.job.log, &format!("imgraph: copy {from} to {to}"));
                    blocking(move || local::copy_into(&src, &r, &to, &cancel)).await?;
                }
                Step::Run { command } => {
                    append_log(req.job.log, &format!("imgraph: run {command}"));
                    let spec = CommandSpec {
                        command: command.clone(),
                        cwd: req.job.project.root.clone(),
                        env: process::command_env(
                            Place::of(self.sandbox),
                            &req.image.build_env().names(),
                            &[],
                            vec![
                                ("IMGRAPH_ROOT".into(), self.root_env(&root)),
                                ("IMGRAPH_IMAGE".into(), req.image.name.clone()),
                                ("IMGRAPH_VERSION".into(), req.version.to_string()),
                                ("IMGRAPH_KEY".into(), req.key.to_string()),
                            ],
                        ),
                        timeout: None,
                        recorder: Some(req.job.ledger.processes_of(req.node_id.as_str())),
                        ..Default::default()
                    };
                    let call = RunIn {
                        root: &root,
                        inputs: req.inputs,
                        host_network: req.image.build_network == Network::Host,
                        log: req.job.log,
                        cancel: req.job.cancel,
                    };
                    let outcome = self.run_in(call, spec).await?;
                    if !outcome.success() {
                        return Err(ProviderError::StepFailed {
                            command: command.clone(),
                            outcome,
                        });
                    }
                }
            }
        }
        let (store, cancel) = (self.store.clone(), req.job.cancel.clone());
        let log = req.job.log.to_path_buf();
        let (artifact_id, size) = blocking(move || {
            // Packing never leaves the root: detach what a step left mounted in it.
            for point in local::mounts::release_mounts(&root)? {
                append_log(
                    &log,
                    &format!(
                        "imgraph: detached {}, which a step left mounted",
                        point.display()
                    ),
                );
            }
            local::tree::empty_tmp(&root)?;
            store.pack_tree(&root, &cancel)
        })
        .await?;
        append_log(
            req.job.log,
            &format!("imgraph: packed {artifact_id} ({size} bytes)"),
        );
        crate::crash::point("build: packed");
        // Other runners test and build on it: it is shared before the version exists.
        self.publish_shared(&artifact_id, req.job.log).await?;
        // The registry entry of this version, with its tags, as AWS tags a new AMI.
        let mut meta = VersionMeta::new(
            &req.image.name,
            req.version,
            &artifact_id,
            req.key,
            ReleaseStatus::Candidate.as_str(),
            crate::state::now_ms(),
        );
        meta.tags = req.image.tags.clone();
        let store = self.store.clone();
        blocking(move || store.write_version_meta(&meta)).await?;
        crate::crash::point("build: registry entry written");
        Ok(Built { artifact_id })
    }

    /// Makes a private instance folder and unpacks the artifact into its `root`: what a
    /// test and an in-image probe start from. Returns the root.
    async fn unpack_instance(
        &self,
        artifact_id: &str,
        instance: &Path,
        log: &Path,
        cancel: &CancellationToken,
    ) -> Result<PathBuf, ProviderError> {
        self.ensure_local(artifact_id, log).await?;
        local::tree::create_private_dir(instance)?;
        let root = instance.join("root");
        let (store, artifact, dest, cancel) = (
            self.store.clone(),
            artifact_id.to_string(),
            root.clone(),
            cancel.clone(),
        );
        blocking(move || store.unpack(&artifact, &dest, &cancel)).await?;
        Ok(root)
    }

    async fn probe_in(
        &self,
        req: &ProbeRequest<'_>,
        node: &str,
        instance: &Path,
    ) -> Result<String, ProviderError> {
        let root = self
            .unpack_instance(req.artifact_id, instance, req.job.log, req.job.cancel)
            .await?;
        let stdout = instance.join("stdout");
        let spec = CommandSpec {
            command: req.command.to_string(),
            cwd: req.job.project.root.clone(),
            env: process::command_env(
                Place::of(self.sandbox),
                &req.env,
                &[],
                vec![
                    ("IMGRAPH_INSTANCE_ROOT".into(), self.root_env(&root)),
                    ("IMGRAPH_IMAGE".into(), req.image.name.clone()),
                    ("IMGRAPH_VERSION".into(), req.version.to_string()),
                    ("IMGRAPH_IMAGE_ID".into(), req.artifact_id.to_string()),
                ],
            ),
            timeout: Some(req.timeout),
            recorder: Some(req.job.ledger.processes_of(node)),
            stdout: Some(stdout.clone()),
            ..Default::default()
        };
        let call = RunIn {
            root: &root,
            // The command sees the image, not the project.
            inputs: &[],
            host_network: req.host_network,
            log: req.job.log,
            cancel: req.job.cancel,
        };
        let outcome = self.run_in(call, spec).await?;
        if !outcome.success() {
            return Err(ProviderError::ProbeFailed {
                probe: req.name.into(),
                image: req.image.name.clone(),
                version: req.version.into(),
                outcome,
                log_tail: process::log_tail(req.job.log, 10).join("\n"),
            });
        }
        blocking(move || {
            let err = |e| local::LocalError::io("read the output of a probe in", &stdout, e);
            let mut file = std::fs::File::open(&stdout).map_err(err)?;
            let len = file.metadata().map_err(err)?.len();
            if len > crate::hash::MAX_PROBE_OUTPUT {
                return Err(local::LocalError::Corrupt {
                    path: stdout.clone(),
                    detail: format!(
                        "the probe printed {len} bytes, more than the {} a probe may",
                        crate::hash::MAX_PROBE_OUTPUT
                    ),
                });
            }
            crate::hash::probe_output_digest(len, &mut std::io::BufReader::new(&mut file))
                .map_err(err)
        })
        .await
    }

    async fn test_in(
        &self,
        req: &TestRequest<'_>,
        instance: &Path,
        instance_id: &str,
    ) -> Result<ProcessOutcome, ProviderError> {
        let root = self
            .unpack_instance(req.artifact_id, instance, req.job.log, req.job.cancel)
            .await?;
        append_log(
            req.job.log,
            &format!("imgraph: instance {instance_id} from {}", req.artifact_id),
        );
        crate::crash::point("test: instance unpacked");
        let spec = req.command(
            Place::of(self.sandbox),
            vec![
                ("IMGRAPH_INSTANCE_ROOT".into(), self.root_env(&root)),
                ("IMGRAPH_INSTANCE_ID".into(), instance_id.to_string()),
                ("IMGRAPH_INSTANCE_IP".into(), "127.0.0.1".into()),
            ],
        );
        let call = RunIn {
            root: &root,
            inputs: req.inputs,
            host_network: req.suite.network == Network::Host,
            log: req.job.log,
            cancel: req.job.cancel,
        };
        let outcome = self.run_in(call, spec).await;
        crate::crash::point("test: command finished");
        outcome
    }
}
