// Recording a meeting through the real server and the real page (issue 18), from the Record
// button to the files on disk and the one file the host downloads.
//
// 1. "a recorded meeting gives raw tracks and one composite with everyone": three Chromiums, each
//    with its own coloured camera clip and its own pure tone as the microphone (440, 1000 and
//    1700 Hz). The host (English, wide) and B (Korean, phone-size) meet peer-to-peer; the host
//    clicks Record: everyone shows the sign and the room moves to the SFU. C (English) sees
//    "being recorded" on the landing list and on pre-join before joining, and the sign after. While
//    it records, B mutes for two seconds, C leaves and comes back, the host shares the screen;
//    then the host stops. The host's list shows the recording composing, then ready; the test
//    downloads the composite through the page's link and checks with ffprobe/ffmpeg: every raw
//    track (codec, length as the manifest says), the manifest (three people and their names, C's
//    two stays, B's mute), the composite's length, each person's colour in their own tile (the
//    grid computed as crates/record/src/compose.rs lays it out), and each person's tone in the
//    mixed sound (Goertzel, against frequencies nobody sends), B's missing while muted.
// 2. "kill -9 during a recording": a host and a participant record ~4 s and the server is
//    killed; the track files decode; the next start on the same port and directories takes the
//    recording as interrupted and composes it; the host's page (back in the room by itself) lists
//    it ready; the composite decodes.
//
// Screenshots and the composite's frames: artifacts/recording/recorded-*.png (or $RECORDING_SHOTS_DIR).
import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips, writeToneWav, nearestClip } from './lib/camera.js';
import { joinViaLanding, gotoLanding, pressJoin, waitForView, waitForRemoteTiles, waitForRemoteVideo, pollUntil, COLOUR_TOLERANCE } from './lib/huddle.js';
import { streamInfo, decodeAll, frameAt, framePng, regionMean, audioSamples, tonePower, rms } from './lib/avfile.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, REPO_DIR, T } from './lib/env.js';

const shotsDir = process.env.RECORDING_SHOTS_DIR || path.join(artifactsDir(), 'recording');
/** Each participant's microphone: a pure tone, far from the others and their harmonics. */
const TONES = [440, 1000, 1700];
/** Frequencies nobody sends (nor their first harmonics): the floor the tones must stand above. */
const OFF_TONES = [560, 770, 1230, 1450, 2450];
/** How much stronger than the strongest off-tone frequency each tone must be in the mix. */
const TONE_OVER_FLOOR = 20;
/** How long the composite may take, from Stop to `ready`. */
const COMPOSE_MS = 120_000;

/** The page's own sentence for `key` in `lang`, read from web/js/i18n.js. */
const I18N = readFileSync(path.join(REPO_DIR, 'web', 'js', 'i18n.js'), 'utf8');
function sentence(lang, key) {
  const ko = I18N.indexOf('\n  ko: {');
  const part = lang === 'ko' ? I18N.slice(ko) : I18N.slice(0, ko);
  const m = new RegExp(`'${key.replace(/\./g, '\\.')}':\\s*'((?:[^'\\\\]|\\\\.)*)'`).exec(part);
  assert.ok(m, `web/js/i18n.js has ${key} in ${lang}`);
  return m[1].replace(/\\(.)/g, '$1');
}

// ------------------------------------------------------------------ helpers

/** Every `recordings` and `recording` message the page receives, in order (watched, not changed). */
function watchRecordingMessages(p) {
  p.recordingsSeen = [];
  p.page.on('websocket', (ws) => {
    ws.on('framereceived', ({ payload }) => {
      if (typeof payload !== 'string' || !payload.includes('"recording')) return;
      try {
        const m = JSON.parse(payload);
        if (m.type === 'recordings') {
          p.recordingsSeen.push(m.recordings.map((r) => `${r.id}:${r.state}${r.state === 'composing' ? `@${r.progress}` : ''}`).join(' '));
          p.note(`[test] recordings: ${p.recordingsSeen.at(-1)}`);
        } else if (m.type === 'recording') {
          p.note(`[test] recording: ${payload.slice(0, 300)}`);
        }
      } catch { /* not ours */ }
    });
  });
}

/** The states one recording went through in the page's `recordings` messages (repeats folded). */
function statesOf(p, id, from = 0) {
  const out = [];
  for (const line of p.recordingsSeen.slice(from)) {
    const m = new RegExp(`(?:^| )${id}:(\\w+)`).exec(line);
    if (m && out.at(-1) !== m[1]) out.push(m[1]);
  }
  return out;
}

const pageState = (p) => p.page.evaluate(() => window.__huddle?.state ?? null);

async function waitForState(p, pred, what, timeoutMs = T.ui) {
  return pollUntil(async () => {
    const s = await pageState(p);
    return (s && pred(s)) ? s : { ok: false, s };
  }, { timeoutMs, what: `${p.who}: ${what}` });
}

async function indicatorShown(p, timeoutMs = T.ui) {
  await p.page.locator('#rec-indicator').waitFor({ state: 'visible', timeout: timeoutMs })
    .catch(async () => { throw new Error(`${p.who}: #rec-indicator not visible within ${timeoutMs} ms; state ${JSON.stringify(await pageState(p))}`); });
}

async function openPeople(page) {
  if (await page.locator('#people-panel').isHidden()) await page.locator('#people-button').click();
  await page.locator('#people-panel').waitFor({ state: 'visible' });
}

/** The recordings directory's one recording (its id, directory and manifest). */
function onlyRecording(dir) {
  const ids = readdir(dir).filter((d) => /^r\d+-/.test(d));
  assert.equal(ids.length, 1, `one recording in ${dir}: ${JSON.stringify(ids)}`);
  const recDir = path.join(dir, ids[0]);
  return { id: ids[0], dir: recDir, manifest: readManifest(recDir) };
}
function readdir(dir) { return existsSync(dir) ? readdirSync(dir) : []; }
function readManifest(recDir) { return JSON.parse(readFileSync(path.join(recDir, 'manifest.json'), 'utf8')); }

// Spans of manifest time (ms), as compose.rs has them: sorted, disjoint, half-open.
function normalize(spans) {
  const s = spans.filter(([a, b]) => a < b).sort((x, y) => x[0] - y[0]);
  const out = [];
  for (const [a, b] of s) {
    const last = out.at(-1);
    if (last && a <= last[1]) last[1] = Math.max(last[1], b); else out.push([a, b]);
  }
  return out;
}
function intersect(x, y) {
  const out = [];
  for (const [a, b] of x) for (const [c, d] of y) { const s = Math.max(a, c), e = Math.min(b, d); if (s < e) out.push([s, e]); }
  return normalize(out);
}
function subtract(x, y) {
  const out = [];
  for (const [a, b] of x) {
    let start = a;
    for (const [c, d] of normalize(y)) {
      if (d <= start || c >= b) continue;
      if (c > start) out.push([start, c]);
      start = Math.max(start, d);
    }
    if (start < b) out.push([start, b]);
  }
  return normalize(out);
}
/** Spans between `on` and `off` events of one peer (still on at the end: until `end`). */
function toggles(manifest, peer, on, off, end) {
  const spans = [];
  let open = null;
  for (const e of manifest.events.filter((e) => e.peer === peer).sort((a, b) => a.at - b.at)) {
    if (e.event === on && open === null) open = e.at;
    else if (e.event === off && open !== null) { spans.push([open, e.at]); open = null; }
  }
  if (open !== null) spans.push([open, end]);
  return normalize(spans);
}
const present = (m, peer, kind, end) => normalize(m.tracks.filter((t) => t.peer === peer && t.kind === kind).map((t) => [t.start, t.end ?? end]));
const longest = (spans) => spans.reduce((best, s) => (!best || s[1] - s[0] > best[1] - best[0] ? s : best), null);

/**
 * Where compose.rs puts each of `n` tiles in its grid on a `w`×`h` canvas (no screen share):
 * the picture box (cell minus margin and name band). A port of its `grid`, `band_for` and
 * `picture_box`, so the test samples each tile wherever the layout puts it.
 */
function compositeGrid(n, w = 1280, h = 720) {
  const bandFor = (hh) => Math.min(36, Math.max(12, Math.floor(hh / 8)));
  const even = (v) => v & ~1;
  const band = bandFor(Math.floor(h / Math.min(n, 4)));
  const score = (cols) => {
    const rows = Math.ceil(n / cols);
    const cw = Math.floor(w / cols), ch = Math.floor(h / rows);
    return Math.min(Math.max(0, cw - 8) * 9, Math.max(0, ch - 8 - band) * 16);
  };
  let cols = 1;
  for (let c = 1; c <= n; c++) if (score(c) > score(cols)) cols = c;
  const rows = Math.ceil(n / cols);
  const cw = Math.floor(w / cols), ch = Math.floor(h / rows);
  return Array.from({ length: n }, (_, i) => {
    const row = Math.floor(i / cols), col = i % cols;
    const inRow = row === rows - 1 ? n - row * cols : cols;
    const cell = { x: Math.floor((cols - inRow) * cw / 2) + col * cw, y: row * ch, w: cw, h: ch };
    const m = cell.w < 200 ? 2 : 4;
    const b = bandFor(cell.h);
    return { cell, box: { x: even(cell.x + m), y: even(cell.y + m), w: even(cell.w - 2 * m), h: even(cell.h - 2 * m - b) } };
  });
}

/** The middle part of a box (where a letterboxed 4:3 or 16:9 picture always is). */
const centre = (b, f = 0.4) => ({ x: b.x + b.w * (1 - f) / 2, y: b.y + b.h * (1 - f) / 2, w: b.w * f, h: b.h * f });

/** Fetch a file from the server into `out`; returns its size. */
async function download(url, out) {
  const res = await fetch(url);
  assert.equal(res.status, 200, `GET ${url}: ${res.status}`);
  const body = Buffer.from(await res.arrayBuffer());
  writeFileSync(out, body);
  return { bytes: body.length, type: res.headers.get('content-type') };
}

/** Launch one participant with its clip and tone, watching its recording messages. */
async function participant(sc, { who, clip, tone, lang = 'en-US', viewport, args = [] }) {
  const p = await launchParticipant({ who, clip: clip.path, lang, viewport, args: [`--use-file-for-fake-audio-capture=${tone}`, ...args] });
  p.clip = clip;
  sc.participants.push(p);
  watchRecordingMessages(p);
  return p;
}

// ------------------------------------------------------------------ 1. a recorded meeting

describe('a recorded meeting gives raw tracks and one composite with everyone', () => {
  const sc = new Scenario('recording');
  const ROOM = `rec-e2e-${crypto.randomBytes(3).toString('hex')}`;
  let tmp, clips, recDir, A, B, C, tones;
  const t0 = Date.now();
  /** What the steps learn, for the later ones. */
  const run = { screenShared: false };

  before(async () => {
    mkdirSync(shotsDir, { recursive: true });
    tmp = makeTempDir('huddle-e2e-rec-');
    recDir = path.join(tmp.dir, 'recordings');
    clips = await makeClips(tmp.dir, 3);
    tones = TONES.map((f) => writeToneWav(tmp.dir, f));
    sc.server = await startServer({ args: ['--recordings-dir', recDir, '--topology', 'auto'] });
  });

  after(async () => {
    writeLogs('recording', sc.participants, sc.server);
    await sc.closeAll();
    await sc.server?.stop();
    tmp?.cleanup();
  });

  sc.step('the host and B meet peer-to-peer, each with their own colour and tone', async (t) => {
    [A, B, C] = await Promise.all([
      // The host shares its screen later: Chromium picks the screen without a picker.
      participant(sc, { who: 'host-red-440', clip: clips[0], tone: tones[0], args: ['--auto-select-desktop-capture-source=Entire screen'] }),
      participant(sc, { who: 'b-green-1000-ko', clip: clips[1], tone: tones[1], lang: 'ko-KR', viewport: { width: 390, height: 844 } }),
      participant(sc, { who: 'c-blue-1700', clip: clips[2], tone: tones[2] }),
    ]);
    await joinViaLanding(A, sc.server.url, { name: 'Ana', room: ROOM });
    await joinViaLanding(B, sc.server.url, { name: '보라', room: ROOM });
    await Promise.all([waitForRemoteTiles(A.page, [B.id]), waitForRemoteTiles(B.page, [A.id])]);
    await Promise.all([waitForRemoteVideo(A.page, B.id), waitForRemoteVideo(B.page, A.id)]);
    for (const p of [A, B]) assert.equal((await pageState(p)).topology, 'p2p', `${p.who}: a room of two is peer-to-peer`);
    assert.equal((await pageState(A)).role, 'host');
    t.diagnostic(`p2p call up at ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }, { critical: true, timeout: 90_000 });

  sc.step('the host clicks Record: both show the sign, the room moves to the SFU', async (t) => {
    await A.page.locator('#record-button').click();
    for (const p of [A, B]) {
      await indicatorShown(p);
      await waitForState(p, (s) => !!s.recording && s.topology === 'sfu', 'recording, on the SFU');
    }
    run.startedAt = Date.now();
    assert.equal(await A.page.locator('#topology').getAttribute('data-topology'), 'sfu');
    assert.equal((await B.page.locator('#rec-indicator .rec-label').innerText()).trim(), sentence('ko', 'recording.indicator'));
    // Media through the SFU now: each still sees the other.
    await Promise.all([waitForRemoteVideo(A.page, B.id), waitForRemoteVideo(B.page, A.id)]);
    await pollUntil(() => A.page.evaluate(() => window.__huddle.sfu?.connectionState === 'connected'), { timeoutMs: T.media, what: 'host: connected to the SFU' });
    t.diagnostic(`recording ${(await pageState(A)).recording} on the SFU at ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }, { critical: true });

  sc.step('C sees "being recorded" on the landing list and on pre-join, joins and sees the sign', async () => {
    const c = C.page;
    await gotoLanding(c, sc.server.url);
    const item = c.locator(`#room-list li[data-room="${ROOM}"][data-recording="true"]`);
    await item.waitFor({ timeout: T.ui }).catch(async () => {
      throw new Error(`C: no #room-list li[data-room="${ROOM}"][data-recording="true"]; list: ${await c.locator('#room-list').innerHTML()}`);
    });
    await c.locator('#name-input').fill('Cleo');
    C.name = 'Cleo';
    await item.locator('button').click();
    await waitForView(c, 'prejoin');
    const consent = c.locator('#prejoin-recording');
    await consent.waitFor({ state: 'visible' });
    assert.equal((await consent.locator('strong').innerText()).trim(), sentence('en', 'recording.consent'));
    await pressJoin(c);
    await waitForView(c, 'room');
    C.id = await c.evaluate(() => window.__huddle.id);
    await indicatorShown(C);
    await waitForState(C, (s) => !!s.recording && s.topology === 'sfu', 'recording, on the SFU');
    await Promise.all([
      waitForRemoteTiles(A.page, [B.id, C.id]), waitForRemoteTiles(B.page, [A.id, C.id]), waitForRemoteTiles(c, [A.id, B.id]),
    ]);
    // C's camera reaches the SFU (the others decode it), and C gets the others.
    await Promise.all([waitForRemoteVideo(A.page, C.id), waitForRemoteVideo(B.page, C.id), waitForRemoteVideo(c, A.id), waitForRemoteVideo(c, B.id)]);
    run.cJoinedAt = Date.now();
  }, { critical: true, timeout: 90_000 });

  sc.step('screenshots while recording: the host (English, wide), B (Korean, phone-size)', async () => {
    await A.page.screenshot({ path: path.join(shotsDir, 'recorded-host-en-wide.png') });
    await indicatorShown(B);
    const sideways = await B.page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    assert.ok(sideways <= 1, `B's phone page scrolls sideways by ${sideways}px`);
    await B.page.screenshot({ path: path.join(shotsDir, 'recorded-participant-ko-phone.png') });
    // Everyone present and unmuted for a while: the stretch the composite's checks use.
    const left = 3000 - (Date.now() - run.cJoinedAt);
    if (left > 0) await new Promise((r) => setTimeout(r, left));
  });

  sc.step('B mutes for two seconds, then unmutes', async () => {
    const b = B.page;
    await b.locator('#mic-button').click();
    await waitForState(B, (s) => s.audio === false, 'muted');
    await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-audio="off"]`).waitFor({ timeout: T.ui })
      .catch(() => { throw new Error('host: B\'s tile does not say muted'); });
    await new Promise((r) => setTimeout(r, 2000)); // the muted stretch in the recording
    await b.locator('#mic-button').click();
    await waitForState(B, (s) => s.audio === true, 'unmuted');
    await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-audio="on"]`).waitFor({ timeout: T.ui })
      .catch(() => { throw new Error('host: B\'s tile does not say unmuted'); });
  });

  sc.step('C leaves and comes back (the notice again before joining); the room stays on the SFU', async (t) => {
    const c = C.page;
    await c.locator('#leave-button').click();
    await waitForView(c, 'landing');
    await waitForRemoteTiles(A.page, [B.id]);
    const two = await pageState(A);
    assert.equal(two.topology, 'sfu', 'a recording room of two stays on the SFU');
    assert.ok(two.recording, 'still recording after C left');
    const item = c.locator(`#room-list li[data-room="${ROOM}"][data-recording="true"]`);
    await item.waitFor({ timeout: T.ui });
    await item.locator('button').click();
    await waitForView(c, 'prejoin');
    await c.locator('#prejoin-recording').waitFor({ state: 'visible' });
    await pressJoin(c);
    await waitForView(c, 'room');
    const again = await c.evaluate(() => window.__huddle.id);
    t.diagnostic(`C's id: ${C.id} then ${again}`);
    C.ids = [C.id, again];
    C.id = again;
    await indicatorShown(C);
    await Promise.all([waitForRemoteTiles(A.page, [B.id, C.id]), waitForRemoteTiles(c, [A.id, B.id])]);
    await Promise.all([waitForRemoteVideo(A.page, C.id), waitForRemoteVideo(B.page, C.id)]);
  }, { critical: true, timeout: 60_000 });

  sc.step('the host shares the screen for two seconds', async (t) => {
    const a = A.page;
    await a.locator('#share-button').click();
    const shared = await a.locator('#tiles .tile[data-self="true"][data-screen="on"]').waitFor({ timeout: T.ui }).then(() => true, () => false);
    if (!shared) {
      t.diagnostic('SKIPPED: the fake screen capture did not start headless; no screen share in this recording');
      return;
    }
    run.screenShared = true;
    await B.page.locator(`#tiles .tile[data-peer-id="${A.id}"][data-screen="on"]`).waitFor({ timeout: T.ui });
    await new Promise((r) => setTimeout(r, 2000)); // the shared stretch in the recording
    await a.locator('#share-button').click();
    await a.locator('#tiles .tile[data-self="true"][data-screen="off"]').waitFor({ timeout: T.ui });
    await B.page.locator(`#tiles .tile[data-peer-id="${A.id}"][data-screen="off"]`).waitFor({ timeout: T.ui });
  });

  sc.step('the host stops; the sign goes; the list shows it composing, then ready', async (t) => {
    await new Promise((r) => setTimeout(r, 1500)); // the camera back in the grid for a moment
    await A.page.locator('#record-button[data-recording="true"]:not([disabled])').click();
    for (const p of [A, B, C]) {
      await p.page.locator('#rec-indicator').waitFor({ state: 'hidden', timeout: T.ui });
      await waitForState(p, (s) => s.recording === null, 'not recording');
    }
    run.stoppedAt = Date.now();
    // B and C are done: their browsers go, so the composite has the CPU.
    for (const p of [B, C]) { writeLogs('recording', [p]); await p.close(); }
    sc.participants = sc.participants.filter((p) => p === A);
    const ready = A.page.locator('#recordings-list li[data-state="ready"]');
    await ready.waitFor({ state: 'attached', timeout: COMPOSE_MS }).catch(async () => {
      throw new Error(`host: no ready recording within ${COMPOSE_MS} ms; messages: ${JSON.stringify(A.recordingsSeen.slice(-5))}`);
    });
    run.composedMs = Date.now() - run.stoppedAt;
    run.rec = onlyRecording(recDir);
    assert.equal(await ready.getAttribute('data-id'), run.rec.id);
    const states = statesOf(A, run.rec.id);
    t.diagnostic(`states ${states.join(' → ')}; ready ${(run.composedMs / 1000).toFixed(1)} s after Stop`);
    assert.equal(states[0], 'recording', `the list first said recording: ${states}`);
    assert.ok(states.includes('composing'), `the list said composing: ${states}`);
    assert.equal(states.at(-1), 'ready');
    run.url = await ready.locator('.rec-download').getAttribute('href');
    assert.ok(run.url, 'the ready recording has a download link');
    await openPeople(A.page);
    await ready.scrollIntoViewIfNeeded();
    await A.page.screenshot({ path: path.join(shotsDir, 'recorded-list-en-wide.png') });
  }, { critical: true, timeout: COMPOSE_MS + 30_000 });

  sc.step('the manifest: three people with their names, C\'s two stays, B\'s mute; every raw track plays as long as it says', async (t) => {
    const m = run.rec.manifest;
    assert.equal(m.state, 'stopped');
    assert.equal(m.room, ROOM);
    assert.equal(m.startedBy.id, A.id);
    assert.deepEqual(m.participants.map((p) => [p.id, p.name]), [[A.id, 'Ana'], [B.id, '보라'], [C.id, 'Cleo']],
      `the participants in the order first seen (C's ids: ${C.ids})`);
    const cTracks = m.tracks.filter((tr) => tr.peer === C.id);
    for (const kind of ['audio', 'video']) {
      const mine = cTracks.filter((tr) => tr.kind === kind).sort((x, y) => x.start - y.start);
      assert.equal(mine.length, 2, `C has two ${kind} tracks (two stays): ${JSON.stringify(mine)}`);
      assert.notEqual(mine[0].file, mine[1].file);
      assert.ok(mine[0].end <= mine[1].start, `C's ${kind} stays do not overlap: ${JSON.stringify(mine)}`);
    }
    const cEvents = m.events.filter((e) => e.peer === C.id).map((e) => e.event);
    assert.deepEqual(cEvents.filter((e) => e === 'joined' || e === 'left'), ['joined', 'left', 'joined'], `C's events: ${cEvents}`);
    for (const p of [A, B]) {
      for (const kind of ['audio', 'video']) {
        assert.equal(m.tracks.filter((tr) => tr.peer === p.id && tr.kind === kind).length, 1, `${p.who}: one ${kind} track`);
      }
    }
    const bEvents = m.events.filter((e) => e.peer === B.id);
    const muted = bEvents.find((e) => e.event === 'muted');
    const unmuted = bEvents.find((e) => e.event === 'unmuted');
    assert.ok(muted && unmuted && unmuted.at > muted.at, `B's muted, then unmuted: ${JSON.stringify(bEvents)}`);
    assert.ok(unmuted.at - muted.at >= 1500 && unmuted.at - muted.at <= 6000, `B muted for ${unmuted.at - muted.at} ms`);
    if (run.screenShared) {
      const aEvents = m.events.filter((e) => e.peer === A.id).map((e) => e.event);
      assert.ok(aEvents.includes('screen_on') && aEvents.includes('screen_off'), `the host's screen share: ${aEvents}`);
    }
    const lines = [];
    for (const tr of m.tracks) {
      const file = path.join(run.rec.dir, tr.file);
      const info = await streamInfo(file);
      const expected = (tr.end - tr.start) / 1000;
      lines.push(`${tr.file}: ${info.codec} ${info.duration.toFixed(2)} s (manifest ${expected.toFixed(2)} s), ${info.packets} packets, ${tr.frames} frames, ${statSync(file).size} bytes`);
      assert.equal(info.codec, tr.kind === 'audio' ? 'opus' : 'vp8', `${tr.file}: codec`);
      assert.equal(tr.codec, info.codec, `${tr.file}: the manifest's codec`);
      assert.ok(Math.abs(info.duration - expected) <= 1, `${tr.file}: ${info.duration} s, the manifest says ${expected} s`);
    }
    for (const line of lines) t.diagnostic(line);
    writeFileSync(path.join(shotsDir, 'recorded-manifest.json'), JSON.stringify(m, null, 2));
  });

  sc.step('the composite (downloaded through the page\'s link): its length, everyone\'s colour in their tile, all three tones mixed', async (t) => {
    const m = run.rec.manifest;
    const file = path.join(tmp.dir, 'composite.webm');
    const url = new URL(run.url, sc.server.url).href;
    const got = await download(url, file);
    t.diagnostic(`downloaded ${got.bytes} bytes (${got.type}) from ${run.url}`);
    const length = (m.stoppedAt - m.startedAt) / 1000;
    const v = await streamInfo(file);
    assert.equal(v.codec, 'vp8');
    assert.ok(Math.abs(v.duration - length) <= 1, `the composite lasts ${v.duration} s, the recording ${length} s`);
    const dec = await decodeAll(file);
    assert.equal(dec.code, 0, `the composite decodes: ${dec.errors}`);

    // Video: a moment when all three are there with their cameras (no screen share, nobody's
    // camera off), in the middle of the longest such stretch.
    const end = m.stoppedAt - m.startedAt;
    const people = [A, B, C];
    let all = [[0, end]];
    for (const p of people) {
      all = intersect(all, present(m, p.id, 'video', end));
      all = subtract(all, toggles(m, p.id, 'screen_on', 'screen_off', end));
      all = subtract(all, toggles(m, p.id, 'video_off', 'video_on', end));
    }
    const vspan = longest(all);
    assert.ok(vspan && vspan[1] - vspan[0] >= 1000, `a stretch with all three cameras: ${JSON.stringify(all)}`);
    const at = (vspan[0] + vspan[1]) / 2000;
    const frame = await frameAt(file, at, { width: 1280, height: 720 });
    await framePng(file, at, path.join(shotsDir, 'recorded-composite-grid.png'));
    const grid = compositeGrid(people.length);
    const seen = people.map((p, i) => {
      const rgb = regionMean(frame, centre(grid[i].box));
      const near = nearestClip(rgb, clips);
      return { who: p.who, tile: grid[i].box, rgb, nearest: near.clip.colour, distance: Math.round(near.distance) };
    });
    t.diagnostic(`frame at ${at.toFixed(2)} s (stretch ${JSON.stringify(vspan)}): ${JSON.stringify(seen)}`);
    for (const [i, s] of seen.entries()) {
      assert.equal(s.nearest, people[i].clip.colour, `tile ${i} (${s.who}) shows ${s.nearest} ${JSON.stringify(s.rgb)}`);
      assert.ok(s.distance <= COLOUR_TOLERANCE, `tile ${i} (${s.who}): colour ${JSON.stringify(s.rgb)} is ${s.distance} from ${people[i].clip.colour}`);
    }
    if (run.screenShared) {
      const share = toggles(m, A.id, 'screen_on', 'screen_off', end)[0];
      if (share) await framePng(file, (share[0] + share[1]) / 2000, path.join(shotsDir, 'recorded-composite-screen.png'));
    }

    // Sound: a stretch where all three are there and unmuted; each tone well above the floor.
    let heard = [[0, end]];
    for (const p of people) {
      heard = intersect(heard, present(m, p.id, 'audio', end));
      heard = subtract(heard, toggles(m, p.id, 'muted', 'unmuted', end));
    }
    const aspan = longest(heard);
    assert.ok(aspan && aspan[1] - aspan[0] >= 2000, `a stretch with all three unmuted: ${JSON.stringify(heard)}`);
    const margin = 600;
    const from = aspan[0] + margin, len = Math.min(2000, aspan[1] - aspan[0] - 2 * margin);
    const pcm = await audioSamples(file, from / 1000, len / 1000);
    const power = (f) => tonePower(pcm, 48000, f);
    const floor = Math.max(...OFF_TONES.map(power));
    const levels = Object.fromEntries([...TONES, ...OFF_TONES].map((f) => [f, Number((10 * Math.log10(power(f) + 1e-15)).toFixed(1))]));
    t.diagnostic(`sound ${from}..${from + len} ms (rms ${rms(pcm).toFixed(3)}), dB: ${JSON.stringify(levels)}`);
    for (const [i, f] of TONES.entries()) {
      assert.ok(power(f) >= TONE_OVER_FLOOR * floor, `${people[i].who}'s ${f} Hz is only ${(power(f) / floor).toFixed(1)}x the strongest off-tone frequency (dB ${JSON.stringify(levels)})`);
    }
    // While B was muted, B's tone is missing and the others' are there.
    const bMuted = toggles(m, B.id, 'muted', 'unmuted', end)[0];
    const quiet = intersect([[bMuted[0] + 500, bMuted[1] - 300]], intersect(present(m, A.id, 'audio', end), present(m, B.id, 'audio', end)));
    if (quiet.length && quiet[0][1] - quiet[0][0] >= 500) {
      const q = await audioSamples(file, quiet[0][0] / 1000, (quiet[0][1] - quiet[0][0]) / 1000);
      const qp = (f) => tonePower(q, 48000, f);
      const qfloor = Math.max(...OFF_TONES.map(qp));
      t.diagnostic(`while B was muted ${JSON.stringify(quiet[0])}: 440 ${(qp(440) / qfloor).toFixed(1)}x, 1000 ${(qp(1000) / qfloor).toFixed(1)}x the floor`);
      assert.ok(qp(TONES[0]) >= TONE_OVER_FLOOR * qfloor, 'the host\'s tone while B was muted');
      assert.ok(qp(TONES[1]) < power(TONES[1]) / 30, `B's tone while muted: ${qp(TONES[1])} against ${power(TONES[1])} unmuted`);
    }
  }, { timeout: 90_000 });

  sc.step('no uncaught errors in the pages', async () => {
    for (const p of [A, B, C].filter(Boolean)) {
      const errors = p.log.filter((l) => l.includes('pageerror]'));
      assert.deepEqual(errors, [], `${p.who}: uncaught errors`);
    }
  }, { always: true });
});

// ------------------------------------------------------------------ 2. kill -9 while recording

describe('kill -9 during a recording: the files written play and the next start composes it', () => {
  const sc = new Scenario('recording-crash');
  const ROOM = `rec-crash-${crypto.randomBytes(3).toString('hex')}`;
  let tmp, clips, recDir, args, A, B;
  const run = {};

  before(async () => {
    mkdirSync(shotsDir, { recursive: true });
    tmp = makeTempDir('huddle-e2e-rec-crash-');
    recDir = path.join(tmp.dir, 'recordings');
    args = ['--recordings-dir', recDir, '--data-dir', path.join(tmp.dir, 'data'), '--topology', 'auto'];
    clips = await makeClips(tmp.dir, 2);
    sc.server = await startServer({ args });
  });

  after(async () => {
    writeLogs('recording-crash', sc.participants, sc.server);
    await sc.closeAll();
    await sc.server?.stop();
    tmp?.cleanup();
  });

  sc.step('a host and a participant record for four seconds; the server is killed (SIGKILL)', async (t) => {
    [A, B] = await Promise.all([
      participant(sc, { who: 'crash-host-red', clip: clips[0], tone: writeToneWav(tmp.dir, TONES[0]) }),
      participant(sc, { who: 'crash-guest-green', clip: clips[1], tone: writeToneWav(tmp.dir, TONES[1]) }),
    ]);
    await joinViaLanding(A, sc.server.url, { name: 'Ana', room: ROOM });
    await joinViaLanding(B, sc.server.url, { name: 'Bo', room: ROOM });
    await Promise.all([waitForRemoteVideo(A.page, B.id), waitForRemoteVideo(B.page, A.id)]);
    await A.page.locator('#record-button').click();
    for (const p of [A, B]) {
      await indicatorShown(p);
      await waitForState(p, (s) => !!s.recording && s.topology === 'sfu', 'recording, on the SFU');
    }
    // Until both people's camera and microphone are being written, and four seconds are.
    const rec = await pollUntil(() => {
      const ids = readdir(recDir).filter((d) => /^r\d+-/.test(d));
      if (ids.length !== 1) return { ok: false, ids };
      const dir = path.join(recDir, ids[0]);
      const m = readManifest(dir);
      const written = m.tracks.filter((tr) => existsSync(path.join(dir, tr.file)) && statSync(path.join(dir, tr.file)).size > 2000);
      const kinds = new Set(written.map((tr) => `${tr.peer}:${tr.kind}`));
      const ok = kinds.size === 4 && Date.now() - m.startedAt >= 4000;
      return ok ? { id: ids[0], dir } : { ok: false, kinds: [...kinds], age: Date.now() - m.startedAt };
    }, { timeoutMs: T.media, what: 'four tracks being written for four seconds' });
    run.rec = rec;
    const gone = new Promise((r) => sc.server.proc.once('exit', (code, signal) => r(signal)));
    sc.server.proc.kill('SIGKILL');
    assert.equal(await gone, 'SIGKILL');
    run.killedAt = Date.now();
    t.diagnostic(`killed ${rec.id} after ${((run.killedAt - readManifest(rec.dir).startedAt) / 1000).toFixed(1)} s of recording`);
  }, { critical: true, timeout: 90_000 });

  sc.step('the track files the killed server left decode', async (t) => {
    const m = readManifest(run.rec.dir);
    assert.equal(m.state, 'recording', 'the manifest still says recording (nobody closed it)');
    const lines = [];
    for (const tr of m.tracks) {
      const file = path.join(run.rec.dir, tr.file);
      const dec = await decodeAll(file);
      const info = await streamInfo(file).catch((e) => ({ error: e.message }));
      lines.push(`${tr.file}: exit ${dec.code}, ${dec.frames} frames decoded, ${info.packets} packets, ${info.duration?.toFixed?.(2)} s, ${statSync(file).size} bytes${dec.errors ? `; errors: ${dec.errors.split('\n').slice(0, 3).join(' | ')}` : ''}`);
      // A torn last block is expected; what came before it decodes.
      const errorLines = dec.errors ? dec.errors.split('\n').length : 0;
      assert.ok(dec.code === 0 || errorLines <= 2, `${tr.file} does not decode: ${dec.errors}`);
      const minFrames = tr.kind === 'audio' ? 100 : 10; // 2 s of Opus; a few video frames
      assert.ok((dec.frames ?? 0) >= minFrames, `${tr.file}: only ${dec.frames} frames decoded`);
      assert.ok(dec.frames >= 0.9 * info.packets, `${tr.file}: ${dec.frames} of its ${info.packets} frames decode`);
    }
    for (const line of lines) t.diagnostic(line);
  });

  sc.step('the next start composes it: the host\'s page lists it ready and the composite decodes', async (t) => {
    const port = sc.server.port;
    const seenBefore = new Map([A, B].map((p) => [p, p.recordingsSeen.length]));
    sc.server = await startServer({ listen: `127.0.0.1:${port}`, args });
    // The pages find the server again by themselves (as new participants: nothing was saved).
    for (const p of [A, B]) await waitForState(p, (s) => s.inRoom && s.connected && !s.reconnecting, 'back in the room', 30_000);
    const host = await pollUntil(async () => {
      for (const p of [A, B]) if ((await pageState(p)).role === 'host') return p;
      return false;
    }, { timeoutMs: T.ui, what: 'one of the pages hosts the room again' });
    const ready = host.page.locator(`#recordings-list li[data-id="${run.rec.id}"][data-state="ready"]`);
    await ready.waitFor({ state: 'attached', timeout: COMPOSE_MS }).catch(async () => {
      throw new Error(`${host.who}: no ready ${run.rec.id} within ${COMPOSE_MS} ms; messages: ${JSON.stringify(host.recordingsSeen.slice(-5))}`);
    });
    const log = sc.server.output();
    assert.match(log, /recording interrupted when its server stopped; kept and composed/);
    assert.match(log, /recording composed/);
    const after = statesOf(host, run.rec.id, seenBefore.get(host));
    assert.ok(after.length && after.every((st) => ['interrupted', 'composing', 'ready'].includes(st)) && after.at(-1) === 'ready',
      `after the restart the list said ${after.join(' → ')}`);
    t.diagnostic(`${host.who} hosts; after the restart its list said ${statesOf(host, run.rec.id, seenBefore.get(host)).join(' → ')}; ready ${((Date.now() - run.killedAt) / 1000).toFixed(1)} s after the kill`);
    assert.ok(!/panicked/.test(log), 'no panic in the new server');
    await openPeople(host.page);
    await ready.scrollIntoViewIfNeeded();
    await host.page.screenshot({ path: path.join(shotsDir, 'recorded-after-crash-list-en-wide.png') });

    const m = readManifest(run.rec.dir);
    assert.equal(m.state, 'interrupted');
    const lines = [];
    for (const tr of m.tracks) {
      assert.ok(Number.isFinite(tr.end), `${tr.file}: the restart gave it an end: ${JSON.stringify(tr)}`);
      const file = path.join(run.rec.dir, tr.file);
      const dec = await decodeAll(file);
      lines.push(`${tr.file} (mended): exit ${dec.code}, ${dec.frames} frames${dec.errors ? `, errors: ${dec.errors}` : ''}`);
      assert.equal(dec.code, 0, `${tr.file} decodes after the restart mended it: ${dec.errors}`);
    }
    const url = new URL(await ready.locator('.rec-download').getAttribute('href'), sc.server.url).href;
    const file = path.join(tmp.dir, 'composite.webm');
    const got = await download(url, file);
    const dec = await decodeAll(file);
    const info = await streamInfo(file);
    const length = Math.max(...m.tracks.map((tr) => tr.end)) / 1000;
    lines.push(`composite: ${got.bytes} bytes, ${info.duration.toFixed(2)} s (tracks end at ${length.toFixed(2)} s), exit ${dec.code}, ${dec.frames} frames`);
    for (const line of lines) t.diagnostic(line);
    assert.equal(dec.code, 0, `the composite decodes: ${dec.errors}`);
    assert.ok(dec.frames >= 20, `the composite has ${dec.frames} frames`);
    assert.ok(Math.abs(info.duration - length) <= 1, `the composite lasts ${info.duration} s, the tracks ${length} s`);
  }, { timeout: COMPOSE_MS + 60_000 });
});
