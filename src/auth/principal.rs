//! Who a verified token speaks for.

use super::scope::SmartScope;

/// The verified identity and grants of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `exp` (seconds since the epoch).
    pub expires_at: u64,
    /// Unix time after which this verification must not be reused (`exp` plus clock skew).
    pub valid_until: u64,
}

impl Principal {
    /// Whether the token carries this exact scope string.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}
