// HTTPS with a certificate huddle makes itself (`--tls self-signed`): browsers that trust exactly
// that key (the fingerprint the banner prints, pinned with Chromium's
// --ignore-certificate-errors-spki-list) get a secure page, the camera and a call; a browser that
// does not is stopped at the certificate.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer, pinnedKey } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { T } from './lib/env.js';

const ROOM = `e2e-https-${crypto.randomBytes(3).toString('hex')}`;
const FINGERPRINT = /certificate SHA-256 fingerprint: ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})/;

const sc = new Scenario('https');
/** The server's flags: its own certificate, kept in the test's temporary directory. */
const serverArgs = () => ['--tls', 'self-signed', '--topology', 'p2p', '--data-dir', path.join(tmp.dir, 'data')];
let tmp, clips, spki;
/** @type {import('./lib/browser.js').Participant} */ let A, B;

before(async () => {
  tmp = makeTempDir();
  [sc.server, clips] = await Promise.all([startServer({ args: serverArgs() }), makeClips(tmp.dir, 2)]);
  spki = pinnedKey(sc.server);
});

after(async () => {
  writeLogs('https', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

sc.step('the banner gives an https URL, the certificate fingerprint and its public key hash', async () => {
  assert.match(sc.server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  assert.ok(FINGERPRINT.test(sc.server.output()), `no fingerprint line in:\n${sc.server.output()}`);
  assert.ok(spki && Buffer.from(spki, 'base64').length === 32, `no public key hash in:\n${sc.server.output()}`);
}, { critical: true });

sc.step('a browser that does not know the certificate is stopped before the page', async () => {
  const stranger = await launchParticipant({ who: 'stranger' });
  sc.participants.push(stranger);
  const err = await stranger.page.goto(`${sc.server.url}/`, { timeout: T.navigation }).then(() => null, (e) => e);
  assert.ok(err, 'the page loaded without trusting the certificate');
  assert.match(err.message, /ERR_CERT_(AUTHORITY_INVALID|COMMON_NAME_INVALID|INVALID)/, err.message);
});

sc.step('two browsers that pinned its key meet over HTTPS: secure page, camera, video both ways', async () => {
  [A, B] = await Promise.all(clips.map((clip) => launchParticipant({
    who: `${clip.label}-${clip.colour}`, clip: clip.path,
    args: [`--ignore-certificate-errors-spki-list=${spki}`],
  })));
  A.clip = clips[0]; B.clip = clips[1];
  sc.participants.push(A, B);
  await joinViaLanding(A, sc.server.url, { name: 'Alice', room: ROOM });
  await joinViaLanding(B, sc.server.url, { name: 'Bob', room: ROOM });
  for (const p of [A, B]) {
    const page = await p.page.evaluate(() => ({ secure: window.isSecureContext, protocol: location.protocol }));
    assert.deepEqual(page, { secure: true, protocol: 'https:' }, `${p.who}: ${JSON.stringify(page)}`);
  }
  await expectEveryoneSeesEveryone([A, B], clips, (line) => A.note(line));
}, { timeout: 120_000 });

sc.step('an address typed without https:// lands on the HTTPS page', async () => {
  const page = await A.newPage({ tag: 'typed' });
  const typed = `${sc.server.url.replace('https://', 'http://')}/r/${ROOM}`;
  await page.goto(typed, { waitUntil: 'domcontentloaded' });
  const landed = new URL(page.url());
  assert.equal(`${landed.protocol}//${landed.host}${landed.pathname}`, `${sc.server.url}/r/${ROOM}`, `from ${typed}`);
  await page.close();
});

sc.step('a restart with the same data directory keeps the certificate (browsers are not asked again)', async () => {
  const before = FINGERPRINT.exec(sc.server.output())?.[1];
  assert.match(sc.server.output(), /kept in \S+ for the next start/);
  const again = await startServer({ args: serverArgs() });
  try {
    assert.equal(FINGERPRINT.exec(again.output())?.[1], before, `another certificate after the restart:\n${again.output()}`);
    assert.equal(pinnedKey(again), spki);
  } finally {
    await again.stop();
  }
});
