//! Config: `imgraph.kdl` → spanned raw tree → validated [`model::Project`].
//!
//! Loading runs in three steps. [`raw`] parses the KDL 2.0 text with the `kdl` crate and
//! keeps, for every node, argument and property, the byte span it came from. `validate`
//! then checks the shape of each stanza, resolves every name (`from`, `after`, `deliver`,
//! `provider`), parses durations and versions, and checks every path against the project
//! folder and the disk. Last, cross-stanza checks look for cycles and for deliveries out of
//! order.
//!
//! Every problem becomes a [`ConfigDiagnostic`] pointing at its span, and validation goes
//! on after an error, so one run reports all of them (as miette `related` diagnostics of
//! one [`ConfigError`]). The price is that a stanza with an error is checked with care not
//! to produce follow-on errors: names are collected before bodies are checked, and
//! references resolve against names, not against stanzas that validated cleanly.
//!
//! The first step is cached for projects read from disk: the raw tree of a text that loaded
//! cleanly is kept in `.imgraph/config.cache`, keyed by the text's digest (see [`cache`]),
//! so an unchanged config is not parsed again. Validation always runs.
//!
//! Paths are checked when the config is loaded, so a missing file is a config error with a
//! span rather than a hashing error later. Globs are checked to match at least one file;
//! that walk starts at the glob's literal folder and stops at the first match.

mod cache;
mod diag;
pub mod model;
mod paths;
mod raw;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

pub use cache::CACHE_FILE;
pub use diag::{did_you_mean, ConfigDiagnostic};
pub use validate::cycles::{cycle_names, find_cycles};

/// The file name looked up in a project folder.
pub const CONFIG_FILE: &str = "imgraph.kdl";

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ConfigError {
    /// The project folder (`-C`) is not there.
    #[error("failed to open the project: folder {} does not exist", path.display())]
    #[diagnostic(
        code(imgraph::config::no_folder),
        help("pass -C with the folder that holds imgraph.kdl; `imgraph init -C DIR` writes a new project")
    )]
    NoFolder { path: PathBuf },
    /// The file (or the project folder) could not be read.
    #[error("failed to read config file {}", path.display())]
    #[diagnostic(
        code(imgraph::config::read),
        help(
            "run imgraph in a project folder or pass -C DIR; `imgraph init` writes a new project"
        )
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read, and holds errors: all of them, in file order.
    #[error("failed to load {file}: {}", error_count(diagnostics.len()))]
    #[diagnostic(code(imgraph::config::invalid))]
    Invalid {
        file: String,
        #[related]
        diagnostics: Vec<ConfigDiagnostic>,
    },
}

impl ConfigError {
    /// The diagnostics of an invalid config (none for a read error).
    pub fn diagnostics(&self) -> &[ConfigDiagnostic] {
        match self {
            ConfigError::Read { .. } | ConfigError::NoFolder { .. } => &[],
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

fn error_count(n: usize) -> String {
    if n == 1 {
        "1 error".to_owned()
    } else {
        format!("{n} errors")
    }
}

/// Loads a project: `path` is a project folder (then `<path>/imgraph.kdl`) or a `.kdl` file.
pub fn load(path: &Path) -> Result<model::Project, ConfigError> {
    // A path that is neither a folder nor a `.kdl` file was meant as a project folder: the
    // error then names the file that was looked for.
    let is_kdl = path.extension().is_some_and(|e| e == "kdl");
    if !is_kdl && !path.exists() {
        return Err(ConfigError::NoFolder {
            path: path.to_path_buf(),
        });
    }
    let file = config_file(path);
    let text = read_config(&file)?;
    let folder = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let root = canonical(&folder)?;
    let config_path = root.join(file.file_name().unwrap_or(CONFIG_FILE.as_ref()));
    load_text(
        root,
        config_path,
        &display_name(&file),
        text,
        Cache::Project,
    )
}

/// The largest config file imgraph reads. Real ones are a few kilobytes; this keeps a
/// wrong file (a log, a disk image) from being read into memory whole.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

fn read_config(file: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_err = |source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    };
    // Looked at before opening: opening a FIFO would wait for a writer forever.
    let meta = std::fs::metadata(file).map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file",
        )));
    }
    let f = std::fs::File::open(file).map_err(read_err)?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "it is larger than {} MiB, far more than any config needs",
                MAX_CONFIG_BYTES >> 20
            ),
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })
}

/// The config file `path` names: `path` itself when it is a `.kdl` file, else
/// `path/imgraph.kdl`.
fn config_file(path: &Path) -> PathBuf {
    let is_kdl = path.extension().is_some_and(|e| e == "kdl");
    if path.is_dir() || (!is_kdl && !path.exists()) {
        path.join(CONFIG_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The config file `path` names, as the user gave it (`examples/quickstart/imgraph.kdl`),
/// for messages.
pub fn shown_config_file(path: &Path) -> String {
    display_name(&config_file(path))
}

/// Parses and validates `text` as the config of the project folder `root`; `file_name` is
/// what diagnostics call the file.
pub fn load_str(root: &Path, file_name: &str, text: &str) -> Result<model::Project, ConfigError> {
    let root = canonical(root)?;
    let named = Path::new(file_name);
    let config_path = if named.is_absolute() {
        named.to_path_buf()
    } else {
        root.join(named.file_name().unwrap_or(CONFIG_FILE.as_ref()))
    };
    load_text(root, config_path, file_name, text.to_owned(), Cache::None)
}

/// Whether a load uses the parse cache (see [`cache`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// The project's `.imgraph/config.cache`: a config read from a project folder.
    Project,
    /// No cache: a text given by the caller.
    None,
}

fn load_text(
    root: PathBuf,
    config_path: PathBuf,
    file_name: &str,
    text: String,
    cache: Cache,
) -> Result<model::Project, ConfigError> {
    let shared = Arc::new(text);
    let mut diags = diag::Diags::new(file_name, Arc::clone(&shared));
    let cached = match cache {
        Cache::Project => cache::read(&root, &shared),
        Cache::None => None,
    };
    let hit = cached.is_some();
    let nodes = cached.or_else(|| raw::parse(&shared, &mut diags));
    let cache_root = root.clone();
    let project = nodes.as_ref().and_then(|nodes| {
        let cx = validate::Context {
            root,
            config_path,
            config_text: shared.as_ref().clone(),
        };
        validate::project(nodes, cx, &mut diags)
    });
    match (project, nodes) {
        (Some(project), Some(nodes)) if diags.is_empty() => {
            // Only a config that loaded cleanly is kept: a bad one changes nothing.
            if cache == Cache::Project && !hit {
                cache::write(&cache_root, &shared, &nodes);
            }
            Ok(project)
        }
        _ => Err(ConfigError::Invalid {
            file: file_name.to_owned(),
            diagnostics: diags.into_sorted(),
        }),
    }
}

fn canonical(folder: &Path) -> Result<PathBuf, ConfigError> {
    folder.canonicalize().map_err(|source| ConfigError::Read {
        path: folder.to_path_buf(),
        source,
    })
}

/// The config path as the user gave it, without a leading `./`, with `/` separators.
fn display_name(file: &Path) -> String {
    let shown = file.to_string_lossy().replace('\\', "/");
    let mut rest = shown.as_str();
    while let Some(stripped) = rest.strip_prefix("./") {
        rest = stripped;
    }
    rest.to_owned()
}

/// Renders a diagnostic as plain text: no colour, unicode drawing, 100 columns.
pub fn render_plain(diag: &dyn Diagnostic) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    match handler.render_report(&mut out, diag) {
        Ok(()) => out,
        // Rendering only fails on spans outside the text, which the collector prevents;
        // the message alone is still worth showing.
        Err(_) => format!("{diag}\n"),
    }
}

#[cfg(test)]
mod tests;
