//! Credentials: coturn's "TURN REST API" time-limited usernames and passwords, the long-term
//! credential key (RFC 8489 §9.2), and stateless nonces.
//!
//! A REST username is `<expiry unix seconds>:<user>`; its password is
//! `base64(HMAC-SHA1(secret, username))`. Whoever knows the secret (the signalling server) hands
//! them out; the TURN server checks them without any per-credential state. The user part of
//! huddle's own credentials says what they are for ([`UserKind`]); the HMAC makes that
//! unforgeable.

use aws_lc_rs::hmac;
use md5::{Digest, Md5};

/// Longest USERNAME, REALM or NONCE value accepted (RFC 8489 caps them at 509/763 bytes; ours
/// are far shorter).
pub const MAX_TEXT: usize = 256;

/// A username and password for one client, valid until `expires` (unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub expires: u64,
}

/// What a credential is for, from its user part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserKind {
    /// `s.<random>`: a huddle session in a room. It may allocate only while the hub has granted
    /// it (from joining to leaving), and an allocation it made lives on past the credential's
    /// expiry (browsers refresh with the credential they allocated with) until the session ends.
    Session,
    /// `c.<random>`: the connectivity check's. It may make a few short allocations (that is the
    /// test) and relays nothing.
    Check,
    /// Anything else: minted by another service that shares the secret (`--turn-secret`), valid
    /// until its expiry, checked on every request.
    Other,
}

impl UserKind {
    /// The user-part prefix of a session's credentials.
    pub const SESSION_PREFIX: &'static str = "s.";
    /// The user-part prefix of a connectivity check's credentials.
    pub const CHECK_PREFIX: &'static str = "c.";

    pub fn of(user: &str) -> UserKind {
        if user.starts_with(Self::SESSION_PREFIX) {
            UserKind::Session
        } else if user.starts_with(Self::CHECK_PREFIX) {
            UserKind::Check
        } else {
            UserKind::Other
        }
    }
}

/// A well-formed REST username with its long-term key, whether or not it has expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified<'a> {
    /// MD5(username ":" realm ":" password).
    pub key: [u8; 16],
    /// Unix seconds.
    pub expires: u64,
    /// The part after the colon (quotas count by it).
    pub user: &'a str,
}

/// The REST API's shared secret.
#[derive(Clone)]
pub struct Secret {
    key: hmac::Key,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub fn new(secret: &[u8]) -> Secret {
        Secret { key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret) }
    }

    /// The password of `username`.
    pub fn password(&self, username: &str) -> String {
        base64(hmac::sign(&self.key, username.as_bytes()).as_ref())
    }

    /// Credentials for `user`, valid from `now` (unix seconds) for `ttl_secs`.
    pub fn issue(&self, user: &str, now: u64, ttl_secs: u64) -> Credentials {
        let expires = now.saturating_add(ttl_secs);
        let username = format!("{expires}:{user}");
        let password = self.password(&username);
        Credentials { username, password, expires }
    }

    /// The long-term key of a REST `username` if it is well formed and not expired at `now`:
    /// MD5(username ":" realm ":" password). Returns the user part too (quotas count by it).
    pub fn key_for<'a>(&self, username: &'a str, realm: &str, now: u64) -> Option<([u8; 16], &'a str)> {
        self.verify(username, realm).filter(|v| v.expires > now).map(|v| (v.key, v.user))
    }

    /// The long-term key, expiry and user part of a well-formed REST `username`, expired or not
    /// (a session's allocation outlives the credential it was made with).
    pub fn verify<'a>(&self, username: &'a str, realm: &str) -> Option<Verified<'a>> {
        let (expiry, user) = username.split_once(':')?;
        if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let expires: u64 = expiry.parse().ok()?;
        Some(Verified { key: long_term_key(username, realm, &self.password(username)), expires, user })
    }
}

/// MD5(username ":" realm ":" password), the long-term credential key.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Nonces that need no table: `<expiry hex><tag hex>` where the tag is an HMAC over the expiry
/// and the client's address, so a nonce is only good for the client it was given to, until it
/// expires (then 438 Stale Nonce, and the client retries with the new one).
pub struct Nonces {
    key: hmac::Key,
}

impl Nonces {
    /// `seed` should be random per process (restarting the server invalidates nonces, which
    /// clients handle: they retry on 438).
    pub fn new(seed: &[u8]) -> Nonces {
        Nonces { key: hmac::Key::new(hmac::HMAC_SHA256, seed) }
    }

    pub fn make(&self, client: &std::net::IpAddr, expires: u64) -> String {
        let tag = self.tag(client, expires);
        format!("{expires:016x}{tag}")
    }

    /// `Ok` for a nonce this server gave `client` that has not expired at `now`;
    /// `Err(true)` for one that was good but expired (438), `Err(false)` for a foreign one.
    pub fn check(&self, nonce: &str, client: &std::net::IpAddr, now: u64) -> Result<(), bool> {
        if nonce.len() != 16 + 32 || !nonce.is_ascii() {
            return Err(false);
        }
        let expires = u64::from_str_radix(&nonce[..16], 16).map_err(|_| false)?;
        let want = self.tag(client, expires);
        if aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), &nonce.as_bytes()[16..]).is_err() {
            return Err(false);
        }
        if expires <= now {
            return Err(true);
        }
        Ok(())
    }

    fn tag(&self, client: &std::net::IpAddr, expires: u64) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&expires.to_be_bytes());
        match client {
            std::net::IpAddr::V4(ip) => ctx.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        let tag = ctx.sign();
        tag.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Standard base64 with padding (the REST API's password encoding).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ABC[(n >> 18) as usize & 63] as char);
        out.push(ABC[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { ABC[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { ABC[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_passwords_match_the_published_recipe() {
        // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac "north" -binary | base64
        let s = Secret::new(b"north");
        assert_eq!(s.password("1700000000:alice"), "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
        let c = s.issue("alice", 1_699_999_000, 1000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    }

    #[test]
    fn keys_only_for_well_formed_unexpired_usernames() {
        let s = Secret::new(b"north");
        let (key, user) = s.key_for("1700000000:alice", "huddle", 1_699_999_999).expect("valid until 1700000000");
        assert_eq!(user, "alice");
        assert_eq!(key, long_term_key("1700000000:alice", "huddle", "Cd/49soE35ICqcJF/bCTn8Z4OyE="));
        assert!(s.key_for("1700000000:alice", "huddle", 1_700_000_000).is_none(), "expired");
        for bad in ["alice", ":alice", "17x:alice", "-1:alice", "99999999999999999999999:a", ""] {
            assert!(s.key_for(bad, "huddle", 0).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn expired_usernames_still_verify_with_their_expiry() {
        let s = Secret::new(b"north");
        let v = s.verify("1700000000:s.ab12", "huddle").expect("well formed");
        assert_eq!((v.expires, v.user), (1_700_000_000, "s.ab12"));
        assert_eq!(v.key, long_term_key("1700000000:s.ab12", "huddle", &s.password("1700000000:s.ab12")));
        assert!(s.verify("x:s.ab12", "huddle").is_none());
    }

    #[test]
    fn user_kinds_come_from_the_prefix() {
        assert_eq!(UserKind::of("s.0f1e2d3c"), UserKind::Session);
        assert_eq!(UserKind::of("c.0f1e2d3c"), UserKind::Check);
        for other in ["p1", "alice", "", "s", "c", "S.x", "sc.x"] {
            assert_eq!(UserKind::of(other), UserKind::Other, "{other:?}");
        }
    }

    #[test]
    fn long_term_key_is_md5_of_the_triple() {
        // echo -n "user:realm:pass" | md5sum
        assert_eq!(
            long_term_key("user", "realm", "pass").iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "8493fbc53ba582fb4c044c456bdc40eb"
        );
    }

    #[test]
    fn nonces_are_bound_to_the_client_and_expire() {
        let n = Nonces::new(b"seed");
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let nonce = n.make(&a, 100);
        assert_eq!(n.check(&nonce, &a, 99), Ok(()));
        assert_eq!(n.check(&nonce, &a, 100), Err(true), "stale");
        assert_eq!(n.check(&nonce, &b, 99), Err(false), "another client's");
        assert_eq!(Nonces::new(b"other").check(&nonce, &a, 99), Err(false), "another server's");
        assert_eq!(n.check("garbage", &a, 0), Err(false));
        assert_eq!(n.check(&"é".repeat(24), &a, 0), Err(false));
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
