// The page after `ended` (docs/protocol.md, `ended`): with `"reason":"server_error"` (a bug in the
// server closed the room) it goes back to pre-join and says so, in English and in Korean, and Join
// brings the person into the room again (the real server takes them back); a plain `ended` says the
// host ended the meeting. A real server closes a room for a server error only after an internal
// panic, which nothing outside can cause, so the test plays the server's part through the page's
// WebSocket (as sfu-sessions.test.js does): it takes each page out of the room on the real server
// (`leave`, its `left` and whatever the room said meanwhile are kept from the page), then gives the
// page the `ended` — leaving the server as that room's end would: everyone out, connections open.
// Screenshots: artifacts/ended-server-error-{en,ko}.png (wide).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, metricsParticipants } from './lib/server.js';
import { launchParticipant, writeLogs, withTimeout } from './lib/browser.js';
import { joinViaLanding, joinFromPrejoin, waitForView, waitForRemoteTiles, pollUntil } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, REPO_DIR, T } from './lib/env.js';

const sc = new Scenario('ended');
const ROOM = `ended-${crypto.randomBytes(3).toString('hex')}`;

/** The page's own sentence for `key` in `lang`, read from web/js/i18n.js. */
const I18N = readFileSync(path.join(REPO_DIR, 'web', 'js', 'i18n.js'), 'utf8');
function sentence(lang, key) {
  const ko = I18N.indexOf('\n  ko: {');
  assert.ok(ko > 0, 'web/js/i18n.js has a ko section');
  const part = lang === 'ko' ? I18N.slice(ko) : I18N.slice(0, ko);
  const m = new RegExp(`'${key.replace(/\./g, '\\.')}':\\s*'((?:[^'\\\\]|\\\\.)*)'`).exec(part);
  assert.ok(m, `web/js/i18n.js has ${key} in ${lang}`);
  return m[1].replace(/\\(.)/g, '$1');
}

/**
 * @typedef {{p: import('./lib/browser.js').Participant, lang: string, name: string,
 *   toPage: (m: object) => void, toServer: (m: object) => void, hold: boolean,
 *   onLeft: ((m: object) => void) | null}} Person
 */
/** @type {Person[]} */
const people = [];

/** A participant whose WebSocket runs through the test. */
async function person(lang, name) {
  const p = await launchParticipant({ who: lang, lang: lang === 'ko' ? 'ko-KR' : 'en-US' });
  sc.participants.push(p);
  /** @type {Person} */
  const x = {
    p, lang, name, hold: false, onLeft: null,
    toPage: () => { throw new Error(`${lang}: no WebSocket yet`); },
    toServer: () => { throw new Error(`${lang}: no WebSocket yet`); },
  };
  await p.page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    x.toPage = (m) => ws.send(JSON.stringify(m));
    x.toServer = (m) => server.send(JSON.stringify(m));
    ws.onMessage((m) => server.send(m));
    server.onMessage((m) => {
      const msg = JSON.parse(String(m));
      if (msg.type === 'left' && x.onLeft) { x.onLeft(msg); return; }
      if (x.hold) { p.note(`[test] kept from the page: ${String(m).slice(0, 200)}`); return; }
      ws.send(m);
    });
  });
  return x;
}

/**
 * The room ends as the server would end it: every page out of the room on the server (its `left`,
 * and what the room said about the others leaving, kept from the page), then `ended` to each page.
 */
async function endRoom(reason) {
  const lefts = people.map((x) => new Promise((resolve) => { x.hold = true; x.onLeft = resolve; }));
  for (const x of people) x.toServer({ type: 'leave' });
  await withTimeout(Promise.all(lefts), T.ui, 'the server answering leave with left');
  for (const x of people) {
    x.onLeft = null;
    x.hold = false;
    x.toPage({ type: 'ended', room: ROOM, ...(reason ? { reason } : {}) });
  }
}

/**
 * What a real server answers to a candidate the page sent just before it learned that the room had
 * ended, arriving once the page already says why it is out: `not_in_room` must not replace that
 * (it once did, by chance, in CI). A room list sent after it shows when the page has taken both.
 */
async function lateNotInRoom(x, code) {
  x.toPage({ type: 'error', code: 'not_in_room', message: 'not in a room', request: 'signal' });
  x.toPage({ type: 'rooms', rooms: [{ name: ROOM, participants: 7, capacity: 50 }] });
  const { page } = x.p;
  await page.locator('#prejoin-presence', { hasText: '7' }).waitFor({ timeout: T.ui });
  assert.equal(await page.evaluate(() => document.querySelector('#error-banner')?.dataset.code), code,
    `${x.lang}: the banner after a late not_in_room`);
}

/** `huddle_participants` from the server's /metrics. */
const participants = () => metricsParticipants(sc.server);

async function expectParticipants(n) {
  await pollUntil(async () => (await participants()) === n || { ok: false, now: await participants() },
    { timeoutMs: T.ui, what: `/metrics huddle_participants ${n}` });
}

/** The page is back on pre-join with `code` in the banner; returns the banner's sentence. */
async function backOnPrejoin(x, code) {
  const { page } = x.p;
  await waitForView(page, 'prejoin', T.ui);
  const banner = page.locator(`#error-banner[data-code="${code}"]`);
  await banner.waitFor({ state: 'visible', timeout: T.ui }).catch(async () => {
    const now = await page.evaluate(() => document.querySelector('#error-banner')?.dataset.code);
    throw new Error(`${x.lang}: no #error-banner[data-code="${code}"] within ${T.ui} ms (it shows ${now})`);
  });
  assert.equal(await page.evaluate(() => document.documentElement.lang), x.lang, `${x.lang}: the page's language`);
  assert.ok(await page.locator('#join-button').isEnabled(), `${x.lang}: Join can be pressed`);
  assert.equal(await page.locator('#tiles .tile').count(), 0, `${x.lang}: no tiles left`);
  return (await page.locator('#error-text').innerText()).trim();
}

/** The banner is on screen whole, its text not cut, and it covers nothing of pre-join. */
async function bannerLaidOut(x) {
  const r = await x.p.page.evaluate(() => {
    const box = (sel) => { const el = document.querySelector(sel); if (!el) return null; const b = el.getBoundingClientRect(); return b.width && b.height ? b : null; };
    const banner = box('#error-banner');
    const text = document.querySelector('#error-text');
    const hits = ['header', '#prejoin-room', '#preview', '#join-button', '#prejoin-back', '#lang-select']
      .filter((sel) => { const b = box(sel); return b && banner && b.left < banner.right && banner.left < b.right && b.top < banner.bottom && banner.top < b.bottom; });
    return {
      banner: banner && { left: banner.left, top: banner.top, right: banner.right, bottom: banner.bottom },
      inView: !!banner && banner.left >= 0 && banner.top >= 0 && banner.right <= innerWidth && banner.bottom <= innerHeight,
      clipped: text.scrollWidth > text.clientWidth + 1 || text.scrollHeight > text.clientHeight + 1,
      sideways: document.documentElement.scrollWidth - innerWidth,
      hits,
    };
  });
  assert.ok(r.inView, `${x.lang}: the banner is within the window: ${JSON.stringify(r)}`);
  assert.ok(!r.clipped, `${x.lang}: the banner's text is not cut: ${JSON.stringify(r)}`);
  assert.ok(r.sideways <= 1, `${x.lang}: the page scrolls sideways by ${r.sideways}px`);
  assert.deepEqual(r.hits, [], `${x.lang}: the banner overlaps ${r.hits.join(', ')}: ${JSON.stringify(r)}`);
}

before(async () => {
  sc.server = await startServer();
  people.push(...await Promise.all([person('en', 'Mina'), person('ko', '지우')]));
});

after(async () => {
  writeLogs('ended', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
});

sc.step('an English and a Korean page are in one room', async () => {
  for (const x of people) await joinViaLanding(x.p, sc.server.url, { name: x.name, room: ROOM });
  const [en, ko] = people;
  await Promise.all([waitForRemoteTiles(en.p.page, [ko.p.id]), waitForRemoteTiles(ko.p.page, [en.p.id])]);
  await expectParticipants(2);
}, { critical: true });

sc.step('ended for a server error: back on pre-join, the sentence in the page\'s language', async (t) => {
  await endRoom('server_error');
  for (const x of people) {
    const text = await backOnPrejoin(x, 'ended_server_error');
    assert.equal(text, sentence(x.lang, 'error.ended_server_error'), `${x.lang}: the banner's sentence`);
    t.diagnostic(`${x.lang}: ${text}`);
    await lateNotInRoom(x, 'ended_server_error');
  }
  await expectParticipants(0);
  for (const x of people) {
    // As a person would see it: the camera preview back on.
    await x.p.page.waitForFunction(() => document.querySelector('#preview')?.videoWidth > 0, null, { timeout: T.media });
    await bannerLaidOut(x);
    await x.p.page.screenshot({ path: path.join(artifactsDir(), `ended-server-error-${x.lang}.png`) });
    // And on a phone-sized screen, then back to the wide one for the steps that follow.
    const wide = x.p.page.viewportSize();
    await x.p.page.setViewportSize({ width: 390, height: 844 });
    await bannerLaidOut(x);
    await x.p.page.screenshot({ path: path.join(artifactsDir(), `ended-server-error-${x.lang}-phone.png`) });
    if (wide) await x.p.page.setViewportSize(wide);
  }
}, { critical: true });

sc.step('Join again: the server takes both back into the room', async () => {
  for (const x of people) x.p.id = await joinFromPrejoin(x.p.page, { waitForPreview: false });
  const [en, ko] = people;
  await Promise.all([waitForRemoteTiles(en.p.page, [ko.p.id]), waitForRemoteTiles(ko.p.page, [en.p.id])]);
  await expectParticipants(2);
  for (const x of people) {
    assert.equal(await x.p.page.evaluate(() => window.__huddle.room), ROOM, `${x.lang}: in ${ROOM}`);
    assert.ok(await x.p.page.locator('#error-banner').isHidden(), `${x.lang}: the banner went away on joined`);
  }
}, { critical: true });

sc.step('a plain ended says the host ended the meeting', async () => {
  await endRoom();
  for (const x of people) {
    assert.equal(await backOnPrejoin(x, 'ended'), sentence(x.lang, 'error.ended'), `${x.lang}: the banner's sentence`);
  }
  await expectParticipants(0);
});

sc.step('no uncaught errors in the pages', async () => {
  for (const x of people) {
    const errors = x.p.log.filter((l) => l.includes('pageerror]'));
    assert.deepEqual(errors, [], `${x.lang}: uncaught errors`);
  }
}, { always: true });
