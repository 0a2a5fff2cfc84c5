// Direct messages: click a member to talk privately; only the two of them see it.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { expectCount, expectTexts, useBrowser, openUser, sharedServerUrl, unique } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

describe('direct messages', () => {
  test('a direct message reaches only its recipient', async () => {
    const room = unique('dmroom');
    const aliceName = unique('Dana');
    const bobName = unique('Dirk');
    const carolName = unique('Dora');
    const alice = await openUser(browserOf(), URL);
    await alice.login(aliceName, room);
    const bob = await openUser(browserOf(), URL);
    await bob.login(bobName, room);
    const carol = await openUser(browserOf(), URL);
    await carol.login(carolName, room);
    await expectCount(alice.members(), 3);

    // Alice clicks Bob in the member list: a conversation with him opens.
    await alice.page.locator(`[data-testid="member"][data-user="${bobName}"]`).click();
    await expectTexts(alice.id('room-title'), [bobName]);
    const dmRoom = `@${[aliceName.toLowerCase(), bobName.toLowerCase()].sort().join(',')}`;
    await expectTexts(alice.page.locator(`[data-testid="dm"][data-room="${dmRoom}"] .room-name`), [bobName]);
    assert.equal(await alice.page.evaluate(() => document.activeElement?.dataset.testid), 'composer');
    await alice.say('secret for Bob only');
    await alice.waitForBody('secret for Bob only');

    // Bob gets it: a DM entry with an unread count, then the message with its author.
    const entry = bob.page.locator(`[data-testid="dm"][data-room="${dmRoom}"]`);
    await expectTexts(entry.locator('.room-name'), [aliceName]);
    await expectTexts(entry.getByTestId('unread'), ['1']);
    await entry.click();
    await expectTexts(bob.bodies(), ['secret for Bob only']);
    await expectTexts(bob.messages().getByTestId('author'), [aliceName]);
    await expectCount(entry.getByTestId('unread'), 0);
    await bob.say('got it, thanks');
    await alice.waitForBody('got it, thanks');

    // Carol, in the same room, sees nothing of it: no entry, no text anywhere on her page.
    await carol.page.locator('[data-testid="connection"][data-state="connected"]').waitFor();
    await carol.say('anyone?'); // a message after the DM: when it shows, the DM would have too
    await alice.selectRoom(room);
    await alice.waitForBody('anyone?');
    await expectCount(carol.page.locator('[data-testid="dm"]'), 0);
    const carolText = await carol.page.locator('body').textContent();
    assert.ok(!carolText.includes('secret for Bob only'), 'carol does not see the DM');
    assert.ok(!carolText.includes('got it, thanks'), 'carol does not see the reply');

    // The conversation is back after a reload, from the server's history.
    await bob.page.reload();
    await bob.connected();
    await bob.page.locator(`[data-testid="dm"][data-room="${dmRoom}"]`).click();
    await expectTexts(bob.bodies(), ['secret for Bob only', 'got it, thanks']);

    for (const u of [alice, bob, carol]) {
      await u.check();
      await u.close();
    }
  });
});
