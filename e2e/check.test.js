// The connectivity check, on real blocked networks: the server on a "public" network namespace,
// browsers at home behind symmetric NATs whose routers drop UDP, then TCP to the TURN port too.
// The pre-join screen and /check must name the right way as blocked in a plain sentence (English
// and Korean), and a call that cannot connect must say why on the tile instead of staying black.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer, pinnedKey } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir } from './lib/camera.js';
import { joinViaLanding, waitForRemoteTiles, tile } from './lib/huddle.js';
import { natNetwork, netnsAvailable, PUBLIC_SERVER_IP } from './lib/netns.js';
import { Scenario } from './lib/scenario.js';
import { T, artifactsDir } from './lib/env.js';

const usable = netnsAvailable();
const skip = usable === true ? null : `needs root with ip and nft (${usable})`;
const sc = new Scenario('check');
/** A check takes at most about 5 s per way (in parallel); this leaves room for a loaded machine. */
const CHECK_DONE_MS = 20_000;
/** A call's tile explains itself 15 s after its offer, plus the check. */
const DIAGNOSIS_MS = 45_000;
const PHONE = { width: 390, height: 844 };
let tmp, net, spki, turnPort = 0;
const gone = [];

const EN = {
  ready: 'Your connection is ready for calls.',
  tcpOnly: 'Your network blocks UDP; calls will go over TCP, which may add delay.',
  blocked: (port) => `Your network blocks the connection for calls (UDP and TCP to port ${port}). Try another network (e.g. a phone hotspot), or ask the network’s administrator to allow port ${port}.`,
  noRelay: 'This server has no relay: calls work only between people on networks that can reach each other directly.',
  diagBlocked: (name, port) => `Cannot connect to ${name}: your network blocks UDP and TCP to the server (port ${port}). Try another network (e.g. a phone hotspot), or ask the network’s administrator to allow port ${port}.`,
};
const KO = {
  tcpOnly: '네트워크가 UDP를 막고 있어 통화가 TCP로 연결됩니다. 지연이 생길 수 있습니다.',
  blocked: (port) => `네트워크가 통화 연결(UDP와 TCP ${port}번 포트)을 막고 있습니다. 다른 네트워크(예: 휴대폰 핫스팟)를 쓰거나 네트워크 관리자에게 ${port}번 포트를 열어 달라고 요청하세요.`,
};

before(async () => {
  if (skip) return;
  tmp = makeTempDir();
  net = natNetwork({ homes: 2 });
  // HTTPS (the camera and the check need a secure page); browsers pin the key, as in nat.test.js.
  sc.server = await startServer({
    listen: `${PUBLIC_SERVER_IP}:0`,
    wrap: net.wrap('wan'),
    args: ['--topology', 'p2p', '--tls', 'self-signed', '--data-dir', path.join(tmp.dir, 'data')],
  });
  spki = pinnedKey(sc.server);
});

after(async () => {
  writeLogs('check', [...gone, ...sc.participants], sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  net?.destroy();
  tmp?.cleanup();
});

/** A browser in home `home`; its page is `p.page`. */
async function browserAt(home, who, { lang = 'en-US', viewport } = {}) {
  gone.push(...sc.participants);
  await sc.closeAll();
  const p = await launchParticipant({
    who, lang, viewport,
    executablePath: net.chromiumIn(`c${home}`, tmp.dir),
    args: [`--ignore-certificate-errors-spki-list=${spki}`],
  });
  sc.participants.push(p);
  return p;
}

/** Waits for the check box `sel` to finish and reads it: verdict, each step's result, the sentences. */
async function finishedCheck(page, sel) {
  await page.waitForSelector(`${sel}[data-state="done"]`, { state: 'attached', timeout: CHECK_DONE_MS }).catch(async () => {
    const now = await page.evaluate((s) => document.querySelector(s)?.outerHTML, sel).catch(() => null);
    throw new Error(`${sel} did not finish within ${CHECK_DONE_MS} ms; it shows ${now}`);
  });
  const summary = page.locator(`${sel} .check-summary`);
  assert.equal(await summary.isVisible(), true, `${sel}: the summary sentence is visible`);
  assert.equal(await summary.getAttribute('role'), 'status', `${sel}: the summary is a live status`);
  return page.evaluate((s) => {
    const box = /** @type {HTMLElement} */ (document.querySelector(s));
    const steps = {}, texts = {};
    for (const li of box.querySelectorAll('li[data-check]')) {
      steps[li.dataset.check] = li.dataset.result;
      texts[li.dataset.check] = li.textContent.trim();
    }
    return { verdict: box.dataset.verdict, summary: box.querySelector('.check-summary').textContent.trim(), steps, texts };
  }, sel);
}

/** Opens the pre-join screen of a fresh room and returns its finished check. */
async function prejoinCheck(p) {
  const room = `e2e-check-${crypto.randomBytes(3).toString('hex')}`;
  await p.page.goto(`${sc.server.url}/r/${room}`, { waitUntil: 'domcontentloaded' });
  await p.page.waitForSelector('body[data-view="prejoin"]', { state: 'attached', timeout: T.navigation });
  const got = await finishedCheck(p.page, '#prejoin-check');
  p.note(`pre-join check: ${JSON.stringify(got)}`);
  return got;
}

/** Opens /check and returns its finished check. */
async function standaloneCheck(p) {
  const res = await p.page.goto(`${sc.server.url}/check`, { waitUntil: 'domcontentloaded' });
  assert.equal(res?.status(), 200, 'GET /check serves the page (a binary without the /check route answers 404: rebuild it)');
  await p.page.waitForSelector('body[data-view="check"]', { state: 'attached', timeout: T.navigation });
  const got = await finishedCheck(p.page, '#check-result');
  p.note(`/check: ${JSON.stringify(got)}`);
  return got;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(artifactsDir(), name) });
}

/** Drops every UDP packet leaving home `i`. */
function blockUdp(i) {
  net.nft(`r${i}`, `add rule inet filter forward_filter iifname "${net.ns(`l${i}`)}" meta l4proto udp drop`);
}
/** Drops TCP to the TURN port leaving home `i` (the page's HTTPS port stays open). */
function blockTurnTcp(i) {
  net.nft(`r${i}`, `add rule inet filter forward_filter iifname "${net.ns(`l${i}`)}" tcp dport ${turnPort} drop`);
}

sc.step('with nothing blocked, every step of the check is ok (pre-join and /check)', async (t) => {
  if (skip) return t.skip(skip);
  assert.ok(spki, `no pinnable key in the banner:\n${sc.server.output()}`);
  const p = await browserAt(0, 'open-home0');
  const got = await prejoinCheck(p);
  // The servers the check tested (its own relay credential: `welcome` carries none).
  const servers = await p.page.evaluate(async () => (await import('/js/check.js')).lastServers());
  turnPort = Number(/^turn:[^?]+:(\d+)\?transport=udp$/.exec(servers.flatMap((s) => s.urls).find((u) => /^turn:.*transport=udp$/.test(u)) ?? '')?.[1]);
  assert.ok(turnPort > 0 && turnPort !== sc.server.port, `the TURN port the check tested: ${JSON.stringify(servers)}`);
  assert.equal(got.verdict, 'ready', JSON.stringify(got));
  assert.deepEqual(got.steps, { ws: 'ok', udp: 'ok', tcp: 'ok', turn: 'ok' });
  assert.equal(got.summary, EN.ready);
  assert.equal(got.texts.udp, `UDP to the server works (port ${turnPort}).`);
  // The check never holds up joining.
  assert.equal(await p.page.locator('#join-button').isEnabled(), true);
  const page = await standaloneCheck(p);
  assert.equal(page.verdict, 'ready', JSON.stringify(page));
  assert.deepEqual(page.steps, got.steps);
  assert.equal(page.summary, EN.ready);
  // "Run again" runs it again and ends the same way.
  await p.page.locator('#check-again').click();
  const again = await finishedCheck(p.page, '#check-result');
  assert.equal(again.verdict, 'ready');
  await shot(p.page, 'check-page.png');
}, { critical: true, timeout: 90_000 });

sc.step('a home that drops all UDP: UDP blocked, TCP ok, "calls will go over TCP"', async (t) => {
  if (skip) return t.skip(skip);
  blockUdp(0);
  const p = await browserAt(0, 'noudp-home0');
  const got = await prejoinCheck(p);
  assert.equal(got.verdict, 'tcp_only', JSON.stringify(got));
  assert.deepEqual(got.steps, { ws: 'ok', udp: 'blocked', tcp: 'ok', turn: 'ok' });
  assert.equal(got.summary, EN.tcpOnly);
  assert.equal(got.texts.udp, `UDP to the server is blocked (port ${turnPort}).`);
  assert.equal(await p.page.locator('#prejoin-check .check-details').evaluate((d) => d.open), true, 'the steps open when something is wrong');
  await shot(p.page, 'check-prejoin-tcp.png');
  const page = await standaloneCheck(p);
  assert.equal(page.verdict, 'tcp_only', JSON.stringify(page));
  assert.equal(page.summary, EN.tcpOnly);
}, { timeout: 90_000 });

sc.step('a Korean browser gets the same diagnosis in Korean', async (t) => {
  if (skip) return t.skip(skip);
  const p = await browserAt(0, 'noudp-home0-ko', { lang: 'ko-KR' });
  const got = await prejoinCheck(p);
  assert.equal(got.verdict, 'tcp_only', JSON.stringify(got));
  assert.equal(got.summary, KO.tcpOnly);
  assert.equal(got.texts.udp, `서버로 가는 UDP가 막혀 있습니다(${turnPort}번 포트).`);
  await shot(p.page, 'check-prejoin-ko.png');
  // Switching the language in the page re-renders the result.
  await p.page.locator('#lang-select').selectOption('en');
  await p.page.waitForFunction((s) => document.querySelector('#prejoin-check .check-summary')?.textContent?.trim() === s, EN.tcpOnly, { timeout: T.ui });
}, { timeout: 90_000 });

sc.step('a home that drops UDP and TCP to the TURN port: both blocked, the sentence names the port', async (t) => {
  if (skip) return t.skip(skip);
  blockTurnTcp(0);
  const p = await browserAt(0, 'blocked-home0');
  const got = await prejoinCheck(p);
  assert.equal(got.verdict, 'blocked', JSON.stringify(got));
  assert.deepEqual(got.steps, { ws: 'ok', udp: 'blocked', tcp: 'blocked', turn: 'untested' });
  assert.equal(got.summary, EN.blocked(turnPort));
  assert.equal(got.texts.tcp, `TCP to the server is blocked (port ${turnPort}).`);
  await shot(p.page, 'check-prejoin-en.png');
  await p.page.setViewportSize(PHONE);
  await p.page.locator('#prejoin-check').scrollIntoViewIfNeeded();
  await shot(p.page, 'check-prejoin-en-phone.png');
  const page = await standaloneCheck(p);
  assert.equal(page.verdict, 'blocked', JSON.stringify(page));
  assert.equal(page.summary, EN.blocked(turnPort));
  await shot(p.page, 'check-page-blocked-phone.png');

  const ko = await browserAt(0, 'blocked-home0-ko', { lang: 'ko-KR', viewport: PHONE });
  const kgot = await prejoinCheck(ko);
  assert.equal(kgot.summary, KO.blocked(turnPort));
  await ko.page.locator('#prejoin-check').scrollIntoViewIfNeeded();
  await shot(ko.page, 'check-prejoin-ko-phone.png');
  await ko.page.setViewportSize({ width: 1280, height: 800 });
  await shot(ko.page, 'check-prejoin-ko-blocked.png');
}, { timeout: 120_000 });

sc.step('a relay that refuses the credentials is told apart from a blocked network', async (t) => {
  if (skip) return t.skip(skip);
  // Home 1 is still open; the page's own check module, with a spoilt password.
  const p = await browserAt(1, 'refused-home1');
  await prejoinCheck(p);
  const got = await p.page.evaluate(async () => {
    const m = await import('/js/check.js');
    const i18n = await import('/js/i18n.js');
    const spoilt = m.lastServers().map((s) => ({ ...s, credential: `x${s.credential}` }));
    const r = await m.runCheck(spoilt);
    const s = m.summaryOf(r);
    return { ...r, sentence: i18n.t(s.key, s.vars) };
  });
  assert.equal(got.verdict, 'refused', JSON.stringify(got));
  assert.equal(got.udp, 'ok', 'the relay answered over UDP');
  assert.equal(got.turn, 'refused');
  assert.equal(got.errorCode, 401);
  assert.equal(got.sentence, 'The server refused the call relay’s credentials; reload the page.');
}, { timeout: 60_000 });

sc.step('a p2p call between two homes that both block UDP and TCP to the TURN port: the tiles say why', async (t) => {
  if (skip) return t.skip(skip);
  blockUdp(1);
  blockTurnTcp(1);
  gone.push(...sc.participants);
  await sc.closeAll();
  const room = `e2e-check-call-${crypto.randomBytes(3).toString('hex')}`;
  const people = await Promise.all([0, 1].map((i) => launchParticipant({
    who: `call-home${i}`,
    executablePath: net.chromiumIn(`c${i}`, tmp.dir),
    args: [`--ignore-certificate-errors-spki-list=${spki}`],
  })));
  sc.participants.push(...people);
  for (const [i, p] of people.entries()) await joinViaLanding(p, sc.server.url, { name: `Home ${i}`, room });
  await Promise.all(people.map((p, i) => waitForRemoteTiles(p.page, [people[1 - i].id])));
  await Promise.all(people.map(async (p, i) => {
    const other = people[1 - i];
    const el = tile(p.page, other.id);
    await p.page.waitForSelector(`#tiles .tile[data-peer-id="${other.id}"][data-diagnosis="blocked"]`, { state: 'attached', timeout: DIAGNOSIS_MS })
      .catch(async () => {
        throw new Error(`${p.who}: the tile of ${other.name} shows no "blocked" diagnosis within ${DIAGNOSIS_MS} ms: ${await el.evaluate((e) => e.outerHTML).catch(() => '?')}`);
      });
    const text = el.locator('.tile-problem-text');
    assert.equal(await text.isVisible(), true, `${p.who}: the diagnosis on the tile is visible`);
    assert.equal((await text.innerText()).trim(), EN.diagBlocked(other.name, turnPort));
    assert.match(await el.getAttribute('data-problem'), /^(slow|failed)$/);
    p.note(`tile of ${other.name}: ${await el.getAttribute('data-problem')} ${(await text.innerText()).trim()}`);
  }));
  await shot(people[0].page, 'check-call-diagnosis.png');
  await people[1].page.setViewportSize(PHONE);
  await shot(people[1].page, 'check-call-diagnosis-phone.png');
}, { timeout: 150_000 });

sc.step('in an sfu room, a home that blocks UDP and TCP to the TURN port is told why in the banner', async (t) => {
  if (skip) return t.skip(skip);
  gone.push(...sc.participants);
  await sc.closeAll();
  // A second server, for sfu rooms, with its TURN server on a port of its own; home 0 drops that too.
  // Without ICE over TCP: with it, the SFU is reached over TCP on the HTTPS port, which the page
  // came through, so the call would connect (e2e/ice-tcp.test.js).
  const sfuTurnPort = turnPort + 1;
  net.nft('r0', `add rule inet filter forward_filter iifname "${net.ns('l0')}" tcp dport ${sfuTurnPort} drop`);
  const sfuServer = await startServer({
    listen: `${PUBLIC_SERVER_IP}:0`,
    wrap: net.wrap('wan'),
    args: ['--topology', 'sfu', '--ice-tcp', 'false', '--turn-port', String(sfuTurnPort), '--tls', 'self-signed', '--data-dir', path.join(tmp.dir, 'data')],
  });
  try {
    const p = await browserAt(0, 'sfu-home0');
    await joinViaLanding(p, sfuServer.url, { name: 'Home 0', room: `e2e-check-sfu-${crypto.randomBytes(3).toString('hex')}` });
    await p.page.waitForSelector('#error-banner[data-code="media_unreachable"]:not([hidden])', { state: 'attached', timeout: DIAGNOSIS_MS });
    const text = (await p.page.locator('#error-text').innerText()).trim();
    assert.equal(text, `Audio and video cannot reach the server: your network blocks UDP and TCP to it (port ${sfuTurnPort}). Try another network (e.g. a phone hotspot), or ask the network’s administrator to allow port ${sfuTurnPort}.`);
    await shot(p.page, 'check-sfu-diagnosis.png');
  } finally {
    writeLogs('check-sfu', [], sfuServer);
    await sc.closeAll();
    await sfuServer.stop();
  }
}, { timeout: 90_000 });

sc.step('a server that admits only token holders lets only them test its relay: /check says so, a token\'s pre-join check runs', async (t) => {
  if (skip) return t.skip(skip);
  gone.push(...sc.participants);
  await sc.closeAll();
  const secret = crypto.randomBytes(32).toString('hex');
  const closed = await startServer({ args: ['--require-token', 'true', '--token-secret', secret] });
  try {
    const p = await launchParticipant({ who: 'restricted' });
    sc.participants.push(p);
    assert.equal((await p.page.goto(`${closed.url}/check`, { waitUntil: 'domcontentloaded' }))?.status(), 200);
    const got = await finishedCheck(p.page, '#check-result');
    assert.equal(got.verdict, 'restricted', JSON.stringify(got));
    assert.deepEqual(got.steps, { ws: 'ok', turn: 'restricted' });
    assert.equal(got.summary, 'On this server only invited people can check their connection for calls: open your invitation link, and the check runs before you join.');
    await shot(p.page, 'check-restricted-en.png');
    await p.page.setViewportSize(PHONE);
    await shot(p.page, 'check-restricted-en-phone.png');
    await p.page.locator('#lang-select').selectOption('ko');
    await p.page.waitForFunction(() => document.querySelector('#check-result .check-summary')?.textContent?.trim() === '이 서버에서는 초대받은 사람만 통화 연결을 점검할 수 있습니다. 받은 초대 링크를 열면 참가하기 전에 점검합니다.', null, { timeout: T.ui });
    await shot(p.page, 'check-restricted-ko-phone.png');
    await p.page.setViewportSize({ width: 1280, height: 800 });
    await shot(p.page, 'check-restricted-ko.png');
    // With a token for the room, the pre-join check tests the relay (on loopback: ready).
    const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
    const signed = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ room: 'standup', exp: Math.floor(Date.now() / 1000) + 600 })}`;
    const token = `${signed}.${crypto.createHmac('sha256', secret).update(signed).digest('base64url')}`;
    const q = await launchParticipant({ who: 'restricted-token' });
    sc.participants.push(q);
    await q.page.goto(`${closed.url}/r/standup#token=${token}`, { waitUntil: 'domcontentloaded' });
    await q.page.waitForSelector('body[data-view="prejoin"]', { state: 'attached', timeout: T.navigation });
    const pre = await finishedCheck(q.page, '#prejoin-check');
    assert.equal(pre.verdict, 'ready', JSON.stringify(pre));
  } finally {
    writeLogs('check-restricted', [], closed);
    await closed.stop();
  }
}, { timeout: 60_000 });

sc.step('a server without a relay (--turn false) says calls need networks that reach each other; a server gone, that it cannot be reached', async (t) => {
  if (skip) return t.skip(skip);
  gone.push(...sc.participants);
  await sc.closeAll();
  const plain = await startServer({ args: ['--turn', 'false'] });
  try {
    const p = await launchParticipant({ who: 'no-relay' });
    sc.participants.push(p);
    const res = await p.page.goto(`${plain.url}/check`, { waitUntil: 'domcontentloaded' });
    assert.equal(res?.status(), 200);
    const got = await finishedCheck(p.page, '#check-result');
    assert.equal(got.verdict, 'no_relay', JSON.stringify(got));
    assert.deepEqual(got.steps, { ws: 'ok', turn: 'none' });
    assert.equal(got.summary, EN.noRelay);
    // The server goes away: "Run again" says the server cannot be reached.
    await plain.stop();
    await p.page.waitForFunction(() => !window.__huddle.state.connected, null, { timeout: T.ui });
    await p.page.locator('#check-again').click();
    await p.page.waitForSelector('#check-result[data-verdict="ws_failed"]', { state: 'attached', timeout: T.ui });
    const down = await finishedCheck(p.page, '#check-result');
    assert.equal(down.steps.ws, 'failed', JSON.stringify(down));
    assert.equal(down.summary, 'Cannot reach the huddle server. Retrying…');
  } finally {
    writeLogs('check-no-relay', [], plain);
    await plain.stop();
  }
}, { timeout: 60_000 });
