// Camera and microphone refused: the page says so plainly (in English and Korean) and the person
// can still join to watch and chat, seeing and being seen as "camera off".
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startServer } from './lib/server.js';
import { launchParticipant } from './lib/browser.js';
import { makeTempDir, makeClips, nearestClip } from './lib/camera.js';
import { joinViaLanding, enterRoom, waitForView, waitForRemoteTiles, waitForRemoteVideo, meanColour, expectFramesAdvance, tile, pollUntil } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const sc = new Scenario('devices');
const ROOM = `watch-${crypto.randomBytes(3).toString('hex')}`;
let tmp, clips, host, watcher;

before(async () => {
  tmp = makeTempDir();
  [sc.server, clips] = await Promise.all([startServer(), makeClips(tmp.dir, 1)]);
  [host, watcher] = await Promise.all([
    launchParticipant({ who: 'host', clip: clips[0].path }),
    launchParticipant({ who: 'blocked', grantMedia: false }),
  ]);
  host.clip = clips[0];
  sc.participants.push(host, watcher);
});

after(async () => {
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

sc.step('refused camera and microphone are explained on the pre-join step, in English and Korean', async (t) => {
  await joinViaLanding(host, sc.server.url, { name: 'Host', room: ROOM });
  const page = watcher.page;
  watcher.name = 'Watcher';
  await enterRoom(page, sc.server.url, { name: 'Watcher', room: ROOM });
  const banner = page.locator('#error-banner');
  await page.waitForFunction(() => {
    const b = document.querySelector('#error-banner');
    return b && !b.hidden && /denied|no_devices|media/.test(b.dataset.code || '');
  }, null, { timeout: T.media }).catch(async () => {
    throw new Error(`no media error in #error-banner: code=${await banner.getAttribute('data-code')} text=${JSON.stringify(await banner.innerText().catch(() => ''))}`);
  });
  const code = await banner.getAttribute('data-code');
  const english = (await banner.innerText()).trim();
  assert.match(english, /camera|microphone/i, `the sentence names the device: ${JSON.stringify(english)}`);
  t.diagnostic(`banner ${code}: ${english}`);
  await page.locator('#lang-select').selectOption('ko');
  await pollUntil(async () => {
    const text = (await banner.innerText()).trim();
    return /[가-힣]/.test(text) ? text : { ok: false, text };
  }, { what: `#error-banner (${code}) in Korean` });
  await page.locator('#lang-select').selectOption('en');
  const join = page.getByRole('button', { name: 'Join', exact: true });
  assert.equal(await join.isEnabled(), true, '"Join" stays available without devices');
});

sc.step('joining without devices: watches the host, and is shown to the host as camera off', async () => {
  const page = watcher.page;
  await page.locator('#join-button').click();
  await waitForView(page, 'room');
  watcher.id = await page.waitForFunction(() => window.__huddle && window.__huddle.id, null, { timeout: T.ui }).then((h) => h.jsonValue());
  await waitForRemoteTiles(page, [host.id]);
  await waitForRemoteVideo(page, host.id);
  await pollUntil(async () => {
    const rgb = await meanColour(page, host.id);
    const near = nearestClip(rgb, clips);
    return { ok: near.clip === host.clip, rgb };
  }, { timeoutMs: T.media, what: 'the watcher sees the host in its colour' });
  await expectFramesAdvance(page, host.id, { who: 'watcher watching host' });
  const seen = tile(host.page, watcher.id);
  await host.page.locator(`#tiles .tile[data-peer-id="${watcher.id}"][data-video="off"][data-audio="off"]`).waitFor({ timeout: T.ui })
    .catch(async () => { throw new Error(`host: watcher's tile has video=${await seen.getAttribute('data-video')} audio=${await seen.getAttribute('data-audio')}`); });
  await seen.locator('.tile-initials').waitFor({ state: 'visible', timeout: T.ui });
});
