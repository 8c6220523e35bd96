// Breakout rooms through the real server and the real page (issue 19): five Chromiums, one per
// person, each with its own coloured fake camera — the host Hana (magenta "H") and Ari (red),
// Ben (green), Cleo (blue), Dev (yellow). Default topology (`auto`: the five-person main room
// goes through the SFU, a pair peer-to-peer) and the built-in TURN server, as a plain start has.
//
// 1. Everyone joins one room; the host says "before" in the main room's chat.
// 2. The host opens the people panel's Breakout rooms section, sets two rooms, puts Ari and Ben in
//    room 1 and Cleo and Dev in room 2 with the per-person selects, leaves "Move people
//    automatically" on, sets a 5 s countdown and clicks "Open rooms".
// 3. Each pair is in its room (`state.breakout`), with exactly one remote tile whose picture has
//    the partner's colour (nearest of all five); the host is alone in the main room. Ari's chat
//    reaches Ben and nobody else.
// 4. The host's broadcast shows on all five pages (#breakout-message).
// 5. Cleo asks for help; the host's bar lists the request and its Join takes the host to room 2,
//    where the three decode each other's colours; the host goes back to the main room.
// 6. The host closes the rooms: all five show the countdown (#breakout-timer, data-closing), and
//    once it is over (awaited by watching `state.breakout`, not a sleep) all five are in the main
//    room, each decoding the four others' colours. The main chat still has "before"; Ari and Ben
//    read room 1's chat in its tab.
// Screenshots of the host's panel (setup: English wide, Korean phone; open: both languages, wide
// and phone; switched with #lang-select and the page's size): artifacts/breakout/ (or
// $BREAKOUT_SHOTS_DIR).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { startServer } from './lib/server.js';
import { launchParticipant, writeLogs } from './lib/browser.js';
import { makeTempDir, makeClip, PALETTE } from './lib/camera.js';
import { joinViaLanding, waitForRemoteTiles, expectEveryoneSeesEveryone, waitForRemoteVideo, waitForColour, pollUntil, button } from './lib/huddle.js';
import { sentence } from './lib/i18n.js';
import { Scenario } from './lib/scenario.js';
import { artifactsDir, T } from './lib/env.js';

const shotsDir = process.env.BREAKOUT_SHOTS_DIR || path.join(artifactsDir(), 'breakout');
const ROOM = 'breakout-e2e';
/** The countdown before the rooms close (short, to keep the test short). */
const CLOSE_SECONDS = 5;
const WIDE = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
/** The four participants' pages: small, to spare the two cores five Chromiums share. */
const SMALL = { width: 640, height: 400 };
const NAMES = { H: 'Hana', A: 'Ari', B: 'Ben', C: 'Cleo', D: 'Dev' };
const ROOM1 = sentence('en', 'breakout.defaultName', { n: 1 });
const ROOM2 = sentence('en', 'breakout.defaultName', { n: 2 });
const BEFORE = 'before';
const ROOM1_CHAT = 'hello from room 1';
const BROADCAST = 'Two minutes left in every room';

const sc = new Scenario('breakout');
let tmp, clips;
/** @type {import('./lib/browser.js').Participant} */ let H, A, B, C, D;
/** @type {import('./lib/browser.js').Participant[]} */ let P = [];
/** The host's rooms' closing time (`closingAt`) and when each page was back (step 6). */
let closingAt = 0;

before(async () => {
  mkdirSync(shotsDir, { recursive: true });
  tmp = makeTempDir();
  // Host: magenta with an "H"; the four others: red A, green B, blue C, yellow D.
  const specs = [{ ...PALETTE[4], label: 'H' }, ...PALETTE.slice(0, 4)];
  [sc.server, clips] = await Promise.all([
    startServer(),
    Promise.all(specs.map((s) => makeClip(tmp.dir, s))),
  ]);
  P = await Promise.all(clips.map((clip, i) => launchParticipant({
    who: `${clip.label}-${clip.colour}`, clip: clip.path, viewport: i === 0 ? WIDE : SMALL,
  })));
  P.forEach((p, i) => { p.clip = clips[i]; });
  [H, A, B, C, D] = P;
  sc.participants.push(...P);
});

after(async () => {
  writeLogs('breakout', sc.participants, sc.server);
  await sc.closeAll();
  await sc.server?.stop();
  tmp?.cleanup();
});

// ------------------------------------------------------------------ helpers

const pageState = (p) => p.page.evaluate(() => window.__huddle?.state ?? null);

/** Poll the page's `window.__huddle.state` until `pred` holds. */
async function waitForState(p, pred, what, timeoutMs = T.ui) {
  return pollUntil(async () => {
    const s = await pageState(p);
    return s && pred(s) ? s : { ok: false, breakout: s?.breakout, breakouts: s?.breakouts, topology: s?.topology, view: s?.view };
  }, { timeoutMs, intervalMs: 100, what: `${p.who}: ${what}` });
}

/** The texts of the `.chat-msg` items in `sel`. */
const chatTexts = (p, sel = '#chat-log') => p.page.evaluate((sel) =>
  [...document.querySelectorAll(`${sel} .chat-msg .chat-text`)].map((e) => e.textContent.trim()), sel);

async function waitForChat(p, text, sel = '#chat-log') {
  return pollUntil(async () => {
    const got = await chatTexts(p, sel);
    return got.includes(text) ? got : { ok: false, got };
  }, { what: `${p.who}: "${text}" in ${sel}` });
}

/** Open a side panel with its toggle button unless `selector` already shows. */
async function openPanel(page, buttonName, selector) {
  if (await page.locator(selector).isVisible()) return;
  await button(page, buttonName).click();
  await page.locator(selector).waitFor({ state: 'visible', timeout: T.ui })
    .catch(() => { throw new Error(`${selector} is not visible after clicking "${buttonName}"`); });
}

/** Close whichever side panel is open (on a small page it covers the whole call). */
async function closePanels(page) {
  for (const panel of ['#chat-panel', '#people-panel']) {
    if (await page.locator(panel).isHidden()) continue;
    await page.locator(`${panel} .panel-close`).click();
    await page.locator(panel).waitFor({ state: 'hidden' });
  }
}

/** Whether the middle of `sel` is `sel` itself (or inside it) rather than something over it. */
const onTop = (page, sel) => page.evaluate((sel) => {
  const e = document.querySelector(sel);
  const r = e.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return { onTop: !!hit && e.contains(hit), over: hit ? `${hit.tagName.toLowerCase()}#${hit.id}.${[...hit.classList].join('.')}` : null };
}, sel);

async function sendChat(p, text) {
  await openPanel(p.page, 'Chat', '#chat-input');
  await p.page.locator('#chat-input').fill(text);
  await button(p.page, 'Send').click();
}

/** `viewer` shows exactly the tiles of `others` and decodes each one's colour (nearest of all five). */
async function seesExactly(viewer, others, note) {
  await waitForRemoteTiles(viewer.page, others.map((o) => o.id)).catch((e) => { throw new Error(`${viewer.who}: ${e.message}`); });
  for (const o of others) {
    const what = `${viewer.who} watching ${o.who}`;
    await waitForRemoteVideo(viewer.page, o.id).catch((e) => { throw new Error(`${what}: ${e.message}`); });
    const seen = await waitForColour(viewer.page, o.id, o.clip, clips, { what });
    note(`${what}: rgb ${JSON.stringify(seen.rgb)} (${seen.nearest}, distance ${seen.distance})`);
  }
}

/** Everyone's view of the breakout bar. */
const barOf = (p) => p.page.evaluate(() => {
  const bar = document.querySelector('#breakout-bar');
  const vis = (sel) => { const e = document.querySelector(sel); return !!e && !e.hidden && e.getClientRects().length > 0; };
  return {
    shown: vis('#breakout-bar'), room: bar.dataset.room, open: bar.dataset.open,
    where: vis('#breakout-where') ? document.querySelector('#breakout-where').textContent.trim() : null,
    // (The control bar's call info is not laid out on small pages: the badge's own hidden.)
    badge: document.querySelector('#room-breakout').hidden ? null : document.querySelector('#room-breakout').textContent.trim(),
    timer: vis('#breakout-timer') ? document.querySelector('#breakout-timer').textContent.trim() : null,
    closing: document.querySelector('#breakout-timer').dataset.closing ?? null,
  };
});

/** A screenshot of the host's page with the breakout section in view; checks it lies within the page. */
async function panelShot(name, { viewport, lang }) {
  const page = H.page;
  await page.setViewportSize(viewport);
  if (lang) {
    await page.locator('#lang-select').selectOption(lang);
    const title = sentence(lang, 'breakout.title');
    await pollUntil(async () => (await page.locator('#breakout-title').textContent()).trim() === title,
      { what: `#breakout-title reads ${JSON.stringify(title)} after switching to ${lang}` });
  }
  // (The section's top at the top of the panel: its heading and first controls in view.)
  await page.locator('#breakout-section').evaluate((e) => e.scrollIntoView({ block: 'start' }));
  const box = await page.locator('#breakout-section').boundingBox();
  assert.ok(box && box.width > 0 && box.x >= 0 && box.x + box.width <= viewport.width + 1,
    `${name}: #breakout-section lies outside the ${viewport.width}px page: ${JSON.stringify(box)}`);
  const file = path.join(shotsDir, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

// ------------------------------------------------------------------ steps

sc.step('five people join one room (through the SFU); the host says "before" in its chat', async (t) => {
  await joinViaLanding(H, sc.server.url, { name: NAMES.H, room: ROOM });
  await waitForState(H, (s) => s.role === 'host', 'the first in is the host');
  await Promise.all([A, B, C, D].map((p) => joinViaLanding(p, sc.server.url, { name: NAMES[p.clip.label], room: ROOM })));
  assert.equal(new Set(P.map((p) => p.id)).size, 5, 'peer ids are not distinct');
  await Promise.all(P.map((p) => waitForRemoteTiles(p.page, P.filter((q) => q !== p).map((q) => q.id))
    .catch((e) => { throw new Error(`${p.who}: ${e.message}`); })));
  for (const p of P) {
    const s = await waitForState(p, (s) => s.topology === 'sfu', 'the five-person room goes through the SFU');
    assert.equal(s.breakout, null, `${p.who}: state.breakout before any rooms open`);
    assert.equal(s.breakouts, null, `${p.who}: state.breakouts before any rooms open`);
    assert.ok(await p.page.locator('#breakout-bar').isHidden(), `${p.who}: #breakout-bar shows before any rooms open`);
  }
  // (The host decodes the four others in the main room.)
  await seesExactly(H, [A, B, C, D], (l) => t.diagnostic(l));
  await sendChat(H, BEFORE);
  await Promise.all(P.map((p) => waitForChat(p, BEFORE)));
}, { critical: true, timeout: 120_000 });

sc.step('the host sets up two rooms (A+B, C+D) in the Breakout rooms panel, a 5 s countdown, and opens them', async () => {
  const page = H.page;
  await openPanel(page, 'Participants', '#people-panel');
  const section = page.locator('#breakout-section');
  await section.waitFor({ state: 'visible' });
  assert.equal(await section.getAttribute('data-open'), 'false');
  // Participants have no such section (in their people panel, closed here: on their small
  // pages it would cover the call).
  for (const p of [A, B, C, D]) {
    assert.equal(await p.page.locator('#breakout-section').evaluate((e) => e.hidden), true, `${p.who}: a participant has #breakout-section`);
  }
  await page.getByLabel(sentence('en', 'breakout.countLabel'), { exact: true }).fill('2');
  await pollUntil(async () => (await page.locator('#breakout-names input.breakout-name-input').count()) === 2,
    { what: 'two room-name inputs' });
  // Everyone else is listed, each with a select.
  const listed = await page.locator('#breakout-people li[data-peer-id]').evaluateAll((els) => els.map((e) => e.dataset.peerId).sort());
  assert.deepEqual(listed, [A, B, C, D].map((p) => p.id).sort(), '#breakout-people lists the four others');
  for (const [p, room] of [[A, ROOM1], [B, ROOM1], [C, ROOM2], [D, ROOM2]]) {
    const sel = page.getByLabel(sentence('en', 'breakout.roomFor', { name: p.name }), { exact: true });
    await sel.selectOption({ label: room });
  }
  // The names' rows count who is assigned.
  await pollUntil(async () => {
    const counts = await page.locator('#breakout-names li').evaluateAll((els) => els.map((e) => e.dataset.count));
    return JSON.stringify(counts) === '["2","2"]' ? counts : { ok: false, counts };
  }, { what: 'two people counted in each room' });
  assert.ok(await page.locator('#breakout-auto-move').isChecked(), '"Move people automatically" is on at first');
  assert.ok(await page.locator('#breakout-allow-return').isChecked(), '"Let participants return" is on at first');
  await page.getByLabel(sentence('en', 'breakout.closeSeconds'), { exact: true }).fill(String(CLOSE_SECONDS));
  await panelShot('setup-en-wide', { viewport: WIDE });
  await panelShot('setup-ko-phone', { viewport: PHONE, lang: 'ko' });
  // (The plan survives the language switch; English and the wide page again to open the rooms.)
  await page.locator('#lang-select').selectOption('en');
  await page.setViewportSize(WIDE);
  await pollUntil(async () => (await page.locator('#breakout-title').textContent()).trim() === sentence('en', 'breakout.title'),
    { what: 'the host\'s page back in English' });
  for (const [p, room] of [[A, '1'], [B, '1'], [C, '2'], [D, '2']]) {
    assert.equal(await page.locator(`#breakout-people li[data-peer-id="${p.id}"] select.breakout-pick`).inputValue(), room,
      `${p.who}'s room after the language switch`);
  }
  await button(page, sentence('en', 'breakout.open')).click();
  await page.locator('#breakout-section[data-open="true"] #breakout-live').waitFor({ state: 'visible' });
}, { critical: true });

sc.step('each pair is in its room and decodes only its partner; the host is alone in the main room', async (t) => {
  const where = [[A, 1, ROOM1], [B, 1, ROOM1], [C, 2, ROOM2], [D, 2, ROOM2]];
  await Promise.all(where.map(([p, index, name]) =>
    waitForState(p, (s) => s.breakout?.index === index && s.breakout?.name === name && s.breakouts?.open === true && s.breakouts.assigned === index,
      `state.breakout {index: ${index}, name: ${name}}, assigned ${index}`)));
  const hs = await waitForState(H, (s) => s.breakouts?.open === true, 'state.breakouts.open');
  assert.equal(hs.breakout, null, 'the host stays in the main room');
  assert.deepEqual(hs.breakouts.main.map((m) => m.id), [H.id], 'the host\'s breakouts.main');
  assert.deepEqual(hs.breakouts.rooms.map((r) => [r.index, r.name, r.count, r.members.map((m) => m.id).sort()]),
    [[1, ROOM1, 2, [A.id, B.id].sort()], [2, ROOM2, 2, [C.id, D.id].sort()]], 'the host\'s breakouts.rooms');
  // Participants get names and head counts only.
  const as = await pageState(A);
  assert.ok(as.breakouts.rooms.every((r) => r.members === undefined), 'a participant was sent the rooms\' members');
  // The host's panel: the main room and the two rooms, with their people.
  await pollUntil(async () => {
    const rooms = await H.page.locator('#breakout-rooms li.breakout-room').evaluateAll((els) => els.map((e) => ({
      index: e.dataset.index, count: e.dataset.count, here: e.dataset.here ?? null,
      members: [...e.querySelectorAll('.breakout-members li[data-peer-id]')].map((m) => m.dataset.peerId).sort(),
    })));
    const want = [
      { index: '0', count: '1', here: 'true', members: [H.id] },
      { index: '1', count: '2', here: null, members: [A.id, B.id].sort() },
      { index: '2', count: '2', here: null, members: [C.id, D.id].sort() },
    ];
    return JSON.stringify(rooms) === JSON.stringify(want) ? rooms : { ok: false, rooms };
  }, { what: 'the host\'s #breakout-rooms: main (host), room 1 (A, B), room 2 (C, D)' });
  // The bar: where each one is.
  for (const [p, index, name] of where) {
    const bar = await barOf(p);
    assert.equal(bar.shown, true, `${p.who}: #breakout-bar hidden`);
    assert.equal(bar.room, String(index), `${p.who}: #breakout-bar data-room`);
    assert.equal(bar.where, sentence('en', 'breakout.where', { room: name }), `${p.who}: #breakout-where`);
    assert.equal(bar.badge, name, `${p.who}: #room-breakout`);
    assert.equal(bar.timer, sentence('en', 'breakout.openNoLimit'), `${p.who}: #breakout-timer without a time limit`);
  }
  const hbar = await barOf(H);
  assert.equal(hbar.room, '0');
  assert.equal(hbar.where, null, 'the host in the main room shows no #breakout-where');
  // Tiles and colours: exactly the partner, in the partner's colour (nearest of all five clips).
  await Promise.all([
    waitForRemoteTiles(H.page, []).catch((e) => { throw new Error(`${H.who}: ${e.message}`); }),
    ...[[A, B], [B, A], [C, D], [D, C]].map(([p, q]) => waitForRemoteTiles(p.page, [q.id]).catch((e) => { throw new Error(`${p.who}: ${e.message}`); })),
  ]);
  await Promise.all([expectEveryoneSeesEveryone([A, B], clips, (l) => t.diagnostic(l)), expectEveryoneSeesEveryone([C, D], clips, (l) => t.diagnostic(l))]);
  // A room's own chat: room 1 starts empty (the main room's "before" is not in it).
  assert.ok(!(await chatTexts(A)).includes(BEFORE), 'room 1\'s #chat-log holds the main room\'s chat');
}, { critical: true, timeout: 90_000 });

sc.step('a chat sent in room 1 reaches Ben, and not Cleo, Dev or the host', async () => {
  await sendChat(A, ROOM1_CHAT);
  await waitForChat(B, ROOM1_CHAT);
  // Room 2 chats too, and the host's main room: once those arrive, A's would have as well.
  await sendChat(C, 'hello from room 2');
  await waitForChat(D, 'hello from room 2');
  await sendChat(H, 'main room only');
  await waitForChat(H, 'main room only');
  for (const p of [C, D, H]) {
    const got = await chatTexts(p);
    assert.ok(!got.includes(ROOM1_CHAT), `${p.who} got room 1's chat: ${JSON.stringify(got)}`);
  }
  for (const p of [A, B]) {
    const got = await chatTexts(p);
    assert.ok(!got.includes('hello from room 2') && !got.includes('main room only'), `${p.who} got another room's chat: ${JSON.stringify(got)}`);
  }
  assert.ok(!(await chatTexts(C)).includes('main room only'), 'room 2 got the main room\'s chat');
});

sc.step('screenshots of the host\'s open breakout panel: wide and phone, English and Korean', async (t) => {
  await openPanel(H.page, 'Participants', '#people-panel');
  for (const [name, viewport, lang] of [['open-en-wide', WIDE, 'en'], ['open-en-phone', PHONE, null], ['open-ko-phone', PHONE, 'ko'], ['open-ko-wide', WIDE, null]]) {
    t.diagnostic(await panelShot(name, { viewport, lang }));
  }
  // The Korean panel says its things in Korean.
  const ko = await H.page.locator('#breakout-close').textContent();
  assert.equal(ko.trim(), sentence('ko', 'breakout.close'));
  // Back to English and the wide page for the rest.
  await H.page.locator('#lang-select').selectOption('en');
  await pollUntil(async () => (await H.page.locator('#breakout-close').textContent()).trim() === sentence('en', 'breakout.close'),
    { what: 'the host\'s page back in English' });
  await H.page.setViewportSize(WIDE);
});

sc.step('the host\'s broadcast shows on all five pages', async (t) => {
  await openPanel(H.page, 'Participants', '#people-panel');
  await H.page.getByLabel(sentence('en', 'breakout.broadcastLabel'), { exact: true }).fill(BROADCAST);
  await button(H.page, sentence('en', 'breakout.broadcastSend')).click();
  const from = sentence('en', 'breakout.messageFrom', { name: NAMES.H });
  await Promise.all(P.map(async (p) => {
    await p.page.locator('#breakout-message').waitFor({ state: 'visible' })
      .catch(() => { throw new Error(`${p.who}: #breakout-message not shown`); });
    // (Ari, Ben and Cleo still have the chat panel open from the last step: on their small pages
    // it covers the whole call, but not the broadcast.)
    const top = await onTop(p.page, '#breakout-message');
    assert.ok(top.onTop, `${p.who}: #breakout-message is under ${top.over}`);
    assert.equal((await p.page.locator('#breakout-message-text').textContent()).trim(), BROADCAST, `${p.who}: #breakout-message-text`);
    assert.equal((await p.page.locator('#breakout-message-from').textContent()).trim(), from, `${p.who}: #breakout-message-from`);
    assert.equal(await p.page.locator('#breakout-message').getAttribute('role'), 'alert');
    await p.page.locator('#breakout-message-close').click();
    await p.page.locator('#breakout-message').waitFor({ state: 'hidden' });
  }));
});

sc.step('Cleo asks for help; the host joins room 2 from the request, sees Cleo and Dev (and they the host), then goes back', async (t) => {
  await closePanels(C.page);
  await C.page.locator('#breakout-help').click();
  await C.page.locator('#breakout-help[data-asked="true"]:disabled').waitFor()
    .catch(() => { throw new Error('Cleo\'s #breakout-help is not disabled with data-asked="true" after asking'); });
  assert.equal((await C.page.locator('#breakout-help').textContent()).trim(), sentence('en', 'breakout.helpAsked'));
  // The host: the request in the bar, and "Asks for help" on room 2 in the panel.
  const req = H.page.locator(`#breakout-help-list li[data-peer-id="${C.id}"][data-room="2"]`);
  await req.waitFor({ state: 'visible' }).catch(() => { throw new Error('the host\'s #breakout-help-list shows no request from Cleo in room 2'); });
  assert.equal((await req.locator('.breakout-help-text').textContent()).trim(), sentence('en', 'breakout.helpRequest', { name: NAMES.C, room: ROOM2 }));
  await H.page.locator('#breakout-rooms li.breakout-room[data-index="2"] .breakout-room-help').waitFor({ state: 'visible' })
    .catch(() => { throw new Error('the host\'s panel shows no "Asks for help" on room 2'); });
  await req.locator('.breakout-help-join').click();
  const hs = await waitForState(H, (s) => s.breakout?.index === 2, 'the host in room 2 (a visit)', T.ui);
  assert.equal(hs.breakout.name, ROOM2);
  // (The request is answered: gone from the host's list.)
  assert.equal(await H.page.locator(`#breakout-help-list li[data-peer-id="${C.id}"]`).count(), 0, 'the answered request stays listed');
  await Promise.all([
    seesExactly(H, [C, D], (l) => t.diagnostic(l)),
    seesExactly(C, [D, H], (l) => t.diagnostic(l)),
    seesExactly(D, [C, H], (l) => t.diagnostic(l)),
  ]);
  // Room 1 did not notice.
  for (const [p, q] of [[A, B], [B, A]]) await waitForRemoteTiles(p.page, [q.id]).catch((e) => { throw new Error(`${p.who}: ${e.message}`); });
  // The host's panel marks room 2 as where the host is; Back to main room.
  await H.page.locator('#breakout-rooms li.breakout-room[data-index="2"][data-here="true"]').waitFor({ state: 'attached' });
  await H.page.locator('#breakout-back').click();
  await waitForState(H, (s) => s.breakout === null && s.breakouts?.open === true, 'the host back in the main room');
  await Promise.all([
    waitForRemoteTiles(H.page, []).catch((e) => { throw new Error(`${H.who}: ${e.message}`); }),
    ...[[C, D], [D, C]].map(([p, q]) => waitForRemoteTiles(p.page, [q.id]).catch((e) => { throw new Error(`${p.who}: ${e.message}`); })),
  ]);
  // Their call goes on without the host.
  await Promise.all([seesExactly(C, [D], (l) => t.diagnostic(l)), seesExactly(D, [C], (l) => t.diagnostic(l))]);
}, { critical: true, timeout: 120_000 });

sc.step('the host closes the rooms: all five see the countdown, then all are back in the main room decoding the four others', async (t) => {
  const t0 = Date.now();
  await H.page.locator('#breakout-close').click();
  // Everyone shows the countdown (before it ends).
  const countdown = new RegExp(`^${sentence('en', 'breakout.closingIn', { time: 'TIME' }).replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace('TIME', '0:0[0-5]')}$`);
  const shown = await Promise.all(P.map(async (p) => {
    await p.page.locator('#breakout-timer[data-closing="true"]').waitFor({ state: 'visible', timeout: CLOSE_SECONDS * 1000 })
      .catch(() => { throw new Error(`${p.who}: #breakout-timer with data-closing="true" not shown within the countdown`); });
    const text = (await p.page.locator('#breakout-timer').textContent()).trim();
    const s = await pageState(p);
    return { p, text, closingAt: s.breakouts?.closingAt, at: Date.now() };
  }));
  closingAt = shown[0].closingAt;
  assert.ok(closingAt > 0, 'state.breakouts.closingAt set');
  for (const { p, text, closingAt: c, at } of shown) {
    t.diagnostic(`${p.who}: "${text}" ${((c - at) / 1000).toFixed(1)} s before closingAt`);
    assert.equal(c, closingAt, `${p.who}: closingAt differs from the host's`);
    if (at < closingAt - 1000) assert.match(text, countdown, `${p.who}: #breakout-timer text`);
  }
  assert.ok(Math.abs(closingAt - (t0 + CLOSE_SECONDS * 1000)) < 3000, `closingAt ${closingAt - t0} ms after the click, not ~${CLOSE_SECONDS} s`);
  // The close buttons: "Close rooms" hidden while closing, "Close now" says so.
  assert.ok(await H.page.locator('#breakout-close').isHidden(), '#breakout-close still shows while closing');
  // The countdown goes down (the host's, watched until its text changes).
  const first = (await H.page.locator('#breakout-timer').textContent()).trim();
  await H.page.waitForFunction((f) => document.querySelector('#breakout-timer').textContent.trim() !== f, first, { timeout: T.ui });
  // Awaited: each page's move back (state.breakout null and the rooms closed), not before closingAt.
  const back = await Promise.all(P.map(async (p) => {
    await waitForState(p, (s) => s.breakout === null && s.breakouts?.open === false, 'back in the main room, rooms closed',
      Math.max(0, closingAt - Date.now()) + T.ui);
    return { p, at: Date.now() };
  }));
  for (const { p, at } of back) {
    t.diagnostic(`${p.who}: back ${at - closingAt} ms after closingAt`);
    assert.ok(at >= closingAt - 150, `${p.who}: back in the main room ${closingAt - at} ms before the countdown ended`);
  }
  for (const p of P) {
    const bar = await barOf(p);
    assert.equal(bar.shown, false, `${p.who}: #breakout-bar still shown after the rooms closed: ${JSON.stringify(bar)}`);
    assert.equal(bar.badge, null, `${p.who}: #room-breakout still shown`);
  }
  await Promise.all(P.map((p) => waitForRemoteTiles(p.page, P.filter((q) => q !== p).map((q) => q.id))
    .catch((e) => { throw new Error(`${p.who}: ${e.message}`); })));
  await Promise.all(P.map((p) => waitForState(p, (s) => s.topology === 'sfu', 'the five again through the SFU')));
  await expectEveryoneSeesEveryone(P, clips, (l) => t.diagnostic(l));
}, { critical: true, timeout: 180_000 });

sc.step('the main chat still has "before"; Ari and Ben read room 1\'s chat in its tab', async () => {
  for (const p of P) {
    const got = await waitForChat(p, BEFORE);
    assert.ok(got.includes('main room only'), `${p.who}: the main room's chat lost the host's message: ${JSON.stringify(got)}`);
    assert.ok(!got.includes(ROOM1_CHAT), `${p.who}: room 1's chat is in the main #chat-log`);
  }
  for (const p of [A, B]) {
    await openPanel(p.page, 'Chat', '#chat-input');
    const tab = p.page.locator('#chat-tabs [role="tab"][data-chat-room="1"]');
    await tab.waitFor({ state: 'visible' }).catch(() => { throw new Error(`${p.who}: no chat tab for room 1`); });
    assert.equal((await tab.textContent()).trim(), ROOM1);
    await tab.click();
    assert.equal(await tab.getAttribute('aria-selected'), 'true');
    await p.page.locator('#breakout-chat-log[data-room="1"]').waitFor({ state: 'visible' });
    assert.ok(await p.page.locator('#chat-log').isHidden(), `${p.who}: #chat-log still shows beside room 1's`);
    const got = await chatTexts(p, '#breakout-chat-log');
    assert.deepEqual(got, [ROOM1_CHAT], `${p.who}: room 1's chat`);
    assert.equal((await p.page.locator('#breakout-chat-note').textContent()).trim(), sentence('en', 'breakout.chatNote', { room: ROOM1 }));
    // And back to the main room's chat.
    await p.page.locator('#chat-tabs [role="tab"][data-chat-room="main"]').click();
    await p.page.locator('#chat-log').waitFor({ state: 'visible' });
  }
  // The others were never in room 1: no tab for it.
  for (const p of [C, D, H]) {
    assert.equal(await p.page.locator('#chat-tabs [data-chat-room="1"]').count(), 0, `${p.who} has a tab for room 1`);
  }
});

sc.step('no page errors or dialogs on any page', () => {
  for (const p of P) {
    const errors = p.log.filter((l) => l.includes('pageerror]') || l.includes('handler for'));
    assert.deepEqual(errors, [], `${p.who}: page errors`);
    assert.deepEqual(p.dialogs, [], `${p.who}: dialogs`);
  }
}, { always: true });
