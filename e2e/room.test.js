// The acceptance scenario: three people, each in their own Chromium with their own coloured fake
// camera, meet in one room through the real page. Steps run in order and share the browsers.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips, nearestClip } from './lib/camera.js';
import {
  joinViaLanding, waitForRemoteTiles, waitForRemoteVideo, waitForColour, meanColour, expectFramesAdvance, expectEveryoneSeesEveryone,
  tile, button, gotoLanding, pollUntil, COLOUR_TOLERANCE,
} from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const HOSTILE = '<img src=x onerror=alert(1)>';
const ROOM = `e2e-room-${crypto.randomBytes(3).toString('hex')}`;

const sc = new Scenario('room');
let tmp, clips;
/** @type {import('./lib/browser.js').Participant} */ let A, B, C, D;

before(async () => {
  tmp = makeTempDir();
  // The peer-to-peer scenario (a mesh of three); sfu.test.js and auto-switch.test.js cover the SFU.
  [sc.server, clips] = await Promise.all([startServer({ args: ['--topology', 'p2p'] }), makeClips(tmp.dir, 3)]);
  // A also shares its screen later: let Chromium pick the screen without a picker.
  [A, B, C] = await Promise.all(clips.map((clip, i) => launchParticipant({
    who: `${clip.label}-${clip.colour}`, clip: clip.path,
    args: i === 0 ? ['--auto-select-desktop-capture-source=Entire screen'] : [],
  })));
  A.clip = clips[0]; B.clip = clips[1]; C.clip = clips[2];
  sc.participants.push(A, B, C);
});

after(async () => {
  writeLogs('room', [...sc.participants, ...gone], sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

/** The chat message sent in the chat step (a latecomer must find it in the history). */
let chatSent = null;
/** Participants whose browsers were closed during the scenario (their logs are still written). */
const gone = [];
const inRoom = () => sc.participants.filter((p) => p.id && !p.left);
const others = (p) => inRoom().filter((q) => q !== p);

sc.step('three participants join the same room through landing, pre-join and Join', async () => {
  await joinViaLanding(A, sc.server.url, { name: 'Alice', room: ROOM });
  await joinViaLanding(B, sc.server.url, { name: 'Bob', room: ROOM });
  await joinViaLanding(C, sc.server.url, { name: HOSTILE, room: ROOM });
  assert.equal(new Set([A.id, B.id, C.id]).size, 3, `peer ids are not distinct: ${A.id} ${B.id} ${C.id}`);
  await Promise.all(inRoom().map((p) => waitForRemoteTiles(p.page, others(p).map((q) => q.id))
    .catch((e) => { throw new Error(`${p.who}: ${e.message}`); })));
  for (const p of inRoom()) {
    await pollUntil(async () => {
      const count = (await p.page.locator('#participant-count').textContent())?.trim();
      return count === '3' ? count : { ok: false, count };
    }, { timeoutMs: T.ui, what: `${p.who}: #participant-count to read 3` });
    const listed = await p.page.locator('#participant-list li').count();
    assert.equal(listed, 3, `${p.who}: #participant-list has ${listed} li, not 3`);
  }
}, { critical: true });

sc.step('the room view has the controls of the DOM contract', async () => {
  const page = A.page;
  const problems = [];
  for (const name of ['Microphone', 'Camera', 'Share screen', 'Settings', 'Chat', 'Participants', 'Leave']) {
    const n = await button(page, name).count();
    if (n !== 1) problems.push(`${n} buttons named "${name}"`);
  }
  for (const name of ['Microphone', 'Camera', 'Share screen', 'Chat', 'Participants']) {
    const pressed = await button(page, name).first().getAttribute('aria-pressed').catch(() => null);
    if (pressed !== 'true' && pressed !== 'false') problems.push(`toggle "${name}" has aria-pressed=${JSON.stringify(pressed)}`);
  }
  for (const [name, id] of [['Message', 'chat-input'], ['Send a file', 'file-input']]) {
    const ids = await page.getByLabel(name, { exact: true }).evaluateAll((els) => els.map((e) => e.id));
    if (!ids.includes(id)) problems.push(`label "${name}" should name #${id}, names ${JSON.stringify(ids)}`);
  }
  const send = await page.getByRole('button', { name: 'Send', exact: true, includeHidden: true }).count();
  if (send < 1) problems.push('no button "Send"');
  for (const sel of ['#tiles', '#notices', '#participant-count', '#participant-list', '#settings-dialog', '#chat-log', '#files', '#error-banner', '#lang-select']) {
    if (!(await page.locator(sel).count())) problems.push(`no ${sel}`);
  }
  if ((await page.locator('#file-input').getAttribute('type')) !== 'file') problems.push('#file-input is not <input type=file>');
  if ((await page.locator('#error-banner').getAttribute('role')) !== 'alert') problems.push('#error-banner has no role="alert"');
  const self = await page.locator('#tiles .tile[data-self="true"]').evaluateAll((ts) => ts.map((t) => ({
    id: t.dataset.peerId, audio: t.dataset.audio, video: t.dataset.video,
    parts: ['video', '.tile-name', '.tile-initials'].filter((q) => !t.querySelector(q)),
  })));
  if (self.length !== 1) problems.push(`${self.length} tiles with data-self="true"`);
  else {
    if (self[0].id !== A.id) problems.push(`own tile has data-peer-id ${self[0].id}, __huddle.id is ${A.id}`);
    if (self[0].parts.length) problems.push(`own tile lacks ${self[0].parts.join(', ')}`);
    if (!['on', 'off'].includes(self[0].audio) || !['on', 'off'].includes(self[0].video)) problems.push(`own tile data-audio/video: ${JSON.stringify(self[0])}`);
  }
  const handle = await page.evaluate(() => ({ id: window.__huddle?.id, room: window.__huddle?.room, isMap: window.__huddle?.peers instanceof Map, state: typeof window.__huddle?.state }));
  if (!handle.isMap) problems.push('window.__huddle.peers is not a Map');
  if (handle.room !== ROOM) problems.push(`window.__huddle.room is ${JSON.stringify(handle.room)}`);
  assert.deepEqual(problems, [], 'the room view does not follow docs/dom-contract.md');
});

sc.step('each sees the other two in their own colours, with frames advancing', async (t) => {
  await expectEveryoneSeesEveryone(inRoom(), clips, (line) => t.diagnostic(line));
});

sc.step('a hostile name renders as text, creates no element and fires no dialog', async () => {
  for (const p of inRoom()) {
    const r = await p.page.evaluate(({ id, hostile }) => {
      const t = document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"]`);
      return {
        tileName: t?.querySelector('.tile-name')?.textContent?.trim(),
        listed: [...document.querySelectorAll('#participant-list li')].map((li) => li.textContent.trim()),
        listedHas: [...document.querySelectorAll('#participant-list li')].some((li) => li.textContent.includes(hostile)),
        imgX: document.querySelectorAll('img[src="x"]').length,
        onerrorAttrs: document.querySelectorAll('[onerror]').length,
      };
    }, { id: C.id, hostile: HOSTILE });
    assert.equal(r.tileName, HOSTILE, `${p.who}: .tile-name of ${C.id} reads ${JSON.stringify(r.tileName)}`);
    assert.ok(r.listedHas, `${p.who}: no #participant-list li contains the name as text; list: ${JSON.stringify(r.listed)}`);
    assert.equal(r.imgX, 0, `${p.who}: the name created an <img src=x>`);
    assert.equal(r.onerrorAttrs, 0, `${p.who}: an element with an onerror attribute exists`);
  }
  for (const p of sc.participants) assert.deepEqual(p.dialogs, [], `${p.who}: dialogs fired`);
});

sc.step('chat sent by one reaches all three chat logs, as text', async () => {
  const text = chatSent = `안녕하세요 hello ${crypto.randomBytes(4).toString('hex')} <b>not bold</b>`;
  await openPanel(A.page, 'Chat', '#chat-input');
  await A.page.getByLabel('Message', { exact: true }).fill(text);
  await button(A.page, 'Send').click();
  await Promise.all(inRoom().map(async (p) => {
    await pollUntil(() => p.page.evaluate((text) => [...document.querySelectorAll('#chat-log .chat-msg')]
      .some((m) => m.querySelector('.chat-text')?.textContent.trim() === text && m.querySelector('.chat-name')?.textContent.trim() === 'Alice'), text),
    { timeoutMs: T.ui, what: `${p.who}: a .chat-msg from Alice with the text in #chat-log` })
      .catch(async (e) => { throw new Error(`${e.message}; log: ${JSON.stringify(await p.page.locator('#chat-log').innerText().catch(() => '?'))}`); });
    const bold = await p.page.locator('#chat-log b').count();
    assert.equal(bold, 0, `${p.who}: the chat text became HTML (a <b> element in #chat-log)`);
  }));
});

sc.step('a file sent by one arrives intact at the other two', async (t) => {
  const name = `e2e-${crypto.randomBytes(3).toString('hex')}.bin`;
  const bytes = crypto.randomBytes(300 * 1024);
  const sha = crypto.createHash('sha256').update(bytes).digest('hex');
  await A.page.locator('#file-input').setInputFiles({ name, mimeType: 'application/octet-stream', buffer: bytes });
  await Promise.all(others(A).map(async (p) => {
    const item = p.page.locator(`#files .file-item[data-file-name="${name}"]`);
    await item.waitFor({ state: 'attached', timeout: T.transfer })
      .catch(() => { throw new Error(`${p.who}: no .file-item[data-file-name="${name}"] in #files within ${T.transfer} ms`); });
    await pollUntil(async () => {
      const state = await item.getAttribute('data-state');
      if (state === 'failed') throw new Error(`${p.who}: the transfer failed (data-state="failed")`);
      return state === 'done' ? state : { ok: false, state };
    }, { timeoutMs: T.transfer, what: `${p.who}: .file-item data-state="done"` });
    const link = item.locator('a[download]');
    const href = await link.getAttribute('href');
    assert.match(href ?? '', /^blob:/, `${p.who}: a[download] href is ${JSON.stringify(href)}, not a blob URL`);
    const got = await readDownload(p.page, link);
    assert.equal(got.size, bytes.length, `${p.who}: received ${got.size} bytes, sent ${bytes.length}`);
    assert.equal(got.sha, sha, `${p.who}: SHA-256 differs`);
    assert.equal(got.name, name, `${p.who}: the download is named ${JSON.stringify(got.name)}`);
    t.diagnostic(`${p.who}: ${got.size} bytes via ${got.via}, sha256 ${got.sha.slice(0, 16)}… matches`);
  }));
});

sc.step('mute and camera-off show on the others\' tiles, with initials', async () => {
  const mic = button(B.page, 'Microphone');
  const cam = button(B.page, 'Camera');
  const before = [await mic.getAttribute('aria-pressed'), await cam.getAttribute('aria-pressed')];
  await mic.click();
  await cam.click();
  await pollUntil(async () => {
    const now = [await mic.getAttribute('aria-pressed'), await cam.getAttribute('aria-pressed')];
    return now[0] !== before[0] && now[1] !== before[1] ? now : { ok: false, before, now };
  }, { timeoutMs: T.ui, what: 'B: aria-pressed of "Microphone" and "Camera" to change' });
  await Promise.all(others(B).map(async (p) => {
    const tl = tile(p.page, B.id);
    await p.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-audio="off"][data-video="off"]`).waitFor({ timeout: T.ui })
      .catch(async () => { throw new Error(`${p.who}: B's tile did not get data-audio="off" data-video="off"; it has audio=${await tl.getAttribute('data-audio')} video=${await tl.getAttribute('data-video')}`); });
    await tl.locator('.tile-initials').waitFor({ state: 'visible', timeout: T.ui })
      .catch(() => { throw new Error(`${p.who}: B's .tile-initials is not visible with the camera off`); });
    const initials = (await tl.locator('.tile-initials').innerText()).trim();
    assert.ok(initials.length > 0 && /b/i.test(initials), `${p.who}: initials of "Bob" read ${JSON.stringify(initials)}`);
  }));
  await B.page.locator(`#tiles .tile[data-self="true"][data-audio="off"][data-video="off"]`).waitFor({ timeout: T.ui })
    .catch(() => { throw new Error('B: its own tile does not show data-audio="off" data-video="off"'); });
});

sc.step('unmute and camera-on bring B\'s picture back for the others', async () => {
  await button(B.page, 'Microphone').click();
  await button(B.page, 'Camera').click();
  await Promise.all(others(B).map(async (p) => {
    await p.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-audio="on"][data-video="on"]`).waitFor({ timeout: T.ui })
      .catch(() => { throw new Error(`${p.who}: B's tile did not return to data-audio="on" data-video="on"`); });
    await waitForRemoteVideo(p.page, B.id);
    await waitForColour(p.page, B.id, B.clip, clips, { what: `${p.who}: B's tile again` });
    await expectFramesAdvance(p.page, B.id, { who: `${p.who} watching B after camera on` });
  }));
});

sc.step('screen share replaces A\'s camera for everyone, and stopping it from the browser restores it', async () => {
  const share = button(A.page, 'Share screen');
  await share.click();
  await A.page.locator('#tiles .tile[data-self="true"][data-screen="on"]').waitFor({ timeout: T.ui })
    .catch(() => { throw new Error('A: own tile did not get data-screen="on" after "Share screen"'); });
  assert.equal(await share.getAttribute('aria-pressed'), 'true', 'A: "Share screen" is pressed while sharing');
  await Promise.all(others(A).map(async (p) => {
    await p.page.locator(`#tiles .tile[data-peer-id="${A.id}"][data-screen="on"]`).waitFor({ timeout: T.ui })
      .catch(() => { throw new Error(`${p.who}: A's tile did not get data-screen="on"`); });
    // The picture is now the screen, not A's red camera clip, and it keeps coming.
    await pollUntil(async () => {
      const rgb = await meanColour(p.page, A.id);
      const near = nearestClip(rgb, clips);
      return { ok: !(near.clip === A.clip && near.distance <= COLOUR_TOLERANCE), rgb };
    }, { timeoutMs: T.media, what: `${p.who}: A's tile to stop showing the red camera` });
    await expectFramesAdvance(p.page, A.id, { minFrames: 3, who: `${p.who} watching A's screen` });
  }));
  // The browser's own "Stop sharing" ends the capture track: it stops and fires "ended".
  const stopped = await A.page.evaluate(() => {
    for (const peer of window.__huddle.peers.values()) {
      const track = peer.pc.getSenders().map((s) => s.track).find((tr) => tr && tr.kind === 'video');
      if (track && track.readyState === 'live') { track.stop(); track.dispatchEvent(new Event('ended')); return track.label; }
    }
    return null;
  });
  assert.ok(stopped, 'A: found the live screen track on a sender');
  await Promise.all(others(A).map(async (p) => {
    await p.page.locator(`#tiles .tile[data-peer-id="${A.id}"][data-screen="off"]`).waitFor({ timeout: T.ui })
      .catch(() => { throw new Error(`${p.who}: A's tile did not return to data-screen="off"`); });
    await waitForColour(p.page, A.id, A.clip, clips, { what: `${p.who}: A's tile after the share stopped` });
    await expectFramesAdvance(p.page, A.id, { who: `${p.who} watching A's camera again` });
  }));
  assert.equal(await share.getAttribute('aria-pressed'), 'false', 'A: "Share screen" is released');
});

sc.step('screenshots of the room: wide and phone-size', async () => {
  const dir = artifactsDir();
  await A.page.screenshot({ path: path.join(dir, 'room-wide.png') });
  await setPanel(A.page, 'Chat', false); // the phone shot shows the tiles, a second one the chat
  await A.page.setViewportSize({ width: 375, height: 667 });
  try {
    await A.page.waitForFunction(() => window.innerWidth === 375, null, { timeout: T.ui });
    await A.page.screenshot({ path: path.join(dir, 'room-phone.png') });
    const overflow = await A.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the room scrolls sideways on a phone by ${overflow}px`);
    for (const name of ['Microphone', 'Camera', 'Leave']) {
      const b = button(A.page, name);
      await b.waitFor({ state: 'visible', timeout: T.ui })
        .catch(() => { throw new Error(`the "${name}" button is not visible at 375x667`); });
      const onTop = await b.evaluate((el) => {
        const r = el.getBoundingClientRect();
        const x = r.left + r.width / 2, y = r.top + r.height / 2;
        const hit = document.elementFromPoint(x, y);
        return x >= 0 && x <= innerWidth && y >= 0 && y <= innerHeight && !!hit && (hit === el || el.contains(hit));
      });
      assert.ok(onTop, `the "${name}" button is covered or off screen at 375x667`);
    }
    await setPanel(A.page, 'Chat', true);
    await A.page.screenshot({ path: path.join(dir, 'room-phone-chat.png') });
  } finally {
    await A.page.setViewportSize({ width: 1280, height: 800 });
  }
});

let landing;
sc.step('the room list on a fourth page shows 3, then 2 after one leaves; the tile goes everywhere', async () => {
  landing = await A.newPage({ tag: 'landing' }); // a page in A's browser that never opens the camera
  await gotoLanding(landing, sc.server.url);
  const li = (n) => landing.locator(`#room-list li[data-room="${ROOM}"][data-count="${n}"]`);
  await li(3).waitFor({ timeout: T.ui })
    .catch(async () => { throw new Error(`landing: no #room-list li[data-room="${ROOM}"][data-count="3"]; list ${await roomList(landing)}`); });
  await landing.screenshot({ path: path.join(artifactsDir(), 'landing-rooms.png') });
  const noticesBefore = await Promise.all([A, B].map((p) => p.page.locator('#notices > *').count()));
  await button(C.page, 'Leave').click();
  C.left = true;
  await li(2).waitFor({ timeout: T.ui })
    .catch(async () => { throw new Error(`landing: after C left, no data-count="2"; list ${await roomList(landing)}`); });
  await Promise.all([A, B].map(async (p, i) => {
    await tile(p.page, C.id).waitFor({ state: 'detached', timeout: T.ui })
      .catch(() => { throw new Error(`${p.who}: C's tile is still there after C left`); });
    await pollUntil(async () => (await p.page.locator('#participant-count').textContent())?.trim() === '2',
      { timeoutMs: T.ui, what: `${p.who}: #participant-count to read 2` });
    await pollUntil(async () => (await p.page.locator('#notices > *').count()) > noticesBefore[i],
      { timeoutMs: T.ui, what: `${p.who}: a "left" notice in #notices` });
    const text = await p.page.locator('#notices').textContent();
    assert.ok(text.includes(HOSTILE), `${p.who}: #notices does not name C (as text): ${JSON.stringify(text)}`);
  }));
  const c = await C.page.evaluate(() => ({ view: document.body.dataset.view, tiles: document.querySelectorAll('#tiles .tile').length }));
  assert.notEqual(c.view, 'room', `C still shows the room view after Leave (${JSON.stringify(c)})`);
  await landing.context().close();
  await C.close();
  gone.push(C);
  sc.participants = sc.participants.filter((p) => p !== C);
});

sc.step('a latecomer who ticked "Start muted" is seen by all, and gets the chat history', async () => {
  // Chromium's file camera (--use-file-for-fake-video-capture) offers one device only. Its built-in
  // fake camera offers several with device-count=N: fake_device_0 (I420, green), fake_device_1 (Y16,
  // which WebRTC cannot encode: 0 frames sent even in a bare loopback call) and fake_device_2
  // (MJPEG, green). So D runs with device-count=3, for the camera switch that follows.
  D = await launchParticipant({ who: 'D-fake3', fakeDevice: 'device-count=3' });
  sc.participants.push(D);
  await joinViaLanding(D, sc.server.url, { name: 'Dana', room: ROOM, startMuted: true });
  await Promise.all(inRoom().map((p) => waitForRemoteTiles(p.page, others(p).map((q) => q.id))
    .catch((e) => { throw new Error(`${p.who}: ${e.message}`); })));
  await Promise.all([A, B].map(async (p) => {
    await p.page.locator(`#tiles .tile[data-peer-id="${D.id}"][data-audio="off"][data-video="on"]`).waitFor({ timeout: T.ui })
      .catch(() => { throw new Error(`${p.who}: D joined with "Start muted" but its tile is not data-audio="off" data-video="on"`); });
    await waitForRemoteVideo(p.page, D.id);
    await expectFramesAdvance(p.page, D.id, { who: `${p.who} watching D` });
  }));
  await Promise.all([A, B].map(async (p) => {
    await waitForRemoteVideo(D.page, p.id);
    const near = nearestClip(await meanColour(D.page, p.id), clips);
    assert.equal(near.clip, p.clip, `D sees ${p.who} as ${near.clip.colour}`);
    await expectFramesAdvance(D.page, p.id, { who: `D watching ${p.who}` });
  }));
  if (chatSent) {
    await pollUntil(() => D.page.evaluate((text) => [...document.querySelectorAll('#chat-log .chat-msg .chat-text')]
      .some((m) => m.textContent.trim() === text), chatSent), { timeoutMs: T.ui, what: 'D: the earlier chat message in #chat-log (history)' });
  }
}, { critical: true });

sc.step('a camera switch keeps frames flowing to the others', async (t) => {
  await button(D.page, 'Settings').click();
  const dialog = D.page.locator('#settings-dialog');
  await dialog.waitFor({ state: 'visible', timeout: T.ui })
    .catch(() => { throw new Error('D: #settings-dialog did not open after "Settings"'); });
  const select = dialog.locator('#camera-select');
  await select.waitFor({ state: 'visible', timeout: T.ui })
    .catch(() => { throw new Error('D: #settings-dialog does not hold a visible #camera-select'); });
  const options = await select.locator('option').evaluateAll((os) => os.map((o) => ({ value: o.value, label: o.textContent.trim() })));
  const current = await select.inputValue();
  t.diagnostic(`D: #camera-select options ${JSON.stringify(options)}, current ${JSON.stringify(current)}`);
  const candidates = options.filter((o) => o.value && o.value !== current && !/fake_device_1/.test(o.label));
  const other = candidates.find((o) => /fake_device_[02]/.test(o.label)) ?? candidates[0];
  assert.ok(other, `D: #camera-select offers no second usable camera: ${JSON.stringify(options)}`);
  const labelBefore = await senderLabel(D.page);
  await select.selectOption(other.value);
  // Every connection's video sender must carry the new camera, none the old one.
  const labelAfter = await pollUntil(async () => {
    const l = await senderLabel(D.page);
    return l && !l.split(',').some((x) => labelBefore.split(',').includes(x)) ? l : { ok: false, l };
  }, { timeoutMs: T.ui, what: `D: every video track sent to peers to change from ${JSON.stringify(labelBefore)}` });
  await D.page.keyboard.press('Escape');
  await Promise.all([A, B].map(async (p) => {
    const frames = await expectFramesAdvance(p.page, D.id, { minFrames: 20, who: `${p.who} watching D after the switch` });
    const rgb = await meanColour(p.page, D.id);
    assert.ok(rgb[1] > rgb[0] + 50 && rgb[1] > rgb[2] + 50, `${p.who}: D's picture after the switch is not the green fake camera: ${JSON.stringify(rgb)}`);
    t.diagnostic(`${p.who}: D switched ${labelBefore} -> ${labelAfter}; frames ${frames.from}->${frames.to} in ${frames.ms} ms; rgb ${JSON.stringify(rgb)}`);
  }));
});

/**
 * The bytes behind an a[download] blob link, got as a person gets them: click the link and read the
 * file Chromium saves. (Fetching the blob: URL inside the page is not possible: the page's CSP,
 * connect-src 'self', refuses fetch() and XHR of blob: URLs.)
 */
async function readDownload(page, link) {
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: T.ui }),
    link.evaluate((a) => a.click()),
  ]);
  const failure = await download.failure();
  if (failure) throw new Error(`the download failed: ${failure}`);
  const bytes = readFileSync(await download.path());
  return { size: bytes.length, sha: crypto.createHash('sha256').update(bytes).digest('hex'), name: download.suggestedFilename(), via: 'download' };
}

sc.step('no participant page threw an uncaught error', async () => {
  const errors = [...sc.participants, ...gone].flatMap((p) => p.log.filter((l) => /\[\w+ pageerror\]/.test(l)).map((l) => `${p.who}: ${l}`));
  assert.deepEqual(errors, [], 'uncaught errors in the pages');
}, { always: true });

/** Open or close a side panel with its toggle button (aria-pressed tells its state). */
async function setPanel(page, buttonName, open) {
  const b = button(page, buttonName);
  if ((await b.getAttribute('aria-pressed')) === String(open)) return;
  await b.click();
  await pollUntil(async () => (await b.getAttribute('aria-pressed')) === String(open),
    { timeoutMs: T.ui, what: `"${buttonName}" aria-pressed to become ${open}` });
}

/** Open a side panel with its toggle button unless `selector` is already visible. */
async function openPanel(page, buttonName, selector) {
  if (await page.locator(selector).isVisible()) return;
  await button(page, buttonName).click();
  await page.locator(selector).waitFor({ state: 'visible', timeout: T.ui })
    .catch(() => { throw new Error(`${selector} is not visible after clicking "${buttonName}"`); });
}

/** Labels of the video tracks the page sends to its peers. */
async function senderLabel(page) {
  return page.evaluate(() => {
    const labels = new Set();
    for (const peer of window.__huddle?.peers?.values?.() ?? []) {
      for (const s of peer.pc?.getSenders?.() ?? []) if (s.track?.kind === 'video') labels.add(s.track.label);
    }
    return [...labels].sort().join(',');
  });
}

async function roomList(page) {
  return page.evaluate(() => JSON.stringify([...document.querySelectorAll('#room-list li')].map((li) => ({ room: li.dataset.room, count: li.dataset.count }))))
    .catch((e) => `(unreadable: ${e.message})`);
}

