use super::*;
use huddle_protocol::{IceCandidate, SignalPayload};

struct Client {
    id: PeerId,
    rx: crate::outbox::OutboxReceiver,
    kick: oneshot::Receiver<ByeReason>,
}

impl Client {
    fn next(&mut self) -> ServerMsg {
        self.rx.try_recv().expect("a message is waiting").decode().expect("a ServerMsg")
    }
    fn drain(&mut self) -> Vec<ServerMsg> {
        std::iter::from_fn(|| self.rx.try_recv().ok().and_then(|m| m.decode())).collect()
    }
}

fn hub_with(f: impl FnOnce(&mut Config)) -> Hub {
    let mut c = Config::default();
    f(&mut c);
    Hub::new(Arc::new(c))
}

fn connect(hub: &mut Hub, n: u32, cap: usize) -> Client {
    connect_as(hub, n, cap, None).0
}

/// Connection number `n`, optionally resuming; returns the client and its `welcome`.
fn connect_as(hub: &mut Hub, n: u32, cap: usize, resume: Option<Resume>) -> (Client, ServerMsg) {
    let (tx, rx) = crate::outbox::outbox(cap, Config::default().outbox_bytes);
    let (ktx, krx) = oneshot::channel();
    let (stx, mut srx) = oneshot::channel();
    let id = PeerId(format!("p{n}"));
    let ip = std::net::Ipv4Addr::new(10, 0, 0, n as u8).into();
    let c = Connect { conn: n.into(), id, outbox: tx, kick: ktx, host: None, ip, resume, session: stx };
    hub.handle(Command::Connect(c));
    let id = srx.try_recv().expect("the hub names the session");
    let mut c = Client { id, rx, kick: krx };
    let welcome = c.next();
    assert!(matches!(welcome, ServerMsg::Welcome { .. }));
    (c, welcome)
}

#[test]
fn sfu_rooms_pass_offers_and_tile_preferences_to_the_media_task() {
    let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
    let (media_tx, mut media_rx) = mpsc::channel(16);
    let mut hub = Hub::with_media(Arc::new(c), media_tx);
    let mut a = connect(&mut hub, 1, 16);
    let mut b = connect(&mut hub, 2, 16);
    assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Joined { topology: Topology::Sfu, .. }));
    assert!(matches!(join(&mut hub, &mut b, "r"), ServerMsg::Joined { topology: Topology::Sfu, .. }));
    let offer =
        SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp: "v=0".into() } };
    let to_sfu = ClientMsg::Signal { to: PeerId(SFU_PEER_ID.into()), payload: offer };
    hub.handle(Command::Client { id: a.id.clone(), msg: to_sfu });
    assert!(matches!(media_rx.try_recv(), Ok(MediaCommand::Offer { peer, .. }) if peer == a.id));
    let hide = ClientMsg::Receive { peer: b.id.clone(), video: huddle_protocol::VideoQuality::Off };
    hub.handle(Command::Client { id: a.id.clone(), msg: hide });
    assert!(matches!(
        media_rx.try_recv(),
        Ok(MediaCommand::Receive { peer, publisher, video: huddle_protocol::VideoQuality::Off })
            if peer == a.id && publisher == b.id
    ));
    // Not about yourself, nor about strangers.
    for target in [a.id.clone(), PeerId("p99".into())] {
        let msg = ClientMsg::Receive { peer: target, video: huddle_protocol::VideoQuality::High };
        hub.handle(Command::Client { id: a.id.clone(), msg });
        assert!(matches!(a.drain().last(), Some(ServerMsg::Error { code: ErrorCode::UnknownPeer, .. })));
    }
    assert!(media_rx.try_recv().is_err(), "nothing else reached the media task");
    // Leaving tells the SFU.
    hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Leave });
    assert!(matches!(media_rx.try_recv(), Ok(MediaCommand::Leave { peer }) if peer == a.id));
}

#[test]
fn the_sfu_is_told_what_it_must_not_forward_when_that_changes_and_after_each_offer() {
    let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
    let (media_tx, mut media_rx) = mpsc::channel(16);
    let mut hub = Hub::with_media(Arc::new(c), media_tx);
    let (mut host, mut b) = (connect(&mut hub, 1, 64), connect(&mut hub, 2, 64));
    join(&mut hub, &mut host, "r");
    join(&mut hub, &mut b, "r");
    let say = |hub: &mut Hub, id: &PeerId, msg| hub.handle(Command::Client { id: id.clone(), msg });
    // (audio, video) held, in every `Hold` sent since the last look.
    let mut holds = || -> Vec<(bool, bool)> {
        std::iter::from_fn(|| media_rx.try_recv().ok())
            .filter_map(|c| match c {
                MediaCommand::Hold { audio, video, .. } => Some((audio, video)),
                _ => None,
            })
            .collect()
    };
    let media = |audio, video, screen| ClientMsg::Media { audio, video, screen };
    say(&mut hub, &b.id, media(true, true, false));
    assert_eq!(holds(), [], "nothing changed");
    say(&mut hub, &b.id, media(true, false, true));
    assert_eq!(holds(), [], "its screen is on instead of its camera: still seen");
    say(&mut hub, &b.id, media(true, false, false));
    assert_eq!(holds(), [(false, true)]);
    let offer =
        SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp: "v=0".into() } };
    say(&mut hub, &b.id, ClientMsg::Signal { to: PeerId(SFU_PEER_ID.into()), payload: offer });
    assert_eq!(holds(), [(false, true)], "a new session is told again");
    say(&mut hub, &b.id, media(true, true, false));
    assert_eq!(holds(), [(false, false)]);
    let moderate = |action| ClientMsg::Moderate { peer: b.id.clone(), action };
    say(&mut hub, &host.id, moderate(ModAction::StopVideo));
    assert_eq!(holds(), [(false, true)], "a host stopped its camera");
    say(&mut hub, &host.id, moderate(ModAction::Mute));
    assert_eq!(holds(), [(true, true)]);
    say(&mut hub, &b.id, media(false, true, false));
    assert!(matches!(b.drain().last(), Some(ServerMsg::Error { code: ErrorCode::MutedByHost, .. })));
    assert_eq!(holds(), [], "refused: nothing changes");
}

#[test]
fn the_sfu_names_the_active_speaker_to_the_whole_room_only_while_they_are_in_it() {
    let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
    let (media_tx, _media_rx) = mpsc::channel(16);
    let mut hub = Hub::with_media(Arc::new(c), media_tx);
    let mut a = connect(&mut hub, 1, 16);
    let mut b = connect(&mut hub, 2, 16);
    let mut x = connect(&mut hub, 3, 16);
    join(&mut hub, &mut a, "r");
    join(&mut hub, &mut b, "r");
    join(&mut hub, &mut x, "elsewhere");
    a.drain();
    let speaker = |peer: &PeerId| MediaEvent::ActiveSpeaker { room: "r".into(), peer: peer.clone() };
    hub.handle(Command::Media(speaker(&b.id)));
    let b_id = b.id.clone();
    for c in [&mut a, &mut b] {
        assert!(matches!(c.drain().as_slice(), [ServerMsg::ActiveSpeaker { peer }] if *peer == b_id));
    }
    assert!(x.drain().is_empty(), "other rooms hear nothing");
    // An event that trails the speaker's leave is dropped.
    hub.handle(Command::Client { id: b.id.clone(), msg: ClientMsg::Leave });
    a.drain();
    hub.handle(Command::Media(speaker(&b.id)));
    assert!(a.drain().is_empty());
}

fn join(hub: &mut Hub, c: &mut Client, room: &str) -> ServerMsg {
    join_with(hub, c, room, None, None)
}

fn error_code(m: ServerMsg) -> ErrorCode {
    match m {
        ServerMsg::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn join_lists_existing_peers_and_tells_them() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 16);
    let mut b = connect(&mut hub, 2, 16);
    assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Joined { ref peers, .. } if peers.is_empty()));
    match join(&mut hub, &mut b, " r ") {
        ServerMsg::Joined { room, peers, .. } => {
            assert_eq!(room, "r", "room names are trimmed");
            assert_eq!(peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), vec![a.id.clone()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(a.next(), ServerMsg::PeerJoined { peer } if peer.id == b.id));
    assert_eq!(hub.stats().participants, 2);
}

#[test]
fn room_full_is_refused_and_changes_nothing() {
    let mut hub = hub_with(|c| c.room_capacity = 2);
    let mut cs: Vec<Client> = (1..=3).map(|n| connect(&mut hub, n, 16)).collect();
    for c in cs.iter_mut().take(2) {
        join(&mut hub, c, "r");
    }
    assert_eq!(error_code(join(&mut hub, &mut cs[2], "r")), ErrorCode::RoomFull);
    assert_eq!(hub.stats().participants, 2);
    assert!(cs[0].drain().iter().all(|m| !matches!(m, ServerMsg::PeerJoined { peer } if peer.id.0 == "p3")));
}

#[test]
fn signal_goes_to_one_peer_of_the_same_room_only() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 16);
    let mut b = connect(&mut hub, 2, 16);
    let mut c = connect(&mut hub, 3, 16);
    let mut d = connect(&mut hub, 4, 16);
    join(&mut hub, &mut a, "one");
    join(&mut hub, &mut b, "one");
    join(&mut hub, &mut c, "one");
    join(&mut hub, &mut d, "two");
    for x in [&mut a, &mut b, &mut c] {
        x.drain();
    }
    let payload = SignalPayload::Candidate {
        candidate: Some(IceCandidate {
            candidate: "candidate:1".into(),
            sdp_mid: None,
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }),
    };
    hub.handle(Command::Client {
        id: a.id.clone(),
        msg: ClientMsg::Signal { to: b.id.clone(), payload: payload.clone() },
    });
    assert!(matches!(b.next(), ServerMsg::Signal { ref from, .. } if *from == a.id));
    assert!(c.drain().is_empty(), "never broadcast");
    hub.handle(Command::Client {
        id: a.id.clone(),
        msg: ClientMsg::Signal { to: d.id.clone(), payload: payload.clone() },
    });
    assert_eq!(error_code(a.next()), ErrorCode::UnknownPeer, "other room");
    assert!(d.drain().is_empty());
    hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Signal { to: a.id.clone(), payload } });
    assert_eq!(error_code(a.next()), ErrorCode::UnknownPeer, "self");
}

#[test]
fn chat_history_is_bounded_and_handed_to_latecomers() {
    let mut hub = hub_with(|c| c.chat_history = 3);
    let mut a = connect(&mut hub, 1, 64);
    join(&mut hub, &mut a, "r");
    for i in 0..5 {
        hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Chat { text: format!("m{i}") } });
    }
    assert_eq!(a.drain().len(), 5, "the sender gets its own messages");
    let mut b = connect(&mut hub, 2, 64);
    match join(&mut hub, &mut b, "r") {
        ServerMsg::Joined { chat, .. } => {
            assert_eq!(chat.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["m2", "m3", "m4"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn messages_before_joining_are_refused() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 16);
    for msg in [
        ClientMsg::Leave,
        ClientMsg::Chat { text: "x".into() },
        ClientMsg::Media { audio: true, video: true, screen: false },
    ] {
        hub.handle(Command::Client { id: a.id.clone(), msg });
        assert_eq!(error_code(a.next()), ErrorCode::NotInRoom);
    }
}

#[test]
fn empty_rooms_disappear_and_watchers_see_it() {
    let mut hub = hub_with(|_| {});
    let mut w = connect(&mut hub, 9, 16);
    hub.handle(Command::Client { id: w.id.clone(), msg: ClientMsg::WatchRooms });
    assert!(matches!(w.next(), ServerMsg::Rooms { rooms } if rooms.is_empty()));
    let mut a = connect(&mut hub, 1, 16);
    join(&mut hub, &mut a, "한국어 방");
    hub.publish_rooms();
    match w.next() {
        ServerMsg::Rooms { rooms } => assert_eq!((rooms[0].name.as_str(), rooms[0].participants), ("한국어 방", 1)),
        other => panic!("{other:?}"),
    }
    hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Left, resumable: true });
    assert_eq!(hub.stats().rooms, 0);
    assert!(hub.rooms_dirty());
    hub.publish_rooms();
    assert!(matches!(w.next(), ServerMsg::Rooms { rooms } if rooms.is_empty()));
}

#[test]
fn a_slow_client_is_evicted_without_stalling_others() {
    let mut hub = hub_with(|_| {});
    let mut fast = connect(&mut hub, 1, 1024);
    let mut slow = connect(&mut hub, 2, 8);
    join(&mut hub, &mut fast, "r");
    join(&mut hub, &mut slow, "r");
    fast.drain();
    // `slow` never reads: its queue of 8 fills up.
    for i in 0..20 {
        hub.handle(Command::Client { id: fast.id.clone(), msg: ClientMsg::Chat { text: format!("{i}") } });
    }
    assert_eq!(slow.kick.try_recv(), Ok(ByeReason::TooSlow));
    let got = fast.drain();
    assert_eq!(
        got.iter().filter(|m| matches!(m, ServerMsg::Chat { .. })).count(),
        20,
        "the fast client got everything"
    );
    assert!(got.iter().any(|m| matches!(m, ServerMsg::PeerLeft { reason: LeaveReason::TooSlow, .. })));
    assert_eq!(hub.stats().evicted_too_slow, 1);
    assert_eq!(hub.stats().participants, 1);
}

#[test]
fn shutdown_says_bye_and_completes_when_all_are_gone() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 16);
    let (done_tx, mut done_rx) = oneshot::channel();
    hub.handle(Command::Shutdown { done: done_tx });
    assert!(matches!(a.next(), ServerMsg::Bye { reason: ByeReason::ServerShutdown }));
    assert!(matches!(a.rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)), "outbox closed");
    assert!(done_rx.try_recv().is_err());
    hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Left, resumable: true });
    assert_eq!(done_rx.try_recv(), Ok(()));
}
fn send(hub: &mut Hub, c: &Client, msg: ClientMsg) {
    hub.handle(Command::Client { id: c.id.clone(), msg });
}

fn join_with(hub: &mut Hub, c: &mut Client, room: &str, password: Option<&str>, token: Option<&str>) -> ServerMsg {
    let msg = ClientMsg::Join {
        recording_ok: false,
        protocol: 1,
        room: room.into(),
        name: format!("name {}", c.id),
        audio: true,
        video: true,
        password: password.map(str::to_string),
        token: token.map(str::to_string),
    };
    hub.handle(Command::Client { id: c.id.clone(), msg });
    c.next()
}

fn role_of(m: &ServerMsg) -> Role {
    match m {
        ServerMsg::Joined { you, .. } => you.role,
        other => panic!("expected joined, got {other:?}"),
    }
}

#[test]
fn the_opener_hosts_and_participants_cannot_give_host_commands() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 64);
    let mut guest = connect(&mut hub, 2, 64);
    assert_eq!(role_of(&join(&mut hub, &mut host, "r")), Role::Host);
    assert_eq!(role_of(&join(&mut hub, &mut guest, "r")), Role::Participant);
    host.drain();
    let host_id = host.id.clone();
    let forbidden = [
        ClientMsg::Settings {
            locked: Some(true),
            waiting_room: None,
            allow_unmute: None,
            password: None,
            listed: None,
        },
        ClientMsg::Moderate { peer: host_id.clone(), action: ModAction::Mute },
        ClientMsg::Moderate { peer: host_id.clone(), action: ModAction::Remove },
        ClientMsg::SetRole { peer: guest.id.clone(), role: Role::Host },
        ClientMsg::Admit { peer: PeerId("p9".into()) },
        ClientMsg::AdmitAll,
        ClientMsg::EndMeeting,
        ClientMsg::Invite { ttl_secs: None },
    ];
    for msg in forbidden {
        send(&mut hub, &guest, msg);
        assert_eq!(error_code(guest.next()), ErrorCode::NotAllowed);
    }
    assert!(host.drain().is_empty(), "nothing reached the host");
    let fresh = huddle_protocol::RoomSettings { listed: true, ..Default::default() };
    assert_eq!(hub.rooms.get("r").map(|r| r.settings()), Some(fresh), "nothing changed");
    assert_eq!(hub.rooms.get("r").and_then(|r| r.role(&host_id)), Some(Role::Host));
}

#[test]
fn the_waiting_room_holds_newcomers_until_a_host_decides() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 64);
    join(&mut hub, &mut host, "r");
    let on = ClientMsg::Settings {
        locked: None,
        waiting_room: Some(true),
        allow_unmute: None,
        password: None,
        listed: None,
    };
    send(&mut hub, &host, on);
    assert!(matches!(host.next(), ServerMsg::RoomSettings { settings } if settings.waiting_room));
    let mut a = connect(&mut hub, 2, 64);
    let mut b = connect(&mut hub, 3, 64);
    assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Waiting { .. }));
    assert!(matches!(host.next(), ServerMsg::WaitingList { waiting } if waiting.len() == 1));
    // Waiting is not being in: no chat, no signalling, no second knock.
    send(&mut hub, &a, ClientMsg::Chat { text: "let me in".into() });
    assert_eq!(error_code(a.next()), ErrorCode::NotInRoom);
    send(
        &mut hub,
        &a,
        ClientMsg::Signal { to: host.id.clone(), payload: SignalPayload::Candidate { candidate: None } },
    );
    assert_eq!(error_code(a.next()), ErrorCode::NotInRoom);
    assert_eq!(error_code(join(&mut hub, &mut a, "r")), ErrorCode::AlreadyInRoom);
    assert!(host.drain().is_empty());
    assert!(matches!(join(&mut hub, &mut b, "r"), ServerMsg::Waiting { .. }));
    assert!(matches!(host.next(), ServerMsg::WaitingList { waiting } if waiting.len() == 2));
    // Deny b, admit a.
    send(&mut hub, &host, ClientMsg::Deny { peer: b.id.clone() });
    assert_eq!(error_code(b.next()), ErrorCode::KnockDenied);
    send(&mut hub, &host, ClientMsg::Admit { peer: a.id.clone() });
    assert!(matches!(a.next(), ServerMsg::Joined { .. }));
    let got = host.drain();
    assert!(got.iter().any(|m| matches!(m, ServerMsg::PeerJoined { peer } if peer.id == a.id)));
    assert_eq!(hub.stats().participants, 2);
    assert_eq!(hub.stats().waiting, 0);
    // Admitting someone who is not waiting is refused.
    send(&mut hub, &host, ClientMsg::Admit { peer: b.id.clone() });
    assert_eq!(error_code(host.drain().pop().expect("an answer")), ErrorCode::UnknownPeer);
}

#[test]
fn passwords_invites_and_tokens() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 64);
    join(&mut hub, &mut host, "r");
    let set = ClientMsg::Settings {
        locked: None,
        waiting_room: None,
        allow_unmute: None,
        password: Some("open sesame".into()),
        listed: None,
    };
    send(&mut hub, &host, set);
    assert!(matches!(host.next(), ServerMsg::RoomSettings { settings } if settings.has_password));
    let mut g = connect(&mut hub, 2, 64);
    assert_eq!(error_code(join_with(&mut hub, &mut g, "r", None, None)), ErrorCode::PasswordRequired);
    assert_eq!(error_code(join_with(&mut hub, &mut g, "r", Some("open"), None)), ErrorCode::WrongPassword);
    // Tokens: mis-signed, and a real invite.
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJyb29tIjoiciIsImV4cCI6OTk5OTk5OTk5OSwiaW52Ijp0cnVlfQ.AAAA";
    assert_eq!(error_code(join_with(&mut hub, &mut g, "r", None, Some(forged))), ErrorCode::InvalidToken);
    send(&mut hub, &host, ClientMsg::Invite { ttl_secs: Some(600) });
    let ServerMsg::InviteToken { token, .. } = host.next() else { panic!("an invite") };
    assert_eq!(error_code(join_with(&mut hub, &mut g, "other room", None, Some(&token))), ErrorCode::InvalidToken);
    assert_eq!(hub.stats().participants, 1, "nobody got in");
    assert!(matches!(join_with(&mut hub, &mut g, "r", None, Some(&token)), ServerMsg::Joined { .. }));
    let mut h = connect(&mut hub, 3, 64);
    assert!(matches!(join_with(&mut hub, &mut h, "r", Some("open sesame"), None), ServerMsg::Joined { .. }));
    // Locked: even the password does not help.
    let lock = ClientMsg::Settings {
        locked: Some(true),
        waiting_room: None,
        allow_unmute: None,
        password: None,
        listed: None,
    };
    send(&mut hub, &host, lock);
    let mut late = connect(&mut hub, 4, 64);
    assert_eq!(error_code(join_with(&mut hub, &mut late, "r", Some("open sesame"), None)), ErrorCode::RoomLocked);
}

/// With password checks on other threads, a join's check can end after the room changed: a
/// check begun before a new password does not let the old one in, a second join waits for
/// the first, and a room that closed meanwhile answers `room_closed`.
#[tokio::test]
async fn a_password_check_counts_only_for_the_room_and_password_it_began_with() {
    let mut hub = hub_with(|_| {});
    let (tx, mut done) = mpsc::unbounded_channel();
    hub.run_jobs_elsewhere(tx);
    let mut host = connect(&mut hub, 1, 64);
    join(&mut hub, &mut host, "r");
    let set = |p: &str| ClientMsg::Settings {
        locked: None,
        waiting_room: None,
        allow_unmute: None,
        password: Some(p.into()),
        listed: None,
    };
    send(&mut hub, &host, set("old"));
    assert!(host.drain().is_empty(), "announced once hashed");
    let hashed = done.recv().await.expect("hashed");
    hub.job_done(hashed);
    assert!(matches!(host.next(), ServerMsg::RoomSettings { settings } if settings.has_password));
    let mut g = connect(&mut hub, 2, 64);
    let old = ClientMsg::Join {
        recording_ok: false,
        protocol: 1,
        room: "r".into(),
        name: "G".into(),
        audio: false,
        video: false,
        password: Some("old".into()),
        token: None,
    };
    send(&mut hub, &g, old.clone());
    assert!(g.drain().is_empty(), "the answer waits for the check");
    send(&mut hub, &g, old.clone());
    assert_eq!(error_code(g.next()), ErrorCode::AlreadyInRoom, "one join at a time");
    // The host changes the password while the check runs; the check ends after that.
    send(&mut hub, &host, set("new"));
    let (first, second) = (done.recv().await.expect("checked"), done.recv().await.expect("hashed"));
    let (check, hash) = if matches!(first.0, Done::Verified { .. }) { (first, second) } else { (second, first) };
    hub.job_done(hash);
    hub.job_done(check);
    // Checked again against the new password, which "old" is not.
    let again = done.recv().await.expect("checked again");
    hub.job_done(again);
    assert_eq!(error_code(g.next()), ErrorCode::WrongPassword);
    assert_eq!(hub.stats().participants, 1);
    // The room closes while a check runs.
    let mut new = old;
    if let ClientMsg::Join { password, .. } = &mut new {
        *password = Some("new".into());
    }
    send(&mut hub, &g, new);
    send(&mut hub, &host, ClientMsg::Leave);
    let check = done.recv().await.expect("checked");
    hub.job_done(check);
    assert_eq!(error_code(g.next()), ErrorCode::RoomClosed);
    assert_eq!(hub.stats().rooms, 0);
    hub.check_invariants().expect("consistent");
}

#[test]
fn operator_tokens_are_required_when_configured_and_give_their_role() {
    let secret = "an operator secret of enough length!";
    let mut hub = hub_with(|c| {
        c.token_secret = Some(secret.into());
        c.require_token = true;
    });
    let mut a = connect(&mut hub, 1, 64);
    assert_eq!(error_code(join(&mut hub, &mut a, "r")), ErrorCode::TokenRequired);
    let claims = |role: &str, exp: u64| serde_json::json!({"room": "r", "exp": exp, "role": role, "name": "Ops"});
    let expired = crate::tokens::tests::operator_hs256(secret.as_bytes(), &claims("host", 1000));
    assert_eq!(error_code(join_with(&mut hub, &mut a, "r", None, Some(&expired))), ErrorCode::TokenExpired);
    let guest = crate::tokens::tests::operator_hs256(secret.as_bytes(), &claims("participant", unix_secs() + 60));
    match join_with(&mut hub, &mut a, "r", None, Some(&guest)) {
        ServerMsg::Joined { you, .. } => assert_eq!((you.role, you.name.as_str()), (Role::Participant, "Ops")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hosts_mute_remove_and_ban_and_the_role_passes_on() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 64);
    let mut co = connect(&mut hub, 2, 64);
    let mut g = connect(&mut hub, 3, 64);
    join(&mut hub, &mut host, "r");
    join(&mut hub, &mut co, "r");
    join(&mut hub, &mut g, "r");
    send(&mut hub, &host, ClientMsg::SetRole { peer: co.id.clone(), role: Role::Cohost });
    co.drain();
    g.drain();
    // A co-host mutes g; g may not unmute until the room allows it.
    send(&mut hub, &co, ClientMsg::Moderate { peer: g.id.clone(), action: ModAction::Mute });
    assert!(matches!(g.next(), ServerMsg::Moderated { action: ModAction::Mute, .. }));
    send(&mut hub, &g, ClientMsg::Media { audio: true, video: true, screen: false });
    assert_eq!(error_code(g.next()), ErrorCode::MutedByHost);
    assert!(!hub.rooms.get("r").expect("room r").member(&g.id).expect("member").audio);
    // A co-host cannot act on the host.
    send(&mut hub, &co, ClientMsg::Moderate { peer: host.id.clone(), action: ModAction::Remove });
    assert!(matches!(co.drain().last(), Some(ServerMsg::Error { code: ErrorCode::NotAllowed, .. })));
    // Ban g: out, and not back in.
    send(&mut hub, &host, ClientMsg::Moderate { peer: g.id.clone(), action: ModAction::Ban });
    assert!(matches!(g.drain().last(), Some(ServerMsg::Removed { ban: true, .. })));
    assert!(co.drain().iter().any(|m| matches!(m, ServerMsg::PeerLeft { reason: LeaveReason::Removed, .. })));
    assert_eq!(error_code(join(&mut hub, &mut g, "r")), ErrorCode::Banned);
    // The host leaves: the co-host becomes host.
    send(&mut hub, &host, ClientMsg::Leave);
    let co_id = co.id.clone();
    assert!(co
        .drain()
        .iter()
        .any(|m| matches!(m, ServerMsg::PeerUpdated { peer } if peer.id == co_id && peer.role == Role::Host)));
}

#[test]
fn ending_the_meeting_empties_the_room() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 64);
    let mut g = connect(&mut hub, 2, 64);
    join(&mut hub, &mut host, "r");
    join(&mut hub, &mut g, "r");
    g.drain();
    send(&mut hub, &host, ClientMsg::EndMeeting);
    assert!(matches!(g.drain().as_slice(), [ServerMsg::Ended { .. }]), "ended, without a stream of leaves");
    assert_eq!((hub.stats().rooms, hub.stats().participants), (0, 0));
    send(&mut hub, &g, ClientMsg::Chat { text: "x".into() });
    assert_eq!(error_code(g.next()), ErrorCode::NotInRoom);
}

#[test]
fn hands_and_reactions_reach_everyone() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 64);
    let mut b = connect(&mut hub, 2, 64);
    join(&mut hub, &mut a, "r");
    join(&mut hub, &mut b, "r");
    a.drain();
    send(&mut hub, &b, ClientMsg::Hand { raised: true });
    assert!(matches!(a.next(), ServerMsg::PeerUpdated { peer } if peer.hand));
    send(&mut hub, &b, ClientMsg::React { emoji: "🎉".into() });
    assert!(matches!(a.next(), ServerMsg::Reaction { emoji, .. } if emoji == "🎉"));
    send(&mut hub, &b, ClientMsg::React { emoji: "<script>".into() });
    assert!(matches!(b.drain().last(), Some(ServerMsg::Error { code: ErrorCode::InvalidReaction, .. })));
    // A latecomer sees the raised hand.
    let mut c = connect(&mut hub, 3, 64);
    match join(&mut hub, &mut c, "r") {
        ServerMsg::Joined { peers, .. } => assert!(peers.iter().any(|p| p.hand)),
        other => panic!("{other:?}"),
    }
}

fn resume_of(welcome: &ServerMsg, id: &PeerId, seen: u64) -> Resume {
    match welcome {
        ServerMsg::Welcome { resume, .. } => Resume { id: id.clone(), secret: resume.clone(), seen },
        other => panic!("{other:?}"),
    }
}

#[test]
fn saved_sessions_come_back_suspended_and_those_not_resumed_leave_after_the_grace_period() {
    let mut hub = hub_with(|_| {});
    let (mut a, wa) = connect_as(&mut hub, 1, 64, None);
    let (mut b, _) = connect_as(&mut hub, 2, 64, None);
    // Someone outside any room: not kept (its page starts over cheaply).
    let _lobby = connect(&mut hub, 3, 64);
    join(&mut hub, &mut a, "r");
    join(&mut hub, &mut b, "r");
    send(&mut hub, &b, ClientMsg::Hand { raised: true });
    let seen = 1 + a.drain().len() as u64;
    let saved = hub.save_for_restart();
    let (done, _) = oneshot::channel();
    hub.handle(Command::Shutdown { done });
    assert!(!a.drain().iter().any(|m| matches!(m, ServerMsg::PeerLeft { .. })), "nobody is told of a leave");

    let mut next = hub_with(|_| {});
    let now = Instant::now();
    assert_eq!(next.restore(&saved, now), Ok(3), "new connections are numbered above p3, the last handed out");
    next.check_invariants().expect("consistent after a restore");
    assert_eq!((next.stats().suspended, next.stats().participants, next.stats().connections), (2, 2, 2));
    // Alice comes back; Bob never does.
    let (mut a2, w) = connect_as(&mut next, 4, 64, Some(resume_of(&wa, &a.id, seen)));
    assert!(matches!(w, ServerMsg::Welcome { resumed: true, .. }), "{w:?}");
    assert_eq!(next.rooms.get("r").expect("room r").role(&a.id), Some(Role::Host));
    assert!(next.rooms.get("r").expect("room r").member(&b.id).expect("kept").hand, "Bob's hand was kept");
    assert!(a2.drain().is_empty(), "nothing missed");
    next.expire(now + next.config.resume_grace - Duration::from_millis(1));
    assert!(a2.drain().is_empty(), "not before the grace period ends");
    next.expire(now + next.config.resume_grace);
    assert!(matches!(&a2.drain()[..], [ServerMsg::PeerLeft { id, .. }] if *id == b.id));
    next.check_invariants().expect("consistent");
    // Something that is not a saved hub, or kept while resuming is off, is refused.
    assert!(hub_with(|_| {}).restore(b"{}", now).is_err());
    assert!(hub_with(|c| c.resume_grace = Duration::ZERO).restore(&saved, now).is_err());
}

/// A hub with huddle's TURN server, whose commands come out of the returned receiver (the
/// sender keeps the hub's weak one alive).
fn hub_with_turn(f: impl FnOnce(&mut Config)) -> (Hub, mpsc::Sender<TurnCommand>, mpsc::Receiver<TurnCommand>) {
    let mut hub = hub_with(f);
    let handle = TurnHandle {
        secret: huddle_turn::Secret::new(b"turn secret"),
        port: 3478,
        tls_port: None,
        host: None,
        credential_ttl: hub.config.turn_credential_ttl,
    };
    let (tx, rx) = mpsc::channel(64);
    hub.set_turn(handle, tx.downgrade());
    (hub, tx, rx)
}

/// The relay user of huddle's TURN server among `servers` (the part after the colon).
fn relay_user(servers: &[IceServer]) -> Option<String> {
    servers.iter().find_map(|s| s.username.as_deref()?.split_once(':').map(|(_, u)| u.to_string()))
}

#[test]
fn relay_credentials_come_with_joined_are_renewed_in_the_room_and_end_with_it() {
    let (mut hub, _turn, mut commands) = hub_with_turn(|_| {});
    let ttl = hub.config.turn_credential_ttl;
    let (mut a, welcome) = connect_as(&mut hub, 1, 64, None);
    assert!(matches!(welcome, ServerMsg::Welcome { ref ice_servers, .. } if ice_servers.is_empty()));
    assert_eq!(hub.next_expiry(), None, "nothing to renew outside a room");
    let ServerMsg::Joined { ice_servers, .. } = join(&mut hub, &mut a, "r") else { panic!("joined") };
    let user = relay_user(&ice_servers).expect("joined carries relay credentials");
    assert!(user.starts_with("s."), "{user}");
    assert!(matches!(commands.try_recv(), Ok(TurnCommand::Grant { users }) if users == [user.clone()]));
    // Renewed at half the TTL, for the same relay user, and again after that.
    let renew = hub.next_expiry().expect("a renewal is due");
    assert!(renew <= Instant::now() + ttl / 2);
    hub.expire(renew);
    match &a.drain()[..] {
        [ServerMsg::IceServers { ice_servers }] => assert_eq!(relay_user(ice_servers).as_ref(), Some(&user)),
        other => panic!("expected ice_servers, got {other:?}"),
    }
    assert!(hub.next_expiry().is_some_and(|t| t >= renew + ttl / 2));
    // Leaving ends it; coming back is another relay user.
    send(&mut hub, &a, ClientMsg::Leave);
    assert!(matches!(commands.try_recv(), Ok(TurnCommand::Revoke { user: u }) if u == user));
    // Nothing is due any more: the wake-up left over from the room renews nothing and leaves no
    // other behind.
    if let Some(t) = hub.next_expiry() {
        hub.expire(t);
    }
    assert_eq!(hub.next_expiry(), None);
    hub.check_invariants().expect("consistent");
    assert!(!a.drain().iter().any(|m| matches!(m, ServerMsg::IceServers { .. })), "no renewal outside the room");
    let ServerMsg::Joined { ice_servers, .. } = join(&mut hub, &mut a, "r") else { panic!("joined") };
    assert_ne!(relay_user(&ice_servers), Some(user), "never the same relay user twice");
    // A disconnect without a resume ends it too.
    let mut b = connect(&mut hub, 2, 64);
    join(&mut hub, &mut b, "r");
    let mut granted = std::iter::from_fn(|| commands.try_recv().ok()).filter_map(|c| match c {
        TurnCommand::Grant { mut users } => users.pop(),
        _ => None,
    });
    let (_, b_user) = (granted.next(), granted.next().expect("b's"));
    hub.handle(Command::Disconnect { id: b.id.clone(), conn: 2, reason: LeaveReason::Left, resumable: true });
    assert!(matches!(commands.try_recv(), Ok(TurnCommand::Revoke { user: u }) if u == b_user));
}

#[test]
fn a_restart_grants_the_kept_sessions_relay_users_again_and_renews_them_on_resume() {
    let (mut hub, _turn, mut commands) = hub_with_turn(|_| {});
    let (mut a, wa) = connect_as(&mut hub, 1, 64, None);
    let ServerMsg::Joined { ice_servers, .. } = join(&mut hub, &mut a, "r") else { panic!("joined") };
    let user = relay_user(&ice_servers).expect("credentials");
    let _lobby = connect(&mut hub, 7, 64);
    let saved = hub.save_for_restart();
    let (done, _) = oneshot::channel();
    hub.handle(Command::Shutdown { done });
    while commands.try_recv().is_ok() {}

    let (mut next, _turn, mut commands) = hub_with_turn(|_| {});
    let now = Instant::now();
    assert_eq!(next.restore(&saved, now), Ok(7), "above every id handed out, the lobby's too");
    assert!(matches!(commands.try_recv(), Ok(TurnCommand::Grant { users }) if users == [user.clone()]));
    assert_eq!(next.next_expiry(), Some(now + next.config.resume_grace), "no renewal while away");
    let (mut a2, _) = connect_as(&mut next, 8, 64, Some(resume_of(&wa, &a.id, 1)));
    match &a2.drain()[..] {
        [ServerMsg::IceServers { ice_servers }] => assert_eq!(relay_user(ice_servers), Some(user)),
        other => panic!("expected fresh credentials after the resume, got {other:?}"),
    }
    next.check_invariants().expect("consistent");
}

#[test]
fn a_lost_connection_resumes_the_same_session_with_what_it_missed() {
    let mut hub = hub_with(|_| {});
    let (mut a, welcome) = connect_as(&mut hub, 1, 64, None);
    let mut b = connect(&mut hub, 2, 64);
    join(&mut hub, &mut a, "r");
    join(&mut hub, &mut b, "r");
    send(&mut hub, &a, ClientMsg::Hand { raised: true });
    let seen = 1 + a.drain().len() as u64; // joined, then the rest
    hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Disconnected, resumable: true });
    assert_eq!(hub.stats().suspended, 1);
    for i in 0..3 {
        send(&mut hub, &b, ClientMsg::Chat { text: format!("while away {i}") });
    }
    assert!(!b.drain().iter().any(|m| matches!(m, ServerMsg::PeerLeft { .. })), "no leave seen");
    // A wrong secret gets a new session and leaves the old one alone.
    let mut wrong = resume_of(&welcome, &a.id, seen);
    wrong.secret = "00".repeat(16);
    let (x, _) = connect_as(&mut hub, 5, 64, Some(wrong));
    assert_ne!(x.id, a.id);
    assert_eq!(hub.stats().suspended, 1);
    // The right one: same id, welcome says resumed, then the three chats, once each.
    let (mut a2, w2) = connect_as(&mut hub, 6, 64, Some(resume_of(&welcome, &a.id, seen)));
    assert_eq!(a2.id, a.id);
    // The server took a's join and hand: the page resends nothing older.
    assert!(matches!(w2, ServerMsg::Welcome { resumed: true, received: 2, .. }));
    let replay = a2.drain();
    assert_eq!(replay.len(), 3, "{replay:?}");
    assert!(replay.iter().all(|m| matches!(m, ServerMsg::Chat { .. })));
    assert!(hub.rooms.get("r").expect("room r").member(&a.id).expect("still in").hand, "hand kept");
    // The old connection's late disconnect does not end the resumed session.
    hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Disconnected, resumable: true });
    assert_eq!((hub.stats().suspended, hub.stats().participants), (0, 2));
}

#[test]
fn a_session_not_resumed_in_time_leaves() {
    let mut hub = hub_with(|c| c.resume_grace = Duration::from_secs(5));
    let mut a = connect(&mut hub, 1, 64);
    let mut b = connect(&mut hub, 2, 64);
    join(&mut hub, &mut a, "r");
    join(&mut hub, &mut b, "r");
    b.drain();
    hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Disconnected, resumable: true });
    hub.expire(Instant::now());
    assert!(b.drain().is_empty(), "not yet");
    hub.expire(Instant::now() + Duration::from_secs(6));
    assert!(matches!(b.drain().first(), Some(ServerMsg::PeerLeft { reason: LeaveReason::Disconnected, .. })));
    assert_eq!((hub.stats().connections, hub.stats().suspended), (1, 0));
    // A page that said goodbye leaves at once.
    hub.handle(Command::Disconnect { id: b.id.clone(), conn: 2, reason: LeaveReason::Left, resumable: true });
    assert_eq!(hub.stats().rooms, 0);
}

/// Found by the `room_state` fuzz target: once shutdown had completed (at once when nobody
/// was connected, or when the last connection left) the hub forgot it and welcomed new
/// connections into a server about to stop.
#[test]
fn connections_after_shutdown_are_turned_away_even_once_it_completed() {
    for connected_before in [false, true] {
        let mut hub = hub_with(|_| {});
        let a = connected_before.then(|| connect(&mut hub, 1, 16));
        let (done_tx, mut done_rx) = oneshot::channel();
        hub.handle(Command::Shutdown { done: done_tx });
        if let Some(a) = a {
            hub.handle(Command::Disconnect { id: a.id, conn: 1, reason: LeaveReason::Left, resumable: true });
        }
        assert_eq!(done_rx.try_recv(), Ok(()));
        let (tx, mut rx) = crate::outbox::outbox(16, 1 << 20);
        let (ktx, mut krx) = oneshot::channel();
        let (stx, _srx) = oneshot::channel();
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        let c = Connect {
            conn: 2,
            id: PeerId("p2".into()),
            outbox: tx,
            kick: ktx,
            host: None,
            ip,
            resume: None,
            session: stx,
        };
        hub.handle(Command::Connect(c));
        assert_eq!(krx.try_recv(), Ok(ByeReason::ServerShutdown));
        assert!(rx.try_recv().is_err(), "no welcome");
        assert_eq!(hub.stats().connections, 0);
    }
}

#[test]
fn shutdown_with_a_session_kept_for_a_resume_leaves_no_ghost_in_its_room() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 64);
    let mut b = connect(&mut hub, 2, 64);
    join(&mut hub, &mut a, "r");
    join(&mut hub, &mut b, "r");
    b.drain();
    let (id, reason) = (a.id.clone(), LeaveReason::Disconnected);
    hub.handle(Command::Disconnect { id, conn: 1, reason, resumable: true });
    assert_eq!(hub.stats().suspended, 1);
    let (done, mut done_rx) = oneshot::channel();
    hub.handle(Command::Shutdown { done });
    hub.check_invariants().expect("no member without a connection");
    assert_eq!((hub.stats().connections, hub.stats().participants), (1, 1));
    let to_b = b.drain();
    assert!(to_b.iter().any(|m| matches!(m, ServerMsg::PeerLeft { id, .. } if *id == a.id)), "{to_b:?}");
    assert!(matches!(to_b.last(), Some(ServerMsg::Bye { .. })), "{to_b:?}");
    let (id, reason) = (b.id.clone(), LeaveReason::Disconnected);
    hub.handle(Command::Disconnect { id, conn: 2, reason, resumable: true });
    assert_eq!(done_rx.try_recv(), Ok(()));
    assert_eq!((hub.stats().connections, hub.stats().rooms), (0, 0));
}

#[test]
fn a_session_kept_for_a_resume_ends_with_its_meeting() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 64);
    let mut a = connect(&mut hub, 2, 64);
    join(&mut hub, &mut host, "r");
    join(&mut hub, &mut a, "r");
    let (id, reason) = (a.id.clone(), LeaveReason::Disconnected);
    hub.handle(Command::Disconnect { id, conn: 2, reason, resumable: true });
    assert_eq!(hub.stats().suspended, 1);
    send(&mut hub, &host, ClientMsg::EndMeeting);
    hub.check_invariants().expect("no suspended session outside a room");
    assert_eq!((hub.stats().suspended, hub.stats().connections), (0, 1));
}

/// The hub task, not just the hub: once the last session has ended (here one kept for a
/// resume, at the end of its grace period) the allocator's free memory goes back to the
/// system; not while any session remains, and not again within [`MEMORY_RELEASE_INTERVAL`].
#[tokio::test(start_paused = true)]
async fn the_hub_task_gives_freed_memory_back_when_the_last_session_ends() {
    let hub = hub_with(|_| {});
    let grace = hub.config.resume_grace;
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run(hub, rx, None));
    let stats = || async {
        let (reply, answer) = oneshot::channel();
        tx.send(Command::Stats { reply }).await.expect("the hub runs");
        answer.await.expect("the hub answers")
    };
    // Session `n`, in room `r`; its receivers are kept open.
    let mut open = Vec::new();
    let mut enter = async |n: u32| {
        let (outbox, messages) = crate::outbox::outbox(64, 1 << 20);
        let (kick, kicked) = oneshot::channel();
        let (session, named) = oneshot::channel();
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        let id = PeerId(format!("p{n}"));
        let c = Connect { conn: n.into(), id, outbox, kick, host: None, ip, resume: None, session };
        tx.send(Command::Connect(c)).await.expect("the hub runs");
        let id = named.await.expect("the hub names the session");
        let join = ClientMsg::Join {
            recording_ok: false,
            protocol: PROTOCOL_VERSION,
            room: "r".into(),
            name: format!("n{n}"),
            audio: false,
            video: false,
            password: None,
            token: None,
        };
        tx.send(Command::Client { id: id.clone(), msg: join }).await.expect("the hub runs");
        open.push((messages, kicked));
        id
    };
    let (a, b) = (enter(1).await, enter(2).await);
    assert_eq!((stats().await.participants, stats().await.memory_releases), (2, 0));
    let leave = |id: PeerId, conn: u64, reason: LeaveReason| Command::Disconnect { id, conn, reason, resumable: true };
    tx.send(leave(b, 2, LeaveReason::Left)).await.expect("the hub runs");
    tx.send(leave(a, 1, LeaveReason::Disconnected)).await.expect("the hub runs");
    let s = stats().await;
    assert_eq!((s.connections, s.suspended, s.memory_releases), (1, 1, 0));
    // The paused clock jumps to the end of the grace period.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    let s = stats().await;
    let on_glibc = u64::from(cfg!(all(target_os = "linux", target_env = "gnu")));
    assert_eq!((s.connections, s.rooms, s.memory_releases), (0, 0, on_glibc));
    // Someone comes and goes at once: too soon for another release; later, one more.
    let c = enter(3).await;
    tx.send(leave(c, 3, LeaveReason::Left)).await.expect("the hub runs");
    assert_eq!(stats().await.memory_releases, on_glibc);
    tokio::time::sleep(MEMORY_RELEASE_INTERVAL).await;
    let d = enter(4).await;
    tx.send(leave(d, 4, LeaveReason::Left)).await.expect("the hub runs");
    assert_eq!((stats().await.connections, stats().await.memory_releases), (0, 2 * on_glibc));
    drop(tx);
    task.await.expect("the hub task ends when its channel closes");
}

/// A hub that tells its room events (as one node of several does), with two people in `room`.
fn node_of_several_with_a_pair(room: &str) -> (Hub, mpsc::UnboundedReceiver<RoomEvent>, Client, Client) {
    let mut hub = hub_with(|_| {});
    let (events_tx, events) = mpsc::unbounded_channel();
    hub.set_room_events(events_tx);
    let (mut a, mut b) = (connect(&mut hub, 1, 256), connect(&mut hub, 2, 256));
    join(&mut hub, &mut a, room);
    join(&mut hub, &mut b, room);
    (hub, events, a, b)
}

/// A node of several that stops hands its rooms over: each room's last state goes to the
/// cluster first, and from then on the hub changes nothing — what pages send is neither taken
/// nor counted (they send it again to the next owner), no room event follows, and the goodbye
/// tells nobody that anyone left.
#[test]
fn handing_over_saves_every_room_last_and_then_changes_nothing() {
    let (mut hub, mut events, mut a, mut b) = node_of_several_with_a_pair("r");
    send(&mut hub, &a, ClientMsg::Chat { text: "kept".into() });
    a.drain();
    b.drain();
    while events.try_recv().is_ok() {}

    let (done_tx, mut done) = oneshot::channel();
    hub.handle(Command::HandOver { done: done_tx });
    assert!(done.try_recv().is_ok(), "handed over at once");
    match events.try_recv() {
        Ok(RoomEvent::Saved(room, saved)) => {
            assert_eq!(&*room, "r");
            let text = String::from_utf8(saved).expect("JSON");
            assert!(text.contains("kept"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(events.try_recv().is_err(), "one room, one last state");

    // Sent after the hand-over: not taken, not counted, not seen by anyone.
    send(&mut hub, &b, ClientMsg::Chat { text: "too late".into() });
    assert!(a.drain().is_empty() && b.drain().is_empty());
    assert!(matches!(hub.stats(), Stats { participants: 2, .. }));
    // A page whose connection drops now is not announced as gone.
    hub.handle(Command::Disconnect { id: b.id.clone(), conn: 2, reason: LeaveReason::Left, resumable: true });
    assert!(a.drain().is_empty());

    let (done_tx, mut done) = oneshot::channel();
    hub.handle(Command::Shutdown { done: done_tx });
    assert_eq!(a.drain(), [ServerMsg::Bye { reason: ByeReason::ServerShutdown }]);
    hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Left, resumable: true });
    assert!(done.try_recv().is_ok(), "every connection is gone");
    assert!(events.try_recv().is_err(), "no room event after the hand-over: the room is not ended in Redis");
    assert!(hub.room_snapshot("r").is_none(), "nothing of the room is left here");
}

/// A node of several saves a room within [`ROOM_SAVE_INTERVAL`] of a change of its state (chat,
/// hands, membership...), but a room where only messages pass (`signal`: the sessions' counters
/// and resume buffers change, not the room) only every [`LIGHT_SAVES_EVERY`] saves.
#[test]
fn rooms_where_only_signals_pass_are_saved_less_often() {
    let (mut hub, mut events, a, mut b) = node_of_several_with_a_pair("r");
    let mut saves = |hub: &mut Hub| {
        hub.save_rooms();
        std::iter::from_fn(|| events.try_recv().ok()).filter(|e| matches!(e, RoomEvent::Saved(..))).count()
    };
    // Whatever the joins left unsaved.
    while saves(&mut hub) > 0 {}
    let candidate = SignalPayload::Candidate { candidate: None };
    let ticks = (1..=LIGHT_SAVES_EVERY * 2)
        .map(|_| {
            send(&mut hub, &a, ClientMsg::Signal { to: b.id.clone(), payload: candidate.clone() });
            saves(&mut hub)
        })
        .collect::<Vec<_>>();
    assert_eq!(ticks.iter().sum::<usize>(), 2, "saved twice in {} ticks: {ticks:?}", ticks.len());
    assert!(b.drain().iter().any(|m| matches!(m, ServerMsg::Signal { .. })), "the signals went through");
    send(&mut hub, &a, ClientMsg::Chat { text: "state".into() });
    assert_eq!(saves(&mut hub), 1, "a chat is saved at the next tick");
    assert_eq!(saves(&mut hub), 0, "and once");
}

/// While this node takes a room over (its lease is visible to the other nodes before the saved
/// sessions are in place), a resume of a session unknown here is turned away to try again
/// rather than started over as a new person; outside that window it starts over as before.
#[test]
fn a_resume_that_arrives_while_a_room_is_being_taken_over_is_told_to_try_again() {
    let mut hub = hub_with(|_| {});
    let resume = || Some(Resume { id: PeerId("p77".into()), secret: "0".repeat(32), seen: 0 });
    let ask = |hub: &mut Hub| {
        let (tx, _rx) = crate::outbox::outbox(16, Config::default().outbox_bytes);
        let (ktx, _krx) = oneshot::channel();
        let (stx, mut srx) = oneshot::channel();
        let ip = std::net::Ipv4Addr::new(10, 0, 0, 9).into();
        let c = Connect {
            conn: 9,
            id: PeerId("p9".into()),
            outbox: tx,
            kick: ktx,
            host: None,
            ip,
            resume: resume(),
            session: stx,
        };
        hub.handle(Command::Connect(c));
        srx.try_recv()
    };
    hub.handle(Command::Restoring { until: Some(Instant::now() + Duration::from_secs(5)) });
    assert!(ask(&mut hub).is_err(), "no session: the page tries again");
    assert_eq!(hub.stats().connections, 0);
    hub.handle(Command::Restoring { until: None });
    assert_eq!(ask(&mut hub).ok(), Some(PeerId("p9".into())), "unknown, and nothing being taken over: a new session");
}

#[test]
fn a_page_reconnecting_over_and_over_leaves_the_deadlines_bounded_and_the_next_one_right() {
    let mut hub = hub_with(|_| {});
    let (mut a, mut welcome) = connect_as(&mut hub, 1, 64, None);
    let mut b = connect(&mut hub, 2, 64);
    join(&mut hub, &mut a, "r");
    join(&mut hub, &mut b, "r");
    let seen = 1 + a.drain().len() as u64;
    let mut conn = 1;
    // Every lost connection sets a new end of the grace period; the old ones go stale.
    for n in 0..3000u32 {
        hub.handle(Command::Disconnect { id: a.id.clone(), conn, reason: LeaveReason::Disconnected, resumable: true });
        conn = 10 + u64::from(n);
        let (_, w) = connect_as(&mut hub, 10 + n, 64, Some(resume_of(&welcome, &a.id, seen)));
        assert!(matches!(w, ServerMsg::Welcome { resumed: true, .. }), "{w:?}");
        welcome = w;
        assert!(hub.deadlines.len() <= 2 * hub.conns.len() + 1024 + 1, "{} deadlines kept", hub.deadlines.len());
    }
    hub.check_invariants().expect("consistent");
    // Stale wake-ups end nobody: both are still in the room after every deadline passed...
    let mut woke = 0;
    while let Some(t) = hub.next_expiry() {
        hub.expire(t);
        woke += 1;
        assert!(woke < 5000, "the deadlines run out");
    }
    assert_eq!(hub.stats().participants, 2, "nobody who came back was ended by an old deadline");
    assert!(b.drain().iter().all(|m| !matches!(m, ServerMsg::PeerLeft { .. })));
    // ...and one that is real still ends its session.
    hub.handle(Command::Disconnect { id: a.id.clone(), conn, reason: LeaveReason::Disconnected, resumable: true });
    let end = hub.next_expiry().expect("a grace period runs");
    hub.expire(end);
    let got = b.drain();
    assert!(
        matches!(&got[..], [ServerMsg::PeerLeft { id, .. }, ServerMsg::PeerUpdated { .. }] if *id == a.id),
        "{got:?}"
    );
    hub.check_invariants().expect("consistent");
}

/// A `record` the SFU's queue cannot take is refused (`media_retry`) and leaves no recording
/// behind — none in the store, no directory, nothing for the room to show.
#[test]
fn a_recording_the_sfu_cannot_take_leaves_nothing_behind() {
    let dir = std::env::temp_dir().join(format!("huddle-hub-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = Config {
        topology: TopologyMode::Sfu,
        recordings_dir: Some(dir.clone()),
        ffmpeg: Some("/nonexistent/ffmpeg".into()),
        ..Config::default()
    };
    let store = crate::recording::Recordings::open(&c).expect("recordings on");
    // A media queue with room for one command: a recording needs two.
    let (media_tx, mut media_rx) = mpsc::channel(1);
    let mut hub = Hub::with_media(Arc::new(c), media_tx);
    hub.set_recordings(store.clone());
    let mut host = connect(&mut hub, 1, 16);
    join(&mut hub, &mut host, "r");
    hub.handle(Command::Client { id: host.id.clone(), msg: ClientMsg::Record });
    assert_eq!(error_code(host.next()), ErrorCode::MediaRetry);
    assert!(store.list("r").is_empty(), "no recording in the store");
    assert!(std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()), "no directory");
    assert!(media_rx.try_recv().is_err(), "nothing half-sent to the SFU");
    assert!(hub.rooms.get("r").is_some_and(|r| r.recording().is_none()));
    // With room in the queue it starts.
    let (media_tx, _media_rx) = mpsc::channel(16);
    hub.media = Some(media_tx);
    hub.handle(Command::Client { id: host.id.clone(), msg: ClientMsg::Record });
    assert!(host.drain().iter().any(|m| matches!(m, ServerMsg::Recording { recording: Some(_), .. })));
    assert_eq!(store.list("r").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Breakout rooms (issue 19) ----

fn breakout_open(rooms: &[(&str, &[&PeerId])], auto_move: bool) -> ClientMsg {
    ClientMsg::BreakoutOpen {
        rooms: rooms
            .iter()
            .map(|(name, members)| huddle_protocol::BreakoutPlan {
                name: (*name).to_string(),
                members: members.iter().map(|p| (*p).clone()).collect(),
            })
            .collect(),
        auto_move,
        allow_return: true,
        choose: false,
        minutes: 0,
        close_seconds: 60,
    }
}

/// The room `c` is in, as the hub holds it (`None`: none).
fn room_key(hub: &Hub, c: &Client) -> Option<String> {
    hub.rooms.room_of(&c.id).map(|r| r.to_string())
}

/// The last `joined` in `msgs`: (its breakout room, the others' ids).
fn last_joined(msgs: &[ServerMsg]) -> Option<(Option<u32>, Vec<PeerId>)> {
    msgs.iter().rev().find_map(|m| match m {
        ServerMsg::Joined { breakout, peers, room, .. } => {
            assert_eq!(room, "m", "joined names the meeting, whatever room of it");
            Some((breakout.as_ref().map(|b| b.index), peers.iter().map(|p| p.id.clone()).collect()))
        }
        _ => None,
    })
}

fn last_error(msgs: &[ServerMsg]) -> Option<ErrorCode> {
    msgs.iter().rev().find_map(|m| match m {
        ServerMsg::Error { code, .. } => Some(*code),
        _ => None,
    })
}

#[test]
fn breakout_rooms_split_the_meeting_and_bring_everyone_back_with_their_chats() {
    let mut hub = hub_with(|_| {});
    let mut people: Vec<Client> = (1..=5).map(|n| connect(&mut hub, n, 256)).collect();
    for c in people.iter_mut() {
        join(&mut hub, c, "m");
    }
    let ids: Vec<PeerId> = people.iter().map(|c| c.id.clone()).collect();
    send(&mut hub, &people[0], ClientMsg::Chat { text: "before".into() });
    for c in people.iter_mut() {
        c.drain();
    }
    // A participant may not open them.
    send(&mut hub, &people[1], breakout_open(&[("A", &[])], true));
    assert_eq!(last_error(&people[1].drain()), Some(ErrorCode::NotAllowed));
    // The host opens two rooms of two; the host stays in the main room.
    send(&mut hub, &people[0], breakout_open(&[("A", &[&ids[1], &ids[2]]), ("B", &[&ids[3], &ids[4]])], true));
    hub.check_invariants().expect("consistent");
    for (i, want_room, partner) in [(1, 1, 2), (2, 1, 1), (3, 2, 4), (4, 2, 3)] {
        let msgs = people[i].drain();
        let (room, peers) = last_joined(&msgs).expect("moved: a new joined");
        assert_eq!(room, Some(want_room));
        // In order: the first of a pair finds the room empty, the second finds the first.
        let want: Vec<PeerId> = if i > partner { vec![ids[partner].clone()] } else { Vec::new() };
        assert_eq!(peers, want, "person {i}");
        let state = msgs.iter().rev().find_map(|m| match m {
            ServerMsg::Breakouts { open: true, state: Some(s) } => Some(s.clone()),
            _ => None,
        });
        let state = state.expect("told the rooms' state");
        assert_eq!(state.assigned, want_room);
        assert!(
            state.main.is_none() && state.rooms.iter().all(|r| r.members.is_none()),
            "participants see counts only"
        );
        assert_eq!(state.rooms.iter().map(|r| r.count).collect::<Vec<_>>(), vec![2, 2]);
    }
    let host_msgs = people[0].drain();
    let left: Vec<_> = host_msgs
        .iter()
        .filter_map(|m| match m {
            ServerMsg::PeerLeft { id, reason } => Some((id.clone(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|(_, r)| *r == LeaveReason::Breakout));
    let host_state = host_msgs.iter().rev().find_map(|m| match m {
        ServerMsg::Breakouts { open: true, state: Some(s) } => Some(s.clone()),
        _ => None,
    });
    let host_state = host_state.expect("the host sees the rooms");
    assert_eq!(host_state.main.as_ref().map(Vec::len), Some(1));
    assert_eq!(host_state.rooms[0].members.as_ref().map(|m| m.len()), Some(2));

    // Chat stays within a room; the second of a pair saw the first arrive.
    send(&mut hub, &people[3], ClientMsg::Chat { text: "in B".into() });
    send(&mut hub, &people[1], ClientMsg::Chat { text: "in A".into() });
    let got_chat =
        |c: &mut Client| c.drain().iter().any(|m| matches!(m, ServerMsg::Chat { message } if message.text == "in A"));
    assert!(got_chat(&mut people[2]));
    assert!(!got_chat(&mut people[3]) && !got_chat(&mut people[0]));
    // A broadcast reaches every room.
    send(&mut hub, &people[0], ClientMsg::BreakoutBroadcast { text: "5 minutes".into() });
    for c in people.iter_mut() {
        assert!(c.drain().iter().any(|m| matches!(m, ServerMsg::BreakoutMessage { text, .. } if text == "5 minutes")));
    }
    // A participant asks for help: the host is told which room; not twice within 30 s.
    send(&mut hub, &people[3], ClientMsg::BreakoutHelp);
    assert!(people[0].drain().iter().any(
        |m| matches!(m, ServerMsg::BreakoutHelp { room, from } if room.index == 2 && room.name == "B" && from.id == ids[3])
    ));
    send(&mut hub, &people[3], ClientMsg::BreakoutHelp);
    assert_eq!(last_error(&people[3].drain()), Some(ErrorCode::RateLimited));
    // The host visits room B, and comes back.
    send(&mut hub, &people[0], ClientMsg::BreakoutMove { room: 2 });
    assert_eq!(last_joined(&people[0].drain()).map(|j| j.0), Some(Some(2)));
    send(&mut hub, &people[0], ClientMsg::BreakoutMove { room: 0 });
    assert_eq!(last_joined(&people[0].drain()).map(|j| j.0), Some(None));
    // A participant may not go to another room (no choosing), but may go back and return.
    send(&mut hub, &people[1], ClientMsg::BreakoutMove { room: 2 });
    assert_eq!(last_error(&people[1].drain()), Some(ErrorCode::NotAllowed));
    send(&mut hub, &people[1], ClientMsg::BreakoutMove { room: 0 });
    assert_eq!(room_key(&hub, &people[1]).as_deref(), Some("m"));
    send(&mut hub, &people[1], ClientMsg::BreakoutMove { room: 1 });
    assert_eq!(room_key(&hub, &people[1]).as_deref(), Some("m\u{0}1"));
    hub.check_invariants().expect("consistent");
    // Nobody can name a breakout room in a join.
    let mut outsider = connect(&mut hub, 9, 64);
    assert_eq!(error_code(join(&mut hub, &mut outsider, "m\u{0}1")), ErrorCode::InvalidRoom);
    // Someone arriving lands in the main room, and learns the rooms are open.
    let late = join(&mut hub, &mut outsider, "m");
    assert!(matches!(late, ServerMsg::Joined { breakout: None, .. }));
    assert!(outsider.drain().iter().any(|m| matches!(m, ServerMsg::Breakouts { open: true, .. })));

    // Close at once: everyone is back in the main room, each with their room's chat.
    for c in people.iter_mut() {
        c.drain();
    }
    send(&mut hub, &people[0], ClientMsg::BreakoutClose { now: true });
    hub.check_invariants().expect("consistent");
    for (i, c) in people.iter_mut().enumerate() {
        assert_eq!(room_key(&hub, c).as_deref(), Some("m"));
        let msgs = c.drain();
        if i > 0 {
            let (room, _) = last_joined(&msgs).expect("moved back");
            assert_eq!(room, None);
            let chat = msgs.iter().find_map(|m| match m {
                ServerMsg::Joined { chat, .. } => Some(chat.iter().map(|c| c.text.clone()).collect::<Vec<_>>()),
                _ => None,
            });
            assert_eq!(chat, Some(vec!["before".to_string()]), "the main room's chat is intact");
        }
        let kept: Vec<String> = msgs
            .iter()
            .filter_map(|m| match m {
                ServerMsg::BreakoutChat { messages, .. } => Some(messages.iter().map(|c| c.text.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        // (The host visited room B.)
        let want: Vec<String> = match i {
            1 | 2 => vec!["in A".into()],
            0 | 3 | 4 => vec!["in B".into()],
            _ => Vec::new(),
        };
        assert_eq!(kept, want, "person {i} keeps the chat of the rooms they were in");
        assert!(msgs.iter().any(|m| matches!(m, ServerMsg::Breakouts { open: false, .. })));
    }
    assert!(hub.rooms.iter().all(|(k, _)| crate::room::breakout::index_of(k).is_none()), "the rooms are gone");
}

#[test]
fn breakout_rules_hold_for_participants_and_the_meeting_keeps_one_host() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 256);
    let mut cohost = connect(&mut hub, 2, 256);
    let mut p = connect(&mut hub, 3, 256);
    let mut q = connect(&mut hub, 4, 256);
    for c in [&mut host, &mut cohost, &mut p, &mut q] {
        join(&mut hub, c, "m");
    }
    send(&mut hub, &host, ClientMsg::SetRole { peer: cohost.id.clone(), role: Role::Cohost });
    // Every host-only request refused for a participant.
    for msg in [
        breakout_open(&[("A", &[])], true),
        ClientMsg::BreakoutAssign { peer: q.id.clone(), room: 1 },
        ClientMsg::BreakoutBroadcast { text: "x".into() },
        ClientMsg::BreakoutClose { now: true },
    ] {
        p.drain();
        send(&mut hub, &p, msg);
        assert_eq!(last_error(&p.drain()), Some(ErrorCode::NotAllowed));
    }
    // Bad plans: none, too many, two of one name, a name no room may have; and nothing is open.
    let fifty_one: Vec<(String, Vec<&PeerId>)> = (0..51).map(|i| (format!("r{i}"), Vec::new())).collect();
    let fifty_one: Vec<(&str, &[&PeerId])> = fifty_one.iter().map(|(n, m)| (n.as_str(), m.as_slice())).collect();
    for msg in [
        breakout_open(&[], true),
        breakout_open(&fifty_one, true),
        breakout_open(&[("A", &[]), ("A", &[])], true),
        breakout_open(&[("\u{202e}", &[])], true),
        ClientMsg::BreakoutMove { room: 1 },
        ClientMsg::BreakoutClose { now: false },
    ] {
        host.drain();
        send(&mut hub, &host, msg);
        assert_eq!(last_error(&host.drain()), Some(ErrorCode::InvalidBreakout));
    }
    assert!(hub.rooms.len() == 1);
    // Not moved automatically: the participant is told, and goes when they accept.
    send(&mut hub, &host, breakout_open(&[("A", &[&p.id]), ("B", &[&q.id])], false));
    assert_eq!(room_key(&hub, &p).as_deref(), Some("m"));
    assert!(p.drain().iter().any(|m| matches!(m, ServerMsg::Breakouts { state: Some(s), .. } if s.assigned == 1)));
    send(&mut hub, &p, ClientMsg::BreakoutMove { room: 2 });
    assert_eq!(last_error(&p.drain()), Some(ErrorCode::NotAllowed), "not the room they were given");
    send(&mut hub, &p, ClientMsg::BreakoutMove { room: 1 });
    assert_eq!(room_key(&hub, &p).as_deref(), Some("m\u{0}1"));
    send(&mut hub, &p, ClientMsg::BreakoutMove { room: 3 });
    assert_eq!(last_error(&p.drain()), Some(ErrorCode::InvalidBreakout), "no such room");
    // In a breakout room, the meeting's door and recording are the main room's business; a
    // participant alone there is not made a host.
    assert_eq!(hub.rooms.get("m\u{0}1").and_then(|r| r.role(&p.id)), Some(Role::Participant));
    // The host visits room B and loses its connection for good: the co-host in the main room
    // becomes host of the meeting (one host, across its rooms).
    send(&mut hub, &host, ClientMsg::BreakoutMove { room: 2 });
    send(
        &mut hub,
        &host,
        ClientMsg::Settings {
            locked: Some(true),
            waiting_room: None,
            allow_unmute: None,
            password: None,
            listed: None,
        },
    );
    assert_eq!(last_error(&host.drain()), Some(ErrorCode::InvalidBreakout));
    hub.handle(Command::Disconnect {
        id: host.id.clone(),
        conn: 1,
        reason: LeaveReason::Disconnected,
        resumable: false,
    });
    hub.check_invariants().expect("consistent");
    assert_eq!(hub.rooms.get("m").and_then(|r| r.role(&cohost.id)), Some(Role::Host));
    // The new host moves someone and closes the rooms with a countdown; closing while a move is
    // asked for refuses the move, and the clock brings everyone back.
    send(&mut hub, &cohost, ClientMsg::BreakoutAssign { peer: q.id.clone(), room: 2 });
    send(&mut hub, &cohost, ClientMsg::BreakoutClose { now: false });
    let closing = cohost.drain().iter().rev().find_map(|m| match m {
        ServerMsg::Breakouts { state: Some(s), .. } => s.closing_at,
        _ => None,
    });
    assert!(closing.is_some(), "the countdown is told");
    send(&mut hub, &q, ClientMsg::BreakoutMove { room: 2 });
    assert_eq!(last_error(&q.drain()), Some(ErrorCode::InvalidBreakout), "no moving into rooms while they close");
    let due = hub.next_expiry().expect("the countdown wakes the hub");
    hub.expire(due);
    hub.check_invariants().expect("consistent");
    assert_eq!(room_key(&hub, &p).as_deref(), Some("m"), "back after the countdown");
    assert!(hub.rooms.iter().all(|(k, _)| crate::room::breakout::index_of(k).is_none()));
}

#[test]
fn a_meeting_in_breakout_rooms_survives_a_restart_and_ends_as_one() {
    let mut hub = hub_with(|_| {});
    let (mut a, wa) = connect_as(&mut hub, 1, 256, None);
    let (mut b, wb) = connect_as(&mut hub, 2, 256, None);
    join(&mut hub, &mut a, "m");
    join(&mut hub, &mut b, "m");
    send(&mut hub, &a, breakout_open(&[("A", &[&b.id])], true));
    // Everyone else left the main room: only the host is there; the host leaves too. The main
    // room stays while someone is in a breakout room.
    assert_eq!(room_key(&hub, &b).as_deref(), Some("m\u{0}1"));
    let seen_a = 1 + a.drain().len() as u64;
    let seen_b = 1 + b.drain().len() as u64;
    let saved = hub.save_for_restart();
    let mut next = hub_with(|_| {});
    let now = Instant::now();
    next.restore(&saved, now).expect("restores");
    next.check_invariants().expect("consistent after a restore");
    assert!(next.rooms.get("m").and_then(Room::breakouts).is_some(), "the rooms are still open");
    let (mut a2, _) = connect_as(&mut next, 5, 256, Some(resume_of(&wa, &a.id, seen_a)));
    let (mut b2, _) = connect_as(&mut next, 6, 256, Some(resume_of(&wb, &b.id, seen_b)));
    assert_eq!(next.rooms.room_of(&b.id).map(|r| r.to_string()).as_deref(), Some("m\u{0}1"));
    send(&mut next, &a2, ClientMsg::Leave);
    next.check_invariants().expect("consistent");
    assert!(next.rooms.get("m").is_some(), "kept while someone is in a breakout room");
    // The last one leaves: the whole meeting ends.
    send(&mut next, &b2, ClientMsg::Leave);
    next.check_invariants().expect("consistent");
    assert_eq!(next.rooms.len(), 0, "no room left: {:?}", next.rooms.keys().collect::<Vec<_>>());
    a2.drain();
    b2.drain();
    // A host ending the meeting from a breakout room ends every room of it.
    let mut h = connect(&mut next, 7, 256);
    let mut x = connect(&mut next, 8, 256);
    join(&mut next, &mut h, "n");
    join(&mut next, &mut x, "n");
    send(&mut next, &h, breakout_open(&[("A", &[&x.id])], true));
    send(&mut next, &h, ClientMsg::BreakoutMove { room: 1 });
    x.drain();
    send(&mut next, &h, ClientMsg::EndMeeting);
    assert!(x.drain().iter().any(|m| matches!(m, ServerMsg::Ended { room, .. } if room == "n")));
    next.check_invariants().expect("consistent");
    assert_eq!(next.rooms.len(), 0);
}

/// The time limit starts the countdown, and a countdown already over by then (here: none, and a
/// clock far ahead) brings everyone back in the same pass: nothing is left due in the past.
/// (Found by the room_state fuzzer.)
#[test]
fn a_breakout_time_limit_passed_long_ago_closes_the_rooms_at_once() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 256);
    let mut b = connect(&mut hub, 2, 256);
    join(&mut hub, &mut a, "m");
    join(&mut hub, &mut b, "m");
    let mut msg = breakout_open(&[("A", &[&b.id])], true);
    if let ClientMsg::BreakoutOpen { allow_return, minutes, close_seconds, .. } = &mut msg {
        (*allow_return, *minutes, *close_seconds) = (false, 1, 0);
    }
    send(&mut hub, &a, msg);
    assert_eq!(room_key(&hub, &b).as_deref(), Some("m\u{0}1"));
    let later = Instant::now() + Duration::from_secs(3600);
    hub.expire(later);
    assert_eq!(room_key(&hub, &b).as_deref(), Some("m"), "back in the main room");
    assert!(hub.next_expiry().is_none_or(|t| t > later), "nothing left due in the past");
    hub.check_invariants().expect("consistent");
}

/// Someone joining a meeting whose main room is empty because everyone (its host too) is in a
/// breakout room is not its opener: no second host. (Found by the room_state fuzzer.)
#[test]
fn joining_an_empty_main_room_while_everyone_is_in_breakout_rooms_makes_no_second_host() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 256);
    join(&mut hub, &mut host, "r");
    send(&mut hub, &host, breakout_open(&[("A", &[&host.id])], true));
    assert_eq!(room_key(&hub, &host).as_deref(), Some("r\u{0}1"));
    let mut late = connect(&mut hub, 2, 256);
    assert_eq!(role_of(&join(&mut hub, &mut late, "r")), Role::Participant);
    hub.check_invariants().expect("one host");
}

/// What one node of several saves of a meeting split in breakout rooms is the whole meeting: the
/// node that takes it over has the main room, the breakout rooms and everyone in them.
#[test]
fn a_meeting_in_breakout_rooms_is_taken_over_whole() {
    let mut hub = hub_with(|_| {});
    let mut a = connect(&mut hub, 1, 256);
    let mut b = connect(&mut hub, 2, 256);
    let mut other = connect(&mut hub, 3, 256);
    join(&mut hub, &mut a, "m");
    join(&mut hub, &mut b, "m");
    join(&mut hub, &mut other, "elsewhere");
    send(&mut hub, &a, breakout_open(&[("A", &[&b.id])], true));
    let saved = hub.room_snapshot("m").expect("the meeting is here");
    let mut next = hub_with(|_| {});
    next.restore_room(&saved, Instant::now()).expect("taken over");
    next.check_invariants().expect("consistent");
    assert!(next.rooms.get("m").and_then(Room::breakouts).is_some());
    assert_eq!(next.rooms.room_of(&b.id).map(|r| r.to_string()).as_deref(), Some("m\u{0}1"));
    assert_eq!(next.rooms.room_of(&a.id).map(|r| r.to_string()).as_deref(), Some("m"));
    assert!(next.rooms.get("elsewhere").is_none(), "only that meeting");
}

/// A host visiting a breakout room hears the knocks at the meeting's door and lets people in
/// from there: into the main room, as a participant.
#[test]
fn a_host_in_a_breakout_room_hears_knocks_and_admits_into_the_main_room() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 256);
    let mut p = connect(&mut hub, 2, 256);
    join(&mut hub, &mut host, "m");
    join(&mut hub, &mut p, "m");
    let settings = ClientMsg::Settings {
        locked: None,
        waiting_room: Some(true),
        allow_unmute: None,
        password: None,
        listed: None,
    };
    send(&mut hub, &host, settings);
    send(&mut hub, &host, breakout_open(&[("A", &[&host.id, &p.id])], true));
    assert_eq!(room_key(&hub, &host).as_deref(), Some("m\u{0}1"));
    host.drain();
    let mut knocker = connect(&mut hub, 3, 256);
    assert!(matches!(join(&mut hub, &mut knocker, "m"), ServerMsg::Waiting { .. }));
    let heard = host.drain().iter().any(|m| matches!(m, ServerMsg::WaitingList { waiting } if waiting.len() == 1));
    assert!(heard, "the knock reaches the host in the breakout room");
    send(&mut hub, &host, ClientMsg::Admit { peer: knocker.id.clone() });
    match knocker.next() {
        ServerMsg::Joined { breakout, you, .. } => {
            assert_eq!(breakout, None, "into the main room");
            assert_eq!(you.role, Role::Participant);
        }
        other => panic!("{other:?}"),
    }
    hub.check_invariants().expect("consistent");
}

/// Everyone leaves every room of a meeting in breakout rooms while someone waits at its door:
/// the meeting is over for them as for any room that empties (`room_closed`, not `ended`).
#[test]
fn a_meeting_in_breakout_rooms_that_empties_closes_its_door_too() {
    let mut hub = hub_with(|_| {});
    let mut host = connect(&mut hub, 1, 256);
    join(&mut hub, &mut host, "m");
    let settings = ClientMsg::Settings {
        locked: None,
        waiting_room: Some(true),
        allow_unmute: None,
        password: None,
        listed: None,
    };
    send(&mut hub, &host, settings);
    send(&mut hub, &host, breakout_open(&[("A", &[&host.id])], true));
    let mut knocker = connect(&mut hub, 2, 256);
    assert!(matches!(join(&mut hub, &mut knocker, "m"), ServerMsg::Waiting { .. }));
    send(&mut hub, &host, ClientMsg::Leave);
    assert_eq!(last_error(&knocker.drain()), Some(ErrorCode::RoomClosed));
    assert_eq!(hub.rooms.len(), 0);
    hub.check_invariants().expect("consistent");
}
