// The server's rules for user and room names (chat-core/src/ids.rs), for the page: the
// same validation, normalization and case folding, so the page refuses exactly the names
// the server refuses, with an immediate, specific message, and compares names as the
// server does. The server checks again and has the last word.
//
// The page cannot link the Rust code, so the two are tied by a test: the corpus
// chat-core/tests/data/names.json goes through the Rust functions (chat-core/tests/names.rs)
// and through these (e2e/tests/11-names.test.mjs), and both must give
// chat-core/tests/data/names.expected.json. Change both sides together.

// `char::is_whitespace` and `str::trim` in Rust: the White_Space property (JavaScript's
// own `trim` differs: it strips U+FEFF and keeps U+0085).
const WHITESPACE = /\p{White_Space}/u;
const TRIM = /^\p{White_Space}+|\p{White_Space}+$/gu;
// `char::is_control`: general category Cc.
const CONTROL = /\p{Cc}/u;
// `ids::is_invisible`: characters that would let a name hide or reorder text.
const INVISIBLE =
  /[\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u2800\u3164\uFEFF\uFFA0\uFFF0-\uFFFB\u{1D173}-\u{1D17A}\u{E0000}-\u{E0FFF}]/u;

/** `str::trim`: strips White_Space at both ends. */
export function trim(s) {
  return s.replace(TRIM, '');
}

/** Whether a character is one of the invisible or bidi-control characters names refuse. */
export function isInvisible(ch) {
  return INVISIBLE.test(ch);
}

/**
 * `ids::fold`: the case-insensitive key of a name (trimmed, NFC, lowercased, NFC again).
 * Two names are one user, or one public room, exactly when their keys are equal.
 */
export function fold(s) {
  return trim(s).normalize('NFC').toLowerCase().normalize('NFC');
}

/** Compares by code point, like Rust's `str` ordering (JS compares UTF-16 units). */
export function cmpCodePoints(a, b) {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

function allowed(ch) {
  return !(CONTROL.test(ch) || WHITESPACE.test(ch) || ch === '@' || ch === ',' || INVISIBLE.test(ch));
}

/** `ids::normalize`: `{ value }` or `{ error }` (`NameError` as in the corpus file). */
function normalize(raw, maxChars) {
  const name = trim(raw).normalize('NFC');
  if (!name) return { error: { error: 'empty' } };
  for (const ch of name) {
    if (!allowed(ch)) return { error: { error: 'bad_char', char: ch } };
  }
  if ([...name].length > maxChars) return { error: { error: 'too_long', max: maxChars } };
  return { value: name };
}

/**
 * `UserName::parse` and `UserName::key`: `{ name, key }`, or `{ error }` where error is
 * `{ error: 'empty' }`, `{ error: 'too_long', max }` or `{ error: 'bad_char', char }`.
 */
export function parseUserName(raw, maxNameChars) {
  const n = normalize(raw, maxNameChars);
  if (n.error) return n;
  return { name: n.value, key: fold(n.value) };
}

/** `RoomName::direct`: the direct-message room of two users' keys (order does not matter). */
export function directRoom(keyA, keyB) {
  const [x, y] = cmpCodePoints(keyA, keyB) <= 0 ? [keyA, keyB] : [keyB, keyA];
  return `@${x},${y}`;
}

/**
 * `RoomName::parse`: `{ room }` (public rooms lowercased, direct rooms `@a,b` with the two
 * keys in order), or `{ error }` as for names, plus `{ error: 'bad_direct' }`.
 */
export function parseRoomName(raw, maxRoomChars, maxNameChars) {
  const trimmed = trim(raw);
  if (trimmed.startsWith('@')) {
    const pair = trimmed.slice(1);
    const comma = pair.indexOf(',');
    if (comma < 0) return { error: { error: 'bad_direct' } };
    const a = parseUserName(pair.slice(0, comma), maxNameChars);
    const b = parseUserName(pair.slice(comma + 1), maxNameChars);
    if (a.error || b.error) return { error: { error: 'bad_direct' } };
    return { room: directRoom(a.key, b.key) };
  }
  const n = normalize(trimmed, maxRoomChars);
  if (n.error) return n;
  return { room: fold(n.value) };
}

function describeChar(ch) {
  const cp = ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
  return INVISIBLE.test(ch) || CONTROL.test(ch) ? `an invisible character (U+${cp})` : `“${ch}”`;
}

/** What to tell the user about a refused name. `what` is "name" or "room". */
export function nameErrorText(error, what, raw) {
  const label = what === 'room' ? 'A room name' : 'A name';
  switch (error.error) {
    case 'empty':
      return what === 'room' ? 'Enter a room name.' : 'Enter a username.';
    case 'bad_char':
      if (WHITESPACE.test(error.char)) return `${label} cannot contain spaces.`;
      return `${label} cannot contain ${describeChar(error.char)}.`;
    case 'too_long': {
      const count = [...trim(raw).normalize('NFC')].length;
      return `${label} can be at most ${error.max} characters (this one has ${count}).`;
    }
    default:
      return `${label} cannot contain ${describeChar('@')}.`;
  }
}
