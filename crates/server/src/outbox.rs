//! What the hub hands a connection to write: [`Frame`]s (a [`ServerMsg`] serialised once, shared
//! by every recipient of a broadcast and by the resume buffer) in an [`Outbox`] bounded both by
//! count and by bytes.
//!
//! Who owns what: the hub holds the [`Outbox`] (the sending end) and is its only producer; the
//! connection task holds the [`OutboxReceiver`]. The frames and their bytes are counted under the
//! one lock both ends take for a push or a pop, so "check, then add" cannot race.

use bytes::Bytes;
use huddle_protocol::ServerMsg;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
pub use tokio::sync::mpsc::error::TryRecvError;

/// One server message as it goes on the wire: its JSON text, made once. Cheap to clone (the bytes
/// are shared).
#[derive(Clone, Debug)]
pub struct Frame(Bytes);

impl Frame {
    pub fn new(msg: &ServerMsg) -> Frame {
        // Plain data with string keys: serialising it cannot fail.
        Frame(Bytes::from(serde_json::to_vec(msg).expect("a ServerMsg serialises")))
    }

    /// A message another node serialised (see [`crate::cluster`]): its JSON text as it came.
    pub fn from_json(text: Bytes) -> Frame {
        Frame(text)
    }

    /// The JSON text's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON text (UTF-8).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The message again, for tests, the fuzz harness and the restart snapshot.
    pub fn decode(&self) -> Option<ServerMsg> {
        serde_json::from_slice(&self.0).ok()
    }

    /// Whether `other` is this very frame (the same bytes, not equal ones): a replay sends the
    /// frames it kept.
    pub fn same(&self, other: &Frame) -> bool {
        self.0.as_ptr() == other.0.as_ptr() && self.0.len() == other.0.len()
    }
}

impl From<&ServerMsg> for Frame {
    fn from(msg: &ServerMsg) -> Frame {
        Frame::new(msg)
    }
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The outbox holds as many frames, or as many bytes, as it may: the client is too slow.
    Full,
    /// The connection task is gone.
    Closed,
}

/// The hub's end of a connection's outbox.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
    max_count: usize,
    max_bytes: usize,
}

/// The connection task's end.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

/// What both ends share: a queue under a lock, taken for a push or a pop and never across an
/// await. An idle connection's outbox is this and nothing more (about 100 bytes, and a queue of
/// at most four frames' room): a channel would keep a block of slots per connection allocated
/// whether or not anything waits in it (1.5 KiB with tokio's).
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    /// The bytes of `frames`.
    bytes: usize,
    /// The hub dropped its end: what is queued is still taken, then the receiver sees the end.
    sender_gone: bool,
    /// The connection closed its end (or dropped it): nothing more is taken.
    receiver_gone: bool,
    /// The connection task waiting for a frame.
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code that holds the lock can panic half way (pushes, pops and flags); a poisoned
        // lock still guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Room for frames an outbox keeps once it is empty again; a queue that grew larger (a burst)
/// gives its memory back.
const KEEP_ROOM: usize = 4;

impl State {
    fn pop(&mut self) -> Option<Frame> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        if self.frames.is_empty() && self.frames.capacity() > KEEP_ROOM {
            self.frames = VecDeque::new();
        }
        Some(frame)
    }
}

/// An outbox for at most `count` frames and `max_bytes` bytes of them. A frame larger than
/// `max_bytes` is still taken into an empty outbox (else it could never be sent); so what an
/// outbox holds is at most `max(max_bytes, one frame)`.
pub fn outbox(count: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared::default());
    (Outbox { shared: shared.clone(), max_count: count.max(1), max_bytes }, OutboxReceiver { shared })
}

impl Outbox {
    /// Queues `frame` without waiting.
    pub fn try_send(&self, frame: Frame) -> Result<(), Refused> {
        let len = frame.len();
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(Refused::Closed);
        }
        if state.frames.len() >= self.max_count || (state.bytes > 0 && state.bytes.saturating_add(len) > self.max_bytes)
        {
            return Err(Refused::Full);
        }
        state.bytes += len;
        state.frames.push_back(frame);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// The most frames it holds.
    pub fn max_capacity(&self) -> usize {
        self.max_count
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl OutboxReceiver {
    /// The next frame; `None` once the hub has dropped the outbox (or this end was closed) and
    /// everything was taken. Cancel safe: a frame is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let mut state = self.shared.lock();
        if let Some(frame) = state.pop() {
            return Poll::Ready(Some(frame));
        }
        if state.sender_gone || state.receiver_gone {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Frame, TryRecvError> {
        let mut state = self.shared.lock();
        match state.pop() {
            Some(frame) => Ok(frame),
            None if state.sender_gone || state.receiver_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.shared.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the hub has dropped its end (or this end was closed).
    pub fn is_closed(&self) -> bool {
        let state = self.shared.lock();
        state.sender_gone || state.receiver_gone
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Drops everything queued and refuses more (what a connection that is ending does).
    pub fn close(&mut self) {
        let dropped = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            state.bytes = 0;
            std::mem::take(&mut state.frames)
        };
        drop(dropped);
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huddle_protocol::ByeReason;

    fn sized(n: usize) -> Frame {
        Frame(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn bounded_by_count_and_by_bytes() {
        let (tx, mut rx) = outbox(3, 100);
        assert_eq!(tx.try_send(sized(60)), Ok(()));
        assert_eq!(tx.try_send(sized(50)), Err(Refused::Full), "110 bytes");
        assert_eq!(tx.try_send(sized(40)), Ok(()));
        assert_eq!(tx.queued_bytes(), 100);
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(60));
        assert_eq!(rx.queued_bytes(), 40, "taken out, no longer counted");
        assert_eq!(tx.try_send(sized(10)), Ok(()));
        assert_eq!(tx.try_send(sized(10)), Ok(()));
        assert_eq!(tx.try_send(sized(1)), Err(Refused::Full), "three frames");
        assert_eq!(tx.queued_bytes(), 60, "a refused frame is not counted");
        rx.close();
        assert_eq!((rx.queued_bytes(), rx.len()), (0, 0));
        assert_eq!(tx.try_send(sized(1)), Err(Refused::Closed));
    }

    #[test]
    fn a_frame_larger_than_the_bound_goes_into_an_empty_outbox_alone() {
        let (tx, mut rx) = outbox(8, 100);
        assert_eq!(tx.try_send(sized(500)), Ok(()));
        assert_eq!(tx.try_send(sized(1)), Err(Refused::Full));
        assert!(rx.try_recv().is_ok());
        assert_eq!(tx.try_send(sized(1)), Ok(()));
    }

    #[tokio::test]
    async fn the_receiver_waits_for_a_frame_and_sees_the_end_after_the_last_one() {
        let (tx, mut rx) = outbox(8, 1000);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.map(|f| f.len());
            let second = rx.recv().await.map(|f| f.len());
            let end = rx.recv().await.map(|f| f.len());
            (first, second, end)
        });
        tokio::task::yield_now().await;
        assert_eq!(tx.try_send(sized(3)), Ok(()));
        assert_eq!(tx.try_send(sized(4)), Ok(()));
        drop(tx);
        assert_eq!(
            waiting.await.expect("the receiver"),
            (Some(3), Some(4), None),
            "queued frames outlive the hub's end"
        );
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_drained() {
        let (tx, mut rx) = outbox(256, 1 << 20);
        for _ in 0..100 {
            assert_eq!(tx.try_send(sized(10)), Ok(()));
        }
        assert!(rx.shared.lock().frames.capacity() >= 100);
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.lock().frames.capacity() <= KEEP_ROOM, "an idle outbox keeps little room");
        assert_eq!(rx.try_recv().map(|f| f.len()), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv().map(|f| f.len()), Err(TryRecvError::Disconnected));
        assert!(rx.is_closed());
    }

    #[test]
    fn a_dropped_receiver_refuses_and_frees_what_was_queued() {
        let (tx, rx) = outbox(8, 1000);
        let frame = sized(10);
        assert_eq!(tx.try_send(frame.clone()), Ok(()));
        drop(rx);
        assert_eq!(tx.try_send(sized(1)), Err(Refused::Closed));
        assert_eq!(tx.queued_bytes(), 0);
        assert_eq!(Arc::strong_count(&tx.shared), 1);
        assert!(frame.0.is_unique(), "the queued copy was dropped with the receiver");
    }

    #[test]
    fn a_frame_is_its_message_serialised_once() {
        let msg = ServerMsg::Bye { reason: ByeReason::TooSlow };
        let f = Frame::new(&msg);
        assert_eq!(f.bytes().as_ref(), br#"{"type":"bye","reason":"too_slow"}"#);
        assert_eq!(f.decode(), Some(msg.clone()));
        assert!(f.same(&f.clone()));
        assert!(!f.same(&Frame::new(&msg)), "equal, not the same");
    }
}
