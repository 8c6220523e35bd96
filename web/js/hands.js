// Raised hands and reactions: the control-bar buttons, the hand on tiles and in the people list
// (raised hands first, in the order they went up), and reactions floating over the sender's tile.
import { t, onLangChange } from './i18n.js';
import { REACTIONS } from './protocol.js';
import { sig, S } from './core.js';
import { $, icon, notice } from './ui.js';

/** How long a reaction stays on a tile. */
const REACTION_MS = 3000;
/** At most this many reactions on one tile at once (the oldest goes first). */
const MAX_FLOATING = 4;
/** i18n keys naming each emoji, for screen readers. */
const REACTION_NAMES = ['react.thumbs', 'react.clap', 'react.laugh', 'react.wow', 'react.heart', 'react.party'];

/** When each raised hand went up (as this page saw it), for the order of the people list. @type {Map<string, number>} */
const raisedAt = new Map();
let order = 0;

/** @param {string} id @param {boolean} up */
function noteHand(id, up) {
  if (!up) raisedAt.delete(id);
  else if (!raisedAt.has(id)) raisedAt.set(id, ++order);
}

/** Who raised a hand, by id (ourselves included). */
function handOf(/** @type {string} */ id) {
  if (id === S.selfId) return S.hand;
  return !!S.peers.get(id)?.hand;
}

/** The name to show for someone in the room. @param {string} id */
function nameOf(id) {
  if (id === S.selfId) return S.name;
  return S.peers.get(id)?.name ?? '';
}

// ---------------------------------------------------------------- the control-bar buttons

function renderHandButton() {
  const b = $('#hand-button');
  b.setAttribute('aria-pressed', String(S.hand));
  const label = t(S.hand ? 'hand.lower' : 'hand.raise');
  b.title = label;
}

function toggleHand() {
  if (!S.inRoom) return;
  // The server answers with `peer_updated` about us, which sets S.hand.
  sig.hand(!S.hand);
}

const menu = () => $('#react-menu');

/** @param {boolean} open @param {boolean} [focusFirst] */
function setMenu(open, focusFirst = false) {
  const m = menu();
  m.hidden = !open;
  const rb = $('#react-button');
  rb.setAttribute('aria-expanded', String(open));
  if (open) {
    // Fixed above the button (the control bar scrolls sideways on phones, and would clip it).
    const r = rb.getBoundingClientRect();
    const w = m.offsetWidth;
    m.style.left = `${Math.max(8, Math.min(r.left + r.width / 2 - w / 2, window.innerWidth - w - 8))}px`;
    m.style.bottom = `${window.innerHeight - r.top + 10}px`;
  }
  if (open && focusFirst) /** @type {HTMLElement|null} */ (menu().querySelector('button'))?.focus();
}

function buildMenu() {
  const m = menu();
  m.replaceChildren(...REACTIONS.map((emoji, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'react-item';
    b.setAttribute('role', 'menuitem');
    b.dataset.emoji = emoji;
    b.textContent = emoji;
    b.addEventListener('click', () => {
      sig.react(emoji);
      setMenu(false);
      $('#react-button').focus();
    });
    b.dataset.nameKey = REACTION_NAMES[i];
    return b;
  }));
  labelMenu();
}

function labelMenu() {
  for (const b of /** @type {NodeListOf<HTMLButtonElement>} */ (menu().querySelectorAll('button'))) {
    const label = t(b.dataset.nameKey ?? '');
    b.setAttribute('aria-label', label);
    b.title = label;
  }
}

// ---------------------------------------------------------------- on tiles

/** Puts the raised hand and the role badge on every tile (call.js calls this after changes). */
function decorateTiles() {
  for (const el of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('#tiles .tile'))) {
    const id = el.dataset.peerId ?? '';
    const up = handOf(id);
    el.dataset.hand = up ? 'up' : 'down';
    let hand = /** @type {HTMLElement|null} */ (el.querySelector(':scope > .tile-hand'));
    if (up && !hand) {
      hand = document.createElement('span');
      hand.className = 'tile-hand';
      hand.setAttribute('role', 'img');
      hand.append(icon('hand'));
      el.append(hand);
    }
    if (!up) hand?.remove();
    if (hand) hand.setAttribute('aria-label', t('hand.raisedBy', { name: nameOf(id) }));
    const role = id === S.selfId ? S.role : S.peers.get(id)?.role;
    const label = /** @type {HTMLElement|null} */ (el.querySelector('.tile-label'));
    let badge = /** @type {HTMLElement|null} */ (el.querySelector('.tile-role'));
    if (role === 'host' || role === 'cohost') {
      if (!badge && label) {
        badge = document.createElement('span');
        badge.className = 'tile-role';
        label.append(badge);
      }
      if (badge) {
        badge.dataset.role = role;
        badge.textContent = t(role === 'host' ? 'role.host' : 'role.cohost');
      }
    } else badge?.remove();
  }
}

/** @param {import('./protocol.js').ReactionMsg} msg */
function showReaction(msg) {
  const el = /** @type {HTMLElement|null} */ (document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(msg.from)}"]`));
  if (!el) return;
  const old = el.querySelectorAll(':scope > .tile-reaction');
  if (old.length >= MAX_FLOATING) old[0].remove();
  const r = document.createElement('span');
  r.className = 'tile-reaction';
  r.setAttribute('role', 'img');
  r.setAttribute('aria-label', t('react.from', { name: nameOf(msg.from), emoji: msg.emoji }));
  r.dataset.emoji = msg.emoji;
  r.textContent = msg.emoji;
  // A little sideways spread so quick repeats do not sit on top of each other.
  r.style.setProperty('--dx', `${(old.length % 3) * 18 - 18}px`);
  el.append(r);
  setTimeout(() => r.remove(), REACTION_MS);
}

// ---------------------------------------------------------------- the people list

/** @param {import('./call.js').PersonRow[]} people */
function orderPeople(people) {
  for (const p of people) noteHand(p.id, !!p.hand);
  const up = people.filter((p) => p.hand).sort((a, b) => (raisedAt.get(a.id) ?? 0) - (raisedAt.get(b.id) ?? 0));
  return [...up, ...people.filter((p) => !p.hand)];
}

/** @param {HTMLLIElement} li @param {import('./call.js').PersonRow} p */
function handRow(li, p) {
  li.dataset.hand = p.hand ? 'up' : 'down';
  if (!p.hand) return;
  const h = document.createElement('span');
  h.className = 'person-hand';
  h.setAttribute('role', 'img');
  h.setAttribute('aria-label', t('hand.raised'));
  h.title = t('hand.raised');
  h.append(icon('hand'));
  li.querySelector('.person-name')?.after(h);
}

// ---------------------------------------------------------------- wiring

/** @param {import('./protocol.js').Peer} p  a `peer_updated` about ourselves */
export function selfUpdated(p) {
  S.hand = p.hand;
  noteHand(p.id, p.hand);
  renderHandButton();
}

/** Whose hands we have announced as raised. @type {Set<string>} */
const announced = new Set();

/** Someone else's hand went up: say so once. @param {import('./protocol.js').Peer} p */
function peerUpdated(p) {
  if (p.id === S.selfId || !S.inRoom) return;
  if (!p.hand) { announced.delete(p.id); return; }
  if (announced.has(p.id)) return;
  announced.add(p.id);
  notice(t('hand.notice', { name: p.name }));
}

export function init() {
  const hb = $('#hand-button');
  hb.addEventListener('click', toggleHand);
  const rb = $('#react-button');
  buildMenu();
  rb.addEventListener('click', () => setMenu(menu().hidden !== false));
  rb.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowUp' || e.key === 'ArrowDown') { e.preventDefault(); setMenu(true, true); }
    else if (e.key === 'Escape' && !menu().hidden) { e.preventDefault(); e.stopPropagation(); setMenu(false); }
  });
  menu().addEventListener('keydown', (e) => {
    const items = /** @type {HTMLElement[]} */ ([...menu().querySelectorAll('button')]);
    const i = items.indexOf(/** @type {HTMLElement} */ (document.activeElement));
    if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); setMenu(false); rb.focus(); }
    else if (e.key === 'ArrowRight' || e.key === 'ArrowDown') { e.preventDefault(); items[(i + 1) % items.length]?.focus(); }
    else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') { e.preventDefault(); items[(i - 1 + items.length) % items.length]?.focus(); }
    else if (e.key === 'Home') { e.preventDefault(); items[0]?.focus(); }
    else if (e.key === 'End') { e.preventDefault(); items[items.length - 1]?.focus(); }
  });
  document.addEventListener('click', (e) => {
    if (menu().hidden) return;
    const target = /** @type {Node} */ (e.target);
    if (!menu().contains(target) && !rb.contains(target)) setMenu(false);
  });
  window.addEventListener('resize', () => { if (!menu().hidden) setMenu(false); });
  sig.on('reaction', showReaction);
  sig.on('peer_updated', (m) => peerUpdated(m.peer));
  // Keyboard: Ctrl/Cmd+Alt+H raises or lowers the hand (beside Ctrl+D and Ctrl+E).
  document.addEventListener('keydown', (e) => {
    if (S.view !== 'room') return;
    if ((e.ctrlKey || e.metaKey) && e.altKey && e.key.toLowerCase() === 'h') { e.preventDefault(); toggleHand(); }
  });
  onLangChange(() => { renderHandButton(); labelMenu(); decorateTiles(); });
  renderHandButton();
}

/** On entering a call. @param {import('./protocol.js').JoinedMsg} msg */
export function enter(msg) {
  raisedAt.clear();
  announced.clear();
  order = 0;
  S.hand = msg.you.hand;
  noteHand(msg.you.id, msg.you.hand);
  for (const p of msg.peers) { noteHand(p.id, p.hand); if (p.hand) announced.add(p.id); }
  renderHandButton();
}

export function teardown() {
  S.hand = false;
  raisedAt.clear();
  setMenu(false);
  renderHandButton();
}

export { orderPeople, handRow, decorateTiles };
