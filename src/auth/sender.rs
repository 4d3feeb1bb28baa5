//! Sender-constrained tokens: a token bound to a key (`cnf.jkt`, DPoP, RFC 9449) or to a client
//! certificate (`cnf.x5t#S256`, mutual TLS, RFC 8705) is accepted only from a sender that proves
//! it holds that key or certificate on this request. A stolen bound token is useless without the
//! key; a bound token is never accepted as a plain bearer token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::dpop::{verify_proof, DpopSettings, ProofTarget, VerifiedProof};
use super::principal::Principal;
use crate::reason::DenyReason;
use crate::time::UnixSeconds;

/// How an issuer's tokens may be presented (issuer `dpop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpopMode {
    /// Only DPoP-bound tokens with a proof; bearer tokens are refused.
    Required,
    /// Bearer tokens, and DPoP-bound tokens with a proof (default).
    #[default]
    Allowed,
    /// The DPoP scheme is refused (a DPoP-bound token can then never be used).
    Disabled,
}

/// The `Authorization` scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer` (RFC 6750).
    Bearer,
    /// `DPoP` (RFC 9449 §7.1).
    Dpop,
}

/// How the token was presented on this request.
#[derive(Debug, Clone, Copy)]
pub struct Presentation<'a> {
    /// Its scheme.
    pub scheme: Scheme,
    /// The access token.
    pub token: &'a str,
    /// Every `DPoP` header value.
    pub proofs: &'a [&'a str],
    /// The request the proof must name.
    pub target: ProofTarget<'a>,
    /// The SHA-256 of the client certificate Envoy verified on this connection, as Envoy
    /// reports it (hex, `connection.sha256_peer_certificate_digest`); `None` without one.
    pub peer_certificate_sha256: Option<&'a str>,
}

/// Check that the sender holds what the token is bound to, and that the issuer's and route's
/// rules for how tokens are presented are met. A DPoP proof that passes is returned: the caller
/// must still refuse it if its `jti` was seen before ([`VerifiedProof::replay_key`]).
pub fn check(
    principal: &Principal,
    mode: DpopMode,
    route_requires: bool,
    presented: &Presentation<'_>,
    settings: &DpopSettings,
    now: UnixSeconds,
) -> Result<Option<VerifiedProof>, DenyReason> {
    let cnf = &principal.confirmation;
    // The certificate first: a refusal here leaves no DPoP proof remembered, so the host may
    // read the certificate and decide again.
    if let Some(bound) = &cnf.x5t_s256 {
        let holds = presented.peer_certificate_sha256.and_then(certificate_thumbprint).is_some_and(|t| &t == bound);
        if !holds {
            return Err(DenyReason::CertificateMismatch);
        }
    }
    let proof = match presented.scheme {
        Scheme::Dpop => {
            if mode == DpopMode::Disabled {
                return Err(DenyReason::DpopNotAccepted);
            }
            // Exactly one proof (Envoy joins repeated headers with `,`, which a JWS never holds).
            let [proof] = presented.proofs else { return Err(DenyReason::InvalidDpopProof) };
            if proof.contains(',') {
                return Err(DenyReason::InvalidDpopProof);
            }
            let verified = verify_proof(proof.trim(), &presented.target, presented.token, settings, now)?;
            // §7.1: the DPoP scheme with a token that is not bound to this very key.
            if cnf.jkt.as_deref() != Some(verified.jkt.as_str()) {
                return Err(DenyReason::DpopKeyMismatch);
            }
            Some(verified)
        }
        Scheme::Bearer => {
            if cnf.jkt.is_some() || mode == DpopMode::Required {
                return Err(DenyReason::DpopRequired);
            }
            None
        }
    };
    if route_requires && !cnf.bound() {
        return Err(DenyReason::SenderConstraintRequired);
    }
    Ok(proof)
}

/// The RFC 8705 `x5t#S256` of a certificate from its SHA-256 in hex (Envoy's form).
pub fn certificate_thumbprint(hex: &str) -> Option<String> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let bytes = (0..32).map(|i| hex.get(i * 2..i * 2 + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect::<Option<Vec<u8>>>()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::Confirmation;
    use crate::testing::dpop::{proof_for, ProofKey};
    use crate::testing::NOW;

    const TOKEN: &str = "header.payload.signature";
    const CERT_HEX: &str = "3ab1f1e0d4c7b6a5f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7";

    fn bound(jkt: Option<String>, x5t: Option<String>) -> Principal {
        Principal { confirmation: Confirmation { jkt, x5t_s256: x5t }, ..Principal::default() }
    }

    fn presented<'a>(scheme: Scheme, proofs: &'a [&'a str], cert: Option<&'a str>) -> Presentation<'a> {
        Presentation {
            scheme,
            token: TOKEN,
            proofs,
            target: ProofTarget { method: "GET", scheme: "https", authority: "fhir.phi-guard.test", path: "/fhir/Patient/p1" },
            peer_certificate_sha256: cert,
        }
    }

    fn run(p: &Principal, mode: DpopMode, route: bool, pr: &Presentation<'_>) -> Result<bool, DenyReason> {
        check(p, mode, route, pr, &DpopSettings::default(), NOW).map(|v| v.is_some())
    }

    #[test]
    fn dpop_bound_tokens_need_a_proof_by_their_key() {
        let es = ProofKey::Es256;
        let good = proof_for(es, "GET", "/fhir/Patient/p1", TOKEN, "j1", NOW);
        let other_key = proof_for(ProofKey::EdDsa, "GET", "/fhir/Patient/p1", TOKEN, "j1", NOW);
        let token = bound(Some(es.thumbprint()), None);
        let dpop = |proofs: &[&str]| run(&token, DpopMode::Allowed, false, &presented(Scheme::Dpop, proofs, None));
        assert_eq!(dpop(&[&good]), Ok(true));
        assert_eq!(dpop(&[&other_key]), Err(DenyReason::DpopKeyMismatch));
        assert_eq!(dpop(&[]), Err(DenyReason::InvalidDpopProof));
        assert_eq!(dpop(&[&good, &good]), Err(DenyReason::InvalidDpopProof));
        assert_eq!(dpop(&[&format!("{good},{good}")]), Err(DenyReason::InvalidDpopProof));
        // The bound token sent as a bearer token, with or without the proof beside it.
        for proofs in [&[][..], &[good.as_str()][..]] {
            let r = run(&token, DpopMode::Allowed, false, &presented(Scheme::Bearer, proofs, None));
            assert_eq!(r, Err(DenyReason::DpopRequired));
        }
        // An unbound token under the DPoP scheme, even with a good proof.
        let unbound = bound(None, None);
        assert_eq!(run(&unbound, DpopMode::Allowed, false, &presented(Scheme::Dpop, &[&good], None)), Err(DenyReason::DpopKeyMismatch));
        // Issuer modes.
        assert_eq!(run(&unbound, DpopMode::Required, false, &presented(Scheme::Bearer, &[], None)), Err(DenyReason::DpopRequired));
        assert_eq!(run(&unbound, DpopMode::Allowed, false, &presented(Scheme::Bearer, &[], None)), Ok(false));
        assert_eq!(run(&token, DpopMode::Disabled, false, &presented(Scheme::Dpop, &[&good], None)), Err(DenyReason::DpopNotAccepted));
        assert_eq!(run(&token, DpopMode::Required, false, &presented(Scheme::Dpop, &[&good], None)), Ok(true));
    }

    #[test]
    fn certificate_bound_tokens_need_that_certificate_on_the_connection() {
        let thumb = certificate_thumbprint(CERT_HEX).unwrap();
        let token = bound(None, Some(thumb));
        let bearer = |cert: Option<&str>| run(&token, DpopMode::Allowed, false, &presented(Scheme::Bearer, &[], cert));
        assert_eq!(bearer(Some(CERT_HEX)), Ok(false));
        assert_eq!(bearer(Some(&CERT_HEX.to_uppercase())), Ok(false), "hex case does not matter");
        assert_eq!(bearer(None), Err(DenyReason::CertificateMismatch));
        assert_eq!(bearer(Some(&CERT_HEX.replace('3', "4"))), Err(DenyReason::CertificateMismatch));
        assert_eq!(bearer(Some("zz")), Err(DenyReason::CertificateMismatch));
        assert_eq!(certificate_thumbprint(&"g".repeat(64)), None);
    }

    #[test]
    fn routes_may_require_a_sender_constraint() {
        let unbound = bound(None, None);
        assert_eq!(
            run(&unbound, DpopMode::Allowed, true, &presented(Scheme::Bearer, &[], Some(CERT_HEX))),
            Err(DenyReason::SenderConstraintRequired)
        );
        let cert_bound = bound(None, certificate_thumbprint(CERT_HEX));
        assert_eq!(run(&cert_bound, DpopMode::Allowed, true, &presented(Scheme::Bearer, &[], Some(CERT_HEX))), Ok(false));
    }
}
