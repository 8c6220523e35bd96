// An `sfu` room: four people, each in their own Chromium with their own coloured fake camera, meet
// through the server's SFU (one RTCPeerConnection each); one leaves, then 47 synthetic
// participants fill the room to 50. Steps run in order and share the browsers.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClip, PALETTE, writeVoiceWav } from './lib/camera.js';
import {
  joinViaLanding, waitForRemoteTiles, waitForColour, expectFramesAdvance, expectEveryoneSeesEveryone, pollUntil, button,
  framesDecoded,
} from './lib/huddle.js';
import { startSynth } from './lib/synth.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const ROOM = `e2e-sfu-${crypto.randomBytes(3).toString('hex')}`;

const sc = new Scenario('sfu');
let tmp, clips;
/** @type {import('./lib/browser.js').Participant[]} */ let P = [];
/** @type {Awaited<ReturnType<typeof startSynth>>|null} */ let synth = null;

/**
 * Counts the RTCPeerConnections a page creates for media (window.__pcCount): those with
 * transceivers. The connectivity check's probes (a data channel each, closed after a few
 * seconds, see web/js/check.js) carry no media and are not counted.
 */
const COUNT_PCS = () => {
  const Native = window.RTCPeerConnection;
  const all = [];
  Object.defineProperty(window, '__pcCount', { get: () => all.filter((pc) => pc.getTransceivers().length > 0).length });
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); all.push(this); }
  };
};

before(async () => {
  tmp = makeTempDir();
  // A's camera is larger, so Chromium has room for more than one simulcast layer.
  const clipsP = Promise.all(PALETTE.slice(0, 4).map((p, i) => makeClip(tmp.dir, p, i === 0 ? { size: '640x480', frames: 30 } : {})));
  [sc.server, clips] = await Promise.all([startServer({ args: ['--topology', 'sfu'] }), clipsP]);
  // A talks (a loud, speech-like tone); the others have Chromium's quiet beeping fake microphone.
  const voice = writeVoiceWav(tmp.dir);
  P = await Promise.all(clips.map((clip, i) => launchParticipant({
    who: `${clip.label}-${clip.colour}`, clip: clip.path, args: i === 0 ? [`--use-file-for-fake-audio-capture=${voice}`] : [],
  })));
  P.forEach((p, i) => { p.clip = clips[i]; });
  for (const p of P) await p.page.addInitScript(COUNT_PCS);
  sc.participants.push(...P);
});

after(async () => {
  await synth?.stop().catch(() => {});
  writeLogs('sfu', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

const others = (p) => P.filter((q) => q !== p && !q.left);
const present = () => P.filter((p) => !p.left);

/** Inbound video frames decoded per publisher (by the stream id of the track) on the SFU connection. */
async function sfuInbound(page) {
  return page.evaluate(async () => {
    const pc = window.__huddle.sfu;
    if (!pc) return null;
    const byMid = new Map();
    for (const t of pc.getTransceivers()) {
      const stream = [...(window.__huddle.peers.values())].find((p) => p.tile?.video.srcObject?.getTracks().includes(t.receiver.track));
      if (t.mid !== null) byMid.set(t.mid, stream?.id ?? null);
    }
    const out = { video: {}, audioTracks: 0, audioPackets: 0, audioFlowing: 0 };
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') {
        const who = byMid.get(s.mid) ?? `mid ${s.mid}`;
        out.video[who] = (out.video[who] ?? 0) + (s.framesDecoded ?? 0);
      } else {
        out.audioTracks++;
        out.audioPackets += s.packetsReceived ?? 0;
        if ((s.packetsReceived ?? 0) > 0) out.audioFlowing++;
      }
    });
    return out;
  });
}

sc.step('four participants join the sfu room through landing, pre-join and Join', async () => {
  const names = ['Alice', 'Bob', 'Chloé', '민준'];
  for (const [i, p] of P.entries()) await joinViaLanding(p, sc.server.url, { name: names[i], room: ROOM });
  assert.equal(new Set(P.map((p) => p.id)).size, 4, 'peer ids are not distinct');
  await Promise.all(P.map((p) => waitForRemoteTiles(p.page, others(p).map((q) => q.id))
    .catch((e) => { throw new Error(`${p.who}: ${e.message}`); })));
}, { critical: true });

sc.step('each sees the other three in their own colours, with frames advancing', async (t) => {
  await expectEveryoneSeesEveryone(P, clips, (line) => t.diagnostic(line));
});

sc.step('each page has exactly one RTCPeerConnection, to the SFU, and says so in the call info', async (t) => {
  for (const p of P) {
    const st = await p.page.evaluate(() => ({
      count: window.__pcCount,
      sfu: window.__huddle.sfu?.connectionState ?? null,
      p2p: [...window.__huddle.peers.values()].filter((r) => r.pc).length,
      topology: window.__huddle.state.topology,
      badge: document.querySelector('#topology')?.textContent,
      badgeTitle: document.querySelector('#topology')?.title,
    }));
    assert.equal(st.count, 1, `${p.who}: ${st.count} RTCPeerConnections were created`);
    assert.equal(st.sfu, 'connected', `${p.who}: the SFU connection is ${st.sfu}`);
    assert.equal(st.p2p, 0, `${p.who}: ${st.p2p} peer-to-peer connections`);
    assert.equal(st.topology, 'sfu');
    assert.equal(st.badge, 'Via server', `${p.who}: #topology reads ${JSON.stringify(st.badge)}`);
    assert.ok(st.badgeTitle && st.badgeTitle.length > 20, `${p.who}: #topology has no explanation in its title`);
  }
  // Simulcast: A (640×480) sends its video in layers; report which ones Chromium keeps on.
  const layers = await P[0].page.evaluate(async () => {
    const out = [];
    (await window.__huddle.sfu.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') out.push({ rid: s.rid, w: s.frameWidth, h: s.frameHeight, frames: s.framesEncoded });
    });
    return out;
  });
  t.diagnostic(`A's simulcast layers: ${JSON.stringify(layers)}`);
  assert.ok(layers.filter((l) => l.frames > 0).length >= 2, `A sends fewer than two simulcast layers: ${JSON.stringify(layers)}`);
});

sc.step('chat reaches everyone in the sfu room', async () => {
  const text = `hello from the SFU room ${crypto.randomBytes(2).toString('hex')}`;
  await P[3].page.locator('#chat-button').click();
  await P[3].page.locator('#chat-input').fill(text);
  await P[3].page.locator('#chat-input').press('Enter');
  await Promise.all(P.map((p) => p.page.locator('#chat-log .chat-text', { hasText: text }).first().waitFor({ state: 'attached', timeout: T.ui })
    .catch(() => { throw new Error(`${p.who}: the chat message did not arrive`); })));
  await P[3].page.locator('#chat-button').click();
});

sc.step('a file sent by one goes through the server and arrives intact at the other three', async (t) => {
  const name = `notes-${crypto.randomBytes(2).toString('hex')}.bin`;
  const bytes = crypto.randomBytes(700 * 1024);
  const sha = crypto.createHash('sha256').update(bytes).digest('hex');
  await P[0].page.locator('#file-input').setInputFiles({ name, mimeType: 'application/octet-stream', buffer: bytes });
  await P[0].page.locator(`#files .file-item[data-file-name="${name}"][data-state="done"]`).waitFor({ state: 'attached', timeout: T.transfer })
    .catch(() => { throw new Error(`A: its upload of ${name} did not reach data-state="done"`); });
  for (const p of others(P[0])) {
    const link = p.page.locator(`#files .file-item[data-file-name="${name}"] a.file-download`);
    await link.waitFor({ state: 'attached', timeout: T.transfer }).catch(() => { throw new Error(`${p.who}: no download link for ${name}`); });
    const got = await p.page.evaluate(async (href) => {
      const res = await fetch(href);
      const buf = await res.arrayBuffer();
      const d = await crypto.subtle.digest('SHA-256', buf);
      return { status: res.status, size: buf.byteLength, sha: Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, '0')).join('') };
    }, await link.getAttribute('href'));
    assert.deepEqual(got, { status: 200, size: bytes.length, sha }, `${p.who}: the download of ${name} differs`);
  }
  t.diagnostic(`${bytes.length} bytes, sha256 ${sha.slice(0, 12)}…, via the server to 3`);
});

sc.step('a page in the background stops receiving video and gets it back when it returns', async (t) => {
  const B = P[1];
  const setHidden = (hidden) => B.page.evaluate((h) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
  const total = (s) => Object.values(s.video).reduce((a, b) => a + b, 0);
  await setHidden(true);
  // Frames under way may still arrive; then the count must stand still while audio flows on.
  const settled = await pollUntil(async () => {
    const a = await sfuInbound(B.page);
    await new Promise((r) => setTimeout(r, 1000));
    const b = await sfuInbound(B.page);
    return total(b) === total(a) ? { ok: true, a, b } : { ok: false, grew: total(b) - total(a) };
  }, { timeoutMs: T.media, what: 'B hidden: video frames to stop arriving' });
  assert.ok(settled.b.audioPackets > settled.a.audioPackets, `B hidden: audio stopped too (${settled.a.audioPackets} → ${settled.b.audioPackets} packets)`);
  await setHidden(false);
  for (const p of others(B)) await expectFramesAdvance(B.page, p.id, { who: `B back in front, watching ${p.who}` });
  t.diagnostic(`hidden: video frames stood at ${total(settled.b)} while audio went ${settled.a.audioPackets} → ${settled.b.audioPackets} packets`);
});

sc.step('screenshot of the sfu room', async () => {
  await P[0].page.waitForTimeout(300); // let the last layout settle for the picture
  await P[0].page.screenshot({ path: path.join(artifactsDir(), 'sfu-room-4.png') });
});

sc.step('speaking ring from the forwarded audio levels; speaker view: the big tile follows the pin, the strip keeps playing', async (t) => {
  const [A, B, C, D] = P;
  // Only A's microphone stays on (a speech-like sound); the SFU reads the audio levels. Whether
  // Chromium's processed fake microphone counts as speech varies from run to run on a loaded
  // machine, so the detection itself is reported here and asserted in the core's tests
  // (crates/sfu/tests/active_speaker.rs) and the hub's (active_speaker to the room).
  for (const p of [B, C, D]) await button(p.page, 'Microphone').click();
  // The speaking ring comes from the audio levels the SFU forwards (RTP audio-level extension):
  // on A's tile, not on the muted C's.
  const ring = await pollUntil(async () => {
    const r = await B.page.evaluate(({ a, c }) => ({
      a: document.querySelector(`#tiles .tile[data-peer-id="${a}"]`)?.classList.contains('speaking'),
      c: document.querySelector(`#tiles .tile[data-peer-id="${c}"]`)?.classList.contains('speaking'),
    }), { a: A.id, c: C.id });
    return r.a && !r.c ? r : { ok: false, ...r };
  }, { timeoutMs: T.media, intervalMs: 100, what: 'B: the speaking ring on A\'s tile and not on the muted C\'s' });
  const detected = await B.page.locator(`#tiles .tile[data-peer-id="${A.id}"][data-active-speaker="true"]`)
    .waitFor({ state: 'attached', timeout: 8000 }).then(() => true, () => false);
  t.diagnostic(`speaking ring ${JSON.stringify(ring)}; the SFU named A the active speaker within 8 s of the others muting: ${detected}`);
  try {
    await button(B.page, 'Speaker view').click();
    const spotlight = async () => B.page.evaluate(() => ({
      layout: document.querySelector('#tiles').dataset.layout,
      main: [...document.querySelectorAll('#tiles > .spotlight .tile')].map((x) => x.dataset.peerId),
      strip: [...document.querySelectorAll('#tiles > .filmstrip .tile')].map((x) => x.dataset.peerId),
    }));
    let v = await spotlight();
    assert.equal(v.layout, 'speaker', `B's #tiles: ${JSON.stringify(v)}`);
    assert.equal(v.main.length, 1, `one big tile: ${JSON.stringify(v)}`);
    assert.equal(v.strip.length, 3, `three in the strip: ${JSON.stringify(v)}`);
    if (detected) assert.deepEqual(v.main, [A.id], 'the active speaker has the big tile');
    // B pins C: C takes the big tile whoever is talking.
    await B.page.locator(`#tiles .tile[data-peer-id="${C.id}"] .tile-pin`).click();
    v = await spotlight();
    assert.deepEqual(v.main, [C.id], `after pinning C, B's spotlight holds ${JSON.stringify(v.main)}`);
    assert.equal(await B.page.locator(`#tiles .tile[data-peer-id="${C.id}"] .tile-pin`).getAttribute('aria-pressed'), 'true');
    const { rgb } = await waitForColour(B.page, C.id, C.clip, clips, { what: 'B: the pinned C' });
    for (const p of [C, A, D]) await expectFramesAdvance(B.page, p.id, { who: `B watching ${p.who} in the speaker view` });
    await B.page.screenshot({ path: path.join(artifactsDir(), 'sfu-speaker-view.png') });
    t.diagnostic(`pinned C shows ${JSON.stringify(rgb)}`);
    // Unpin and back to the grid.
    await B.page.locator(`#tiles .tile[data-peer-id="${C.id}"] .tile-pin`).click();
    await button(B.page, 'Speaker view').click();
    v = await spotlight();
    assert.deepEqual([v.layout, v.main.length, v.strip.length], ['grid', 0, 0]);
    assert.equal(await B.page.locator('#tiles > .tile').count(), 4, 'all four tiles back in the grid');
  } finally {
    for (const p of [B, C, D]) await button(p.page, 'Microphone').click();
  }
});

sc.step('the SFU forwards video only while it is announced: a camera turned off and on, and a screen shared with the camera off, show at once', async (t) => {
  const C = P[2];
  const seeC = (attrs) => Promise.all(others(C).map((p) => p.page.locator(`#tiles .tile[data-peer-id="${C.id}"]${attrs}`)
    .waitFor({ timeout: T.ui }).catch(() => { throw new Error(`${p.who}: C's tile did not get ${attrs}`); })));
  /** Milliseconds from `t0` until every other page decodes a new frame from C. */
  const firstFrames = (t0, what) => Promise.all(others(C).map(async (p) => {
    const start = await framesDecoded(p.page, C.id);
    await pollUntil(async () => {
      const f = await framesDecoded(p.page, C.id);
      return f.frames > start.frames ? f : { ok: false, ...f };
    }, { timeoutMs: T.media, intervalMs: 50, what: `${p.who}: a frame from C ${what}` });
    return Date.now() - t0;
  }));
  await button(C.page, 'Camera').click();
  await seeC('[data-video="off"]');
  // A screen share with the camera off: announced as `screen`, so forwarded.
  let t0 = Date.now();
  await button(C.page, 'Share screen').click();
  await seeC('[data-screen="on"]');
  const shared = await firstFrames(t0, 'sharing its screen');
  await button(C.page, 'Share screen').click();
  await seeC('[data-screen="off"][data-video="off"]');
  // The camera again: the page sends it before it announces it; the SFU's first forwarded frame
  // is a keyframe it asks for when the announcement lifts the hold.
  t0 = Date.now();
  await button(C.page, 'Camera').click();
  const camera = await firstFrames(t0, 'after its camera came back');
  for (const p of others(C)) {
    await waitForColour(p.page, C.id, C.clip, clips, { what: `${p.who}: C's camera again` });
    await expectFramesAdvance(p.page, C.id, { who: `${p.who} watching C after its camera came back` });
  }
  t.diagnostic(`first frame at the others, ms after the click: screen share ${JSON.stringify(shared)}, camera on ${JSON.stringify(camera)}`);
});

sc.step('one leaves: the others lose the tile and keep seeing each other', async () => {
  const D = P[3];
  await button(D.page, 'Leave').click();
  D.left = true;
  for (const p of present()) {
    await waitForRemoteTiles(p.page, others(p).map((q) => q.id));
    for (const q of others(p)) await expectFramesAdvance(p.page, q.id, { who: `${p.who} watching ${q.who} after D left` });
  }
});

sc.step('47 synthetic participants fill the room to 50: the browsers keep their pictures and hear the talkers', async (t) => {
  const t0 = Date.now();
  // With the three browsers still here (D left above: on two cores a fourth Chromium encoding
  // and decoding video left the server and the newcomers too little CPU to connect in time).
  // People trickle in (200 ms apart): a join renegotiates with everyone in the room. Usually
  // 15-35 s; the bound leaves room for a CI machine whose neighbours take a core.
  const BOTS = 47;
  synth = await startSynth({ wsUrl: sc.server.wsUrl, room: ROOM, count: BOTS, talkers: 4, timeoutMs: 150_000, joinIntervalMs: 200 });
  t.diagnostic(`${BOTS} synthetic participants connected in ${Date.now() - t0} ms: ${JSON.stringify(synth.ready)}`);
  try {
    for (const p of present()) {
      await pollUntil(async () => {
        const n = (await p.page.locator('#participant-count').textContent())?.trim();
        return n === '50' ? n : { ok: false, n };
      }, { timeoutMs: T.media, what: `${p.who}: #participant-count to read 50` });
    }
    for (const p of present()) {
      // The SFU offers each browser the newcomers' audio and video sections; the talkers' sound arrives.
      const audio = await pollUntil(async () => {
        const s = await sfuInbound(p.page);
        return s && s.audioFlowing >= 4 + 2 ? s : { ok: false, ...s };
      }, { timeoutMs: T.media, what: `${p.who}: audio from the 2 other browsers and 4 synthetic talkers` });
      for (const q of others(p)) await expectFramesAdvance(p.page, q.id, { who: `${p.who} in the full room, watching ${q.who}` });
      t.diagnostic(`${p.who}: ${audio.audioTracks} audio tracks, ${audio.audioFlowing} flowing`);
    }
    await P[0].page.screenshot({ path: path.join(artifactsDir(), 'sfu-room-50.png') });
  } finally {
    await synth.stop();
    synth = null;
  }
  for (const p of present()) {
    await pollUntil(async () => {
      const n = (await p.page.locator('#participant-count').textContent())?.trim();
      return n === '3' ? n : { ok: false, n };
    }, { timeoutMs: T.media, what: `${p.who}: #participant-count back to 3 after the synthetic participants left` });
  }
}, { timeout: 300_000 });

