// The page follows the SFU's session rule (docs/protocol.md, "Sessions, restarts and refusals"):
// a `media_failed` that names a session the page has replaced already (it crossed the page's new
// offer) is ignored; one naming its current session starts a new session; `media_retry` starts
// one after the time it names. The messages are put into the page's WebSocket by the test (a real
// server sends them only in races the test cannot time); everything else is the real server.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, pollUntil } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const sc = new Scenario('sfu-sessions');
const ROOM = `sessions-${crypto.randomBytes(3).toString('hex')}`;
let tmp, clips, p;
/** The page's signalling, routed through the test: `toPage` puts a message into it. */
let toPage = (msg) => { throw new Error(`not connected: ${JSON.stringify(msg)}`); };
/** What the SFU said and what the page offered, in order. */
const seen = { answers: /** @type {number[]} */ ([]), offers: 0 };

before(async () => {
  tmp = makeTempDir();
  [sc.server, clips] = await Promise.all([startServer({ args: ['--topology', 'sfu'] }), makeClips(tmp.dir, 1)]);
  p = await launchParticipant({ who: 'page', clip: clips[0].path });
  await p.page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    toPage = (msg) => ws.send(JSON.stringify(msg));
    ws.onMessage((m) => {
      const msg = JSON.parse(String(m));
      if (msg.type === 'signal' && msg.to === 'sfu' && msg.payload?.description?.type === 'offer') seen.offers++;
      server.send(m);
    });
    server.onMessage((m) => {
      const msg = JSON.parse(String(m));
      if (msg.type === 'signal' && msg.from === 'sfu' && msg.payload?.description?.type === 'answer') seen.answers.push(msg.session);
      ws.send(m);
    });
  });
  sc.participants.push(p);
});

after(async () => {
  writeLogs('sfu-sessions', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

const connected = () => p.page.evaluate(() => window.__huddle.sfu?.connectionState === 'connected');

/** Waits until the page's SFU connection is up on a session the server answered. */
async function upOnNewSession(what, after = 0) {
  return pollUntil(async () => {
    const session = seen.answers.at(-1);
    return seen.answers.length > after && (await connected()) ? session : { ok: false, seen, connected: await connected() };
  }, { timeoutMs: T.media, what });
}

sc.step('the page is connected to the SFU on a numbered session', async (t) => {
  await joinViaLanding(p, sc.server.url, { name: 'Page', room: ROOM });
  const session = await upOnNewSession('an answered, connected SFU session');
  assert.equal(typeof session, 'number', `the answer names its session: ${JSON.stringify(seen)}`);
  t.diagnostic(`session ${session}`);
}, { critical: true });

sc.step('a media_failed about a session the page replaced is ignored', async () => {
  const current = seen.answers.at(-1);
  const before = { offers: seen.offers, pc: await p.page.evaluate(() => window.__huddle.sfu) !== null };
  toPage({ type: 'error', code: 'media_failed', message: 'The connection to the media server was lost; send a new offer to reconnect.', session: current - 1 });
  // The page would start over no sooner than 2 s after its last start: give it 3.5 s to (wrongly) do so.
  await new Promise((r) => setTimeout(r, 3500));
  assert.equal(seen.offers, before.offers, 'no new offer');
  assert.ok(await connected(), 'the connection is untouched');
});

sc.step('a media_failed about the current session starts a new one', async (t) => {
  const current = seen.answers.at(-1);
  const answers = seen.answers.length;
  toPage({ type: 'error', code: 'media_failed', message: 'The connection to the media server was lost; send a new offer to reconnect.', session: current });
  const next = await upOnNewSession('a new session after media_failed', answers);
  assert.ok(next > current, `a new session: ${current} → ${next}`);
  t.diagnostic(`session ${current} → ${next}`);
});

sc.step('media_retry: a new session after the time it names', async (t) => {
  const answers = seen.answers.length;
  const offers = seen.offers;
  // As if the server had not taken the page's latest signal (it was busy).
  const sent = Date.now();
  toPage({ type: 'error', code: 'media_retry', message: 'The media server cannot take this now; send it again after retryAfterMs.', request: 'signal', retryAfterMs: 3000 });
  await pollUntil(() => seen.offers > offers, { timeoutMs: T.media, what: 'a new offer after media_retry' });
  const waited = Date.now() - sent;
  assert.ok(waited >= 2900, `the page waited as told: ${waited} ms`);
  await upOnNewSession('connected again', answers);
  t.diagnostic(`new offer ${waited} ms after media_retry`);
});
