//! Who a WebSocket client is, by IP address: the TCP peer, or behind a trusted reverse proxy the
//! address it names in `X-Forwarded-For`. Used for the per-IP limits ([`crate::limits`]) and
//! handed to the hub; never logged above debug level.

use axum::http::HeaderMap;
use huddle_turn::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The TCP peer of an HTTP connection, put into every request's extensions by the accept path
/// ([`crate::accept`]) as axum's `ConnectInfo<PeerAddr>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client's address: `peer` itself unless `peer` is a trusted proxy; then the right-most
/// address of `X-Forwarded-For` (all such headers, in order) that is not a trusted proxy. Each
/// proxy appends the address it got the request from, so everything left of the first untrusted
/// entry could have been written by the client and is ignored. An entry that is not an address
/// stops the walk at the last trusted hop. IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// `1.2.3.4`, `2001:db8::1`, or with a port: `1.2.3.4:5678`, `[2001:db8::1]:5678`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("valid header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("test range")).collect()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let h = xff(&["203.0.113.7"]);
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &[]), ip("198.51.100.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &nets(&["10.0.0.0/8"])), ip("127.0.0.1"));
        assert_eq!(client_ip(ip("::ffff:192.0.2.1"), &h, &[]), ip("192.0.2.1"), "mapped IPv4 is IPv4");
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_counts() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1"]);
        let proxy = ip("127.0.0.1");
        assert_eq!(client_ip(proxy, &xff(&["203.0.113.7"]), &trusted), ip("203.0.113.7"));
        // The client wrote "1.1.1.1" itself; the proxies appended the rest.
        let h = xff(&["1.1.1.1, 203.0.113.7, 10.0.0.2"]);
        assert_eq!(client_ip(proxy, &h, &trusted), ip("203.0.113.7"));
        // Several headers are one list.
        let h = xff(&["1.1.1.1", "203.0.113.7", "10.0.0.2"]);
        assert_eq!(client_ip(proxy, &h, &trusted), ip("203.0.113.7"));
        // Only proxies: the left-most of them.
        assert_eq!(client_ip(proxy, &xff(&["10.0.0.3, 10.0.0.2"]), &trusted), ip("10.0.0.3"));
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        // Garbage stops at the last trusted hop.
        assert_eq!(client_ip(proxy, &xff(&["203.0.113.7, nonsense, 10.0.0.2"]), &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(proxy, &xff(&["nonsense"]), &trusted), proxy);
        // Ports and brackets.
        assert_eq!(client_ip(proxy, &xff(&["[2001:db8::1]:443"]), &trusted), ip("2001:db8::1"));
        assert_eq!(client_ip(proxy, &xff(&["203.0.113.7:5000"]), &trusted), ip("203.0.113.7"));
        assert_eq!(client_ip(proxy, &xff(&["2001:db8::2"]), &trusted), ip("2001:db8::2"));
    }
}
