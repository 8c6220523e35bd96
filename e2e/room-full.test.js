// A room at capacity refuses the next joiner, and the page says so in #error-banner.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startServer } from './lib/server.js';
import { connectWs } from './lib/ws-client.js';
import { launchParticipant } from './lib/browser.js';
import { makeTempDir, makeClip, PALETTE } from './lib/camera.js';
import { enterRoom, pressJoin } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const sc = new Scenario('room-full');
const ROOM = `full-${crypto.randomBytes(3).toString('hex')}`;
const sockets = [];
let tmp, third;

before(async () => {
  tmp = makeTempDir();
  const [server, clip] = await Promise.all([startServer({ args: ['--room-capacity', '2'] }), makeClip(tmp.dir, PALETTE[2])]);
  sc.server = server;
  third = await launchParticipant({ who: 'third', clip: clip.path });
  sc.participants.push(third);
});

after(async () => {
  for (const ws of sockets) ws.close();
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

sc.step('the server reports a capacity of 2', async () => {
  const ws = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  sockets.push(ws);
  const welcome = await ws.next('welcome');
  assert.equal(welcome.limits?.roomCapacity, 2, `welcome.limits: ${JSON.stringify(welcome.limits)}`);
  ws.close();
});

sc.step('a third joiner through the page sees #error-banner[data-code="room_full"]', async () => {
  // Two protocol-level participants fill the room (no media: the page's offers to them go unanswered).
  for (const name of ['Ws One', 'Ws Two']) {
    const ws = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
    sockets.push(ws);
    await ws.join(ROOM, name);
  }
  const page = third.page;
  third.name = 'Third';
  await enterRoom(page, sc.server.url, { name: 'Third', room: ROOM });
  await pressJoin(page);
  const banner = page.locator('#error-banner[data-code="room_full"]');
  await banner.waitFor({ state: 'visible', timeout: T.ui }).catch(async () => {
    const b = await page.evaluate(() => {
      const e = document.querySelector('#error-banner');
      return { view: document.body.dataset.view, code: e?.dataset.code, text: e?.textContent.trim(), visible: !!e && e.checkVisibility?.() };
    });
    throw new Error(`no visible #error-banner[data-code="room_full"] within ${T.ui} ms: ${JSON.stringify(b)}`);
  });
  assert.equal(await banner.getAttribute('role'), 'alert', '#error-banner should have role="alert"');
  const text = (await banner.innerText()).trim();
  assert.ok(text.length > 5, `#error-banner has no human sentence: ${JSON.stringify(text)}`);
  const view = await page.evaluate(() => document.body.dataset.view);
  assert.notEqual(view, 'room', 'the refused joiner is shown the room view');
  // The room still has exactly the two who got in.
  const watcher = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  sockets.push(watcher);
  watcher.send({ type: 'watch_rooms' });
  const rooms = await watcher.next('rooms');
  const entry = rooms.rooms.find((r) => r.name === ROOM);
  assert.equal(entry?.participants, 2, `rooms: ${JSON.stringify(rooms.rooms)}`);
});
