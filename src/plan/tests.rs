//! The planner as a pure function: each test builds the facts by hand (a project from
//! config text, manifests, history records, resolved sources, the clock), calls
//! [`decide`] and reads one row of the decision table off the plan. No state file, no
//! input file is read (config validation only checks that the origin tarball exists), no
//! clock: what an apply would record is written here as the
//! [`NodeRecord`]s it leaves behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::model::{Project, Trigger};
use crate::graph::{NodeId, StageGraph};
use crate::hash::{EntryKind, ManifestEntry, Via};
use crate::state::NodeStatus;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// `base` from a local tarball, tested and delivered through `web`, all on the local
/// provider. Inputs are facts (see [`World::new`]), not declared here.
const PROJECT: &str = r#"
imgraph version=1
source "debian" { local "bases/debian-12.tar.zst"; }
image "base" {
    from "debian"
    version "1.0"
    max-age "7d"
    build "rootfs" { run "true"; }
    test "smoke" { run "true"; }
    tags { Team "platform"; }
}
image "web" {
    from "base"
    version "2.0"
    build "rootfs" { run "true"; }
}
environment "staging" {
    deliver "web" { run "true"; }
}
"#;

const PROVISION: &str = "scripts/provision.sh";
const PACKAGES: &str = "packages/base.txt";

fn file(path: &str, digest: &str, trigger: Trigger) -> ManifestEntry {
    ManifestEntry {
        path: path.into(),
        digest: digest.into(),
        trigger,
        kind: EntryKind::File,
        mode: Some(0o644),
        via: Via::Input,
        packages: None,
    }
}

/// A project, its graph and the facts about the world, which tests change by hand.
struct World {
    project: Project,
    graph: StageGraph,
    facts: Facts,
    /// The id of the next node record (records are ordered by it).
    next_record: i64,
}

impl World {
    /// [`PROJECT`], its source resolved, `base` with one immediate and one rollup input,
    /// no history.
    fn new() -> World {
        World::with_config(PROJECT)
    }

    fn with_config(text: &str) -> World {
        // Validation checks that the origin tarball exists; nothing else is read.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/design-example");
        let project = crate::config::load_str(&root, "imgraph.kdl", text)
            .unwrap_or_else(|e| panic!("{}", crate::config::render_plain(&e)));
        let graph = StageGraph::build(&project).expect("the project has no cycle");
        let mut facts = Facts {
            now_ms: 100 * DAY_MS,
            ..Facts::default()
        };
        facts.sources.insert("debian".into(), "sha-debian-1".into());
        facts.manifests.insert(
            id("build:base"),
            Arc::new(Manifest {
                entries: vec![
                    file(PACKAGES, "b3v1:packages-1", Trigger::Rollup),
                    file(PROVISION, "b3v1:provision-1", Trigger::Immediate),
                ],
                ..Manifest::default()
            }),
        );
        World {
            project,
            graph,
            facts,
            next_record: 1,
        }
    }

    fn plan(&self) -> Plan {
        self.plan_with(&PlanOptions::default())
    }

    fn plan_with(&self, options: &PlanOptions) -> Plan {
        decide(&self.project, &self.graph, &self.facts, options)
            .unwrap_or_else(|e| panic!("the plan fails: {e}"))
    }

    /// Changes the digest of one input of `node`.
    fn edit(&mut self, node: &str, path: &str, digest: &str) {
        let manifest = self
            .facts
            .manifests
            .get_mut(&id(node))
            .expect("node has inputs");
        let entry = Arc::make_mut(manifest)
            .entries
            .iter_mut()
            .find(|e| e.path == path)
            .expect("input exists");
        entry.digest = digest.into();
    }

    /// What an apply of `plan` that succeeded everywhere leaves in the history: a new
    /// version for each build that ran, the version it saw for each test, publish and
    /// delivery.
    fn apply(&mut self, plan: &Plan) {
        for n in &plan.nodes {
            if n.action != Action::Run {
                continue;
            }
            let image = n.image.clone().expect("stage nodes have an image");
            let seen = if n.stage == Stage::Build {
                let versions = self.version_count(&n.id);
                let tags = self.project.image(&image).map(|i| i.tags.clone());
                let made = BuildOutputs {
                    artifact_id: format!("artifact-{image}-{versions}"),
                    version: format!("{}.{versions}", self.declared_version(&image)),
                    built_at_ms: Some(self.facts.now_ms),
                    tags,
                };
                self.record(n, NodeStatus::Succeeded, Some(&made), None);
                continue;
            } else {
                self.current_build(&image)
            };
            let node = n.for_artifact(&seen);
            self.record(&node, NodeStatus::Succeeded, Some(&seen), None);
        }
    }

    fn declared_version(&self, image: &str) -> String {
        self.project
            .image(image)
            .map(|i| i.version.clone())
            .unwrap_or_default()
    }

    /// How many builds of `node` succeeded so far.
    fn version_count(&self, node: &NodeId) -> usize {
        self.facts
            .history
            .get(node)
            .and_then(|h| h.last_success.as_ref())
            .and_then(|s| s.outputs_json.as_deref())
            .and_then(|o| serde_json::from_str::<BuildOutputs>(o).ok())
            .and_then(|o| o.version.rsplit_once('.').map(|(_, n)| n.to_string()))
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(0, |n| n + 1)
    }

    fn current_build(&self, image: &str) -> BuildOutputs {
        let outputs = self.facts.history[&NodeId::build(image)]
            .last_success
            .as_ref()
            .and_then(|s| s.outputs_json.clone())
            .expect("the image was built");
        serde_json::from_str(&outputs).expect("build outputs parse")
    }

    /// Adds one finished record of `node` to its history.
    fn record(
        &mut self,
        node: &PlannedNode,
        status: NodeStatus,
        outputs: Option<&BuildOutputs>,
        error: Option<&str>,
    ) -> NodeRecord {
        let (manifest_json, upstream_json, reasons_json) = node.record_fields();
        let record = NodeRecord {
            id: self.next_record,
            run_id: self.next_record,
            node_id: node.id.clone(),
            key: node.key.clone(),
            manifest_json,
            stanza: node.stanza.clone(),
            upstream_json,
            reasons_json,
            status,
            outputs_json: outputs.map(|o| serde_json::to_string(o).expect("outputs serialize")),
            error: error.map(str::to_string),
            log_path: None,
            started_at: self.facts.now_ms,
            finished_at: Some(self.facts.now_ms),
        };
        self.next_record += 1;
        let history = self.facts.history.entry(node.id.clone()).or_default();
        if status == NodeStatus::Succeeded {
            history.last_success = Some(record.clone());
        }
        history.last_attempt = Some(record.clone());
        record
    }

    /// A world where the first plan ran and succeeded.
    fn built() -> World {
        let mut world = World::new();
        let first = world.plan();
        world.apply(&first);
        world
    }
}

fn node<'p>(plan: &'p Plan, text: &str) -> &'p PlannedNode {
    plan.node(&id(text))
        .unwrap_or_else(|| panic!("`{text}` is not in the plan"))
}

/// A node id written out in a test.
fn id(text: &str) -> NodeId {
    text.parse().expect("a node id")
}

fn kinds(n: &PlannedNode) -> Vec<&'static str> {
    n.reasons.iter().map(Reason::kind).collect()
}

#[test]
fn a_node_with_no_history_runs_as_new() {
    let plan = World::new().plan();
    let ids: Vec<&str> = plan.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "build:base",
            "test:base/smoke",
            "publish:base",
            "build:web",
            "publish:web",
            "deliver:web@staging"
        ]
    );
    for n in &plan.nodes {
        assert_eq!(n.action, Action::Run, "{}", n.id);
        assert_eq!(n.reasons, [Reason::New], "{}", n.id);
        assert_eq!(n.previous_key, None, "{}", n.id);
        assert!(!n.cascade, "{}", n.id);
    }
    assert_eq!((plan.summary.run, plan.summary.causes), (6, 6));
    assert_eq!(plan.sources[0].id, "sha-debian-1");
}

#[test]
fn an_unchanged_key_is_up_to_date() {
    let world = World::built();
    let plan = world.plan();
    for n in &plan.nodes {
        assert_eq!(n.action, Action::UpToDate, "{}: {:?}", n.id, n.reasons);
        assert!(n.reasons.is_empty(), "{}", n.id);
        assert_eq!(n.previous_key.as_deref(), Some(n.key.as_str()), "{}", n.id);
        assert_eq!(n.effective_key, n.key, "{}", n.id);
    }
    assert!(!plan.has_changes());
}

#[test]
fn a_changed_immediate_input_is_one_cause_naming_the_path_and_cascades() {
    let mut world = World::built();
    world.edit("build:base", PROVISION, "b3v1:provision-2");
    let plan = world.plan();

    let build = node(&plan, "build:base");
    assert_eq!(build.action, Action::Run);
    assert_eq!(
        build.reasons,
        [Reason::InputChanged(InputChange {
            path: PROVISION.into(),
            change: Change::Modified,
            trigger: Some(Trigger::Immediate),
            via: Via::Input,
            mode: None,
            packages: None,
        })]
    );
    assert!(!build.cascade);
    assert_ne!(Some(&build.key), build.previous_key.as_ref());
    assert_eq!(build.effective_key, build.key);

    for id in [
        "test:base/smoke",
        "publish:base",
        "build:web",
        "publish:web",
    ] {
        let n = node(&plan, id);
        assert_eq!(n.action, Action::Run, "{id}");
        assert!(n.cascade, "{id}: {:?}", n.reasons);
        assert!(kinds(n).iter().all(|k| *k == "upstream-changed"), "{id}");
    }
    let upstream = |node: &str| Reason::UpstreamChanged { node: id(node) };
    assert_eq!(
        node(&plan, "publish:base").reasons,
        [upstream("build:base"), upstream("test:base/smoke")]
    );
    assert_eq!(
        node(&plan, "test:base/smoke").reasons,
        [Reason::UpstreamChanged {
            node: id("build:base")
        }]
    );
    // A delivery follows the artifact, which is not made yet.
    assert_eq!(
        node(&plan, "deliver:web@staging").reasons,
        [Reason::UpstreamChanged {
            node: id("publish:web")
        }]
    );
    assert_eq!((plan.summary.causes, plan.summary.cascades), (1, 5));
}

#[test]
fn a_rollup_input_change_alone_defers_until_a_rollup_run() {
    let mut world = World::built();
    world.edit("build:base", PACKAGES, "b3v1:packages-2");

    let plan = world.plan();
    let build = node(&plan, "build:base");
    assert_eq!(build.action, Action::Deferred);
    assert_eq!(
        build.reasons,
        [Reason::InputChanged(InputChange {
            path: PACKAGES.into(),
            change: Change::Modified,
            trigger: Some(Trigger::Rollup),
            via: Via::Input,
            mode: None,
            packages: None,
        })]
    );
    // A deferred node hands on its last built key: nothing downstream moves.
    assert_eq!(Some(&build.effective_key), build.previous_key.as_ref());
    assert_eq!(node(&plan, "test:base/smoke").action, Action::UpToDate);
    assert_eq!(plan.summary.deferred, 1);
    assert_eq!(plan.summary.run, 0);

    let rollup = world.plan_with(&PlanOptions {
        rollup: true,
        ..PlanOptions::default()
    });
    let build = node(&rollup, "build:base");
    assert_eq!(build.action, Action::Run);
    assert_eq!(kinds(build), ["rollup"]);
    assert_eq!(node(&rollup, "test:base/smoke").action, Action::Run);
}

#[test]
fn an_immediate_change_takes_the_pending_rollup_changes_along() {
    let mut world = World::built();
    world.edit("build:base", PACKAGES, "b3v1:packages-2");
    world.edit("build:base", PROVISION, "b3v1:provision-2");
    let plan = world.plan();
    let build = node(&plan, "build:base");
    assert_eq!(build.action, Action::Run);
    // The reason of its own first, then the pending change it takes along.
    let changed: Vec<(&str, Trigger)> = build
        .reasons
        .iter()
        .filter_map(|r| match r {
            Reason::InputChanged(InputChange {
                path,
                trigger: Some(trigger),
                ..
            }) => Some((path.as_str(), *trigger)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changed,
        [(PROVISION, Trigger::Immediate), (PACKAGES, Trigger::Rollup)]
    );
    assert!(!build.cascade);
}

#[test]
fn a_failure_with_the_current_key_runs_again_with_its_error() {
    let mut world = World::built();
    world.edit("build:base", PROVISION, "b3v1:provision-2");
    let plan = world.plan();
    let build = node(&plan, "build:base").clone();
    world.record(
        &build,
        NodeStatus::Failed,
        None,
        Some("step 1 exited with 2"),
    );

    let plan = world.plan();
    let build = node(&plan, "build:base");
    assert_eq!(build.action, Action::Run);
    assert_eq!(
        build.reasons,
        [Reason::PreviousFailure {
            error: Some("step 1 exited with 2".into())
        }]
    );
    // The failed build yields nothing new yet: its tests still run after it.
    assert_eq!(kinds(node(&plan, "test:base/smoke")), ["upstream-changed"]);
}

#[test]
fn a_node_that_only_ever_failed_still_runs_as_new() {
    let mut world = World::new();
    let plan = world.plan();
    let build = node(&plan, "build:base").clone();
    world.record(&build, NodeStatus::Failed, None, Some("boom"));
    // Only a rollup input changed since the failure: that alone would defer.
    world.edit("build:base", PACKAGES, "b3v1:packages-2");

    let plan = world.plan();
    let build = node(&plan, "build:base");
    assert_eq!(build.action, Action::Run);
    assert_eq!(kinds(build), ["new", "input-changed"]);
    assert_eq!(build.previous_key, None);
}

#[test]
fn max_age_expires_a_build_after_its_age_and_not_before() {
    let mut world = World::built();
    let built_at = world.facts.now_ms;
    let seven_days = 7 * DAY_MS;

    world.facts.now_ms = built_at + seven_days;
    assert_eq!(node(&world.plan(), "build:base").action, Action::UpToDate);

    world.facts.now_ms = built_at + seven_days + 1;
    let plan = world.plan();
    let build = node(&plan, "build:base");
    assert_eq!(build.action, Action::Run);
    assert_eq!(
        build.reasons,
        [Reason::MaxAge {
            built_at_ms: built_at,
            max_age_secs: 7 * 24 * 60 * 60,
        }]
    );
    // `web` has no max-age; it only follows its origin.
    assert_eq!(kinds(node(&plan, "build:web")), ["upstream-changed"]);
}

#[test]
fn a_missing_artifact_is_rebuilt() {
    let mut world = World::built();
    world
        .facts
        .missing_artifacts
        .insert("artifact-web-0".into());
    let plan = world.plan();
    assert_eq!(node(&plan, "build:web").action, Action::Run);
    assert_eq!(
        node(&plan, "build:web").reasons,
        [Reason::ArtifactMissing {
            artifact: "artifact-web-0".into()
        }]
    );
    assert_eq!(node(&plan, "build:base").action, Action::UpToDate);
}

#[test]
fn a_new_source_id_names_the_old_and_new_ids() {
    let mut world = World::built();
    world
        .facts
        .sources
        .insert("debian".into(), "sha-debian-2".into());
    let plan = world.plan();
    assert_eq!(node(&plan, "build:base").action, Action::Run);
    assert_eq!(node(&plan, "build:web").action, Action::Run);
    assert_eq!(
        node(&plan, "build:base").reasons,
        [Reason::SourceChanged {
            source: "debian".into(),
            old: "sha-debian-1".into(),
            new: "sha-debian-2".into(),
        }]
    );
    assert_eq!(plan.sources[0].previous_id.as_deref(), Some("sha-debian-1"));
}

#[test]
fn a_changed_stanza_names_the_field() {
    let mut world = World::built();
    let edited = World::with_config(&PROJECT.replace(r#"version "1.0""#, r#"version "1.1""#));
    world.project = edited.project;
    world.graph = edited.graph;
    let plan = world.plan();
    assert_eq!(node(&plan, "build:base").action, Action::Run);
    assert_eq!(
        node(&plan, "build:base").reasons,
        [Reason::ConfigChanged {
            fields: vec!["version".into()]
        }]
    );
}

#[test]
fn changed_tags_update_the_current_version_in_place() {
    let mut world = World::built();
    let edited = World::with_config(&PROJECT.replace(r#"Team "platform""#, r#"Team "web""#));
    world.project = edited.project;
    world.graph = edited.graph;
    let plan = world.plan();
    let build = node(&plan, "build:base");
    assert_eq!(build.action, Action::UpdateTags);
    assert_eq!(
        build.reasons,
        [Reason::TagsChanged {
            added: vec![],
            removed: vec![],
            changed: vec!["Team".into()],
            unknown: false,
        }]
    );
    // Tags are not in the key: nothing downstream runs.
    assert_eq!(node(&plan, "test:base/smoke").action, Action::UpToDate);
    assert!(plan.has_changes());
}

#[test]
fn a_revoked_current_version_is_rebuilt_and_its_delivery_redone() {
    let mut world = World::built();
    world.facts.revoked.insert(
        "web".into(),
        BTreeMap::from([("2.0.0".into(), "CVE-2026-1".into())]),
    );
    let plan = world.plan();
    let revoked = Reason::Revoked {
        image: "web".into(),
        version: "2.0.0".into(),
        reason: "CVE-2026-1".into(),
        back_to: None,
    };
    let build = node(&plan, "build:web");
    assert_eq!(build.action, Action::Run);
    assert_eq!(build.reasons, std::slice::from_ref(&revoked));
    let deliver = node(&plan, "deliver:web@staging");
    assert_eq!(deliver.action, Action::Run);
    assert_eq!(deliver.reasons.first(), Some(&revoked));
    assert_eq!(node(&plan, "build:base").action, Action::UpToDate);
}

#[test]
fn a_revoked_version_goes_back_to_the_newest_good_one() {
    let mut world = World::built();
    let good = world.facts.history[&id("build:web")]
        .last_success
        .clone()
        .expect("web was built");
    world.edit("build:base", PROVISION, "b3v1:provision-2");
    let second = world.plan();
    world.apply(&second);
    assert_eq!(world.current_build("web").version, "2.0.1");

    world.facts.revoked.insert(
        "web".into(),
        BTreeMap::from([("2.0.1".into(), "broke login".into())]),
    );
    world.facts.fallback.insert("web".into(), good.clone());
    let plan = world.plan();
    let build = node(&plan, "build:web");
    assert_eq!(build.action, Action::Run);
    assert_eq!(
        build.reasons,
        [Reason::Revoked {
            image: "web".into(),
            version: "2.0.1".into(),
            reason: "broke login".into(),
            back_to: Some("2.0.0".into()),
        }]
    );
    // Planned as that version's build: its key, not a new one.
    assert_eq!(build.key, good.key);
    // Going back builds nothing, so there is nothing to cut off.
    assert!(node(&plan, "publish:web").cut_off_by.is_empty());
}

#[test]
fn a_forced_local_rebuild_may_cut_off_its_cascades() {
    let world = World::built();
    let plan = world.plan_with(&PlanOptions {
        force: vec!["base".into()],
        ..PlanOptions::default()
    });
    let build = node(&plan, "build:base");
    assert_eq!(build.reasons, [Reason::Forced]);
    assert!(build.cut_off_by.is_empty(), "a cause is not cut off");
    for id in [
        "test:base/smoke",
        "publish:base",
        "build:web",
        "publish:web",
        "deliver:web@staging",
    ] {
        let n = node(&plan, id);
        assert_eq!(n.action, Action::Run, "{id}");
        assert!(n.cascade, "{id}");
    }
    // Each cascade of a local build that may come out byte-identical.
    assert_eq!(node(&plan, "test:base/smoke").cut_off_by, ["build:base"]);
    assert_eq!(node(&plan, "publish:base").cut_off_by, ["build:base"]);
    // `build:web` is a local build itself: its own cascades may be cut off by either.
    assert_eq!(node(&plan, "build:web").cut_off_by, ["build:base"]);
    assert_eq!(
        node(&plan, "publish:web").cut_off_by,
        ["build:base", "build:web"]
    );
    assert_eq!(plan.summary.may_cut_off, 5);
}

#[test]
fn a_build_with_no_earlier_version_cuts_nothing_off() {
    let mut world = World::built();
    world.edit("build:base", PROVISION, "b3v1:provision-2");
    // `web` was never built: there is no earlier version its build could equal.
    world.facts.history.remove(&id("build:web"));
    let plan = world.plan();
    let web = node(&plan, "build:web");
    assert_eq!(kinds(web), ["new"]);
    assert!(web.cut_off_by.is_empty(), "a cause is not cut off");
    assert!(node(&plan, "publish:web").cut_off_by.is_empty());
    assert_eq!(node(&plan, "test:base/smoke").cut_off_by, ["build:base"]);
}

#[test]
fn a_recorded_manifest_that_does_not_parse_is_an_error_naming_the_node() {
    let mut world = World::built();
    world.edit("build:base", PROVISION, "b3v1:provision-2");
    let record = world
        .facts
        .history
        .get_mut(&id("build:base"))
        .and_then(|h| h.last_success.as_mut())
        .expect("base was built");
    record.manifest_json = "{not json".into();
    match decide(
        &world.project,
        &world.graph,
        &world.facts,
        &PlanOptions::default(),
    ) {
        Err(PlanError::CorruptRecord { node, what, .. }) => {
            assert_eq!((node.as_str(), what), ("build:base", "manifest"));
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
}

#[test]
fn forcing_an_unknown_image_suggests_a_near_name() {
    let world = World::new();
    let err = decide(
        &world.project,
        &world.graph,
        &world.facts,
        &PlanOptions {
            force: vec!["bsae".into()],
            ..PlanOptions::default()
        },
    )
    .expect_err("an unknown image is refused");
    assert_eq!(
        err.to_string(),
        "unknown image `bsae` given to --force: did you mean `base`?"
    );
}

#[test]
fn an_unresolved_source_is_an_error() {
    let mut world = World::new();
    world.facts.sources.clear();
    let err = decide(
        &world.project,
        &world.graph,
        &world.facts,
        &PlanOptions::default(),
    )
    .expect_err("the source has no id");
    assert_eq!(err.to_string(), "source `debian` was not resolved");
}

#[test]
fn upstream_keys_are_written_as_todays_text_and_read_back_checked() {
    let keys: UpstreamKeys = BTreeMap::from([
        (
            UpstreamEntry::Node(id("source:debian")),
            "sha-1".to_string(),
        ),
        (UpstreamEntry::Node(id("publish:base")), "k2".to_string()),
    ]);
    let json = serde_json::to_string(&keys).unwrap();
    assert_eq!(json, r#"{"publish:base":"k2","source:debian":"sha-1"}"#);
    assert_eq!(serde_json::from_str::<UpstreamKeys>(&json).unwrap(), keys);
    let delivered: UpstreamKeys = serde_json::from_str(r#"{"artifact":"a@1.0.0"}"#).unwrap();
    assert_eq!(
        delivered.keys().collect::<Vec<_>>(),
        [&UpstreamEntry::Delivered]
    );
    assert!(serde_json::from_str::<UpstreamKeys>(r#"{"publish":"k"}"#).is_err());
}

#[test]
fn a_saved_plan_with_a_malformed_node_id_is_refused_naming_it() {
    let plan = World::new().plan();
    let stamp = saved::StateStamp {
        lineage: "l".into(),
        serial: 1,
    };
    let text = saved::SavedPlan::new(plan, stamp, 0).to_json();
    assert!(saved::SavedPlan::from_json(&text).is_ok());
    let broken = text.replace("\"test:base/smoke\"", "\"test:base\"");
    assert_ne!(broken, text);
    let err = saved::SavedPlan::from_json(&broken)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("failed to read node id `test:base`: a test id needs `/`"),
        "{err}"
    );
}

/// `plan --json` keeps the field order of the two reasons that share [`InputChange`]:
/// `input-changed` has its trigger after the change, `rollup` has none.
#[test]
fn input_reasons_serialise_in_their_documented_field_order_and_read_back() {
    let input = InputChange {
        path: "packages/base.txt".into(),
        change: Change::Modified,
        trigger: Some(Trigger::Rollup),
        via: Via::Run,
        mode: Some(ModeChange {
            old: "0644".into(),
            new: "0755".into(),
        }),
        packages: Some(PackageChange {
            added: vec!["htop".into()],
            removed: vec![],
        }),
    };
    let changed = Reason::InputChanged(input.clone());
    let json = serde_json::to_string(&changed).unwrap();
    assert_eq!(
        json,
        r#"{"kind":"input-changed","path":"packages/base.txt","change":"modified","trigger":"rollup","via":"run","mode":{"old":"0644","new":"0755"},"packages":{"added":["htop"],"removed":[]}}"#
    );
    assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), changed);
    let rollup = reason::as_rollup(changed);
    let json = serde_json::to_string(&rollup).unwrap();
    assert_eq!(
        json,
        r#"{"kind":"rollup","path":"packages/base.txt","change":"modified","via":"run","mode":{"old":"0644","new":"0755"},"packages":{"added":["htop"],"removed":[]}}"#
    );
    assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), rollup);
}
