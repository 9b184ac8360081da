//! Config: `imgraph.kdl` → spanned raw tree → validated [`model::Project`].
pub mod model;
