// Glue for node:test: tests that dump diagnostics when they fail, and skip once the scenario is broken.
import { test } from 'node:test';
import { dumpDiagnostics } from './browser.js';

/**
 * A shared scenario for one test file: its server(s), participants, and whether an earlier step
 * that later ones depend on has failed.
 */
export class Scenario {
  constructor(label) {
    this.label = label;
    this.server = null;
    /** @type {import('./browser.js').Participant[]} */
    this.participants = [];
    this.broken = null; // name of the step whose failure makes later steps meaningless
  }

  /**
   * Declare a test step. On failure it writes artefacts/fail-<label>-<step>.{log,png}.
   * `critical` steps mark the scenario broken when they fail, and later steps are then skipped
   * (except `always` steps).
   */
  step(name, fn, { critical = false, always = false, timeout = 60_000 } = {}) {
    test(name, { timeout }, async (t) => {
      if (this.broken && !always) { t.skip(`skipped: "${this.broken}" failed`); return; }
      try {
        await fn(t);
      } catch (e) {
        if (critical) this.broken = name;
        const file = await dumpDiagnostics(`${this.label}-${name}`, this.participants, this.server);
        e.message += `\n(diagnostics: ${file})`;
        throw e;
      }
    });
  }

  async closeAll() {
    await Promise.all(this.participants.map((p) => p.close()));
    this.participants = [];
  }
}
