// Fake-camera clips: one Y4M per participant, each a distinct colour and letter.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FAKE_CAMERA } from './env.js';

const run = promisify(execFile);

/** Participant palette: saturated colours far apart from each other. */
export const PALETTE = [
  { label: 'A', colour: 'red', rgb: [210, 30, 30] },
  { label: 'B', colour: 'green', rgb: [30, 180, 40] },
  { label: 'C', colour: 'blue', rgb: [30, 50, 210] },
  { label: 'D', colour: 'yellow', rgb: [220, 200, 20] },
  { label: 'E', colour: 'magenta', rgb: [200, 30, 200] },
  { label: 'F', colour: 'cyan', rgb: [20, 190, 200] },
];

/** A temp dir, removed by the returned cleanup. */
export function makeTempDir(prefix = 'huddle-e2e-') {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Write one clip with shared/tools/fake-camera.py.
 * @returns {Promise<{path: string, label: string, colour: string, rgb: number[], mean: number[]}>}
 *   `mean` is the clip's own mean RGB (background plus the white letter and bar).
 */
export async function makeClip(dir, { label, colour, rgb }, { size = '320x240', frames = 40 } = {}) {
  if (!existsSync(FAKE_CAMERA)) {
    throw new Error(`fake-camera.py not found at ${FAKE_CAMERA}; set HUDDLE_SHARED to the shared/ directory`);
  }
  const out = path.join(dir, `camera-${label}-${colour}.y4m`);
  await run('python3', [FAKE_CAMERA, out, label, ...rgb.map(String), '--size', size, '--frames', String(frames)]);
  return { path: out, label, colour, rgb, mean: y4mMeanRgb(out) };
}

/** Clips for the first `n` palette entries. */
export async function makeClips(dir, n) {
  return Promise.all(PALETTE.slice(0, n).map((p) => makeClip(dir, p)));
}

/** Mean RGB of the first frame of a 4:2:0 Y4M written with full-range (jpeg) BT.601. */
export function y4mMeanRgb(file) {
  const data = readFileSync(file);
  const headerEnd = data.indexOf(0x0a);
  const header = data.subarray(0, headerEnd).toString('latin1');
  const w = Number(/ W(\d+)/.exec(header)[1]);
  const h = Number(/ H(\d+)/.exec(header)[1]);
  const frameStart = data.indexOf(0x0a, headerEnd + 1) + 1; // after "FRAME\n"
  const ySize = w * h, cSize = (w >> 1) * (h >> 1);
  const avg = (off, len) => { let s = 0; for (let i = 0; i < len; i++) s += data[off + i]; return s / len; };
  const Y = avg(frameStart, ySize);
  const U = avg(frameStart + ySize, cSize) - 128;
  const V = avg(frameStart + ySize + cSize, cSize) - 128;
  const clamp = (v) => Math.max(0, Math.min(255, Math.round(v)));
  return [clamp(Y + 1.402 * V), clamp(Y - 0.344136 * U - 0.714136 * V), clamp(Y + 1.772 * U)];
}

export function colourDistance(a, b) {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/**
 * Which clip a measured colour belongs to: the nearest clip mean.
 * @returns {{clip: object, distance: number}}
 */
export function nearestClip(rgb, clips) {
  let best = null;
  for (const clip of clips) {
    const d = colourDistance(rgb, clip.mean);
    if (!best || d < best.distance) best = { clip, distance: d };
  }
  return best;
}

/**
 * A "voice" for --use-file-for-fake-audio-capture: 4 s of a buzzy 130 Hz tone (25 harmonics, like
 * a voiced vowel) whose loudness swings four times a second like syllables, 48 kHz mono 16-bit WAV.
 * Chromium's own fake microphone only beeps briefly every half second, too quiet on average (and
 * not voice-like enough for its voice activity detector) to count as someone speaking.
 */
export function writeVoiceWav(dir, name = 'voice.wav') {
  const rate = 48000, seconds = 4, n = rate * seconds;
  const buf = Buffer.alloc(44 + n * 2);
  buf.write('RIFF', 0); buf.writeUInt32LE(36 + n * 2, 4); buf.write('WAVE', 8);
  buf.write('fmt ', 12); buf.writeUInt32LE(16, 16); buf.writeUInt16LE(1, 20); buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24); buf.writeUInt32LE(rate * 2, 28); buf.writeUInt16LE(2, 32); buf.writeUInt16LE(16, 34);
  buf.write('data', 36); buf.writeUInt32LE(n * 2, 40);
  let seed = 1;
  const noise = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff - 0.5; };
  for (let i = 0; i < n; i++) {
    const t = i / rate;
    const pitch = 130 * (1 + 0.08 * Math.sin(2 * Math.PI * 0.7 * t));
    let v = 0;
    for (let k = 1; k <= 25; k++) {
      // Two formant-like bumps (around 700 Hz and 1200 Hz) over a falling slope.
      const f = k * pitch;
      const formant = 1 + 3 * Math.exp(-(((f - 700) / 250) ** 2)) + 2 * Math.exp(-(((f - 1200) / 300) ** 2));
      v += (formant / k) * Math.sin(2 * Math.PI * k * pitch * t);
    }
    const syllable = 0.6 + 0.4 * Math.sin(2 * Math.PI * 3.5 * t); // never quite silent, like running speech
    const sample = 0.12 * syllable * v + 0.01 * noise();
    buf.writeInt16LE(Math.max(-32767, Math.min(32767, Math.round(32767 * sample))), 44 + i * 2);
  }
  const file = path.join(dir, name);
  writeFileSync(file, buf);
  return file;
}

/**
 * A pure sine tone for --use-file-for-fake-audio-capture (Chromium loops the file): `freq` Hz,
 * `seconds` long (a whole number of cycles per second, so the loop has no click when `freq` is an
 * integer), 48 kHz mono 16-bit WAV at `amplitude` (0..1 of full scale). Tones far apart tell
 * participants apart in a mixed recording.
 * @param {string} dir
 * @param {number} freq
 * @param {{seconds?: number, amplitude?: number, name?: string}} [opts]
 */
export function writeToneWav(dir, freq, { seconds = 6, amplitude = 0.25, name = `tone-${freq}.wav` } = {}) {
  const rate = 48000, n = rate * seconds;
  const buf = Buffer.alloc(44 + n * 2);
  buf.write('RIFF', 0); buf.writeUInt32LE(36 + n * 2, 4); buf.write('WAVE', 8);
  buf.write('fmt ', 12); buf.writeUInt32LE(16, 16); buf.writeUInt16LE(1, 20); buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24); buf.writeUInt32LE(rate * 2, 28); buf.writeUInt16LE(2, 32); buf.writeUInt16LE(16, 34);
  buf.write('data', 36); buf.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) {
    const v = amplitude * Math.sin(2 * Math.PI * freq * (i / rate));
    buf.writeInt16LE(Math.round(32767 * v), 44 + i * 2);
  }
  const file = path.join(dir, name);
  writeFileSync(file, buf);
  return file;
}
