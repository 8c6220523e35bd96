// Fake-camera clips: one Y4M per participant, each a distinct colour and letter.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
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
