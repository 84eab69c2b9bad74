//! Decoding received frames into messages and encoding messages into signed frames.
//!
//! [`Session`] holds what one end of a link needs: its session id, its username and the link's
//! [`Signer`]. Decoding checks, in order: the delimiter is there, four JSON frames and a signature
//! follow it, the signature is right, and each JSON frame is an object of the right shape. Any
//! failure is a [`DecodeError`] naming what was wrong; nothing in here panics on received data.
//! A JSON frame need not be UTF-8 inside its strings: jupyter_client writes such frames (see
//! [`crate::message::parse_frame`]), so they are passed on as they are.

use std::fmt;

use bytes::Bytes;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::header::Header;
use crate::message::{to_json_bytes, Message, ParentRef};
use crate::sign::Signer;

/// The frame that separates routing identities from the message.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

/// One of the four signed JSON frames, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Header,
    ParentHeader,
    Metadata,
    Content,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::ParentHeader => "parent_header",
            Part::Metadata => "metadata",
            Part::Content => "content",
        })
    }
}

/// Why received frames are not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("no <IDS|MSG> delimiter among {frames} frames")]
    NoDelimiter { frames: usize },
    #[error("{found} frames after the delimiter, at least 5 needed")]
    TooFewFrames { found: usize },
    #[error("missing signature")]
    MissingSignature,
    #[error("bad signature")]
    BadSignature,
    #[error("{part} is not valid JSON: {reason}")]
    InvalidJson { part: Part, reason: String },
    #[error("{part} has the wrong shape: {reason}")]
    WrongType { part: Part, reason: String },
}

/// One end of a Jupyter link: identity and signing key.
#[derive(Clone, Debug)]
pub struct Session {
    id: String,
    username: String,
    signer: Signer,
}

impl Session {
    /// A session with a fresh random id, signing with `key` (empty: unsigned).
    pub fn new(key: &[u8], username: &str) -> Self {
        Session {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.to_owned(),
            signer: Signer::new(key),
        }
    }

    /// This session's id, as it appears in the headers it writes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The signer of this link.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// A fresh header of this session.
    pub fn header(&self, msg_type: &str) -> Header {
        Header::new(msg_type, &self.id, &self.username)
    }

    /// A new message of this session with serialised `content`.
    pub fn message<T: Serialize + ?Sized>(&self, msg_type: &str, content: &T) -> Message {
        Message::new(self.header(msg_type), to_json_bytes(content))
    }

    /// A message answering (or produced for) `parent`: parent header set and routed back to the
    /// parent's identities.
    pub fn reply<T: Serialize + ?Sized>(
        &self,
        parent: &Message,
        msg_type: &str,
        content: &T,
    ) -> Message {
        self.message(msg_type, content).with_parent(parent)
    }

    /// The frames of `message`, signed with this session's key.
    pub fn encode(&self, message: &Message) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(message.identities.len() + 6 + message.buffers.len());
        frames.extend(message.identities.iter().cloned());
        frames.push(Bytes::from_static(DELIMITER));
        let signature = self.signer.sign([
            message.header_raw(),
            message.parent_raw(),
            &message.metadata,
            &message.content,
        ]);
        frames.push(Bytes::from(signature.into_bytes()));
        frames.push(message.header_raw().clone());
        frames.push(message.parent_raw().clone());
        frames.push(message.metadata.clone());
        frames.push(message.content.clone());
        frames.extend(message.buffers.iter().cloned());
        frames
    }

    /// Decodes and verifies received frames.
    pub fn decode(&self, mut frames: Vec<Bytes>) -> Result<Message, DecodeError> {
        let delimiter = frames
            .iter()
            .position(|frame| frame.as_ref() == DELIMITER)
            .ok_or(DecodeError::NoDelimiter {
                frames: frames.len(),
            })?;
        let after = frames.len() - delimiter - 1;
        if after < 5 {
            if after >= 1 && frames[delimiter + 1].is_empty() && self.signer.is_signed() {
                return Err(DecodeError::MissingSignature);
            }
            return Err(DecodeError::TooFewFrames { found: after });
        }
        let mut rest = frames.split_off(delimiter + 1);
        frames.truncate(delimiter);
        let identities = frames;
        let buffers = rest.split_off(5);
        let [signature, header_raw, parent_raw, metadata, content] =
            <[Bytes; 5]>::try_from(rest)
                .map_err(|rest| DecodeError::TooFewFrames { found: rest.len() })?;

        if self.signer.is_signed() {
            if signature.is_empty() {
                return Err(DecodeError::MissingSignature);
            }
            if !self
                .signer
                .verify(&signature, [&header_raw, &parent_raw, &metadata, &content])
            {
                return Err(DecodeError::BadSignature);
            }
        }

        let mut message = assemble([header_raw, parent_raw, metadata, content])?;
        message.identities = identities;
        message.buffers = buffers;
        Ok(message)
    }
}

/// A message of four verified JSON frames (header, parent header, metadata, content), once each
/// has the right shape; no identities, no buffers.
pub(crate) fn assemble(parts: [Bytes; 4]) -> Result<Message, DecodeError> {
    let [header_raw, parent_raw, metadata, content] = parts;
    let header: Header = parse(Part::Header, &header_raw)?;
    let parent = parse_parent(&parent_raw)?;
    check_object(Part::Metadata, &metadata)?;
    check_object(Part::Content, &content)?;
    Ok(Message::from_parts(
        header, header_raw, parent, parent_raw, metadata, content,
    ))
}

fn classify(part: Part, error: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => DecodeError::WrongType {
            part,
            reason: error.to_string(),
        },
        Category::Io | Category::Syntax | Category::Eof => DecodeError::InvalidJson {
            part,
            reason: error.to_string(),
        },
    }
}

fn parse<'a, T: Deserialize<'a>>(part: Part, raw: &'a [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(raw).map_err(|error| classify(part, error))
}

/// The parent header is an object: empty (no parent) or a header whose `msg_id` and `msg_type`,
/// where present, are strings.
fn parse_parent(raw: &[u8]) -> Result<ParentRef, DecodeError> {
    check_object(Part::ParentHeader, raw)?;
    parse(Part::ParentHeader, raw)
}

/// Checks that a frame is one JSON object, without building it.
fn check_object(part: Part, raw: &[u8]) -> Result<(), DecodeError> {
    parse::<AnyObject>(part, raw).map(|_| ())
}

/// A JSON object whose entries are skipped: deserialising it only validates.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> Session {
        Session::new(b"secret", "test")
    }

    fn frames_of(session: &Session, message: &Message) -> Vec<Bytes> {
        session.encode(message)
    }

    #[test]
    fn round_trips_identities_parent_and_buffers() {
        let s = session();
        let request = s
            .message("execute_request", &json!({"code": "1+1"}))
            .with_buffers(vec![Bytes::from_static(b"\x00\x01binary")]);
        let mut request_frames = vec![Bytes::from_static(b"client-id")];
        request_frames.extend(frames_of(&s, &request));
        let decoded = s.decode(request_frames).expect("valid");
        assert_eq!(decoded.identities, vec![Bytes::from_static(b"client-id")]);
        assert_eq!(decoded.msg_type(), "execute_request");
        assert_eq!(decoded.buffers.len(), 1);

        let reply = s.reply(&decoded, "execute_reply", &json!({"status": "ok"}));
        let back = s.decode(frames_of(&s, &reply)).expect("valid");
        assert_eq!(back.identities, vec![Bytes::from_static(b"client-id")]);
        assert_eq!(back.parent_msg_id(), Some(request.msg_id()));
        assert_eq!(back.parent_raw(), request.header_raw());
    }

    #[test]
    fn rejects_each_malformation() {
        let s = session();
        let good = frames_of(
            &s,
            &s.message("status", &json!({"execution_state": "idle"})),
        );

        assert_eq!(
            s.decode(vec![Bytes::from_static(b"x")]).err(),
            Some(DecodeError::NoDelimiter { frames: 1 })
        );
        assert!(matches!(
            s.decode(good[..4].to_vec()),
            Err(DecodeError::TooFewFrames { found: 3 })
        ));

        let mut bad_sig = good.clone();
        bad_sig[1] = Bytes::from_static(b"0000");
        assert_eq!(s.decode(bad_sig).err(), Some(DecodeError::BadSignature));

        let mut no_sig = good.clone();
        no_sig[1] = Bytes::new();
        assert_eq!(s.decode(no_sig).err(), Some(DecodeError::MissingSignature));

        let other = Session::new(b"other-key", "x");
        assert_eq!(
            other.decode(good.clone()).err(),
            Some(DecodeError::BadSignature)
        );
    }

    /// Frames with a correct signature over the given JSON parts.
    fn signed(s: &Session, parts: [&str; 4]) -> Vec<Bytes> {
        let sig = s.signer().sign(parts.map(str::as_bytes));
        let mut frames = vec![Bytes::from_static(DELIMITER), Bytes::from(sig)];
        frames.extend(parts.iter().map(|p| Bytes::from(p.to_string())));
        frames
    }

    #[test]
    fn rejects_bad_json_and_wrong_shapes_even_when_signed() {
        let s = session();
        let header = r#"{"msg_id":"1","msg_type":"x"}"#;
        let cases: &[([&str; 4], Part, bool)] = &[
            (["{", "{}", "{}", "{}"], Part::Header, true),
            (["[]", "{}", "{}", "{}"], Part::Header, false),
            (
                [r#"{"msg_id":1,"msg_type":"x"}"#, "{}", "{}", "{}"],
                Part::Header,
                false,
            ),
            (
                [r#"{"msg_type":"x"}"#, "{}", "{}", "{}"],
                Part::Header,
                false,
            ),
            ([header, "null", "{}", "{}"], Part::ParentHeader, false),
            (
                [header, r#"{"msg_id":[]}"#, "{}", "{}"],
                Part::ParentHeader,
                false,
            ),
            ([header, "{}", "7", "{}"], Part::Metadata, false),
            ([header, "{}", "{}", "\"text\""], Part::Content, false),
            ([header, "{}", "{}", "{\"a\":"], Part::Content, true),
            ([header, "{}", "{}", "{} trailing"], Part::Content, true),
        ];
        for (parts, part, syntax) in cases {
            match s.decode(signed(&s, *parts)) {
                Err(DecodeError::InvalidJson { part: p, .. }) if *syntax => assert_eq!(p, *part),
                Err(DecodeError::WrongType { part: p, .. }) if !*syntax => assert_eq!(p, *part),
                other => panic!("{parts:?}: {other:?}"),
            }
        }
        assert!(s.decode(signed(&s, [header, "{}", "{}", "{}"])).is_ok());
    }

    #[test]
    fn unsigned_links_accept_empty_signatures() {
        let s = Session::new(b"", "u");
        let message = s.message("status", &json!({}));
        let frames = s.encode(&message);
        assert!(frames[1].is_empty());
        assert!(s.decode(frames).is_ok());
    }
}
