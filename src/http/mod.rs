//! HTTP request model: path normalisation and query parsing, before any route is matched; and
//! the RFC 9530 `Content-Digest` of released bodies.

pub mod digest;
pub mod path;

pub use digest::{content_digest, CONTENT_DIGEST};
pub use path::{normalize, NormalizedPath, PathError};
