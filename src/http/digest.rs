//! Response integrity (RFC 9530): the `Content-Digest` of the bytes actually released, so a
//! recipient or an auditor can show the body was not altered after the filter.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Field name of the digest (a response trailer when the body was rewritten, since the headers
/// have already been sent by then).
pub const CONTENT_DIGEST: &str = "content-digest";

/// The `Content-Digest` field value for `body`: `sha-256=:<base64 of SHA-256>:` (an RFC 8941
/// dictionary with one byte-sequence member).
pub fn content_digest(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("sha-256=:{}:", STANDARD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9530_examples() {
        // RFC 9530 §2 and appendix B.1: the response body `{"hello": "world"}`.
        assert_eq!(content_digest(b"{\"hello\": \"world\"}"), "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:");
        assert_eq!(content_digest(b""), "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:");
    }
}
