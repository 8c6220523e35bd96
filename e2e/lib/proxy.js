// A plain TCP load balancer, as an operator would put in front of several huddle nodes: each
// new connection goes to the next backend in turn (no sticky sessions); a backend that refuses
// the connection is skipped, as a load balancer's health check would.
import net from 'node:net';

/**
 * Listens on a free loopback port and spreads connections over `backends` (ports on
 * 127.0.0.1), which the caller may change at any time.
 * @param {number[]} backends
 * @returns {Promise<{port: number, backends: number[], connections: () => number, close: () => Promise<void>}>}
 */
export async function startProxy(backends) {
  let next = 0;
  let count = 0;
  const open = new Set();
  const server = net.createServer((client) => {
    count += 1;
    open.add(client);
    client.on('close', () => open.delete(client));
    client.on('error', () => {});
    client.pause();
    const start = next;
    next += 1;
    const tryBackend = (k) => {
      if (k >= proxy.backends.length || client.destroyed) { client.destroy(); return; }
      const port = proxy.backends[(start + k) % proxy.backends.length];
      const upstream = net.connect(port, '127.0.0.1');
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        open.add(upstream);
        upstream.on('close', () => { open.delete(upstream); client.destroy(); });
        client.on('close', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      upstream.on('error', () => {
        if (!connected) tryBackend(k + 1);
        else client.destroy();
      });
    };
    tryBackend(0);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxy = {
    port: /** @type {net.AddressInfo} */ (server.address()).port,
    backends,
    connections: () => count,
    close: () => new Promise((resolve) => {
      for (const s of open) s.destroy();
      server.close(() => resolve());
    }),
  };
  return proxy;
}
