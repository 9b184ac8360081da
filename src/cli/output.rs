//! How the binary talks to the person or CI system running it: log levels (`-v`, `-q`,
//! `RUST_LOG`), colour (`--color`, `NO_COLOR`, `CLICOLOR_FORCE`, terminals), and how a
//! failed command's error is shown (a miette report, plus CI annotations under GitHub
//! Actions or GitLab CI).

use std::io::IsTerminal;

use clap::ValueEnum;
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

use crate::report::ci::CiSystem;
use crate::report::Palette;

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// Colour on a terminal, unless `NO_COLOR` is set (`CLICOLOR_FORCE` forces it).
    Auto,
    Always,
    Never,
}

/// Makes `--color` the rule for every later colour decision (stdout, stderr, progress).
/// `auto` leaves it to the environment and the terminal.
pub fn apply_color(when: ColorWhen) {
    let choice = match when {
        ColorWhen::Auto => anstream::ColorChoice::Auto,
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
    };
    choice.write_global();
}

/// Log lines on stderr: warnings by default, `-v` info, `-vv` debug, `-vvv` trace, `-q`
/// errors only. `RUST_LOG` (tracing's filter syntax) overrides all of these.
pub fn init_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(Palette::for_stderr().color)
        .with_target(false)
        .try_init();
}

/// Renders a command's error for stderr: miette's graphical report (unicode, colour) on
/// a terminal; plain ASCII text without escape codes in logs and pipes, still with the
/// file, line, column and labelled source lines.
pub fn render_error(err: &dyn Diagnostic) -> String {
    let color = Palette::for_stderr().color;
    let terminal = std::io::stderr().is_terminal();
    let theme = match (terminal, color) {
        (_, true) => GraphicalTheme::unicode(),
        (true, false) => GraphicalTheme::unicode_nocolor(),
        (false, false) => GraphicalTheme::none(),
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_links(false);
    let mut out = String::new();
    match handler.render_report(&mut out, err) {
        Ok(()) => out,
        Err(_) => format!("error: {err}\n"),
    }
}

/// Prints `err` on stderr, and again as annotations when a CI system is detected.
pub fn report_error(err: &crate::error::Error) {
    eprint!("{}", render_error(err));
    if let Some(ci) = CiSystem::detect() {
        eprint!("{}", crate::report::ci::error_annotations(ci, err));
    }
}
