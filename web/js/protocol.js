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
 */

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
 *   |'invalid_file'|'file_storage_full'|'rate_limited'|'too_many_connections'} ErrorCode
 */

/** @typedef {'left'|'disconnected'|'too_slow'} LeaveReason */
/** @typedef {'server_shutdown'|'too_slow'|'timed_out'|'frame_too_large'|'flooding'|'too_many_connections'} ByeReason */

// ---- client → server ----
/**
 * @typedef {{type:'join', protocol:number, room:string, name:string, audio:boolean, video:boolean}} JoinMsg
 * @typedef {{type:'leave'}} LeaveMsg
 * @typedef {{type:'signal', to:PeerId, payload:SignalPayload}} SignalMsg
 * @typedef {{type:'chat', text:string}} ChatMsg
 * @typedef {{type:'media', audio:boolean, video:boolean, screen:boolean}} MediaMsg
 * @typedef {'off'|'low'|'medium'|'high'} VideoQuality
 * @typedef {{type:'receive', peer:PeerId, video:VideoQuality}} ReceiveMsg
 * @typedef {{type:'file_offer', name:string, size:number, mime:string, sha256:string}} FileOfferMsg
 * @typedef {{type:'watch_rooms'}} WatchRoomsMsg
 * @typedef {{type:'unwatch_rooms'}} UnwatchRoomsMsg
 * @typedef {JoinMsg|LeaveMsg|SignalMsg|ChatMsg|MediaMsg|ReceiveMsg|FileOfferMsg|WatchRoomsMsg|UnwatchRoomsMsg} ClientMsg
 */

// ---- server → client ----
/**
 * @typedef {{type:'welcome', protocol:number, id:PeerId, server:string, limits:Limits, iceServers:IceServer[], iceTransportPolicy?:'all'|'relay'}} WelcomeMsg
 * @typedef {{type:'rooms', rooms:RoomSummary[]}} RoomsMsg
 * @typedef {'p2p'|'sfu'} Topology
 * @typedef {{type:'joined', room:string, you:Peer, peers:Peer[], chat:ChatMessage[], topology:Topology, iceServers:IceServer[], iceTransportPolicy?:'all'|'relay'}} JoinedMsg
 * @typedef {{type:'topology', topology:Topology}} TopologyMsg
 * @typedef {{type:'active_speaker', peer:PeerId}} ActiveSpeakerMsg
 * @typedef {{type:'file_upload', id:string, url:string}} FileUploadMsg
 * @typedef {{id:string, from:PeerId, sender:string, name:string, size:number, mime:string, sha256:string, url:string}} SharedFile
 * @typedef {{type:'file', file:SharedFile}} FileMsg
 * @typedef {{type:'left', room:string}} LeftMsg
 * @typedef {{type:'peer_joined', peer:Peer}} PeerJoinedMsg
 * @typedef {{type:'peer_left', id:PeerId, reason:LeaveReason}} PeerLeftMsg
 * @typedef {{type:'peer_updated', peer:Peer}} PeerUpdatedMsg
 * @typedef {{type:'signal', from:PeerId, payload:SignalPayload}} RelayedSignalMsg
 * @typedef {{type:'chat', message:ChatMessage}} ChatRelayMsg
 * @typedef {{type:'error', code:ErrorCode, message:string, request?:string}} ErrorMsg
 * @typedef {{type:'bye', reason:ByeReason}} ByeMsg
 * @typedef {WelcomeMsg|RoomsMsg|JoinedMsg|LeftMsg|PeerJoinedMsg|PeerLeftMsg|PeerUpdatedMsg|TopologyMsg|ActiveSpeakerMsg
 *   |RelayedSignalMsg|ChatRelayMsg|FileUploadMsg|FileMsg|ErrorMsg|ByeMsg} ServerMsg
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

/**
 * A WebSocket speaking the huddle protocol. Handlers: `on(type, fn)` for every server message
 * `type`, plus the pseudo types `open` (after `welcome`) and `close` (`{code, reason, wasOpen}`).
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

  /** Opens the connection (closing an earlier one). */
  connect() {
    this.close();
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let wasOpen = false;
    ws.onopen = () => { wasOpen = true; };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      /** @type {ServerMsg} */
      let msg;
      try { msg = JSON.parse(ev.data); } catch { console.warn('huddle: bad JSON from server'); return; }
      if (!msg || typeof msg.type !== 'string') return;
      if (msg.type === 'welcome') {
        this.id = msg.id;
        this.limits = { ...DEFAULT_LIMITS, ...msg.limits };
        this.iceServers = msg.iceServers ?? [];
        this.server = msg.server;
      }
      this.emit(msg.type, msg);
      if (msg.type === 'welcome') this.emit('open', msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.id = null;
      this.emit('close', { code: ev.code, reason: ev.reason, wasOpen });
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  /** Closes without firing `close` handlers. */
  close() {
    const ws = this.ws;
    this.ws = null;
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
    if (!this.isOpen || !this.ws) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** @param {string} room @param {string} name @param {boolean} audio @param {boolean} video */
  join(room, name, audio, video) {
    return this.send({ type: 'join', protocol: PROTOCOL_VERSION, room, name, audio, video });
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
}
