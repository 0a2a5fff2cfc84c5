// Rooms: creating one by joining it, switching, unread counts, the list of other rooms,
// leaving, and room names the server refuses.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { expectCount, expectIncludes, expectTexts, useBrowser, openUser, poll, sharedServerUrl, texts, unique } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

describe('rooms', () => {
  test('create, switch, unread counts, join from the room list, leave', async () => {
    const home = unique('home');
    const alice = await openUser(browserOf(), URL);
    const aliceName = unique('Ava');
    await alice.login(aliceName, home);
    const bob = await openUser(browserOf(), URL);
    const bobName = unique('Bo');
    await bob.login(bobName, home);

    // Alice creates a room by joining it (typed with capitals: names are lowercased).
    const side = `Side${unique('')}`;
    const sideRoom = side.toLowerCase();
    await alice.id('join-room').fill(side);
    await alice.id('join-submit').click();
    await expectTexts(alice.id('room-title'), [sideRoom]);
    await expectTexts(alice.members(), [aliceName]);
    await expectIncludes(alice.page.locator('[data-testid="room-list"] [data-testid="room"] .room-name'), sideRoom);
    await expectTexts(alice.id('history-status'), [`No messages in #${sideRoom} yet. Say hello!`]);

    // Bob finds it under "More rooms" and joins with a click.
    await bob.id('join-room').focus(); // refreshes the list
    const offer = bob.page.locator(`[data-testid="more-room"][data-room="${sideRoom}"]`);
    await offer.waitFor();
    await offer.click();
    await expectTexts(bob.id('room-title'), [sideRoom]);
    await expectTexts(alice.members(), [aliceName, bobName].sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase())));

    // Alice goes back home; Bob writes in the side room: unread counts appear.
    await alice.selectRoom(home);
    await bob.say('psst, over here');
    const badge = alice.roomButton(sideRoom).getByTestId('unread');
    await expectTexts(badge, ['1']);
    await bob.say('two unread now');
    await expectTexts(badge, ['2']);
    await expectTexts(alice.id('total-unread'), ['2']);
    await poll(() => alice.page.title(), (t) => t.startsWith('(2) '), { message: 'unread count in the title' });
    // Messages in the room one is looking at are not unread.
    await bob.selectRoom(home);
    await bob.say('hello at home');
    await alice.waitForBody('hello at home');
    await expectCount(alice.roomButton(home).getByTestId('unread'), 0);

    // Switching to the room shows its messages and clears the count.
    await alice.selectRoom(sideRoom);
    await expectTexts(alice.bodies(), ['psst, over here', 'two unread now']);
    await expectCount(badge, 0);
    await poll(() => alice.page.title(), (t) => !t.startsWith('('), { message: 'no unread in the title' });

    // Switching back and forth keeps each room's messages apart.
    await alice.selectRoom(home);
    await expectTexts(alice.bodies(), ['hello at home']);

    // Unread counts survive a reload.
    await bob.selectRoom(sideRoom);
    await bob.say('while you were away');
    await expectTexts(badge, ['1']);
    await alice.page.reload();
    await alice.connected();
    await expectTexts(alice.id('room-title'), [home]);
    await expectTexts(badge, ['1']);

    // Leaving a room removes it from the list and tells the others.
    await alice.selectRoom(sideRoom);
    await alice.id('leave-room').click();
    await expectTexts(alice.id('room-title'), [home]);
    await expectCount(alice.roomButton(sideRoom), 0);
    await expectIncludes(bob.page.locator('[data-testid="notice"][data-event="left"] bdi'), aliceName);

    await alice.check();
    await bob.check();
    await alice.close();
    await bob.close();
  });

  test('room names the server would refuse are explained inline', async () => {
    const u = await openUser(browserOf(), URL);
    await u.login(unique('Ro'), unique('names'));
    for (const [name, why] of [
      ['two words', /spaces/],
      ['@alice,bob', /“@”/],
      ['r'.repeat(65), /at most 64 characters/],
    ]) {
      await u.id('join-room').fill(name);
      await u.id('join-submit').click();
      await poll(() => u.id('join-error').textContent(), (t) => why.test(t), { message: `error for ${name}` });
      assert.equal(await u.id('join-room').getAttribute('aria-invalid'), 'true');
    }
    // A valid one clears the error.
    const ok = unique('fine');
    await u.id('join-room').fill(ok);
    await u.id('join-submit').click();
    await expectTexts(u.id('room-title'), [ok]);
    assert.deepEqual(await texts(u.id('join-error')), ['']);
    await u.check();
    await u.close();
  });
});
