//! Requests sent to the kernel and not yet answered on the engine link, oldest first.
//!
//! A kernel answers on shell and reports progress on iopub, two sockets with no order between
//! them: its reply to a request usually arrives before the last outputs of that request. The
//! engine link promises the opposite order, so a reply is *held* here until the kernel's `idle`
//! for its request has been seen (or it is released when that request has been silent for a long
//! while, should the `idle` have been lost). No I/O here: the event loop sends what this returns.

use std::collections::VecDeque;
use std::time::Duration;

use parallax_wire::Message;
use tokio::time::Instant;

/// How long a reply waits for its request's `idle` while the request produces nothing more,
/// before it is sent anyway (ipykernel drops iopub messages when its queue overflows).
pub(super) const IDLE_GRACE: Duration = Duration::from_secs(30);

/// One request the kernel is working on (or has queued).
#[derive(Debug)]
pub(super) struct Entry {
    /// The request as the controller sent it, without its buffers: the parent of what is made
    /// for it here.
    pub request: Message,
    /// The kernel's reply, held until `idle`.
    pub reply: Option<Message>,
    /// Whether the kernel has published `idle` for it.
    pub idle: bool,
    last_activity: Instant,
}

impl Entry {
    fn msg_id(&self) -> &str {
        self.request.msg_id()
    }
}

/// What to do with a reply from the kernel.
#[derive(Debug)]
pub(super) enum Reply {
    /// Its request's `idle` has been seen: send it now.
    Send(Message),
    /// Held until the `idle`.
    Held,
    /// It answers no request of the controller's (one of the engine's own, e.g. a readiness
    /// probe): drop it.
    Unknown(Message),
}

/// The requests in flight, in the order they were sent to the kernel.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    entries: VecDeque<Entry>,
}

impl InFlight {
    /// Records a request just sent to the kernel.
    pub(super) fn push(&mut self, request: &Message, now: Instant) {
        let mut request = request.clone();
        request.buffers.clear();
        request.identities.clear();
        self.entries.push_back(Entry {
            request,
            reply: None,
            idle: false,
            last_activity: now,
        });
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `msg_id` is a request in flight.
    pub(super) fn contains(&self, msg_id: &str) -> bool {
        self.position(Some(msg_id)).is_some()
    }

    /// The oldest request in flight: the one the kernel is running.
    pub(super) fn oldest(&self) -> Option<&Message> {
        self.entries.front().map(|entry| &entry.request)
    }

    fn position(&self, msg_id: Option<&str>) -> Option<usize> {
        let msg_id = msg_id?;
        self.entries
            .iter()
            .position(|entry| entry.msg_id() == msg_id)
    }

    /// Notes output for the request `parent`: its held reply waits on.
    pub(super) fn touch(&mut self, parent: Option<&str>, now: Instant) {
        if let Some(index) = self.position(parent) {
            self.entries[index].last_activity = now;
        }
    }

    /// A reply from the kernel.
    pub(super) fn on_reply(&mut self, reply: Message, now: Instant) -> Reply {
        let Some(index) = self.position(reply.parent_msg_id()) else {
            return Reply::Unknown(reply);
        };
        if self.entries[index].idle {
            self.entries.remove(index);
            return Reply::Send(reply);
        }
        let entry = &mut self.entries[index];
        entry.reply = Some(reply);
        entry.last_activity = now;
        Reply::Held
    }

    /// The kernel published `idle` for `parent`: returns the reply now due, if it was held.
    pub(super) fn on_idle(&mut self, parent: Option<&str>) -> Option<Message> {
        let index = self.position(parent)?;
        if self.entries[index].reply.is_some() {
            return self.entries.remove(index).and_then(|entry| entry.reply);
        }
        self.entries[index].idle = true;
        None
    }

    /// When the next held reply is due for release if nothing happens meanwhile.
    pub(super) fn next_stall(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|entry| entry.reply.is_some())
            .map(|entry| entry.last_activity + IDLE_GRACE)
            .min()
    }

    /// Removes and returns the replies held past [`IDLE_GRACE`] without activity.
    pub(super) fn release_stalled(&mut self, now: Instant) -> Vec<Message> {
        let mut released = Vec::new();
        let mut index = 0;
        while index < self.entries.len() {
            let entry = &self.entries[index];
            if entry.reply.is_some() && entry.last_activity + IDLE_GRACE <= now {
                if let Some(reply) = self.entries.remove(index).and_then(|entry| entry.reply) {
                    released.push(reply);
                }
            } else {
                index += 1;
            }
        }
        released
    }

    /// Empties the table, oldest first (the kernel died or the engine stops).
    pub(super) fn take_all(&mut self) -> Vec<Entry> {
        self.entries.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parallax_wire::Session;
    use serde_json::json;

    fn request(session: &Session) -> Message {
        session.message("execute_request", &json!({"code": "1"}))
    }

    fn reply_to(session: &Session, request: &Message) -> Message {
        session.reply(request, "execute_reply", &json!({"status": "ok"}))
    }

    #[test]
    fn a_reply_waits_for_its_idle() {
        let s = Session::new(b"k", "t");
        let now = Instant::now();
        let mut table = InFlight::default();
        let (a, b) = (request(&s), request(&s));
        table.push(&a, now);
        table.push(&b, now);
        assert_eq!(table.oldest().map(Message::msg_id), Some(a.msg_id()));

        assert!(matches!(table.on_reply(reply_to(&s, &a), now), Reply::Held));
        assert!(
            table.on_idle(Some(b.msg_id())).is_none(),
            "b has no reply yet"
        );
        let due = table.on_idle(Some(a.msg_id())).expect("a's reply is due");
        assert_eq!(due.parent_msg_id(), Some(a.msg_id()));
        assert_eq!(table.len(), 1);

        // b's idle came first: its reply goes at once.
        assert!(matches!(
            table.on_reply(reply_to(&s, &b), now),
            Reply::Send(_)
        ));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn replies_to_other_requests_are_unknown() {
        let s = Session::new(b"k", "t");
        let mut table = InFlight::default();
        let probe = s.message("kernel_info_request", &json!({}));
        assert!(matches!(
            table.on_reply(reply_to(&s, &probe), Instant::now()),
            Reply::Unknown(_)
        ));
        assert!(table.on_idle(Some(probe.msg_id())).is_none());
        assert!(table.on_idle(None).is_none());
    }

    #[test]
    fn held_replies_are_released_after_a_silent_grace() {
        let s = Session::new(b"k", "t");
        let start = Instant::now();
        let mut table = InFlight::default();
        let (a, b) = (request(&s), request(&s));
        table.push(&a, start);
        table.push(&b, start);
        assert_eq!(table.next_stall(), None);
        let _ = table.on_reply(reply_to(&s, &a), start);
        assert_eq!(table.next_stall(), Some(start + IDLE_GRACE));
        table.touch(Some(a.msg_id()), start + Duration::from_secs(5));
        assert!(table.release_stalled(start + IDLE_GRACE).is_empty());
        let released = table.release_stalled(start + IDLE_GRACE + Duration::from_secs(5));
        assert_eq!(released.len(), 1);
        assert!(table.contains(b.msg_id()) && !table.contains(a.msg_id()));
        let left = table.take_all();
        assert_eq!(left.len(), 1);
        assert!(left[0].request.buffers.is_empty());
    }
}
