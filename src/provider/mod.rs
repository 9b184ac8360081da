//! Providers: where images live and instances run.
pub mod local;
