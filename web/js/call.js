// The room: peers and their connections, tiles, the control bar, chat, files, panels.
import { t } from './i18n.js';
import { sig, media, S, errorVars, setSfuPcGetter } from './core.js';
import { PeerLink, setIceServers } from './peer.js';
import { SfuLink } from './sfu.js';
import { SFU_PEER_ID } from './protocol.js';
import { LevelMeter } from './media.js';
import { FileChannel, sha256Hex, FileItem } from './files.js';
import { $, Tile, layoutTiles, notice, showError, hideError, bannerCode, chatMessage, initials, colourFor } from './ui.js';
import * as check from './check.js';
import * as quality from './quality.js';

/** @type {Tile|null} */
let selfTile = null;

setSfuPcGetter(() => (sfu ? sfu.pc : null));
quality.init({ sfu: () => sfu, selfTile: () => selfTile, showPanel: (open) => setPanel(open ? 'stats' : '') });
let busyCam = false;

/**
 * Hooks for the modules built on the room (hands.js: raised hands and reactions; host.js: roles,
 * host controls, the waiting room). Each is set once at start; the defaults do nothing.
 */
export const hooks = {
  /** a `peer_updated` about ourselves @type {(p: import('./protocol.js').Peer) => void} */
  self: (p) => { void p; },
  /** may we turn this on? (false: a host turned it off) @type {(what: 'audio'|'video'|'screen') => boolean} */
  mayTurnOn: (what) => { void what; return true; },
  /** the people list's order @type {(people: PersonRow[]) => PersonRow[]} */
  order: (people) => people,
  /** adds to one row of the people list @type {(li: HTMLLIElement, p: PersonRow) => void} */
  row: (li, p) => { void li; void p; },
  /** the people list or a tile changed: redraw what sits on the tiles @type {() => void} */
  decorate: () => {},
  /** @type {(msg: import('./protocol.js').JoinedMsg) => void} */
  enter: (msg) => { void msg; },
  teardown: () => {},
  /** out of the meeting (not a move between its rooms) @type {() => void} */
  left: () => {},
};

/** @typedef {{id: string, name: string, audio: boolean, video: boolean, screen: boolean, role?: import('./protocol.js').Role, hand?: boolean}} PersonRow */

const tilesEl = () => $('#tiles');

export function relayout() {
  const el = tilesEl();
  if (speakerView && S.inRoom) arrangeSpeaker(el);
  else arrangeGrid(el);
  updateReceiveAll();
}

// ---------------------------------------------------------------- outgoing media

/** The video track we send now: the screen while sharing, else the camera when on. */
export function outgoingVideo() {
  if (S.sharing && media.screenTrack) return media.screenTrack;
  return media.camOn ? media.camTrack : null;
}

/** @param {'audio'|'video'} kind @param {MediaStreamTrack|null} track */
export async function replaceAll(kind, track) {
  await Promise.all([...[...S.peers.values()].map((p) => p.link?.replaceTrack(kind, track)), sfu?.replaceTrack(kind, track)]);
}

export function mediaState() {
  return { audio: media.micOn && !!media.micTrack, video: media.camOn && !!media.camTrack, screen: S.sharing };
}

/**
 * Shares the upstream between peers: the more copies of our video the mesh sends, the smaller
 * each one (about 1.5 Mbit/s alone with one peer, 450 kbit/s at 360p each with five).
 */
export function tuneVideo() {
  const n = S.peers.size;
  const screen = S.sharing;
  const rate = screen ? (n <= 2 ? 2_000_000 : 1_200_000)
    : n <= 1 ? 1_500_000 : n === 2 ? 900_000 : n === 3 ? 650_000 : 450_000;
  const scale = screen || n < 3 ? 1 : 1.5;
  for (const p of S.peers.values()) p.link?.limitVideo(rate, scale);
}

/** Tells the room, updates our tile, buttons and the list. */
export function announce() {
  const st = mediaState();
  if (S.inRoom) sig.media(st.audio, st.video, st.screen);
  updateSelf();
}

export function updateSelf() {
  const st = mediaState();
  const mic = $('#mic-button'), cam = $('#camera-button'), share = $('#share-button');
  mic.setAttribute('aria-pressed', String(st.audio));
  cam.setAttribute('aria-pressed', String(st.video));
  share.setAttribute('aria-pressed', String(S.sharing));
  if (selfTile) {
    selfTile.setState(st);
    const v = outgoingVideo();
    const cur = /** @type {MediaStream|null} */ (selfTile.video.srcObject);
    if (!v) selfTile.setStream(null);
    else if (!cur || cur.getVideoTracks()[0] !== v) selfTile.setStream(new MediaStream([v]));
  }
  renderPeople();
}

/**
 * The camera and microphone started after we joined (Join waits for them only so long), or a
 * pre-join change finished late: into every connection, and tell the room.
 */
export async function devicesReady() {
  if (!S.inRoom) return;
  await replaceAll('audio', media.micTrack);
  await replaceAll('video', outgoingVideo());
  announce();
}

export function toggleMic() {
  // After any device operation still under way (the pre-join start, a switch): it decides
  // what "toggle" means.
  return media.run(toggleMicNow);
}

async function toggleMicNow() {
  const on = !(media.micOn && media.micTrack);
  if (on && !hooks.mayTurnOn('audio')) return;
  if (on && !media.micTrack) {
    media.micOn = true;
    try {
      const tr = await media.openMic(media.micId);
      watchEnded(tr);
      await replaceAll('audio', tr);
    } catch {
      media.micOn = false;
      showError(media.micError, errorVars(media.micError));
    }
  } else {
    media.setMicOn(on);
  }
  announce();
}

export function toggleCamera() {
  if (busyCam) return Promise.resolve();
  return media.run(toggleCameraNow);
}

async function toggleCameraNow() {
  if (busyCam) return;
  if (!(media.camOn && media.camTrack) && !hooks.mayTurnOn('video')) return;
  busyCam = true;
  try {
    if (media.camOn && media.camTrack) {
      media.camOn = false;
      media.stopCamera(); // the light goes off
      if (!S.sharing) await replaceAll('video', null);
    } else {
      media.camOn = true;
      try {
        const tr = await media.openCamera(media.camId);
        watchEnded(tr);
        if (!S.sharing) await replaceAll('video', tr);
      } catch {
        media.camOn = false;
        showError(media.camError, errorVars(media.camError));
      }
    }
  } finally {
    busyCam = false;
  }
  announce();
}

/** The screen picker is open (a second click must not open another). */
let pickingScreen = false;

export async function toggleShare() {
  if (S.sharing) { await stopShare(); return; }
  if (pickingScreen || !hooks.mayTurnOn('screen')) return;
  const call = callId;
  let tr;
  pickingScreen = true;
  try {
    tr = await media.startScreen();
  } catch (e) {
    if (!(e && e.name === 'NotAllowedError')) showError('screen_failed');
    return;
  } finally {
    pickingScreen = false;
  }
  if (!S.inRoom || call !== callId) {
    // The call ended (or started over) while the picker was open: share nothing.
    media.stopScreen();
    return;
  }
  S.sharing = true;
  tr.onended = () => { stopShare(); }; // the browser's own "stop sharing"
  await sfu?.setScreen(true);
  await replaceAll('video', tr);
  tuneVideo();
  announce();
}

export async function stopShare() {
  if (!S.sharing) return;
  S.sharing = false;
  media.stopScreen();
  await sfu?.setScreen(false);
  await replaceAll('video', outgoingVideo());
  tuneVideo();
  announce();
}

/** When a device goes away its track ends: fall back to another one. @param {MediaStreamTrack} tr */
export function watchEnded(tr) {
  tr.addEventListener('ended', () => { document.dispatchEvent(new Event('huddle:trackended')); });
}

// ---------------------------------------------------------------- peers

/** @param {import('./protocol.js').Peer} p @param {boolean} initiator */
export function addRemote(p, initiator) {
  /** @type {import('./core.js').RemotePeer} */
  const rec = {
    id: p.id, name: p.name, audio: p.audio, video: p.video, screen: p.screen, role: p.role, hand: p.hand,
    link: null, tile: null, files: null, meter: null, viaSfu: false, problem: '',
    get pc() { return this.link ? this.link.pc : null; },
  };
  S.peers.set(p.id, rec);
  ensureTile(rec);
  if (S.topology === 'sfu') useSfuStream(rec);
  else if (initiator) connect(rec, true);
  renderPeople();
  return rec;
}

/** @param {import('./core.js').RemotePeer} rec */
function ensureTile(rec) {
  if (rec.tile) return rec.tile;
  const tile = new Tile(rec.id, false);
  tile.setName(rec.name);
  tile.setState(rec);
  if (rec.link) tile.setStream(rec.link.stream);
  else if (rec.viaSfu && sfu) tile.setStream(sfu.streamOf(rec.id));
  tile.setSink(media.speakerId);
  if (tile.pinEl) tile.pinEl.onclick = () => togglePin(rec.id);
  tile.setPinned(pinned === rec.id);
  tile.el.dataset.activeSpeaker = String(activeSpeaker === rec.id);
  rec.tile = tile;
  tilesEl().append(tile.el);
  watchTile(rec);
  relayout();
  hooks.decorate();
  return tile;
}

/** Speaking indicator from this audio track. @param {import('./core.js').RemotePeer} rec @param {MediaStreamTrack} track */
function meterOn(rec, track) {
  rec.meter?.detach();
  rec.meter = new LevelMeter((level) => {
    rec.tile?.el.classList.toggle('speaking', level > 0.45);
    // Peer-to-peer rooms have no server to pick the speaker: a clearly loud voice takes the
    // floor, at most once a second (sfu rooms get `active_speaker` instead).
    if (S.topology === 'p2p' && level > 0.6 && activeSpeaker !== rec.id && Date.now() - speakerSince > 1000) {
      setActiveSpeaker(rec.id);
    }
  });
  rec.meter.attach(track);
}

/** @param {import('./core.js').RemotePeer} rec @param {boolean} initiator */
export function connect(rec, initiator) {
  ensureTile(rec);
  const link = new PeerLink({
    selfId: S.selfId, peerId: rec.id, iceServers: S.iceServers, iceTransportPolicy: S.iceTransportPolicy, initiator,
    signal: (payload) => { sig.signal(rec.id, payload); },
    tracks: { audio: media.micTrack, video: outgoingVideo() },
    onTrack: (stream, track) => {
      if (rec.viaSfu) return; // the SFU has taken over this participant
      rec.tile?.setStream(stream);
      if (track.kind === 'audio') meterOn(rec, track);
    },
    onState: (state) => {
      if (state === 'connected') {
        tuneVideo();
        if (rec.link === link) setProblem(rec, '');
      }
      if (state === 'disconnected' && rec.link === link) {
        // Often a network change: if it does not come back by itself soon, restart ICE.
        setTimeout(() => {
          if (rec.link === link && link.pc.connectionState === 'disconnected') link.restartIce();
        }, DISCONNECTED_PATIENCE_MS);
      }
      if ((state === 'failed' || state === 'closed') && rec.link === link && S.peers.get(rec.id) === rec) {
        // After a switch to the SFU the other side closes its end: the SFU carries them now.
        if (S.topology === 'sfu') { switchToSfu(rec); return; }
        if (state === 'failed') {
          // One ICE restart first (new candidates, maybe a new network); a second failure stays.
          if (Date.now() - link.restartedAt > ICE_RESTART_WINDOW_MS) { link.restartIce(); return; }
          linkFailed(rec, link);
          return;
        }
        drop(rec);
      }
    },
    onChannel: (ch) => {
      rec.files = new FileChannel(ch, {
        peerName: () => rec.name,
        maxBytes: () => sig.limits.maxFileBytes,
        list: $('#files'),
        error: (code, vars, textKey) => showError(code, vars, '', textKey),
        received: (file) => {
          notice(t('notice.file', { name: rec.name, file }));
          if (S.panel !== 'chat') bumpUnread();
        },
      });
    },
  });
  rec.link = link;
  // Not connected after a while: say why on the tile (the connection keeps trying).
  setTimeout(() => {
    if (rec.link === link && S.peers.get(rec.id) === rec && link.pc.connectionState !== 'connected' && !rec.problem) {
      setProblem(rec, 'slow');
    }
  }, CONNECT_PATIENCE_MS);
  return link;
}

/** How long a connection may take to come up before its tile explains why it does not. */
const CONNECT_PATIENCE_MS = 15000;
/** How long a `disconnected` connection may take to recover by itself before ICE restarts. */
const DISCONNECTED_PATIENCE_MS = 3000;
/** A connection that fails again within this long after an ICE restart is reported as failed. */
const ICE_RESTART_WINDOW_MS = 20000;
/** How often a failed connection tries another ICE restart. */
const ICE_RETRY_MS = 10000;

/**
 * The network may have changed (or the signalling connection came back after a gap): restart ICE
 * on every peer-to-peer connection that is not up, and renegotiate with the SFU if that one is not.
 * With `all`, restart every connection (the old paths may be gone although ICE has not noticed);
 * with `serverRestarted`, the server is a new process and the SFU session starts over at once.
 * @param {boolean} [all]
 * @param {boolean} [serverRestarted]
 */
export function restartIce(all = false, serverRestarted = false) {
  if (!S.inRoom) return;
  for (const rec of S.peers.values()) {
    const pc = rec.link?.pc;
    if (pc && (all || pc.connectionState === 'disconnected' || pc.connectionState === 'failed')) rec.link?.restartIce();
  }
  if (S.topology !== 'sfu') return;
  if (serverRestarted) {
    // A new server process: its SFU has no session of ours (nor a history of restarts to
    // pace); start one now instead of waiting for the old one to fail.
    if (sfuRetryTimer) { clearTimeout(sfuRetryTimer); sfuRetryTimer = null; }
    startSfu();
  } else if (sfu && (all || sfu.pc.connectionState !== 'connected')) {
    restartSfu();
  }
}

/**
 * Shows (or clears) the "reconnecting…" state of the call: the signalling connection is gone
 * and the page is getting it back. Tiles stay; they are dimmed and say so.
 * @param {boolean} on
 */
export function setReconnecting(on) {
  const view = document.getElementById('view-room');
  if (view) view.classList.toggle('reconnecting', on);
  const el = document.getElementById('reconnecting');
  if (el) el.hidden = !on;
}

/**
 * The connection to this person failed again right after an ICE restart: their tile (and the
 * banner) say which step failed and what to try (from our connectivity check), and the same
 * connection keeps trying — another ICE restart every ICE_RETRY_MS — until it gets through or
 * they leave. Keeping it (rather than closing it) matters when it failed because one side was
 * offline for a while: the signalling both sides queued meanwhile then belongs to connections
 * that still exist, and perfect negotiation sorts it out.
 * @param {import('./core.js').RemotePeer} rec
 * @param {import('./peer.js').PeerLink} link
 */
function linkFailed(rec, link) {
  setProblem(rec, 'failed');
  setTimeout(() => {
    const state = link.pc.connectionState;
    if (rec.link === link && S.peers.get(rec.id) === rec && (state === 'failed' || state === 'disconnected')) link.restartIce();
  }, ICE_RETRY_MS);
}

/**
 * Shows (or, with '', clears) why the connection to `rec` is not up, running the connectivity
 * check first if it has not run yet.
 * @param {import('./core.js').RemotePeer} rec
 * @param {''|'slow'|'failed'} why
 */
function setProblem(rec, why) {
  rec.problem = why;
  renderProblem(rec);
  if (!why) {
    // "Cannot connect to …" goes once no connection is failed any more (an ICE restart or a new
    // connection got through).
    const failed = [...S.peers.values()].some((p) => p.problem === 'failed');
    if (!failed && bannerCode() === 'peer_failed') hideError(['peer_failed']);
    return;
  }
  check.ensureCheck().then(() => {
    if (S.peers.get(rec.id) !== rec || rec.problem !== why) return;
    renderProblem(rec);
    if (why === 'failed') {
      const d = check.diagnosisOf(check.lastResult(), rec.name);
      showError('peer_failed', d.vars, '', d.key);
    }
  });
}

/** @param {import('./core.js').RemotePeer} rec */
function renderProblem(rec) {
  if (!rec.tile) return;
  if (!rec.problem) { rec.tile.setProblem(''); return; }
  const d = check.diagnosisOf(check.lastResult(), rec.name);
  rec.tile.setProblem(rec.problem, d.key.replace(/^diag\.peer\./, ''), t(d.key, d.vars));
}

/** Closes the connection and removes the tile, keeping the person in the list. @param {import('./core.js').RemotePeer} rec */
function drop(rec) {
  if (rec.tile) tileObserver?.unobserve(rec.tile.el);
  visible.delete(rec.id);
  rec.meter?.detach();
  rec.meter = null;
  rec.link?.close();
  rec.link = null;
  rec.files = null;
  rec.tile?.remove();
  rec.tile = null;
  relayout();
}

/** A relayed signal. @param {import('./protocol.js').RelayedSignalMsg} msg */
export function onSignal(msg) {
  if (msg.from === SFU_PEER_ID) { onSfuSignal(msg); return; }
  const rec = S.peers.get(msg.from);
  if (!rec) return;
  if (!rec.link) {
    if (S.topology === 'sfu') return; // no new peer-to-peer connections in an sfu room
    // The first signal from a newcomer (or a fresh offer after a failed connection).
    if (msg.payload.kind !== 'description' || msg.payload.description.type !== 'offer') return;
    connect(rec, false);
  }
  rec.link?.handleSignal(msg.payload);
}

/** @param {import('./protocol.js').Peer} p */
export function onPeerUpdated(p) {
  if (p.id === S.selfId && S.inRoom) { hooks.self(p); renderPeople(); return; }
  const rec = S.peers.get(p.id);
  if (!rec) return;
  Object.assign(rec, { name: p.name, audio: p.audio, video: p.video, screen: p.screen, role: p.role, hand: p.hand });
  rec.tile?.setName(p.name);
  rec.tile?.setState(rec);
  renderPeople();
}

/** @param {string} id */
export function removeRemote(id) {
  const rec = S.peers.get(id);
  if (!rec) return null;
  drop(rec);
  wanted.delete(id);
  if (pinned === id) pinned = '';
  S.peers.delete(id);
  sfu?.streams.delete(id);
  renderPeople();
  tuneVideo();
  return rec;
}

// ---------------------------------------------------------------- entering and leaving

/** @param {import('./protocol.js').JoinedMsg} msg */
/** Counts calls entered: an action that outlives its call can tell. */
let callId = 0;

export function enterCall(msg) {
  callId += 1;
  S.inRoom = true;
  S.selfId = msg.you.id;
  S.room = msg.room;
  S.name = msg.you.name;
  S.iceServers = msg.iceServers || [];
  S.iceTransportPolicy = msg.iceTransportPolicy === 'relay' ? 'relay' : 'all';
  S.unread = 0;
  setTopology(msg.topology === 'sfu' ? 'sfu' : 'p2p');
  tilesEl().replaceChildren();
  selfTile = new Tile(msg.you.id, true);
  selfTile.setName(msg.you.name);
  tilesEl().append(selfTile.el);
  $('#chat-log').replaceChildren(...msg.chat.map((m) => chatMessage(m, m.from === S.selfId)));
  $('#room-name').textContent = msg.room;
  hooks.enter(msg);
  for (const p of msg.peers) addRemote(p, true);
  if (S.topology === 'sfu') startSfu();
  // What `join` said (or, through a waiting room, said at the knock) may be out of date: a device
  // that started or failed since, a mute in the waiting room. The room hears what is true now.
  const st = mediaState();
  if (st.audio !== msg.you.audio || st.video !== msg.you.video || st.screen !== msg.you.screen) announce();
  updateSelf();
  updateUnread();
  relayout();
  quality.start();
}

/**
 * Fresh relay credentials (`ice_servers`, before the last ones expire): for every connection
 * open now and every one made later.
 * @param {import('./protocol.js').IceServersMsg} msg
 */
export function onIceServers(msg) {
  if (!S.inRoom || !Array.isArray(msg.iceServers)) return;
  S.iceServers = msg.iceServers;
  for (const rec of S.peers.values()) if (rec.link) setIceServers(rec.link.pc, S.iceServers);
  if (sfu) setIceServers(sfu.pc, S.iceServers);
}

/**
 * Closes every connection and clears the room view (local media stays as it is). With `move`,
 * only this room of the meeting is left: we go to another (breakout rooms).
 * @param {{move?: boolean}} [opts]
 */
export function teardownCall(opts = {}) {
  callId += 1;
  hooks.teardown();
  quality.stop();
  for (const rec of S.peers.values()) { rec.meter?.detach(); rec.link?.close(); rec.tile?.remove(); }
  S.peers.clear();
  stopSfu();
  pinned = activeSpeaker = lastMain = '';
  for (const up of uploading.values()) up.xhr.abort();
  uploading.clear();
  offered.length = 0;
  setTopology('p2p');
  selfTile?.remove();
  selfTile = null;
  if (S.sharing) { S.sharing = false; media.stopScreen(); }
  S.inRoom = false;
  S.selfId = '';
  S.unread = 0;
  $('#chat-log').replaceChildren();
  for (const item of FileItem.all) item.dispose();
  $('#files').replaceChildren();
  $('#files').hidden = true;
  if (!opts.move) {
    setPanel('');
    const dlg = /** @type {HTMLDialogElement} */ ($('#settings-dialog'));
    if (dlg.open) dlg.close();
    hooks.left();
  }
}

/**
 * A `joined` while in a room: the server moved us to another room of the meeting (a breakout
 * room, or back to the main one). The old room's connections close and the new room's start,
 * with the camera and microphone as they are (a screen share stops); the open panel stays.
 * @param {import('./protocol.js').JoinedMsg} msg
 */
export function moveCall(msg) {
  const panel = S.panel;
  teardownCall({ move: true });
  enterCall(msg);
  if (panel !== S.panel) setPanel(panel);
}

// ---------------------------------------------------------------- people

export function renderPeople() {
  const n = S.inRoom ? S.peers.size + 1 : 0;
  $('#participant-count').textContent = String(n);
  $('#people-count').textContent = `(${n})`;
  if (!S.inRoom) { $('#participant-list').replaceChildren(); return; }
  /** @type {PersonRow} */
  const me = { id: S.selfId, name: S.name, ...mediaState(), role: S.role, hand: S.hand };
  const rows = hooks.order([me, ...S.peers.values()]).map((p) => {
    const li = document.createElement('li');
    li.dataset.peerId = p.id;
    const av = document.createElement('span');
    av.className = 'avatar';
    av.setAttribute('aria-hidden', 'true');
    av.textContent = initials(p.name);
    av.style.backgroundColor = colourFor(p.name + p.id);
    const name = document.createElement('span');
    name.className = 'person-name';
    name.textContent = p.name;
    li.append(av, name);
    if (p.id === S.selfId) {
      const you = document.createElement('span');
      you.className = 'muted';
      you.textContent = t('people.you');
      li.append(you);
    }
    const st = document.createElement('span');
    st.className = 'person-state';
    if (!p.audio) { const s = document.createElement('span'); s.className = 'state-mic-off'; s.title = t('tile.muted'); st.append(s); }
    li.append(st);
    li.dataset.audio = p.audio ? 'on' : 'off';
    li.dataset.video = p.video ? 'on' : 'off';
    hooks.row(li, p);
    return li;
  });
  $('#participant-list').replaceChildren(...rows);
  hooks.decorate();
}

// ---------------------------------------------------------------- panels, chat, files

/** @param {''|'chat'|'people'|'stats'} which */
export function setPanel(which) {
  const was = S.panel;
  const hadFocus = !!was && !!document.activeElement && $(`#${was}-panel`).contains(document.activeElement);
  S.panel = which;
  $('#chat-panel').hidden = which !== 'chat';
  $('#people-panel').hidden = which !== 'people';
  $('#stats-panel').hidden = which !== 'stats';
  $('#chat-button').setAttribute('aria-pressed', String(which === 'chat'));
  $('#people-button').setAttribute('aria-pressed', String(which === 'people'));
  document.body.dataset.panel = which;
  if (which === 'chat') {
    S.unread = 0;
    updateUnread();
    scrollChat();
    if (window.matchMedia('(min-width: 700px)').matches) $('#chat-input').focus();
  }
  if (which === 'stats' || was === 'stats') quality.panelShown(which === 'stats');
  if (hadFocus && which !== was) (was === 'stats' ? quality.openerEl() : $(`#${was}-button`)).focus(); // focus back to the toggle
  requestAnimationFrame(relayout);
}

/** @param {''|'chat'|'people'|'stats'} which */
export function togglePanel(which) { setPanel(S.panel === which ? '' : which); }

function bumpUnread() { S.unread++; updateUnread(); }

function updateUnread() {
  const b = $('#chat-unread');
  b.hidden = S.unread === 0;
  b.textContent = S.unread > 9 ? '9+' : String(S.unread);
}

function scrollChat() {
  const box = $('#chat-scroll');
  box.scrollTop = box.scrollHeight;
}

/** @param {import('./protocol.js').ChatMessage} m */
export function onChat(m) {
  const box = $('#chat-scroll');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  $('#chat-log').append(chatMessage(m, m.from === S.selfId));
  if (atBottom || m.from === S.selfId) scrollChat();
  if (S.panel !== 'chat' && m.from !== S.selfId) bumpUnread();
}

export function sendChat() {
  const input = /** @type {HTMLTextAreaElement} */ ($('#chat-input'));
  const text = input.value.trim();
  if (!text) return;
  if (Array.from(text).length > sig.limits.maxChatChars) { showError('invalid_text', errorVars('invalid_text')); return; }
  if (sig.chat(text)) input.value = '';
}

/** Sends files to every peer with an open channel. @param {FileList|File[]} files */
export async function sendFiles(files) {
  if (!globalThis.crypto?.subtle) { showError('files_unavailable'); return; }
  for (const file of Array.from(files)) {
    if (file.size > sig.limits.maxFileBytes) {
      showError('file_too_large', { ...errorVars('file_too_large'), file: file.name });
      continue;
    }
    if (S.topology === 'sfu') {
      if (!S.peers.size) { notice(t('files.nobody')); continue; }
      if (S.panel !== 'chat') setPanel('chat');
      const sha = await sha256Hex(file);
      offerToServer(file, sha);
      continue;
    }
    const targets = [...S.peers.values()].filter((p) => p.files && p.files.ch.readyState === 'open');
    if (!targets.length) { notice(t('files.nobody')); continue; }
    if (S.panel !== 'chat') setPanel('chat');
    const sha = await sha256Hex(file);
    for (const p of targets) p.files?.send(file, sha);
  }
}

export function rerenderCall() {
  renderPeople();
  for (const item of FileItem.all) item.render();
  if (selfTile) selfTile.setName(S.name);
  for (const rec of S.peers.values()) { rec.tile?.setName(rec.name); rec.tile?.setState(rec); renderProblem(rec); }
  renderTopology();
}

// ---------------------------------------------------------------- the SFU (sfu rooms)

/** Our one connection to the server's SFU in an `sfu` room. @type {SfuLink|null} */
let sfu = null;
/** The wait before the next restart of the SFU connection (doubles up to 30 s). */
let sfuRetryMs = 2000;
/** @type {ReturnType<typeof setTimeout>|null} */
let sfuRetryTimer = null;
let sfuStartedAt = 0;
/** Closes what is left of the peer-to-peer connections some time after a switch. @type {ReturnType<typeof setTimeout>|null} */
let switchTimer = null;
/** The server takes a new session at most this often (docs/protocol.md). */
const SFU_RESTART_MIN_MS = 2100;
/**
 * Our offers to the SFU not answered or refused yet. Each gets exactly one reply, in the order
 * they went out, so when more than one is out the next reply belongs to an older connection.
 */
let sfuOffersOut = 0;
/** A connection to the SFU not connected after this long is started over. */
const SFU_CONNECT_TIMEOUT_MS = 20000;
/** After a switch, peer-to-peer pictures stay at most this long while the SFU's arrive. */
const SWITCH_FALLBACK_MS = 6000;

/** @param {import('./protocol.js').Topology} topology */
function setTopology(topology) {
  S.topology = topology;
  $('#topology').dataset.topology = topology;
  renderTopology();
}

function renderTopology() {
  const el = $('#topology');
  el.textContent = t(`topology.${S.topology}`);
  el.title = t(`topology.${S.topology}.title`);
}

/** The room switched to the SFU (an `auto` room got its third person). @param {import('./protocol.js').TopologyMsg} msg */
export function onTopology(msg) {
  if (!S.inRoom || msg.topology !== 'sfu' || S.topology === 'sfu') return;
  setTopology('sfu');
  startSfu();
  // Everyone stays on their peer-to-peer picture until the same person arrives through the SFU.
  if (switchTimer) clearTimeout(switchTimer);
  switchTimer = setTimeout(() => {
    switchTimer = null;
    for (const rec of S.peers.values()) if (!rec.viaSfu) switchToSfu(rec);
  }, SWITCH_FALLBACK_MS);
}

function startSfu() {
  sfu?.close();
  wanted.clear(); // a new session on the server starts with everything at `high`
  const link = new SfuLink({
    iceServers: S.iceServers, iceTransportPolicy: S.iceTransportPolicy,
    signal: (payload) => {
      if (payload.kind === 'description' && payload.description.type === 'offer') sfuOffersOut += 1;
      sig.signal(SFU_PEER_ID, payload);
    },
    tracks: { audio: media.micTrack, video: outgoingVideo() },
    onTrack: (peerId, stream) => {
      const rec = S.peers.get(peerId);
      if (!rec || !rec.viaSfu) return;
      rec.tile?.setStream(stream);
    },
    onMedia: (peerId, track) => {
      const rec = S.peers.get(peerId);
      if (!rec || rec.viaSfu) return;
      // The SFU carries this person now: their video if they send any, else their sound.
      if (track.kind === 'video' || !(rec.video || rec.screen)) switchToSfu(rec);
    },
    onState: (state) => {
      if (link !== sfu) return;
      if (state === 'connected') {
        sfuRetryMs = 2000;
        updateReceiveAll();
        sfuProblem = false;
        hideError(['media_unreachable']);
      } else if (state === 'failed') {
        sfuTrouble();
        restartSfu();
      }
    },
  });
  sfu = link;
  sfuStartedAt = Date.now();
  if (!levelTimer) levelTimer = setInterval(pollLevels, 150);
  link.start().then(() => { if (S.sharing) link.setScreen(true); });
  // A connection still not up after a while will not come up: say why, and start over.
  setTimeout(() => {
    if (link === sfu && link.pc.connectionState !== 'connected') sfuTrouble();
  }, CONNECT_PATIENCE_MS);
  setTimeout(() => {
    if (link !== sfu || link.pc.connectionState === 'connected') return;
    // No reply to our offer at all in this long: an overloaded server dropped it. Not counted any
    // more, or the next answer would be taken for its.
    if (link.session === null && !link.refused) sfuOffersOut = Math.max(0, sfuOffersOut - 1);
    restartSfu();
  }, SFU_CONNECT_TIMEOUT_MS);
}

/** Whether the banner explains a media connection to the SFU that does not come up. */
let sfuProblem = false;

/** The SFU connection failed or is slow: the banner says which step fails and what to try. */
function sfuTrouble() {
  if (sfuProblem) return;
  sfuProblem = true;
  check.ensureCheck().then((r) => {
    if (!sfuProblem || !S.inRoom || S.topology !== 'sfu') return;
    const d = check.diagnosisOf(r, '');
    showError('media_unreachable', d.vars, '', d.key);
  });
}

/**
 * Starts a fresh session with the SFU after a failure, with a growing pause (at least `minWait`).
 * @param {number} [minWait] ms
 */
function restartSfu(minWait = 0) {
  if (!S.inRoom || S.topology !== 'sfu' || sfuRetryTimer) return;
  const wait = Math.max(sfuRetryMs, SFU_RESTART_MIN_MS - (Date.now() - sfuStartedAt), minWait);
  sfuRetryMs = Math.min(sfuRetryMs * 2, 30000);
  notice(t('notice.mediaReconnecting'));
  sfuRetryTimer = setTimeout(() => {
    sfuRetryTimer = null;
    if (S.inRoom && S.topology === 'sfu') startSfu();
  }, wait);
}

/**
 * Takes one reply to an offer of ours off the count. False when it belongs to the offer of a
 * connection we have replaced since.
 */
function replyToCurrentOffer() {
  const current = sfuOffersOut <= 1;
  sfuOffersOut = Math.max(0, sfuOffersOut - 1);
  return current;
}

/** SDP from the SFU. @param {import('./protocol.js').RelayedSignalMsg} msg */
function onSfuSignal(msg) {
  const answer = msg.payload.kind === 'description' && msg.payload.description.type === 'answer';
  if (answer && !replyToCurrentOffer()) return;
  sfu?.handleSignal(msg.payload, msg.session);
}

/**
 * An error about the SFU session (docs/protocol.md, "Sessions, restarts and refusals"). True when
 * handled here; `media_refused` is left to the banner.
 * @param {import('./protocol.js').ErrorMsg} m
 */
export function onMediaError(m) {
  switch (m.code) {
    case 'media_failed':
    case 'media_answer_refused':
      // About a session we replaced already (it crossed our new offer): nothing to do.
      if (!sfu || (m.session !== undefined && m.session !== sfu.session)) return true;
      restartSfu();
      return true;
    case 'media_retry':
      // Not taken now: a new connection when the server says (nothing changed on its side).
      if (m.request === 'signal' && !replyToCurrentOffer()) return true;
      if (sfu) sfu.refused = true;
      restartSfu(m.retryAfterMs ?? SFU_RESTART_MIN_MS);
      return true;
    case 'media_refused':
      // Our current offer cannot be used: the banner says so. An older connection's: nothing.
      if (!replyToCurrentOffer()) return true;
      if (sfu) sfu.refused = true;
      return false;
    default:
      return false;
  }
}

function stopSfu() {
  if (sfuRetryTimer) clearTimeout(sfuRetryTimer);
  if (switchTimer) clearTimeout(switchTimer);
  sfuRetryTimer = switchTimer = null;
  sfu?.close();
  sfu = null;
  sfuOffersOut = 0;
  sfuRetryMs = 2000;
  if (sfuProblem && bannerCode() === 'media_unreachable') hideError(['media_unreachable']);
  sfuProblem = false;
  wanted.clear();
  if (levelTimer) clearInterval(levelTimer);
  levelTimer = null;
  loudAt.clear();
}

/**
 * Hands a participant over from its peer-to-peer connection to the SFU.
 * @param {import('./core.js').RemotePeer} rec
 */
function switchToSfu(rec) {
  if (rec.viaSfu) return;
  const link = rec.link;
  rec.link = null;
  rec.files = null;
  useSfuStream(rec);
  link?.close();
}

/** Shows what the SFU has of this participant (maybe nothing yet). @param {import('./core.js').RemotePeer} rec */
function useSfuStream(rec) {
  rec.viaSfu = true;
  const stream = sfu?.streamOf(rec.id) ?? null;
  rec.meter?.detach(); // the SFU's audio levels drive the speaking ring from now on
  rec.meter = null;
  rec.tile?.setStream(stream);
}

/** Speaking rings in sfu rooms, from the audio levels the SFU forwards (one timer for everyone). */
let levelTimer = /** @type {ReturnType<typeof setInterval>|null} */ (null);
/** When each participant was last loud enough to count as speaking. @type {Map<string, number>} */
const loudAt = new Map();
/** About -34 dBov: a voice, not a room's hum. */
const SPEAKING_LEVEL = 0.02;
/** The ring stays this long after the voice, so it does not flicker between syllables. */
const SPEAKING_HOLD_MS = 500;

function pollLevels() {
  if (!sfu) return;
  const now = Date.now();
  for (const [id, level] of sfu.audioLevels()) if (level >= SPEAKING_LEVEL) loudAt.set(id, now);
  for (const rec of S.peers.values()) {
    if (!rec.viaSfu || !rec.tile) continue;
    rec.tile.el.classList.toggle('speaking', now - (loudAt.get(rec.id) ?? 0) < SPEAKING_HOLD_MS);
  }
}

// ---------------------------------------------------------------- adaptive stream (sfu rooms)

/** The quality we last asked the server for, per participant (absent: `high`, the default). @type {Map<string, import('./protocol.js').VideoQuality>} */
const wanted = new Map();
/** Whether each remote tile is on screen. @type {Map<string, boolean>} */
const visible = new Map();
/** @type {IntersectionObserver|null} */
let tileObserver = null;

/** @param {import('./core.js').RemotePeer} rec */
function watchTile(rec) {
  if (!rec.tile || typeof IntersectionObserver === 'undefined') return;
  tileObserver ??= new IntersectionObserver((entries) => {
    for (const e of entries) {
      const id = /** @type {HTMLElement} */ (e.target).dataset.peerId;
      if (id) visible.set(id, e.isIntersecting);
    }
    updateReceiveAll();
  });
  tileObserver.observe(rec.tile.el);
}

/**
 * What a tile needs: nothing while hidden (off screen, or the page in the background), else
 * the simulcast layer that fits its width.
 * @param {import('./core.js').RemotePeer} rec
 * @returns {import('./protocol.js').VideoQuality}
 */
function qualityFor(rec) {
  const el = rec.tile?.el;
  if (!el || document.hidden || visible.get(rec.id) === false) return 'off';
  const w = el.clientWidth;
  return w >= 480 ? 'high' : w >= 200 ? 'medium' : 'low';
}

/** Tells the server about every tile whose need changed (sfu rooms, once connected). */
export function updateReceiveAll() {
  if (!S.inRoom || S.topology !== 'sfu' || !sfu?.answered) return;
  for (const rec of S.peers.values()) {
    const q = qualityFor(rec);
    if ((wanted.get(rec.id) ?? 'high') === q) continue;
    wanted.set(rec.id, q);
    sig.receive(rec.id, q);
  }
}
document.addEventListener('visibilitychange', () => updateReceiveAll());

// ---------------------------------------------------------------- files through the server (sfu rooms)

/** Our offers waiting for their `file_upload`, in the order sent. @type {{file: File, item: FileItem}[]} */
const offered = [];
/** Uploads under way or waiting for the room's `file`, by file id. @type {Map<string, {file: File, item: FileItem, xhr: XMLHttpRequest}>} */
const uploading = new Map();

/** @param {File} file @param {string} sha */
function offerToServer(file, sha) {
  const item = new FileItem($('#files'), { name: file.name, size: file.size, direction: 'sending', peerName: '', toAll: true });
  const mime = (file.type || 'application/octet-stream').slice(0, 100);
  if (!sig.fileOffer(file.name, file.size, mime, sha)) { item.fail(); return; }
  offered.push({ file, item });
}

/** The server refused our oldest waiting offer (`error` for `file_offer`). */
export function onFileOfferRefused() {
  offered.shift()?.item.fail();
}

/** Where to upload the file we offered first. @param {import('./protocol.js').FileUploadMsg} msg */
export function onFileUpload(msg) {
  const o = offered.shift();
  if (!o) return;
  const xhr = new XMLHttpRequest();
  uploading.set(msg.id, { ...o, xhr });
  /** @param {string} code */
  const failed = (code) => {
    uploading.delete(msg.id);
    o.item.fail();
    showError(code, { file: o.file.name });
  };
  xhr.open('PUT', msg.url);
  xhr.upload.onprogress = (e) => o.item.setProgress(e.loaded);
  xhr.onload = () => {
    // On 204 the room's `file` message marks it sent.
    if (xhr.status === 204) return;
    let code = '';
    try { code = JSON.parse(xhr.responseText).code; } catch { /* not ours */ }
    // The server gave up on a stalled or too slow upload (docs/protocol.md, `file_upload`).
    failed(code === 'upload_too_slow' ? 'upload_too_slow' : 'file_failed');
  };
  xhr.onerror = () => failed('file_failed');
  xhr.send(o.file);
}

/** A file shared in the room is ready to download. @param {import('./protocol.js').FileMsg} msg */
export function onSharedFile(msg) {
  const f = msg.file;
  const mine = uploading.get(f.id);
  if (mine) {
    uploading.delete(f.id);
    mine.item.done('');
    return;
  }
  if (f.from === S.selfId) return;
  // The server checked the size and the SHA-256 before announcing it; the browser downloads it.
  const item = new FileItem($('#files'), { name: f.name, size: f.size, direction: 'receiving', peerName: f.sender });
  item.done(f.url);
  notice(t('notice.file', { name: f.sender, file: f.name }));
  if (S.panel !== 'chat') bumpUnread();
}

// ---------------------------------------------------------------- speaker view

/** Whether the speaker view is on (the user's choice, kept between calls). */
let speakerView = false;
/** Who the SFU (or, peer-to-peer, the level meters) hears most, and since when. */
let activeSpeaker = '';
let speakerSince = 0;
/** The person the user pinned to the big tile, if any. */
let pinned = '';
/** Who had the big tile last (kept while we ourselves talk). */
let lastMain = '';

/** @param {import('./protocol.js').ActiveSpeakerMsg} msg */
export function onActiveSpeaker(msg) { setActiveSpeaker(msg.peer); }

/** @param {string} id */
function setActiveSpeaker(id) {
  activeSpeaker = id;
  speakerSince = Date.now();
  for (const rec of S.peers.values()) if (rec.tile) rec.tile.el.dataset.activeSpeaker = String(rec.id === id);
  if (speakerView) relayout();
}

/** Pins someone to the big tile (switching to the speaker view), or unpins them. @param {string} id */
export function togglePin(id) {
  pinned = pinned === id ? '' : id;
  for (const rec of S.peers.values()) rec.tile?.setPinned(rec.id === pinned);
  if (pinned && !speakerView) setSpeakerView(true);
  else relayout();
}

/** @param {boolean} on */
export function setSpeakerView(on) {
  speakerView = on;
  $('#layout-button').setAttribute('aria-pressed', String(on));
  relayout();
}

export function toggleSpeakerView() { setSpeakerView(!speakerView); }

/** Every tile in grid order: ours first, then everyone in joining order. */
function allTiles() {
  return [selfTile, ...[...S.peers.values()].map((r) => r.tile)].filter((x) => !!x);
}

/** The pinned person, else the active speaker (not ourselves), else whoever had it, else the first. */
function mainTileId() {
  if (pinned && S.peers.has(pinned)) return pinned;
  if (activeSpeaker && activeSpeaker !== S.selfId && S.peers.has(activeSpeaker)) return activeSpeaker;
  if (lastMain && S.peers.has(lastMain)) return lastMain;
  return S.peers.keys().next().value ?? S.selfId;
}

/** Big tile in `.spotlight`, the others in `.filmstrip` (moved within one task, so videos keep playing). @param {HTMLElement} el */
function arrangeSpeaker(el) {
  let spot = /** @type {HTMLElement|null} */ (el.querySelector(':scope > .spotlight'));
  let strip = /** @type {HTMLElement|null} */ (el.querySelector(':scope > .filmstrip'));
  if (!spot || !strip) {
    spot = document.createElement('div');
    spot.className = 'spotlight';
    strip = document.createElement('div');
    strip.className = 'filmstrip';
    strip.setAttribute('role', 'presentation');
    spot.setAttribute('role', 'presentation');
    el.prepend(spot, strip);
  }
  el.dataset.layout = 'speaker';
  const id = mainTileId();
  lastMain = id;
  const tiles = allTiles();
  const main = tiles.find((x) => x.id === id);
  if (main && main.el.parentElement !== spot) spot.append(main.el);
  // The rest in grid order (appending moves them, the old big tile included).
  const rest = tiles.filter((x) => x !== main).map((x) => x.el);
  if (rest.length !== strip.children.length || rest.some((e, i) => strip.children[i] !== e)) strip.append(...rest);
}

/** Every tile back in #tiles, sized by layoutTiles. @param {HTMLElement} el */
function arrangeGrid(el) {
  if (el.dataset.layout === 'speaker') {
    el.dataset.layout = 'grid';
    el.append(...allTiles().map((x) => x.el));
    el.querySelector(':scope > .spotlight')?.remove();
    el.querySelector(':scope > .filmstrip')?.remove();
  }
  layoutTiles(el);
}
