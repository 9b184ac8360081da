//! imgraph: decides when server images must be rebuilt, and runs their pipeline
//! (build → test on a fresh instance → publish → deliver).
//!
//! The binary (`src/main.rs`) is a thin shell over this library: every command is a
//! function in [`cli`], every engine emits values that [`report`] renders.

pub mod cli;
pub mod config;
pub mod env;
pub mod error;
pub mod exec;
pub mod exit;
pub mod graph;
pub mod hash;
pub mod init;
pub mod overview;
pub mod plan;
pub mod provider;
pub mod report;
pub mod state;
pub mod text;
pub mod workspace;
