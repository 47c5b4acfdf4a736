//! The envelope every frame travels in (PROTOCOL.md A2), and the wire errors
//! that map onto SOCP error codes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::canonical::{self, CanonicalError};

/// The largest WebSocket message we accept or send (PROTOCOL.md C8).
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// What every size limit on user content leaves for the hops (PROTOCOL.md
/// C12): a node adds `user_id`, `sender`, `msg_id`, its own envelope header
/// and signature, and on a link the `recipients` of a group frame (at most
/// `--max-group-members` ids), so content that fits at the first hop fits at
/// every hop.
pub const ENVELOPE_ROOM: usize = 128 << 10;
/// The largest frame a user may send with content in it; a node refuses a
/// bigger one (`TOO_LARGE`, naming its `msg_id`) and a client refuses to
/// compose one.
pub const MAX_CONTENT_FRAME_BYTES: usize = MAX_FRAME_BYTES - ENVELOPE_ROOM;

/// The SOCP error codes (PROTOCOL.md A5, plus the ones `socp` adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    UserNotFound,
    InvalidSig,
    BadKey,
    Timeout,
    UnknownType,
    NameInUse,
    BadFrame,
    TooLarge,
    RateLimited,
    QuotaExceeded,
    NotAllowed,
    /// The node could not store the content (disk full, I/O error): it was
    /// not taken; send it again later.
    Storage,
}

impl ErrorCode {
    /// The code as it appears in an `ERROR` payload.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UserNotFound => "USER_NOT_FOUND",
            ErrorCode::InvalidSig => "INVALID_SIG",
            ErrorCode::BadKey => "BAD_KEY",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::NameInUse => "NAME_IN_USE",
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::NotAllowed => "NOT_ALLOWED",
            ErrorCode::Storage => "STORAGE",
        }
    }
}

impl ErrorCode {
    /// The code an `ERROR` payload names, if it is one we know.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    const ALL: [ErrorCode; 12] = [
        ErrorCode::UserNotFound,
        ErrorCode::InvalidSig,
        ErrorCode::BadKey,
        ErrorCode::Timeout,
        ErrorCode::UnknownType,
        ErrorCode::NameInUse,
        ErrorCode::BadFrame,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::NotAllowed,
        ErrorCode::Storage,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame from a peer was refused; each maps to the code its `ERROR`
/// answer carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("frame is not a JSON envelope: {0}")]
    NotEnvelope(String),
    #[error("payload has no canonical form: {0}")]
    NotCanonical(#[from] CanonicalError),
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("bad {kind} payload: {detail}")]
    BadPayload { kind: String, detail: String },
}

impl WireError {
    /// The SOCP error code a peer is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::TooLarge(_) => ErrorCode::TooLarge,
            WireError::UnknownType(_) => ErrorCode::UnknownType,
            WireError::NotEnvelope(_)
            | WireError::NotCanonical(_)
            | WireError::BadPayload { .. } => ErrorCode::BadFrame,
        }
    }

    /// What went wrong, for a log line: like the error, but without what the
    /// parser quotes from the frame (serde quotes a mistyped value, which may
    /// be a ciphertext or a key). The peer's `ERROR` answer keeps the detail.
    pub fn log_summary(&self) -> String {
        let short = |s: &str| s.chars().take(32).collect::<String>();
        match self {
            WireError::TooLarge(_) => self.to_string(),
            WireError::UnknownType(kind) => format!("unknown frame type {:?}", short(kind)),
            WireError::NotEnvelope(_) => "frame is not a JSON envelope".to_owned(),
            WireError::NotCanonical(_) => "payload has no canonical form".to_owned(),
            WireError::BadPayload { kind, .. } => format!("bad {} payload", short(kind)),
        }
    }
}

/// `{"type", "from", "to", "ts", "payload", "sig"}`, plus `seq` and `mac` on a
/// link session (PROTOCOL.md B, `mac-v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub from: String,
    pub to: String,
    pub ts: i64,
    pub payload: Map<String, Value>,
    #[serde(default)]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Envelope {
    /// A new unsigned envelope stamped with the current time.
    pub fn new(kind: &str, from: &str, to: &str, payload: Map<String, Value>) -> Self {
        Envelope {
            kind: kind.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            ts: now_ms(),
            payload,
            sig: String::new(),
            seq: None,
            mac: None,
        }
    }

    /// Parses one text frame, refusing oversized frames and payloads that
    /// have no canonical form (so that every accepted frame can be verified).
    pub fn parse(text: &str) -> Result<Self, WireError> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(text.len()));
        }
        let env: Envelope =
            serde_json::from_str(text).map_err(|e| WireError::NotEnvelope(e.to_string()))?;
        canonical::check_map(&env.payload)?;
        Ok(env)
    }

    /// The bytes the RSA `sig` is computed over: the canonical payload.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::map_to_string(&self.payload).map(String::into_bytes)
    }

    /// The bytes a `mac-v1` MAC is computed over: the canonical envelope
    /// without `sig` and `mac`.
    pub fn mac_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        let payload = canonical::map_to_string(&self.payload)?;
        Ok(self.text(&payload, None, None).into_bytes())
    }

    /// The frame as sent on a `mac-v1` session, with `mac` computed by `tag`
    /// over [`Envelope::mac_bytes`]: canonical JSON with `mac` and an empty
    /// `sig` added, so the payload is serialized once for both.
    pub fn to_json_with_mac(
        &mut self,
        tag: impl FnOnce(&[u8]) -> String,
    ) -> Result<String, CanonicalError> {
        let payload = canonical::map_to_string(&self.payload)?;
        let mac = tag(self.text(&payload, None, None).as_bytes());
        let text = self.text(&payload, Some(&mac), Some(""));
        self.sig.clear();
        self.mac = Some(mac);
        Ok(text)
    }

    /// The frame as sent with an RSA signature: `payload` is the canonical
    /// payload the signature covers ([`Envelope::signed_bytes`]), written
    /// into the frame as it is, so it is serialized once for both.
    pub fn to_json_signed(&mut self, payload: &str, sig: String) -> String {
        let text = self.text(payload, None, Some(&sig));
        self.sig = sig;
        text
    }

    /// Written field by field in sorted key order (from, [mac], payload,
    /// [seq], [sig], to, ts, type) rather than by copying the payload into
    /// a new map: the canonical form when neither `mac` nor `sig` is given.
    fn text(&self, payload: &str, mac: Option<&str>, sig: Option<&str>) -> String {
        let mut out = String::with_capacity(payload.len() + 192 + sig.map_or(0, str::len));
        out.push_str("{\"from\":");
        canonical::push_string(&mut out, &self.from);
        if let Some(mac) = mac {
            out.push_str(",\"mac\":");
            canonical::push_string(&mut out, mac);
        }
        out.push_str(",\"payload\":");
        out.push_str(payload);
        if let Some(seq) = self.seq {
            out.push_str(&format!(",\"seq\":{seq}"));
        }
        if let Some(sig) = sig {
            out.push_str(",\"sig\":");
            canonical::push_string(&mut out, sig);
        }
        out.push_str(",\"to\":");
        canonical::push_string(&mut out, &self.to);
        out.push_str(&format!(",\"ts\":{},\"type\":", self.ts));
        canonical::push_string(&mut out, &self.kind);
        out.push('}');
        out
    }

    /// The frame as sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, integers and a `Map` cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch, as `ts` fields carry.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How far a signed hello's `ts` may be from the receiver's clock
/// (PROTOCOL.md C3).
pub const HELLO_FRESHNESS_MS: i64 = 120_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_summary_quotes_nothing_from_the_frame() {
        let secret = "SECRET-CIPHERTEXT-b64";
        let mut payload = Map::new();
        payload.insert("index".into(), Value::String(secret.into()));
        let e = crate::wire::messages::Message::from_payload("FILE_CHUNK", payload).unwrap_err();
        assert!(e.to_string().contains(secret), "serde quotes it: {e}");
        assert_eq!(e.log_summary(), "bad FILE_CHUNK payload");
        let e = Envelope::parse(&format!("{{\"type\":\"DM\",\"from\":{secret:?}}}")).unwrap_err();
        assert!(!e.log_summary().contains(secret), "{}", e.log_summary());
    }

    #[test]
    fn parses_and_refuses() {
        let env = Envelope::parse(
            r#"{"type":"HEARTBEAT","from":"a","to":"b","ts":1,"payload":{},"sig":""}"#,
        )
        .unwrap();
        assert_eq!(env.kind, "HEARTBEAT");
        assert_eq!(
            Envelope::parse(r#"{"type":"X","from":"a","to":"b","ts":1,"payload":{"f":1.5}}"#)
                .unwrap_err()
                .code(),
            ErrorCode::BadFrame
        );
        assert_eq!(
            Envelope::parse("[1]").unwrap_err().code(),
            ErrorCode::BadFrame
        );
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        assert_eq!(
            Envelope::parse(&big).unwrap_err().code(),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn error_codes_parse_back() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, Value::String(code.as_str().to_owned()));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    #[test]
    fn a_signed_frame_carries_the_payload_it_signed() {
        let mut payload = Map::new();
        payload.insert("é".into(), Value::from("x\u{7f}"));
        let mut env = Envelope::new("HEARTBEAT", "a", "b", payload);
        let signed = String::from_utf8(env.signed_bytes().unwrap()).unwrap();
        let text = env.to_json_signed(&signed, "c2ln".into());
        let back = Envelope::parse(&text).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.signed_bytes().unwrap(), signed.into_bytes());
    }

    #[test]
    fn mac_bytes_cover_header_and_seq() {
        let mut env = Envelope::new("HEARTBEAT", "a", "b", Map::new());
        env.ts = 5;
        env.seq = Some(7);
        env.sig = "ignored".into();
        env.mac = Some("ignored".into());
        assert_eq!(
            String::from_utf8(env.mac_bytes().unwrap()).unwrap(),
            r#"{"from":"a","payload":{},"seq":7,"to":"b","ts":5,"type":"HEARTBEAT"}"#
        );
    }
}
