// What ICE chose, read from the page's RTCPeerConnections through window.__huddle.

/**
 * The candidate pair each page's connection(s) use, read from getStats: local and remote
 * candidate types and addresses, for every connection that has one selected.
 */
export async function selectedPairs(page) {
  return page.evaluate(async () => {
    const h = window.__huddle;
    const pcs = [];
    if (h.sfu) pcs.push(['sfu', h.sfu]);
    for (const [id, peer] of h.peers.entries()) if (peer.pc && peer.pc !== h.sfu) pcs.push([id, peer.pc]);
    const out = [];
    for (const [id, pc] of pcs) {
      const stats = await pc.getStats();
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      stats.forEach((s) => {
        if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
        const pair = byId.get(s.selectedCandidatePairId);
        const l = byId.get(pair?.localCandidateId);
        const r = byId.get(pair?.remoteCandidateId);
        if (l && r) {
          out.push({
            id, state: pair.state,
            local: { type: l.candidateType, protocol: l.protocol, relayProtocol: l.relayProtocol, address: `${l.address}:${l.port}`, url: l.url },
            remote: { type: r.candidateType, protocol: r.protocol, address: `${r.address}:${r.port}` },
          });
        }
      });
    }
    return out;
  });
}
