// The built-in TURN server carries real calls: with `--ice-transport-policy relay` the pages may
// use nothing but relay candidates from the credentials huddle hands them, so video only flows if
// huddle's own TURN server allocates and relays for Chromium — between two browsers (p2p room:
// relay to relay) and between browsers and the SFU (relay to huddle's own media port).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone, pollUntil } from './lib/huddle.js';
import { selectedPairs } from './lib/ice.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const sc = new Scenario('turn');
let tmp, clips;
/** @type {import('./lib/browser.js').Participant[]} */ let people = [];
/** Participants of finished steps (their logs are still written). */
const gone = [];

before(async () => {
  tmp = makeTempDir();
  clips = await makeClips(tmp.dir, 2);
});

after(async () => {
  writeLogs('turn', [...gone, ...sc.participants], sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

async function meetThroughRelays(label, serverArgs, expectRemote) {
  gone.push(...sc.participants);
  await sc.closeAll();
  await sc.server?.stop();
  sc.server = await startServer({ args: ['--ice-transport-policy', 'relay', ...serverArgs] });
  const room = `e2e-turn-${label}-${crypto.randomBytes(3).toString('hex')}`;
  people = await Promise.all(clips.map((clip) => launchParticipant({ who: `${label}-${clip.label}-${clip.colour}`, clip: clip.path })));
  people.forEach((p, i) => { p.clip = clips[i]; });
  sc.participants.push(...people);
  for (const [i, p] of people.entries()) await joinViaLanding(p, sc.server.url, { name: `P${i}`, room });
  await expectEveryoneSeesEveryone(people, clips, (line) => people[0].note(line));
  for (const p of people) {
    const pairs = await pollUntil(async () => {
      const got = await selectedPairs(p.page);
      return got.length > 0 ? got : { ok: false, got };
    }, { timeoutMs: T.ui, what: `${p.who}: a selected candidate pair` });
    p.note(`selected pairs: ${JSON.stringify(pairs)}`);
    for (const pair of pairs) {
      assert.equal(pair.local.type, 'relay', `${p.who}: the page's own candidate must be a TURN relay: ${JSON.stringify(pair)}`);
      assert.match(pair.local.url ?? '', /^turn:127\.0\.0\.1:\d+/, `${p.who}: relayed by huddle's TURN server: ${JSON.stringify(pair)}`);
      assert.equal(pair.remote.type, expectRemote, `${p.who}: ${JSON.stringify(pair)}`);
    }
  }
}

sc.step('two pages in a p2p room see each other through two TURN relays and nothing else', async () => {
  // Each page's remote candidate is the other's relay address (a relay candidate to it).
  await meetThroughRelays('p2p', ['--topology', 'p2p'], 'relay');
}, { critical: false });

sc.step('two pages in an sfu room reach the SFU through TURN relays', async () => {
  // The SFU is ICE-lite with host candidates; each page reaches it from its relay.
  await meetThroughRelays('sfu', ['--topology', 'sfu'], 'host');
});

/** The relay username each of the page's connections uses now (`setConfiguration` applied). */
const relayUsers = (page) => page.evaluate(() => {
  const h = window.__huddle;
  const pcs = [...h.peers.values()].map((p) => p.pc).filter(Boolean);
  return pcs.map((pc) => pc.getConfiguration().iceServers.map((s) => s.username).find(Boolean) ?? null);
});

/** Video frames this page has decoded so far, all connections together. */
const framesIn = (page) => page.evaluate(async () => {
  let n = 0;
  for (const p of window.__huddle.peers.values()) {
    if (!p.pc) continue;
    (await p.pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded ?? 0; });
  }
  return n;
});

sc.step('relay credentials are short-lived and renewed: a relayed call outlives them, and an ICE restart relays with the fresh ones', async () => {
  // Credentials live 60 s (the least allowed) and are renewed every 30 s (`ice_servers`).
  await meetThroughRelays('renew', ['--topology', 'p2p', '--turn-credential-ttl-secs', '60'], 'relay');
  const first = await relayUsers(people[0].page);
  assert.equal(first.length, 1, `one connection: ${JSON.stringify(first)}`);
  const expiry = (u) => Number(String(u).split(':')[0]);
  const joinedExpiry = expiry(first[0]);
  // Past the first credential's expiry: the page has applied a renewal to its connection.
  const renewed = await pollUntil(async () => {
    const users = await relayUsers(people[0].page);
    return Date.now() / 1000 > joinedExpiry + 2 && expiry(users[0]) > joinedExpiry ? users : { ok: false, users };
  }, { timeoutMs: 90_000, intervalMs: 1000, what: 'renewed credentials applied past the first expiry' });
  people[0].note(`relay users: joined ${first[0]}, now ${renewed[0]}`);
  assert.equal(renewed[0].split(':')[1], first[0].split(':')[1], 'the same relay user, a later expiry');
  // The relays made with the expired credential still carry the call.
  const before = await framesIn(people[1].page);
  await pollUntil(async () => (await framesIn(people[1].page)) > before + 30, { timeoutMs: T.ui, what: 'video still flowing through the relays' });
  // A new relay needs a current credential: an ICE restart gathers with the renewed one.
  const oldPair = (await selectedPairs(people[0].page))[0];
  await people[0].page.evaluate(() => { for (const p of window.__huddle.peers.values()) p.link?.restartIce(); });
  const newPair = await pollUntil(async () => {
    const got = (await selectedPairs(people[0].page))[0];
    return got && got.local.address !== oldPair.local.address && got.local.type === 'relay' ? got : { ok: false, got };
  }, { timeoutMs: 30_000, what: 'a new relay after the ICE restart' });
  people[0].note(`ICE restart: ${oldPair.local.address} -> ${newPair.local.address}`);
  const again = await framesIn(people[1].page);
  await pollUntil(async () => (await framesIn(people[1].page)) > again + 30, { timeoutMs: T.ui, what: 'video flowing after the restart' });
}, { timeout: 180_000 });
