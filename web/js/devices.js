// Cameras, microphones and speakers: the three selects (one set, moved between pre-join and the
// settings dialog), switching mid-call with replaceTrack, and devices coming and going.
import { t } from './i18n.js';
import { speakerSelectable } from './media.js';
import { media, S, errorVars } from './core.js';
import { $, notice, showError } from './ui.js';
import * as call from './call.js';

/** @type {{meter: import('./media.js').LevelMeter, refresh: () => void}} */
let hooks;

/**
 * Wires the selects and device events.
 * @param {{meter: import('./media.js').LevelMeter, refresh: () => void}} h
 */
export function initDevices(h) {
  hooks = h;
  for (const [id, kind] of /** @type {const} */ ([['#camera-select', 'camera'], ['#mic-select', 'mic']])) {
    $(id).addEventListener('change', (e) => switchDevice(kind, /** @type {HTMLSelectElement} */ (e.target).value));
  }
  $('#speaker-select').addEventListener('change', (e) => {
    media.speakerId = /** @type {HTMLSelectElement} */ (e.target).value;
    media.savePrefs();
    for (const rec of S.peers.values()) rec.tile?.setSink(media.speakerId);
  });
  navigator.mediaDevices?.addEventListener?.('devicechange', () => { onDevicesChanged(); });
  document.addEventListener('huddle:trackended', () => { onDevicesChanged(); });
}

/**
 * @param {HTMLSelectElement} sel
 * @param {MediaDeviceInfo[]} list
 * @param {string} current
 * @param {string} kindKey
 */
function fillSelect(sel, list, current, kindKey) {
  const opts = list.map((d, i) => {
    const o = document.createElement('option');
    o.value = d.deviceId;
    o.textContent = d.label || t('device.unnamed', { kind: t(kindKey), n: i + 1 });
    return o;
  });
  if (!opts.length) {
    const o = document.createElement('option');
    o.value = '';
    o.textContent = t('device.none');
    opts.push(o);
  }
  sel.replaceChildren(...opts);
  sel.disabled = !list.length;
  if (current && list.some((d) => d.deviceId === current)) sel.value = current;
}

export function fillDevices() {
  fillSelect(/** @type {HTMLSelectElement} */ ($('#camera-select')), media.devicesOf('videoinput'), media.camId, 'kind.camera');
  fillSelect(/** @type {HTMLSelectElement} */ ($('#mic-select')), media.devicesOf('audioinput'), media.micId, 'kind.mic');
  $('#speaker-field').hidden = !speakerSelectable;
  if (speakerSelectable) {
    fillSelect(/** @type {HTMLSelectElement} */ ($('#speaker-select')), media.devicesOf('audiooutput'), media.speakerId || 'default', 'kind.speaker');
  }
}


/**
 * One after the other with every other device operation (`LocalMedia.run`): a switch during the
 * pre-join camera start, or two quick switches, end with the last device chosen.
 * @param {'camera'|'mic'} kind @param {string} id
 */
function switchDevice(kind, id) {
  return media.run(() => switchDeviceNow(kind, id));
}

/** @param {'camera'|'mic'} kind @param {string} id */
async function switchDeviceNow(kind, id) {
  if (kind === 'camera') {
    if (!media.camOn) { media.camId = id; media.savePrefs(); return; }
    try {
      const tr = await media.openCamera(id);
      call.watchEnded(tr);
    } catch {
      showError(media.camError, errorVars(media.camError));
      await media.openCamera('').catch(() => {});
    }
    if (S.inRoom && !S.sharing) await call.replaceAll('video', media.camTrack);
  } else {
    try {
      const tr = await media.openMic(id);
      call.watchEnded(tr);
    } catch {
      showError(media.micError, errorVars(media.micError));
    }
    if (S.inRoom) await call.replaceAll('audio', media.micTrack);
    hooks.meter.attach(media.micTrack);
  }
  afterMediaChange();
}

function afterMediaChange() {
  fillDevices();
  hooks.refresh();
  if (S.inRoom) call.announce();
}

/** A device was plugged in or out, or a track ended: re-list and fall back if ours is gone. */
function onDevicesChanged() {
  return media.run(onDevicesChangedNow);
}

async function onDevicesChangedNow() {
  await media.listDevices();
  const camGone = media.camTrack && (media.camTrack.readyState === 'ended' || !media.hasDevice('videoinput', media.camId));
  const micGone = media.micTrack && (media.micTrack.readyState === 'ended' || !media.hasDevice('audioinput', media.micId));
  if (camGone) {
    media.stopCamera();
    try {
      const tr = await media.openCamera('');
      call.watchEnded(tr);
      notice(t('notice.cameraFallback', { device: tr.label || t('kind.camera') }));
    } catch {
      media.camOn = false;
      notice(t('notice.cameraGone'));
    }
    if (S.inRoom && !S.sharing) await call.replaceAll('video', call.outgoingVideo());
  }
  if (micGone) {
    try {
      const tr = await media.openMic('');
      call.watchEnded(tr);
      notice(t('notice.micFallback', { device: tr.label || t('kind.mic') }));
    } catch {
      media.micTrack?.stop();
      media.micTrack = null;
      notice(t('notice.micGone'));
    }
    if (S.inRoom) await call.replaceAll('audio', media.micTrack);
    hooks.meter.attach(media.micTrack);
  }
  afterMediaChange();
}
