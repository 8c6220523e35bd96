//! Tracks: incoming ones owned by their publisher, outgoing ones holding them weakly.

use std::sync::Weak;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, MediaTime, Mid, Rid};

use crate::api::VideoQuality;

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
    /// Simulcast layers the publisher sends, lowest quality first (as it declared them); empty
    /// without simulcast.
    pub layers: Vec<Rid>,
}

impl TrackIn {
    /// The layer to forward for a wanted quality: `Low` the lowest, `High` the highest, `Medium`
    /// the middle one. `None` without simulcast.
    pub(crate) fn layer_for(&self, quality: VideoQuality) -> Option<Rid> {
        let n = self.layers.len();
        if n == 0 {
            return None;
        }
        let i = match quality {
            VideoQuality::Off | VideoQuality::Low => 0,
            VideoQuality::Medium => (n - 1) / 2 + usize::from(n == 2),
            VideoQuality::High => n - 1,
        };
        self.layers.get(i.min(n - 1)).copied()
    }
}

/// Keeps a subscriber's timestamps continuous when the forwarded simulcast layer changes: each
/// layer has its own RTP timestamp base, so after a switch the output continues from the last
/// frame sent plus the wall-clock time since, instead of jumping to the new layer's base.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TsRewrite {
    /// Added to the input time, in the track's clock ticks.
    offset: i64,
    /// The last output time and when its frame arrived.
    last: Option<(u64, Instant)>,
}

impl TsRewrite {
    /// The output time for a frame of the current layer.
    pub(crate) fn map(&mut self, time: MediaTime, arrived: Instant) -> MediaTime {
        let out = (time.numer() as i64).saturating_add(self.offset).max(0) as u64;
        self.last = Some((out, arrived));
        MediaTime::new(out, time.frequency())
    }

    /// Starts a new layer whose first frame has `time`, continuing after the last output.
    pub(crate) fn switch(&mut self, time: MediaTime, arrived: Instant) {
        let Some((last, at)) = self.last else { return };
        let hz = time.frequency().get() as u128;
        let elapsed = (arrived.saturating_duration_since(at).as_micros() * hz / 1_000_000) as u64;
        let want = last.saturating_add(elapsed.max(1));
        self.offset = want as i64 - time.numer() as i64;
    }
}

/// Rate limit for keyframe requests (PLI/FIR) towards one incoming track, per simulcast layer.
#[derive(Debug, Default)]
pub(crate) struct KeyframeThrottle {
    last: Vec<(Option<Rid>, Instant)>,
}

impl KeyframeThrottle {
    /// True (and remembers `now`) when a request for `rid` may go out at `now`.
    pub(crate) fn allow(&mut self, now: Instant, rid: Option<Rid>) -> bool {
        match self.last.iter_mut().find(|(r, _)| *r == rid) {
            Some((_, t)) if now.saturating_duration_since(*t) < KEYFRAME_REQUEST_INTERVAL => false,
            Some((_, t)) => {
                *t = now;
                true
            }
            None => {
                self.last.push((rid, now));
                true
            }
        }
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
    /// The simulcast layer being forwarded (`None` until the first keyframe of one arrives).
    pub layer: Option<Rid>,
    pub ts: TsRewrite,
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
    fn layers_are_chosen_by_quality() {
        let t = |layers: &[&str]| TrackIn {
            origin: PeerId(1),
            mid: Mid::from("0"),
            kind: MediaKind::Video,
            layers: layers.iter().map(|r| Rid::from(*r)).collect(),
        };
        let three = t(&["q", "h", "f"]);
        assert_eq!(three.layer_for(VideoQuality::Low), Some(Rid::from("q")));
        assert_eq!(three.layer_for(VideoQuality::Medium), Some(Rid::from("h")));
        assert_eq!(three.layer_for(VideoQuality::High), Some(Rid::from("f")));
        let two = t(&["q", "f"]);
        assert_eq!(two.layer_for(VideoQuality::Medium), Some(Rid::from("f")));
        assert_eq!(t(&[]).layer_for(VideoQuality::High), None);
    }

    #[test]
    fn timestamps_continue_across_a_layer_switch() {
        let hz = str0m::media::Frequency::NINETY_KHZ;
        let t0 = Instant::now();
        let mut ts = TsRewrite::default();
        assert_eq!(ts.map(MediaTime::new(1_000_000, hz), t0).numer(), 1_000_000, "no offset before a switch");
        let t1 = t0 + Duration::from_millis(33);
        assert_eq!(ts.map(MediaTime::new(1_003_000, hz), t1).numer(), 1_003_000);
        // The new layer's clock is somewhere else entirely.
        let t2 = t1 + Duration::from_millis(33);
        ts.switch(MediaTime::new(7_000, hz), t2);
        let out = ts.map(MediaTime::new(7_000, hz), t2).numer();
        assert_eq!(out, 1_003_000 + 2_970, "continues 33 ms after the last frame");
        assert_eq!(ts.map(MediaTime::new(10_000, hz), t2 + Duration::from_millis(33)).numer(), out + 3_000);
    }

    #[test]
    fn keyframe_requests_are_at_most_one_per_interval() {
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::default();
        assert!(throttle.allow(t0, None));
        assert!(!throttle.allow(t0 + Duration::from_millis(500), None));
        assert!(throttle.allow(t0 + Duration::from_millis(500), Some(Rid::from("f"))), "layers apart");
        assert!(throttle.allow(t0 + KEYFRAME_REQUEST_INTERVAL, None));
    }
}
