// Calls that survive disruptions. Alice and Bob on a LAN in network namespaces (the server in its
// own): Bob's WebSocket is killed under him (ss -K), then his whole network goes dark for longer
// than the page's liveness check (nft drops everything), while Alice keeps chatting. Each time
// Bob's page resumes the same session: same id, same tiles, every chat message exactly once,
// nobody sees him leave or join, and the video flows both ways again. Then the server restarts
// on the same port: it handed every session to its next start, so both pages resume theirs in
// the same way (same ids and tiles, Alice still the host, no leave/join, chats exactly once).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import path from 'node:path';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone, pollUntil } from './lib/huddle.js';
import {
  snapshot, markTiles, recordNotices, sendChat, expectChatsExactlyOnce, expectSessionResumed,
} from './lib/resume.js';
import { lanNetwork, netnsAvailable, LAN_SERVER_IP } from './lib/netns.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const usable = netnsAvailable();
const skip = usable === true ? null : `needs root with ip and nft (${usable})`;
const sc = new Scenario('reconnect');
let tmp, clips, net, base, port, A, B;
// After a blackout, a browser's next TCP SYN retry may come up to ~16 s after the network is back.
const RECOVERY_MS = 45_000;
const room = `e2e-reconnect-${crypto.randomBytes(3).toString('hex')}`;

before(async () => {
  if (skip) return;
  tmp = makeTempDir();
  net = lanNetwork({ clients: 2 });
  clips = await makeClips(tmp.dir, 2);
  sc.server = await startServer({ listen: '0.0.0.0:0', wrap: net.wrap('srv'), args: ['--data-dir', dataDir()] });
  port = sc.server.port;
  base = `http://${LAN_SERVER_IP}:${port}`;
});

after(async () => {
  writeLogs('reconnect', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  net?.destroy();
  tmp?.cleanup();
});

/** The server's data directory, which it saves its sessions to when it stops. */
const dataDir = () => path.join(tmp.dir, 'data');

/** @param {any} before @param {any} p @param {any} other */
const expectResumed = (before, p, other) => expectSessionResumed(before, p, other, { room, timeoutMs: RECOVERY_MS });
/** @param {any} p @param {string[]} texts */
const expectChatsOnce = (p, texts) => expectChatsExactlyOnce(p, texts, RECOVERY_MS);

sc.step('Alice and Bob meet on the LAN', async (t) => {
  if (skip) return t.skip(skip);
  [A, B] = await Promise.all(['alice', 'bob'].map((who, i) => launchParticipant({
    who: `${who}-${clips[i].colour}`, clip: clips[i].path, executablePath: net.chromiumIn(`d${i}`, tmp.dir),
    // Plain HTTP on a LAN address: let the camera work as it would over HTTPS.
    args: [`--unsafely-treat-insecure-origin-as-secure=${base}`],
  })));
  A.clip = clips[0];
  B.clip = clips[1];
  sc.participants.push(A, B);
  await joinViaLanding(A, base, { name: 'Alice', room });
  await joinViaLanding(B, base, { name: 'Bob', room });
  await expectEveryoneSeesEveryone([A, B], clips, (line) => A.note(line));
  await markTiles(A, 'm');
  await markTiles(B, 'm');
  await recordNotices(A);
  await recordNotices(B);
}, { critical: true, timeout: 90_000 });

sc.step('Bob\'s WebSocket is killed: he resumes the same session, missing nothing', async (t) => {
  if (skip) return t.skip(skip);
  const before = await snapshot(B);
  // Kill Bob's TCP connections to the server (the WebSocket among them) from outside the browser.
  net.in('d1', 'ss', '-K', 'dst', LAN_SERVER_IP, 'dport', '=', `:${port}`);
  const text = `while the socket was down ${crypto.randomBytes(3).toString('hex')}`;
  await sendChat(A, text);
  await expectResumed(before, B, A);
  await expectChatsOnce(B, [text]);
  await expectEveryoneSeesEveryone([A, B], clips, (line) => B.note(line));
}, { timeout: 90_000 });

sc.step('Bob\'s network goes dark for 25 s: both sides carry on as before, chats exactly once', async (t) => {
  if (skip) return t.skip(skip);
  const before = await snapshot(B);
  const stamp = crypto.randomBytes(3).toString('hex');
  const fromAlice = [1, 2, 3].map((i) => `alice ${i} during the blackout ${stamp}`);
  const fromBob = `bob typed this in the dark ${stamp}`;
  net.nft('d1', `table inet blackout {
    chain in { type filter hook input priority -10; policy drop; iif lo accept; }
    chain out { type filter hook output priority -10; policy drop; oif lo accept; }
  }`);
  try {
    for (const text of fromAlice) await sendChat(A, text);
    await sendChat(B, fromBob);
    // Long enough for Bob's page to give up on its connection and try again (and fail) meanwhile.
    await pollUntil(async () => ({ ok: (await snapshot(B)).reconnecting }), { timeoutMs: 30_000, what: 'Bob: "Reconnecting…" shows' });
    await new Promise((r) => setTimeout(r, 3000));
  } finally {
    net.in('d1', 'nft', 'delete', 'table', 'inet', 'blackout');
  }
  await expectResumed(before, B, A);
  await expectChatsOnce(B, [...fromAlice, fromBob]);
  await expectChatsOnce(A, [...fromAlice, fromBob]);
  await expectEveryoneSeesEveryone([A, B], clips, (line) => B.note(line));
  // A call that failed during the blackout and came back says so no longer.
  for (const p of [A, B]) {
    await pollUntil(async () => {
      const code = await p.page.evaluate(() => document.getElementById('error-banner')?.dataset.code ?? '');
      return { ok: code !== 'peer_failed', code };
    }, { timeoutMs: 5_000, what: `${p.who}: no "cannot connect" banner once the call is back` });
  }
}, { timeout: 120_000 });

sc.step('the server restarts: both pages resume their sessions, Alice still hosts, chats exactly once', async (t) => {
  if (skip) return t.skip(skip);
  const firstRun = sc.server.output();
  assert.equal((firstRun.match(/resumed a session/g) || []).length, 2, 'the server resumed Bob\'s session twice');
  assert.ok(!/left a room/.test(firstRun), 'nobody left the room on the first server');
  const [beforeA, beforeB] = [await snapshot(A), await snapshot(B)];
  assert.equal(beforeA.role, 'host', 'Alice opened the room: she hosts it');
  await sc.server.stop();
  assert.match(sc.server.output(), /sessions saved for the restart/);
  sc.server = await startServer({ listen: `0.0.0.0:${port}`, wrap: net.wrap('srv'), args: ['--data-dir', dataDir()] });
  await expectResumed(beforeB, B, A);
  await expectResumed(beforeA, A, B);
  assert.match(sc.server.output(), /sessions kept over the restart wait for their pages/);
  assert.equal((await snapshot(A)).role, 'host', 'Alice still hosts');
  const stamp = crypto.randomBytes(3).toString('hex');
  await sendChat(A, `after the restart from Alice ${stamp}`);
  await sendChat(B, `after the restart from Bob ${stamp}`);
  for (const p of [A, B]) await expectChatsOnce(p, [`after the restart from Alice ${stamp}`, `after the restart from Bob ${stamp}`]);
  assert.ok(!/left a room/.test(sc.server.output()), 'nobody left the room on the second server');
  await expectEveryoneSeesEveryone([A, B], clips, (line) => A.note(line));
}, { timeout: 120_000 });
