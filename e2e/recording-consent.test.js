// Consent to a recording (docs/protocol.md, `join`, "Consent to a recording"), through the real
// server and two real Chromiums: entering a room that is being recorded needs `recording_ok`.
//
// The host (English, wide, red camera) opens a room, takes it off the public list ("Show in public
// rooms" off in the people panel) and clicks Record; a second person (Korean, phone-size, green
// camera) opens the room's link directly. The room is not on the list, so the pre-join step cannot
// know that it records and says nothing; the first Join is refused with `recording_consent` (the
// page's WebSocket shows a `join` without `recording_ok`, and the error), the page stays on pre-join
// and now shows "This meeting is being recorded" and the banner's Korean sentence; nobody entered
// (`/metrics`). Join again sends `recording_ok: true` and enters: the recording sign, and each page
// decodes the other's camera colour with frames advancing.
// The server runs `--topology sfu` with recordings on and `--ffmpeg /nonexistent`: raw tracks
// only, nothing to compose.
// Screenshots (artifacts/recording/, or $RECORDING_SHOTS_DIR): consent-prejoin-ko-phone.png (the
// phone's screen after the refused first Join, the notice and Join in view), -full.png (the whole
// pre-join page then), consent-room-ko-phone.png (in the room, recording).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { startServer, metricsParticipants } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, pressJoin, waitForView, waitForRemoteTiles, expectEveryoneSeesEveryone, pollUntil } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { sentence } from './lib/i18n.js';
import { artifactsDir, T } from './lib/env.js';

const sc = new Scenario('recording-consent');
const ROOM = `consent-${crypto.randomBytes(3).toString('hex')}`;
const shotsDir = process.env.RECORDING_SHOTS_DIR || path.join(artifactsDir(), 'recording');
const PHONE = { width: 390, height: 844 };
let tmp, clips;
/** @type {import('./lib/browser.js').Participant & {clip?: object, sent?: object[], received?: object[]}} */ let A, B;

/**
 * Keep what the page sends and receives on its signalling WebSocket (watched, not changed):
 * `p.sent` every message it sends, `p.received` every one it gets (parsed).
 */
function watchSignalling(p) {
  p.sent = [];
  p.received = [];
  p.page.on('websocket', (ws) => {
    if (!ws.url().endsWith('/ws')) return;
    const parse = (payload) => { try { return typeof payload === 'string' ? JSON.parse(payload) : null; } catch { return null; } };
    ws.on('framesent', ({ payload }) => { const m = parse(payload); if (m) p.sent.push(m); });
    ws.on('framereceived', ({ payload }) => { const m = parse(payload); if (m) p.received.push(m); });
  });
}

/** The `n`-th message of `type` (and matching `pred`) the page sent or received, once it is there. */
function nth(p, list, type, n, pred = () => true) {
  return pollUntil(() => p[list].filter((m) => m.type === type && pred(m))[n - 1], { timeoutMs: T.ui, what: `${p.who}: ${type} #${n} ${list}` })
    .catch((e) => { throw new Error(`${e.message}; ${list} so far: ${JSON.stringify(p[list].map((m) => m.type))}`); });
}

/** `huddle_participants` from the server's /metrics. */
const participants = () => metricsParticipants(sc.server);

const hudState = (p) => p.page.evaluate(() => window.__huddle?.state ?? null);

async function indicatorShown(p) {
  await p.page.locator('#rec-indicator').waitFor({ state: 'visible', timeout: T.ui })
    .catch(async () => { throw new Error(`${p.who}: #rec-indicator not visible within ${T.ui} ms; state ${JSON.stringify(await hudState(p))}`); });
}

/** Where the banner, the notice and Join are on screen, and whether the page fits its width. */
function layout(page) {
  return page.evaluate(() => {
    const box = (sel) => { const b = document.querySelector(sel)?.getBoundingClientRect(); return b && b.width && b.height ? { l: b.left, t: b.top, r: b.right, b: b.bottom } : null; };
    const text = document.querySelector('#error-text');
    return {
      banner: box('#error-banner'), notice: box('#prejoin-recording'), join: box('#join-button'),
      clipped: !!text && (text.scrollWidth > text.clientWidth + 1 || text.scrollHeight > text.clientHeight + 1),
      sideways: document.documentElement.scrollWidth - innerWidth, w: innerWidth, h: innerHeight,
    };
  });
}
const overlap = (x, y) => !!x && !!y && x.l < y.r && y.l < x.r && x.t < y.b && y.t < x.b;

before(async () => {
  mkdirSync(shotsDir, { recursive: true });
  tmp = makeTempDir('huddle-e2e-consent-');
  const args = ['--topology', 'sfu', '--recordings-dir', path.join(tmp.dir, 'recordings'), '--ffmpeg', '/nonexistent'];
  [sc.server, clips] = await Promise.all([startServer({ args }), makeClips(tmp.dir, 2)]);
  [A, B] = await Promise.all([
    launchParticipant({ who: 'host-red-en', clip: clips[0].path }),
    launchParticipant({ who: 'guest-green-ko', clip: clips[1].path, lang: 'ko-KR', viewport: PHONE }),
  ]);
  A.clip = clips[0]; B.clip = clips[1];
  sc.participants.push(A, B);
  for (const p of [A, B]) watchSignalling(p);
});

after(async () => {
  writeLogs('recording-consent', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

sc.step('the host opens a room, takes it off the public list and records', async (t) => {
  await joinViaLanding(A, sc.server.url, { name: 'Ana', room: ROOM });
  const a = A.page;
  if (await a.locator('#people-panel').isHidden()) await a.locator('#people-button').click();
  await a.locator('#meeting-settings').waitFor({ state: 'visible' });
  const listed = a.locator('#setting-listed');
  assert.ok(await listed.isChecked(), 'a new room is listed');
  await listed.click();
  await a.locator('#meeting-settings[data-listed="false"]').waitFor({ state: 'attached' });
  assert.equal((await nth(A, 'received', 'room_settings', 1, (m) => m.settings.listed === false)).settings.listed, false);

  await a.locator('#record-button').click();
  await a.locator('#record-button[data-recording="true"]').waitFor({ state: 'attached' });
  await indicatorShown(A);
  await pollUntil(async () => (await hudState(A))?.recording, { what: 'host: window.__huddle.state.recording set' });
  t.diagnostic(`recording ${(await hudState(A)).recording} in ${ROOM} (unlisted)`);
}, { critical: true });

sc.step('the Korean guest opens the link: pre-join says nothing of the recording (the room is not listed)', async () => {
  const b = B.page;
  B.name = '보라';
  await b.goto(`${sc.server.url}/r/${encodeURIComponent(ROOM)}`, { waitUntil: 'domcontentloaded' });
  await waitForView(b, 'prejoin');
  await b.locator('#name-input').fill(B.name);
  // The page has the public list (it asks for it on pre-join), and our room is not on it.
  const rooms = await nth(B, 'received', 'rooms', 1);
  assert.ok(!rooms.rooms.some((r) => r.name === ROOM), `the unlisted room is not on the public list: ${JSON.stringify(rooms.rooms)}`);
  assert.ok(await b.locator('#prejoin-recording').isHidden(), 'the pre-join step does not say the unlisted room records');
  assert.equal((await b.locator('#prejoin-presence').innerText()).trim(), '', 'nor how many are in it');
  assert.equal(await b.evaluate(() => document.documentElement.lang), 'ko');
}, { critical: true });

sc.step('the first Join is refused with recording_consent: pre-join now says it records, in Korean', async (t) => {
  const b = B.page;
  await b.locator('#join-button').scrollIntoViewIfNeeded(); // as the click will
  t.diagnostic(`before Join: ${JSON.stringify(await layout(b))} scrollY ${await b.evaluate(() => scrollY)}`);
  await pressJoin(b);
  const refused = await nth(B, 'received', 'error', 1, (m) => m.request === 'join');
  assert.equal(refused.code, 'recording_consent', `the answer to the first join: ${JSON.stringify(refused)}`);
  const banner = b.locator('#error-banner[data-code="recording_consent"]');
  await banner.waitFor({ state: 'visible', timeout: T.ui }).catch(async () => {
    throw new Error(`guest: no #error-banner[data-code="recording_consent"]; it shows ${JSON.stringify(await b.evaluate(() => document.querySelector('#error-banner')?.dataset.code))}`);
  });
  assert.equal((await b.locator('#error-text').innerText()).trim(), sentence('ko', 'error.recording_consent'), 'the banner\'s sentence');
  const notice = b.locator('#prejoin-recording');
  await notice.waitFor({ state: 'visible', timeout: T.ui });
  assert.equal((await notice.locator('strong').innerText()).trim(), sentence('ko', 'recording.consent'));
  assert.equal(await b.evaluate(() => document.body.dataset.view), 'prejoin', 'still on pre-join');
  assert.ok(await b.locator('#join-button').isEnabled(), 'Join can be pressed again');

  // The join the page sent first had no recording_ok (the page could not know), and it was the
  // only one: nothing was retried behind the person's back.
  const joins = B.sent.filter((m) => m.type === 'join');
  assert.equal(joins.length, 1, `one join sent: ${JSON.stringify(joins)}`);
  assert.equal(joins[0].room, ROOM);
  assert.ok(!('recording_ok' in joins[0]), `the first join has no recording_ok: ${JSON.stringify(joins[0])}`);
  // Nobody entered: the host is alone, and sees no tile.
  assert.equal(await participants(), 1, '/metrics: only the host is in a room');
  assert.equal(await A.page.locator('#tiles .tile:not([data-self="true"])').count(), 0, 'the host sees nobody else');

  // As a person sees it on a phone, where Join left them: the notice appeared in view (between the
  // name and Join), the banner (at the top of the page) whole, nothing covering anything.
  const l = await layout(b);
  t.diagnostic(`after the refusal: ${JSON.stringify(l)} scrollY ${await b.evaluate(() => scrollY)}`);
  assert.ok(l.sideways <= 1, `pre-join scrolls sideways by ${l.sideways}px`);
  assert.ok(l.notice && l.notice.t >= 0 && l.notice.b <= l.h, `the notice is on screen where the person pressed Join: ${JSON.stringify(l)}`);
  assert.ok(l.banner && l.banner.l >= 0 && l.banner.r <= l.w, `the banner is within the width: ${JSON.stringify(l)}`);
  assert.ok(!l.clipped, `the banner's text is not cut: ${JSON.stringify(l)}`);
  assert.ok(!overlap(l.banner, l.notice) && !overlap(l.banner, l.join), `the banner covers the notice or Join: ${JSON.stringify(l)}`);
  assert.ok(l.notice.b <= l.join.t, `the notice comes before Join: ${JSON.stringify(l)}`);
  assert.ok(l.join && l.join.t >= 0 && l.join.b <= l.h, `Join is on screen with the notice, to be pressed again: ${JSON.stringify(l)}`);
  await b.screenshot({ path: path.join(shotsDir, 'consent-prejoin-ko-phone.png') });
  await b.screenshot({ path: path.join(shotsDir, 'consent-prejoin-ko-phone-full.png'), fullPage: true });
}, { critical: true });

sc.step('Join again sends recording_ok and enters: the sign, and each decodes the other\'s camera', async (t) => {
  const b = B.page;
  await pressJoin(b);
  const second = await nth(B, 'sent', 'join', 2);
  assert.equal(second.recording_ok, true, `the second join carries recording_ok: ${JSON.stringify(second)}`);
  assert.equal(second.room, ROOM);
  await waitForView(b, 'room');
  B.id = await b.evaluate(() => window.__huddle.id);
  assert.ok(B.id, 'the guest has an id in the room');
  assert.equal(B.received.filter((m) => m.type === 'error' && m.request === 'join').length, 1, 'no second refusal');
  await indicatorShown(B);
  assert.equal((await b.locator('#rec-indicator .rec-label').innerText()).trim(), sentence('ko', 'recording.indicator'));
  assert.ok(await b.locator('#error-banner').isHidden(), 'the consent banner went away');
  const joined = await nth(B, 'received', 'joined', 1);
  assert.ok(joined.recording, `joined says the room records: ${JSON.stringify(joined.recording)}`);
  await Promise.all([waitForRemoteTiles(A.page, [B.id]), waitForRemoteTiles(b, [A.id])]);
  await expectEveryoneSeesEveryone([A, B], clips, (line) => t.diagnostic(line));
  assert.equal(await participants(), 2, '/metrics: both in the room');
  await indicatorShown(A);
  assert.ok((await hudState(A)).recording, 'the host still records');
  await b.screenshot({ path: path.join(shotsDir, 'consent-room-ko-phone.png') });
}, { critical: true, timeout: 90_000 });

sc.step('no uncaught errors in either page', async () => {
  for (const p of [A, B]) {
    const errors = p.log.filter((l) => l.includes('pageerror]') || l.includes('handler for'));
    assert.deepEqual(errors, [], `${p.who}: uncaught errors`);
  }
}, { always: true });
