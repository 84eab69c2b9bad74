//! Refusing replayed messages: a server remembers the signature of every message it accepted
//! and refuses one it has seen before, as jupyter_client's `Session` does (its digest history).
//!
//! A signature covers the header, whose `msg_id` and `date` make every message a sender writes
//! different, so a repeated signature means the very same frames again: someone who captured a
//! request sending it once more. Only signatures that verified are recorded (verify first, then
//! record), so a stranger cannot fill the history. It holds at most [`REMEMBERED`] signatures and
//! forgets those older than [`WINDOW`].

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How many signatures a link remembers (jupyter_client keeps 2^16).
pub const REMEMBERED: usize = 1 << 16;
/// How long a signature is remembered.
pub const WINDOW: Duration = Duration::from_secs(600);

/// The signatures a link has accepted lately.
#[derive(Debug, Default)]
pub struct Replays {
    order: VecDeque<(Instant, Bytes)>,
    seen: HashSet<Bytes>,
}

impl Replays {
    /// Records `signature` (of a message that verified); false if it was seen before within the
    /// window. Unsigned links (empty signatures) are not tracked.
    pub fn first_time(&mut self, signature: &Bytes, now: Instant) -> bool {
        if signature.is_empty() {
            return true;
        }
        while let Some((at, _)) = self.order.front() {
            if self.order.len() < REMEMBERED && now.duration_since(*at) < WINDOW {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(signature.clone()) {
            return false;
        }
        self.order.push_back((now, signature.clone()));
        true
    }
}

/// The signature frame of a message or pack: the frame after its delimiter.
pub fn signature_of(frames: &[Bytes]) -> Option<Bytes> {
    let at = frames.iter().position(|frame| {
        frame.as_ref() == parallax_wire::DELIMITER
            || frame.as_ref() == parallax_wire::pack::PACK_DELIMITER
    })?;
    frames.get(at + 1).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_accepted_once_within_the_window() {
        let mut replays = Replays::default();
        let t0 = Instant::now();
        let a = Bytes::from_static(b"aaaa");
        assert!(replays.first_time(&a, t0));
        assert!(!replays.first_time(&a, t0 + Duration::from_secs(1)));
        assert!(replays.first_time(&Bytes::from_static(b"bbbb"), t0));
        assert!(
            replays.first_time(&Bytes::new(), t0),
            "unsigned links are not tracked"
        );
        assert!(replays.first_time(&Bytes::new(), t0));
        // Forgotten once the window has passed (when something new arrives).
        assert!(replays.first_time(&Bytes::from_static(b"cccc"), t0 + WINDOW));
        assert!(replays.first_time(&a, t0 + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn the_history_is_bounded() {
        let mut replays = Replays::default();
        let now = Instant::now();
        for i in 0..REMEMBERED + 10 {
            assert!(replays.first_time(&Bytes::from(i.to_string()), now));
        }
        assert!(replays.seen.len() <= REMEMBERED);
        assert_eq!(replays.seen.len(), replays.order.len());
        assert!(
            replays.first_time(&Bytes::from("0"), now),
            "the oldest was forgotten"
        );
    }
}
