//! STUN messages (RFC 8489) and TURN's ChannelData (RFC 8656 §12.4): parsing and building.
//!
//! Parsing never copies: a [`Message`] borrows the datagram and remembers where each attribute
//! is (at most [`MAX_ATTRIBUTES`]). Everything is checked against the lengths on the wire; a
//! message that does not add up is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
/// Attributes looked at in one message; a message with more is refused (a real client sends < 15).
pub const MAX_ATTRIBUTES: usize = 32;

/// STUN and TURN methods.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Comprehension-required attributes (type < 0x8000) this server understands; any other
    /// one in a request is answered with 420 Unknown Attribute.
    pub const UNDERSTOOD: &[u16] = &[
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        CHANNEL_NUMBER,
        LIFETIME,
        XOR_PEER_ADDRESS,
        DATA,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        REQUESTED_TRANSPORT,
        DONT_FRAGMENT,
        MESSAGE_INTEGRITY_SHA256,
        XOR_MAPPED_ADDRESS,
        PRIORITY,
        USE_CANDIDATE,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    TooShort,
    NotStun,
    BadLength,
    TooManyAttributes,
    BadFingerprint,
}

/// What the first bytes of a packet on a TURN port say it is (RFC 7983's first-byte rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

pub fn kind(buf: &[u8]) -> Kind {
    match buf.first() {
        Some(b) if b >> 6 == 0 => Kind::Stun,
        Some(b) if b >> 6 == 1 => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// Bytes a framed message starting at `buf` occupies on a stream (TCP/TLS), once its first 4
/// bytes are there: a STUN message's header and attributes, or a ChannelData message padded to a
/// multiple of 4 (RFC 8656 §12.5). `None` when it is neither.
pub fn stream_frame_len(buf: &[u8]) -> Option<usize> {
    let head: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    match head[0] >> 6 {
        0 => Some(HEADER_LEN + len),
        1 => Some(4 + len.div_ceil(4) * 4),
        _ => None,
    }
}

/// A parsed STUN message, borrowing its bytes.
#[derive(Debug)]
pub struct Message<'a> {
    pub method: u16,
    pub class: Class,
    pub transaction: [u8; 12],
    raw: &'a [u8],
    /// (type, offset of the value, length of the value), in order.
    attrs: [(u16, u16, u16); MAX_ATTRIBUTES],
    count: usize,
    /// Offset of the MESSAGE-INTEGRITY attribute's header, if any.
    integrity_at: Option<usize>,
    /// Whether it ended with a (correct) FINGERPRINT.
    fingerprint: bool,
}

impl<'a> Message<'a> {
    /// Parses one STUN message; `buf` may carry bytes after it (a datagram's padding, or the next
    /// message on a stream). A FINGERPRINT, when present, must be right.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        let t = u16::from_be_bytes([buf[0], buf[1]]);
        if t & 0xC000 != 0 || u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
            return Err(ParseError::NotStun);
        }
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if !len.is_multiple_of(4) || buf.len() < HEADER_LEN + len {
            return Err(ParseError::BadLength);
        }
        let raw = &buf[..HEADER_LEN + len];
        let (method, class) = split_type(t);
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&raw[8..20]);
        let mut m = Message {
            method,
            class,
            transaction,
            raw,
            attrs: [(0, 0, 0); MAX_ATTRIBUTES],
            count: 0,
            integrity_at: None,
            fingerprint: false,
        };
        let mut at = HEADER_LEN;
        let mut fingerprint_seen = false;
        while at < raw.len() {
            if fingerprint_seen {
                // Nothing may follow FINGERPRINT.
                return Err(ParseError::BadLength);
            }
            if raw.len() - at < 4 {
                return Err(ParseError::BadLength);
            }
            let ty = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let alen = u16::from_be_bytes([raw[at + 2], raw[at + 3]]) as usize;
            let value = at + 4;
            let next = value + alen.div_ceil(4) * 4;
            if next > raw.len() {
                return Err(ParseError::BadLength);
            }
            if ty == attr::FINGERPRINT {
                if alen != 4 {
                    return Err(ParseError::BadFingerprint);
                }
                let want = u32::from_be_bytes([raw[value], raw[value + 1], raw[value + 2], raw[value + 3]]);
                if fingerprint(raw, at) != want {
                    return Err(ParseError::BadFingerprint);
                }
                fingerprint_seen = true;
                m.fingerprint = true;
            } else if m.integrity_at.is_none() {
                // Attributes after MESSAGE-INTEGRITY (other than FINGERPRINT) are ignored (§14.5).
                if m.count == MAX_ATTRIBUTES {
                    return Err(ParseError::TooManyAttributes);
                }
                m.attrs[m.count] = (ty, value as u16, alen as u16);
                m.count += 1;
                if ty == attr::MESSAGE_INTEGRITY {
                    m.integrity_at = Some(at);
                }
            }
            at = next;
        }
        Ok(m)
    }

    /// The whole message's bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The first attribute of type `ty`.
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.attrs[..self.count]
            .iter()
            .find(|a| a.0 == ty)
            .map(|&(_, at, len)| &self.raw[at as usize..at as usize + len as usize])
    }

    /// Every attribute of type `ty`, in order.
    pub fn get_all(&self, ty: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        let raw = self.raw;
        self.attrs[..self.count]
            .iter()
            .filter(move |a| a.0 == ty)
            .map(move |&(_, at, len)| &raw[at as usize..at as usize + len as usize])
    }

    /// Comprehension-required attribute types this server does not know (§6.3.1 → 420).
    pub fn unknown_required(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for &(ty, _, _) in &self.attrs[..self.count] {
            if ty < 0x8000 && !attr::UNDERSTOOD.contains(&ty) && !out.contains(&ty) {
                out.push(ty);
            }
        }
        out
    }

    /// Whether the message carried a FINGERPRINT (answers then carry one too).
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) over the message up to that attribute.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else { return false };
        let Some(given) = self.get(attr::MESSAGE_INTEGRITY) else { return false };
        if given.len() != 20 {
            return false;
        }
        let tag = integrity(self.raw, at, key);
        // Constant-time comparison: the tag is a MAC.
        aws_lc_rs::constant_time::verify_slices_are_equal(&tag, given).is_ok()
    }

    pub fn xor_address(&self, ty: u16) -> Option<SocketAddr> {
        decode_xor_address(self.get(ty)?, &self.transaction)
    }

    pub fn u32_attr(&self, ty: u16) -> Option<u32> {
        let v: [u8; 4] = self.get(ty)?.try_into().ok()?;
        Some(u32::from_be_bytes(v))
    }

    /// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn text(&self, ty: u16) -> Option<&'a str> {
        std::str::from_utf8(self.get(ty)?).ok()
    }

    /// The error code of an error response.
    pub fn error_code(&self) -> Option<u16> {
        let v = self.get(attr::ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        Some(u16::from(v[2] & 0x7) * 100 + u16::from(v[3]))
    }
}

/// HMAC-SHA1 over `raw[..at]` with the header's length set as if the message ended right after a
/// MESSAGE-INTEGRITY attribute at `at` (§14.5).
fn integrity(raw: &[u8], at: usize, key: &[u8]) -> [u8; 20] {
    let mut head = [0u8; HEADER_LEN];
    head.copy_from_slice(&raw[..HEADER_LEN]);
    let len = (at + 24 - HEADER_LEN) as u16;
    head[2..4].copy_from_slice(&len.to_be_bytes());
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
    ctx.update(&head);
    ctx.update(&raw[HEADER_LEN..at]);
    let tag = ctx.sign();
    let mut out = [0u8; 20];
    out.copy_from_slice(tag.as_ref());
    out
}

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 of `raw[..at]` with the length covering a FINGERPRINT at `at`, XOR "STUN" (§14.7).
fn fingerprint(raw: &[u8], at: usize) -> u32 {
    let mut head = [0u8; HEADER_LEN];
    head.copy_from_slice(&raw[..HEADER_LEN]);
    let len = (at + 8 - HEADER_LEN) as u16;
    head[2..4].copy_from_slice(&len.to_be_bytes());
    let mut d = CRC32.digest();
    d.update(&head);
    d.update(&raw[HEADER_LEN..at]);
    d.finalize() ^ 0x5354_554E
}

/// Decodes an XOR-…-ADDRESS value of a message with `transaction`.
pub fn decode_xor_address(v: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (v[1], v.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = v[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let mask = if i < 4 { cookie[i] } else { transaction[i - 4] };
                ip[i] = v[4 + i] ^ mask;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Builds one STUN message. Attributes go in the order they are added; `integrity` and
/// `fingerprint` come last.
pub struct Builder {
    buf: Vec<u8>,
    transaction: [u8; 12],
}

impl Builder {
    pub fn new(method: u16, class: Class, transaction: [u8; 12]) -> Builder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction);
        Builder { buf, transaction }
    }

    /// Starts a message in `buf` (cleared first), to reuse an allocation on hot paths.
    pub fn reuse(mut buf: Vec<u8>, method: u16, class: Class, transaction: [u8; 12]) -> Builder {
        buf.clear();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction);
        Builder { buf, transaction }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn attr(mut self, ty: u16, value: &[u8]) -> Builder {
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().div_ceil(4) * 4 - value.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    pub fn u32_attr(self, ty: u16, v: u32) -> Builder {
        self.attr(ty, &v.to_be_bytes())
    }

    pub fn xor_address(self, ty: u16, addr: SocketAddr) -> Builder {
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut v = [0u8; 20];
        v[2..4].copy_from_slice(&port.to_be_bytes());
        let len = match addr.ip() {
            IpAddr::V4(ip) => {
                v[1] = 0x01;
                for (i, b) in ip.octets().iter().enumerate() {
                    v[4 + i] = b ^ cookie[i];
                }
                8
            }
            IpAddr::V6(ip) => {
                v[1] = 0x02;
                for (i, b) in ip.octets().iter().enumerate() {
                    let mask = if i < 4 { cookie[i] } else { self.transaction[i - 4] };
                    v[4 + i] = b ^ mask;
                }
                20
            }
        };
        self.attr(ty, &v[..len])
    }

    /// MAPPED-ADDRESS (plain, for RFC 3489 clients).
    pub fn address(self, ty: u16, addr: SocketAddr) -> Builder {
        let mut v = Vec::with_capacity(20);
        v.push(0);
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.push(0x01);
                v.extend_from_slice(&addr.port().to_be_bytes());
                v.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                v.push(0x02);
                v.extend_from_slice(&addr.port().to_be_bytes());
                v.extend_from_slice(&ip.octets());
            }
        }
        self.attr(ty, &v)
    }

    pub fn error(self, code: u16, reason: &str) -> Builder {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// MESSAGE-INTEGRITY with `key` over everything added so far.
    pub fn integrity(mut self, key: &[u8]) -> Builder {
        let at = self.buf.len();
        self.buf.extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&[0u8; 20]);
        self.set_len();
        let tag = integrity(&self.buf, at, key);
        self.buf[at + 4..at + 24].copy_from_slice(&tag);
        self
    }

    pub fn fingerprint(mut self) -> Builder {
        let at = self.buf.len();
        self.buf.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.buf.extend_from_slice(&4u16.to_be_bytes());
        self.buf.extend_from_slice(&[0u8; 4]);
        self.set_len();
        let crc = fingerprint(&self.buf, at);
        self.buf[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.set_len();
        self.buf
    }
}

/// A ChannelData message's channel number and payload (over UDP the length field may be
/// shorter than the datagram: the rest is padding).
pub fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    let head: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let channel = u16::from_be_bytes([head[0], head[1]]);
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let payload = buf.get(4..4 + len)?;
    Some((channel, payload))
}

/// Writes a ChannelData message into `out` (cleared first); `pad` rounds it to a multiple of 4
/// (required on streams).
pub fn write_channel_data(out: &mut Vec<u8>, channel: u16, payload: &[u8], pad: bool) {
    out.clear();
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    if pad {
        let extra = payload.len().div_ceil(4) * 4 - payload.len();
        out.extend_from_slice(&[0u8; 3][..extra]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];

    /// RFC 5769 §2.1: a sample request with USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
    const RFC5769_REQUEST: &[u8] = &[
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
        0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f,
        0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 §2.2: a sample IPv4 response (XOR-MAPPED-ADDRESS 192.0.2.1:32853).
    const RFC5769_RESPONSE: &[u8] = &[
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91,
        0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7,
        0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    #[test]
    fn parses_the_rfc5769_request_and_checks_its_integrity_and_fingerprint() {
        let m = Message::parse(RFC5769_REQUEST).expect("valid sample");
        assert_eq!((m.method, m.class), (method::BINDING, Class::Request));
        assert_eq!(m.transaction, TID);
        assert_eq!(m.text(attr::USERNAME), Some("evtj:h6vY"));
        assert_eq!(m.text(attr::SOFTWARE), Some("STUN test client"));
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"), "short-term key from the RFC");
        assert!(m.has_fingerprint());
        assert!(m.get(attr::FINGERPRINT).is_none(), "checked while parsing, not kept as an attribute");
        assert!(!m.check_integrity(b"wrong"));
    }

    #[test]
    fn parses_the_rfc5769_response_address() {
        let m = Message::parse(RFC5769_RESPONSE).expect("valid sample");
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some("192.0.2.1:32853".parse().unwrap()));
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn a_damaged_fingerprint_or_length_is_refused() {
        let mut bad = RFC5769_REQUEST.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadFingerprint);
        let mut bad = RFC5769_REQUEST.to_vec();
        bad[3] = 0x5c; // longer than the datagram
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadLength);
        bad[3] = 0x57; // not a multiple of 4
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadLength);
        assert_eq!(Message::parse(&RFC5769_REQUEST[..19]).unwrap_err(), ParseError::TooShort);
        let mut bad = RFC5769_REQUEST.to_vec();
        bad[4] = 0;
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NotStun);
    }

    #[test]
    fn every_truncation_and_byte_flip_of_a_message_parses_or_errs_without_panicking() {
        for n in 0..RFC5769_REQUEST.len() {
            let _ = Message::parse(&RFC5769_REQUEST[..n]);
        }
        for i in 0..RFC5769_REQUEST.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = RFC5769_REQUEST.to_vec();
                b[i] ^= flip;
                if let Ok(m) = Message::parse(&b) {
                    let _ = (m.xor_address(attr::XOR_PEER_ADDRESS), m.text(attr::USERNAME), m.unknown_required());
                }
            }
        }
    }

    #[test]
    fn built_messages_round_trip_with_integrity_and_fingerprint() {
        let v6: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let v4: SocketAddr = "203.0.113.9:3478".parse().unwrap();
        let bytes = Builder::new(method::ALLOCATE, Class::Success, TID)
            .xor_address(attr::XOR_RELAYED_ADDRESS, v6)
            .xor_address(attr::XOR_MAPPED_ADDRESS, v4)
            .u32_attr(attr::LIFETIME, 600)
            .attr(attr::SOFTWARE, b"huddle")
            .integrity(b"key")
            .fingerprint()
            .finish();
        let m = Message::parse(&bytes).expect("our own message parses");
        assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Success));
        assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS), Some(v6));
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(v4));
        assert_eq!(m.u32_attr(attr::LIFETIME), Some(600));
        assert!(m.check_integrity(b"key"));
        let e = Builder::new(method::ALLOCATE, Class::Error, TID).error(438, "Stale Nonce").finish();
        assert_eq!(Message::parse(&e).unwrap().error_code(), Some(438));
    }

    #[test]
    fn method_and_class_bits_interleave_as_the_rfc_says() {
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
        assert_eq!(message_type(method::CHANNEL_BIND, Class::Success), 0x0109);
        for m in [1u16, 3, 4, 6, 7, 8, 9, 0xfff] {
            for c in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
    }

    #[test]
    fn channel_data_frames() {
        let mut out = Vec::new();
        write_channel_data(&mut out, 0x4001, b"hello", true);
        assert_eq!(out.len(), 12);
        assert_eq!(stream_frame_len(&out), Some(12));
        assert_eq!(kind(&out), Kind::ChannelData);
        assert_eq!(parse_channel_data(&out), Some((0x4001, &b"hello"[..])));
        assert_eq!(parse_channel_data(&out[..6]), None);
        assert_eq!(stream_frame_len(RFC5769_REQUEST), Some(RFC5769_REQUEST.len()));
        assert_eq!(stream_frame_len(&[0x80, 0, 0, 0]), None);
    }
}
