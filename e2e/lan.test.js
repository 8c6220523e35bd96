// A phone on the same Wi-Fi joins with the URL the banner prints: the server in its own network
// namespace listening on every address with `--tls self-signed`, a "phone" (a Chromium with a
// phone-sized window) and a laptop on the LAN in namespaces of their own. They open the printed
// https://<LAN address> URL (the one the QR code carries), pin the printed key as a user who
// checked the fingerprint would accept it, get a secure page with the camera, and see each other.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer, pinnedKey } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone } from './lib/huddle.js';
import { lanNetwork, netnsAvailable, LAN_SERVER_IP } from './lib/netns.js';
import { Scenario } from './lib/scenario.js';

const LAN_URL = /on your network: (https:\/\/\S+)/;
const usable = netnsAvailable();
const skip = usable === true ? null : `needs root with ip and nft (${usable})`;
const sc = new Scenario('lan');
let tmp, clips, net, spki, lanUrl;

before(async () => {
  if (skip) return;
  tmp = makeTempDir();
  net = lanNetwork({ clients: 2 });
  clips = await makeClips(tmp.dir, 2);
  sc.server = await startServer({
    listen: '0.0.0.0:0',
    wrap: net.wrap('srv'),
    args: ['--tls', 'self-signed', '--data-dir', path.join(tmp.dir, 'data')],
  });
  spki = pinnedKey(sc.server);
  lanUrl = LAN_URL.exec(sc.server.output())?.[1];
});

after(async () => {
  writeLogs('lan', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  net?.destroy();
  tmp?.cleanup();
});

sc.step('the banner prints the LAN URL with a QR code and the key to check', (t) => {
  if (skip) return t.skip(skip);
  const out = sc.server.output();
  assert.ok(lanUrl, `no "on your network" URL in:\n${out}`);
  assert.equal(new URL(lanUrl).hostname, LAN_SERVER_IP, out);
  assert.match(out, /scan to join from a phone:\n(.*\n){10,}/, 'a QR code follows');
  assert.ok(spki, out);
}, { critical: true });

sc.step('a phone and a laptop on the LAN join over HTTPS at that URL and see each other', async (t) => {
  if (skip) return t.skip(skip);
  const [phone, laptop] = await Promise.all(clips.map((clip, i) => launchParticipant({
    who: `${i === 0 ? 'phone' : 'laptop'}-${clip.colour}`, clip: clip.path,
    viewport: i === 0 ? { width: 390, height: 844 } : { width: 1280, height: 800 },
    executablePath: net.chromiumIn(`d${i}`, tmp.dir),
    args: [`--ignore-certificate-errors-spki-list=${spki}`],
  })));
  phone.clip = clips[0];
  laptop.clip = clips[1];
  sc.participants.push(phone, laptop);
  const room = `e2e-lan-${crypto.randomBytes(3).toString('hex')}`;
  for (const [i, p] of [phone, laptop].entries()) {
    await joinViaLanding(p, lanUrl.replace(/\/$/, ''), { name: i === 0 ? 'Phone' : 'Laptop', room });
    const secure = await p.page.evaluate(() => ({ secure: window.isSecureContext, origin: location.origin }));
    assert.deepEqual(secure, { secure: true, origin: lanUrl.replace(/\/$/, '') }, `${p.who}: ${JSON.stringify(secure)}`);
  }
  await expectEveryoneSeesEveryone([phone, laptop], clips, (line) => phone.note(line));
}, { timeout: 90_000 });
