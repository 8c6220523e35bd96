// Local media: camera and microphone (getUserMedia), devices, the microphone level meter, screen
// capture. No peer connections here; the call swaps tracks with RTCRtpSender.replaceTrack.

const PREFS_KEY = 'huddle.devices';

/** @typedef {'camera'|'mic'} DeviceKind */

/**
 * Page-side error code for a failed getUserMedia.
 * @param {any} err
 * @param {DeviceKind} kind
 * @returns {string} e.g. camera_denied, no_mic, camera_busy
 */
export function mediaErrorCode(err, kind) {
  const name = err && err.name;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') return `${kind}_denied`;
  if (name === 'NotFoundError' || name === 'OverconstrainedError' || name === 'DevicesNotFoundError') return `no_${kind}`;
  if (name === 'NotReadableError' || name === 'AbortError' || name === 'TrackStartError') return `${kind}_busy`;
  if (name === 'TypeError' && !navigator.mediaDevices) return 'media_unavailable';
  return `${kind}_busy`;
}

/** Whether this browser can pick the audio output of a media element. */
export const speakerSelectable = typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;

/** Whether getUserMedia exists here (it needs a secure context: HTTPS or localhost). */
export const mediaAvailable = !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);

function loadPrefs() {
  try { return JSON.parse(localStorage.getItem(PREFS_KEY) || '{}') || {}; } catch { return {}; }
}

/**
 * The camera, microphone and screen capture of this page, with the user's intent (mic on,
 * camera on) kept apart from the tracks, so switching devices never changes the mute state.
 */
export class LocalMedia {
  constructor() {
    /** @type {MediaStreamTrack|null} */ this.camTrack = null;
    /** @type {MediaStreamTrack|null} */ this.micTrack = null;
    /** @type {MediaStreamTrack|null} */ this.screenTrack = null;
    const p = loadPrefs();
    /** preferred device ids */
    this.camId = /** @type {string} */ (p.camId || '');
    this.micId = /** @type {string} */ (p.micId || '');
    this.speakerId = /** @type {string} */ (p.speakerId || '');
    /** the user wants the microphone unmuted / the camera on */
    this.micOn = true;
    this.camOn = true;
    /** last error code per kind ('' when fine) */
    this.camError = '';
    this.micError = '';
    /** @type {MediaDeviceInfo[]} */ this.devices = [];
    /** The tail of the device operations queued with `run` (never rejects), and how many are
     * queued or running. */
    this.queue = Promise.resolve();
    this.pending = 0;
  }

  /**
   * Runs a device operation (opening, switching or stopping a camera or microphone, and putting
   * the result into the call) after every one queued before it. Two operations never interleave,
   * so each finds the tracks the last one left (a quick double click or a device switch during
   * the pre-join camera start cannot leave the wrong camera or none), and a step that depends on
   * the devices — joining — can wait for them all with `settled`. Never call `run` inside `fn`.
   * @template T
   * @param {() => Promise<T>} fn
   * @returns {Promise<T>}
   */
  run(fn) {
    this.pending += 1;
    const p = this.queue.then(fn);
    this.queue = p.then(() => {}, () => {}).then(() => { this.pending -= 1; });
    return p;
  }

  /**
   * Resolves true once no device operation is queued or running, or false after `ms` (a
   * permission prompt nobody answers).
   * @param {number} ms
   */
  async settled(ms) {
    const deadline = Date.now() + ms;
    for (;;) {
      const q = this.queue;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      /** @type {ReturnType<typeof setTimeout>|undefined} */
      let timer;
      const late = new Promise((resolve) => { timer = setTimeout(() => resolve(false), left); });
      const done = await Promise.race([q.then(() => true), late]);
      clearTimeout(timer);
      if (!done) return false;
      if (this.queue === q) return true; // nothing was queued meanwhile
    }
  }

  savePrefs() {
    try { localStorage.setItem(PREFS_KEY, JSON.stringify({ camId: this.camId, micId: this.micId, speakerId: this.speakerId })); } catch { /* ignore */ }
  }

  /** @param {string} id @param {boolean} exact */
  static videoConstraints(id, exact) {
    return {
      width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 24, max: 30 },
      ...(id ? { deviceId: exact ? { exact: id } : { ideal: id } } : {}),
    };
  }

  /** @param {string} id @param {boolean} exact */
  static audioConstraints(id, exact) {
    return {
      echoCancellation: true, noiseSuppression: true, autoGainControl: true,
      ...(id ? { deviceId: exact ? { exact: id } : { ideal: id } } : {}),
    };
  }

  /**
   * Opens camera and microphone for the pre-join step. Never throws: what failed is in
   * camError / micError. Asks once for both, then one by one to learn which one failed.
   */
  async start() {
    this.camError = this.micError = '';
    if (!mediaAvailable) { this.camError = this.micError = 'media_unavailable'; return; }
    const wantCam = !this.camTrack, wantMic = !this.micTrack;
    if (!wantCam && !wantMic) return;
    try {
      const s = await navigator.mediaDevices.getUserMedia({
        video: wantCam ? LocalMedia.videoConstraints(this.camId, false) : false,
        audio: wantMic ? LocalMedia.audioConstraints(this.micId, false) : false,
      });
      this.adopt(s);
    } catch {
      if (wantMic) await this.openMic('').catch(() => {});
      if (wantCam) await this.openCamera('').catch(() => {});
    }
    await this.listDevices();
  }

  /** @param {MediaStream} s */
  adopt(s) {
    for (const tr of s.getTracks()) {
      if (tr.kind === 'video') { this.camTrack = tr; this.camId = tr.getSettings().deviceId || this.camId; }
      else { this.micTrack = tr; this.micId = tr.getSettings().deviceId || this.micId; tr.enabled = this.micOn; }
    }
  }

  /**
   * Opens a camera (the given device, or any), replacing and stopping the old track.
   * @param {string} deviceId '' for any camera
   * @returns {Promise<MediaStreamTrack>}
   */
  async openCamera(deviceId) {
    const old = this.camTrack;
    // Some cameras cannot be opened twice: let go of the old one first.
    if (old) { old.stop(); this.camTrack = null; }
    try {
      const s = await navigator.mediaDevices.getUserMedia({ video: LocalMedia.videoConstraints(deviceId, !!deviceId) });
      const tr = s.getVideoTracks()[0];
      this.camTrack = tr;
      this.camId = tr.getSettings().deviceId || deviceId;
      this.camError = '';
      this.savePrefs();
      return tr;
    } catch (e) {
      this.camError = mediaErrorCode(e, 'camera');
      throw e;
    }
  }

  /**
   * Opens a microphone, keeping the mute state; stops the old track.
   * @param {string} deviceId '' for any microphone
   * @returns {Promise<MediaStreamTrack>}
   */
  async openMic(deviceId) {
    try {
      const s = await navigator.mediaDevices.getUserMedia({ audio: LocalMedia.audioConstraints(deviceId, !!deviceId) });
      const tr = s.getAudioTracks()[0];
      tr.enabled = this.micOn;
      const old = this.micTrack;
      this.micTrack = tr;
      if (old) old.stop();
      this.micId = tr.getSettings().deviceId || deviceId;
      this.micError = '';
      this.savePrefs();
      return tr;
    } catch (e) {
      this.micError = mediaErrorCode(e, 'mic');
      throw e;
    }
  }

  /** Stops the camera (its light goes off). */
  stopCamera() {
    if (this.camTrack) { this.camTrack.stop(); this.camTrack = null; }
  }

  /** @param {boolean} on */
  setMicOn(on) {
    this.micOn = on;
    if (this.micTrack) this.micTrack.enabled = on;
  }

  /** Starts screen capture; resolves to the video track. */
  async startScreen() {
    const s = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
    const tr = s.getVideoTracks()[0];
    if ('contentHint' in tr) tr.contentHint = 'detail';
    this.screenTrack = tr;
    return tr;
  }

  stopScreen() {
    if (this.screenTrack) { this.screenTrack.onended = null; this.screenTrack.stop(); this.screenTrack = null; }
  }

  /** Stops everything. */
  stopAll() {
    this.stopCamera();
    this.stopScreen();
    if (this.micTrack) { this.micTrack.stop(); this.micTrack = null; }
  }

  /** Re-reads the device list. */
  async listDevices() {
    try { this.devices = await navigator.mediaDevices.enumerateDevices(); } catch { this.devices = []; }
    return this.devices;
  }

  /** @param {MediaDeviceKind} kind */
  devicesOf(kind) { return this.devices.filter((d) => d.kind === kind && d.deviceId); }

  /** @param {MediaDeviceKind} kind @param {string} id */
  hasDevice(kind, id) { return this.devicesOf(kind).some((d) => d.deviceId === id); }

  /** @param {MediaDeviceKind} kind @param {string} id */
  labelOf(kind, id) { return this.devicesOf(kind).find((d) => d.deviceId === id)?.label || ''; }
}

/** @type {AudioContext|null} */
let audioCtx = null;

/** The page's one AudioContext (created on first use, resumed when possible). */
export function audioContext() {
  if (!audioCtx) {
    const AC = window.AudioContext || /** @type {any} */ (window).webkitAudioContext;
    audioCtx = new AC();
  }
  if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
  return audioCtx;
}

/**
 * Microphone level from a WebAudio AnalyserNode, reported about 20 times a second as 0..1.
 */
export class LevelMeter {
  /**
   * @param {(level:number)=>void} onLevel
   */
  constructor(onLevel) {
    this.onLevel = onLevel;
    /** @type {MediaStreamAudioSourceNode|null} */ this.source = null;
    /** @type {AnalyserNode|null} */ this.analyser = null;
    /** @type {ReturnType<typeof setInterval>|null} */ this.timer = null;
    /** @type {Float32Array|null} */ this.buf = null;
  }

  /** Measures this track (or nothing when null). @param {MediaStreamTrack|null} track */
  attach(track) {
    this.detach();
    if (!track || track.readyState === 'ended') { this.onLevel(0); return; }
    try {
      const ctx = audioContext();
      this.source = ctx.createMediaStreamSource(new MediaStream([track]));
      this.analyser = ctx.createAnalyser();
      this.analyser.fftSize = 1024;
      this.analyser.smoothingTimeConstant = 0.3;
      this.source.connect(this.analyser);
      this.buf = new Float32Array(this.analyser.fftSize);
      let smooth = 0;
      this.timer = setInterval(() => {
        if (!this.analyser || !this.buf) return;
        this.analyser.getFloatTimeDomainData(/** @type {any} */ (this.buf));
        let sum = 0;
        for (let i = 0; i < this.buf.length; i++) sum += this.buf[i] * this.buf[i];
        const rms = Math.sqrt(sum / this.buf.length);
        // Roughly: -60 dBFS → 0, 0 dBFS → 1.
        const db = 20 * Math.log10(rms || 1e-8);
        const level = Math.max(0, Math.min(1, (db + 60) / 60));
        smooth = Math.max(level, smooth * 0.85);
        this.onLevel(track.enabled ? smooth : 0);
      }, 50);
    } catch (e) {
      console.warn('huddle: level meter unavailable', e);
    }
  }

  detach() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    try { this.source?.disconnect(); } catch { /* ignore */ }
    this.source = null;
    this.analyser = null;
  }
}
