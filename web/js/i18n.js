// English and Korean strings. Elements carry data-i18n (textContent), data-i18n-label
// (aria-label), data-i18n-title (title) and data-i18n-placeholder; apply() fills them in.

const STORE_KEY = 'huddle.lang';

/** @type {Record<string, Record<string, string>>} */
const STRINGS = {
  en: {
    'app.tagline': 'Video meetings on your own server',
    'lang.label': 'Language',
    'landing.title': 'Meet right away',
    'landing.lead': 'Pick a name, then enter a room. Anyone who enters the same room name meets you there.',
    'name.label': 'Your name',
    'name.placeholder': 'e.g. Mina',
    'room.label': 'Room name',
    'room.placeholder': 'e.g. Weekly sync',
    'enter': 'Enter room',
    'rooms.title': 'Public rooms',
    'rooms.empty': 'No one is meeting right now. Enter a room name to start one.',
    'rooms.count': '{n} of {cap}',
    'rooms.full': 'Full',
    'rooms.enter': 'Enter {room}, {n} of {cap} people',
    'rooms.connecting': 'Connecting to the server…',
    'prejoin.title': 'Ready to join?',
    'prejoin.room': 'Room: {room}',
    'prejoin.back': 'Back',
    'prejoin.nobody': 'No one else is here yet.',
    'prejoin.one': '1 person is in this room.',
    'prejoin.many': '{n} people are in this room.',
    'prejoin.full': 'This room is full right now ({n} of {cap}).',
    'copyLink': 'Copy room link',
    'notice.copied': 'Room link copied.',
    'camera.label': 'Camera',
    'mic.label': 'Microphone',
    'speaker.label': 'Speaker',
    'startMuted': 'Start muted',
    'startCameraOff': 'Start with camera off',
    'join': 'Join',
    'device.default': 'Default',
    'device.none': 'None found',
    'device.unnamed': '{kind} {n}',
    'meter.label': 'Microphone level',
    'prejoin.checking': 'Asking for your camera and microphone…',
    'prejoin.ok': 'Camera and microphone are ready.',
    'prejoin.audioOnly': 'You will join with audio only.',
    'prejoin.watchOnly': 'You can still join to watch and listen.',
    'prejoin.cameraOff': 'Camera is off',
    'prejoin.noCamera': 'No camera available',
    'room.people': 'People in this room',
    'mic': 'Microphone',
    'camera': 'Camera',
    'share': 'Share screen',
    'settings': 'Settings',
    'chat': 'Chat',
    'participants': 'Participants',
    'leave': 'Leave',
    'close': 'Close',
    'dismiss': 'Dismiss',
    'settings.title': 'Settings',
    'chat.title': 'In-call messages',
    'chat.message': 'Message',
    'chat.placeholder': 'Send a message to everyone',
    'chat.send': 'Send',
    'chat.empty': 'Messages are visible to everyone in the room and kept for latecomers.',
    'files.send': 'Send a file',
    'files.hint': 'Or drop a file anywhere on the call.',
    'files.drop': 'Drop to send to everyone',
    'files.to': 'to {name}',
    'files.from': 'from {name}',
    'files.sending': 'Sending…',
    'files.receiving': 'Receiving…',
    'files.done': 'Done',
    'files.sent': 'Sent',
    'files.failed': 'Failed',
    'files.download': 'Download',
    'files.nobody': 'There is no one to send the file to yet.',
    'people.title': 'People',
    'people.you': '(you)',
    'tile.you': 'You',
    'tile.muted': 'Microphone off',
    'tile.presenting': '{name} is presenting',
    'tile.pin': 'Pin {name}',
    'tile.unpin': 'Unpin {name}',
    'layout.speaker': 'Speaker view',
    'notice.joined': '{name} joined',
    'notice.left': '{name} left',
    'notice.file': '{name} sent a file: {file}',
    'notice.cameraFallback': 'The camera you used is gone; switched to {device}.',
    'notice.micFallback': 'The microphone you used is gone; switched to {device}.',
    'notice.cameraGone': 'The camera you used is gone.',
    'notice.micGone': 'The microphone you used is gone.',
    'notice.reconnected': 'Connected to the server again.',
    'notice.audioBlocked': 'Click anywhere to hear the others.',
    // errors, by data-code
    'error.bad_json': 'The server could not read a message from this page. Reload the page.',
    'error.bad_message': 'The server could not understand a message from this page. Reload the page.',
    'error.unknown_type': 'The server did not recognise a message from this page. Reload the page.',
    'error.binary_frame': 'The page sent data the server does not accept.',
    'error.frame_too_large': 'That was too large to send.',
    'error.unsupported_protocol': 'This page is out of date: reload it to talk to this server.',
    'error.not_in_room': 'You are not in a room any more. Enter the room again.',
    'error.already_in_room': 'You are already in a room; leave it first.',
    'error.invalid_name': 'Please enter a name of 1 to {max} characters without special control characters.',
    'error.invalid_room': 'Please enter a room name of 1 to {max} characters without special control characters.',
    'error.invalid_text': 'Messages must be 1 to {max} characters long.',
    'error.room_full': 'This room is full ({cap} people). Try again later or pick another room.',
    'error.too_many_rooms': 'The server cannot open more rooms right now. Try one of the existing rooms.',
    'error.unknown_peer': 'That participant has already left the room.',
    'error.camera_denied': 'Camera access was denied. Allow it in the browser’s site settings, or join without video.',
    'error.mic_denied': 'Microphone access was denied. Allow it in the browser’s site settings, or join without sound.',
    'error.media_denied': 'Camera and microphone access was denied. You can still join to watch and listen.',
    'error.no_camera': 'No camera was found. You can join with audio only.',
    'error.no_mic': 'No microphone was found. Others will not hear you.',
    'error.no_devices': 'No camera or microphone was found. You can still join to watch and listen.',
    'error.camera_busy': 'The camera is in use by another application or could not be started.',
    'error.mic_busy': 'The microphone is in use by another application or could not be started.',
    'error.media_unavailable': 'This browser cannot use a camera or microphone here (the page needs HTTPS or localhost).',
    'error.screen_failed': 'Screen sharing could not start.',
    'error.ws_failed': 'Cannot reach the huddle server. Retrying…',
    'error.ws_closed': 'The connection to the server was lost. Reconnecting…',
    'error.server_shutdown': 'The server is shutting down. Reconnecting when it is back…',
    'error.too_slow': 'The connection was too slow and the server dropped it. Reconnecting…',
    'error.timed_out': 'The server stopped hearing from this page. Reconnecting…',
    'error.file_too_large': '“{file}” is too large to send (the limit is {max}).',
    'error.file_too_large_in': '{name} offered “{file}”, which is larger than this server allows ({max}); it was refused.',
    'error.file_corrupted': '“{file}” arrived damaged and was discarded. Ask for it again.',
    'error.file_failed': 'Sending “{file}” did not finish.',
    'error.files_unavailable': 'Sending files needs a secure page (HTTPS or localhost).',
    'error.peer_failed': 'The connection to {name} failed.',
    'error.media_refused': 'The server could not set up your camera and microphone connection. Reload the page to try again.',
    'error.media_failed': 'The media connection to the server was lost. Reconnecting…',
    'error.invalid_file': 'That file cannot be shared (check its name and size, or wait for your other uploads).',
    'error.file_storage_full': 'The server is holding as many shared files as it can. Try again when the room has fewer files.',
    'topology.p2p': 'Peer-to-peer',
    'topology.sfu': 'Via server',
    'topology.p2p.title': 'Audio and video go straight between the browsers in this call.',
    'topology.sfu.title': 'Audio and video go through the server, which forwards them to everyone: each browser sends its video once.',
    'notice.topologySfu': 'More people joined: the call now goes through the server.',
    'notice.mediaReconnecting': 'Reconnecting audio and video…',
    'files.toAll': 'to everyone',
    'kind.camera': 'Camera',
    'kind.mic': 'Microphone',
    'kind.speaker': 'Speaker',
  },
  ko: {
    'app.tagline': '내 서버에서 여는 화상 회의',
    'lang.label': '언어',
    'landing.title': '지금 바로 만나세요',
    'landing.lead': '이름을 정하고 방에 들어가세요. 같은 방 이름으로 들어온 사람과 만나게 됩니다.',
    'name.label': '내 이름',
    'name.placeholder': '예: 민아',
    'room.label': '방 이름',
    'room.placeholder': '예: 주간 회의',
    'enter': '방 들어가기',
    'rooms.title': '공개 방',
    'rooms.empty': '지금 열린 방이 없습니다. 방 이름을 입력해 새로 시작하세요.',
    'rooms.count': '{n}/{cap}명',
    'rooms.full': '가득 참',
    'rooms.enter': '{room} 들어가기, {cap}명 중 {n}명',
    'rooms.connecting': '서버에 연결하는 중…',
    'prejoin.title': '참여할 준비가 되셨나요?',
    'prejoin.room': '방: {room}',
    'prejoin.back': '뒤로',
    'prejoin.nobody': '아직 아무도 없습니다.',
    'prejoin.one': '이 방에 1명이 있습니다.',
    'prejoin.many': '이 방에 {n}명이 있습니다.',
    'prejoin.full': '지금 이 방은 가득 찼습니다({cap}명 중 {n}명).',
    'copyLink': '방 링크 복사',
    'notice.copied': '방 링크를 복사했습니다.',
    'camera.label': '카메라',
    'mic.label': '마이크',
    'speaker.label': '스피커',
    'startMuted': '마이크 끄고 시작',
    'startCameraOff': '카메라 끄고 시작',
    'join': '참여',
    'device.default': '기본값',
    'device.none': '찾을 수 없음',
    'device.unnamed': '{kind} {n}',
    'meter.label': '마이크 음량',
    'prejoin.checking': '카메라와 마이크 권한을 요청하는 중…',
    'prejoin.ok': '카메라와 마이크가 준비되었습니다.',
    'prejoin.audioOnly': '음성으로만 참여합니다.',
    'prejoin.watchOnly': '보고 듣기만 하는 것으로 참여할 수 있습니다.',
    'prejoin.cameraOff': '카메라가 꺼져 있습니다',
    'prejoin.noCamera': '사용할 수 있는 카메라가 없습니다',
    'room.people': '이 방의 참가자',
    'mic': '마이크',
    'camera': '카메라',
    'share': '화면 공유',
    'settings': '설정',
    'chat': '채팅',
    'participants': '참가자',
    'leave': '나가기',
    'close': '닫기',
    'dismiss': '닫기',
    'settings.title': '설정',
    'chat.title': '통화 중 메시지',
    'chat.message': '메시지',
    'chat.placeholder': '모두에게 메시지 보내기',
    'chat.send': '보내기',
    'chat.empty': '메시지는 방의 모든 사람에게 보이며 나중에 들어온 사람도 볼 수 있습니다.',
    'files.send': '파일 보내기',
    'files.hint': '통화 화면 아무 곳에나 파일을 끌어다 놓아도 됩니다.',
    'files.drop': '놓으면 모두에게 보냅니다',
    'files.to': '{name}님에게',
    'files.from': '{name}님이 보냄',
    'files.sending': '보내는 중…',
    'files.receiving': '받는 중…',
    'files.done': '완료',
    'files.sent': '보냄',
    'files.failed': '실패',
    'files.download': '내려받기',
    'files.nobody': '아직 파일을 받을 사람이 없습니다.',
    'people.title': '참가자',
    'people.you': '(나)',
    'tile.you': '나',
    'tile.muted': '마이크 꺼짐',
    'tile.presenting': '{name}님이 발표 중',
    'tile.pin': '{name}님 고정',
    'tile.unpin': '{name}님 고정 해제',
    'layout.speaker': '발표자 보기',
    'notice.joined': '{name}님이 들어왔습니다',
    'notice.left': '{name}님이 나갔습니다',
    'notice.file': '{name}님이 파일을 보냈습니다: {file}',
    'notice.cameraFallback': '사용하던 카메라가 사라져 {device}(으)로 바꿨습니다.',
    'notice.micFallback': '사용하던 마이크가 사라져 {device}(으)로 바꿨습니다.',
    'notice.cameraGone': '사용하던 카메라가 사라졌습니다.',
    'notice.micGone': '사용하던 마이크가 사라졌습니다.',
    'notice.reconnected': '서버에 다시 연결되었습니다.',
    'notice.audioBlocked': '다른 사람의 소리를 들으려면 화면을 한 번 누르세요.',
    'error.bad_json': '서버가 이 페이지의 메시지를 읽지 못했습니다. 페이지를 새로 고치세요.',
    'error.bad_message': '서버가 이 페이지의 메시지를 이해하지 못했습니다. 페이지를 새로 고치세요.',
    'error.unknown_type': '서버가 알 수 없는 메시지를 받았습니다. 페이지를 새로 고치세요.',
    'error.binary_frame': '서버가 받지 않는 형식의 데이터를 보냈습니다.',
    'error.frame_too_large': '보내기에는 너무 큽니다.',
    'error.unsupported_protocol': '페이지가 오래되었습니다. 새로 고쳐서 이 서버와 연결하세요.',
    'error.not_in_room': '더 이상 방에 있지 않습니다. 방에 다시 들어가세요.',
    'error.already_in_room': '이미 방에 들어가 있습니다. 먼저 나가세요.',
    'error.invalid_name': '이름은 1자에서 {max}자 사이로, 제어 문자 없이 입력하세요.',
    'error.invalid_room': '방 이름은 1자에서 {max}자 사이로, 제어 문자 없이 입력하세요.',
    'error.invalid_text': '메시지는 1자에서 {max}자 사이여야 합니다.',
    'error.room_full': '방이 가득 찼습니다(최대 {cap}명). 나중에 다시 시도하거나 다른 방을 고르세요.',
    'error.too_many_rooms': '서버가 지금은 방을 더 만들 수 없습니다. 이미 있는 방에 들어가 보세요.',
    'error.unknown_peer': '그 참가자는 이미 방을 나갔습니다.',
    'error.camera_denied': '카메라 사용이 거부되었습니다. 브라우저의 사이트 설정에서 허용하거나 영상 없이 참여하세요.',
    'error.mic_denied': '마이크 사용이 거부되었습니다. 브라우저의 사이트 설정에서 허용하거나 소리 없이 참여하세요.',
    'error.media_denied': '카메라와 마이크 사용이 거부되었습니다. 보고 듣기만 하는 것으로 참여할 수 있습니다.',
    'error.no_camera': '카메라를 찾을 수 없습니다. 음성으로만 참여할 수 있습니다.',
    'error.no_mic': '마이크를 찾을 수 없습니다. 다른 사람에게 내 소리가 들리지 않습니다.',
    'error.no_devices': '카메라와 마이크를 찾을 수 없습니다. 보고 듣기만 하는 것으로 참여할 수 있습니다.',
    'error.camera_busy': '카메라를 다른 프로그램이 쓰고 있거나 켤 수 없습니다.',
    'error.mic_busy': '마이크를 다른 프로그램이 쓰고 있거나 켤 수 없습니다.',
    'error.media_unavailable': '이 브라우저는 여기서 카메라나 마이크를 쓸 수 없습니다(HTTPS 또는 localhost가 필요합니다).',
    'error.screen_failed': '화면 공유를 시작하지 못했습니다.',
    'error.ws_failed': 'huddle 서버에 연결할 수 없습니다. 다시 시도하는 중…',
    'error.ws_closed': '서버와의 연결이 끊어졌습니다. 다시 연결하는 중…',
    'error.server_shutdown': '서버가 종료되고 있습니다. 서버가 돌아오면 다시 연결합니다…',
    'error.too_slow': '연결이 너무 느려 서버가 연결을 끊었습니다. 다시 연결하는 중…',
    'error.timed_out': '서버가 이 페이지의 응답을 받지 못했습니다. 다시 연결하는 중…',
    'error.file_too_large': '“{file}” 파일은 너무 커서 보낼 수 없습니다(최대 {max}).',
    'error.file_too_large_in': '{name}님이 보낸 “{file}” 파일은 이 서버의 한도({max})보다 커서 받지 않았습니다.',
    'error.file_corrupted': '“{file}” 파일이 손상된 채 도착해 버렸습니다. 다시 보내 달라고 하세요.',
    'error.file_failed': '“{file}” 파일 전송이 끝나지 않았습니다.',
    'error.files_unavailable': '파일을 보내려면 안전한 페이지(HTTPS 또는 localhost)가 필요합니다.',
    'error.peer_failed': '{name}님과의 연결이 끊어졌습니다.',
    'error.media_refused': '서버가 카메라와 마이크 연결을 만들지 못했습니다. 페이지를 새로 고쳐 다시 시도하세요.',
    'error.media_failed': '서버와의 영상·음성 연결이 끊어졌습니다. 다시 연결하는 중…',
    'error.invalid_file': '이 파일은 공유할 수 없습니다(이름과 크기를 확인하거나 다른 업로드가 끝날 때까지 기다리세요).',
    'error.file_storage_full': '서버에 공유 파일이 가득 찼습니다. 방의 파일이 줄어든 뒤에 다시 시도하세요.',
    'topology.p2p': 'P2P 직접 연결',
    'topology.sfu': '서버 경유',
    'topology.p2p.title': '이 통화의 영상과 음성은 브라우저끼리 직접 오갑니다.',
    'topology.sfu.title': '영상과 음성이 서버를 거쳐 모두에게 전달됩니다. 각 브라우저는 영상을 한 번만 보냅니다.',
    'notice.topologySfu': '참가자가 늘어 이제 통화가 서버를 거쳐 연결됩니다.',
    'notice.mediaReconnecting': '영상과 음성을 다시 연결하는 중…',
    'files.toAll': '모두에게',
    'kind.camera': '카메라',
    'kind.mic': '마이크',
    'kind.speaker': '스피커',
  },
};

export const LANGS = /** @type {const} */ (['en', 'ko']);

/** @type {Set<()=>void>} */
const listeners = new Set();

function detect() {
  try {
    const saved = localStorage.getItem(STORE_KEY);
    if (saved && saved in STRINGS) return saved;
  } catch { /* storage unavailable */ }
  const langs = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const l of langs) {
    const base = String(l || '').toLowerCase().split('-')[0];
    if (base in STRINGS) return base;
  }
  return 'en';
}

let lang = detect();

export function getLang() { return lang; }

/**
 * Translates `key`, replacing `{name}` placeholders with `vars`.
 * @param {string} key
 * @param {Record<string, string|number>} [vars]
 */
export function t(key, vars) {
  let s = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
  return s;
}

/** Whether a translation exists for `key`. @param {string} key */
export function has(key) { return key in STRINGS.en; }

/** Fills every data-i18n* element under `root`. @param {ParentNode} [root] */
export function apply(root = document) {
  document.documentElement.lang = lang;
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(/** @type {HTMLElement} */ (el).dataset.i18n ?? '');
  for (const el of root.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', t(/** @type {HTMLElement} */ (el).dataset.i18nLabel ?? ''));
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.setAttribute('title', t(/** @type {HTMLElement} */ (el).dataset.i18nTitle ?? ''));
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.setAttribute('placeholder', t(/** @type {HTMLElement} */ (el).dataset.i18nPlaceholder ?? ''));
}

/** Switches the language, remembers it, re-applies and notifies listeners. @param {string} l */
export function setLang(l) {
  if (!(l in STRINGS)) return;
  lang = l;
  try { localStorage.setItem(STORE_KEY, l); } catch { /* storage unavailable */ }
  apply();
  for (const fn of listeners) fn();
}

/** @param {()=>void} fn */
export function onLangChange(fn) { listeners.add(fn); }

/** Human size, e.g. "1.5 MB". @param {number} bytes */
export function formatBytes(bytes) {
  const units = ['B', 'KB', 'MB', 'GB'];
  let v = bytes, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(v < 10 ? 1 : 0) : v} ${units[i]}`;
}
