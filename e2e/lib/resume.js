// Checks for calls that survive disruptions (reconnect.test.js, restart.test.js): what a page
// says about its session, marks on tile elements (to tell a kept tile from a new one), the
// notices it shows, and its chat log.
import assert from 'node:assert/strict';
import { pollUntil, button } from './huddle.js';

/** What the page says about itself, and a mark on each remote tile element (to tell a new one). */
export async function snapshot(p) {
  return p.page.evaluate(() => {
    const h = /** @type {any} */ (window).__huddle;
    const tiles = [...document.querySelectorAll('#tiles .tile:not([data-self="true"])')];
    return {
      id: h.id,
      room: h.room,
      tiles: tiles.map((t) => `${t.dataset.peerId}:${t.dataset.mark ?? ''}`).sort(),
      reconnecting: !document.getElementById('reconnecting').hidden,
      resumes: h.state.resumes,
      rejoins: h.state.rejoins,
      role: h.state.role,
    };
  });
}

/** Marks every remote tile element the page shows now. */
export async function markTiles(p, mark) {
  await p.page.evaluate((mark) => {
    for (const t of document.querySelectorAll('#tiles .tile:not([data-self="true"])')) t.dataset.mark = mark;
  }, mark);
}

/** Records every notice the page shows from now on (in `window.__notices`). */
export async function recordNotices(p) {
  await p.page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__notices = [];
    // Notices already on screen (e.g. "Bob joined") are not news.
    for (const n of document.querySelectorAll('#notices > *')) n.dataset.seen = '1';
    new MutationObserver(() => {
      for (const n of document.querySelectorAll('#notices > *')) {
        if (!n.dataset.seen) { n.dataset.seen = '1'; w.__notices.push(n.textContent.trim()); }
      }
    }).observe(document.getElementById('notices'), { childList: true, subtree: true });
  });
}

async function chatTexts(p) {
  return p.page.evaluate(() => [...document.querySelectorAll('#chat-log .chat-msg .chat-text')].map((m) => m.textContent.trim()));
}

export async function sendChat(p, text) {
  if (!(await p.page.locator('#chat-input').isVisible())) await button(p.page, 'Chat').click();
  await p.page.getByLabel('Message', { exact: true }).fill(text);
  await button(p.page, 'Send').click();
}

/** Waits until each text is in the page's chat log, then checks each is there exactly once, in order. */
export async function expectChatsExactlyOnce(p, texts, timeoutMs) {
  await pollUntil(async () => {
    const log = await chatTexts(p);
    return { ok: texts.every((t) => log.includes(t)), log };
  }, { timeoutMs, what: `${p.who}: chat messages ${JSON.stringify(texts)}` });
  const log = await chatTexts(p);
  for (const t of texts) assert.equal(log.filter((x) => x === t).length, 1, `${p.who}: "${t}" exactly once in ${JSON.stringify(log)}`);
  const order = texts.map((t) => log.indexOf(t));
  assert.deepEqual(order, [...order].sort((a, b) => a - b), `${p.who}: in order: ${JSON.stringify(log)}`);
}

/**
 * `p` (whose snapshot was `before`, with its tiles marked `m`) got its session back: same id,
 * room and tile elements, one more resume and no rejoin; `other` kept its tile for `p` and saw
 * no leave or join (recordNotices first).
 */
export async function expectSessionResumed(before, p, other, { room, timeoutMs }) {
  await pollUntil(async () => {
    const s = await snapshot(p);
    return { ok: !s.reconnecting, s };
  }, { timeoutMs, what: `${p.who}: "Reconnecting…" goes away` });
  const after = await snapshot(p);
  assert.equal(after.resumes, before.resumes + 1, `${p.who} resumed its session once`);
  assert.equal(after.rejoins, 0, `${p.who} did not have to join again`);
  assert.equal(after.id, before.id, `${p.who} kept its id`);
  assert.equal(after.room, room);
  assert.deepEqual(after.tiles, before.tiles, `${p.who}: the same tile elements (nobody left and came back)`);
  const otherNow = await snapshot(other);
  assert.deepEqual(otherNow.tiles, [`${before.id}:m`], `${other.who} still has the same tile for ${p.who}`);
  const notices = await other.page.evaluate(() => /** @type {any} */ (window).__notices);
  assert.ok(!notices.some((n) => /left|joined|나갔|들어왔/.test(n)), `${other.who} saw no leave/join: ${JSON.stringify(notices)}`);
}
