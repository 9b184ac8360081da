//! imgraph: decides when server images must be rebuilt, and runs their pipeline
//! (build → test on a fresh instance → publish → deliver).
//!
//! The binary (`src/main.rs`) is a thin shell over this library: every command is a
//! function in [`cli`], every engine emits values that [`report`] renders.
//!
//! # The flow
//!
//! ```text
//! imgraph.kdl ─ config::load ─► config::model::Project ─ graph::StageGraph::build ─► stage graph
//!   (raw KDL with spans → validated model; every error a located diagnostic)
//! project files ─ hash ─► manifests and keys per stage node (blake3, stat cache in state)
//! sources ─ workspace (local: the files' digest; aws: newest DescribeImages match) ─► origin ids
//! (graph, manifests, origins, state snapshot) ─ plan ─► Plan { nodes: action + reasons }
//! Plan ─ exec::execute ─► provider calls, state records, exec::Event stream ─ report ─► terminal / NDJSON
//! built artifact ─ provider::Provider::inventory ─► packages::Inventory ─► state (with the version)
//!   ─ contents ─► `packages` / `diff` / `sbom`
//! ```
//!
//! [`workspace::Workspace`] ties one project to its state and providers and runs these
//! steps for the commands; [`exit::code`] maps how a command ended to the one table of
//! exit codes. [`process`] runs every user command (a leaf: it knows no provider), and
//! [`text`] holds the small helpers engines and reporters share; [`group_sync`] lets threads
//! that need the same file synced share one `fsync` (the state's log, the store's folders).
//!
//! # Where to add …
//!
//! - **a builder**: a variant of [`config::model::Builder`] (its word and the one provider
//!   that runs it, [`config::model::Builder::provider`]) and of [`config::model::Build`] (its
//!   settings); the compiler's exhaustive matches then name every other place: the
//!   builder's arm in `config/validate/builds.rs`, its keyword in
//!   `config/validate/keywords.rs`, [`config::model::Build::referenced_paths`] (files it
//!   reads are hashed), [`config::model::Build::project_commands`] (commands whose words
//!   may name project files), and the provider's `build` (each provider matches every
//!   builder). Add a broken fixture under `tests/fixtures/broken/` for its diagnostics.
//! - **a stage**: a variant of [`graph::Stage`] (its word in `Stage::as_str` and
//!   `Stage::ALL`), its constructor on [`graph::NodeId`] and its [`graph::NodeKind`] (the
//!   id's text and parts; ids are never written with `format!` nor told apart by prefix),
//!   and its edges in [`graph::StageGraph::build`]. The compiler's exhaustive matches then
//!   name every other place: the id's parse and parts, [`graph::StageNode`], the stanza
//!   ([`plan::stanza_of`]), what it hands downstream (`plan/decide.rs`), how an upstream
//!   of its kind is compared (`plan/node.rs`), revocations, what running it means
//!   (`exec::stages::run_node`), early cutoff and recovery records, what it reads
//!   (`workspace::node_inputs`) and its shape in the drawings. Add its word to the `id`
//!   pattern and `stage` enum of `schema/plan.schema.json`.
//! - **a reason kind**: a variant of [`plan::Reason`] (serde writes its `kind`), its
//!   sentence in the one renderer `report::plan::reason_text`, its entry in
//!   `schema/plan.schema.json`, and the decision in [`plan`] that produces it.
//! - **a provider**: a variant of [`config::model::ProviderType`] and
//!   [`config::model::ProviderKind`] (its settings, checked in
//!   `config/validate/providers.rs`), a module under [`provider`] implementing
//!   [`provider::Provider`] (behind a cargo feature when it pulls a heavy SDK), and its arm
//!   in the factory [`provider::connect`], the one place that names cargo features. What
//!   only some providers can do (resolve a source, sweep tagged leftovers, list recorded
//!   versions, look inside or probe an image) are trait methods with "unsupported" or
//!   "none" defaults: implement those the provider has.
//! - **a package manager** (rpm): its database path and reader in [`packages`] (beside
//!   `dpkg.rs` and `apk.rs`), a [`packages::Manager`] variant (the compiler then names its
//!   purl type in `report::sbom`), its file in `provider/local/inspect.rs`, and a migration
//!   widening the `CHECK` on `packages.manager`.
//! - **a state backend**: implement [`state::Journal`] (conditional appends of
//!   [`state::Record`] batches, reads since a position) and [`state::LeaseStore`], add an
//!   arm to [`state::Backend`] and [`state::open`] (the local SQLite file becomes its
//!   mirror and cache through [`state::State::with_journal`]), and map the project's
//!   `state { … }` stanza to it in `workspace`. [`state`] stays the only module with SQL.
//!   The shared state on S3 (`state/s3.rs`) is such a backend, over [`remote`]: the
//!   object-storage side (the conditional-write check, the lease object, the journal of
//!   objects and the shared artifact store), which knows nothing of `state`. [`host`] is
//!   the leaf both take the host name and the clock from.

mod cachefile;
pub mod cli;
pub mod config;
pub mod contents;
pub mod crash;
pub mod env;
pub mod error;
pub mod exec;
pub mod exit;
pub mod graph;
pub mod group_sync;
pub mod hash;
pub mod host;
pub mod init;
pub mod overview;
pub mod packages;
pub mod plan;
pub mod process;
pub mod provider;
#[cfg(feature = "s3")]
pub mod remote;
pub mod report;
pub mod state;
pub mod text;
pub mod workspace;
