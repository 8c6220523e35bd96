// Connection quality: signal bars on every tile and the "Connection details" panel, both from
// RTCPeerConnection.getStats(), sampled once a second (one timer for the whole room) while we
// are in a room. Peer-to-peer rooms: one connection per person, so a tile shows that connection.
// sfu rooms: one connection to the server, so a person's tile shows the inbound streams of their
// tracks (packet loss, jitter) with the round trip of that one connection; our own tile shows
// the connection to the server. See docs/dom-contract.md (`data-quality`, `#stats-panel`).
import { t, onLangChange } from './i18n.js';
import { S, setQualityGetter } from './core.js';
import { $ } from './ui.js';

/**
 * The one place the levels are decided. `good` needs every figure under its `good` limit,
 * `poor` takes any figure over its `poor` limit, `fair` is between.
 * - Round trip (candidate pair, STUN): ITU-T G.114 puts the comfortable limit of one-way mouth-to-ear
 *   delay at 150 ms and the end of usable at 400 ms; the network's round trip plus a jitter buffer
 *   and the codecs lands there at about 150 ms and 400 ms of RTT.
 * - Packet loss over the last seconds: Opus (with in-band FEC) and video with NACK hide up to
 *   about 2 %; past 10 % audio breaks up audibly and video freezes between key frames.
 * - Jitter (audio's, which no retransmission disturbs; video's when there is no audio): a jitter
 *   buffer absorbs 30 ms without a delay anyone notices; 100 ms costs both delay and late packets.
 * - No packet at all for `lostAfterMs` from someone whose microphone is on, or ICE reports the
 *   connection `disconnected`/`failed`: `lost`.
 */
export const THRESHOLDS = Object.freeze({
  good: Object.freeze({ rttMs: 150, lossPct: 2, jitterMs: 30 }),
  poor: Object.freeze({ rttMs: 400, lossPct: 10, jitterMs: 100 }),
  lostAfterMs: 4000,
  /** packet loss is counted over this many seconds */
  windowS: 5,
  /** fewer packets than this in the window: too few to tell a loss rate */
  minPackets: 20,
});

const TICK_MS = 1000;

/** @typedef {'connecting'|'good'|'fair'|'poor'|'lost'} Level */

/**
 * @typedef {Object} Video
 * @property {number} w
 * @property {number} h
 * @property {number|null} fps
 * @property {number} [layers]  simulcast layers sent
 */

/**
 * @typedef {Object} Route
 * @property {string} local   candidate type: host, srflx, prflx, relay
 * @property {string} remote
 * @property {string} protocol  udp or tcp (from us to the next hop)
 * @property {string} relayProtocol  udp, tcp or tls when `local` is relay
 * @property {'lan'|'nat'|'relay'|'sfu'|'sfuRelay'} kind
 */

/**
 * What one connection (or one person's part of the sfu connection) looks like now.
 * @typedef {Object} Figures
 * @property {Level} level
 * @property {string} state  the RTCPeerConnection's connectionState
 * @property {number|null} rttMs
 * @property {number|null} lossPct  the worse of `lossInPct` and `lossOutPct`: what the level goes by
 * @property {number|null} lossInPct  packets lost on their way to us (the worse of audio and video)
 * @property {number|null} lossOutPct  packets we sent that the other side reports lost (RTCP receiver reports)
 * @property {number|null} jitterMs
 * @property {number|null} inKbps
 * @property {number|null} outKbps
 * @property {Video|null} videoIn
 * @property {Video|null} videoOut
 * @property {string[]} codecs  e.g. ["VP8", "opus"]
 * @property {Route|null} route
 */

/**
 * Where each counter of one connection stood at one moment.
 * @typedef {Object} Snapshot
 * @property {number} t  ms (performance.now)
 * @property {Map<string, InStream>} inbound  by stats id
 * @property {Map<string, {kind: string, sent: number, lost: number}>} outbound  by stats id: packets
 *   sent, and lost as the receiver reports it
 * @property {number} bytesSent
 * @property {RTCStatsReport} report
 */

/**
 * @typedef {Object} InStream
 * @property {string} kind
 * @property {string|null} mid
 * @property {number} packets
 * @property {number} lost
 * @property {number} bytes
 * @property {number|null} jitterMs
 * @property {number} w
 * @property {number} h
 * @property {number|null} fps
 * @property {string} codec
 */

/**
 * @typedef {Object} Hooks
 * @property {() => import('./sfu.js').SfuLink|null} sfu  the connection to the SFU, in sfu rooms
 * @property {() => import('./ui.js').Tile|null} selfTile
 * @property {(open: boolean) => void} showPanel  opens (or closes) #stats-panel through call.js's panels
 */

/** @type {Hooks|null} */
let hooks = null;
/** @type {ReturnType<typeof setInterval>|null} */
let timer = null;
let busy = false;
/** The last few snapshots of each connection, newest last. @type {WeakMap<RTCPeerConnection, Snapshot[]>} */
const history = new WeakMap();
/** The figures of the last tick: per person id, `self`, and `server` (sfu rooms). @type {Map<string, Figures>} */
let current = new Map();
/** What opened the panel, to give it focus back when the panel closes. @type {HTMLElement|null} */
let opener = null;

/** @param {Hooks} h */
export function init(h) {
  hooks = h;
  setQualityGetter(() => Object.fromEntries([...current].map(([k, v]) => [k, { ...v }])));
  $('#quality-open')?.addEventListener('click', (e) => openPanel('', /** @type {HTMLElement} */ (e.currentTarget)));
  onLangChange(() => { renderTiles(); renderPanel(); });
}

/** Starts sampling (entering a room). */
export function start() {
  stop();
  timer = setInterval(tick, TICK_MS);
  tick();
}

/** Stops sampling and forgets every figure (leaving the room). */
export function stop() {
  if (timer) clearInterval(timer);
  timer = null;
  current = new Map();
  const list = $('#stats-list');
  if (list) list.replaceChildren();
}

/** The element that opened the panel (call.js gives it focus back on close). */
export function openerEl() { return opener && opener.isConnected ? opener : $('#people-button'); }

/** The panel was shown or hidden by call.js. @param {boolean} open */
export function panelShown(open) {
  if (open) renderPanel();
}

/**
 * Opens the panel, scrolled to one person's connection (or to the top).
 * @param {string} focusId  a person's id, `self` (our own tile), or ''
 * @param {HTMLElement|null} from
 */
export function openPanel(focusId, from) {
  opener = from;
  hooks?.showPanel(true);
  renderPanel();
  // Our own tile stands for the connection to the server (sfu rooms) or all of them (p2p).
  const key = focusId === 'self' ? 'server' : focusId;
  const sec = key ? /** @type {HTMLElement|null} */ ($('#stats-list').querySelector(`[data-conn="${CSS.escape(key)}"]`)) : null;
  for (const s of /** @type {NodeListOf<HTMLElement>} */ ($('#stats-list').querySelectorAll('.stats-conn'))) s.classList.toggle('focused', s === sec);
  if (sec) { sec.scrollIntoView({ block: 'nearest' }); sec.focus({ preventScroll: true }); }
}

// ---------------------------------------------------------------- sampling

async function tick() {
  if (busy || !hooks || !S.inRoom) return;
  busy = true;
  try {
    const sfu = hooks.sfu();
    /** @type {Set<RTCPeerConnection>} */
    const pcs = new Set();
    if (sfu && !sfu.closed) pcs.add(sfu.pc);
    for (const rec of S.peers.values()) if (rec.link && !rec.viaSfu) pcs.add(rec.link.pc);
    const snaps = new Map();
    await Promise.all([...pcs].map(async (pc) => {
      if (pc.connectionState === 'closed') return;
      try { snaps.set(pc, remember(pc, await pc.getStats())); } catch { /* closed meanwhile */ }
    }));
    if (!S.inRoom) return;
    const next = new Map();
    if (sfu && snaps.has(sfu.pc)) {
      next.set('server', figuresOf(sfu.pc, null, true));
      next.set('self', next.get('server'));
      const owners = ownersByMid(sfu);
      for (const rec of S.peers.values()) {
        if (!rec.viaSfu) continue;
        next.set(rec.id, figuresOf(sfu.pc, (s) => s.mid !== null && owners.get(s.mid) === rec.id, false, rec.audio));
      }
    }
    for (const rec of S.peers.values()) {
      if (rec.viaSfu || !rec.link || !snaps.has(rec.link.pc)) continue;
      next.set(rec.id, figuresOf(rec.link.pc, () => true, true, rec.audio));
    }
    if (!next.has('self')) {
      // Peer-to-peer: our own network is as good as our best connection (a bad one alone is the
      // other side's network).
      const order = ['good', 'fair', 'poor', 'lost'];
      const best = [...next.values()].filter((f) => f.level !== 'connecting').sort((a, b) => order.indexOf(a.level) - order.indexOf(b.level))[0];
      if (best) next.set('self', best);
    }
    current = next;
    renderTiles();
    if (S.panel === 'stats') renderPanel();
  } finally {
    busy = false;
  }
}

/** @param {import('./sfu.js').SfuLink} sfu @returns {Map<string, string>} mid → person id */
function ownersByMid(sfu) {
  const out = new Map();
  for (const tx of sfu.pc.getTransceivers()) {
    const id = tx.mid !== null ? sfu.owners.get(tx.receiver.track) : undefined;
    if (id) out.set(tx.mid, id);
  }
  return out;
}

/** Keeps this report as the connection's newest snapshot. @param {RTCPeerConnection} pc @param {RTCStatsReport} report */
function remember(pc, report) {
  /** @type {Snapshot} */
  const snap = { t: performance.now(), inbound: new Map(), outbound: new Map(), bytesSent: 0, report };
  /** @type {Map<string, string>} */
  const codecs = new Map();
  report.forEach((s) => { if (s.type === 'codec') codecs.set(s.id, String(s.mimeType || '').replace(/^\w+\//, '')); });
  report.forEach((s) => {
    if (s.type === 'inbound-rtp') {
      snap.inbound.set(s.id, {
        kind: s.kind, mid: s.mid ?? null,
        packets: s.packetsReceived ?? 0, lost: Math.max(0, s.packetsLost ?? 0), bytes: s.bytesReceived ?? 0,
        jitterMs: typeof s.jitter === 'number' ? s.jitter * 1000 : null,
        w: s.frameWidth ?? 0, h: s.frameHeight ?? 0, fps: s.framesPerSecond ?? null,
        codec: codecs.get(s.codecId) ?? '',
      });
    } else if (s.type === 'outbound-rtp') {
      snap.bytesSent += s.bytesSent ?? 0;
      snap.outbound.set(s.id, { kind: s.kind, sent: s.packetsSent ?? 0, lost: 0 });
    }
  });
  report.forEach((s) => {
    const o = s.type === 'remote-inbound-rtp' ? snap.outbound.get(s.localId) : null;
    if (o) o.lost = Math.max(0, s.packetsLost ?? 0);
  });
  const list = history.get(pc) ?? [];
  list.push(snap);
  // Enough to reach back `windowS` seconds (and a spare, as ticks drift).
  while (list.length > THRESHOLDS.windowS + 2) list.shift();
  history.set(pc, list);
  return snap;
}

/**
 * The figures of `pc`, or of the inbound streams `mine` picks from it.
 * @param {RTCPeerConnection} pc
 * @param {((s: InStream) => boolean)|null} mine  null: every inbound stream
 * @param {boolean} whole  the connection is all this person's (or the server's): add what we send
 * @param {boolean} [talking]  the person's microphone is on, so packets should keep coming
 * @returns {Figures}
 */
function figuresOf(pc, mine, whole, talking = false) {
  const list = history.get(pc) ?? [];
  const now = list[list.length - 1];
  const prev = list.length > 1 ? list[list.length - 2] : null;
  // The oldest snapshot inside the window.
  const old = list.find((s) => now.t - s.t <= THRESHOLDS.windowS * 1000 + 500) ?? now;
  const mineNow = [...now.inbound.entries()].filter(([, s]) => !mine || mine(s));
  const sent = outbound(now.report);
  const pair = selectedPair(now.report);
  /** @type {Figures} */
  const f = {
    level: 'connecting', state: pc.connectionState,
    rttMs: pair.rttMs ?? sent.rttMs, lossPct: null, lossInPct: null, lossOutPct: null, jitterMs: null, inKbps: null, outKbps: null,
    videoIn: null, videoOut: whole ? sent.video : null, codecs: [], route: pair.route,
  };
  // Loss over the window: the worse of audio and video (audio has no retransmission, so it shows
  // the network's own loss when video's NACKs repair most of it); both ways on a whole connection.
  if (old !== now) {
    for (const kind of ['audio', 'video']) {
      let lost = 0, got = 0;
      for (const [id, s] of mineNow) {
        if (s.kind !== kind) continue;
        const o = old.inbound.get(id);
        lost += s.lost - (o ? o.lost : 0);
        got += s.packets - (o ? o.packets : 0);
      }
      lost = Math.max(0, lost);
      if (lost + got >= THRESHOLDS.minPackets) f.lossInPct = Math.max(f.lossInPct ?? 0, (100 * lost) / (lost + got));
      if (!whole) continue;
      let lostOut = 0, sentOut = 0;
      for (const [id, s] of now.outbound) {
        const o = old.outbound.get(id);
        if (s.kind !== kind || !o) continue;
        lostOut += s.lost - o.lost;
        sentOut += s.sent - o.sent;
      }
      if (sentOut >= THRESHOLDS.minPackets) f.lossOutPct = Math.max(f.lossOutPct ?? 0, Math.min(100, (100 * Math.max(0, lostOut)) / sentOut));
    }
    if (f.lossInPct !== null || f.lossOutPct !== null) f.lossPct = Math.max(f.lossInPct ?? 0, f.lossOutPct ?? 0);
  }
  const jit = (/** @type {string} */ kind) => mineNow.filter(([, s]) => s.kind === kind && s.jitterMs !== null && s.packets > 0).map(([, s]) => /** @type {number} */ (s.jitterMs));
  const aj = jit('audio'), vj = jit('video');
  f.jitterMs = aj.length ? Math.max(...aj) : vj.length ? Math.max(...vj) : null;
  if (prev) {
    const secs = (now.t - prev.t) / 1000;
    let bytes = 0;
    for (const [id, s] of mineNow) bytes += s.bytes - (prev.inbound.get(id)?.bytes ?? s.bytes);
    if (secs > 0.2) {
      f.inKbps = Math.max(0, (bytes * 8) / 1000 / secs);
      if (whole) f.outKbps = Math.max(0, ((now.bytesSent - prev.bytesSent) * 8) / 1000 / secs);
    }
  }
  const video = mineNow.map(([, s]) => s).filter((s) => s.kind === 'video' && s.w > 0).sort((a, b) => b.w * b.h - a.w * a.h)[0];
  if (video) f.videoIn = { w: video.w, h: video.h, fps: video.fps };
  const codecs = new Set();
  for (const [, s] of mineNow) if (s.codec && s.packets > 0) codecs.add(s.codec);
  if (whole) for (const c of sent.codecs) codecs.add(c);
  f.codecs = [...codecs].sort((a, b) => (a === 'opus' ? 1 : 0) - (b === 'opus' ? 1 : 0));
  // Silence from someone who talks: nothing arrived over the last `lostAfterMs`.
  let silent = false;
  const since = list.find((s) => now.t - s.t <= THRESHOLDS.lostAfterMs + 500);
  if (talking && since && now.t - since.t >= THRESHOLDS.lostAfterMs - 500) {
    const got = mineNow.reduce((n, [id, s]) => n + s.packets - (since.inbound.get(id)?.packets ?? s.packets), 0);
    silent = mineNow.some(([id]) => since.inbound.has(id)) && got === 0;
  }
  f.level = levelOf(f, pc.connectionState, silent);
  return f;
}

/**
 * @param {Figures} f
 * @param {RTCPeerConnectionState} state
 * @param {boolean} silent
 * @returns {Level}
 */
function levelOf(f, state, silent) {
  if (state === 'disconnected' || state === 'failed') return 'lost';
  if (state !== 'connected') return 'connecting';
  if (silent) return 'lost';
  return classify(f);
}

/**
 * The level these figures earn (see THRESHOLDS); `connecting` while nothing is measured yet.
 * @param {{rttMs: number|null, lossPct: number|null, jitterMs: number|null}} m
 * @returns {Level}
 */
export function classify(m) {
  if (m.rttMs === null && m.lossPct === null) return 'connecting';
  const g = THRESHOLDS.good, p = THRESHOLDS.poor;
  const over = (/** @type {number|null} */ v, /** @type {number} */ lim) => v !== null && v > lim;
  const under = (/** @type {number|null} */ v, /** @type {number} */ lim) => v === null || v < lim;
  if (over(m.rttMs, p.rttMs) || over(m.lossPct, p.lossPct) || over(m.jitterMs, p.jitterMs)) return 'poor';
  if (under(m.rttMs, g.rttMs) && under(m.lossPct, g.lossPct) && under(m.jitterMs, g.jitterMs)) return 'good';
  return 'fair';
}

/**
 * The selected candidate pair: its round trip and the route it takes.
 * @param {RTCStatsReport} report
 * @returns {{rttMs: number|null, route: Route|null}}
 */
function selectedPair(report) {
  /** @type {any} */
  let pair = null;
  report.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? pair; });
  if (!pair) report.forEach((s) => { if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  if (!pair) return { rttMs: null, route: null };
  const l = report.get(pair.localCandidateId), r = report.get(pair.remoteCandidateId);
  const rttMs = typeof pair.currentRoundTripTime === 'number' ? pair.currentRoundTripTime * 1000 : null;
  if (!l || !r) return { rttMs, route: null };
  const toSfu = S.topology === 'sfu';
  const relayed = l.candidateType === 'relay' || r.candidateType === 'relay';
  /** @type {Route['kind']} */
  const kind = toSfu ? (relayed ? 'sfuRelay' : 'sfu')
    : relayed ? 'relay' : l.candidateType === 'host' && r.candidateType === 'host' ? 'lan' : 'nat';
  return {
    rttMs,
    route: {
      local: l.candidateType, remote: r.candidateType, protocol: l.protocol ?? '',
      relayProtocol: l.candidateType === 'relay' ? l.relayProtocol ?? 'udp' : r.candidateType === 'relay' ? 'udp' : '', kind,
    },
  };
}

/**
 * What we send: the largest video layer (and how many), codecs, and the round trip the receiver
 * reports back (RTCP receiver reports).
 * @param {RTCStatsReport} report
 */
function outbound(report) {
  /** @type {Video|null} */
  let video = null;
  let layers = 0, rttMs = /** @type {number|null} */ (null);
  const codecs = new Set();
  report.forEach((s) => {
    if (s.type === 'outbound-rtp') {
      if ((s.packetsSent ?? 0) > 0) {
        const c = report.get(s.codecId);
        if (c) codecs.add(String(c.mimeType || '').replace(/^\w+\//, ''));
      }
      if (s.kind === 'video' && s.frameWidth > 0 && s.active !== false) {
        layers++;
        if (!video || s.frameWidth * s.frameHeight > video.w * video.h) video = { w: s.frameWidth, h: s.frameHeight, fps: s.framesPerSecond ?? null };
      }
    } else if (s.type === 'remote-inbound-rtp') {
      if (typeof s.roundTripTime === 'number') rttMs = Math.max(rttMs ?? 0, s.roundTripTime * 1000);
    }
  });
  if (video && layers > 1) video.layers = layers;
  return { video, codecs, rttMs };
}

// ---------------------------------------------------------------- tiles

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The three signal bars (each coloured by CSS from the level). */
function bars() {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  [[3, 15, 5, 6], [9.5, 10, 5, 11], [16, 4, 5, 17]].forEach(([x, y, w, h], i) => {
    const r = document.createElementNS(SVG_NS, 'rect');
    r.setAttribute('x', String(x)); r.setAttribute('y', String(y));
    r.setAttribute('width', String(w)); r.setAttribute('height', String(h));
    r.setAttribute('rx', '1');
    r.setAttribute('class', `bar bar${i + 1}`);
    svg.append(r);
  });
  return svg;
}

/** "RTT 23 ms, loss 0.0 %, jitter 2 ms" (the figures known so far). @param {Figures} f */
export function summary(f) {
  const parts = [];
  if (f.rttMs !== null) parts.push(t('quality.rtt', { v: Math.round(f.rttMs) }));
  if (f.lossPct !== null) parts.push(t('quality.loss', { v: f.lossPct.toFixed(1) }));
  if (f.jitterMs !== null) parts.push(t('quality.jitter', { v: Math.round(f.jitterMs) }));
  return parts.join(', ');
}

/**
 * Puts the indicator on a tile (or takes it off, with no figures).
 * @param {import('./ui.js').Tile} tile
 * @param {string} key  the person's id or `self`
 * @param {Figures|undefined} f
 */
function renderTile(tile, key, f) {
  const el = tile.el;
  /** @type {HTMLButtonElement|null} */
  let b = el.querySelector(':scope > .tile-quality');
  if (!f || el.dataset.problem) {
    b?.remove();
    delete el.dataset.quality;
    return;
  }
  if (!b) {
    b = document.createElement('button');
    b.type = 'button';
    b.className = 'tile-quality';
    b.append(bars());
    b.addEventListener('click', (e) => { e.stopPropagation(); openPanel(key, /** @type {HTMLElement} */ (e.currentTarget)); });
    el.append(b);
  }
  if (el.dataset.quality !== f.level) el.dataset.quality = f.level;
  if (b.dataset.level !== f.level) b.dataset.level = f.level;
  const level = t(`quality.${f.level}`);
  const head = key === 'self' ? t('quality.tileSelf', { level }) : t('quality.tile', { name: tile.name, level });
  // Lost: the last figures are stale (no packet, no loss counted), so say what happened instead.
  const figures = f.level === 'connecting' ? '' : f.level === 'lost' ? t('quality.lostWhy') : summary(f);
  const label = figures ? `${head}. ${figures}` : head;
  if (b.title !== label) {
    b.setAttribute('aria-label', label);
    b.title = label;
  }
}

function renderTiles() {
  if (!hooks) return;
  const self = hooks.selfTile();
  if (self) renderTile(self, 'self', current.get('self'));
  for (const rec of S.peers.values()) if (rec.tile) renderTile(rec.tile, rec.id, current.get(rec.id));
}

// ---------------------------------------------------------------- the panel

/** @param {number|null} kbps */
function rate(kbps) {
  if (kbps === null) return '—';
  return kbps >= 1000 ? t('quality.mbps', { v: (kbps / 1000).toFixed(1) }) : t('quality.kbps', { v: Math.round(kbps) });
}

/** @param {Video|null} v */
function videoText(v) {
  if (!v) return '—';
  const size = `${v.w}×${v.h}`;
  const fps = v.fps !== null ? t('quality.fps', { v: Math.round(v.fps) }) : '';
  const base = fps ? `${size}, ${fps}` : size;
  return v.layers ? `${base} ${t('quality.layers', { n: v.layers })}` : base;
}

/** "0.0 %", or both ways: "0.0 % received, 1.2 % sent". @param {Figures} f */
function lossText(f) {
  const pct = (/** @type {number} */ v) => v.toFixed(1);
  if (f.lossInPct !== null && f.lossOutPct !== null) return t('quality.lossBoth', { in: pct(f.lossInPct), out: pct(f.lossOutPct) });
  return f.lossPct === null ? '—' : t('quality.pct', { v: pct(f.lossPct) });
}

/** @param {Route|null} r */
function routeText(r) {
  if (!r) return '—';
  const proto = (r.kind === 'relay' || r.kind === 'sfuRelay' ? r.relayProtocol : r.protocol).toUpperCase();
  return t(`quality.route.${r.kind}`, { proto });
}

/**
 * The rows of one connection's section: [stat, label key, text, raw value for tests].
 * @param {Figures} f
 * @param {'p2p'|'server'|'person'} what
 * @returns {[string, string, string, string][]}
 */
function rows(f, what) {
  const ms = (/** @type {number|null} */ v) => (v === null ? '—' : t('quality.ms', { v: Math.round(v) }));
  const raw = (/** @type {number|null} */ v, digits = 0) => (v === null ? '' : v.toFixed(digits));
  /** @type {[string, string, string, string][]} */
  const out = [['level', 'quality.row.level', t(`quality.${f.level}`), f.level]];
  if (what !== 'person') out.push(['rtt', 'quality.row.rtt', ms(f.rttMs), raw(f.rttMs, 1)]);
  out.push(['loss', 'quality.row.loss', lossText(f), raw(f.lossPct, 2)]);
  out.push(['jitter', 'quality.row.jitter', ms(f.jitterMs), raw(f.jitterMs, 1)]);
  out.push(['bitrate-in', 'quality.row.in', rate(f.inKbps), raw(f.inKbps, 1)]);
  if (what !== 'person') out.push(['bitrate-out', 'quality.row.out', rate(f.outKbps), raw(f.outKbps, 1)]);
  if (what !== 'server') out.push(['video-in', 'quality.row.videoIn', videoText(f.videoIn), f.videoIn ? `${f.videoIn.w}x${f.videoIn.h}` : '']);
  if (what !== 'person') out.push(['video-out', 'quality.row.videoOut', videoText(f.videoOut), f.videoOut ? `${f.videoOut.w}x${f.videoOut.h}` : '']);
  out.push(['codecs', 'quality.row.codecs', f.codecs.length ? f.codecs.join(', ') : '—', f.codecs.join(',')]);
  if (what !== 'person') {
    const r = f.route;
    out.push(['route', 'quality.row.route', routeText(r), r ? `${r.local}/${r.protocol} ${r.remote}` : '']);
  }
  return out;
}

/**
 * One section, made once and updated in place (so a reader's place and focus survive updates).
 * @param {HTMLElement} list
 * @param {string} key
 * @param {string} title
 * @param {string} sub
 * @param {Figures} f
 * @param {'p2p'|'server'|'person'} what
 */
function section(list, key, title, sub, f, what) {
  let sec = /** @type {HTMLElement|null} */ (list.querySelector(`:scope > [data-conn="${CSS.escape(key)}"]`));
  if (!sec) {
    sec = document.createElement('section');
    sec.className = 'stats-conn';
    sec.dataset.conn = key;
    sec.tabIndex = -1;
    const h = document.createElement('h3');
    const name = document.createElement('span');
    name.className = 'stats-name';
    const badge = document.createElement('span');
    badge.className = 'stats-badge';
    badge.append(bars());
    h.append(badge, name);
    const p = document.createElement('p');
    p.className = 'stats-sub';
    const dl = document.createElement('dl');
    sec.append(h, p, dl);
  }
  sec.dataset.quality = f.level;
  /** @type {HTMLElement} */ (sec.querySelector('.stats-badge')).dataset.level = f.level;
  /** @type {HTMLElement} */ (sec.querySelector('.stats-name')).textContent = title;
  /** @type {HTMLElement} */ (sec.querySelector('.stats-sub')).textContent = sub;
  const dl = /** @type {HTMLElement} */ (sec.querySelector('dl'));
  const want = rows(f, what);
  if (dl.children.length !== want.length * 2 || want.some(([stat], i) => /** @type {HTMLElement} */ (dl.children[i * 2 + 1]).dataset.stat !== stat)) {
    dl.replaceChildren(...want.flatMap(([stat]) => {
      const dt = document.createElement('dt');
      const dd = document.createElement('dd');
      dd.dataset.stat = stat;
      return [dt, dd];
    }));
  }
  want.forEach(([, label, text, value], i) => {
    const dt = /** @type {HTMLElement} */ (dl.children[i * 2]), dd = /** @type {HTMLElement} */ (dl.children[i * 2 + 1]);
    dt.textContent = t(label);
    if (dd.textContent !== text) dd.textContent = text;
    dd.dataset.value = value;
  });
  return sec;
}

function renderPanel() {
  const list = $('#stats-list');
  if (!list || S.panel !== 'stats') return;
  /** @type {HTMLElement[]} */
  const secs = [];
  const server = current.get('server');
  if (server) secs.push(section(list, 'server', t('quality.server'), t('quality.serverSub'), server, 'server'));
  for (const rec of S.peers.values()) {
    const f = current.get(rec.id);
    if (!f) continue;
    const sub = rec.viaSfu ? t('quality.viaServer') : t('quality.direct');
    secs.push(section(list, rec.id, rec.name, sub, f, rec.viaSfu ? 'person' : 'p2p'));
  }
  const same = secs.length === list.children.length && secs.every((s, i) => list.children[i] === s);
  if (!same) list.replaceChildren(...secs);
  $('#stats-empty').hidden = secs.length > 0;
}
