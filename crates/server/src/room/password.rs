//! Room passwords, which the server never needs back: kept only as a salted, slow hash
//! (PBKDF2-HMAC-SHA256), in memory and in the sessions file a graceful restart writes; and the
//! budget of wrong guesses each room allows, whatever the number of addresses they come from.
//!
//! The hash costs milliseconds on purpose, so the hub never computes it on its own task (which
//! runs every room): it hands [`PasswordHash::new`] and [`PasswordHash::verify`] to a blocking
//! thread (`crate::hub`, "Jobs").

use aws_lc_rs::{pbkdf2, rand};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use tokio::time::{Duration, Instant};

/// PBKDF2 iterations of a new hash: about 6 ms on one core of the 2-core machine huddle's CI runs
/// on (see README, "Limits and safety"). Stored with each hash, so it can change between versions.
/// (The fuzz targets, built with `--cfg fuzzing`, hash with one, so that a run tries many
/// inputs rather than many hashes.)
pub const ITERATIONS: u32 = if cfg!(fuzzing) { 1 } else { 20_000 };
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;

/// A salted PBKDF2-HMAC-SHA256 hash of a room password. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    iterations: u32,
    /// Hex.
    salt: String,
    /// Hex.
    hash: String,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(…)")
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt. Slow (see [`ITERATIONS`]).
    pub fn new(password: &str) -> PasswordHash {
        let mut salt = [0u8; SALT_BYTES];
        // The system's random source does not fail on the platforms huddle runs on.
        rand::fill(&mut salt).expect("the system's random source works");
        let mut hash = [0u8; HASH_BYTES];
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations(ITERATIONS), &salt, password.as_bytes(), &mut hash);
        PasswordHash { iterations: ITERATIONS, salt: hex(&salt), hash: hex(&hash) }
    }

    /// Whether `given` is the password (compared in constant time). Slow (see [`ITERATIONS`]); a
    /// hash read back damaged matches nothing.
    pub fn verify(&self, given: &str) -> bool {
        let (Some(salt), Some(hash)) = (unhex(&self.salt), unhex(&self.hash)) else { return false };
        if self.iterations == 0 || self.iterations > 10 * ITERATIONS || hash.len() != HASH_BYTES {
            // Not one this server made: refuse rather than spend unbounded time on it.
            return false;
        }
        let n = iterations(self.iterations);
        pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, given.as_bytes(), &hash).is_ok()
    }
}

fn iterations(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * HASH_BYTES {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Wrong guesses a room allows at once…
pub const GUESS_BURST: f64 = 10.0;
/// …and how often it allows one more.
pub const GUESS_REFILL: Duration = Duration::from_secs(6);
/// Hosts hear of wrong guesses at most this often.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// One room's budget of password checks: a token bucket of [`GUESS_BURST`] that gains one every
/// [`GUESS_REFILL`]. A check takes a token before it starts (so checks in flight count too); the
/// right password gives it back, a wrong one keeps it spent. With the bucket empty, joins with a
/// password are refused unchecked (`too_many_attempts`), from every address alike: more
/// addresses do not mean more guesses. Invites and tokens skip the password and so the budget.
#[derive(Debug)]
pub struct Guesses {
    tokens: f64,
    last: Option<Instant>,
    /// Wrong guesses since the hosts were last told.
    failed: u32,
    told: Option<Instant>,
}

impl Default for Guesses {
    fn default() -> Guesses {
        Guesses { tokens: GUESS_BURST, last: None, failed: 0, told: None }
    }
}

impl Guesses {
    /// Takes one check from the budget; `false` while it is spent (a pause).
    pub fn reserve(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let gained = now.saturating_duration_since(last).as_secs_f64() / GUESS_REFILL.as_secs_f64();
            self.tokens = (self.tokens + gained).min(GUESS_BURST);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A check found the right password: its token comes back.
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(GUESS_BURST);
    }

    /// A check found a wrong password (its token stays spent). Returns how many wrong guesses to
    /// tell the hosts of: when the budget has run out, at most every [`NOTICE_INTERVAL`].
    pub fn failed(&mut self, now: Instant) -> Option<u32> {
        self.failed = self.failed.saturating_add(1);
        let due = self.told.is_none_or(|t| now.saturating_duration_since(t) >= NOTICE_INTERVAL);
        if self.tokens >= 1.0 || !due {
            return None;
        }
        self.told = Some(now);
        Some(std::mem::take(&mut self.failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_shows_nothing() {
        let h = PasswordHash::new("blue whale");
        assert!(h.verify("blue whale"));
        assert!(!h.verify("blue whal"));
        assert!(!h.verify(""));
        assert_ne!(h, PasswordHash::new("blue whale"), "salted");
        let json = serde_json::to_string(&h).expect("serialises");
        assert!(!json.contains("blue"), "{json}");
        assert_eq!(format!("{h:?}"), "PasswordHash(…)");
        let back: PasswordHash = serde_json::from_str(&json).expect("parses");
        assert!(back.verify("blue whale"));
        // A damaged or foreign hash matches nothing and costs nothing.
        for bad in [
            r#"{"iterations":0,"salt":"00","hash":"00"}"#,
            r#"{"iterations":4000000000,"salt":"00","hash":"00"}"#,
            r#"{"iterations":1,"salt":"zz","hash":"00"}"#,
        ] {
            let h: PasswordHash = serde_json::from_str(bad).expect("parses");
            assert!(!h.verify(""));
        }
    }

    #[test]
    fn the_guess_budget_pauses_after_a_burst_refills_and_tells_hosts_at_most_a_minute_apart() {
        let t0 = Instant::now();
        let mut g = Guesses::default();
        // The right password costs nothing in the end.
        for _ in 0..100 {
            assert!(g.reserve(t0));
            g.refund();
        }
        for n in 1..=10 {
            assert!(g.reserve(t0), "guess {n}");
            let told = g.failed(t0);
            assert_eq!(told, (n == 10).then_some(10), "hosts hear once the budget is spent");
        }
        assert!(!g.reserve(t0), "paused");
        assert!(!g.reserve(t0 + GUESS_REFILL / 2), "still paused");
        assert!(g.reserve(t0 + GUESS_REFILL), "one more after the refill");
        assert_eq!(g.failed(t0 + GUESS_REFILL), None, "told less than a minute ago");
        assert!(!g.reserve(t0 + GUESS_REFILL));
        let later = t0 + NOTICE_INTERVAL;
        assert!(g.reserve(later));
        assert_eq!(g.failed(later), None, "the budget is not spent (it refilled a lot)");
        let mut spent = 0;
        while g.reserve(later) {
            spent += 1;
        }
        assert!(spent >= 8, "refilled over the minute: {spent}");
        assert_eq!(g.failed(later), Some(3), "three wrong guesses since the hosts were told");
        // A clock that goes backwards refills nothing.
        assert!(!g.reserve(t0));
    }

    #[test]
    #[ignore = "a measurement: cargo test --release -p huddle-server --lib password::tests::cost -- --ignored --nocapture"]
    fn cost() {
        let h = PasswordHash::new("blue whale");
        let n = 50;
        let start = std::time::Instant::now();
        for _ in 0..n {
            assert!(!h.verify("a guess"));
        }
        println!("PBKDF2-HMAC-SHA256 × {ITERATIONS}: {:?} per check", start.elapsed() / n);
    }
}
