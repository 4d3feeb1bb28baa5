//! Response bodies in and out: size cap, JSON parsing with distinct refusal reasons, and
//! re-serialization from the parsed tree.

use serde_json::error::Category;
use serde_json::Value;

use crate::reason::DenyReason;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parse a whole buffered body. A leading UTF-8 BOM is ignored (RFC 8259 §8.1 allows it).
pub fn parse(body: &[u8], max_bytes: usize) -> Result<Value, DenyReason> {
    if body.len() > max_bytes {
        return Err(DenyReason::ResponseTooLarge);
    }
    let body = body.strip_prefix(BOM).unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DenyReason::ResponseNotJson);
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        Category::Eof => DenyReason::ResponseTruncated,
        Category::Io | Category::Syntax | Category::Data => DenyReason::ResponseNotJson,
    })
}

/// Serialize a minimized tree (compact, UTF-8, keys in upstream order).
pub fn serialize(value: &Value) -> Result<Vec<u8>, DenyReason> {
    serde_json::to_vec(value).map_err(|_| DenyReason::MinimizationFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_distinct() {
        assert_eq!(parse(b"{}", 1), Err(DenyReason::ResponseTooLarge));
        assert_eq!(parse(b"", 100), Err(DenyReason::ResponseNotJson));
        assert_eq!(parse(b"  \n", 100), Err(DenyReason::ResponseNotJson));
        assert_eq!(parse(b"<html>", 100), Err(DenyReason::ResponseNotJson));
        assert_eq!(parse(br#"{"a": 1,}"#, 100), Err(DenyReason::ResponseNotJson));
        assert_eq!(parse(br#"{"a": [1, 2"#, 100), Err(DenyReason::ResponseTruncated));
        assert_eq!(parse(b"{\"a\": \"\xff\"}", 100), Err(DenyReason::ResponseNotJson));
        assert_eq!(parse(br#"{"a": 1} x"#, 100), Err(DenyReason::ResponseNotJson));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(parse(deep.as_bytes(), 1000), Err(DenyReason::ResponseNotJson));
        assert_eq!(parse(b"\xEF\xBB\xBF{\"a\":1}", 100).unwrap()["a"], 1);
    }

    #[test]
    fn keeps_order_and_numbers() {
        let src = r#"{"z":1,"a":{"y":0.10,"b":12345678901234567890123},"m":[1.50e+3]}"#;
        let v = parse(src.as_bytes(), 1000).unwrap();
        assert_eq!(String::from_utf8(serialize(&v).unwrap()).unwrap(), src);
    }
}
