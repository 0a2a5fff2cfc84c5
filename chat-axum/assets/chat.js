// The browser chat page. Plain ES module, no build step, no dependencies.
//
// Speaks the JSON protocol of docs/PROTOCOL.md over a WebSocket at `ws` next to this
// script (so the page works when an app mounts the chat under a sub-path, whether the
// page's own URL ends in a slash or not).
//
// Safety rules followed throughout: every string that came from a user (names, room
// names, bodies, error messages) reaches the DOM only through `textContent` or attribute
// setters on elements we created, never through innerHTML; names are wrapped in <bdi>
// and bodies get dir="auto" so right-to-left text cannot reorder the line around it.

import { directRoom, fold, nameErrorText, parseRoomName, parseUserName, trim } from './names.js';

// Version 2: presence comes as one coalesced `presence` frame per room per tick, and a
// big room's member list is a count and pages (docs/PROTOCOL.md).
const PROTOCOL_VERSION = 2;
const HISTORY_PAGE = 50;
const GROUP_WINDOW_MS = 5 * 60 * 1000;
const BOTTOM_SLACK_PX = 48;

// ---------------------------------------------------------------------------------------
// Small helpers

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function utf8Length(s) {
  return new TextEncoder().encode(s).length;
}

function uuid() {
  if (globalThis.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  // Pages served over plain http from a LAN address are not a secure context, where
  // randomUUID is missing; getRandomValues is always there.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const segmenter = typeof Intl.Segmenter === 'function' ? new Intl.Segmenter(undefined, { granularity: 'grapheme' }) : null;

function initial(name) {
  const first = segmenter ? segmenter.segment(name)[Symbol.iterator]().next().value?.segment : [...name][0];
  return (first || '?').toLocaleUpperCase();
}

function colorClass(name) {
  let h = 0;
  for (const ch of fold(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `c${h % 8}`;
}

// ---------------------------------------------------------------------------------------
// Names: the server's rules (names.js), checked before sending so the user gets an
// immediate, specific message. The server checks again and has the last word.

/**
 * A name or room typed into a form: `{ value }` (what to send) or `{ error }` (what to
 * say). Direct rooms (`@a,b`) are not typed: they are opened from a member's name.
 */
function checkName(raw, what) {
  const { max_name_chars: maxName, max_room_chars: maxRoom } = state.limits;
  if (what === 'name') {
    const n = parseUserName(raw, maxName);
    return n.error ? { error: nameErrorText(n.error, 'name', raw) } : { value: n.name };
  }
  if (trim(raw).startsWith('@')) return { error: nameErrorText({ error: 'bad_direct' }, 'room', raw) };
  const r = parseRoomName(raw, maxRoom, maxName);
  return r.error ? { error: nameErrorText(r.error, 'room', raw) } : { value: r.room };
}

/**
 * The server's limits (docs/PROTOCOL.md, `welcome`): served in the page (for the login
 * form) and sent again in every `welcome`. The page has no limits of its own.
 */
function pageLimits() {
  try {
    return JSON.parse(document.querySelector('meta[name="chat-limits"]').content);
  } catch {
    return {}; // not served by chat-axum: the server's replies still explain refusals
  }
}

/**
 * Served by an app that identifies its users itself (chat-axum `RouterOptions::identity`:
 * a session cookie): the server knows who we are, so there is no name to ask for, and
 * signing out is the app's.
 */
const HOST_IDENTITY = document.querySelector('meta[name="chat-host-identity"]') !== null;

// ---------------------------------------------------------------------------------------
// Storage: what the page remembers between visits (per path, so two chats mounted on one
// origin do not mix). Nothing here is trusted: it is only ever sent back to the server.

const STORE_PREFIX = `chat:${new URL('.', import.meta.url).pathname}:`;
const store = {
  get(key, fallback) {
    try {
      const raw = localStorage.getItem(STORE_PREFIX + key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(STORE_PREFIX + key, JSON.stringify(value));
    } catch {
      /* storage full or disabled: the page still works, it just forgets */
    }
  },
};

// ---------------------------------------------------------------------------------------
// State

const state = {
  me: null, // display name from welcome
  meKey: null,
  limits: pageLimits(),
  epoch: null, // epoch of the current server history (from welcome)
  ep: 0, // index of that epoch on this page: seqs are compared only within one
  rooms: new Map(), // name -> Room
  current: null,
  pending: new Map(), // client_id -> pending send
  requests: new Map(), // request id -> what it was for
  nextId: 1,
  publicRooms: [], // from the `rooms` reply
  typingSent: { room: null, at: 0 }, // our own typing indicator
  read: store.get('read', {}), // room -> last seq read (persisted, per epoch)
};

const conn = {
  ws: null,
  status: 'idle', // idle | connecting | connected | reconnecting | failed
  attempt: 0,
  timer: null,
  countdown: null,
  retryAfter: null, // from goodbye
  welcomedOnce: false, // this page has been in the chat (reconnects go back to it)
  login: null, // { name, room } while the login form waits for welcome
  nameRetries: 0,
  lastFrameAt: null, // when this connection last received a frame
  probeAt: null, // when the page last asked a quiet server something (see PROBE_AFTER_MS)
};

// ---------------------------------------------------------------------------------------
// DOM references

const ui = {
  login: $('login'),
  loginForm: $('login-form'),
  loginName: $('login-name'),
  loginRoom: $('login-room'),
  loginError: $('login-error'),
  loginSubmit: $('login-submit'),
  chat: $('chat'),
  roomTitle: $('room-title'),
  roomKind: $('room-kind'),
  roomCount: $('room-count'),
  conn: $('conn'),
  connText: $('conn-text'),
  connDetail: $('conn-detail'),
  meName: $('me-name'),
  meAvatar: $('me-avatar'),
  logout: $('logout'),
  roomList: $('room-list'),
  dmList: $('dm-list'),
  dmEmpty: $('dm-empty'),
  moreRooms: $('more-rooms'),
  joinForm: $('join-form'),
  joinRoom: $('join-room'),
  joinError: $('join-error'),
  scroller: $('scroller'),
  host: $('timeline-host'),
  loadOlder: $('load-older'),
  historyStatus: $('history-status'),
  jump: $('jump'),
  typing: $('typing'),
  roomState: $('room-state'),
  modAlert: $('mod-alert'),
  modAlertText: $('mod-alert-text'),
  modAlertClose: $('mod-alert-close'),
  topicBar: $('topic-bar'),
  topic: $('room-topic'),
  topicEdit: $('topic-edit'),
  topicForm: $('topic-form'),
  topicInput: $('topic-input'),
  topicCancel: $('topic-cancel'),
  topicError: $('topic-error'),
  roomSlow: $('room-slow'),
  roomMod: $('room-mod'),
  slowForm: $('slow-form'),
  slowInput: $('slow-input'),
  slowError: $('slow-error'),
  unbanForm: $('unban-form'),
  unbanInput: $('unban-input'),
  unbanError: $('unban-error'),
  composerForm: $('composer-form'),
  composer: $('composer'),
  composerLabel: $('composer-label'),
  composerError: $('composer-error'),
  replyBar: $('reply-bar'),
  replyBarText: $('reply-bar-text'),
  replyCancel: $('reply-cancel'),
  memberList: $('member-list'),
  membersH: $('members-h'),
  announcer: $('announcer'),
  sidebar: $('sidebar'),
  membersPanel: $('members-panel'),
  toggleRooms: $('toggle-rooms'),
  toggleMembers: $('toggle-members'),
  totalUnread: $('total-unread'),
  scrim: $('scrim'),
};

// ---------------------------------------------------------------------------------------
// Formatting times

const timeFmt = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });

function dayKey(d) {
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(d) === dayKey(today)) return 'Today';
  if (dayKey(d) === dayKey(yesterday)) return 'Yesterday';
  return dayFmt.format(d);
}

function timeEl(ts) {
  const d = new Date(ts);
  const t = el('time', 'time', Number.isNaN(d.getTime()) ? '' : timeFmt.format(d));
  t.dateTime = ts;
  if (!Number.isNaN(d.getTime())) t.title = fullFmt.format(d);
  t.dataset.testid = 'time';
  return t;
}

// ---------------------------------------------------------------------------------------
// Rooms and their timelines
//
// A room's timeline is a sorted list of items keyed [epoch index, seq, sub]: messages
// (sub 0), presence notices (placed after the seq that was latest when they happened),
// markers (gap, server restart) and our own messages still being sent (at the very end).
// Messages are deduplicated by epoch + seq, so a resume, a history page, a resync and a
// live message can overlap freely.

class Room {
  constructor(name) {
    this.name = name;
    this.direct = name.startsWith('@');
    this.peer = this.direct ? this.peerFromName() : null;
    this.joined = false; // public rooms: this session is a member
    this.members = [];
    this.count = null; // version 2: the server's count of users here
    this.partial = false; // version 2: a big room; `members` holds only pages of it
    this.items = [];
    this.byKey = new Map(); // `${ep}:${seq}` -> item
    this.cursor = null; // last seq seen in the current epoch (resume point)
    this.pageFrom = null; // `before` for the next history page
    this.hasMore = false;
    this.loadingOlder = false;
    this.resyncing = false;
    this.unread = 0;
    this.sub = 0;
    this.typing = new Map(); // user key -> { name, timer }
    this.list = el('ol', 'timeline');
    this.list.dataset.testid = 'timeline';
    this.list.dataset.room = name;
    this.stickBottom = true;
    this.scrollTop = 0;
    this.newBelow = 0;
    this.role = 'member'; // ours in this room (joined.role, set_role)
    this.topic = '';
    this.slowMode = 0; // seconds between a member's posts (0: off)
    this.muted = false; // we are muted here
    this.mutedUsers = new Set(); // folded names of others muted while we watched
    this.modOpen = null; // the member whose moderation panel is open
    this.editingTopic = false;
    this.replyTo = null; // the message quoted above the composer: { seq, ep, user, snippet }
  }

  peerFromName() {
    const keys = this.name.slice(1).split(',');
    const other = keys.find((k) => k !== state.meKey);
    return other ?? keys[0];
  }

  get label() {
    return this.direct ? this.peer : this.name;
  }
}

function cmpKey(a, b) {
  for (let i = 0; i < 3; i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return 0;
}

function findIndex(room, key) {
  let lo = 0;
  let hi = room.items.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cmpKey(room.items[mid].key, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function getRoom(name, create = true) {
  let room = state.rooms.get(name);
  if (!room && create) {
    room = new Room(name);
    state.rooms.set(name, room);
  }
  return room;
}

function isMine(user) {
  return state.meKey !== null && fold(user) === state.meKey;
}

/** Inserts an item at its place; returns false for a duplicate message. */
function insertItem(room, item) {
  item.room = room.name;
  if (item.kind === 'msg') {
    const k = `${item.key[0]}:${item.key[1]}`;
    if (room.byKey.has(k)) return false;
    room.byKey.set(k, item);
  }
  const i = findIndex(room, item.key);
  room.items.splice(i, 0, item);
  item.node = render(item);
  const next = room.items[i + 1];
  room.list.insertBefore(item.node, next ? next.node : null);
  decorate(room, i);
  decorate(room, i + 1);
  return true;
}

function removeItem(room, item) {
  const i = room.items.indexOf(item);
  if (i < 0) return;
  room.items.splice(i, 1);
  item.node.remove();
  if (item.kind === 'msg') room.byKey.delete(`${item.key[0]}:${item.key[1]}`);
  decorate(room, i);
}

/** Day dividers and grouping of consecutive messages, from the item before. */
function decorate(room, i) {
  const item = room.items[i];
  if (!item) return;
  const prev = room.items[i - 1];
  const d = item.date;
  const pd = prev?.date;
  const newDay = d && (!pd || dayKey(pd) !== dayKey(d));
  const divider = item.node.querySelector(':scope > .day');
  if (divider) {
    divider.hidden = !newDay;
    if (newDay) divider.firstChild.textContent = dayLabel(d);
  }
  if (item.kind === 'msg' || item.kind === 'pending') {
    const cont =
      !newDay &&
      prev &&
      (prev.kind === 'msg' || prev.kind === 'pending') &&
      prev.key[0] === item.key[0] &&
      fold(prev.user) === fold(item.user) &&
      d && pd && d - pd < GROUP_WINDOW_MS;
    item.node.classList.toggle('cont', Boolean(cont));
  }
}

function dayDivider() {
  const div = el('div', 'day');
  div.append(el('span', 'day-label'));
  div.setAttribute('role', 'separator');
  div.hidden = true;
  return div;
}

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/giu;

/** Appends the body as text, with http(s) URLs as links (their href checked by URL). */
function appendBody(node, body) {
  let last = 0;
  for (const m of body.matchAll(URL_RE)) {
    let url = m[0];
    const trail = url.match(/[.,;:!?)\]}]+$/u);
    if (trail) url = url.slice(0, -trail[0].length);
    let href = null;
    try {
      const u = new URL(url);
      if (u.protocol === 'http:' || u.protocol === 'https:') href = u.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    node.append(document.createTextNode(body.slice(last, m.index)));
    const a = el('a', 'link', url);
    a.href = href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer nofollow ugc';
    node.append(a);
    last = m.index + url.length;
  }
  node.append(document.createTextNode(body.slice(last)));
}

function mentionsMe(body) {
  if (!state.meKey) return false;
  const b = fold(body);
  const at = `@${state.meKey}`;
  let i = b.indexOf(at);
  while (i >= 0) {
    const after = [...b.slice(i + at.length)][0];
    if (after === undefined || !/[\p{L}\p{N}_\-.]/u.test(after)) return true;
    i = b.indexOf(at, i + 1);
  }
  return false;
}

function render(item) {
  if (item.kind === 'msg' || item.kind === 'pending') return renderMessage(item);
  const li = el('li', `notice ${item.kind}`);
  li.dataset.testid = item.kind === 'notice' ? 'notice' : 'marker';
  li.append(dayDivider());
  if (item.kind === 'unread') {
    li.dataset.testid = 'unread-separator';
    li.setAttribute('role', 'separator');
    li.setAttribute('aria-label', item.text);
  }
  const p = el('p', 'notice-text');
  if (item.kind === 'mod') {
    li.dataset.testid = 'mod-notice';
    li.dataset.action = item.action;
    p.append(document.createTextNode(item.text), document.createTextNode(' · '), timeEl(item.ts));
  } else if (item.kind === 'notice') {
    p.append(el('bdi', 'who', item.user), document.createTextNode(item.joined ? ' joined' : ' left'));
    p.append(document.createTextNode(' · '), timeEl(item.ts));
    li.dataset.user = item.user;
    li.dataset.event = item.joined ? 'joined' : 'left';
  } else {
    p.textContent = item.text;
    li.dataset.marker = item.kind;
  }
  li.append(p);
  return li;
}

function renderMessage(item) {
  const li = el('li', 'msg');
  li.dataset.testid = 'message';
  li.append(dayDivider());
  const mine = isMine(item.user);
  if (mine) li.classList.add('mine');
  if (item.kind === 'msg' && !mine && !item.deleted && mentionsMe(item.body)) li.classList.add('mention');
  const avatar = el('span', `avatar ${colorClass(item.user)}`, initial(item.user));
  avatar.setAttribute('aria-hidden', 'true');
  const main = el('div', 'msg-main');
  const head = el('div', 'msg-head');
  const author = el('bdi', 'author', item.user);
  author.dataset.testid = 'author';
  head.append(author);
  if (mine) head.append(el('span', 'you-tag', 'you'));
  const status = el('span', 'msg-status');
  status.dataset.testid = 'msg-status';
  if (item.kind === 'msg') {
    head.append(timeEl(item.ts));
    li.dataset.seq = String(item.key[1]);
  } else {
    li.classList.add('pending');
    status.textContent = 'sending…';
  }
  head.append(status);
  main.append(head);
  if (item.replyTo !== null && item.replyTo !== undefined) main.append(replyQuote(item));
  if (item.deleted) {
    li.classList.add('deleted');
    li.dataset.deleted = 'true';
    const tomb = el('p', 'tombstone', 'message deleted');
    tomb.dataset.testid = 'tombstone';
    main.append(tomb);
  } else if (item.editing) {
    main.append(editForm(item));
  } else {
    const line = el('div', 'body-line');
    const body = el('div', 'body');
    body.dir = 'auto';
    body.dataset.testid = 'body';
    appendBody(body, item.body);
    line.append(body);
    if (item.editedAt) {
      const edited = el('span', 'edited', '(edited)');
      edited.dataset.testid = 'edited';
      const d = new Date(item.editedAt);
      edited.title = Number.isNaN(d.getTime()) ? 'edited' : `edited ${fullFmt.format(d)}`;
      line.append(edited);
    }
    main.append(line);
  }
  if (item.kind === 'msg' && !item.deleted) {
    main.append(reactionsRow(item));
    main.append(actionsBar(item));
  }
  if (item.kind === 'msg' && item.confirming && !item.deleted) main.append(confirmDelete(item));
  if (item.error) {
    const err = el('p', 'form-error msg-error', item.error);
    err.setAttribute('role', 'alert');
    err.dataset.testid = 'msg-error';
    main.append(err);
  }
  li.append(avatar, main);
  li.dataset.user = item.user;
  return li;
}

function cleanReactions(list) {
  if (!Array.isArray(list)) return [];
  return list
    .filter((r) => r && typeof r.emoji === 'string' && Array.isArray(r.users))
    .map((r) => ({ emoji: r.emoji, users: r.users.filter((u) => typeof u === 'string') }))
    .filter((r) => r.users.length > 0);
}

function msgItem(m) {
  return {
    kind: 'msg',
    key: [state.ep, m.seq, 0],
    user: m.user,
    body: m.deleted === true || typeof m.body !== 'string' ? '' : m.body,
    ts: m.ts,
    date: new Date(m.ts),
    clientId: m.client_id ?? null,
    editedAt: typeof m.edited_at === 'string' ? m.edited_at : null,
    deleted: m.deleted === true,
    reactions: cleanReactions(m.reactions),
    replyTo: Number.isInteger(m.reply_to) ? m.reply_to : null,
    rev: Number.isInteger(m.rev) ? m.rev : m.seq,
  };
}

// ---------------------------------------------------------------------------------------
// Messages live on: edits, deletes, reactions, replies (docs/PROTOCOL.md, "Messages live
// on"). Every change is an entry with its own seq; a message holds `rev`, the seq of the
// last change applied, so applying a change twice (live, then again in a history page or
// a resume) changes nothing. A change whose message this page does not hold is ignored:
// when that message is loaded later it comes in its current state.

const QUICK_EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀'];
const SNIPPET_CHARS = 80;

function snippet(body) {
  const flat = body.replace(/\s+/gu, ' ').trim();
  const chars = [...flat];
  return chars.length > SNIPPET_CHARS ? `${chars.slice(0, SNIPPET_CHARS).join('')}…` : flat;
}

/** The quote above a reply: the original's author and a snippet; a button to go there. */
function replyQuote(item) {
  const room = state.rooms.get(item.room ?? state.current);
  const target = room ? room.byKey.get(`${item.key[0] === Number.MAX_SAFE_INTEGER ? state.ep : item.key[0]}:${item.replyTo}`) : null;
  const arrow = el('span', 'reply-arrow', '↩');
  arrow.setAttribute('aria-hidden', 'true');
  if (!target) {
    const q = el('p', 'reply-quote missing');
    q.dataset.testid = 'reply-quote';
    q.append(arrow, document.createTextNode(' Reply to an earlier message'));
    return q;
  }
  const q = el('button', 'reply-quote');
  q.type = 'button';
  q.dataset.testid = 'reply-quote';
  q.dataset.target = String(item.replyTo);
  const who = el('bdi', 'reply-author', target.user);
  who.dataset.testid = 'reply-author';
  const text = el('span', 'reply-snippet', target.deleted ? 'message deleted' : snippet(target.body));
  text.dataset.testid = 'reply-snippet';
  if (target.deleted) text.classList.add('gone');
  else text.dir = 'auto';
  q.append(arrow, ' ', who, ': ', text);
  q.setAttribute('aria-label', `In reply to ${target.user}: ${target.deleted ? 'message deleted' : snippet(target.body)}. Go to that message.`);
  q.addEventListener('click', () => {
    const node = target.node;
    if (!node?.isConnected) return;
    stuck = false;
    node.scrollIntoView({ block: 'center' });
    node.classList.remove('flash');
    void node.offsetWidth; // restart the highlight
    node.classList.add('flash');
    node.tabIndex = -1;
    node.focus({ preventScroll: true });
  });
  return q;
}

function reactionsRow(item) {
  const row = el('div', 'reactions');
  row.dataset.testid = 'reactions';
  for (const r of item.reactions) {
    const mine = r.users.some(isMine);
    const chip = el('button', 'chip');
    chip.type = 'button';
    chip.dataset.testid = 'reaction';
    chip.dataset.emoji = r.emoji;
    chip.setAttribute('aria-pressed', String(mine));
    if (mine) chip.classList.add('own');
    const who = r.users.join(', ');
    chip.title = `${who} reacted with ${r.emoji}`;
    chip.setAttribute('aria-label', `${r.emoji} ${r.users.length}: ${who}. ${mine ? 'Remove your reaction' : 'Add yours'}`);
    const e = el('span', 'chip-emoji', r.emoji);
    e.setAttribute('aria-hidden', 'true');
    const n = el('span', 'chip-count', String(r.users.length));
    n.dataset.testid = 'reaction-count';
    n.setAttribute('aria-hidden', 'true');
    const tip = el('span', 'chip-who', who);
    tip.dataset.testid = 'reaction-who';
    tip.setAttribute('aria-hidden', 'true');
    chip.append(e, n, tip);
    chip.addEventListener('click', () => react(item, r.emoji, !mine));
    row.append(chip);
  }
  return row;
}

function actionsBar(item) {
  const room = currentRoomOf(item);
  const bar = el('div', 'msg-actions');
  bar.dataset.testid = 'msg-actions';
  const button = (text, testid, label, onClick) => {
    const b = el('button', 'act-btn', text);
    b.type = 'button';
    b.dataset.testid = testid;
    b.setAttribute('aria-label', label);
    b.title = label;
    b.addEventListener('click', onClick);
    bar.append(b);
    return b;
  };
  const summary = `${item.user}'s message`;
  const open = button('☺+', 'react-open', `Add a reaction to ${summary}`, () => {
    item.picker = !item.picker;
    refreshMessage(room, item, item.picker ? '[data-testid="picker"] button' : '[data-testid="react-open"]');
  });
  open.setAttribute('aria-haspopup', 'true');
  open.setAttribute('aria-expanded', String(Boolean(item.picker)));
  button('Reply', 'reply', `Reply to ${summary}`, () => startReply(room, item));
  if (isMine(item.user)) {
    button('Edit', 'edit', `Edit your message`, () => {
      item.editing = { draft: item.body };
      item.error = null;
      refreshMessage(room, item, '[data-testid="edit-input"]');
    });
  }
  if (isMine(item.user) || canModerate(room)) {
    button('Delete', 'delete', isMine(item.user) ? 'Delete your message' : `Delete ${summary}`, () => {
      item.confirming = true;
      refreshMessage(room, item, '[data-testid="delete-confirm"]');
    });
  }
  if (item.picker) bar.append(picker(item));
  return bar;
}

/** The reaction picker: a few common emoji and the ones already on the message; arrows
 *  move, Enter picks, Escape closes. */
function picker(item) {
  const room = currentRoomOf(item);
  const menu = el('div', 'picker');
  menu.dataset.testid = 'picker';
  menu.setAttribute('role', 'menu');
  menu.setAttribute('aria-label', 'Reactions');
  const all = [...QUICK_EMOJI];
  for (const r of item.reactions) if (!all.includes(r.emoji)) all.push(r.emoji);
  for (const emoji of all) {
    const on = item.reactions.find((r) => r.emoji === emoji)?.users.some(isMine) ?? false;
    const b = el('button', 'pick', emoji);
    b.type = 'button';
    b.dataset.emoji = emoji;
    b.setAttribute('role', 'menuitemcheckbox');
    b.setAttribute('aria-checked', String(on));
    b.setAttribute('aria-label', on ? `Remove your ${emoji}` : `React with ${emoji}`);
    b.tabIndex = -1;
    b.addEventListener('click', () => {
      item.picker = false;
      react(item, emoji, !on);
      refreshMessage(room, item, '[data-testid="react-open"]');
    });
    menu.append(b);
  }
  menu.firstElementChild.tabIndex = 0;
  // Focus leaving the picker (Tab, a click elsewhere) closes it, without moving focus.
  menu.addEventListener('focusout', (e) => {
    if (menu.contains(e.relatedTarget) || !item.picker) return;
    item.picker = false;
    menu.remove();
    item.node?.querySelector('[data-testid="react-open"]')?.setAttribute('aria-expanded', 'false');
  });
  menu.addEventListener('keydown', (e) => {
    const items = [...menu.querySelectorAll('button')];
    const i = items.indexOf(document.activeElement);
    let next = null;
    if (e.key === 'ArrowRight' || e.key === 'ArrowDown') next = items[(i + 1) % items.length];
    else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') next = items[(i - 1 + items.length) % items.length];
    else if (e.key === 'Home') next = items[0];
    else if (e.key === 'End') next = items[items.length - 1];
    else if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      item.picker = false;
      refreshMessage(room, item, '[data-testid="react-open"]');
      return;
    }
    if (next) {
      e.preventDefault();
      for (const b of items) b.tabIndex = -1;
      next.tabIndex = 0;
      next.focus();
    }
  });
  return menu;
}

function editForm(item) {
  const room = currentRoomOf(item);
  const form = el('form', 'edit-form');
  form.dataset.testid = 'edit-form';
  form.noValidate = true;
  const label = el('label', 'sr-only', 'Edit your message');
  const box = el('textarea', 'edit-input');
  box.dataset.testid = 'edit-input';
  box.rows = 2;
  box.value = item.editing.draft;
  box.id = `edit-${item.key[1]}`;
  label.htmlFor = box.id;
  const hint = el('p', 'edit-hint', 'Enter saves · Escape cancels');
  hint.id = `edit-hint-${item.key[1]}`;
  box.setAttribute('aria-describedby', hint.id);
  const save = el('button', 'btn btn-small btn-primary', 'Save');
  save.type = 'submit';
  save.dataset.testid = 'edit-save';
  const cancel = el('button', 'link-btn', 'Cancel');
  cancel.type = 'button';
  cancel.dataset.testid = 'edit-cancel';
  const close = () => {
    item.editing = null;
    refreshMessage(room, item, '[data-testid="edit"]');
  };
  box.addEventListener('input', () => {
    item.editing.draft = box.value;
  });
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      form.requestSubmit();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      close();
    }
  });
  cancel.addEventListener('click', close);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const body = box.value;
    if (!body.trim()) {
      item.error = 'An edit cannot be empty: delete the message instead.';
      refreshMessage(room, item, '[data-testid="edit-input"]');
      return;
    }
    const bytes = utf8Length(body);
    if (bytes > state.limits.max_body_bytes) {
      item.error = `Too long: ${bytes} bytes, the limit is ${state.limits.max_body_bytes}.`;
      refreshMessage(room, item, '[data-testid="edit-input"]');
      return;
    }
    if (body !== item.body) change(item, { type: 'edit', body }, 'edit');
    close();
  });
  const row = el('div', 'edit-row');
  row.append(hint, cancel, save);
  form.append(label, box, row);
  return form;
}

function confirmDelete(item) {
  const room = currentRoomOf(item);
  const box = el('div', 'confirm');
  box.dataset.testid = 'confirm';
  box.setAttribute('role', 'group');
  box.setAttribute('aria-label', 'Delete this message?');
  const yes = el('button', 'btn btn-small btn-danger', 'Delete');
  yes.type = 'button';
  yes.dataset.testid = 'delete-confirm';
  const no = el('button', 'link-btn', 'Cancel');
  no.type = 'button';
  no.dataset.testid = 'delete-cancel';
  const close = () => {
    item.confirming = false;
    refreshMessage(room, item, '[data-testid="delete"]');
  };
  yes.addEventListener('click', () => {
    item.confirming = false;
    change(item, { type: 'delete' }, 'delete');
    refreshMessage(room, item, '[data-testid="delete"]');
  });
  no.addEventListener('click', close);
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      close();
    }
  });
  box.append(el('span', 'confirm-text', 'Delete this message?'), yes, no);
  return box;
}

function currentRoomOf(item) {
  return state.rooms.get(item.room) ?? currentRoom();
}

/** Sends an edit, delete or reaction of `item`; a refusal is shown on the message. */
function change(item, frame, what) {
  const room = currentRoomOf(item);
  if (!room || item.kind !== 'msg') return;
  item.error = null;
  const id = request({ ...frame, room: room.name, seq: item.key[1], client_id: uuid() }, { kind: 'change', what, room: room.name, seq: item.key[1], ep: item.key[0] });
  if (id === null) {
    item.error = 'Not connected: try again when the chat is back.';
    refreshMessage(room, item);
  }
}

function react(item, emoji, on) {
  change(item, { type: 'react', emoji, on }, 'react');
}

const CHANGE_ERRORS = {
  not_author: 'Only its author can do that.',
  gone: 'That message was deleted.',
  no_such_message: 'That message is too old to change.',
  edit_window_passed: 'Too late to edit: messages can be edited only for a while after they are sent.',
  invalid_body: 'An edit cannot be empty.',
  invalid_emoji: 'That is not a single emoji.',
  limit_reached: 'This message has as many different reactions as it can have.',
  rate_limited: 'Too many changes at once; try again in a moment.',
  unsupported: 'This server does not support that yet.',
};

function onChangeError(req, code, message) {
  const room = state.rooms.get(req.room);
  const item = room?.byKey.get(`${req.ep}:${req.seq}`);
  if (!item) return;
  const verb = { edit: 'Not edited', delete: 'Not deleted', react: 'Reaction not changed' }[req.what] ?? 'Not done';
  let reason = CHANGE_ERRORS[code] ?? message;
  if (code === 'body_too_large') reason = `longer than ${state.limits.max_body_bytes} bytes.`;
  if (code === 'forbidden') reason = room.muted ? 'you are muted in this room.' : 'you may not do that in this room.';
  item.error = `${verb}: ${reason.charAt(0).toLowerCase()}${reason.slice(1)}`;
  refreshMessage(room, item);
}

/** Draws a message again after its state changed; focus stays on the same control. */
function refreshMessage(room, item, focusSel = undefined) {
  if (!room || !item.node) return;
  const old = item.node;
  let refocus = focusSel;
  if (refocus === undefined && old.contains(document.activeElement)) {
    const a = document.activeElement;
    if (a.dataset.testid) refocus = `[data-testid="${a.dataset.testid}"]${a.dataset.emoji ? `[data-emoji="${CSS.escape(a.dataset.emoji)}"]` : ''}`;
  }
  const apply = () => {
    item.node = render(item);
    old.replaceWith(item.node);
    const i = room.items.indexOf(item);
    if (i >= 0) decorate(room, i);
  };
  if (room === currentRoom()) changeTimeline(room, apply);
  else apply();
  if (refocus) (item.node.querySelector(refocus) ?? item.node.querySelector('[data-testid="react-open"]') ?? item.node)?.focus();
  refreshQuotes(room, item);
}

/** Replies quoting `item` show its current state (or, once it is loaded, show it at all). */
function refreshQuotes(room, item) {
  if (item.kind !== 'msg') return;
  for (const reply of room.items) {
    if (reply !== item && reply.replyTo === item.key[1] && (reply.kind === 'pending' || reply.key[0] === item.key[0])) {
      const quote = reply.node.querySelector('.reply-quote');
      if (quote) quote.replaceWith(replyQuote(reply));
    }
  }
}

/** Applies a change entry to the message it names; true when something changed. */
function applyChange(room, c) {
  if (!Number.isInteger(c.seq)) return false;
  if (c.kind === 'erase') {
    // Every earlier message of the user becomes a tombstone.
    if (typeof c.user !== 'string') return false;
    let any = false;
    for (const item of [...room.byKey.values()]) {
      if (item.key[0] !== state.ep || item.key[1] >= c.seq || c.seq <= item.rev || fold(item.user) !== fold(c.user)) continue;
      item.rev = c.seq;
      if (!item.deleted) tombstone(item);
      refreshMessage(room, item);
      any = true;
    }
    return any;
  }
  if (!Number.isInteger(c.target)) return false;
  const item = room.byKey.get(`${state.ep}:${c.target}`);
  if (!item || c.seq <= item.rev) return false;
  item.rev = c.seq;
  if (item.deleted) return false;
  if (c.kind === 'edit' && typeof c.body === 'string') {
    item.body = c.body;
    item.editedAt = typeof c.ts === 'string' ? c.ts : new Date().toISOString();
  } else if (c.kind === 'delete') {
    tombstone(item);
  } else if (c.kind === 'react' && typeof c.emoji === 'string' && typeof c.user === 'string') {
    const r = item.reactions.find((x) => x.emoji === c.emoji);
    if (c.on) {
      if (!r) item.reactions.push({ emoji: c.emoji, users: [c.user] });
      else if (!r.users.some((u) => fold(u) === fold(c.user))) r.users.push(c.user);
    } else if (r) {
      r.users = r.users.filter((u) => fold(u) !== fold(c.user));
      if (!r.users.length) item.reactions.splice(item.reactions.indexOf(r), 1);
    }
  } else {
    return false;
  }
  refreshMessage(room, item);
  return true;
}

function tombstone(item) {
  item.deleted = true;
  item.body = '';
  item.editedAt = null;
  item.reactions = [];
  item.editing = null;
  item.confirming = false;
  item.picker = false;
}

/** A newer copy of a message the page holds (a history page, a resync): take its state. */
function updateFrom(room, item, m) {
  const fresh = msgItem(m);
  if (fresh.rev <= item.rev) return;
  Object.assign(item, {
    body: fresh.body,
    editedAt: fresh.editedAt,
    deleted: fresh.deleted,
    reactions: fresh.reactions,
    rev: fresh.rev,
  });
  if (item.deleted) tombstone(item);
  refreshMessage(room, item);
}

/** "Reply" on a message: quote it above the composer. */
function startReply(room, item) {
  if (!room) return;
  room.replyTo = { seq: item.key[1], ep: item.key[0], user: item.user, snippet: snippet(item.body) };
  renderReplyBar();
  ui.composer.focus();
}

function cancelReply() {
  const room = currentRoom();
  if (room) room.replyTo = null;
  renderReplyBar();
}

function renderReplyBar() {
  const r = currentRoom()?.replyTo;
  ui.replyBar.hidden = !r;
  if (!r) {
    ui.replyBarText.replaceChildren();
    return;
  }
  const who = el('bdi', 'reply-author', r.user);
  const text = el('span', 'reply-snippet', r.snippet);
  text.dir = 'auto';
  ui.replyBarText.replaceChildren('Replying to ', who, ': ', text);
}

// ---------------------------------------------------------------------------------------
// Unread: the separator above the first message not read yet when a room is opened.

function placeUnreadSeparator(room) {
  const old = room.items.find((it) => it.kind === 'unread');
  if (old) removeItem(room, old);
  if (room.unread <= 0) return;
  let left = room.unread;
  let first = null;
  for (let i = room.items.length - 1; i >= 0 && left > 0; i--) {
    const it = room.items[i];
    if (it.kind !== 'msg' || it.key[0] !== state.ep || isMine(it.user) || it.deleted) continue;
    first = it;
    left--;
  }
  if (!first) return;
  insertItem(room, { kind: 'unread', key: [first.key[0], first.key[1], -2], text: 'Unread messages' });
}

// ---------------------------------------------------------------------------------------
// Scrolling: keep the reader where they are unless they were at the bottom.

// Whether the reader is following the conversation at the bottom. Updated by scrolling;
// while it holds, any change of size (a page of history, a wrapped line, the on-screen
// keyboard) keeps the newest message in view.
let stuck = true;

function isAtBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight <= BOTTOM_SLACK_PX;
}

function scrollToBottom() {
  stuck = true;
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
  const room = currentRoom();
  if (room) room.newBelow = 0;
  ui.jump.hidden = true;
}

/** What a reader who scrolled up is looking at: the first item whose bottom is below the
 *  top of the viewport, and where it is. Null while the reader follows the bottom. */
function viewAnchor(room) {
  if (stuck || isAtBottom()) return null;
  const top = ui.scroller.getBoundingClientRect().top;
  const item = room.items.find((it) => it.node.getBoundingClientRect().bottom > top);
  return item ? { node: item.node, y: item.node.getBoundingClientRect().top } : null;
}

/** Puts the anchor's item back where it was (after things above it changed size). */
function restoreView(anchor) {
  if (anchor && anchor.node.isConnected) {
    ui.scroller.scrollTop += anchor.node.getBoundingClientRect().top - anchor.y;
  }
}

/** Runs `change` on a room's timeline; if it is on screen, keeps the view steady. */
function changeTimeline(room, change, { live = false, mine = false } = {}) {
  if (room !== currentRoom()) return change();
  const atBottom = stuck || isAtBottom();
  const anchor = atBottom ? null : viewAnchor(room);
  const result = change();
  if (atBottom || mine) {
    scrollToBottom();
  } else {
    restoreView(anchor);
    if (live && result) {
      room.newBelow += typeof result === 'number' ? result : 1;
      ui.jump.hidden = false;
      ui.jump.textContent = room.newBelow === 1 ? '1 new message ↓' : `${room.newBelow} new messages ↓`;
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------
// Connection

function wsUrl() {
  const url = new URL('ws', import.meta.url);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.hash = '';
  url.search = '';
  return url.href;
}

function send(frame) {
  const ws = conn.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(frame));
  return true;
}

function request(frame, meta) {
  const id = state.nextId++;
  state.requests.set(id, { ...meta, type: frame.type });
  if (!send({ ...frame, id })) {
    state.requests.delete(id);
    return null;
  }
  return id;
}

function setStatus(status, text, detail = '') {
  conn.status = status;
  ui.conn.dataset.state = status;
  ui.connText.textContent = text;
  ui.connDetail.textContent = detail;
  ui.composerForm.classList.toggle('offline', status !== 'connected');
}

function connect() {
  clearTimeout(conn.timer);
  clearInterval(conn.countdown);
  conn.timer = null;
  if (conn.ws) return;
  if (conn.welcomedOnce) setStatus('reconnecting', 'Reconnecting…');
  else setStatus('connecting', 'Connecting…');
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch {
    scheduleReconnect();
    return;
  }
  conn.ws = ws;
  conn.lastFrameAt = null;
  conn.probeAt = null;
  ws.addEventListener('open', () => {
    if (conn.ws === ws) sendHello();
  });
  ws.addEventListener('message', (e) => {
    if (conn.ws !== ws || typeof e.data !== 'string') return;
    conn.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(e.data);
    } catch {
      return;
    }
    if (frame && typeof frame === 'object') handleFrame(frame);
  });
  ws.addEventListener('close', (e) => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    onClosed(e);
  });
}

function disconnect() {
  const ws = conn.ws;
  conn.ws = null;
  clearTimeout(conn.timer);
  clearInterval(conn.countdown);
  if (ws) ws.close(1000, 'bye');
}

function sendHello() {
  const identity = store.get('identity', null);
  // With a host identity the server ignores the name: any will do.
  const name = HOST_IDENTITY ? 'host' : conn.login ? conn.login.name : identity?.name;
  if (!name) {
    disconnect();
    showLogin();
    return;
  }
  const rooms = [];
  const seen = new Set();
  const add = (room, since) => {
    if (seen.has(room)) return;
    seen.add(room);
    rooms.push(since === null || since === undefined ? { room } : { room, since });
  };
  if (conn.login) {
    add(conn.login.room);
    for (const r of store.get('rooms', [])) add(r);
    if (identity && fold(identity.name) === fold(name)) for (const r of identity.dms ?? []) add(r);
  } else if (conn.welcomedOnce) {
    // Resume every room from the last seq this page has seen.
    for (const room of state.rooms.values()) {
      if (room.direct || room.joined) add(room.name, room.cursor);
    }
  } else {
    // A new visit: the room last looked at first (the page opens it), then the others.
    const rooms = store.get('rooms', []);
    add(store.get('room', rooms[0] ?? 'general'));
    for (const r of rooms) add(r);
    for (const r of identity?.dms ?? []) add(r);
  }
  const hello = { type: 'hello', version: PROTOCOL_VERSION, name, rooms };
  // A first visit to an app's chat: the server's default rooms, which the app chose.
  if (HOST_IDENTITY && !conn.welcomedOnce && store.get('rooms', []).length === 0) delete hello.rooms;
  const token = identity && fold(identity.name) === fold(name) ? identity.token : null;
  if (token) hello.token = token;
  request(hello, { kind: 'hello' });
}

function onClosed(e) {
  clearTypingAll();
  state.typingSent = { room: null, at: 0 };
  // Replies to this connection's requests will not come; sends stay pending and go out
  // again (same client_id) after the next welcome.
  state.requests.clear();
  for (const room of state.rooms.values()) room.loadingOlder = false;
  updateHistoryControls();
  if (e.code === 1002) {
    setStatus('failed', 'This page is out of date: reload it');
    return;
  }
  if (e.code === 4001 || e.code === 4003) {
    // The app's login expired or was revoked: coming back needs the app, not a retry.
    setStatus('failed', e.code === 4001 ? 'Your login expired: sign in again' : 'Signed out');
    return;
  }
  if (!conn.welcomedOnce && !conn.login && conn.status === 'idle') return;
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimeout(conn.timer);
  clearInterval(conn.countdown);
  let delay;
  if (conn.retryAfter !== null) {
    // The server said when to come back (restart); spread clients out a little.
    delay = conn.retryAfter + Math.random() * 1000;
    conn.retryAfter = null;
  } else {
    const base = Math.min(30000, 500 * 2 ** conn.attempt);
    delay = base / 2 + (Math.random() * base) / 2;
  }
  conn.attempt++;
  const due = Date.now() + delay;
  const label = conn.welcomedOnce ? 'Reconnecting' : 'Connecting';
  const tick = () => {
    const s = Math.ceil((due - Date.now()) / 1000);
    setStatus(conn.welcomedOnce ? 'reconnecting' : 'connecting', label, s >= 2 ? ` in ${s} s…` : '…');
  };
  tick();
  conn.countdown = setInterval(tick, 1000);
  conn.timer = setTimeout(connect, delay);
  if (conn.login) showLoginError('Cannot reach the chat server. Still trying…');
}

// Back online, or back to a tab the browser had put to sleep: no need to wait out the backoff.
window.addEventListener('online', () => {
  if (!conn.ws && conn.timer) connect();
});
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && !conn.ws && conn.timer && conn.retryAfter === null) connect();
});

// A connection can die silently (sleep, a dropped network). The browser answers the
// server's pings, but a page cannot see them: so after PROBE_AFTER_MS without a frame the
// page asks something cheap, and drops the connection only when that question has gone
// unanswered for PROBE_TIMEOUT_MS. Judged by the unanswered question, not by the silence
// alone, a tab whose timers the browser slows down (a hidden tab's fire about once a
// minute) never drops a healthy connection in a quiet room. With timers on time, a dead
// server is noticed within PROBE_AFTER_MS + PROBE_TIMEOUT_MS + 2 * CHECK_MS (45 s) of its
// last frame.
const PROBE_AFTER_MS = 20000;
const PROBE_TIMEOUT_MS = 15000;
const CHECK_MS = 5000;
setInterval(() => {
  if (conn.status !== 'connected' || !conn.ws) return;
  const now = Date.now();
  const heard = conn.lastFrameAt ?? now;
  if (conn.probeAt !== null && heard < conn.probeAt) {
    if (now - conn.probeAt < PROBE_TIMEOUT_MS) return;
    const ws = conn.ws;
    conn.ws = null;
    ws.close();
    onClosed({ code: 1006 });
    return;
  }
  conn.probeAt = null;
  if (now - heard >= PROBE_AFTER_MS) {
    conn.probeAt = now;
    request({ type: 'rooms' }, { kind: 'rooms' });
  }
}, CHECK_MS);

// ---------------------------------------------------------------------------------------
// Frames from the server

function handleFrame(f) {
  const req = f.id !== undefined ? state.requests.get(f.id) : undefined;
  if (f.id !== undefined && f.type !== 'ack' && f.type !== 'error') state.requests.delete(f.id);
  switch (f.type) {
    case 'welcome':
      return onWelcome(f);
    case 'joined':
      return onJoined(f, req);
    case 'left':
      return onLeft(f);
    case 'message':
      return onMessage(f);
    case 'change':
      return onChange(f);
    case 'read':
      return onReadEcho(f);
    case 'ack':
      state.requests.delete(f.id);
      return onAck(f, req);
    case 'history':
      return onHistory(f);
    case 'rooms':
      return onRooms(f);
    case 'members':
      return onMembers(f);
    case 'presence':
      return onPresenceDiff(f);
    case 'user_joined':
      return onPresence(f, true);
    case 'user_left':
      return onPresence(f, false);
    case 'typing':
      return onTyping(f);
    case 'moderated':
      return onModerated(f);
    case 'topic':
      return onTopic(f);
    case 'slow_mode':
      return onSlowMode(f);
    case 'done':
      return onDone(f, req);
    case 'error':
      state.requests.delete(f.id);
      return onError(f, req);
    case 'goodbye':
      conn.retryAfter = Number.isFinite(f.retry_after_ms) ? f.retry_after_ms : 1000;
      setStatus('reconnecting', 'Server restarting…');
      return undefined;
    default:
      return undefined; // newer server frames: ignore
  }
}

function onWelcome(f) {
  conn.attempt = 0;
  conn.nameRetries = 0;
  const login = conn.login;
  conn.login = null;
  const first = !conn.welcomedOnce;
  conn.welcomedOnce = true;
  state.me = f.user;
  state.meKey = fold(f.user);
  if (f.limits) state.limits = { ...state.limits, ...f.limits };
  const old = store.get('identity', null);
  const sameUser = old && fold(old.name) === state.meKey;
  store.set('identity', {
    name: f.user,
    token: f.token ?? (sameUser ? old.token : null),
    dms: sameUser ? old.dms ?? [] : [],
  });
  store.set('signedOut', false);
  if (login) store.set('room', login.room);

  // A new epoch means the server's history was reset: our seqs mean nothing there.
  if (store.get('epoch', null) !== f.epoch) {
    state.read = {};
    store.set('read', state.read);
    store.set('epoch', f.epoch);
  }
  if (state.epoch !== null && state.epoch !== f.epoch) resetEpoch();
  state.epoch = f.epoch;

  setStatus('connected', 'Connected');
  ui.meName.textContent = state.me;
  ui.meAvatar.textContent = initial(state.me);
  ui.meAvatar.className = `avatar ${colorClass(state.me)}`;
  if (first) {
    state.current = null;
    const want = login ? login.room : store.get('room', 'general');
    state.wantRoom = want;
    showChat();
  }
  for (const p of state.pending.values()) resend(p);
  request({ type: 'rooms' }, { kind: 'rooms' });
  renderRoomList();
}

function resetEpoch() {
  state.ep++;
  for (const room of state.rooms.values()) {
    room.cursor = null;
    room.pageFrom = null;
    room.hasMore = false;
    if (room.items.some((it) => it.kind === 'msg')) {
      changeTimeline(room, () =>
        insertItem(room, {
          kind: 'restart',
          key: [state.ep, 0, -1],
          text: 'The server restarted. Messages above are from before the restart.',
        }),
      );
    }
    if (room.direct || room.joined) {
      // The hello resumed with cursors from the old history; ask again from scratch.
      room.resyncing = true;
      request({ type: 'join', room: room.name }, { kind: 'resync', room: room.name });
    }
  }
}

function onJoined(f, req) {
  const room = getRoom(f.room);
  if (!room.direct) room.joined = true;
  if (room.direct) rememberDm(room.name);
  room.members = sortNames(f.members ?? []);
  room.count = Number.isFinite(f.count) ? f.count : null;
  room.partial = room.count !== null && room.members.length < room.count;
  if (room.direct) learnPeer(room, room.members.find((n) => !isMine(n)));
  room.role = typeof f.role === 'string' ? f.role : 'member';
  room.topic = typeof f.topic === 'string' ? f.topic : '';
  room.slowMode = Number.isFinite(f.slow_mode) ? f.slow_mode : 0;
  const messages = Array.isArray(f.messages) ? f.messages : [];
  const hadCurrent = room.items.some((it) => it.kind === 'msg' && it.key[0] === state.ep);
  const isResync = req?.kind === 'resync';
  if (isResync) room.resyncing = false;

  changeTimeline(room, () => {
    if (f.gap && !room.resyncing && !isResync && hadCurrent && messages.length) {
      insertItem(room, {
        kind: 'gap',
        key: [state.ep, messages[0].seq, -1],
        text: 'Some messages are missing here. Scroll up to load them.',
        before: messages[0].seq,
      });
    }
    let fresh = 0;
    for (const m of messages) if (addMessage(room, m, { live: false })) fresh++;
    return fresh;
  });
  room.cursor = Math.max(room.cursor ?? 0, f.last_seq ?? 0);
  const seqs = messages.map((m) => m.seq);
  if (f.gap && seqs.length) {
    room.pageFrom = seqs[0];
    room.hasMore = seqs[0] > 1;
  } else if (room.pageFrom === null || !hadCurrent) {
    const all = [...room.byKey.values()].filter((it) => it.key[0] === state.ep).map((it) => it.key[1]);
    room.pageFrom = all.length ? Math.min(...all) : null;
    room.hasMore = room.pageFrom !== null && room.pageFrom > 1;
  }
  if (!hadCurrent) {
    // First load of this room: what arrived since the last visit counts as unread.
    const lastRead = state.read[room.name] ?? 0;
    room.unread = messages.filter((m) => m.kind === undefined && !m.deleted && m.seq > lastRead && !isMine(m.user)).length;
    // The server's marker may be behind what this browser read (it does not keep markers
    // across a restart): move it up; it never goes back.
    if (lastRead > 0 && lastRead <= (f.last_seq ?? 0)) {
      send({ type: 'read', room: room.name, seq: lastRead });
      requestRoomsSoon();
    }
  }
  saveRooms();
  const switchTo =
    req?.kind === 'join' || req?.kind === 'dm' || (!state.current && state.wantRoom === room.name) || !state.current;
  if (switchTo) selectRoom(room.name, { focus: req?.kind === 'join' || req?.kind === 'dm' });
  else if (room === currentRoom()) {
    markRead(room);
    renderMembers();
    updateHistoryControls();
  }
  renderRoomList();
  fillViewport(room);
}

function onLeft(f) {
  const room = state.rooms.get(f.room);
  if (!room) return;
  closeRoom(room);
}

function closeRoom(room) {
  room.joined = false;
  state.rooms.delete(room.name);
  if (room.direct) forgetDm(room.name);
  saveRooms();
  if (state.current === room.name) {
    const next = [...state.rooms.values()].find((r) => !r.direct) ?? [...state.rooms.values()][0];
    state.current = null;
    if (next) selectRoom(next.name);
    else showNoRoom();
  }
  renderRoomList();
  requestRoomsSoon();
}

/** A direct room's name has only lowercase keys: learn how the peer writes their name. */
function learnPeer(room, name) {
  if (!name || name === room.peer || fold(name) !== room.peerFromName()) return;
  room.peer = name;
  if (room === currentRoom()) {
    ui.roomTitle.textContent = name;
    ui.composer.placeholder = `Message ${name}`;
    ui.composerLabel.textContent = `Message ${name}`;
  }
  renderRoomList();
}

/** Adds a message; returns true if it was new. */
function addMessage(room, m, { live }) {
  if (!Number.isInteger(m.seq) || typeof m.user !== 'string') return false;
  // A change entry (an edit, delete or reaction: `kind` set) is not a message of its own:
  // it is applied to the message it names, when the page holds it.
  if (m.kind !== undefined) {
    if (live && m.seq > (room.cursor ?? 0)) room.cursor = m.seq;
    applyChange(room, m);
    return false;
  }
  if (typeof m.body !== 'string' && m.deleted !== true) return false;
  const held = room.byKey.get(`${state.ep}:${m.seq}`);
  if (held) {
    updateFrom(room, held, m);
    return false;
  }
  // Our own message being sent: the real one replaces the placeholder.
  if (m.client_id && isMine(m.user)) {
    const p = state.pending.get(m.client_id);
    if (p) settle(p);
  }
  const item = msgItem(m);
  if (!insertItem(room, item)) return false;
  refreshQuotes(room, item);
  if (live && room.pageFrom === null) {
    // The first message of a room that was empty when we joined: it is the beginning.
    room.pageFrom = m.seq;
    if (room === currentRoom()) updateHistoryControls();
  }
  if (room.direct && !isMine(m.user)) learnPeer(room, m.user);
  if (m.seq > (room.cursor ?? 0) && live) room.cursor = m.seq;
  clearTyping(room, m.user);
  if (!isMine(m.user)) {
    const lastRead = state.read[room.name] ?? 0;
    const seen = room === currentRoom() && !document.hidden;
    if (live && m.seq > lastRead && !seen) room.unread++;
    if (live && room === currentRoom()) announce(`${m.user}: ${m.body ?? ''}`);
  }
  return true;
}

function onMessage(f) {
  if (typeof f.room !== 'string') return;
  const room = getRoom(f.room);
  if (room.direct) rememberDm(room.name);
  const mine = isMine(f.user);
  const added = changeTimeline(room, () => addMessage(room, f, { live: true }), { live: true, mine: mine && room === currentRoom() });
  if (!added) return;
  if (room === currentRoom() && !document.hidden) markRead(room);
  renderRoomList();
}

function onChange(f) {
  if (typeof f.room !== 'string') return;
  const room = state.rooms.get(f.room);
  if (!room) return;
  addMessage(room, f, { live: true });
}

/** Another session of ours read up to `seq`: what is before it is not unread here either. */
function onReadEcho(f) {
  const room = state.rooms.get(f.room);
  if (!room || !Number.isInteger(f.seq)) return;
  if (f.seq > (state.read[room.name] ?? 0)) {
    state.read[room.name] = f.seq;
    store.set('read', state.read);
  }
  const after = room.items.filter((it) => it.kind === 'msg' && it.key[0] === state.ep && it.key[1] > f.seq && !isMine(it.user) && !it.deleted).length;
  room.unread = Math.min(room.unread, after);
  renderRoomList();
}

function onHistory(f) {
  const room = state.rooms.get(f.room);
  if (!room) return;
  room.loadingOlder = false;
  const messages = Array.isArray(f.messages) ? f.messages : [];
  let closedGap = false;
  changeTimeline(room, () => {
    for (const m of messages) {
      if (room.byKey.has(`${state.ep}:${m.seq}`)) closedGap = true;
      addMessage(room, m, { live: false });
    }
    const gap = room.items.find((it) => it.kind === 'gap' && it.key[0] === state.ep);
    if (gap && (closedGap || !f.has_more)) removeItem(room, gap);
  });
  if (messages.length) room.pageFrom = Math.min(room.pageFrom ?? Infinity, messages[0].seq);
  if (closedGap) {
    const all = [...room.byKey.values()].filter((it) => it.key[0] === state.ep).map((it) => it.key[1]);
    room.pageFrom = Math.min(...all);
  }
  room.hasMore = Boolean(f.has_more) && messages.length > 0;
  updateHistoryControls();
  fillViewport(room);
}

function onRooms(f) {
  if (!Array.isArray(f.rooms)) return;
  state.publicRooms = f.rooms.filter((r) => !r.direct);
  for (const r of f.rooms) {
    // The server counts unread messages from the read marker all our sessions share.
    const held = state.rooms.get(r.name);
    if (held && (held.joined || held.direct) && !(held === currentRoom() && !document.hidden)) {
      held.unread = Number.isInteger(r.unread) && r.unread > 0 ? r.unread : 0;
    }
  }
  for (const r of f.rooms) {
    if (!r.direct || r.last_seq === 0 || state.rooms.has(r.name)) continue;
    // A conversation someone started with us while we were away: load it.
    const room = getRoom(r.name);
    rememberDm(room.name);
    request({ type: 'join', room: r.name }, { kind: 'load', room: r.name });
  }
  renderRoomList();
}

function onMembers(f) {
  const room = state.rooms.get(f.room);
  if (!room || !Array.isArray(f.members)) return;
  if (Number.isFinite(f.count)) {
    // A page (version 2): added to the names the page holds.
    const have = new Set(room.members.map(fold));
    room.members = sortNames([...room.members, ...f.members.filter((n) => !have.has(fold(n)))]);
    room.count = f.count;
    room.partial = room.members.length < f.count;
  } else {
    room.members = sortNames(f.members);
  }
  if (room === currentRoom()) renderMembers();
}

// The next page of a big room's members: those after the last name the page holds.
function moreMembers(room) {
  const last = room.members[room.members.length - 1];
  request({ type: 'members', room: room.name, ...(last ? { after: last } : {}) }, { kind: 'members', room: room.name });
}

// Version 1: one user came or went.
function onPresence(f, joined) {
  const room = state.rooms.get(f.room);
  if (!room || typeof f.user !== 'string') return;
  presenceChange(room, f.user, joined, f.ts);
  if (room.count !== null && room.count !== undefined) room.count = room.members.length;
  if (room === currentRoom()) renderMembers();
  requestRoomsSoon();
}

// Version 2: a room's joins and leaves over one presence tick, or (above the room's
// presence threshold) only its count, or the whole list again.
function onPresenceDiff(f) {
  const room = state.rooms.get(f.room);
  if (!room) return;
  const ts = new Date().toISOString();
  if (Array.isArray(f.members)) {
    room.members = sortNames(f.members.filter((n) => typeof n === 'string'));
    room.partial = false;
  }
  for (const user of Array.isArray(f.joins) ? f.joins : []) {
    if (typeof user === 'string') presenceChange(room, user, true, ts);
  }
  for (const user of Array.isArray(f.leaves) ? f.leaves : []) {
    if (typeof user === 'string') presenceChange(room, user, false, ts);
  }
  if (Number.isFinite(f.count)) {
    room.count = f.count;
    room.partial = room.members.length < f.count;
  }
  if (room === currentRoom()) renderMembers();
  requestRoomsSoon();
}

function presenceChange(room, user, joined, ts) {
  const key = fold(user);
  room.members = room.members.filter((n) => fold(n) !== key);
  if (joined) room.members = sortNames([...room.members, user]);
  else clearTyping(room, user);
  const maxSeq = room.cursor ?? 0;
  changeTimeline(
    room,
    () => insertItem(room, { kind: 'notice', key: [state.ep, maxSeq, ++room.sub], user, joined, ts, date: new Date(ts) }),
    { live: true },
  );
  if (room === currentRoom()) announce(`${user} ${joined ? 'joined' : 'left'}`);
}

function onTyping(f) {
  const room = state.rooms.get(f.room);
  if (!room || typeof f.user !== 'string' || isMine(f.user)) return;
  const key = fold(f.user);
  const old = room.typing.get(key);
  if (old) clearTimeout(old.timer);
  if (f.active) {
    // The server sends active:false itself when the indicator expires; this is a safety
    // net for a lost frame. It cannot be exactly typing_expiry_ms, because the server
    // forwards only changes, not the renewals of someone who keeps typing.
    const ms = Math.max(state.limits.typing_expiry_ms * 5, 15000);
    const timer = setTimeout(() => {
      room.typing.delete(key);
      renderTyping();
    }, ms);
    room.typing.set(key, { name: f.user, timer });
  } else {
    room.typing.delete(key);
  }
  if (room === currentRoom()) renderTyping();
}

function clearTyping(room, user) {
  const key = fold(user);
  const t = room.typing.get(key);
  if (!t) return;
  clearTimeout(t.timer);
  room.typing.delete(key);
  if (room === currentRoom()) renderTyping();
}

function clearTypingAll() {
  for (const room of state.rooms.values()) {
    for (const t of room.typing.values()) clearTimeout(t.timer);
    room.typing.clear();
  }
  renderTyping();
}

const LOGIN_ERRORS = {
  name_taken: 'That name is in use right now. Pick another one.',
  invalid_name: 'That name is not allowed: ',
  auth_failed: 'The server refused to sign you in: ',
  shutting_down: 'The server is restarting. Try again in a moment.',
  unsupported_version: 'This page is out of date. Reload it.',
};

function onError(f, req) {
  const code = String(f.code ?? 'error');
  const message = typeof f.message === 'string' ? f.message : code;
  if (req?.kind === 'hello' && conn.welcomedOnce && (code === 'shutting_down' || (code === 'name_taken' && conn.nameRetries < 5))) {
    // Reconnecting, not logging in. shutting_down: the server closes this connection and
    // we come back later. name_taken: after a restart, another tab of ours may have
    // claimed the name first and stored a new token; try again with what is stored.
    if (code === 'name_taken') conn.nameRetries++;
    const ws = conn.ws;
    conn.ws = null;
    ws?.close();
    scheduleReconnect();
    return;
  }
  if (req?.kind === 'hello') {
    // Wrong name (or it was taken while we were away): back to the login form.
    const text = LOGIN_ERRORS[code] ?? 'Could not join: ';
    disconnect();
    conn.welcomedOnce = false;
    conn.login = null;
    setStatus('idle', 'Signed out');
    showLogin(text.endsWith(': ') ? text + message : text);
    return;
  }
  if (req?.kind === 'send') return onSendError(f, req, code, message);
  if (req?.kind === 'mod') return onModError(req, code, message);
  if (req?.kind === 'change') return onChangeError(req, code, message);
  if (req?.kind === 'join') {
    ui.joinError.textContent = code === 'invalid_room' ? `That room name is not allowed: ${message}` : message;
    ui.joinRoom.setAttribute('aria-invalid', 'true');
    return;
  }
  if (req?.kind === 'history') {
    const room = state.rooms.get(req.room);
    if (room) {
      room.loadingOlder = false;
      if (code !== 'storage_unavailable') room.hasMore = false;
      updateHistoryControls(code === 'storage_unavailable' ? 'Could not load older messages. Try again.' : '');
    }
    return;
  }
  if (req?.kind === 'resync' || req?.kind === 'load') {
    const room = state.rooms.get(req.room);
    if (room) room.resyncing = false;
    return;
  }
  if (req?.kind === 'dm') {
    showComposerError(message);
    return;
  }
  if (code === 'not_member' || code === 'invalid_room' || code === 'too_many_rooms' || code === 'no_such_message') {
    // Errors without an id: a room from an earlier visit that is no longer allowed, or
    // typing in a room we just left. Nothing the user needs to act on.
    return;
  }
  if (code === 'shutting_down') {
    setStatus('reconnecting', 'Server restarting…');
    return;
  }
  showComposerError(message);
}

// ---------------------------------------------------------------------------------------
// Moderation: what moderators did (to us or others), the topic, and our own actions

const MOD_ROLES = new Set(['moderator', 'owner']);

function canModerate(room) {
  return !!room && !room.direct && room.joined && MOD_ROLES.has(room.role);
}

/** What a `moderated` frame says, for us (`mine`) or about someone else. */
function modText(f, room, mine) {
  const who = String(f.user);
  const by = typeof f.by === 'string' ? ` by ${f.by}` : '';
  const why = typeof f.reason === 'string' && f.reason ? `: ${f.reason}` : '';
  const mins = Number.isFinite(f.minutes) ? f.minutes : null;
  const span = mins === null ? '' : mins < 60 || mins % 60 ? ` for ${mins} minute${mins === 1 ? '' : 's'}` : ` for ${mins / 60} hour${mins === 60 ? '' : 's'}`;
  const where = `#${room}`;
  switch (f.action) {
    case 'kick':
      return mine ? `You were removed from ${where}${by}${why}. You may join it again.` : `${who} was removed${by}${why}`;
    case 'ban':
      return mine ? `You were banned from ${where}${span || ' for good'}${by}${why}.` : `${who} was banned${span}${by}${why}`;
    case 'mute':
      return mine ? `You were muted in ${where}${span}${by}${why}. You can read but not post.` : `${who} was muted${span}${by}${why}`;
    case 'unmute':
      return mine ? `You may post in ${where} again.` : `${who} may post again${by}`;
    case 'unban':
      return `${who} may come back${by}`;
    case 'set_role':
      return mine ? `You are now ${f.role} of ${where}${by}.` : `${who} is now ${f.role}${by}`;
    default:
      return null;
  }
}

function onModerated(f) {
  if (typeof f.room !== 'string' || typeof f.user !== 'string') return;
  if (f.action === 'topic' || f.action === 'slow_mode') return; // told by their own frames
  const room = state.rooms.get(f.room);
  const mine = isMine(f.user);
  const text = modText(f, f.room, mine);
  if (!text) return;
  const key = fold(f.user);
  if (f.action === 'mute') room?.mutedUsers.add(key);
  if (f.action === 'unmute' || f.action === 'kick' || f.action === 'ban') room?.mutedUsers.delete(key);
  if (room) {
    if (mine && f.action === 'mute') room.muted = true;
    if (mine && f.action === 'unmute') room.muted = false;
    if (mine && f.action === 'set_role' && typeof f.role === 'string') room.role = f.role;
    if (room.modOpen && fold(room.modOpen) === key && (f.action === 'kick' || f.action === 'ban')) room.modOpen = null;
    const now = new Date();
    changeTimeline(
      room,
      () => insertItem(room, { kind: 'mod', key: [state.ep, room.cursor ?? 0, ++room.sub], action: f.action, text, ts: now.toISOString(), date: now }),
      { live: true },
    );
  }
  // A kick or ban takes us out (`left` follows): say so where it stays visible.
  if (mine && (f.action === 'kick' || f.action === 'ban')) showModAlert(text);
  if (room && room === currentRoom()) {
    renderRoomState();
    renderTopic();
    renderMembers();
    announce(text);
  }
}

function showModAlert(text) {
  ui.modAlertText.textContent = text;
  ui.modAlert.hidden = false;
}

function renderRoomState() {
  const room = currentRoom();
  const muted = !!room?.muted;
  ui.roomState.hidden = !muted;
  ui.roomState.textContent = muted ? `You are muted in #${room.name}: you can read, but your messages are refused.` : '';
}

function onTopic(f) {
  const room = state.rooms.get(f.room);
  if (!room || typeof f.topic !== 'string') return;
  room.topic = f.topic;
  const by = typeof f.by === 'string' ? f.by : 'The host';
  const text = f.topic ? `${by} set the topic: ${f.topic}` : `${by} cleared the topic`;
  const now = new Date();
  changeTimeline(
    room,
    () => insertItem(room, { kind: 'mod', key: [state.ep, room.cursor ?? 0, ++room.sub], action: 'topic', text, ts: now.toISOString(), date: now }),
    { live: true },
  );
  if (room === currentRoom()) {
    renderTopic();
    announce(text);
  }
}

/** "one message every 30 s" (or minutes / hours when whole). */
function slowText(seconds) {
  if (seconds % 3600 === 0) return `one message every ${seconds / 3600} hour${seconds === 3600 ? '' : 's'}`;
  if (seconds % 60 === 0) return `one message every ${seconds / 60} minute${seconds === 60 ? '' : 's'}`;
  return `one message every ${seconds} s`;
}

function onSlowMode(f) {
  const room = state.rooms.get(f.room);
  if (!room || !Number.isFinite(f.seconds)) return;
  room.slowMode = f.seconds;
  const by = typeof f.by === 'string' ? f.by : 'The host';
  const text = f.seconds > 0 ? `${by} turned on slow mode: ${slowText(f.seconds)}` : `${by} turned off slow mode`;
  const now = new Date();
  changeTimeline(
    room,
    () => insertItem(room, { kind: 'mod', key: [state.ep, room.cursor ?? 0, ++room.sub], action: 'slow_mode', text, ts: now.toISOString(), date: now }),
    { live: true },
  );
  if (room === currentRoom()) {
    renderTopic();
    announce(text);
  }
}

function onDone(f, req) {
  if (req?.kind !== 'mod') return;
  const room = state.rooms.get(req.room);
  if (!room) return;
  if (req.action === 'topic') {
    room.editingTopic = false;
    if (room === currentRoom()) {
      renderTopic();
      ui.topicEdit.focus();
    }
    return;
  }
  if (req.action === 'slow_mode') {
    if (room === currentRoom()) ui.slowError.textContent = '';
    return;
  }
  if (req.action === 'unban') {
    if (room === currentRoom()) {
      ui.unbanInput.value = '';
      ui.unbanError.textContent = '';
      ui.unbanInput.focus();
    }
    return;
  }
  if (room.modOpen && fold(room.modOpen) === fold(req.user)) room.modOpen = null;
  if (room === currentRoom()) {
    renderMembers();
    // Focus back on the member's entry (or the list, if they are gone).
    const back = [...ui.memberList.querySelectorAll('[data-testid="mod-toggle"]')].find((b) => b.dataset.user === req.user);
    (back ?? ui.membersH).focus?.();
  }
}

const MOD_ERRORS = {
  forbidden: 'You may not do that in this room.',
  user_not_found: 'They are not in this room.',
  not_member: 'You are not in this room.',
};

function onModError(req, code, message) {
  const text = MOD_ERRORS[code] ?? message;
  const room = state.rooms.get(req.room);
  if (req.action === 'topic') {
    ui.topicError.textContent = text;
    return;
  }
  if (req.action === 'slow_mode' || req.action === 'unban') {
    (req.action === 'unban' ? ui.unbanError : ui.slowError).textContent = text;
    return;
  }
  if (room) room.modError = { user: req.user, text };
  if (room === currentRoom()) renderMembers();
}

/** Sends a moderator's command about `user` (or the topic) for the current room. */
function moderate(action, fields) {
  const room = currentRoom();
  if (!canModerate(room)) return;
  room.modError = null;
  const frame = { type: action, room: room.name, ...fields };
  if (!request(frame, { kind: 'mod', room: room.name, user: fields.user ?? null, action })) {
    const text = 'Not connected: try again when the chat is back.';
    if (action === 'topic') ui.topicError.textContent = text;
    else if (action === 'slow_mode') ui.slowError.textContent = text;
    else if (action === 'unban') ui.unbanError.textContent = text;
    else {
      room.modError = { user: fields.user, text };
      renderMembers();
    }
  }
}

function modPanel(room, name) {
  const panel = el('div', 'mod-panel');
  panel.id = `mod-panel-${fold(name)}`;
  panel.dataset.testid = 'mod-panel';
  panel.dataset.user = name;
  panel.setAttribute('role', 'group');
  panel.setAttribute('aria-label', `Moderate ${name}`);
  const reasonId = `mod-reason-${fold(name)}`;
  const label = el('label', 'mod-label', 'Reason (optional)');
  label.htmlFor = reasonId;
  const reason = el('input', 'mod-reason');
  reason.id = reasonId;
  reason.maxLength = 200;
  reason.dataset.testid = 'mod-reason';
  const withReason = (extra = {}) => {
    const r = reason.value.trim();
    return r ? { user: name, reason: r, ...extra } : { user: name, ...extra };
  };
  const button = (text, testid, onClick) => {
    const b = el('button', 'btn btn-small mod-btn', text);
    b.type = 'button';
    b.dataset.testid = testid;
    b.addEventListener('click', onClick);
    return b;
  };
  const muted = room.mutedUsers.has(fold(name));
  const mute = muted
    ? button('Unmute', 'mod-unmute', () => moderate('unmute', { user: name }))
    : button('Mute', 'mod-mute', () => moderate('mute', withReason()));
  mute.setAttribute('aria-label', `${muted ? 'Unmute' : 'Mute'} ${name}`);
  const kick = button('Kick', 'mod-kick', () => moderate('kick', withReason()));
  kick.setAttribute('aria-label', `Kick ${name} out of #${room.name}`);
  const lengthId = `mod-length-${fold(name)}`;
  const lengthLabel = el('label', 'sr-only', 'Ban length');
  lengthLabel.htmlFor = lengthId;
  const length = el('select', 'mod-length');
  length.id = lengthId;
  length.dataset.testid = 'mod-ban-length';
  for (const [value, text] of [['10', '10 minutes'], ['60', '1 hour'], ['1440', '1 day'], ['', 'for good']]) {
    const o = el('option', null, text);
    o.value = value;
    length.append(o);
  }
  const ban = button('Ban', 'mod-ban', () => moderate('ban', withReason(length.value ? { minutes: Number(length.value) } : {})));
  ban.setAttribute('aria-label', `Ban ${name} from #${room.name}`);
  const row = el('div', 'mod-row');
  row.append(mute, kick, lengthLabel, length, ban);
  const rows = [row];
  if (room.role === 'owner') {
    // Owners give roles: make a member a moderator, or take the role back.
    const roleId = `mod-role-${fold(name)}`;
    const roleLabel = el('label', 'sr-only', `Role of ${name}`);
    roleLabel.htmlFor = roleId;
    const role = el('select', 'mod-role');
    role.id = roleId;
    role.dataset.testid = 'mod-role';
    for (const [value, text] of [['moderator', 'moderator'], ['member', 'member']]) {
      const o = el('option', null, text);
      o.value = value;
      role.append(o);
    }
    const setRole = button('Set role', 'mod-set-role', () => moderate('set_role', { user: name, role: role.value }));
    setRole.setAttribute('aria-label', `Set the role of ${name} in #${room.name}`);
    const roleRow = el('div', 'mod-row');
    roleRow.append(roleLabel, role, setRole);
    rows.push(roleRow);
  }
  const error = el('p', 'form-error mod-error', room.modError && fold(room.modError.user ?? '') === fold(name) ? room.modError.text : '');
  error.dataset.testid = 'mod-error';
  error.setAttribute('role', 'alert');
  panel.append(label, reason, ...rows, error);
  panel.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      room.modOpen = null;
      room.modError = null;
      renderMembers();
      [...ui.memberList.querySelectorAll('[data-testid="mod-toggle"]')].find((b) => b.dataset.user === name)?.focus();
    }
  });
  return panel;
}

function renderTopic() {
  const room = currentRoom();
  const show = !!room && !room.direct;
  const can = canModerate(room);
  const slow = show && room.slowMode > 0;
  ui.topicBar.hidden = !show || (!room.topic && !slow && !can);
  ui.roomSlow.hidden = !slow;
  ui.roomSlow.textContent = slow ? `Slow mode: ${slowText(room.slowMode)}` : '';
  ui.roomMod.hidden = !can;
  if (can && document.activeElement !== ui.slowInput) ui.slowInput.value = String(room.slowMode);
  ui.topic.textContent = room?.topic ?? '';
  ui.topic.hidden = !room?.topic;
  ui.topicEdit.hidden = !can || room.editingTopic;
  ui.topicEdit.textContent = room?.topic ? 'Edit topic' : 'Set a topic';
  ui.topicForm.hidden = !can || !room.editingTopic;
  if (!room?.editingTopic) ui.topicError.textContent = '';
}

// ---------------------------------------------------------------------------------------
// Sending messages

function pendingKey() {
  state.pendingSeq = (state.pendingSeq ?? 0) + 1;
  return [Number.MAX_SAFE_INTEGER, state.pendingSeq, 0];
}

function sendMessage(room, body, replyTo = null) {
  const p = {
    clientId: uuid(),
    room: room.name,
    to: room.direct ? room.peer : null,
    body,
    replyTo,
    failed: false,
    retryTimer: null,
  };
  p.item = { kind: 'pending', key: pendingKey(), user: state.me, body, date: new Date(), clientId: p.clientId, replyTo, reactions: [] };
  state.pending.set(p.clientId, p);
  changeTimeline(room, () => insertItem(room, p.item), { mine: true });
  resend(p);
}

function resend(p) {
  clearTimeout(p.retryTimer);
  p.retryTimer = null;
  const frame = { type: 'send', body: p.body, client_id: p.clientId };
  if (p.replyTo !== null && p.replyTo !== undefined) frame.reply_to = p.replyTo;
  if (p.to) frame.to = p.to;
  else frame.room = p.room;
  if (p.failed) {
    p.failed = false;
    p.item.node.classList.remove('failed');
    setPendingStatus(p, 'sending…');
  }
  // Not welcomed on this connection (offline, or the hello not answered yet): it stays
  // pending and goes out after the next welcome, as the server refuses commands before it.
  if (conn.status === 'connected') request(frame, { kind: 'send', clientId: p.clientId });
}

function setPendingStatus(p, text, actions = false) {
  const status = p.item.node.querySelector('.msg-status');
  status.textContent = text;
  if (actions) {
    const retry = el('button', 'link-btn', 'Retry');
    retry.type = 'button';
    retry.dataset.testid = 'retry';
    retry.addEventListener('click', () => resend(p));
    const discard = el('button', 'link-btn', 'Discard');
    discard.type = 'button';
    discard.addEventListener('click', () => settle(p));
    status.append(' ', retry, ' ', discard);
  }
}

/** The send is done (posted, or given up): drop the placeholder. */
function settle(p) {
  clearTimeout(p.retryTimer);
  state.pending.delete(p.clientId);
  for (const room of state.rooms.values()) {
    if (room.items.includes(p.item)) {
      removeItem(room, p.item);
      break;
    }
  }
}

function onAck(f, req) {
  const clientId = f.client_id ?? req?.clientId;
  const p = clientId ? state.pending.get(clientId) : undefined;
  if (!p) return; // already settled by its message
  settle(p);
  // Normally our message arrived before its ack; if not (a duplicate ack after a
  // reconnect), show it from the ack.
  const room = getRoom(f.room);
  const m = { room: f.room, seq: f.seq, ts: f.ts, user: state.me, body: p.body, client_id: clientId };
  if (p.replyTo !== null && p.replyTo !== undefined) m.reply_to = p.replyTo;
  const current = currentRoom();
  changeTimeline(room, () => addMessage(room, m, { live: false }), { mine: true });
  if (room.direct) rememberDm(room.name);
  if (p.room !== f.room && current?.name === p.room) selectRoom(f.room);
  renderRoomList();
  // Typing that started while this message was being posted was ended by the post (the
  // server ends the author's indicator then): announce it again.
  if (ui.composer.value.trim() && currentRoom()?.name === f.room && conn.status === 'connected') {
    send({ type: 'typing', room: f.room, active: true });
    state.typingSent = { room: f.room, at: Date.now() };
  }
}

function onSendError(f, req, code, message) {
  const p = state.pending.get(req.clientId);
  if (!p) return;
  if (code === 'rate_limited' || code === 'storage_unavailable') {
    const wait = Number(/(\d+)\s*ms/.exec(message)?.[1] ?? 1000);
    setPendingStatus(p, code === 'rate_limited' ? 'waiting (too many messages)…' : 'retrying…');
    p.retryTimer = setTimeout(() => resend(p), Math.min(Math.max(wait, 200), 30000) + 50);
    return;
  }
  if (code === 'shutting_down') {
    setPendingStatus(p, 'will send after reconnecting…');
    return; // resent after the next welcome
  }
  p.failed = true;
  p.item.node.classList.add('failed');
  const reasons = {
    user_not_found: `Not sent: ${p.to ?? 'they'} is not online.`,
    body_too_large: `Not sent: longer than ${state.limits.max_body_bytes} bytes.`,
    invalid_body: 'Not sent: empty message.',
    forbidden: state.rooms.get(p.room)?.muted ? 'Not sent: you are muted in this room.' : 'Not sent: you may not post in this room.',
  };
  const again = /you may send again in (\d+) s/.exec(message)?.[1];
  if (code === 'slow_mode' && again) reasons.slow_mode = `Not sent: slow mode is on; you may send again in ${again} s.`;
  setPendingStatus(p, reasons[code] ?? `Not sent: ${message}`, true);
}

// ---------------------------------------------------------------------------------------
// Typing (ours)

function typingInput() {
  const room = currentRoom();
  if (!room || conn.status !== 'connected') return;
  const has = ui.composer.value.trim() !== '';
  const now = Date.now();
  if (has) {
    if (state.typingSent.room !== room.name || now - state.typingSent.at >= typingRenewMs()) {
      if (state.typingSent.room && state.typingSent.room !== room.name) stopTyping();
      send({ type: 'typing', room: room.name, active: true });
      state.typingSent = { room: room.name, at: now };
    }
  } else {
    stopTyping();
  }
}

/** Our indicator is renewed at half the server's expiry, so it never lapses mid-draft. */
function typingRenewMs() {
  return state.limits.typing_expiry_ms / 2;
}

function stopTyping() {
  if (state.typingSent.room) {
    send({ type: 'typing', room: state.typingSent.room, active: false });
    state.typingSent = { room: null, at: 0 };
  }
}

// ---------------------------------------------------------------------------------------
// Rendering: room list, members, typing, header

function currentRoom() {
  return state.current ? state.rooms.get(state.current) ?? null : null;
}

function sortNames(names) {
  const unique = new Map();
  for (const n of names) if (typeof n === 'string' && !unique.has(fold(n))) unique.set(fold(n), n);
  return [...unique.values()].sort((a, b) => fold(a).localeCompare(fold(b)));
}

function roomButton(room) {
  const li = el('li');
  const b = el('button', 'room-btn');
  b.type = 'button';
  b.dataset.testid = room.direct ? 'dm' : 'room';
  b.dataset.room = room.name;
  if (room.name === state.current) {
    b.classList.add('active');
    b.setAttribute('aria-current', 'true');
  }
  if (room.direct) {
    const av = el('span', `avatar small ${colorClass(room.peer)}`, initial(room.peer));
    av.setAttribute('aria-hidden', 'true');
    b.append(av);
  } else {
    const hash = el('span', 'hash', '#');
    hash.setAttribute('aria-hidden', 'true');
    b.append(hash);
  }
  b.append(el('bdi', 'room-name', room.label));
  if (room.unread > 0 && room.name !== state.current) {
    b.classList.add('has-unread');
    const badge = el('span', 'badge', room.unread > 99 ? '99+' : String(room.unread));
    badge.dataset.testid = 'unread';
    badge.setAttribute('aria-label', `${room.unread} unread`);
    b.append(badge);
  }
  b.addEventListener('click', () => {
    selectRoom(room.name, { focus: true });
  });
  li.append(b);
  return li;
}

function renderRoomList() {
  const rooms = [...state.rooms.values()];
  const byLabel = (a, b) => fold(a.label).localeCompare(fold(b.label));
  ui.roomList.replaceChildren(...rooms.filter((r) => !r.direct && r.joined).sort(byLabel).map(roomButton));
  const dms = rooms.filter((r) => r.direct).sort(byLabel);
  ui.dmList.replaceChildren(...dms.map(roomButton));
  ui.dmEmpty.hidden = dms.length > 0;
  const more = state.publicRooms.filter((r) => !state.rooms.get(r.name)?.joined);
  ui.moreRooms.replaceChildren(
    ...more.map((r) => {
      const li = el('li');
      const b = el('button', 'room-btn');
      b.type = 'button';
      b.dataset.testid = 'more-room';
      b.dataset.room = r.name;
      const hash = el('span', 'hash', '#');
      hash.setAttribute('aria-hidden', 'true');
      b.append(hash, el('bdi', 'room-name', r.name), el('span', 'count', String(r.members)));
      b.title = `Join ${r.name} (${r.members} ${r.members === 1 ? 'person' : 'people'})`;
      b.addEventListener('click', () => joinRoom(r.name));
      li.append(b);
      return li;
    }),
  );
  ui.moreRooms.previousElementSibling.hidden = more.length === 0;
  const total = rooms.reduce((n, r) => n + (r.name === state.current ? 0 : r.unread), 0);
  ui.totalUnread.hidden = total === 0;
  ui.totalUnread.textContent = String(total);
  const cur = currentRoom();
  const title = cur ? (cur.direct ? cur.peer : `#${cur.name}`) : 'Chat';
  document.title = `${total ? `(${total}) ` : ''}${title} · Chat`;
}

function renderMembers() {
  const room = currentRoom();
  const members = room ? room.members : [];
  const count = room && Number.isFinite(room.count) ? room.count : members.length;
  ui.membersH.textContent = room?.direct ? 'In this conversation' : 'People here';
  ui.roomCount.textContent = room && !room.direct ? `${count} ${count === 1 ? 'person' : 'people'}` : '';
  // An open moderation panel keeps what was typed and where focus was across a redraw.
  const oldPanel = ui.memberList.querySelector('[data-testid="mod-panel"]');
  const kept = oldPanel && {
    user: oldPanel.dataset.user,
    reason: oldPanel.querySelector('.mod-reason')?.value ?? '',
    length: oldPanel.querySelector('.mod-length')?.value ?? '',
    focus: oldPanel.contains(document.activeElement) ? document.activeElement.dataset.testid : null,
  };
  ui.memberList.replaceChildren(
    ...members.map((name) => {
      const li = el('li');
      const mine = isMine(name);
      const node = el(mine ? 'div' : 'button', 'member');
      node.dataset.testid = 'member';
      node.dataset.user = name;
      const dot = el('span', 'presence');
      dot.setAttribute('aria-hidden', 'true');
      const av = el('span', `avatar small ${colorClass(name)}`, initial(name));
      av.setAttribute('aria-hidden', 'true');
      const label = el('bdi', 'member-name', name);
      label.dataset.testid = 'member-name';
      node.append(av, dot, label);
      if (mine) node.append(el('span', 'you-tag', 'you'));
      else {
        node.type = 'button';
        node.title = `Send a direct message to ${name}`;
        const hint = el('span', 'sr-only', ': send a direct message');
        node.append(hint);
        node.addEventListener('click', () => openDm(name));
      }
      if (room && !room.direct && (mine ? room.muted : room.mutedUsers.has(fold(name)))) {
        const tag = el('span', 'muted-tag', 'muted');
        tag.dataset.testid = 'muted-tag';
        node.append(tag);
      }
      li.append(node);
      if (!mine && canModerate(room)) {
        const open = room.modOpen !== null && fold(room.modOpen) === fold(name);
        li.classList.add('moderatable');
        const toggle = el('button', 'icon-btn mod-toggle', '⋯');
        toggle.type = 'button';
        toggle.dataset.testid = 'mod-toggle';
        toggle.dataset.user = name;
        toggle.title = `Moderate ${name}`;
        toggle.setAttribute('aria-label', `Moderate ${name}`);
        toggle.setAttribute('aria-expanded', String(open));
        toggle.setAttribute('aria-controls', `mod-panel-${fold(name)}`);
        toggle.addEventListener('click', () => {
          room.modOpen = open ? null : name;
          room.modError = null;
          renderMembers();
          const panel = ui.memberList.querySelector(`[data-testid="mod-panel"][data-user="${CSS.escape(name)}"]`);
          if (panel) panel.querySelector('input')?.focus();
          else [...ui.memberList.querySelectorAll('[data-testid="mod-toggle"]')].find((b) => b.dataset.user === name)?.focus();
        });
        li.append(toggle);
        if (open) li.append(modPanel(room, name));
      }
      return li;
    }),
  );
  if (room?.partial) {
    // A big room: the server sends counts, and the list is paged on request.
    const li = el('li');
    const more = el('button', 'member more-members', `Show more (${count - members.length} more)`);
    more.type = 'button';
    more.dataset.testid = 'more-members';
    more.addEventListener('click', () => moreMembers(room));
    li.append(more);
    ui.memberList.append(li);
  }
  const panel = ui.memberList.querySelector('[data-testid="mod-panel"]');
  if (kept && panel && panel.dataset.user === kept.user) {
    panel.querySelector('.mod-reason').value = kept.reason;
    panel.querySelector('.mod-length').value = kept.length;
    if (kept.focus) panel.querySelector(`[data-testid="${kept.focus}"]`)?.focus();
  }
}

function renderTyping() {
  const room = currentRoom();
  const names = room ? [...room.typing.values()].map((t) => t.name) : [];
  const box = ui.typing;
  box.replaceChildren();
  box.classList.toggle('active', names.length > 0);
  if (!names.length) return;
  const dots = el('span', 'dots');
  dots.append(el('span'), el('span'), el('span'));
  dots.setAttribute('aria-hidden', 'true');
  box.append(dots);
  const bdi = (n) => el('bdi', 'who', n);
  if (names.length === 1) box.append(bdi(names[0]), ' is typing…');
  else if (names.length === 2) box.append(bdi(names[0]), ' and ', bdi(names[1]), ' are typing…');
  else box.append(`${names.length} people are typing…`);
}

function updateHistoryControls(errorText = '') {
  const room = currentRoom();
  if (!room) {
    ui.loadOlder.hidden = true;
    ui.historyStatus.textContent = '';
    return;
  }
  // The controls sit above the messages: when they change height (a page starts or
  // finishes loading), a reader who scrolled up must not see the messages move.
  const anchor = viewAnchor(room);
  ui.loadOlder.hidden = !room.hasMore || room.loadingOlder;
  if (errorText) ui.historyStatus.textContent = errorText;
  else if (room.loadingOlder) ui.historyStatus.textContent = 'Loading older messages…';
  else if (!room.hasMore && room.pageFrom !== null) ui.historyStatus.textContent = room.direct ? `This is the beginning of your conversation with ${room.peer}.` : `This is the beginning of #${room.name}.`;
  else if (!room.hasMore) ui.historyStatus.textContent = room.direct ? `Say hello to ${room.peer}.` : `No messages in #${room.name} yet. Say hello!`;
  else ui.historyStatus.textContent = '';
  restoreView(anchor);
}

function selectRoom(name, { focus = false } = {}) {
  const room = state.rooms.get(name);
  if (!room) return;
  const prev = currentRoom();
  if (prev && prev !== room) {
    const sep = prev.items.find((it) => it.kind === 'unread');
    if (sep) removeItem(prev, sep);
    prev.stickBottom = stuck;
    prev.scrollTop = ui.scroller.scrollTop;
    stopTyping();
  }
  state.current = name;
  if (!room.direct) store.set('room', name);
  ui.host.replaceChildren(room.list);
  ui.roomTitle.textContent = room.label;
  ui.roomKind.textContent = room.direct ? '@' : '#';
  ui.composer.placeholder = room.direct ? `Message ${room.peer}` : `Message #${room.name}`;
  ui.composerLabel.textContent = room.direct ? `Message ${room.peer}` : `Message #${room.name}`;
  ui.composer.disabled = false;
  updateHistoryControls();
  if (room.stickBottom) scrollToBottom();
  else {
    stuck = false;
    ui.scroller.scrollTop = room.scrollTop;
  }
  ui.jump.hidden = room.newBelow === 0 || room.stickBottom;
  markRead(room);
  renderReplyBar();
  renderMembers();
  renderRoomState();
  renderTopic();
  renderTyping();
  renderRoomList();
  closeDrawers();
  fillViewport(room);
  if (focus) ui.composer.focus();
  ui.chat.classList.remove('no-room');
}

function showNoRoom() {
  ui.host.replaceChildren();
  ui.roomTitle.textContent = 'No room';
  ui.roomKind.textContent = '';
  ui.composer.disabled = true;
  ui.composer.placeholder = 'Join a room to write';
  ui.chat.classList.add('no-room');
  ui.typing.replaceChildren();
  renderMembers();
  renderRoomState();
  renderTopic();
  updateHistoryControls();
  ui.historyStatus.textContent = 'You are not in any room. Join or create one from the room list.';
  renderRoomList();
}

function markRead(room) {
  if (room.unread > 0 && room === currentRoom()) changeTimeline(room, () => placeUnreadSeparator(room));
  room.unread = 0;
  room.newBelow = isAtBottom() ? 0 : room.newBelow;
  // The server hears of it (and our other sessions with it) only while the reader can see
  // the room: the page is visible and has the focus.
  if (room !== currentRoom() || document.hidden || !document.hasFocus()) return;
  if (room.cursor !== null && room.cursor > (state.read[room.name] ?? 0)) {
    state.read[room.name] = room.cursor;
    store.set('read', state.read);
    send({ type: 'read', room: room.name, seq: room.cursor });
  }
}

/** When the page is not full yet, load older messages until it is (or there are none). */
function fillViewport(room) {
  if (room !== currentRoom()) return;
  requestAnimationFrame(() => {
    if (ui.scroller.scrollHeight <= ui.scroller.clientHeight + 8) loadOlder(room);
  });
}

function loadOlder(room) {
  if (!room || room.loadingOlder || !room.hasMore || room.pageFrom === null || conn.status !== 'connected') return;
  const limit = Math.min(HISTORY_PAGE, state.limits.history_page_max || HISTORY_PAGE);
  const id = request({ type: 'history', room: room.name, before: room.pageFrom, limit }, { kind: 'history', room: room.name });
  if (id === null) return;
  room.loadingOlder = true;
  updateHistoryControls();
}

function announce(text) {
  const p = el('p', null, text.length > 300 ? `${text.slice(0, 300)}…` : text);
  ui.announcer.append(p);
  while (ui.announcer.childElementCount > 5) ui.announcer.firstElementChild.remove();
}

function showComposerError(text) {
  ui.composerError.textContent = text;
  clearTimeout(state.composerErrorTimer);
  state.composerErrorTimer = setTimeout(() => {
    ui.composerError.textContent = '';
  }, 8000);
}

// ---------------------------------------------------------------------------------------
// Rooms and DMs: user actions

function saveRooms() {
  const rooms = [...state.rooms.values()].filter((r) => !r.direct && r.joined).map((r) => r.name);
  store.set('rooms', rooms);
}

function rememberDm(name) {
  const id = store.get('identity', null);
  if (!id || fold(id.name) !== state.meKey) return;
  const dms = id.dms ?? [];
  if (!dms.includes(name)) store.set('identity', { ...id, dms: [...dms, name] });
}

function forgetDm(name) {
  const id = store.get('identity', null);
  if (!id) return;
  store.set('identity', { ...id, dms: (id.dms ?? []).filter((d) => d !== name) });
}

function joinRoom(raw) {
  const checked = checkName(raw.startsWith('#') ? raw.slice(1) : raw, 'room');
  if (checked.error) {
    ui.joinError.textContent = checked.error;
    ui.joinRoom.setAttribute('aria-invalid', 'true');
    return false;
  }
  ui.joinError.textContent = '';
  ui.joinRoom.removeAttribute('aria-invalid');
  const existing = state.rooms.get(checked.value);
  if (existing?.joined) {
    selectRoom(existing.name, { focus: true });
    return true;
  }
  if (request({ type: 'join', room: checked.value }, { kind: 'join', room: checked.value }) === null) {
    ui.joinError.textContent = 'Not connected. Try again when the chat is back.';
    return false;
  }
  return true;
}

function dmRoomName(peer) {
  return directRoom(state.meKey, fold(peer));
}

function openDm(peer) {
  if (!state.meKey || isMine(peer)) return;
  const name = dmRoomName(peer);
  const room = getRoom(name);
  room.peer = peer;
  rememberDm(name);
  renderRoomList();
  selectRoom(name, { focus: true });
  // Load the conversation so far (the reply's canonical name is the same).
  request({ type: 'join', room: name }, { kind: 'dm', room: name });
}

function leaveCurrent() {
  const room = currentRoom();
  if (!room) return;
  if (room.direct) {
    closeRoom(room);
    return;
  }
  if (request({ type: 'leave', room: room.name }, { kind: 'leave', room: room.name }) === null) closeRoom(room);
}

// The "more rooms" list goes stale as others create rooms: refresh it now and then.
setInterval(() => {
  if (conn.status === 'connected' && !document.hidden) request({ type: 'rooms' }, { kind: 'rooms' });
}, 30000);

let roomsTimer = null;
function requestRoomsSoon() {
  clearTimeout(roomsTimer);
  roomsTimer = setTimeout(() => request({ type: 'rooms' }, { kind: 'rooms' }), 300);
}

// ---------------------------------------------------------------------------------------
// Screens

function showLogin(error = '') {
  ui.chat.hidden = true;
  ui.login.hidden = false;
  const identity = store.get('identity', null);
  if (!ui.loginName.value && identity) ui.loginName.value = identity.name;
  ui.loginRoom.value = ui.loginRoom.value || store.get('room', 'general');
  ui.loginSubmit.disabled = false;
  ui.loginSubmit.textContent = 'Join';
  showLoginError(error);
  if (error) ui.loginName.setAttribute('aria-invalid', 'true');
  ui.loginName.focus();
  document.title = 'Chat';
}

function setInvalid(input, invalid) {
  if (invalid) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

function showLoginError(text) {
  ui.loginError.textContent = text;
}

function showChat() {
  ui.login.hidden = true;
  ui.chat.hidden = false;
  ui.composer.focus();
}

function closeDrawers() {
  ui.chat.classList.remove('show-rooms', 'show-members');
  ui.toggleRooms.setAttribute('aria-expanded', 'false');
  ui.toggleMembers.setAttribute('aria-expanded', 'false');
  ui.scrim.hidden = true;
}

function toggleDrawer(which) {
  const cls = which === 'rooms' ? 'show-rooms' : 'show-members';
  const open = !ui.chat.classList.contains(cls);
  closeDrawers();
  if (open) {
    ui.chat.classList.add(cls);
    (which === 'rooms' ? ui.toggleRooms : ui.toggleMembers).setAttribute('aria-expanded', 'true');
    ui.scrim.hidden = false;
    const panel = which === 'rooms' ? ui.sidebar : ui.membersPanel;
    panel.querySelector('button, input')?.focus();
  }
}

// ---------------------------------------------------------------------------------------
// Events

ui.loginForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const name = checkName(ui.loginName.value, 'name');
  const room = checkName(ui.loginRoom.value.replace(/^#/, ''), 'room');
  setInvalid(ui.loginName, Boolean(name.error));
  setInvalid(ui.loginRoom, Boolean(room.error));
  if (name.error || room.error) {
    showLoginError(name.error ?? room.error);
    (name.error ? ui.loginName : ui.loginRoom).focus();
    return;
  }
  showLoginError('');
  ui.loginSubmit.disabled = true;
  ui.loginSubmit.textContent = 'Joining…';
  conn.login = { name: name.value, room: room.value };
  conn.attempt = 0;
  disconnect();
  connect();
});

for (const input of [ui.loginName, ui.loginRoom]) {
  input.addEventListener('input', () => {
    input.removeAttribute('aria-invalid');
    if (ui.loginError.textContent && !conn.login) showLoginError('');
  });
}

ui.composer.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    ui.composerForm.requestSubmit();
  } else if (e.key === 'Escape' && currentRoom()?.replyTo) {
    e.preventDefault();
    e.stopPropagation();
    cancelReply();
  }
});
ui.replyCancel.addEventListener('click', () => {
  cancelReply();
  ui.composer.focus();
});

ui.composer.addEventListener('input', () => {
  ui.composerError.textContent = '';
  typingInput();
  autosize();
});

ui.composer.addEventListener('blur', stopTyping);

function autosize() {
  if (CSS.supports('field-sizing', 'content')) return;
  ui.composer.style.height = 'auto';
  ui.composer.style.height = `${Math.min(ui.composer.scrollHeight, 200)}px`;
}

ui.composerForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const room = currentRoom();
  const body = ui.composer.value;
  if (!room || !body.trim()) return;
  const bytes = utf8Length(body);
  if (bytes > state.limits.max_body_bytes) {
    showComposerError(`Too long: ${bytes} bytes, the limit is ${state.limits.max_body_bytes}.`);
    return;
  }
  ui.composer.value = '';
  autosize();
  // The server ends our typing indicator when the message is posted; just forget it.
  state.typingSent = { room: null, at: 0 };
  const reply = room.replyTo && room.replyTo.ep === state.ep ? room.replyTo.seq : null;
  room.replyTo = null;
  renderReplyBar();
  sendMessage(room, body, reply);
  ui.composer.focus();
});

ui.joinForm.addEventListener('submit', (e) => {
  e.preventDefault();
  if (joinRoom(ui.joinRoom.value)) ui.joinRoom.value = '';
});
ui.joinRoom.addEventListener('input', () => {
  ui.joinError.textContent = '';
  ui.joinRoom.removeAttribute('aria-invalid');
});
ui.joinRoom.addEventListener('focus', () => requestRoomsSoon());

ui.scroller.addEventListener(
  'scroll',
  () => {
    const room = currentRoom();
    if (!room) return;
    // First whether the reader left the bottom: loading older messages keeps the view of
    // a reader who did.
    stuck = isAtBottom();
    if (ui.scroller.scrollTop < 400) loadOlder(room);
    if (stuck) {
      room.newBelow = 0;
      ui.jump.hidden = true;
      if (!document.hidden) markRead(room);
    }
  },
  { passive: true },
);

if (typeof ResizeObserver === 'function') {
  const follow = new ResizeObserver(() => {
    if (stuck) ui.scroller.scrollTop = ui.scroller.scrollHeight;
  });
  follow.observe(ui.scroller);
  follow.observe(ui.host);
  follow.observe(ui.scroller.firstElementChild);
}

ui.loadOlder.addEventListener('click', () => loadOlder(currentRoom()));
ui.jump.addEventListener('click', () => {
  scrollToBottom();
  ui.composer.focus();
});

ui.logout.addEventListener('click', () => {
  for (const room of state.rooms.values()) if (room.joined && !room.direct) send({ type: 'leave', room: room.name });
  store.set('signedOut', true);
  conn.welcomedOnce = false;
  setStatus('idle', 'Signed out');
  disconnect();
  for (const p of state.pending.values()) clearTimeout(p.retryTimer);
  state.pending.clear();
  state.rooms.clear();
  state.current = null;
  state.epoch = null;
  ui.host.replaceChildren();
  showLogin();
});

ui.modAlertClose.addEventListener('click', () => {
  ui.modAlert.hidden = true;
  ui.composer.focus();
});
ui.topicEdit.addEventListener('click', () => {
  const room = currentRoom();
  if (!canModerate(room)) return;
  room.editingTopic = true;
  ui.topicInput.value = room.topic;
  ui.topicError.textContent = '';
  renderTopic();
  ui.topicInput.focus();
});
ui.topicForm.addEventListener('submit', (e) => {
  e.preventDefault();
  moderate('topic', { topic: ui.topicInput.value.trim() });
});
function cancelTopic() {
  const room = currentRoom();
  if (room) room.editingTopic = false;
  renderTopic();
  ui.topicEdit.focus();
}
ui.topicCancel.addEventListener('click', cancelTopic);
ui.slowForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const raw = ui.slowInput.value.trim();
  const seconds = Number(raw);
  if (raw === '' || !Number.isInteger(seconds) || seconds < 0 || seconds > 86400) {
    ui.slowError.textContent = 'Slow mode is a whole number of seconds from 0 (off) to 86400.';
    return;
  }
  ui.slowError.textContent = '';
  moderate('slow_mode', { seconds });
});
ui.unbanForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const user = ui.unbanInput.value.trim();
  if (!user) {
    ui.unbanError.textContent = 'Type the name of the user to let back in.';
    return;
  }
  ui.unbanError.textContent = '';
  moderate('unban', { user });
});
ui.topicForm.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') {
    e.preventDefault();
    cancelTopic();
  }
});
ui.toggleRooms.addEventListener('click', () => toggleDrawer('rooms'));
ui.toggleMembers.addEventListener('click', () => toggleDrawer('members'));
ui.scrim.addEventListener('click', closeDrawers);
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') closeDrawers();
});

function seen() {
  const room = currentRoom();
  if (!document.hidden && room) {
    markRead(room);
    renderRoomList();
  }
}
document.addEventListener('visibilitychange', seen);
window.addEventListener('focus', seen);

// Header "leave" control lives in the room title bar; added here to keep the HTML simple.
const leaveBtn = el('button', 'link-btn leave-btn', 'Leave');
leaveBtn.type = 'button';
leaveBtn.dataset.testid = 'leave-room';
leaveBtn.title = 'Leave this room';
leaveBtn.addEventListener('click', leaveCurrent);
ui.roomCount.after(leaveBtn);
const leavePanel = el('button', 'link-btn leave-panel', 'Leave this room');
leavePanel.type = 'button';
leavePanel.dataset.testid = 'leave-room-panel';
leavePanel.addEventListener('click', () => {
  closeDrawers();
  leaveCurrent();
});
ui.membersPanel.append(leavePanel);

// ---------------------------------------------------------------------------------------
// Start

(function start() {
  const identity = store.get('identity', null);
  if (HOST_IDENTITY) {
    ui.logout.hidden = true;
    showChat();
    connect();
  } else if (identity?.name && !store.get('signedOut', false)) {
    ui.meName.textContent = identity.name;
    showChat();
    connect();
  } else {
    showLogin();
  }
})();
