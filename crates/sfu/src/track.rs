//! Tracks: incoming ones owned by their publisher, outgoing ones holding them weakly.

use std::sync::Weak;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid};

use crate::api::PeerId;

/// The shortest gap between two keyframe requests sent to one publisher's track.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// A track a participant publishes. Only its publisher's `Peer` holds the `Arc`; when the
/// publisher goes, every subscriber's `Weak` dies and its outgoing track is stopped.
#[derive(Debug)]
pub(crate) struct TrackIn {
    pub origin: PeerId,
    pub mid: Mid,
    pub kind: MediaKind,
}

/// Rate limit for keyframe requests (PLI/FIR) towards one incoming track.
#[derive(Debug, Default)]
pub(crate) struct KeyframeThrottle {
    last: Option<Instant>,
}

impl KeyframeThrottle {
    /// True (and remembers `now`) when a request may go out at `now`.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The life of one outgoing track in a subscriber's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrackOutState {
    /// Known, not yet in an offer.
    ToOpen,
    /// In an offer the subscriber has not answered yet.
    Negotiating(Mid),
    /// Negotiated; media flows.
    Open(Mid),
    /// The publisher is gone; the m-line must be stopped in the next offer.
    ToStop(Mid),
    /// The stop is in an offer not answered yet.
    NegotiatingStop(Mid),
}

/// A publisher's track as one subscriber receives it.
#[derive(Debug)]
pub(crate) struct TrackOut {
    pub track_in: Weak<TrackIn>,
    pub state: TrackOutState,
}

impl TrackOut {
    pub(crate) fn open_mid(&self) -> Option<Mid> {
        match self.state {
            TrackOutState::Open(m) => Some(m),
            _ => None,
        }
    }

    pub(crate) fn mid(&self) -> Option<Mid> {
        match self.state {
            TrackOutState::ToOpen => None,
            TrackOutState::Negotiating(m)
            | TrackOutState::Open(m)
            | TrackOutState::ToStop(m)
            | TrackOutState::NegotiatingStop(m) => Some(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_requests_are_at_most_one_per_interval() {
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::default();
        assert!(throttle.allow(t0));
        assert!(!throttle.allow(t0 + Duration::from_millis(500)));
        assert!(throttle.allow(t0 + KEYFRAME_REQUEST_INTERVAL));
    }
}
