// Clicking Join while the camera and microphone are still starting (a slow camera, a permission
// prompt) — or while a device switch is under way — must bring the person into the call with the
// devices they chose, announced to the room: the others see their colour and get their sound. A
// camera that is refused or fails after Join was clicked leaves them in the call with audio and a
// clear message. An `sfu` server, where the SFU forwards only what the room was told.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, enterRoom, waitForView, waitForColour, pollUntil, tile } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const sc = new Scenario('join-devices');
const ROOM = `devices-${crypto.randomBytes(3).toString('hex')}`;
let tmp, clips, host;

/**
 * Slows `getUserMedia` down by `delayMs` and makes camera requests fail as `video` says ('ok',
 * 'denied': NotAllowedError as after "Block", 'busy': NotReadableError as a camera another
 * program holds). Records each request in window.__gum.
 */
const SLOW_DEVICES = ({ delayMs, video }) => {
  const md = navigator.mediaDevices;
  const original = md.getUserMedia.bind(md);
  window.__gum = { asked: 0, answered: 0 };
  md.getUserMedia = async (constraints) => {
    window.__gum.asked++;
    await new Promise((r) => setTimeout(r, delayMs));
    window.__gum.answered++;
    if (constraints && constraints.video && video !== 'ok') {
      throw new DOMException(`camera ${video} (test)`, video === 'denied' ? 'NotAllowedError' : 'NotReadableError');
    }
    return original(constraints);
  };
};

before(async () => {
  tmp = makeTempDir();
  [sc.server, clips] = await Promise.all([startServer({ args: ['--topology', 'sfu'] }), makeClips(tmp.dir, 2)]);
  host = await launchParticipant({ who: 'host', clip: clips[0].path });
  host.clip = clips[0];
  sc.participants.push(host);
});

after(async () => {
  writeLogs('join-devices', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

/** Packets received on the host's SFU connection from `peerId`'s audio track. */
async function audioPacketsFrom(page, peerId) {
  return page.evaluate(async (id) => {
    const pc = window.__huddle.sfu;
    const v = document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"] video`);
    const track = /** @type {MediaStream|null} */ (v?.srcObject)?.getAudioTracks()[0];
    if (!pc || !track) return 0;
    let packets = 0;
    (await pc.getStats(track)).forEach((s) => { if (s.type === 'inbound-rtp') packets += s.packetsReceived ?? 0; });
    return packets;
  }, peerId);
}

/** The host hears `who`: 50 more audio packets from them arrive. */
async function hostHears(who) {
  const start = await audioPacketsFrom(host.page, who.id);
  await pollUntil(async () => {
    const n = await audioPacketsFrom(host.page, who.id);
    return n >= start + 50 ? n : { ok: false, n, start };
  }, { timeoutMs: T.media, what: `the host receives ${who.who}'s audio` });
}

/** The host's tile of `who` shows the announced state. */
async function hostShows(who, { audio, video }) {
  const el = tile(host.page, who.id);
  await host.page.locator(`#tiles .tile[data-peer-id="${who.id}"][data-audio="${audio}"][data-video="${video}"]`)
    .waitFor({ timeout: T.ui })
    .catch(async () => {
      throw new Error(`host: ${who.who}'s tile should be audio=${audio} video=${video}; it is audio=${await el.getAttribute('data-audio')} video=${await el.getAttribute('data-video')}`);
    });
}

/**
 * Opens pre-join for `p` and clicks Join at once, while its camera is still starting (asserted:
 * getUserMedia has not answered and the preview has no picture). Returns its peer id.
 */
async function joinBeforeDevices(p, name, { shot = null } = {}) {
  p.name = name;
  await enterRoom(p.page, sc.server.url, { name, room: ROOM });
  const before = await p.page.evaluate(() => ({ gum: { ...window.__gum }, preview: document.querySelector('#preview').videoWidth }));
  assert.ok(before.gum.asked >= 1 && before.gum.answered === 0 && before.preview === 0,
    `${p.who}: the camera should still be starting when Join is clicked: ${JSON.stringify(before)}`);
  await p.page.locator('#join-button').click();
  if (shot) {
    // The page says why it has not joined yet (checked after the call, which matters more).
    p.waitNote = await p.page.locator('#prejoin-notice').filter({ hasText: shot.text }).waitFor({ timeout: 2000 })
      .then(() => true, () => false);
    if (p.waitNote) await p.page.screenshot({ path: path.join(artifactsDir(), shot.file) });
  }
  await waitForView(p.page, 'room');
  const id = await p.page.waitForFunction(() => window.__huddle && window.__huddle.id, null, { timeout: T.ui }).then((h) => h.jsonValue());
  p.id = id;
  p.note(`joined ${ROOM} as ${id} before its devices had started`);
  return id;
}

/** A joiner's browser with the slow (or failing) devices; closed by `done`. */
async function slowJoiner(who, mode, opts = {}) {
  const p = await launchParticipant({ who, clip: opts.fakeDevice ? undefined : clips[1].path, ...opts });
  p.clip = clips[1];
  await p.page.addInitScript(SLOW_DEVICES, mode);
  sc.participants.push(p);
  return p;
}

/**
 * A slow network for `page`'s signalling: from `joined` on, everything the server sends reaches
 * the page `ms` later (in order), so the page is still outside the call when a device step ends.
 */
async function slowJoined(page, ms) {
  await page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    /** @type {string[]|null} */ let held = null;
    server.onMessage((m) => {
      if (held) { held.push(String(m)); return; }
      let type = '';
      try { type = JSON.parse(String(m)).type; } catch { /* not JSON */ }
      if (type !== 'joined') { ws.send(m); return; }
      held = [String(m)];
      setTimeout(() => { for (const x of held ?? []) ws.send(x); held = null; }, ms);
    });
  });
}

async function done(p) {
  await p.page.locator('#leave-button').click().catch(() => {});
  await host.page.locator(`#tiles .tile[data-peer-id="${p.id}"]`).waitFor({ state: 'detached', timeout: T.ui }).catch(() => {});
  await p.close();
  p.left = true;
}

sc.step('the host is in the room', async () => {
  await joinViaLanding(host, sc.server.url, { name: 'Host', room: ROOM });
}, { critical: true });

sc.step('a slow camera: Join clicked at once arrives with camera and microphone, seen and heard', async (t) => {
  const p = await slowJoiner('slow', { delayMs: 2500, video: 'ok' });
  await joinBeforeDevices(p, 'Slow', { shot: { text: 'Joining as soon as your camera and microphone are ready', file: 'join-devices-waiting.png' } });
  await host.page.locator(`#tiles .tile[data-peer-id="${p.id}"]`).waitFor({ timeout: T.media });
  await hostShows(p, { audio: 'on', video: 'on' });
  const seen = await waitForColour(host.page, p.id, p.clip, clips, { what: 'host watching slow' });
  await hostHears(p);
  await p.page.locator('#tiles .tile[data-self="true"][data-audio="on"][data-video="on"]').waitFor({ timeout: T.ui });
  t.diagnostic(`host sees slow in ${seen.nearest} ${JSON.stringify(seen.rgb)} and hears it`);
  assert.ok(p.waitNote, 'while it waited, pre-join said it joins once the devices are ready');
  await done(p);
});

sc.step('a camera refused after Join was clicked: in the call with sound, told why (Korean, phone size)', async (t) => {
  const p = await slowJoiner('denied', { delayMs: 1500, video: 'denied' }, { lang: 'ko-KR', viewport: { width: 390, height: 844 } });
  await joinBeforeDevices(p, '거부', { shot: { text: '카메라와 마이크가 준비되는 대로', file: 'join-devices-waiting-ko-phone.png' } });
  const banner = p.page.locator('#error-banner');
  await p.page.waitForFunction(() => document.querySelector('#error-banner')?.dataset.code === 'camera_denied', null, { timeout: T.ui })
    .catch(async () => { throw new Error(`no camera_denied banner: code=${await banner.getAttribute('data-code')}`); });
  const text = (await banner.innerText()).trim();
  assert.match(text, /[가-힣]/, `the banner is in Korean: ${JSON.stringify(text)}`);
  await p.page.screenshot({ path: path.join(artifactsDir(), 'join-devices-denied-ko-phone.png') });
  await hostShows(p, { audio: 'on', video: 'off' });
  await hostHears(p);
  t.diagnostic(`banner: ${text}`);
  assert.ok(p.waitNote, 'while it waited, pre-join said it joins once the devices are ready');
  await done(p);
});

sc.step('a camera that fails (held by another program) after Join was clicked: in the call with sound, told why', async (t) => {
  const p = await slowJoiner('busy', { delayMs: 1500, video: 'busy' }, { viewport: { width: 390, height: 844 } });
  await joinBeforeDevices(p, 'Busy');
  const banner = p.page.locator('#error-banner');
  await p.page.waitForFunction(() => document.querySelector('#error-banner')?.dataset.code === 'camera_busy', null, { timeout: T.ui })
    .catch(async () => { throw new Error(`no camera_busy banner: code=${await banner.getAttribute('data-code')}`); });
  await p.page.screenshot({ path: path.join(artifactsDir(), 'join-devices-busy-phone.png') });
  await hostShows(p, { audio: 'on', video: 'off' });
  await hostHears(p);
  t.diagnostic(`banner: ${(await banner.innerText()).trim()}`);
  await done(p);
});

sc.step('a camera switched on pre-join just before Join: the call starts with the chosen camera', async (t) => {
  // Chromium's built-in fake cameras (fake_device_0 and fake_device_2 encode; see README).
  // Its network is slow too: the switch ends before the page is in the call.
  const p = await slowJoiner('switch', { delayMs: 800, video: 'ok' }, { fakeDevice: 'device-count=3', lang: 'ko-KR' });
  await slowJoined(p.page, 2500);
  p.name = 'Switch';
  await enterRoom(p.page, sc.server.url, { name: p.name, room: ROOM });
  await p.page.waitForFunction(() => document.querySelector('#preview').videoWidth > 0, null, { timeout: T.media });
  const select = p.page.locator('#camera-select');
  const options = await select.locator('option').evaluateAll((os) => os.map((o) => ({ value: o.value, label: o.textContent })));
  const current = await select.inputValue();
  const other = options.find((o) => o.value !== current && /fake_device_[02]/.test(o.label));
  assert.ok(other, `a second usable camera: ${JSON.stringify(options)} (current ${current})`);
  const asked = await p.page.evaluate(() => window.__gum.answered);
  await select.selectOption(other.value);
  await p.page.locator('#join-button').click();
  // The switch was still under way when Join was clicked.
  const during = await p.page.evaluate(() => ({ ...window.__gum }));
  assert.ok(during.answered === asked, `the switch had not finished at the click: ${JSON.stringify(during)}`);
  await p.page.locator('#prejoin-notice').filter({ hasText: '카메라와 마이크가 준비되는 대로' }).waitFor({ timeout: 500 })
    .then(() => p.page.screenshot({ path: path.join(artifactsDir(), 'join-devices-switching-ko.png') }), () => {});
  await waitForView(p.page, 'room');
  p.id = await p.page.waitForFunction(() => window.__huddle && window.__huddle.id, null, { timeout: T.ui }).then((h) => h.jsonValue());
  await host.page.locator(`#tiles .tile[data-peer-id="${p.id}"]`).waitFor({ timeout: T.media });
  await hostShows(p, { audio: 'on', video: 'on' });
  // What goes to the SFU is the chosen camera, and the host decodes it.
  const sent = await pollUntil(() => p.page.evaluate(() => {
    const s = window.__huddle.sfu?.getSenders().find((x) => x.track?.kind === 'video');
    return s?.track ? { label: s.track.label, state: s.track.readyState } : null;
  }), { what: 'switch: a video track on the SFU connection' });
  assert.equal(sent.label, other.label, `the camera chosen last is sent: ${JSON.stringify(sent)}`);
  await pollUntil(() => host.page.evaluate((id) => {
    const v = document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"] video`);
    return v && v.videoWidth > 0;
  }, p.id), { timeoutMs: T.media, what: 'the host decodes the switched camera' });
  await hostHears(p);
  t.diagnostic(`sent ${sent.label}`);
  await done(p);
});

/** Slows `getDisplayMedia` (the screen picker) down by `delayMs`; keeps what it returned in window.__screens. */
const SLOW_PICKER = (delayMs) => {
  const md = navigator.mediaDevices;
  const original = md.getDisplayMedia.bind(md);
  window.__screens = [];
  md.getDisplayMedia = async (constraints) => {
    await new Promise((r) => setTimeout(r, delayMs));
    const s = await original(constraints);
    window.__screens.push(...s.getTracks());
    return s;
  };
};

sc.step('a screen picked after Leave was clicked is not shared, and the capture stops', async () => {
  const p = await slowJoiner('share', { delayMs: 0, video: 'ok' });
  await p.page.addInitScript(SLOW_PICKER, 1500);
  await joinViaLanding(p, sc.server.url, { name: 'Share', room: ROOM });
  await p.page.locator('#share-button').click();
  await p.page.locator('#share-button').click(); // a second click while the picker is open
  await p.page.locator('#leave-button').click();
  await waitForView(p.page, 'landing');
  const screens = await pollUntil(() => p.page.evaluate(() => window.__screens.length ? window.__screens.map((t) => t.readyState) : null),
    { what: 'share: the picker answered' });
  assert.equal(screens.length, 1, `one picker for two clicks: ${JSON.stringify(screens)}`);
  await pollUntil(() => p.page.evaluate(() => window.__screens.every((t) => t.readyState === 'ended')),
    { timeoutMs: 2000, what: 'share: the capture picked after Leave is stopped' });
  await p.close();
  p.left = true;
});
