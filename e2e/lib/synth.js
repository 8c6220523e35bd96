// Synthetic participants (crates/synth, str0m clients) to fill a room beyond what browsers can run here.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { HUDDLE_BIN } from './env.js';

/** huddle-synth beside the huddle binary (scripts/test builds both). */
export const SYNTH_BIN = process.env.HUDDLE_SYNTH_BIN
  ? path.resolve(process.env.HUDDLE_SYNTH_BIN)
  : path.join(path.dirname(HUDDLE_BIN), 'huddle-synth');

/**
 * Starts `count` synthetic participants in `room` and resolves once every one of them is
 * connected to the SFU (huddle-synth's `{"ready":true}` line). They leave when `stop()` closes
 * their stdin, or after `seconds`.
 */
export async function startSynth({ wsUrl, room, count, talkers = 0, seconds = 300, timeoutMs = 60_000, joinIntervalMs = 100 }) {
  if (!existsSync(SYNTH_BIN)) throw new Error(`huddle-synth not found at ${SYNTH_BIN}: run \`cargo build --release -p huddle-synth\``);
  const args = ['--url', wsUrl, '--room', room, '--count', String(count), '--talkers', String(talkers),
    '--seconds', String(seconds), '--join-interval-ms', String(joinIntervalMs), '--until-stdin-closes', '--connect-timeout-secs', String(Math.ceil(timeoutMs / 1000))];
  const proc = spawn(SYNTH_BIN, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines = [];
  const output = () => lines.join('\n');
  proc.stderr.on('data', (c) => { for (const l of c.toString().split('\n')) if (l) lines.push(`[stderr] ${l}`); });
  const ready = await new Promise((resolve, reject) => {
    let pending = '';
    const timer = setTimeout(() => reject(new Error(`huddle-synth: not ready within ${timeoutMs} ms\n${output()}`)), timeoutMs + 5000);
    proc.stdout.on('data', (c) => {
      pending += c.toString();
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        lines.push(`[stdout] ${line}`);
        try {
          const j = JSON.parse(line);
          if (j.ready) { clearTimeout(timer); resolve(j); }
        } catch { /* progress */ }
      }
    });
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      // Its verdict (the last line) first: the lines before it can be many.
      reject(new Error(`huddle-synth exited (${code ?? signal}) before it was ready: ${lines.at(-1) ?? ''}\n${output()}`));
    });
  });
  return {
    ready,
    output,
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.stdin.end();
      const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await gone;
      clearTimeout(t);
    },
  };
}
