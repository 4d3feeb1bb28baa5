//! Operational log lines: one JSON object per line, for operators to grep and alert on.
//!
//! ```text
//! {"level":"warn","logger":"phi-guard","msg":"JWKS fetch failed","issuer":"https://idp.example","failures":3,"retryInS":30}
//! ```
//!
//! `level`, `logger` and `msg` come first, then the fields in the order they were added. A
//! message is short and stable (what an alert matches); what varies goes into camelCase fields,
//! named the same wherever they mean the same thing (`issuer`, `policy`, `revision`, `stream`,
//! `seq`, `cluster`, `status`, `error`, `reason`, ...). Fields never carry PHI, tokens or request
//! paths. Field values are strings, integers and booleans; JSON escaping keeps outside text
//! (error messages, issuer names) on one line, whatever it holds.
//!
//! Audit lines (`phi-guard-audit: {...}`) are not written here: they are sealed, and the
//! offline verifier reads them byte for byte.

use serde_json::{Map, Value};

use super::host::{Host, Level};

/// The `logger` of every operational line.
pub const LOGGER: &str = "phi-guard";

/// The keys every line starts with; a field cannot take them.
const RESERVED: [&str; 3] = ["level", "logger", "msg"];

/// A field value: a string, an integer or a boolean.
pub trait FieldValue {
    /// The value as JSON.
    fn into_value(self) -> Value;
}

impl FieldValue for &str {
    fn into_value(self) -> Value {
        Value::String(self.to_owned())
    }
}

impl FieldValue for String {
    fn into_value(self) -> Value {
        Value::String(self)
    }
}

impl FieldValue for &String {
    fn into_value(self) -> Value {
        Value::String(self.clone())
    }
}

impl FieldValue for bool {
    fn into_value(self) -> Value {
        Value::Bool(self)
    }
}

macro_rules! integer_field {
    ($($t:ty),*) => {
        $(impl FieldValue for $t {
            fn into_value(self) -> Value {
                Value::from(self)
            }
        })*
    };
}

integer_field!(u16, u32, u64, usize, i64);

/// One operational line being built; [`Line::emit`] writes it.
#[derive(Debug, Clone)]
#[must_use = "a log line is written by `emit`"]
pub struct Line {
    level: Level,
    fields: Map<String, Value>,
}

/// An `info` line: normal operation (a policy loaded, keys fetched).
pub fn info(msg: &str) -> Line {
    Line::new(Level::Info, msg)
}

/// A `warn` line: something the operator may want to know (a failed fetch, a withheld response).
pub fn warn(msg: &str) -> Line {
    Line::new(Level::Warn, msg)
}

/// An `error` line: something is broken (a hostcall failed, a configuration was refused).
pub fn error(msg: &str) -> Line {
    Line::new(Level::Error, msg)
}

/// The name of a level, as the `level` key writes it.
pub const fn level_name(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl Line {
    fn new(level: Level, msg: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("level".to_owned(), Value::String(level_name(level).to_owned()));
        fields.insert("logger".to_owned(), Value::String(LOGGER.to_owned()));
        fields.insert("msg".to_owned(), Value::String(msg.to_owned()));
        Self { level, fields }
    }

    /// Add a field. A key that is already there (the leading keys included) keeps its first
    /// value: a line never loses its level or message.
    pub fn field(mut self, key: &str, value: impl FieldValue) -> Self {
        if !RESERVED.contains(&key) && !self.fields.contains_key(key) {
            self.fields.insert(key.to_owned(), value.into_value());
        }
        self
    }

    /// Add a field if there is a value.
    pub fn field_opt(self, key: &str, value: Option<impl FieldValue>) -> Self {
        match value {
            Some(v) => self.field(key, v),
            None => self,
        }
    }

    /// The line's level.
    pub const fn level(&self) -> Level {
        self.level
    }

    /// The line: one JSON object, no newline.
    pub fn render(&self) -> String {
        // A map of strings, integers and booleans always serializes; the fallback is only there
        // so that this cannot panic.
        serde_json::to_string(&self.fields).unwrap_or_else(|_| {
            format!("{{\"level\":\"{}\",\"logger\":\"{LOGGER}\",\"msg\":\"unserializable log line\"}}", level_name(self.level))
        })
    }

    /// Write the line to the host's log at its level.
    pub fn emit(self, host: &impl Host) {
        host.log(self.level, &self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &Line) -> Value {
        let text = line.render();
        assert!(!text.contains('\n') && !text.contains('\r'), "one line: {text:?}");
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn leading_keys_then_fields_in_order() {
        let line = warn("JWKS fetch failed").field("issuer", "https://idp.example").field("failures", 3u32).field("retryInS", 30u64);
        assert_eq!(
            line.render(),
            r#"{"level":"warn","logger":"phi-guard","msg":"JWKS fetch failed","issuer":"https://idp.example","failures":3,"retryInS":30}"#
        );
        assert_eq!(line.level(), Level::Warn);
        let v = parse(&info("policy loaded").field("shadow", false).field_opt("status", None::<u16>).field_opt("routes", Some(4usize)));
        assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["level", "logger", "msg", "shadow", "routes"]);
        assert_eq!(v["level"], "info");
        assert_eq!(error("x").render(), r#"{"level":"error","logger":"phi-guard","msg":"x"}"#);
    }

    #[test]
    fn a_field_never_replaces_the_leading_keys_or_an_earlier_field() {
        let v = parse(&warn("m").field("level", "info").field("logger", "other").field("msg", "forged").field("a", 1u32).field("a", 2u32));
        assert_eq!(
            (v["level"].as_str(), v["logger"].as_str(), v["msg"].as_str(), v["a"].as_u64()),
            (Some("warn"), Some("phi-guard"), Some("m"), Some(1))
        );
        assert_eq!(v.as_object().unwrap().len(), 4);
    }

    #[test]
    fn hostile_values_stay_one_valid_json_line() {
        let hostile = [
            "a\"b\\c",
            "line\nbreak\r\nand\ttab",
            "\u{0}\u{1}\u{7}\u{8}\u{b}\u{c}\u{1b}[31m\u{1f}\u{7f}",
            "phi-guard-audit: {\"seq\":0}",
            "}\n{\"level\":\"info\",\"msg\":\"forged\"}",
            "Ünïcödé ✓ 日本語 🩺 \u{2028}\u{2029}\u{feff}",
            "</script><!--",
            "",
        ];
        for s in hostile {
            let owned = s.to_owned();
            let line = error(s).field("error", s).field("issuer", &owned).field(s, owned.clone()).field("n", i64::MIN).field("m", u64::MAX);
            let text = line.render();
            assert!(!text.contains(|c: char| c < ' '), "no raw C0 control characters: {text:?}");
            let v = parse(&line);
            assert_eq!(v["msg"], s);
            assert_eq!(v["error"], s);
            assert_eq!(v["issuer"], s);
            assert_eq!(v["n"].as_i64(), Some(i64::MIN));
            assert_eq!(v["m"].as_u64(), Some(u64::MAX));
            assert!(text.starts_with("{\"level\":\"error\",\"logger\":\"phi-guard\",\"msg\":"));
        }
    }
}
