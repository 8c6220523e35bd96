// Files over the negotiated data channel (docs/protocol.md, "Files over the data channel"):
// a JSON header, binary chunks of at most 16 KiB with backpressure, then file_end; the receiver
// checks size and SHA-256 before it offers the download. One file at a time per channel.
import { t, formatBytes } from './i18n.js';

export const CHUNK = 16 * 1024;
const HIGH_WATER = 1024 * 1024;    // wait while more than this is buffered
const LOW_WATER = 256 * 1024;      // resume on bufferedamountlow below this
const READ_BLOCK = 1024 * 1024;    // read the file in blocks of this size

/** @param {ArrayBuffer|Blob} data */
export async function sha256Hex(data) {
  const buf = data instanceof Blob ? await data.arrayBuffer() : data;
  const d = await crypto.subtle.digest('SHA-256', buf);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, '0')).join('');
}

function randomId() {
  const a = new Uint8Array(8);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * One row in #files: `.file-item` with data-file-name, data-state, a progress bar, and a
 * download link once a received file is verified.
 */
export class FileItem {
  /** Every item on the page, for re-rendering in another language. @type {Set<FileItem>} */
  static all = new Set();

  /**
   * @param {HTMLElement} list  #files
   * @param {{name:string, size:number, direction:'sending'|'receiving', peerName:string, toAll?:boolean}} o
   *   `toAll`: sent to the whole room through the server (`sfu` rooms)
   */
  constructor(list, o) {
    this.o = o;
    const li = document.createElement('li');
    li.className = 'file-item';
    li.dataset.fileName = o.name;
    li.dataset.state = o.direction;
    const head = document.createElement('div');
    head.className = 'file-head';
    const name = document.createElement('span');
    name.className = 'file-name';
    name.textContent = o.name;
    name.title = o.name;
    const size = document.createElement('span');
    size.className = 'file-size';
    size.textContent = formatBytes(o.size);
    head.append(name, size);
    this.meta = document.createElement('div');
    this.meta.className = 'file-meta';
    this.progress = document.createElement('progress');
    this.progress.max = Math.max(1, o.size);
    this.progress.value = 0;
    this.progress.setAttribute('aria-label', o.name);
    li.append(head, this.meta, this.progress);
    this.li = li;
    this.status = 'progress';
    this.render();
    list.prepend(li);
    list.hidden = false;
    this.url = '';
    FileItem.all.add(this);
  }

  /** Forgets the item and frees its blob URL. */
  dispose() {
    if (this.url) URL.revokeObjectURL(this.url);
    this.li.remove();
    FileItem.all.delete(this);
  }

  /** @param {number} bytes */
  setProgress(bytes) { this.progress.value = bytes; }

  /** @param {string} url blob URL of the verified file (receiving side) */
  done(url) {
    this.status = 'done';
    this.li.dataset.state = 'done';
    this.progress.value = this.progress.max;
    if (url) {
      this.url = url;
      const a = document.createElement('a');
      a.className = 'file-download';
      a.href = url;
      a.download = this.o.name;
      a.dataset.i18n = 'files.download';
      a.textContent = t('files.download');
      this.li.append(a);
    }
    this.render();
  }

  fail() {
    this.status = 'failed';
    this.li.dataset.state = 'failed';
    this.render();
  }

  render() {
    const who = this.o.toAll ? t('files.toAll')
      : t(this.o.direction === 'sending' ? 'files.to' : 'files.from', { name: this.o.peerName });
    const what = this.status === 'failed' ? t('files.failed')
      : this.status === 'done' ? t(this.o.direction === 'sending' ? 'files.sent' : 'files.done')
        : t(this.o.direction === 'sending' ? 'files.sending' : 'files.receiving');
    this.meta.textContent = `${who} · ${what}`;
  }
}

/**
 * @typedef {Object} FileChannelHooks
 * @property {() => string} peerName
 * @property {() => number} maxBytes
 * @property {HTMLElement} list
 * @property {(code: string, vars: Record<string, string|number>, textKey?: string) => void} error
 * @property {(name: string) => void} received  a verified file arrived
 */

/** The file protocol on one data channel. */
export class FileChannel {
  /** @param {RTCDataChannel} ch @param {FileChannelHooks} hooks */
  constructor(ch, hooks) {
    this.ch = ch;
    this.hooks = hooks;
    ch.binaryType = 'arraybuffer';
    ch.bufferedAmountLowThreshold = LOW_WATER;
    /** @type {{file: File, sha: string, item: FileItem}[]} */
    this.queue = [];
    this.sending = false;
    /** @type {{id:string, cancelled:boolean}|null} */
    this.current = null;
    /** @type {null | {id:string, name:string, size:number, sha:string, got:number, parts:ArrayBuffer[], item:FileItem, bad:boolean}} */
    this.incoming = null;
    ch.addEventListener('message', (ev) => this.onMessage(ev.data));
    ch.addEventListener('open', () => this.pump());
    ch.addEventListener('close', () => this.onClose());
  }

  /** Queues a file for this peer. @param {File} file @param {string} sha */
  send(file, sha) {
    const item = new FileItem(this.hooks.list, { name: file.name, size: file.size, direction: 'sending', peerName: this.hooks.peerName() });
    this.queue.push({ file, sha, item });
    this.pump();
  }

  async pump() {
    if (this.sending || this.ch.readyState !== 'open') return;
    this.sending = true;
    try {
      while (this.queue.length && this.ch.readyState === 'open') {
        const job = /** @type {{file: File, sha: string, item: FileItem}} */ (this.queue.shift());
        try {
          await this.sendOne(job.file, job.sha, job.item);
          job.item.done('');
        } catch (e) {
          console.warn('huddle: file send failed', e);
          job.item.fail();
        }
      }
    } finally {
      this.sending = false;
    }
  }

  /** @param {File} file @param {string} sha @param {FileItem} item */
  async sendOne(file, sha, item) {
    const id = randomId();
    const cur = { id, cancelled: false };
    this.current = cur;
    const ch = this.ch;
    ch.send(JSON.stringify({ t: 'file', id, name: file.name, size: file.size, mime: file.type || 'application/octet-stream', sha256: sha }));
    let sent = 0, lastUi = 0;
    for (let off = 0; off < file.size; off += READ_BLOCK) {
      const block = await file.slice(off, Math.min(file.size, off + READ_BLOCK)).arrayBuffer();
      for (let i = 0; i < block.byteLength; i += CHUNK) {
        if (cur.cancelled) throw new Error('cancelled by the receiver');
        if (ch.readyState !== 'open') throw new Error('channel closed');
        if (ch.bufferedAmount > HIGH_WATER) await this.drained();
        if (cur.cancelled) throw new Error('cancelled by the receiver');
        if (ch.readyState !== 'open') throw new Error('channel closed');
        const n = Math.min(CHUNK, block.byteLength - i);
        ch.send(new Uint8Array(block, i, n));
        sent += n;
        const now = performance.now();
        if (now - lastUi > 100) { item.setProgress(sent); lastUi = now; }
      }
    }
    ch.send(JSON.stringify({ t: 'file_end', id }));
    item.setProgress(sent);
    this.current = null;
  }

  /** Resolves once the buffer drains (or the channel closes). */
  drained() {
    return new Promise((resolve) => {
      const done = () => {
        this.ch.removeEventListener('bufferedamountlow', done);
        this.ch.removeEventListener('close', done);
        resolve(undefined);
      };
      this.ch.addEventListener('bufferedamountlow', done);
      this.ch.addEventListener('close', done);
    });
  }

  /** @param {string|ArrayBuffer} data */
  onMessage(data) {
    if (typeof data === 'string') {
      /** @type {any} */
      let m;
      try { m = JSON.parse(data); } catch { return; }
      if (!m || typeof m.t !== 'string') return;
      if (m.t === 'file') this.onHeader(m);
      else if (m.t === 'file_end') this.onEnd(m.id);
      else if (m.t === 'file_cancel') this.onCancel(m.id);
      return;
    }
    const inc = this.incoming;
    if (!inc || inc.bad) return;
    inc.got += data.byteLength;
    if (inc.got > inc.size) { inc.bad = true; return; }
    inc.parts.push(data);
    inc.item.setProgress(inc.got);
  }

  /** @param {any} m */
  onHeader(m) {
    if (this.incoming) { this.incoming.item.fail(); this.incoming = null; }
    const name = typeof m.name === 'string' && m.name.trim() ? m.name.slice(0, 255) : 'file';
    const size = Number(m.size);
    const max = this.hooks.maxBytes();
    if (typeof m.id !== 'string' || !Number.isSafeInteger(size) || size < 0 || typeof m.sha256 !== 'string') {
      this.cancel(String(m.id));
      return;
    }
    if (size > max) {
      this.cancel(m.id);
      const item = new FileItem(this.hooks.list, { name, size, direction: 'receiving', peerName: this.hooks.peerName() });
      item.fail();
      this.hooks.error('file_too_large', { file: name, max: formatBytes(max), name: this.hooks.peerName() }, 'error.file_too_large_in');
      return;
    }
    const item = new FileItem(this.hooks.list, { name, size, direction: 'receiving', peerName: this.hooks.peerName() });
    this.incoming = { id: m.id, name, size, sha: m.sha256.toLowerCase(), got: 0, parts: [], item, bad: false };
  }

  /** @param {string} id */
  async onEnd(id) {
    const inc = this.incoming;
    if (!inc || inc.id !== id) return;
    this.incoming = null;
    // Octet-stream, whatever the sender claimed: a blob URL of ours must never render as a page.
    const blob = new Blob(inc.parts, { type: 'application/octet-stream' });
    inc.parts = [];
    let ok = !inc.bad && inc.got === inc.size && blob.size === inc.size;
    if (ok) {
      try { ok = (await sha256Hex(blob)) === inc.sha; } catch { ok = false; }
    }
    if (!ok) {
      inc.item.fail();
      this.hooks.error('file_corrupted', { file: inc.name });
      return;
    }
    inc.item.done(URL.createObjectURL(blob));
    this.hooks.received(inc.name);
  }

  /** @param {string} id */
  onCancel(id) {
    if (this.current && this.current.id === id) this.current.cancelled = true;
    if (this.incoming && this.incoming.id === id) { this.incoming.item.fail(); this.incoming = null; }
  }

  /** @param {string} id */
  cancel(id) {
    try { this.ch.send(JSON.stringify({ t: 'file_cancel', id })); } catch { /* closed */ }
  }

  onClose() {
    if (this.incoming) { this.incoming.item.fail(); this.incoming = null; }
    if (this.current) this.current.cancelled = true;
    for (const job of this.queue.splice(0)) job.item.fail();
  }
}
