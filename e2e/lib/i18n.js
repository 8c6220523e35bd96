// The page's own sentences, read from web/js/i18n.js, so that tests compare what the page shows
// with what it is meant to say in each language.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_DIR } from './env.js';

const I18N = readFileSync(path.join(REPO_DIR, 'web', 'js', 'i18n.js'), 'utf8');

/**
 * The sentence for `key` in `lang` (`'en'` or `'ko'`), with `{name}` placeholders filled in from
 * `vars` (the others left as they are).
 * @param {'en'|'ko'} lang @param {string} key @param {Record<string, unknown>} [vars]
 */
export function sentence(lang, key, vars = {}) {
  const ko = I18N.indexOf('\n  ko: {');
  assert.ok(ko > 0, 'web/js/i18n.js has a ko section');
  const part = lang === 'ko' ? I18N.slice(ko) : I18N.slice(0, ko);
  const m = new RegExp(`'${key.replace(/\./g, '\\.')}':\\s*'((?:[^'\\\\]|\\\\.)*)'`).exec(part);
  assert.ok(m, `web/js/i18n.js has ${key} in ${lang}`);
  return m[1].replace(/\\(.)/g, '$1').replace(/\{(\w+)\}/g, (all, k) => (k in vars ? String(vars[k]) : all));
}
