//! Token verification (RFC 7519 / RFC 8725), SMART scopes, the verified-token cache, step-up
//! authentication requirements and purpose of use.

pub mod cache;
pub mod crypto;
pub mod keys;
pub mod principal;
pub mod purpose;
pub mod remote;
pub mod scope;
pub mod stepup;
pub mod verify;

pub use cache::TokenCache;
pub use keys::{KeyError, VerifyKey};
pub use principal::Principal;
pub use purpose::PurposeRule;
pub use stepup::AuthRequirement;
pub use verify::{check_claims, verify, verify_message, verify_signature, ClaimNames, IssuerConfig, VerifiedJws};
