// Page flows and media checks against docs/dom-contract.md.
import { T } from './env.js';
import { nearestClip } from './camera.js';

/** Largest distance between a tile's mean colour and its clip's own mean colour. */
export const COLOUR_TOLERANCE = 70;

/** Poll `fn` (async, node side) until it returns a truthy value; fail with `what` and the last value. */
export async function pollUntil(fn, { timeoutMs = T.ui, intervalMs = 250, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last, lastErr;
  for (;;) {
    try {
      last = await fn();
      if (last && (typeof last !== 'object' || last.ok !== false)) return last;
    } catch (e) { lastErr = e; }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${JSON.stringify(last)}${lastErr ? `; last error: ${lastErr.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Wait for `body[data-view=<view>]`, with a message that says where the page is instead. */
export async function waitForView(page, view, timeoutMs = T.navigation) {
  try {
    await page.waitForSelector(`body[data-view="${view}"]`, { state: 'attached', timeout: timeoutMs });
  } catch (e) {
    const now = await page.evaluate(() => ({
      view: document.body?.dataset.view,
      banner: document.querySelector('#error-banner')?.dataset.code,
      bannerText: document.querySelector('#error-banner')?.textContent?.trim(),
    })).catch(() => ({}));
    throw new Error(`page did not reach body[data-view="${view}"] within ${timeoutMs} ms; ` +
      `it shows data-view=${JSON.stringify(now.view)}, #error-banner code=${JSON.stringify(now.banner)} text=${JSON.stringify(now.bannerText)}`);
  }
}

export async function gotoLanding(page, baseUrl) {
  const res = await page.goto(`${baseUrl}/`, { waitUntil: 'domcontentloaded' });
  if (res && !res.ok()) throw new Error(`GET ${baseUrl}/ answered ${res.status()}: is the page built into the binary (or HUDDLE_WEB_DIR set)?`);
  await waitForView(page, 'landing');
}

/** Landing → name → room → "Enter room" → pre-join. */
export async function enterRoom(page, baseUrl, { name, room }) {
  await gotoLanding(page, baseUrl);
  await page.locator('#name-input').fill(name);
  await page.locator('#room-input').fill(room);
  await page.locator('#enter-button').click();
  await waitForView(page, 'prejoin');
}

/** On pre-join: set the options, wait for the camera preview as a person would, press "Join". */
export async function pressJoin(page, { startMuted = false, startCameraOff = false, waitForPreview = true } = {}) {
  if (startMuted) await page.locator('#start-muted').check();
  if (startCameraOff) await page.locator('#start-camera-off').check();
  if (waitForPreview) {
    await page.waitForFunction(() => { const v = document.querySelector('#preview'); return v && v.videoWidth > 0; }, null, { timeout: T.media })
      .catch(() => { throw new Error(`pre-join: #preview shows no camera picture within ${T.media} ms`); });
  }
  await page.locator('#join-button').click();
}

/** Pre-join → (options) → "Join" → room; returns our peer id from window.__huddle. */
export async function joinFromPrejoin(page, opts = {}) {
  await pressJoin(page, opts);
  await waitForView(page, 'room');
  const handle = await page.waitForFunction(() => window.__huddle && window.__huddle.id, null, { timeout: T.ui })
    .catch(() => { throw new Error('window.__huddle.id not set within 10 s of entering the room view'); });
  return handle.jsonValue();
}

/** The whole path a person takes: landing → name → room → pre-join → Join. */
export async function joinViaLanding(participant, baseUrl, { name, room, ...opts }) {
  participant.name = name;
  await enterRoom(participant.page, baseUrl, { name, room });
  participant.id = await joinFromPrejoin(participant.page, opts);
  participant.note(`joined room ${JSON.stringify(room)} as ${participant.id}`);
  return participant.id;
}

export function tile(page, peerId) {
  return page.locator(`#tiles .tile[data-peer-id="${cssEscape(peerId)}"]`);
}

export function cssEscape(s) {
  return String(s).replace(/["\\]/g, '\\$&');
}

/** Wait until the page shows exactly these remote peer ids as tiles (plus its own). */
export async function waitForRemoteTiles(page, peerIds, timeoutMs = T.media) {
  try {
    await page.waitForFunction((ids) => {
      const shown = [...document.querySelectorAll('#tiles .tile:not([data-self="true"])')].map((t) => t.dataset.peerId).sort();
      return JSON.stringify(shown) === JSON.stringify([...ids].sort());
    }, peerIds, { timeout: timeoutMs });
  } catch {
    const shown = await page.evaluate(() => [...document.querySelectorAll('#tiles .tile')].map((t) => `${t.dataset.peerId}${t.dataset.self === 'true' ? '(self)' : ''}`));
    throw new Error(`expected remote tiles ${JSON.stringify(peerIds)} within ${timeoutMs} ms, page shows ${JSON.stringify(shown)}`);
  }
}

/** Wait until the remote tile's <video> has a decoded picture. */
export async function waitForRemoteVideo(page, peerId, timeoutMs = T.media) {
  try {
    await page.waitForFunction((id) => {
      const v = document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"] video`);
      return v && v.videoWidth > 0 && v.readyState >= 2;
    }, peerId, { timeout: timeoutMs });
  } catch {
    throw new Error(`remote video of ${peerId} has no picture (videoWidth 0 or readyState < 2) after ${timeoutMs} ms`);
  }
}

/**
 * Mean RGB of the tile's <video>, read through a canvas inside the page (averaged over a few frames).
 * @returns {Promise<number[]>}
 */
export async function meanColour(page, peerId, { samples = 3 } = {}) {
  return page.evaluate(async ({ id, samples }) => {
    const v = document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"] video`);
    if (!v) throw new Error(`no video in tile ${id}`);
    if (!v.videoWidth) throw new Error(`video of ${id} has no picture yet`);
    const c = document.createElement('canvas');
    const acc = [0, 0, 0];
    for (let s = 0; s < samples; s++) {
      if (s) await new Promise((r) => setTimeout(r, 150));
      c.width = 80; c.height = 60;
      const g = c.getContext('2d', { willReadFrequently: true });
      g.drawImage(v, 0, 0, c.width, c.height);
      const px = g.getImageData(0, 0, c.width, c.height).data;
      let r = 0, gg = 0, b = 0;
      for (let i = 0; i < px.length; i += 4) { r += px[i]; gg += px[i + 1]; b += px[i + 2]; }
      const n = px.length / 4;
      acc[0] += r / n; acc[1] += gg / n; acc[2] += b / n;
    }
    return acc.map((x) => Math.round(x / samples));
  }, { id: peerId, samples });
}

/**
 * Poll until `peerId`'s tile shows `clip`'s colour (the first frames can be dark or blurry while
 * the encoder ramps up). Returns the last reading: `{rgb, nearest, distance}`.
 */
export async function waitForColour(page, peerId, clip, clips, { what = peerId, timeoutMs = T.media } = {}) {
  return pollUntil(async () => {
    const rgb = await meanColour(page, peerId);
    const near = nearestClip(rgb, clips);
    const ok = near.clip === clip && near.distance <= COLOUR_TOLERANCE;
    return { ok, rgb, nearest: near.clip.colour, distance: Math.round(near.distance) };
  }, { timeoutMs, what: `${what}: mean colour near ${clip.colour} ${JSON.stringify(clip.mean)}` });
}

/**
 * Frames decoded from `peerId` so far: inbound-rtp video framesDecoded on window.__huddle.peers.get(id).pc,
 * falling back to a requestVideoFrameCallback counter on the tile's <video>.
 */
export async function framesDecoded(page, peerId) {
  return page.evaluate(async (id) => {
    const peer = window.__huddle?.peers?.get?.(id);
    if (peer?.pc) {
      const stats = await peer.pc.getStats();
      let frames = null;
      stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames = (frames ?? 0) + (s.framesDecoded ?? 0); });
      if (frames !== null) return { source: 'getStats', frames };
    }
    const v = document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"] video`);
    if (!v) return { source: 'none', frames: 0 };
    if (!v.__e2eFrames) {
      v.__e2eFrames = { n: 0 };
      const tick = () => { v.__e2eFrames.n++; v.requestVideoFrameCallback(tick); };
      v.requestVideoFrameCallback(tick);
    }
    return { source: 'requestVideoFrameCallback', frames: v.__e2eFrames.n };
  }, peerId);
}

/** Assert frames from `peerId` keep arriving: at least `minFrames` more decoded within `timeoutMs`. */
export async function expectFramesAdvance(page, peerId, { minFrames = 10, timeoutMs = T.media, who = '' } = {}) {
  const start = await framesDecoded(page, peerId);
  const t0 = Date.now();
  const end = await pollUntil(async () => {
    const now = await framesDecoded(page, peerId);
    return now.frames - start.frames >= minFrames ? now : { ok: false, ...now };
  }, { timeoutMs, intervalMs: 250, what: `${who}: ${minFrames} more frames decoded from ${peerId} (start ${start.frames} via ${start.source})` });
  return { from: start.frames, to: end.frames, ms: Date.now() - t0, source: end.source };
}

/**
 * Every participant sees every other one in their own colour, with frames advancing (all pairs at
 * once). `note` gets a line per pair; throws one error naming every pair that failed.
 */
export async function expectEveryoneSeesEveryone(people, clips, note = () => {}) {
  const checks = [];
  for (const viewer of people) {
    for (const peer of people.filter((q) => q !== viewer)) {
      checks.push((async () => {
        const what = `${viewer.who} watching ${peer.who}`;
        await waitForRemoteVideo(viewer.page, peer.id).catch((e) => { throw new Error(`${what}: ${e.message}`); });
        const seen = await waitForColour(viewer.page, peer.id, peer.clip, clips, { what });
        const frames = await expectFramesAdvance(viewer.page, peer.id, { who: what });
        note(`${what}: rgb ${JSON.stringify(seen.rgb)} (${seen.nearest}, distance ${seen.distance}); frames ${frames.from}->${frames.to} in ${frames.ms} ms via ${frames.source}`);
      })());
    }
  }
  const failures = (await Promise.allSettled(checks)).filter((r) => r.status === 'rejected').map((r) => r.reason.message);
  if (failures.length) throw new Error(`video checks failed:\n${failures.join('\n')}`);
}

/** Click a room-bar button by its accessible name. */
export function button(page, name) {
  return page.getByRole('button', { name, exact: true });
}
