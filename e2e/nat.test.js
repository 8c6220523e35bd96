// Calls across real NATs, with nothing configured: the server on a "public" network namespace,
// two participants at home, each behind its own symmetric NAT (random ports per destination, so
// neither can reach the other at the address the server saw: no direct path exists). huddle's
// built-in TURN server is what connects them — over UDP, and over TCP when a home drops UDP.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startServer, pinnedKey } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone, pollUntil } from './lib/huddle.js';
import { natNetwork, netnsAvailable, PUBLIC_SERVER_IP } from './lib/netns.js';
import { selectedPairs } from './lib/ice.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const usable = netnsAvailable();
const sc = new Scenario('nat');
let tmp, clips, net, spki;
/** @type {import('./lib/browser.js').Participant[]} */ let people = [];
const gone = [];

before(async () => {
  if (usable !== true) return;
  tmp = makeTempDir();
  net = natNetwork({ homes: 2 });
  clips = await makeClips(tmp.dir, 2);
  // HTTPS as any deployment on the internet has it (the camera needs a secure page); the test
  // browsers pin the certificate's key as a user who checked the fingerprint would accept it.
  sc.server = await startServer({
    listen: `${PUBLIC_SERVER_IP}:0`,
    wrap: net.wrap('wan'),
    args: ['--topology', 'p2p', '--tls', 'self-signed', '--data-dir', path.join(tmp.dir, 'data')],
  });
  spki = pinnedKey(sc.server);
});

after(async () => {
  writeLogs('nat', [...gone, ...sc.participants], sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  net?.destroy();
  tmp?.cleanup();
});

const skip = usable === true ? null : `needs root with ip and nft (${usable})`;

async function call(label) {
  gone.push(...sc.participants);
  await sc.closeAll();
  const room = `e2e-nat-${label}-${crypto.randomBytes(3).toString('hex')}`;
  people = await Promise.all(clips.map((clip, i) => launchParticipant({
    who: `${label}-home${i}-${clip.colour}`, clip: clip.path,
    executablePath: net.chromiumIn(`c${i}`, tmp.dir),
    args: [`--ignore-certificate-errors-spki-list=${spki}`],
  })));
  people.forEach((p, i) => { p.clip = clips[i]; });
  sc.participants.push(...people);
  for (const [i, p] of people.entries()) await joinViaLanding(p, sc.server.url, { name: `Home ${i}`, room });
  await expectEveryoneSeesEveryone(people, clips, (line) => people[0].note(line));
  const pairs = [];
  for (const p of people) {
    const got = await pollUntil(async () => {
      const g = await selectedPairs(p.page);
      return g.length > 0 ? g : { ok: false, g };
    }, { timeoutMs: T.ui, what: `${p.who}: a selected candidate pair` });
    p.note(`selected pairs: ${JSON.stringify(got)}`);
    pairs.push(got[0]);
  }
  return pairs;
}

sc.step('the two homes cannot reach each other directly', (t) => {
  if (skip) return t.skip(skip);
  assert.ok(spki, `no pinnable key in the banner:\n${sc.server.output()}`);
  assert.equal(sc.server.url, sc.server.url.replace(/127\.0\.0\.1/, PUBLIC_SERVER_IP));
  // Home 0 reaches the server's port, not home 1's private address (a TCP connect from inside
  // home 0, by this same node binary).
  const reach = (host, port) => {
    const probe = `require('net').connect({host:'${host}',port:${port},timeout:2000}).on('connect',()=>process.exit(0)).on('error',()=>process.exit(1)).on('timeout',()=>process.exit(1))`;
    try {
      execFileSync('ip', [...net.wrap('c0')[1], process.execPath, '-e', probe], { stdio: 'ignore', timeout: 5000 });
      return true;
    } catch { return false; }
  };
  assert.equal(reach(PUBLIC_SERVER_IP, sc.server.port), true, 'home 0 reaches the server');
  assert.equal(reach('10.0.1.2', 9), false, 'home 0 reaches into home 1');
}, { critical: true });

sc.step('a p2p call between the homes connects through huddle\'s TURN relays, with nothing configured', async (t) => {
  if (skip) return t.skip(skip);
  const pairs = await call('udp');
  for (const pair of pairs) {
    assert.equal(pair.local.type, 'relay', `only a relay can connect these homes: ${JSON.stringify(pair)}`);
    assert.equal(pair.local.relayProtocol, 'udp', JSON.stringify(pair));
    assert.match(pair.local.url ?? '', new RegExp(`^turn:${PUBLIC_SERVER_IP.replace(/\./g, '\\.')}:\\d+`), JSON.stringify(pair));
  }
}, { timeout: 90_000 });

sc.step('when one home drops all UDP, the call connects over TURN on TCP', async (t) => {
  if (skip) return t.skip(skip);
  net.nft('r1', `add rule inet filter forward_filter iifname "${net.ns('l1')}" meta l4proto udp drop`);
  const [, blocked] = await call('tcp');
  assert.equal(blocked.local.type, 'relay', JSON.stringify(blocked));
  assert.equal(blocked.local.relayProtocol, 'tcp', `the UDP-blocked home must use TURN over TCP: ${JSON.stringify(blocked)}`);
}, { timeout: 90_000 });
