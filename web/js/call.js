// The room: peers and their connections, tiles, the control bar, chat, files, panels.
import { t } from './i18n.js';
import { sig, media, S, errorVars } from './core.js';
import { PeerLink } from './peer.js';
import { LevelMeter } from './media.js';
import { FileChannel, sha256Hex, FileItem } from './files.js';
import { $, Tile, layoutTiles, notice, showError, chatMessage, initials, colourFor } from './ui.js';

/** @type {Tile|null} */
let selfTile = null;
let busyCam = false;

const tilesEl = () => $('#tiles');

export function relayout() { layoutTiles(tilesEl()); }

// ---------------------------------------------------------------- outgoing media

/** The video track we send now: the screen while sharing, else the camera when on. */
export function outgoingVideo() {
  if (S.sharing && media.screenTrack) return media.screenTrack;
  return media.camOn ? media.camTrack : null;
}

/** @param {'audio'|'video'} kind @param {MediaStreamTrack|null} track */
export async function replaceAll(kind, track) {
  await Promise.all([...S.peers.values()].map((p) => p.link?.replaceTrack(kind, track)));
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

export async function toggleMic() {
  const on = !(media.micOn && media.micTrack);
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

export async function toggleCamera() {
  if (busyCam) return;
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

export async function toggleShare() {
  if (S.sharing) { await stopShare(); return; }
  let tr;
  try {
    tr = await media.startScreen();
  } catch (e) {
    if (!(e && e.name === 'NotAllowedError')) showError('screen_failed');
    return;
  }
  S.sharing = true;
  tr.onended = () => { stopShare(); }; // the browser's own "stop sharing"
  await replaceAll('video', tr);
  tuneVideo();
  announce();
}

export async function stopShare() {
  if (!S.sharing) return;
  S.sharing = false;
  media.stopScreen();
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
    id: p.id, name: p.name, audio: p.audio, video: p.video, screen: p.screen,
    link: null, tile: null, files: null, meter: null,
    get pc() { return this.link ? this.link.pc : null; },
  };
  S.peers.set(p.id, rec);
  ensureTile(rec);
  if (initiator) connect(rec, true);
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
  tile.setSink(media.speakerId);
  rec.tile = tile;
  tilesEl().append(tile.el);
  relayout();
  return tile;
}

/** @param {import('./core.js').RemotePeer} rec @param {boolean} initiator */
export function connect(rec, initiator) {
  ensureTile(rec);
  const link = new PeerLink({
    selfId: S.selfId, peerId: rec.id, iceServers: S.iceServers, initiator,
    signal: (payload) => { sig.signal(rec.id, payload); },
    tracks: { audio: media.micTrack, video: outgoingVideo() },
    onTrack: (stream, track) => {
      rec.tile?.setStream(stream);
      if (track.kind === 'audio') {
        rec.meter?.detach();
        rec.meter = new LevelMeter((level) => { rec.tile?.el.classList.toggle('speaking', level > 0.45); });
        rec.meter.attach(track);
      }
    },
    onState: (state) => {
      if (state === 'connected') tuneVideo();
      if ((state === 'failed' || state === 'closed') && rec.link === link && S.peers.get(rec.id) === rec) {
        if (state === 'failed') showError('peer_failed', { name: rec.name });
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
  return link;
}

/** Closes the connection and removes the tile, keeping the person in the list. @param {import('./core.js').RemotePeer} rec */
function drop(rec) {
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
  const rec = S.peers.get(msg.from);
  if (!rec) return;
  if (!rec.link) {
    // The first signal from a newcomer (or a fresh offer after a failed connection).
    if (msg.payload.kind !== 'description' || msg.payload.description.type !== 'offer') return;
    connect(rec, false);
  }
  rec.link?.handleSignal(msg.payload);
}

/** @param {import('./protocol.js').Peer} p */
export function onPeerUpdated(p) {
  const rec = S.peers.get(p.id);
  if (!rec) return;
  Object.assign(rec, { name: p.name, audio: p.audio, video: p.video, screen: p.screen });
  rec.tile?.setName(p.name);
  rec.tile?.setState(rec);
  renderPeople();
}

/** @param {string} id */
export function removeRemote(id) {
  const rec = S.peers.get(id);
  if (!rec) return null;
  drop(rec);
  S.peers.delete(id);
  renderPeople();
  tuneVideo();
  return rec;
}

// ---------------------------------------------------------------- entering and leaving

/** @param {import('./protocol.js').JoinedMsg} msg */
export function enterCall(msg) {
  S.inRoom = true;
  S.selfId = msg.you.id;
  S.room = msg.room;
  S.name = msg.you.name;
  S.iceServers = msg.iceServers || [];
  S.unread = 0;
  tilesEl().replaceChildren();
  selfTile = new Tile(msg.you.id, true);
  selfTile.setName(msg.you.name);
  tilesEl().append(selfTile.el);
  $('#chat-log').replaceChildren(...msg.chat.map((m) => chatMessage(m, m.from === S.selfId)));
  $('#room-name').textContent = msg.room;
  for (const p of msg.peers) addRemote(p, true);
  updateSelf();
  updateUnread();
  relayout();
}

/** Closes every connection and clears the room view (local media stays as it is). */
export function teardownCall() {
  for (const rec of S.peers.values()) { rec.meter?.detach(); rec.link?.close(); rec.tile?.remove(); }
  S.peers.clear();
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
  setPanel('');
  const dlg = /** @type {HTMLDialogElement} */ ($('#settings-dialog'));
  if (dlg.open) dlg.close();
}

// ---------------------------------------------------------------- people

export function renderPeople() {
  const n = S.inRoom ? S.peers.size + 1 : 0;
  $('#participant-count').textContent = String(n);
  $('#people-count').textContent = `(${n})`;
  if (!S.inRoom) { $('#participant-list').replaceChildren(); return; }
  const me = { id: S.selfId, name: S.name, ...mediaState() };
  const rows = [me, ...S.peers.values()].map((p) => {
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
    return li;
  });
  $('#participant-list').replaceChildren(...rows);
}

// ---------------------------------------------------------------- panels, chat, files

/** @param {''|'chat'|'people'} which */
export function setPanel(which) {
  const was = S.panel;
  const hadFocus = !!was && !!document.activeElement && $(`#${was}-panel`).contains(document.activeElement);
  S.panel = which;
  $('#chat-panel').hidden = which !== 'chat';
  $('#people-panel').hidden = which !== 'people';
  $('#chat-button').setAttribute('aria-pressed', String(which === 'chat'));
  $('#people-button').setAttribute('aria-pressed', String(which === 'people'));
  document.body.dataset.panel = which;
  if (which === 'chat') {
    S.unread = 0;
    updateUnread();
    scrollChat();
    if (window.matchMedia('(min-width: 700px)').matches) $('#chat-input').focus();
  }
  if (hadFocus && which !== was) $(`#${was}-button`).focus(); // focus back to the toggle
  requestAnimationFrame(relayout);
}

/** @param {''|'chat'|'people'} which */
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
  for (const rec of S.peers.values()) { rec.tile?.setName(rec.name); rec.tile?.setState(rec); }
}
