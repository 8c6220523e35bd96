//! Running several huddle nodes on one Redis (issue 16; docs/design/room-ownership.md).
//!
//! What is here so far, each tested against a real redis-server: [`lease`], the rule that a room
//! has one owner at a time (a lease with a fencing epoch that goes up on every change of owner),
//! and [`nodes`], which nodes are alive and where a new room goes. The hub does not use them
//! yet: the relay between nodes and the room state in Redis come next, and until they exist
//! there is no `--redis` option.

pub mod lease;
pub mod nodes;
