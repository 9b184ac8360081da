//! EC2 instances: launching, waiting, imaging and terminating them, for `ec2` builds and
//! for tests.
//!
//! An `ec2` build hands its `run` steps to the instance as user data (a `/bin/sh` script
//! with `set -e` that ends in `shutdown -h now`), so the instance reports success by
//! stopping itself: no SSH, no agent, no inbound network. The price: a failing step leaves
//! the instance running until `build_timeout`, and `copy` steps cannot be carried (user
//! data is limited to 16 KiB); use a `packer` build for those.

use std::sync::OnceLock;

use aws_sdk_ec2::types::{
    IamInstanceProfileSpecification, Instance, InstanceStateName, InstanceType, ResourceType,
    ShutdownBehavior, TagSpecification,
};

use super::error::{api_error, is_not_found, AwsError};
use super::packer::run_tag;
use super::wait::{poll_until, Poll, Target};
use super::{
    filter, settle, shell_quote, tag, AwsProvider, TagSet, LIVE_STATES, TAG_IMAGE, TAG_PROJECT,
    TAG_PURPOSE, TAG_RUN, TAG_TOKEN,
};
use crate::config::model::{InstanceSettings, Step};
use crate::process::{self, ProcessOutcome};
use crate::provider::append_log;
use crate::provider::{BuildRequest, Built, Job, Ledger, Origin, ProviderError, TestRequest};

/// The instance type when `instance { type ... }` is not given.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";

/// EC2's limit on user data, before base64.
const USER_DATA_LIMIT: usize = 16 * 1024;

/// One node's instance, ledgered before it is launched (`pending:TOKEN`, then its id), so
/// the clean-up that runs after the work on it, whatever happened, finds it: the launched
/// instance, or (when the launch's answer never arrived) whatever carries the token.
pub(super) struct LedgeredInstance {
    token: String,
    entry: i64,
    /// Set once, by [`AwsProvider::launch_ledgered`].
    launched: OnceLock<String>,
}

/// The user data of an `ec2` build: the `run` steps in order, then power off.
pub fn user_data_script(
    image: &str,
    steps: &[Step],
    version: &str,
    key: &str,
) -> Result<String, AwsError> {
    let mut script = String::from("#!/bin/sh\nset -e\n");
    for (k, v) in [
        ("IMGRAPH_IMAGE", image),
        ("IMGRAPH_VERSION", version),
        ("IMGRAPH_KEY", key),
    ] {
        script.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    for step in steps {
        match step {
            Step::Run { command } => {
                script.push_str(command);
                script.push('\n');
            }
            Step::Copy { from, to } => {
                return Err(AwsError::Ec2Build {
                    image: image.to_string(),
                    reason: format!(
                        "`copy \"{from}\" to=\"{to}\"`: copy steps are not supported by ec2 builds \
                         (the steps travel as user data); fetch the files in a `run` step, or use a packer build"
                    ),
                });
            }
        }
    }
    script.push_str("shutdown -h now\n");
    if script.len() > USER_DATA_LIMIT {
        return Err(AwsError::Ec2Build {
            image: image.to_string(),
            reason: format!(
                "the steps make {} bytes of user data; EC2 accepts at most {USER_DATA_LIMIT}",
                script.len()
            ),
        });
    }
    Ok(script)
}

/// Standard base64 with padding (RunInstances wants user data encoded).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What to launch.
struct Launch<'a> {
    image_id: &'a str,
    settings: &'a InstanceSettings,
    user_data: Option<&'a str>,
    token: &'a str,
    tags: Vec<(String, String)>,
}

/// A running test instance.
struct Running {
    id: String,
    ip: Option<String>,
    private_ip: Option<String>,
    public_ip: Option<String>,
}

/// The state name EC2 reports, as text ("pending", "running", ...).
fn state_of(i: &Instance) -> String {
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl AwsProvider {
    /// Tags every temporary instance carries.
    fn instance_tags(
        &self,
        run: Option<i64>,
        purpose: &str,
        image: &str,
        node: &str,
        token: &str,
    ) -> Vec<(String, String)> {
        let mut tags = vec![
            ("Name".to_string(), format!("imgraph {purpose} {node}")),
            (TAG_RUN.to_string(), run_tag(run)),
            (TAG_PURPOSE.to_string(), purpose.to_string()),
            (TAG_IMAGE.to_string(), image.to_string()),
            (TAG_TOKEN.to_string(), token.to_string()),
        ];
        if let Some(p) = &self.project {
            tags.push((TAG_PROJECT.to_string(), p.clone()));
        }
        tags
    }

    /// RunInstances for one instance; returns its id.
    async fn launch(&self, l: Launch<'_>) -> Result<String, AwsError> {
        let spec_tags = |rt: ResourceType| {
            TagSpecification::builder()
                .resource_type(rt)
                .set_tags(Some(l.tags.iter().map(|(k, v)| tag(k, v)).collect()))
                .build()
        };
        let s = l.settings;
        let mut call = self
            .client
            .run_instances()
            .image_id(l.image_id)
            .min_count(1)
            .max_count(1)
            .client_token(l.token)
            .instance_type(InstanceType::from(
                s.instance_type.as_deref().unwrap_or(DEFAULT_INSTANCE_TYPE),
            ))
            // A build reports success by powering off: that must stop, never terminate.
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Stop)
            .tag_specifications(spec_tags(ResourceType::Instance))
            .tag_specifications(spec_tags(ResourceType::Volume))
            .set_subnet_id(s.subnet.clone())
            .set_key_name(s.key_name.clone());
        for sg in &s.security_groups {
            // Ids work in any VPC; names only in the default VPC.
            call = if sg.starts_with("sg-") {
                call.security_group_ids(sg)
            } else {
                call.security_groups(sg)
            };
        }
        if let Some(p) = &s.instance_profile {
            let spec = if p.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(p).build()
            } else {
                IamInstanceProfileSpecification::builder().name(p).build()
            };
            call = call.iam_instance_profile(spec);
        }
        if let Some(ud) = l.user_data {
            call = call.user_data(base64(ud.as_bytes()));
        }
        let out = call
            .send()
            .await
            .map_err(|e| api_error("RunInstances", l.image_id, e))?;
        out.instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_string)
            .ok_or(AwsError::Incomplete {
                action: "RunInstances",
                missing: "an instance id",
            })
    }

    /// The instance as DescribeInstances sees it; `None` while EC2 does not know it yet
    /// (a new instance can take a moment to appear).
    async fn describe_instance(&self, id: &str) -> Result<Option<Instance>, AwsError> {
        match self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(id))
                .cloned()),
            Err(e) => {
                let e = api_error("DescribeInstances", id, e);
                if is_not_found(&e) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Waits until the instance is `goal` (running or stopped); fails as soon as it can no
    /// longer get there (terminated, or stopped while waiting for running).
    async fn wait_instance(
        &self,
        id: &str,
        goal: InstanceStateName,
        timeout: std::time::Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Instance, AwsError> {
        let verb = if goal == InstanceStateName::Stopped {
            "stop"
        } else {
            "start"
        };
        let target = Target {
            what: "instance",
            id,
            goal: verb,
        };
        poll_until(target, timeout, &self.waits, cancel, || async {
            let Some(instance) = self.describe_instance(id).await? else {
                return Ok(Poll::Waiting("not visible yet".into()));
            };
            let state = instance.state().and_then(|s| s.name()).cloned();
            let waiting = match goal {
                InstanceStateName::Stopped => matches!(
                    state,
                    Some(
                        InstanceStateName::Pending
                            | InstanceStateName::Running
                            | InstanceStateName::Stopping
                    )
                ),
                _ => matches!(state, Some(InstanceStateName::Pending)),
            };
            if state.as_ref() == Some(&goal) {
                Ok(Poll::Ready(instance))
            } else if waiting || state.is_none() {
                Ok(Poll::Waiting(state_of(&instance)))
            } else {
                Err(AwsError::WaitFailed {
                    what: "instance",
                    id: id.to_string(),
                    goal: verb,
                    state: state_of(&instance),
                    reason: instance
                        .state_reason()
                        .and_then(|r| r.message())
                        .map(str::to_string),
                })
            }
        })
        .await
    }

    /// Waits until the AMI is `available`; fails when it ends `failed` or vanishes.
    async fn wait_image(
        &self,
        ami: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), AwsError> {
        use aws_sdk_ec2::types::ImageState;
        let target = Target {
            what: "image",
            id: ami,
            goal: "become available",
        };
        poll_until(
            target,
            self.waits.image_timeout,
            &self.waits,
            cancel,
            || async {
                let answer = self.client.describe_images().image_ids(ami).send().await;
                let image = match answer {
                    Ok(out) => out
                        .images()
                        .iter()
                        .find(|i| i.image_id() == Some(ami))
                        .cloned(),
                    Err(e) => {
                        let e = api_error("DescribeImages", ami, e);
                        if is_not_found(&e) {
                            None
                        } else {
                            return Err(e);
                        }
                    }
                };
                let Some(image) = image else {
                    return Ok(Poll::Waiting("not visible yet".into()));
                };
                let state = image.state().cloned();
                match state {
                    Some(ImageState::Available) => Ok(Poll::Ready(())),
                    Some(ImageState::Pending) | None => Ok(Poll::Waiting(
                        state
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_else(|| "unknown".into()),
                    )),
                    Some(other) => Err(AwsError::WaitFailed {
                        what: "image",
                        id: ami.to_string(),
                        goal: "become available",
                        state: other.as_str().to_string(),
                        reason: image
                            .state_reason()
                            .and_then(|r| r.message())
                            .map(str::to_string),
                    }),
                }
            },
        )
        .await
    }

    /// TerminateInstances; ids that are already gone count as terminated.
    pub(super) async fn terminate(&self, ids: &[String]) -> Result<Vec<String>, AwsError> {
        let mut done = Vec::new();
        for chunk in ids.chunks(100) {
            let resource = chunk.join(", ");
            let answer = self
                .client
                .terminate_instances()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| api_error("TerminateInstances", &resource, e));
            match answer {
                Ok(_) => done.extend(chunk.iter().cloned()),
                Err(e) if is_not_found(&e) && chunk.len() == 1 => {}
                Err(e) if is_not_found(&e) => {
                    // One unknown id fails the whole call: retry one by one.
                    for id in chunk {
                        match self
                            .client
                            .terminate_instances()
                            .instance_ids(id)
                            .send()
                            .await
                        {
                            Ok(_) => done.push(id.clone()),
                            Err(e) => {
                                let e = api_error("TerminateInstances", id, e);
                                if !is_not_found(&e) {
                                    return Err(e);
                                }
                            }
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Terminates every live instance tagged `imgraph:token=TOKEN`.
    pub(super) async fn terminate_by_token(&self, token: &str) -> Result<Vec<String>, AwsError> {
        let filters = vec![
            filter(&format!("tag:{TAG_TOKEN}"), [token]),
            filter("instance-state-name", LIVE_STATES.iter().copied()),
        ];
        let found = self
            .describe_instances(filters, &format!("instances tagged {TAG_TOKEN}={token}"))
            .await?;
        let ids: Vec<String> = found
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        self.terminate(&ids).await
    }

    /// Ledgers the instance `node` is about to launch for `purpose` (`build`, `test`).
    pub(super) fn ledgered_instance(
        &self,
        job: &Job<'_>,
        node: &str,
        purpose: &str,
    ) -> Result<LedgeredInstance, ProviderError> {
        let token = self.new_token(job.ledger.run);
        let entry = job.ledger.add(
            node,
            "aws",
            "instance",
            &format!("pending:{token}"),
            purpose,
        )?;
        Ok(LedgeredInstance {
            token,
            entry,
            launched: OnceLock::new(),
        })
    }

    /// Launches the ledgered instance and records its id in the ledger.
    async fn launch_ledgered(
        &self,
        pending: &LedgeredInstance,
        ledger: &Ledger,
        launch: Launch<'_>,
    ) -> Result<String, ProviderError> {
        let id = self.launch(launch).await?;
        let _ = pending.launched.set(id.clone());
        ledger.set_resource(pending.entry, &id)?;
        Ok(id)
    }

    /// The clean-up after the work on a ledgered instance: the launched instance, or what
    /// carries its token, is terminated and the ledger entry closed; the work's error wins.
    pub(super) async fn end_instance<T>(
        &self,
        job: &Job<'_>,
        pending: LedgeredInstance,
        result: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let cleanup = match pending.launched.into_inner() {
            Some(id) => self.terminate(&[id]).await,
            None => self.terminate_by_token(&pending.token).await,
        };
        settle(job.ledger, pending.entry, job.log, result, cleanup)
    }

    /// The body of an `ec2` build (the caller terminates the instance).
    pub(super) async fn ec2_build(
        &self,
        req: &BuildRequest<'_>,
        script: &str,
        pending: &LedgeredInstance,
    ) -> Result<Built, ProviderError> {
        let token = pending.token.as_str();
        let image = &req.image.name;
        let Origin::Artifact(origin) = &req.origin else {
            return Err(AwsError::Ec2Build {
                image: image.clone(),
                reason: "its origin is a local path; ec2 builds start from an AMI (an aws source or an aws image)".into(),
            }
            .into());
        };
        let tags = self.instance_tags(
            req.job.ledger.run,
            "build",
            image,
            req.node_id.as_str(),
            token,
        );
        let launch = Launch {
            image_id: origin,
            settings: &req.image.instance,
            user_data: Some(script),
            token,
            tags,
        };
        let id = self
            .launch_ledgered(pending, req.job.ledger, launch)
            .await?;
        append_log(
            req.job.log,
            &format!(
                "imgraph: launched {id} from {origin}; waiting for its user data to power it off"
            ),
        );
        self.wait_instance(
            &id,
            InstanceStateName::Stopped,
            self.waits.build_timeout,
            req.job.cancel,
        )
        .await?;
        append_log(
            req.job.log,
            &format!("imgraph: {id} stopped; creating the image"),
        );

        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // AMI names are unique per account and region; the time keeps a rebuilt version
        // (after a lost state file) from colliding with the old one.
        let name = format!("{image}-{}-{millis}", req.version);
        let ami = self
            .client
            .create_image()
            .instance_id(&id)
            .name(&name)
            .description(format!("imgraph {image} {} (key {})", req.version, req.key))
            .send()
            .await
            .map_err(|e| api_error("CreateImage", &id, e))?
            .image_id()
            .map(str::to_string)
            .ok_or(AwsError::Incomplete {
                action: "CreateImage",
                missing: "an image id",
            })?;
        append_log(req.job.log, &format!("imgraph: created {ami} ({name})"));
        let finished = async {
            self.tag(
                &ami,
                &TagSet::for_image(req.image, req.version, req.key).pairs(),
            )
            .await?;
            self.wait_image(&ami, req.job.cancel).await
        }
        .await;
        if let Err(e) = finished {
            // A half-made image must not be mistaken for a build: deregister it (best effort).
            if let Err(d) = self.client.deregister_image().image_id(&ami).send().await {
                let d = api_error("DeregisterImage", &ami, d);
                append_log(
                    req.job.log,
                    &format!("imgraph: failed to deregister {ami}: {d}"),
                );
            }
            return Err(e.into());
        }
        append_log(req.job.log, &format!("imgraph: {ami} is available"));
        Ok(Built { artifact_id: ami })
    }

    /// The body of a test (the caller terminates the instance).
    pub(super) async fn test_on_instance(
        &self,
        req: &TestRequest<'_>,
        pending: &LedgeredInstance,
    ) -> Result<ProcessOutcome, ProviderError> {
        let token = pending.token.as_str();
        let tags = self.instance_tags(
            req.job.ledger.run,
            "test",
            &req.image.name,
            req.node_id.as_str(),
            token,
        );
        let launch = Launch {
            image_id: req.artifact_id,
            settings: &req.image.instance,
            user_data: None,
            token,
            tags,
        };
        let id = self
            .launch_ledgered(pending, req.job.ledger, launch)
            .await?;
        append_log(
            req.job.log,
            &format!("imgraph: launched {id} from {}", req.artifact_id),
        );
        let instance = self
            .wait_instance(
                &id,
                InstanceStateName::Running,
                self.waits.launch_timeout,
                req.job.cancel,
            )
            .await?;
        let private_ip = instance.private_ip_address().map(str::to_string);
        let public_ip = instance.public_ip_address().map(str::to_string);
        let running = Running {
            ip: public_ip.clone().or_else(|| private_ip.clone()),
            id,
            private_ip,
            public_ip,
        };
        append_log(
            req.job.log,
            &format!(
                "imgraph: {} is running at {}",
                running.id,
                running.ip.as_deref().unwrap_or("no address")
            ),
        );
        let spec = req.command(
            process::Place::Host,
            vec![
                ("IMGRAPH_INSTANCE_ID".into(), running.id.clone()),
                (
                    "IMGRAPH_INSTANCE_IP".into(),
                    running.ip.clone().unwrap_or_default(),
                ),
                (
                    "IMGRAPH_INSTANCE_PRIVATE_IP".into(),
                    running.private_ip.unwrap_or_default(),
                ),
                (
                    "IMGRAPH_INSTANCE_PUBLIC_IP".into(),
                    running.public_ip.unwrap_or_default(),
                ),
            ],
        );
        Ok(process::run(&spec, req.job.log, req.job.cancel).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RelPath;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    #[test]
    fn user_data_runs_the_steps_in_order_and_powers_off() {
        let steps = vec![
            Step::Run {
                command: "yum install -y nginx".into(),
            },
            Step::Run {
                command: "systemctl enable nginx".into(),
            },
        ];
        let script = user_data_script("web", &steps, "1.0.2", "abc").unwrap();
        assert_eq!(
            script,
            "#!/bin/sh\nset -e\nexport IMGRAPH_IMAGE='web'\nexport IMGRAPH_VERSION='1.0.2'\n\
             export IMGRAPH_KEY='abc'\nyum install -y nginx\nsystemctl enable nginx\nshutdown -h now\n"
        );
    }

    #[test]
    fn copy_steps_are_refused_with_a_way_out() {
        let steps = vec![Step::Copy {
            from: RelPath("config/web".into()),
            to: "/etc/web".into(),
        }];
        let err = user_data_script("web", &steps, "1.0.0", "k")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("copy steps are not supported by ec2 builds"),
            "{err}"
        );
        assert!(err.contains("config/web"), "{err}");
    }

    #[test]
    fn user_data_over_the_ec2_limit_is_refused() {
        let steps = vec![Step::Run {
            command: "x".repeat(USER_DATA_LIMIT),
        }];
        let err = user_data_script("web", &steps, "1.0.0", "k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 16384"), "{err}");
    }
}
