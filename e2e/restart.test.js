// A server restart in an `sfu` room. The server hands its sessions to its next start (in the data
// directory), so both pages resume theirs: same ids and tile elements, nobody sees a leave or
// join, Alice still hosts, and the video flows both ways again through the new process's SFU
// (each page opens a new media connection to it at once, rather than waiting for the old one
// to fail).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone } from './lib/huddle.js';
import {
  snapshot, markTiles, recordNotices, sendChat, expectChatsExactlyOnce, expectSessionResumed,
} from './lib/resume.js';
import { Scenario } from './lib/scenario.js';

const sc = new Scenario('restart');
const room = `e2e-restart-${crypto.randomBytes(3).toString('hex')}`;
const RECOVERY_MS = 30_000;
let tmp, clips, A, B;

const serverArgs = () => ['--topology', 'sfu', '--data-dir', path.join(tmp.dir, 'data')];

before(async () => {
  tmp = makeTempDir();
  clips = await makeClips(tmp.dir, 2);
  sc.server = await startServer({ args: serverArgs() });
});

after(async () => {
  writeLogs('restart', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

/** Tags the page's current connection to the SFU, to tell a new one from it later. */
const tagSfu = (p) => p.page.evaluate(() => { /** @type {any} */ (window).__huddle.sfu.__tag = 'old'; });
const sfuTag = (p) => p.page.evaluate(() => /** @type {any} */ (window).__huddle.sfu?.__tag ?? null);

sc.step('Alice and Bob meet through the SFU', async () => {
  [A, B] = await Promise.all(['alice', 'bob'].map((who, i) => launchParticipant({ who: `${who}-${clips[i].colour}`, clip: clips[i].path })));
  A.clip = clips[0];
  B.clip = clips[1];
  sc.participants.push(A, B);
  await joinViaLanding(A, sc.server.url, { name: 'Alice', room });
  await joinViaLanding(B, sc.server.url, { name: 'Bob', room });
  await expectEveryoneSeesEveryone([A, B], clips, (line) => A.note(line));
  for (const p of [A, B]) {
    await markTiles(p, 'm');
    await recordNotices(p);
    await tagSfu(p);
  }
}, { critical: true, timeout: 90_000 });

sc.step('the server restarts: both resume their sessions and see each other through the new SFU', async () => {
  const [beforeA, beforeB] = [await snapshot(A), await snapshot(B)];
  assert.equal(beforeA.role, 'host');
  const port = sc.server.port;
  await sc.server.stop();
  assert.match(sc.server.output(), /sessions saved for the restart/);
  sc.server = await startServer({ listen: `127.0.0.1:${port}`, args: serverArgs() });
  const url = sc.server.url;
  await expectSessionResumed(beforeA, A, B, { room, timeoutMs: RECOVERY_MS });
  await expectSessionResumed(beforeB, B, A, { room, timeoutMs: RECOVERY_MS });
  assert.equal((await snapshot(A)).role, 'host', 'Alice still hosts');
  for (const p of [A, B]) assert.equal(await sfuTag(p), null, `${p.who} opened a new connection to the new SFU`);
  await expectEveryoneSeesEveryone([A, B], clips, (line) => A.note(line));
  const log = sc.server.output();
  assert.match(log, /sessions kept over the restart wait for their pages/);
  assert.equal((log.match(/resumed a session/g) || []).length, 2, `both sessions resumed on ${url}`);
  assert.ok(!/left a room|joined a room/.test(log), 'nobody left or joined on the new server');
}, { timeout: 90_000 });

sc.step('chat goes both ways after the restart, exactly once', async () => {
  const stamp = crypto.randomBytes(3).toString('hex');
  const texts = [`from Alice ${stamp}`, `from Bob ${stamp}`];
  await sendChat(A, texts[0]);
  await expectChatsExactlyOnce(B, [texts[0]], RECOVERY_MS);
  await sendChat(B, texts[1]);
  for (const p of [A, B]) await expectChatsExactlyOnce(p, texts, RECOVERY_MS);
}, { timeout: 60_000 });
