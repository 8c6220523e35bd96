//! Active-speaker detection for one room, from the audio level each publisher's RTP carries
//! (RFC 6464, `urn:ietf:params:rtp-hdrext:ssrc-audio-level`: dBov, 0 loudest, -127 silence).
//!
//! Each participant's level is smoothed (an exponential moving average with time constant
//! [`SMOOTHING`], decaying towards silence while no frame comes). At most every
//! [`EVALUATION_INTERVAL`] the loudest smoothed participant above [`SPEECH_THRESHOLD_DBOV`] is
//! compared with the current speaker, who keeps the floor unless it fell below the threshold or
//! the challenger is louder by [`SWITCH_MARGIN_DB`]; and the floor changes at most once per
//! [`MIN_HOLD`]. So a cough does not switch, two people talking at about the same level do not
//! make it flap, and the caller gets at most one change per second per room. Silence keeps the
//! last speaker (the page keeps showing who spoke last).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::PeerId;

/// Time constant of the level smoothing.
pub const SMOOTHING: Duration = Duration::from_millis(300);
/// A smoothed level at or above this counts as speech (dBov).
pub const SPEECH_THRESHOLD_DBOV: f32 = -50.0;
/// How much louder (dB) a challenger must be to take the floor from a current speaker.
pub const SWITCH_MARGIN_DB: f32 = 6.0;
/// The shortest time between two decisions.
pub const EVALUATION_INTERVAL: Duration = Duration::from_millis(200);
/// The shortest time between two changes of speaker.
pub const MIN_HOLD: Duration = Duration::from_secs(1);

/// Silence, in dBov.
const SILENCE: f32 = -127.0;

#[derive(Debug, Clone, Copy)]
struct Smoothed {
    /// Loudness above silence (dB over -127), smoothed, as of `at`.
    value: f32,
    at: Instant,
}

impl Smoothed {
    /// The value at `now`, moved towards `input` for the time since `at`.
    fn towards(&self, now: Instant, input: f32) -> f32 {
        let dt = now.saturating_duration_since(self.at).as_secs_f32();
        let keep = (-dt / SMOOTHING.as_secs_f32()).exp();
        input + (self.value - input) * keep
    }
}

/// One room's speakers.
#[derive(Debug, Default)]
pub(crate) struct Speakers {
    levels: HashMap<PeerId, Smoothed>,
    current: Option<PeerId>,
    last_evaluation: Option<Instant>,
    last_switch: Option<Instant>,
}

impl Speakers {
    /// One audio frame of `peer` with its level (dBov, clamped to -127..=0) and, when the sender
    /// set it, its voice-activity flag (`Some(false)`: not speech, counted as silence). Returns
    /// the new active speaker when the floor changes.
    pub(crate) fn observe(&mut self, now: Instant, peer: PeerId, dbov: i8, voice: Option<bool>) -> Option<PeerId> {
        let input = if voice == Some(false) { 0.0 } else { (f32::from(dbov).clamp(SILENCE, 0.0)) - SILENCE };
        let value = match self.levels.get(&peer) {
            Some(s) => s.towards(now, input),
            // A newcomer starts from silence, so one loud first frame is not a speaker yet.
            None => Smoothed { value: 0.0, at: now }.towards(now, input),
        };
        self.levels.insert(peer, Smoothed { value, at: now });
        self.evaluate(now)
    }

    /// Forget a participant who left. The floor stays empty until someone speaks.
    pub(crate) fn remove(&mut self, peer: PeerId) {
        self.levels.remove(&peer);
        if self.current == Some(peer) {
            self.current = None;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    fn evaluate(&mut self, now: Instant) -> Option<PeerId> {
        if self.last_evaluation.is_some_and(|t| now.saturating_duration_since(t) < EVALUATION_INTERVAL) {
            return None;
        }
        self.last_evaluation = Some(now);
        if self.last_switch.is_some_and(|t| now.saturating_duration_since(t) < MIN_HOLD) {
            return None;
        }
        let threshold = SPEECH_THRESHOLD_DBOV - SILENCE;
        let level = |s: &Smoothed| s.towards(now, 0.0);
        // The loudest speaker; ties go to the lower id, so the choice does not depend on
        // hash order.
        let loudest = self
            .levels
            .iter()
            .map(|(p, s)| (*p, level(s)))
            .filter(|(_, l)| *l >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))?;
        if self.current == Some(loudest.0) {
            return None;
        }
        let current = self.current.and_then(|p| self.levels.get(&p)).map(level).unwrap_or(0.0);
        if current >= threshold && loudest.1 < current + SWITCH_MARGIN_DB {
            return None;
        }
        self.current = Some(loudest.0);
        self.last_switch = Some(now);
        Some(loudest.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    /// Feeds `secs` of frames: each (peer, dBov) every 20 ms. Returns the changes, with when.
    fn talk(s: &mut Speakers, t: &mut Instant, secs: f32, who: &[(u64, i8)]) -> Vec<(Duration, PeerId)> {
        let start = *t;
        let mut out = Vec::new();
        let frames = (secs / FRAME.as_secs_f32()).round() as usize;
        for _ in 0..frames {
            for (p, db) in who {
                if let Some(c) = s.observe(*t, PeerId(*p), *db, None) {
                    out.push((*t - start, c));
                }
            }
            *t += FRAME;
        }
        out
    }

    #[test]
    fn the_one_talking_gets_the_floor_within_a_second() {
        let (mut s, mut t) = (Speakers::default(), Instant::now());
        let changes = talk(&mut s, &mut t, 2.0, &[(1, -127), (2, -25), (3, -127)]);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1, PeerId(2));
        assert!(changes[0].0 < Duration::from_secs(1), "{changes:?}");
    }

    #[test]
    fn a_cough_does_not_take_the_floor() {
        let (mut s, mut t) = (Speakers::default(), Instant::now());
        talk(&mut s, &mut t, 2.0, &[(1, -30), (2, -127)]);
        // 2 coughs: 60 ms at full scale, while 1 goes on.
        let cough = talk(&mut s, &mut t, 0.06, &[(1, -30), (2, 0)]);
        let after = talk(&mut s, &mut t, 2.0, &[(1, -30), (2, -127)]);
        assert!(cough.is_empty() && after.is_empty(), "{cough:?} {after:?}");
    }

    #[test]
    fn two_at_about_the_same_level_do_not_flap_and_a_clearly_louder_one_takes_over() {
        let (mut s, mut t) = (Speakers::default(), Instant::now());
        assert_eq!(talk(&mut s, &mut t, 2.0, &[(1, -30)]).len(), 1);
        assert!(talk(&mut s, &mut t, 5.0, &[(1, -30), (2, -27)]).is_empty(), "within the margin");
        let louder = talk(&mut s, &mut t, 2.0, &[(1, -30), (2, -15)]);
        assert_eq!(louder.iter().map(|c| c.1).collect::<Vec<_>>(), vec![PeerId(2)]);
    }

    #[test]
    fn changes_are_at_most_one_per_hold_and_silence_keeps_the_last_speaker() {
        let (mut s, mut t) = (Speakers::default(), Instant::now());
        let mut all = Vec::new();
        for round in 0..10 {
            // Alternating talkers every 300 ms: far faster than the floor may move.
            let who = if round % 2 == 0 { [(1, -20), (2, -127)] } else { [(1, -127), (2, -20)] };
            all.extend(talk(&mut s, &mut t, 0.3, &who));
        }
        assert!(all.len() <= 3, "3 s of fast alternation: at most one change per second: {all:?}");
        assert!(talk(&mut s, &mut t, 3.0, &[(1, -127), (2, -127)]).is_empty(), "silence changes nothing");
    }

    #[test]
    fn voice_activity_off_counts_as_silence_and_leavers_are_forgotten() {
        let (mut s, mut t) = (Speakers::default(), Instant::now());
        for _ in 0..100 {
            assert_eq!(s.observe(t, PeerId(1), -10, Some(false)), None, "loud but not speech");
            t += FRAME;
        }
        talk(&mut s, &mut t, 1.5, &[(2, -20)]);
        s.remove(PeerId(2));
        let next = talk(&mut s, &mut t, 1.5, &[(3, -35)]);
        assert_eq!(next.iter().map(|c| c.1).collect::<Vec<_>>(), vec![PeerId(3)]);
        s.remove(PeerId(1));
        s.remove(PeerId(3));
        assert!(s.is_empty());
    }
}
