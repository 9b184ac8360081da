//! `imgraph state push` and `state pull`: moving a project's local history to its shared
//! state, and making a local mirror of the shared state.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::state::{LeaseHolder, Pushed, State};

use super::{backend_of, Workspace};

/// What `state pull` left in the local file.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub path: PathBuf,
    pub journal: String,
    pub position: u64,
    pub runs: usize,
    pub versions: usize,
}

/// `imgraph state push`: under the shared lease, uploads the local state file's history
/// as the first entry of the shared journal (refused unless that journal is empty; see
/// [`State::push`]).
pub fn push_state(path: &Path) -> Result<Pushed> {
    let project = crate::config::load(path)?;
    let Some((journal, leases)) = crate::state::connect_shared(&backend_of(&project))? else {
        return Err(Error::NotShared {
            config: project.config_path.clone(),
        });
    };
    if std::fs::symlink_metadata(&project.state_path).is_err() {
        return Err(Error::NothingToPush {
            path: project.state_path.clone(),
        });
    }
    let local = State::open(&project.state_path)?;
    let me = LeaseHolder::this_process("imgraph state push");
    let lease = super::lock::take(&leases, &me)??;
    let pushed = local.push(journal.as_ref());
    lease.release()?;
    Ok(pushed?)
}

/// `imgraph state pull`: opens the shared state with the local file as its mirror
/// (creating it), which applies every record it has not seen.
pub fn pull_state(path: &Path) -> Result<Pulled> {
    let project = crate::config::load(path)?;
    let Some(shared) = &project.shared_state else {
        return Err(Error::NotShared {
            config: project.config_path.clone(),
        });
    };
    let journal = shared.location.to_string();
    let graph = crate::graph::StageGraph::build(&project)?;
    let ws = Workspace::with_state(project, graph, crate::state::Access::ReadWrite)?;
    Ok(Pulled {
        path: ws.project.state_path.clone(),
        journal,
        position: ws.state.journal_position().unwrap_or(0),
        runs: ws.state.runs(usize::MAX)?.len(),
        versions: ws.state.images(None)?.len(),
    })
}
