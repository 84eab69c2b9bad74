//! Packs: several small messages for one peer in one ZeroMQ frame.
//!
//! Between Parallax's own ends (client ↔ controller ↔ engine support) a burst of small messages
//! to the same peer (a thousand submitted tasks, their replies) goes as one multipart message:
//!
//! ```text
//! [identity ...] "<PX|PACK>" body
//! body = message*      message = u32 frame-count, frame*      frame = u32 length, bytes
//! ```
//!
//! Integers are little-endian. Each packed message is a whole signed Jupyter message after its
//! delimiter (signature, the four JSON frames, buffers), so every one is verified on its own;
//! the routing identities are the outer message's. Only messages that are small in all (at most
//! [`PACK_MESSAGE_LIMIT`] bytes) are packed, at most [`PACK_COUNT_LIMIT`] of them or about
//! [`PACK_BYTES_LIMIT`] bytes to a pack: large buffers travel as frames of their own, without a
//! copy. A pack is never sent to a peer that is not Parallax (a kernel): the sender decides per
//! link, and every receiver in Parallax unpacks.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::DELIMITER;

/// The frame that separates routing identities from a pack's body.
pub const PACK_DELIMITER: &[u8] = b"<PX|PACK>";
/// The largest message (all its frames together) that is packed.
pub const PACK_MESSAGE_LIMIT: usize = 64 * 1024;
/// The most messages in one pack.
pub const PACK_COUNT_LIMIT: usize = 512;
/// A pack is closed once it holds this many bytes.
pub const PACK_BYTES_LIMIT: usize = 1 << 20;

/// Why a pack's body could not be split into messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pack: {0}")]
pub struct PackError(&'static str);

/// Whether `frames` (identities, delimiter, ...) is a pack.
pub fn is_pack(frames: &[Bytes]) -> bool {
    frames.len() >= 2 && frames[frames.len() - 2].as_ref() == PACK_DELIMITER
}

/// The bytes of an encoded message's frames.
pub fn size(frames: &[Bytes]) -> usize {
    frames.iter().map(Bytes::len).sum()
}

/// Packs encoded messages that share `identities` (each: the identities, the delimiter, then
/// the rest) into one pack.
pub fn pack(identities: &[Bytes], messages: &[Vec<Bytes>]) -> Vec<Bytes> {
    let skip = identities.len() + 1;
    let size: usize = messages
        .iter()
        .map(|frames| 4 + frames[skip..].iter().map(|f| 4 + f.len()).sum::<usize>())
        .sum();
    let mut body = BytesMut::with_capacity(size);
    for frames in messages {
        let rest = &frames[skip.min(frames.len())..];
        body.put_u32_le(rest.len() as u32);
        for frame in rest {
            body.put_u32_le(frame.len() as u32);
            body.put_slice(frame);
        }
    }
    let mut out = Vec::with_capacity(identities.len() + 2);
    out.extend(identities.iter().cloned());
    out.push(Bytes::from_static(PACK_DELIMITER));
    out.push(body.freeze());
    out
}

/// Splits a pack (identities, pack delimiter, body) into the frames of each message, as they
/// would have arrived alone: identities, `<IDS|MSG>`, the rest. Frames share the body's memory.
pub fn unpack(mut frames: Vec<Bytes>) -> Result<Vec<Vec<Bytes>>, PackError> {
    if !is_pack(&frames) {
        return Err(PackError("no <PX|PACK> delimiter before the last frame"));
    }
    let body = frames.pop().unwrap_or_default();
    frames.pop();
    let identities = frames;
    let mut messages = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let count = read_u32(&body, &mut at)? as usize;
        if count > body.len() {
            return Err(PackError("frame count larger than the pack"));
        }
        let mut message = Vec::with_capacity(identities.len() + 1 + count);
        message.extend(identities.iter().cloned());
        message.push(Bytes::from_static(DELIMITER));
        for _ in 0..count {
            let len = read_u32(&body, &mut at)? as usize;
            let end = at
                .checked_add(len)
                .filter(|&end| end <= body.len())
                .ok_or(PackError("frame runs past the end of the pack"))?;
            message.push(body.slice(at..end));
            at = end;
        }
        messages.push(message);
    }
    Ok(messages)
}

fn read_u32(body: &Bytes, at: &mut usize) -> Result<u32, PackError> {
    let bytes = body
        .get(*at..*at + 4)
        .ok_or(PackError("truncated length"))?;
    *at += 4;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Session;
    use serde_json::json;

    #[test]
    fn packed_messages_come_back_whole_and_verified() {
        let session = Session::new(b"key", "test");
        let identity = vec![Bytes::from_static(b"peer")];
        let encoded: Vec<Vec<Bytes>> = (0..3)
            .map(|i| {
                let mut message = session
                    .message("apply_request", &json!({"i": i}))
                    .with_buffers(vec![Bytes::from(vec![i as u8; i * 10])]);
                message.identities = identity.clone();
                session.encode(&message)
            })
            .collect();
        let packed = pack(&identity, &encoded);
        assert!(is_pack(&packed));
        let unpacked = unpack(packed).expect("a well-formed pack");
        assert_eq!(unpacked, encoded);
        for (frames, i) in unpacked.into_iter().zip(0..) {
            let message = session.decode(frames).expect("a verified message");
            assert_eq!(message.identities, identity);
            let content: serde_json::Value = message.content_as().expect("JSON content");
            assert_eq!(content["i"], i);
            assert_eq!(message.buffers[0].len(), i as usize * 10);
        }
    }

    #[test]
    fn malformed_packs_are_errors() {
        let pack_of = |body: &[u8]| {
            vec![
                Bytes::from_static(PACK_DELIMITER),
                Bytes::copy_from_slice(body),
            ]
        };
        assert_eq!(unpack(pack_of(&[])), Ok(Vec::new()));
        assert!(unpack(pack_of(&[1, 0])).is_err(), "truncated count");
        assert!(
            unpack(pack_of(&[1, 0, 0, 0, 9, 0, 0, 0, 1])).is_err(),
            "short frame"
        );
        assert!(
            unpack(pack_of(&[255, 255, 255, 255])).is_err(),
            "absurd count"
        );
        assert!(
            unpack(vec![Bytes::from_static(b"x")]).is_err(),
            "not a pack"
        );
        assert!(!is_pack(&[Bytes::from_static(DELIMITER), Bytes::new()]));
    }
}
