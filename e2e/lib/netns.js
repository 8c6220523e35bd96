// Real networks for browser tests: Linux network namespaces joined by veth pairs, with NAT and
// firewalls made by nftables, all created here and deleted again (needs root, `ip` and `nft`).
//
// Two shapes:
// - natNetwork: a "public internet" namespace (the server, 198.51.100.1) and homes, each a
//   client namespace on its own private network (10.0.<i>.0/24) behind a router namespace that
//   masquerades with random ports (a symmetric NAT: a peer cannot reach a client at the address
//   the server saw, so two homes cannot talk directly, only through a relay). A home can also drop
//   all UDP leaving it (a network that blocks UDP).
// - lanNetwork: one private network (192.168.77.0/24) on a bridge in the server's namespace
//   (192.168.77.1) with client namespaces on it (192.168.77.2, .3, …): a phone on the Wi-Fi.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { CHROMIUM } from './env.js';

/** Whether this process may build namespaces (root with `ip` and `nft`). */
export function netnsAvailable() {
  try {
    if (process.getuid?.() !== 0) return 'not root';
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' });
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
    return true;
  } catch (e) {
    return `ip/nft unusable: ${e.message}`;
  }
}

function run(cmd, args, input) {
  try {
    return execFileSync(cmd, args, { input, stdio: ['pipe', 'pipe', 'pipe'] }).toString();
  } catch (e) {
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr?.toString() || e.message}`);
  }
}

class Network {
  constructor() {
    // Interface names are at most 15 characters: a 5-character prefix leaves room.
    this.prefix = `h${crypto.randomBytes(2).toString('hex')}`;
    /** @type {string[]} */ this.namespaces = [];
  }

  ns(name) { return `${this.prefix}${name}`; }

  add(name) {
    const ns = this.ns(name);
    run('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    // IPv4 only: otherwise each interface gains an IPv6 link-local address a moment after it
    // comes up, which Chromium sees as a network change and aborts a page load with
    // ERR_NETWORK_CHANGED (seen once in nat.test.js).
    this.in(name, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
    this.in(name, 'ip', 'link', 'set', 'lo', 'up');
    return ns;
  }

  in(name, cmd, ...args) { return run('ip', ['netns', 'exec', this.ns(name), cmd, ...args]); }

  nft(name, rules) { run('ip', ['netns', 'exec', this.ns(name), 'nft', '-f', '-'], rules); }

  /** A veth pair: `a` end in namespace `nsA`, `b` end in `nsB`. */
  veth(nsA, a, nsB, b) {
    const [ia, ib] = [this.ns(a), this.ns(b)];
    run('ip', ['link', 'add', ia, 'type', 'veth', 'peer', 'name', ib]);
    run('ip', ['link', 'set', ia, 'netns', this.ns(nsA)]);
    run('ip', ['link', 'set', ib, 'netns', this.ns(nsB)]);
    this.in(nsA, 'ip', 'link', 'set', ia, 'up');
    this.in(nsB, 'ip', 'link', 'set', ib, 'up');
    return [ia, ib];
  }

  addr(name, iface, cidr) { this.in(name, 'ip', 'addr', 'add', cidr, 'dev', iface); }

  /**
   * An executable that starts Chromium inside namespace `name`, for playwright's
   * `executablePath` (playwright talks to it over a pipe, which crosses namespaces).
   */
  chromiumIn(name, dir) {
    const file = path.join(dir, `chromium-${this.ns(name)}.sh`);
    writeFileSync(file, `#!/bin/sh\nexec ip netns exec ${this.ns(name)} ${CHROMIUM} "$@"\n`);
    chmodSync(file, 0o755);
    return file;
  }

  /** The command prefix that runs a program inside namespace `name`. */
  wrap(name) { return ['ip', ['netns', 'exec', this.ns(name)]]; }

  /** Deletes every namespace (their interfaces go with them). Never throws. */
  destroy() {
    for (const ns of this.namespaces.reverse()) {
      try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }); } catch { /* already gone */ }
    }
    this.namespaces = [];
  }
}

export const PUBLIC_SERVER_IP = '198.51.100.1';

/**
 * The server on the "internet" and `homes` clients each behind its own symmetric NAT.
 * `blockUdp`: homes whose router drops every UDP packet leaving it (indexes from 0).
 * Namespaces: `wan` (server), `r<i>` (router of home i), `c<i>` (client of home i).
 */
export function natNetwork({ homes = 2, blockUdp = [] } = {}) {
  const net = new Network();
  try {
    net.add('wan');
    net.in('wan', 'ip', 'link', 'add', net.ns('br'), 'type', 'bridge');
    net.in('wan', 'ip', 'link', 'set', net.ns('br'), 'up');
    net.addr('wan', net.ns('br'), `${PUBLIC_SERVER_IP}/24`);
    for (let i = 0; i < homes; i++) {
      net.add(`r${i}`);
      net.add(`c${i}`);
      // Uplink: router ↔ the internet's bridge.
      const [up] = net.veth(`r${i}`, `u${i}`, 'wan', `w${i}`);
      net.in('wan', 'ip', 'link', 'set', net.ns(`w${i}`), 'master', net.ns('br'));
      net.addr(`r${i}`, up, `198.51.100.${10 + i}/24`);
      // Home network: client ↔ router.
      const [lan, host] = net.veth(`r${i}`, `l${i}`, `c${i}`, `h${i}`);
      net.addr(`r${i}`, lan, `10.0.${i}.1/24`);
      net.addr(`c${i}`, host, `10.0.${i}.2/24`);
      net.in(`c${i}`, 'ip', 'route', 'add', 'default', 'via', `10.0.${i}.1`);
      net.in(`r${i}`, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
      net.nft(`r${i}`, `
table ip nat {
  chain postrouting { type nat hook postrouting priority 100; oifname "${up}" masquerade random; }
}
table inet filter {
  chain forward_filter {
    type filter hook forward priority 0; policy accept;
    iifname "${up}" ct state new drop
    ${blockUdp.includes(i) ? `iifname "${lan}" meta l4proto udp drop` : ''}
  }
}
`);
    }
  } catch (e) {
    net.destroy();
    throw e;
  }
  return net;
}

export const LAN_SERVER_IP = '192.168.77.1';

/** The server and `clients` devices on one LAN. Namespaces: `srv`, `d<i>` (device i, 192.168.77.<i+2>). */
export function lanNetwork({ clients = 2 } = {}) {
  const net = new Network();
  try {
    net.add('srv');
    net.in('srv', 'ip', 'link', 'add', net.ns('br'), 'type', 'bridge');
    net.in('srv', 'ip', 'link', 'set', net.ns('br'), 'up');
    net.addr('srv', net.ns('br'), `${LAN_SERVER_IP}/24`);
    for (let i = 0; i < clients; i++) {
      net.add(`d${i}`);
      const [dev] = net.veth(`d${i}`, `e${i}`, 'srv', `p${i}`);
      net.in('srv', 'ip', 'link', 'set', net.ns(`p${i}`), 'master', net.ns('br'));
      net.addr(`d${i}`, dev, `192.168.77.${i + 2}/24`);
    }
  } catch (e) {
    net.destroy();
    throw e;
  }
  return net;
}

/**
 * One namespace (`srv`) with only `lo`: a server and its browsers on one machine, cut off from
 * everything else, where nftables rules (`net.nft('srv', …)`) touch nothing outside.
 */
export function loopbackNetwork() {
  const net = new Network();
  try {
    net.add('srv');
  } catch (e) {
    net.destroy();
    throw e;
  }
  return net;
}
