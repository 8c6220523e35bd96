// One Chromium process per participant, each with its own fake camera clip.
import { chromium } from 'playwright-core';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { CHROMIUM, T, artifactsDir, slug } from './env.js';

/** Flags from shared/guides/webrtc-testing.md (never --user-data-dir, never --disable-features). */
export const BASE_ARGS = [
  '--use-fake-ui-for-media-stream',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
];

/**
 * Launch a browser for one participant and open one page in it.
 * @param {object} opts
 * @param {string} opts.who     short label used in logs and artefact names
 * @param {string} [opts.clip]  Y4M file for --use-file-for-fake-video-capture
 * @param {string} [opts.fakeDevice] value for --use-fake-device-for-media-stream (e.g. "device-count=2")
 * @param {string} [opts.lang]  e.g. "en-US" (default) or "ko-KR"
 * @param {{width:number,height:number}} [opts.viewport]
 * @param {string[]} [opts.args] extra flags
 * @param {string} [opts.executablePath] another way to start Chromium (e.g. inside a network
 *   namespace, see netns.js)
 * @param {boolean} [opts.grantMedia] false: no auto-accepted permission prompt, so camera and
 *   microphone requests are refused as if the user had clicked "Block"
 * @param {string} [opts.executablePath] another Chromium (or a script that execs it)
 */
export async function launchParticipant({ who, clip, fakeDevice, lang = 'en-US', viewport = { width: 1280, height: 800 }, args = [], grantMedia = true, executablePath = CHROMIUM }) {
  const flags = [
    ...BASE_ARGS.filter((f) => grantMedia || f !== '--use-fake-ui-for-media-stream'),
    fakeDevice ? `--use-fake-device-for-media-stream=${fakeDevice}` : '--use-fake-device-for-media-stream',
    `--lang=${lang}`,
    ...(clip ? [`--use-file-for-fake-video-capture=${clip}`] : []),
    ...args,
  ];
  const browser = await chromium.launch({ executablePath, args: flags, timeout: T.navigation });
  const p = new Participant(who, browser, flags);
  await p.newPage({ viewport, locale: lang });
  return p;
}

export class Participant {
  constructor(who, browser, flags) {
    this.who = who;
    this.browser = browser;
    this.flags = flags;
    /** @type {string[]} console messages, page errors, dialogs, failed requests — with times */
    this.log = [];
    /** @type {string[]} messages of every dialog (alert/confirm/prompt) the page opened */
    this.dialogs = [];
    this.started = Date.now();
    this.pages = [];
    this.page = null;
    this.context = null;
    this.name = null;
  }

  note(line) { this.log.push(`${((Date.now() - this.started) / 1000).toFixed(2).padStart(7)}s ${line}`); }

  /** Open a page (in a fresh context) and record what it says; the first becomes `this.page`. */
  async newPage({ viewport = { width: 1280, height: 800 }, locale = 'en-US', tag = `page${this.pages.length}` } = {}) {
    const context = await this.browser.newContext({ viewport, locale });
    const page = await context.newPage();
    page.setDefaultTimeout(T.ui);
    page.setDefaultNavigationTimeout(T.navigation);
    page.on('console', (m) => this.note(`[${tag} console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => this.note(`[${tag} pageerror] ${e.stack || e.message}`));
    page.on('requestfailed', (r) => this.note(`[${tag} requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    page.on('dialog', async (d) => {
      this.dialogs.push(`${d.type()}: ${d.message()}`);
      this.note(`[${tag} dialog ${d.type()}] ${d.message()}`);
      await d.dismiss().catch(() => {});
    });
    page.on('response', (r) => { if (r.status() >= 400) this.note(`[${tag} http ${r.status()}] ${r.request().method()} ${r.url()}`); });
    page.on('crash', () => this.note(`[${tag} crash]`));
    this.pages.push(page);
    if (!this.page) { this.page = page; this.context = context; }
    return page;
  }

  async close() {
    await this.browser.close().catch(() => {});
  }
}

/** Race a promise against a timeout (for diagnostics, which must never hang). */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms); }),
  ]);
}

/** What the page knows about its connections: states, selected pair, candidates, inbound video. */
export async function pageState(page) {
  return page.evaluate(async () => {
    const out = {
      url: location.href,
      view: document.body?.dataset.view,
      errorBanner: (() => {
        const b = document.querySelector('#error-banner');
        return b ? { code: b.dataset.code, text: b.textContent.trim(), hidden: b.hidden || getComputedStyle(b).display === 'none' } : null;
      })(),
      tiles: [...document.querySelectorAll('#tiles .tile')].map((t) => {
        const v = t.querySelector('video');
        return {
          peerId: t.dataset.peerId, self: t.dataset.self, audio: t.dataset.audio, video: t.dataset.video,
          name: t.querySelector('.tile-name')?.textContent,
          videoEl: v ? { w: v.videoWidth, h: v.videoHeight, t: v.currentTime, paused: v.paused, ready: v.readyState, hasSrc: !!v.srcObject } : null,
        };
      }),
      huddle: null,
      peers: [],
    };
    const h = window.__huddle;
    if (!h) return out;
    out.huddle = { id: h.id, room: h.room, state: typeof h.state === 'object' ? JSON.parse(JSON.stringify(h.state ?? null)) : h.state };
    if (!h.peers || typeof h.peers.entries !== 'function') return out;
    for (const [id, peer] of h.peers.entries()) {
      const pc = peer?.pc;
      const info = { id, name: peer?.name };
      if (pc) {
        Object.assign(info, {
          connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState,
          iceGatheringState: pc.iceGatheringState, signalingState: pc.signalingState,
          transceivers: pc.getTransceivers().map((t) => ({ mid: t.mid, dir: t.direction, cur: t.currentDirection, send: t.sender.track?.kind + ':' + t.sender.track?.readyState + ':' + t.sender.track?.label, recv: t.receiver.track?.kind + ':' + t.receiver.track?.readyState })),
        });
        try {
          const stats = await pc.getStats();
          const byId = new Map(); stats.forEach((s) => byId.set(s.id, s));
          info.candidates = []; info.inbound = []; info.outbound = [];
          stats.forEach((s) => {
            if (s.type === 'local-candidate' || s.type === 'remote-candidate') info.candidates.push(`${s.type} ${s.protocol} ${s.address}:${s.port} ${s.candidateType}`);
            if (s.type === 'transport' && s.selectedCandidatePairId) {
              const pair = byId.get(s.selectedCandidatePairId);
              if (pair) info.selectedPair = `${byId.get(pair.localCandidateId)?.address}:${byId.get(pair.localCandidateId)?.port} -> ${byId.get(pair.remoteCandidateId)?.address}:${byId.get(pair.remoteCandidateId)?.port} ${pair.state}`;
            }
            if (s.type === 'inbound-rtp') info.inbound.push({ kind: s.kind, framesDecoded: s.framesDecoded, packets: s.packetsReceived, bytes: s.bytesReceived, w: s.frameWidth, h: s.frameHeight });
            if (s.type === 'outbound-rtp') info.outbound.push({ kind: s.kind, framesEncoded: s.framesEncoded, packets: s.packetsSent, w: s.frameWidth, h: s.frameHeight, limit: s.qualityLimitationReason });
          });
        } catch (e) { info.statsError = String(e); }
      }
      out.peers.push(info);
    }
    return out;
  });
}

/**
 * Write a screenshot, the page state and the log of every participant to artefacts.
 * Never throws and never hangs.
 */
export async function dumpDiagnostics(label, participants, server) {
  const dir = artifactsDir();
  const base = `fail-${slug(label)}`;
  const lines = [`# diagnostics for: ${label}`, `# at ${new Date().toISOString()}`];
  for (const p of participants.filter(Boolean)) {
    lines.push(`\n## participant ${p.who} (${p.name ?? '?'}) flags: ${p.flags.join(' ')}`);
    for (const [i, page] of p.pages.entries()) {
      if (page.isClosed()) { lines.push(`page ${i}: closed`); continue; }
      try {
        await withTimeout(page.screenshot({ path: path.join(dir, `${base}-${slug(p.who)}-${i}.png`) }), 5_000, 'screenshot');
      } catch (e) { lines.push(`screenshot failed: ${e.message}`); }
      try {
        const st = await withTimeout(pageState(page), 5_000, 'pageState');
        lines.push(`page ${i} state: ${JSON.stringify(st, null, 1)}`);
      } catch (e) { lines.push(`page ${i} state failed: ${e.message}`); }
    }
    lines.push(`dialogs: ${JSON.stringify(p.dialogs)}`);
    lines.push('log:', ...p.log.slice(-300));
  }
  if (server) lines.push('\n## server output (tail)', ...server.output().split('\n').slice(-200));
  const file = path.join(dir, `${base}.log`);
  try { writeFileSync(file, lines.join('\n') + '\n'); } catch { /* ignore */ }
  return file;
}

/** Write every participant's log (and the server's output) to artefacts/<label>-*.log. */
export function writeLogs(label, participants, server) {
  try {
    const dir = artifactsDir();
    for (const p of participants.filter(Boolean)) {
      writeFileSync(path.join(dir, `${slug(label)}-${slug(p.who)}.log`), [`# ${p.who} (${p.name ?? '?'}) ${p.flags.join(' ')}`, `dialogs: ${JSON.stringify(p.dialogs)}`, ...p.log].join('\n') + '\n');
    }
    if (server) writeFileSync(path.join(dir, `${slug(label)}-server.log`), server.output() + '\n');
  } catch { /* artefacts are best effort */ }
}
