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
 *   |'invalid_file'|'file_storage_full'|'not_allowed'|'password_required'|'wrong_password'|'room_locked'
 *   |'knock_denied'|'banned'|'token_required'|'invalid_token'|'token_expired'|'muted_by_host'
 *   |'invalid_reaction'|'rate_limited'|'too_many_connections'} ErrorCode
 */

/** @typedef {'left'|'disconnected'|'too_slow'|'removed'} LeaveReason */
/** @typedef {'server_shutdown'|'too_slow'|'timed_out'|'frame_too_large'|'flooding'|'too_many_connections'|'replaced'} ByeReason */

// ---- client → server ----
/**
 * @typedef {{type:'join', protocol:number, room:string, name:string, audio:boolean, video:boolean, password?:string, token?:string}} JoinMsg
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
 * @typedef {{type:'settings', locked?:boolean, waitingRoom?:boolean, allowUnmute?:boolean, password?:string}} SettingsMsg
 * @typedef {{type:'moderate', peer:PeerId, action:ModAction}} ModerateMsg
 * @typedef {{type:'set_role', peer:PeerId, role:Role}} SetRoleMsg
 * @typedef {{type:'admit', peer:PeerId}|{type:'deny', peer:PeerId}|{type:'admit_all'}|{type:'end_meeting'}} WaitingRoomMsg
 * @typedef {{type:'invite', ttlSecs?:number}} InviteMsg
 * @typedef {{type:'ping'}} PingMsg
 * @typedef {JoinMsg|LeaveMsg|SignalMsg|ChatMsg|MediaMsg|ReceiveMsg|FileOfferMsg|WatchRoomsMsg|UnwatchRoomsMsg
 *   |HandMsg|ReactMsg|SettingsMsg|ModerateMsg|SetRoleMsg|WaitingRoomMsg|InviteMsg|PingMsg} ClientMsg
 */

// ---- server → client ----
/**
 * @typedef {{type:'welcome', protocol:number, id:PeerId, server:string, limits:Limits, iceServers:IceServer[], iceTransportPolicy?:'all'|'relay', resume:string, resumeGraceSecs:number, resumed?:boolean, received?:number}} WelcomeMsg
 * @typedef {{type:'rooms', rooms:RoomSummary[]}} RoomsMsg
 * @typedef {'p2p'|'sfu'} Topology
 * @typedef {{type:'joined', room:string, you:Peer, peers:Peer[], chat:ChatMessage[], topology:Topology, iceServers:IceServer[], iceTransportPolicy?:'all'|'relay', settings:RoomSettings, waiting?:Knocker[]}} JoinedMsg
 * @typedef {{type:'waiting', room:string}} WaitingMsg
 * @typedef {{type:'waiting_list', waiting:Knocker[]}} WaitingListMsg
 * @typedef {{type:'room_settings', settings:RoomSettings}} SettingsChangedMsg
 * @typedef {{type:'moderated', action:ModAction, by:PeerId}} ModeratedMsg
 * @typedef {{type:'removed', room:string, ban:boolean}} RemovedMsg
 * @typedef {{type:'ended', room:string}} EndedMsg
 * @typedef {{type:'reaction', from:PeerId, emoji:string}} ReactionMsg
 * @typedef {{type:'invite_token', token:string, expires:number}} InviteTokenMsg
 * @typedef {{type:'pong'}} PongMsg
 * @typedef {{type:'topology', topology:Topology}} TopologyMsg
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
 *   |ModeratedMsg|RemovedMsg|EndedMsg|ReactionMsg|InviteTokenMsg|PongMsg} ServerMsg
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

/**
 * Checks a room or display name as the server does: 1..max Unicode scalar values after trimming
 * spaces, no control characters. Returns the trimmed value, or null when it is not acceptable.
 * @param {string} s
 * @param {number} max
 * @returns {string|null}
 */
export function cleanName(s, max) {
  const t = String(s ?? '').trim();
  const n = Array.from(t).length;
  if (n < 1 || n > max) return null;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(t)) return null;
  return t;
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
   * @param {{password?: string, token?: string}} [auth]
   */
  join(room, name, audio, video, auth = {}) {
    /** @type {JoinMsg} */
    const msg = { type: 'join', protocol: PROTOCOL_VERSION, room, name, audio, video };
    if (auth.password) msg.password = auth.password;
    if (auth.token) msg.token = auth.token;
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
  /** @param {{locked?:boolean, waitingRoom?:boolean, allowUnmute?:boolean, password?:string}} changes */
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
  /** @param {number} [ttlSecs] */
  invite(ttlSecs) { return this.send(ttlSecs ? { type: 'invite', ttlSecs } : { type: 'invite' }); }
}
