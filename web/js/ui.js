// DOM helpers: icons, video tiles and their grid, notices, the error banner, chat rendering.
// Everything a user or peer typed is put in the page with textContent, never as HTML.
import { t, has } from './i18n.js';

/** @param {string} sel */
export const $ = (sel) => /** @type {HTMLElement} */ (document.querySelector(sel));

const SVG_NS = 'http://www.w3.org/2000/svg';
/** Material-style 24×24 paths. */
const ICONS = {
  micOff: 'M19 11h-1.7c0 .74-.16 1.43-.43 2.05l1.23 1.23c.56-.98.9-2.09.9-3.28zm-4.02.17c0-.06.02-.11.02-.17V5c0-1.66-1.34-3-3-3S9 3.34 9 5v.18l5.98 5.99zM4.27 3L3 4.27l6.01 6.01V11c0 1.66 1.33 3 2.99 3 .22 0 .44-.03.65-.08l1.66 1.66c-.71.33-1.5.52-2.31.52-2.76 0-5.3-2.1-5.3-5.1H5c0 3.41 2.72 6.23 6 6.72V21h2v-3.28c.91-.13 1.77-.45 2.54-.9L19.73 21 21 19.73 4.27 3z',
  pin: 'M16 9V4h1c.55 0 1-.45 1-1s-.45-1-1-1H7c-.55 0-1 .45-1 1s.45 1 1 1h1v5c0 1.66-1.34 3-3 3v2h5.97v7l1 1 1-1v-7H19v-2c-1.66 0-3-1.34-3-3z',
  warn: 'M1 21h22L12 2 1 21zm12-3h-2v-2h2v2zm0-4h-2v-4h2v4z',
  ok: 'M9 16.17L4.83 12l-1.42 1.41L9 19 21 7l-1.41-1.41z',
  bad: 'M19 6.41L17.59 5 12 10.59 6.41 5 5 6.41 10.59 12 5 17.59 6.41 19 12 13.41 17.59 19 19 17.59 13.41 12z',
  info: 'M11 7h2v2h-2zm0 4h2v6h-2zm1-9C6.48 2 2 6.48 2 12s4.48 10 10 10 10-4.48 10-10S17.52 2 12 2zm0 18c-4.41 0-8-3.59-8-8s3.59-8 8-8 8 3.59 8 8-3.59 8-8 8z',
  hand: 'M23 5.5V20c0 2.2-1.8 4-4 4h-7.3c-1.08 0-2.1-.43-2.85-1.19L1 14.83s1.26-1.23 1.3-1.25c.22-.19.49-.29.79-.29.22 0 .42.06.6.16.04.01 4.31 2.46 4.31 2.46V4c0-.83.67-1.5 1.5-1.5S11 3.17 11 4v7h1V1.5c0-.83.67-1.5 1.5-1.5S15 .67 15 1.5V11h1V2.5c0-.83.67-1.5 1.5-1.5s1.5.67 1.5 1.5V11h1V5.5c0-.83.67-1.5 1.5-1.5s1.5.67 1.5 1.5z',
  more: 'M12 8c1.1 0 2-.9 2-2s-.9-2-2-2-2 .9-2 2 .9 2 2 2zm0 2c-1.1 0-2 .9-2 2s.9 2 2 2 2-.9 2-2-.9-2-2-2zm0 6c-1.1 0-2 .9-2 2s.9 2 2 2 2-.9 2-2-.9-2-2-2z',
  screen: 'M20 18c1.1 0 1.99-.9 1.99-2L22 6c0-1.11-.9-2-2-2H4c-1.11 0-2 .89-2 2v10c0 1.1.89 2 2 2H0v2h24v-2h-4zm-7-3.53v-2.19c-2.78 0-4.61.85-6 2.72.56-2.67 2.11-5.33 6-5.87V7l4 3.73-4 3.74z',
};

/** An inline SVG icon (decorative). @param {keyof typeof ICONS} name */
export function icon(name) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const p = document.createElementNS(SVG_NS, 'path');
  p.setAttribute('d', ICONS[name]);
  svg.append(p);
  return svg;
}

/** Up to two initials of a name ("Mina Kim" → "MK", "민아" → "민"). @param {string} name */
export function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  if (!words.length) return '?';
  const first = (/** @type {string} */ w) => Array.from(w)[0] || '';
  const s = words.length > 1 ? first(words[0]) + first(words[words.length - 1]) : first(words[0]);
  return s.toUpperCase();
}

/** A calm background colour derived from a string. @param {string} s */
export function colourFor(s) {
  let h = 0;
  for (const ch of String(s)) h = (h * 31 + (ch.codePointAt(0) || 0)) >>> 0;
  return `hsl(${h % 360} 45% 42%)`;
}

// ---------------------------------------------------------------- tiles

/** One participant's tile in #tiles. */
export class Tile {
  /** @param {string} id @param {boolean} self */
  constructor(id, self) {
    this.id = id;
    this.self = self;
    const el = document.createElement('div');
    el.className = 'tile';
    el.dataset.peerId = id;
    if (self) el.dataset.self = 'true';
    el.dataset.audio = 'off';
    el.dataset.video = 'off';
    el.setAttribute('role', 'listitem');

    const v = document.createElement('video');
    v.autoplay = true;
    v.playsInline = true;
    v.setAttribute('playsinline', '');
    if (self) { v.muted = true; v.defaultMuted = true; v.setAttribute('muted', ''); }
    this.video = v;

    const avatar = document.createElement('div');
    avatar.className = 'tile-avatar';
    this.initialsEl = document.createElement('span');
    this.initialsEl.className = 'tile-initials';
    avatar.append(this.initialsEl);

    const label = document.createElement('div');
    label.className = 'tile-label';
    this.presentEl = document.createElement('span');
    this.presentEl.className = 'tile-presenting';
    this.presentEl.append(icon('screen'));
    this.nameEl = document.createElement('span');
    this.nameEl.className = 'tile-name';
    label.append(this.presentEl, this.nameEl);

    this.muteEl = document.createElement('span');
    this.muteEl.className = 'tile-muted';
    this.muteEl.append(icon('micOff'));

    el.append(v, avatar, label, this.muteEl);
    /** Pins this person to the speaker view (remote tiles only; call.js sets `onclick`). */
    this.pinEl = null;
    if (!self) {
      const pin = document.createElement('button');
      pin.type = 'button';
      pin.className = 'tile-pin';
      pin.setAttribute('aria-pressed', 'false');
      pin.append(icon('pin'));
      this.pinEl = pin;
      el.append(pin);
    }
    this.el = el;
    /** @type {HTMLElement|null} why the connection is not up (see setProblem) */
    this.problemEl = null;
    this.name = '';
    this.state = { audio: false, video: false, screen: false };
  }

  /** @param {string} name */
  setName(name) {
    this.name = name;
    this.nameEl.textContent = name;
    this.initialsEl.textContent = initials(name);
    this.initialsEl.style.backgroundColor = colourFor(name + this.id);
    this.el.setAttribute('aria-label', this.self ? `${name} (${t('tile.you')})` : name);
    this.setPinned(this.pinEl?.getAttribute('aria-pressed') === 'true');
  }

  /** @param {{audio:boolean, video:boolean, screen:boolean}} s */
  setState(s) {
    this.state = { ...s };
    this.el.dataset.audio = s.audio ? 'on' : 'off';
    this.el.dataset.video = s.video || s.screen ? 'on' : 'off';
    this.el.dataset.screen = s.screen ? 'on' : 'off';
    this.muteEl.title = t('tile.muted');
    this.presentEl.title = t('tile.presenting', { name: this.name });
    // The self view is mirrored like a mirror; a screen share never is.
    this.el.classList.toggle('mirrored', this.self && !s.screen);
  }

  /** @param {boolean} on */
  setPinned(on) {
    if (!this.pinEl) return;
    this.pinEl.setAttribute('aria-pressed', String(on));
    const label = t(on ? 'tile.unpin' : 'tile.pin', { name: this.name });
    this.pinEl.setAttribute('aria-label', label);
    this.pinEl.title = label;
  }

  /**
   * Shows why the connection to this person does not come up, over the (black) picture; an
   * empty `why` removes it. See docs/dom-contract.md (`data-problem`, `data-diagnosis`).
   * @param {''|'slow'|'failed'} why
   * @param {string} diagnosis  which sentence: checking, blocked, refused, no_relay, elsewhere, …
   * @param {string} text
   */
  setProblem(why, diagnosis = '', text = '') {
    if (!why) {
      this.problemEl?.remove();
      this.problemEl = null;
      delete this.el.dataset.problem;
      delete this.el.dataset.diagnosis;
      return;
    }
    if (!this.problemEl) {
      const box = document.createElement('div');
      box.className = 'tile-problem';
      const p = document.createElement('p');
      p.className = 'tile-problem-text';
      box.append(icon('warn'), p);
      this.problemEl = box;
      // Under the name label and the buttons, over the picture.
      this.el.insertBefore(box, this.el.querySelector('.tile-label'));
    }
    this.el.dataset.problem = why;
    this.el.dataset.diagnosis = diagnosis;
    /** @type {HTMLElement} */ (this.problemEl.querySelector('.tile-problem-text')).textContent = text;
    this.problemEl.title = text; // the text is hidden on the smallest tiles
  }

  /** @param {MediaStream|null} stream */
  setStream(stream) {
    if (this.video.srcObject !== stream) this.video.srcObject = stream;
    if (stream) this.play();
  }

  play() {
    const v = this.video;
    const p = v.play();
    if (p && p.catch) {
      p.catch((e) => {
        if (e && e.name === 'NotAllowedError' && !v.muted) {
          // Autoplay with sound was refused: play muted and unmute on the next click.
          v.muted = true;
          v.play().catch(() => {});
          notice(t('notice.audioBlocked'));
          document.addEventListener('click', () => { v.muted = false; v.play().catch(() => {}); }, { once: true, capture: true });
        }
      });
    }
  }

  /** @param {string} sinkId */
  async setSink(sinkId) {
    const v = /** @type {any} */ (this.video);
    if (this.self || typeof v.setSinkId !== 'function') return;
    try { await v.setSinkId(sinkId || ''); } catch (e) { console.warn('huddle: setSinkId failed', e); }
  }

  remove() {
    this.video.srcObject = null;
    this.el.remove();
  }
}

/**
 * Lays out the tiles of #tiles as large as possible at 16:9 (CSS variables --tile-w/--tile-h).
 * @param {HTMLElement} container
 */
export function layoutTiles(container) {
  const n = container.children.length;
  if (!n) return;
  const gap = 10;
  const W = container.clientWidth - 2 * gap, H = container.clientHeight - 2 * gap;
  if (W <= 0 || H <= 0) return;
  let best = { w: 0, h: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    let w = (W - gap * (cols - 1)) / cols;
    let h = w * 9 / 16;
    const maxH = (H - gap * (rows - 1)) / rows;
    if (h > maxH) { h = maxH; w = h * 16 / 9; }
    if (w * h > best.w * best.h) best = { w, h };
  }
  // On a narrow portrait screen a lone tile may be taller than 16:9.
  if (n <= 2 && W < 600) {
    const rows = n;
    best = { w: W, h: Math.min((H - gap * (rows - 1)) / rows, W * 4 / 3) };
  }
  container.style.setProperty('--tile-w', `${Math.floor(best.w)}px`);
  container.style.setProperty('--tile-h', `${Math.floor(best.h)}px`);
}

// ---------------------------------------------------------------- notices and the banner

/** Shows a short "X joined" style notice (also read out: #notices is aria-live). @param {string} text */
export function notice(text) {
  const box = $('#notices');
  if (!box) return;
  const n = document.createElement('div');
  n.className = 'notice';
  n.textContent = text;
  box.append(n);
  setTimeout(() => n.classList.add('gone'), 5000);
  // Keep a short history in the DOM (hidden) for assistive tech and tests; prune old ones.
  while (box.children.length > 50) box.firstElementChild?.remove();
}

/** @type {{code: string, vars: Record<string, string|number>, key: string}|null} */
let bannerState = null;

/**
 * Shows the error banner with the translation of `code`.
 * @param {string} code protocol error code or page-side code
 * @param {Record<string, string|number>} [vars]
 * @param {string} [fallback] an English sentence for codes we do not know
 * @param {string} [textKey] the sentence to show, when not `error.<code>`
 */
export function showError(code, vars = {}, fallback = '', textKey = '') {
  bannerState = { code, vars: { ...vars, fallback }, key: textKey || `error.${code}` };
  renderBanner();
}

/** Hides the banner (only if it shows one of `codes`, when given). @param {string[]} [codes] */
export function hideError(codes) {
  if (codes && (!bannerState || !codes.includes(bannerState.code))) return;
  bannerState = null;
  renderBanner();
}

export function bannerCode() { return bannerState?.code ?? ''; }

export function renderBanner() {
  const b = $('#error-banner');
  const text = $('#error-text');
  if (!bannerState) {
    b.hidden = true;
    delete b.dataset.code;
    text.textContent = '';
    return;
  }
  const { code, vars, key } = bannerState;
  b.dataset.code = code;
  text.textContent = has(key) ? t(key, vars) : String(vars.fallback || code);
  b.hidden = false;
}

// ---------------------------------------------------------------- chat

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

/**
 * Text with http(s) URLs turned into links, built from text nodes and <a> elements.
 * @param {string} text
 */
export function linkify(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    let url = m[0];
    // Trailing punctuation belongs to the sentence, not the link.
    const trail = /[.,;:!?)\]}]+$/.exec(url);
    if (trail) url = url.slice(0, -trail[0].length);
    const start = /** @type {number} */ (m.index);
    let ok = false;
    try { ok = ['http:', 'https:'].includes(new URL(url).protocol); } catch { ok = false; }
    if (!ok) continue;
    if (start > last) frag.append(document.createTextNode(text.slice(last, start)));
    const a = document.createElement('a');
    a.href = url;
    a.textContent = url;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    frag.append(a);
    last = start + url.length;
  }
  if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
  return frag;
}

/**
 * One chat message element.
 * @param {import('./protocol.js').ChatMessage} m
 * @param {boolean} mine
 */
export function chatMessage(m, mine) {
  const li = document.createElement('li');
  li.className = 'chat-msg';
  if (mine) li.classList.add('mine');
  li.dataset.id = String(m.id);
  const head = document.createElement('div');
  head.className = 'chat-head';
  const name = document.createElement('span');
  name.className = 'chat-name';
  name.textContent = m.name;
  const time = document.createElement('time');
  time.className = 'chat-time';
  const d = new Date(m.ts);
  time.dateTime = d.toISOString();
  time.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  head.append(name, time);
  const body = document.createElement('div');
  body.className = 'chat-text';
  body.append(linkify(m.text));
  li.append(head, body);
  return li;
}
