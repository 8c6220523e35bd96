// The page's singletons: the signalling connection, local media, and the shared state that
// app.js (views, landing, pre-join) and call.js (the room) both use.
import { SignalingClient } from './protocol.js';
import { LocalMedia } from './media.js';
import { formatBytes } from './i18n.js';

export const sig = new SignalingClient();
/** Set by call.js: the SFU's RTCPeerConnection, for the debug handle. @type {() => RTCPeerConnection|null} */
let sfuPc = () => null;
/** @param {() => RTCPeerConnection|null} fn */
export function setSfuPcGetter(fn) { sfuPc = fn; }
/** Set by quality.js: the connection figures of the last sample, for the debug handle. @type {() => Record<string, any>} */
let qualityFigures = () => ({});
/** @param {() => Record<string, any>} fn */
export function setQualityGetter(fn) { qualityFigures = fn; }
export const media = new LocalMedia();

/**
 * @typedef {Object} RemotePeer
 * @property {string} id
 * @property {string} name
 * @property {boolean} audio
 * @property {boolean} video
 * @property {boolean} screen
 * @property {import('./protocol.js').Role} [role]  host, cohost or participant
 * @property {boolean} [hand]  hand raised
 * @property {import('./peer.js').PeerLink|null} link
 * @property {import('./ui.js').Tile|null} tile
 * @property {import('./files.js').FileChannel|null} files
 * @property {import('./media.js').LevelMeter|null} meter  speaking indicator
 * @property {boolean} [viaSfu]  their media comes through the SFU (sfu rooms), not `link`
 * @property {''|'slow'|'failed'} [problem]  the connection to them is not up after a while, or failed
 * @property {RTCPeerConnection|null} pc  (getter, for window.__huddle)
 */

export const S = {
  /** @type {'loading'|'landing'|'prejoin'|'waiting'|'room'|'check'} */
  view: 'loading',
  /** the room of the pre-join step or the call */
  room: '',
  name: '',
  inRoom: false,
  joining: false,
  selfId: '',
  /** @type {import('./protocol.js').IceServer[]} */
  iceServers: [],
  /** @type {RTCIceTransportPolicy} `relay` when the server says so */
  iceTransportPolicy: 'all',
  /** @type {Map<string, RemotePeer>} remote peers in joining order */
  peers: new Map(),
  sharing: false,
  /** @type {import('./protocol.js').Topology} the room's media topology */
  topology: 'p2p',
  /** @type {''|'chat'|'people'|'stats'} */
  panel: '',
  unread: 0,
  everConnected: false,
  byeReason: '',
  /** the signalling connection dropped during a call and the page is getting it back */
  reconnecting: false,
  /** the call is being joined again after the session could not be resumed (a server restart) */
  rejoining: false,
  /** sessions resumed, and rooms joined again after a session was lost (for tests) */
  resumes: 0,
  rejoins: 0,
  /** @type {import('./protocol.js').Role} our role in the room (host.js) */
  role: /** @type {import('./protocol.js').Role} */ ('participant'),
  /** our hand is raised (hands.js) */
  hand: false,
  /** @type {import('./protocol.js').RecordingInfo|null} the room is being recorded (recording.js) */
  recording: null,
  /** @type {import('./protocol.js').BreakoutRef|null} the breakout room we are in (null: the main room) (breakout.js) */
  breakout: null,
  /** @type {import('./protocol.js').BreakoutsMsg|null} the meeting's breakout rooms as last told (breakout.js) */
  breakouts: null,
};

/**
 * Values for the placeholders of an error sentence.
 * @param {string} code
 */
export function errorVars(code) {
  const l = sig.limits;
  switch (code) {
    case 'invalid_name': return { max: l.maxNameChars };
    case 'invalid_room': return { max: l.maxRoomChars };
    case 'invalid_text': return { max: l.maxChatChars };
    case 'room_full': return { cap: l.roomCapacity };
    case 'file_too_large': return { max: formatBytes(l.maxFileBytes) };
    default: return {};
  }
}

/** window.__huddle, the debug handle of docs/dom-contract.md. */
export function exposeDebugHandle() {
  /** @type {any} */ (window).__huddle = {
    get id() { return S.inRoom ? S.selfId : null; },
    get room() { return S.inRoom ? S.room : null; },
    peers: S.peers,
    get state() {
      return {
        view: S.view, connected: sig.isOpen, room: S.room, inRoom: S.inRoom,
        audio: media.micOn && !!media.micTrack, video: media.camOn && !!media.camTrack, screen: S.sharing,
        camError: media.camError, micError: media.micError, topology: S.topology,
        reconnecting: S.reconnecting, resumes: S.resumes, rejoins: S.rejoins, role: S.role,
        recording: S.recording ? S.recording.id : null,
        breakout: S.breakout ? { ...S.breakout } : null,
        breakouts: S.breakouts,
      };
    },
    /** the RTCPeerConnection to the SFU in sfu rooms, else null */
    get sfu() { return sfuPc(); },
    /** connection figures per person id, `self` and `server` (quality.js), sampled once a second */
    get quality() { return qualityFigures(); },
    sig, media,
  };
}
