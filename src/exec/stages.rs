//! The stage logic: what running one node means for each stage. A build picks its
//! origin (a source, or the upstream image's current Ready version), takes the next
//! version number, builds through the provider, refuses a revoked artifact, registers the
//! new version as `Candidate` with its package inventory and tags it; a test runs a suite
//! on a fresh instance of that exact version and tags it `Failed` when it fails; a
//! publish marks it `Ready`; a delivery runs the environment's command for a Ready
//! version, in `after` order; a tags-only change retags the current version in place.
//!
//! Each function returns the node's outputs JSON (see [`super::record`]); the scheduler
//! and the recording around it are elsewhere.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::record::{build_json, StageOutputs};
use super::{cutoff, revoked, ExecContext, ExecError, Fresh};
use crate::config::model::{FromRef, SourceKind};
use crate::graph::{NodeId, Stage};
use crate::hash::{EntryKind, Manifest};
use crate::plan::{Action, BuildOutputs, PlannedNode};
use crate::process;
use crate::provider::append_log;
use crate::provider::probes::{has_image_probes, measure_image_probes, ProbeSite};
use crate::provider::{
    BuildRequest, Job, Ledger, NodeInput, NodeInputKind, Origin, Provider, TestRequest,
};
use crate::state::{ImageVersion, ReleaseStatus, RunId};
use crate::text::error_chain;

/// The node as it is recorded: a delivery with the artifact it delivers in its key (see
/// [`crate::plan::DELIVERED`]), every other node as planned.
pub(super) fn resolve_delivery(
    ctx: &ExecContext,
    fresh: &Fresh,
    node: &PlannedNode,
) -> PlannedNode {
    match (node.stage, node.image.as_deref()) {
        (Stage::Deliver, Some(image)) => match current_build(ctx, fresh, image) {
            Ok(built) => node.for_artifact(&built),
            // Never built: the delivery fails when it runs and says so.
            Err(_) => node.clone(),
        },
        _ => node.clone(),
    }
}

/// The image a node belongs to.
fn image_of<'a>(
    ctx: &'a ExecContext,
    node: &PlannedNode,
) -> Result<&'a crate::config::model::Image, ExecError> {
    let name = node.image.as_deref().unwrap_or_default();
    ctx.project.image(name).ok_or_else(|| ExecError::Unknown {
        what: "image",
        name: name.into(),
    })
}

/// The project files, symlinks and folders a node's commands may read: its manifest's
/// leaves, less probes and environment values (not files) and a local origin's files
/// (the origin is the image root itself, not something its commands read).
fn node_inputs(ctx: &ExecContext, node: &PlannedNode) -> Vec<NodeInput> {
    let origin = node
        .image
        .as_deref()
        .and_then(|i| ctx.project.image(i))
        .and_then(|i| match &i.from {
            FromRef::Source(s) => ctx.project.source(s),
            FromRef::Image(_) => None,
        })
        .and_then(|s| match &s.kind {
            SourceKind::Local { path } => Some(path.as_str()),
            SourceKind::Aws { .. } | SourceKind::Imgraph { .. } => None,
        });
    let in_origin = |path: &str| {
        origin.is_some_and(|o| {
            path == o
                || path
                    .strip_prefix(o)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    node.manifest
        .entries
        .iter()
        .filter(|e| !in_origin(&e.path))
        .filter_map(|e| {
            let kind = match e.kind {
                EntryKind::File => NodeInputKind::File,
                EntryKind::Symlink => NodeInputKind::Symlink,
                EntryKind::Dir => NodeInputKind::Dir,
                EntryKind::Probe | EntryKind::ImageProbe | EntryKind::Env => return None,
            };
            Some(NodeInput {
                path: e.path.clone(),
                kind,
            })
        })
        .collect()
}

/// Runs one node; returns its outputs JSON on success.
pub(super) async fn run_node(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    log: &Path,
    fresh: &Fresh,
    cancel: &CancellationToken,
) -> Result<Option<String>, ExecError> {
    let image = image_of(ctx, node)?;
    let provider =
        ctx.providers
            .get(&image.provider)
            .cloned()
            .ok_or_else(|| ExecError::NoProvider {
                provider: image.provider.clone(),
            })?;
    let ledger = Ledger {
        state: ctx.state.clone(),
        run: Some(run),
        in_run_folder: true,
    };
    let work_dir = ctx.run_folder(run);
    let job = Job {
        project: &ctx.project,
        log,
        work_dir: &work_dir,
        ledger: &ledger,
        cancel,
    };
    if node.action == Action::UpdateTags {
        return update_tags(ctx, node, provider.as_ref(), log).await;
    }
    match node.stage {
        Stage::Build => {
            if let Some(json) = revoked::go_back(ctx, fresh, node, image, log)? {
                return Ok(Some(json));
            }
            let mut origin_version = None;
            let origin = match &image.from {
                FromRef::Source(s) => match ctx.project.source(s).map(|s| &s.kind) {
                    Some(SourceKind::Local { path }) => {
                        Origin::LocalPath(ctx.project.root.join(path.as_str()))
                    }
                    Some(SourceKind::Aws { .. } | SourceKind::Imgraph { .. }) => {
                        match ctx.resolved_sources.get(s) {
                            // An AMI id, or another project's local artifact id.
                            Some(id) => Origin::Artifact(id.clone()),
                            None => return Err(ExecError::Unresolved { name: s.clone() }),
                        }
                    }
                    None => {
                        return Err(ExecError::Unknown {
                            what: "source",
                            name: s.clone(),
                        })
                    }
                },
                FromRef::Image(up) => {
                    let built = current_build(ctx, fresh, up)?;
                    let status = release_status(ctx, up, &built.version)?;
                    if status != Some(ReleaseStatus::Ready) {
                        return Err(ExecError::OriginNotReady {
                            image: image.name.clone(),
                            upstream: up.clone(),
                            version: built.version,
                            revoked: status == Some(ReleaseStatus::Revoked),
                        });
                    }
                    origin_version = Some(format!("{up}@{}", built.version));
                    Origin::Artifact(built.artifact_id)
                }
            };
            let version = ctx.lock()?.next_version(&image.name, &image.version)?;
            append_log(log, &format!("imgraph: building {} {version}", image.name));
            let built = provider
                .build(BuildRequest {
                    image,
                    node_id: &node.id,
                    version: &version,
                    key: &node.key,
                    origin,
                    inputs: &node_inputs(ctx, node),
                    job,
                })
                .await?;
            revoked::refuse_revoked_artifact(ctx, image, &built.artifact_id)?;
            if let Some(json) = cutoff::reuse_ready(ctx, fresh, node, image, &built, log)? {
                return Ok(Some(json));
            }
            // What is inside: read before the version exists, so a version is recorded
            // with its package list or not at all.
            let inventory = provider.inventory(&built.artifact_id).await?;
            if let Some(inv) = &inventory {
                let managers: Vec<&str> = inv.managers.iter().map(|m| m.as_str()).collect();
                append_log(
                    log,
                    &format!(
                        "imgraph: {} packages ({})",
                        inv.packages.len(),
                        if managers.is_empty() {
                            "no package database found".to_string()
                        } else {
                            managers.join(", ")
                        }
                    ),
                );
            }
            let record = ImageVersion {
                image: image.name.clone(),
                version: version.clone(),
                artifact_id: built.artifact_id.clone(),
                provider: provider.name().to_string(),
                key: node.key.clone(),
                status: ReleaseStatus::Candidate,
                built_at: crate::state::now_ms(),
                run: Some(run),
                origin: origin_version,
                revoked_reason: None,
            };
            let recorded = ctx
                .lock()?
                .record_built_image(&record, inventory.as_ref())?;
            // On disk before anything uses the version, synced without holding the state.
            recorded.sync()?;
            provider
                .set_status(&record, ReleaseStatus::Candidate)
                .await?;
            if has_image_probes(image) {
                record_probes_of_new_image(
                    ctx,
                    run,
                    node,
                    provider.as_ref(),
                    image,
                    &record,
                    log,
                    cancel,
                )
                .await?;
            }
            let outputs = BuildOutputs {
                artifact_id: built.artifact_id,
                version,
                built_at_ms: Some(record.built_at),
                tags: Some(image.tags.clone()),
            };
            let json = build_json(&outputs);
            if let Ok(mut f) = fresh.lock() {
                f.builds.insert(image.name.clone(), outputs);
            }
            Ok(Some(json))
        }
        Stage::Test => {
            let suite_name = node.suite.clone().unwrap_or_default();
            let suite = image.suite(&suite_name).ok_or_else(|| ExecError::Unknown {
                what: "test",
                name: suite_name.clone(),
            })?;
            let built = current_build(ctx, fresh, &image.name)?;
            let outcome = provider
                .test(TestRequest {
                    image,
                    suite,
                    node_id: &node.id,
                    artifact_id: &built.artifact_id,
                    version: &built.version,
                    inputs: &node_inputs(ctx, node),
                    job,
                })
                .await?;
            if outcome.success() {
                return Ok(Some(StageOutputs::of(&built).json()));
            }
            if !cancel.is_cancelled() {
                ctx.lock()?
                    .set_image_status(&image.name, &built.version, ReleaseStatus::Failed)?;
                let record = image_record(ctx, &image.name, &built.version)?;
                provider.set_status(&record, ReleaseStatus::Failed).await?;
            }
            Err(ExecError::TestFailed {
                suite: suite_name,
                image: image.name.clone(),
                version: built.version,
                outcome,
            })
        }
        Stage::Publish => {
            let built = current_build(ctx, fresh, &image.name)?;
            // The planner runs publish only after every suite passed on this very build
            // (in this run, or earlier on the same artifact and version).
            ctx.lock()?
                .set_image_status(&image.name, &built.version, ReleaseStatus::Ready)?;
            let record = image_record(ctx, &image.name, &built.version)?;
            provider.set_status(&record, ReleaseStatus::Ready).await?;
            append_log(
                log,
                &format!("imgraph: {} {} is Ready", image.name, built.version),
            );
            let outputs = StageOutputs {
                status: Some("Ready"),
                ..StageOutputs::of(&built)
            };
            Ok(Some(outputs.json()))
        }
        Stage::Deliver => deliver(ctx, run, node, provider.as_ref(), log, fresh, cancel).await,
        Stage::Source => Ok(None),
    }
}

/// A tags-only change: the image's current version gets the configured tags in place;
/// the build's record is written again with them (same key, same artifact and version).
async fn update_tags(
    ctx: &ExecContext,
    node: &PlannedNode,
    provider: &dyn Provider,
    log: &Path,
) -> Result<Option<String>, ExecError> {
    let image = image_of(ctx, node)?;
    let success = ctx.lock()?.history(&node.id)?.last_success;
    let finished_at = success.as_ref().and_then(|s| s.finished_at);
    let mut current =
        success
            .as_ref()
            .and_then(BuildOutputs::of)
            .ok_or_else(|| ExecError::NeverBuilt {
                image: image.name.clone(),
            })?;
    // max-age keeps counting from the build, not from this record.
    current.built_at_ms = current.built_at_ms.or(finished_at);
    let record = image_record(ctx, &image.name, &current.version)?;
    provider
        .set_tags(&record, &image.tags, current.tags.as_ref())
        .await?;
    append_log(
        log,
        &format!(
            "imgraph: tags of {} {} updated in place",
            image.name, current.version
        ),
    );
    let outputs = BuildOutputs {
        tags: Some(image.tags.clone()),
        ..current
    };
    Ok(Some(build_json(&outputs)))
}

async fn deliver(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    provider: &dyn Provider,
    log: &Path,
    fresh: &Fresh,
    cancel: &CancellationToken,
) -> Result<Option<String>, ExecError> {
    let image = image_of(ctx, node)?;
    let env_name = node.environment.clone().unwrap_or_default();
    let env = ctx
        .project
        .environment(&env_name)
        .ok_or_else(|| ExecError::Unknown {
            what: "environment",
            name: env_name.clone(),
        })?;
    let delivery = env
        .deliveries
        .iter()
        .find(|d| d.image == image.name)
        .ok_or_else(|| ExecError::NotDelivered {
            environment: env_name.clone(),
            image: image.name.clone(),
        })?;
    let built = current_build(ctx, fresh, &image.name)?;
    {
        if release_status(ctx, &image.name, &built.version)? != Some(ReleaseStatus::Ready) {
            return Err(ExecError::NotReady {
                image: image.name.clone(),
                version: built.version,
            });
        }
        // `after`: this environment only gets what the earlier ones already got.
        for before in &env.after {
            let delivers = ctx
                .project
                .environment(before)
                .is_some_and(|e| e.deliveries.iter().any(|d| d.image == image.name));
            if !delivers {
                continue;
            }
            let got = ctx.lock()?.delivered_version(&image.name, before)?;
            if got.as_deref() != Some(built.version.as_str()) {
                return Err(ExecError::NotDeliveredBefore {
                    environment: env_name,
                    before: before.clone(),
                    held: got,
                    image: image.name.clone(),
                    version: built.version,
                });
            }
        }
    }
    // A delivery command may read the artifact (the local store's `<hex>.tar.zst`).
    provider.fetch_artifact(&built.artifact_id, log).await?;
    let spec = process::CommandSpec {
        command: delivery.command.clone(),
        cwd: ctx.project.root.clone(),
        env: process::command_env(
            process::Place::Host,
            &image.delivery_env(delivery).names(),
            &[],
            vec![
                ("IMGRAPH_IMAGE".into(), image.name.clone()),
                ("IMGRAPH_VERSION".into(), built.version.clone()),
                ("IMGRAPH_IMAGE_ID".into(), built.artifact_id.clone()),
                ("IMGRAPH_ENVIRONMENT".into(), env_name.clone()),
            ],
        ),
        timeout: None,
        recorder: Some(
            Ledger {
                state: ctx.state.clone(),
                run: Some(run),
                in_run_folder: true,
            }
            .processes_of(node.id.as_str()),
        ),
        ..Default::default()
    };
    crate::crash::point("deliver: command starts");
    let outcome = ctx.commands.run(&spec, log, cancel).await?;
    crate::crash::point("deliver: command finished");
    if !outcome.success() {
        return Err(ExecError::DeliveryFailed {
            image: image.name.clone(),
            version: built.version,
            environment: env_name,
            outcome,
        });
    }
    ctx.lock()?
        .record_delivery(&image.name, &built.version, &env_name, run)?;
    let record = image_record(ctx, &image.name, &built.version)?;
    provider.record_delivery(&record, &env_name).await?;
    Ok(Some(StageOutputs::of(&built).json()))
}

/// Runs the image's `in="image"` probes in the image this build made and records what
/// they saw as the build's manifest (see `provider::probes`). When they cannot run (the
/// archive unreachable), the build keeps what they saw before it, and says so in its log.
#[allow(clippy::too_many_arguments)]
async fn record_probes_of_new_image(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    provider: &dyn Provider,
    image: &crate::config::model::Image,
    built: &ImageVersion,
    log: &Path,
    cancel: &CancellationToken,
) -> Result<(), ExecError> {
    let ledger = Ledger {
        state: ctx.state.clone(),
        run: Some(run),
        in_run_folder: true,
    };
    let (work_dir, log_dir) = (ctx.run_folder(run), ctx.logs_dir(run));
    let site = ProbeSite {
        project: &ctx.project,
        work_dir: &work_dir,
        log_dir: &log_dir,
        ledger: &ledger,
        cancel,
    };
    let version = Some((built.artifact_id.as_str(), built.version.as_str()));
    match measure_image_probes(provider, &site, image, version).await {
        Ok(measured) => {
            let mut manifest = Manifest::clone(&node.manifest);
            manifest.set_image_probes(&measured);
            let json = serde_json::to_string(&manifest).unwrap_or_default();
            ctx.lock()?.set_running_manifest(run, &node.id, &json)?;
            append_log(
                log,
                &format!(
                    "imgraph: probes run inside {} {}: {}",
                    image.name,
                    built.version,
                    measured.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        Err(e) => append_log(
            log,
            &format!(
                "imgraph: note: the probes could not run inside {} {} ({}); the next plan compares against what they saw before this build",
                image.name,
                built.version,
                error_chain(&e)
            ),
        ),
    }
    Ok(())
}

/// The release status of one version of one image (never of another image that happens
/// to have the same bytes).
fn release_status(
    ctx: &ExecContext,
    image: &str,
    version: &str,
) -> Result<Option<ReleaseStatus>, ExecError> {
    Ok(find_image_record(ctx, image, version)?.map(|r| r.status))
}

fn find_image_record(
    ctx: &ExecContext,
    image: &str,
    version: &str,
) -> Result<Option<ImageVersion>, ExecError> {
    Ok(ctx
        .lock()?
        .images(Some(image))?
        .into_iter()
        .map(|r| r.version)
        .find(|v| v.version == version))
}

/// The registry record of one version, which must exist (it was built).
fn image_record(ctx: &ExecContext, image: &str, version: &str) -> Result<ImageVersion, ExecError> {
    find_image_record(ctx, image, version)?.ok_or_else(|| ExecError::NotRegistered {
        image: image.into(),
        version: version.into(),
    })
}

/// The image's current build: made in this run, or the last successful one.
pub(super) fn current_build(
    ctx: &ExecContext,
    fresh: &Fresh,
    image: &str,
) -> Result<BuildOutputs, ExecError> {
    if let Some(b) = fresh.lock().ok().and_then(|f| f.builds.get(image).cloned()) {
        return Ok(b);
    }
    let history = ctx.lock()?.history(&NodeId::build(image))?;
    BuildOutputs::last(&history).ok_or_else(|| ExecError::NeverBuilt {
        image: image.into(),
    })
}
