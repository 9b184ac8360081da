//! Waiting for EC2 state changes: poll, back off, give up at a deadline or on cancellation.
//!
//! The SDK's own waiters exist, but they cannot be cancelled mid-wait and their delays are
//! fixed per operation; imgraph needs both (Ctrl-C must reach the clean-up quickly, and
//! tests need millisecond polls). Polls start at `poll_initial` and grow by half each time
//! up to `poll_max`, so short waits (moto, a stopped instance) answer fast and long ones
//! (a 20-minute build) cost few API calls.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::error::AwsError;

/// How long imgraph waits for EC2 resources, and how often it looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitSettings {
    /// Longest wait for an `ec2` build's instance to run its user data and stop by itself.
    pub build_timeout: Duration,
    /// Longest wait for a new instance to reach `running`.
    pub launch_timeout: Duration,
    /// Longest wait for a new AMI to become `available`.
    pub image_timeout: Duration,
    /// The first delay between two polls.
    pub poll_initial: Duration,
    /// The longest delay between two polls.
    pub poll_max: Duration,
}

impl Default for WaitSettings {
    fn default() -> Self {
        WaitSettings {
            build_timeout: Duration::from_secs(30 * 60),
            launch_timeout: Duration::from_secs(10 * 60),
            image_timeout: Duration::from_secs(60 * 60),
            poll_initial: Duration::from_secs(1),
            poll_max: Duration::from_secs(15),
        }
    }
}

/// What one look at a resource found.
pub(crate) enum Poll<T> {
    /// The goal is reached.
    Ready(T),
    /// Not yet; the resource's current state, for the timeout message.
    Waiting(String),
}

/// The resource being waited for, for messages: "instance i-1 to stop".
pub(crate) struct Target<'a> {
    pub what: &'static str,
    pub id: &'a str,
    pub goal: &'static str,
}

/// Calls `probe` until it reports [`Poll::Ready`], it fails, `timeout` passes or `cancel`
/// fires.
pub(crate) async fn poll_until<T, F, Fut>(
    target: Target<'_>,
    timeout: Duration,
    settings: &WaitSettings,
    cancel: &CancellationToken,
    mut probe: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, AwsError>>,
{
    let started = Instant::now();
    let mut delay = settings.poll_initial.max(Duration::from_millis(1));
    loop {
        if cancel.is_cancelled() {
            return Err(cancelled(&target));
        }
        let state = match probe().await? {
            Poll::Ready(t) => return Ok(t),
            Poll::Waiting(state) => state,
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(AwsError::WaitTimeout {
                what: target.what,
                id: target.id.to_string(),
                goal: target.goal,
                state,
                after: timeout,
            });
        }
        let pause = delay.min(timeout - waited);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => return Err(cancelled(&target)),
        }
        delay = (delay + delay / 2).min(settings.poll_max.max(settings.poll_initial));
    }
}

fn cancelled(target: &Target<'_>) -> AwsError {
    AwsError::Cancelled {
        what: target.what,
        id: target.id.to_string(),
        goal: target.goal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fast() -> WaitSettings {
        WaitSettings {
            poll_initial: Duration::from_millis(1),
            poll_max: Duration::from_millis(5),
            ..WaitSettings::default()
        }
    }

    fn target() -> Target<'static> {
        Target {
            what: "instance",
            id: "i-1",
            goal: "stop",
        }
    }

    #[tokio::test]
    async fn returns_once_the_goal_is_reached() {
        let calls = AtomicUsize::new(0);
        let out = poll_until(
            target(),
            Duration::from_secs(10),
            &fast(),
            &CancellationToken::new(),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Ok(Poll::Waiting("stopping".into()))
                } else {
                    Ok(Poll::Ready("stopped"))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(out, "stopped");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_state() {
        let err = poll_until::<(), _, _>(
            target(),
            Duration::from_millis(30),
            &fast(),
            &CancellationToken::new(),
            || async { Ok(Poll::Waiting("running".into())) },
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "timed out after 30ms waiting for instance i-1 to stop (it is running)"
        );
    }

    #[tokio::test]
    async fn cancellation_ends_the_wait() {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let slow = WaitSettings {
            poll_initial: Duration::from_secs(60),
            poll_max: Duration::from_secs(60),
            ..WaitSettings::default()
        };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c2.cancel();
        });
        let err = poll_until::<(), _, _>(
            target(),
            Duration::from_secs(600),
            &slow,
            &cancel,
            || async { Ok(Poll::Waiting("running".into())) },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AwsError::Cancelled { .. }), "{err}");
    }
}
