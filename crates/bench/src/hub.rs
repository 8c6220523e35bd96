//! `huddle-bench hub`: the hub driven in-process, without sockets, a figure that does not depend
//! on a load generator sharing the machine's cores.
//!
//! Each hub (`huddle_server::hub::Hub`, the task that owns rooms and their rules) runs on a
//! thread of its own with its own sessions in rooms of two, and nothing is shared between hubs —
//! the shape of a worker per core (issue 17). A session sends its partner `signal`s (a trickled
//! candidate, as pages do); each is handed to the hub as the connection task would
//! (`Command::Client`) and the frame the hub queues is taken out of the partner's outbox at once,
//! as its writer would. What is timed is the thread's CPU time for that loop: the hub's checks,
//! the serialisation, the outbox, and building each message (what parsing it would allocate).
//! No socket, no task wake-up, no kernel. Runs for every hub count given (`--hubs 1,2`), one after
//! another, and prints one JSON line: messages per second per hub and in all, and how far N hubs
//! are from N times one hub (`scaling`, 1.0 = perfectly even).

use crate::procfs::{round, thread_cpu_secs};
use anyhow::{bail, Context};
use huddle_protocol::{ClientMsg, IceCandidate, PeerId, ServerMsg, SignalPayload, PROTOCOL_VERSION};
use huddle_server::config::TopologyMode;
use huddle_server::hub::{Command, Connect, Hub};
use huddle_server::Config;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct HubArgs {
    /// Sessions per hub, in rooms of two.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Relayed messages per hub.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Hub counts to run, each hub on a thread of its own with nothing shared (comma-separated).
    /// More hubs than CPUs measure the scheduler, not huddle.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    hubs: Vec<usize>,
    /// Longest time for one hub's messages, in seconds: a run that takes longer stops there
    /// and reports what it did.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
}

/// What one hub did.
struct HubRun {
    messages: u64,
    cpu_s: f64,
    wall_s: f64,
}

pub fn run(args: HubArgs) -> anyhow::Result<()> {
    if args.clients < 2 || !args.clients.is_multiple_of(2) {
        bail!("--clients must be an even number of at least 2 (rooms of two)");
    }
    if args.hubs.is_empty() || args.hubs.contains(&0) {
        bail!("--hubs needs hub counts of at least 1");
    }
    let cpus = crate::procfs::cpus();
    let mut runs = Vec::new();
    let mut one_hub_rate = None;
    for &hubs in &args.hubs {
        eprintln!("{hubs} hub(s), {} sessions and {} messages each", args.clients, args.messages);
        let deadline = Duration::from_secs(args.max_seconds);
        let threads: Vec<_> = (0..hubs)
            .map(|h| {
                let (clients, messages) = (args.clients, args.messages);
                std::thread::Builder::new()
                    .name(format!("hub-{h}"))
                    .spawn(move || one_hub(clients, messages, deadline))
                    .context("starting a hub thread")
            })
            .collect::<anyhow::Result<_>>()?;
        let mut done = Vec::new();
        for t in threads {
            done.push(t.join().map_err(|_| anyhow::anyhow!("a hub thread panicked"))??);
        }
        let messages: u64 = done.iter().map(|r| r.messages).sum();
        let wall = done.iter().map(|r| r.wall_s).fold(0.0, f64::max);
        let cpu: f64 = done.iter().map(|r| r.cpu_s).sum();
        let per_hub: Vec<f64> = done.iter().map(|r| r.messages as f64 / r.cpu_s).collect();
        let total_rate = messages as f64 / wall;
        let scaling = one_hub_rate.map(|one: f64| total_rate / (hubs as f64 * one));
        if hubs == 1 {
            one_hub_rate = Some(total_rate);
        }
        runs.push(json!({
            "hubs": hubs,
            "messages": messages,
            "wall_s": round(wall, 3),
            "msgs_per_s": round(total_rate, 0),
            "cpu_ns_per_msg": round(cpu * 1e9 / messages as f64, 0),
            "msgs_per_cpu_s_per_hub": per_hub.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
            "scaling": scaling.map(|s| round(s, 3)),
        }));
    }
    let out = json!({
        "bench": "hub",
        "cpus": cpus,
        "clients_per_hub": args.clients,
        "messages_per_hub": args.messages,
        "runs": runs,
    });
    println!("{out}");
    Ok(())
}

fn one_hub(clients: usize, messages: u64, deadline: Duration) -> anyhow::Result<HubRun> {
    let config =
        Config { topology: TopologyMode::P2p, turn: false, max_rooms: (clients / 2) as u32, ..Config::default() };
    let outbox_bytes = config.outbox_bytes;
    let mut hub = Hub::new(Arc::new(config));
    let mut ids = Vec::with_capacity(clients);
    let mut outboxes = Vec::with_capacity(clients);
    let mut keep = Vec::with_capacity(clients);
    for n in 0..clients {
        let (outbox, rx) = huddle_server::outbox::outbox(256, outbox_bytes);
        let (kick, kicked) = tokio::sync::oneshot::channel();
        let (session, mut named) = tokio::sync::oneshot::channel();
        let id = PeerId(format!("p{n}"));
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        hub.handle(Command::Connect(Connect {
            conn: n as u64,
            id,
            outbox,
            kick,
            host: None,
            ip,
            resume: None,
            session,
        }));
        ids.push(named.try_recv().context("the hub named no session")?);
        outboxes.push(rx);
        keep.push(kicked);
    }
    for (n, id) in ids.iter().enumerate() {
        let join = ClientMsg::Join {
            recording_ok: false,
            protocol: PROTOCOL_VERSION,
            room: format!("room {}", n / 2),
            name: format!("person {n}"),
            audio: false,
            video: false,
            password: None,
            token: None,
        };
        hub.handle(Command::Client { id: id.clone(), msg: join });
    }
    for rx in &mut outboxes {
        while rx.try_recv().is_ok() {}
    }
    let candidate = IceCandidate {
        candidate: "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host generation 0".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("abcd".into()),
    };
    let started = Instant::now();
    let cpu_before = thread_cpu_secs();
    let mut sent = 0;
    while sent < messages {
        let from = (sent as usize) % clients;
        let to = from ^ 1;
        let msg = ClientMsg::Signal {
            to: ids[to].clone(),
            payload: SignalPayload::Candidate { candidate: Some(candidate.clone()) },
        };
        hub.handle(Command::Client { id: ids[from].clone(), msg });
        let frame = outboxes[to].try_recv().context("the hub relayed nothing")?;
        if sent == 0 && !matches!(frame.decode(), Some(ServerMsg::Signal { .. })) {
            bail!("the hub answered a signal with {:?}", frame.decode());
        }
        sent += 1;
        if sent % 4096 == 0 && started.elapsed() > deadline {
            eprintln!("stopped at {sent} messages: --max-seconds reached");
            break;
        }
    }
    let cpu_s = thread_cpu_secs() - cpu_before;
    let wall_s = started.elapsed().as_secs_f64();
    drop(keep);
    Ok(HubRun { messages: sent, cpu_s, wall_s })
}
