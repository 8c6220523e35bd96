// A small WebSocket client for the signalling protocol (Node 20 has no global WebSocket).
// Text frames only, client-to-server frames masked as RFC 6455 requires; answers pings.
import http from 'node:http';
import crypto from 'node:crypto';
import { T } from './env.js';

/**
 * Open a WebSocket to the huddle `/ws` endpoint.
 * @param {string} wsUrl e.g. ws://127.0.0.1:1234/ws
 * @param {{origin?: string, timeoutMs?: number}} [opts]
 */
export function connectWs(wsUrl, { origin, timeoutMs = T.ui } = {}) {
  const u = new URL(wsUrl);
  const key = crypto.randomBytes(16).toString('base64');
  const headers = {
    Connection: 'Upgrade', Upgrade: 'websocket',
    'Sec-WebSocket-Key': key, 'Sec-WebSocket-Version': '13',
  };
  if (origin) headers.Origin = origin;
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, headers });
    const timer = setTimeout(() => { req.destroy(); reject(new Error(`WebSocket ${wsUrl}: no upgrade within ${timeoutMs} ms`)); }, timeoutMs);
    req.on('response', (res) => {
      clearTimeout(timer);
      const err = new Error(`WebSocket ${wsUrl}: HTTP ${res.statusCode} instead of 101`);
      err.status = res.statusCode;
      res.resume();
      reject(err);
    });
    req.on('error', (e) => { clearTimeout(timer); reject(e); });
    req.on('upgrade', (res, socket, head) => {
      clearTimeout(timer);
      const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
      if (res.headers['sec-websocket-accept'] !== accept) {
        socket.destroy();
        reject(new Error(`WebSocket ${wsUrl}: bad Sec-WebSocket-Accept`));
        return;
      }
      resolve(new WsClient(socket, head));
    });
    req.end();
  });
}

export class WsClient {
  constructor(socket, head) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.fragments = [];
    /** Every parsed JSON message received, in order. */
    this.messages = [];
    this.waiters = [];
    this.closed = null; // {code, reason} once closed
    socket.setNoDelay(true);
    socket.on('data', (d) => this.#onData(d));
    socket.on('close', () => { if (!this.closed) this.closed = { code: 1006, reason: 'socket closed' }; this.#wake(); });
    socket.on('error', () => {});
    if (head && head.length) this.#onData(head);
  }

  /** Send one JSON message (or a raw string) as a text frame. */
  send(msg) {
    const text = typeof msg === 'string' ? msg : JSON.stringify(msg);
    this.#sendFrame(0x1, Buffer.from(text, 'utf8'));
  }

  /**
   * Wait for the first message (already received or future) matching `pred`.
   * @param {(m: any) => boolean | string} pred a predicate or a `type` value
   */
  next(pred, { timeoutMs = T.ui, after = 0, what } = {}) {
    const test = typeof pred === 'string' ? (m) => m.type === pred : pred;
    const label = what || (typeof pred === 'string' ? `message of type "${pred}"` : 'matching message');
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = after; i < this.messages.length; i++) {
          if (test(this.messages[i])) { return resolve(this.messages[i]), true; }
        }
        if (this.closed) {
          reject(new Error(`WebSocket closed (${this.closed.code}) while waiting for ${label}; got: ${JSON.stringify(this.messages.map((m) => m.type))}`));
          return true;
        }
        return false;
      };
      if (check()) return;
      const waiter = { check };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no ${label} within ${timeoutMs} ms; got: ${JSON.stringify(this.messages.map((m) => m.type))}`));
      }, timeoutMs);
      waiter.check = () => { const done = check(); if (done) clearTimeout(timer); return done; };
      this.waiters.push(waiter);
    });
  }

  /** Send a join and wait for `joined` (or throw with the server's error). */
  async join(room, name, { audio = false, video = false, timeoutMs = T.ui } = {}) {
    const from = this.messages.length;
    this.send({ type: 'join', protocol: 1, room, name, audio, video });
    const m = await this.next((x) => x.type === 'joined' || (x.type === 'error' && x.request === 'join'),
      { timeoutMs, after: from, what: `joined for room ${JSON.stringify(room)}` });
    if (m.type === 'error') throw new Error(`join ${JSON.stringify(room)} refused: ${m.code} (${m.message})`);
    return m;
  }

  close() {
    if (this.socket.destroyed) return;
    try { this.#sendFrame(0x8, Buffer.from([0x03, 0xe8])); } catch { /* already gone */ }
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 500).unref();
  }

  #wake() { this.waiters = this.waiters.filter((w) => !w.check()); }

  #sendFrame(opcode, payload) {
    const mask = crypto.randomBytes(4);
    const len = payload.length;
    let header;
    if (len < 126) header = Buffer.from([0x80 | opcode, 0x80 | len]);
    else if (len < 65536) { header = Buffer.alloc(4); header[0] = 0x80 | opcode; header[1] = 0x80 | 126; header.writeUInt16BE(len, 2); }
    else { header = Buffer.alloc(10); header[0] = 0x80 | opcode; header[1] = 0x80 | 127; header.writeBigUInt64BE(BigInt(len), 2); }
    const masked = Buffer.alloc(len);
    for (let i = 0; i < len; i++) masked[i] = payload[i] ^ mask[i & 3];
    this.socket.write(Buffer.concat([header, mask, masked]));
  }

  #onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) return;
      const fin = (this.buf[0] & 0x80) !== 0;
      const opcode = this.buf[0] & 0x0f;
      const masked = (this.buf[1] & 0x80) !== 0;
      let len = this.buf[1] & 0x7f;
      let off = 2;
      if (len === 126) { if (this.buf.length < 4) return; len = this.buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (this.buf.length < 10) return; len = Number(this.buf.readBigUInt64BE(2)); off = 10; }
      const maskLen = masked ? 4 : 0;
      if (this.buf.length < off + maskLen + len) return;
      let payload = this.buf.subarray(off + maskLen, off + maskLen + len);
      if (masked) {
        const m = this.buf.subarray(off, off + 4);
        payload = Buffer.from(payload.map((b, i) => b ^ m[i & 3]));
      }
      this.buf = this.buf.subarray(off + maskLen + len);
      this.#onFrame(fin, opcode, Buffer.from(payload));
    }
  }

  #onFrame(fin, opcode, payload) {
    if (opcode === 0x9) { this.#sendFrame(0xa, payload); return; } // ping -> pong
    if (opcode === 0xa) return;
    if (opcode === 0x8) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this.closed = { code, reason: payload.subarray(2).toString('utf8') };
      try { this.#sendFrame(0x8, payload.subarray(0, 2)); } catch { /* ignore */ }
      this.socket.end();
      this.#wake();
      return;
    }
    if (opcode === 0x1 || opcode === 0x2) this.fragments = [payload];
    else if (opcode === 0x0) this.fragments.push(payload);
    if (!fin) return;
    const whole = Buffer.concat(this.fragments);
    this.fragments = [];
    let msg;
    try { msg = JSON.parse(whole.toString('utf8')); } catch { msg = { type: '__unparsable__', raw: whole.toString('utf8') }; }
    this.messages.push(msg);
    this.#wake();
  }
}
