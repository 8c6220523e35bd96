// Files through the server meet its limits (docs/protocol.md, `file_offer`, `file_upload`): an
// upload the server cut off as too slow, and an offer over the participant's quota, are each said
// in #error-banner in English and Korean; a file within the limits still goes. Screenshots in
// English and Korean, wide and phone-size (artifacts/files/, or $FILES_SHOTS_DIR).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { connectWs } from './lib/ws-client.js';
import { launchParticipant } from './lib/browser.js';
import { joinViaLanding } from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const sc = new Scenario('files');
const ROOM = `files-${crypto.randomBytes(3).toString('hex')}`;
const shotsDir = process.env.FILES_SHOTS_DIR || path.join(artifactsDir(), 'files');
/** @type {import('./lib/browser.js').Participant} */ let A;
let other;

before(async () => {
  // One participant may hold 1500 bytes; an offer not uploaded expires after 2 s.
  sc.server = await startServer({
    args: ['--topology', 'sfu', '--file-connection-bytes', '1500', '--file-transfer-timeout-secs', '2'],
  });
  A = await launchParticipant({ who: 'A' });
  sc.participants.push(A);
  mkdirSync(shotsDir, { recursive: true });
});

after(async () => {
  other?.close();
  await sc.closeAll();
  await sc.server?.stop();
});

/** Picks a file of `size` bytes in the page. */
async function send(name, size) {
  await A.page.locator('#file-input').setInputFiles({ name, mimeType: 'application/octet-stream', buffer: crypto.randomBytes(size) });
}

/** The banner once it shows `code`, its text. */
async function banner(code) {
  const b = A.page.locator(`#error-banner[data-code="${code}"]`);
  await b.waitFor({ state: 'visible', timeout: T.ui }).catch(async () => {
    const now = await A.page.evaluate(() => document.querySelector('#error-banner')?.dataset.code);
    throw new Error(`no #error-banner[data-code="${code}"] within ${T.ui} ms (it shows ${now})`);
  });
  return (await b.innerText()).trim();
}

/** Screenshots of the page as it is, in both languages and both sizes; the sentence in each. */
async function shots(tag) {
  const texts = {};
  for (const lang of ['en', 'ko']) {
    await A.page.locator('#lang-select').selectOption(lang);
    texts[lang] = (await A.page.locator('#error-text').innerText()).trim();
    for (const [size, w, h] of [['wide', 1280, 800], ['phone', 390, 844]]) {
      await A.page.setViewportSize({ width: w, height: h });
      await A.page.screenshot({ path: path.join(shotsDir, `${tag}-${lang}-${size}.png`) });
      const overflow = await A.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px (${tag} ${lang} ${size})`);
    }
  }
  await A.page.setViewportSize({ width: 1280, height: 800 });
  await A.page.locator('#lang-select').selectOption('en');
  return texts;
}

sc.step('A joins an sfu room with someone to send files to', async () => {
  // A protocol-level participant: the page sends files only when someone else is there.
  other = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  await other.join(ROOM, 'Jun');
  await joinViaLanding(A, sc.server.url, { name: 'Mina', room: ROOM });
}, { critical: true });

sc.step('an upload the server cut off as too slow says so, and the file is marked failed', async () => {
  // The server's answer to a stalled upload, given without waiting for one (the server's side of
  // it is tested in crates/server/tests/file_limits.rs).
  await A.page.route('**/files/*', (route) => route.request().method() === 'PUT'
    ? route.fulfill({ status: 408, contentType: 'application/json', body: JSON.stringify({ code: 'upload_too_slow', message: 'The upload stalled.' }) })
    : route.continue());
  await send('slow.bin', 1000);
  const text = await banner('upload_too_slow');
  assert.match(text, /slow\.bin/, text);
  await A.page.locator('#files .file-item[data-file-name="slow.bin"][data-state="failed"]').waitFor({ state: 'attached', timeout: T.ui });
  const texts = await shots('upload-too-slow');
  assert.match(texts.en, /too slow/, texts.en);
  assert.match(texts.ko, /느려서/, texts.ko);
  await A.page.unroute('**/files/*');
});

sc.step('within the quota a file goes; over it the server refuses and the page says why', async () => {
  // The offer that was never uploaded expires (2 s) and no longer counts.
  await new Promise((resolve) => setTimeout(resolve, 2500));
  await send('fits.bin', 1000);
  await A.page.locator('#files .file-item[data-file-name="fits.bin"][data-state="done"]').waitFor({ state: 'attached', timeout: T.transfer })
    .catch(() => { throw new Error('fits.bin was not shared'); });
  await send('over.bin', 1000);
  await banner('file_quota');
  await A.page.locator('#files .file-item[data-file-name="over.bin"][data-state="failed"]').waitFor({ state: 'attached', timeout: T.ui });
  const texts = await shots('file-quota');
  assert.match(texts.en, /as much as is allowed/, texts.en);
  assert.match(texts.ko, /공유할 수 있는 만큼/, texts.ko);
});
