//! The message header.
//!
//! Only `msg_id` and `msg_type` are required to be strings when decoding: everything a relay needs
//! to route a message. The other fields default when absent (some kernels omit `date`), but must
//! be strings when present.

use serde::{Deserialize, Serialize};

/// The messaging protocol version Parallax speaks.
pub const PROTOCOL_VERSION: &str = "5.3";

/// A message header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_id: String,
    pub msg_type: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub username: String,
    /// ISO 8601 with at most six fractional digits: jupyter_client parses no more.
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub version: String,
}

impl Header {
    /// A fresh header with a new random `msg_id`, dated now.
    pub fn new(msg_type: &str, session: &str, username: &str) -> Self {
        Header {
            msg_id: uuid::Uuid::new_v4().simple().to_string(),
            msg_type: msg_type.to_owned(),
            session: session.to_owned(),
            username: username.to_owned(),
            date: now_iso8601(),
            version: PROTOCOL_VERSION.to_owned(),
        }
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (microseconds).
pub fn now_iso8601() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_have_microseconds() {
        let date = now_iso8601();
        // 2026-11-23T20:16:23.123456Z
        assert_eq!(date.len(), 27, "{date}");
        assert!(date.ends_with('Z'));
        assert_eq!(date.as_bytes()[19], b'.');
    }

    #[test]
    fn new_headers_are_unique() {
        let a = Header::new("status", "s", "u");
        let b = Header::new("status", "s", "u");
        assert_ne!(a.msg_id, b.msg_id);
        assert_eq!(a.version, PROTOCOL_VERSION);
    }
}
