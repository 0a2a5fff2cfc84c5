// The chat embedded in a host app (examples/host_auth.rs) under /chat: the app's login
// sets a signed session cookie, the chat knows the user from it (no name asked), roles
// become room rules (announcements is read-only but for admins, staff is private), and
// the chat WebSocket refuses a request without the cookie before any upgrade.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { expectTexts, openUser, poll, tryUpgrade, useBrowser } from '../lib/harness.mjs';

const browserOf = useBrowser();
let app;
let appUrl;

before(async () => {
  const bin = process.env.CHAT_HOST_AUTH_BIN;
  if (!bin) throw new Error('CHAT_HOST_AUTH_BIN is not set: run the tests through e2e/run.sh');
  app = spawn(bin, ['--addr', '127.0.0.1:0'], {
    env: { ...process.env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  app.stderr.on('data', (d) => {
    output += d;
  });
  appUrl = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`host_auth did not start:\n${output}`)), 30000);
    app.stdout.on('data', (d) => {
      output += d;
      const m = /^listening on (http:\/\/\S+)$/m.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    app.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`host_auth exited with ${code}:\n${output}`));
    });
  });
});

after(async () => {
  if (app && app.exitCode === null && app.signalCode === null) {
    const exited = once(app, 'exit');
    app.kill('SIGINT');
    const timer = setTimeout(() => app.kill('SIGKILL'), 20000);
    await exited;
    clearTimeout(timer);
  }
});

/** Signs in to the host app and opens its chat at /chat (no trailing slash). */
async function signIn(user) {
  const u = await openUser(browserOf(), `${appUrl}/`);
  await u.page.getByTestId('app-user-name').fill(user);
  await u.page.getByTestId('app-password').fill(user);
  await u.page.getByTestId('app-login').click();
  // The app sends us to /chat, which the chat redirects to /chat/.
  await poll(() => u.page.url(), (url) => url === `${appUrl}/chat/`, { message: 'the chat page at /chat/' });
  await u.connected();
  return u;
}

describe('host app identity', () => {
  test('no cookie, no chat: the WebSocket upgrade is refused with 401', async () => {
    const result = await tryUpgrade(`${appUrl}/chat/`, appUrl);
    assert.deepEqual(result, { opened: false, status: 401 });
  });

  test('signed in, the chat knows the user; roles decide who posts where', async () => {
    const carol = await signIn('carol');
    await expectTexts(carol.id('me-name'), ['carol']);
    assert.equal(await carol.id('login').isVisible(), false, 'no name asked');
    assert.equal(await carol.id('logout').isVisible(), false, 'signing out is the app’s');

    // general is open: carol posts there.
    await carol.selectRoom('general');
    await carol.say('hello from carol');
    await carol.waitForBody('hello from carol');

    // announcements is read-only for her: the send is refused and shown as not sent.
    await carol.selectRoom('announcements');
    await carol.say('may I announce?');
    const status = carol.page.getByTestId('msg-status').filter({ hasText: 'Not sent: you may not post in this room.' });
    await status.waitFor();

    // alice (admin) posts there, and carol reads it.
    const alice = await signIn('alice');
    await expectTexts(alice.id('me-name'), ['alice']);
    await alice.selectRoom('announcements');
    await alice.say('release at five');
    await alice.waitForBody('release at five');
    await carol.waitForBody('release at five');

    // staff is private: alice (staff) joins it; carol may not, and does not see it.
    await alice.id('join-room').fill('staff');
    await alice.id('join-submit').click();
    await expectTexts(alice.id('room-title'), ['staff']);
    await carol.id('join-room').fill('staff');
    await carol.id('join-submit').click();
    await expectTexts(carol.id('join-error'), ['you may not join staff']);
    await carol.id('join-room').focus(); // refreshes the list of other rooms
    await poll(
      () => carol.page.locator('[data-testid="more-room"]').evaluateAll((els) => els.map((e) => e.dataset.room)),
      (rooms) => !rooms.includes('staff'),
      { message: 'staff not offered to carol' },
    );

    await carol.check();
    await alice.check();
  });
});
