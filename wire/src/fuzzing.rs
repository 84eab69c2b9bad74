//! The checks the fuzz targets run (`fuzz/fuzz_targets/`), kept here so that the committed
//! corpora (`fuzz/corpus/<target>/`) also run through them in a plain `cargo test`.
//!
//! Compiled for this crate's tests and with the `fuzzing` feature (which only the fuzz crate
//! turns on); not part of the crate's API.
//!
//! Each check takes the fuzzer's bytes, never panics on them unless the code under test broke a
//! promise, and asserts more than "no panic" where that is cheap: what decodes re-encodes to the
//! same frames and decodes again to the same message.
//!
//! Frames are written in one input as `mode frame 0xFF frame 0xFF ...`: `0xFF` never occurs in
//! UTF-8, so it cannot cut a JSON frame; the first byte picks the link (see [`Mode`]).

use bytes::Bytes;

use crate::codec::{Session, DELIMITER};
use crate::connection::{endpoint, parse_connection_file, Channel};
use crate::message::Message;
use crate::pack::{self, PACK_DELIMITER};
use crate::profile::ControllerFile;

/// The key of the signed links in the fuzz inputs.
pub const KEY: &[u8] = b"fuzz-key";
/// What separates frames in a fuzz input.
pub const FRAME_SEPARATOR: u8 = 0xFF;

/// How an input's frames are received, from its first byte (modulo 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On an unsigned link: the signature frame is ignored.
    Unsigned = 0,
    /// On a link signed with [`KEY`], the frames as they are: mostly bad signatures, which is the
    /// point (the check must refuse them, whatever they are).
    Signed = 1,
    /// On a link signed with [`KEY`], with the right signature put in first, so that the fuzzer
    /// gets past the signature to the JSON behind it.
    Resigned = 2,
}

impl Mode {
    fn of(byte: u8) -> Mode {
        match byte % 3 {
            0 => Mode::Unsigned,
            1 => Mode::Signed,
            _ => Mode::Resigned,
        }
    }

    fn session(self) -> Session {
        match self {
            Mode::Unsigned => Session::new(b"", "fuzz"),
            Mode::Signed | Mode::Resigned => Session::new(KEY, "fuzz"),
        }
    }
}

/// Splits a fuzz input into its mode and frames.
pub fn frames_of(data: &[u8]) -> (Mode, Vec<Bytes>) {
    let Some((&mode, rest)) = data.split_first() else {
        return (Mode::Unsigned, Vec::new());
    };
    let frames = rest
        .split(|&byte| byte == FRAME_SEPARATOR)
        .map(Bytes::copy_from_slice)
        .collect();
    (Mode::of(mode), frames)
}

/// A fuzz input of `frames` received in `mode` (the inverse of [`frames_of`] when no frame holds
/// the separator): used to write seed corpora.
pub fn input_of(mode: Mode, frames: &[Bytes]) -> Vec<u8> {
    let mut data = vec![mode as u8];
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            data.push(FRAME_SEPARATOR);
        }
        data.extend_from_slice(frame);
    }
    data
}

/// The wire decoder (`Session::decode`): never panics; a decoded message re-encodes to the
/// frames it came from (but for the signature frame, which an unsigned link ignores) and decodes
/// again to the same message.
pub fn wire_decode(data: &[u8]) {
    let (mode, mut frames) = frames_of(data);
    let session = mode.session();
    let delimiter = frames.iter().position(|frame| frame.as_ref() == DELIMITER);
    if let (Mode::Resigned, Some(at)) = (mode, delimiter) {
        if frames.len() >= at + 6 {
            let signature = session.signer().sign([
                &frames[at + 2],
                &frames[at + 3],
                &frames[at + 4],
                &frames[at + 5],
            ]);
            frames[at + 1] = Bytes::from(signature);
        }
    }
    let Ok(message) = session.decode(frames.clone()) else {
        return;
    };
    let at = delimiter.expect("a decoded message had a delimiter");
    if mode == Mode::Signed {
        let signature = session.signer().sign([
            &frames[at + 2],
            &frames[at + 3],
            &frames[at + 4],
            &frames[at + 5],
        ]);
        assert_eq!(
            frames[at + 1].as_ref(),
            signature.as_bytes(),
            "only the right signature is accepted"
        );
    }
    let again = session.encode(&message);
    assert_eq!(again.len(), frames.len());
    assert_eq!(again[..=at], frames[..=at], "identities and delimiter");
    assert_eq!(again[at + 2..], frames[at + 2..], "JSON frames and buffers");
    let back = session.decode(again).expect("a re-encoded message decodes");
    assert_same(&back, &message);
    // Every frame reads as jupyter_client reads it (bytes that are not UTF-8 replaced).
    for read in [
        message.metadata_as::<serde_json::Value>(),
        message.content_as::<serde_json::Value>(),
    ] {
        match read {
            Ok(value) => assert!(value.is_object()),
            Err(error) => assert!(beyond_serde_json(&error), "{error}"),
        }
    }
}

/// Valid JSON that Python's `json` reads but serde_json cannot hold: `1e400` (Python: inf) and
/// lone surrogates like `"\udddd"`. The decoder passes such frames on, as a relay should; a
/// reader here that needs the value says what is wrong with it.
fn beyond_serde_json(error: &serde_json::Error) -> bool {
    let text = error.to_string();
    ["number out of range", "surrogate", "end of hex escape"]
        .iter()
        .any(|limit| text.contains(limit))
}

/// The pack decoder (`pack::is_pack`, `pack::unpack`), as a receiver runs it: never panics; the
/// messages of a pack pack again into a pack that unpacks to the same messages, and each one
/// also goes alone as a plain message.
pub fn pack_decode(data: &[u8]) {
    let (mode, mut frames) = frames_of(data);
    let session = mode.session();
    let delimiter = frames
        .iter()
        .position(|frame| frame.as_ref() == PACK_DELIMITER);
    if let (Mode::Resigned, Some(at)) = (mode, delimiter) {
        if frames.len() == at + 4 {
            frames[at + 1] = Bytes::from(session.signer().sign([&frames[at + 2], b"", b"", b""]));
        }
    }
    let claimed = pack::is_pack(&frames);
    let Ok(results) = pack::unpack(session.signer(), frames.clone()) else {
        return;
    };
    let at = delimiter.expect("an unpacked pack had a delimiter");
    if !claimed {
        // A message delimiter comes first: a receiver decodes these frames as one message
        // (`net`'s `decode`), and never unpacks them.
        assert!(frames[..at].iter().any(|f| f.as_ref() == DELIMITER));
        return;
    }
    let identities = &frames[..at];
    let messages: Vec<Message> = results.into_iter().filter_map(Result::ok).collect();
    for message in &messages {
        assert_eq!(message.identities, identities);
        let alone = session
            .decode(session.encode(message))
            .expect("a message of a pack goes alone");
        assert_same(&alone, message);
    }
    let again = pack::pack(session.signer(), identities, &messages);
    let back = pack::unpack(session.signer(), again).expect("a re-packed pack unpacks");
    assert_eq!(back.len(), messages.len());
    for (got, sent) in back.iter().zip(&messages) {
        let got = got.as_ref().expect("a re-packed message is whole");
        assert_same(got, sent);
    }
}

/// The connection-file reader ([`parse_connection_file`]) and the controller's files
/// ([`ControllerFile`], read by `profile::read_json`): never panic; what they accept writes
/// out and reads back the same; a signed file names the one scheme we verify.
pub fn connection_file(data: &[u8]) {
    let path = std::path::Path::new("fuzz.json");
    if let Ok(info) = parse_connection_file(path, data) {
        assert!(info.key.is_empty() || info.signature_scheme == "hmac-sha256");
        for channel in [
            Channel::Shell,
            Channel::Control,
            Channel::Stdin,
            Channel::IoPub,
            Channel::Heartbeat,
        ] {
            let _ = endpoint(&info, channel);
        }
        let text = serde_json::to_vec(&info).expect("a connection file serialises");
        let back = parse_connection_file(path, &text).expect("a written file reads back");
        assert_eq!(back, info);
    }
    if let Ok(file) = serde_json::from_slice::<ControllerFile>(data) {
        let text = serde_json::to_vec(&file).expect("a controller file serialises");
        let back: ControllerFile = serde_json::from_slice(&text).expect("and reads back");
        assert_eq!(back, file);
    }
}

/// Two messages have the same identities, frames, parsed header and parent, and buffers.
fn assert_same(got: &Message, sent: &Message) {
    assert_eq!(got.identities, sent.identities);
    assert_eq!(got.header(), sent.header());
    assert_eq!(got.header_raw(), sent.header_raw());
    assert_eq!(got.parent(), sent.parent());
    assert_eq!(got.parent_raw(), sent.parent_raw());
    assert_eq!(got.metadata, sent.metadata);
    assert_eq!(got.content, sent.content);
    assert_eq!(got.buffers, sent.buffers);
}

/// Every file of `fuzz/corpus/<target>/` in the repository, at least one: what each crate's
/// corpus tests replay (the other crates reach it through the `fuzzing` feature of their
/// dev-dependency on this one).
pub fn corpus(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).expect("a corpus file");
            (path, data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_decode_corpus() {
        for (path, data) in corpus("wire_decode") {
            eprintln!("{}", path.display());
            wire_decode(&data);
        }
    }

    #[test]
    fn pack_decode_corpus() {
        for (path, data) in corpus("pack_decode") {
            eprintln!("{}", path.display());
            pack_decode(&data);
        }
    }

    #[test]
    fn connection_file_corpus() {
        for (path, data) in corpus("connection_file") {
            eprintln!("{}", path.display());
            connection_file(&data);
        }
    }

    /// Frames after `<IDS|MSG>` and the signature: a valid message with this content.
    fn message_frames(content: &str) -> Vec<Bytes> {
        let header = r#"{"msg_id":"1","msg_type":"x"}"#;
        [
            DELIMITER,
            b"",
            header.as_bytes(),
            b"{}",
            b"{}",
            content.as_bytes(),
        ]
        .iter()
        .map(|frame| Bytes::copy_from_slice(frame))
        .collect()
    }

    #[test]
    fn json_that_serde_json_cannot_hold_is_passed_on() {
        // Checks failed here: `1e400` and lone surrogates are JSON that serde_json's `Value` refuses.
        for content in [
            r#"{"x": [1E1111111101111, 2]}"#,
            r#"{"x": "\udddd"}"#,
            r#"{"x": "\ud800 "}"#,
            r#"{"x": "\udc00\ud800"}"#,
        ] {
            let frames = message_frames(content);
            assert!(Session::new(b"", "t").decode(frames.clone()).is_ok());
            wire_decode(&input_of(Mode::Resigned, &frames));
            wire_decode(&input_of(Mode::Unsigned, &frames));
        }
    }

    #[test]
    fn a_pack_behind_a_message_delimiter_is_a_message() {
        // An early check failed here: with `<IDS|MSG>` before `<PX|PACK>`, a receiver decodes
        // one message (`is_pack` is false), though `unpack` alone would read a pack.
        let mut frames = message_frames("{}");
        frames.extend([
            Bytes::from_static(PACK_DELIMITER),
            Bytes::new(),
            Bytes::from_static(b"[[{\"msg_id\":\"a\",\"msg_type\":\"t\"},{},{},{},[]]]"),
            Bytes::new(),
        ]);
        let (_, received) = frames_of(&input_of(Mode::Unsigned, &frames));
        assert!(!pack::is_pack(&received));
        assert!(pack::unpack(&crate::Signer::new(b""), received).is_ok());
        pack_decode(&input_of(Mode::Unsigned, &frames));
        wire_decode(&input_of(Mode::Unsigned, &frames));
    }

    #[test]
    fn inputs_split_back_into_their_frames() {
        let frames = vec![
            Bytes::from_static(b"id"),
            Bytes::from_static(DELIMITER),
            Bytes::new(),
            Bytes::from_static(b"{}"),
        ];
        assert_eq!(
            frames_of(&input_of(Mode::Resigned, &frames)),
            (Mode::Resigned, frames)
        );
        assert_eq!(frames_of(b""), (Mode::Unsigned, vec![]));
    }
}
