//! Tracks: incoming ones owned by their publisher, outgoing ones holding them weakly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, MediaTime, Mid, Pt, Rid};

use crate::rtp::Continuity;

use crate::api::VideoQuality;

use crate::api::PeerId;

/// The shortest gap between two keyframe requests sent to one publisher's track.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// A simulcast layer counts as sent while its frames are at most this far apart. Browsers stop
/// sending their upper layers when the camera's picture is small or bandwidth or CPU runs short
/// (Chromium sends one layer for a 320×240 camera); a subscriber wanting such a layer gets the
/// best one still arriving instead of a frozen picture.
pub const LAYER_ACTIVE_WINDOW: Duration = Duration::from_millis(1500);

/// A layer's bitrate is measured over windows of this length (the last complete one counts).
pub const RATE_WINDOW: Duration = Duration::from_millis(500);

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
    /// When each layer's last frame arrived, in microseconds after `epoch` plus one (0: never).
    /// Written by the publisher's frames, read by every subscriber's layer choice.
    seen: Vec<AtomicU64>,
    /// Each layer's bitrate (one entry without simulcast), for subscribers' bandwidth choices.
    rates: Vec<Rate>,
    epoch: Instant,
}

/// Payload bytes counted over [`RATE_WINDOW`]s; atomics for the same reason as `TrackIn::seen`.
#[derive(Debug, Default)]
struct Rate {
    /// Start of the current window (µs after the track's epoch) and payload bytes in it.
    start: AtomicU64,
    bytes: AtomicU64,
    /// Bit/s over the last complete window.
    bps: AtomicU64,
}

impl TrackIn {
    pub(crate) fn new(origin: PeerId, mid: Mid, kind: MediaKind, layers: Vec<Rid>, epoch: Instant) -> TrackIn {
        let seen = layers.iter().map(|_| AtomicU64::new(0)).collect();
        let rates = (0..layers.len().max(1)).map(|_| Rate::default()).collect();
        TrackIn { origin, mid, kind, layers, seen, rates, epoch }
    }

    /// The entry of layer `rid` in `seen` and `rates`: `None` (no simulcast) is the one entry
    /// of a track without layers, and nothing for a simulcast track.
    fn index(&self, rid: Option<Rid>) -> Option<usize> {
        match rid {
            Some(rid) => self.layers.iter().position(|r| *r == rid),
            None => self.layers.is_empty().then_some(0),
        }
    }

    /// Notes that a packet of layer `rid` with `bytes` of payload arrived at `now`.
    pub(crate) fn saw(&self, rid: Option<Rid>, now: Instant, bytes: usize) {
        let us = now.saturating_duration_since(self.epoch).as_micros() as u64 + 1;
        let Some(i) = self.index(rid) else { return };
        if let Some(seen) = self.seen.get(i) {
            seen.store(us, Ordering::Relaxed);
        }
        let Some(rate) = self.rates.get(i) else { return };
        let start = rate.start.load(Ordering::Relaxed);
        let window = RATE_WINDOW.as_micros() as u64;
        if us.saturating_sub(start) >= window {
            let bits = rate.bytes.load(Ordering::Relaxed) * 8;
            let elapsed = us.saturating_sub(start);
            // The first window, or one after a pause (the layer stopped for a while): no rate
            // until a whole window has been seen.
            let bps = if start == 0 || elapsed > 2 * window { 0 } else { bits * 1_000_000 / elapsed };
            rate.bps.store(bps, Ordering::Relaxed);
            rate.start.store(us, Ordering::Relaxed);
            rate.bytes.store(bytes as u64, Ordering::Relaxed);
        } else {
            rate.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// The bitrate (bit/s of payload, as str0m's estimate counts) of layer `rid` (`None`: the
    /// track without simulcast) over the last complete [`RATE_WINDOW`]; 0 before one has passed.
    pub(crate) fn bitrate(&self, rid: Option<Rid>) -> u64 {
        self.index(rid).and_then(|i| self.rates.get(i)).map_or(0, |r| r.bps.load(Ordering::Relaxed))
    }

    fn active(&self, i: usize, now: Instant) -> bool {
        let us = self.seen[i].load(Ordering::Relaxed);
        if us == 0 {
            return false;
        }
        let last = self.epoch + Duration::from_micros(us - 1);
        now.saturating_duration_since(last) <= LAYER_ACTIVE_WINDOW
    }

    /// The layer to forward for a wanted quality: `Low` the lowest, `High` the highest, `Medium`
    /// the middle one — or, when that layer is not arriving, the best one below it that is (else
    /// the nearest above). `None` without simulcast.
    pub(crate) fn layer_for(&self, quality: VideoQuality, now: Instant) -> Option<Rid> {
        let n = self.layers.len();
        if n == 0 {
            return None;
        }
        let want = match quality {
            VideoQuality::Off | VideoQuality::Low => 0,
            VideoQuality::Medium => (n - 1) / 2 + usize::from(n == 2),
            VideoQuality::High => n - 1,
        }
        .min(n - 1);
        let i = (0..=want)
            .rev()
            .find(|&i| self.active(i, now))
            .or_else(|| (want + 1..n).find(|&i| self.active(i, now)))
            .unwrap_or(want);
        self.layers.get(i).copied()
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
    /// The output time for a packet of the current layer; `newest`: it is the latest in sequence
    /// so far (a late retransmission must not move the base a switch continues from).
    pub(crate) fn map(&mut self, time: MediaTime, arrived: Instant, newest: bool) -> MediaTime {
        let out = (time.numer() as i64).saturating_add(self.offset).max(0) as u64;
        if newest {
            self.last = Some((out, arrived));
        }
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

    /// Remembers a request for `rid` sent at `now` without asking (one that may not wait).
    pub(crate) fn note(&mut self, now: Instant, rid: Option<Rid>) {
        match self.last.iter_mut().find(|(r, _)| *r == rid) {
            Some((_, t)) => *t = now,
            None => self.last.push((rid, now)),
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
    /// The publisher and the mid of its track, copied from `track_in`: forwarding finds a
    /// packet's track by these without upgrading every subscription's `Weak`.
    pub origin: PeerId,
    pub mid_in: Mid,
    pub state: TrackOutState,
    /// What is being forwarded: `None` until a start (for video, the first packet of a
    /// keyframe), then the layer (`Some(None)` without simulcast).
    pub sending: Option<Option<Rid>>,
    pub continuity: Continuity,
    /// The last payload type seen from the publisher and the subscriber's one for that codec.
    pub pt: Option<(Pt, Pt)>,
    /// When this subscription last asked for the keyframe it waits for.
    pub asked: Option<Instant>,
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
        let t0 = Instant::now();
        let t = |layers: &[&str]| {
            TrackIn::new(
                PeerId(1),
                Mid::from("0"),
                MediaKind::Video,
                layers.iter().map(|r| Rid::from(*r)).collect(),
                t0,
            )
        };
        let three = t(&["q", "h", "f"]);
        assert_eq!(three.layer_for(VideoQuality::Low, t0), Some(Rid::from("q")));
        assert_eq!(three.layer_for(VideoQuality::Medium, t0), Some(Rid::from("h")));
        assert_eq!(three.layer_for(VideoQuality::High, t0), Some(Rid::from("f")));
        let two = t(&["q", "f"]);
        assert_eq!(two.layer_for(VideoQuality::Medium, t0), Some(Rid::from("f")));
        assert_eq!(t(&[]).layer_for(VideoQuality::High, t0), None);
    }

    #[test]
    fn a_layer_that_is_not_arriving_is_replaced_by_the_best_one_that_is() {
        let t0 = Instant::now();
        let layers = ["q", "h", "f"].iter().map(|r| Rid::from(*r)).collect();
        let track = TrackIn::new(PeerId(1), Mid::from("0"), MediaKind::Video, layers, t0);
        // Only the lowest layer arrives (a small camera): everyone gets it.
        track.saw(Some(Rid::from("q")), t0, 0);
        assert_eq!(track.layer_for(VideoQuality::High, t0), Some(Rid::from("q")));
        assert_eq!(track.layer_for(VideoQuality::Medium, t0), Some(Rid::from("q")));
        // The middle one starts: High falls back to it, Low keeps the lowest.
        track.saw(Some(Rid::from("h")), t0 + Duration::from_millis(100), 0);
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(track.layer_for(VideoQuality::High, t1), Some(Rid::from("h")));
        assert_eq!(track.layer_for(VideoQuality::Low, t1), Some(Rid::from("q")));
        // The lowest stops: Low takes the nearest layer above.
        let t2 = t0 + LAYER_ACTIVE_WINDOW + Duration::from_millis(50);
        track.saw(Some(Rid::from("h")), t2, 0);
        assert_eq!(track.layer_for(VideoQuality::Low, t2), Some(Rid::from("h")));
        // All of them arrive again: each quality has its own layer.
        for r in ["q", "f"] {
            track.saw(Some(Rid::from(r)), t2, 0);
        }
        assert_eq!(track.layer_for(VideoQuality::High, t2), Some(Rid::from("f")));
        assert_eq!(track.layer_for(VideoQuality::Low, t2), Some(Rid::from("q")));
    }

    #[test]
    fn each_layer_has_its_own_bitrate_over_the_last_window() {
        let t0 = Instant::now();
        let layers = ["q", "f"].iter().map(|r| Rid::from(*r)).collect();
        let track = TrackIn::new(PeerId(1), Mid::from("0"), MediaKind::Video, layers, t0);
        let (q, f) = (Some(Rid::from("q")), Some(Rid::from("f")));
        // 100 packets a second for 1.2 s: 100 bytes on q (80 kbit/s), 1000 bytes on f (800 kbit/s).
        for i in 0..=120u64 {
            let t = t0 + Duration::from_millis(10 * i);
            track.saw(q, t, 100);
            track.saw(f, t, 1000);
        }
        assert_eq!(track.bitrate(q), 80_000);
        assert_eq!(track.bitrate(f), 800_000);
        assert_eq!(track.bitrate(Some(Rid::from("x"))), 0, "not a layer of this track");
        // A packet without its rid on a simulcast track counts for no layer.
        track.saw(None, t0 + Duration::from_millis(1300), 50_000);
        assert_eq!(track.bitrate(q), 80_000);
        // After a pause longer than two windows a layer has no rate until it has a window again.
        let later = t0 + Duration::from_secs(5);
        track.saw(q, later, 100);
        assert_eq!(track.bitrate(q), 0);
    }

    #[test]
    fn timestamps_continue_across_a_layer_switch() {
        let hz = str0m::media::Frequency::NINETY_KHZ;
        let t0 = Instant::now();
        let mut ts = TsRewrite::default();
        assert_eq!(ts.map(MediaTime::new(1_000_000, hz), t0, true).numer(), 1_000_000, "no offset before a switch");
        let t1 = t0 + Duration::from_millis(33);
        assert_eq!(ts.map(MediaTime::new(1_003_000, hz), t1, true).numer(), 1_003_000);
        // The new layer's clock is somewhere else entirely.
        let t2 = t1 + Duration::from_millis(33);
        ts.switch(MediaTime::new(7_000, hz), t2);
        let out = ts.map(MediaTime::new(7_000, hz), t2, true).numer();
        assert_eq!(out, 1_003_000 + 2_970, "continues 33 ms after the last frame");
        assert_eq!(ts.map(MediaTime::new(10_000, hz), t2 + Duration::from_millis(33), true).numer(), out + 3_000);
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
