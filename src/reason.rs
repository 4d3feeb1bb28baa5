//! Every way a request can be refused, with its HTTP status and stable reason code.

/// Why a request was refused. Exhaustive on purpose: a new reason must be mapped everywhere
/// reasons are mapped (status, code, response body, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No policy is loaded (never configured or every configuration was rejected).
    NoPolicy,
    /// The path is malformed or ambiguous (dot segments, encoded slashes, empty segments...).
    InvalidPath,
    /// The path or query is longer than the policy allows.
    PathTooLong,
    /// Too many request headers, or too large in total.
    HeadersTooLarge,
    /// A request header the decision reads (`:method`, `:path`, `:scheme`, `:authority`,
    /// `authorization`, `dpop`, `if-match`, `x-request-id`, `content-length`) is not valid UTF-8,
    /// or a header name is not.
    InvalidHeader,
    /// The request body is larger than the policy allows.
    RequestTooLarge,
    /// A FHIR write whose body is not JSON of the resource type (and id) the path names.
    InvalidRequestBody,
    /// The subject or client has used its request budget.
    RateLimited,
    /// No route matches the path.
    NoRoute,
    /// A route matches the path but not the method.
    MethodNotAllowed,
    /// No bearer token in the `Authorization` header.
    MissingToken,
    /// More than one `Authorization` header, or a token in the query string.
    AmbiguousCredentials,
    /// The `Authorization` header is not a bearer token.
    UnsupportedAuthScheme,
    /// The token is larger than the policy allows.
    TokenTooLarge,
    /// The token is not three well-formed base64url segments of JSON.
    MalformedToken,
    /// The header asks for an algorithm that is not pinned for the issuer (or `none`).
    AlgorithmNotAllowed,
    /// The header carries a key or key location (`jwk`, `jku`, `x5u`, `x5c`).
    EmbeddedKey,
    /// The header names a critical extension we do not understand.
    UnsupportedCrit,
    /// The `iss` claim names no trusted issuer.
    UnknownIssuer,
    /// No key of the issuer matches the header's `kid` and algorithm.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// The issuer's remote keys are not available (not fetched yet, or stale past the limit).
    KeysUnavailable,
    /// `exp` is missing.
    MissingExpiry,
    /// The subject claim is missing or empty, and the issuer requires one.
    MissingSubject,
    /// `exp` is in the past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iat` is in the future, or the token lives longer than the issuer allows.
    BadIssuedAt,
    /// `aud` names none of the accepted audiences.
    BadAudience,
    /// A claim has the wrong type (e.g. `exp` as a string, scopes not a string/array).
    BadClaim,
    /// An access token was sent in the query string (`access_token`), where it leaks into logs.
    TokenInQuery,
    /// The token lacks a scope the route requires.
    InsufficientScope,
    /// The FHIR base does not allow this interaction.
    InteractionNotAllowed,
    /// The FHIR request cannot be modelled (unknown resource type, unsupported interaction).
    UnsupportedFhirRequest,
    /// A patient-context token asked for data outside its patient's compartment.
    PatientMismatch,
    /// A patient-context token used a search feature that can reach other patients
    /// (`_include`, `_revinclude`, `_has`, chained parameters, no patient parameter).
    CompartmentEscape,
    /// A patient-context search used a parameter outside the type's allowed search parameters.
    SearchParameterNotAllowed,
    /// A patient-scoped token carries no patient claim.
    MissingPatientContext,
    /// `HEAD` on a route whose answers are checked on the body: with no body to check, its
    /// status and headers would tell what the check would have withheld.
    HeadNotCheckable,
    /// The policy requires auditing and events cannot be delivered (queue full, sink failing).
    AuditUnavailable,
    /// No minimization profile of the route applies to the caller's scopes and purpose.
    NoMinimizationProfile,
    /// The upstream response body is not JSON (empty, malformed, not UTF-8, nested too deep).
    ResponseNotJson,
    /// The upstream response body is larger than the filter buffers.
    ResponseTooLarge,
    /// The upstream response body has a content encoding the filter cannot decode.
    ResponseEncoded,
    /// The upstream response body ended early (truncated JSON, reset, trailers without a body).
    ResponseTruncated,
    /// The upstream response is JSON of the wrong shape (e.g. no `resourceType` on a FHIR route).
    ResponseUnexpectedShape,
    /// The response holds a resource type that is not FHIR R4 or that the profile refuses.
    ResponseUnknownResource,
    /// The upstream answered a patient-context request with data outside the token's patient
    /// compartment (another patient's resources, unshared types, or the wrong shape).
    CompartmentViolation,
    /// Minimization could not be completed (missing hash key, malformed `meta.security`, ...).
    MinimizationFailed,
    /// The user's authentication is too weak, lacks a required method, or is too old for the
    /// route (RFC 9470 step-up).
    InsufficientUserAuthentication,
    /// The route requires a purpose of use and the token states none.
    PurposeRequired,
    /// A stated purpose of use is not an HL7 v3 PurposeOfUse code or not allowed on the route.
    PurposeNotAllowed,
    /// Break-glass was invoked without a valid reason code, or outside its time window.
    BreakGlassInvalid,
    /// The resource is withheld by a patient's privacy restriction.
    Restricted,
    /// A DPoP proof is missing, malformed, stale, signed badly, or names another request or token (RFC 9449 §4.3).
    InvalidDpopProof,
    /// A DPoP proof's `jti` was already used (every worker shares the record).
    DpopProofReplayed,
    /// The DPoP proof is signed by another key than the one the token is bound to (`cnf.jkt`), or the token is not bound to a key.
    DpopKeyMismatch,
    /// A DPoP-bound token sent as a bearer token, or a bearer token where the issuer requires DPoP.
    DpopRequired,
    /// The DPoP scheme is used for an issuer that does not accept it.
    DpopNotAccepted,
    /// A certificate-bound token (`cnf.x5t#S256`, RFC 8705) on a connection without that client certificate.
    CertificateMismatch,
    /// The route requires a sender-constrained token (DPoP or certificate-bound) and got a bearer token.
    SenderConstraintRequired,
    /// The DPoP replay record could not be read or written (shared data failing or full): refused, never skipped.
    ReplayCheckUnavailable,
    /// Token introspection (RFC 7662) answered `active: false`: revoked, expired or unknown.
    TokenInactive,
    /// The issuer's introspection endpoint did not answer in time, or answered with an error.
    IntrospectionUnavailable,
    /// The pre-flight read of a patient-context write got no answer in time, or an upstream error.
    WriteCheckUnavailable,
    /// The pre-flight read of a patient-context write did not return the resource the path names with a version (missing, gone, another resource, unversioned).
    WriteNotVerified,
    /// The client's `If-Match` names another version than the one the pre-flight read checked.
    PreconditionFailed,
}

impl DenyReason {
    /// The HTTP status a client receives.
    pub fn status(self) -> u16 {
        use DenyReason::*;
        match self {
            NoPolicy | KeysUnavailable | AuditUnavailable | ReplayCheckUnavailable | IntrospectionUnavailable | WriteCheckUnavailable => {
                503
            }
            PreconditionFailed => 412,
            WriteNotVerified => 403,
            InvalidPath
            | InvalidHeader
            | PathTooLong
            | AmbiguousCredentials
            | TokenInQuery
            | UnsupportedFhirRequest
            | InvalidRequestBody => 400,
            HeadersTooLarge => 431,
            RequestTooLarge => 413,
            RateLimited => 429,
            NoRoute => 404,
            MethodNotAllowed => 405,
            MissingToken
            | UnsupportedAuthScheme
            | TokenTooLarge
            | MalformedToken
            | AlgorithmNotAllowed
            | EmbeddedKey
            | UnsupportedCrit
            | UnknownIssuer
            | UnknownKey
            | BadSignature
            | MissingExpiry
            | MissingSubject
            | Expired
            | NotYetValid
            | BadIssuedAt
            | BadAudience
            | BadClaim
            | InvalidDpopProof
            | DpopProofReplayed
            | DpopKeyMismatch
            | DpopRequired
            | DpopNotAccepted
            | CertificateMismatch
            | SenderConstraintRequired
            | TokenInactive => 401,
            InsufficientScope
            | InteractionNotAllowed
            | PatientMismatch
            | CompartmentEscape
            | SearchParameterNotAllowed
            | MissingPatientContext => 403,
            HeadNotCheckable => 405,
            InsufficientUserAuthentication => 401,
            PurposeRequired | PurposeNotAllowed | BreakGlassInvalid | Restricted => 403,
            NoMinimizationProfile => 403,
            ResponseNotJson
            | ResponseTooLarge
            | ResponseEncoded
            | ResponseTruncated
            | ResponseUnexpectedShape
            | ResponseUnknownResource
            | CompartmentViolation
            | MinimizationFailed => 502,
        }
    }

    /// Stable machine-readable code used in responses, audit events and metric names.
    pub fn code(self) -> &'static str {
        use DenyReason::*;
        match self {
            NoPolicy => "no_policy",
            InvalidPath => "invalid_path",
            PathTooLong => "path_too_long",
            HeadersTooLarge => "headers_too_large",
            InvalidHeader => "invalid_header",
            RequestTooLarge => "request_too_large",
            InvalidRequestBody => "invalid_request_body",
            RateLimited => "rate_limited",
            NoRoute => "no_route",
            MethodNotAllowed => "method_not_allowed",
            MissingToken => "missing_token",
            AmbiguousCredentials => "ambiguous_credentials",
            UnsupportedAuthScheme => "unsupported_auth_scheme",
            TokenTooLarge => "token_too_large",
            MalformedToken => "malformed_token",
            AlgorithmNotAllowed => "algorithm_not_allowed",
            EmbeddedKey => "embedded_key",
            UnsupportedCrit => "unsupported_crit",
            UnknownIssuer => "unknown_issuer",
            UnknownKey => "unknown_key",
            BadSignature => "bad_signature",
            KeysUnavailable => "keys_unavailable",
            MissingExpiry => "missing_exp",
            MissingSubject => "missing_sub",
            Expired => "token_expired",
            NotYetValid => "token_not_yet_valid",
            BadIssuedAt => "bad_iat",
            BadAudience => "bad_audience",
            BadClaim => "bad_claim",
            TokenInQuery => "token_in_query",
            InsufficientScope => "insufficient_scope",
            InteractionNotAllowed => "interaction_not_allowed",
            UnsupportedFhirRequest => "unsupported_fhir_request",
            PatientMismatch => "patient_mismatch",
            CompartmentEscape => "compartment_escape",
            SearchParameterNotAllowed => "search_parameter_not_allowed",
            HeadNotCheckable => "head_not_checkable",
            CompartmentViolation => "compartment_violation",
            MissingPatientContext => "missing_patient_context",
            AuditUnavailable => "audit_unavailable",
            NoMinimizationProfile => "no_minimization_profile",
            ResponseNotJson => "response_not_json",
            ResponseTooLarge => "response_too_large",
            ResponseEncoded => "response_encoded",
            ResponseTruncated => "response_truncated",
            ResponseUnexpectedShape => "response_unexpected_shape",
            ResponseUnknownResource => "response_unknown_resource",
            MinimizationFailed => "minimization_failed",
            InsufficientUserAuthentication => "insufficient_user_authentication",
            PurposeRequired => "purpose_required",
            PurposeNotAllowed => "purpose_not_allowed",
            BreakGlassInvalid => "break_glass_invalid",
            Restricted => "restricted",
            InvalidDpopProof => "invalid_dpop_proof",
            DpopProofReplayed => "dpop_proof_replayed",
            DpopKeyMismatch => "dpop_key_mismatch",
            DpopRequired => "dpop_required",
            DpopNotAccepted => "dpop_not_accepted",
            CertificateMismatch => "certificate_mismatch",
            SenderConstraintRequired => "sender_constraint_required",
            ReplayCheckUnavailable => "replay_check_unavailable",
            TokenInactive => "token_inactive",
            IntrospectionUnavailable => "introspection_unavailable",
            WriteCheckUnavailable => "write_check_unavailable",
            WriteNotVerified => "write_not_verified",
            PreconditionFailed => "precondition_failed",
        }
    }

    /// A short fixed explanation for humans. Never contains request or token data.
    pub fn message(self) -> &'static str {
        use DenyReason::*;
        match self {
            NoPolicy => "no access policy is loaded",
            InvalidPath => "the request path is malformed or ambiguous",
            PathTooLong => "the request path is too long",
            HeadersTooLarge => "the request headers are too many or too large",
            InvalidHeader => "a request header is not valid text",
            RequestTooLarge => "the request body is too large",
            InvalidRequestBody => "the request body does not match the resource the path names",
            RateLimited => "too many requests; retry later",
            NoRoute => "no route matches this request",
            MethodNotAllowed => "this method is not allowed on this route",
            MissingToken => "an access token is required",
            AmbiguousCredentials => "credentials must be sent once, in the Authorization header",
            UnsupportedAuthScheme => "only the Bearer and DPoP authorization schemes are accepted",
            TokenTooLarge => "the token is too large",
            MalformedToken => "the token is malformed",
            AlgorithmNotAllowed => "the token's signature algorithm is not allowed",
            EmbeddedKey => "tokens carrying their own keys are not accepted",
            UnsupportedCrit => "the token has an unsupported critical header",
            UnknownIssuer => "the token's issuer is not trusted",
            UnknownKey => "the token's signing key is unknown",
            BadSignature => "the token's signature is invalid",
            KeysUnavailable => "the token issuer's keys are temporarily unavailable",
            MissingExpiry => "the token has no expiry",
            MissingSubject => "the token names no subject",
            Expired => "the token has expired",
            NotYetValid => "the token is not valid yet",
            BadIssuedAt => "the token's issue time or lifetime is not acceptable",
            BadAudience => "the token is not intended for this service",
            BadClaim => "the token has a malformed claim",
            TokenInQuery => "access tokens are not accepted in the query string",
            InsufficientScope => "the token lacks a scope this request requires",
            InteractionNotAllowed => "this FHIR interaction is not allowed here",
            UnsupportedFhirRequest => "this FHIR request is not supported",
            PatientMismatch => "the requested data is outside the token's patient context",
            CompartmentEscape => "this search could reach data outside the token's patient context",
            SearchParameterNotAllowed => "this search parameter is not allowed with the token's patient context",
            HeadNotCheckable => "HEAD is not answered here; use GET",
            MissingPatientContext => "the token's patient scopes carry no patient context",
            AuditUnavailable => "the request cannot be audited right now; try again later",
            NoMinimizationProfile => "no data view is defined for this token's scopes and purpose",
            ResponseNotJson
            | ResponseTooLarge
            | ResponseEncoded
            | ResponseTruncated
            | ResponseUnexpectedShape
            | ResponseUnknownResource
            | CompartmentViolation
            | MinimizationFailed => "the upstream response could not be released",
            InsufficientUserAuthentication => "a stronger or more recent user authentication is required",
            PurposeRequired => "a purpose of use is required for this request",
            PurposeNotAllowed => "the stated purpose of use is not allowed for this request",
            BreakGlassInvalid => "emergency access requires a valid reason code within its time window",
            Restricted => "the requested data is restricted",
            InvalidDpopProof => "the DPoP proof is invalid",
            DpopProofReplayed => "the DPoP proof was already used",
            DpopKeyMismatch => "the DPoP proof key does not match the token's binding",
            DpopRequired => "this token must be sent with a DPoP proof",
            DpopNotAccepted => "DPoP is not accepted for this token's issuer",
            CertificateMismatch => "the token is bound to another client certificate",
            SenderConstraintRequired => "this route requires a sender-constrained token",
            ReplayCheckUnavailable => "the DPoP proof cannot be checked right now; try again later",
            TokenInactive => "the token is not active",
            IntrospectionUnavailable => "the token cannot be checked right now; try again later",
            WriteCheckUnavailable => "the resource to change cannot be checked right now; try again later",
            WriteNotVerified => "the resource to change could not be verified",
            PreconditionFailed => "the resource has changed",
        }
    }

    /// The RFC 6750 `error` value for `WWW-Authenticate`, if the status calls for one. A request
    /// without bearer credentials (none, or another scheme) gets a challenge without an error
    /// (§3.1); credentials sent twice or in the query are `invalid_request` (400).
    pub fn bearer_error(self) -> Option<&'static str> {
        match self.status() {
            401 if matches!(self, DenyReason::MissingToken | DenyReason::UnsupportedAuthScheme) => None,
            400 if matches!(self, DenyReason::AmbiguousCredentials | DenyReason::TokenInQuery) => Some("invalid_request"),
            401 if self == DenyReason::InsufficientUserAuthentication => Some("insufficient_user_authentication"),
            401 if self.dpop_proof_error() => Some("invalid_dpop_proof"),
            401 => Some("invalid_token"),
            403 if self == DenyReason::InsufficientScope => Some("insufficient_scope"),
            _ => None,
        }
    }

    /// Whether the refusal is about the DPoP proof itself (RFC 9449 `invalid_dpop_proof`), so
    /// its challenge is the `DPoP` one.
    pub fn dpop_proof_error(self) -> bool {
        matches!(self, DenyReason::InvalidDpopProof | DenyReason::DpopProofReplayed | DenyReason::DpopKeyMismatch)
    }

    /// Whether the refusal concerns how the token was presented under DPoP, so the `DPoP`
    /// challenge carries the error (RFC 9449 §7.1).
    pub fn dpop_challenge(self) -> bool {
        self.dpop_proof_error() || matches!(self, DenyReason::DpopRequired)
    }

    /// The FHIR `OperationOutcome.issue.code` for this refusal.
    pub fn issue_code(self) -> &'static str {
        if self == DenyReason::Restricted {
            return "suppressed";
        }
        match self.status() {
            401 => "login",
            403 => "forbidden",
            404 => "not-found",
            400 | 405 | 413 | 431 => "invalid",
            412 => "conflict",
            429 => "throttled",
            _ => "exception",
        }
    }

    /// Every reason, for metric definition and tests.
    pub const ALL: [DenyReason; 66] = {
        use DenyReason::*;
        [
            NoPolicy,
            InvalidPath,
            PathTooLong,
            HeadersTooLarge,
            InvalidHeader,
            RequestTooLarge,
            InvalidRequestBody,
            RateLimited,
            NoRoute,
            MethodNotAllowed,
            MissingToken,
            AmbiguousCredentials,
            UnsupportedAuthScheme,
            TokenTooLarge,
            MalformedToken,
            AlgorithmNotAllowed,
            EmbeddedKey,
            UnsupportedCrit,
            UnknownIssuer,
            UnknownKey,
            BadSignature,
            KeysUnavailable,
            MissingExpiry,
            MissingSubject,
            Expired,
            NotYetValid,
            BadIssuedAt,
            BadAudience,
            BadClaim,
            TokenInQuery,
            InsufficientScope,
            InteractionNotAllowed,
            UnsupportedFhirRequest,
            PatientMismatch,
            CompartmentEscape,
            SearchParameterNotAllowed,
            MissingPatientContext,
            HeadNotCheckable,
            NoMinimizationProfile,
            ResponseNotJson,
            ResponseTooLarge,
            ResponseEncoded,
            ResponseTruncated,
            ResponseUnexpectedShape,
            ResponseUnknownResource,
            CompartmentViolation,
            MinimizationFailed,
            AuditUnavailable,
            InsufficientUserAuthentication,
            PurposeRequired,
            PurposeNotAllowed,
            BreakGlassInvalid,
            Restricted,
            InvalidDpopProof,
            DpopProofReplayed,
            DpopKeyMismatch,
            DpopRequired,
            DpopNotAccepted,
            CertificateMismatch,
            SenderConstraintRequired,
            ReplayCheckUnavailable,
            TokenInactive,
            IntrospectionUnavailable,
            WriteCheckUnavailable,
            WriteNotVerified,
            PreconditionFailed,
        ]
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_statuses_sane() {
        let codes: HashSet<_> = DenyReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), DenyReason::ALL.len());
        for r in DenyReason::ALL {
            assert!((400..600).contains(&r.status()));
            assert!(r.code().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(DenyReason::MissingToken.bearer_error(), None);
        // RFC 6750 §3.1: no error for a request without bearer credentials; invalid_request
        // (400) for credentials sent twice or in the query.
        assert_eq!((DenyReason::UnsupportedAuthScheme.status(), DenyReason::UnsupportedAuthScheme.bearer_error()), (401, None));
        for r in [DenyReason::AmbiguousCredentials, DenyReason::TokenInQuery] {
            assert_eq!((r.status(), r.bearer_error()), (400, Some("invalid_request")));
        }
        assert_eq!(DenyReason::Expired.bearer_error(), Some("invalid_token"));
        assert_eq!(DenyReason::InsufficientScope.bearer_error(), Some("insufficient_scope"));
        assert_eq!(DenyReason::InsufficientUserAuthentication.bearer_error(), Some("insufficient_user_authentication"));
        assert_eq!(DenyReason::InsufficientUserAuthentication.status(), 401);
        for r in [DenyReason::PurposeRequired, DenyReason::PurposeNotAllowed, DenyReason::BreakGlassInvalid, DenyReason::Restricted] {
            assert_eq!((r.status(), r.bearer_error()), (403, None));
        }
        assert_eq!(DenyReason::Restricted.issue_code(), "suppressed");
    }
}
