// Calls that survive disruptions. Alice and Bob on a LAN in network namespaces (the server in its
// own): Bob's WebSocket is killed under him (ss -K), then his whole network goes dark for longer
// than the page's liveness check (nft drops everything), while Alice keeps chatting. Each time
// Bob's page resumes the same session: same id, same tiles, every chat message exactly once,
// nobody sees him leave or join, and the video flows both ways again. Then the server restarts
// on the same port and both pages come back into the room by themselves.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone, pollUntil, button } from './lib/huddle.js';
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
  sc.server = await startServer({ listen: '0.0.0.0:0', wrap: net.wrap('srv') });
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

/** What the page says about itself, and a mark on each remote tile element (to tell a new one). */
async function snapshot(p) {
  return p.page.evaluate(() => {
    const h = /** @type {any} */ (window).__huddle;
    const tiles = [...document.querySelectorAll('#tiles .tile:not([data-self="true"])')];
    return {
      id: h.id,
      room: h.room,
      tiles: tiles.map((t) => `${t.dataset.peerId}:${t.dataset.mark ?? ''}`).sort(),
      reconnecting: !document.getElementById('reconnecting').hidden,
      resumes: h.state.resumes,
      rejoins: h.state.rejoins,
    };
  });
}

async function markTiles(p, mark) {
  await p.page.evaluate((mark) => {
    for (const t of document.querySelectorAll('#tiles .tile:not([data-self="true"])')) t.dataset.mark = mark;
  }, mark);
}

/** Every notice the page shows from now on. */
async function recordNotices(p) {
  await p.page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__notices = [];
    new MutationObserver(() => {
      for (const n of document.querySelectorAll('#notices > *')) {
        if (!n.dataset.seen) { n.dataset.seen = '1'; w.__notices.push(n.textContent.trim()); }
      }
    }).observe(document.getElementById('notices'), { childList: true, subtree: true });
  });
}

async function chatTexts(p) {
  return p.page.evaluate(() => [...document.querySelectorAll('#chat-log .chat-msg .chat-text')].map((m) => m.textContent.trim()));
}

async function sendChat(p, text) {
  if (!(await p.page.locator('#chat-input').isVisible())) await button(p.page, 'Chat').click();
  await p.page.getByLabel('Message', { exact: true }).fill(text);
  await button(p.page, 'Send').click();
}

/** Waits until each text is in the page's chat log, then checks each is there exactly once, in order. */
async function expectChatsOnce(p, texts) {
  await pollUntil(async () => {
    const log = await chatTexts(p);
    return { ok: texts.every((t) => log.includes(t)), log };
  }, { timeoutMs: RECOVERY_MS, what: `${p.who}: chat messages ${JSON.stringify(texts)}` });
  const log = await chatTexts(p);
  for (const t of texts) assert.equal(log.filter((x) => x === t).length, 1, `${p.who}: "${t}" exactly once in ${JSON.stringify(log)}`);
  const order = texts.map((t) => log.indexOf(t));
  assert.deepEqual(order, [...order].sort((a, b) => a - b), `${p.who}: in order: ${JSON.stringify(log)}`);
}

async function expectResumed(before, p, other) {
  await pollUntil(async () => {
    const s = await snapshot(p);
    return { ok: !s.reconnecting, s };
  }, { timeoutMs: RECOVERY_MS, what: `${p.who}: "Reconnecting…" goes away` });
  const after = await snapshot(p);
  assert.equal(after.resumes, before.resumes + 1, `${p.who} resumed its session once`);
  assert.equal(after.rejoins, 0, `${p.who} did not have to join again`);
  assert.equal(after.id, before.id, `${p.who} kept its id`);
  assert.equal(after.room, room);
  assert.deepEqual(after.tiles, before.tiles, `${p.who}: the same tile elements (nobody left and came back)`);
  const otherNow = await snapshot(other);
  assert.deepEqual(otherNow.tiles, [`${before.id}:m`], `${other.who} still has the same tile for ${p.who}`);
  const notices = await other.page.evaluate(() => /** @type {any} */ (window).__notices);
  assert.ok(!notices.some((n) => /left|joined|나갔|들어왔/.test(n)), `${other.who} saw no leave/join: ${JSON.stringify(notices)}`);
}

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
}, { timeout: 120_000 });

sc.step('the server restarts: both pages come back into the room by themselves', async (t) => {
  if (skip) return t.skip(skip);
  const firstRun = sc.server.output();
  assert.equal((firstRun.match(/resumed a session/g) || []).length, 2, 'the server resumed Bob\'s session twice');
  assert.ok(!/left a room/.test(firstRun), 'nobody left the room on the first server');
  await sc.server.stop();
  sc.server = await startServer({ listen: `0.0.0.0:${port}`, wrap: net.wrap('srv') });
  for (const [p, other] of [[A, B], [B, A]]) {
    await pollUntil(async () => {
      const s = await snapshot(p);
      return { ok: s.room === room && !s.reconnecting && s.tiles.length === 1 && s.rejoins === 1, s };
    }, { timeoutMs: RECOVERY_MS, what: `${p.who}: back in ${room} with ${other.who}` });
  }
  const [a, b] = [await snapshot(A), await snapshot(B)];
  assert.deepEqual(a.tiles, [`${b.id}:`], 'Alice shows Bob (a new tile: the server forgot everyone)');
  [A.id, B.id] = [a.id, b.id];
  await expectEveryoneSeesEveryone([A, B], clips, (line) => A.note(line));
}, { timeout: 120_000 });
