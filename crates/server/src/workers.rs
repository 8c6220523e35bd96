//! Rooms spread over the machine's cores (issue 17; docs/design/room-ownership.md).
//!
//! A **worker** is a hub (its rooms, their rules and their sessions) with its own SFU thread and
//! UDP socket. A room belongs to exactly one worker, chosen by a hash of its name
//! ([`worker_of_room`]), so every connection finds a room's owner without asking anyone and
//! nothing on the per-message or per-packet path is shared between workers. This is the node
//! level's design (a session lives on its room's owner, and moves there before it joins, with
//! `Command::Export` and `Command::Adopt`) with a channel instead of Redis: inside one process
//! the connection's outbox moves with its session, so no relay is needed.
//!
//! What the workers share: the connection tasks (tokio's threads), the HTTP port (ICE-TCP
//! connections on it go to their worker by the ufrag prefix, [`ufrag_prefix`]), the TURN
//! server, the room list (each worker tells the others its public rooms) and the cap on rooms
//! (each worker publishes how many it holds; [`RoomCounts`]).

use crate::hub::{self, Command};
use crate::media::{MediaCommand, MediaStats};
use huddle_protocol::PeerId;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most workers one process runs.
pub const MAX_WORKERS: usize = 64;

/// Which worker owns `room` (its name as the hub keys it, after validation) among `workers`:
/// FNV-1a of the name, so the same name goes to the same worker in every run with the same
/// count (the restart file relies on nothing more: a restored room is placed by this too).
pub fn worker_of_room(room: &str, workers: usize) -> usize {
    // A breakout room lives with its meeting.
    let room = crate::room::breakout::meeting_of(room);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

/// Digits of [`ufrag_prefix`].
const PREFIX_DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// What every ICE ufrag of worker `index`'s SFU starts with: two base-36 digits.
pub fn ufrag_prefix(index: usize) -> String {
    let index = index.min(36 * 36 - 1);
    [PREFIX_DIGITS[index / 36] as char, PREFIX_DIGITS[index % 36] as char].iter().collect()
}

/// The worker whose SFU gave out `ufrag` ([`ufrag_prefix`]), if it is one of `workers`.
pub fn worker_of_ufrag(ufrag: &str, workers: usize) -> Option<usize> {
    let digit = |b: u8| PREFIX_DIGITS.iter().position(|d| *d == b);
    let b = ufrag.as_bytes();
    let index = digit(*b.first()?)? * 36 + digit(*b.get(1)?)?;
    (index < workers).then_some(index)
}

/// What the ids of files shared in worker `index`'s rooms start with (one worker: nothing).
pub fn file_id_prefix(index: usize, workers: usize) -> Option<String> {
    (workers > 1).then(|| format!("w{index}-"))
}

/// The worker keeping file `id` ([`file_id_prefix`]); the first for any other id (which its
/// hub then does not know, or a single worker's).
pub fn worker_of_file(id: &str, workers: usize) -> usize {
    id.strip_prefix('w')
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(n, _)| n.parse::<usize>().ok())
        .filter(|n| *n < workers)
        .unwrap_or(0)
}

/// How many rooms each worker holds, written by each worker after every batch of commands
/// (its own slot only) and read by the others for the cap on rooms.
#[derive(Debug)]
pub struct RoomCounts(Vec<AtomicUsize>);

impl RoomCounts {
    pub fn new(workers: usize) -> RoomCounts {
        RoomCounts((0..workers).map(|_| AtomicUsize::new(0)).collect())
    }

    pub fn set(&self, worker: usize, rooms: usize) {
        if let Some(slot) = self.0.get(worker) {
            slot.store(rooms, Ordering::Relaxed);
        }
    }

    /// Rooms every worker but `worker` holds.
    pub fn others(&self, worker: usize) -> usize {
        self.0.iter().enumerate().filter(|(i, _)| *i != worker).map(|(_, n)| n.load(Ordering::Relaxed)).sum()
    }
}

/// What a hub knows of the other workers of its process.
#[derive(Debug, Clone)]
pub struct Siblings {
    /// This hub's worker.
    pub index: usize,
    /// Every worker's command queue, this one's included (weak: a hub does not keep another
    /// alive; the room lists go through them).
    pub hubs: Vec<mpsc::WeakSender<Command>>,
    pub rooms: Arc<RoomCounts>,
}

/// The workers of this process, as the connection tasks and the HTTP handlers reach them.
#[derive(Debug)]
pub struct Workers {
    hubs: Vec<mpsc::Sender<Command>>,
    /// Each worker's SFU (for `/metrics`); `None`: no SFU (peer-to-peer only).
    media: Vec<Option<mpsc::WeakSender<MediaCommand>>>,
    pub rooms: Arc<RoomCounts>,
}

impl Workers {
    pub fn new(hubs: Vec<mpsc::Sender<Command>>, media: Vec<Option<mpsc::WeakSender<MediaCommand>>>) -> Workers {
        let rooms = Arc::new(RoomCounts::new(hubs.len()));
        Workers { hubs, media, rooms }
    }

    pub fn len(&self) -> usize {
        self.hubs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hubs.is_empty()
    }

    /// Worker `i`'s hub (`i` from [`Workers::of_room`], [`Workers::for_connection`] or
    /// [`Workers::holding`]: always one of them).
    pub fn hub(&self, i: usize) -> &mpsc::Sender<Command> {
        &self.hubs[i % self.hubs.len()]
    }

    pub fn hubs(&self) -> &[mpsc::Sender<Command>] {
        &self.hubs
    }

    /// The worker that owns `room` (a name as the page sent it: it is validated as the hub
    /// does, and an invalid one stays where the session is, to be refused there).
    pub fn of_room(&self, room: &str, max_chars: u32) -> Option<usize> {
        let room = crate::validate::label(room, max_chars)?;
        Some(worker_of_room(&room, self.hubs.len()))
    }

    /// Where a new connection's session starts (until it joins a room): spread by number.
    pub fn for_connection(&self, n: u64) -> usize {
        (n % self.hubs.len() as u64) as usize
    }

    /// The worker holding session `id`, to resume it there; `None`: no worker knows it (the
    /// hub the connection starts on answers the resume).
    pub async fn holding(&self, id: &PeerId) -> Option<usize> {
        if self.hubs.len() == 1 {
            return Some(0);
        }
        let asks = self.hubs.iter().map(|hub| async move {
            let (reply, answer) = oneshot::channel();
            hub.send(Command::Holds { id: id.clone(), reply }).await.ok()?;
            answer.await.ok()
        });
        let answers = futures_util::future::join_all(asks).await;
        answers.iter().position(|held| *held == Some(true))
    }

    /// Every worker's hub counters, summed, and each worker's.
    pub async fn stats(&self) -> Option<(hub::Stats, Vec<hub::Stats>)> {
        let asks = self.hubs.iter().map(|hub| async move {
            let (reply, answer) = oneshot::channel();
            hub.send(Command::Stats { reply }).await.ok()?;
            answer.await.ok()
        });
        let each: Vec<hub::Stats> = futures_util::future::join_all(asks).await.into_iter().collect::<Option<_>>()?;
        let total = each.iter().fold(hub::Stats::default(), |sum, s| sum.plus(s));
        Some((total, each))
    }

    /// Every worker's SFU counters (`None` for a worker without one, or whose SFU is gone).
    pub async fn media_stats(&self) -> Vec<Option<MediaStats>> {
        let asks = self.media.iter().map(|media| async move {
            let tx = media.as_ref()?.upgrade()?;
            let (reply, answer) = oneshot::channel();
            tx.send(MediaCommand::Stats { reply }).await.ok()?;
            answer.await.ok()
        });
        futures_util::future::join_all(asks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_always_goes_to_the_same_worker_and_rooms_spread() {
        for workers in 1..=8 {
            for room in ["a", "standup", "회의실", "x".repeat(64).as_str()] {
                let w = worker_of_room(room, workers);
                assert!(w < workers);
                assert_eq!(w, worker_of_room(room, workers));
            }
        }
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[worker_of_room(&format!("room-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|n| (60..=140).contains(n)), "rooms spread evenly over 4 workers: {seen:?}");
    }

    #[test]
    fn ufrag_prefixes_name_their_worker_and_nothing_else() {
        for i in 0..MAX_WORKERS {
            let prefix = ufrag_prefix(i);
            assert_eq!(prefix.len(), 2);
            assert!(prefix.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(worker_of_ufrag(&format!("{prefix}Xy7q"), MAX_WORKERS), Some(i));
        }
        assert_eq!(worker_of_ufrag("01abc", 1), None, "worker 1 of a process with one worker");
        assert_eq!(worker_of_ufrag("", 4), None);
        assert_eq!(worker_of_ufrag("0", 4), None);
        assert_eq!(worker_of_ufrag("+/ab", 4), None);
    }

    #[test]
    fn file_ids_name_their_worker() {
        assert_eq!(file_id_prefix(0, 1), None);
        let id = format!("{}0123abcd", file_id_prefix(3, 4).expect("several workers"));
        assert_eq!(worker_of_file(&id, 4), 3);
        assert_eq!(worker_of_file(&id, 2), 0, "a worker this process does not have");
        assert_eq!(worker_of_file("0123abcd", 4), 0);
        assert_eq!(worker_of_file("w-1", 4), 0);
        assert_eq!(worker_of_file("w99999999999999999999999-x", 4), 0);
    }

    #[test]
    fn room_counts_are_per_worker() {
        let counts = RoomCounts::new(3);
        counts.set(0, 2);
        counts.set(2, 5);
        counts.set(9, 100);
        assert_eq!(counts.others(0), 5);
        assert_eq!(counts.others(1), 7);
        assert_eq!(counts.others(2), 2, "worker 9 does not exist: nothing counted");
    }
}
