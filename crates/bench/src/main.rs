//! huddle-bench: load generators for huddle.
//!
//! `huddle-bench signal [options]` starts the real server as a child process (this binary
//! re-executed as `huddle-bench serve <huddle args…>`), drives it over 127.0.0.1 with many
//! WebSocket clients in many rooms, and prints one JSON line with the results on stdout.
//! Progress goes to stderr.
//!
//! `huddle-bench sfu [options]` does the same for media: synthetic str0m publishers and
//! subscribers join one room through the real signalling and exchange simulcast video and audio
//! through the server's SFU; the result is compared with a plain UDP relay measured in the same
//! run.
//!
//! `huddle-bench turn [options]` measures huddle's built-in TURN server: pairs of TURN clients
//! relaying ChannelData to each other through two relays, with coturn measured the same way and
//! the plain UDP relay in the same run.
//!
//! `huddle-bench hub [options]` drives the hub in-process, without sockets, one hub per thread
//! with nothing shared: messages per second per core, and how N hubs scale.
//!
//! `huddle-bench sfu-core [options]` does the same for the SFU core: one core per thread with its
//! own in-memory str0m participants on a virtual clock; forwarded packets per second of core CPU.
//!
//! `huddle-bench soak [options]` runs many clients for a while (chatting, moving between rooms,
//! dropping and resuming their connections) and checks that no chat message is lost or
//! delivered twice and that the server's memory, open files and rooms come back at the end.
//!
//! `huddle-bench compose [options]` times the composite of a recording (`huddle_record::compose`,
//! ffmpeg under `nice`, one thread) made of real VP8 and Opus tracks for `--people` participants.
//!
//! `huddle-bench hostile [options]` attacks the real server from many addresses at once (slow
//! and non-reading clients, slowloris, floods, malformed and oversized frames, file offers never
//! uploaded) while normal clients chat, and checks that they are always answered within 1 s
//! and that the server lets go of everything once the attackers have gone.

// The `sfu` report is one large `json!` literal.
#![recursion_limit = "256"]

mod compose;
mod hostile;
mod hub;
mod procfs;
mod recv_batch;
mod relay;
mod server;
mod sfu;
mod sfu_core;
mod sfu_peer;
mod signal;
mod soak;
mod tempdir;
mod turn;
mod turn_client;

use clap::{Parser, Subcommand};
use std::ffi::OsString;

#[derive(Parser, Debug)]
#[command(name = "huddle-bench", version, about = "Load generators for huddle")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Signalling benchmark: many clients in many rooms relaying `signal` messages.
    Signal(signal::SignalArgs),
    /// SFU benchmark: str0m publishers and subscribers in one room, forwarded by the server's SFU
    /// (`--record`: the same room recording and not, in turn).
    Sfu(sfu::SfuArgs),
    /// TURN benchmark: client pairs relaying ChannelData through huddle's TURN server (and coturn).
    Turn(turn::TurnArgs),
    /// The hub driven in-process without sockets, one hub per thread with nothing shared:
    /// messages per second per core, and how N hubs scale.
    Hub(hub::HubArgs),
    /// The SFU core driven in-process without sockets, one core per thread with its own str0m
    /// participants and nothing shared: forwarded packets per second of core CPU, and how N cores scale.
    SfuCore(sfu_core::SfuCoreArgs),
    /// Soak run: clients chat, move between rooms and resume dropped connections for a while;
    /// checks that no message is lost or duplicated and that nothing leaks.
    Soak(soak::SoakArgs),
    /// Hostile clients from many addresses while normal clients chat: the normal clients are
    /// always answered within 1 s, and the server lets go of everything once the attack ends.
    Hostile(hostile::HostileArgs),
    /// Composite speed: a 10-person recording's raw tracks (real VP8 and Opus from ffmpeg)
    /// composed into one file as the server does; seconds of composing per second of meeting.
    Compose(compose::ComposeArgs),
    /// Run the huddle server (used by `signal`, `sfu`, `turn`, `soak` and `hostile`, which re-execute this binary).
    #[command(hide = true)]
    Serve {
        /// Arguments for the server, as `huddle` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Signal(args) => signal::run(args),
        Cmd::Sfu(args) => sfu::run(args),
        Cmd::Turn(args) => turn::run(args),
        Cmd::Hub(args) => hub::run(args),
        Cmd::SfuCore(args) => sfu_core::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Hostile(args) => hostile::run(args),
        Cmd::Compose(args) => compose::run(args),
        Cmd::Serve { args } => server::serve(args),
    }
}
