//! Signals during long commands: SIGINT (Ctrl-C), SIGTERM (how CI systems cancel a job)
//! and SIGHUP (a closed terminal or SSH session) all ask for the same clean stop. The
//! first one cancels the run's token: the executor starts nothing new, kills the process
//! groups of running commands, lets providers destroy their instances and records the
//! run as cancelled, and the command exits 130. A second signal, of any of the three,
//! exits at once (what is left behind is in the ledger, for the next run or `imgraph gc`).

use std::io::Write as _;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::exit;

/// Starts watching for SIGINT, SIGTERM and SIGHUP on the current tokio runtime; the first
/// cancels `cancel`, the second exits the process at once with [`exit::INTERRUPTED`] (see [`exit::code`]).
pub fn watch(cancel: CancellationToken) -> Result<()> {
    let mut streams = [
        listen(SignalKind::interrupt(), "SIGINT")?,
        listen(SignalKind::terminate(), "SIGTERM")?,
        listen(SignalKind::hangup(), "SIGHUP")?,
    ];
    tokio::spawn(async move {
        let name = next(&mut streams).await;
        // Cancel first: writing to a terminal that hung up may fail, and must not matter.
        cancel.cancel();
        let _ = writeln!(
            std::io::stderr(),
            "imgraph: stopping on {name}: killing running work and cleaning up (a second signal exits at once)"
        );
        next(&mut streams).await;
        std::process::exit(exit::code(exit::Ended::SignalledTwice));
    });
    Ok(())
}

fn listen(kind: SignalKind, name: &'static str) -> Result<(Signal, &'static str)> {
    let stream = signal(kind).map_err(|source| Error::Io {
        what: format!("failed to listen for {name}"),
        path: Default::default(),
        source,
    })?;
    Ok((stream, name))
}

/// Waits for the next of the signals and names it.
async fn next(streams: &mut [(Signal, &'static str); 3]) -> &'static str {
    let [(int, a), (term, b), (hup, c)] = streams;
    tokio::select! {
        _ = int.recv() => *a,
        _ = term.recv() => *b,
        _ = hup.recv() => *c,
    }
}
