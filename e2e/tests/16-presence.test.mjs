// Presence, protocol version 2: the page gets one coalesced `presence` frame per room per
// tick and applies it; a user who joins and leaves shows up in, then goes from, the other
// page's member list, its count and its notices. A version-1 client (the bot, like a page
// cached before an upgrade) in the same room is still told each change on its own.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { expectTexts, openBot, openUser, sharedServerUrl, texts, unique, useBrowser } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

const byName = (a, b) => a.toLowerCase().localeCompare(b.toLowerCase());

describe('presence (version 2)', () => {
  test("a user who joins and leaves is shown in the other page's member list, then gone", async () => {
    const room = unique('crowd');
    const aliceName = unique('Ada');
    const botName = unique('old');
    const alice = await openUser(browserOf(), URL);
    // The page speaks version 2.
    const hellos = [];
    alice.page.on('websocket', (ws) => ws.on('framesent', (f) => hellos.push(String(f.payload))));
    await alice.login(aliceName, room);
    const hello = JSON.parse(hellos.find((p) => p.includes('"hello"')));
    assert.equal(hello.version, 2);
    const bot = await openBot(URL, botName, { rooms: [room] });

    const bobName = unique('Bo');
    const bob = await openUser(browserOf(), URL);
    await bob.login(bobName, room);
    await expectTexts(alice.members(), [aliceName, bobName, botName].sort(byName));
    await expectTexts(alice.id('room-count'), ['3 people']);
    const joined = alice.page.locator('[data-testid="notice"][data-event="joined"] bdi');
    await expectTexts(joined, [botName, bobName]);

    await bob.id('leave-room').click();
    const left = alice.page.locator('[data-testid="notice"][data-event="left"] bdi');
    await expectTexts(left, [bobName]);
    await expectTexts(alice.members(), [aliceName, botName].sort(byName));
    await expectTexts(alice.id('room-count'), ['2 people']);

    // The version-1 bot was told each change at once, as before version 2.
    await bot.next((f) => f.type === 'user_joined' && f.user === bobName);
    await bot.next((f) => f.type === 'user_left' && f.user === bobName);
    assert.ok(!bot.frames.some((f) => f.type === 'presence'), 'no presence frame for version 1');
    await bob.check();
    await bob.close();
    await alice.check();
    await alice.close();
    bot.ws.close();
  });
});
