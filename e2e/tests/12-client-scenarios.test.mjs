// The page's resume and resend rules are chat-core's client state machine's: the scenarios
// of chat-core/tests/data/client_scenarios.json (run against chat_core::client::Client by
// chat-core/tests/client_scenarios.rs) run here against the real page, with the test
// standing in for the server on the page's WebSocket (Playwright's routeWebSocket). The
// page cannot share the Rust code; this keeps the two the same. Step meanings: see the
// Rust runner.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import { openUser, poll, sharedServerUrl, useBrowser } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();
const DATA = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../chat-core/tests/data');
const scenarios = JSON.parse(readFileSync(path.join(DATA, 'client_scenarios.json'), 'utf8'));
const TS = '2026-01-02T03:04:05Z';

const message = (room, seq) => ({ room, seq, ts: TS, user: 'bob', body: `m${seq}` });

async function run(scenario) {
  const u = await openUser(browserOf(), URL);
  const { page } = u;
  const limits = await page.evaluate(() => JSON.parse(document.querySelector('meta[name="chat-limits"]').content));
  // The fake server: one socket at a time; between a `disconnect` and the next `connect`
  // step it refuses the page's attempts, so the page stays offline as long as the
  // scenario says.
  const fake = { socket: null, accepting: false, hellos: [], roomsAsked: 0, sends: [], lastId: new Map(), sent: [] };
  await page.routeWebSocket(/\/ws$/, (ws) => {
    if (!fake.accepting) {
      ws.close({ code: 1013, reason: 'try again later' });
      return;
    }
    fake.socket = ws;
    ws.onMessage((text) => {
      if (fake.socket !== ws) return;
      const f = JSON.parse(text);
      const reply = (frame) => ws.send(JSON.stringify({ id: f.id, ...frame }));
      switch (f.type) {
        case 'hello':
          fake.hellos.push(f);
          break;
        case 'send': {
          let n = fake.sends.findIndex((s) => s.body === f.body);
          assert.notEqual(n, -1, `a send nobody typed: ${text}`);
          if (fake.sends[n].clientId === null) fake.sends[n].clientId = f.client_id;
          assert.equal(f.client_id, fake.sends[n].clientId, `send ${n + 1} keeps its client id`);
          fake.lastId.set(f.client_id, f.id);
          fake.sent.push(n + 1);
          break;
        }
        case 'rooms':
          fake.roomsAsked++;
          reply({ type: 'rooms', rooms: [] });
          break;
        case 'history':
          reply({ type: 'history', room: f.room, messages: [], has_more: false });
          break;
        case 'members':
          reply({ type: 'members', room: f.room, members: ['alice'] });
          break;
        default:
          break; // typing, and the join the page makes to resync after a new epoch
      }
    });
  });
  const push = (frame) => fake.socket.send(JSON.stringify(frame));
  const connected = () => page.getByTestId('connection').getAttribute('data-state');
  let first = true;
  for (const [i, step] of scenario.steps.entries()) {
    const at = `${scenario.name}, step ${i + 1}: ${JSON.stringify(step)}`;
    const [kind, arg] = Object.entries(step)[0];
    switch (kind) {
      case 'connect': {
        const before = fake.hellos.length;
        fake.accepting = true;
        if (first) {
          first = false;
          await u.id('login-name').fill('alice');
          await u.id('login-submit').click();
        } else {
          // Back online: the page reconnects now instead of waiting out its backoff.
          await page.evaluate(() => window.dispatchEvent(new Event('online')));
        }
        await poll(() => fake.hellos.length, (n) => n > before, { message: `${at}: a hello` });
        break;
      }
      case 'disconnect':
        fake.accepting = false;
        fake.socket.close({ code: 1011, reason: 'gone' });
        fake.socket = null;
        await poll(connected, (s) => s !== 'connected', { message: `${at}: offline` });
        break;
      case 'welcome': {
        const before = fake.roomsAsked;
        push({ type: 'welcome', version: 1, session: 1, user: 'alice', token: 't', epoch: arg, limits });
        // The page asks for the room list after resending what was pending: all is out.
        await poll(() => fake.roomsAsked, (n) => n > before, { message: `${at}: the welcome handled` });
        break;
      }
      case 'joined':
        push({
          type: 'joined',
          room: arg.room,
          members: ['alice'],
          messages: arg.messages.map((s) => message(arg.room, s)),
          gap: false,
          last_seq: arg.last_seq,
        });
        break;
      case 'message': {
        const m = { type: 'message', ...message(arg.room, arg.seq) };
        if (arg.own) {
          const s = fake.sends[arg.own - 1];
          Object.assign(m, { user: 'alice', body: s.body, client_id: s.clientId });
        }
        push(m);
        break;
      }
      case 'left':
        push({ type: 'left', room: arg });
        break;
      case 'send': {
        fake.sends.push({ body: arg, clientId: null });
        const online = (await connected()) === 'connected';
        const before = fake.sent.length;
        await u.say(arg);
        if (online) await poll(() => fake.sent.length, (n) => n > before, { message: `${at}: the send` });
        break;
      }
      case 'ack': {
        const s = fake.sends[arg - 1];
        push({ type: 'ack', id: fake.lastId.get(s.clientId), room: 'general', seq: step.seq, ts: TS, client_id: s.clientId, duplicate: false });
        break;
      }
      case 'expect_hello': {
        const hello = fake.hellos.at(-1);
        const actual = (hello.rooms ?? []).map((r) => [r.room, r.since ?? null]).sort();
        assert.deepEqual(actual, [...arg].sort(), at);
        break;
      }
      case 'expect_sent':
        assert.deepEqual(fake.sent, arg, at);
        fake.sent = [];
        break;
      default:
        throw new Error(`${at}: unknown step`);
    }
  }
  await u.check();
  await u.close();
}

describe('client scenarios shared with chat-core', () => {
  for (const scenario of scenarios) {
    test(scenario.name, () => run(scenario));
  }
});
