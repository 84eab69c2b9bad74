//! A Jupyter message whose JSON frames are kept as the bytes that arrived.
//!
//! A relay mostly moves messages: it swaps the parent header for the one its own client sent and
//! signs again. Keeping the frames raw makes that a pointer swap, and guarantees the relay never
//! drops a field it does not know. The header is also parsed once, since routing needs it.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::header::Header;

/// The parent header's routing fields, parsed once at decode time.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentRef {
    #[serde(default)]
    pub msg_id: Option<String>,
    #[serde(default)]
    pub msg_type: Option<String>,
}

/// One message: routing identities, the four JSON frames and the binary buffers.
#[derive(Clone, Debug)]
pub struct Message {
    /// ZMQ routing identities (ROUTER) or the topic (PUB), before the delimiter.
    pub identities: Vec<Bytes>,
    header: Header,
    header_raw: Bytes,
    parent: ParentRef,
    parent_raw: Bytes,
    /// The metadata frame: a JSON object.
    pub metadata: Bytes,
    /// The content frame: a JSON object.
    pub content: Bytes,
    /// Binary buffers after the content frame (not signed).
    pub buffers: Vec<Bytes>,
}

const EMPTY_OBJECT: &[u8] = b"{}";

impl Message {
    /// A message with `header` and JSON `content`, no parent, empty metadata, no identities.
    pub fn new(header: Header, content: Bytes) -> Self {
        let header_raw = Bytes::from(serde_json::to_vec(&header).unwrap_or_default());
        Message {
            identities: Vec::new(),
            header,
            header_raw,
            parent: ParentRef::default(),
            parent_raw: Bytes::from_static(EMPTY_OBJECT),
            metadata: Bytes::from_static(EMPTY_OBJECT),
            content,
            buffers: Vec::new(),
        }
    }

    /// Assembles a message from decoded parts; the codec has validated each of them.
    pub(crate) fn from_parts(
        header: Header,
        header_raw: Bytes,
        parent: ParentRef,
        parent_raw: Bytes,
        metadata: Bytes,
        content: Bytes,
    ) -> Self {
        Message {
            identities: Vec::new(),
            header,
            header_raw,
            parent,
            parent_raw,
            metadata,
            content,
            buffers: Vec::new(),
        }
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header frame as it will be (or was) sent.
    pub fn header_raw(&self) -> &Bytes {
        &self.header_raw
    }

    /// `msg_type` from the header.
    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }

    /// `msg_id` from the header.
    pub fn msg_id(&self) -> &str {
        &self.header.msg_id
    }

    /// The parent header's routing fields.
    pub fn parent(&self) -> &ParentRef {
        &self.parent
    }

    /// The parent's `msg_id`, if the message has a parent.
    pub fn parent_msg_id(&self) -> Option<&str> {
        self.parent.msg_id.as_deref()
    }

    /// The parent header frame (`{}` when there is none).
    pub fn parent_raw(&self) -> &Bytes {
        &self.parent_raw
    }

    /// Makes `parent` this message's parent: its header becomes our parent header. The content,
    /// metadata and our own header are untouched.
    pub fn set_parent(&mut self, parent: &Message) {
        self.parent = ParentRef {
            msg_id: Some(parent.header.msg_id.clone()),
            msg_type: Some(parent.header.msg_type.clone()),
        };
        self.parent_raw = parent.header_raw.clone();
    }

    /// Makes `session` the session this message says it comes from. A relay that speaks for
    /// another peer under its own name does this: Jupyter front ends treat a message whose
    /// header names another session than the last one they received as stale and drop it.
    /// Header fields this crate does not know are kept.
    pub fn set_session(&mut self, session: &str) {
        if self.header.session == session {
            return;
        }
        self.header.session = session.to_owned();
        // The frame was a JSON object when it was decoded; a header built here is one too.
        let mut fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&self.header_raw).unwrap_or_default();
        for (key, value) in [
            ("msg_id", &self.header.msg_id),
            ("msg_type", &self.header.msg_type),
            ("session", &self.header.session),
        ] {
            fields.insert(key.to_owned(), serde_json::Value::String(value.clone()));
        }
        self.header_raw = to_json_bytes(&fields);
    }

    /// Makes this a reply or output of `parent`: parent header set, routed to `parent`'s
    /// identities.
    pub fn with_parent(mut self, parent: &Message) -> Self {
        self.set_parent(parent);
        self.identities = parent.identities.clone();
        self
    }

    /// Replaces the metadata with a serialised object.
    pub fn with_metadata<T: Serialize>(mut self, metadata: &T) -> Self {
        self.metadata = to_json_bytes(metadata);
        self
    }

    /// Appends binary buffers.
    pub fn with_buffers(mut self, buffers: Vec<Bytes>) -> Self {
        self.buffers = buffers;
        self
    }

    /// The content parsed as `T` (read as jupyter_client reads it: see [`parse_frame`]).
    pub fn content_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        parse_frame(&self.content)
    }

    /// The metadata parsed as `T` (read as jupyter_client reads it: see [`parse_frame`]).
    pub fn metadata_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        parse_frame(&self.metadata)
    }
}

/// Parses a JSON frame as jupyter_client does: bytes that are not UTF-8 become U+FFFD.
///
/// Frames that are not UTF-8 are ordinary Jupyter: jupyter_client writes with `surrogateescape`
/// (a kernel printing a file name decoded from other bytes sends `"caf\xe9"`) and reads with
/// `errors="replace"`. The decoder passes such frames on untouched; readers here replace the
/// bytes rather than fail (found by the `wire_decode` fuzz target).
pub fn parse_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(frame) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_str(&String::from_utf8_lossy(frame)),
    }
}

/// Serialises a value into a JSON frame. The values serialised here are Parallax's own message
/// types, whose serialisation cannot fail; should one ever fail, the frame is an empty object
/// rather than a panic.
pub fn to_json_bytes<T: Serialize + ?Sized>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(bytes) => Bytes::from(bytes),
        Err(_) => Bytes::from_static(EMPTY_OBJECT),
    }
}

#[cfg(test)]
mod tests {
    use crate::Session;

    #[test]
    fn frames_that_are_not_utf8_read_as_jupyter_client_reads_them() {
        // jupyter_client's Session.serialize of {"name": "stdout", "text": "caf\udce9 \udcff\n"}:
        // surrogateescape gives bytes that are not UTF-8. The decoder takes them; a reader used
        // to fail on them (found by the `wire_decode` fuzz target).
        let content: &[u8] = b"{\"name\": \"stdout\", \"text\": \"caf\xe9 \xff\\n\"}";
        let frames = vec![
            bytes::Bytes::from_static(b"<IDS|MSG>"),
            bytes::Bytes::new(),
            bytes::Bytes::from_static(br#"{"msg_id":"1","msg_type":"stream"}"#),
            bytes::Bytes::from_static(b"{}"),
            bytes::Bytes::from_static(b"{\"x\": \"\x80\"}"),
            bytes::Bytes::copy_from_slice(content),
        ];
        let message = Session::new(b"", "any").decode(frames).expect("decodes");
        assert_eq!(message.content, content, "passed on untouched");
        let read: serde_json::Value = message.content_as().expect("reads");
        assert_eq!(read["text"], "caf\u{fffd} \u{fffd}\n");
        let metadata: serde_json::Value = message.metadata_as().expect("reads");
        assert_eq!(metadata["x"], "\u{fffd}");
    }

    #[test]
    fn set_session_renames_the_sender_and_keeps_unknown_header_fields() {
        let kernel = Session::new(b"key", "kernel");
        let relay = Session::new(b"key", "relay");
        let mut header = serde_json::to_value(kernel.header("stream")).expect("header");
        header["subshell_id"] = serde_json::json!("s1");
        let frames = vec![
            bytes::Bytes::from_static(b"<IDS|MSG>"),
            bytes::Bytes::new(),
            bytes::Bytes::from(header.to_string()),
            bytes::Bytes::from_static(b"{}"),
            bytes::Bytes::from_static(b"{}"),
            bytes::Bytes::from_static(br#"{"name":"stdout","text":"x"}"#),
        ];
        let mut message = Session::new(b"", "any").decode(frames).expect("decodes");

        message.set_session(relay.id());

        let sent = relay.encode(&message);
        let received = relay.decode(sent).expect("signed by the relay");
        assert_eq!(received.header().session, relay.id());
        assert_eq!(received.msg_id(), message.msg_id());
        let raw: serde_json::Value =
            serde_json::from_slice(received.header_raw()).expect("a JSON header");
        assert_eq!(raw["session"], relay.id());
        assert_eq!(raw["subshell_id"], "s1");
        assert_eq!(raw["date"], header["date"]);
    }
}
