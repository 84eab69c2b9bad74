//! Property: decoding never panics, whatever arrives; and every message we encode decodes back.
//!
//! One million inputs come from a seeded generator, in families that reach every check of the
//! decoder: random frames, valid messages with a frame dropped, truncated, duplicated or
//! corrupted, and correctly *signed* frames whose JSON is broken or of the wrong shape (so the
//! JSON checks run, not only the signature check). A smaller proptest run adds shrinking for
//! arbitrary frame lists.

use parallax_wire::{Bytes, DecodeError, Message, Session, DELIMITER};
use proptest::prelude::*;

/// xorshift64*: small, seeded, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// JSON fragments, valid and not, of every type the decoder may meet.
const JSON: &[&str] = &[
    "{}",
    "[]",
    "null",
    "0",
    "-1.5e300",
    "\"s\"",
    "true",
    "{",
    "}",
    "{\"msg_id\":\"a\",\"msg_type\":\"b\"}",
    "{\"msg_id\":1,\"msg_type\":\"b\"}",
    "{\"msg_id\":\"a\"}",
    "{\"msg_id\":\"a\",\"msg_type\":\"b\",\"date\":5}",
    "{\"msg_id\":null,\"msg_type\":\"b\"}",
    "{\"a\":[1,2,{\"b\":null}]}",
    "{\"a\":\"\\ud800\"}",
    "{\"a\":1,}",
    "{\"a\" 1}",
    "\u{feff}{}",
    "{}{}",
    "{\"\\u0000\":\"x\"}",
    "{\"msg_id\":\"a\",\"msg_type\":\"b\",\"session\":[]}",
];

fn valid_frames(session: &Session, rng: &mut Rng) -> Vec<Bytes> {
    let mut message = session.message(
        "execute_request",
        &serde_json::json!({"code": "x = 1", "silent": false, "n": rng.next()}),
    );
    if rng.below(2) == 0 {
        let parent = session.message("kernel_info_request", &serde_json::json!({}));
        message = message.with_parent(&parent);
    }
    message.identities = (0..rng.below(3))
        .map(|_| Bytes::from(rng.bytes(16)))
        .collect();
    message.buffers = (0..rng.below(3))
        .map(|_| Bytes::from(rng.bytes(32)))
        .collect();
    session.encode(&message)
}

/// Frames with a correct signature over four arbitrary JSON-ish parts.
fn signed_frames(session: &Session, rng: &mut Rng) -> Vec<Bytes> {
    let parts: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            if rng.below(8) == 0 {
                rng.bytes(12)
            } else {
                rng.pick(JSON).as_bytes().to_vec()
            }
        })
        .collect();
    let signature = session
        .signer()
        .sign([&parts[0], &parts[1], &parts[2], &parts[3]]);
    let mut frames = vec![Bytes::from_static(DELIMITER), Bytes::from(signature)];
    frames.extend(parts.into_iter().map(Bytes::from));
    frames
}

fn mutate(frames: &mut Vec<Bytes>, rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        if frames.is_empty() {
            frames.push(Bytes::from(rng.bytes(8)));
            continue;
        }
        let i = rng.below(frames.len());
        match rng.below(7) {
            0 => {
                frames.remove(i);
            }
            1 => {
                let cut = rng.below(frames[i].len() + 1);
                frames[i] = frames[i].slice(..cut);
            }
            2 => {
                let mut bytes = frames[i].to_vec();
                if !bytes.is_empty() {
                    let j = rng.below(bytes.len());
                    bytes[j] ^= 1 << rng.below(8);
                }
                frames[i] = Bytes::from(bytes);
            }
            3 => frames.insert(i, Bytes::from_static(DELIMITER)),
            4 => {
                let j = rng.below(frames.len());
                frames.swap(i, j);
            }
            5 => frames.truncate(i),
            _ => frames[i] = Bytes::from(rng.pick(JSON).as_bytes().to_vec()),
        }
    }
}

#[test]
fn a_million_inputs_never_panic() {
    let sessions = [Session::new(b"key", "fuzz"), Session::new(b"", "fuzz")];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = std::collections::BTreeMap::<&'static str, u64>::new();
    const INPUTS: u64 = 1_000_000;
    for n in 0..INPUTS {
        let session = &sessions[(n % 7 == 0) as usize];
        let frames = match rng.below(4) {
            0 => (0..rng.below(10))
                .map(|_| Bytes::from(rng.bytes(24)))
                .collect(),
            1 => {
                let mut frames = valid_frames(session, &mut rng);
                mutate(&mut frames, &mut rng);
                frames
            }
            2 => signed_frames(session, &mut rng),
            _ => {
                let frames = valid_frames(session, &mut rng);
                let decoded = session.decode(frames.clone());
                assert!(
                    decoded.is_ok(),
                    "a message we encoded did not decode: {decoded:?}"
                );
                frames
            }
        };
        let kind = match session.decode(frames) {
            Ok(_) => "ok",
            Err(DecodeError::NoDelimiter { .. }) => "no delimiter",
            Err(DecodeError::TooFewFrames { .. }) => "too few frames",
            Err(DecodeError::MissingSignature) => "missing signature",
            Err(DecodeError::BadSignature) => "bad signature",
            Err(DecodeError::InvalidJson { .. }) => "invalid json",
            Err(DecodeError::WrongType { .. }) => "wrong type",
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    assert_eq!(outcomes.values().sum::<u64>(), INPUTS);
    // Every check of the decoder was reached, and many inputs got through it.
    for kind in [
        "ok",
        "no delimiter",
        "too few frames",
        "missing signature",
        "bad signature",
        "invalid json",
        "wrong type",
    ] {
        assert!(
            outcomes.get(kind).copied().unwrap_or(0) > 100,
            "{kind}: {outcomes:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_frames_never_panic(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..9),
        with_delimiter in any::<bool>(),
        at in 0usize..9,
    ) {
        let mut frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        if with_delimiter {
            let at = at.min(frames.len());
            frames.insert(at, Bytes::from_static(DELIMITER));
        }
        let _ = Session::new(b"key", "p").decode(frames.clone());
        let _ = Session::new(b"", "p").decode(frames);
    }

    #[test]
    fn arbitrary_packs_never_panic(
        index in proptest::collection::vec(any::<u8>(), 0..200),
        records in proptest::collection::vec((0usize..JSON.len(), 0usize..JSON.len(), 0usize..3), 0..4),
        buffers in 0usize..6,
        identities in 0usize..3,
        signed in any::<bool>(),
    ) {
        let session = Session::new(b"key", "p");
        // Random bytes as the index, or an index of JSON fragments that is correctly signed (so
        // that parsing, not only the signature check, runs).
        let index = if records.is_empty() {
            index
        } else {
            let body: Vec<String> = records
                .iter()
                .map(|&(a, b, n)| {
                    let sizes = vec!["1"; n].join(",");
                    format!("[{},{{}},{},{{}},[{sizes}]]", JSON[a], JSON[b])
                })
                .collect();
            format!("[{}]", body.join(",")).into_bytes()
        };
        let signature = if signed {
            session.signer().sign([&index, b"", b"", b""]).into_bytes()
        } else {
            b"0123".to_vec()
        };
        let mut frames: Vec<Bytes> = (0..identities).map(|i| Bytes::from(vec![i as u8; 4])).collect();
        frames.push(Bytes::from_static(parallax_wire::pack::PACK_DELIMITER));
        frames.push(Bytes::from(signature));
        frames.push(Bytes::from(index));
        frames.push(Bytes::from(vec![7u8; buffers]));
        if let Ok(messages) = parallax_wire::pack::unpack(session.signer(), frames) {
            for message in messages.into_iter().flatten() {
                prop_assert_eq!(message.identities.len(), identities, "the pack's identities");
            }
        }
    }

    #[test]
    fn reparenting_round_trips(code in ".{0,64}", buffers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..3)) {
        let front = Session::new(b"front-key", "f");
        let local = Session::new(b"local-key", "l");
        let request = front.message("execute_request", &serde_json::json!({ "code": code }));
        let mut output: Message = local
            .message("stream", &serde_json::json!({"name": "stdout", "text": code}))
            .with_buffers(buffers.into_iter().map(Bytes::from).collect());
        output.set_parent(&request);
        let decoded = front.decode(front.encode(&output)).expect("re-signed message decodes");
        prop_assert_eq!(decoded.parent_msg_id(), Some(request.msg_id()));
        prop_assert_eq!(&decoded.content, &output.content);
        prop_assert_eq!(&decoded.buffers, &output.buffers);
        prop_assert!(local.decode(front.encode(&output)).is_err());
    }
}
