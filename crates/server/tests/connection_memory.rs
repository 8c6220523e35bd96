//! What a client can make the server hold for its connection, measured: the live heap of this
//! process, counted by a wrapping allocator. The server runs in this process; the attacking
//! clients are hand-written sockets that hold next to nothing themselves (they do not read, or
//! read into a fixed buffer), so what grows is the server's.
//!
//! - Clients that stop reading while a participant sends them large messages (the probe's attack):
//!   evicted as `too_slow`, closed by the server within seconds, and never more held for them than
//!   their outbox's byte bound.
//! - One large frame, in and out: no buffer of its size left behind.
//! - An idle participant costs a few KiB (the connection's task, its read buffer, its session).
//!
//! The tests take turns (one lock): they share the count.

mod common;

use common::raw::{self, Got, RawWs};
use common::{join, Client, TestServer};
use huddle_protocol::{
    ByeReason, ClientMsg, ErrorCode, LeaveReason, PeerId, SdpType, ServerMsg, SessionDescription, SignalPayload,
};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KIB: isize = 1024;
const MIB: isize = 1024 * 1024;

fn live() -> isize {
    LIVE.load(Relaxed)
}

fn mib(bytes: isize) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Polls `check` every 20 ms until it holds or `within` has passed; whether it held.
async fn eventually<F: std::future::Future<Output = bool>>(within: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn p2p(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config { topology: TopologyMode::P2p, turn: false, max_frame_bytes: 256 * 1024, ..Config::default() };
    f(&mut c);
    c
}

/// The probe's attack: clients join a room and stop reading (a 4 KiB receive buffer), and a
/// participant sends each of them large `signal`s. They must be evicted (`too_slow`), closed by
/// the server within seconds without reading a byte more (so `huddle_ws_connections` goes back),
/// and the memory held for them must stay within their outbox's byte bound all along and go back
/// once they are gone. (Before: the write to a client that stopped reading blocked forever, the
/// kick was never looked at, and each outbox held 256 such messages.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_closed_and_hold_no_more_than_their_outbox() {
    let _turn = SERIAL.lock().await;
    const STUCK: usize = 6;
    const BIG: usize = 200 * 1024;
    const OUTBOX: usize = 512 * 1024;
    let config = p2p(|c| {
        c.outbox_capacity = 64;
        c.outbox_bytes = OUTBOX;
        c.message_rate_scale = 0.0;
    });
    let server = TestServer::start(config).await;
    let mut sender = Client::connect(&server).await;
    sender.join("r", "sender").await;
    let mut stuck: Vec<(PeerId, RawWs)> = Vec::new();
    for i in 0..STUCK {
        let mut ws = RawWs::connect(server.addr, "127.0.0.1", Some(4096)).await;
        let ServerMsg::Welcome { id, .. } = ws.recv().await else { panic!("no welcome") };
        ws.send_msg(&join("r", &format!("stuck {i}"))).await;
        assert!(matches!(ws.recv().await, ServerMsg::Joined { .. }));
        assert!(matches!(sender.recv().await, ServerMsg::PeerJoined { .. }));
        stuck.push((id, ws));
    }
    sender.barrier().await;
    let base = live();
    let peak = Arc::new(AtomicIsize::new(base));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Relaxed) {
                peak.fetch_max(live(), Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Large offers to every stuck client, round after round, until all are evicted.
    let sdp = "v=0 ".repeat(BIG / 4);
    let mut evicted = HashSet::new();
    for _round in 0..100 {
        for (id, _) in stuck.iter().filter(|(id, _)| !evicted.contains(id)) {
            let description = SessionDescription { kind: SdpType::Offer, sdp: sdp.clone() };
            let payload = SignalPayload::Description { description };
            sender.send(&ClientMsg::Signal { to: id.clone(), payload }).await;
        }
        while let Ok(msg) = tokio::time::timeout(Duration::from_millis(5), sender.recv()).await {
            match msg {
                ServerMsg::PeerLeft { id, reason: LeaveReason::TooSlow } => {
                    evicted.insert(id);
                }
                // A signal to a client evicted meanwhile.
                ServerMsg::PeerUpdated { .. } | ServerMsg::Error { code: ErrorCode::UnknownPeer, .. } => {}
                other => panic!("the sender got {other:?}"),
            }
        }
        if evicted.len() == STUCK {
            break;
        }
    }
    assert_eq!(evicted.len(), STUCK, "every client that stopped reading is evicted");
    let evicted_at = tokio::time::Instant::now();

    // Closed by the server although they still read nothing: the WebSocket count goes back to
    // the sender alone.
    let closed = eventually(Duration::from_secs(10), || async {
        raw::metric(server.addr, "huddle_ws_connections").await == 1.0
    })
    .await;
    let ws_connections = raw::metric(server.addr, "huddle_ws_connections").await;
    assert!(closed, "evicted connections still counted after 10 s: huddle_ws_connections {ws_connections}");
    let took = evicted_at.elapsed();
    // The TCP connections too (the scrape's own connection is one).
    let tcp_closed = eventually(Duration::from_secs(5), || async {
        raw::metric(server.addr, "huddle_tcp_connections").await <= 2.0
    })
    .await;
    assert!(tcp_closed, "evicted TCP connections still open");
    sampling.store(false, Relaxed);
    sampler.await.expect("sampler");
    let after = live();
    let grew = peak.load(Relaxed) - base;
    println!(
        "{STUCK} clients that stopped reading, {} KiB messages, outbox bound {} KiB: heap grew at most {} \
         ({} per client), {} held after they were closed; closed {took:?} after the last eviction",
        BIG / 1024,
        OUTBOX / 1024,
        mib(grew),
        mib(grew / STUCK as isize),
        mib(after - base),
    );
    // Per stuck client: its outbox bound, a message in its write path, a fragment or two; the
    // sender's large frames in flight and its own client's buffers come on top.
    let bound = STUCK as isize * (OUTBOX as isize + BIG as isize + 64 * KIB) + 8 * MIB;
    assert!(grew <= bound, "the heap grew by {} with {STUCK} stuck clients (bound {})", mib(grew), mib(bound));
    assert!(after - base <= 2 * MIB, "{} still held after the stuck clients were closed", mib(after - base));

    // Each stuck socket, read at last, holds what the kernel had taken, then ends.
    for (id, mut ws) in stuck {
        let got = ws.until_end(Duration::from_secs(10)).await;
        assert!(matches!(got.last(), Some(Got::Eof | Got::Reset)), "{id} was not closed: {:?}", got.last());
    }
    sender.barrier().await;
    server.shutdown().await;
}

/// What an idle participant costs: people in rooms of five, every message they were sent read,
/// then nothing. Its connection's task (1.5 KiB: the rare awaits, the writes and the arguments
/// boxed; 5.7 KiB once), its 1 KiB read buffer (4 KiB before), its outbox (a queue under a lock,
/// about 230 bytes; a channel's 1.5 KiB before) and its session in the hub: about 8 KiB here
/// with the test's client ends (which keep what they read; 10.5 KiB before the outbox and the
/// task were slimmed). (`huddle-bench signal` reads the server's side from its resident memory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_participant_costs_a_few_kib() {
    let _turn = SERIAL.lock().await;
    const PEOPLE: usize = 300;
    const ROOM: usize = 5;
    let config = p2p(|c| {
        c.max_connections_per_ip = 10_000;
        c.max_tcp_connections_per_ip = 10_000;
        c.ip_joins_per_minute = 10_000;
        c.message_rate_scale = 0.0;
    });
    let server = TestServer::start(config).await;
    // One connection first, so that what is made once (tables, the first room) is not counted.
    let mut first = RawWs::connect(server.addr, "127.0.0.1", None).await;
    assert!(matches!(first.recv().await, ServerMsg::Welcome { .. }));
    first.send_msg(&join("warm-up", "first")).await;
    assert!(matches!(first.recv().await, ServerMsg::Joined { .. }));
    let before = live();
    let mut people = Vec::new();
    for i in 0..PEOPLE {
        let mut ws = RawWs::connect(server.addr, "127.0.0.1", None).await;
        assert!(matches!(ws.recv().await, ServerMsg::Welcome { .. }));
        ws.send_msg(&join(&format!("room {}", i / ROOM), &format!("person {i}"))).await;
        assert!(matches!(ws.recv().await, ServerMsg::Joined { .. }));
        people.push(ws);
    }
    // Everyone reads who came after them: nothing is left queued for anyone.
    for (i, ws) in people.iter_mut().enumerate() {
        for _ in 0..(ROOM - 1 - i % ROOM) {
            assert!(matches!(ws.recv().await, ServerMsg::PeerJoined { .. }));
        }
    }
    let each = (live() - before) / PEOPLE as isize;
    println!("an idle participant: {each} bytes, both ends");
    assert!(each <= 9 * KIB, "an idle participant holds {each} bytes");
}

/// Frames over `max_frame_bytes` are refused from their header: nothing of them is buffered, and
/// the connection is closed (`bye` `frame_too_large`, 1009). Before, frames up to 1 MiB were
/// read whole and answered with an error, and each connection kept a 1 MiB read buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_leaves_no_large_read_buffer_behind() {
    let _turn = SERIAL.lock().await;
    const CONNS: usize = 16;
    let config = p2p(|_| {});
    let max_frame = config.max_frame_bytes as usize;
    let server = TestServer::start(config).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let mut ws = RawWs::connect(server.addr, "127.0.0.1", None).await;
        assert!(matches!(ws.recv().await, ServerMsg::Welcome { .. }));
        conns.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let idle = (live() - before) / CONNS as isize;
    println!("an idle connection (welcomed, in no room): {idle} bytes, both ends");
    assert!(idle <= 64 * KIB, "an idle connection holds {} KiB", idle / KIB);
    // A frame under 1 MiB but over the limit, from each: written whole (the server may stop
    // reading it part way).
    let huge = raw::frame(0x1, true, &vec![b'x'; 1024 * 1024 - 1024], true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let base = live();
    for ws in &mut conns {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut ws.tcp, &huge).await;
    }
    let mut answers = Vec::new();
    for ws in &mut conns {
        // The first thing that is not a ping: an error (before), or `bye` (after).
        let got = loop {
            match ws.next().await {
                Got::Ping | Got::Pong => continue,
                got => break got,
            }
        };
        answers.push(got);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = (live() - base) / CONNS as isize;
    println!(
        "after one frame of 1 MiB - 1 KiB (limit {} KiB): {} KiB held per connection",
        max_frame / 1024,
        held / KIB
    );
    assert!(
        held <= 64 * KIB,
        "each connection holds {} KiB after one oversized frame (answered {:?})",
        held / KIB,
        answers[0]
    );
    for got in answers {
        assert_eq!(got.msg(), Some(ServerMsg::Bye { reason: ByeReason::FrameTooLarge }));
    }
    drop(conns);

    // A frame just under the limit is taken (and refused: not JSON); what stays is bounded by
    // the limit, by design (the next frame reuses it).
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let mut ws = RawWs::connect(server.addr, "127.0.0.1", None).await;
        assert!(matches!(ws.recv().await, ServerMsg::Welcome { .. }));
        conns.push(ws);
    }
    let big = vec![b'x'; max_frame - 1024];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let base = live();
    for ws in &mut conns {
        ws.send_frame(0x1, true, &big, true).await;
        assert!(matches!(ws.recv().await, ServerMsg::Error { code: ErrorCode::BadJson, .. }));
    }
    let held = (live() - base) / CONNS as isize;
    println!(
        "after one frame of {} KiB (limit {} KiB): {} KiB held per connection",
        big.len() / 1024,
        max_frame / 1024,
        held / KIB
    );
    assert!(held <= max_frame as isize + 64 * KIB, "each connection holds {} KiB", held / KIB);
    drop(conns);
    server.shutdown().await;
}

/// A large message going out (a `signal` of about 240 KB) leaves no buffer of its size behind
/// once written. Before, the socket's write buffer kept the size of the largest message it ever
/// wrote. (This used to be a `joined` with a full chat history; the history is now capped at
/// 32 KiB, so a large `signal` is the largest message a client can make the server send.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_out_leaves_no_large_write_buffer_behind() {
    let _turn = SERIAL.lock().await;
    const CONNS: usize = 16;
    const BIG: usize = 240 * 1024;
    let server = TestServer::start(p2p(|c| c.message_rate_scale = 0.0)).await;
    let mut sender = Client::connect(&server).await;
    sender.join("r", "sender").await;
    let mut conns = Vec::new();
    for i in 0..=CONNS {
        let mut ws = RawWs::connect(server.addr, "127.0.0.1", None).await;
        let ServerMsg::Welcome { id, .. } = ws.recv().await else { panic!("no welcome") };
        ws.send_msg(&join("r", &format!("guest {i}"))).await;
        assert!(matches!(ws.recv().await, ServerMsg::Joined { .. }));
        assert!(matches!(sender.recv().await, ServerMsg::PeerJoined { .. }));
        conns.push((id, ws));
    }
    sender.barrier().await;
    let sdp = "v=0 ".repeat(BIG / 4);
    // The first guest warms up what the sender's side keeps anyway (its own write buffer, the
    // server's read buffer for its frames): only what each guest leaves behind is measured.
    let mut guests = conns.iter_mut();
    let warm = guests.next().expect("a guest");
    big_signal_then_leave(&mut sender, warm, &sdp).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let base = live();
    for guest in guests {
        big_signal_then_leave(&mut sender, guest, &sdp).await;
    }
    while tokio::time::timeout(Duration::from_millis(50), sender.recv()).await.is_ok() {}
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = (live() - base) / CONNS as isize;
    println!("after receiving a `signal` of {} KiB: {} KiB held per connection", BIG / 1024, held / KIB);
    assert!(held <= 64 * KIB, "each connection holds {} KiB after one large message out", held / KIB);
    drop(conns);
    server.shutdown().await;
}

/// `sender` sends `guest` an offer of `sdp`; the guest reads it whole and leaves the room.
async fn big_signal_then_leave(sender: &mut Client, (id, ws): &mut (PeerId, RawWs), sdp: &str) {
    let description = SessionDescription { kind: SdpType::Offer, sdp: sdp.to_string() };
    let payload = SignalPayload::Description { description };
    sender.send(&ClientMsg::Signal { to: id.clone(), payload }).await;
    loop {
        match ws.recv().await {
            ServerMsg::Signal { payload: SignalPayload::Description { description }, .. } => {
                assert_eq!(description.sdp.len(), sdp.len());
                break;
            }
            ServerMsg::PeerJoined { .. } | ServerMsg::PeerLeft { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    // Out again: what was kept for its resume goes with it.
    ws.send_msg(&ClientMsg::Leave).await;
    loop {
        if let ServerMsg::Left { .. } = ws.recv().await {
            break;
        }
    }
}
