//! Admitted WebSockets that must end: when the JWT that admitted them expires
//! (`close_on_expiry`), after `max_connection_seconds`, or when their first message has not
//! brought a valid credential in time (`first_message.timeout_ms`). The core says when each one
//! closes and which are due; the shell keeps the list on its root context, checks it on a timer
//! and resets the streams that are due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Why an admitted socket is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The JWT that admitted it has expired (plus leeway).
    Expired,
    /// It has been open `max_connection_seconds`.
    MaxAge,
    /// Its first message did not bring a credential within `first_message.timeout_ms`.
    FirstMessageTimeout,
}

impl CloseReason {
    /// The word for it in logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Expired => "closed_expired",
            CloseReason::MaxAge => "closed_max_age",
            CloseReason::FirstMessageTimeout => "first_message_timeout",
        }
    }
}

/// When an admitted socket closes, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// The first millisecond (since the Unix epoch) at which the socket must be closed.
    pub at: u64,
    pub reason: CloseReason,
}

impl Close {
    /// The earlier of a close on the credential's expiry and one on the socket's age (each in
    /// milliseconds since the Unix epoch).
    pub fn earliest(expiry: Option<u64>, max_age_at: Option<u64>) -> Option<Close> {
        let expired = expiry.map(|at| Close { at, reason: CloseReason::Expired });
        let aged = max_age_at.map(|at| Close { at, reason: CloseReason::MaxAge });
        match (expired, aged) {
            (Some(e), Some(a)) => Some(if a.at < e.at { a } else { e }),
            (e, a) => e.or(a),
        }
    }
}

/// The open sockets of one VM that have a close time, by the host's id of their stream, and in
/// the order they close: every stream's end looks its id up (O(1)), a timer tick takes only
/// the sockets due (O(log n) each), so thousands of waiting sockets do not slow other requests.
#[derive(Debug, Default)]
pub struct OpenSockets {
    by_stream: HashMap<u32, Close>,
    /// Close times, earliest first. An entry whose stream has gone or has another close time
    /// now is stale: skipped when it comes up, and dropped when stale entries outnumber the
    /// live ones (a rebuild in O(n), paid for by the n/2 ends before it).
    queue: BinaryHeap<Reverse<(u64, u32)>>,
}

impl OpenSockets {
    pub fn admit(&mut self, stream: u32, close: Close) {
        self.by_stream.insert(stream, close);
        self.queue.push(Reverse((close.at, stream)));
        self.drop_stale();
    }

    /// The stream ended by itself, or no longer has a close time. Whether it was listed.
    pub fn forget(&mut self, stream: u32) -> bool {
        let listed = self.by_stream.remove(&stream).is_some();
        if listed {
            self.drop_stale();
        }
        listed
    }

    /// The sockets due at `now` (milliseconds since the Unix epoch), taken off the list.
    pub fn due(&mut self, now: u64) -> Vec<(u32, CloseReason)> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, stream))) = self.queue.peek() {
            if at > now {
                break;
            }
            self.queue.pop();
            if self.by_stream.get(&stream).is_some_and(|close| close.at == at) {
                due.extend(self.by_stream.remove(&stream).map(|close| (stream, close.reason)));
            }
        }
        due
    }

    fn drop_stale(&mut self) {
        if self.queue.len() > 2 * self.by_stream.len() + 64 {
            self.queue = self.by_stream.iter().map(|(stream, close)| Reverse((close.at, *stream))).collect();
        }
    }

    pub fn len(&self) -> usize {
        self.by_stream.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_stream.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_earlier_close_wins_and_either_alone_stands() {
        let expired = Close { at: 100, reason: CloseReason::Expired };
        let aged = Close { at: 50, reason: CloseReason::MaxAge };
        assert_eq!(Close::earliest(Some(100), Some(50)), Some(aged));
        assert_eq!(Close::earliest(Some(100), Some(150)), Some(expired));
        assert_eq!(Close::earliest(Some(100), None), Some(expired));
        assert_eq!(Close::earliest(None, Some(50)), Some(aged));
        assert_eq!(Close::earliest(None, None), None);
    }

    #[test]
    fn sockets_are_due_at_their_close_time_and_only_once() {
        let mut open = OpenSockets::default();
        open.admit(7, Close { at: 100, reason: CloseReason::Expired });
        open.admit(8, Close { at: 200, reason: CloseReason::MaxAge });
        assert_eq!(open.due(99), vec![]);
        assert_eq!(open.due(100), vec![(7, CloseReason::Expired)]);
        assert_eq!(open.due(150), vec![]);
        assert_eq!(open.due(300), vec![(8, CloseReason::MaxAge)]);
        assert!(open.is_empty());
    }

    #[test]
    fn a_socket_admitted_again_closes_only_at_its_new_time() {
        let mut open = OpenSockets::default();
        open.admit(7, Close { at: 100, reason: CloseReason::FirstMessageTimeout });
        open.admit(7, Close { at: 500, reason: CloseReason::Expired });
        assert_eq!(open.len(), 1);
        assert_eq!(open.due(100), vec![]);
        assert_eq!(open.due(500), vec![(7, CloseReason::Expired)]);
    }

    #[test]
    fn sockets_due_at_the_same_time_all_close_and_the_rest_stay() {
        let mut open = OpenSockets::default();
        for stream in 0..10_000 {
            open.admit(stream, Close { at: 1000 + u64::from(stream % 10), reason: CloseReason::MaxAge });
        }
        assert_eq!(open.due(1004).len(), 5000);
        assert_eq!(open.len(), 5000);
        assert!(!open.forget(3));
        assert!(open.forget(9));
        assert_eq!(open.due(u64::MAX).len(), 4999);
        assert!(open.is_empty());
    }

    #[test]
    fn sockets_that_end_before_their_time_leave_no_growing_queue() {
        let mut open = OpenSockets::default();
        for stream in 0..100_000 {
            open.admit(stream, Close { at: 10_000 + u64::from(stream), reason: CloseReason::MaxAge });
            open.forget(stream);
        }
        assert!(open.queue.len() <= 64 + 1, "{} stale entries", open.queue.len());
        assert_eq!(open.due(u64::MAX), vec![]);
    }

    #[test]
    fn a_stream_that_ended_is_never_closed() {
        let mut open = OpenSockets::default();
        open.admit(7, Close { at: 100, reason: CloseReason::Expired });
        open.forget(7);
        assert_eq!(open.due(1000), vec![]);
    }
}
