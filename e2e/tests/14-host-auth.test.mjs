// The chat embedded in a host app (examples/host_auth.rs) under /chat: the app's login
// sets a signed session cookie, the chat knows the user from it (no name asked), roles
// become room rules (announcements is read-only but for admins, staff is private), and
// the chat WebSocket refuses a request without the cookie before any upgrade.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { signIn as signInAt, useHostAuth } from '../lib/host_auth.mjs';
import { expectTexts, openUser, poll, tryUpgrade, useBrowser } from '../lib/harness.mjs';

const browserOf = useBrowser();
const hostUrl = useHostAuth();

/** Signs in to the host app and opens its chat at /chat (no trailing slash). */
const signIn = (user) => signInAt(browserOf(), hostUrl(), user);

describe('host app identity', () => {
  test('no cookie, no chat: the WebSocket upgrade is refused with 401', async () => {
    const result = await tryUpgrade(`${hostUrl()}/chat/`, hostUrl());
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
