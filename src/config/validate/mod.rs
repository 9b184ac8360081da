//! From raw KDL nodes to the validated [`Project`].
//!
//! Validation is best effort: each stanza is checked as far as it makes sense, errors go
//! to [`Diags`], and a project is only returned when there were none. Names are collected
//! before bodies are checked, so `from`, `after` and `deliver` may point forward in the
//! file, and an image whose body has errors can still be referred to without a second,
//! misleading "unknown image" error. When a name is defined twice, the first definition is
//! the one others resolve against.
//!
//! One file per concept, each an `impl V` block over the shared validator state [`V`]:
//! [`shape`] holds the checks every stanza shares (unknown names with "did you mean",
//! missing and extra arguments, wrong value types, repeated nodes) and [`keywords`] the
//! words of every keyword choice, parsed into the model's enums (never list positions);
//! [`project`], [`providers`], [`remote`] (the shared state and store on S3), [`names`],
//! [`sources`], [`images`], [`builds`], [`inputs`] and [`environments`] check their stanzas; [`cycles`] reports loops among images and
//! environments.

mod builds;
pub(crate) mod cycles;
mod environments;
mod images;
mod inputs;
mod keywords;
mod names;
mod project;
mod providers;
mod remote;
mod retain;
mod shape;
mod sources;

use std::collections::HashMap;
use std::path::PathBuf;

use miette::SourceSpan;

use super::diag::Diags;
use super::model::{Build, EnvNames, Environment, Image, Network, Project};
use super::paths::Paths;
use super::raw::Node;
use project::own_folders_in;

const TOP_LEVEL: &[&str] = &[
    "imgraph",
    "state",
    "provider",
    "source",
    "image",
    "environment",
    "retain",
];
/// Children that name the caller's variables a command may see.
const ENV_NODES: [&str; 2] = ["env", "pass-env"];

const DEFAULT_STATE: &str = ".imgraph/state.db";

/// What the loader knows besides the nodes.
pub(crate) struct Context {
    /// Canonical project folder.
    pub root: PathBuf,
    pub config_path: PathBuf,
    pub config_text: String,
}

/// Builds the project, or returns `None` when `diags` holds at least one error.
pub(crate) fn project(nodes: &[Node], cx: Context, diags: &mut Diags) -> Option<Project> {
    let mut v = V {
        diags,
        paths: Paths::new(cx.root.clone()),
        names: HashMap::new(),
        name_order: Vec::new(),
        environments: HashMap::new(),
        environment_order: Vec::new(),
        providers: Vec::new(),
        providers_unclear: false,
        own: Vec::new(),
    };
    let top = v.known(nodes, TOP_LEVEL, "at the top level");

    if let Some(node) = v.single(&top, "imgraph", "in this file") {
        v.imgraph(node);
    }
    let (state_path, shared_state) = match v.single(&top, "state", "in this file") {
        Some(node) => v.state(node),
        None => (None, None),
    };
    let state_path = state_path.unwrap_or_else(|| cx.root.join(DEFAULT_STATE));

    let retain = match v.single(&top, "retain", "in this file") {
        Some(node) => v.retain(node),
        None => None,
    };
    let providers = v.providers(&top);
    v.own = own_folders_in(&cx.root, &state_path, &providers);
    v.declare_names(&top);
    v.declare_environments(&top);

    let mut sources = Vec::new();
    let mut drafts = Vec::new();
    for node in &top {
        match node.name.as_str() {
            "source" => sources.extend(v.source(node)),
            "image" => drafts.push(v.image(node)),
            _ => {}
        }
    }
    v.image_cycles(&drafts);
    v.imgraph_sources_build_locally(&sources, &drafts);

    let mut envs = Vec::new();
    for node in top.iter().filter(|n| n.name == "environment") {
        envs.push(v.environment(node));
    }
    v.environment_cycles(&envs);
    v.delivery_order(&envs);

    if !v.diags.is_empty() {
        return None;
    }
    let images: Vec<Image> = drafts.into_iter().filter_map(|d| d.image).collect();
    Some(Project {
        root: cx.root,
        config_path: cx.config_path,
        config_text: cx.config_text,
        state_path,
        shared_state,
        providers,
        sources,
        image_index: images
            .iter()
            .enumerate()
            .map(|(i, image)| (image.name.clone(), i))
            .collect(),
        images,
        environments: envs.into_iter().filter_map(|e| e.environment).collect(),
        retain,
    })
}

/// A string value with where it was written.
#[derive(Debug, Clone)]
struct Str {
    value: String,
    span: SourceSpan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameKind {
    Source,
    Image,
}

/// A checked `build` node.
struct BuildDraft {
    build: Build,
    /// The builder name as written.
    builder: Str,
    network: Network,
    env: EnvNames,
}

/// What cross-image checks need from an image, even one whose body had errors.
struct ImageDraft {
    name: Option<Str>,
    /// The image it is built from, and the span of that name.
    from_image: Option<Str>,
    image: Option<Image>,
}

/// What cross-environment checks need from an environment.
struct EnvDraft {
    name: Option<Str>,
    /// Only names of existing environments.
    after: Vec<Str>,
    /// Only names of existing images.
    deliveries: Vec<Str>,
    environment: Option<Environment>,
}

struct V<'d> {
    diags: &'d mut Diags,
    paths: Paths,
    /// Sources and images share one namespace: `from` names either.
    names: HashMap<String, (NameKind, SourceSpan)>,
    name_order: Vec<String>,
    environments: HashMap<String, SourceSpan>,
    environment_order: Vec<String>,
    /// Declared provider names (or the implicit `local`).
    providers: Vec<String>,
    /// A provider declaration has no valid name (already reported): image provider errors
    /// would only repeat it.
    providers_unclear: bool,
    /// imgraph's own folders inside the project, project-relative, with what each is.
    own: Vec<(String, &'static str)>,
}
