//! From raw KDL nodes to the validated [`Project`].
//!
//! Validation is best effort: each stanza is checked as far as it makes sense, errors go
//! to [`Diags`], and a project is only returned when there were none. Names are collected
//! before bodies are checked, so `from`, `after` and `deliver` may point forward in the
//! file, and an image whose body has errors can still be referred to without a second,
//! misleading "unknown image" error. When a name is defined twice, the first definition is
//! the one others resolve against.
//!
//! A handful of small helpers ([`V::children`], [`V::props`], [`V::args`], [`V::single`])
//! carry the common checks and their messages (unknown names with "did you mean", missing
//! and extra arguments, wrong value types, repeated nodes), so each stanza reads as the
//! shape of the language.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::SourceSpan;

use super::diag::{did_you_mean, quoted_list, suggestion, Diags};
use super::model::{
    Build, Delivery, EnvNames, Environment, FromRef, Image, Input, InputKind, InstanceSettings,
    Network, ProbePlace, Project, ProviderDef, ProviderKind, Sandbox, Source, SourceKind, Step,
    TestSuite, Trigger,
};
use super::paths::{Expect, Paths};
use super::raw::{Node, Scalar};

const TOP_LEVEL: &[&str] = &[
    "imgraph",
    "state",
    "provider",
    "source",
    "image",
    "environment",
];
const IMAGE_CHILDREN: &[&str] = &[
    "provider", "from", "version", "max-age", "build", "input", "packages", "probe", "test",
    "tags", "instance", "env", "pass-env",
];
const PROVIDERS: &[&str] = &["local", "aws"];
const BUILDERS: &[&str] = &["rootfs", "packer", "ec2"];
const SANDBOXES: &[&str] = &["none", "bwrap"];
const TRIGGERS: &[&str] = &["immediate", "rollup"];
const NETWORKS: &[&str] = &["host", "none"];
const PROBE_PLACES: &[&str] = &["project", "image"];
/// Children that name the caller's variables a command may see.
const ENV_NODES: [&str; 2] = ["env", "pass-env"];
const SOURCE_ARCHIVES: &[&str] = &[".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"];

const DEFAULT_STATE: &str = ".imgraph/state.db";
const DEFAULT_STORE: &str = ".imgraph/images";
const DEFAULT_VERSION: &str = "1.0";
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(600);
const DURATION_HELP: &str = "write a number and a unit, like \"7d\", \"12h\" or \"30m\"";

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
    let state_path = match v.single(&top, "state", "in this file") {
        Some(node) => v.state(node),
        None => None,
    }
    .unwrap_or_else(|| cx.root.join(DEFAULT_STATE));

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

    let mut envs = Vec::new();
    for node in top.iter().filter(|n| n.name == "environment") {
        envs.push(v.environment(node));
    }
    v.environment_cycles(&envs);
    v.delivery_order(&envs);

    if !v.diags.is_empty() {
        return None;
    }
    Some(Project {
        root: cx.root,
        config_path: cx.config_path,
        config_text: cx.config_text,
        state_path,
        providers,
        sources,
        images: drafts.into_iter().filter_map(|d| d.image).collect(),
        environments: envs.into_iter().filter_map(|e| e.environment).collect(),
    })
}

/// imgraph's own folders (see [`super::model::own_folders`]) that lie inside the project,
/// project-relative, with what each is; the project folder itself stands for "every path".
fn own_folders_in(
    root: &Path,
    state_path: &Path,
    providers: &[ProviderDef],
) -> Vec<(String, &'static str)> {
    let stores: Vec<PathBuf> = providers
        .iter()
        .filter_map(|p| match &p.kind {
            ProviderKind::Local { store, .. } => Some(store.clone()),
            ProviderKind::Aws { .. } => None,
        })
        .collect();
    let folders = super::model::own_folders(state_path, stores.iter().cloned());
    let kinds = ["state folder", "logs folder", "staging folder"];
    folders
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let rel = f.strip_prefix(root).ok()?.to_str()?.to_owned();
            Some((rel, kinds.get(i).copied().unwrap_or("image store")))
        })
        .collect()
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

// ---------------------------------------------------------------------------------------
// Generic helpers: the shape of nodes.
// ---------------------------------------------------------------------------------------

impl V<'_> {
    /// The nodes whose names are in `allowed`; the others are reported as unknown.
    fn known<'n>(&mut self, nodes: &'n [Node], allowed: &[&str], place: &str) -> Vec<&'n Node> {
        let mut known = Vec::new();
        for node in nodes {
            if allowed.contains(&node.name.as_str()) {
                known.push(node);
            } else {
                let help = suggestion(&node.name, allowed, "expected one of");
                self.diags
                    .error(
                        "unknown_node",
                        node.name_span,
                        format!("unknown node `{}` {place}", node.name),
                        "unknown node",
                    )
                    .maybe_help(help);
            }
        }
        known
    }

    /// The children of `node` whose names are in `allowed`.
    fn children<'n>(&mut self, node: &'n Node, allowed: &[&str], place: &str) -> Vec<&'n Node> {
        self.known(node.children(), allowed, place)
    }

    /// Reports properties not in `allowed`, and properties given twice.
    fn props(&mut self, node: &Node, allowed: &[&str]) {
        for (i, prop) in node.props.iter().enumerate() {
            if let Some(first) = node.props[..i].iter().find(|p| p.name == prop.name) {
                self.diags
                    .error(
                        "duplicate_property",
                        prop.name_span,
                        format!("property `{}` is given twice on `{}`", prop.name, node.name),
                        "given again here",
                    )
                    .label(first.name_span, "first given here")
                    .help("give each property once");
                continue;
            }
            if allowed.contains(&prop.name.as_str()) {
                continue;
            }
            let help = if allowed.is_empty() {
                Some(format!("`{}` takes no properties", node.name))
            } else {
                suggestion(&prop.name, allowed, "expected")
            };
            self.diags
                .error(
                    "unknown_property",
                    prop.name_span,
                    format!("unknown property `{}` on `{}`", prop.name, node.name),
                    "unknown property",
                )
                .maybe_help(help);
        }
    }

    /// Reports a `{ }` block with nodes in it on a node that takes none.
    fn no_children(&mut self, node: &Node) {
        if !node.children().is_empty() {
            self.diags
                .error(
                    "unexpected_children",
                    node.children_span,
                    format!("`{}` takes no children", node.name),
                    "unexpected block",
                )
                .help("remove the `{ ... }` block");
        }
    }

    /// Exactly one string argument per entry of `what` (which describes each, e.g. "a
    /// name"). `usage` shows the correct form in help texts.
    fn args(&mut self, node: &Node, what: &[&str], usage: &str) -> Option<Vec<Str>> {
        self.args_as(node, what, usage, "a string")
    }

    /// A `NAME "KEY" "VALUE"` leaf (tag filters, packer vars): the key, with its span for
    /// duplicate checks, and the value.
    fn pair(&mut self, node: &Node, what: [&str; 2], usage: &str) -> Option<(Str, String)> {
        self.props(node, &[]);
        self.no_children(node);
        let mut kv = self.args(node, &what, usage)?;
        let value = kv.pop().map(|s| s.value).unwrap_or_default();
        let key = kv.pop()?;
        Some((key, value))
    }

    /// [`V::args`] with a custom description of the expected value for type errors.
    fn args_as(
        &mut self,
        node: &Node,
        what: &[&str],
        usage: &str,
        expected: &str,
    ) -> Option<Vec<Str>> {
        let mut ok = true;
        if let [first, rest @ ..] = node.args.get(what.len()..).unwrap_or(&[]) {
            let mut d = self
                .diags
                .error(
                    "unexpected_argument",
                    first.span,
                    format!(
                        "`{}` takes {}, found {}",
                        node.name,
                        count(what.len(), "argument"),
                        node.args.len()
                    ),
                    "unexpected argument",
                )
                .help(format!("write it as `{usage}`"));
            for extra in rest {
                d = d.label(extra.span, "unexpected argument");
            }
            ok = false;
        }
        let mut out = Vec::new();
        for (i, description) in what.iter().enumerate() {
            let Some(arg) = node.args.get(i) else {
                self.diags
                    .error(
                        "missing_argument",
                        node.head_span,
                        format!("`{}` is missing {description}", node.name),
                        format!("needs {description}"),
                    )
                    .help(format!("write it as `{usage}`"));
                return None;
            };
            match &arg.value {
                Scalar::String(s) => out.push(Str {
                    value: s.clone(),
                    span: arg.span,
                }),
                other => {
                    self.wrong_type(arg.span, expected, other, usage);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// The one string argument of a node.
    fn arg(&mut self, node: &Node, what: &str, usage: &str) -> Option<Str> {
        self.args(node, &[what], usage)?.pop()
    }

    /// A leaf node with exactly one string argument: no properties, no children.
    fn leaf(&mut self, node: &Node, what: &str, usage: &str) -> Option<Str> {
        self.leaf_as(node, what, usage, "a string")
    }

    fn leaf_as(&mut self, node: &Node, what: &str, usage: &str, expected: &str) -> Option<Str> {
        self.props(node, &[]);
        self.no_children(node);
        self.args_as(node, &[what], usage, expected)?.pop()
    }

    /// A string property; `None` when absent or not a string (which is reported).
    fn prop_str(&mut self, node: &Node, key: &str, usage: &str) -> Option<Str> {
        let prop = node.prop(key)?;
        match &prop.value.value {
            Scalar::String(s) => Some(Str {
                value: s.clone(),
                span: prop.value.span,
            }),
            other => {
                self.wrong_type(prop.value.span, "a string", other, usage);
                None
            }
        }
    }

    /// A string property that must be there.
    fn required_prop(&mut self, node: &Node, key: &str, usage: &str) -> Option<Str> {
        if node.prop(key).is_none() {
            self.diags
                .error(
                    "missing_property",
                    node.head_span,
                    format!("`{}` needs a `{key}` property", node.name),
                    format!("no `{key}=...`"),
                )
                .help(format!("write it as `{usage}`"));
            return None;
        }
        self.prop_str(node, key, usage)
    }

    fn wrong_type(&mut self, span: SourceSpan, expected: &str, found: &Scalar, usage: &str) {
        self.diags
            .error(
                "wrong_type",
                span,
                format!("expected {expected}, found {}", found.kind()),
                found.kind(),
            )
            .help(format!("write it as `{usage}` (with quotes)"));
    }

    /// The first node named `name`; further ones are reported as repeated.
    fn single<'n>(&mut self, nodes: &[&'n Node], name: &str, place: &str) -> Option<&'n Node> {
        let mut found = nodes.iter().copied().filter(|n| n.name == name);
        let first = found.next()?;
        for again in found {
            self.diags
                .error(
                    "duplicate_node",
                    again.name_span,
                    format!("`{name}` is given more than once {place}"),
                    "given again here",
                )
                .label(first.name_span, "first given here")
                .help(format!("keep only one `{name}`"));
        }
        Some(first)
    }

    fn missing_child(&mut self, node: &Node, owner: &str, child: &str, help: String) {
        // A misspelt `bulid` is already reported with "did you mean `build`?".
        let misspelt = node
            .children()
            .iter()
            .any(|k| k.name != child && did_you_mean(&k.name, [child]).is_some());
        if misspelt {
            return;
        }
        self.diags
            .error(
                "missing_node",
                node.head_span,
                format!("{owner} has no `{child}`"),
                format!("needs a `{child}`"),
            )
            .help(help);
    }

    /// One of `options`, or a reported error with "did you mean".
    fn choice(
        &mut self,
        s: &Str,
        code: &'static str,
        what: &str,
        options: &[&str],
    ) -> Option<usize> {
        if let Some(i) = options.iter().position(|o| *o == s.value) {
            return Some(i);
        }
        let help = suggestion(&s.value, options, &format!("a {what} is one of"));
        self.diags
            .error(
                code,
                s.span,
                format!("unknown {what} `{}`", s.value),
                format!("unknown {what}"),
            )
            .maybe_help(help);
        None
    }

    fn duration(&mut self, node: &Node, usage: &str) -> Option<Duration> {
        let s = self.leaf_as(
            node,
            "a duration",
            usage,
            &format!("a duration string like \"{}\"", example_of(usage)),
        )?;
        self.duration_value(&s, &node.name)
    }

    /// A duration string (`what` names it in the zero-length error).
    fn duration_value(&mut self, s: &Str, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) if d.is_zero() => {
                self.diags
                    .error(
                        "bad_duration",
                        s.span,
                        format!("`{what}` must be longer than zero"),
                        "zero duration",
                    )
                    .help(DURATION_HELP);
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.diags
                    .error(
                        "bad_duration",
                        s.span,
                        format!("invalid duration `{}`: {err}", s.value),
                        "not a duration",
                    )
                    .help(DURATION_HELP);
                None
            }
        }
    }

    /// A shell command argument; empty commands are refused.
    fn command(&mut self, node: &Node, usage: &str) -> Option<String> {
        let s = self.leaf(node, "a command", usage)?;
        self.nonempty_command(&s)
    }

    fn nonempty_command(&mut self, s: &Str) -> Option<String> {
        if s.value.trim().is_empty() {
            self.diags
                .error("empty_command", s.span, "command is empty", "empty command")
                .help("give a shell command to run with `sh -c`");
            return None;
        }
        Some(s.value.clone())
    }

    fn trigger(&mut self, node: &Node, default: Trigger, usage: &str) -> Trigger {
        let Some(s) = self.prop_str(node, "trigger", usage) else {
            return default;
        };
        match self.choice(&s, "unknown_value", "trigger", TRIGGERS) {
            Some(0) => Trigger::Immediate,
            Some(_) => Trigger::Rollup,
            None => default,
        }
    }

    /// Reports `name` when it was already seen in `seen` (same scope), else records it.
    fn unique(
        &mut self,
        seen: &mut HashMap<String, SourceSpan>,
        s: &Str,
        message: String,
        help: &str,
    ) -> bool {
        if let Some(first) = seen.get(&s.value) {
            self.diags
                .error("duplicate_name", s.span, message, "defined again here")
                .label(*first, "first defined here")
                .help(help);
            return false;
        }
        seen.insert(s.value.clone(), s.span);
        true
    }
}

// ---------------------------------------------------------------------------------------
// Top-level stanzas.
// ---------------------------------------------------------------------------------------

impl V<'_> {
    fn imgraph(&mut self, node: &Node) {
        self.props(node, &["version"]);
        self.no_children(node);
        let _ = self.args(node, &[], "imgraph version=1");
        let Some(prop) = node.prop("version") else {
            return;
        };
        match prop.value.value {
            Scalar::Integer(1) => {}
            Scalar::Integer(n) => {
                self.diags
                    .error(
                        "unsupported_version",
                        prop.value.span,
                        format!("config version {n} is not supported"),
                        "unsupported version",
                    )
                    .help(
                        "this imgraph reads config version 1; a newer file needs a newer imgraph",
                    );
            }
            ref other => {
                self.diags
                    .error(
                        "wrong_type",
                        prop.value.span,
                        format!("expected a version number, found {}", other.kind()),
                        other.kind(),
                    )
                    .help("write it as `imgraph version=1` (without quotes)");
            }
        }
    }

    /// False (with a diagnostic) when `path` (normalised, maybe a glob) holds one of
    /// imgraph's own folders or lies inside one: the state, logs, staging folders and the
    /// image store change with every run, and copying them into an image would copy the
    /// state (and a build's own staging folder) into itself.
    fn not_own(&mut self, path: &str, raw: &Str, what: &str) -> bool {
        let Some((own, kind, holds)) = self.own_clash(path) else {
            return true;
        };
        let (message, label) = if holds {
            (
                format!("{what} `{}` holds imgraph's {kind} `{own}`", raw.value),
                format!("holds `{own}`"),
            )
        } else {
            (
                format!("{what} `{}` is inside imgraph's {kind} `{own}`", raw.value),
                format!("inside `{own}`"),
            )
        };
        self.diags
            .error("own_folder", raw.span, message, label)
            .help("imgraph's own folders (state, logs, staging, image store) are never inputs nor copied into images: name the folders you mean (e.g. `input \"config\"`), or keep the state elsewhere in the project with `state path=\"...\"`");
        false
    }

    /// The first own folder `path` holds (`true`) or lies in (`false`).
    fn own_clash(&self, path: &str) -> Option<(String, &'static str, bool)> {
        let glob = super::paths::is_glob(path).then(|| {
            globset::GlobBuilder::new(path)
                .literal_separator(true)
                .build()
                .ok()
                .map(|g| g.compile_matcher())
        });
        for (own, kind) in &self.own {
            let holds = match &glob {
                // A glob takes a folder it matches whole: does it match the own folder
                // or a folder above it?
                Some(matcher) => {
                    let mut prefix = String::new();
                    own.split('/').any(|part| {
                        if !prefix.is_empty() {
                            prefix.push('/');
                        }
                        prefix.push_str(part);
                        matcher.as_ref().is_some_and(|m| m.is_match(&prefix))
                    })
                }
                None => {
                    path.is_empty()
                        || path == own
                        || own.strip_prefix(path).is_some_and(|r| r.starts_with('/'))
                }
            };
            if holds {
                return Some((own.clone(), kind, true));
            }
            if glob.is_none()
                && path
                    .strip_prefix(own.as_str())
                    .is_some_and(|r| r.starts_with('/'))
            {
                return Some((own.clone(), kind, false));
            }
        }
        None
    }

    fn state(&mut self, node: &Node) -> Option<PathBuf> {
        self.props(node, &["path"]);
        self.no_children(node);
        let usage = "state path=\".imgraph/state.db\"";
        let _ = self.args(node, &[], usage);
        let path = self.required_prop(node, "path", usage)?;
        if Path::new(&path.value).is_absolute() {
            let absolute = PathBuf::from(&path.value);
            if absolute.starts_with(&self.paths.root) && absolute != self.paths.root {
                return Some(absolute);
            }
            self.diags
                .error(
                    "state_outside",
                    path.span,
                    format!("state path `{}` is outside the project folder", path.value),
                    "outside the project",
                )
                .help("the state belongs to its project (its stat cache and logs are about these files): keep it inside the project folder, e.g. the default `.imgraph/state.db`");
            return None;
        }
        let rel = self
            .paths
            .relative(self.diags, &path.value, path.span, "state path")?;
        if rel.is_empty() {
            self.diags.error(
                "bad_value",
                path.span,
                "state path names the project folder itself",
                "not a file",
            );
            return None;
        }
        Some(self.paths.root.join(rel))
    }

    fn providers(&mut self, top: &[&Node]) -> Vec<ProviderDef> {
        let mut defs: Vec<ProviderDef> = Vec::new();
        let mut seen = HashMap::new();
        for node in top.iter().filter(|n| n.name == "provider") {
            let Some(def) = self.provider(node) else {
                continue;
            };
            let name = Str {
                value: def.name.clone(),
                span: def.span,
            };
            if self.unique(
                &mut seen,
                &name,
                format!("provider `{}` is declared twice", name.value),
                "declare each provider once",
            ) {
                defs.push(def);
            }
        }
        // Every declared provider counts for image checks, even one with errors inside.
        for node in top.iter().filter(|n| n.name == "provider") {
            match node.args.first().map(|a| &a.value) {
                Some(Scalar::String(s)) if PROVIDERS.contains(&s.as_str()) => {
                    if !self.providers.contains(s) {
                        self.providers.push(s.clone());
                    }
                }
                _ => self.providers_unclear = true,
            }
        }
        if top.iter().all(|n| n.name != "provider") {
            self.providers = vec!["local".to_owned()];
            defs.push(ProviderDef {
                name: "local".to_owned(),
                kind: ProviderKind::Local {
                    store: self.paths.root.join(DEFAULT_STORE),
                    sandbox: Sandbox::None,
                },
                span: SourceSpan::new(0.into(), 0),
            });
        }
        defs
    }

    fn provider(&mut self, node: &Node) -> Option<ProviderDef> {
        self.props(node, &[]);
        let name = self.arg(node, "a provider name", "provider \"local\" { ... }")?;
        let kind = match self.choice(&name, "unknown_provider", "provider", PROVIDERS)? {
            0 => {
                let place = "in provider `local`";
                let kids = self.children(node, &["store", "sandbox"], place);
                let store = match self.single(&kids, "store", place) {
                    Some(n) => self
                        .leaf(n, "a folder", "store \".imgraph/images\"")
                        .and_then(|s| {
                            self.paths
                                .maybe_existing(self.diags, &s.value, s.span, "image store")
                        }),
                    None => None,
                };
                let sandbox = match self.single(&kids, "sandbox", place) {
                    Some(n) => match self.leaf(n, "a sandbox kind", "sandbox \"none\"") {
                        Some(s) if s.value == "chroot" => {
                            self.diags
                                .error(
                                    "unsupported_sandbox",
                                    s.span,
                                    "sandbox `chroot` is not supported: a chroot is not a boundary (a step keeps every capability over the host)",
                                    "not a boundary",
                                )
                                .help("use sandbox \"bwrap\": steps and tests run inside the image without capabilities over the host, seeing only their inputs");
                            Sandbox::None
                        }
                        Some(s) => match self.choice(&s, "unknown_value", "sandbox", SANDBOXES) {
                            Some(1) => Sandbox::Bwrap,
                            _ => Sandbox::None,
                        },
                        None => Sandbox::None,
                    },
                    None => Sandbox::None,
                };
                ProviderKind::Local {
                    store: self
                        .paths
                        .root
                        .join(store.as_deref().unwrap_or(DEFAULT_STORE)),
                    sandbox,
                }
            }
            _ => {
                let place = "in provider `aws`";
                let kids = self.children(node, &["region", "profile", "endpoint"], place);
                let value = |v: &mut Self, key: &str, usage: &str| {
                    let n = v.single(&kids, key, place)?;
                    v.leaf(n, "a value", usage).map(|s| s.value)
                };
                let region = value(self, "region", "region \"eu-west-1\"");
                let profile = value(self, "profile", "profile \"NAME\"");
                let endpoint = match self.single(&kids, "endpoint", place) {
                    Some(n) => self.endpoint(n),
                    None => None,
                };
                ProviderKind::Aws {
                    region,
                    profile,
                    endpoint,
                }
            }
        };
        Some(ProviderDef {
            name: name.value,
            kind,
            span: name.span,
        })
    }

    fn endpoint(&mut self, node: &Node) -> Option<String> {
        let s = self.leaf(node, "a URL", "endpoint \"http://127.0.0.1:5055\"")?;
        if s.value.starts_with("http://") || s.value.starts_with("https://") {
            return Some(s.value);
        }
        self.diags
            .error(
                "bad_value",
                s.span,
                format!("endpoint `{}` is not an http(s) URL", s.value),
                "not a URL",
            )
            .help("write it as `endpoint \"http://127.0.0.1:5055\"`");
        None
    }

    /// Records every source and image name (first definition wins) and reports clashes.
    fn declare_names(&mut self, top: &[&Node]) {
        for node in top {
            let kind = match node.name.as_str() {
                "source" => NameKind::Source,
                "image" => NameKind::Image,
                _ => continue,
            };
            let Some(name) = first_string(node) else {
                continue;
            };
            // Reported, and still declared, so that references to it say nothing more.
            self.printable_name(&name, node.name.as_str());
            if let Some((first_kind, first_span)) = self.names.get(&name.value) {
                let what = |k: NameKind| match k {
                    NameKind::Source => "source",
                    NameKind::Image => "image",
                };
                let (message, help) = if *first_kind == kind {
                    (
                        format!("{} `{}` is defined twice", what(kind), name.value),
                        format!("each {} needs its own name; rename one", what(kind)),
                    )
                } else {
                    (
                        format!(
                            "{} `{}` has the same name as a {}",
                            what(kind),
                            name.value,
                            what(*first_kind)
                        ),
                        "sources and images share one set of names, so that `from` can name either; rename one".to_owned(),
                    )
                };
                self.diags
                    .error("duplicate_name", name.span, message, "defined again here")
                    .label(*first_span, "first defined here")
                    .help(help);
                continue;
            }
            self.names.insert(name.value.clone(), (kind, name.span));
            self.name_order.push(name.value);
        }
    }

    /// Names are printed on terminals and used in file names: a control character (an
    /// escape sequence, a newline) in one is refused.
    fn printable_name(&mut self, name: &Str, what: &str) {
        if !name.value.chars().any(char::is_control) {
            return;
        }
        self.diags
            .error(
                "control_character",
                name.span,
                format!(
                    "{what} name {:?} contains a control character",
                    name.value
                ),
                "control character in this name",
            )
            .help("names may hold letters, digits, punctuation and spaces, not escape sequences, tabs or newlines");
    }

    fn declare_environments(&mut self, top: &[&Node]) {
        let mut seen = HashMap::new();
        for node in top.iter().filter(|n| n.name == "environment") {
            let Some(name) = first_string(node) else {
                continue;
            };
            self.printable_name(&name, "environment");
            if self.unique(
                &mut seen,
                &name,
                format!("environment `{}` is defined twice", name.value),
                "each environment needs its own name; rename one",
            ) {
                self.environments.insert(name.value.clone(), name.span);
                self.environment_order.push(name.value);
            }
        }
    }

    fn names_of(&self, kind: Option<NameKind>) -> Vec<&str> {
        self.name_order
            .iter()
            .filter(|n| kind.is_none() || self.names.get(*n).map(|(k, _)| *k) == kind)
            .map(String::as_str)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Sources.
// ---------------------------------------------------------------------------------------

impl V<'_> {
    fn source(&mut self, node: &Node) -> Option<Source> {
        self.props(node, &[]);
        let name = self.arg(node, "a name", "source \"NAME\" { local \"PATH\" }");
        let owner = match &name {
            Some(n) => format!("source `{}`", n.value),
            None => "this source".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(node, &["local", "aws"], &place);
        let (origin, extra) = match kids.as_slice() {
            [] => {
                self.missing_child(
                    node,
                    &owner,
                    "local` or `aws",
                    "add `local \"bases/debian-12.tar.zst\"` (a tarball or folder in the project) or `aws owner=\"amazon\" name=\"PATTERN\"`".to_owned(),
                );
                return None;
            }
            [origin, extra @ ..] => (*origin, extra),
        };
        if let Some(second) = extra.first() {
            self.diags
                .error(
                    "duplicate_node",
                    second.name_span,
                    format!("{owner} has more than one origin"),
                    "second origin",
                )
                .label(origin.name_span, "first origin")
                .help("a source is either one `local` path or one `aws` image filter");
        }
        let kind = match origin.name.as_str() {
            "local" => self.local_source(origin),
            _ => self.aws_source(origin, &owner),
        }?;
        let name = name?;
        Some(Source {
            name: name.value,
            kind,
            span: name.span,
        })
    }

    fn local_source(&mut self, node: &Node) -> Option<SourceKind> {
        let s = self.leaf(
            node,
            "a tarball or folder",
            "local \"bases/debian-12.tar.zst\"",
        )?;
        let path = self.paths.existing(
            self.diags,
            &s.value,
            s.span,
            "source image",
            Expect::FileOrDir,
        )?;
        let is_dir = self.paths.root.join(path.as_str()).is_dir();
        if !is_dir
            && !SOURCE_ARCHIVES
                .iter()
                .any(|ext| path.as_str().ends_with(ext))
        {
            self.diags
                .error(
                    "source_format",
                    s.span,
                    format!("source image `{}` is not a tar archive or a folder", s.value),
                    "unsupported format",
                )
                .help("a local source is a .tar, .tar.gz, .tgz or .tar.zst file, or a folder holding a root file system");
            return None;
        }
        Some(SourceKind::Local { path })
    }

    fn aws_source(&mut self, node: &Node, owner: &str) -> Option<SourceKind> {
        let usage = "aws owner=\"amazon\" name=\"amzn2-ami-hvm-*\"";
        self.props(node, &["owner", "name"]);
        let _ = self.args(node, &[], usage);
        let kids = self.children(
            node,
            &["owner", "tag"],
            &format!("in the aws filter of {owner}"),
        );
        let mut owners = Vec::new();
        owners.extend(self.prop_str(node, "owner", usage).map(|s| s.value));
        let name = self.prop_str(node, "name", usage).map(|s| s.value);
        let mut tags = BTreeMap::new();
        let mut seen = HashMap::new();
        for kid in kids {
            if kid.name == "owner" {
                owners.extend(
                    self.leaf(kid, "an account id or alias", "owner \"amazon\"")
                        .map(|s| s.value),
                );
                continue;
            }
            let Some((key, value)) =
                self.pair(kid, ["a tag key", "a value"], "tag \"KEY\" \"VALUE\"")
            else {
                continue;
            };
            if self.unique(
                &mut seen,
                &key,
                format!("tag filter `{}` is given twice in {owner}", key.value),
                "give each tag key once",
            ) {
                tags.insert(key.value, value);
            }
        }
        let has_owner_node =
            node.prop("owner").is_some() || node.children().iter().any(|k| k.name == "owner");
        if !has_owner_node {
            self.diags
                .error(
                    "missing_property",
                    node.head_span,
                    format!("the aws filter of {owner} names no owner"),
                    "needs `owner=...`",
                )
                .help("write it as `aws owner=\"amazon\" name=\"PATTERN\"`; `owner=\"self\"` means your own account, more owners go in `owner \"ID\"` children");
            return None;
        }
        Some(SourceKind::Aws { owners, name, tags })
    }
}

// ---------------------------------------------------------------------------------------
// Images.
// ---------------------------------------------------------------------------------------

impl V<'_> {
    fn image(&mut self, node: &Node) -> ImageDraft {
        self.props(node, &[]);
        let name = self.arg(node, "a name", "image \"NAME\" { ... }");
        let owner = match &name {
            Some(n) => format!("image `{}`", n.value),
            None => "this image".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(node, IMAGE_CHILDREN, &place);

        let from = match self.single(&kids, "from", &place) {
            Some(n) => self.from(n),
            None => {
                self.missing_child(
                    node,
                    &owner,
                    "from",
                    "add `from \"NAME\"` with the source or image it is built from".to_owned(),
                );
                None
            }
        };
        let version = match self.single(&kids, "version", &place) {
            Some(n) => self.version(n),
            None => Some(DEFAULT_VERSION.to_owned()),
        };
        let max_age = match self.single(&kids, "max-age", &place) {
            Some(n) => self.duration(n, "max-age \"7d\""),
            None => None,
        };
        let build = match self.single(&kids, "build", &place) {
            Some(n) => self.build(n),
            None => {
                self.missing_child(
                    node,
                    &owner,
                    "build",
                    "add a build: `build \"rootfs\" { ... }`, `build \"packer\" template=\"FILE\"` or `build \"ec2\" { ... }`".to_owned(),
                );
                None
            }
        };
        let provider = self.image_provider(
            &kids,
            &place,
            &owner,
            build.as_ref().map(|b| (&b.build, &b.builder)),
        );
        let env = self.env_names(&kids, &place);

        let mut inputs = Vec::new();
        let mut tests = Vec::new();
        let mut test_names = HashMap::new();
        let mut probe_names = HashMap::new();
        for kid in &kids {
            match kid.name.as_str() {
                "input" => inputs.extend(self.input(kid)),
                "packages" => inputs.extend(self.packages(kid)),
                "probe" => inputs.extend(self.probe(kid, &mut probe_names, &place)),
                "test" => {
                    if let Some(t) = self.test(kid, &mut test_names, &place) {
                        tests.push(t);
                    }
                }
                _ => {}
            }
        }
        let tags = match self.single(&kids, "tags", &place) {
            Some(n) => self.tags(n, &owner),
            None => BTreeMap::new(),
        };
        let instance = match self.single(&kids, "instance", &place) {
            Some(n) => self.instance(n),
            None => InstanceSettings::default(),
        };

        let from_image = match &from {
            Some((FromRef::Image(upstream), span)) => Some(Str {
                value: upstream.clone(),
                span: *span,
            }),
            _ => None,
        };
        let image = match (&name, from, version, build, provider) {
            (Some(name), Some((from, _)), Some(version), Some(build), Some(provider)) => {
                Some(Image {
                    name: name.value.clone(),
                    provider,
                    from,
                    version,
                    max_age,
                    build: build.build,
                    build_network: build.network,
                    build_env: build.env,
                    env,
                    inputs,
                    tests,
                    tags,
                    instance,
                    span: name.span,
                })
            }
            _ => None,
        };
        ImageDraft {
            name,
            from_image,
            image,
        }
    }

    fn from(&mut self, node: &Node) -> Option<(FromRef, SourceSpan)> {
        let s = self.leaf(node, "the name of a source or image", "from \"debian-12\"")?;
        match self.names.get(&s.value) {
            Some((NameKind::Source, _)) => Some((FromRef::Source(s.value), s.span)),
            Some((NameKind::Image, _)) => Some((FromRef::Image(s.value), s.span)),
            None => {
                let help = match did_you_mean(&s.value, self.names_of(None)) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!(
                        "declare it with `source \"{0}\" {{ ... }}` or `image \"{0}\" {{ ... }}`",
                        s.value
                    ),
                };
                self.diags
                    .error(
                        "unknown_reference",
                        s.span,
                        format!("unknown source or image `{}`", s.value),
                        "no source or image has this name",
                    )
                    .help(help);
                None
            }
        }
    }

    fn version(&mut self, node: &Node) -> Option<String> {
        let usage = "version \"1.4\"";
        let s = self.leaf_as(node, "a version", usage, "a string like \"1.4\"")?;
        let valid = s.value.split_once('.').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
        if !valid {
            self.diags
                .error(
                    "bad_version",
                    s.span,
                    format!("invalid version `{}`", s.value),
                    "not MAJOR.MINOR",
                )
                .help("a version is MAJOR.MINOR, like \"1.4\"; each build adds the patch number (1.4.0, 1.4.1, ...)");
            return None;
        }
        Some(s.value)
    }

    /// The image's provider: named, or implied by its builder or by there being only one.
    fn image_provider(
        &mut self,
        kids: &[&Node],
        place: &str,
        owner: &str,
        build: Option<(&Build, &Str)>,
    ) -> Option<String> {
        let needed = build.map(|(b, s)| (builder_provider(b), s));
        if let Some(node) = self.single(kids, "provider", place) {
            let s = self.leaf(node, "a provider name", "provider \"local\"")?;
            if !self.providers.contains(&s.value) {
                if !(self.providers_unclear && PROVIDERS.contains(&s.value.as_str())) {
                    self.undeclared_provider(&s);
                }
                return None;
            }
            if let Some((needed, builder)) = needed {
                if needed != s.value {
                    self.diags
                        .error(
                            "provider_mismatch",
                            builder.span,
                            format!(
                                "builder `{}` needs the `{needed}` provider, but {owner} uses `{}`",
                                builder.value, s.value
                            ),
                            format!("needs `{needed}`"),
                        )
                        .label(s.span, "provider named here")
                        .help(builder_help(needed));
                    return None;
                }
            }
            return Some(s.value);
        }
        // A builder works with one provider only, so naming it would be redundant.
        let (needed, builder) = needed?;
        if self.providers.iter().any(|p| p == needed) {
            return Some(needed.to_owned());
        }
        if self.providers_unclear {
            return None;
        }
        let declared = self.declared_providers();
        self.diags
            .error(
                "provider_mismatch",
                builder.span,
                format!(
                    "builder `{}` needs the `{needed}` provider, which this file does not declare",
                    builder.value
                ),
                format!("needs `{needed}`"),
            )
            .help(format!("{}; declared: {declared}", builder_help(needed)));
        None
    }

    fn declared_providers(&self) -> String {
        let declared: Vec<&str> = self.providers.iter().map(String::as_str).collect();
        if declared.is_empty() {
            "none".to_owned()
        } else {
            quoted_list(&declared)
        }
    }

    fn undeclared_provider(&mut self, s: &Str) {
        let declared: Vec<&str> = self.providers.iter().map(String::as_str).collect();
        let (message, label, help) = if PROVIDERS.contains(&s.value.as_str()) {
            (
                format!("provider `{}` is not declared", s.value),
                "not declared",
                format!(
                    "declare it at the top level, e.g. `provider \"{}\" {{ ... }}`; declared: {}",
                    s.value,
                    self.declared_providers()
                ),
            )
        } else {
            (
                format!("unknown provider `{}`", s.value),
                "unknown provider",
                suggestion(&s.value, &declared, "declared providers are")
                    .unwrap_or_else(|| "imgraph has the providers `local` and `aws`".to_owned()),
            )
        };
        self.diags
            .error("unknown_provider", s.span, message, label)
            .help(help);
    }

    /// The build, its builder name as written, its network and its variables.
    fn build(&mut self, node: &Node) -> Option<BuildDraft> {
        let builder = self.arg(node, "a builder name", "build \"rootfs\" { ... }")?;
        let mut network = Network::Host;
        let env;
        let build = match self.choice(&builder, "unknown_builder", "builder", BUILDERS)? {
            0 => {
                self.props(node, &[]);
                let place = "in a rootfs build";
                let kids =
                    self.children(node, &["copy", "run", "network", "env", "pass-env"], place);
                network = self.network_child(&kids, place, Network::Host);
                env = self.env_names(&kids, place);
                let steps: Vec<&Node> = kids
                    .iter()
                    .copied()
                    .filter(|k| k.name == "copy" || k.name == "run")
                    .collect();
                Build::Rootfs {
                    steps: self.steps(&steps),
                }
            }
            1 => {
                let usage = "build \"packer\" template=\"packer/web.pkr.hcl\"";
                self.props(node, &["template"]);
                let place = "in a packer build";
                let all = self.children(node, &["var", "env", "pass-env"], place);
                env = self.env_names(&all, place);
                let kids: Vec<&Node> = all.into_iter().filter(|k| k.name == "var").collect();
                let template = self.required_prop(node, "template", usage);
                let template = template.and_then(|t| {
                    self.paths.existing(
                        self.diags,
                        &t.value,
                        t.span,
                        "packer template",
                        Expect::File,
                    )
                });
                let mut vars = BTreeMap::new();
                let mut seen = HashMap::new();
                for kid in kids {
                    let usage = "var \"instance_type\" \"t3.small\"";
                    let Some((key, value)) = self.pair(kid, ["a variable name", "a value"], usage)
                    else {
                        continue;
                    };
                    if self.unique(
                        &mut seen,
                        &key,
                        format!("packer variable `{}` is given twice", key.value),
                        "give each variable once",
                    ) {
                        vars.insert(key.value, value);
                    }
                }
                Build::Packer {
                    template: template?,
                    vars,
                }
            }
            _ => {
                self.props(node, &[]);
                let place = "in an ec2 build";
                let all = self.children(node, &["run", "env", "pass-env"], place);
                env = self.env_names(&all, place);
                let kids: Vec<&Node> = all.into_iter().filter(|k| k.name == "run").collect();
                Build::Ec2 {
                    steps: self.steps(&kids),
                }
            }
        };
        Some(BuildDraft {
            build,
            builder,
            network,
            env,
        })
    }

    /// `network "host"` / `network "none"` among `kids`, or `default`.
    fn network_child(&mut self, kids: &[&Node], place: &str, default: Network) -> Network {
        let Some(node) = self.single(kids, "network", place) else {
            return default;
        };
        self.leaf(node, "a network mode", "network \"none\"")
            .and_then(|s| self.network_value(&s))
            .unwrap_or(default)
    }

    fn network_value(&mut self, s: &Str) -> Option<Network> {
        match self.choice(s, "unknown_value", "network mode", NETWORKS)? {
            0 => Some(Network::Host),
            _ => Some(Network::None),
        }
    }

    /// The `env "NAME"` and `pass-env "NAME"` nodes among `kids`.
    fn env_names(&mut self, kids: &[&Node], place: &str) -> EnvNames {
        let mut names = EnvNames::default();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for kid in kids.iter().filter(|k| ENV_NODES.contains(&k.name.as_str())) {
            let usage = format!("{} \"APP_FLAVOR\"", kid.name);
            let Some(name) = self.leaf(kid, "a variable name", &usage) else {
                continue;
            };
            let valid = name
                .value
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.diags
                    .error(
                        "bad_env_name",
                        name.span,
                        format!("`{}` is not a variable name", name.value),
                        "not a variable name",
                    )
                    .help("a variable name is letters, digits and `_`, not starting with a digit");
                continue;
            }
            if name.value.starts_with("IMGRAPH_") {
                self.diags
                    .error(
                        "bad_env_name",
                        name.span,
                        format!("`{}` is set by imgraph itself", name.value),
                        "reserved name",
                    )
                    .help(
                        "variables starting with IMGRAPH_ are imgraph's own; choose another name",
                    );
                continue;
            }
            if !self.unique(
                &mut seen,
                &name,
                format!("variable `{}` is named twice {place}", name.value),
                "name each variable once, with `env` (hashed) or `pass-env` (not hashed)",
            ) {
                continue;
            }
            if kid.name == "env" {
                names.hashed.insert(name.value);
            } else {
                names.passed.insert(name.value);
            }
        }
        names
    }

    fn steps(&mut self, kids: &[&Node]) -> Vec<Step> {
        let mut steps = Vec::new();
        for kid in kids {
            let step = match kid.name.as_str() {
                "copy" => self.copy(kid),
                _ => self
                    .command(kid, "run \"sh /opt/provision.sh\"")
                    .map(|command| Step::Run { command }),
            };
            steps.extend(step);
        }
        steps
    }

    fn copy(&mut self, node: &Node) -> Option<Step> {
        let usage = "copy \"config/common\" to=\"/etc/acme\"";
        self.props(node, &["to"]);
        self.no_children(node);
        let from = self.arg(node, "a project path", usage);
        let to = self.required_prop(node, "to", usage);
        let from = from.and_then(|f| {
            let path = self.paths.existing(
                self.diags,
                &f.value,
                f.span,
                "copy source",
                Expect::FileOrDir,
            )?;
            self.not_own(path.as_str(), &f, "copy source")
                .then_some(path)
        });
        let to = to?;
        if !to.value.starts_with('/') {
            self.diags
                .error(
                    "relative_copy_target",
                    to.span,
                    format!("copy target `{}` is not an absolute path", to.value),
                    "relative path",
                )
                .help(format!(
                    "`to` is a path inside the image; write it as `to=\"/{}\"`",
                    to.value.trim_start_matches("./")
                ));
            return None;
        }
        Some(Step::Copy {
            from: from?,
            to: to.value,
        })
    }

    fn input(&mut self, node: &Node) -> Option<Input> {
        let usage = "input \"scripts/*.sh\" trigger=\"immediate\" exclude=\"*.tmp\"";
        self.props(node, &["trigger", "exclude"]);
        let kids = self.children(node, &["exclude"], "in `input`");
        let trigger = self.trigger(node, Trigger::Immediate, usage);
        let mut exclude = Vec::new();
        if let Some(s) = self.prop_str(node, "exclude", usage) {
            exclude.extend(self.paths.exclude(self.diags, &s.value, s.span));
        }
        for kid in kids {
            if let Some(s) = self.leaf(kid, "a glob", "exclude \"*.tmp\"") {
                exclude.extend(self.paths.exclude(self.diags, &s.value, s.span));
            }
        }
        let raw = self.arg(node, "a path or glob", usage)?;
        let pattern = self.paths.input(self.diags, &raw.value, raw.span)?;
        if !self.not_own(&pattern, &raw, "input") {
            return None;
        }
        let pattern = if pattern.is_empty() {
            ".".to_owned()
        } else {
            pattern
        };
        Some(Input {
            kind: InputKind::Path { pattern },
            trigger,
            exclude,
            span: node.head_span,
        })
    }

    fn packages(&mut self, node: &Node) -> Option<Input> {
        let usage = "packages \"packages/base.txt\" trigger=\"rollup\"";
        self.props(node, &["trigger"]);
        self.no_children(node);
        let trigger = self.trigger(node, Trigger::Rollup, usage);
        let raw = self.arg(node, "a package list file", usage)?;
        let path = self.paths.existing(
            self.diags,
            &raw.value,
            raw.span,
            "package list",
            Expect::File,
        )?;
        if !self.not_own(path.as_str(), &raw, "package list") {
            return None;
        }
        Some(Input {
            kind: InputKind::Packages { path },
            trigger,
            exclude: Vec::new(),
            span: node.head_span,
        })
    }

    fn probe(
        &mut self,
        node: &Node,
        seen: &mut HashMap<String, SourceSpan>,
        place: &str,
    ) -> Option<Input> {
        let usage = "probe \"apt-index\" run=\"./scripts/apt-versions.sh\"";
        self.props(node, &["run", "trigger", "in", "network", "timeout"]);
        let probe_place = "in a probe";
        let kids = self.children(node, &ENV_NODES, probe_place);
        let env = self.env_names(&kids, probe_place);
        let trigger = self.trigger(node, Trigger::Rollup, usage);
        let place_in = match self.prop_str(node, "in", usage) {
            Some(s) => match self.choice(&s, "unknown_value", "probe place", PROBE_PLACES) {
                Some(1) => ProbePlace::Image,
                _ => ProbePlace::Project,
            },
            None => ProbePlace::Project,
        };
        let network = self
            .prop_str(node, "network", usage)
            .and_then(|s| self.network_value(&s))
            .unwrap_or(Network::None);
        let timeout = self
            .prop_str(node, "timeout", usage)
            .and_then(|s| self.duration_value(&s, "timeout"));
        let name = self.arg(node, "a name", usage);
        let command = self
            .required_prop(node, "run", usage)
            .and_then(|s| self.nonempty_command(&s));
        let name = name?;
        if !self.unique(
            seen,
            &name,
            format!("probe `{}` is defined twice {place}", name.value),
            "each probe of an image needs its own name; rename one",
        ) {
            return None;
        }
        Some(Input {
            kind: InputKind::Probe {
                name: name.value,
                command: command?,
                place: place_in,
                network,
                timeout,
                env,
            },
            trigger,
            exclude: Vec::new(),
            span: node.head_span,
        })
    }

    fn test(
        &mut self,
        node: &Node,
        seen: &mut HashMap<String, SourceSpan>,
        image_place: &str,
    ) -> Option<TestSuite> {
        self.props(node, &[]);
        let name = self.arg(
            node,
            "a name",
            "test \"smoke\" { run \"sh tests/smoke/check.sh\" }",
        );
        let owner = match &name {
            Some(n) => format!("test `{}`", n.value),
            None => "this test".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(
            node,
            &["input", "run", "timeout", "network", "env", "pass-env"],
            &place,
        );
        let network = self.network_child(&kids, &place, Network::None);
        let env = self.env_names(&kids, &place);
        let command = match self.single(&kids, "run", &place) {
            Some(n) => self.command(n, "run \"sh tests/smoke/check.sh\""),
            None => {
                self.missing_child(
                    node,
                    &owner,
                    "run",
                    "add `run \"COMMAND\"`: the command that checks a fresh instance of the image"
                        .to_owned(),
                );
                None
            }
        };
        let timeout = match self.single(&kids, "timeout", &place) {
            Some(n) => self.duration(n, "timeout \"10m\""),
            None => Some(DEFAULT_TEST_TIMEOUT),
        };
        let inputs: Vec<Input> = kids
            .iter()
            .filter(|k| k.name == "input")
            .filter_map(|k| self.input(k))
            .collect();
        let name = name?;
        if !self.unique(
            seen,
            &name,
            format!("test `{}` is defined twice {image_place}", name.value),
            "each test of an image needs its own name; rename one",
        ) {
            return None;
        }
        Some(TestSuite {
            name: name.value,
            inputs,
            command: command?,
            timeout: timeout?,
            network,
            env,
            span: name.span,
        })
    }

    fn tags(&mut self, node: &Node, owner: &str) -> BTreeMap<String, String> {
        self.props(node, &[]);
        let _ = self.args(node, &[], "tags { Team \"platform\"; }");
        let mut tags = BTreeMap::new();
        let mut seen = HashMap::new();
        for kid in node.children() {
            let usage = format!("{} \"VALUE\"", kid.name);
            let Some(value) = self.leaf(kid, "a value", &usage) else {
                continue;
            };
            let key = Str {
                value: kid.name.clone(),
                span: kid.name_span,
            };
            if key.value.starts_with("imgraph:") {
                self.diags
                    .error(
                        "reserved_tag",
                        key.span,
                        format!("tag `{}` is reserved", key.value),
                        "reserved prefix",
                    )
                    .help("imgraph sets the `imgraph:` tags itself (image, version, key); pick another key");
                continue;
            }
            if self.unique(
                &mut seen,
                &key,
                format!("tag `{}` is given twice on {owner}", key.value),
                "give each tag once",
            ) {
                tags.insert(key.value, value.value);
            }
        }
        tags
    }

    fn instance(&mut self, node: &Node) -> InstanceSettings {
        self.props(node, &[]);
        let _ = self.args(node, &[], "instance { type \"t3.small\"; }");
        let place = "in `instance`";
        let kids = self.children(
            node,
            &["type", "subnet", "security-group", "key-name", "profile"],
            place,
        );
        let one = |v: &mut Self, key: &str, usage: &str| {
            let n = v.single(&kids, key, place)?;
            v.leaf(n, "a value", usage).map(|s| s.value)
        };
        let instance_type = one(self, "type", "type \"t3.small\"");
        let subnet = one(self, "subnet", "subnet \"subnet-0123\"");
        let key_name = one(self, "key-name", "key-name \"NAME\"");
        let instance_profile = one(self, "profile", "profile \"NAME\"");
        let security_groups = kids
            .iter()
            .filter(|k| k.name == "security-group")
            .filter_map(|k| self.leaf(k, "a group id", "security-group \"sg-0123\""))
            .map(|s| s.value)
            .collect();
        InstanceSettings {
            instance_type,
            subnet,
            security_groups,
            key_name,
            instance_profile,
        }
    }

    /// Images whose `from` chains loop back to themselves.
    fn image_cycles(&mut self, drafts: &[ImageDraft]) {
        // Only first definitions take part, as they are what names resolve to.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut names = Vec::new();
        for d in drafts {
            if let Some(n) = &d.name {
                if self
                    .names
                    .get(&n.value)
                    .is_some_and(|(_, span)| *span == n.span)
                {
                    index.insert(n.value.as_str(), names.len());
                    names.push(n.value.as_str());
                }
            }
        }
        let mut edges = Vec::new();
        for d in drafts {
            if let (Some(n), Some(from)) = (&d.name, &d.from_image) {
                if let (Some(&a), Some(&b)) =
                    (index.get(n.value.as_str()), index.get(from.value.as_str()))
                {
                    edges.push((a, b, from.span));
                }
            }
        }
        self.report_cycles(
            &names,
            &edges,
            "images",
            "is built from",
            "an image cannot be built from itself, even through other images; one of them must start `from` a source",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Environments.
// ---------------------------------------------------------------------------------------

impl V<'_> {
    fn environment(&mut self, node: &Node) -> EnvDraft {
        self.props(node, &[]);
        let name = self.arg(
            node,
            "a name",
            "environment \"NAME\" { deliver \"IMAGE\" { run \"CMD\" } }",
        );
        let owner = match &name {
            Some(n) => format!("environment `{}`", n.value),
            None => "this environment".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(node, &["after", "deliver"], &place);
        let mut after = Vec::new();
        let mut seen_after = HashMap::new();
        let mut deliveries = Vec::new();
        let mut delivered = Vec::new();
        let mut seen_deliveries = HashMap::new();
        for kid in kids {
            if kid.name == "after" {
                let Some(s) = self.leaf(kid, "an environment name", "after \"staging\"") else {
                    continue;
                };
                if !self.environments.contains_key(&s.value) {
                    let names: Vec<&str> =
                        self.environment_order.iter().map(String::as_str).collect();
                    let help = suggestion(&s.value, &names, "environments in this file are")
                        .unwrap_or_else(|| {
                            "declare it with `environment \"NAME\" { ... }`".to_owned()
                        });
                    self.diags
                        .error(
                            "unknown_reference",
                            s.span,
                            format!("unknown environment `{}`", s.value),
                            "no environment has this name",
                        )
                        .help(help);
                    continue;
                }
                if self.unique(
                    &mut seen_after,
                    &s,
                    format!("`after \"{}\"` is given twice {place}", s.value),
                    "remove one of them",
                ) {
                    after.push(s);
                }
                continue;
            }
            let Some((image, delivery)) = self.delivery(kid) else {
                continue;
            };
            if self.unique(
                &mut seen_deliveries,
                &image,
                format!("image `{}` is delivered twice {place}", image.value),
                "deliver each image once per environment; put both commands in one `run`",
            ) {
                delivered.push(image);
                deliveries.extend(delivery);
            }
        }
        let environment = name.as_ref().map(|n| Environment {
            name: n.value.clone(),
            after: after.iter().map(|s| s.value.clone()).collect(),
            deliveries,
            span: n.span,
        });
        EnvDraft {
            name,
            after,
            deliveries: delivered,
            environment,
        }
    }

    /// The image named (when it exists) and the delivery (when it is complete).
    fn delivery(&mut self, node: &Node) -> Option<(Str, Option<Delivery>)> {
        let usage = "deliver \"web\" { run \"./deliver.sh\" }";
        self.props(node, &[]);
        let image = self.arg(node, "an image name", usage);
        let place = match &image {
            Some(i) => format!("in the delivery of `{}`", i.value),
            None => "in this delivery".to_owned(),
        };
        let kids = self.children(node, &["run", "input", "env", "pass-env"], &place);
        let env = self.env_names(&kids, &place);
        let inputs: Vec<Input> = kids
            .iter()
            .filter(|k| k.name == "input")
            .filter_map(|k| self.input(k))
            .collect();
        let command = match self.single(&kids, "run", &place) {
            Some(n) => self.command(n, "run \"./deliver.sh\""),
            None => {
                let owner = match &image {
                    Some(i) => format!("the delivery of `{}`", i.value),
                    None => "this delivery".to_owned(),
                };
                self.missing_child(
                    node,
                    &owner,
                    "run",
                    "add `run \"COMMAND\"`: the command that rolls the new image out".to_owned(),
                );
                None
            }
        };
        let image = image?;
        match self.names.get(&image.value) {
            Some((NameKind::Image, _)) => {}
            Some((NameKind::Source, _)) => {
                self.diags
                    .error(
                        "unknown_reference",
                        image.span,
                        format!("`{}` is a source, not an image", image.value),
                        "a source",
                    )
                    .help("environments receive images this project builds; sources are only built from");
                return None;
            }
            None => {
                let images = self.names_of(Some(NameKind::Image));
                let help = suggestion(&image.value, &images, "images in this file are")
                    .unwrap_or_else(|| "this file declares no image".to_owned());
                self.diags
                    .error(
                        "unknown_reference",
                        image.span,
                        format!("unknown image `{}`", image.value),
                        "no image has this name",
                    )
                    .help(help);
                return None;
            }
        }
        let delivery = command.map(|command| Delivery {
            image: image.value.clone(),
            command,
            inputs,
            env,
            span: image.span,
        });
        Some((image, delivery))
    }

    fn environment_cycles(&mut self, envs: &[EnvDraft]) {
        let order = self.environment_order.clone();
        let names: Vec<&str> = order.iter().map(String::as_str).collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut edges = Vec::new();
        for env in envs {
            let Some(name) = &env.name else { continue };
            // A second definition of a name does not take part (it is already reported).
            if self.environments.get(&name.value) != Some(&name.span) {
                continue;
            }
            let Some(&a) = index.get(name.value.as_str()) else {
                continue;
            };
            for after in &env.after {
                if let Some(&b) = index.get(after.value.as_str()) {
                    edges.push((a, b, after.span));
                }
            }
        }
        self.report_cycles(
            &names,
            &edges,
            "environments",
            "comes after",
            "`after` orders deliveries between environments; remove one `after` to break the cycle",
        );
    }

    /// One diagnostic per cycle among `names`: every node on it named in order, a label
    /// on each edge (`a` `relation` `b`).
    fn report_cycles(
        &mut self,
        names: &[&str],
        edges: &[(usize, usize, SourceSpan)],
        what: &str,
        relation: &str,
        help: &str,
    ) {
        for cycle in cycles(names.len(), edges) {
            let path = cycle_path(names, edges, &cycle);
            let mut labels = cycle.iter().map(|&e| {
                let (a, b, span) = edges[e];
                (span, format!("`{}` {relation} `{}`", names[a], names[b]))
            });
            let Some((span, label)) = labels.next() else {
                continue;
            };
            let mut d = self
                .diags
                .error("cycle", span, format!("{what} form a cycle: {path}"), label)
                .help(help.to_string());
            for (span, label) in labels {
                d = d.label(span, label);
            }
        }
    }

    /// An environment that comes after another may only receive images the other receives
    /// first.
    fn delivery_order(&mut self, envs: &[EnvDraft]) {
        let firsts: Vec<&EnvDraft> = envs
            .iter()
            .filter(|e| {
                e.name
                    .as_ref()
                    .is_some_and(|n| self.environments.get(&n.value) == Some(&n.span))
            })
            .collect();
        let by_name: HashMap<&str, &EnvDraft> = firsts
            .iter()
            .filter_map(|e| e.name.as_ref().map(|n| (n.value.as_str(), *e)))
            .collect();
        for env in &firsts {
            let Some(name) = &env.name else { continue };
            for after in &env.after {
                let Some(earlier) = by_name.get(after.value.as_str()) else {
                    continue;
                };
                if earlier.name.as_ref().is_some_and(|n| n.value == name.value) {
                    continue; // a self-`after` is reported as a cycle
                }
                for image in &env.deliveries {
                    if earlier.deliveries.iter().any(|d| d.value == image.value) {
                        continue;
                    }
                    self.diags
                        .error(
                            "delivery_order",
                            image.span,
                            format!(
                                "{} delivers {} after {}, but {} does not deliver {}",
                                name.value, image.value, after.value, after.value, image.value
                            ),
                            format!("`{}` delivered here", image.value),
                        )
                        .label(after.span, format!("`{}` comes first", after.value))
                        .help(format!(
                            "add `deliver \"{}\" {{ run \"...\" }}` to environment `{}`, or remove `after \"{}\"`",
                            image.value, after.value, after.value
                        ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small pure helpers.
// ---------------------------------------------------------------------------------------

/// The first argument of a node when it is a string (its name), without reporting.
fn first_string(node: &Node) -> Option<Str> {
    match node.args.first() {
        Some(v) => match &v.value {
            Scalar::String(s) => Some(Str {
                value: s.clone(),
                span: v.span,
            }),
            _ => None,
        },
        None => None,
    }
}

fn builder_provider(build: &Build) -> &'static str {
    match build {
        Build::Rootfs { .. } => "local",
        Build::Packer { .. } | Build::Ec2 { .. } => "aws",
    }
}

fn builder_help(provider: &str) -> String {
    match provider {
        "local" => "`rootfs` builds local images; AMIs are built with `packer` or `ec2`".to_owned(),
        _ => "`packer` and `ec2` build AMIs on AWS: declare `provider \"aws\" { region \"...\" }`, or build locally with `rootfs`".to_owned(),
    }
}

/// `"10m"` from `timeout "10m"`, for type error messages.
fn example_of(usage: &str) -> &str {
    usage.split('"').nth(1).unwrap_or("10m")
}

fn count(n: usize, noun: &str) -> String {
    match n {
        0 => format!("no {noun}s"),
        1 => format!("1 {noun}"),
        _ => format!("{n} {noun}s"),
    }
}

/// One cycle (as edge indices, in order) per strongly connected component that has one.
/// Each starts at the node declared first and is a shortest way back to it.
fn cycles(nodes: usize, edges: &[(usize, usize, SourceSpan)]) -> Vec<Vec<usize>> {
    let mut graph = petgraph::graph::DiGraph::<(), usize>::new();
    let ids: Vec<_> = (0..nodes).map(|_| graph.add_node(())).collect();
    for (i, &(a, b, _)) in edges.iter().enumerate() {
        graph.add_edge(ids[a], ids[b], i);
    }
    let mut found = Vec::new();
    for component in petgraph::algo::tarjan_scc(&graph) {
        let members: Vec<usize> = component.iter().map(|n| n.index()).collect();
        let Some(&start) = members.iter().min() else {
            continue;
        };
        if members.len() == 1 {
            if let Some(e) = edges.iter().position(|&(a, b, _)| a == start && b == start) {
                found.push(vec![e]);
            }
            continue;
        }
        // Breadth-first search inside the component for the shortest way back to `start`.
        let mut via: HashMap<usize, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        'search: while let Some(at) = queue.pop_front() {
            for (e, &(a, b, _)) in edges.iter().enumerate() {
                if a != at || !members.contains(&b) {
                    continue;
                }
                if b == start {
                    closing = Some(e);
                    break 'search;
                }
                if let std::collections::hash_map::Entry::Vacant(slot) = via.entry(b) {
                    slot.insert(e);
                    queue.push_back(b);
                }
            }
        }
        let Some(mut e) = closing else { continue };
        let mut path = vec![e];
        while edges[e].0 != start {
            let Some(&prev) = via.get(&edges[e].0) else {
                break;
            };
            path.push(prev);
            e = prev;
        }
        path.reverse();
        found.push(path);
    }
    found.sort_by_key(|c| c.first().map(|&e| edges[e].0));
    found
}

/// `a -> b -> c -> a`
fn cycle_path(names: &[&str], edges: &[(usize, usize, SourceSpan)], cycle: &[usize]) -> String {
    let mut parts: Vec<&str> = cycle.iter().map(|&e| names[edges[e].0]).collect();
    if let Some(&first) = parts.first() {
        parts.push(first);
    }
    parts.join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> SourceSpan {
        SourceSpan::new(0.into(), 0)
    }

    #[test]
    fn finds_every_node_of_a_cycle_in_order() {
        let names = ["a", "b", "c", "d"];
        // d -> a is a way into the cycle, not part of it.
        let edges = [
            (0, 1, span()),
            (1, 2, span()),
            (2, 0, span()),
            (3, 0, span()),
        ];
        let found = cycles(4, &edges);
        assert_eq!(found.len(), 1);
        assert_eq!(cycle_path(&names, &edges, &found[0]), "a -> b -> c -> a");
    }

    #[test]
    fn finds_self_loops_and_ignores_acyclic_graphs() {
        let names = ["a", "b"];
        let edges = [(0, 1, span()), (1, 1, span())];
        let found = cycles(2, &edges);
        assert_eq!(found.len(), 1);
        assert_eq!(cycle_path(&names, &edges, &found[0]), "b -> b");
        assert!(cycles(2, &[(0, 1, span())]).is_empty());
    }
}
