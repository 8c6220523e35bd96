// Roles and hosting: invite and operator tokens from the address, the password prompt and the
// waiting view before the call; in the call, role badges, what a host did to us (muted, removed,
// meeting ended), and for hosts and co-hosts the people panel's waiting room, per-person menu and
// meeting settings. The server enforces every rule; this only offers what the role allows.
import { t, onLangChange } from './i18n.js';
import { sig, media, S, errorVars } from './core.js';
import { $, icon, notice, showError, hideError } from './ui.js';
import * as call from './call.js';
import * as hands from './hands.js';
import * as recording from './recording.js';

/** @typedef {import('./protocol.js').RoomSettings} RoomSettings */
/** @typedef {import('./protocol.js').Knocker} Knocker */
/** @typedef {import('./protocol.js').Role} Role */

/** Errors that keep the person on the pre-join step with a password field. */
const PASSWORD_CODES = ['password_required', 'wrong_password', 'too_many_attempts'];

/** The room's settings as the server last told us. @type {RoomSettings} */
let settings = { locked: false, waitingRoom: false, allowUnmute: false, hasPassword: false, listed: false };
/** Who waits to be let in (hosts and co-hosts only). @type {Knocker[]} */
let waiting = [];
/** What a host turned off for us, until we may and do turn it on again. */
const held = { audio: false, video: false, screen: false };
/** The token from the address (`#invite=`, `#token=` or `?token=`), sent with every join. */
let token = '';
/** An invite is for one room (the one in the address it came with); an operator's token may be for any. */
let tokenRoom = '';
/** The room whose join asked for the password shown. */
let passwordRoom = '';
/** The last invite link made here. */
let inviteLink = '';
/** @type {{setView: (v: 'prejoin'|'waiting') => void, toPrejoin: () => void}} */
let app = { setView: () => {}, toPrejoin: () => {} };

const isHost = () => S.role === 'host';
const isMod = () => S.role === 'host' || S.role === 'cohost';

/** @param {string} id */
function nameOf(id) {
  if (id === S.selfId) return S.name;
  return S.peers.get(id)?.name ?? '';
}

// ---------------------------------------------------------------- before the call

/**
 * Takes a token out of the address (so a shared or bookmarked address does not carry it) and
 * keeps it for every join of this page.
 */
function takeTokenFromUrl() {
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  const query = new URLSearchParams(location.search);
  const invite = hash.get('invite');
  const found = invite || hash.get('token') || query.get('token') || '';
  if (!found) return;
  token = found.trim();
  if (invite) {
    const m = /^\/r\/(.+)$/.exec(location.pathname);
    try { tokenRoom = m ? decodeURIComponent(m[1]).trim() : ''; } catch { tokenRoom = m ? m[1].trim() : ''; }
  }
  query.delete('token');
  const q = query.toString();
  history.replaceState(history.state, '', `${location.pathname}${q ? `?${q}` : ''}`);
}

/** What `join` carries besides the name: the password typed, the token from the address. */
export function joinAuth() {
  const field = $('#password-field');
  const pw = /** @type {HTMLInputElement} */ ($('#password-input')).value;
  /** @type {{password?: string, token?: string}} */
  const auth = {};
  if (!field.hidden && pw && passwordRoom === S.room) auth.password = pw;
  if (token && (!tokenRoom || tokenRoom === S.room)) auth.token = token;
  return auth;
}

/** @param {string} code  '' hides the field */
function showPasswordField(code) {
  const field = $('#password-field');
  const input = /** @type {HTMLInputElement} */ ($('#password-input'));
  if (!code) {
    field.hidden = true;
    delete field.dataset.code;
    input.value = '';
    return;
  }
  field.hidden = false;
  field.dataset.code = code;
  passwordRoom = S.room;
  renderPasswordHint();
  if (code === 'wrong_password') input.select();
  input.focus();
}

function renderPasswordHint() {
  const code = $('#password-field').dataset.code;
  $('#password-hint').textContent = code ? t(`error.${code}`) : '';
}

/**
 * An error from the server that this module shows itself. Returns true when the banner should
 * stay as it is.
 * @param {import('./protocol.js').ErrorMsg} m
 */
export function onError(m) {
  if (m.request === 'join' && m.code === 'invite_revoked') {
    // The link's token opens nothing any more: the next join goes without it (with the password,
    // or as anyone would); the banner says why.
    token = '';
    tokenRoom = '';
  }
  if (m.request === 'join' && PASSWORD_CODES.includes(m.code)) {
    if (S.view === 'waiting') app.setView('prejoin');
    hideError();
    showPasswordField(m.code);
    return true;
  }
  if (m.request === 'join' && S.view === 'waiting') app.setView('prejoin'); // knock_denied and the like
  if (m.code === 'muted_by_host') {
    // The server kept it off: so do we (the buttons show it off again).
    const st = call.mediaState();
    if (st.audio) media.setMicOn(false);
    if (st.video) call.toggleCamera();
    if (st.screen) call.stopShare();
    call.announce();
  }
  return false;
}

/** The pre-join step opened for `room`: a password asked for another room goes away. @param {string} room */
export function prejoinOpened(room) {
  if (passwordRoom !== room) showPasswordField('');
}

/** @param {import('./protocol.js').WaitingMsg} m */
function onWaiting(m) {
  $('#waiting-room-name').textContent = m.room;
  $('#waiting-recording').hidden = !m.recording;
  app.setView('waiting');
  /** @type {HTMLElement} */ ($('#waiting-cancel')).focus();
}

function cancelWaiting() {
  if (S.view !== 'waiting') return;
  sig.leave();
  S.joining = false;
  app.setView('prejoin');
  /** @type {HTMLButtonElement} */ ($('#join-button')).disabled = false;
  /** @type {HTMLElement} */ ($('#join-button')).focus();
}

// ---------------------------------------------------------------- in the call: what happens to us

/** @param {import('./protocol.js').Peer} p  a `peer_updated` about ourselves */
function selfUpdated(p) {
  const was = S.role;
  S.role = p.role;
  hands.selfUpdated(p);
  if (was !== p.role) {
    notice(t(p.role === 'host' ? 'role.nowHost' : p.role === 'cohost' ? 'role.nowCohost' : 'role.nowParticipant'));
    renderHostUi();
  }
}

/** May we turn this on, or did a host turn it off (and the room does not allow it)? @param {'audio'|'video'|'screen'} what */
function mayTurnOn(what) {
  if (!held[what]) return true;
  if (settings.allowUnmute) { held[what] = false; return true; }
  showError('muted_by_host', errorVars('muted_by_host'));
  return false;
}

/** @param {import('./protocol.js').ModeratedMsg} m */
function onModerated(m) {
  const by = nameOf(m.by) || t('role.host');
  if (m.action === 'mute') {
    held.audio = true;
    if (call.mediaState().audio) { media.setMicOn(false); call.announce(); }
    notice(t('mod.muted', { name: by }));
  } else if (m.action === 'stop_video') {
    held.video = true;
    if (media.camOn && media.camTrack) call.toggleCamera();
    notice(t('mod.stoppedVideo', { name: by }));
  } else if (m.action === 'stop_screen') {
    held.screen = true;
    call.stopShare();
    notice(t('mod.stoppedScreen', { name: by }));
  } else if (m.action === 'lower_hand') {
    notice(t('mod.loweredHand', { name: by }));
  }
}

/** Out of the room: back to the pre-join step with the reason in the banner. @param {string} code */
function thrownOut(code) {
  const wasWaiting = S.view === 'waiting';
  S.joining = false;
  if (S.inRoom) app.toPrejoin();
  else if (wasWaiting) app.setView('prejoin');
  /** @type {HTMLButtonElement} */ ($('#join-button')).disabled = false;
  showError(code);
}

// ---------------------------------------------------------------- hosts: the people panel

/** @param {import('./protocol.js').WaitingListMsg} m */
function onWaitingList(m) {
  const before = new Set(waiting.map((k) => k.id));
  waiting = m.waiting;
  const fresh = waiting.filter((k) => !before.has(k.id));
  if (fresh.length === 1) notice(t('waiting.knock', { name: fresh[0].name }));
  else if (fresh.length > 1) notice(t('waiting.knockMany', { n: fresh.length }));
  renderWaiting();
}

function renderWaiting() {
  const show = S.inRoom && isMod();
  const section = $('#waiting-section');
  section.hidden = !show || !waiting.length;
  const badge = $('#waiting-badge');
  badge.hidden = !show || !waiting.length;
  badge.textContent = String(waiting.length);
  $('#people-button').dataset.waiting = String(show ? waiting.length : 0);
  $('#people-button').setAttribute('aria-label', show && waiting.length
    ? t('participants.waiting', { n: waiting.length }) : t('participants'));
  if (!show) { $('#waiting-list').replaceChildren(); return; }
  $('#waiting-title').textContent = t('waiting.title', { n: waiting.length });
  $('#admit-all').hidden = waiting.length < 2;
  $('#waiting-list').replaceChildren(...waiting.map((k) => {
    const li = document.createElement('li');
    li.dataset.peerId = k.id;
    const name = document.createElement('span');
    name.className = 'person-name';
    name.textContent = k.name;
    /** @param {string} cls @param {string} key @param {() => void} act */
    const action = (cls, key, act) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = `btn small ${cls}`;
      b.textContent = t(`waiting.${key}`);
      b.setAttribute('aria-label', t(`waiting.${key}Name`, { name: k.name }));
      b.addEventListener('click', act);
      return b;
    };
    li.append(name, action('primary admit', 'admit', () => sig.admit(k.id)), action('ghost deny', 'deny', () => sig.deny(k.id)));
    return li;
  }));
}

/** @param {HTMLLIElement} li @param {import('./call.js').PersonRow} p */
function personRow(li, p) {
  hands.handRow(li, p);
  li.dataset.role = p.role ?? 'participant';
  if (p.role === 'host' || p.role === 'cohost') {
    const b = document.createElement('span');
    b.className = 'person-role';
    b.dataset.role = p.role;
    b.textContent = t(p.role === 'host' ? 'role.host' : 'role.cohost');
    const you = li.querySelector('.muted') ?? li.querySelector('.person-name');
    you?.after(b);
  }
  if (!S.inRoom || !isMod() || p.id === S.selfId) return;
  if (S.role === 'cohost' && p.role === 'host') return; // a co-host cannot act on the host
  const more = document.createElement('button');
  more.type = 'button';
  more.className = 'icon-btn small person-more';
  more.setAttribute('aria-haspopup', 'menu');
  more.setAttribute('aria-expanded', String(menuFor === p.id));
  const label = t('mod.menu', { name: p.name });
  more.setAttribute('aria-label', label);
  more.title = label;
  more.append(icon('more'));
  more.addEventListener('click', () => openMenu(p.id, more));
  li.querySelector('.person-state')?.after(more);
}

// ---------------------------------------------------------------- hosts: the per-person menu

/** Whose menu is open. */
let menuFor = '';
/** Where the people panel was scrolled when the menu opened (a scroll away closes it). */
let menuScrollTop = 0;

/**
 * @param {string} id
 * @returns {{action: string, key: string, danger?: boolean}[]}
 */
function menuItems(id) {
  const rec = S.peers.get(id);
  if (!rec) return [];
  const items = [];
  if (rec.audio) items.push({ action: 'mute', key: 'mod.mute' });
  if (rec.video) items.push({ action: 'stop_video', key: 'mod.stopVideo' });
  if (rec.screen) items.push({ action: 'stop_screen', key: 'mod.stopScreen' });
  if (rec.hand) items.push({ action: 'lower_hand', key: 'mod.lowerHand' });
  if (isHost()) {
    if (rec.role === 'cohost') items.push({ action: 'role_participant', key: 'mod.removeCohost' });
    else items.push({ action: 'role_cohost', key: 'mod.makeCohost' });
    items.push({ action: 'role_host', key: 'mod.makeHost' });
  }
  items.push({ action: 'remove', key: 'mod.remove', danger: true });
  items.push({ action: 'ban', key: 'mod.ban', danger: true });
  return items;
}

/** @param {string} id @param {HTMLElement} opener */
function openMenu(id, opener) {
  const m = $('#person-menu');
  if (menuFor === id && !m.hidden) { closeMenu(true); return; }
  menuFor = id;
  const name = nameOf(id);
  m.setAttribute('aria-label', t('mod.menu', { name }));
  m.dataset.peerId = id;
  m.replaceChildren(...menuItems(id).map((it) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.setAttribute('role', 'menuitem');
    b.dataset.action = it.action;
    if (it.danger) b.classList.add('danger');
    b.textContent = t(it.key);
    b.addEventListener('click', () => { closeMenu(true); act(id, it.action); });
    return b;
  }));
  m.hidden = false;
  menuScrollTop = $('#people-panel').querySelector('.panel-body')?.scrollTop ?? 0;
  // Under (or, near the bottom, above) the button, inside the window.
  const r = opener.getBoundingClientRect();
  const mh = m.offsetHeight, mw = m.offsetWidth;
  const top = r.bottom + 4 + mh > window.innerHeight - 8 ? Math.max(8, r.top - 4 - mh) : r.bottom + 4;
  m.style.top = `${top}px`;
  m.style.left = `${Math.max(8, Math.min(r.right - mw, window.innerWidth - mw - 8))}px`;
  opener.setAttribute('aria-expanded', 'true');
  /** @type {HTMLElement|null} */ (m.querySelector('button'))?.focus();
}

/** @param {boolean} [refocus] */
function closeMenu(refocus = false) {
  const m = $('#person-menu');
  if (m.hidden) return;
  const id = menuFor;
  m.hidden = true;
  menuFor = '';
  const opener = /** @type {HTMLElement|null} */ (document.querySelector(`#participant-list li[data-peer-id="${CSS.escape(id)}"] .person-more`));
  opener?.setAttribute('aria-expanded', 'false');
  if (refocus) opener?.focus();
}

/** @param {string} id @param {string} action */
async function act(id, action) {
  const name = nameOf(id);
  if (!name) return;
  switch (action) {
    case 'mute': case 'stop_video': case 'stop_screen': case 'lower_hand': case 'remove':
      sig.moderate(id, action);
      break;
    case 'ban':
      if (await confirmAction(t('mod.banConfirm', { name }), t('mod.ban'))) sig.moderate(id, 'ban');
      break;
    case 'role_cohost': sig.setRole(id, 'cohost'); break;
    case 'role_participant': sig.setRole(id, 'participant'); break;
    case 'role_host':
      if (await confirmAction(t('mod.makeHostConfirm', { name }), t('mod.makeHost'))) sig.setRole(id, 'host');
      break;
    default: break;
  }
}

/**
 * Asks in #confirm-dialog; resolves true on the confirming button.
 * @param {string} text @param {string} ok
 * @returns {Promise<boolean>}
 */
function confirmAction(text, ok) {
  const dlg = /** @type {HTMLDialogElement} */ ($('#confirm-dialog'));
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = ok;
  const opener = /** @type {HTMLElement|null} */ (document.activeElement);
  return new Promise((resolve) => {
    dlg.returnValue = '';
    dlg.addEventListener('close', () => {
      resolve(dlg.returnValue === 'ok');
      opener?.focus();
    }, { once: true });
    dlg.showModal();
    /** @type {HTMLElement} */ ($('#confirm-cancel')).focus();
  });
}

// ---------------------------------------------------------------- hosts: meeting settings

/** @param {RoomSettings} s */
function applySettings(s) {
  const old = settings;
  settings = { ...s };
  renderSettings();
  if (!S.inRoom) return;
  if (old.locked !== s.locked) notice(t(s.locked ? 'settings.lockedNotice' : 'settings.unlockedNotice'));
  if (s.allowUnmute) hideError(['muted_by_host']);
  if (old.allowUnmute !== s.allowUnmute && !isMod()) notice(t(s.allowUnmute ? 'settings.unmuteAllowedNotice' : 'settings.unmuteOffNotice'));
}

function renderSettings() {
  const show = S.inRoom && isMod();
  $('#meeting-settings').hidden = !show;
  const set = (/** @type {string} */ sel, /** @type {boolean} */ v) => { /** @type {HTMLInputElement} */ ($(sel)).checked = v; };
  set('#setting-locked', settings.locked);
  set('#setting-waiting-room', settings.waitingRoom);
  set('#setting-allow-unmute', settings.allowUnmute);
  set('#setting-listed', settings.listed);
  // The server keeps a protected room off the list: the switch says so rather than bounce back.
  /** @type {HTMLInputElement} */ ($('#setting-listed')).disabled = settings.locked || settings.waitingRoom || settings.hasPassword;
  $('#meeting-settings').dataset.listed = String(settings.listed);
  renderAttempts();
  $('#password-state').textContent = t(settings.hasPassword ? 'settings.passwordSet' : 'settings.passwordNone');
  $('#meeting-settings').dataset.hasPassword = String(settings.hasPassword);
  /** @type {HTMLButtonElement} */ ($('#password-remove')).hidden = !settings.hasPassword;
  $('#password-save').textContent = t(settings.hasPassword ? 'settings.passwordChange' : 'settings.passwordSave');
  $('#end-meeting').hidden = !isHost();
  // In the call's header: a lock and a waiting-room sign, for everyone.
  const flags = $('#room-flags');
  flags.dataset.locked = String(settings.locked);
  flags.dataset.waitingRoom = String(settings.waitingRoom);
  flags.dataset.password = String(settings.hasPassword);
  const lock = $('#flag-locked'), wr = $('#flag-waiting');
  lock.hidden = !settings.locked;
  wr.hidden = !settings.waitingRoom;
  lock.title = t('settings.lockedFlag');
  lock.setAttribute('aria-label', lock.title);
  wr.title = t('settings.waitingFlag');
  wr.setAttribute('aria-label', wr.title);
}

function savePassword() {
  const input = /** @type {HTMLInputElement} */ ($('#setting-password'));
  const pw = input.value.trim();
  if (!pw) { input.focus(); return; }
  sig.settings({ password: pw });
  input.value = '';
  notice(t('settings.passwordSaved'));
}

/** @param {import('./protocol.js').InviteTokenMsg} m */
async function onInviteToken(m) {
  inviteLink = `${location.origin}/r/${encodeURIComponent(S.room)}#invite=${m.token}`;
  const out = /** @type {HTMLInputElement} */ ($('#invite-link'));
  out.value = inviteLink;
  out.hidden = false;
  try {
    await navigator.clipboard.writeText(inviteLink);
    notice(t('settings.inviteCopied'));
  } catch {
    out.select();
    notice(t('settings.inviteReady'));
  }
}

/** Wrong passwords tried at this meeting (hosts and co-hosts are told), for the meeting settings. */
let attempts = 0;

function renderAttempts() {
  const el = $('#password-attempts');
  el.hidden = !attempts;
  el.textContent = attempts ? t('settings.passwordAttempts', { n: attempts }) : '';
}

/** @param {import('./protocol.js').PasswordAttemptsMsg} m */
function onPasswordAttempts(m) {
  attempts += m.failed;
  renderAttempts();
  notice(t('settings.passwordAttempts', { n: m.failed }));
}

/** @param {import('./protocol.js').InvitesRevokedMsg} m */
function onInvitesRevoked(m) {
  inviteLink = '';
  const out = /** @type {HTMLInputElement} */ ($('#invite-link'));
  out.value = '';
  out.hidden = true;
  notice(m.by === S.selfId ? t('settings.invitesRevoked') : t('settings.invitesRevokedBy', { name: nameOf(m.by) || t('role.host') }));
}

function renderHostUi() {
  renderWaiting();
  renderSettings();
  if (!isMod()) closeMenu();
  recording.roleChanged();
  call.renderPeople();
}

// ---------------------------------------------------------------- wiring

/** @param {import('./protocol.js').JoinedMsg} msg */
function enter(msg) {
  S.role = msg.you.role;
  settings = { ...msg.settings };
  waiting = msg.waiting ?? [];
  held.audio = held.video = held.screen = false;
  inviteLink = '';
  attempts = 0;
  showPasswordField('');
  hands.enter(msg);
  /** @type {HTMLInputElement} */ ($('#invite-link')).hidden = true;
  renderWaiting();
  renderSettings();
  if (isMod() && waiting.length === 1) notice(t('waiting.knock', { name: waiting[0].name }));
  else if (isMod() && waiting.length) notice(t('waiting.knockMany', { n: waiting.length }));
}

function teardown() {
  S.role = 'participant';
  waiting = [];
  closeMenu();
  const dlg = /** @type {HTMLDialogElement} */ ($('#confirm-dialog'));
  if (dlg.open) dlg.close();
  hands.teardown();
  recording.teardown();
  renderWaiting();
  $('#meeting-settings').hidden = true;
}

/**
 * @param {{setView: (v: 'prejoin'|'waiting') => void, toPrejoin: () => void}} deps
 *   setView shows a view; toPrejoin tears the call down and shows the pre-join step of its room
 */
export function init(deps) {
  app = deps;
  takeTokenFromUrl();
  hands.init();
  recording.init({ confirm: confirmAction });
  Object.assign(call.hooks, {
    self: selfUpdated,
    mayTurnOn,
    order: hands.orderPeople,
    row: personRow,
    decorate: hands.decorateTiles,
    enter,
    teardown,
  });

  sig.on('waiting', onWaiting);
  sig.on('waiting_list', onWaitingList);
  sig.on('room_settings', (m) => applySettings(m.settings));
  sig.on('moderated', onModerated);
  sig.on('removed', (m) => thrownOut(m.ban ? 'removed_ban' : 'removed'));
  sig.on('ended', (m) => thrownOut(m.reason === 'server_error' ? 'ended_server_error' : 'ended'));
  sig.on('invite_token', onInviteToken);
  sig.on('invites_revoked', onInvitesRevoked);
  sig.on('password_attempts', onPasswordAttempts);
  sig.on('joined', () => { hideError(['knock_denied', 'removed', 'ended', 'ended_server_error', 'room_closed', 'invite_revoked', 'too_many_attempts']); });
  // The connection broke while waiting: back to pre-join, where Join knocks again.
  sig.on('close', () => { if (S.view === 'waiting') { app.setView('prejoin'); /** @type {HTMLButtonElement} */ ($('#join-button')).disabled = false; } });

  $('#waiting-cancel').addEventListener('click', cancelWaiting);
  $('#password-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.isComposing) { e.preventDefault(); /** @type {HTMLElement} */ ($('#join-button')).click(); }
  });
  $('#admit-all').addEventListener('click', () => sig.admitAll());
  for (const [sel, key] of /** @type {const} */ ([['#setting-locked', 'locked'], ['#setting-waiting-room', 'waitingRoom'], ['#setting-allow-unmute', 'allowUnmute'], ['#setting-listed', 'listed']])) {
    const box = /** @type {HTMLInputElement} */ ($(sel));
    box.addEventListener('change', () => {
      sig.settings({ [key]: box.checked });
      box.checked = settings[key]; // until the server says so
    });
  }
  $('#password-form').addEventListener('submit', (e) => { e.preventDefault(); savePassword(); });
  $('#password-remove').addEventListener('click', () => { sig.settings({ password: '' }); notice(t('settings.passwordRemoved')); });
  $('#invite-copy').addEventListener('click', () => { sig.invite(); });
  $('#invite-revoke').addEventListener('click', async () => {
    if (await confirmAction(t('settings.revokeConfirm'), t('settings.revoke'))) sig.revokeInvites();
  });
  $('#end-meeting').addEventListener('click', async () => {
    if (await confirmAction(t('settings.endConfirm'), t('settings.end'))) sig.endMeeting();
  });
  $('#confirm-cancel').addEventListener('click', () => /** @type {HTMLDialogElement} */ ($('#confirm-dialog')).close(''));
  $('#confirm-ok').addEventListener('click', () => /** @type {HTMLDialogElement} */ ($('#confirm-dialog')).close('ok'));

  const menu = $('#person-menu');
  menu.addEventListener('keydown', (e) => {
    const items = /** @type {HTMLElement[]} */ ([...menu.querySelectorAll('button')]);
    const i = items.indexOf(/** @type {HTMLElement} */ (document.activeElement));
    if (e.key === 'Escape' || e.key === 'Tab') { if (e.key === 'Escape') e.preventDefault(); e.stopPropagation(); closeMenu(e.key === 'Escape'); }
    else if (e.key === 'ArrowDown') { e.preventDefault(); items[(i + 1) % items.length]?.focus(); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); items[(i - 1 + items.length) % items.length]?.focus(); }
    else if (e.key === 'Home') { e.preventDefault(); items[0]?.focus(); }
    else if (e.key === 'End') { e.preventDefault(); items[items.length - 1]?.focus(); }
  });
  document.addEventListener('click', (e) => {
    const target = /** @type {HTMLElement} */ (e.target);
    if (!menu.hidden && !menu.contains(target) && !target.closest('.person-more')) closeMenu();
  });
  // A scroll that ended just before the menu opened (its event comes a frame later) moves nothing.
  const body = /** @type {HTMLElement} */ ($('#people-panel').querySelector('.panel-body'));
  body?.addEventListener('scroll', () => { if (Math.abs(body.scrollTop - menuScrollTop) > 2) closeMenu(); });

  onLangChange(() => { renderPasswordHint(); renderWaiting(); renderSettings(); closeMenu(); });
  renderSettings();
}

/** The invite link made last (for tests and the debug handle). */
export function lastInvite() { return inviteLink; }
