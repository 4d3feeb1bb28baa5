//! Token verification (RFC 7519 / RFC 8725), SMART scopes, the verified-token cache, step-up
//! authentication requirements, purpose of use and break-glass, with the compilers of their
//! policy sections (`issuers` in [`compile`]; `authentication`, `purpose` and `breakGlass`
//! beside their models).

pub mod breakglass;
pub mod cache;
pub mod compile;
pub mod crypto;
pub mod discovery;
pub mod dpop;
pub mod introspect;
pub mod keys;
pub mod principal;
pub mod purpose;
pub mod remote;
pub mod scope;
pub mod sender;
pub mod stepup;
pub mod verify;

pub use breakglass::{BreakGlass, BreakGlassPolicy};
pub use cache::TokenCache;
pub use keys::{KeyError, VerifyKey};
pub use principal::Principal;
pub use purpose::PurposeRule;
pub use stepup::AuthRequirement;
pub use verify::{check_claims, verify, verify_attested, verify_message, verify_signature, ClaimNames, IssuerConfig, VerifiedJws};
