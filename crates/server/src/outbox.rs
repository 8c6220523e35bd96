//! What the hub hands a connection to write: [`Frame`]s (a [`ServerMsg`] serialised once, shared
//! by every recipient of a broadcast and by the resume buffer) in an [`Outbox`] bounded both by
//! count and by bytes.
//!
//! Who owns what: the hub holds the [`Outbox`] (the sending end) and is its only producer; the
//! connection task holds the [`OutboxReceiver`]. The bytes queued are one atomic counter shared by
//! the two: the hub adds before it queues, the receiver subtracts as it takes a frame out. A
//! single producer makes "check, then add" safe: between the two the count can only go down.

use bytes::Bytes;
use huddle_protocol::ServerMsg;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

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
    tx: mpsc::Sender<Frame>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The connection task's end.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Frame>,
    queued: Arc<AtomicUsize>,
}

/// An outbox for at most `count` frames and `max_bytes` bytes of them. A frame larger than
/// `max_bytes` is still taken into an empty outbox (else it could never be sent); so what an
/// outbox holds is at most `max(max_bytes, one frame)`.
pub fn outbox(count: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(count.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (Outbox { tx, queued: queued.clone(), max_bytes }, OutboxReceiver { rx, queued })
}

impl Outbox {
    /// Queues `frame` without waiting.
    pub fn try_send(&self, frame: Frame) -> Result<(), Refused> {
        let len = frame.len();
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(len) > self.max_bytes {
            return if self.tx.is_closed() { Err(Refused::Closed) } else { Err(Refused::Full) };
        }
        // Added before it is visible to the receiver, which subtracts as it takes it.
        self.queued.fetch_add(len, Ordering::AcqRel);
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => Err(Refused::Full),
                    mpsc::error::TrySendError::Closed(_) => Err(Refused::Closed),
                }
            }
        }
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The most frames it holds.
    pub fn max_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

impl OutboxReceiver {
    /// The next frame; `None` once the hub has dropped the outbox and everything was taken.
    pub async fn recv(&mut self) -> Option<Frame> {
        let frame = self.rx.recv().await?;
        self.taken(&frame);
        Some(frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Frame, mpsc::error::TryRecvError> {
        let frame = self.rx.try_recv()?;
        self.taken(&frame);
        Ok(frame)
    }

    fn taken(&self, frame: &Frame) {
        self.queued.fetch_sub(frame.len(), Ordering::AcqRel);
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Whether the hub has dropped its end.
    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Drops everything queued and refuses more (what a connection that is ending does).
    pub fn close(&mut self) {
        self.rx.close();
        while self.try_recv().is_ok() {}
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
