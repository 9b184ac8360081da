//! The validated project model: what `imgraph.kdl` means once every name is resolved,
//! every duration parsed and every path checked to stay inside the project.
//!
//! Nothing downstream of `config` sees raw KDL. Each stanza that can change a stage's
//! result has a canonical form (`canonical_*` functions, serde JSON with sorted maps):
//! whitespace, comments and the order of child nodes in the file do not change it, while
//! the order of build steps does (they run in that order). Tags never enter build keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A byte range in the config file, kept so later stages can point at the source.
pub type Span = miette::SourceSpan;

#[derive(Debug, Clone)]
pub struct Project {
    /// Absolute, canonical project folder (the folder holding `imgraph.kdl`).
    pub root: PathBuf,
    /// Absolute path of the config file.
    pub config_path: PathBuf,
    /// The config text, kept for diagnostics raised after validation.
    pub config_text: String,
    /// State database path, absolute (default `<root>/.imgraph/state.db`). With a shared
    /// state it is the local cache and mirror.
    pub state_path: PathBuf,
    /// `state { s3 ...; lease-ttl "60s"; }`: the state shared by every runner of the team.
    pub shared_state: Option<SharedState>,
    pub providers: Vec<ProviderDef>,
    pub sources: Vec<Source>,
    pub images: Vec<Image>,
    pub environments: Vec<Environment>,
    /// The project-wide `retain`, for images without their own.
    pub retain: Option<Retain>,
    /// Image name -> position in `images`, built with the project: a plan looks an image
    /// up for every node, and a search through the list made planning quadratic in the
    /// number of images.
    pub(in crate::config) image_index: std::collections::HashMap<String, usize>,
}

/// `retain { keep 5; keep-days 30; }`: `imgraph gc` keeps the newest `keep` versions of an
/// image and every version built within `keep-days` days (either one keeps a version);
/// older ones may go, unless something still uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retain {
    pub keep: Option<u32>,
    pub keep_days: Option<u32>,
}

impl Project {
    pub fn image(&self, name: &str) -> Option<&Image> {
        self.image_index.get(name).and_then(|&i| self.images.get(i))
    }
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }
    pub fn provider(&self, name: &str) -> Option<&ProviderDef> {
        self.providers.iter().find(|p| p.name == name)
    }
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }
    /// The retention of an image: its own `retain`, else the project's.
    pub fn retain_of(&self, image: &Image) -> Option<Retain> {
        image.retain.or(self.retain)
    }

    /// imgraph's own folders: the state folder, its `logs` and `tmp` (build staging, test
    /// instances) and the local image stores. Never inputs, never copied into images.
    pub fn own_folders(&self) -> Vec<PathBuf> {
        let stores = self.providers.iter().filter_map(|p| match &p.kind {
            ProviderKind::Local { store, .. } => Some(store.clone()),
            ProviderKind::Aws { .. } => None,
        });
        own_folders(&self.state_path, stores)
    }

    /// [`Project::own_folders`] and the state file (with SQLite's companions and the stat
    /// cache) as project-relative paths, for those inside the project other than the
    /// project folder itself: what hashing skips.
    pub fn own_paths_in_project(&self) -> Vec<String> {
        let mut paths = self.own_folders();
        for suffix in ["", "-wal", "-shm", "-journal", STAT_CACHE_SUFFIX] {
            let mut file = self.state_path.clone().into_os_string();
            file.push(suffix);
            paths.push(PathBuf::from(file));
        }
        paths
            .iter()
            .filter_map(|p| p.strip_prefix(&self.root).ok())
            .filter_map(|p| p.to_str())
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// The stat cache is the file named like the state file with this appended
/// (`.imgraph/state.db-statcache`; see `state/stat_cache.rs`).
pub const STAT_CACHE_SUFFIX: &str = "-statcache";

/// imgraph's own folders for a state file and local stores (see [`Project::own_folders`]).
pub fn own_folders(
    state_path: &std::path::Path,
    stores: impl IntoIterator<Item = PathBuf>,
) -> Vec<PathBuf> {
    let work = state_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut folders = vec![work.clone(), work.join("logs"), work.join("tmp")];
    folders.extend(stores);
    folders
}

/// The providers imgraph has, as named in `provider "local"`. A project declares each at
/// most once, so a provider's name is its type's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderType {
    Local,
    Aws,
}

impl ProviderType {
    /// Every provider, in the order help texts list them.
    pub const ALL: [ProviderType; 2] = [ProviderType::Local, ProviderType::Aws];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Local => "local",
            ProviderType::Aws => "aws",
        }
    }
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderDef {
    /// `local` or `aws`.
    pub name: String,
    pub kind: ProviderKind,
    /// `provider "local" { store { s3 ... } }`: where the local provider's artifacts are
    /// shared (its store folder is then the cache). Only the local provider has one. Never
    /// part of a key: moving the artifacts does not change them.
    #[serde(skip)]
    pub shared_store: Option<S3Location>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ProviderKind {
    Local {
        /// Absolute path of the image store (default `<root>/.imgraph/images`).
        store: PathBuf,
        sandbox: Sandbox,
    },
    Aws {
        region: Option<String>,
        profile: Option<String>,
        endpoint: Option<String>,
    },
}

/// Where on S3 (or an S3-compatible server) a shared state or artifact store lives:
/// `s3 bucket="acme-imgraph" prefix="platform/" region="eu-west-1" endpoint="http://..."`.
/// Credentials come from the standard AWS chain (environment, profile, instance role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (empty: the bucket's root).
    pub prefix: String,
    pub region: String,
    /// Any S3-compatible endpoint (path-style requests; `http://` is allowed for it).
    pub endpoint: Option<String>,
}

impl std::fmt::Display for S3Location {
    /// `s3://bucket/prefix/` (and the endpoint when there is one), for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "{}/", self.prefix)?;
        }
        if let Some(endpoint) = &self.endpoint {
            write!(f, " at {endpoint}")?;
        }
        Ok(())
    }
}

/// `state { s3 ...; lease-ttl "60s"; }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedState {
    pub location: S3Location,
    /// A lease whose heartbeat is older than this may be taken over (default 60 s).
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Sandbox {
    /// Steps run on the host with `IMGRAPH_ROOT` (and tests with `IMGRAPH_INSTANCE_ROOT`).
    #[default]
    None,
    /// Steps and tests run inside the image with `bwrap`, seeing only their inputs
    /// (see `provider::local::sandbox`).
    Bwrap,
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SourceKind {
    /// A tar, tar.gz, tar.zst file or a directory, relative to the project (checked to exist).
    Local { path: RelPath },
    /// Newest AMI matching owners + name pattern + tag filters.
    Aws {
        owners: Vec<String>,
        name: Option<String>,
        /// Tag filters, sorted by key.
        tags: BTreeMap<String, String>,
    },
    /// The newest Ready version of an image another project builds with the local
    /// provider, read from that project's shared state:
    /// `imgraph image="base" { s3 bucket=… prefix=… region=… }`.
    Imgraph {
        image: String,
        /// Where the other project's shared state is (its `state { s3 … }`).
        #[serde(skip)]
        state: S3Location,
    },
}

/// A path relative to the project root, checked to stay inside it. Always uses `/`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct RelPath(pub String);

impl RelPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub name: String,
    /// Provider name (`local` or `aws`); resolved even when left out in the file.
    pub provider: String,
    pub from: FromRef,
    /// `"1.4"` → versions 1.4.0, 1.4.1, … (default `"1.0"`).
    pub version: String,
    pub max_age: Option<Duration>,
    /// How many versions `imgraph gc` keeps (the project's `retain` when not given).
    /// Never part of a key.
    #[serde(skip)]
    pub retain: Option<Retain>,
    pub build: Build,
    /// `network` of the build (default `host`: package managers need the archive).
    pub build_network: Network,
    /// `env` / `pass-env` inside `build { … }`; the image-level ones apply too (see
    /// [`Image::build_env`]).
    pub build_env: EnvNames,
    /// `env` / `pass-env` directly in the image: seen by its build, tests, probes and
    /// deliveries.
    pub env: EnvNames,
    /// `input`, `packages` and `probe` children, in file order.
    pub inputs: Vec<Input>,
    pub tests: Vec<TestSuite>,
    /// User tags (never part of a build key).
    pub tags: BTreeMap<String, String>,
    /// Settings for temporary instances on AWS (ec2 builds and tests); empty for local.
    pub instance: InstanceSettings,
    #[serde(skip)]
    pub span: Span,
}

impl Image {
    /// The test suite of that name.
    pub fn suite(&self, name: &str) -> Option<&TestSuite> {
        self.tests.iter().find(|t| t.name == name)
    }
    /// The variables the build's commands see: the image's and the build's own.
    pub fn build_env(&self) -> EnvNames {
        self.env.merged(&self.build_env)
    }
    /// The variables a test suite's command sees: the image's and the suite's own.
    pub fn test_env(&self, suite: &TestSuite) -> EnvNames {
        self.env.merged(&suite.env)
    }
    /// The variables a delivery's command sees: the image's and the delivery's own.
    pub fn delivery_env(&self, delivery: &Delivery) -> EnvNames {
        self.env.merged(&delivery.env)
    }
}

/// `env "NAME"` and `pass-env "NAME"` of one stanza: the caller's variables a command sees
/// besides imgraph's minimal environment. The values of `hashed` names go into the node's
/// key (never shown); `passed` names (credentials, tokens) are handed on without hashing.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EnvNames {
    pub hashed: BTreeSet<String>,
    pub passed: BTreeSet<String>,
}

impl EnvNames {
    /// Both sets, `inner` (the more specific stanza) added to `self`. A name hashed in
    /// either is hashed.
    pub fn merged(&self, inner: &EnvNames) -> EnvNames {
        let hashed: BTreeSet<String> = self.hashed.union(&inner.hashed).cloned().collect();
        let passed = self
            .passed
            .union(&inner.passed)
            .filter(|n| !hashed.contains(*n))
            .cloned()
            .collect();
        EnvNames { hashed, passed }
    }
    pub fn is_empty(&self) -> bool {
        self.hashed.is_empty() && self.passed.is_empty()
    }
    /// Every name a command is given, hashed or not, sorted.
    pub fn names(&self) -> Vec<String> {
        let all: BTreeSet<&String> = self.hashed.iter().chain(&self.passed).collect();
        all.into_iter().cloned().collect()
    }
}

/// Whether a sandboxed command can reach the network.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The host's network (and resolver configuration).
    Host,
    /// A network namespace with loopback only.
    None,
}

/// Where a probe runs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProbePlace {
    /// On the host, in the project folder (default).
    #[default]
    Project,
    /// Inside a throwaway instance of the image's current version.
    Image,
}

/// `instance { type "t3.small"; subnet "subnet-1"; security-group "sg-1"; key-name "k"; profile "p"; }`
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct InstanceSettings {
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub key_name: Option<String>,
    pub instance_profile: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", content = "name", rename_all = "kebab-case")]
pub enum FromRef {
    Source(String),
    Image(String),
}

impl FromRef {
    pub fn name(&self) -> &str {
        match self {
            FromRef::Source(n) | FromRef::Image(n) => n,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "builder", rename_all = "kebab-case")]
pub enum Build {
    /// Local, offline: unpack origin, copy, run steps, pack.
    Rootfs { steps: Vec<Step> },
    /// Runs `packer build -machine-readable` on a template.
    Packer {
        template: RelPath,
        /// User variables, sorted by name.
        vars: BTreeMap<String, String>,
    },
    /// Native EC2 build: launch origin with the steps as user data, wait for stop, CreateImage.
    Ec2 { steps: Vec<Step> },
}

/// The builders imgraph has, as named in `build "rootfs"`: what a [`Build`] is without its
/// settings. Adding one means a variant here, its settings in [`Build`] and its provider
/// in [`Builder::provider`]; the exhaustive matches name every other place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builder {
    Rootfs,
    Packer,
    Ec2,
}

impl Builder {
    /// Every builder, in the order help texts list them.
    pub const ALL: [Builder; 3] = [Builder::Rootfs, Builder::Packer, Builder::Ec2];

    pub fn as_str(self) -> &'static str {
        match self {
            Builder::Rootfs => "rootfs",
            Builder::Packer => "packer",
            Builder::Ec2 => "ec2",
        }
    }

    /// The one provider that runs this builder.
    pub fn provider(self) -> ProviderType {
        match self {
            Builder::Rootfs => ProviderType::Local,
            Builder::Packer | Builder::Ec2 => ProviderType::Aws,
        }
    }

    /// The builders `provider` runs, in the order of [`Builder::ALL`].
    pub fn of(provider: ProviderType) -> Vec<Builder> {
        Builder::ALL
            .into_iter()
            .filter(|b| b.provider() == provider)
            .collect()
    }
}

impl std::fmt::Display for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Build {
    pub fn builder(&self) -> Builder {
        match self {
            Build::Rootfs { .. } => Builder::Rootfs,
            Build::Packer { .. } => Builder::Packer,
            Build::Ec2 { .. } => Builder::Ec2,
        }
    }
    pub fn builder_name(&self) -> &'static str {
        self.builder().as_str()
    }
    /// The one provider that can run this build: validation checks an image's provider
    /// against it, and a provider refuses any other build with it.
    pub fn provider(&self) -> ProviderType {
        self.builder().provider()
    }
    /// Project files the build itself reads (copy sources, packer template): hashed as
    /// immediate inputs of the build node.
    pub fn referenced_paths(&self) -> Vec<RelPath> {
        match self {
            Build::Rootfs { steps } | Build::Ec2 { steps, .. } => steps
                .iter()
                .filter_map(|s| match s {
                    Step::Copy { from, .. } => Some(from.clone()),
                    Step::Run { .. } => None,
                })
                .collect(),
            Build::Packer { template, .. } => vec![template.clone()],
        }
    }
    /// The build's commands that run with the project folder at hand, whose words may
    /// name project files (implicit inputs): `rootfs` steps. `ec2` steps run on the
    /// instance, and Packer reads only its template.
    pub fn project_commands(&self) -> Vec<&str> {
        match self {
            Build::Rootfs { steps } => steps
                .iter()
                .filter_map(|s| match s {
                    Step::Run { command } => Some(command.as_str()),
                    Step::Copy { .. } => None,
                })
                .collect(),
            Build::Packer { .. } | Build::Ec2 { .. } => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Copy a project file or directory into the image at `to` (absolute path in the image).
    Copy { from: RelPath, to: String },
    /// A shell command (`sh -c`).
    Run { command: String },
}

#[derive(
    Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// A change starts a rebuild.
    Immediate,
    /// A change waits for a roll-up run (`--rollup`) or `max-age`.
    Rollup,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Immediate => "immediate",
            Trigger::Rollup => "rollup",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Input {
    pub kind: InputKind,
    pub trigger: Trigger,
    /// Glob patterns (project-relative; a pattern without `/` matches a file name anywhere).
    pub exclude: Vec<String>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum InputKind {
    /// A file, a directory (every file below it) or a glob. Default trigger: immediate.
    Path { pattern: String },
    /// A package list file. Default trigger: rollup.
    Packages { path: RelPath },
    /// A command whose stdout is hashed. Default trigger: rollup.
    Probe {
        name: String,
        command: String,
        /// `in="project"` (default) or `in="image"`.
        place: ProbePlace,
        /// `network="none"` (default) or `"host"`.
        network: Network,
        /// `timeout="2m"`; `None` is the default limit.
        timeout: Option<Duration>,
        /// `env` / `pass-env` children.
        env: EnvNames,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct TestSuite {
    pub name: String,
    pub inputs: Vec<Input>,
    pub command: String,
    /// Default 10 minutes.
    pub timeout: Duration,
    /// `network` (default `none`).
    pub network: Network,
    pub env: EnvNames,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub name: String,
    /// Environments that must have received an image before this one gets it.
    pub after: Vec<String>,
    pub deliveries: Vec<Delivery>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub image: String,
    pub command: String,
    /// `input` children: hashed into the delivery's key.
    pub inputs: Vec<Input>,
    pub env: EnvNames,
    #[serde(skip)]
    pub span: Span,
}

/// Canonical text of what a build node's result depends on in the config: provider kind,
/// origin, version series and builder with its steps. Not tags, not max-age, and not how
/// inputs are declared (patterns, excludes, duplicate lines, triggers): what they select
/// is hashed by content into the manifest, so only a change of the selection counts.
pub fn canonical_build(project: &Project, image: &Image) -> String {
    #[derive(Serialize)]
    struct C<'a> {
        v: u32,
        provider: Option<serde_json::Value>,
        from: &'a FromRef,
        version: &'a str,
        build: &'a Build,
        network: Network,
        instance: &'a InstanceSettings,
    }
    // Only what changes the result: not the store folder (moving the project must not
    // change keys), nor the endpoint or profile used to reach the same region.
    let provider = project.provider(&image.provider).map(|p| match &p.kind {
        ProviderKind::Local { sandbox, .. } => {
            serde_json::json!({"type": "local", "sandbox": sandbox})
        }
        ProviderKind::Aws { region, .. } => serde_json::json!({"type": "aws", "region": region}),
    });
    canonical_json(&C {
        v: 2,
        provider,
        from: &image.from,
        version: &image.version,
        build: &image.build,
        network: image.build_network,
        instance: &image.instance,
    })
}

/// Canonical text of a test suite stanza: its command and timeout (its inputs are in its
/// manifest, as for builds).
pub fn canonical_test(suite: &TestSuite) -> String {
    #[derive(Serialize)]
    struct C<'a> {
        v: u32,
        command: &'a str,
        timeout_secs: u64,
        network: Network,
    }
    canonical_json(&C {
        v: 2,
        command: &suite.command,
        timeout_secs: suite.timeout.as_secs(),
        network: suite.network,
    })
}

/// Canonical text of a delivery stanza.
pub fn canonical_delivery(env: &Environment, delivery: &Delivery) -> String {
    #[derive(Serialize)]
    struct C<'a> {
        v: u32,
        environment: &'a str,
        command: &'a str,
    }
    canonical_json(&C {
        v: 1,
        environment: &env.name,
        command: &delivery.command,
    })
}

fn canonical_json<T: Serialize>(value: &T) -> String {
    // Serialising plain structs, strings and BTreeMaps cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}
