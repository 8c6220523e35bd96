// The connectivity check: can calls get through this network to this server? It tries each way
// a call can take to huddle's TURN server — UDP, TCP (and TLS when offered) — by asking for a relay
// allocation over it (an RTCPeerConnection with only that TURN URL and iceTransportPolicy
// `relay`), and sums it up in one sentence. (A STUN "srflx" answer is no UDP test: Chromium drops
// a server-reflexive candidate equal to a host candidate, as on a LAN; an allocation is.) Before
// joining it tests with a credential of its own, asked for with `relay_check` (it allocates, which
// is the test, and relays nothing); in a call, with the call's.
import { t } from './i18n.js';
import { icon } from './ui.js';
import { sig, S } from './core.js';

/**
 * What a step found: `ok`; `blocked` (no answer: the network drops it); `refused` (the relay
 * answered but refused the allocation); `none` (nothing to test: the server offers no such relay);
 * `untested` (could not be tried because nothing reached the relay); `failed` (the WebSocket);
 * `restricted` (the server lets only people with a token test its relay); `running`.
 * @typedef {'ok'|'blocked'|'refused'|'none'|'untested'|'failed'|'restricted'|'running'} StepResult
 */

/**
 * The sum of the steps: `ready` (UDP works), `tcp_only`, `tls_only`, `blocked`, `refused`,
 * `no_relay`, `restricted` (only invited people may test the relay), `ws_failed`, `unsupported`
 * (no WebRTC in this browser), `running`.
 * @typedef {'ready'|'tcp_only'|'tls_only'|'blocked'|'refused'|'no_relay'|'restricted'|'ws_failed'|'unsupported'|'running'} Verdict
 */

/**
 * @typedef {Object} CheckResult
 * @property {StepResult} ws    the signalling WebSocket (welcome received)
 * @property {StepResult} udp   a TURN allocation over UDP
 * @property {StepResult} tcp   a TURN allocation over TCP
 * @property {StepResult} tls   a TURN allocation over TLS (`none` unless the server offers `turns:`)
 * @property {StepResult} turn  the relay itself: did it allocate for us?
 * @property {Verdict} verdict
 * @property {number} port      the TURN port (UDP and TCP), 0 when there is none
 * @property {number} tlsPort   the TURN-over-TLS port, 0 when there is none
 * @property {number} errorCode the last icecandidateerror code seen (0: none), for diagnostics
 * @property {number} at        when it finished (Date.now())
 */

/** How long one allocation may take before its way counts as blocked. */
export const PROBE_TIMEOUT_MS = 5000;
/** A result younger than this is reused for a call's diagnosis instead of checking again. */
const FRESH_MS = 120_000;
/** How long the server may take to hand out the check's credential. */
const ASK_TIMEOUT_MS = 5000;
/** Step order on screen. */
export const STEPS = /** @type {const} */ (['ws', 'udp', 'tcp', 'tls', 'turn']);

/**
 * The TURN URL to test for each transport, with its credentials: the last ones listed (huddle's
 * own server comes after any the operator configured).
 * @param {import('./protocol.js').IceServer[]} iceServers
 */
export function relayTargets(iceServers) {
  /** @type {Record<'udp'|'tcp'|'tls', {url: string, port: number, username: string, credential: string}|null>} */
  const out = { udp: null, tcp: null, tls: null };
  for (const s of iceServers || []) {
    if (!s || !s.username || !s.credential) continue;
    const urls = Array.isArray(s.urls) ? s.urls : [s.urls];
    for (const url of urls) {
      const m = /^(turns?):(\[[^\]]+\]|[^:?]+)(?::(\d+))?(?:\?transport=(udp|tcp))?$/i.exec(String(url));
      if (!m) continue;
      const tls = m[1].toLowerCase() === 'turns';
      const kind = tls ? 'tls' : (m[4] || 'udp').toLowerCase() === 'tcp' ? 'tcp' : 'udp';
      const port = m[3] ? Number(m[3]) : tls ? 5349 : 3478;
      out[kind] = { url: String(url), port, username: s.username, credential: s.credential };
    }
  }
  return out;
}

/**
 * Asks one TURN URL for a relay allocation. `ok` when a relay candidate arrives; `refused` when
 * the server answered with a STUN error (e.g. 401: the credentials); `blocked` on silence.
 * @param {{url: string, username: string, credential: string}} target
 * @param {number} timeoutMs
 * @returns {Promise<{result: 'ok'|'blocked'|'refused', code: number}>}
 */
export function probeRelay(target, timeoutMs = PROBE_TIMEOUT_MS) {
  return new Promise((resolve) => {
    /** @type {RTCPeerConnection} */
    let pc;
    try {
      pc = new RTCPeerConnection({
        iceServers: [{ urls: [target.url], username: target.username, credential: target.credential }],
        iceTransportPolicy: 'relay',
      });
    } catch (e) {
      console.warn('huddle: connectivity check could not start', e);
      resolve({ result: 'blocked', code: 0 });
      return;
    }
    let code = 0;
    let finished = false;
    // A STUN error from the server (300-699) means it answered: the way is open, the allocation refused.
    const answered = () => code >= 300 && code < 700;
    const done = (/** @type {'ok'|'blocked'|'refused'} */ result) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      pc.onicecandidate = pc.onicecandidateerror = pc.onicegatheringstatechange = null;
      try { pc.close(); } catch { /* ignore */ }
      resolve({ result, code });
    };
    const timer = setTimeout(() => done(answered() ? 'refused' : 'blocked'), timeoutMs);
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.type === 'relay') done('ok');
    };
    pc.onicecandidateerror = (e) => {
      const ev = /** @type {RTCPeerConnectionIceErrorEvent} */ (e);
      code = ev.errorCode;
      if (answered()) done('refused');
    };
    pc.onicegatheringstatechange = () => {
      if (pc.iceGatheringState === 'complete') done(answered() ? 'refused' : 'blocked');
    };
    pc.createDataChannel('check');
    pc.createOffer().then((o) => pc.setLocalDescription(o)).catch((e) => {
      console.warn('huddle: connectivity check offer failed', e);
      done('blocked');
    });
  });
}

/**
 * The sum of the steps.
 * @param {Omit<CheckResult, 'verdict'|'at'|'errorCode'>} r
 * @returns {Verdict}
 */
export function verdictOf(r) {
  if (r.ws === 'failed') return 'ws_failed';
  if ([r.ws, r.udp, r.tcp, r.tls].includes('running')) return 'running';
  if (r.turn === 'none') return 'no_relay';
  if (r.turn === 'restricted') return 'restricted';
  if (r.turn === 'refused') return 'refused';
  if (r.udp === 'ok') return 'ready';
  if (r.tcp === 'ok') return 'tcp_only';
  if (r.tls === 'ok') return 'tls_only';
  return 'blocked';
}

/**
 * Runs the relay steps against these ICE servers (the WebSocket step is the caller's).
 * @param {import('./protocol.js').IceServer[]} iceServers
 * @param {{timeoutMs?: number, onStep?: (partial: CheckResult) => void}} [opts]
 * @returns {Promise<CheckResult>}
 */
export async function runCheck(iceServers, { timeoutMs = PROBE_TIMEOUT_MS, onStep } = {}) {
  const targets = relayTargets(iceServers);
  const port = (targets.udp || targets.tcp)?.port ?? 0;
  const tlsPort = targets.tls?.port ?? 0;
  /** @type {CheckResult} */
  const r = {
    ws: 'ok', udp: 'none', tcp: 'none', tls: 'none', turn: 'none', verdict: 'running', port, tlsPort, errorCode: 0, at: 0,
  };
  if (typeof RTCPeerConnection === 'undefined') {
    return { ...r, udp: 'untested', tcp: 'untested', tls: 'untested', turn: 'untested', verdict: 'unsupported', at: Date.now() };
  }
  const kinds = /** @type {const} */ (['udp', 'tcp', 'tls']);
  for (const k of kinds) if (targets[k]) r[k] = 'running';
  if (targets.udp || targets.tcp || targets.tls) r.turn = 'running';
  onStep?.({ ...r });
  /** @type {('ok'|'blocked'|'refused')[]} */
  const found = [];
  await Promise.all(kinds.map(async (k) => {
    const target = targets[k];
    if (!target) return;
    const got = await probeRelay(target, timeoutMs);
    found.push(got.result);
    if (got.code) r.errorCode = got.code;
    // The server answered, even if with a refusal: this way through the network is open.
    r[k] = got.result === 'blocked' ? 'blocked' : 'ok';
    onStep?.({ ...r });
  }));
  if (r.turn === 'running') {
    r.turn = found.includes('ok') ? 'ok' : found.includes('refused') ? 'refused' : 'untested';
  }
  r.verdict = verdictOf(r);
  r.at = Date.now();
  return r;
}

// ---------------------------------------------------------------- the page's one check at a time

/** @type {CheckResult|null} the last finished check */
let last = null;
/** @type {CheckResult|null} the check under way, as far as it got */
let partial = null;
/** @type {Promise<CheckResult>|null} */
let running = null;
/** @type {Set<() => void>} */
const listeners = new Set();
/** @type {import('./protocol.js').IceServer[]} the ICE servers the last check tested */
let tested = [];
/** What a `relay_check` carries outside a room (the room and token a join would). */
let checkAuth = () => /** @type {{room?: string, token?: string}} */ ({});

/** What to show now: the check under way, else the last one, else null (never ran). */
export function current() { return partial || last; }
/** The last finished check (null: none yet). */
export function lastResult() { return last; }

/** The ICE servers the last check tested (its TURN port, for tests and diagnostics). */
export function lastServers() { return tested; }

/**
 * Where a `relay_check` gets its room and token (a server that admits only token holders lets
 * only them test its relay before joining). @param {() => {room?: string, token?: string}} fn
 */
export function setCheckAuth(fn) { checkAuth = fn; }

/** Called whenever the shown result changes. @param {() => void} fn */
export function onCheckChange(fn) { listeners.add(fn); return () => listeners.delete(fn); }
function changed() { for (const fn of listeners) { try { fn(); } catch (e) { console.error('huddle: check listener failed', e); } } }

/**
 * The ICE servers to test: the call's in a room, else a check credential asked for now
 * (`relay_check`). `refused`: the server said no (an error code); null: no answer.
 * @returns {Promise<{servers: import('./protocol.js').IceServer[]}|{refused: string}|null>}
 */
function serversToTest() {
  if (S.inRoom && S.iceServers.length) return Promise.resolve({ servers: S.iceServers });
  return new Promise((resolve) => {
    /** @type {(() => void)[]} */
    const offs = [];
    /** @param {{servers: import('./protocol.js').IceServer[]}|{refused: string}|null} v */
    const done = (v) => {
      for (const off of offs) off();
      clearTimeout(timer);
      resolve(v);
    };
    const timer = setTimeout(() => done(null), ASK_TIMEOUT_MS);
    offs.push(sig.on('check_ice_servers', (/** @type {import('./protocol.js').CheckIceServersMsg} */ m) => done({ servers: m.iceServers || [] })));
    offs.push(sig.on('error', (/** @type {import('./protocol.js').ErrorMsg} */ m) => { if (m.request === 'relay_check') done({ refused: m.code }); }));
    offs.push(sig.on('close', () => done(null)));
    if (!sig.relayCheck(checkAuth())) done(null);
  });
}

/** A check that could not reach the server. @returns {CheckResult} */
function unreachable() {
  return {
    ws: 'failed', udp: 'untested', tcp: 'untested', tls: 'none', turn: 'untested', verdict: 'ws_failed',
    port: 0, tlsPort: 0, errorCode: 0, at: Date.now(),
  };
}

/**
 * Runs the check (once at a time) with ICE servers from the server: `joined`'s in a call, else a
 * check credential of its own. Without a WebSocket it reports `ws_failed` at once.
 * @param {{force?: boolean}} [opts] force: run again even if a recent result exists
 * @returns {Promise<CheckResult>}
 */
export function startCheck({ force = false } = {}) {
  if (running) return running;
  if (!force && last && last.verdict !== 'ws_failed' && Date.now() - last.at < FRESH_MS) return Promise.resolve(last);
  if (!sig.isOpen) {
    last = unreachable();
    partial = null;
    changed();
    return Promise.resolve(last);
  }
  running = serversToTest().then((got) => {
    if (!got) return unreachable();
    if ('refused' in got) {
      // Only invited people may test this server's relay: nothing else to find out here.
      tested = [];
      /** @type {CheckResult} */
      const r = {
        ws: 'ok', udp: 'none', tcp: 'none', tls: 'none', turn: 'restricted', verdict: 'restricted',
        port: 0, tlsPort: 0, errorCode: 0, at: Date.now(),
      };
      return r;
    }
    tested = got.servers;
    return runCheck(got.servers, { onStep: (p) => { partial = p; changed(); } });
  }).then((r) => {
    last = r;
    partial = null;
    running = null;
    console.info(`huddle: connectivity check: ${JSON.stringify(r)}`);
    changed();
    return r;
  });
  return running;
}

/** Forgets the last result (e.g. the WebSocket came back: the old verdict is stale). */
export function resetCheck() {
  if (running) return;
  last = null;
  partial = null;
  changed();
}

/** Starts a check only if none has finished yet (or the last one could not reach the server). */
export function ensureCheck() {
  if (last && last.verdict !== 'ws_failed') return Promise.resolve(last);
  return startCheck();
}

// ---------------------------------------------------------------- sentences

/**
 * The one sentence for a result (i18n key and values).
 * @param {CheckResult|null} r
 */
export function summaryOf(r) {
  if (!r || r.verdict === 'running') return { key: 'check.running', vars: {} };
  if (r.verdict === 'ws_failed') return { key: 'error.ws_failed', vars: {} };
  return { key: `check.verdict.${r.verdict}`, vars: { port: r.port, tlsPort: r.tlsPort } };
}

/**
 * Why a call to `name` (or to the server, `name` empty) does not connect, from our own check.
 * @param {CheckResult|null} r  null: the check is still running
 * @param {string} name
 */
export function diagnosisOf(r, name) {
  const who = name ? 'peer' : 'sfu';
  const vars = { name, port: r?.port ?? 0, url: `${location.origin}/check` };
  if (!r || r.verdict === 'running') return { key: `diag.${who}.checking`, vars };
  switch (r.verdict) {
    case 'blocked': case 'refused': case 'no_relay': case 'unsupported':
      return { key: `diag.${who}.${r.verdict}`, vars };
    case 'ws_failed': case 'restricted': return { key: `diag.${who}.unknown`, vars };
    default: return { key: `diag.${who}.elsewhere`, vars }; // our side works: the other side's network, then
  }
}

/**
 * The sentence of one step line.
 * @param {typeof STEPS[number]} step
 * @param {CheckResult} r
 */
export function stepText(step, r) {
  return t(`check.${step}.${r[step]}`, { port: step === 'tls' ? r.tlsPort : r.port });
}

// ---------------------------------------------------------------- rendering

/** A status icon (or a spinner while running). @param {string} tone */
export function statusIcon(tone) {
  if (tone !== 'ok' && tone !== 'bad' && tone !== 'warn' && tone !== 'info') {
    const s = document.createElement('span');
    s.className = 'check-spinner';
    s.setAttribute('aria-hidden', 'true');
    return s;
  }
  const svg = icon(/** @type {'ok'|'bad'|'warn'|'info'} */ (tone));
  svg.classList.add('check-icon');
  return svg;
}

/** @param {StepResult} res */
function stepTone(res) {
  return res === 'ok' ? 'ok' : res === 'running' ? 'running' : res === 'none' || res === 'untested' || res === 'restricted' ? 'info' : 'bad';
}

/** @param {Verdict} v */
export function verdictTone(v) {
  return v === 'ready' ? 'ok' : v === 'running' ? 'running' : v === 'restricted' ? 'info' : v === 'tcp_only' || v === 'tls_only' || v === 'no_relay' ? 'warn' : 'bad';
}

/**
 * Fills a check box (`.conn-check`): its summary sentence (`.check-summary`) and one line per
 * step (`li[data-check][data-result]` in `.check-steps`). See docs/dom-contract.md.
 * @param {HTMLElement} box
 */
export function renderCheck(box) {
  const r = current();
  const verdict = r ? r.verdict : 'running';
  box.dataset.state = verdict === 'running' || !r ? 'running' : 'done';
  box.dataset.verdict = verdict;
  const sum = /** @type {HTMLElement} */ (box.querySelector('.check-summary'));
  const { key, vars } = summaryOf(r);
  const tone = verdictTone(verdict);
  sum.dataset.tone = tone;
  const text = document.createElement('span');
  text.className = 'check-summary-text';
  text.textContent = t(key, vars);
  sum.replaceChildren(statusIcon(tone), text);
  const list = /** @type {HTMLElement} */ (box.querySelector('.check-steps'));
  const shown = r || {
    ws: sig.isOpen ? 'ok' : 'running', udp: 'running', tcp: 'running', tls: 'none', turn: 'running',
    verdict: 'running', port: 0, tlsPort: 0, errorCode: 0, at: 0,
  };
  const items = [];
  for (const step of STEPS) {
    const res = shown[step];
    // No TLS relay without a real certificate; no relay at all says so once (the `turn` line).
    if (res === 'none' && step !== 'turn') continue;
    const li = document.createElement('li');
    li.dataset.check = step;
    li.dataset.result = res;
    const tn = stepTone(res);
    li.dataset.tone = tn;
    const span = document.createElement('span');
    span.textContent = stepText(step, /** @type {CheckResult} */ (shown));
    li.append(statusIcon(tn), span);
    items.push(li);
  }
  list.replaceChildren(...items);
}
