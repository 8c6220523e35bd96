// ICE over TCP: a browser whose UDP to the server is blocked still meets others through the SFU,
// over a TCP connection to the HTTP(S) port (RFC 6544 passive candidates, RFC 4571 framing).
//
// UDP is really blocked: each server runs in a network namespace of its own (only `lo`,
// lib/netns.js), its two Chromiums are started inside the same namespace, and for the blocked
// cases an nftables rule there drops every UDP datagram to the SFU's ports (two workers, a port each) before the browsers
// start. The control (no rule) shows the same setup uses UDP. Last, across real routing: two homes
// behind symmetric NATs that drop all UDP and TCP to the TURN port (no relay either) reach the
// SFU over TCP through their NATs. Needs root (CI runs as root).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { startServer, pinnedKey } from './lib/server.js';
import { launchParticipant, writeLogs, dumpDiagnostics, withTimeout } from './lib/browser.js';
import { makeTempDir, makeClips } from './lib/camera.js';
import { joinViaLanding, expectEveryoneSeesEveryone, waitForRemoteVideo, pollUntil } from './lib/huddle.js';
import { loopbackNetwork, natNetwork, netnsAvailable, PUBLIC_SERVER_IP } from './lib/netns.js';
import { T } from './lib/env.js';

// One line per worker (`worker=N` before `udp` with several); every worker's UDP port is blocked.
const SFU_LISTENING = /SFU listening (?:worker=\d+ )?udp=\[([^\]]*)\] ice_tcp=\[([^\]]*)\]/g;
// Two workers whatever the machine: ICE-TCP on the one HTTP port must reach each worker's SFU.
const WORKERS = 2;
const TURN_LISTENING = /STUN\/TURN listening on UDP and TCP addresses=\[[^\]]*:(\d+)\]/;

let tmp = null;
let clips = null;

async function setup() {
  if (!tmp) {
    tmp = makeTempDir('huddle-e2e-icetcp-');
    clips = await makeClips(tmp.dir, 2);
  }
}

after(() => tmp?.cleanup());

/** Records when each RTCPeerConnection was made and when it became connected (window.__pcTimes). */
const TIME_PCS = () => {
  const Native = window.RTCPeerConnection;
  window.__pcTimes = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      const t = { created: performance.now(), connected: null, pc: this };
      window.__pcTimes.push(t);
      this.addEventListener('connectionstatechange', () => {
        if (this.connectionState === 'connected' && t.connected === null) t.connected = performance.now();
      });
    }
  };
};

/** An nftables rule set that drops (and counts) every UDP datagram to these ports. */
const dropUdpTo = (ports) => `
table inet huddle_icetcp {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport { ${ports.join(', ')} } counter drop
  }
}
`;

/** Datagrams the drop rule counted in namespace `srv` of `net`. */
function droppedUdp(net) {
  const m = /counter packets (\d+) bytes \d+ drop/.exec(net.in('srv', 'nft', 'list', 'ruleset'));
  return m ? Number(m[1]) : 0;
}

/** The SFU's connection: state, its candidates and the selected pair, from getStats(). */
async function sfuTransport(page) {
  return page.evaluate(async () => {
    const pc = window.__huddle?.sfu;
    if (!pc) return { pc: false };
    const stats = await pc.getStats();
    const out = { pc: true, connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState, candidates: [], pair: null };
    const cand = (c) => c && { protocol: c.protocol, address: c.address, port: c.port, type: c.candidateType, tcpType: c.tcpType ?? null };
    stats.forEach((s) => {
      if (s.type === 'local-candidate' || s.type === 'remote-candidate') out.candidates.push(`${s.type} ${s.protocol} ${s.address}:${s.port} ${s.candidateType} ${s.tcpType ?? ''}`.trim());
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        if (pair) out.pair = { state: pair.state, local: cand(stats.get(pair.localCandidateId)), remote: cand(stats.get(pair.remoteCandidateId)), rtt: pair.currentRoundTripTime };
      }
    });
    return out;
  });
}

/**
 * One call of two browsers in an sfu room. `nat` false: the server and both browsers in one
 * namespace with only `lo`, `blockUdp` dropping UDP to the SFU's port there. `nat` true: the
 * server on the "internet" (natNetwork) and each browser in its own home behind a symmetric NAT
 * that drops all UDP and TCP to the TURN port. Returns what the pages selected.
 */
async function callInNamespace(t, label, { blockUdp, tls = false, nat = false }) {
  await setup();
  const P = [];
  let server = null;
  let net = null;
  const diag = [];
  try {
    net = nat ? natNetwork({ homes: 2, blockUdp: [0, 1] }) : loopbackNetwork();
    const args = ['--topology', 'sfu', '--workers', String(WORKERS)];
    if (tls) args.push('--tls', 'self-signed', '--data-dir', path.join(tmp.dir, `data-${label}`));
    server = nat
      ? await startServer({ args, wrap: net.wrap('wan'), listen: `${PUBLIC_SERVER_IP}:0` })
      : await startServer({ args, wrap: net.wrap('srv') });
    // Logged on stderr around the time of the banner: wait for it.
    const lines = await pollUntil(() => {
      const all = [...server.output().matchAll(SFU_LISTENING)];
      return all.length >= WORKERS ? all : null;
    }, { timeoutMs: T.ui, what: `"SFU listening" of ${WORKERS} workers in the server's output:\n${server.output()}` });
    const udpPorts = [...new Set(lines.flatMap((m) => m[1].split(',').map((a) => Number(a.trim().split(':').pop()))))];
    assert.equal(udpPorts.length, WORKERS, `a UDP port per worker: ${udpPorts}`);
    const tcp = [...new Set(lines.flatMap((m) => m[2].split(',').map((a) => a.trim()).filter(Boolean)))];
    t.diagnostic(`${label}: ${server.url}, SFU UDP ports ${udpPorts.join(',')}, ICE-TCP candidates ${tcp.join(',')}`);
    assert.deepEqual(tcp, [`${server.host}:${server.port}`], 'ICE-TCP is announced on the HTTP port');
    if (blockUdp && !nat) net.nft('srv', dropUdpTo(udpPorts));
    if (nat) {
      // No relay over TCP either: only ICE-TCP to the HTTPS port is left.
      const turn = await pollUntil(() => TURN_LISTENING.exec(server.output()), { timeoutMs: T.ui, what: `"STUN/TURN listening" in:\n${server.output()}` });
      for (const i of [0, 1]) net.nft(`r${i}`, `add rule inet filter forward_filter iifname "${net.ns(`l${i}`)}" tcp dport ${turn[1]} drop`);
      t.diagnostic(`${label}: both homes drop all UDP and TCP to the TURN port ${turn[1]}`);
    }

    const extra = [];
    if (tls) {
      const spki = pinnedKey(server);
      assert.ok(spki, `no public key hash in:\n${server.output()}`);
      extra.push(`--ignore-certificate-errors-spki-list=${spki}`);
    }
    P.push(...await Promise.all(clips.map((clip, i) => launchParticipant({
      who: `${label}-${clip.label}-${clip.colour}`, clip: clip.path, executablePath: net.chromiumIn(nat ? `c${i}` : 'srv', tmp.dir), args: extra,
    }))));
    P.forEach((p, i) => { p.clip = clips[i]; });
    for (const p of P) await p.page.addInitScript(TIME_PCS);

    const room = `e2e-icetcp-${crypto.randomBytes(3).toString('hex')}`;
    const t0 = Date.now();
    await withTimeout(joinViaLanding(P[0], server.url, { name: 'Alice', room }), T.navigation + T.media, `${P[0].who} joins`);
    const t1 = Date.now();
    await withTimeout(joinViaLanding(P[1], server.url, { name: 'Bob', room }), T.navigation + T.media, `${P[1].who} joins`);
    const joined = Date.now();
    await Promise.all([
      waitForRemoteVideo(P[0].page, P[1].id).catch((e) => { throw new Error(`${P[0].who}: ${e.message}`); }),
      waitForRemoteVideo(P[1].page, P[0].id).catch((e) => { throw new Error(`${P[1].who}: ${e.message}`); }),
    ]);
    const firstVideo = Date.now();
    // Connected to the SFU, with a selected pair, on both pages.
    const transports = await Promise.all(P.map((p) => pollUntil(async () => {
      const s = await sfuTransport(p.page);
      return s.connectionState === 'connected' && s.pair ? s : { ok: false, ...s };
    }, { timeoutMs: T.media, what: `${p.who}: the SFU connection is connected with a selected candidate pair` })));
    t.diagnostic(`${label}: first remote video ${firstVideo - joined} ms after the second Join (joins took ${t1 - t0} and ${joined - t1} ms)`);
    // Only connections with media (the page's connectivity check makes probes without any).
    const setupMs = await Promise.all(P.map((p) => p.page.evaluate(() => window.__pcTimes
      .filter((x) => x.pc.getTransceivers().length > 0)
      .map((x) => (x.connected === null ? null : Math.round(x.connected - x.created))))));
    t.diagnostic(`${label}: SFU connection set up (RTCPeerConnection made → connected, ICE and DTLS) in ${setupMs.map((s) => `${s.join('/')} ms`).join(' and ')}`);
    await expectEveryoneSeesEveryone(P, clips, (line) => t.diagnostic(line));
    for (const [i, s] of transports.entries()) t.diagnostic(`${P[i].who}: selected ${JSON.stringify(s.pair)}; candidates ${JSON.stringify(s.candidates)}`);
    const dropped = blockUdp && !nat ? droppedUdp(net) : 0;
    if (blockUdp && !nat) t.diagnostic(`${label}: UDP datagrams dropped by the rule: ${dropped}`);
    return { transports, dropped, server };
  } catch (e) {
    for (const p of P) {
      diag.push(`${p.who}: ${JSON.stringify(await withTimeout(sfuTransport(p.page), 5_000, 'sfuTransport').catch((x) => String(x)))}`);
    }
    if (net) {
      for (const ns of nat ? ['wan', 'r0', 'r1'] : ['srv']) {
        try { diag.push(`nft ruleset in ${ns}:\n${net.in(ns, 'nft', 'list', 'ruleset')}`); } catch (x) { diag.push(String(x)); }
      }
    }
    const file = await dumpDiagnostics(`ice-tcp-${label}`, P, server);
    e.message += `\n${diag.join('\n')}\n(diagnostics: ${file})`;
    throw e;
  } finally {
    writeLogs(`ice-tcp-${label}`, P, server);
    await Promise.all(P.map((p) => p.close()));
    await server?.stop();
    net?.destroy();
  }
}

const usable = netnsAvailable();
const skip = usable === true ? false : `network namespaces are not usable here (root, ip and nft needed): ${usable}`;
// As root (CI) the namespaces must work: a failure there is an error, not a reason to skip.
if (skip && (process.env.CI || process.getuid?.() === 0)) throw new Error(skip);

test('control: with UDP open, the SFU connection uses UDP', { timeout: 90_000, skip }, async (t) => {
  const { transports } = await callInNamespace(t, 'udp-open', { blockUdp: false });
  for (const s of transports) {
    assert.equal(s.pair.local.protocol, 'udp', `local candidate: ${JSON.stringify(s.pair)}`);
    assert.equal(s.pair.remote.protocol, 'udp', `remote candidate: ${JSON.stringify(s.pair)}`);
  }
});

test('UDP to the SFU dropped: the call connects over ICE-TCP on the HTTP port, video both ways', { timeout: 90_000, skip }, async (t) => {
  const { transports, dropped, server } = await callInNamespace(t, 'udp-blocked', { blockUdp: true });
  for (const s of transports) {
    assert.equal(s.pair.local.protocol, 'tcp', `local candidate: ${JSON.stringify(s.pair)}`);
    assert.equal(s.pair.remote.protocol, 'tcp', `remote candidate: ${JSON.stringify(s.pair)}`);
    assert.equal(s.pair.remote.port, server.port, `the SFU is reached on the HTTP port: ${JSON.stringify(s.pair)}`);
    assert.equal(s.pair.remote.tcpType, 'passive', `the SFU's candidate is passive: ${JSON.stringify(s.pair)}`);
  }
  assert.ok(dropped > 0, 'the browsers did try UDP first (the drop rule counted nothing)');
});

test('UDP dropped, HTTPS: ICE-TCP shares the HTTPS port too', { timeout: 90_000, skip }, async (t) => {
  const { transports, server } = await callInNamespace(t, 'udp-blocked-https', { blockUdp: true, tls: true });
  assert.match(server.url, /^https:/);
  for (const s of transports) {
    assert.equal(s.pair.local.protocol, 'tcp', `local candidate: ${JSON.stringify(s.pair)}`);
    assert.equal(s.pair.remote.protocol, 'tcp', `remote candidate: ${JSON.stringify(s.pair)}`);
    assert.equal(s.pair.remote.port, server.port, `the SFU is reached on the HTTPS port: ${JSON.stringify(s.pair)}`);
  }
});

test('two homes behind symmetric NATs that drop all UDP and TCP to the TURN port meet in an sfu room over ICE-TCP (HTTPS port)', { timeout: 120_000, skip }, async (t) => {
  const { transports, server } = await callInNamespace(t, 'nat-udp-blocked', { blockUdp: true, tls: true, nat: true });
  for (const s of transports) {
    assert.equal(s.pair.local.protocol, 'tcp', `local candidate: ${JSON.stringify(s.pair)}`);
    assert.equal(s.pair.remote.protocol, 'tcp', `remote candidate: ${JSON.stringify(s.pair)}`);
    assert.equal(`${s.pair.remote.address}:${s.pair.remote.port}`, `${PUBLIC_SERVER_IP}:${server.port}`, `the SFU is reached on its HTTPS port: ${JSON.stringify(s.pair)}`);
  }
});
