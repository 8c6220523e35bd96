//! Which peers a client may relay to. A TURN server that relays anywhere is a proxy into the
//! operator's own network (coturn's `denied-peer-ip` lesson), so loopback, private, link-local
//! and other special-purpose addresses are refused unless the operator allows a range — and the
//! host's own addresses always, whatever the operator allows: a relay that reaches the host
//! reaches every service listening on `0.0.0.0`, the TURN port itself among them. IPv6 forms
//! that carry an IPv4 address (IPv4-mapped and -compatible, NAT64, 6to4, Teredo) are judged by
//! the address they carry too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, `192.168.0.0/16` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
        IpNet { addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix }
    }

    pub const fn v6(segments: [u16; 8], prefix: u8) -> IpNet {
        let s = segments;
        IpNet { addr: IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])), prefix }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(net) & mask == u32::from(*ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(net) & mask == u128::from(*ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| format!("{s:?} is not an IP address or range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("bad prefix in {s:?}"))?
            }
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Special-purpose ranges (RFC 6890 and friends) a relay must not reach by default.
pub const DENIED: &[IpNet] = &[
    IpNet::v4(0, 0, 0, 0, 8),                         // "this network"
    IpNet::v4(10, 0, 0, 0, 8),                        // private
    IpNet::v4(100, 64, 0, 0, 10),                     // carrier-grade NAT
    IpNet::v4(127, 0, 0, 0, 8),                       // loopback
    IpNet::v4(169, 254, 0, 0, 16),                    // link-local (and cloud metadata services)
    IpNet::v4(172, 16, 0, 0, 12),                     // private
    IpNet::v4(192, 0, 0, 0, 24),                      // IETF protocol assignments
    IpNet::v4(192, 0, 2, 0, 24),                      // documentation
    IpNet::v4(192, 88, 99, 0, 24),                    // 6to4 relay anycast
    IpNet::v4(192, 168, 0, 0, 16),                    // private
    IpNet::v4(198, 18, 0, 0, 15),                     // benchmarking
    IpNet::v4(198, 51, 100, 0, 24),                   // documentation
    IpNet::v4(203, 0, 113, 0, 24),                    // documentation
    IpNet::v4(224, 0, 0, 0, 4),                       // multicast
    IpNet::v4(240, 0, 0, 0, 4),                       // reserved, broadcast
    IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),          // IPv4-compatible (deprecated), :: and ::1 among them
    IpNet::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),     // IPv4-translated (SIIT)
    IpNet::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),  // NAT64, well-known prefix
    IpNet::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // NAT64, local use
    IpNet::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    IpNet::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments (Teredo among them)
    IpNet::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    IpNet::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),     // 6to4
    IpNet::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
    IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    IpNet::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// The peer rule: allowed ranges win, then the special ranges are refused, the rest allowed.
/// The host's own addresses are apart: [`PeerPolicy::is_host`].
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// Every address of this host (interface addresses, the public addresses it is reached at);
    /// loopback and unspecified addresses count without being listed.
    pub host: Vec<IpAddr>,
}

impl PeerPolicy {
    /// Whether the ranges let a relay reach `ip` (the host's own addresses aside).
    pub fn allows(&self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.allows_one(ip),
            // An IPv4-mapped address is the IPv4 address it carries (a dual-stack socket sends
            // to it over IPv4).
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.allows_one(&IpAddr::V4(v4)),
                // Any other form carrying an IPv4 address must be allowed in both forms: a
                // denied IPv4 address stays denied wrapped in IPv6.
                None => self.allows_one(ip) && embedded_v4(v6).is_none_or(|v4| self.allows_one(&IpAddr::V4(v4))),
            },
        }
    }

    fn allows_one(&self, ip: &IpAddr) -> bool {
        if self.allow.iter().any(|n| n.contains(ip)) {
            return true;
        }
        !(DENIED.iter().any(|n| n.contains(ip)) || self.deny.iter().any(|n| n.contains(ip)))
    }

    /// Whether `ip` is this host: loopback, unspecified, one of [`PeerPolicy::host`], or an IPv6
    /// form carrying one of those.
    pub fn is_host(&self, ip: &IpAddr) -> bool {
        let one = |ip: &IpAddr| ip.is_loopback() || ip.is_unspecified() || self.host.contains(ip);
        match ip {
            IpAddr::V4(_) => one(ip),
            IpAddr::V6(v6) => {
                one(ip) || v6.to_ipv4_mapped().or_else(|| embedded_v4(v6)).is_some_and(|v4| one(&IpAddr::V4(v4)))
            }
        }
    }
}

/// The IPv4 address an IPv6 one carries, by the translation forms that reach it: IPv4-compatible
/// (`::a.b.c.d`) and -translated (`::ffff:0:a.b.c.d`), NAT64's well-known prefix
/// (`64:ff9b::a.b.c.d`), 6to4 (`2002:aabb:ccdd::/48`) and Teredo's client (`2001:0:…`, the last
/// 32 bits inverted). IPv4-mapped addresses are handled apart (they are the IPv4 address).
pub fn embedded_v4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0, _, _] if u32::from(last) > 1 => Some(last),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(last),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(last))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_refused_and_public_ones_allowed() {
        let p = PeerPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.10",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::5",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!p.allows(&ip(bad)), "{bad} must be refused");
        }
        for good in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "93.184.216.34", "2a00:1450::1", "::ffff:8.8.8.8"] {
            assert!(p.allows(&ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn allowed_ranges_override_and_extra_denials_add() {
        let p = PeerPolicy {
            allow: vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        assert!(p.allows(&ip("127.0.0.1")));
        assert!(!p.allows(&ip("127.0.0.2")));
        assert!(p.allows(&ip("10.9.9.9")));
        let p = PeerPolicy { deny: vec!["8.8.0.0/16".parse().unwrap()], ..Default::default() };
        assert!(!p.allows(&ip("8.8.8.8")));
    }

    #[test]
    fn ipv4_carried_in_ipv6_is_judged_as_ipv4() {
        let p = PeerPolicy::default();
        for bad in [
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "::ffff:0:127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::8.8.8.8",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!p.allows(&ip(bad)), "{bad} must be refused");
        }
        // An operator who opens a translation range still does not reach a denied IPv4 address
        // through it.
        let p = PeerPolicy {
            allow: vec!["2002::/16".parse().unwrap(), "64:ff9b::/96".parse().unwrap()],
            ..Default::default()
        };
        assert!(p.allows(&ip("2002:808:808::1")));
        assert!(p.allows(&ip("64:ff9b::8.8.8.8")));
        assert!(!p.allows(&ip("2002:7f00:1::1")), "127.0.0.1 in 6to4");
        assert!(!p.allows(&ip("2002:c0a8:101::1")), "192.168.1.1 in 6to4");
        assert!(!p.allows(&ip("64:ff9b::a9fe:a9fe")), "169.254.169.254 through NAT64");
        assert_eq!(
            embedded_v4(&"2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().unwrap()),
            Some(Ipv4Addr::new(192, 0, 2, 45))
        );
        assert_eq!(embedded_v4(&"::1".parse().unwrap()), None);
        assert_eq!(embedded_v4(&"2a00:1450::1".parse().unwrap()), None);
    }

    #[test]
    fn the_host_is_every_loopback_and_listed_address_in_every_form() {
        let p = PeerPolicy { host: vec![ip("198.51.100.7"), ip("2a00:1450::7")], ..Default::default() };
        for host in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "::1",
            "::",
            "198.51.100.7",
            "::ffff:198.51.100.7",
            "::198.51.100.7",
            "64:ff9b::198.51.100.7",
            "2002:c633:6407::1",
            "::ffff:127.0.0.1",
            "2a00:1450::7",
        ] {
            assert!(p.is_host(&ip(host)), "{host} is this host");
        }
        for other in ["198.51.100.8", "8.8.8.8", "2a00:1450::8", "10.0.0.1"] {
            assert!(!p.is_host(&ip(other)), "{other} is not this host");
        }
    }

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!("10.0.0.0/8".parse::<IpNet>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("::1".parse::<IpNet>().unwrap().to_string(), "::1/128");
        assert!("0.0.0.0/0".parse::<IpNet>().unwrap().contains(&ip("1.2.3.4")));
        for bad in ["", "10.0.0.0/33", "::/129", "host", "1.2.3.4/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }
}
