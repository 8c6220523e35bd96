// A network namespace of its own for one server and its browsers: only `lo`, nothing leaves it,
// and nftables rules inside it (e.g. UDP dropped) touch nothing else. Needs root (CI runs as
// root); scripts/test installs nftables and iproute2 when missing.
import { execFile, spawn } from 'node:child_process';
import { writeFileSync, chmodSync } from 'node:fs';
import { promisify } from 'node:util';
import path from 'node:path';
import { CHROMIUM, T } from './env.js';

const run = promisify(execFile);

/**
 * The `wrap` for startServer: huddle runs in a new network namespace with `lo` up. unshare and sh
 * exec each other and then huddle, so the server's pid names the namespace.
 */
export const NETNS_WRAP = ['unshare', '--net', '--', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"'];

/** Runs `cmd args` inside the network namespace of `pid`, with `input` on stdin; returns stdout. */
export async function inNetns(pid, cmd, args = [], { input, timeoutMs = T.ui } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [`--net=/proc/${pid}/ns/net`, '--', cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '', err = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${cmd} ${args.join(' ')} in netns of ${pid}: timed out after ${timeoutMs} ms`)); }, timeoutMs);
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} in netns of ${pid} exited ${code}: ${err.trim()}`));
    });
    child.stdin.end(input ?? '');
  });
}

/** Drops (and counts) every UDP datagram to these ports inside the namespace of `pid`. */
export async function dropUdpTo(pid, ports) {
  const ruleset = [
    'table inet huddle_e2e {',
    '  chain input {',
    '    type filter hook input priority 0; policy accept;',
    `    udp dport { ${ports.join(', ')} } counter drop`,
    '  }',
    '}',
  ].join('\n') + '\n';
  await inNetns(pid, 'nft', ['-f', '-'], { input: ruleset });
}

/** `nft list ruleset` inside the namespace (for diagnostics and the drop counter). */
export async function ruleset(pid) {
  return inNetns(pid, 'nft', ['list', 'ruleset']);
}

/** Packets the drop rule of dropUdpTo counted so far. */
export async function droppedUdp(pid) {
  const m = /counter packets (\d+) bytes \d+ drop/.exec(await ruleset(pid));
  return m ? Number(m[1]) : 0;
}

/**
 * A script that runs Chromium inside the namespace of `pid` (Playwright starts it and talks to it
 * over pipes, which nsenter keeps), for launchParticipant's `executablePath`.
 */
export function chromiumInNetns(dir, pid) {
  const file = path.join(dir, `chromium-netns-${pid}.sh`);
  writeFileSync(file, `#!/bin/sh\nexec nsenter --net=/proc/${pid}/ns/net -- ${CHROMIUM} "$@"\n`);
  chmodSync(file, 0o755);
  return file;
}

/** Whether this process may make network namespaces (root, with unshare, nsenter, ip and nft). */
export async function netnsUsable() {
  try {
    await run('unshare', ['--net', '--', 'sh', '-c', 'ip link set lo up && nft list ruleset >/dev/null']);
    return { ok: true };
  } catch (e) {
    return { ok: false, why: e.message };
  }
}
