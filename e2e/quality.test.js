// Connection quality: the signal bars on every tile and the "Connection details" panel
// (web/js/quality.js), from the pages' own getStats(). A peer-to-peer call and an sfu call with
// fake cameras: every indicator reaches `good` and the panel shows plausible figures while
// frames decode; screenshots in English and Korean, wide and phone-size. Then a degraded network:
// one participant's Chromium in a network namespace of its own that drops 15 % of its UDP (an
// nftables rule on its port of the LAN's bridge: this kernel has no netem qdisc, see below); the
// other side's bars for that person turn poor, and good again once the rule is gone; a moment
// with all of its packets dropped shows `lost`, then good again.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { startServer, pinnedKey } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, waitForRemoteTiles, expectEveryoneSeesEveryone, expectFramesAdvance, pollUntil, tile } from './lib/huddle.js';
import { lanNetwork, netnsAvailable } from './lib/netns.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

/** Where the review screenshots go (besides artifacts/). */
const SHOTS = process.env.QUALITY_SHOTS_DIR || path.join(artifactsDir(), 'quality');
const sc = new Scenario('quality');
let tmp, clips;
/** Participants of calls already closed (their logs are still written). */
const gone = [];
/** Servers of earlier parts, stopped at the end. */
const servers = [];

before(async () => {
  tmp = makeTempDir();
  mkdirSync(SHOTS, { recursive: true });
  clips = await makeClips(tmp.dir, 3);
});

after(async () => {
  writeLogs('quality', [...gone, ...sc.participants], sc.server);
  await sc.closeAll();
  for (const s of [...servers, sc.server]) await s?.stop();
  net?.destroy();
  tmp?.cleanup();
});

/** Closes the current call's browsers and server, so the next part has the CPU. */
async function endCall() {
  gone.push(...sc.participants);
  await sc.closeAll();
  if (sc.server) servers.push(sc.server);
  await sc.server?.stop();
  sc.server = null;
}

/** A call of `n` people with the first `n` clips, each joined through the page. */
async function call({ n, serverArgs, label, urlOf = (s) => s.url, launch = {} }) {
  sc.server = await startServer({ args: serverArgs });
  const room = `e2e-quality-${label}-${crypto.randomBytes(3).toString('hex')}`;
  const people = await Promise.all(clips.slice(0, n).map((clip, i) => launchParticipant({
    who: `${label}-${clip.label}-${clip.colour}`, clip: clip.path, ...(typeof launch === 'function' ? launch(i) : launch),
  })));
  people.forEach((p, i) => { p.clip = clips[i]; });
  sc.participants.push(...people);
  const names = ['Alice', 'Bob', '민준'];
  for (const [i, p] of people.entries()) await joinViaLanding(p, urlOf(sc.server), { name: names[i], room });
  await Promise.all(people.map((p) => waitForRemoteTiles(p.page, people.filter((q) => q !== p).map((q) => q.id))));
  return people;
}

/**
 * Waits until `viewer`'s tile of `peerId` (or its own tile, with 'self') shows one of `levels`;
 * returns the figures of window.__huddle.quality then.
 */
async function waitLevel(viewer, peerId, levels, { timeoutMs = T.media, what = '', label = null } = {}) {
  return pollUntil(async () => {
    const r = await viewer.page.evaluate((id) => {
      const el = id === 'self' ? document.querySelector('#tiles .tile[data-self="true"]') : document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"]`);
      const b = el?.querySelector('.tile-quality');
      return { level: el?.dataset.quality ?? null, label: b?.getAttribute('aria-label') ?? null, figures: window.__huddle.quality[id] ?? null };
    }, peerId);
    return levels.includes(r.level) && (!label || label.test(r.label)) ? r : { ok: false, ...r };
  }, { timeoutMs, intervalMs: 250, what: `${viewer.who}: the quality of ${what || peerId} to be ${levels.join(' or ')}${label ? ` with a label like ${label}` : ''}` });
}

/** The panel's rows of one connection: stat → {text, value}. */
async function panelRows(page, key) {
  return page.evaluate((k) => {
    const sec = document.querySelector(`#stats-list [data-conn="${CSS.escape(k)}"]`);
    if (!sec) return null;
    const out = {};
    for (const dd of sec.querySelectorAll('dd')) out[dd.dataset.stat] = { text: dd.textContent, value: dd.dataset.value };
    return out;
  }, key);
}

/** A number ≥ 0 in the row's value and a unit in its text. */
function assertFigure(rows, stat, who, { min = 0, above = null } = {}) {
  const r = rows?.[stat];
  assert.ok(r, `${who}: no "${stat}" row in ${JSON.stringify(rows)}`);
  const v = Number(r.value);
  assert.ok(r.value !== '' && Number.isFinite(v) && v >= min, `${who}: ${stat} = ${JSON.stringify(r)}`);
  if (above !== null) assert.ok(v > above, `${who}: ${stat} = ${JSON.stringify(r)}, not above ${above}`);
  assert.match(r.text, /\d/, `${who}: ${stat} shows ${JSON.stringify(r.text)}`);
  return v;
}

/** The fake camera's picture (320×240) or a 4:3 scaled copy of it (under CPU load the sender scales down). */
function assertCameraSize(value, who) {
  const m = /^(\d+)x(\d+)$/.exec(value ?? '');
  assert.ok(m, `${who}: video size ${JSON.stringify(value)}`);
  const [w, h] = [Number(m[1]), Number(m[2])];
  assert.ok(w <= 320 && h <= 240 && w >= 80 && Math.abs(w / h - 4 / 3) < 0.05, `${who}: video size ${value} is not the fake camera's 320x240 (or a 4:3 scaled copy)`);
}

const FIGURES = /^Connection to .+: Good\. RTT \d+ ms, loss \d+\.\d %, jitter \d+ ms$/;

// ---------------------------------------------------------------- thresholds

let P = [];

sc.step('p2p: two people call; every tile, their own too, reaches good while frames decode', async (t) => {
  P = await call({ n: 2, serverArgs: ['--topology', 'p2p'], label: 'p2p' });
  await expectEveryoneSeesEveryone(P, clips, (line) => t.diagnostic(line));
  for (const viewer of P) {
    for (const peer of P.filter((q) => q !== viewer)) {
      const r = await waitLevel(viewer, peer.id, ['good'], { label: FIGURES });
      t.diagnostic(`${viewer.who} → ${peer.who}: ${r.label}`);
      await expectFramesAdvance(viewer.page, peer.id, { who: `${viewer.who} watching ${peer.who}` });
    }
    await waitLevel(viewer, 'self', ['good'], { label: /^Your connection: Good\. RTT \d+ ms, loss \d+\.\d %, jitter \d+ ms$/ });
  }
}, { critical: true, timeout: 90_000 });

sc.step('the levels follow the thresholds written in quality.js', async () => {
  const got = await P[0].page.evaluate(async () => {
    const q = await import('/js/quality.js');
    const c = (rttMs, lossPct, jitterMs) => q.classify({ rttMs, lossPct, jitterMs });
    return {
      thresholds: q.THRESHOLDS,
      cases: [c(23, 0, 2), c(149, 1.9, 29), c(150, 0, 0), c(200, 3, 10), c(400, 10, 100), c(401, 0, 0), c(20, 10.1, 0), c(20, 0, 101), c(null, null, null), c(30, null, null)],
    };
  });
  assert.deepEqual(got.thresholds.good, { rttMs: 150, lossPct: 2, jitterMs: 30 });
  assert.deepEqual(got.thresholds.poor, { rttMs: 400, lossPct: 10, jitterMs: 100 });
  assert.deepEqual(got.cases, ['good', 'good', 'fair', 'fair', 'fair', 'poor', 'poor', 'poor', 'connecting', 'good']);
});

sc.step('p2p: the stats panel opens from a tile\'s bars with plausible figures, updates, and closes with Escape', async (t) => {
  const [A, B] = P;
  await tile(A.page, B.id).locator('.tile-quality').click();
  await A.page.locator('#stats-panel').waitFor({ state: 'visible', timeout: T.ui });
  const first = await pollUntil(async () => {
    const r = await panelRows(A.page, B.id);
    return r && Number(r['bitrate-in']?.value) > 0 && r['video-in']?.value ? r : { ok: false, r };
  }, { timeoutMs: T.ui, what: 'A: the panel\'s section for B with a received bitrate and a video size' });
  t.diagnostic(`A's panel for B: ${JSON.stringify(first)}`);
  assert.equal(first.level.value, 'good');
  assertFigure(first, 'rtt', 'A → B');
  assertFigure(first, 'loss', 'A → B');
  assertFigure(first, 'jitter', 'A → B');
  assertFigure(first, 'bitrate-in', 'A → B', { above: 0 });
  assertFigure(first, 'bitrate-out', 'A → B', { above: 0 });
  assertCameraSize(first['video-in'].value, 'A receiving B');
  assertCameraSize(first['video-out'].value, 'A sending to B');
  assert.match(first.codecs.text, /opus/, 'A → B codecs');
  // Both browsers on one machine: host candidates, UDP, straight to each other.
  assert.match(first.route.value, /^host\/udp host$/, 'A → B route');
  assert.equal(first.route.text, 'Direct (same network, UDP)');
  assert.ok(await A.page.locator(`#stats-list [data-conn="${B.id}"].focused`).count(), 'the clicked person\'s section is marked');
  // Live: the received byte count moves on, so the figures do too.
  await pollUntil(async () => {
    const r = await panelRows(A.page, B.id);
    return r && r['bitrate-in'].value !== first['bitrate-in'].value ? r : { ok: false };
  }, { timeoutMs: T.ui, what: 'A: the panel\'s received bitrate to update' });
  await A.page.keyboard.press('Escape');
  await A.page.locator('#stats-panel').waitFor({ state: 'hidden', timeout: T.ui });
  // And from the people panel.
  await A.page.locator('#people-button').click();
  await A.page.locator('#quality-open').click();
  await A.page.locator('#stats-panel').waitFor({ state: 'visible', timeout: T.ui });
  assert.ok(await A.page.locator('#people-panel').isHidden(), 'the people panel gave way to the stats panel');
  await A.page.keyboard.press('Escape');
  await A.page.locator('#stats-panel').waitFor({ state: 'hidden', timeout: T.ui });
});

sc.step('leaving stops the sampling: no figures and no indicator after Leave', async () => {
  const A = P[0];
  await A.page.locator('#leave-button').click();
  await A.page.waitForSelector('body[data-view="landing"]', { state: 'attached', timeout: T.ui });
  const q = await A.page.evaluate(async () => {
    await new Promise((r) => setTimeout(r, 1500)); // a tick would have come by now
    return { figures: Object.keys(window.__huddle.quality), bars: document.querySelectorAll('.tile-quality').length };
  });
  assert.deepEqual(q, { figures: [], bars: 0 });
  await endCall();
});

// ---------------------------------------------------------------- sfu

sc.step('sfu: three people through the server; every tile reaches good while frames decode', async (t) => {
  P = await call({ n: 3, serverArgs: ['--topology', 'sfu'], label: 'sfu' });
  await expectEveryoneSeesEveryone(P, clips, (line) => t.diagnostic(line));
  for (const viewer of P) {
    for (const peer of P.filter((q) => q !== viewer)) {
      const r = await waitLevel(viewer, peer.id, ['good'], { label: FIGURES });
    }
    const self = await waitLevel(viewer, 'self', ['good']);
    t.diagnostic(`${viewer.who}: ${self.label}`);
  }
}, { critical: true, timeout: 120_000 });

sc.step('sfu: the panel shows the server connection and each person\'s streams', async (t) => {
  const [A, B, C] = P;
  await tile(A.page, C.id).locator('.tile-quality').click();
  await A.page.locator('#stats-panel').waitFor({ state: 'visible', timeout: T.ui });
  const server = await pollUntil(async () => {
    const r = await panelRows(A.page, 'server');
    return r && Number(r['bitrate-out']?.value) > 0 && r.rtt?.value ? r : { ok: false, r };
  }, { timeoutMs: T.ui, what: 'A: the panel\'s media server section' });
  t.diagnostic(`A's server section: ${JSON.stringify(server)}`);
  assertFigure(server, 'rtt', 'A → server');
  assertFigure(server, 'bitrate-in', 'A ← server', { above: 0 });
  assertFigure(server, 'bitrate-out', 'A → server', { above: 0 });
  assert.match(server.route.text, /^UDP to the media server$/, 'A → server route');
  for (const peer of [B, C]) {
    const r = await pollUntil(async () => {
      const x = await panelRows(A.page, peer.id);
      return x && Number(x['bitrate-in']?.value) > 0 && x['video-in']?.value ? x : { ok: false, x };
    }, { timeoutMs: T.ui, what: `A: the panel's section for ${peer.who}` });
    t.diagnostic(`A's section for ${peer.who}: ${JSON.stringify(r)}`);
    assert.equal(r.level.value, 'good');
    assertFigure(r, 'loss', `A ← ${peer.who}`);
    assertFigure(r, 'jitter', `A ← ${peer.who}`);
    assertFigure(r, 'bitrate-in', `A ← ${peer.who}`, { above: 0 });
    assertCameraSize(r['video-in'].value, `A receiving ${peer.who}`);
    assert.equal(r.rtt, undefined, 'a person through the server has no round trip of their own');
  }
});

sc.step('screenshots: the sfu room with the bars and the panel, English and Korean, wide and phone-size', async (t) => {
  const A = P[0];
  const page = A.page;
  const shot = async (name) => {
    await page.waitForTimeout(300); // the last layout settles for the picture
    const file = path.join(SHOTS, name);
    await page.screenshot({ path: file });
    t.diagnostic(file);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${name}: the page scrolls sideways by ${overflow}px`);
  };
  try {
    await page.keyboard.press('Escape');
    await shot('quality-wide-en.png');
    await tile(page, P[1].id).locator('.tile-quality').click();
    await shot('quality-wide-panel-en.png');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForFunction(() => window.innerWidth === 390, null, { timeout: T.ui });
    await shot('quality-phone-panel-en.png');
    await page.keyboard.press('Escape');
    await shot('quality-phone-en.png');
    await page.locator('#lang-select').selectOption('ko');
    await shot('quality-phone-ko.png');
    await page.locator('#people-button').click();
    await shot('quality-phone-people-ko.png');
    await page.locator('#quality-open').click();
    await page.locator('#stats-panel').waitFor({ state: 'visible', timeout: T.ui });
    await shot('quality-phone-panel-ko.png');
    // The panel's figures in Korean, e.g. "왕복 지연 1ms, 손실 0.0%, 지터 2ms" on the bars.
    const label = await tile(page, P[2].id).locator('.tile-quality').getAttribute('aria-label');
    assert.match(label, /^민준님과의 연결: 좋음\. 왕복 지연 \d+ms, 손실 \d+\.\d%, 지터 \d+ms$/, 'Korean label');
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.waitForFunction(() => window.innerWidth === 1280, null, { timeout: T.ui });
    await shot('quality-wide-panel-ko.png');
    await page.keyboard.press('Escape');
  } finally {
    await page.setViewportSize({ width: 1280, height: 800 }).catch(() => {});
    await page.locator('#lang-select').selectOption('en').catch(() => {});
  }
});

sc.step('sfu: done', async () => { await endCall(); }, { always: true });

// ---------------------------------------------------------------- a degraded network

// This kernel has no netem qdisc (`tc qdisc add … netem` answers "Specified qdisc kind is
// unknown"), so the loss comes from nftables: a rule on the LAN's bridge drops 15 % of the UDP
// packets from and to Bob's port (numgen random). No delay is added (nothing here can delay
// packets without netem); the loss alone is past the `poor` limit.
const usable = netnsAvailable();
const skip = usable === true ? null : `needs root with ip and nft (${usable})`;
/** @type {ReturnType<typeof lanNetwork>|null} */ let net = null;
const LAN_URL = /on your network: (https:\/\/\S+)/;

sc.step('degraded: Bob\'s network drops 15 % of its UDP; Alice\'s bars for Bob turn poor, and good again without the loss', async (t) => {
  if (skip) return t.skip(skip);
  net = lanNetwork({ clients: 2 });
  sc.server = await startServer({
    listen: '0.0.0.0:0', wrap: net.wrap('srv'),
    args: ['--topology', 'p2p', '--tls', 'self-signed', '--data-dir', path.join(tmp.dir, 'data')],
  });
  const spki = pinnedKey(sc.server);
  const lanUrl = LAN_URL.exec(sc.server.output())?.[1]?.replace(/\/$/, '');
  assert.ok(spki && lanUrl, `no LAN URL or key in:\n${sc.server.output()}`);
  const room = `e2e-quality-loss-${crypto.randomBytes(3).toString('hex')}`;
  const [A, B] = await Promise.all(clips.slice(0, 2).map((clip, i) => launchParticipant({
    who: `loss-${clip.label}-${clip.colour}`, clip: clip.path,
    executablePath: net.chromiumIn(`d${i}`, tmp.dir), args: [`--ignore-certificate-errors-spki-list=${spki}`],
  })));
  A.clip = clips[0]; B.clip = clips[1];
  sc.participants.push(A, B);
  await joinViaLanding(A, lanUrl, { name: 'Alice', room });
  await joinViaLanding(B, lanUrl, { name: 'Bob', room });
  await expectEveryoneSeesEveryone([A, B], clips, (line) => t.diagnostic(line));
  const before = await waitLevel(A, B.id, ['good']);
  t.diagnostic(`before: ${before.label}`);

  // On the LAN's bridge, at Bob's port: as if Bob's Wi-Fi lost packets, to Alice (forward) and to
  // the server and its relay (input, output: without these, ICE moved the call to the relay and
  // away from the loss). Not in Bob's own output chain: a packet dropped there fails Chromium's
  // send, which sends it again.
  const port = net.ns('p1');
  const drop = (on, pct = 15) => {
    // All: TCP too, or ICE carries on through the relay over TCP (it does, seen here).
    const what = pct >= 100 ? '' : `meta l4proto udp numgen random mod 100 < ${pct} `;
    const rules = on ? `
table bridge quality_loss {
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "${port}" ${what}drop
    oifname "${port}" ${what}drop
  }
  chain input { type filter hook input priority 0; policy accept; iifname "${port}" ${what}drop; }
  chain output { type filter hook output priority 0; policy accept; oifname "${port}" ${what}drop; }
}
` : 'delete table bridge quality_loss\n';
    execFileSync('ip', ['netns', 'exec', net.ns('srv'), 'nft', '-f', '-'], { input: rules });
  };
  drop(true);
  try {
    // The loss is counted over the last 5 s: `fair` on the way, then `poor` once the window is full.
    const bad = await waitLevel(A, B.id, ['poor'], { what: 'Bob (15 % loss)' });
    t.diagnostic(`with 15 % loss: ${bad.label} ${JSON.stringify(bad.figures)}`);
    assert.ok(bad.figures.lossPct > 10, `loss ${bad.figures.lossPct} %`);
    const bobSees = await waitLevel(B, A.id, ['poor'], { what: 'Alice, seen from the lossy side' });
    t.diagnostic(`Bob's view: ${bobSees.label}`);
    await tile(A.page, B.id).locator('.tile-quality').click();
    await A.page.locator('#stats-panel').waitFor({ state: 'visible', timeout: T.ui });
    await A.page.waitForTimeout(300);
    await A.page.screenshot({ path: path.join(SHOTS, 'quality-loss-en.png') });
    await A.page.keyboard.press('Escape');
  } finally {
    drop(false);
  }
  const after = await waitLevel(A, B.id, ['good'], { what: 'Bob (loss removed)' });
  t.diagnostic(`after: ${after.label}, route ${JSON.stringify(after.figures.route)}`);
  await expectFramesAdvance(A.page, B.id, { who: 'Alice watching Bob after the loss' });

  // All of Bob's packets gone for a moment: his bars say `lost` (nothing arrives from someone
  // whose microphone is on), and come back when the packets do, before ICE gives up.
  drop(true, 100);
  try {
    const lost = await waitLevel(A, B.id, ['lost'], { what: 'Bob (all packets dropped)', timeoutMs: T.ui });
    t.diagnostic(`blackout: ${lost.label} (${lost.figures.state})`);
    assert.equal(lost.label, 'Connection to Bob: Lost. Nothing has arrived for a few seconds');
  } finally {
    drop(false);
  }
  const back = await waitLevel(A, B.id, ['good'], { what: 'Bob (packets back)' });
  t.diagnostic(`back: ${back.label}, route ${JSON.stringify(back.figures.route)}`);
  await expectFramesAdvance(A.page, B.id, { who: 'Alice watching Bob after the blackout' });
}, { timeout: 150_000 });
