// Recording a meeting, the page's side (issue 18; web/js/recording.js): the Record button for hosts
// and co-hosts only, the red "Recording 01:23" sign for everyone (counting up, never below zero),
// the notices when a recording starts and stops (and why), the errors of Record in clear words, the
// hosts' list of recordings in every state (download only when ready, delete after a confirmation),
// and "This meeting is being recorded" before joining: on the landing list and pre-join (from
// `rooms`), in the waiting view (from `waiting`), and at once on `joined`. English and Korean,
// wide and phone-size.
//
// The pages talk to the real server, but the test plays the server's recording part through their
// WebSockets (as ended.test.js does): `record`, `stop_recording` and `delete_recording` from a
// page are taken by the test (and not passed on), which answers with `recording`, `recordings` or
// `error` as docs/protocol.md has them; `rooms`, `waiting` and `joined` from the real server get
// the recording fields added while the test says the room records.
// Screenshots: artifacts/recording/ (or $RECORDING_SHOTS_DIR).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs, withTimeout } from './lib/browser.js';
import { joinViaLanding, gotoLanding, pressJoin, waitForView, waitForRemoteTiles, pollUntil } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';
import { sentence } from './lib/i18n.js';

const sc = new Scenario('recording-ui');
const ROOM = `rec-${crypto.randomBytes(3).toString('hex')}`;
const shotsDir = process.env.RECORDING_SHOTS_DIR || path.join(artifactsDir(), 'recording');
/** The messages the test answers in the server's place. */
const TAKEN = ['record', 'stop_recording', 'delete_recording'];

/**
 * @typedef {{p: import('./lib/browser.js').Participant, lang: string, name: string,
 *   toPage: (m: object) => void, taken: object[], waiters: {type: string, resolve: (m: object) => void}[],
 *   rewrite: (m: any) => any}} Person
 */

/** A participant whose WebSocket runs through the test. */
async function person(who, lang, name) {
  const p = await launchParticipant({ who, lang: lang === 'ko' ? 'ko-KR' : 'en-US' });
  sc.participants.push(p);
  /** @type {Person} */
  const x = {
    p, lang, name, taken: [], waiters: [], rewrite: (m) => m,
    toPage: () => { throw new Error(`${who}: no WebSocket yet`); },
  };
  await p.page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    x.toPage = (m) => { p.note(`[test] to the page: ${JSON.stringify(m).slice(0, 300)}`); ws.send(JSON.stringify(m)); };
    ws.onMessage((m) => {
      let msg = null;
      try { msg = JSON.parse(String(m)); } catch { /* passed on as it is */ }
      if (msg && TAKEN.includes(msg.type)) {
        p.note(`[test] taken from the page: ${String(m)}`);
        x.taken.push(msg);
        const i = x.waiters.findIndex((w) => w.type === msg.type);
        if (i >= 0) x.waiters.splice(i, 1)[0].resolve(msg);
        return;
      }
      server.send(m);
    });
    server.onMessage((m) => {
      let msg = null;
      try { msg = JSON.parse(String(m)); } catch { ws.send(m); return; }
      const out = x.rewrite(msg);
      ws.send(out === msg ? m : JSON.stringify(out));
    });
  });
  return x;
}

/** The next `type` the page sends (taken by the test, not passed on). */
function sent(x, type) {
  const i = x.taken.findIndex((m) => m.type === type);
  if (i >= 0) return Promise.resolve(x.taken.splice(i, 1)[0]);
  return withTimeout(new Promise((resolve) => x.waiters.push({ type, resolve: (m) => { x.taken.splice(x.taken.indexOf(m), 1); resolve(m); } })),
    T.ui, `${x.p.who}: the page sending ${type}`);
}

/** @type {Person} */ let A;
/** @type {Person} */ let B;
/** @type {Person} */ let C;

const NOW = Date.now();
/** A recording the test says is in progress. */
let current = null;
function startRecording(by, startedAt = Date.now() - 61_000) {
  current = { id: `20261207T0735${String(Math.floor(Math.random() * 90) + 10)}-${crypto.randomBytes(2).toString('hex')}`, startedAt, startedBy: by };
  return { type: 'recording', recording: current };
}

const READY_URL = '/recordings/20261207T073512-k3j9/composite.webm?exp=1795600000&sig=abc123';
/** The room's recordings, one in each state, newest first. */
const LIST = [
  { id: '20261207T090000-aaaa', startedAt: NOW - 60_000, durationMs: 61_000, bytes: 4_200_000, state: 'recording', progress: 0, url: null },
  { id: '20261207T080000-bbbb', startedAt: NOW - 3_600_000, durationMs: 3_723_000, bytes: 734_003_200, state: 'composing', progress: 0.42, url: null },
  { id: '20261207T073512-k3j9', startedAt: NOW - 7_200_000, durationMs: 61_000, bytes: 4_200_000, state: 'ready', progress: 1, url: READY_URL },
  { id: '20261206T150000-cccc', startedAt: NOW - 86_400_000, durationMs: 905_000, bytes: 52_428_800, state: 'raw', progress: 0, url: null },
  { id: '20261206T140000-dddd', startedAt: NOW - 90_000_000, durationMs: 12_000, bytes: 512_000, state: 'failed', progress: 0, url: null },
  { id: '20261205T100000-eeee', startedAt: NOW - 180_000_000, durationMs: 300_000, bytes: 20_971_520, state: 'interrupted', progress: 0, url: null },
];

async function notices(page) { return page.locator('#notices .notice').allTextContents(); }

/** Waits for a notice that says exactly `text`. */
async function expectNotice(x, text) {
  await pollUntil(async () => (await notices(x.p.page)).includes(text) || { ok: false, notices: (await notices(x.p.page)).slice(-4) },
    { what: `${x.p.who}: the notice "${text}"` });
}

async function openPeople(page) {
  if (await page.locator('#people-panel').isHidden()) await page.locator('#people-button').click();
  await page.locator('#people-panel').waitFor({ state: 'visible' });
}

async function closePanel(page) {
  if (await page.locator('#people-panel').isVisible()) await page.locator('#people-panel .panel-close').click();
  await page.locator('#people-panel').waitFor({ state: 'hidden' });
}

/** The sign's text, or null when it is not shown. */
async function indicator(page) {
  const el = page.locator('#rec-indicator');
  if (!(await el.isVisible())) return null;
  return {
    label: (await el.locator('.rec-label').innerText()).trim(),
    time: (await el.locator('.rec-time').innerText()).trim(),
    role: await el.getAttribute('role'),
    aria: await el.getAttribute('aria-label'),
  };
}

/** Boxes of the sign and what it must not cover, the sideways scroll, and whether its text is cut. */
async function indicatorLayout(page) {
  return page.evaluate(() => {
    const box = (sel) => {
      const el = document.querySelector(sel);
      if (!el) return null;
      const r = el.getBoundingClientRect();
      return r.width && r.height ? { left: r.left, top: r.top, right: r.right, bottom: r.bottom } : null;
    };
    const ind = document.querySelector('#rec-indicator');
    return {
      ind: box('#rec-indicator'),
      others: { controls: box('.controls'), brand: box('.brand'), lang: box('.lang'), tiles: box('#tiles'), banner: box('#error-banner') },
      cut: ind ? ind.scrollWidth > ind.clientWidth + 1 : true,
      sideways: document.documentElement.scrollWidth - innerWidth,
      vw: innerWidth, vh: innerHeight,
    };
  });
}

const overlaps = (a, b) => !!a && !!b && a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;

async function expectIndicatorLaidOut(x) {
  const l = await indicatorLayout(x.p.page);
  assert.ok(l.ind, `${x.p.who}: the sign has no box`);
  assert.ok(l.ind.left >= 0 && l.ind.top >= 0 && l.ind.right <= l.vw && l.ind.bottom <= l.vh, `${x.p.who}: the sign leaves the window: ${JSON.stringify(l)}`);
  assert.ok(!l.cut, `${x.p.who}: the sign's text is cut: ${JSON.stringify(l)}`);
  assert.ok(l.sideways <= 1, `${x.p.who}: the page scrolls sideways by ${l.sideways}px`);
  const hits = Object.entries(l.others).filter(([, b]) => overlaps(l.ind, b)).map(([k]) => k);
  assert.deepEqual(hits, [], `${x.p.who}: the sign overlaps ${hits.join(', ')}: ${JSON.stringify(l)}`);
}

async function setSwitch(page, id, on) {
  await openPeople(page);
  const box = page.locator(`#${id}`);
  if ((await box.isChecked()) !== on) await box.click();
  await page.waitForFunction(({ id, on }) => document.querySelector(`#${id}`).checked === on, { id, on }, { timeout: T.ui });
}

async function banner(page, code, who) {
  const b = page.locator(`#error-banner[data-code="${code}"]`);
  await b.waitFor({ state: 'visible', timeout: T.ui }).catch(async () => {
    const now = await page.evaluate(() => ({ code: document.querySelector('#error-banner')?.dataset.code, text: document.querySelector('#error-text')?.textContent }));
    throw new Error(`${who}: no #error-banner[data-code="${code}"] within ${T.ui} ms; it shows ${JSON.stringify(now)}`);
  });
  return (await page.locator('#error-text').innerText()).trim();
}

before(async () => {
  mkdirSync(shotsDir, { recursive: true });
  sc.server = await startServer();
  [A, B] = await Promise.all([person('host-en', 'en', 'Dana'), person('guest-ko', 'ko', '지우')]);
});

after(async () => {
  writeLogs('recording-ui', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
});

sc.step('an English host and a Korean participant are in one room', async () => {
  await joinViaLanding(A.p, sc.server.url, { name: A.name, room: ROOM });
  await joinViaLanding(B.p, sc.server.url, { name: B.name, room: ROOM });
  await Promise.all([waitForRemoteTiles(A.p.page, [B.p.id]), waitForRemoteTiles(B.p.page, [A.p.id])]);
  assert.equal(await A.p.page.evaluate(() => window.__huddle.state.role), 'host');
  assert.equal(await B.p.page.evaluate(() => window.__huddle.state.role), 'participant');
}, { critical: true });

sc.step('the host sees Record (control bar and people panel); the participant does not', async () => {
  const a = A.p.page, b = B.p.page;
  await a.locator('#record-button').waitFor({ state: 'visible' });
  assert.equal(await a.locator('#record-button').getAttribute('aria-label'), 'Record');
  await openPeople(a);
  await a.locator('#recording-section').waitFor({ state: 'visible' });
  assert.equal((await a.locator('#record-toggle').innerText()).trim(), 'Record');
  assert.equal((await a.locator('#recordings-empty').innerText()).trim(), sentence('en', 'recording.empty'));
  assert.ok(await b.locator('#record-button').isHidden(), 'the participant has the Record button');
  await openPeople(b);
  assert.ok(await b.locator('#recording-section').isHidden(), 'the participant has the recording section');
  await closePanel(b);
  assert.ok(await a.locator('#rec-indicator').isHidden() && await b.locator('#rec-indicator').isHidden(), 'a sign before any recording');
}, { critical: true });

sc.step('Record sends record; the recording shows for everyone, counting up, and is said', async () => {
  const a = A.p.page, b = B.p.page;
  await closePanel(a);
  await a.locator('#record-button').click();
  await sent(A, 'record');
  assert.ok(await a.locator('#record-button').isDisabled(), 'Record can be pressed again before the server answered');
  const msg = startRecording({ id: A.p.id, name: A.name });
  A.toPage(msg);
  B.toPage(msg);
  for (const [x, label] of [[A, 'Recording'], [B, '녹화 중']]) {
    await x.p.page.locator('#rec-indicator').waitFor({ state: 'visible' });
    const ind = await indicator(x.p.page);
    assert.equal(ind.label, label, `${x.p.who}: the sign's word`);
    assert.match(ind.time, /^01:0\d$/, `${x.p.who}: the sign's time (started 61 s ago)`);
    assert.equal(ind.role, 'status', `${x.p.who}: the sign's role`);
    assert.ok(ind.aria && ind.aria.startsWith(x.lang === 'ko' ? '이 회의는 녹화되고 있습니다' : 'This meeting is being recorded'), `${x.p.who}: the sign's aria-label: ${ind.aria}`);
    assert.equal(await x.p.page.evaluate(() => window.__huddle.state.recording), current.id);
    await expectIndicatorLaidOut(x);
  }
  const before = await Promise.all([a, b].map((p) => p.locator('#rec-time').innerText()));
  await new Promise((r) => setTimeout(r, 2200));
  const later = await Promise.all([a, b].map((p) => p.locator('#rec-time').innerText()));
  const secs = (s) => s.split(':').reduce((acc, v) => acc * 60 + Number(v), 0);
  for (const i of [0, 1]) {
    const d = secs(later[i]) - secs(before[i]);
    assert.ok(d >= 1 && d <= 4, `${['A', 'B'][i]}: the time went from ${before[i]} to ${later[i]} in 2.2 s`);
  }
  await expectNotice(A, sentence('en', 'recording.startedYou'));
  await expectNotice(B, sentence('ko', 'recording.started', { name: 'Dana' }));
  await a.locator('#record-button[data-recording="true"]:not([disabled])').waitFor();
  assert.equal(await a.locator('#record-button').getAttribute('aria-label'), 'Stop recording');
  assert.equal((await a.locator('#record-toggle').innerText()).trim(), 'Stop recording');
}, { critical: true });

sc.step('the recordings list: a row in each state, the download link only when ready', async () => {
  const a = A.p.page;
  A.toPage({ type: 'recordings', recordings: LIST });
  B.toPage({ type: 'recordings', recordings: LIST }); // never sent to a participant; the page shows nothing either
  await openPeople(a);
  await a.locator('#recordings-list li').nth(LIST.length - 1).waitFor();
  assert.ok(await a.locator('#recordings-empty').isHidden(), '"No recordings yet" beside recordings');
  const rows = await a.locator('#recordings-list li').evaluateAll((lis) => lis.map((li) => {
    const vis = (sel) => { const e = li.querySelector(sel); return !!e && !e.hidden && getComputedStyle(e).display !== 'none'; };
    return {
      id: li.dataset.id, state: li.dataset.state,
      stateText: li.querySelector('.rec-state').textContent,
      length: li.querySelector('.rec-length').textContent, size: li.querySelector('.rec-size').textContent,
      when: li.querySelector('.rec-when').textContent,
      progress: vis('.rec-progress') ? li.querySelector('.rec-progress').value : null,
      note: vis('.rec-note') ? li.querySelector('.rec-note').textContent : null,
      download: vis('.rec-download') ? { href: li.querySelector('.rec-download').getAttribute('href'), download: li.querySelector('.rec-download').hasAttribute('download'), text: li.querySelector('.rec-download').textContent } : null,
      del: vis('.rec-delete'),
    };
  }));
  assert.deepEqual(rows.map((r) => r.state), LIST.map((r) => r.state), 'one row per recording, newest first');
  const by = Object.fromEntries(rows.map((r) => [r.state, r]));
  assert.equal(by.recording.stateText, 'Recording…');
  assert.equal(by.composing.stateText, 'Making the file… 42%');
  assert.ok(Math.abs(by.composing.progress - 0.42) < 0.001, `the progress bar: ${by.composing.progress}`);
  assert.equal(by.ready.stateText, 'Ready');
  assert.deepEqual(by.ready.download, { href: `${sc.server.url}${READY_URL}`, download: true, text: 'Download' });
  assert.deepEqual(rows.filter((r) => r.download).map((r) => r.state), ['ready'], 'download links');
  assert.equal(by.raw.note, sentence('en', 'recording.note.raw'));
  assert.equal(by.failed.stateText, 'Failed');
  assert.equal(by.interrupted.note, sentence('en', 'recording.note.interrupted'));
  assert.deepEqual(rows.filter((r) => r.del).map((r) => r.state), ['composing', 'ready', 'raw', 'failed', 'interrupted'], 'Delete offered');
  assert.equal(by.recording.length, '01:01');
  assert.equal(by.composing.length, '1:02:03');
  assert.equal(by.ready.size, '4.0 MB');
  assert.equal(by.composing.size, '700 MB');
  assert.equal(by.failed.size, '500 KB');
  for (const r of rows) assert.ok(r.when && !/Invalid/.test(r.when), `the start time of ${r.id}: ${r.when}`);
  assert.equal(await B.p.page.locator('#recordings-list li').count(), 0, 'the participant lists recordings');

  // Wide, English: the host with the sign and the list.
  await a.locator('#recording-section').scrollIntoViewIfNeeded();
  const fit = await a.evaluate(() => {
    const ul = document.querySelector('#recordings-list');
    const panel = document.querySelector('#people-panel').getBoundingClientRect();
    const out = [...ul.querySelectorAll('li, li *')].filter((e) => {
      const r = e.getBoundingClientRect();
      return r.width && (r.right > panel.right + 0.5 || r.left < panel.left - 0.5);
    }).map((e) => e.className);
    return { out, sideways: document.documentElement.scrollWidth - innerWidth };
  });
  assert.deepEqual(fit.out, [], 'parts of the rows stick out of the panel');
  assert.ok(fit.sideways <= 1, `the host's page scrolls sideways by ${fit.sideways}px`);
  await expectIndicatorLaidOut(A);
  await a.screenshot({ path: path.join(shotsDir, 'recording-host-en-wide.png') });
});

sc.step('Delete asks first, then sends delete_recording; a recording already gone is said', async () => {
  const a = A.p.page;
  const row = a.locator('#recordings-list li[data-state="failed"]');
  await row.locator('.rec-delete').click();
  await a.locator('#confirm-dialog[open]').waitFor();
  assert.match(await a.locator('#confirm-text').innerText(), /^Delete the recording of .+ \(00:12\)\? This cannot be undone\.$/);
  await a.locator('#confirm-cancel').click();
  await a.locator('#confirm-dialog').waitFor({ state: 'hidden' });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(A.taken.filter((m) => m.type === 'delete_recording').length, 0, 'Cancel sent delete_recording');
  await row.locator('.rec-delete').click();
  await a.locator('#confirm-ok').click();
  const del = await sent(A, 'delete_recording');
  assert.deepEqual(del, { type: 'delete_recording', id: '20261206T140000-dddd' });
  assert.ok(await row.locator('.rec-delete').isDisabled(), 'Delete can be pressed twice');
  A.toPage({ type: 'error', code: 'unknown_recording', message: 'no such recording', request: 'delete_recording' });
  await expectNotice(A, sentence('en', 'error.unknown_recording'));
  await row.locator('.rec-delete:not([disabled])').waitFor();
  A.toPage({ type: 'recordings', recordings: LIST.filter((r) => r.state !== 'failed') });
  await row.waitFor({ state: 'detached' });
  assert.equal(await a.locator('#recordings-list li').count(), LIST.length - 1);
});

sc.step('Stop recording sends stop_recording; the sign goes for everyone, who are told', async () => {
  const a = A.p.page;
  await a.locator('#record-toggle').click();
  await sent(A, 'stop_recording');
  const stop = { type: 'recording', recording: null, stopped: { by: { id: A.p.id, name: A.name }, reason: 'stopped' } };
  A.toPage(stop);
  B.toPage(stop);
  for (const x of [A, B]) await x.p.page.locator('#rec-indicator').waitFor({ state: 'hidden' });
  await expectNotice(A, sentence('en', 'recording.stoppedYou'));
  await expectNotice(B, sentence('ko', 'recording.stoppedBy', { name: 'Dana' }));
  assert.equal((await a.locator('#record-toggle').innerText()).trim(), 'Record');
  assert.equal(await B.p.page.evaluate(() => window.__huddle.state.recording), null);
});

sc.step('a recording stopped because the server\'s space is full says so (English, Korean)', async () => {
  const msg = startRecording({ id: A.p.id, name: A.name }, Date.now() - 5_000);
  A.toPage(msg);
  B.toPage(msg);
  for (const x of [A, B]) await x.p.page.locator('#rec-indicator').waitFor({ state: 'visible' });
  const stop = { type: 'recording', recording: null, stopped: { reason: 'storage_full' } };
  A.toPage(stop);
  B.toPage(stop);
  for (const x of [A, B]) {
    await x.p.page.locator('#rec-indicator').waitFor({ state: 'hidden' });
    await expectNotice(x, sentence(x.lang, 'recording.stop.storage_full'));
  }
  assert.equal(sentence('en', 'recording.stop.storage_full'), 'The recording stopped: the server’s recording space is full.');
});

sc.step('Record refused: each reason in clear words; a server that does not record stops offering it', async () => {
  const a = A.p.page;
  const cases = [
    ['not_allowed', 'error.record.not_allowed'],
    ['recording_storage_full', 'error.recording_storage_full'],
    ['rate_limited', 'error.record.rate_limited'],
    ['recording_unavailable', 'error.recording_unavailable'],
  ];
  for (const [code, key] of cases) {
    await a.locator('#record-button:not([disabled])').click();
    await sent(A, 'record');
    A.toPage({ type: 'error', code, message: `refused: ${code}`, request: 'record' });
    assert.equal(await banner(a, code, 'A'), sentence('en', key), `the sentence for ${code}`);
    if (code !== 'recording_unavailable') await a.locator('#record-button:not([disabled])').waitFor();
  }
  // This server does not record: the control bar no longer offers Record, the panel says why.
  await a.locator('#record-button').waitFor({ state: 'hidden' });
  await openPeople(a);
  assert.ok(await a.locator('#record-toggle').isDisabled(), 'Record is still offered in the panel');
  assert.equal((await a.locator('#recording-unavailable').innerText()).trim(), sentence('en', 'error.recording_unavailable'));
  await a.locator('#lang-select').selectOption('ko');
  assert.equal((await a.locator('#error-text').innerText()).trim(), sentence('ko', 'error.recording_unavailable'), 'the Korean sentence');
  await a.locator('#lang-select').selectOption('en');
  await a.screenshot({ path: path.join(shotsDir, 'recording-refused-en-wide.png') });
  await a.locator('#error-close').click();
  await closePanel(a);
  assert.ok(await a.locator('#rec-indicator').isHidden(), 'a refused Record shows the sign');
});

sc.step('phone size: the Korean participant sees the sign; the Korean host\'s list fits', async () => {
  const msg = startRecording({ id: A.p.id, name: A.name }, Date.now() - 83_000);
  A.toPage(msg);
  B.toPage(msg);
  const b = B.p.page, a = A.p.page;
  await b.setViewportSize({ width: 390, height: 844 });
  await b.locator('#rec-indicator').waitFor({ state: 'visible' });
  assert.match((await indicator(b)).time, /^01:2\d$/);
  await expectIndicatorLaidOut(B);
  await b.screenshot({ path: path.join(shotsDir, 'recording-participant-ko-phone.png') });

  await a.setViewportSize({ width: 390, height: 844 });
  await a.locator('#lang-select').selectOption('ko');
  assert.ok(await a.locator('#record-button').isHidden(), 'the control bar has Record on a phone');
  await openPeople(a);
  assert.equal((await a.locator('#record-toggle').innerText()).trim(), '녹화 중지');
  assert.equal((await a.locator('#recordings-list li[data-state="composing"] .rec-state').innerText()).trim(), '파일 만드는 중… 42%');
  await a.locator('#recordings-list li[data-state="ready"]').scrollIntoViewIfNeeded();
  const sideways = await a.evaluate(() => document.documentElement.scrollWidth - innerWidth);
  assert.ok(sideways <= 1, `the host's phone page scrolls sideways by ${sideways}px`);
  await a.screenshot({ path: path.join(shotsDir, 'recording-host-ko-phone.png') });
  await closePanel(a);
  await expectIndicatorLaidOut(A);
  await a.locator('#lang-select').selectOption('en');
  await a.setViewportSize({ width: 1280, height: 800 });
});

sc.step('a co-host gets Record and the list; back to participant, neither', async () => {
  const a = A.p.page, b = B.p.page;
  await openPeople(a);
  await a.locator(`#participant-list li[data-peer-id="${B.p.id}"] .person-more`).click();
  await a.locator('#person-menu button[data-action="role_cohost"]').click();
  await b.waitForFunction(() => window.__huddle.state.role === 'cohost');
  B.toPage({ type: 'recordings', recordings: LIST });
  await openPeople(b);
  await b.locator('#recording-section').waitFor({ state: 'visible' });
  assert.equal((await b.locator('#record-toggle').innerText()).trim(), '녹화 중지');
  await b.locator('#recordings-list li').nth(LIST.length - 1).waitFor();
  assert.equal((await b.locator('#recordings-list li[data-state="ready"] .rec-download').innerText()).trim(), '내려받기');
  assert.equal((await b.locator('#recordings-list li[data-state="raw"] .rec-note').innerText()).trim(), sentence('ko', 'recording.note.raw'));
  await a.locator(`#participant-list li[data-peer-id="${B.p.id}"] .person-more`).click();
  await a.locator('#person-menu button[data-action="role_participant"]').click();
  await b.locator('#recording-section').waitFor({ state: 'hidden' });
  assert.equal(await b.locator('#recordings-list li').count(), 0, 'a participant keeps the recordings (and their links)');
  await closePanel(b);
  await closePanel(a);
});

sc.step('pre-join: "This meeting is being recorded" before Join (landing list too; English, Korean)', async () => {
  C = await person('newcomer-en', 'en', 'Mina');
  const roomsWithRecording = (m) => (m.type === 'rooms'
    ? { ...m, rooms: m.rooms.map((r) => (r.name === ROOM && current ? { ...r, recording: true } : r)) } : m);
  C.rewrite = roomsWithRecording;
  const c = C.p.page;
  await gotoLanding(c, sc.server.url);
  const item = c.locator(`#room-list li[data-room="${ROOM}"][data-recording="true"]`);
  await item.waitFor();
  assert.equal((await item.locator('.room-item-rec').innerText()).trim(), 'Recording');
  assert.match(await item.locator('button').getAttribute('aria-label'), /being recorded$/);
  await c.locator('#name-input').fill(C.name);
  await item.locator('button').click();
  await waitForView(c, 'prejoin');
  const consent = c.locator('#prejoin-recording');
  await consent.waitFor({ state: 'visible' });
  assert.equal((await consent.locator('strong').innerText()).trim(), sentence('en', 'recording.consent'));
  assert.equal(await consent.getAttribute('role'), 'status');
  const [cb, jb] = await Promise.all([consent.boundingBox(), c.locator('#join-button').boundingBox()]);
  assert.ok(cb.y + cb.height <= jb.y, `the notice is not above Join: ${JSON.stringify({ cb, jb })}`);
  await c.waitForFunction(() => document.querySelector('#preview')?.videoWidth > 0, null, { timeout: T.media });
  await c.screenshot({ path: path.join(shotsDir, 'recording-prejoin-en-wide.png') });
  await c.locator('#lang-select').selectOption('ko');
  assert.equal((await consent.locator('strong').innerText()).trim(), sentence('ko', 'recording.consent'));
  await c.setViewportSize({ width: 390, height: 844 });
  await consent.scrollIntoViewIfNeeded();
  const sideways = await c.evaluate(() => document.documentElement.scrollWidth - innerWidth);
  assert.ok(sideways <= 1, `pre-join scrolls sideways by ${sideways}px`);
  await c.screenshot({ path: path.join(shotsDir, 'recording-prejoin-ko-phone.png') });
  await c.locator('#lang-select').selectOption('en');
  await c.setViewportSize({ width: 1280, height: 800 });
  // A list without the recording: the notice goes.
  C.toPage({ type: 'rooms', rooms: [{ name: ROOM, participants: 2, capacity: 50 }] });
  await consent.waitFor({ state: 'hidden' });
});

sc.step('the waiting view says it too, and joined shows the sign at once', async () => {
  const a = A.p.page, c = C.p.page;
  C.rewrite = (m) => (m.type === 'waiting' && current ? { ...m, recording: true }
    : m.type === 'joined' && current ? { ...m, recording: current } : m);
  await setSwitch(a, 'setting-waiting-room', true);
  await pressJoin(c, { waitForPreview: false });
  await waitForView(c, 'waiting');
  const note = c.locator('#waiting-recording');
  await note.waitFor({ state: 'visible' });
  assert.equal((await note.locator('strong').innerText()).trim(), sentence('en', 'recording.consent'));
  await c.screenshot({ path: path.join(shotsDir, 'recording-waiting-en-wide.png') });
  await a.locator('#waiting-list li', { hasText: C.name }).locator('.admit').click();
  await waitForView(c, 'room');
  // At once: no `recording` message follows `joined` here.
  await c.locator('#rec-indicator').waitFor({ state: 'visible', timeout: 2000 });
  assert.match((await indicator(c)).time, /^0[1-9]:\d\d$/);
  await expectNotice(C, sentence('en', 'recording.consent'));
  assert.ok(await c.locator('#record-button').isHidden(), 'the newcomer has Record');
  await closePanel(a);
});

sc.step('a clock behind the server\'s: the sign counts from 00:00, never below', async () => {
  const msg = startRecording({ id: A.p.id, name: A.name }, Date.now() + 90_000);
  B.toPage(msg);
  const b = B.p.page;
  await pollUntil(async () => (await indicator(b))?.time === '00:00' || { ok: false, now: await indicator(b) }, { what: 'B: the sign at 00:00' });
  await new Promise((r) => setTimeout(r, 1600));
  assert.match((await indicator(b)).time, /^00:0[1-3]$/, 'the sign counts up from 00:00');
});

sc.step('no uncaught errors in the pages', async () => {
  for (const p of sc.participants) {
    const errors = p.log.filter((l) => l.includes('pageerror]') || l.includes('handler for'));
    assert.deepEqual(errors, [], `${p.who}: uncaught errors`);
  }
}, { always: true });
