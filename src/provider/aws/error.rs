//! Errors of the AWS provider, and the one helper that turns an SDK error into a message
//! naming the EC2 action, the resource it was called on, the error code and AWS's message.
//!
//! The SDK has already retried throttling and 5xx answers by the time an error reaches
//! [`api_error`]; what is left is reported once, in words a user can act on (an
//! authorisation failure says which permission is missing on which resource).

use std::time::Duration;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// EC2 error codes that mean the caller lacks a permission.
const UNAUTHORISED_CODES: &[&str] = &["UnauthorizedOperation", "AuthFailure", "AccessDenied"];

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("not authorised to call ec2:{action} on {resource}: {message}")]
    Unauthorised {
        action: &'static str,
        resource: String,
        code: String,
        message: String,
    },
    #[error("call ec2:{action} on {resource}: {code}: {message}")]
    Api {
        action: &'static str,
        resource: String,
        code: String,
        message: String,
    },
    /// No answer from EC2 at all (connection, timeout, credentials, malformed response).
    #[error("call ec2:{action} on {resource}: {detail}")]
    Sdk {
        action: &'static str,
        resource: String,
        detail: String,
    },
    #[error("timed out after {} waiting for {what} {id} to {goal} (it is {state})", humantime::format_duration(*after))]
    WaitTimeout {
        what: &'static str,
        id: String,
        goal: &'static str,
        state: String,
        after: Duration,
    },
    #[error("wait for {what} {id} to {goal}: it is {state}{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    WaitFailed {
        what: &'static str,
        id: String,
        goal: &'static str,
        state: String,
        reason: Option<String>,
    },
    #[error("wait for {what} {id} to {goal}: the run was cancelled")]
    Cancelled {
        what: &'static str,
        id: String,
        goal: &'static str,
    },
    #[error("find a source AMI: no available image {query}")]
    NoSourceMatch { query: String },
    #[error(
        "connect to EC2: no region is set (give `region` in `provider \"aws\"`, or set AWS_REGION)"
    )]
    NoRegion,
    #[error(
        "no AWS credentials found{}: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or `profile` in provider \"aws\"{}",
        profile.as_deref().map(|p| format!(" for profile `{p}`")).unwrap_or_default(),
        detail.as_deref().map(|d| format!(" (last tried: {d})")).unwrap_or_default()
    )]
    NoCredentials {
        profile: Option<String>,
        detail: Option<String>,
    },
    #[error("{action}: EC2 answered without {missing}")]
    Incomplete {
        action: &'static str,
        missing: &'static str,
    },
    #[error("run an ec2 build of `{image}`: {reason}")]
    Ec2Build { image: String, reason: String },
    #[error("run the packer build of `{image}`: {reason}")]
    Packer { image: String, reason: String },
}

impl AwsError {
    /// The EC2 error code, when EC2 answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Unauthorised { code, .. } | AwsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Turns an SDK error into an [`AwsError`] naming `action` (e.g. `RunInstances`) and the
/// `resource` it concerned (e.g. the AMI id).
pub fn api_error<E, R>(action: &'static str, resource: &str, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let resource = resource.to_string();
    let code = err.code().map(str::to_string);
    let message = err.message().map(str::to_string);
    match code {
        Some(code) => {
            let message = message.unwrap_or_else(|| "no message".into());
            if UNAUTHORISED_CODES.contains(&code.as_str()) {
                AwsError::Unauthorised {
                    action,
                    resource,
                    code,
                    message,
                }
            } else {
                AwsError::Api {
                    action,
                    resource,
                    code,
                    message,
                }
            }
        }
        None => AwsError::Sdk {
            action,
            resource,
            detail: DisplayErrorContext(&err).to_string(),
        },
    }
}

/// Whether an error means the resource does not exist (e.g. `InvalidInstanceID.NotFound`).
pub fn is_not_found(err: &AwsError) -> bool {
    err.code().is_some_and(|c| {
        c.ends_with(".NotFound") || c.ends_with(".Malformed") || c.ends_with(".Unavailable")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::run_instances::RunInstancesError;

    fn service_error(code: &str, message: &str) -> SdkError<RunInstancesError, ()> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(RunInstancesError::generic(meta), ())
    }

    #[test]
    fn an_authorisation_failure_names_the_action_and_the_resource() {
        let e = api_error(
            "RunInstances",
            "ami-123",
            service_error(
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
            ),
        );
        assert_eq!(
            e.to_string(),
            "not authorised to call ec2:RunInstances on ami-123: You are not authorized to perform this operation."
        );
    }

    #[test]
    fn other_errors_carry_their_code_and_message() {
        let e = api_error(
            "RunInstances",
            "ami-123",
            service_error("InsufficientInstanceCapacity", "none left"),
        );
        assert_eq!(
            e.to_string(),
            "call ec2:RunInstances on ami-123: InsufficientInstanceCapacity: none left"
        );
        assert!(!is_not_found(&e));
        let gone = api_error(
            "TerminateInstances",
            "i-1",
            service_error("InvalidInstanceID.NotFound", "gone"),
        );
        assert!(is_not_found(&gone));
    }

    #[test]
    fn a_wait_timeout_says_what_it_waited_for() {
        let e = AwsError::WaitTimeout {
            what: "instance",
            id: "i-0abc".into(),
            goal: "stop",
            state: "running".into(),
            after: Duration::from_secs(1800),
        };
        assert_eq!(
            e.to_string(),
            "timed out after 30m waiting for instance i-0abc to stop (it is running)"
        );
    }
}
