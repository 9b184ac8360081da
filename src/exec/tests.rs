//! The stage logic under the scheduler, against a scripted provider
//! ([`crate::provider::fake`]) and a scripted host for delivery commands: build → test →
//! Ready → deliver, version numbers, status tags, what a failure skips, fail-fast, Ctrl-C
//! in the middle of a stage, a panicking provider call and the parallelism limit. The
//! plan is the planner's, from hand-made facts; the state is SQLite in memory, and logs
//! go to a temporary folder. No process runs, no image is made.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::model::Project;
use crate::plan::{decide, Facts, PlanOptions};
use crate::process::{CommandRunner, CommandSpec, ProcessError, ProcessOutcome};
use crate::provider::fake::{Answer, Call, FakeProvider};
use crate::state::{ImageVersion, ReleaseStatus};

/// `base` from a local tarball, `web` from `base`, delivered to staging and then, `after`
/// it, to production: one chain of eight nodes, so the order of calls is known.
const CHAIN: &str = r#"
imgraph version=1
source "debian" { local "bases/debian-12.tar.zst"; }
image "base" {
    from "debian"
    version "1.0"
    build "rootfs" { run "true"; }
    test "smoke" { run "true"; }
}
image "web" {
    from "base"
    version "2.0"
    build "rootfs" { run "true"; }
    test "http" { run "true"; }
}
environment "staging" { deliver "web" { run "deliver-it"; } }
environment "production" {
    after "staging"
    deliver "web" { run "deliver-it"; }
}
"#;

/// Four images that need nothing of each other.
const FOUR: &str = r#"
imgraph version=1
source "debian" { local "bases/debian-12.tar.zst"; }
image "a" { from "debian"; version "1.0"; build "rootfs" { run "true"; }; test "t" { run "true"; }; }
image "b" { from "debian"; version "1.0"; build "rootfs" { run "true"; }; test "t" { run "true"; }; }
image "c" { from "debian"; version "1.0"; build "rootfs" { run "true"; }; test "t" { run "true"; }; }
image "d" { from "debian"; version "1.0"; build "rootfs" { run "true"; }; test "t" { run "true"; }; }
"#;

/// Delivery commands as the executor hands them to the host: written down, and ended
/// with the status scripted for their environment (0 when none is).
#[derive(Default)]
struct FakeHost {
    exits: Mutex<HashMap<String, i32>>,
    /// (environment, version, artifact id) of each command, in order.
    ran: Mutex<Vec<(String, String, String)>>,
}

#[async_trait::async_trait]
impl CommandRunner for FakeHost {
    async fn run(
        &self,
        spec: &CommandSpec,
        _log: &Path,
        _cancel: &CancellationToken,
    ) -> Result<ProcessOutcome, ProcessError> {
        let var = |name: &str| {
            spec.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let environment = var("IMGRAPH_ENVIRONMENT");
        let exit = self
            .exits
            .lock()
            .expect("host script")
            .get(&environment)
            .copied()
            .unwrap_or(0);
        self.ran.lock().expect("host record").push((
            environment,
            var("IMGRAPH_VERSION"),
            var("IMGRAPH_IMAGE_ID"),
        ));
        Ok(ProcessOutcome::Exited(exit))
    }
}

/// One project applied against the fakes, with its state in a temporary folder.
struct Apply {
    _dir: tempfile::TempDir,
    work_root: std::path::PathBuf,
    project: Arc<Project>,
    graph: Arc<StageGraph>,
    state: Arc<Mutex<State>>,
    fake: Arc<FakeProvider>,
    host: Arc<FakeHost>,
}

impl Apply {
    fn new(config: &str) -> Apply {
        // Validation checks that the origin tarball exists; nothing else is read.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/design-example");
        let project = crate::config::load_str(&root, "imgraph.kdl", config)
            .unwrap_or_else(|e| panic!("{}", crate::config::render_plain(&e)));
        let graph = StageGraph::build(&project).expect("the project has no cycle");
        let dir = tempfile::tempdir().expect("a temporary folder");
        // A state file that does not exist opens as an empty state in memory: the same
        // SQL and migrations, without a file to sync.
        let state = State::open_for_reading(&dir.path().join("state.db")).expect("an empty state");
        Apply {
            work_root: dir.path().join("work"),
            _dir: dir,
            project: Arc::new(project),
            graph: Arc::new(graph),
            state: Arc::new(Mutex::new(state)),
            fake: Arc::new(FakeProvider::new()),
            host: Arc::new(FakeHost::default()),
        }
    }

    /// Writes a version of `image` to the registry, as an earlier run would have.
    fn recorded(&self, image: &str, version: &str, artifact: &str, status: ReleaseStatus) {
        let record = ImageVersion {
            image: image.into(),
            version: version.into(),
            artifact_id: artifact.into(),
            provider: "local".into(),
            key: "b3v1:earlier".into(),
            status: ReleaseStatus::Candidate,
            built_at: 1,
            run: None,
            origin: None,
            revoked_reason: None,
        };
        let st = self.state.lock().expect("state");
        st.record_image(&record).expect("recorded");
        match status {
            ReleaseStatus::Revoked => {
                st.revoke(image, version, "broken on purpose")
                    .expect("revoked");
            }
            ReleaseStatus::Candidate => {}
            other => st.set_image_status(image, version, other).expect("status"),
        }
    }

    /// The registry's versions of `image`: (version, status, artifact, environments).
    fn registry(&self, image: &str) -> Vec<(String, ReleaseStatus, String, Vec<String>)> {
        let st = self.state.lock().expect("state");
        let mut out: Vec<_> = st
            .images(Some(image))
            .expect("registry")
            .into_iter()
            .map(|r| {
                let v = r.version;
                (v.version, v.status, v.artifact_id, r.environments)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    async fn run(&self, parallelism: usize, fail_fast: bool) -> RunSummary {
        self.run_until(parallelism, fail_fast, CancellationToken::new())
            .await
    }

    /// Plans (nothing ever ran: every node runs as new) and applies, with `cancel` as
    /// Ctrl-C. A run that hangs fails the test after 30 s instead of never ending.
    async fn run_until(
        &self,
        parallelism: usize,
        fail_fast: bool,
        cancel: CancellationToken,
    ) -> RunSummary {
        let mut facts = Facts {
            now_ms: 1_000_000,
            ..Facts::default()
        };
        facts.sources.insert("debian".into(), "sha-debian-1".into());
        let plan = decide(&self.project, &self.graph, &facts, &PlanOptions::default())
            .unwrap_or_else(|e| panic!("the plan fails: {e}"));
        let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        providers.insert("local".into(), self.fake.clone());
        let ctx = ExecContext {
            project: self.project.clone(),
            graph: self.graph.clone(),
            state: self.state.clone(),
            providers: Arc::new(providers),
            work_root: self.work_root.clone(),
            resolved_sources: Arc::new(
                plan.sources
                    .iter()
                    .map(|s| (s.name.clone(), s.id.clone()))
                    .collect(),
            ),
            commands: self.host.clone(),
        };
        let options = ExecOptions {
            parallelism,
            fail_fast,
            lock_wait: Duration::ZERO,
        };
        let (events, _received) = tokio::sync::mpsc::unbounded_channel();
        let run = execute(ctx, &plan, "apply", &options, events, cancel);
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the run ends")
            .unwrap_or_else(|e| panic!("the run fails: {e}"))
    }
}

/// Each node's outcome and error, by id.
fn outcomes(summary: &RunSummary) -> HashMap<&str, (NodeOutcome, Option<&str>)> {
    summary
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), (n.outcome, n.error.as_deref())))
        .collect()
}

fn outcome(summary: &RunSummary, id: &str) -> NodeOutcome {
    outcomes(summary)
        .get(id)
        .unwrap_or_else(|| panic!("{id} is in the run"))
        .0
}

fn error<'a>(summary: &'a RunSummary, id: &str) -> &'a str {
    summary
        .nodes
        .iter()
        .find(|n| n.id == id)
        .and_then(|n| n.error.as_deref())
        .unwrap_or_else(|| panic!("{id} has an error"))
}

fn build(image: &str, version: &str, origin: &str) -> Call {
    Call::Build {
        image: image.into(),
        version: version.into(),
        origin: origin.into(),
    }
}

fn test(image: &str, suite: &str, artifact: &str, version: &str) -> Call {
    Call::Test {
        image: image.into(),
        suite: suite.into(),
        artifact: artifact.into(),
        version: version.into(),
    }
}

fn status(image: &str, version: &str, status: ReleaseStatus) -> Call {
    Call::Status {
        image: image.into(),
        version: version.into(),
        status,
    }
}

fn delivery(image: &str, version: &str, environment: &str) -> Call {
    Call::Delivery {
        image: image.into(),
        version: version.into(),
        environment: environment.into(),
    }
}

fn debian() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/design-example");
    format!("path:{}", root.join("bases/debian-12.tar.zst").display())
}

#[tokio::test]
async fn a_new_image_is_built_tested_made_ready_and_delivered_in_after_order() {
    let apply = Apply::new(CHAIN);
    let summary = apply.run(4, false).await;

    assert_eq!(summary.status, RunStatus::Succeeded);
    assert!(
        summary
            .nodes
            .iter()
            .all(|n| n.outcome == NodeOutcome::Succeeded),
        "{summary:?}"
    );
    assert_eq!(
        apply.fake.calls(),
        vec![
            build("base", "1.0.0", &debian()),
            status("base", "1.0.0", ReleaseStatus::Candidate),
            test("base", "smoke", "fake-base-1", "1.0.0"),
            status("base", "1.0.0", ReleaseStatus::Ready),
            // Built from the Ready version of base, by artifact.
            build("web", "2.0.0", "fake-base-1"),
            status("web", "2.0.0", ReleaseStatus::Candidate),
            test("web", "http", "fake-web-2", "2.0.0"),
            status("web", "2.0.0", ReleaseStatus::Ready),
            delivery("web", "2.0.0", "staging"),
            delivery("web", "2.0.0", "production"),
        ]
    );
    assert_eq!(
        *apply.host.ran.lock().expect("host"),
        vec![
            ("staging".into(), "2.0.0".into(), "fake-web-2".into()),
            ("production".into(), "2.0.0".into(), "fake-web-2".into()),
        ]
    );
    assert_eq!(
        apply.registry("web"),
        vec![(
            "2.0.0".into(),
            ReleaseStatus::Ready,
            "fake-web-2".into(),
            vec!["staging".into(), "production".into()]
        )]
    );
    assert_eq!(apply.registry("base")[0].1, ReleaseStatus::Ready);
}

#[tokio::test]
async fn each_build_takes_the_next_version_of_its_series() {
    let apply = Apply::new(CHAIN);
    apply.recorded("base", "1.0.0", "old-0", ReleaseStatus::Ready);
    apply.recorded("base", "1.0.1", "old-1", ReleaseStatus::Failed);
    apply.recorded("web", "1.9.4", "old-web", ReleaseStatus::Ready);
    apply.run(4, false).await;

    let builds: Vec<Call> = apply
        .fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Build { .. }))
        .collect();
    // A failed version keeps its number; a new series starts at .0.
    assert_eq!(
        builds,
        vec![
            build("base", "1.0.2", &debian()),
            build("web", "2.0.0", "fake-base-1"),
        ]
    );
}

#[tokio::test]
async fn a_failed_test_marks_the_version_failed_and_skips_everything_after_it() {
    let apply = Apply::new(CHAIN);
    apply.fake.on_test("base", Answer::exit(1));
    let summary = apply.run(4, false).await;

    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(outcome(&summary, "build:base"), NodeOutcome::Succeeded);
    assert_eq!(outcome(&summary, "test:base/smoke"), NodeOutcome::Failed);
    assert_eq!(
        error(&summary, "test:base/smoke"),
        "test `smoke` exited with status 1 on base 1.0.0"
    );
    for id in [
        "publish:base",
        "build:web",
        "test:web/http",
        "publish:web",
        "deliver:web@staging",
        "deliver:web@production",
    ] {
        assert_eq!(outcome(&summary, id), NodeOutcome::Skipped, "{id}");
    }
    assert_eq!(
        apply.fake.calls(),
        vec![
            build("base", "1.0.0", &debian()),
            status("base", "1.0.0", ReleaseStatus::Candidate),
            test("base", "smoke", "fake-base-1", "1.0.0"),
            status("base", "1.0.0", ReleaseStatus::Failed),
        ]
    );
    assert_eq!(apply.registry("base")[0].1, ReleaseStatus::Failed);
    assert!(apply.host.ran.lock().expect("host").is_empty());
}

#[tokio::test]
async fn a_failed_build_skips_its_own_image_and_the_others_go_on() {
    let apply = Apply::new(FOUR);
    apply.fake.on_build("a", Answer::fail());
    let summary = apply.run(4, false).await;

    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(outcome(&summary, "build:a"), NodeOutcome::Failed);
    assert_eq!(
        error(&summary, "build:a"),
        "build step `scripted` exited with status 1"
    );
    assert_eq!(outcome(&summary, "test:a/t"), NodeOutcome::Skipped);
    assert_eq!(outcome(&summary, "publish:a"), NodeOutcome::Skipped);
    // Nothing is registered for a build that failed.
    assert!(apply.registry("a").is_empty());
    for image in ["b", "c", "d"] {
        for id in [
            format!("build:{image}"),
            format!("test:{image}/t"),
            format!("publish:{image}"),
        ] {
            assert_eq!(outcome(&summary, &id), NodeOutcome::Succeeded, "{id}");
        }
        assert_eq!(apply.registry(image)[0].1, ReleaseStatus::Ready, "{image}");
    }
}

#[tokio::test]
async fn fail_fast_stops_the_running_builds_and_starts_nothing_more() {
    let apply = Apply::new(FOUR);
    // The four builds start together; `a` fails once all have started, the others run
    // until they are stopped.
    apply.fake.on_build("a", Answer::fail().once_started(4));
    for image in ["b", "c", "d"] {
        apply.fake.on_build(image, Answer::until_cancelled());
    }
    let summary = apply.run(4, true).await;

    assert_eq!(summary.status, RunStatus::Failed);
    assert!(!summary.interrupted, "fail-fast is no Ctrl-C");
    assert_eq!(outcome(&summary, "build:a"), NodeOutcome::Failed);
    for image in ["b", "c", "d"] {
        let id = format!("build:{image}");
        assert_eq!(outcome(&summary, &id), NodeOutcome::Cancelled, "{id}");
        assert!(apply.registry(image).is_empty(), "{image}");
    }
    for (id, (outcome, _)) in outcomes(&summary) {
        assert_ne!(outcome, NodeOutcome::Succeeded, "{id}");
    }
    let calls = apply.fake.calls();
    assert_eq!(
        calls.len(),
        4,
        "nothing starts after the failure: {calls:?}"
    );
    assert!(calls.iter().all(|c| matches!(c, Call::Build { .. })));
}

#[tokio::test]
async fn ctrl_c_during_a_test_cancels_it_and_tags_nothing_failed() {
    let apply = Apply::new(CHAIN);
    apply.fake.on_test("base", Answer::until_cancelled());
    let cancel = CancellationToken::new();
    let ctrl_c = async {
        apply.fake.called(|c| matches!(c, Call::Test { .. })).await;
        cancel.cancel();
    };
    let (summary, ()) = tokio::join!(apply.run_until(4, false, cancel.clone()), ctrl_c);

    assert!(summary.interrupted);
    assert_eq!(summary.status, RunStatus::Cancelled);
    assert_eq!(outcome(&summary, "build:base"), NodeOutcome::Succeeded);
    assert_eq!(outcome(&summary, "test:base/smoke"), NodeOutcome::Cancelled);
    for (id, (outcome, _)) in outcomes(&summary) {
        if id != "build:base" {
            assert_ne!(outcome, NodeOutcome::Succeeded, "{id}");
        }
    }
    // A stopped test says nothing of the image: it stays a Candidate.
    assert_eq!(
        apply.fake.calls(),
        vec![
            build("base", "1.0.0", &debian()),
            status("base", "1.0.0", ReleaseStatus::Candidate),
            test("base", "smoke", "fake-base-1", "1.0.0"),
        ]
    );
    assert_eq!(apply.registry("base")[0].1, ReleaseStatus::Candidate);
}

#[tokio::test]
async fn a_panicking_provider_call_is_a_failed_node_and_the_run_ends() {
    let apply = Apply::new(CHAIN);
    apply.fake.on_build("base", Answer::panic());
    let summary = apply.run(4, false).await;

    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(outcome(&summary, "build:base"), NodeOutcome::Failed);
    assert!(
        error(&summary, "build:base").contains("scripted panic"),
        "{summary:?}"
    );
    assert_eq!(outcome(&summary, "test:base/smoke"), NodeOutcome::Skipped);
    assert!(apply.registry("base").is_empty());
}

#[tokio::test]
async fn never_more_provider_calls_run_at_once_than_the_parallelism_limit() {
    for limit in [1, 2, 4] {
        let apply = Apply::new(FOUR);
        // Each build answers only once `limit` calls have started: the first `limit`
        // run together, so reaching the limit is proven, not hoped for.
        for image in ["a", "b", "c", "d"] {
            apply
                .fake
                .on_build(image, Answer::pass().once_started(limit));
        }
        let summary = apply.run(limit, false).await;
        assert_eq!(summary.status, RunStatus::Succeeded, "-j {limit}");
        assert_eq!(apply.fake.most_at_once(), limit, "-j {limit}");
    }
}

#[tokio::test]
async fn a_failed_delivery_keeps_the_environments_after_it_waiting() {
    let apply = Apply::new(CHAIN);
    apply
        .host
        .exits
        .lock()
        .expect("host script")
        .insert("staging".into(), 3);
    let summary = apply.run(4, false).await;

    assert_eq!(outcome(&summary, "publish:web"), NodeOutcome::Succeeded);
    assert_eq!(
        outcome(&summary, "deliver:web@staging"),
        NodeOutcome::Failed
    );
    assert_eq!(
        error(&summary, "deliver:web@staging"),
        "delivery of web 2.0.0 to staging exited with status 3"
    );
    assert_eq!(
        outcome(&summary, "deliver:web@production"),
        NodeOutcome::Skipped
    );
    assert!(!apply
        .fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Delivery { .. })));
    assert!(apply.registry("web")[0].3.is_empty());
}

#[tokio::test]
async fn a_build_that_makes_the_ready_artifact_again_makes_no_new_version() {
    let apply = Apply::new(CHAIN);
    apply.recorded("base", "1.0.0", "same", ReleaseStatus::Ready);
    apply.fake.on_build("base", Answer::artifact("same"));
    let summary = apply.run(4, false).await;

    assert_eq!(summary.status, RunStatus::Succeeded);
    let calls = apply.fake.calls();
    assert_eq!(calls[0], build("base", "1.0.1", &debian()));
    // No new version: no Candidate, and the rest works on 1.0.0.
    assert_eq!(calls[1], test("base", "smoke", "same", "1.0.0"));
    assert!(calls.contains(&build("web", "2.0.0", "same")));
    assert_eq!(
        apply.registry("base"),
        vec![(
            "1.0.0".into(),
            ReleaseStatus::Ready,
            "same".into(),
            Vec::new()
        )]
    );
}

#[tokio::test]
async fn a_build_that_makes_a_revoked_artifact_again_fails() {
    let apply = Apply::new(CHAIN);
    apply.recorded("base", "1.0.0", "bad", ReleaseStatus::Revoked);
    apply.fake.on_build("base", Answer::artifact("bad"));
    let summary = apply.run(4, false).await;

    assert_eq!(outcome(&summary, "build:base"), NodeOutcome::Failed);
    assert_eq!(
        error(&summary, "build:base"),
        "the build made the artifact of revoked base 1.0.0 again (broken on purpose): change its inputs, or `imgraph revoke --undo base@1.0.0`"
    );
    assert_eq!(outcome(&summary, "build:web"), NodeOutcome::Skipped);
    assert_eq!(apply.registry("base").len(), 1, "no version for it");
}
