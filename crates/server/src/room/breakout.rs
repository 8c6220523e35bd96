//! Breakout rooms (issue 19; `docs/protocol.md`, "Breakout rooms"): the state a meeting's main
//! room keeps while they are open, and how their rooms are named.
//!
//! A breakout room is a [`super::Room`] of its own in the hub's rooms, under the key
//! `<meeting>\0<index>`: no client can name it (room names never hold control characters), it
//! hashes to its meeting's worker ([`meeting_of`]), and it is saved and moved with its meeting.

use huddle_protocol::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Most breakout rooms a meeting may open.
pub const MAX_ROOMS: usize = 50;
/// Longest time limit, minutes.
pub const MAX_MINUTES: u32 = 24 * 60;
/// Longest countdown before everyone is back, seconds.
pub const MAX_CLOSE_SECONDS: u32 = 600;
/// Most people a room's chat is kept for when the rooms close.
pub const MAX_VISITORS: usize = 1024;
/// How often one person may ask for help, ms.
pub const HELP_EVERY_MS: u64 = 30_000;

/// The separator between a meeting's name and a breakout room's index in a room key.
const SEP: char = '\0';

/// The room key of breakout room `index` (from 1) of `meeting`.
pub fn key(meeting: &str, index: u32) -> String {
    format!("{meeting}{SEP}{index}")
}

/// The meeting a room key belongs to: the key itself for a main room.
pub fn meeting_of(key: &str) -> &str {
    key.split_once(SEP).map_or(key, |(m, _)| m)
}

/// The breakout room index of a room key (`None`: a main room).
pub fn index_of(key: &str) -> Option<u32> {
    key.split_once(SEP).and_then(|(_, i)| i.parse().ok())
}

/// The open breakout rooms of a meeting, kept by its main room.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breakouts {
    /// The rooms' names; room `i` is `names[i - 1]`.
    pub names: Vec<String>,
    /// Where each person is meant to be (0: the main room). Absent: the main room.
    pub assigned: HashMap<PeerId, u32>,
    pub auto_move: bool,
    pub allow_return: bool,
    pub choose: bool,
    /// Unix ms: the time limit (the rooms start closing then).
    pub ends_at: Option<u64>,
    /// Unix ms: everyone goes back then (while closing).
    pub closing_at: Option<u64>,
    pub close_seconds: u32,
    /// Unix ms of each person's last call for help.
    #[serde(skip)]
    pub help_at: HashMap<PeerId, u64>,
    /// Who has been in each room (by index) while they were open: they get its chat when the
    /// rooms close. At most the meeting's people per room.
    #[serde(default)]
    pub visited: HashMap<u32, Vec<PeerId>>,
}

impl Breakouts {
    /// Whether `index` names one of the rooms (0, the main room, included).
    pub fn has(&self, index: u32) -> bool {
        (index as usize) <= self.names.len()
    }

    /// Where `id` is meant to be.
    pub fn assigned_to(&self, id: &PeerId) -> u32 {
        self.assigned.get(id).copied().unwrap_or(0)
    }

    /// The name of room `index` (from 1).
    pub fn name(&self, index: u32) -> Option<&str> {
        index.checked_sub(1).and_then(|i| self.names.get(i as usize)).map(String::as_str)
    }

    /// `id` is in room `index` now.
    pub fn visit(&mut self, index: u32, id: &PeerId) {
        let seen = self.visited.entry(index).or_default();
        // (A bound however many sessions come and go while the rooms are open.)
        if !seen.contains(id) && seen.len() < MAX_VISITORS {
            seen.push(id.clone());
        }
    }

    /// The next time something is due (unix ms): the countdown's end, or the time limit.
    pub fn next_due(&self) -> Option<u64> {
        self.closing_at.or(self.ends_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_meeting_and_index() {
        let k = key("standup", 3);
        assert_eq!(meeting_of(&k), "standup");
        assert_eq!(index_of(&k), Some(3));
        assert_eq!(meeting_of("standup"), "standup");
        assert_eq!(index_of("standup"), None);
        // No client can name one: room names never hold control characters.
        assert!(crate::validate::label(&k, 64).is_none());
    }
}
