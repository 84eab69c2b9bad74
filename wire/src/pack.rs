//! Packs: a burst of messages for one peer as one signed ZeroMQ message.
//!
//! Between Parallax's own ends (client ↔ controller ↔ engine support) a burst of small messages
//! to the same peer (a thousand submitted tasks, their replies) goes as one multipart message:
//!
//! ```text
//! [identity ...] "<PX|PACK>" signature index buffers
//! index     = [record, ...]                  (one JSON array)
//! record    = [header, parent_header, metadata, content, [size, ...]]
//! signature = hex HMAC-SHA256 of the index under the link's key (empty on an unsigned link)
//! buffers   = every message's buffers, one after the other, in one frame
//! ```
//!
//! Each record holds one message's four JSON objects as they would have been sent alone, and the
//! sizes of its buffers, which follow those of the messages before it in the last frame. One
//! signature covers every message of the pack, as a message's signature covers its four frames;
//! buffers are not signed, as in Jupyter. A sender then signs once, and a receiver parses and
//! verifies once and receives four frames per pack instead of doing all of it per message, which
//! is most of what a small message costs in Python.
//!
//! A pack whose signature, index or buffer sizes are wrong is dropped whole; a record whose parts
//! have the wrong shape (a header without `msg_id`, say) is dropped alone. Only messages that are
//! small in all (at most [`PACK_MESSAGE_LIMIT`] bytes) are packed, at most [`PACK_COUNT_LIMIT`]
//! of them or about [`PACK_BYTES_LIMIT`] bytes to a pack. A pack is only ever sent to a peer that
//! said it reads this format ([`PACK_VERSION`]); any other peer (a kernel, a notebook front end)
//! gets plain Jupyter messages.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use crate::codec::{assemble, DecodeError, DELIMITER};
use crate::message::Message;
use crate::sign::Signer;

/// The frame that separates routing identities from a pack.
pub const PACK_DELIMITER: &[u8] = b"<PX|PACK>";
/// The format of packs described here: a peer that sends `"packs": PACK_VERSION` in its
/// `connect_request` or `attach_request` reads (and sends) them.
pub const PACK_VERSION: u32 = 2;
/// The largest message (all its frames together) that is packed.
pub const PACK_MESSAGE_LIMIT: usize = 64 * 1024;
/// The most messages in one pack.
pub const PACK_COUNT_LIMIT: usize = 512;
/// A pack is closed once it holds this many bytes.
pub const PACK_BYTES_LIMIT: usize = 1 << 20;

/// Why a pack could not be read at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("malformed pack: {0}")]
    Malformed(String),
    #[error("pack with a bad signature")]
    BadSignature,
}

/// Whether `frames` (identities, then a delimiter) is a pack rather than a single message.
pub fn is_pack(frames: &[Bytes]) -> bool {
    frames
        .iter()
        .find(|frame| frame.as_ref() == PACK_DELIMITER || frame.as_ref() == DELIMITER)
        .is_some_and(|frame| frame.as_ref() == PACK_DELIMITER)
}

/// The bytes a message takes on the wire, JSON frames and buffers.
pub fn size(message: &Message) -> usize {
    message.header_raw().len()
        + message.parent_raw().len()
        + message.metadata.len()
        + message.content.len()
        + message.buffers.iter().map(Bytes::len).sum::<usize>()
}

/// One pack of `messages` for the peer at `identities`, signed by `signer`.
pub fn pack(signer: &Signer, identities: &[Bytes], messages: &[Message]) -> Vec<Bytes> {
    let json: usize = messages
        .iter()
        .map(|m| {
            m.header_raw().len()
                + m.parent_raw().len()
                + m.metadata.len()
                + m.content.len()
                + 8 * m.buffers.len()
                + 8
        })
        .sum();
    let mut index = BytesMut::with_capacity(json + 2);
    let mut buffers = BytesMut::with_capacity(
        messages
            .iter()
            .flat_map(|m| m.buffers.iter().map(Bytes::len))
            .sum(),
    );
    index.put_u8(b'[');
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            index.put_u8(b',');
        }
        index.put_u8(b'[');
        for part in [
            message.header_raw(),
            message.parent_raw(),
            &message.metadata,
            &message.content,
        ] {
            // Every part is a JSON object (decoded and checked, or serialised by us); an empty
            // one stands for `{}` so that one bad part cannot spoil the whole index.
            index.put_slice(if part.is_empty() { b"{}" } else { part });
            index.put_u8(b',');
        }
        index.put_u8(b'[');
        for (j, buffer) in message.buffers.iter().enumerate() {
            if j > 0 {
                index.put_u8(b',');
            }
            index.put_slice(buffer.len().to_string().as_bytes());
            buffers.put_slice(buffer);
        }
        index.put_slice(b"]]");
    }
    index.put_u8(b']');
    let index = index.freeze();
    // The MAC of parts fed in order is the MAC of their concatenation: here, the index alone.
    let signature = signer.sign([&index, b"", b"", b""]);
    let mut frames = Vec::with_capacity(identities.len() + 4);
    frames.extend(identities.iter().cloned());
    frames.push(Bytes::from_static(PACK_DELIMITER));
    frames.push(Bytes::from(signature.into_bytes()));
    frames.push(index);
    frames.push(buffers.freeze());
    frames
}

/// The messages of a pack (identities, pack delimiter, signature, index, buffers), each routed
/// from the pack's identities: a message whose parts have the wrong shape is an `Err` of its own.
/// Each message's buffers share the memory of the pack's last frame.
pub fn unpack(
    signer: &Signer,
    mut frames: Vec<Bytes>,
) -> Result<Vec<Result<Message, DecodeError>>, PackError> {
    let at = frames
        .iter()
        .position(|frame| frame.as_ref() == PACK_DELIMITER)
        .ok_or_else(|| PackError::Malformed("no <PX|PACK> delimiter".into()))?;
    if frames.len() != at + 4 {
        return Err(PackError::Malformed(format!(
            "{} frames after the delimiter, 3 expected",
            frames.len() - at - 1
        )));
    }
    let buffers = frames.pop().unwrap_or_default();
    let index = frames.pop().unwrap_or_default();
    let signature = frames.pop().unwrap_or_default();
    frames.truncate(at);
    let identities = frames;
    if signer.is_signed() && !signer.verify(&signature, [&index, b"", b"", b""]) {
        return Err(PackError::BadSignature);
    }
    type Record<'a> = (
        &'a RawValue,
        &'a RawValue,
        &'a RawValue,
        &'a RawValue,
        Vec<usize>,
    );
    let records: Vec<Record<'_>> = serde_json::from_slice(&index)
        .map_err(|error| PackError::Malformed(format!("index: {error}")))?;
    let total = records
        .iter()
        .flat_map(|record| record.4.iter())
        .try_fold(0usize, |total, &size| total.checked_add(size));
    if total != Some(buffers.len()) {
        return Err(PackError::Malformed(format!(
            "the index names buffers other than the {} bytes that follow it",
            buffers.len()
        )));
    }
    let mut at = 0;
    Ok(records
        .into_iter()
        .map(|(header, parent, metadata, content, sizes)| {
            let part = |raw: &RawValue| index.slice_ref(raw.get().as_bytes());
            let own: Vec<Bytes> = sizes
                .iter()
                .map(|&size| {
                    at += size;
                    buffers.slice(at - size..at)
                })
                .collect();
            assemble([part(header), part(parent), part(metadata), part(content)]).map(
                |mut message| {
                    message.identities = identities.clone();
                    message.buffers = own;
                    message
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Session;
    use serde_json::json;

    fn numbered(session: &Session, i: usize) -> Message {
        session
            .message("apply_request", &json!({"i": i, "text": "é \" ]"}))
            .with_metadata(&json!({"targets": [i]}))
            .with_buffers(vec![Bytes::from(vec![i as u8; i * 10]); i % 3])
    }

    #[test]
    fn packed_messages_come_back_whole_and_verified() {
        let session = Session::new(b"key", "test");
        let identity = vec![Bytes::from_static(b"peer")];
        let parent = session.message("execute_request", &json!({}));
        let messages: Vec<Message> = (0..5)
            .map(|i| {
                let mut message = numbered(&session, i);
                message.set_parent(&parent);
                message
            })
            .collect();
        let packed = pack(session.signer(), &identity, &messages);
        assert!(is_pack(&packed));
        let unpacked = unpack(session.signer(), packed).expect("a well-formed pack");
        assert_eq!(unpacked.len(), messages.len());
        for (got, sent) in unpacked.into_iter().zip(&messages) {
            let got = got.expect("each message is whole");
            assert_eq!(got.identities, identity);
            assert_eq!(got.header(), sent.header());
            assert_eq!(got.parent_msg_id(), Some(parent.msg_id()));
            assert_eq!(got.header_raw(), sent.header_raw());
            assert_eq!(got.parent_raw(), sent.parent_raw());
            assert_eq!(got.metadata, sent.metadata);
            assert_eq!(got.content, sent.content);
            assert_eq!(got.buffers, sent.buffers);
        }
        let unsigned = Session::new(b"", "test");
        let packed = pack(unsigned.signer(), &[], &messages);
        assert!(packed[1].is_empty(), "no signature on an unsigned link");
        assert_eq!(unpack(unsigned.signer(), packed).map(|m| m.len()), Ok(5));
    }

    #[test]
    fn a_pack_is_not_a_message_and_a_message_is_not_a_pack() {
        let session = Session::new(b"key", "test");
        let message = numbered(&session, 1);
        let plain = session.encode(&message);
        assert!(!is_pack(&plain));
        let packed = pack(session.signer(), &[], &[message]);
        assert!(is_pack(&packed));
        assert!(session.decode(packed).is_err());
        assert!(unpack(session.signer(), plain).is_err());
    }

    #[test]
    fn bad_packs_are_dropped_whole_and_bad_records_alone() {
        let session = Session::new(b"key", "test");
        let messages: Vec<Message> = (0..3).map(|i| numbered(&session, i)).collect();
        let good = pack(session.signer(), &[], &messages);

        let other = Session::new(b"other key", "test");
        assert_eq!(
            unpack(other.signer(), good.clone()).err(),
            Some(PackError::BadSignature)
        );
        let mut tampered = good.clone();
        let index = String::from_utf8_lossy(&tampered[2]).replace(r#""i":1"#, r#""i":7"#);
        assert_ne!(index.as_bytes(), tampered[2].as_ref());
        tampered[2] = Bytes::from(index);
        assert_eq!(
            unpack(session.signer(), tampered).err(),
            Some(PackError::BadSignature)
        );
        let mut short_buffers = good.clone();
        let last = short_buffers.len() - 1;
        short_buffers[last] = short_buffers[last].slice(1..);
        assert!(matches!(
            unpack(session.signer(), short_buffers),
            Err(PackError::Malformed(_))
        ));
        assert!(unpack(session.signer(), good[..2].to_vec()).is_err());

        let signed = |index: &str| {
            let signature = session.signer().sign([index.as_bytes(), b"", b"", b""]);
            vec![
                Bytes::from_static(PACK_DELIMITER),
                Bytes::from(signature),
                Bytes::from(index.to_owned()),
                Bytes::new(),
            ]
        };
        for index in [
            "{}",
            "[[{}]]",
            "[[{},{},{},{},0]]",
            "[[{},{},{},{},[-1]]]",
            "[[{},{},{},{},[1]]]",
            "[[{},{},{},{},[18446744073709551615]],[{},{},{},{},[1]]]",
            "[1]",
            "[",
            "[] x",
        ] {
            assert!(
                matches!(
                    unpack(session.signer(), signed(index)),
                    Err(PackError::Malformed(_))
                ),
                "{index}"
            );
        }
        let header = r#"{"msg_id":"a","msg_type":"t"}"#;
        let mixed = format!(
            r#"[[{header},{{}},{{}},{{}},[1]],[{{}},{{}},{{}},{{}},[]],[{header},{{}},[],{{}},[2]]]"#
        );
        let mut frames = signed(&mixed);
        frames[3] = Bytes::from_static(b"abc");
        let results = unpack(session.signer(), frames).expect("a readable pack");
        assert_eq!(
            results[0].as_ref().map(|m| m.buffers.clone()),
            Ok(vec![Bytes::from_static(b"a")])
        );
        assert!(matches!(
            results[1],
            Err(DecodeError::WrongType {
                part: crate::Part::Header,
                ..
            })
        ));
        assert!(matches!(
            results[2],
            Err(DecodeError::WrongType {
                part: crate::Part::Metadata,
                ..
            })
        ));
        assert_eq!(
            unpack(session.signer(), signed("[]")).map(|m| m.len()),
            Ok(0)
        );
    }
}
