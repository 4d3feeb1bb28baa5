//! Token verification (RFC 7519 / RFC 8725), SMART scopes, and the verified-token cache.

pub mod cache;
pub mod keys;
pub mod principal;
pub mod remote;
pub mod scope;
pub mod verify;

pub use cache::TokenCache;
pub use keys::{KeyError, VerifyKey};
pub use principal::Principal;
pub use verify::{check_claims, verify, verify_message, verify_signature, ClaimNames, IssuerConfig, VerifiedJws};
