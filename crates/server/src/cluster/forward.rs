//! Files across nodes: a file shared in an SFU room is kept by the node that owns the room (its
//! id starts with that node's id, see [`crate::files::node_of_file`]), but the load balancer may
//! send its upload or download to any node. That node passes the request on, over HTTP, to the
//! node that keeps the file, and streams the answer back: nothing is held in between but one
//! request's buffers. The keeping node enforces every limit and deadline as for its own pages;
//! the node passing the request on only bounds connecting and the answer's head.
//!
//! Which address a download counts against (one address has a few downloads at once) travels
//! with the request: `x-huddle-client`, with `x-huddle-proof`, an HMAC of the address and the
//! file's id under the cluster's node key (`huddle:key:node`), so that no client can pick the
//! address it is counted as.

use super::Cluster;
use crate::files::refusal;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use std::net::IpAddr;
use std::time::Duration;
use tracing::debug;

const CLIENT: HeaderName = HeaderName::from_static("x-huddle-client");
const PROOF: HeaderName = HeaderName::from_static("x-huddle-proof");

/// Headers that belong to one connection, not to the request passed on.
const HOP_BY_HOP: [HeaderName; 5] =
    [header::CONNECTION, header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::UPGRADE];

impl Cluster {
    /// The client address another node of the cluster vouches for, on a request for file `id` it
    /// passed on; `None` when the request does not carry a valid proof.
    pub fn vouched_client(&self, headers: &HeaderMap, id: &str) -> Option<IpAddr> {
        vouched(&self.node_key, headers, id)
    }
}

/// The proof that a node holding `key` passed on a request for file `id` from `client`.
fn proof(key: &[u8], client: IpAddr, id: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{client} {id}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The client address in `headers` if their proof holds under `key` for file `id`.
fn vouched(key: &[u8], headers: &HeaderMap, id: &str) -> Option<IpAddr> {
    let client: IpAddr = headers.get(&CLIENT)?.to_str().ok()?.parse().ok()?;
    let proof = headers.get(&PROOF)?.to_str().ok()?;
    if proof.len() != 64 {
        return None;
    }
    let tag = (0..proof.len())
        .step_by(2)
        .map(|i| proof.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    // (A constant-time comparison.)
    aws_lc_rs::hmac::verify(&key, format!("{client} {id}").as_bytes(), &tag).ok().map(|()| client)
}

/// Passes `req` (for file `id`, from `client`) to the node at `address` and its answer back.
pub async fn forward(
    cluster: &Cluster,
    address: &str,
    id: &str,
    client: IpAddr,
    req: Request,
    deadline: Duration,
) -> Response {
    let unreachable = || {
        refusal(
            StatusCode::BAD_GATEWAY,
            "file_elsewhere",
            "This file is kept by another server node, which does not answer now; try again.",
        )
    };
    let connected = async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await.map_err(std::io::Error::other)
    };
    let (mut sender, connection) = match tokio::time::timeout(deadline, connected).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(%address, error = %e, "cannot reach the node that keeps a file");
            return unreachable();
        }
        Err(_) => return unreachable(),
    };
    // Ends with the request (or when either side goes away).
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "a file request passed to another node ended early");
        }
    });
    let (mut parts, body) = req.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.remove(&CLIENT);
    parts.headers.remove(&PROOF);
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        parts.headers.insert(CLIENT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&proof(&cluster.node_key, client, id)) {
        parts.headers.insert(PROOF, v);
    }
    // The other node is reached by its address; the page's `Host` means nothing there.
    if let Ok(v) = HeaderValue::from_str(address) {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let Ok(uri) = path.parse() else { return unreachable() };
    parts.uri = uri;
    // The answer to an upload comes once all of it has been taken: the keeping node's transfer
    // deadlines bound every request, so nothing beyond connecting is bounded here.
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(answer) => answer.map(Body::new),
        Err(e) => {
            debug!(%address, error = %e, "a file request passed to another node failed");
            unreachable()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(client: &str, proof: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CLIENT, HeaderValue::from_str(client).expect("a header value"));
        h.insert(PROOF, HeaderValue::from_str(proof).expect("a header value"));
        h
    }

    #[test]
    fn only_a_node_of_the_cluster_can_say_which_address_a_download_counts_against() {
        let (key, ip): (&[u8], IpAddr) = (b"the cluster's node key, 32 bytes", "203.0.113.7".parse().expect("an IP"));
        let good = proof(key, ip, "abcd1234-ff");
        assert_eq!(vouched(key, &headers("203.0.113.7", &good), "abcd1234-ff"), Some(ip));
        // Another address, another file, another key, or no proof at all: not vouched for.
        assert_eq!(vouched(key, &headers("203.0.113.8", &good), "abcd1234-ff"), None);
        assert_eq!(vouched(key, &headers("203.0.113.7", &good), "abcd1234-fe"), None);
        assert_eq!(vouched(b"another key", &headers("203.0.113.7", &good), "abcd1234-ff"), None);
        assert_eq!(vouched(key, &headers("203.0.113.7", &"0".repeat(64)), "abcd1234-ff"), None);
        assert_eq!(vouched(key, &headers("203.0.113.7", "zz"), "abcd1234-ff"), None);
        assert_eq!(vouched(key, &HeaderMap::new(), "abcd1234-ff"), None);
    }
}
