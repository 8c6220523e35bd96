// Two workers in one process (`--workers 2`): two `sfu` rooms whose names hash to different
// workers, two people each (their own Chromium and coloured fake camera). Each sees only its
// partner, in the partner's colour, through its own worker's SFU (its own UDP port), and
// /metrics counts one room and forwarded packets on each worker.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, waitForRemoteTiles, expectEveryoneSeesEveryone, pollUntil } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const WORKERS = 2;

/** The server's worker_of_room: FNV-1a 64 of the name's UTF-8 bytes, modulo the worker count. */
function fnv1a64(s) {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(s, 'utf8')) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h;
}
const workerOf = (room) => Number(fnv1a64(room) % BigInt(WORKERS));

/** The first `w-room-<i>` for each worker, in worker order. */
function roomsPerWorker() {
  const rooms = new Array(WORKERS).fill(null);
  for (let i = 0; rooms.includes(null); i++) rooms[workerOf(`w-room-${i}`)] ??= `w-room-${i}`;
  return rooms;
}

const ROOMS = roomsPerWorker();
const sc = new Scenario('workers');
let tmp, clips;
/** @type {import('./lib/browser.js').Participant[]} */ let P = [];
/** People of each room: [[A, B] on worker 0, [C, D] on worker 1]. */
const byRoom = () => [P.slice(0, 2), P.slice(2, 4)];

before(async () => {
  tmp = makeTempDir();
  [sc.server, clips] = await Promise.all([
    startServer({ args: ['--topology', 'sfu', '--workers', String(WORKERS)] }),
    makeClips(tmp.dir, 4),
  ]);
  P = await Promise.all(clips.map((clip) => launchParticipant({ who: `${clip.label}-${clip.colour}`, clip: clip.path })));
  P.forEach((p, i) => { p.clip = clips[i]; });
  sc.participants.push(...P);
});

after(async () => {
  writeLogs('workers', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

/** /metrics as a map from `name{labels}` to its value. */
async function metrics() {
  const res = await fetch(`${sc.server.url}/metrics`);
  assert.equal(res.status, 200, `GET /metrics answered ${res.status}`);
  const out = new Map();
  for (const line of (await res.text()).split('\n')) {
    const m = /^([a-z_:][a-z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)/i.exec(line);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}

/** The page's SFU connection: state, selected candidate pair, and mids receiving video. */
async function sfuState(page) {
  return page.evaluate(async () => {
    const pc = window.__huddle.sfu;
    if (!pc) return null;
    const byId = new Map();
    (await pc.getStats()).forEach((s) => byId.set(s.id, s));
    let pair = null;
    const videoMids = [];
    for (const s of byId.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const p = byId.get(s.selectedCandidatePairId);
        const remote = p && byId.get(p.remoteCandidateId);
        if (remote) pair = { protocol: remote.protocol, address: remote.address, port: remote.port };
      }
      if (s.type === 'inbound-rtp' && s.kind === 'video' && (s.packetsReceived ?? 0) > 0) videoMids.push(s.mid);
    }
    return { state: pc.connectionState, topology: window.__huddle.state.topology, pair, videoMids: [...new Set(videoMids)] };
  });
}

sc.step('the two rooms hash to different workers (FNV-1a 64, as the server)', (t) => {
  // Published FNV-1a 64 test vectors.
  assert.equal(fnv1a64(''), 0xcbf29ce484222325n);
  assert.equal(fnv1a64('a'), 0xaf63dc4c8601ec8cn);
  assert.equal(fnv1a64('foobar'), 0x85944171f73967e8n);
  assert.deepEqual(ROOMS.map(workerOf), [0, 1]);
  t.diagnostic(`worker 0: ${ROOMS[0]}, worker 1: ${ROOMS[1]}`);
});

sc.step('two people join each room, one room per worker', async () => {
  const names = ['Alice', 'Bob', 'Chloé', 'Dan'];
  await Promise.all(byRoom().map(async (people, r) => {
    for (const p of people) await joinViaLanding(p, sc.server.url, { name: names[P.indexOf(p)], room: ROOMS[r] });
  }));
  assert.equal(new Set(P.map((p) => p.id)).size, 4, 'peer ids are not distinct');
  // Each page shows its partner and nobody from the other room.
  await Promise.all(byRoom().flatMap((people) => people.map((p) => {
    const partner = people.find((q) => q !== p);
    return waitForRemoteTiles(p.page, [partner.id]).catch((e) => { throw new Error(`${p.who}: ${e.message}`); });
  })));
}, { critical: true });

sc.step('each sees its partner in its colour (not the other room\'s), with frames advancing', async (t) => {
  // The colour is matched against all four clips: a picture from the other room would be nearer
  // to one of its colours and fail.
  await Promise.all(byRoom().map((people) => expectEveryoneSeesEveryone(people, clips, (line) => t.diagnostic(line))));
}, { critical: true });

sc.step('each room is on its own worker\'s SFU: one UDP port per worker, video only from the partner', async (t) => {
  const ports = [];
  for (const [r, people] of byRoom().entries()) {
    const st = [];
    for (const p of people) {
      const s = await sfuState(p.page);
      t.diagnostic(`${p.who} in ${ROOMS[r]}: ${JSON.stringify(s)}`);
      assert.ok(s, `${p.who}: no SFU connection`);
      assert.equal(s.state, 'connected', `${p.who}: the SFU connection is ${s.state}`);
      assert.equal(s.topology, 'sfu');
      assert.equal(s.pair?.protocol, 'udp', `${p.who}: the selected pair is ${JSON.stringify(s.pair)}`);
      assert.equal(s.videoMids.length, 1, `${p.who}: video arrives on ${s.videoMids.length} transceivers, not only the partner's`);
      st.push(s);
    }
    assert.equal(st[0].pair.port, st[1].pair.port, `${ROOMS[r]}: its two people reach different SFU ports`);
    ports.push(st[0].pair.port);
  }
  assert.notEqual(ports[0], ports[1], `both workers' rooms use SFU port ${ports[0]}`);
});

sc.step('/metrics: one room on each worker, and each worker\'s SFU forwards packets', async (t) => {
  const key = (name, w) => `${name}{worker="${w}"}`;
  const m = await pollUntil(async () => {
    const m = await metrics();
    const got = Object.fromEntries([0, 1].flatMap((w) => ['huddle_worker_rooms', 'huddle_worker_forwarded_packets_total']
      .map((n) => [key(n, w), m.get(key(n, w)) ?? null])));
    const ok = [0, 1].every((w) => got[key('huddle_worker_rooms', w)] === 1 && got[key('huddle_worker_forwarded_packets_total', w)] > 0);
    return ok ? got : { ok: false, ...got };
  }, { timeoutMs: T.media, what: '/metrics: huddle_worker_rooms 1 and huddle_worker_forwarded_packets_total > 0 on both workers' });
  t.diagnostic(JSON.stringify(m));
});
