// One RTCPeerConnection to one remote peer: W3C "perfect negotiation", one audio and one video
// transceiver (always sendrecv; tracks swapped with replaceTrack), and the negotiated data
// channel "huddle" (id 0) that carries files. See docs/protocol.md.

/** @typedef {import('./protocol.js').SignalPayload} SignalPayload */
/** @typedef {import('./protocol.js').IceServer} IceServer */

/**
 * New credentials for the same ICE servers (`ice_servers`): ICE uses them for what it gathers from
 * now on (an ICE restart, a new relay); relays already made keep theirs, which the server honours
 * while the session is in the room.
 * @param {RTCPeerConnection} pc
 * @param {IceServer[]} iceServers
 */
export function setIceServers(pc, iceServers) {
  if (pc.signalingState === 'closed') return;
  try {
    // The same certificates would do, but leaving them out can never be a change.
    const { certificates, ...config } = pc.getConfiguration();
    void certificates;
    pc.setConfiguration({ ...config, iceServers });
  } catch (e) {
    console.warn('huddle: could not apply new ICE servers', e);
  }
}

/**
 * @typedef {Object} PeerLinkOptions
 * @property {string} selfId
 * @property {string} peerId
 * @property {IceServer[]} iceServers
 * @property {RTCIceTransportPolicy} [iceTransportPolicy]
 * @property {boolean} initiator  true for the newcomer, which sends the first offer
 * @property {(payload: SignalPayload) => void} signal
 * @property {{audio: MediaStreamTrack|null, video: MediaStreamTrack|null}} tracks  what to send now
 * @property {(stream: MediaStream, track: MediaStreamTrack) => void} onTrack
 * @property {(state: RTCPeerConnectionState) => void} onState
 * @property {(channel: RTCDataChannel) => void} onChannel
 */

export class PeerLink {
  /** @param {PeerLinkOptions} o */
  constructor(o) {
    this.peerId = o.peerId;
    this.polite = o.selfId < o.peerId; // the lower id is polite
    this.signal = o.signal;
    this.onTrack = o.onTrack;
    this.onState = o.onState;
    this.onChannel = o.onChannel;
    this.tracks = { ...o.tracks };
    /** One stream per peer, holding its audio and video tracks. */
    this.stream = new MediaStream();
    this.closed = false;
    /** When ICE was last restarted (ms), 0 if never. */
    this.restartedAt = 0;

    // Perfect negotiation state.
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.isSettingRemoteAnswerPending = false;
    /** @type {RTCIceCandidateInit[]} candidates that arrived before the remote description */
    this.pendingCandidates = [];
    /** Signals are handled one at a time, in order. */
    this.chain = Promise.resolve();

    /** @type {RTCRtpTransceiver|null} */ this.audioTx = null;
    /** @type {RTCRtpTransceiver|null} */ this.videoTx = null;
    /** @type {RTCDataChannel|null} */ this.channel = null;

    const pc = new RTCPeerConnection({ iceServers: o.iceServers || [], iceTransportPolicy: o.iceTransportPolicy || 'all' });
    this.pc = pc;

    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        if (pc.localDescription) this.signal({ kind: 'description', description: /** @type {any} */ (pc.localDescription.toJSON()) });
      } catch (e) {
        console.warn(`huddle: offer to ${this.peerId} failed`, e);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      this.signal({ kind: 'candidate', candidate: candidate ? /** @type {any} */ (candidate.toJSON()) : null });
    };
    pc.ontrack = ({ track }) => {
      for (const old of this.stream.getTracks()) {
        if (old.kind === track.kind && old !== track) this.stream.removeTrack(old);
      }
      if (!this.stream.getTracks().includes(track)) this.stream.addTrack(track);
      this.onTrack(this.stream, track);
    };
    pc.onconnectionstatechange = () => this.onState(pc.connectionState);

    if (o.initiator) {
      this.audioTx = pc.addTransceiver(this.tracks.audio || 'audio', { direction: 'sendrecv' });
      this.videoTx = pc.addTransceiver(this.tracks.video || 'video', { direction: 'sendrecv' });
      this.openChannel();
    }
  }

  openChannel() {
    if (this.channel) return;
    const ch = this.pc.createDataChannel('huddle', { negotiated: true, id: 0, ordered: true });
    ch.binaryType = 'arraybuffer';
    this.channel = ch;
    this.onChannel(ch);
  }

  /**
   * The answering side: after the first offer is applied, take the transceivers it created,
   * make them sendrecv with our tracks, and open the negotiated channel.
   */
  async adoptTransceivers() {
    for (const tx of this.pc.getTransceivers()) {
      const kind = tx.receiver.track.kind;
      if (kind === 'audio' && !this.audioTx) this.audioTx = tx;
      else if (kind === 'video' && !this.videoTx) this.videoTx = tx;
      else continue;
      tx.direction = 'sendrecv';
      await tx.sender.replaceTrack(kind === 'audio' ? this.tracks.audio : this.tracks.video);
    }
    this.openChannel();
  }

  /**
   * Sends this track (or nothing) on the audio or video transceiver.
   * @param {'audio'|'video'} kind
   * @param {MediaStreamTrack|null} track
   */
  async replaceTrack(kind, track) {
    this.tracks[kind] = track;
    const tx = kind === 'audio' ? this.audioTx : this.videoTx;
    if (!tx || this.closed) return;
    try { await tx.sender.replaceTrack(track); } catch (e) { console.warn(`huddle: replaceTrack(${kind}) to ${this.peerId} failed`, e); }
  }

  /**
   * Caps what the video sender spends on this peer (a mesh sends one copy per peer).
   * Does nothing until the first negotiation has created the encodings.
   * @param {number} maxBitrate bits per second
   * @param {number} scale scaleResolutionDownBy (1 = full size)
   */
  async limitVideo(maxBitrate, scale) {
    const tx = this.videoTx;
    if (!tx || this.closed) return;
    const p = tx.sender.getParameters();
    if (!p.encodings || !p.encodings.length) return;
    const e = p.encodings[0];
    if (e.maxBitrate === maxBitrate && (e.scaleResolutionDownBy ?? 1) === scale) return;
    e.maxBitrate = maxBitrate;
    e.scaleResolutionDownBy = scale;
    try { await tx.sender.setParameters(p); } catch (err) { console.debug('huddle: setParameters', err); }
  }

  /**
   * Gathers new ICE candidates and renegotiates (after a network change, or a connection that
   * went `disconnected`/`failed`); perfect negotiation sends the offer through `signal`.
   */
  restartIce() {
    if (this.closed) return;
    this.restartedAt = Date.now();
    try { this.pc.restartIce(); } catch (e) { console.warn(`huddle: ICE restart to ${this.peerId} failed`, e); }
  }

  /** Handles a relayed signal from this peer. @param {SignalPayload} payload */
  handleSignal(payload) {
    this.chain = this.chain.then(() => this.process(payload)).catch((e) => {
      console.warn(`huddle: signal from ${this.peerId} failed`, e);
    });
    return this.chain;
  }

  /** @param {SignalPayload} payload */
  async process(payload) {
    if (this.closed || !payload) return;
    const pc = this.pc;
    if (payload.kind === 'description') {
      const description = payload.description;
      const readyForOffer = !this.makingOffer && (pc.signalingState === 'stable' || this.isSettingRemoteAnswerPending);
      const offerCollision = description.type === 'offer' && !readyForOffer;
      this.ignoreOffer = !this.polite && offerCollision;
      if (this.ignoreOffer) return;
      this.isSettingRemoteAnswerPending = description.type === 'answer';
      await pc.setRemoteDescription(/** @type {RTCSessionDescriptionInit} */ (description)); // rolls back our offer if needed
      this.isSettingRemoteAnswerPending = false;
      await this.flushCandidates();
      if (description.type === 'offer') {
        if (!this.audioTx || !this.videoTx || !this.channel) await this.adoptTransceivers();
        await pc.setLocalDescription();
        if (pc.localDescription) this.signal({ kind: 'description', description: /** @type {any} */ (pc.localDescription.toJSON()) });
      }
    } else if (payload.kind === 'candidate') {
      const c = payload.candidate;
      if (!c || !c.candidate) return; // end of candidates: nothing to do
      if (!pc.remoteDescription) { this.pendingCandidates.push(c); return; }
      await this.addCandidate(c);
    }
  }

  async flushCandidates() {
    const queued = this.pendingCandidates.splice(0);
    for (const c of queued) await this.addCandidate(c);
  }

  /** @param {RTCIceCandidateInit} c */
  async addCandidate(c) {
    try {
      await this.pc.addIceCandidate(c);
    } catch (e) {
      if (!this.ignoreOffer) console.warn(`huddle: candidate from ${this.peerId} refused`, e);
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    try { this.channel?.close(); } catch { /* ignore */ }
    try { this.pc.close(); } catch { /* ignore */ }
    for (const tr of this.stream.getTracks()) tr.stop();
  }
}
