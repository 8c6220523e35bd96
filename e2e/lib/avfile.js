// Reading recorded media files with ffprobe/ffmpeg (installed by scripts/test): durations,
// codecs, whether a file decodes, one video frame as RGB, audio as samples, and how strong a
// frequency is in them (Goertzel).
import { execFile } from 'node:child_process';

const FFPROBE = process.env.FFPROBE_PATH || 'ffprobe';
const FFMPEG = process.env.FFMPEG_PATH || 'ffmpeg';

/**
 * Run a program; resolves to {code, stdout (Buffer), stderr (string)} whatever its exit code.
 * Never hangs: killed after `timeoutMs`.
 */
export function runTool(cmd, args, { timeoutMs = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'buffer', maxBuffer: 256 << 20, timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`${cmd} ${args.join(' ')}: ${err.killed ? `killed after ${timeoutMs} ms` : err.message}\n${stderr}`));
        return;
      }
      resolve({ code: err ? err.code : 0, stdout, stderr: stderr.toString() });
    });
  });
}

/** ffprobe's format and streams of `file`. */
export async function probe(file) {
  const r = await runTool(FFPROBE, ['-v', 'error', '-show_format', '-show_streams', '-of', 'json', file]);
  if (r.code !== 0) throw new Error(`ffprobe ${file} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout.toString());
}

/**
 * A media file's first stream: codec, and its length in seconds — the container's duration
 * when it has one, and from its last packet otherwise (a file cut by a crash has none). Also the
 * number of packets.
 */
export async function streamInfo(file) {
  const info = await probe(file);
  const s = info.streams?.[0];
  if (!s) throw new Error(`${file}: no stream`);
  const r = await runTool(FFPROBE, ['-v', 'error', '-select_streams', '0', '-show_entries', 'packet=pts_time,duration_time', '-of', 'csv=p=0', file]);
  const packets = r.stdout.toString().trim().split('\n').filter(Boolean).map((l) => l.split(',').map(Number));
  const last = packets.at(-1);
  const first = packets[0];
  const fromPackets = last ? last[0] + (Number.isFinite(last[1]) ? last[1] : 0) - (first ? first[0] : 0) : 0;
  const container = Number(info.format?.duration);
  return {
    codec: s.codec_name, kind: s.codec_type, width: s.width, height: s.height,
    duration: Number.isFinite(container) && container > 0 ? container : fromPackets,
    containerDuration: Number.isFinite(container) ? container : null,
    packetsDuration: fromPackets, packets: packets.length,
    firstPts: first ? first[0] : null,
  };
}

/**
 * Decode the whole file (`ffmpeg -v error -i file -f null -`): exit code and the errors it
 * printed; and the frames of its first stream that decode (`ffprobe -count_frames`, audio too).
 */
export async function decodeAll(file) {
  const r = await runTool(FFMPEG, ['-hide_banner', '-nostdin', '-v', 'error', '-i', file, '-f', 'null', '-']);
  const c = await runTool(FFPROBE, ['-v', 'quiet', '-count_frames', '-select_streams', '0', '-show_entries', 'stream=nb_read_frames', '-of', 'csv=p=0', file]);
  const frames = Number.parseInt(c.stdout.toString().trim(), 10);
  return { code: r.code, errors: r.stderr.trim(), frames: Number.isFinite(frames) ? frames : null };
}

/**
 * One video frame at `atSec` as raw RGB (width × height × 3 bytes).
 * @returns {Promise<{rgb: Buffer, width: number, height: number}>}
 */
export async function frameAt(file, atSec, { width, height }) {
  const r = await runTool(FFMPEG, ['-hide_banner', '-nostdin', '-v', 'error', '-ss', atSec.toFixed(3), '-i', file,
    '-frames:v', '1', '-s', `${width}x${height}`, '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-']);
  if (r.code !== 0 || r.stdout.length !== width * height * 3) {
    throw new Error(`ffmpeg frame at ${atSec}s of ${file}: code ${r.code}, ${r.stdout.length} bytes (want ${width * height * 3}): ${r.stderr}`);
  }
  return { rgb: r.stdout, width, height };
}

/** Also write that frame as a PNG (for people to look at). */
export async function framePng(file, atSec, out) {
  const r = await runTool(FFMPEG, ['-hide_banner', '-nostdin', '-v', 'error', '-y', '-ss', atSec.toFixed(3), '-i', file, '-frames:v', '1', out]);
  return r.code === 0;
}

/** Mean RGB of a rectangle of a raw RGB frame. */
export function regionMean({ rgb, width }, { x, y, w, h }) {
  const acc = [0, 0, 0];
  let n = 0;
  for (let yy = Math.round(y); yy < Math.round(y + h); yy++) {
    for (let xx = Math.round(x); xx < Math.round(x + w); xx++) {
      const i = (yy * width + xx) * 3;
      acc[0] += rgb[i]; acc[1] += rgb[i + 1]; acc[2] += rgb[i + 2];
      n++;
    }
  }
  return acc.map((v) => Math.round(v / Math.max(1, n)));
}

/**
 * Audio from `fromSec` for `seconds`, mixed to mono at 48 kHz, as floats in -1..1.
 * @returns {Promise<Float64Array>}
 */
export async function audioSamples(file, fromSec, seconds, { rate = 48000 } = {}) {
  const r = await runTool(FFMPEG, ['-hide_banner', '-nostdin', '-v', 'error', '-ss', fromSec.toFixed(3), '-t', seconds.toFixed(3), '-i', file,
    '-vn', '-ac', '1', '-ar', String(rate), '-f', 's16le', '-']);
  if (r.code !== 0) throw new Error(`ffmpeg audio of ${file}: code ${r.code}: ${r.stderr}`);
  const n = Math.floor(r.stdout.length / 2);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = r.stdout.readInt16LE(i * 2) / 32768;
  return out;
}

/**
 * Power of `freq` in `samples` (Goertzel over a Hann window, normalised so that a full-scale
 * sine at exactly `freq` gives about 0.25 × 0.25 = 1/16 whatever the length).
 */
export function tonePower(samples, rate, freq) {
  const n = samples.length;
  if (!n) return 0;
  const w = 2 * Math.PI * freq / rate;
  const coeff = 2 * Math.cos(w);
  let s1 = 0, s2 = 0;
  for (let i = 0; i < n; i++) {
    const hann = 0.5 - 0.5 * Math.cos(2 * Math.PI * i / (n - 1));
    const s0 = samples[i] * hann + coeff * s1 - s2;
    s2 = s1; s1 = s0;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return power / (n * n);
}

/** Root mean square of the samples. */
export function rms(samples) {
  let s = 0;
  for (const v of samples) s += v * v;
  return Math.sqrt(s / Math.max(1, samples.length));
}
