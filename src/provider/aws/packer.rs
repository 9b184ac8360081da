//! `packer` builds: run `packer build -machine-readable` on the user's template and read
//! the AMI id from the artifact lines Packer prints.
//!
//! imgraph passes `source_image`, `image_name` and `image_version` with `-var` (after the
//! user's own `var`s, so imgraph's win), runs Packer in the project folder with its output
//! appended to the node log, and parses only the part of the log this run wrote. Packer
//! reaches the same EC2 endpoint and region as imgraph through environment variables
//! (`IMGRAPH_EC2_ENDPOINT` for the template's `custom_endpoint_ec2`, `AWS_REGION`,
//! `AWS_PROFILE`). It also gets `IMGRAPH_IMAGE`, `IMGRAPH_VERSION`, `IMGRAPH_KEY`,
//! `IMGRAPH_RUN`, `IMGRAPH_TOKEN` and `IMGRAPH_PROJECT`: a template that puts the last
//! three in its `run_tags` (`imgraph:run`, `imgraph:token`, `imgraph:project`) lets
//! imgraph terminate the build instance when Packer is killed before its own clean-up ran
//! (`process::run` gives Packer only a short grace period after SIGTERM).

use std::path::Path;

use super::error::AwsError;
use super::{shell_quote, AwsProvider, TagSet};
use crate::config::model::RelPath;
use crate::process::{self, CommandSpec};
use crate::provider::append_log;
use crate::provider::{BuildRequest, Built, Origin, ProviderError};

/// Packer escapes commas inside machine-readable fields as this.
const PACKER_COMMA: &str = "%!(PACKER_COMMA)";

/// One `artifact,N,id,...` value: `us-east-1:ami-1,eu-west-1:ami-2` → the AMI for
/// `region` (or the first AMI when no region matches or none is given).
fn pick_ami(value: &str, region: Option<&str>) -> Option<String> {
    let value = value.replace(PACKER_COMMA, ",");
    let amis: Vec<(&str, &str)> = value
        .split(',')
        .filter_map(|entry| {
            let entry = entry.trim();
            match entry.split_once(':') {
                Some((r, id)) if id.starts_with("ami-") => Some((r, id)),
                None if entry.starts_with("ami-") => Some(("", entry)),
                _ => None,
            }
        })
        .collect();
    region
        .and_then(|want| amis.iter().find(|(r, _)| *r == want))
        .or_else(|| amis.first())
        .map(|(_, id)| id.to_string())
}

/// The AMI id from Packer's machine-readable output: the last artifact `id` line that
/// names an AMI (`<ts>,<target>,artifact,<n>,id,<region>:ami-...`). Other lines, including
/// imgraph's own narration in the same log, are ignored.
/// How long Packer gets after SIGINT to clean up its temporary resources.
pub const PACKER_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

pub fn parse_packer_artifact(output: &str, region: Option<&str>) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.trim_end_matches('\r').splitn(6, ',').collect();
        match fields.as_slice() {
            [_ts, _target, "artifact", _n, "id", value] => pick_ami(value, region),
            _ => None,
        }
    })
}

/// The error messages Packer printed (`<ts>,,ui,error,<message>`), unescaped.
pub fn parse_packer_errors(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim_end_matches('\r').splitn(5, ',').collect();
            match fields.as_slice() {
                [_ts, _target, "ui", "error", message] => Some(
                    message
                        .replace(PACKER_COMMA, ",")
                        .replace("\\n", " ")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            }
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// The `packer build` command line: the user's variables, then imgraph's, then the template.
pub fn packer_command(
    template: &RelPath,
    user_vars: &std::collections::BTreeMap<String, String>,
    source_image: &str,
    image_name: &str,
    image_version: &str,
) -> String {
    let mut cmd = String::from("packer build -machine-readable");
    let ours = [
        ("source_image", source_image),
        ("image_name", image_name),
        ("image_version", image_version),
    ];
    let vars = user_vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(ours);
    for (k, v) in vars {
        cmd.push_str(" -var ");
        cmd.push_str(&shell_quote(&format!("{k}={v}")));
    }
    cmd.push(' ');
    cmd.push_str(&shell_quote(template.as_str()));
    cmd
}

/// The length of the log before Packer writes to it (0 when it does not exist yet).
fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// What Packer appended to the log after `offset`.
async fn log_since(log: &Path, offset: u64) -> String {
    match tokio::fs::read(log).await {
        Ok(bytes) => {
            let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(_) => String::new(),
    }
}

impl AwsProvider {
    /// Runs Packer; returns the new AMI, tagged. The caller ledgers `token` and terminates
    /// whatever still carries it afterwards.
    pub(super) async fn packer_build(
        &self,
        req: &BuildRequest<'_>,
        template: &RelPath,
        vars: &std::collections::BTreeMap<String, String>,
        token: &str,
    ) -> Result<Built, ProviderError> {
        let image = &req.image.name;
        let Origin::Artifact(source) = &req.origin else {
            return Err(AwsError::Packer {
                image: image.clone(),
                reason: "its origin is a local path; packer builds start from an AMI (an aws source or an aws image)".into(),
            }
            .into());
        };
        let command = packer_command(template, vars, source, image, req.version);
        append_log(req.job.log, &format!("imgraph: {command}"));
        let mut context = self.child_env();
        context.extend([
            ("IMGRAPH_IMAGE".to_string(), image.clone()),
            ("IMGRAPH_VERSION".to_string(), req.version.to_string()),
            ("IMGRAPH_KEY".to_string(), req.key.to_string()),
            ("IMGRAPH_SOURCE_IMAGE".to_string(), source.clone()),
            ("IMGRAPH_RUN".to_string(), run_tag(req.job.ledger.run)),
            ("IMGRAPH_TOKEN".to_string(), token.to_string()),
            // Packer otherwise asks HashiCorp's server for updates on every run.
            ("CHECKPOINT_DISABLE".to_string(), "1".to_string()),
        ]);
        context.extend(self.packer_env.iter().cloned());
        let mut extra = process::AWS_VARIABLES.to_vec();
        extra.extend(process::PACKER_VARIABLES);
        let spec = CommandSpec {
            command,
            cwd: req.job.project.root.clone(),
            env: process::command_env(
                process::Place::Host,
                &req.image.build_env().names(),
                &extra,
                context,
            ),
            timeout: None,
            // Packer cleans up (key pairs, security groups, instances) on SIGINT.
            stop_signal: Some(libc::SIGINT),
            grace: Some(PACKER_GRACE),
            recorder: Some(req.job.ledger.processes_of(req.node_id.as_str())),
            ..Default::default()
        };
        let offset = log_len(req.job.log);
        let outcome = process::run(&spec, req.job.log, req.job.cancel).await?;
        let output = log_since(req.job.log, offset).await;
        if !outcome.success() {
            let errors = parse_packer_errors(&output);
            let detail = match errors.last() {
                Some(last) => format!(": {last}"),
                None => String::new(),
            };
            return Err(AwsError::Packer {
                image: image.clone(),
                reason: format!("packer {}{detail}", outcome.describe()),
            }
            .into());
        }
        let Some(ami) = parse_packer_artifact(&output, self.region.as_deref()) else {
            return Err(AwsError::Packer {
                image: image.clone(),
                reason: "packer succeeded but printed no AMI artifact (`artifact,0,id,REGION:ami-...`); does the template use an amazon builder?".into(),
            }
            .into());
        };
        append_log(req.job.log, &format!("imgraph: packer built {ami}"));
        let tags = TagSet::for_image(req.image, req.version, req.key);
        self.tag(&ami, &tags.pairs()).await?;
        Ok(Built { artifact_id: ami })
    }
}

/// The `imgraph:run` tag value of a run.
pub(super) fn run_tag(run: Option<i64>) -> String {
    run.map(|r| r.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const OUTPUT: &str = "\
imgraph: building web 1.0.0
1795706498,,ui,say,==> amazon-ebs: Creating AMI probe-1.0.0 from instance i-9e73
1795706498,amazon-ebs,artifact-count,1
1795706498,amazon-ebs,artifact,0,builder-id,mitchellh.amazonebs
1795706498,amazon-ebs,artifact,0,id,us-east-1:ami-e469435682e8d47fa
1795706498,amazon-ebs,artifact,0,string,AMIs were created:\\nus-east-1: ami-e469435682e8d47fa\\n
1795706498,amazon-ebs,artifact,0,end
";

    #[test]
    fn reads_the_ami_from_the_artifact_id_line() {
        assert_eq!(
            parse_packer_artifact(OUTPUT, Some("us-east-1")).as_deref(),
            Some("ami-e469435682e8d47fa")
        );
        assert_eq!(
            parse_packer_artifact(OUTPUT, None).as_deref(),
            Some("ami-e469435682e8d47fa")
        );
    }

    #[test]
    fn picks_the_ami_of_the_provider_region_when_packer_copied_it() {
        let out = "1,amazon-ebs,artifact,0,id,eu-west-1:ami-111%!(PACKER_COMMA)us-east-1:ami-222\n";
        assert_eq!(
            parse_packer_artifact(out, Some("us-east-1")).as_deref(),
            Some("ami-222")
        );
        assert_eq!(
            parse_packer_artifact(out, Some("ap-south-1")).as_deref(),
            Some("ami-111")
        );
    }

    #[test]
    fn no_artifact_line_means_no_ami() {
        assert_eq!(
            parse_packer_artifact("1,,ui,say,nothing built\n", None),
            None
        );
        // A non-AMI artifact (another builder) is not taken for one.
        assert_eq!(
            parse_packer_artifact("1,docker,artifact,0,id,sha256:abc\n", None),
            None
        );
        assert_eq!(parse_packer_artifact("", None), None);
    }

    #[test]
    fn reads_packer_errors_unescaped() {
        let out = "1,,ui,error,Build 'amazon-ebs' errored after 1 second: Error querying AMI: \
                   InvalidAMIID.NotFound%!(PACKER_COMMA) no such image\\n\n1,,ui,say,done\n";
        assert_eq!(
            parse_packer_errors(out),
            vec!["Build 'amazon-ebs' errored after 1 second: Error querying AMI: InvalidAMIID.NotFound, no such image"]
        );
    }

    #[test]
    fn the_command_passes_user_vars_then_imgraphs_and_quotes_them() {
        let mut vars = BTreeMap::new();
        vars.insert("instance_type".to_string(), "t3.small".to_string());
        vars.insert("motd".to_string(), "it's here".to_string());
        let cmd = packer_command(
            &RelPath("packer/base.json".into()),
            &vars,
            "ami-1",
            "web",
            "1.0.2",
        );
        assert_eq!(
            cmd,
            "packer build -machine-readable -var 'instance_type=t3.small' -var 'motd=it'\\''s here' \
             -var 'source_image=ami-1' -var 'image_name=web' -var 'image_version=1.0.2' 'packer/base.json'"
        );
    }
}
