//! Canonical JSON (PROTOCOL.md A3): byte-identical to Python's
//! `json.dumps(obj, sort_keys=True, separators=(",", ":"))`, the bytes every
//! signature and MAC is computed over.

use serde_json::Value;
use std::fmt::Write as _;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// SOCP payloads carry integers only; float formatting differs between
    /// encoders, so we refuse rather than guess.
    #[error("non-integer number {0} (SOCP payloads carry integers only)")]
    NonInteger(String),
}

/// Checks that a value has a canonical form (integers only) without
/// building it.
pub fn check(value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => {
            Err(CanonicalError::NonInteger(n.to_string()))
        }
        Value::Array(items) => items.iter().try_for_each(check),
        Value::Object(map) => check_map(map),
        _ => Ok(()),
    }
}

/// [`check`] for an object given as a map.
pub fn check_map(map: &serde_json::Map<String, Value>) -> Result<(), CanonicalError> {
    map.values().try_for_each(check)
}

/// The canonical encoding of `value` as bytes.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    to_string(value).map(String::into_bytes)
}

/// The canonical encoding of `value`.
pub fn to_string(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value)?;
    Ok(out)
}

/// The canonical encoding of a JSON object given as a map.
pub fn map_to_string(map: &serde_json::Map<String, Value>) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_object(&mut out, map)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                return Err(CanonicalError::NonInteger(n.to_string()));
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map)?,
    }
    Ok(())
}

fn write_object(
    out: &mut String,
    map: &serde_json::Map<String, Value>,
) -> Result<(), CanonicalError> {
    // Rust orders `str` by UTF-8 bytes, which is the same as ordering by code
    // point, which is what Python's `sorted` does for `str` keys.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value)?;
    }
    out.push('}');
    Ok(())
}

/// The length in bytes of the canonical encoding of a map, counted without
/// building it: what a frame becomes once a node re-sends it (escapes
/// included: a DEL grows to `\u007f`, six bytes). Integers only, as
/// [`check`] ensures; anything else counts as its `to_string`.
pub fn map_len(map: &serde_json::Map<String, Value>) -> usize {
    2 + map.len().saturating_sub(1)
        + map
            .iter()
            .map(|(k, v)| string_len(k) + 1 + value_len(v))
            .sum::<usize>()
}

fn value_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => string_len(s),
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(value_len).sum::<usize>(),
        Value::Object(m) => map_len(m),
    }
}

fn string_len(s: &str) -> usize {
    // By bytes (content is mostly base64): a character's escape is counted
    // at its first byte, six bytes per UTF-16 unit.
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x20..=0x7e => 1,
            0x80..=0xbf => 0,
            0xf0..=0xff => 12,
            _ => 6,
        })
        .sum::<usize>()
}

/// Appends `s` as a canonical JSON string.
pub fn push_string(out: &mut String, s: &str) {
    write_string(out, s);
}

/// Python's `ensure_ascii` string escaping. Runs of printable ASCII (all of
/// a base64 field) are copied whole; only what needs escaping is looked at.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            continue;
        }
        if b >= 0x80 && !s.is_char_boundary(i) {
            continue; // inside a multi-byte character, escaped at its start
        }
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                let c = s[i..].chars().next().unwrap_or('\u{fffd}');
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
                start = i + c.len_utf8();
                continue;
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_counted_length_is_the_canonical_length() {
        let v = json!({
            "s": "a\u{7f}\u{0}é😀/\"\\\n\t\u{8}\u{c}\r x",
            "n": -12345, "u": 18446744073709551615u64, "t": true, "f": false, "z": null,
            "list": [1, "two", [], {}], "obj": {"k": {"deep": [true, "ü"]}}, "e": {}
        });
        let Value::Object(m) = &v else { unreachable!() };
        assert_eq!(map_len(m), map_to_string(m).unwrap().len());
    }

    #[test]
    fn escapes_like_python() {
        let v = json!({"s": "a\u{7f}\u{0}é😀/\"\\"});
        assert_eq!(
            to_string(&v).unwrap(),
            r#"{"s":"a\u007f\u0000\u00e9\ud83d\ude00/\"\\"}"#
        );
    }

    #[test]
    fn refuses_floats() {
        assert!(to_string(&json!({"x": 1.5})).is_err());
        assert_eq!(
            to_string(&json!([u64::MAX, i64::MIN])).unwrap(),
            format!("[{},{}]", u64::MAX, i64::MIN)
        );
    }
}
