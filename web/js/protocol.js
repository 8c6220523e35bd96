// huddle signalling protocol, version 1 — JSDoc mirror of crates/protocol and a small WebSocket
// client. No UI code in here. See docs/protocol.md.

export const PROTOCOL_VERSION = 1;
/** The reserved peer id of the server's SFU in `signal` messages (`sfu` rooms). */
export const SFU_PEER_ID = 'sfu';

/** @typedef {string} PeerId */

/**
 * @typedef {Object} Limits
 * @property {number} maxFrameBytes
 * @property {number} maxNameChars
 * @property {number} maxRoomChars
 * @property {number} maxChatChars
 * @property {number} roomCapacity
 * @property {number} chatHistory
 * @property {number} maxFileBytes
 */

/**
 * @typedef {Object} IceServer
 * @property {string[]} urls
 * @property {string} [username]
 * @property {string} [credential]
 */

/**
 * @typedef {Object} Peer
 * @property {PeerId} id
 * @property {string} name
 * @property {boolean} audio  microphone unmuted
 * @property {boolean} video  camera on
 * @property {boolean} screen sharing the screen
 * @property {Role} role
 * @property {boolean} hand   hand raised
 */

/** @typedef {'host'|'cohost'|'participant'} Role */
/** @typedef {'mute'|'stop_video'|'stop_screen'|'lower_hand'|'remove'|'ban'} ModAction */
/**
 * @typedef {Object} RoomSettings
 * @property {boolean} locked
 * @property {boolean} waitingRoom
 * @property {boolean} allowUnmute
 * @property {boolean} hasPassword
 * @property {boolean} listed  on the public room list (never with a password, a lock or a waiting room)
 */
/** @typedef {{id:PeerId, name:string}} Knocker */
/** The reactions the server accepts. */
export const REACTIONS = ['👍', '👏', '😂', '😮', '❤️', '🎉'];

/**
 * @typedef {Object} ChatMessage
 * @property {number} id
 * @property {PeerId} from
 * @property {string} name
 * @property {string} text
 * @property {number} ts  milliseconds since the Unix epoch (server clock)
 */

/**
 * @typedef {Object} RoomSummary
 * @property {string} name
 * @property {number} participants
 * @property {number} capacity
 * @property {boolean} [recording]  the room is being recorded (absent otherwise)
 */

/**
 * A recording in progress (`recording`, `joined.recording`).
 * @typedef {Object} RecordingInfo
 * @property {string} id
 * @property {number} startedAt  milliseconds since the Unix epoch (server clock)
 * @property {Knocker} [startedBy]  who started it ({id, name})
 */
/**
 * Why a recording stopped: `stopped` (a host stopped it), `time_limit` (the server's longest
 * recording), `storage_full`, `write_error`, `ended` (the meeting ended), `server_error`.
 * @typedef {'stopped'|'time_limit'|'storage_full'|'write_error'|'ended'|'server_error'} RecordingStopReason
 */
/**
 * One of the room's recordings (hosts and co-hosts: `recordings`). `state`: `recording` (in
 * progress), `composing` (making the one file; `progress` 0..1), `ready` (`url` downloads it),
 * `raw` (no ffmpeg on the server: only the raw tracks are kept there), `failed`, `interrupted`
 * (the server stopped while recording; it will be composed).
 * @typedef {Object} RecordingEntry
 * @property {string} id
 * @property {number} startedAt
 * @property {number} durationMs
 * @property {number} bytes
 * @property {'recording'|'composing'|'ready'|'raw'|'failed'|'interrupted'} state
 * @property {number} [progress]
 * @property {string|null} [url]
 */

/**
 * @typedef {Object} SessionDescription
 * @property {'offer'|'answer'|'pranswer'|'rollback'} type
 * @property {string} sdp
 */

/**
 * @typedef {Object} IceCandidate
 * @property {string} candidate
 * @property {string|null} [sdpMid]
 * @property {number|null} [sdpMLineIndex]
 * @property {string|null} [usernameFragment]
 */

/**
 * @typedef {{kind:'description', description: SessionDescription}
 *         | {kind:'candidate', candidate: IceCandidate|null}} SignalPayload
 */

/**
 * @typedef {'bad_json'|'bad_message'|'unknown_type'|'binary_frame'|'frame_too_large'
 *   |'unsupported_protocol'|'not_in_room'|'already_in_room'|'invalid_name'|'invalid_room'
 *   |'invalid_text'|'room_full'|'too_many_rooms'|'unknown_peer'|'media_refused'|'media_failed'
 *   |'media_answer_refused'|'media_retry'
 *   |'invalid_file'|'file_storage_full'|'file_quota'|'not_sfu_room'|'not_allowed'|'password_required'
 *   |'wrong_password'|'room_locked'|'recording_consent'
 *   |'knock_denied'|'banned'|'token_required'|'invalid_token'|'token_expired'|'muted_by_host'
 *   |'invalid_reaction'|'rate_limited'|'too_many_connections'|'room_closed'|'invite_revoked'|'too_many_attempts'|'unavailable'
 *   |'recording_unavailable'|'recording_storage_full'|'unknown_recording'|'invalid_breakout'} ErrorCode
 */

/** @typedef {'left'|'disconnected'|'too_slow'|'removed'|'breakout'} LeaveReason */
/** @typedef {'server_shutdown'|'too_slow'|'timed_out'|'frame_too_large'|'flooding'|'too_many_connections'|'replaced'} ByeReason */

// ---- client → server ----
/**
 * @typedef {{type:'join', protocol:number, room:string, name:string, audio:boolean, video:boolean, password?:string, token?:string, recording_ok?:boolean}} JoinMsg
 * @typedef {{type:'leave'}} LeaveMsg
 * @typedef {{type:'signal', to:PeerId, payload:SignalPayload}} SignalMsg
 * @typedef {{type:'chat', text:string}} ChatMsg
 * @typedef {{type:'media', audio:boolean, video:boolean, screen:boolean}} MediaMsg
 * @typedef {'off'|'low'|'medium'|'high'} VideoQuality
 * @typedef {{type:'receive', peer:PeerId, video:VideoQuality}} ReceiveMsg
 * @typedef {{type:'file_offer', name:string, size:number, mime:string, sha256:string}} FileOfferMsg
 * @typedef {{type:'watch_rooms'}} WatchRoomsMsg
 * @typedef {{type:'unwatch_rooms'}} UnwatchRoomsMsg
 * @typedef {{type:'hand', raised:boolean}} HandMsg
 * @typedef {{type:'react', emoji:string}} ReactMsg
 * @typedef {{type:'settings', locked?:boolean, waitingRoom?:boolean, allowUnmute?:boolean, password?:string, listed?:boolean}} SettingsMsg
 * @typedef {{type:'moderate', peer:PeerId, action:ModAction}} ModerateMsg
 * @typedef {{type:'set_role', peer:PeerId, role:Role}} SetRoleMsg
 * @typedef {{type:'admit', peer:PeerId}|{type:'deny', peer:PeerId}|{type:'admit_all'}|{type:'end_meeting'}} WaitingRoomMsg
 * @typedef {{type:'invite', ttlSecs?:number}} InviteMsg
 * @typedef {{type:'ping'}} PingMsg
 * @typedef {{type:'revoke_invites'}} RevokeInvitesMsg
 * A relay credential for the connectivity check (with a token outside a room when the server
 * admits only token holders): answered by `check_ice_servers`.
 * @typedef {{type:'relay_check', room?:string, token?:string}} RelayCheckMsg
 * Recording the room (hosts and co-hosts): start, stop, delete one of its recordings.
 * @typedef {{type:'record'}|{type:'stop_recording'}|{type:'delete_recording', id:string}} RecordingCtlMsg
 * Breakout rooms (docs/protocol.md, "Breakout rooms"): room indexes from 1, 0 the main room.
 * @typedef {{type:'breakout_open', rooms:{name:string, members:PeerId[]}[], autoMove?:boolean, allowReturn?:boolean, choose?:boolean, minutes?:number, closeSeconds?:number}} BreakoutOpenMsg
 * @typedef {{type:'breakout_assign', peer:PeerId, room:number}|{type:'breakout_move', room:number}|{type:'breakout_broadcast', text:string}
 *   |{type:'breakout_help'}|{type:'breakout_close', now?:boolean}} BreakoutCtlMsg
 * @typedef {JoinMsg|LeaveMsg|SignalMsg|ChatMsg|MediaMsg|ReceiveMsg|FileOfferMsg|WatchRoomsMsg|UnwatchRoomsMsg
 *   |HandMsg|ReactMsg|SettingsMsg|ModerateMsg|SetRoleMsg|WaitingRoomMsg|InviteMsg|PingMsg|RevokeInvitesMsg|RelayCheckMsg
 *   |RecordingCtlMsg|BreakoutOpenMsg|BreakoutCtlMsg} ClientMsg
 */

// ---- server → client ----
/**
 * `welcome.iceServers` is always empty (relay credentials come with `joined`).
 * @typedef {{type:'welcome', protocol:number, id:PeerId, server:string, limits:Limits, iceServers:IceServer[], iceTransportPolicy?:'all'|'relay', resume:string, resumeGraceSecs:number, resumed?:boolean, received?:number}} WelcomeMsg
 * @typedef {{type:'rooms', rooms:RoomSummary[]}} RoomsMsg
 * @typedef {'p2p'|'sfu'} Topology
 * A breakout room of the meeting: `index` from 1.
 * @typedef {{index:number, name:string}} BreakoutRef
 * `breakout`: this `joined` is for one of the meeting's breakout rooms (absent: the main room);
 * `room` is the meeting's name either way. A `joined` while in a room is a move.
 * @typedef {{type:'joined', room:string, you:Peer, peers:Peer[], chat:ChatMessage[], topology:Topology, iceServers:IceServer[], iceTransportPolicy?:'all'|'relay', settings:RoomSettings, waiting?:Knocker[], recording?:RecordingInfo, breakout?:BreakoutRef}} JoinedMsg
 * One open breakout room; `members` only for hosts and co-hosts.
 * @typedef {{index:number, name:string, count:number, members?:Knocker[]}} BreakoutSummary
 * @typedef {{type:'breakouts', open:true, rooms:BreakoutSummary[], main?:Knocker[], assigned:number, autoMove:boolean, allowReturn:boolean, choose:boolean, endsAt?:number, closingAt?:number}} BreakoutsOpenMsg
 * @typedef {BreakoutsOpenMsg|{type:'breakouts', open:false}} BreakoutsMsg
 * @typedef {{type:'breakout_message', from:Knocker, text:string}} BreakoutMessageMsg
 * @typedef {{type:'breakout_help_request', from:Knocker, room:BreakoutRef}} BreakoutHelpRequestMsg
 * @typedef {{type:'breakout_chat', room:BreakoutRef, messages:ChatMessage[]}} BreakoutChatMsg
 * @typedef {{type:'waiting', room:string, recording?:boolean}} WaitingMsg
 * @typedef {{type:'waiting_list', waiting:Knocker[]}} WaitingListMsg
 * @typedef {{type:'room_settings', settings:RoomSettings}} SettingsChangedMsg
 * @typedef {{type:'moderated', action:ModAction, by:PeerId}} ModeratedMsg
 * @typedef {{type:'removed', room:string, ban:boolean}} RemovedMsg
 * @typedef {{type:'ended', room:string, reason?:'server_error'}} EndedMsg
 * @typedef {{type:'reaction', from:PeerId, emoji:string}} ReactionMsg
 * @typedef {{type:'invite_token', token:string, expires:number}} InviteTokenMsg
 * @typedef {{type:'invites_revoked', by:PeerId}} InvitesRevokedMsg
 * @typedef {{type:'password_attempts', failed:number}} PasswordAttemptsMsg
 * @typedef {{type:'pong'}} PongMsg
 * The room is being recorded (`recording`), or no longer (`null`, with why in `stopped`).
 * @typedef {{type:'recording', recording:RecordingInfo|null, stopped?:{by?:Knocker, reason:RecordingStopReason}}} RecordingMsg
 * Hosts and co-hosts: the room's recordings, newest first.
 * @typedef {{type:'recordings', recordings:RecordingEntry[]}} RecordingsMsg
 * In a room: fresh credentials for the ICE servers (apply with `setConfiguration`).
 * @typedef {{type:'ice_servers', iceServers:IceServer[]}} IceServersMsg
 * Answer to `relay_check`: a credential that allocates a relay (the test) and relays nothing.
 * @typedef {{type:'check_ice_servers', iceServers:IceServer[]}} CheckIceServersMsg
 * @typedef {{type:'topology', topology:Topology, reason?:'recording'}} TopologyMsg
 * @typedef {{type:'active_speaker', peer:PeerId}} ActiveSpeakerMsg
 * @typedef {{type:'file_upload', id:string, url:string}} FileUploadMsg
 * @typedef {{id:string, from:PeerId, sender:string, name:string, size:number, mime:string, sha256:string, url:string}} SharedFile
 * @typedef {{type:'file', file:SharedFile}} FileMsg
 * @typedef {{type:'left', room:string}} LeftMsg
 * @typedef {{type:'peer_joined', peer:Peer}} PeerJoinedMsg
 * @typedef {{type:'peer_left', id:PeerId, reason:LeaveReason}} PeerLeftMsg
 * @typedef {{type:'peer_updated', peer:Peer}} PeerUpdatedMsg
 * @typedef {{type:'signal', from:PeerId, payload:SignalPayload, session?:number}} RelayedSignalMsg
 *   `session`: from the SFU, the number of the SFU session the SDP belongs to
 * @typedef {{type:'chat', message:ChatMessage}} ChatRelayMsg
 * @typedef {{type:'error', code:ErrorCode, message:string, request?:string, session?:number, retryAfterMs?:number}} ErrorMsg
 *   `session`: the SFU session a `media_failed` or `media_answer_refused` is about; `retryAfterMs`:
 *   when to send a signal refused with `media_retry` again
 * @typedef {{type:'bye', reason:ByeReason}} ByeMsg
 * @typedef {WelcomeMsg|RoomsMsg|JoinedMsg|LeftMsg|PeerJoinedMsg|PeerLeftMsg|PeerUpdatedMsg|TopologyMsg|ActiveSpeakerMsg
 *   |RelayedSignalMsg|ChatRelayMsg|FileUploadMsg|FileMsg|ErrorMsg|ByeMsg|WaitingMsg|WaitingListMsg|SettingsChangedMsg
 *   |ModeratedMsg|RemovedMsg|EndedMsg|ReactionMsg|InviteTokenMsg|InvitesRevokedMsg|PasswordAttemptsMsg|PongMsg
 *   |IceServersMsg|CheckIceServersMsg|RecordingMsg|RecordingsMsg|BreakoutsMsg|BreakoutMessageMsg|BreakoutHelpRequestMsg|BreakoutChatMsg} ServerMsg
 */

/** Default limits, used until `welcome` arrives. @type {Limits} */
export const DEFAULT_LIMITS = {
  maxFrameBytes: 65536, maxNameChars: 32, maxRoomChars: 64, maxChatChars: 2000,
  roomCapacity: 6, chatHistory: 100, maxFileBytes: 104857600,
};

/** The WebSocket URL of the page's own server. */
export function defaultUrl() {
  return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws';
}

// Characters that show nothing and only change what a name compares equal to: stripped from
// names, room names and chat, as the server does (crates/server/src/validate.rs, same tables —
// change both together). The joiners, selectors and tags stay where they join something.
const INVISIBLE = /[\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u2060-\u2064\u206A-\u206F\u2800\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF9-\uFFFB\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0000}-\u{E0FFF}]/u;
const BIDI = /[\u202A-\u202E\u2066-\u2069]/u;
const TAG = /[\u{E0020}-\u{E007F}]/u;
const EMOJI = /[\u00A9\u00AE\u203C\u2049\u2122\u2139\u2190-\u21FF\u2300-\u23FF\u24C2\u25A0-\u27BF\u2900-\u297F\u2B00-\u2BFF\u3030\u303D\u3297\u3299\u{1F000}-\u{1FAFF}]/u;
const JOINING = /[\u0600-\u08FF\u0900-\u0DFF\uFB50-\uFDFF\uFE70-\uFEFC]/u;
const COMBINING = /[\u0300-\u036F\u0483-\u0489\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0610-\u061A\u064B-\u065F\u0670\u06D6-\u06DC\u06DF-\u06E4\u06E7\u06E8\u06EA-\u06ED\u0E31\u0E34-\u0E3A\u0E47-\u0E4E\u0EB1\u0EB4-\u0EBC\u0EC8-\u0ECD\u1AB0-\u1AFF\u1DC0-\u1DFF\u20D0-\u20FF\u302A-\u302F\u3099\u309A\uFE20-\uFE2F]/u;
const ALNUM = /[\p{Alphabetic}\p{Nd}\p{Nl}\p{No}]/u;
const SPACE = /\p{White_Space}/u;
const CONTROL = /\p{Cc}/u;

/** @param {string|undefined} c */
const joins = (c) => !!c && JOINING.test(c) && !INVISIBLE.test(c);

/**
 * Drops the invisible characters of `chars`, keeping joiners where they join.
 * @param {string[]} chars @param {boolean} chat  also drop bidi controls, keep U+2800
 */
function stripInvisible(chars, chat) {
  let out = '';
  /** @type {string|undefined} */
  let prev;
  chars.forEach((c, i) => {
    const next = chars[i + 1];
    let keep;
    if (c === '\u200D') {
      keep = (!!prev && (EMOJI.test(prev) || prev === '\uFE0F' || TAG.test(prev)) && !!next && EMOJI.test(next)) || (joins(prev) && joins(next));
    } else if (c === '\u200C') keep = joins(prev) && joins(next);
    else if (c === '\uFE0E' || c === '\uFE0F') keep = !!prev && (EMOJI.test(prev) || /^[0-9#*]$/.test(prev));
    else if (TAG.test(c)) keep = prev === '\u{1F3F4}' || (!!prev && TAG.test(prev));
    else if (c === '\u2800') keep = chat;
    else if (BIDI.test(c)) keep = !chat;
    else keep = !INVISIBLE.test(c);
    if (keep) { out += c; prev = c; }
  });
  return out;
}

/** @param {string} c */
function isVisible(c) {
  return ALNUM.test(c) || !(SPACE.test(c) || CONTROL.test(c) || INVISIBLE.test(c) || BIDI.test(c) || c === '\u200C' || c === '\u200D' || COMBINING.test(c));
}

/** @param {string} t @param {number} max */
function showsSomething(t, max) {
  const chars = Array.from(t);
  return chars.length >= 1 && chars.length <= max && chars.some(isVisible);
}

/**
 * Cleans a room or display name as the server does: no control characters or bidi controls;
 * the characters that show nothing stripped (emoji sequences kept); runs of spaces made one;
 * trimmed; 1..max Unicode scalar values with at least one visible. Returns the cleaned name, or
 * null when it is not acceptable.
 * @param {string} s
 * @param {number} max
 * @returns {string|null}
 */
export function cleanName(s, max) {
  const raw = String(s ?? '');
  const chars = Array.from(raw);
  if (chars.some((c) => CONTROL.test(c) || BIDI.test(c))) return null;
  const t = stripInvisible(chars, false).split(/\p{White_Space}+/u).filter(Boolean).join(' ');
  return showsSomething(t, max) ? t : null;
}

/**
 * Cleans a chat message as the server does (line breaks and tabs allowed). Returns it, or null.
 * @param {string} s
 * @param {number} max
 * @returns {string|null}
 */
export function cleanChat(s, max) {
  const chars = Array.from(String(s ?? ''));
  if (chars.some((c) => CONTROL.test(c) && c !== '\n' && c !== '\t')) return null;
  const t = stripInvisible(chars, true).trim();
  return showsSomething(t, max) ? t : null;
}

/** The close code that keeps this session's place on the server (docs/protocol.md, "Resuming"). */
export const RECONNECTING = 4000;
/** Silence after which the client asks the server for a `pong`, and after which it gives up. */
const QUIET_MS = 10000;
const DEAD_MS = 20000;
/** Most sent messages kept for sending again after a resume. */
const MAX_LOG = 256;

/**
 * A WebSocket speaking the huddle protocol. Handlers: `on(type, fn)` for every server message
 * `type`, plus the pseudo types `open` (after `welcome`; `msg.resumed` says whether the session
 * carried on) and `close` (`{code, reason, wasOpen}`).
 *
 * It counts the messages of its session so that a new connection can resume it
 * (`connect({resume: true})`), and notices a dead connection itself: after `QUIET_MS` without a
 * message it sends `ping`, after `DEAD_MS` it closes with `RECONNECTING` (then `close` fires).
 */
export class SignalingClient {
  /** @param {string} [url] */
  constructor(url = defaultUrl()) {
    this.url = url;
    /** @type {WebSocket|null} */
    this.ws = null;
    /** @type {Map<string, Set<(msg:any)=>void>>} */
    this.handlers = new Map();
    /** @type {PeerId|null} */
    this.id = null;
    /** @type {Limits} */
    this.limits = { ...DEFAULT_LIMITS };
    /** @type {IceServer[]} */
    this.iceServers = [];
    this.server = '';
    /** The session to resume: its id and secret, and messages received (welcomes not counted). */
    this.session = { id: '', secret: '', graceMs: 0, seen: 0, lostAt: 0 };
    this.lastHeard = 0;
    /**
     * The last messages of this session, sent or waiting for a connection, to send again after a
     * resume those the server did not take (`welcome.received`). `sent` counts them all.
     * @type {{seq: number, msg: ClientMsg}[]}
     */
    this.log = [];
    this.sent = 0;
    /** @type {ReturnType<typeof setInterval>|null} */
    this.liveness = null;
  }

  /**
   * @param {string} type
   * @param {(msg:any)=>void} fn
   */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type)?.add(fn);
    return () => this.handlers.get(type)?.delete(fn);
  }

  /** @param {string} type @param {any} msg */
  emit(type, msg) {
    for (const fn of this.handlers.get(type) ?? []) {
      try { fn(msg); } catch (e) { console.error(`huddle: handler for ${type} failed`, e); }
    }
  }

  get isOpen() { return !!this.ws && this.ws.readyState === WebSocket.OPEN; }

  /**
   * Opens the connection (closing an earlier one). With `resume`, asks to carry on the current
   * session if there is one and its grace period may not be over.
   * @param {{resume?: boolean}} [opts]
   */
  connect(opts = {}) {
    this.close();
    const s = this.session;
    const canResume = opts.resume && s.id && s.secret && (!s.lostAt || Date.now() - s.lostAt < s.graceMs);
    const url = canResume
      ? `${this.url}?session=${encodeURIComponent(s.id)}&resume=${encodeURIComponent(s.secret)}&seen=${s.seen}`
      : this.url;
    const ws = new WebSocket(url);
    this.ws = ws;
    let wasOpen = false;
    ws.onopen = () => { wasOpen = true; };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      /** @type {ServerMsg} */
      let msg;
      try { msg = JSON.parse(ev.data); } catch { console.warn('huddle: bad JSON from server'); return; }
      if (!msg || typeof msg.type !== 'string') return;
      this.lastHeard = Date.now();
      if (msg.type === 'welcome') {
        this.id = msg.id;
        this.limits = { ...DEFAULT_LIMITS, ...msg.limits };
        this.iceServers = msg.iceServers ?? [];
        this.server = msg.server;
        if (!msg.resumed) { this.session.seen = 0; this.log = []; this.sent = 0; }
        this.session = { ...this.session, id: msg.id, secret: msg.resume ?? '', graceMs: (msg.resumeGraceSecs ?? 0) * 1000, lostAt: 0 };
      } else if (msg.type !== 'bye') {
        // `welcome` and `bye` belong to one connection; every other message counts toward `seen`.
        this.session.seen += 1;
      }
      this.emit(msg.type, msg);
      if (msg.type === 'welcome') {
        // What the server did not get (lost with the old connection, or said during the gap)
        // goes out again now, in order.
        if (msg.resumed) {
          const taken = msg.received ?? 0;
          for (const { seq, msg: m } of this.log) if (seq >= taken) this.write(m);
        }
        this.emit('open', msg);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.id = null;
      this.stopLiveness();
      if (!this.session.lostAt) this.session.lostAt = Date.now();
      this.emit('close', { code: ev.code, reason: ev.reason, wasOpen });
    };
    this.lastHeard = Date.now();
    this.stopLiveness();
    this.liveness = setInterval(() => this.checkLiveness(), 2000);
    ws.onerror = () => { /* onclose follows */ };
  }

  checkLiveness() {
    if (!this.ws) return;
    const quiet = Date.now() - this.lastHeard;
    if (quiet > DEAD_MS) this.drop();
    else if (quiet > QUIET_MS && this.isOpen) this.send({ type: 'ping' });
  }

  stopLiveness() {
    if (this.liveness) clearInterval(this.liveness);
    this.liveness = null;
  }

  /**
   * Drops the connection as if it had broken (the server keeps the session's place): `close`
   * handlers run, and they reconnect with `resume`. For network changes and dead connections.
   */
  drop() {
    const ws = this.ws;
    if (!ws) return;
    try { ws.close(RECONNECTING, 'reconnecting'); } catch { /* already closed */ }
    // Do not wait for the closing handshake over a network that may be gone.
    const onclose = ws.onclose;
    ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
    if (onclose) onclose.call(ws, new CloseEvent('close', { code: RECONNECTING, reason: 'reconnecting' }));
  }

  /** Closes without firing `close` handlers, ending the session. */
  close() {
    const ws = this.ws;
    this.ws = null;
    this.stopLiveness();
    if (ws) {
      ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
      try { ws.close(1000); } catch { /* already closed */ }
    }
  }

  /**
   * Sends one message; returns false when the connection is not open.
   * @param {ClientMsg} msg
   */
  send(msg) {
    const open = this.isOpen && !!this.ws;
    // Between a lost connection and its resume, messages wait for the same session.
    const waiting = !open && !!this.session.lostAt && !!this.session.secret;
    if (!open && !waiting) return false;
    this.log.push({ seq: this.sent++, msg });
    if (this.log.length > MAX_LOG) this.log.shift();
    if (open) this.write(msg);
    return true;
  }

  /** @param {ClientMsg} msg */
  write(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /**
   * @param {string} room @param {string} name @param {boolean} audio @param {boolean} video
   * @param {{password?: string, token?: string, recording_ok?: boolean}} [auth]
   */
  join(room, name, audio, video, auth = {}) {
    /** @type {JoinMsg} */
    const msg = { type: 'join', protocol: PROTOCOL_VERSION, room, name, audio, video };
    if (auth.password) msg.password = auth.password;
    if (auth.token) msg.token = auth.token;
    if (auth.recording_ok) msg.recording_ok = true;
    return this.send(msg);
  }
  leave() { return this.send({ type: 'leave' }); }
  /** @param {PeerId} to @param {SignalPayload} payload */
  signal(to, payload) { return this.send({ type: 'signal', to, payload }); }
  /** @param {string} text */
  chat(text) { return this.send({ type: 'chat', text }); }
  /** @param {boolean} audio @param {boolean} video @param {boolean} screen */
  media(audio, video, screen) { return this.send({ type: 'media', audio, video, screen }); }
  /** @param {PeerId} peer @param {VideoQuality} video */
  receive(peer, video) { return this.send({ type: 'receive', peer, video }); }
  /** @param {string} name @param {number} size @param {string} mime @param {string} sha256 */
  fileOffer(name, size, mime, sha256) { return this.send({ type: 'file_offer', name, size, mime, sha256 }); }
  watchRooms() { return this.send({ type: 'watch_rooms' }); }
  unwatchRooms() { return this.send({ type: 'unwatch_rooms' }); }
  /** @param {boolean} raised */
  hand(raised) { return this.send({ type: 'hand', raised }); }
  /** @param {string} emoji */
  react(emoji) { return this.send({ type: 'react', emoji }); }
  /** @param {{locked?:boolean, waitingRoom?:boolean, allowUnmute?:boolean, password?:string, listed?:boolean}} changes */
  settings(changes) { return this.send({ type: 'settings', ...changes }); }
  /** @param {PeerId} peer @param {ModAction} action */
  moderate(peer, action) { return this.send({ type: 'moderate', peer, action }); }
  /** @param {PeerId} peer @param {Role} role */
  setRole(peer, role) { return this.send({ type: 'set_role', peer, role }); }
  /** @param {PeerId} peer */
  admit(peer) { return this.send({ type: 'admit', peer }); }
  /** @param {PeerId} peer */
  deny(peer) { return this.send({ type: 'deny', peer }); }
  admitAll() { return this.send({ type: 'admit_all' }); }
  endMeeting() { return this.send({ type: 'end_meeting' }); }
  /**
   * Asks for the connectivity check's relay credential (`check_ice_servers`, or an `error` with
   * `request: 'relay_check'`).
   * @param {{room?: string, token?: string}} [auth] outside a room on a server that requires tokens
   */
  relayCheck(auth = {}) {
    /** @type {RelayCheckMsg} */
    const msg = { type: 'relay_check' };
    if (auth.token) { msg.token = auth.token; if (auth.room) msg.room = auth.room; }
    return this.send(msg);
  }
  /** @param {number} [ttlSecs] */
  invite(ttlSecs) { return this.send(ttlSecs ? { type: 'invite', ttlSecs } : { type: 'invite' }); }
  revokeInvites() { return this.send({ type: 'revoke_invites' }); }
  /** Starts recording the room (answered by `recording`, or an `error` with `request: 'record'`). */
  record() { return this.send({ type: 'record' }); }
  stopRecording() { return this.send({ type: 'stop_recording' }); }
  /** @param {string} id */
  deleteRecording(id) { return this.send({ type: 'delete_recording', id }); }
}
