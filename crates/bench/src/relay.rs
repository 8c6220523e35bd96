//! The plain UDP relay the `sfu` benchmark compares the SFU with: the most a single-threaded
//! forwarder can move on this machine when it does nothing but receive a datagram and send it to
//! each of `fanout` sockets (no ICE, DTLS, SRTP, RTCP or WebRTC), measured in the same run.
//!
//! Three threads, all on 127.0.0.1: a sender that keeps at most [`IN_FLIGHT`] datagrams waiting
//! for the relay (so the relay is always busy but never drops on input), the relay (one socket in,
//! `send_to` per destination, like the SFU's driver), and a receiver that drains the `fanout`
//! destination sockets with `poll(2)` and `recvmmsg(2)`. The figure is datagrams the receivers got
//! per second.

use crate::recv_batch::{RecvBatch, BATCH};
use anyhow::Context;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Datagrams the sender lets wait for the relay.
const IN_FLIGHT: u64 = 64;
/// Time before the measured window, for the threads and socket buffers to settle.
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayResult {
    /// Datagrams received at the destinations per second: the plain relay's packet rate.
    pub delivered_pps: f64,
    /// Datagrams the relay sent per second (more than delivered when receivers dropped some).
    pub sent_pps: f64,
    /// Datagrams the relay received per second (delivered ÷ fanout, about).
    pub in_pps: f64,
    pub loss_pct: f64,
    pub fanout: usize,
    pub bytes: usize,
    pub seconds: f64,
    /// The relay thread's own CPU over the window (100 = one core).
    pub relay_cpu_pct: f64,
    /// CPU used by other processes meanwhile (100 = one core).
    pub other_cpu_pct: f64,
}

#[derive(Default)]
struct Counters {
    stop: AtomicBool,
    relay_in: AtomicU64,
    relay_out: AtomicU64,
    relay_cpu_ns: AtomicU64,
    delivered: AtomicU64,
}

/// Runs the relay for `seconds` (after a short warm-up) with datagrams of `bytes` bytes, each
/// forwarded to `fanout` sockets. `relay_cpu`: CPUs to pin the relay thread to.
/// [`measure`] again while other processes used more than `disturbed_cpu_pct` of the CPUs (at
/// most `retries` more times): other processes can only slow the relay down, so of several
/// attempts the fastest is the best estimate of the limit. Progress goes to stderr.
pub fn measure_best(
    fanout: usize,
    bytes: usize,
    seconds: f64,
    relay_cpu: Option<&[usize]>,
    disturbed_cpu_pct: f64,
    retries: usize,
) -> anyhow::Result<RelayResult> {
    let mut best: Option<RelayResult> = None;
    for attempt in 0..=retries {
        let r = measure(fanout, bytes, seconds, relay_cpu)?;
        eprintln!(
            "plain relay: {:.0} datagrams/s delivered ({:.0} sent, relay thread at {:.0}% CPU, {:.2} µs per packet \
             in, {:.2}% lost, other processes {:.0}% CPU)",
            r.delivered_pps,
            r.sent_pps,
            r.relay_cpu_pct,
            r.relay_cpu_pct / 100.0 / r.in_pps * 1e6,
            r.loss_pct,
            r.other_cpu_pct
        );
        let disturbed = r.other_cpu_pct > disturbed_cpu_pct;
        if best.as_ref().is_none_or(|b| r.delivered_pps > b.delivered_pps) {
            best = Some(r);
        }
        if !disturbed {
            break;
        }
        if attempt < retries {
            eprintln!("plain relay: disturbed by other processes; measuring again");
        }
    }
    best.context("no plain relay measurement")
}

pub fn measure(fanout: usize, bytes: usize, seconds: f64, relay_cpu: Option<&[usize]>) -> anyhow::Result<RelayResult> {
    let fanout = fanout.clamp(1, 1000);
    let bytes = bytes.clamp(12, 1400);
    let relay = UdpSocket::bind("127.0.0.1:0").context("binding the relay socket")?;
    relay.set_read_timeout(Some(Duration::from_millis(50)))?;
    let relay_addr = relay.local_addr()?;
    let mut sinks = Vec::with_capacity(fanout);
    for _ in 0..fanout {
        let s = UdpSocket::bind("127.0.0.1:0").context("binding a receiver socket")?;
        s.set_nonblocking(true)?;
        sinks.push(s);
    }
    let dests: Vec<SocketAddr> = sinks.iter().map(|s| s.local_addr()).collect::<Result<_, _>>()?;
    let c = Arc::new(Counters::default());

    let relay_thread = {
        let c = c.clone();
        let cpus = relay_cpu.map(<[usize]>::to_vec);
        std::thread::Builder::new().name("plain-relay".into()).spawn(move || -> anyhow::Result<()> {
            if let Some(cpus) = cpus {
                crate::procfs::pin_to_cpus(&cpus)?;
            }
            let mut buf = [0u8; 2048];
            let started = thread_cpu_ns();
            let mut n_in = 0u64;
            while !c.stop.load(Relaxed) {
                let n = match relay.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        continue
                    }
                    Err(e) => return Err(e).context("relay receive"),
                };
                c.relay_in.fetch_add(1, Relaxed);
                let mut out = 0;
                for d in &dests {
                    if relay.send_to(&buf[..n], d).is_ok() {
                        out += 1;
                    }
                }
                c.relay_out.fetch_add(out, Relaxed);
                n_in += 1;
                if n_in.is_multiple_of(32) {
                    c.relay_cpu_ns.store(thread_cpu_ns().saturating_sub(started), Relaxed);
                }
            }
            Ok(())
        })?
    };
    let sender_thread = {
        let c = c.clone();
        let sender = UdpSocket::bind("127.0.0.1:0").context("binding the sender socket")?;
        sender.connect(relay_addr)?;
        std::thread::Builder::new().name("plain-sender".into()).spawn(move || {
            let payload = vec![0x80u8; bytes];
            let mut sent = 0u64;
            while !c.stop.load(Relaxed) {
                if sent.saturating_sub(c.relay_in.load(Relaxed)) < IN_FLIGHT {
                    if sender.send(&payload).is_ok() {
                        sent += 1;
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        })?
    };
    let receiver_thread = {
        let c = c.clone();
        std::thread::Builder::new().name("plain-receiver".into()).spawn(move || {
            let mut fds: Vec<libc::pollfd> =
                sinks.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
            let mut batch = RecvBatch::new();
            while !c.stop.load(Relaxed) {
                // SAFETY: `fds` is a valid array of pollfd of the length given; the sockets outlive it.
                let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
                if r <= 0 {
                    continue;
                }
                let mut got = 0;
                for (fd, s) in fds.iter().zip(&sinks) {
                    if fd.revents & libc::POLLIN == 0 {
                        continue;
                    }
                    for _ in 0..8 {
                        let n = batch.recv(s.as_raw_fd());
                        got += n as u64;
                        if n < BATCH {
                            break;
                        }
                    }
                }
                c.delivered.fetch_add(got, Relaxed);
            }
        })?
    };

    std::thread::sleep(WARMUP);
    let snap = |c: &Counters| {
        (
            Instant::now(),
            c.delivered.load(Relaxed),
            c.relay_out.load(Relaxed),
            c.relay_in.load(Relaxed),
            c.relay_cpu_ns.load(Relaxed),
        )
    };
    let cpu_a = (crate::procfs::cpu_secs(None)?, crate::procfs::machine_busy_secs()?);
    let a = snap(&c);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let b = snap(&c);
    let cpu_b = (crate::procfs::cpu_secs(None)?, crate::procfs::machine_busy_secs()?);
    c.stop.store(true, Relaxed);
    let relay_result = relay_thread.join();
    let _ = sender_thread.join();
    let _ = receiver_thread.join();
    match relay_result {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the relay thread panicked"),
    }
    let secs = (b.0 - a.0).as_secs_f64();
    let delivered = (b.1 - a.1) as f64;
    let out = (b.2 - a.2) as f64;
    Ok(RelayResult {
        delivered_pps: delivered / secs,
        sent_pps: out / secs,
        in_pps: (b.3 - a.3) as f64 / secs,
        loss_pct: if out > 0.0 { ((out - delivered) / out * 100.0).max(0.0) } else { 0.0 },
        fanout,
        bytes,
        seconds: secs,
        relay_cpu_pct: (b.4 - a.4) as f64 / 1e9 / secs * 100.0,
        other_cpu_pct: (((cpu_b.1 - cpu_a.1) - (cpu_b.0 - cpu_a.0)) / secs * 100.0).max(0.0),
    })
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
