// huddle's page: views (landing, pre-join, room), routing, and the signalling wiring.
import * as i18n from './i18n.js';
import { t } from './i18n.js';
import { cleanName } from './protocol.js';
import { LevelMeter, mediaAvailable } from './media.js';
import { sig, media, S, errorVars, exposeDebugHandle } from './core.js';
import { $, notice, showError, hideError, bannerCode, renderBanner, initials, colourFor } from './ui.js';
import * as call from './call.js';
import * as check from './check.js';
import { initDevices, fillDevices } from './devices.js';
import * as host from './host.js';
import * as recording from './recording.js';
import * as breakout from './breakout.js';

const NAME_KEY = 'huddle.name';
const CONNECTION_CODES = ['ws_failed', 'ws_closed', 'server_shutdown', 'too_slow', 'timed_out', 'frame_too_large', 'flooding', 'too_many_connections'];
const MEDIA_CODES = ['camera_denied', 'mic_denied', 'media_denied', 'no_camera', 'no_mic', 'no_devices', 'camera_busy', 'mic_busy', 'media_unavailable'];
const JOIN_CODES = ['room_full', 'too_many_rooms', 'invalid_name', 'invalid_room', 'already_in_room', 'unsupported_protocol',
  'room_locked', 'banned', 'knock_denied', 'token_required', 'invalid_token', 'token_expired', 'removed', 'removed_ban', 'ended', 'ended_server_error',
  'room_closed', 'invite_revoked', 'too_many_attempts', 'unavailable', 'recording_consent'];

const nameInput = /** @type {HTMLInputElement} */ ($('#name-input'));
const roomInput = /** @type {HTMLInputElement} */ ($('#room-input'));
const preview = /** @type {HTMLVideoElement} */ ($('#preview'));
const meterEl = /** @type {HTMLMeterElement} */ ($('#mic-meter'));

const meter = new LevelMeter((level) => {
  meterEl.value = level;
  meterEl.dataset.level = level.toFixed(2);
  const self = document.querySelector('#tiles .tile[data-self="true"]');
  if (self) self.classList.toggle('speaking', level > 0.45);
});

/** @type {import('./protocol.js').RoomSummary[]} */
let lastRooms = [];
/** The server lists no rooms to this page (it admits only people with a token). */
let roomsHidden = false;
let reconnectDelay = 500;
/** How often a page asks again while its meeting moves between server nodes (close 1013). */
const MOVING_RETRY_MS = 1000;
/** The network changed since signalling was last up: restart ICE on every connection. */
let networkChanged = false;
/** @type {ReturnType<typeof setTimeout>|null} */
let reconnectTimer = null;
/** sentences (i18n keys) shown in #prejoin-notice */
let prejoinNotes = /** @type {string[]} */ ([]);

// ---------------------------------------------------------------- views and routing

/** @param {'landing'|'prejoin'|'waiting'|'room'|'check'} view */
function setView(view) {
  S.view = view;
  document.body.dataset.view = view;
  $('#topbar-room').textContent = view === 'landing' || view === 'check' ? '' : S.room;
  document.title = view === 'landing' ? 'huddle' : view === 'check' ? `${t('check.title')} · huddle` : `${S.room} · huddle`;
}

function roomFromPath() {
  const m = /^\/r\/(.+)$/.exec(location.pathname);
  if (!m) return '';
  try { return decodeURIComponent(m[1]).trim(); } catch { return m[1].trim(); }
}

function route() {
  const room = roomFromPath();
  if (room) openPrejoin(room);
  else if (location.pathname === '/check') showCheck();
  else showLanding();
}

function showLanding() {
  stopPreview();
  media.stopAll();
  $('#name-home').before($('#name-field'));
  setView('landing');
  hideError([...MEDIA_CODES, ...JOIN_CODES]);
  if (sig.isOpen) sig.watchRooms();
  renderRooms();
}

/** @param {string} room */
function goToRoom(room) {
  const name = cleanName(nameInput.value, sig.limits.maxNameChars);
  if (!name) { showError('invalid_name', errorVars('invalid_name')); nameInput.focus(); return; }
  const clean = cleanName(room, sig.limits.maxRoomChars);
  if (!clean) { showError('invalid_room', errorVars('invalid_room')); roomInput.focus(); return; }
  saveName(name);
  hideError(['invalid_name', 'invalid_room']);
  history.pushState({ room: clean }, '', `/r/${encodeURIComponent(clean)}`);
  openPrejoin(clean);
}

/** @param {string} name */
function saveName(name) {
  S.name = name;
  try { localStorage.setItem(NAME_KEY, name); } catch { /* ignore */ }
}

// ---------------------------------------------------------------- landing

function renderRooms() {
  const list = $('#room-list');
  const status = $('#rooms-status');
  status.textContent = !sig.isOpen ? t('rooms.connecting') : roomsHidden ? t('rooms.tokenRequired') : lastRooms.length ? '' : t('rooms.empty');
  status.dataset.state = !sig.isOpen ? 'connecting' : roomsHidden ? 'token_required' : lastRooms.length ? 'listed' : 'empty';
  status.hidden = !status.textContent;
  /** @type {Map<string, HTMLLIElement>} */
  const old = new Map();
  for (const li of /** @type {NodeListOf<HTMLLIElement>} */ (list.querySelectorAll(':scope > li'))) old.set(li.dataset.room ?? '', li);
  const items = lastRooms.map((r) => {
    let li = old.get(r.name);
    old.delete(r.name);
    if (!li) {
      li = document.createElement('li');
      li.dataset.room = r.name;
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'room-item';
      const av = document.createElement('span');
      av.className = 'avatar';
      av.setAttribute('aria-hidden', 'true');
      av.textContent = initials(r.name);
      av.style.backgroundColor = colourFor(r.name);
      const nm = document.createElement('span');
      nm.className = 'room-item-name';
      nm.textContent = r.name;
      const rec = document.createElement('span');
      rec.className = 'room-item-rec';
      rec.append(Object.assign(document.createElement('span'), { className: 'rec-dot' }));
      rec.append(Object.assign(document.createElement('span'), { className: 'room-item-rec-text' }));
      const ct = document.createElement('span');
      ct.className = 'room-item-count';
      b.append(av, nm, rec, ct);
      b.addEventListener('click', () => goToRoom(r.name));
      li.append(b);
    }
    const full = r.participants >= r.capacity;
    li.dataset.count = String(r.participants);
    li.dataset.recording = String(!!r.recording);
    li.classList.toggle('full', full);
    const b = /** @type {HTMLButtonElement} */ (li.querySelector('button'));
    b.setAttribute('aria-label', t(r.recording ? 'rooms.enterRecording' : 'rooms.enter', { room: r.name, n: r.participants, cap: r.capacity }));
    /** @type {HTMLElement} */ (li.querySelector('.room-item-rec-text')).textContent = t('rooms.recording');
    /** @type {HTMLElement} */ (li.querySelector('.room-item-count')).textContent =
      full ? t('rooms.full') : t('rooms.count', { n: r.participants, cap: r.capacity });
    return li;
  });
  for (const li of old.values()) li.remove();
  const same = items.length === list.children.length && items.every((li, i) => list.children[i] === li);
  if (!same) list.replaceChildren(...items);
}

// ---------------------------------------------------------------- connectivity check

/** The standalone check (`/check`): the same check as on pre-join, with every step shown. */
function showCheck() {
  stopPreview();
  media.stopAll();
  setView('check');
  hideError([...MEDIA_CODES, ...JOIN_CODES]);
  renderChecks();
  if (sig.isOpen) check.startCheck({ force: true });
}

function renderChecks() {
  check.renderCheck($('#prejoin-check'));
  check.renderCheck($('#check-result'));
  // "Run again" stays enabled (and focused) while a check runs: a click then waits for that one.
  $('#check-result').setAttribute('aria-busy', String($('#check-result').dataset.state === 'running'));
  // On pre-join, the steps open by themselves when something is wrong.
  const details = /** @type {HTMLDetailsElement} */ ($('#prejoin-check .check-details'));
  const v = $('#prejoin-check').dataset.verdict;
  if (v && v !== 'running' && v !== 'ready' && v !== shownVerdict) details.open = true;
  shownVerdict = v ?? '';
}
let shownVerdict = '';

// ---------------------------------------------------------------- pre-join

/**
 * Who is already in the room, and whether it is being recorded, from the public room list (a
 * room that is not public says neither).
 */
function renderPresence() {
  const el = $('#prejoin-presence');
  const r = sig.isOpen ? lastRooms.find((x) => x.name === S.room) : undefined;
  $('#prejoin-recording').hidden = !(r?.recording || recordingRoom === S.room);
  if (!sig.isOpen) { el.textContent = ''; return; }
  // Only public rooms are listed: about one that is not, the list says nothing.
  if (!r) { el.textContent = ''; return; }
  const n = r.participants;
  el.textContent = !n ? t('prejoin.nobody')
    : r && n >= r.capacity ? t('prejoin.full', { n, cap: r.capacity })
      : n === 1 ? t('prejoin.one') : t('prejoin.many', { n });
}

/**
 * The room whose `join` the server answered `recording_consent` (it records, and is not on the
 * public list, so the page could not say so before): the pre-join step says it now, and the next
 * Join accepts it.
 */
let recordingRoom = '';

/**
 * `recording_ok` for a join of `room` once the person has been shown that it is being recorded
 * (the notice on the pre-join step is up).
 * @param {string} room
 */
function recordingConsent(room) {
  return room === S.room && !$('#prejoin-recording').hidden ? { recording_ok: true } : {};
}

/** @param {string} room */
async function openPrejoin(room) {
  S.room = room;
  host.prejoinOpened(room);
  $('#prejoin-room').textContent = room;
  $('#prejoin-name-slot').append($('#name-field'));
  $('#device-home').append($('#device-settings'));
  setView('prejoin');
  if (sig.isOpen) sig.watchRooms(); // for "N people are in this room"
  renderPresence();
  /** @type {HTMLButtonElement} */ ($('#join-button')).disabled = false;
  const startCamOff = /** @type {HTMLInputElement} */ ($('#start-camera-off')).checked;
  const startMuted = /** @type {HTMLInputElement} */ ($('#start-muted')).checked;
  media.camOn = !startCamOff;
  media.setMicOn(!startMuted);
  setPrejoinNotes(['prejoin.checking']);
  // The connection check runs beside the camera prompt and never holds up "Join".
  renderChecks();
  if (sig.isOpen) check.startCheck();
  // Queued with the other device operations: Join waits for it (see `join`).
  await media.run(async () => {
    if (startCamOff) {
      // Ask only for the microphone; the camera stays dark until turned on.
      if (!media.micTrack && mediaAvailable) await media.openMic(media.micId).catch(() => {});
      await media.listDevices();
    } else {
      await media.start();
    }
    if (!media.camOn) media.stopCamera();
  });
  if (S.view !== 'prejoin' || S.room !== room) { devicesStartedElsewhere(); return; }
  if (media.camTrack) call.watchEnded(media.camTrack);
  if (media.micTrack) call.watchEnded(media.micTrack);
  reportMediaProblems();
  fillDevices();
  showPreview();
  meter.attach(media.micTrack);
}

/**
 * The pre-join device start finished after the page moved on. In the call (Join waited for it
 * no longer than `DEVICE_WAIT_MS`): what it opened goes into the call and is announced. Back on
 * the landing page or the check: the camera and microphone it opened are let go.
 */
function devicesStartedElsewhere() {
  if (S.inRoom || S.joining) {
    if (media.camTrack) call.watchEnded(media.camTrack);
    if (media.micTrack) call.watchEnded(media.micTrack);
    meter.attach(media.micTrack);
    if (S.inRoom) call.devicesReady();
  } else if (S.view === 'landing' || S.view === 'check') {
    media.stopAll();
  }
}

function reportMediaProblems() {
  const c = media.camError, m = media.micError;
  let code = '';
  if (c === 'media_unavailable' || m === 'media_unavailable') code = 'media_unavailable';
  else if (c === 'camera_denied' && m === 'mic_denied') code = 'media_denied';
  else if (c === 'no_camera' && m === 'no_mic') code = 'no_devices';
  else code = c || m;
  const notes = [];
  if (code === 'media_unavailable' || code === 'media_denied' || code === 'no_devices') notes.push(`error.${code}`);
  else {
    if (c) notes.push(`error.${c}`);
    if (m) notes.push(`error.${m}`);
  }
  if (c && !m && media.micTrack) notes.push('prejoin.audioOnly');
  else if (c && m && !['media_unavailable', 'media_denied', 'no_devices'].includes(code)) notes.push('prejoin.watchOnly');
  if (!notes.length) notes.push('prejoin.ok');
  setPrejoinNotes(notes);
  if (code) showError(code, errorVars(code));
  else hideError(MEDIA_CODES);
  /** @type {HTMLInputElement} */ ($('#start-muted')).disabled = !media.micTrack;
  const camOff = /** @type {HTMLInputElement} */ ($('#start-camera-off'));
  camOff.disabled = !media.camTrack && !camOff.checked;
}

/** @param {string[]} keys */
function setPrejoinNotes(keys) {
  prejoinNotes = keys;
  const el = $('#prejoin-notice');
  el.textContent = keys.map((k) => t(k, errorVars(k.replace(/^error\./, '')))).join(' ');
  el.classList.toggle('warn', keys.some((k) => k.startsWith('error.')));
}

function showPreview() {
  const on = media.camOn && !!media.camTrack;
  const name = cleanName(nameInput.value, 1000) || '?';
  const ini = $('#preview-initials');
  ini.textContent = initials(name);
  ini.style.backgroundColor = colourFor(name);
  $('#preview-off').hidden = on;
  const offText = $('#preview-off-text');
  offText.dataset.i18n = media.camOn && media.camError ? 'prejoin.noCamera' : 'prejoin.cameraOff';
  offText.textContent = t(offText.dataset.i18n);
  preview.hidden = !on;
  if (on && media.camTrack) {
    const cur = /** @type {MediaStream|null} */ (preview.srcObject);
    if (!cur || cur.getVideoTracks()[0] !== media.camTrack) preview.srcObject = new MediaStream([media.camTrack]);
    preview.play().catch(() => {});
  } else {
    preview.srcObject = null;
  }
}

function stopPreview() {
  preview.srcObject = null;
  meter.detach();
}

/** How long Join waits for the camera and microphone to start (a permission prompt nobody answers). */
const DEVICE_WAIT_MS = 10000;
/** The device error on the banner came up while Join waited: `joined` leaves it up. */
let keepMediaError = false;

async function join() {
  const name = cleanName(nameInput.value, sig.limits.maxNameChars);
  if (!name) { showError('invalid_name', errorVars('invalid_name')); nameInput.focus(); return; }
  saveName(name);
  if (!sig.isOpen) { showError('ws_failed'); return; }
  const room = S.room;
  const button = /** @type {HTMLButtonElement} */ ($('#join-button'));
  S.joining = true;
  button.disabled = true;
  hideError(JOIN_CODES);
  // Arrive with the devices chosen: wait for the camera start (or a device switch) that is still
  // under way, so that `join` announces them and the call starts with them.
  keepMediaError = false;
  if (media.pending > 0) {
    const notes = prejoinNotes;
    setPrejoinNotes(['prejoin.joinWhenReady']);
    button.setAttribute('aria-busy', 'true');
    await media.settled(DEVICE_WAIT_MS);
    button.removeAttribute('aria-busy');
    // (Unless the device start has said how it went by now.)
    if (prejoinNotes[0] === 'prejoin.joinWhenReady') setPrejoinNotes(notes);
    // A camera or microphone that failed while Join waited: the banner came up just now, so it
    // stays up in the room, where the person looks next.
    keepMediaError = MEDIA_CODES.includes(bannerCode());
  }
  if (S.view !== 'prejoin' || S.room !== room) { S.joining = false; return; } // the user went elsewhere
  if (!sig.isOpen) { S.joining = false; button.disabled = false; showError('ws_failed'); return; }
  const st = call.mediaState();
  sig.join(room, name, st.audio, st.video, { ...host.joinAuth(), ...recordingConsent(room) });
}

// ---------------------------------------------------------------- signalling

function wireSignalling() {
  sig.on('open', (/** @type {import('./protocol.js').WelcomeMsg} */ m) => {
    reconnectDelay = 500;
    if (S.reconnecting) {
      S.reconnecting = false;
      call.setReconnecting(false);
      if (CONNECTION_CODES.includes(bannerCode())) hideError();
      if (m.resumed) {
        // Same session, same room: the messages we missed follow. Media may have broken with
        // the network: restart ICE where it did (everywhere after a network change).
        // After `bye server_shutdown` the server handed our session to its next start
        // (docs/protocol.md, "Server restarts"); its SFU starts afresh.
        S.resumes += 1;
        notice(t('notice.resumed'));
        call.restartIce(networkChanged, S.byeReason === 'server_shutdown');
        networkChanged = false;
        S.byeReason = '';
        return;
      }
      if (S.inRoom || S.rejoining) {
        // The session is gone (the server restarted, or we were away too long): join again.
        const st = call.mediaState();
        call.teardownCall();
        if (!S.rejoining) S.rejoins += 1;
        S.rejoining = true;
        call.setReconnecting(true);
        // (They were in the meeting, and saw whether it records.)
        sig.join(S.room, S.name, st.audio, st.video, { ...host.joinAuth(), recording_ok: true });
        return;
      }
    }
    if (CONNECTION_CODES.includes(bannerCode())) {
      hideError();
      if (S.everConnected) notice(t('notice.reconnected'));
    }
    S.everConnected = true;
    S.byeReason = '';
    if (S.view === 'landing' || S.view === 'prejoin') sig.watchRooms();
    renderRooms();
    if (S.view === 'prejoin' || S.view === 'check') check.ensureCheck();
  });
  sig.on('rooms', (m) => {
    lastRooms = m.rooms;
    if (S.view === 'landing') renderRooms();
    if (S.view === 'prejoin') renderPresence();
  });
  sig.on('joined', (m) => {
    // Already in a room: the server moved us to another room of the meeting (breakout rooms).
    const moving = S.inRoom && !S.rejoining;
    S.joining = false;
    // In the room the sign says whether it records; back on pre-join the server asks again.
    recordingRoom = '';
    if (S.rejoining) {
      S.rejoining = false;
      call.setReconnecting(false);
      notice(t('notice.rejoined'));
    }
    meter.attach(media.micTrack);
    preview.srcObject = null;
    // The red buttons say the rest (unless a device failed just as Join was clicked).
    hideError([...JOIN_CODES, ...(keepMediaError ? [] : MEDIA_CODES), 'not_in_room']);
    keepMediaError = false;
    setView('room');
    if (moving) { call.moveCall(m); return; }
    call.enterCall(m);
    /** @type {HTMLElement} */ ($('#mic-button')).focus();
  });
  sig.on('left', () => { /* already torn down */ });
  sig.on('peer_joined', (m) => {
    call.addRemote(m.peer, false);
    notice(t('notice.joined', { name: m.peer.name }));
  });
  sig.on('peer_left', (m) => {
    const rec = call.removeRemote(m.id);
    // (`breakout`: they went to another room of the meeting, and did not leave it.)
    if (rec && m.reason !== 'breakout') notice(t('notice.left', { name: rec.name }));
  });
  sig.on('peer_updated', (m) => call.onPeerUpdated(m.peer));
  sig.on('signal', (m) => call.onSignal(m));
  sig.on('topology', (m) => {
    call.onTopology(m);
    notice(t(m.reason === 'recording' ? 'notice.topologyRecording' : 'notice.topologySfu'));
  });
  sig.on('active_speaker', (m) => call.onActiveSpeaker(m));
  sig.on('file_upload', (m) => call.onFileUpload(m));
  sig.on('file', (m) => call.onSharedFile(m));
  sig.on('chat', (m) => call.onChat(m.message));
  sig.on('ice_servers', (m) => call.onIceServers(m));
  sig.on('error', (m) => {
    if (m.request === 'relay_check') return; // the connectivity check says it (check.js)
    if (m.request === 'watch_rooms') {
      if (m.code !== 'token_required') return;
      // No list for this page: the landing page says why instead.
      roomsHidden = true;
      lastRooms = [];
      renderRooms();
      renderPresence();
      return;
    }
    if (m.request === 'join' && S.rejoining) {
      // Could not get back in (locked now, full, …): back to the pre-join step, which says why.
      S.rejoining = false;
      call.setReconnecting(false);
      openPrejoin(S.room);
    }
    if (m.request === 'join') {
      S.joining = false;
      /** @type {HTMLButtonElement} */ ($('#join-button')).disabled = false;
    }
    if (m.request === 'join' && m.code === 'recording_consent') {
      // Being recorded: the pre-join step says so, and Join (again) accepts it.
      recordingRoom = S.room;
      renderPresence();
      // On a phone the banner and the notice push Join down: the notice and Join stay in view.
      $('#prejoin-recording').scrollIntoView({ block: 'start' });
    }
    if (m.code === 'unknown_peer') return; // a peer left while we were still signalling to it
    // The answer to something sent while still in the room (a candidate, a mute) that arrived after
    // the page left it (the meeting ended, a removal): the page knows, and what it says about why
    // it is out ("the host ended the meeting") stays on screen.
    if (m.code === 'not_in_room' && !S.inRoom) return;
    if (call.onMediaError(m)) return; // the SFU connection starts over by itself
    if (recording.onError(m)) return; // record, stop_recording, delete_recording: said in their words
    if (breakout.onError(m)) return; // breakout requests: said in their words
    if (host.onError(m)) return; // the password field says it
    if (m.request === 'file_offer') call.onFileOfferRefused();
    showError(m.code, errorVars(m.code), m.message);
  });
  sig.on('bye', (m) => {
    S.byeReason = m.reason;
    showError(m.reason);
  });
  sig.on('close', (ev) => {
    const code = S.byeReason || (ev.wasOpen ? 'ws_closed' : 'ws_failed');
    S.joining = false;
    if (S.inRoom || S.rejoining) {
      // Keep the call on screen and get the session back (docs/protocol.md, "Resuming a
      // session"); if it cannot be resumed, `open` joins the room again.
      // 1013 without a `bye`: our meeting is moving to another server node (docs/protocol.md,
      // "Several nodes"); it is back within seconds, so ask every second rather than backing off.
      const moving = ev.code === 1013 && !S.byeReason;
      const wait = moving ? MOVING_RETRY_MS : S.reconnecting ? reconnectDelay : 250;
      S.reconnecting = true;
      call.setReconnecting(true);
      if (reconnectTimer) clearTimeout(reconnectTimer);
      reconnectTimer = setTimeout(() => { reconnectTimer = null; sig.connect({ resume: true }); }, wait);
      if (!moving) reconnectDelay = Math.min(reconnectDelay * 2, 5000);
      return;
    }
    showError(code, errorVars(code));
    renderRooms();
    // A check that could not start says so (the server is unreachable), instead of spinning.
    if ((S.view === 'prejoin' || S.view === 'check') && !check.lastResult()) check.startCheck();
    if (reconnectTimer) clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(() => { reconnectTimer = null; sig.connect(); }, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, 10000);
  });
}

/**
 * The device's network changed (Wi-Fi to mobile data, a new address, back online): the
 * WebSocket and the media paths may be dead without knowing it yet. Start over on the new
 * network at once, keeping the session; ICE restarts once signalling is back.
 */
function onNetworkChange() {
  if (!S.inRoom || S.reconnecting) return;
  networkChanged = true;
  sig.drop();
}

function leave() {
  if (S.inRoom) sig.leave();
  S.reconnecting = S.rejoining = false;
  call.setReconnecting(false);
  call.teardownCall();
  history.pushState({}, '', '/');
  showLanding();
}

// ---------------------------------------------------------------- controls

function wireControls() {
  const langSelect = /** @type {HTMLSelectElement} */ ($('#lang-select'));
  langSelect.value = i18n.getLang();
  langSelect.addEventListener('change', () => i18n.setLang(langSelect.value));
  i18n.onLangChange(() => {
    langSelect.value = i18n.getLang();
    renderRooms();
    renderBanner();
    setPrejoinNotes(prejoinNotes);
    renderPresence();
    fillDevices();
    call.rerenderCall();
    renderChecks();
    if (S.view === 'check') setView('check'); // the title
  });
  check.onCheckChange(renderChecks);
  // Outside a room, a server that admits only token holders lets only them test its relay.
  check.setCheckAuth(() => ({ room: S.room, token: host.joinAuth().token }));
  $('#check-again').addEventListener('click', () => { check.startCheck({ force: true }); });
  // Links to /check inside the page open the check view without a reload; its Back returns.
  for (const a of document.querySelectorAll('a[href="/check"]')) {
    a.addEventListener('click', (e) => {
      if (S.inRoom) return;
      e.preventDefault();
      history.pushState({ back: true }, '', '/check');
      showCheck();
    });
  }
  $('#check-home').addEventListener('click', (e) => {
    e.preventDefault();
    if (history.state && history.state.back) { history.back(); return; }
    history.pushState({}, '', '/');
    showLanding();
  });

  $('#error-close').addEventListener('click', () => hideError());
  $('#enter-form').addEventListener('submit', (e) => { e.preventDefault(); goToRoom(roomInput.value); });
  nameInput.addEventListener('input', () => { if (S.view === 'prejoin') showPreview(); });
  $('#prejoin-back').addEventListener('click', () => { history.pushState({}, '', '/'); showLanding(); });
  $('#join-button').addEventListener('click', () => join());
  $('#brand-link').addEventListener('click', (e) => {
    e.preventDefault();
    if (S.inRoom) return; // the Leave button leaves a call
    history.pushState({}, '', '/');
    showLanding();
  });

  $('#start-muted').addEventListener('change', (e) => {
    media.setMicOn(!(/** @type {HTMLInputElement} */ (e.target)).checked);
  });
  $('#start-camera-off').addEventListener('change', (e) => media.run(async () => {
    const off = /** @type {HTMLInputElement} */ (e.target).checked;
    media.camOn = !off;
    if (off) media.stopCamera();
    else if (!media.camTrack) {
      try { call.watchEnded(await media.openCamera(media.camId)); } catch { showError(media.camError, errorVars(media.camError)); }
    }
    if (S.view === 'prejoin') showPreview();
    else if (S.inRoom) call.devicesReady(); // it finished after Join
  }));


  initDevices({ meter, refresh: () => { if (S.view === 'prejoin') showPreview(); } });

  $('#mic-button').addEventListener('click', () => call.toggleMic());
  $('#camera-button').addEventListener('click', () => call.toggleCamera());
  const share = $('#share-button');
  if (!navigator.mediaDevices || !('getDisplayMedia' in navigator.mediaDevices)) share.hidden = true;
  share.addEventListener('click', () => call.toggleShare());
  $('#leave-button').addEventListener('click', () => leave());
  $('#copy-link').addEventListener('click', async () => {
    const url = `${location.origin}/r/${encodeURIComponent(S.room)}`;
    try { await navigator.clipboard.writeText(url); notice(t('notice.copied')); } catch { notice(url); }
  });
  $('#chat-button').addEventListener('click', () => call.togglePanel('chat'));
  $('#layout-button').addEventListener('click', () => call.toggleSpeakerView());
  $('#people-button').addEventListener('click', () => call.togglePanel('people'));
  for (const b of document.querySelectorAll('.panel-close')) b.addEventListener('click', () => call.setPanel(''));

  const dlg = /** @type {HTMLDialogElement} */ ($('#settings-dialog'));
  $('#settings-button').addEventListener('click', async () => {
    $('#settings-slot').append($('#device-settings'));
    dlg.showModal();
    await media.listDevices();
    fillDevices();
  });
  $('#settings-close').addEventListener('click', () => dlg.close());
  dlg.addEventListener('click', (e) => { if (e.target === dlg) dlg.close(); }); // backdrop

  $('#chat-form').addEventListener('submit', (e) => { e.preventDefault(); call.sendChat(); });
  $('#chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); call.sendChat(); }
  });
  const fileInput = /** @type {HTMLInputElement} */ ($('#file-input'));
  fileInput.addEventListener('change', () => {
    if (fileInput.files) call.sendFiles(Array.from(fileInput.files));
    fileInput.value = '';
  });

  // Drag and drop onto the room.
  const room = $('#view-room'), overlay = $('#drop-overlay');
  let depth = 0;
  const hasFiles = (/** @type {DragEvent} */ e) => !!e.dataTransfer && Array.from(e.dataTransfer.types).includes('Files');
  room.addEventListener('dragenter', (e) => { if (!hasFiles(e)) return; depth++; overlay.hidden = false; });
  room.addEventListener('dragleave', () => { if (--depth <= 0) { depth = 0; overlay.hidden = true; } });
  window.addEventListener('dragover', (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener('drop', (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    if (S.inRoom && e.dataTransfer) call.sendFiles(Array.from(e.dataTransfer.files));
  });

  document.addEventListener('keydown', (e) => {
    if (S.view !== 'room') return;
    if (e.key === 'Escape' && S.panel && !dlg.open) { call.setPanel(''); return; }
    if ((e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey) {
      const k = e.key.toLowerCase();
      if (k === 'd') { e.preventDefault(); call.toggleMic(); }
      else if (k === 'e') { e.preventDefault(); call.toggleCamera(); }
    }
  });

  new ResizeObserver(() => call.relayout()).observe($('#tiles'));
  window.addEventListener('popstate', () => {
    if (S.inRoom) { sig.leave(); call.teardownCall(); }
    route();
  });
  window.addEventListener('pagehide', () => { if (S.inRoom) sig.leave(); });

  const tick = () => { $('#clock').textContent = new Date().toLocaleTimeString(i18n.getLang(), { hour: '2-digit', minute: '2-digit' }); };
  tick();
  setInterval(tick, 10000);
  i18n.onLangChange(tick);
}

// ---------------------------------------------------------------- boot

function boot() {
  i18n.apply();
  try { nameInput.value = localStorage.getItem(NAME_KEY) || ''; } catch { /* ignore */ }
  exposeDebugHandle();
  wireControls();
  wireSignalling();
  window.addEventListener('online', onNetworkChange);
  /** @type {any} */ (navigator).connection?.addEventListener?.('change', onNetworkChange);
  host.init({ setView, toPrejoin: () => { call.teardownCall(); openPrejoin(S.room); } });
  breakout.init();
  if (!window.isSecureContext || !mediaAvailable) console.warn('huddle: camera and microphone need HTTPS or localhost');
  sig.connect();
  route();
}

boot();
