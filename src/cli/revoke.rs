//! `imgraph revoke IMAGE@VERSION --reason …` and `--undo`.

use super::{runtime, Cli, LockWait};
use crate::error::{Error, Result};
use crate::exit;
use crate::workspace::Workspace;

#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// The version to revoke, as IMAGE@VERSION (`base@1.0.1`).
    #[arg(value_name = "IMAGE@VERSION")]
    pub target: String,
    /// Why it is revoked (kept in the state, the local registry and the AMI's tags).
    #[arg(long, required_unless_present = "undo", conflicts_with = "undo")]
    pub reason: Option<String>,
    /// Restore the version, and the versions revoked because of it, to the status they had.
    #[arg(long)]
    pub undo: bool,
    #[command(flatten)]
    pub lock: LockWait,
}

pub(super) fn revoke(cli: &Cli, args: &RevokeArgs) -> Result<i32> {
    let (image, version) = args
        .target
        .rsplit_once('@')
        .filter(|(i, v)| !i.is_empty() && !v.is_empty())
        .ok_or_else(|| Error::VersionName {
            target: args.target.clone(),
        })?;
    let ws = Workspace::open(&cli.dir)?;
    let lease = ws.lock("revoke", args.lock.lock_timeout, &Default::default())?;
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let providers = ws.providers().await?;
            ws.revoke(&providers, image, version, args.reason.as_deref())
                .await
        })
    });
    lease.release()?;
    let changed = result?;
    for rec in &changed {
        let line = match &rec.version.revoked_reason {
            Some(reason) => format!(
                "revoked {} {}: {reason}",
                rec.version.image, rec.version.version
            ),
            None => format!(
                "restored {} {} ({})",
                rec.version.image,
                rec.version.version,
                rec.version.status.as_str()
            ),
        };
        crate::report::outln(&line);
    }
    if args.undo {
        crate::report::outln(&format!(
            "{} {} restored.",
            changed.len(),
            crate::report::plan::plural(changed.len(), "version", "versions")
        ));
    } else {
        crate::report::outln(&format!(
            "{} {} revoked: `imgraph plan` shows the rebuilds and deliveries that replace {}.",
            changed.len(),
            crate::report::plan::plural(changed.len(), "version", "versions"),
            if changed.len() == 1 { "it" } else { "them" }
        ));
    }
    Ok(exit::OK)
}
