//! Who a verified token speaks for.

use super::scope::SmartScope;
use crate::time::UnixSeconds;

/// The verified identity and grants of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// `iss`.
    pub issuer: String,
    /// The configured subject claim (usually `sub`).
    pub subject: Option<String>,
    /// The configured client-id claim (`client_id`, else `azp`).
    pub client_id: Option<String>,
    /// Raw scope strings, as granted.
    pub scopes: Vec<String>,
    /// The scopes that parsed as SMART resource scopes.
    pub smart_scopes: Vec<SmartScope>,
    /// The patient in context (configured claim), a valid FHIR id.
    pub patient: Option<String>,
    /// Purpose-of-use codes (configured claim, e.g. `TREAT`, `HRESCH`); empty when absent.
    pub purpose: Vec<String>,
    /// `jti`, for audit correlation.
    pub token_id: Option<String>,
    /// `acr`: the authentication context class the user authenticated with (OpenID Connect).
    pub acr: Option<String>,
    /// `amr`: the authentication methods used (RFC 8176, e.g. `pwd`, `mfa`, `hwk`).
    pub amr: Vec<String>,
    /// `auth_time`: when the user last actively authenticated (seconds since the epoch).
    pub auth_time: Option<UnixSeconds>,
    /// `iat` (seconds since the epoch).
    pub issued_at: Option<UnixSeconds>,
    /// The policy's break-glass claim (`breakGlass.claim`), when the token carries it.
    pub break_glass: Option<bool>,
    /// The policy's break-glass reason claim (`breakGlass.reasonClaim`), as sent. Not audited
    /// unless it is one of the policy's reason codes (free text could carry PHI).
    pub break_glass_reason: Option<String>,
    /// `exp` (seconds since the epoch).
    pub expires_at: UnixSeconds,
    /// When this verification must no longer be reused (`exp` plus clock skew).
    pub valid_until: UnixSeconds,
    /// What the token is bound to (`cnf`, RFC 7800): the sender must prove it holds it.
    pub confirmation: Confirmation,
}

/// A sender-constrained token's confirmation (`cnf`): each member present must be proven on
/// every request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confirmation {
    /// `jkt` (RFC 9449): SHA-256 thumbprint of the DPoP key, base64url.
    pub jkt: Option<String>,
    /// `x5t#S256` (RFC 8705): SHA-256 of the client certificate (DER), base64url.
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// Whether the token is bound to anything.
    pub fn bound(&self) -> bool {
        self.jkt.is_some() || self.x5t_s256.is_some()
    }
}

impl Principal {
    /// Whether the token carries this exact scope string.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}
