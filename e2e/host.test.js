// Hosting a meeting through the real page: the waiting room (admit, deny), a password and an
// invite link that skips it, a host muting a guest (and allowing unmuting), raised hands and
// reactions, the public-list switch, revoking invite links, the notice of wrong passwords and the
// pause they cause, removing and banning, ending the meeting, a waiting room whose meeting empties;
// a Korean sentence; screenshots.
// Three Chromiums: the host A (red camera), guests B (green) and C (blue).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { connectWs } from './lib/ws-client.js';
import {
  enterRoom, pressJoin, joinFromPrejoin, joinViaLanding, waitForView, waitForRemoteVideo, waitForColour,
  expectFramesAdvance, tile, button, pollUntil,
} from './lib/huddle.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const ROOM = `host-${crypto.randomBytes(3).toString('hex')}`;
const PASSWORD = 'blue whale';
const sc = new Scenario('host');
const shotsDir = process.env.HOST_SHOTS_DIR || path.join(artifactsDir(), 'host');
let tmp, clips;
/** @type {import('./lib/browser.js').Participant} */ let A, B, C;
const sockets = [];
/** The invite link C used in (b). */
let firstInvite = '';

before(async () => {
  tmp = makeTempDir();
  mkdirSync(shotsDir, { recursive: true });
  [sc.server, clips] = await Promise.all([startServer({ args: ['--topology', 'p2p'] }), makeClips(tmp.dir, 3)]);
  [A, B, C] = await Promise.all(clips.map((clip) => launchParticipant({ who: `${clip.label}-${clip.colour}`, clip: clip.path })));
  A.clip = clips[0]; B.clip = clips[1]; C.clip = clips[2];
  sc.participants.push(A, B, C);
});

after(async () => {
  for (const ws of sockets) ws.close();
  writeLogs('host', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

/** Wait for the banner with this code; returns its text. */
async function banner(page, code, who) {
  const b = page.locator(`#error-banner[data-code="${code}"]`);
  await b.waitFor({ state: 'visible', timeout: T.ui }).catch(async () => {
    const now = await page.evaluate(() => ({ view: document.body.dataset.view, code: document.querySelector('#error-banner')?.dataset.code, text: document.querySelector('#error-banner')?.textContent?.trim() }));
    throw new Error(`${who}: no #error-banner[data-code="${code}"] within ${T.ui} ms; page: ${JSON.stringify(now)}`);
  });
  return (await b.innerText()).trim();
}

/** Open the people panel (if it is not open). */
async function openPeople(page) {
  if (await page.locator('#people-panel').isHidden()) await button(page, 'Participants').or(page.locator('#people-button')).first().click();
  await page.locator('#people-panel').waitFor({ state: 'visible' });
}

/** The host's per-person menu: pick an action for `id`. */
async function moderate(page, id, action) {
  await openPeople(page);
  await page.locator(`#participant-list li[data-peer-id="${id}"] .person-more`).click();
  await page.locator(`#person-menu button[data-action="${action}"]`).click();
}

async function lastNotice(page, re, who) {
  return pollUntil(async () => {
    const texts = await page.locator('#notices .notice').allInnerTexts();
    return texts.find((x) => re.test(x)) || false;
  }, { what: `${who}: a notice matching ${re}` });
}

/** Sets a meeting setting switch in A's people panel and waits for the room's answer. */
async function setSwitch(page, id, on) {
  await openPeople(page);
  const box = page.locator(`#${id}`);
  if ((await box.isChecked()) !== on) await box.click();
  await page.waitForFunction(({ id, on }) => document.querySelector(`#${id}`).checked === on, { id, on }, { timeout: T.ui });
}

sc.step('(a) the waiting room: the host admits one guest (whose video then decodes) and denies another', async () => {
  await joinViaLanding(A, sc.server.url, { name: 'Dana', room: ROOM });
  await openPeople(A.page);
  await A.page.locator('#meeting-settings').waitFor({ state: 'visible' });
  await setSwitch(A.page, 'setting-waiting-room', true);
  await A.page.locator('#room-flags[data-waiting-room="true"] #flag-waiting').waitFor({ state: 'visible' });

  B.name = 'Bob';
  await enterRoom(B.page, sc.server.url, { name: 'Bob', room: ROOM });
  await pressJoin(B.page);
  await waitForView(B.page, 'waiting');
  assert.equal((await B.page.locator('#waiting-room-name').innerText()).trim(), ROOM);
  assert.match(await B.page.locator('#waiting-heading').innerText(), /Waiting for the host to let you in/);

  const knock = A.page.locator('#waiting-list li', { hasText: 'Bob' });
  await knock.waitFor({ state: 'visible', timeout: T.ui });
  await lastNotice(A.page, /Bob is waiting to join/, 'A');
  assert.equal((await A.page.locator('#waiting-badge').innerText()).trim(), '1');
  await knock.locator('.admit').click();
  B.id = await B.page.waitForFunction(() => window.__huddle?.id, null, { timeout: T.ui }).then((h) => h.jsonValue());
  await waitForView(B.page, 'room');
  await waitForRemoteVideo(A.page, B.id);
  await waitForColour(A.page, B.id, B.clip, clips, { what: 'A watching admitted B' });
  await expectFramesAdvance(A.page, B.id, { who: 'A watching B' });
  await A.page.locator('#waiting-section').waitFor({ state: 'hidden' });

  C.name = 'Cleo';
  await enterRoom(C.page, sc.server.url, { name: 'Cleo', room: ROOM });
  await pressJoin(C.page);
  await waitForView(C.page, 'waiting');
  const knockC = A.page.locator('#waiting-list li', { hasText: 'Cleo' });
  await knockC.locator('.deny').click();
  const text = await banner(C.page, 'knock_denied', 'C');
  assert.match(text, /The host did not let you in/);
  await waitForView(C.page, 'prejoin');
}, { critical: true });

sc.step('(g) the refusal in Korean', async () => {
  await C.page.locator('#lang-select').selectOption('ko');
  assert.equal((await C.page.locator('#error-text').innerText()).trim(), '호스트가 입장을 허락하지 않았습니다.');
  await C.page.locator('#lang-select').selectOption('en');
});

sc.step('(b) a password: asked for, a wrong one refused, the right one and an invite link let in', async () => {
  await setSwitch(A.page, 'setting-waiting-room', false);
  await A.page.locator('#setting-password').fill(PASSWORD);
  await A.page.locator('#password-save').click();
  await A.page.locator('#meeting-settings[data-has-password="true"]').waitFor({ state: 'attached' });

  await C.page.locator('#join-button').click();
  const field = C.page.locator('#password-field[data-code="password_required"]');
  await field.waitFor({ state: 'visible' });
  assert.match(await C.page.locator('#password-hint').innerText(), /This meeting has a password/);
  assert.ok(await C.page.evaluate(() => document.activeElement?.id === 'password-input'), 'the password field has the focus');
  await C.page.locator('#password-input').fill('red whale');
  await C.page.locator('#password-input').press('Enter');
  await C.page.locator('#password-field[data-code="wrong_password"]').waitFor({ state: 'visible' });
  assert.match(await C.page.locator('#password-hint').innerText(), /That password is not right/);
  await C.page.locator('#password-input').fill(PASSWORD);
  await C.page.locator('#join-button').click();
  await waitForView(C.page, 'room');
  await button(C.page, 'Leave').click();
  await waitForView(C.page, 'landing');

  // An invite link skips the password.
  await openPeople(A.page);
  await A.page.locator('#invite-copy').click();
  const link = await pollUntil(() => A.page.locator('#invite-link').inputValue(), { what: 'A: #invite-link filled' });
  firstInvite = link;
  assert.match(link, new RegExp(`^${sc.server.url}/r/${encodeURIComponent(ROOM)}#invite=[\\w-]+\\.[\\w-]+\\.[\\w-]+$`));
  await C.page.goto(link, { waitUntil: 'domcontentloaded' });
  await waitForView(C.page, 'prejoin');
  assert.equal(await C.page.evaluate(() => location.hash), '', 'the token stays in the address bar');
  C.id = await joinFromPrejoin(C.page);
  assert.ok(await C.page.locator('#password-field').isHidden(), 'C was asked for the password despite the invite');
}, { critical: true });

/** The audio energy A has received from `id` so far (inbound-rtp totalAudioEnergy on the peer-to-peer connection). */
async function audioEnergy(page, id) {
  return page.evaluate(async (id) => {
    const pc = window.__huddle.peers.get(id)?.pc;
    if (!pc) return null;
    let e = null;
    (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') e = s.totalAudioEnergy ?? null; });
    return e;
  }, id);
}

/** Whether `id`'s sound reaches `page`: its received audio energy grows within about 1.5 s. */
async function audible(page, id) {
  const a = await audioEnergy(page, id);
  await new Promise((r) => setTimeout(r, 1500));
  const b = await audioEnergy(page, id);
  return a !== null && b !== null && b - a > 1e-6;
}

sc.step('(c) the host mutes a guest, who cannot unmute until the host allows it', async () => {
  await tile(A.page, B.id).and(A.page.locator('[data-audio="on"]')).waitFor();
  await pollUntil(() => audible(A.page, B.id), { timeoutMs: T.media, what: "A: B's sound arrives (audio energy grows)" });
  await moderate(A.page, B.id, 'mute');
  await B.page.locator('#mic-button[aria-pressed="false"]').waitFor();
  await lastNotice(B.page, /Dana muted you/, 'B');
  await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-audio="off"]`).waitFor();
  assert.equal(await B.page.evaluate(() => window.__huddle.state.audio), false);
  // The microphone track sends silence now: nothing enabled.
  assert.equal(await B.page.evaluate(() => window.__huddle.media.micTrack?.enabled ?? false), false);
  await pollUntil(async () => !(await audible(A.page, B.id)), { timeoutMs: T.ui, what: "A: B's sound stops (audio energy stays)" });

  await button(B.page, 'Microphone').click();
  const text = await banner(B.page, 'muted_by_host', 'B');
  assert.match(text, /A host turned this off/);
  assert.equal(await B.page.locator('#mic-button').getAttribute('aria-pressed'), 'false');

  await setSwitch(A.page, 'setting-allow-unmute', true);
  await lastNotice(B.page, /You may unmute yourself again/, 'B');
  await button(B.page, 'Microphone').click();
  await B.page.locator('#mic-button[aria-pressed="true"]').waitFor();
  await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-audio="on"]`).waitFor();
  await pollUntil(() => audible(A.page, B.id), { timeoutMs: T.media, what: "A: B's sound arrives again" });
});

sc.step('(d) a raised hand and a reaction show on the other side', async () => {
  await B.page.locator('#hand-button').click();
  await B.page.locator('#hand-button[aria-pressed="true"]').waitFor();
  await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-hand="up"] .tile-hand`).waitFor();
  await lastNotice(A.page, /Bob raised a hand/, 'A');
  // Raised hands first in the people list.
  await openPeople(A.page);
  await pollUntil(() => A.page.evaluate((id) => document.querySelector('#participant-list li')?.dataset.peerId === id, B.id), { what: 'A: Bob first in the list' });
  await C.page.locator(`#tiles .tile[data-peer-id="${B.id}"][data-hand="up"]`).waitFor();

  await B.page.locator('#react-button').click();
  await B.page.locator('#react-menu button[data-emoji="👏"]').click();
  await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"] .tile-reaction[data-emoji="👏"]`).waitFor({ timeout: T.ui });
  await B.page.locator('#tiles .tile[data-self="true"] .tile-reaction[data-emoji="👏"]').waitFor({ timeout: T.ui });
});

sc.step('the host makes a guest co-host, who then gets the host controls, and back', async () => {
  await moderate(A.page, B.id, 'role_cohost');
  await A.page.locator(`#participant-list li[data-peer-id="${B.id}"][data-role="cohost"] .person-role`).waitFor();
  await lastNotice(B.page, /You are now a co-host/, 'B');
  await openPeople(B.page);
  await B.page.locator('#meeting-settings').waitFor({ state: 'visible' });
  assert.ok(await B.page.locator('#end-meeting').isHidden(), 'a co-host is offered "End meeting for all"');
  assert.equal(await B.page.locator(`#participant-list li[data-peer-id="${A.id}"] .person-more`).count(), 0, 'a co-host has a menu for the host');
  await B.page.locator(`#participant-list li[data-peer-id="${C.id}"] .person-more`).waitFor();
  await B.page.locator(`#tiles .tile[data-self="true"] .tile-role[data-role="cohost"]`).waitFor();
  await moderate(A.page, B.id, 'role_participant');
  await B.page.locator('#meeting-settings').waitFor({ state: 'hidden' });
  await B.page.locator('#people-panel .panel-close').click();
});

sc.step('screenshots: the host with a knocker, the waiting view, the password prompt (English, Korean; wide, phone)', async () => {
  // A protocol-level guest knocks while the waiting room is on.
  await setSwitch(A.page, 'setting-waiting-room', true);
  const ws = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  sockets.push(ws);
  await ws.next('welcome');
  ws.send({ type: 'join', protocol: 1, room: ROOM, name: 'Sora', audio: false, video: false, password: PASSWORD });
  await ws.next('waiting');
  await A.page.locator('#waiting-list li', { hasText: 'Sora' }).waitFor();
  // A second page of C's browser shows the guest's side: the password prompt and the waiting view.
  const guest = await C.newPage({ viewport: { width: 1280, height: 800 }, tag: 'guest' });
  await enterRoom(guest, sc.server.url, { name: 'Mina', room: ROOM });
  await pressJoin(guest);
  await guest.locator('#password-field[data-code="password_required"]').waitFor();
  for (const lang of ['en', 'ko']) {
    for (const [w, h, tag] of [[1280, 800, 'wide'], [390, 844, 'phone']]) {
      await Promise.all([A.page, guest].map((p) => p.setViewportSize({ width: w, height: h })));
      await Promise.all([A.page, B.page, guest].map((p) => p.locator('#lang-select').selectOption(lang)));
      await openPeople(A.page);
      await B.page.locator('#react-button').click();
      await B.page.locator('#react-menu button[data-emoji="🎉"]').click();
      await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"] .tile-reaction`).first().waitFor();
      await A.page.screenshot({ path: path.join(shotsDir, `host-panel-${lang}-${tag}.png`) });
      const overflow = await A.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `the host's page scrolls sideways by ${overflow}px (${lang} ${tag})`);
      await A.page.locator(`#participant-list li[data-peer-id="${B.id}"] .person-more`).click();
      await A.page.locator('#person-menu button[data-action="ban"]').waitFor();
      await A.page.screenshot({ path: path.join(shotsDir, `person-menu-${lang}-${tag}.png`) });
      await A.page.keyboard.press('Escape');
      await A.page.locator('#person-menu').waitFor({ state: 'hidden' });
      assert.ok(await A.page.locator('#people-panel').isVisible(), 'Escape in the menu closed the people panel too');
      await A.page.locator('#people-panel .panel-close').click();
      await B.page.locator('#react-button').click();
      await B.page.locator('#react-menu button[data-emoji="❤️"]').click();
      await A.page.locator(`#tiles .tile[data-peer-id="${B.id}"] .tile-reaction`).first().waitFor();
      await A.page.screenshot({ path: path.join(shotsDir, `tiles-hand-reaction-${lang}-${tag}.png`) });
      await B.page.setViewportSize({ width: w, height: h });
      await B.page.locator('#react-button').click();
      await B.page.screenshot({ path: path.join(shotsDir, `react-menu-${lang}-${tag}.png`) });
      const menuBox = await B.page.locator('#react-menu').boundingBox();
      assert.ok(menuBox && menuBox.x >= 0 && menuBox.x + menuBox.width <= w, `the reactions menu leaves the window: ${JSON.stringify(menuBox)} (${tag})`);
      await B.page.keyboard.press('Escape');
      await B.page.locator('#react-menu').waitFor({ state: 'hidden' });
      await guest.screenshot({ path: path.join(shotsDir, `password-${lang}-${tag}.png`) });
      const o2 = await guest.evaluate(() => [document.documentElement.scrollWidth - window.innerWidth, document.scrollingElement.scrollLeft, document.body.scrollLeft, document.querySelector('main').scrollLeft]);
      assert.ok(o2[0] <= 1 && !o2[1] && !o2[2] && !o2[3], `the password prompt scrolls sideways: ${JSON.stringify(o2)} (${lang} ${tag})`);
    }
  }
  // The waiting view (the password is right this time).
  await guest.locator('#password-input').fill(PASSWORD);
  await guest.locator('#join-button').click();
  await waitForView(guest, 'waiting');
  for (const lang of ['en', 'ko']) {
    for (const [w, h, tag] of [[1280, 800, 'wide'], [390, 844, 'phone']]) {
      await guest.setViewportSize({ width: w, height: h });
      await guest.locator('#lang-select').selectOption(lang);
      await guest.screenshot({ path: path.join(shotsDir, `waiting-${lang}-${tag}.png`) });
      const overflow = await guest.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `the waiting view scrolls sideways by ${overflow}px (${lang} ${tag})`);
    }
  }
  await guest.locator('#lang-select').selectOption('en');
  await guest.locator('#waiting-cancel').click();
  await waitForView(guest, 'prejoin');
  await guest.context().close();
  ws.close();
  await A.page.setViewportSize({ width: 1280, height: 800 });
  await B.page.setViewportSize({ width: 1280, height: 800 });
  await Promise.all([A.page, B.page].map((p) => p.locator('#lang-select').selectOption('en')));
  await setSwitch(A.page, 'setting-waiting-room', false);
  await A.page.locator('#waiting-section').waitFor({ state: 'hidden' });
});

sc.step('(h) private rooms stay off the list; revoked invites and wrong passwords are explained', async () => {
  // The room has a password: off the public list, and the switch says why it cannot be turned on.
  await openPeople(A.page);
  await A.page.locator('#meeting-settings[data-listed="false"]').waitFor({ state: 'attached' });
  assert.ok(await A.page.locator('#setting-listed').isDisabled(), 'the list switch is enabled in a room with a password');
  const watcher = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
  sockets.push(watcher);
  await watcher.next('welcome');
  watcher.send({ type: 'watch_rooms' });
  const listed = await watcher.next('rooms');
  assert.ok(!listed.rooms.some((r) => r.name === ROOM), `the room with a password is listed: ${JSON.stringify(listed.rooms)}`);
  watcher.close();

  // Revoking: the link C used in (b) no longer opens the room, and the page says so.
  await A.page.locator('#invite-revoke').click();
  await A.page.locator('#confirm-dialog[open]').waitFor();
  await A.page.locator('#confirm-ok').click();
  await lastNotice(A.page, /Invite links revoked/, 'A');
  assert.ok(await A.page.locator('#invite-link').isHidden(), 'the revoked link is still shown');
  const guest = await C.newPage({ viewport: { width: 1280, height: 800 }, tag: 'revoked' });
  await guest.goto(firstInvite, { waitUntil: 'domcontentloaded' });
  await waitForView(guest, 'prejoin');
  await guest.locator('#name-input').fill('Mina');
  await pressJoin(guest);
  assert.match(await banner(guest, 'invite_revoked', 'guest'), /This invitation link no longer works/);
  for (const lang of ['en', 'ko']) {
    await guest.locator('#lang-select').selectOption(lang);
    await guest.screenshot({ path: path.join(shotsDir, `invite-revoked-${lang}-wide.png`) });
  }
  await guest.locator('#lang-select').selectOption('en');
  // Without the dead link, the page asks for the password, as for anyone.
  await guest.locator('#join-button').click();
  await guest.locator('#password-field[data-code="password_required"]').waitFor({ state: 'visible' });

  // Twelve wrong passwords at once (protocol-level guessers): the room's allowance of ten is
  // spent, the hosts hear of it, and joins with a password — the right one too — are paused for a
  // few seconds. (All at once, so that a slow machine cannot refill the allowance meanwhile.)
  const guessers = [];
  for (let i = 0; i < 12; i++) {
    const g = await connectWs(sc.server.wsUrl, { origin: sc.server.url });
    sockets.push(g);
    await g.next('welcome');
    guessers.push(g);
  }
  guessers.forEach((g, i) => g.send({ type: 'join', protocol: 1, room: ROOM, name: 'Guesser', audio: false, video: false, password: `guess ${i}` }));
  await guest.locator('#password-input').fill(PASSWORD);
  await guest.locator('#join-button').click();
  const codes = await Promise.all(guessers.map((g) => g.next('error').then((m) => m.code)));
  assert.ok(codes.every((c) => c === 'wrong_password' || c === 'too_many_attempts'), JSON.stringify(codes));
  assert.ok(codes.filter((c) => c === 'wrong_password').length <= 10, `more than ten guesses checked: ${JSON.stringify(codes)}`);
  for (const g of guessers) g.close();
  await lastNotice(A.page, /Someone is guessing this meeting’s password \(wrong passwords: \d+\)/, 'A');
  await A.page.locator('#password-attempts').waitFor({ state: 'visible' });
  await guest.locator('#password-field[data-code="too_many_attempts"]').waitFor({ state: 'visible' });
  assert.match(await guest.locator('#password-hint').innerText(), /Too many wrong passwords/);
  for (const lang of ['en', 'ko']) {
    for (const [w, h, tag] of [[1280, 800, 'wide'], [390, 844, 'phone']]) {
      await Promise.all([A.page, guest].map((p) => p.setViewportSize({ width: w, height: h })));
      await Promise.all([A.page, guest].map((p) => p.locator('#lang-select').selectOption(lang)));
      await openPeople(A.page);
      await A.page.locator('#password-attempts').scrollIntoViewIfNeeded();
      await A.page.screenshot({ path: path.join(shotsDir, `host-settings-${lang}-${tag}.png`) });
      const overflow = await A.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `the host's page scrolls sideways by ${overflow}px (${lang} ${tag})`);
      await guest.screenshot({ path: path.join(shotsDir, `password-paused-${lang}-${tag}.png`) });
    }
  }
  await guest.context().close();
  await A.page.setViewportSize({ width: 1280, height: 800 });
  await A.page.locator('#lang-select').selectOption('en');
  await A.page.locator('#people-panel .panel-close').click();
});

sc.step('(e) the host removes and bans a guest, whose rejoin is refused', async () => {
  await moderate(A.page, C.id, 'ban');
  await A.page.locator('#confirm-dialog[open]').waitFor();
  await A.page.locator('#confirm-ok').click();
  const text = await banner(C.page, 'removed_ban', 'C');
  assert.match(text, /A host removed you from the meeting; you cannot rejoin/);
  await waitForView(C.page, 'prejoin');
  await A.page.locator(`#tiles .tile[data-peer-id="${C.id}"]`).waitFor({ state: 'detached' });
  await C.page.locator('#join-button').click();
  assert.match(await banner(C.page, 'banned', 'C'), /cannot rejoin/);
});

sc.step('(f) the host ends the meeting for everyone', async () => {
  await openPeople(A.page);
  await A.page.locator('#end-meeting').click();
  await A.page.locator('#confirm-ok').click();
  for (const [p, who] of [[A, 'A'], [B, 'B']]) {
    assert.match(await banner(p.page, 'ended', who), /The host ended the meeting/);
    await waitForView(p.page, 'prejoin');
  }
});

sc.step('(i) a waiting room whose meeting empties: the guest is told, not let in as host', async () => {
  await joinFromPrejoin(A.page);
  await openPeople(A.page);
  await setSwitch(A.page, 'setting-waiting-room', true);
  await B.page.locator('#join-button').click();
  await waitForView(B.page, 'waiting');
  await A.page.locator('#waiting-list li', { hasText: 'Bob' }).waitFor();
  await button(A.page, 'Leave').click();
  assert.match(await banner(B.page, 'room_closed', 'B'), /Everyone left before a host let you in/);
  await waitForView(B.page, 'prejoin');
  for (const lang of ['en', 'ko']) {
    await B.page.locator('#lang-select').selectOption(lang);
    await B.page.screenshot({ path: path.join(shotsDir, `room-closed-${lang}-wide.png`) });
  }
  await B.page.locator('#lang-select').selectOption('en');
});

sc.step('no uncaught page errors', async () => {
  for (const p of sc.participants) {
    const errors = p.log.filter((l) => l.includes('pageerror') || l.includes('handler for'));
    assert.deepEqual(errors, [], `${p.who} had page errors`);
  }
}, { always: true });
