// Starts the real huddle binary on a free port and stops it again.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HUDDLE_BIN, HUDDLE_WEB_DIR, T } from './env.js';

const LISTENING = /huddle listening on (https?:\/\/\S+?)\/?\s*$/;
const PINNED = /its public key's SHA-256 \(base64, for pinning\): (\S+)/;

/**
 * The self-signed certificate's public key hash from a server's banner (what Chromium's
 * --ignore-certificate-errors-spki-list takes), or undefined.
 * @param {{output: () => string}} server
 */
export function pinnedKey(server) {
  return PINNED.exec(server.output())?.[1];
}

/**
 * Start `huddle --listen 127.0.0.1:0 ...extraArgs` and wait for its "huddle listening on" line.
 * `listen` replaces the listen address; `wrap` runs it through a command prefix, e.g.
 * `['ip', ['netns', 'exec', ns]]` (see netns.js).
 * @param {{args?: string[], timeoutMs?: number, listen?: string, wrap?: [string, string[]]}} [opts]
 * @returns {Promise<{url: string, wsUrl: string, host: string, port: number,
 *   proc: import('node:child_process').ChildProcess, output: () => string, stop: () => Promise<void>}>}
 */
export async function startServer({ args = [], timeoutMs = T.serverStart, listen = '127.0.0.1:0', wrap = null } = {}) {
  if (!existsSync(HUDDLE_BIN)) {
    throw new Error(`huddle binary not found at ${HUDDLE_BIN}: run \`cargo build --release\` first or set HUDDLE_BIN`);
  }
  const argv = ['--listen', listen, ...args];
  // A data directory of its own unless the test gives one (a restart that should find what the
  // previous server saved): nothing one test's server keeps reaches another's.
  const ownDataDir = args.includes('--data-dir') ? null : mkdtempSync(path.join(os.tmpdir(), 'huddle-e2e-data-'));
  if (ownDataDir) argv.push('--data-dir', ownDataDir);
  if (HUDDLE_WEB_DIR && !args.includes('--web-dir')) argv.push('--web-dir', HUDDLE_WEB_DIR);
  const [cmd, cmdArgs] = wrap ? [wrap[0], [...wrap[1], HUDDLE_BIN, ...argv]] : [HUDDLE_BIN, argv];
  const proc = spawn(cmd, cmdArgs, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: serverEnv(),
  });
  const lines = [];
  const output = () => lines.join('\n');
  let exited = null;

  const url = await new Promise((resolve, reject) => {
    let pending = '';
    const timer = setTimeout(() => {
      reject(new Error(`huddle did not print "huddle listening on ..." within ${timeoutMs} ms ` +
        `(${HUDDLE_BIN} ${argv.join(' ')})\n--- output ---\n${output()}`));
    }, timeoutMs);
    const onData = (stream) => (chunk) => {
      pending += chunk.toString();
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).replace(/\r$/, '');
        pending = pending.slice(nl + 1);
        lines.push(`[${stream}] ${line}`);
        const m = stream === 'stdout' && LISTENING.exec(line);
        if (m) { clearTimeout(timer); resolve(m[1]); }
      }
    };
    proc.stdout.on('data', onData('stdout'));
    proc.stderr.on('data', (chunk) => {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(`[stderr] ${line}`);
    });
    proc.on('error', (err) => { clearTimeout(timer); reject(err); });
    proc.on('exit', (code, signal) => {
      exited = { code, signal };
      clearTimeout(timer);
      reject(new Error(`huddle exited (code ${code}, signal ${signal}) before listening\n--- output ---\n${output()}`));
    });
  });

  const u = new URL(url);
  const base = `${u.protocol}//${u.host}`;
  return {
    url: base,
    wsUrl: `${u.protocol === 'https:' ? 'wss' : 'ws'}://${u.host}/ws`,
    host: u.hostname,
    port: Number(u.port),
    proc,
    output,
    async stop() {
      if (!exited) {
        const gone = new Promise((resolve) => proc.once('exit', resolve));
        proc.kill('SIGTERM');
        const timer = setTimeout(() => { if (!exited) proc.kill('SIGKILL'); }, 5_000);
        await gone;
        clearTimeout(timer);
      }
      if (ownDataDir) rmSync(ownDataDir, { recursive: true, force: true });
    },
  };
}

/** The environment without HUDDLE_* settings, so that only the arguments given here configure the server. */
function serverEnv() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HUDDLE_')));
  env.RUST_LOG = process.env.RUST_LOG || 'info';
  return env;
}

/** `huddle_participants` from `server`'s /metrics: how many people are in rooms. */
export async function metricsParticipants(server) {
  const res = await fetch(`${server.url}/metrics`);
  if (res.status !== 200) throw new Error(`GET /metrics answered ${res.status}`);
  const m = /^huddle_participants (\d+)$/m.exec(await res.text());
  if (!m) throw new Error('/metrics has no huddle_participants');
  return Number(m[1]);
}
