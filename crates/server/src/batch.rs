//! Sending many datagrams with one system call: Linux's `sendmmsg`, elsewhere one `send_to` each;
//! and socket buffers large enough for a busy SFU.
//!
//! The SFU forwards each packet to every subscriber, so one publisher's frame becomes dozens of
//! datagrams at once; `sendmmsg` hands up to [`BATCH`] of them to the kernel per call instead of
//! paying the system-call entry for each (`huddle-bench sfu` measures the difference; see the
//! README's performance section).

use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;
use tracing::debug;

/// Datagrams per `sendmmsg` call.
pub const BATCH: usize = 64;

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: u64,
    /// The socket's send buffer was full: these were dropped, as any UDP forwarder must rather
    /// than wait.
    pub dropped: u64,
    /// Refused by the kernel for another reason (an unreachable address, say): skipped.
    pub failed: u64,
}

/// Sends every datagram without waiting.
pub fn send_all(socket: &UdpSocket, datagrams: &[(SocketAddr, Vec<u8>)]) -> Sent {
    #[cfg(target_os = "linux")]
    {
        linux::send_all(socket, datagrams)
    }
    #[cfg(not(target_os = "linux"))]
    {
        one_by_one(socket, datagrams)
    }
}

/// One `send_to` per datagram (also the reference the batch is measured against).
pub fn one_by_one(socket: &UdpSocket, datagrams: &[(SocketAddr, Vec<u8>)]) -> Sent {
    let mut out = Sent::default();
    for (to, bytes) in datagrams {
        match socket.try_send_to(bytes, *to) {
            Ok(_) => out.sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.dropped += 1,
            Err(e) => {
                debug!(%to, error = %e, "UDP send error");
                out.failed += 1;
            }
        }
    }
    out
}

// The only unsafe code in the server: building `mmsghdr`s and calling `sendmmsg`, and
// `setsockopt` for the forced buffer sizes.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux {
    use super::{debug, io, Sent, SocketAddr, UdpSocket, BATCH};
    use std::os::fd::AsRawFd;

    /// `SO_RCVBUFFORCE` and `SO_SNDBUFFORCE`; false when refused (no `CAP_NET_ADMIN`).
    pub fn force_buffers(socket: &UdpSocket, bytes: usize) -> bool {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE].iter().all(|&opt| {
            // SAFETY: a plain setsockopt on our own open socket with a c_int value of the right size.
            let r = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &value as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            r == 0
        })
    }

    pub fn send_all(socket: &UdpSocket, datagrams: &[(SocketAddr, Vec<u8>)]) -> Sent {
        let mut out = Sent::default();
        for chunk in datagrams.chunks(BATCH) {
            let addrs: Vec<socket2::SockAddr> = chunk.iter().map(|(to, _)| socket2::SockAddr::from(*to)).collect();
            let mut iovs: Vec<libc::iovec> = chunk
                .iter()
                .map(|(_, bytes)| libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(chunk.len());
            for (addr, iov) in addrs.iter().zip(iovs.iter_mut()) {
                // SAFETY: msghdr is a plain C struct for which all zeroes is a valid value.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                hdr.msg_namelen = addr.len();
                hdr.msg_iov = iov as *mut libc::iovec;
                hdr.msg_iovlen = 1;
                msgs.push(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
            }
            let mut at = 0;
            while at < msgs.len() {
                let rest = &mut msgs[at..];
                let r = socket.try_io(tokio::io::Interest::WRITABLE, || {
                    // SAFETY: `rest` points at `rest.len()` initialised mmsghdrs whose names and
                    // buffers (`addrs`, `iovs`, `chunk`) outlive the call; the kernel only reads
                    // them and writes `msg_len`.
                    let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), rest.as_mut_ptr(), rest.len() as u32, 0) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match r {
                    Ok(n) if n > 0 => {
                        out.sent += n as u64;
                        at += n;
                    }
                    Ok(_) => {
                        out.dropped += (msgs.len() - at) as u64;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        out.dropped += (msgs.len() - at) as u64;
                        break;
                    }
                    Err(e) => {
                        // The first datagram of `rest` failed: skip it, send the others.
                        debug!(to = %chunk[at].0, error = %e, "UDP send error");
                        out.failed += 1;
                        at += 1;
                    }
                }
            }
        }
        out
    }
}

/// Asks for socket buffers of `bytes` each way: past `net.core.rmem_max`/`wmem_max` when the
/// process may (`SO_RCVBUFFORCE`, Linux, with `CAP_NET_ADMIN`), else as far as those limits allow.
pub fn grow_buffers(socket: &UdpSocket, bytes: usize) {
    #[cfg(target_os = "linux")]
    if linux::force_buffers(socket, bytes) {
        return;
    }
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx1 = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx2 = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (a1, a2) = (rx1.local_addr().expect("addr"), rx2.local_addr().expect("addr"));
        // More than one batch, to two receivers, of varying sizes.
        let datagrams: Vec<(SocketAddr, Vec<u8>)> = (0..150u32)
            .map(|i| (if i % 3 == 0 { a2 } else { a1 }, vec![i as u8; 20 + (i as usize % 7) * 100]))
            .collect();
        // Like any try_ call on a tokio socket: only once the reactor has seen it writable.
        tx.writable().await.expect("writable");
        let sent = send_all(&tx, &datagrams);
        assert_eq!(sent, Sent { sent: 150, dropped: 0, failed: 0 });
        let mut buf = vec![0u8; 2048];
        for (to, bytes) in &datagrams {
            let rx = if *to == a1 { &rx1 } else { &rx2 };
            let (n, from) = rx.recv_from(&mut buf).await.expect("recv");
            assert_eq!(from, tx.local_addr().expect("addr"));
            assert_eq!(&buf[..n], &bytes[..], "same bytes, same order per receiver");
        }
    }
}
