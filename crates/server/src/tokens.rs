//! Signed access tokens (JWT, RFC 7519, compact form): invite links the server signs for a
//! room's hosts, and tokens an operator's own service signs for embedding huddle (HS256 with a
//! shared secret, or EdDSA/Ed25519 with a public key), much as LiveKit does.
//!
//! Claims (`docs/protocol.md`, "Tokens"): `room` (a room name, or `*` for any), `exp` (seconds
//! since the Unix epoch, required), optional `nbf`, `name` (the display name the bearer gets),
//! `role` (`host`, `cohost` or `participant`) and `sub` (an identity, for bans). Invite tokens
//! carry `inv: true`, and only the server's own key makes them: an operator key's token never
//! counts as an invite, and an invite never grants a role or a name. An invite also names the
//! opening of the room it was made in (`rid`) and the room's invite generation (`gen`): the hub
//! refuses it for a later room of the same name, after a password change and after a revoke.
//!
//! The algorithm in the header must match a configured key: `none` and everything else is
//! refused, and HS256 is never tried against the Ed25519 key (no algorithm confusion).

use aws_lc_rs::{hmac, rand, signature};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use huddle_protocol::{ErrorCode, Role};
use serde::{Deserialize, Serialize};

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Seconds of clock difference allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// What a valid token grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// An invite link's token: skips the room's password.
    pub invite: bool,
    /// The operator's token: skips the password and `--require-token`.
    pub operator: bool,
    pub role: Option<Role>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// An invite's room instance and invite generation (see [`crate::room::Room::invite_key`]).
    pub invite_for: Option<(String, u32)>,
    /// The operator's `rec` claim: `false` forbids this person to record (even as a host),
    /// `true` lets them record (even as a participant).
    pub record: Option<bool>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    room: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    inv: bool,
    /// May record (`false`: may not, even as a host); absent: as the role allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rec: Option<bool>,
    /// Invites: the room instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rid: Option<String>,
    /// Invites: the room's invite generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gen: Option<u32>,
}

pub struct Tokens {
    /// The server's own key for invite tokens (random at each start).
    own: hmac::Key,
    hs256: Option<hmac::Key>,
    ed25519: Option<Vec<u8>>,
}

impl Tokens {
    /// `hs256`: the operator's shared secret; `ed25519`: the operator's raw 32-byte public key.
    pub fn new(hs256: Option<&[u8]>, ed25519: Option<Vec<u8>>) -> Tokens {
        let rng = rand::SystemRandom::new();
        let own = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system's random source works");
        Tokens { own, hs256: hs256.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k)), ed25519 }
    }

    /// Signs invites with `key` from now on (kept in the data directory, so that invites
    /// outlive a restart).
    pub fn set_invite_key(&mut self, key: &[u8]) {
        self.own = hmac::Key::new(hmac::HMAC_SHA256, key);
    }

    /// An invite token for `room` (its instance `rid`, invite generation `gen`), valid until
    /// `exp` (seconds since the epoch).
    pub fn invite(&self, room: &str, rid: &str, gen: u32, exp: u64) -> String {
        let claims = Claims {
            room: room.to_string(),
            exp,
            nbf: None,
            name: None,
            role: None,
            sub: None,
            inv: true,
            rid: Some(rid.to_string()),
            gen: Some(gen),
            rec: None,
        };
        sign_hs256(&self.own, &claims)
    }

    /// Checks `token` for entering `room` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, room: &str, now: u64) -> Result<Grant, ErrorCode> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ErrorCode::InvalidToken);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(ErrorCode::InvalidToken);
        };
        let header: Header = decode_json(h)?;
        let sig = B64.decode(s).map_err(|_| ErrorCode::InvalidToken)?;
        let signed = &token[..h.len() + 1 + c.len()];
        let invite = match header.alg.as_str() {
            "HS256" if hmac::verify(&self.own, signed.as_bytes(), &sig).is_ok() => true,
            "HS256" => match &self.hs256 {
                Some(key) if hmac::verify(key, signed.as_bytes(), &sig).is_ok() => false,
                _ => return Err(ErrorCode::InvalidToken),
            },
            "EdDSA" => match &self.ed25519 {
                Some(key) => {
                    let key = signature::UnparsedPublicKey::new(&signature::ED25519, key);
                    key.verify(signed.as_bytes(), &sig).map_err(|_| ErrorCode::InvalidToken)?;
                    false
                }
                None => return Err(ErrorCode::InvalidToken),
            },
            _ => return Err(ErrorCode::InvalidToken),
        };
        let claims: Claims = decode_json(c)?;
        if claims.inv != invite {
            // An operator token posing as an invite, or an invite made into something else.
            return Err(ErrorCode::InvalidToken);
        }
        if claims.room != room && (invite || claims.room != "*") {
            return Err(ErrorCode::InvalidToken);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
            return Err(ErrorCode::InvalidToken);
        }
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(ErrorCode::TokenExpired);
        }
        Ok(Grant {
            invite,
            operator: !invite,
            role: if invite { None } else { claims.role },
            name: if invite { None } else { claims.name },
            sub: if invite { None } else { claims.sub.map(|s| s.chars().take(128).collect()) },
            // An invite of an older version names no instance: it opens nothing.
            invite_for: invite.then(|| (claims.rid.unwrap_or_default(), claims.gen.unwrap_or_default())),
            record: if invite { None } else { claims.rec },
        })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, ErrorCode> {
    let bytes = B64.decode(part).map_err(|_| ErrorCode::InvalidToken)?;
    serde_json::from_slice(&bytes).map_err(|_| ErrorCode::InvalidToken)
}

fn sign_hs256(key: &hmac::Key, claims: &Claims) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = B64.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let signed = format!("{header}.{body}");
    let sig = B64.encode(hmac::sign(key, signed.as_bytes()).as_ref());
    format!("{signed}.{sig}")
}

/// Reads an Ed25519 public key: base64 of the raw 32 bytes, or a PEM `PUBLIC KEY` (SPKI).
pub fn parse_ed25519_public_key(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::STANDARD;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    let der = STANDARD.decode(body.trim()).ok()?;
    // The SPKI of an Ed25519 key is a fixed 12-byte prefix and the 32 key bytes.
    const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    match der.len() {
        32 => Some(der),
        44 if der[..12] == SPKI_PREFIX => Some(der[12..].to_vec()),
        _ => None,
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair as _;

    /// Signs `claims` (JSON) the way an operator's service would.
    pub fn operator_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = B64.encode(claims.to_string());
        let signed = format!("{header}.{body}");
        let sig = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), signed.as_bytes());
        format!("{signed}.{}", B64.encode(sig.as_ref()))
    }

    fn operator_eddsa(key: &signature::Ed25519KeyPair, claims: &serde_json::Value) -> String {
        let header = B64.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let body = B64.encode(claims.to_string());
        let signed = format!("{header}.{body}");
        format!("{signed}.{}", B64.encode(key.sign(signed.as_bytes()).as_ref()))
    }

    const SECRET: &[u8] = b"an operator secret of enough length";

    #[test]
    fn invites_are_for_one_room_until_they_expire() {
        let t = Tokens::new(None, None);
        let inv = t.invite("standup", "abc", 3, 1000);
        assert_eq!(t.verify(&inv, "standup", 900).map(|g| g.invite), Ok(true));
        assert_eq!(t.verify(&inv, "standup", 900).map(|g| g.invite_for), Ok(Some(("abc".into(), 3))));
        assert_eq!(t.verify(&inv, "other", 900), Err(ErrorCode::InvalidToken));
        assert_eq!(t.verify(&inv, "standup", 1000 + LEEWAY_SECS + 1), Err(ErrorCode::TokenExpired));
        // Another server's (or the previous run's) invite is not ours.
        assert_eq!(Tokens::new(None, None).verify(&inv, "standup", 900), Err(ErrorCode::InvalidToken));
    }

    #[test]
    fn operator_hs256_tokens_grant_role_and_name() {
        let t = Tokens::new(Some(SECRET), None);
        let claims = serde_json::json!({"room": "*", "exp": 2000, "name": "Dana", "role": "host", "sub": "u-7"});
        let g = t.verify(&operator_hs256(SECRET, &claims), "any room", 1000).expect("valid");
        assert_eq!(
            g,
            Grant {
                invite: false,
                operator: true,
                role: Some(Role::Host),
                name: Some("Dana".into()),
                sub: Some("u-7".into()),
                invite_for: None,
                record: None,
            }
        );
        let no_rec = serde_json::json!({"room": "*", "exp": 2000, "role": "host", "rec": false});
        let g = t.verify(&operator_hs256(SECRET, &no_rec), "r", 1000).expect("valid");
        assert_eq!(g.record, Some(false), "the rec claim is read");
        // Wrong key, tampered claims, posing as an invite, not yet valid.
        let bad = operator_hs256(b"another secret of enough length!!", &claims);
        assert_eq!(t.verify(&bad, "r", 1000), Err(ErrorCode::InvalidToken));
        let good = operator_hs256(SECRET, &claims);
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = B64.encode(serde_json::json!({"room": "*", "exp": 9999999999u64, "role": "host"}).to_string());
        parts[1] = &forged;
        assert_eq!(t.verify(&parts.join("."), "r", 1000), Err(ErrorCode::InvalidToken));
        let as_invite = operator_hs256(SECRET, &serde_json::json!({"room": "r", "exp": 2000, "inv": true}));
        assert_eq!(t.verify(&as_invite, "r", 1000), Err(ErrorCode::InvalidToken));
        let early = operator_hs256(SECRET, &serde_json::json!({"room": "r", "exp": 9000, "nbf": 5000}));
        assert_eq!(t.verify(&early, "r", 1000), Err(ErrorCode::InvalidToken));
        // Extreme times do not overflow.
        let forever = operator_hs256(SECRET, &serde_json::json!({"room": "r", "exp": u64::MAX, "nbf": u64::MAX}));
        assert_eq!(t.verify(&forever, "r", u64::MAX - 100), Err(ErrorCode::InvalidToken), "not before the end of time");
        let forever = operator_hs256(SECRET, &serde_json::json!({"room": "r", "exp": u64::MAX}));
        assert!(t.verify(&forever, "r", u64::MAX).is_ok());
        // Without a configured secret, no HS256 operator token is accepted.
        assert_eq!(Tokens::new(None, None).verify(&good, "r", 1000), Err(ErrorCode::InvalidToken));
    }

    #[test]
    fn eddsa_tokens_and_no_algorithm_confusion() {
        let rng = rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let public = pair.public_key().as_ref().to_vec();
        let t = Tokens::new(None, Some(public.clone()));
        let claims = serde_json::json!({"room": "r", "exp": 2000, "role": "participant"});
        assert_eq!(t.verify(&operator_eddsa(&pair, &claims), "r", 1000).map(|g| g.role), Ok(Some(Role::Participant)));
        // An HS256 token keyed with the public key bytes must not pass.
        assert_eq!(t.verify(&operator_hs256(&public, &claims), "r", 1000), Err(ErrorCode::InvalidToken));
        // alg "none" and garbage.
        let none = format!("{}.{}.", B64.encode(br#"{"alg":"none"}"#), B64.encode(claims.to_string()));
        for bad in [none.as_str(), "", "a.b", "a.b.c.d", "!!.??.**"] {
            assert_eq!(t.verify(bad, "r", 1000), Err(ErrorCode::InvalidToken), "{bad}");
        }
        assert_eq!(t.verify(&"a".repeat(MAX_TOKEN_BYTES + 1), "r", 1000), Err(ErrorCode::InvalidToken));
    }

    #[test]
    fn public_keys_in_raw_base64_or_pem() {
        let raw = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(parse_ed25519_public_key(&b64), Some(raw.to_vec()));
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        der.extend_from_slice(&raw);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert_eq!(parse_ed25519_public_key(&pem), Some(raw.to_vec()));
        assert_eq!(parse_ed25519_public_key("bm90IGEga2V5"), None);
    }
}
