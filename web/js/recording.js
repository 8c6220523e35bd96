// Recording a meeting (issue 18): the red "Recording 01:23" sign in the call's header, for
// everyone in the room; a notice when a recording starts or stops (and why); and for hosts and
// co-hosts the Record / Stop recording buttons and the room's recordings in the people panel
// (state, progress, download, delete). What people see before they join ("This meeting is being
// recorded" on pre-join and in the waiting view) is shown by app.js and host.js from `rooms` and
// `waiting`. The server decides who may record and says what happens; this only shows it.
import { t, getLang, has, onLangChange, formatBytes } from './i18n.js';
import { sig, S } from './core.js';
import { $, notice, showError, hideError } from './ui.js';

/** @typedef {import('./protocol.js').RecordingInfo} RecordingInfo */
/** @typedef {import('./protocol.js').RecordingEntry} RecordingEntry */

/** The client messages whose errors this module says (with their own sentences where there are). */
const REQUESTS = ['record', 'stop_recording', 'delete_recording'];
/** Errors of a Record that a later Record clears from the banner. */
const RECORD_CODES = ['recording_unavailable', 'recording_storage_full', 'not_allowed', 'rate_limited'];
/** After this long without an answer to Record / Stop recording, the buttons work again. */
const PENDING_MS = 15000;

/** The room's recordings as the server last listed them (hosts and co-hosts only). @type {RecordingEntry[]} */
let list = [];
/** When (local clock) this page learned of the recording in progress. */
let learnedAt = 0;
/** Record or Stop recording was asked for and not answered yet. @type {''|'record'|'stop_recording'} */
let pending = '';
/** @type {ReturnType<typeof setTimeout>|null} */
let pendingTimer = null;
/** @type {ReturnType<typeof setInterval>|null} */
let ticker = null;
/** This server said it does not record meetings (`recording_unavailable`): Record is not offered again in this call. */
let unavailable = false;
/** Recordings whose deletion was asked for, until the list no longer has them. */
const deleting = new Set();
/** @type {(text: string, ok: string) => Promise<boolean>} */
let confirmAction = async () => false;

const isMod = () => S.role === 'host' || S.role === 'cohost';

// ---------------------------------------------------------------- formatting

/**
 * A length as "mm:ss", or "h:mm:ss" from an hour on; never negative.
 * @param {number} ms
 */
export function formatDuration(ms) {
  const s = Math.max(0, Math.floor((Number(ms) || 0) / 1000));
  const two = (/** @type {number} */ n) => String(n).padStart(2, '0');
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = s % 60;
  return h ? `${h}:${two(m)}:${two(sec)}` : `${two(m)}:${two(sec)}`;
}

/** When a recording started, in the page's language and the local time zone. @param {number} ms */
function startedWhen(ms) {
  return new Date(ms).toLocaleString(getLang(), { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/**
 * When the recording in progress started, by the local clock: the server's `startedAt`, but never
 * later than the moment this page heard of it (a clock behind the server's would count from
 * below zero).
 * @param {RecordingInfo} rec
 */
function startOf(rec) {
  const at = Number(rec.startedAt);
  return Number.isFinite(at) ? Math.min(at, learnedAt) : learnedAt;
}

/** A link the page may offer: http(s) only (a `javascript:` URL is not a download). @param {unknown} url */
function safeUrl(url) {
  if (typeof url !== 'string' || !url) return '';
  try {
    const u = new URL(url, location.href);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : '';
  } catch { return ''; }
}

/** @param {{id?: string, name?: string}|undefined} who */
function nameOf(who) {
  if (!who) return '';
  if (who.id && who.id === S.selfId) return S.name;
  return (typeof who.name === 'string' && who.name) || (who.id ? S.peers.get(who.id)?.name ?? '' : '');
}

// ---------------------------------------------------------------- the room is being recorded

/** @param {RecordingInfo} rec */
function startedNotice(rec) {
  const by = rec.startedBy;
  if (by && by.id === S.selfId) return t('recording.startedYou');
  const name = nameOf(by);
  return name ? t('recording.started', { name }) : t('recording.startedAnon');
}

/** @param {import('./protocol.js').RecordingMsg['stopped']} stopped */
function stoppedNotice(stopped) {
  const reason = stopped?.reason ?? 'stopped';
  if (reason !== 'stopped') {
    const key = `recording.stop.${reason}`;
    return has(key) ? t(key) : t('recording.stoppedAnon');
  }
  const by = stopped?.by;
  if (by && by.id === S.selfId) return t('recording.stoppedYou');
  const name = nameOf(by);
  return name ? t('recording.stoppedBy', { name }) : t('recording.stoppedAnon');
}

/**
 * `recording`: the room is being recorded (`recording`), or no longer (`null`, `stopped` says why).
 * @param {import('./protocol.js').RecordingMsg} m
 */
export function onRecording(m) {
  if (!S.inRoom) return;
  const was = S.recording;
  const rec = m.recording && typeof m.recording.id === 'string' ? m.recording : null;
  const fresh = !!rec && (!was || was.id !== rec.id);
  if (fresh) learnedAt = Date.now();
  S.recording = rec;
  if (pending) clearPending();
  if (fresh && rec) notice(startedNotice(rec));
  else if (!rec && was) notice(stoppedNotice(m.stopped));
  render();
}

function tick() {
  const rec = S.recording;
  if (!rec) return;
  const text = formatDuration(Date.now() - startOf(rec));
  const el = $('#rec-time');
  if (el.textContent !== text) el.textContent = text;
}

function renderIndicator() {
  const rec = S.inRoom ? S.recording : null;
  const el = $('#rec-indicator');
  el.hidden = !rec;
  document.body.dataset.recording = String(!!rec);
  if (!rec) {
    if (ticker) clearInterval(ticker);
    ticker = null;
    return;
  }
  const since = new Date(startOf(rec)).toLocaleTimeString(getLang(), { hour: '2-digit', minute: '2-digit' });
  const label = t('recording.indicatorLabel', { time: since });
  el.setAttribute('aria-label', label);
  el.title = label;
  tick();
  if (!ticker) ticker = setInterval(tick, 500);
}

// ---------------------------------------------------------------- hosts: Record / Stop recording

function clearPending() {
  pending = '';
  if (pendingTimer) clearTimeout(pendingTimer);
  pendingTimer = null;
}

function toggleRecording() {
  if (!S.inRoom || !isMod() || pending) return;
  const what = S.recording ? 'stop_recording' : 'record';
  if (!(what === 'record' ? sig.record() : sig.stopRecording())) return;
  hideError(RECORD_CODES);
  pending = what;
  pendingTimer = setTimeout(() => { clearPending(); renderControls(); }, PENDING_MS);
  renderControls();
}

function renderControls() {
  const mod = S.inRoom && isMod();
  const on = !!S.recording;
  const label = t(on ? 'recording.stop' : 'recording.record');
  for (const b of /** @type {HTMLButtonElement[]} */ ([$('#record-button'), $('#record-toggle')])) {
    b.dataset.recording = String(on);
    b.disabled = !!pending;
    if (pending) b.setAttribute('aria-busy', 'true');
    else b.removeAttribute('aria-busy');
  }
  const tb = $('#record-button');
  tb.hidden = !mod || (unavailable && !on);
  if (unavailable && !on) /** @type {HTMLButtonElement} */ ($('#record-toggle')).disabled = true;
  $('#recording-unavailable').hidden = !unavailable || on;
  tb.setAttribute('aria-label', label);
  tb.title = label;
  /** @type {HTMLElement} */ ($('#record-toggle').querySelector('.record-toggle-text')).textContent = label;
  $('#recording-section').hidden = !mod;
}

/**
 * An `error` answering one of this module's messages: said in the banner (or, for a recording
 * already gone, in a notice). Returns true when it was.
 * @param {import('./protocol.js').ErrorMsg} m
 */
export function onError(m) {
  const req = m.request ?? '';
  if (!REQUESTS.includes(req)) return false;
  if (req === 'delete_recording') {
    deleting.clear();
    renderList();
    if (m.code === 'unknown_recording') { notice(t('error.unknown_recording')); return true; }
  } else {
    clearPending();
    if (m.code === 'recording_unavailable') unavailable = true;
    renderControls();
  }
  const key = has(`error.${req}.${m.code}`) ? `error.${req}.${m.code}` : `error.${m.code}`;
  showError(m.code, {}, m.message, key);
  return true;
}

// ---------------------------------------------------------------- hosts: the room's recordings

/** @param {import('./protocol.js').RecordingsMsg} m */
export function onRecordings(m) {
  list = Array.isArray(m.recordings) ? m.recordings.filter((r) => r && typeof r.id === 'string') : [];
  for (const id of [...deleting]) if (!list.some((r) => r.id === id)) deleting.delete(id);
  renderList();
}

/** @param {string} tag @param {string} cls */
function el(tag, cls) {
  const e = document.createElement(tag);
  e.className = cls;
  return e;
}

/** One row of the list, made once per recording and updated in place (focus stays on its buttons). @param {RecordingEntry} r */
function makeRow(r) {
  const li = /** @type {HTMLLIElement} */ (el('li', 'recording-item'));
  li.dataset.id = r.id;
  const head = el('div', 'rec-head');
  head.append(el('span', 'rec-when'), el('span', 'rec-state'));
  const meta = el('div', 'rec-meta');
  meta.append(el('span', 'rec-length'), el('span', 'rec-size'));
  const bar = /** @type {HTMLProgressElement} */ (el('progress', 'rec-progress'));
  bar.max = 1;
  const note = el('p', 'rec-note');
  const actions = el('div', 'rec-actions');
  const dl = /** @type {HTMLAnchorElement} */ (el('a', 'btn small ghost rec-download'));
  const del = /** @type {HTMLButtonElement} */ (el('button', 'btn small ghost danger-text rec-delete'));
  del.type = 'button';
  del.addEventListener('click', () => askDelete(li.dataset.id ?? ''));
  actions.append(dl, del);
  li.append(head, meta, bar, note, actions);
  return li;
}

/** @param {HTMLLIElement} li @param {RecordingEntry} r */
function updateRow(li, r) {
  const q = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (li.querySelector(sel));
  const state = r.state;
  const when = startedWhen(r.startedAt);
  li.dataset.state = state;
  q('.rec-when').textContent = when;
  const pct = Math.round(Math.min(1, Math.max(0, Number(r.progress) || 0)) * 100);
  const stateKey = `recording.state.${state}`;
  const st = q('.rec-state');
  st.dataset.state = state;
  st.textContent = state === 'composing' ? t(stateKey, { pct }) : has(stateKey) ? t(stateKey) : String(state);
  const length = q('.rec-length');
  length.textContent = formatDuration(r.durationMs);
  length.title = t('recording.length');
  const size = q('.rec-size');
  size.textContent = formatBytes(Math.max(0, Number(r.bytes) || 0));
  size.title = t('recording.size');
  const bar = /** @type {HTMLProgressElement} */ (q('.rec-progress'));
  bar.hidden = state !== 'composing';
  bar.value = pct / 100;
  bar.setAttribute('aria-label', t(stateKey, { pct }));
  const noteKey = `recording.note.${state}`;
  const note = q('.rec-note');
  note.hidden = !has(noteKey);
  note.textContent = has(noteKey) ? t(noteKey) : '';
  const url = state === 'ready' ? safeUrl(r.url) : '';
  const dl = /** @type {HTMLAnchorElement} */ (q('.rec-download'));
  dl.hidden = !url;
  if (url) {
    if (dl.href !== url) dl.href = url;
    dl.download = `${S.room || 'huddle'} ${r.id}.webm`;
  } else dl.removeAttribute('href');
  dl.textContent = t('recording.download');
  dl.setAttribute('aria-label', t('recording.downloadLabel', { time: when }));
  const del = /** @type {HTMLButtonElement} */ (q('.rec-delete'));
  del.hidden = state === 'recording';
  del.disabled = deleting.has(r.id);
  del.textContent = t('recording.delete');
  del.setAttribute('aria-label', t('recording.deleteLabel', { time: when }));
}

function renderList() {
  const ul = $('#recordings-list');
  const show = S.inRoom && isMod();
  const items = show ? list : [];
  $('#recordings-empty').hidden = !show || items.length > 0;
  /** @type {Map<string, HTMLLIElement>} */
  const old = new Map();
  for (const li of /** @type {NodeListOf<HTMLLIElement>} */ (ul.querySelectorAll(':scope > li'))) old.set(li.dataset.id ?? '', li);
  const rows = items.map((r) => {
    const li = old.get(r.id) ?? makeRow(r);
    old.delete(r.id);
    updateRow(li, r);
    return li;
  });
  for (const li of old.values()) li.remove();
  const same = rows.length === ul.children.length && rows.every((li, i) => ul.children[i] === li);
  if (!same) ul.replaceChildren(...rows);
}

/** @param {string} id */
async function askDelete(id) {
  const r = list.find((x) => x.id === id);
  if (!r || deleting.has(id)) return;
  const ok = await confirmAction(t('recording.deleteConfirm', { time: startedWhen(r.startedAt), length: formatDuration(r.durationMs) }), t('recording.delete'));
  if (!ok || !S.inRoom || !isMod()) return;
  if (sig.deleteRecording(id)) {
    deleting.add(id);
    renderList();
  }
}

// ---------------------------------------------------------------- wiring

function render() {
  renderIndicator();
  renderControls();
  renderList();
}

/** `joined`: a recording in progress shows at once (and is said). @param {import('./protocol.js').JoinedMsg} msg */
function enter(msg) {
  const rec = msg.recording && typeof msg.recording.id === 'string' ? msg.recording : null;
  learnedAt = Date.now();
  S.recording = rec;
  clearPending();
  if (rec) notice(t('recording.consent'));
  render();
}

/** Our role changed: a participant no longer has the recordings (nor their links). */
export function roleChanged() {
  if (!isMod()) { list = []; deleting.clear(); }
  render();
}

/** Out of the room. */
export function teardown() {
  S.recording = null;
  unavailable = false;
  list = [];
  deleting.clear();
  clearPending();
  render();
}

/**
 * @param {{confirm: (text: string, ok: string) => Promise<boolean>}} deps
 *   confirm asks in the page's confirmation dialog (host.js)
 */
export function init(deps) {
  confirmAction = deps.confirm;
  sig.on('recording', onRecording);
  sig.on('recordings', onRecordings);
  sig.on('joined', enter);
  $('#record-button').addEventListener('click', toggleRecording);
  $('#record-toggle').addEventListener('click', toggleRecording);
  onLangChange(render);
  render();
}
