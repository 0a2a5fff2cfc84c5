// Dead-connection detection on the page, on a fake clock (Playwright's): a healthy
// connection in a quiet room is kept, even when the browser fires the page's timers only
// once a minute (a hidden tab); a server that stops answering (SIGSTOP: its socket stays
// open) is left within 45 s of its last frame.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { openUser, poll, startServer, unique, useBrowser } from '../lib/harness.mjs';

const browserOf = useBrowser();

const state = (u) => u.id('connection').getAttribute('data-state');
const pageNow = (u) => u.page.evaluate(() => Date.now());

/** Counts the page's sockets, and its `rooms` questions (its probe of a quiet server, and
 * its refresh of the room list) and their answers. */
function watchSockets(user) {
  const seen = { sockets: 0, closed: 0, asked: 0, answered: 0 };
  user.page.on('websocket', (ws) => {
    seen.sockets += 1;
    ws.on('close', () => {
      seen.closed += 1;
    });
    ws.on('framesent', ({ payload }) => {
      if (JSON.parse(payload).type === 'rooms') seen.asked += 1;
    });
    ws.on('framereceived', ({ payload }) => {
      if (JSON.parse(payload).type === 'rooms') seen.answered += 1;
    });
  });
  return seen;
}

describe('keepalive', () => {
  test('a quiet page whose timers fire once a minute keeps its connection', async () => {
    const server = await startServer();
    const alice = await openUser(browserOf(), server.url, { clock: true });
    const seen = watchSockets(alice);
    await alice.login(unique('quiet'), unique('hush'));
    // From here on the page's time moves only when the test moves it.
    await alice.page.clock.pauseAt((await pageNow(alice)) + 1000);
    for (let minute = 1; minute <= 10; minute++) {
      const asked = seen.asked;
      // A hidden tab: a minute passes, and each of the page's intervals fires once.
      await alice.page.clock.fastForward(60000);
      // Real time for the real answers before the page's time moves on.
      await poll(
        () => seen,
        (s) => s.asked > asked && s.answered === s.asked,
        { message: `minute ${minute}: the page asked, and was answered (${JSON.stringify(seen)})` },
      );
    }
    assert.equal(await state(alice), 'connected');
    assert.equal(seen.sockets, 1, 'one connection throughout');
    assert.equal(seen.closed, 0);
    await alice.check();
    await alice.close();
    await server.close();
  });

  test('a server that stops answering is left within 45 s of its last frame', async () => {
    const server = await startServer();
    const bob = await openUser(browserOf(), server.url, { clock: true });
    const seen = watchSockets(bob);
    await bob.login(unique('bob'), unique('gone'));
    await poll(() => seen, (s) => s.asked === s.answered, { message: 'the login settles' });
    const answered = seen.answered;
    process.kill(server.pid, 'SIGSTOP');
    try {
      // Every frame the server sent came before the stop: none arrives after this.
      const stopped = await pageNow(bob);
      await bob.page.clock.pauseAt(stopped + 1000);
      let after = 1000;
      while ((await state(bob)) === 'connected') {
        assert.ok(after < 46000, `still "connected" ${after} ms after the server's last frame`);
        await bob.page.clock.runFor(1000);
        after += 1000;
      }
      assert.equal(await state(bob), 'reconnecting');
      assert.ok(after >= 35000, `left after ${after} ms: before its question could time out`);
      assert.ok(seen.asked > answered, 'it asked');
      assert.equal(seen.answered, answered, 'and got no answer');
    } finally {
      process.kill(server.pid, 'SIGCONT');
    }
    await bob.close();
    await server.close();
  });
});
