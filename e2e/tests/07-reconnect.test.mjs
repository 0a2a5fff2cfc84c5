// The server restarts while a page is open: the page says it is reconnecting, comes back
// by itself, and every message (sent by others during the restart, or typed by the user
// while offline) appears exactly once.
//
// Run twice: with history in memory only (the restarted server has a new epoch: the page
// must drop its old cursors) and with a database file (same epoch: the page resumes from
// its last seq). A server without a durable store treats both the same way.

import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { expectTexts, openBot, openUser, poll, startServer, tempDir, texts, useBrowser } from '../lib/harness.mjs';

const browserOf = useBrowser();

const state = (u) => u.id('connection').getAttribute('data-state');

async function restartScenario(db) {
  let server = await startServer({ db });
  const { port } = server;
  const room = 'lobby';
  const alice = await openUser(browserOf(), server.url);
  await alice.login('alice', room);
  let bob = await openBot(server.url, 'bob', { rooms: [room] });
  await expectTexts(alice.members(), ['alice', 'bob']);
  await bob.send(room, 'before 1');
  await bob.send(room, 'before 2');
  await alice.say('before 3');
  await expectTexts(alice.bodies(), ['before 1', 'before 2', 'before 3']);
  const epochBefore = bob.welcome.epoch;

  // SIGTERM: the server says goodbye and goes away; the page shows it.
  await server.stop();
  await bob.closed;
  await poll(() => state(alice), (s) => s === 'reconnecting', { message: 'page shows reconnecting' });
  await poll(() => alice.id('connection').textContent(), (t) => /Reconnecting|restarting/i.test(t), { message: 'says so' });

  // Alice writes while the server is down: shown as sending, sent after reconnecting.
  await alice.say('written while offline');
  await expectTexts(alice.page.locator('[data-testid="message"].pending [data-testid="body"]'), ['written while offline']);

  // The server comes back on the same port; bob is back first and writes three messages
  // (more than the page had seen in the old history, so a stale cursor would skip some).
  server = await startServer({ port, db });
  bob = await openBot(server.url, 'bob', { rooms: [room] });
  const epochAfter = bob.welcome.epoch;
  for (const m of ['during restart 1', 'during restart 2', 'during restart 3']) await bob.send(room, m);

  await alice.connected();
  await bob.send(room, 'after reconnect');

  const expected = ['before 1', 'before 2', 'before 3', 'during restart 1', 'during restart 2', 'during restart 3', 'written while offline', 'after reconnect'];
  // Each exactly once (the order of alice's resend among bob's messages depends on when
  // her page reconnected; everything from before the restart comes first).
  await poll(
    () => texts(alice.bodies()),
    (v) => v.length === expected.length && [...v].sort().join('\n') === [...expected].sort().join('\n'),
    { message: 'every message exactly once' },
  );
  const shown = await texts(alice.bodies());
  assert.deepEqual(shown.slice(0, 3), ['before 1', 'before 2', 'before 3']);
  assert.ok(shown.indexOf('during restart 1') < shown.indexOf('during restart 2'));
  assert.ok(shown.indexOf('during restart 2') < shown.indexOf('during restart 3'));
  assert.equal(shown.at(-1), 'after reconnect');
  await expectTexts(alice.page.locator('[data-testid="message"].pending'), []);

  // A new history epoch is shown as a marker; a resumed one is not.
  const marker = alice.page.locator('[data-testid="marker"][data-marker="restart"]');
  await poll(() => marker.count(), (n) => n === (epochAfter === epochBefore ? 0 : 1), { message: 'restart marker iff new epoch' });

  // Presence recovered, and the page still works both ways.
  await expectTexts(alice.members(), ['alice', 'bob']);
  await alice.say('all good');
  await bob.next((f) => f.type === 'message' && f.body === 'all good');

  // The other view: a page opened now sees the server's history exactly once too.
  const carol = await openUser(browserOf(), server.url);
  await carol.login('carol', room);
  const history = epochAfter === epochBefore ? [...shown, 'all good'] : [...shown.slice(3), 'all good'];
  await expectTexts(carol.bodies(), history);

  await alice.check();
  await carol.check();
  await alice.close();
  await carol.close();
  await bob.close();
  await server.close();
  return { epochChanged: epochAfter !== epochBefore };
}

describe('server restart', () => {
  test('in-memory history: new epoch, the page drops its cursors, nothing lost or doubled', async () => {
    const { epochChanged } = await restartScenario(':memory:');
    assert.equal(epochChanged, true);
  });

  test('two tabs of one user both come back after a restart, still one user', async () => {
    const server0 = await startServer();
    const { port } = server0;
    let server = server0;
    const alice = await openUser(browserOf(), server.url);
    await alice.login('alice', 'lobby');
    const tab2 = await alice.context.newPage();
    alice.watch(tab2);
    await tab2.goto(server.url);
    await tab2.locator('[data-testid="connection"][data-state="connected"]').waitFor();
    await server.stop();
    await poll(() => state(alice), (s) => s === 'reconnecting', { message: 'tab 1 reconnecting' });
    server = await startServer({ port });
    await alice.connected();
    await tab2.locator('[data-testid="connection"][data-state="connected"]').waitFor({ timeout: 30000 });
    const bob = await openBot(server.url, 'bob', { rooms: ['lobby'] });
    const joined = await bob.next((f) => f.type === 'joined');
    assert.deepEqual(joined.members, ['alice', 'bob']);
    await alice.say('from tab one');
    await tab2.locator('[data-testid="body"]').getByText('from tab one', { exact: true }).waitFor();
    await alice.check();
    await alice.close();
    await bob.close();
    await server.close();
  });

  test('durable history (where the server has it): resume from the last seq', async () => {
    const tmp = tempDir();
    try {
      await restartScenario(path.join(tmp.dir, 'chat.db'));
    } finally {
      tmp.remove();
    }
  });
});
