// A redis-server of the test's own, for the multi-node tests: a free port on loopback, nothing
// saved to disk, stopped after. scripts/test installs redis-server (Debian's package, which
// brings redis-cli along).
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';

/** A TCP port nobody listens on now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (s.address());
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts redis-server and waits until it answers.
 * @returns {Promise<{url: string, port: number, get: (key: string) => string, stop: () => Promise<void>}>}
 */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  const cli = (...args) => execFileSync('redis-cli', ['-p', String(port), '--raw', ...args], { encoding: 'utf8' }).trim();
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      if (cli('PING') === 'PONG') break;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`redis-server did not answer on port ${port}`); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    get: (key) => cli('GET', key),
    async stop() {
      if (proc.exitCode === null) {
        const gone = new Promise((resolve) => proc.once('exit', resolve));
        proc.kill('SIGKILL');
        await gone;
      }
    },
  };
}
