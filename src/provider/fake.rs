//! A scripted [`Provider`] for unit tests of the executor, after sccache's mock storage:
//! each build or test call takes the next answer scripted for its image (or passes when
//! none is left), every call is written down, and the calls running at once are counted.
//! It starts no process, reads no file and makes nothing: a build's artifact is a name.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{BuildRequest, Built, Origin, Provider, ProviderError, TestRequest};
use crate::process::ProcessOutcome;
use crate::state::{ImageVersion, LedgerEntry, ReleaseStatus};

/// What a scripted call does before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Answers at once.
    No,
    /// Answers once this many build or test calls have started in all (itself included):
    /// those that started first ran together, whatever order they were started in.
    Started(usize),
    /// Runs until its node is stopped (Ctrl-C or fail-fast), then ends as cancelled.
    Cancelled,
}

/// How a scripted call ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Then {
    /// A build makes a new artifact (`fake-IMAGE-N`); a test passes.
    Pass,
    /// A build makes this artifact.
    Artifact(String),
    /// A test's command exits with this status.
    Exit(i32),
    /// The call fails with a provider error.
    Fail,
    /// The call panics.
    Panic,
}

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    wait: Wait,
    then: Then,
}

impl Answer {
    fn new(then: Then) -> Self {
        Answer {
            wait: Wait::No,
            then,
        }
    }
    pub fn pass() -> Self {
        Self::new(Then::Pass)
    }
    pub fn artifact(id: &str) -> Self {
        Self::new(Then::Artifact(id.into()))
    }
    pub fn exit(status: i32) -> Self {
        Self::new(Then::Exit(status))
    }
    pub fn fail() -> Self {
        Self::new(Then::Fail)
    }
    pub fn panic() -> Self {
        Self::new(Then::Panic)
    }
    /// Runs until its node is stopped.
    pub fn until_cancelled() -> Self {
        Answer {
            wait: Wait::Cancelled,
            then: Then::Pass,
        }
    }
    /// Answers only once `n` build or test calls have started in all.
    pub fn once_started(self, n: usize) -> Self {
        Answer {
            wait: Wait::Started(n),
            ..self
        }
    }
}

/// A provider call, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// `origin`: the artifact id, or `path:` and the local source's path.
    Build {
        image: String,
        version: String,
        origin: String,
    },
    Test {
        image: String,
        suite: String,
        artifact: String,
        version: String,
    },
    Status {
        image: String,
        version: String,
        status: ReleaseStatus,
    },
    Delivery {
        image: String,
        version: String,
        environment: String,
    },
    Tags {
        image: String,
        version: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Build,
    Test,
}

/// The scripted provider; its name is `local`, so a project's `local` images use it.
pub(crate) struct FakeProvider {
    script: Mutex<HashMap<(Op, String), VecDeque<Answer>>>,
    calls: watch::Sender<Vec<Call>>,
    /// Build and test calls running now.
    running: watch::Sender<usize>,
    /// Build and test calls started so far.
    started: watch::Sender<usize>,
    /// The most that ever ran at once.
    most: Mutex<usize>,
    /// Builds made so far, for new artifact names.
    builds: Mutex<usize>,
}

impl FakeProvider {
    pub fn new() -> Self {
        FakeProvider {
            script: Mutex::default(),
            calls: watch::Sender::new(Vec::new()),
            running: watch::Sender::new(0),
            started: watch::Sender::new(0),
            most: Mutex::new(0),
            builds: Mutex::new(0),
        }
    }

    /// Scripts the next build of `image` (answers queue up in call order).
    pub fn on_build(&self, image: &str, answer: Answer) -> &Self {
        self.push(Op::Build, image, answer)
    }

    /// Scripts the next test (of any suite) of `image`.
    pub fn on_test(&self, image: &str, answer: Answer) -> &Self {
        self.push(Op::Test, image, answer)
    }

    fn push(&self, op: Op, image: &str, answer: Answer) -> &Self {
        lock(&self.script)
            .entry((op, image.to_owned()))
            .or_default()
            .push_back(answer);
        self
    }

    /// Every call so far, in the order they were made.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Waits until a call that `pred` picks has been made.
    pub async fn called(&self, pred: impl Fn(&Call) -> bool) {
        let mut rx = self.calls.subscribe();
        let _ = rx.wait_for(|calls| calls.iter().any(&pred)).await;
    }

    /// The most build and test calls that ever ran at the same time.
    pub fn most_at_once(&self) -> usize {
        *lock(&self.most)
    }

    fn note(&self, call: Call) {
        self.calls.send_modify(|calls| calls.push(call));
    }

    fn next(&self, op: Op, image: &str) -> Answer {
        lock(&self.script)
            .get_mut(&(op, image.to_owned()))
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(Answer::pass)
    }

    /// Runs one scripted call: counted as running while it waits. `None`: it was stopped.
    async fn play(
        &self,
        answer: &Answer,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<()> {
        self.running.send_modify(|r| *r += 1);
        self.started.send_modify(|s| *s += 1);
        {
            let now = *self.running.borrow();
            let mut most = lock(&self.most);
            *most = (*most).max(now);
        }
        let _running = Running(&self.running);
        match answer.wait {
            Wait::No => {}
            Wait::Started(n) => {
                let mut started = self.started.subscribe();
                let _ = started.wait_for(|s| *s >= n).await;
            }
            Wait::Cancelled => {
                cancel.cancelled().await;
                return None;
            }
        }
        // Give the other tasks a turn, as a real call would.
        tokio::task::yield_now().await;
        if answer.then == Then::Panic {
            panic!("scripted panic");
        }
        Some(())
    }
}

/// Counts a call out of the running ones when it ends, however it ends (a panic too).
struct Running<'a>(&'a watch::Sender<usize>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|r| *r -= 1);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The error a scripted failure (or a stopped build) answers with.
fn failed(outcome: ProcessOutcome) -> ProviderError {
    ProviderError::StepFailed {
        command: "scripted".into(),
        outcome,
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn build(&self, req: BuildRequest<'_>) -> Result<Built, ProviderError> {
        let origin = match &req.origin {
            Origin::Artifact(id) => id.clone(),
            Origin::LocalPath(path) => format!("path:{}", path.display()),
        };
        self.note(Call::Build {
            image: req.image.name.clone(),
            version: req.version.into(),
            origin,
        });
        let answer = self.next(Op::Build, &req.image.name);
        if self.play(&answer, req.job.cancel).await.is_none() {
            return Err(failed(ProcessOutcome::Cancelled));
        }
        let artifact_id = match answer.then {
            Then::Artifact(id) => id,
            Then::Fail | Then::Exit(_) => return Err(failed(ProcessOutcome::Exited(1))),
            Then::Pass | Then::Panic => {
                let mut n = lock(&self.builds);
                *n += 1;
                format!("fake-{}-{n}", req.image.name)
            }
        };
        Ok(Built { artifact_id })
    }

    async fn test(&self, req: TestRequest<'_>) -> Result<ProcessOutcome, ProviderError> {
        self.note(Call::Test {
            image: req.image.name.clone(),
            suite: req.suite.name.clone(),
            artifact: req.artifact_id.into(),
            version: req.version.into(),
        });
        let answer = self.next(Op::Test, &req.image.name);
        if self.play(&answer, req.job.cancel).await.is_none() {
            return Ok(ProcessOutcome::Cancelled);
        }
        match answer.then {
            Then::Exit(status) => Ok(ProcessOutcome::Exited(status)),
            Then::Fail => Err(failed(ProcessOutcome::Exited(1))),
            Then::Pass | Then::Artifact(_) | Then::Panic => Ok(ProcessOutcome::Exited(0)),
        }
    }

    async fn set_status(
        &self,
        version: &ImageVersion,
        status: ReleaseStatus,
    ) -> Result<(), ProviderError> {
        self.note(Call::Status {
            image: version.image.clone(),
            version: version.version.clone(),
            status,
        });
        Ok(())
    }

    async fn set_revoked(
        &self,
        _version: &ImageVersion,
        _reason: Option<&str>,
    ) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn record_delivery(
        &self,
        version: &ImageVersion,
        environment: &str,
    ) -> Result<(), ProviderError> {
        self.note(Call::Delivery {
            image: version.image.clone(),
            version: version.version.clone(),
            environment: environment.into(),
        });
        Ok(())
    }

    async fn set_tags(
        &self,
        version: &ImageVersion,
        _tags: &BTreeMap<String, String>,
        _previous: Option<&BTreeMap<String, String>>,
    ) -> Result<(), ProviderError> {
        self.note(Call::Tags {
            image: version.image.clone(),
            version: version.version.clone(),
        });
        Ok(())
    }

    async fn remove_version(
        &self,
        _version: &ImageVersion,
        _keep_artifact: bool,
    ) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    async fn artifact_exists(&self, _artifact_id: &str) -> Result<bool, ProviderError> {
        Ok(true)
    }

    async fn destroy_leftover(&self, _entry: &LedgerEntry) -> Result<(), ProviderError> {
        Ok(())
    }
}
