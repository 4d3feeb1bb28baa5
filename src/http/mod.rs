//! HTTP request model: path normalisation and query parsing, before any route is matched.

pub mod path;

pub use path::{normalize, NormalizedPath, PathError};
