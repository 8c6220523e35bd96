//! Which peers a client may relay to. A TURN server that relays anywhere is a proxy into the
//! operator's own network (coturn's `denied-peer-ip` lesson), so loopback, private, link-local
//! and other special-purpose addresses are refused unless the operator allows a range.

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
    IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified
    IpNet::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback
    IpNet::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
    IpNet::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    IpNet::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    IpNet::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
    IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    IpNet::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// The peer rule: allowed ranges win, then the special ranges are refused, the rest allowed.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl PeerPolicy {
    pub fn allows(&self, ip: &IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            _ => *ip,
        };
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !(DENIED.iter().any(|n| n.contains(&ip)) || self.deny.iter().any(|n| n.contains(&ip)))
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
        let p = PeerPolicy { allow: vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()], deny: vec![] };
        assert!(p.allows(&ip("127.0.0.1")));
        assert!(!p.allows(&ip("127.0.0.2")));
        assert!(p.allows(&ip("10.9.9.9")));
        let p = PeerPolicy { allow: vec![], deny: vec!["8.8.0.0/16".parse().unwrap()] };
        assert!(!p.allows(&ip("8.8.8.8")));
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
