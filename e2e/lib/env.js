// Where things are, and the timeouts every wait uses.
import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const E2E_DIR = fileURLToPath(new URL('..', import.meta.url));
export const REPO_DIR = path.resolve(E2E_DIR, '..');

/** The server binary: $HUDDLE_BIN, else ../target/release/huddle relative to e2e/. */
export const HUDDLE_BIN = process.env.HUDDLE_BIN
  ? path.resolve(process.env.HUDDLE_BIN)
  : path.join(REPO_DIR, 'target', 'release', 'huddle');

/**
 * When set, the server serves the page from this directory (`--web-dir`) instead of the copy
 * built into the binary; handy while the page is being edited.
 */
export const HUDDLE_WEB_DIR = process.env.HUDDLE_WEB_DIR ? path.resolve(process.env.HUDDLE_WEB_DIR) : null;

/** shared/ sits beside the repository; $HUDDLE_SHARED overrides it. */
function findShared() {
  const candidates = [];
  if (process.env.HUDDLE_SHARED) candidates.push(path.resolve(process.env.HUDDLE_SHARED));
  candidates.push(fileURLToPath(new URL('../../../shared', import.meta.url)));
  for (const dir of candidates) {
    if (existsSync(path.join(dir, 'tools', 'fake-camera.py'))) return dir;
  }
  return candidates[0];
}
export const SHARED_DIR = findShared();
export const FAKE_CAMERA = path.join(SHARED_DIR, 'tools', 'fake-camera.py');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const ARTIFACTS_DIR = path.join(E2E_DIR, 'artifacts');
export function artifactsDir() {
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  return ARTIFACTS_DIR;
}

/** Timeouts in milliseconds. Every wait in the suite takes one of these. */
export const T = {
  serverStart: 15_000,
  navigation: 15_000,
  ui: 10_000,
  media: 20_000,
  transfer: 20_000,
};

/** A name safe for file names. */
export function slug(s) {
  return String(s).replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 80) || 'x';
}
