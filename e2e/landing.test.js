// Smoke tests: the server starts, answers /healthz and the WebSocket, and the landing page works
// (room list, languages, phone size). One browser, no camera use.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { connectWs } from './lib/ws-client.js';
import { launchParticipant } from './lib/browser.js';
import { gotoLanding, pollUntil, waitForView } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const sc = new Scenario('landing');
let browser;
const sockets = [];

before(async () => {
  sc.server = await startServer();
  browser = await launchParticipant({ who: 'landing' });
  sc.participants.push(browser);
});

after(async () => {
  for (const ws of sockets) ws.close();
  await sc.closeAll();
  await sc.server?.stop();
});

sc.step('GET /healthz answers 200', async () => {
  const res = await fetch(`${sc.server.url}/healthz`, { signal: AbortSignal.timeout(T.ui) });
  assert.equal(res.status, 200, `GET /healthz gave ${res.status}`);
}, { critical: true });

sc.step('a WebSocket gets a protocol-1 welcome first', async () => {
  const ws = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  sockets.push(ws);
  const welcome = await ws.next(() => true, { what: 'first message' });
  assert.equal(welcome.type, 'welcome', `first message: ${JSON.stringify(welcome)}`);
  assert.equal(welcome.protocol, 1);
  assert.ok(typeof welcome.id === 'string' && welcome.id.length > 0, 'welcome.id');
  assert.ok(welcome.limits && welcome.limits.roomCapacity >= 2, `welcome.limits: ${JSON.stringify(welcome.limits)}`);
  assert.ok(Array.isArray(welcome.iceServers), 'welcome.iceServers is an array');
});

sc.step('the landing page loads with the controls of the DOM contract', async () => {
  const page = browser.page;
  await gotoLanding(page, sc.server.url);
  for (const sel of ['#name-input', '#room-input', '#enter-button', '#room-list', '#lang-select']) {
    await page.locator(sel).waitFor({ state: 'attached', timeout: T.ui })
      .catch(() => { throw new Error(`landing page has no ${sel}`); });
  }
  await page.getByLabel('Your name', { exact: true }).waitFor({ timeout: T.ui });
  await page.getByLabel('Room name', { exact: true }).waitFor({ timeout: T.ui });
  await page.getByRole('button', { name: 'Enter room', exact: true }).waitFor({ timeout: T.ui });
  const langs = await page.locator('#lang-select option').evaluateAll((os) => os.map((o) => o.value));
  assert.ok(langs.includes('en') && langs.includes('ko'), `#lang-select options: ${JSON.stringify(langs)}`);
  const dir = artifactsDir();
  await page.screenshot({ path: path.join(dir, 'landing.png'), fullPage: true });
  // "Failed to load resource" console errors are judged by the HTTP lines instead (a missing
  // favicon is forgiven).
  const errors = browser.log.filter((l) => (/pageerror|console\.error/.test(l) && !/Failed to load resource/.test(l)) ||
    (/\] http \d+\]/.test(l) && !/\/favicon\.ico$/.test(l)));
  assert.deepEqual(errors, [], 'the landing page logged errors or failed requests');
}, { critical: true });

sc.step('the room list shows rooms and head counts as people come and go', async () => {
  const page = browser.page;
  const room = `lobby-${Date.now() % 100000}`;
  const a = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  const b = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  sockets.push(a, b);
  await a.join(room, 'Ws A');
  await b.join(room, 'Ws B');
  const item = page.locator(`#room-list li[data-room="${room}"]`);
  await page.locator(`#room-list li[data-room="${room}"][data-count="2"]`).waitFor({ timeout: T.ui })
    .catch(async () => { throw new Error(`#room-list has no li[data-room="${room}"][data-count="2"]; it shows ${await roomList(page)}`); });
  await item.getByRole('button').or(item.getByRole('link')).first().waitFor({ timeout: T.ui })
    .catch(() => { throw new Error(`li[data-room="${room}"] has no button or link to enter it`); });
  b.send({ type: 'leave' });
  await page.locator(`#room-list li[data-room="${room}"][data-count="1"]`).waitFor({ timeout: T.ui })
    .catch(async () => { throw new Error(`after one leaves, expected data-count="1"; list shows ${await roomList(page)}`); });
  a.send({ type: 'leave' });
  await page.locator(`#room-list li[data-room="${room}"]`).waitFor({ state: 'detached', timeout: T.ui })
    .catch(async () => { throw new Error(`the empty room is still listed: ${await roomList(page)}`); });
});

sc.step('the landing page fits a phone screen (375x667)', async () => {
  const page = await browser.newPage({ viewport: { width: 375, height: 667 }, tag: 'phone' });
  await gotoLanding(page, sc.server.url);
  await page.screenshot({ path: path.join(artifactsDir(), 'landing-phone.png') });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the landing page scrolls sideways on a phone by ${overflow}px`);
  for (const sel of ['#name-input', '#room-input', '#enter-button']) {
    const box = await page.locator(sel).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 376, `${sel} is not inside the 375px viewport: ${JSON.stringify(box)}`);
  }
  await page.context().close();
});

sc.step('a /r/<room> link opens pre-join for that room, Unicode names included', async () => {
  const page = await browser.newPage({ tag: 'link' });
  await page.goto(`${sc.server.url}/r/${encodeURIComponent('주간 회의')}`, { waitUntil: 'domcontentloaded' });
  await waitForView(page, 'prejoin');
  // The pre-join part of docs/dom-contract.md: ids with their accessible names.
  const problems = [];
  for (const [role, name, id] of [
    ['combobox', 'Camera', 'camera-select'], ['combobox', 'Microphone', 'mic-select'], ['combobox', 'Speaker', 'speaker-select'],
    ['checkbox', 'Start muted', 'start-muted'], ['checkbox', 'Start with camera off', 'start-camera-off'],
    ['button', 'Join', 'join-button'],
  ]) {
    const ids = await page.getByRole(role, { name, exact: true, includeHidden: true }).evaluateAll((els) => els.map((e) => e.id));
    if (!ids.includes(id)) problems.push(`${role} "${name}" should be #${id}, found ${JSON.stringify(ids)}`);
  }
  for (const sel of ['#preview', '#mic-meter', '#prejoin-notice']) {
    if (!(await page.locator(sel).count())) problems.push(`no ${sel}`);
  }
  if ((await page.locator('#preview').evaluate((e) => e.tagName)) !== 'VIDEO') problems.push('#preview is not a <video>');
  assert.deepEqual(problems, [], 'pre-join does not follow docs/dom-contract.md');
  await page.waitForFunction(() => document.querySelector('#preview')?.videoWidth > 0, null, { timeout: T.media })
    .catch(() => { throw new Error(`#preview shows no camera picture within ${T.media} ms`); });
  await page.screenshot({ path: path.join(artifactsDir(), 'prejoin.png') });
  await page.context().close();
});

// Chromium's --lang flag does not change navigator.language under Playwright (it stays en-US);
// the context's locale does (navigator.language and Accept-Language), so that is what this uses.
sc.step('Korean: a ko-KR browser gets Korean, and #lang-select switches languages', async () => {
  const page = await browser.newPage({ locale: 'ko-KR', tag: 'ko' });
  await gotoLanding(page, sc.server.url);
  const hangul = /[\uac00-\ud7a3]/;
  await pollUntil(async () => hangul.test(await page.locator('#enter-button').innerText()),
    { timeoutMs: T.ui, what: 'Korean text on "#enter-button" for a ko-KR browser' })
    .catch(async (e) => { throw new Error(`${e.message}; it reads ${JSON.stringify(await page.locator('#enter-button').innerText())}, #lang-select=${await page.locator('#lang-select').inputValue()}`); });
  assert.equal(await page.locator('#lang-select').inputValue(), 'ko', '#lang-select should show ko');
  await page.screenshot({ path: path.join(artifactsDir(), 'landing-ko.png') });
  await page.locator('#lang-select').selectOption('en');
  await page.getByRole('button', { name: 'Enter room', exact: true }).waitFor({ timeout: T.ui })
    .catch(() => { throw new Error('choosing "en" in #lang-select did not bring back the "Enter room" button'); });
  await page.locator('#lang-select').selectOption('ko');
  await pollUntil(async () => hangul.test(await page.locator('#enter-button').innerText()),
    { timeoutMs: T.ui, what: 'Korean text after choosing "ko" in #lang-select' });
  await page.context().close();
});

async function roomList(page) {
  return page.evaluate(() => JSON.stringify([...document.querySelectorAll('#room-list li')].map((li) => ({ room: li.dataset.room, count: li.dataset.count }))))
    .catch((e) => `(unreadable: ${e.message})`);
}
