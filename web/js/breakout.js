// Breakout rooms (docs/protocol.md, "Breakout rooms"): for hosts and co-hosts the people panel's
// section to set them up, watch and close them; for everyone the bar over the call (which room,
// the time left, join/help/back), the hosts' broadcasts, and the closed rooms' chats in the chat
// panel. Moving between rooms itself is a new `joined` (app.js, call.moveCall). A page whose
// server never sends `breakouts` shows none of this.
import { t, onLangChange, has, getLang } from './i18n.js';
import { sig, S } from './core.js';
import { cleanName, cleanChat } from './protocol.js';
import { $, notice, showError, hideError, chatMessage, initials, colourFor } from './ui.js';
import * as call from './call.js';

/** @typedef {import('./protocol.js').BreakoutsMsg} BreakoutsMsg */
/** @typedef {import('./protocol.js').BreakoutRef} BreakoutRef */

const MAX_ROOMS = 50;
/** The requests whose errors this module says in its own words. */
const REQUESTS = ['breakout_open', 'breakout_assign', 'breakout_move', 'breakout_broadcast', 'breakout_help', 'breakout_close'];
/** The server's `invalid_breakout` message when it says nothing more. */
const GENERIC_INVALID = 'That breakout room request cannot be done now.';
/** How long a host's broadcast stays on screen (unless dismissed). */
const MESSAGE_MS = 30000;
/** How long a help request stays in the bar (unless answered or dismissed). */
const HELP_MS = 120000;

const isMod = () => S.role === 'host' || S.role === 'cohost';

// ---------------------------------------------------------------- state

/** Setup (hosts, while no rooms are open): how many rooms, their names, who goes where. */
const plan = {
  count: 2,
  /** @type {string[]} names typed ('' = the default name) */
  names: [],
  /** @type {Map<string, number>} person id → room index (0 or absent: the main room) */
  assign: new Map(),
};
/** Help requests not answered yet (hosts). @type {{from: {id: string, name: string}, room: BreakoutRef, at: number}[]} */
let helps = [];
/** The closed rooms' chats (`breakout_chat`), for the chat panel's tabs. @type {{room: BreakoutRef, messages: import('./protocol.js').ChatMessage[]}[]} */
let chats = [];
/** Which chat the chat panel shows: 'main' or a breakout room's index (as text). */
let chatTab = 'main';
/** We asked for help in this room (the button then says the hosts were told). */
let helpAsked = 0;
/** @type {ReturnType<typeof setTimeout>|null} */
let helpTimer = null;
/** The server takes one help request every 30 s from each person. */
const HELP_AGAIN_MS = 30000;
/** @type {ReturnType<typeof setTimeout>|null} */
let messageTimer = null;
/** What the setup and the live list show now (see renderSetup, renderLive). */
let setupKey = '';
let liveKey = '';
/** Who sent the broadcast on screen. */
let lastFrom = '';
/** @type {ReturnType<typeof setInterval>|null} */
let ticker = null;
/** The closing countdown we announced already (its `closingAt`). */
let closingSaid = 0;

/** The open breakout rooms as last told, or null. */
function openState() {
  const b = S.breakouts;
  return b && b.open ? b : null;
}

/** "1 person", "3 people". @param {number} n */
function countText(n) { return t(n === 1 ? 'breakout.count1' : 'breakout.count', { n }); }

/** The default name of room `i` (from 1). @param {number} i */
function defaultName(i) { return t('breakout.defaultName', { n: i }); }

/** @param {number} i */
function planName(i) {
  return cleanName(plan.names[i - 1] ?? '', sig.limits.maxRoomChars) || defaultName(i);
}

/** Whose room is what in the open state (hosts): id → index. */
function placeOf() {
  /** @type {Map<string, number>} */
  const where = new Map();
  const b = openState();
  if (!b) return where;
  for (const p of b.main ?? []) where.set(p.id, 0);
  for (const r of b.rooms) for (const p of r.members ?? []) where.set(p.id, r.index);
  return where;
}

/** Time as m:ss (h:mm:ss from an hour). @param {number} ms */
export function formatLeft(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (/** @type {number} */ n) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}

// ---------------------------------------------------------------- server messages

/** @param {BreakoutsMsg} m */
function onBreakouts(m) {
  const was = openState();
  let opened = false;
  if (m && m.open && Array.isArray(m.rooms)) S.breakouts = m;
  else S.breakouts = { type: 'breakouts', open: false };
  const now = openState();
  if (now && !was) {
    notice(t('breakout.openedNotice'));
    plan.assign.clear();
    opened = true;
  }
  if (!now && was) {
    notice(t('breakout.closedNotice'));
    helps = [];
    helpAsked = 0;
    // "Five minutes left" and the like are over with the rooms.
    $('#breakout-message').hidden = true;
  }
  if (now?.closingAt && closingSaid !== now.closingAt) {
    closingSaid = now.closingAt;
    notice(t('breakout.closingNotice', { time: formatLeft(now.closingAt - Date.now()) }));
  }
  if (now && now.assigned !== 0 && now.assigned !== currentIndex() && !now.autoMove && (!was || was.assigned !== now.assigned)) {
    const r = now.rooms.find((x) => x.index === now.assigned);
    if (r) notice(t('breakout.assignedNotice', { room: r.name }));
  }
  render();
  // The host who opened them (or anyone with the people panel open) sees the rooms at once.
  if (opened && S.panel === 'people' && isMod()) $('#breakout-section').scrollIntoView({ block: 'start' });
}

/** @param {import('./protocol.js').BreakoutMessageMsg} m */
function onMessage(m) {
  if (!S.inRoom) return;
  const box = $('#breakout-message');
  lastFrom = m.from?.name || t('role.host');
  $('#breakout-message-from').textContent = t('breakout.messageFrom', { name: lastFrom });
  $('#breakout-message-text').textContent = m.text;
  box.hidden = false;
  placeMessage();
  if (messageTimer) clearTimeout(messageTimer);
  messageTimer = setTimeout(() => { box.hidden = true; messageTimer = null; }, MESSAGE_MS);
}

/** The broadcast sits over the call, under the bar (which it must not hide). */
function placeMessage() {
  const bar = $('#breakout-bar');
  const top = bar.hidden ? 12 : bar.offsetTop + bar.offsetHeight + 8;
  $('#breakout-message').style.top = `${top}px`;
}

/** @param {import('./protocol.js').BreakoutHelpRequestMsg} m */
function onHelpRequest(m) {
  if (!S.inRoom || !m.from || !m.room) return;
  helps = helps.filter((h) => h.from.id !== m.from.id);
  helps.push({ from: m.from, room: m.room, at: Date.now() });
  notice(t('breakout.helpNotice', { name: m.from.name, room: m.room.name }));
  render();
}

/** @param {import('./protocol.js').BreakoutChatMsg} m */
function onChat(m) {
  if (!m.room || !Array.isArray(m.messages)) return;
  // (One tab per room number: a later round's room of the same number takes its place.)
  chats = chats.filter((c) => c.room.index !== m.room.index);
  chats.push({ room: m.room, messages: m.messages });
  renderChatTabs();
}

/**
 * An error answering a breakout request: said in words that fit it. True when handled.
 * @param {import('./protocol.js').ErrorMsg} m
 */
export function onError(m) {
  const req = m.request ?? '';
  if (!REQUESTS.includes(req)) return false;
  // (Refused as too soon: the hosts were told the last time, and the button still says so.)
  if (req === 'breakout_help' && m.code !== 'rate_limited') { helpAsked = 0; render(); }
  let key = has(`error.${req}.${m.code}`) ? `error.${req}.${m.code}` : `error.${m.code}`;
  // The server's reason (in English) completes an English sentence where it says more than
  // its default; in Korean the sentence stands alone.
  const detail = (m.message || '').trim();
  if (m.code === 'invalid_breakout' && detail && detail !== GENERIC_INVALID && has(`${key}.detail`)) key = `${key}.detail`;
  showError(m.code, { detail }, m.message, key);
  return true;
}

// ---------------------------------------------------------------- entering, moving, leaving

/** Our breakout room now (0: the main room). */
function currentIndex() { return S.breakout ? S.breakout.index : 0; }

/** @param {import('./protocol.js').JoinedMsg} m */
function onJoined(m) {
  const b = m.breakout && typeof m.breakout.index === 'number' ? { index: m.breakout.index, name: String(m.breakout.name ?? '') } : null;
  const was = S.breakout;
  S.breakout = b;
  if (b && (!was || was.index !== b.index)) notice(t('breakout.movedNotice', { room: b.name }));
  else if (!b && was) notice(t('breakout.backNotice'));
  if (!b || (was && was.index !== b.index)) helpAsked = 0;
  helps = helps.filter((h) => !b || h.room.index !== b.index);
  chatTab = 'main';
  hideError(['invalid_breakout', 'breakout_name', 'breakout_name_taken']);
  render();
}

/** Out of the meeting (left, removed, ended, or joining again after the session was lost). */
function left() {
  S.breakout = null;
  S.breakouts = null;
  helps = [];
  chats = [];
  chatTab = 'main';
  helpAsked = 0;
  closingSaid = 0;
  plan.assign.clear();
  $('#breakout-message').hidden = true;
  render();
}

// ---------------------------------------------------------------- requests

/** @param {number} room */
function move(room) {
  sig.send({ type: 'breakout_move', room });
}

function openRooms() {
  const count = plan.count;
  /** @type {{name: string, members: string[]}[]} */
  const rooms = [];
  const seen = new Set();
  for (let i = 1; i <= count; i++) {
    const typed = plan.names[i - 1] ?? '';
    const name = typed.trim() ? cleanName(typed, sig.limits.maxRoomChars) : defaultName(i);
    if (!name) { showError('breakout_name', { n: i, max: sig.limits.maxRoomChars }); focusName(i); return; }
    if (seen.has(name.toLowerCase())) { showError('breakout_name_taken', { name }); focusName(i); return; }
    seen.add(name.toLowerCase());
    rooms.push({ name, members: [] });
  }
  for (const [id, idx] of plan.assign) {
    if (idx >= 1 && idx <= count && S.peers.has(id)) rooms[idx - 1].members.push(id);
  }
  const num = (/** @type {string} */ sel, /** @type {number} */ min, /** @type {number} */ max, /** @type {number} */ dflt) => {
    const v = Number(/** @type {HTMLInputElement} */ ($(sel)).value);
    return Number.isFinite(v) && v >= min ? Math.min(max, Math.round(v)) : dflt;
  };
  const checked = (/** @type {string} */ sel) => /** @type {HTMLInputElement} */ ($(sel)).checked;
  hideError(['breakout_name', 'breakout_name_taken', 'invalid_breakout']);
  sig.send({
    type: 'breakout_open', rooms,
    autoMove: checked('#breakout-auto-move'), allowReturn: checked('#breakout-allow-return'), choose: checked('#breakout-choose'),
    minutes: num('#breakout-minutes', 0, 1440, 0), closeSeconds: num('#breakout-close-seconds', 0, 600, 60),
  });
}

/** @param {number} i */
function focusName(i) {
  /** @type {HTMLInputElement|null} */ (document.querySelector(`#breakout-names input[data-index="${i}"]`))?.focus();
}

/** Spreads the participants of the main room (not hosts or co-hosts) evenly, at random. */
function shuffle() {
  const ids = [...S.peers.values()].filter((p) => (p.role ?? 'participant') === 'participant').map((p) => p.id);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  ids.forEach((id, i) => plan.assign.set(id, (i % plan.count) + 1));
  renderSetup();
}

function broadcast() {
  const input = /** @type {HTMLInputElement} */ ($('#breakout-broadcast-input'));
  const text = cleanChat(input.value, sig.limits.maxChatChars);
  if (!text) { input.focus(); return; }
  if (sig.send({ type: 'breakout_broadcast', text })) {
    input.value = '';
    notice(t('breakout.broadcastSent'));
  }
}

function askHelp() {
  if (helpAsked) return;
  if (sig.send({ type: 'breakout_help' })) {
    helpAsked = currentIndex() || 1;
    notice(t('breakout.helpSent'));
    // The server takes one request every 30 s: then the button asks again.
    if (helpTimer) clearTimeout(helpTimer);
    helpTimer = setTimeout(() => { helpTimer = null; helpAsked = 0; render(); }, HELP_AGAIN_MS);
    render();
  }
}

// ---------------------------------------------------------------- rendering

function render() {
  renderBar();
  renderSection();
  renderChatTabs();
  tickTimers();
  const b = openState();
  if (b && !ticker) ticker = setInterval(tickTimers, 1000);
  if (!b && ticker) { clearInterval(ticker); ticker = null; }
  // The window's title says the room.
  if (S.view === 'room') document.title = S.breakout ? `${S.breakout.name} · ${S.room} · huddle` : `${S.room} · huddle`;
}

/** @param {string} tag @param {string} [cls] @param {string} [text] */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** @param {string} cls @param {string} text @param {() => void} act @param {string} [label] */
function button(cls, text, act, label) {
  const b = /** @type {HTMLButtonElement} */ (el('button', cls, text));
  b.type = 'button';
  if (label) b.setAttribute('aria-label', label);
  b.addEventListener('click', act);
  return b;
}

/** The bar over the call: where we are, the time, and what we may do. */
function renderBar() {
  const bar = $('#breakout-bar');
  const b = openState();
  const here = S.breakout;
  const mod = isMod();
  const cur = currentIndex();
  bar.dataset.room = String(cur);
  // Where we are.
  const where = $('#breakout-where');
  where.hidden = !here;
  where.textContent = here ? t('breakout.where', { room: here.name }) : '';
  // (And beside the meeting's name in the control bar.)
  const badge = $('#room-breakout');
  badge.hidden = !here;
  badge.textContent = here ? here.name : '';
  badge.title = where.textContent;
  // Assigned elsewhere and not moved (or back in the main room): the invitation.
  const assigned = b && b.assigned && b.assigned !== cur ? b.rooms.find((r) => r.index === b.assigned) : undefined;
  const prompt = $('#breakout-prompt');
  prompt.hidden = !assigned || (!!b?.autoMove && cur !== 0);
  if (assigned) {
    $('#breakout-prompt-text').textContent = t('breakout.invited', { room: assigned.name });
    const join = $('#breakout-join-assigned');
    join.textContent = t('breakout.join');
    join.setAttribute('aria-label', t('breakout.joinRoom', { room: assigned.name }));
    join.dataset.room = String(assigned.index);
  }
  // Pick a room (participants, when the hosts let them).
  const choices = $('#breakout-choices');
  const choose = !!b && b.choose && !mod;
  choices.hidden = !choose;
  if (choose && b) {
    const items = b.rooms.filter((r) => r.index !== cur).map((r) => {
      const li = el('li');
      li.dataset.room = String(r.index);
      li.append(button('btn small ghost breakout-choice', t('breakout.choice', { room: r.name, n: r.count }), () => move(r.index),
        t('breakout.joinRoomCount', { room: r.name, n: r.count })));
      return li;
    });
    $('#breakout-choices-title').textContent = t('breakout.chooseTitle');
    $('#breakout-choice-list').replaceChildren(...items);
  } else {
    $('#breakout-choice-list').replaceChildren();
  }
  // In a breakout room: help (participants) and the way back.
  const help = /** @type {HTMLButtonElement} */ ($('#breakout-help'));
  help.hidden = !here || mod || !b;
  help.disabled = !!helpAsked;
  help.dataset.asked = String(!!helpAsked);
  help.textContent = t(helpAsked ? 'breakout.helpAsked' : 'breakout.help');
  const back = $('#breakout-back');
  back.hidden = !here || !(mod || b?.allowReturn || !b);
  back.textContent = t('breakout.back');
  // Hosts: who asks for help.
  const now = Date.now();
  helps = helps.filter((h) => now - h.at < HELP_MS);
  const list = $('#breakout-help-list');
  list.hidden = !mod || !helps.length;
  list.replaceChildren(...(mod ? helps : []).map((h) => {
    const li = el('li', 'breakout-help-item');
    li.dataset.peerId = h.from.id;
    li.dataset.room = String(h.room.index);
    li.append(el('span', 'breakout-help-text', t('breakout.helpRequest', { name: h.from.name, room: h.room.name })));
    if (h.room.index !== cur) {
      li.append(button('btn small primary breakout-help-join', t('breakout.join'), () => {
        helps = helps.filter((x) => x !== h);
        move(h.room.index);
        render();
      }, t('breakout.joinRoom', { room: h.room.name })));
    }
    li.append(button('btn small ghost breakout-help-dismiss', t('dismiss'), () => { helps = helps.filter((x) => x !== h); render(); }));
    return li;
  }));
  $('#breakout-timer').hidden = !b;
  bar.hidden = !S.inRoom || (!here && !b && !helps.length);
  bar.dataset.open = String(!!b);
  if (!$('#breakout-message').hidden) placeMessage();
}

/** The countdowns (every second while rooms are open). */
function tickTimers() {
  const b = openState();
  const timer = $('#breakout-timer');
  const status = $('#breakout-status');
  if (!b) { timer.textContent = ''; status.textContent = ''; delete timer.dataset.closing; return; }
  const now = Date.now();
  let text = '';
  if (b.closingAt) text = t('breakout.closingIn', { time: formatLeft(b.closingAt - now) });
  else if (b.endsAt) text = t('breakout.timeLeft', { time: formatLeft(b.endsAt - now) });
  else text = t('breakout.openNoLimit');
  timer.dataset.closing = String(!!b.closingAt);
  if (timer.textContent !== text) timer.textContent = text;
  if (status.textContent !== text) status.textContent = text;
}

/** The people panel's section (hosts and co-hosts). */
function renderSection() {
  const section = $('#breakout-section');
  const show = S.inRoom && isMod();
  section.hidden = !show;
  if (!show) return;
  const b = openState();
  section.dataset.open = String(!!b);
  $('#breakout-setup').hidden = !!b;
  $('#breakout-live').hidden = !b;
  if (b) renderLive(b);
  else renderSetup();
}

/**
 * A <select> of the rooms: the main room, then room 1..n.
 * @param {{index: number, name: string}[]} rooms @param {number} value @param {string} label
 */
function roomSelect(rooms, value, label) {
  const sel = /** @type {HTMLSelectElement} */ (el('select', 'breakout-pick'));
  sel.setAttribute('aria-label', label);
  const main = /** @type {HTMLOptionElement} */ (el('option', '', t('breakout.mainRoom')));
  main.value = '0';
  sel.append(main);
  for (const r of rooms) {
    const o = /** @type {HTMLOptionElement} */ (el('option', '', r.name));
    o.value = String(r.index);
    sel.append(o);
  }
  sel.value = String(value);
  return sel;
}

/** @param {{id: string, name: string}} p */
function avatar(p) {
  const av = el('span', 'avatar', initials(p.name));
  av.setAttribute('aria-hidden', 'true');
  av.style.backgroundColor = colourFor(p.name + p.id);
  return av;
}

function renderSetup() {
  if (!S.inRoom || !isMod() || openState()) return;
  const countInput = /** @type {HTMLInputElement} */ ($('#breakout-count'));
  if (document.activeElement !== countInput) countInput.value = String(plan.count);
  // Room names: one input per room (kept while typing: rebuilt only when the count changes).
  const names = $('#breakout-names');
  const inputs = /** @type {HTMLInputElement[]} */ ([...names.querySelectorAll('input')]);
  if (inputs.length !== plan.count) {
    names.replaceChildren(...Array.from({ length: plan.count }, (_, k) => {
      const i = k + 1;
      const li = el('li');
      li.dataset.index = String(i);
      const input = /** @type {HTMLInputElement} */ (el('input', 'breakout-name-input'));
      input.type = 'text';
      input.dataset.index = String(i);
      input.maxLength = sig.limits.maxRoomChars;
      input.value = plan.names[k] ?? '';
      input.placeholder = defaultName(i);
      input.setAttribute('aria-label', t('breakout.nameLabel', { n: i }));
      input.addEventListener('input', () => { plan.names[k] = input.value; renderAssignOptions(); });
      li.append(input);
      return li;
    }));
  } else {
    inputs.forEach((input, k) => {
      input.placeholder = defaultName(k + 1);
      input.setAttribute('aria-label', t('breakout.nameLabel', { n: k + 1 }));
    });
  }
  // Who goes where: everyone but ourselves.
  const people = [...S.peers.values()];
  for (const id of [...plan.assign.keys()]) if (!S.peers.has(id)) plan.assign.delete(id);
  const rooms = Array.from({ length: plan.count }, (_, k) => ({ index: k + 1, name: planName(k + 1) }));
  // (Rebuilt only when what it shows changed: a menu open in it stays open.)
  const key = JSON.stringify([getLang(), rooms, people.map((p) => [p.id, p.name, p.role]), [...plan.assign]]);
  if (key === setupKey) { renderCounts(); return; }
  setupKey = key;
  $('#breakout-people-empty').hidden = people.length > 0;
  $('#breakout-people').replaceChildren(...people.map((p) => {
    const li = el('li');
    li.dataset.peerId = p.id;
    li.dataset.role = p.role ?? 'participant';
    const name = el('span', 'person-name', p.name);
    const sel = roomSelect(rooms, plan.assign.get(p.id) ?? 0, t('breakout.roomFor', { name: p.name }));
    sel.addEventListener('change', () => {
      const v = Number(sel.value);
      if (v) plan.assign.set(p.id, v); else plan.assign.delete(p.id);
      renderCounts();
    });
    li.append(avatar(p), name, sel);
    return li;
  }));
  renderCounts();
}

/** The rooms' names changed: the assignment menus follow. */
function renderAssignOptions() {
  for (const sel of /** @type {NodeListOf<HTMLSelectElement>} */ (document.querySelectorAll('#breakout-people select'))) {
    for (const o of sel.options) if (o.value !== '0') o.textContent = planName(Number(o.value));
  }
}

/** "Room 1: 2 people" under each name, as assigned so far. */
function renderCounts() {
  const counts = new Map();
  for (const idx of plan.assign.values()) counts.set(idx, (counts.get(idx) ?? 0) + 1);
  for (const li of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('#breakout-names li'))) {
    li.dataset.count = String(counts.get(Number(li.dataset.index)) ?? 0);
    li.title = countText(counts.get(Number(li.dataset.index)) ?? 0);
  }
}

/** @param {import('./protocol.js').BreakoutsOpenMsg} b */
function renderLive(b) {
  const cur = currentIndex();
  const asking = new Set(helps.map((h) => h.room.index));
  const key = JSON.stringify([getLang(), cur, b, S.selfId, [...asking]]);
  if (key === liveKey) return;
  liveKey = key;
  const rooms = b.rooms.map((r) => ({ index: r.index, name: r.name }));
  /** @param {number} index @param {string} name @param {number} count @param {{id: string, name: string}[]} members */
  const group = (index, name, count, members) => {
    const li = el('li', 'breakout-room');
    li.dataset.index = String(index);
    li.dataset.count = String(count);
    if (index === cur) li.dataset.here = 'true';
    const head = el('div', 'breakout-room-head');
    head.append(el('span', 'breakout-room-name', name), el('span', 'breakout-room-count muted small', countText(count)));
    if (asking.has(index)) head.append(el('span', 'breakout-room-help', t('breakout.needsHelp')));
    if (index === cur) head.append(el('span', 'breakout-here small', t('breakout.here')));
    else if (index) head.append(button('btn small ghost breakout-visit', t('breakout.join'), () => move(index), t('breakout.joinRoom', { room: name })));
    else head.append(button('btn small ghost breakout-visit', t('breakout.back'), () => move(0)));
    const ul = el('ul', 'breakout-members');
    ul.append(...members.map((p) => {
      const m = el('li');
      m.dataset.peerId = p.id;
      m.append(avatar(p), el('span', 'person-name', p.id === S.selfId ? `${p.name} ${t('people.you')}` : p.name));
      if (p.id !== S.selfId) {
        const sel = roomSelect(rooms, index, t('breakout.moveTo', { name: p.name }));
        sel.addEventListener('change', () => sig.send({ type: 'breakout_assign', peer: p.id, room: Number(sel.value) }));
        m.append(sel);
      }
      return m;
    }));
    if (!members.length) ul.append(el('li', 'muted small breakout-empty', t('breakout.empty')));
    li.append(head, ul);
    return li;
  };
  const main = b.main ?? [];
  $('#breakout-rooms').replaceChildren(
    group(0, t('breakout.mainRoom'), main.length, main),
    ...b.rooms.map((r) => group(r.index, r.name, r.count, r.members ?? [])),
  );
  $('#breakout-return').hidden = !cur;
  const closing = !!b.closingAt;
  /** @type {HTMLButtonElement} */ ($('#breakout-close')).hidden = closing;
  $('#breakout-close-now').textContent = t(closing ? 'breakout.closeNow' : 'breakout.closeNowShort');
  const opts = [b.autoMove ? t('breakout.optAutoMove') : t('breakout.optAsk'), b.allowReturn ? t('breakout.optReturn') : '', b.choose ? t('breakout.optChoose') : ''].filter(Boolean);
  $('#breakout-options-summary').textContent = opts.join(' · ');
}

// ---------------------------------------------------------------- the closed rooms' chats

function renderChatTabs() {
  const tabs = $('#chat-tabs');
  if (!chats.length || !S.inRoom) {
    tabs.hidden = true;
    tabs.replaceChildren();
    chatTab = 'main';
  } else {
    tabs.hidden = false;
    /** @param {string} key @param {string} label */
    const tab = (key, label) => {
      const b = button('chat-tab', label, () => { chatTab = key; renderChatTabs(); });
      b.setAttribute('role', 'tab');
      b.dataset.chatRoom = key;
      b.setAttribute('aria-selected', String(chatTab === key));
      b.tabIndex = chatTab === key ? 0 : -1;
      return b;
    };
    if (chatTab !== 'main' && !chats.some((c) => String(c.room.index) === chatTab)) chatTab = 'main';
    tabs.replaceChildren(tab('main', S.breakout ? S.breakout.name : t('breakout.mainRoom')),
      ...chats.map((c) => tab(String(c.room.index), c.room.name)));
  }
  const other = chatTab !== 'main' ? chats.find((c) => String(c.room.index) === chatTab) : undefined;
  const log = $('#breakout-chat-log');
  log.hidden = !other;
  $('#chat-log').hidden = !!other;
  $('#files').classList.toggle('breakout-away', !!other);
  $('#breakout-chat-note').hidden = !other;
  if (other) {
    $('#breakout-chat-note').textContent = t('breakout.chatNote', { room: other.room.name });
    log.dataset.room = String(other.room.index);
    log.replaceChildren(...other.messages.map((m) => chatMessage(m, m.from === S.selfId)));
    if (!other.messages.length) log.append(el('li', 'muted small', t('breakout.chatEmpty')));
  } else {
    log.replaceChildren();
    delete log.dataset.room;
  }
}

// ---------------------------------------------------------------- wiring

export function init() {
  S.breakout = null;
  S.breakouts = null;
  sig.on('breakouts', onBreakouts);
  sig.on('breakout_message', onMessage);
  sig.on('breakout_help_request', onHelpRequest);
  sig.on('breakout_chat', onChat);
  sig.on('joined', onJoined);
  // Role changes and people coming and going change the host's section.
  for (const type of ['peer_joined', 'peer_left', 'peer_updated']) sig.on(type, () => { if (S.inRoom) render(); });
  call.hooks.left = left;

  const count = /** @type {HTMLInputElement} */ ($('#breakout-count'));
  count.max = String(MAX_ROOMS);
  count.addEventListener('input', () => {
    const n = Math.round(Number(count.value));
    if (!Number.isFinite(n) || n < 1) return;
    plan.count = Math.min(MAX_ROOMS, n);
    for (const [id, idx] of plan.assign) if (idx > plan.count) plan.assign.delete(id);
    renderSetup();
  });
  count.addEventListener('change', () => { count.value = String(plan.count); });
  $('#breakout-shuffle').addEventListener('click', shuffle);
  $('#breakout-clear').addEventListener('click', () => { plan.assign.clear(); renderSetup(); });
  $('#breakout-open').addEventListener('click', openRooms);
  $('#breakout-return').addEventListener('click', () => move(0));
  $('#breakout-close').addEventListener('click', () => sig.send({ type: 'breakout_close' }));
  $('#breakout-close-now').addEventListener('click', () => sig.send({ type: 'breakout_close', now: true }));
  $('#breakout-broadcast-form').addEventListener('submit', (e) => { e.preventDefault(); broadcast(); });
  $('#breakout-join-assigned').addEventListener('click', (e) => {
    const room = Number(/** @type {HTMLElement} */ (e.currentTarget).dataset.room);
    if (room) move(room);
  });
  $('#breakout-help').addEventListener('click', askHelp);
  $('#breakout-back').addEventListener('click', () => move(0));
  $('#breakout-message-close').addEventListener('click', () => {
    $('#breakout-message').hidden = true;
    if (messageTimer) clearTimeout(messageTimer);
    messageTimer = null;
  });
  // What is typed goes to the room we are in: its chat comes back into view.
  const toCurrent = () => { if (chatTab !== 'main') { chatTab = 'main'; renderChatTabs(); } };
  $('#chat-form').addEventListener('submit', toCurrent);
  $('#chat-input').addEventListener('keydown', (e) => { if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) toCurrent(); });
  $('#chat-tabs').addEventListener('keydown', (e) => {
    const tabs = /** @type {HTMLElement[]} */ ([...$('#chat-tabs').querySelectorAll('[role="tab"]')]);
    const i = tabs.indexOf(/** @type {HTMLElement} */ (document.activeElement));
    if (i < 0) return;
    let j = -1;
    if (e.key === 'ArrowRight') j = (i + 1) % tabs.length;
    else if (e.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
    if (j < 0) return;
    e.preventDefault();
    tabs[j].click();
    /** @type {HTMLElement|null} */ ($('#chat-tabs').querySelector(`[data-chat-room="${tabs[j].dataset.chatRoom}"]`))?.focus();
  });
  onLangChange(() => {
    // Names still at their default follow the language.
    $('#breakout-names').replaceChildren();
    setupKey = liveKey = '';
    render();
    if (lastFrom) $('#breakout-message-from').textContent = t('breakout.messageFrom', { name: lastFrom });
  });
  render();
}
