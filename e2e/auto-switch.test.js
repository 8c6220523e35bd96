// An `auto` room (the default): two people talk peer-to-peer; when a third arrives the room switches
// to the SFU without a reload, and the first two keep seeing each other across the switch.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, waitForRemoteTiles, waitForRemoteVideo, waitForColour, expectFramesAdvance, pollUntil } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const ROOM = `e2e-auto-${crypto.randomBytes(3).toString('hex')}`;
/** The longest pause in A's picture of B that still counts as "video kept flowing". */
const MAX_GAP_MS = 1500;

const sc = new Scenario('auto-switch');
let tmp, clips;
let A, B, C;

before(async () => {
  tmp = makeTempDir();
  [sc.server, clips] = await Promise.all([startServer(), makeClips(tmp.dir, 3)]);
  [A, B, C] = await Promise.all(clips.map((clip) => launchParticipant({ who: `${clip.label}-${clip.colour}`, clip: clip.path })));
  A.clip = clips[0]; B.clip = clips[1]; C.clip = clips[2];
  sc.participants.push(A, B, C);
});

after(async () => {
  writeLogs('auto-switch', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

/** Records when each frame of a tile's <video> is shown, across changes of its source. */
function recordFrames(page, peerId) {
  return page.evaluate((id) => {
    const v = document.querySelector(`#tiles .tile[data-peer-id="${CSS.escape(id)}"] video`);
    if (!v) throw new Error(`no tile for ${id}`);
    window.__shown = window.__shown || {};
    const log = (window.__shown[id] = []);
    const tick = (now) => { log.push(now); v.requestVideoFrameCallback(tick); };
    v.requestVideoFrameCallback(tick);
  }, peerId);
}

async function seesInColour(viewer, peer) {
  await waitForRemoteVideo(viewer.page, peer.id);
  return waitForColour(viewer.page, peer.id, peer.clip, clips, { what: `${viewer.who} watching ${peer.who}` });
}

sc.step('two people meet peer-to-peer', async () => {
  await joinViaLanding(A, sc.server.url, { name: 'Alice', room: ROOM });
  await joinViaLanding(B, sc.server.url, { name: 'Bob', room: ROOM });
  await seesInColour(A, B);
  await seesInColour(B, A);
  for (const p of [A, B]) {
    const st = await p.page.evaluate(() => ({
      topology: window.__huddle.state.topology, sfu: !!window.__huddle.sfu,
      p2p: [...window.__huddle.peers.values()].map((r) => r.pc?.connectionState ?? null),
      badge: document.querySelector('#topology')?.textContent,
    }));
    assert.deepEqual(st, { topology: 'p2p', sfu: false, p2p: ['connected'], badge: 'Peer-to-peer' }, `${p.who}: ${JSON.stringify(st)}`);
  }
}, { critical: true });

sc.step('a third person switches the room to the SFU; A and B keep seeing each other', async (t) => {
  await recordFrames(A.page, B.id);
  await recordFrames(B.page, A.id);
  const joinedAt = await A.page.evaluate(() => performance.now());
  await joinViaLanding(C, sc.server.url, { name: 'Chloé', room: ROOM });
  for (const p of [A, B, C]) {
    const rest = [A, B, C].filter((q) => q !== p);
    await waitForRemoteTiles(p.page, rest.map((q) => q.id));
    // Every remote picture now comes over the SFU and the peer-to-peer connections are closed.
    await pollUntil(async () => {
      const st = await p.page.evaluate(() => ({
        topology: window.__huddle.state.topology,
        sfu: window.__huddle.sfu?.connectionState ?? null,
        viaSfu: [...window.__huddle.peers.values()].every((r) => r.viaSfu),
        p2pOpen: [...window.__huddle.peers.values()].filter((r) => r.pc).length,
        badge: document.querySelector('#topology')?.textContent,
      }));
      return st.topology === 'sfu' && st.sfu === 'connected' && st.viaSfu && st.p2pOpen === 0 && st.badge === 'Via server' ? st : { ok: false, ...st };
    }, { timeoutMs: T.media, what: `${p.who}: all media through the SFU, no peer-to-peer connection left` });
    for (const q of rest) {
      const seen = await seesInColour(p, q);
      await expectFramesAdvance(p.page, q.id, { who: `${p.who} watching ${q.who} after the switch` });
      t.diagnostic(`${p.who} sees ${q.who}: rgb ${JSON.stringify(seen.rgb)}`);
    }
  }
  // The longest pause in A's picture of B (and B's of A) from C's arrival until now.
  for (const [viewer, peer] of [[A, B], [B, A]]) {
    const gap = await viewer.page.evaluate(({ id, since }) => {
      const log = window.__shown[id].filter((x) => x >= since);
      let max = 0;
      for (let i = 1; i < log.length; i++) max = Math.max(max, log[i] - log[i - 1]);
      return { max: Math.round(max), frames: log.length, first: Math.round((log[0] ?? since) - since) };
    }, { id: peer.id, since: joinedAt });
    t.diagnostic(`${viewer.who} watching ${peer.who} across the switch: longest pause ${gap.max} ms over ${gap.frames} frames`);
    assert.ok(gap.frames > 20, `${viewer.who}: only ${gap.frames} frames of ${peer.who} shown since C arrived`);
    assert.ok(gap.max <= MAX_GAP_MS, `${viewer.who}: ${peer.who}'s picture paused ${gap.max} ms during the switch (at most ${MAX_GAP_MS})`);
  }
  await A.page.screenshot({ path: path.join(artifactsDir(), 'auto-switch-3.png') });
});
