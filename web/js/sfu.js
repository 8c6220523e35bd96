// The one RTCPeerConnection of an `sfu` room (docs/protocol.md, "Media topology and negotiation
// (topology: sfu)"): we offer first with a sendonly audio and a sendonly video transceiver (the
// video in three simulcast layers), the server answers, then offers us everyone else's tracks and
// we answer. Each received track's stream id is the id of the participant who publishes it.

/** @typedef {import('./protocol.js').SignalPayload} SignalPayload */
/** @typedef {import('./protocol.js').IceServer} IceServer */

/**
 * The simulcast layers we send, lowest first (the server forwards one of them to each
 * subscriber, by its tile size). Chromium leaves out layers its camera picture is too small for.
 * @type {RTCRtpEncodingParameters[]}
 */
export const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/**
 * @typedef {Object} SfuLinkOptions
 * @property {IceServer[]} iceServers
 * @property {RTCIceTransportPolicy} [iceTransportPolicy]
 * @property {(payload: SignalPayload) => void} signal  to the reserved peer `sfu`
 * @property {{audio: MediaStreamTrack|null, video: MediaStreamTrack|null}} tracks  what to send now
 * @property {(peerId: string, stream: MediaStream, track: MediaStreamTrack) => void} onTrack
 *   a participant's track arrived (again); `stream` holds all of that participant's live tracks
 * @property {(peerId: string, track: MediaStreamTrack) => void} onMedia  the first packet of a track arrived
 * @property {(state: RTCPeerConnectionState) => void} onState
 */

export class SfuLink {
  /** @param {SfuLinkOptions} o */
  constructor(o) {
    this.o = o;
    this.closed = false;
    /** @type {Map<string, MediaStream>} one stream per publishing participant */
    this.streams = new Map();
    /** @type {WeakMap<MediaStreamTrack, string>} whose each received track is */
    this.owners = new WeakMap();
    /** Signals are handled one at a time, in order. */
    this.chain = Promise.resolve();
    /** true once the server has answered our offer (it knows this session) */
    this.answered = false;
    /**
     * The number of the SFU session our offer started, from the answer (docs/protocol.md,
     * "Sessions, restarts and refusals"); null until then. A server offer or `media_failed`
     * naming another session is about one we replaced.
     * @type {number|null}
     */
    this.session = null;
    /** the server refused our offer (`media_refused`, `media_retry`): its one reply came */
    this.refused = false;

    const pc = new RTCPeerConnection({
      iceServers: o.iceServers || [], iceTransportPolicy: o.iceTransportPolicy || 'all', bundlePolicy: 'max-bundle',
    });
    this.pc = pc;
    this.audioTx = pc.addTransceiver(o.tracks.audio || 'audio', { direction: 'sendonly' });
    this.videoTx = pc.addTransceiver(o.tracks.video || 'video', { direction: 'sendonly', sendEncodings: SIMULCAST });
    /** sending a screen share (one sharp layer) rather than a camera (three layers) */
    this.screen = false;

    pc.ontrack = ({ track, streams }) => {
      const peerId = streams[0]?.id;
      if (!peerId) return;
      let stream = this.streams.get(peerId);
      if (!stream) { stream = new MediaStream(); this.streams.set(peerId, stream); }
      for (const old of stream.getTracks()) {
        if (old.kind === track.kind && old !== track) stream.removeTrack(old);
      }
      if (!stream.getTracks().includes(track)) stream.addTrack(track);
      this.owners.set(track, peerId);
      // A receiver's track is muted until its first packet arrives, and again when the server
      // stops the media section (the participant left or stopped publishing).
      track.addEventListener('unmute', () => { if (!this.closed) o.onMedia(peerId, track); });
      if (!track.muted) o.onMedia(peerId, track);
      o.onTrack(peerId, stream, track);
    };
    pc.onconnectionstatechange = () => { if (!this.closed) o.onState(pc.connectionState); };
    // The server is ICE-lite and ignores our candidates; it learns our address from the checks.
  }

  /** Sends our offer (once, at the start). */
  start() {
    this.chain = this.chain.then(async () => {
      if (this.closed) return;
      await this.pc.setLocalDescription();
      const d = this.pc.localDescription;
      if (d && !this.closed) this.o.signal({ kind: 'description', description: /** @type {any} */ (d.toJSON()) });
    }).catch((e) => { console.warn('huddle: offer to the SFU failed', e); });
    return this.chain;
  }

  /**
   * A signal from `sfu`, with the session it belongs to. The caller hands us only the answer to
   * our own offer (replies come in the order of the offers).
   * @param {SignalPayload} payload
   * @param {number|undefined} session
   */
  handleSignal(payload, session) {
    // At once, not when the answer is applied: a `media_failed` right behind it must find it.
    if (payload?.kind === 'description' && payload.description.type === 'answer' && this.session === null) {
      this.session = session ?? null;
    }
    this.chain = this.chain.then(() => this.process(payload, session)).catch((e) => {
      console.warn('huddle: signal from the SFU failed', e);
    });
    return this.chain;
  }

  /** @param {SignalPayload} payload @param {number|undefined} session */
  async process(payload, session) {
    if (this.closed || !payload || payload.kind !== 'description') return;
    const pc = this.pc;
    const d = payload.description;
    if (d.type === 'answer') {
      if (pc.signalingState !== 'have-local-offer') return;
      await pc.setRemoteDescription(/** @type {RTCSessionDescriptionInit} */ (d));
      this.answered = true;
    } else if (d.type === 'offer') {
      // We are the impolite side: while our offer is outstanding we keep it (the server drops
      // its pending offer when it takes ours), and an offer of a session we replaced is ignored.
      if (pc.signalingState !== 'stable' || (session !== undefined && session !== this.session)) return;
      await pc.setRemoteDescription(/** @type {RTCSessionDescriptionInit} */ (d));
      await pc.setLocalDescription();
      const a = pc.localDescription;
      if (a && !this.closed) this.o.signal({ kind: 'description', description: /** @type {any} */ (a.toJSON()) });
    }
  }

  /**
   * Sends this track (or nothing) on the audio or video transceiver; no renegotiation.
   * @param {'audio'|'video'} kind
   * @param {MediaStreamTrack|null} track
   */
  async replaceTrack(kind, track) {
    const tx = kind === 'audio' ? this.audioTx : this.videoTx;
    if (this.closed) return;
    try { await tx.sender.replaceTrack(track); } catch (e) { console.warn(`huddle: replaceTrack(${kind}) to the SFU failed`, e); }
  }

  /**
   * A shared screen wants sharpness over motion: one full-size layer at a higher rate (the
   * lower layers are turned off); a camera goes back to the three layers.
   * @param {boolean} screen
   */
  async setScreen(screen) {
    if (this.closed || this.screen === screen) return;
    this.screen = screen;
    const p = this.videoTx.sender.getParameters();
    if (!p.encodings || p.encodings.length !== SIMULCAST.length) return;
    p.encodings.forEach((e, i) => {
      e.active = !screen || i === SIMULCAST.length - 1;
      e.maxBitrate = screen && i === SIMULCAST.length - 1 ? 2_500_000 : SIMULCAST[i].maxBitrate;
    });
    try { await this.videoTx.sender.setParameters(p); } catch (e) { console.debug('huddle: setParameters', e); }
  }

  /** @param {string} peerId */
  streamOf(peerId) { return this.streams.get(peerId) || null; }

  /**
   * Each participant's audio level as the SFU forwarded it in the RTP audio-level header
   * extension (0..1, 1 = 0 dBov): no decoding or analysing on our side, however many people.
   * @returns {Map<string, number>}
   */
  audioLevels() {
    const out = new Map();
    for (const r of this.pc.getReceivers()) {
      if (r.track.kind !== 'audio') continue;
      const id = this.owners.get(r.track);
      if (!id) continue;
      const level = r.getSynchronizationSources()[0]?.audioLevel ?? 0;
      out.set(id, Math.max(level, out.get(id) ?? 0));
    }
    return out;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    try { this.pc.close(); } catch { /* ignore */ }
    for (const s of this.streams.values()) for (const tr of s.getTracks()) tr.stop();
    this.streams.clear();
  }
}
