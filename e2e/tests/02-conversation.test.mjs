// The tutorial app's core: two people in a room see each other and each other's messages
// instantly, with author and time; join and leave notices; a latecomer sees the history.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  expectCount,
  expectIncludes,
  expectTexts,
  useBrowser,
  openBot,
  openUser,
  poll,
  sharedServerUrl,
  texts,
  unique,
} from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

const byName = (a, b) => a.toLowerCase().localeCompare(b.toLowerCase());

describe('conversation', () => {
  test('two users see each other, messages arrive with author and time, own ones marked', async () => {
    const room = unique('talk');
    const aliceName = unique('Alice');
    const bobName = unique('Bob');
    const alice = await openUser(browserOf(), URL);
    await alice.login(aliceName, room);
    const bob = await openUser(browserOf(), URL);
    await bob.login(bobName, room);

    const both = [aliceName, bobName].sort(byName);
    await expectTexts(alice.members(), both);
    await expectTexts(bob.members(), both);

    // Alice sees Bob arrive.
    const notice = alice.page.locator('[data-testid="notice"][data-event="joined"]');
    await expectIncludes(notice.locator('bdi'), bobName);

    const before = Date.now();
    await alice.say('Hello Bob, welcome to the room!');
    await bob.waitForBody('Hello Bob, welcome to the room!');
    const afterSend = Date.now();

    const msg = bob.message('Hello Bob, welcome to the room!');
    await expectTexts(msg.getByTestId('author'), [aliceName]);
    // The time is the server's, shown in local time (UTC here), full timestamp on hover.
    const time = msg.getByTestId('time');
    const iso = await time.getAttribute('datetime');
    const ts = Date.parse(iso);
    assert.ok(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(iso), `timestamp ${iso}`);
    assert.ok(ts >= before - 2000 && ts <= afterSend + 2000, `timestamp ${iso} is about now`);
    const shown = new Intl.DateTimeFormat('en-GB', { timeStyle: 'short', timeZone: 'UTC' }).format(new Date(ts));
    await expectTexts(time, [shown]);
    const title = await time.getAttribute('title');
    assert.ok(title.includes(String(new Date(ts).getUTCFullYear())) && title.includes(shown), `full time in title: ${title}`);

    // Own messages are distinguished on the sender's page only.
    await alice.waitForBody('Hello Bob, welcome to the room!');
    assert.equal(await alice.message('Hello Bob, welcome to the room!').evaluate((e) => e.classList.contains('mine')), true);
    assert.equal(await msg.evaluate((e) => e.classList.contains('mine')), false);
    await expectCount(alice.message('Hello Bob, welcome to the room!').locator('.you-tag'), 1);

    // Consecutive messages of one author are grouped; a different author starts a group.
    await alice.say('Second message, same author');
    await bob.waitForBody('Second message, same author');
    assert.equal(await bob.message('Second message, same author').evaluate((e) => e.classList.contains('cont')), true);
    await bob.say('Reply from Bob');
    await alice.waitForBody('Reply from Bob');
    assert.equal(await alice.message('Reply from Bob').evaluate((e) => e.classList.contains('cont')), false);

    // Enter sends, Shift+Enter adds a line.
    const box = alice.id('composer');
    await box.fill('');
    await box.pressSequentially('line one');
    await box.press('Shift+Enter');
    await box.pressSequentially('line two');
    assert.equal(await box.inputValue(), 'line one\nline two');
    await box.press('Enter');
    await bob.waitForBody('line one\nline two');
    assert.equal(await box.inputValue(), '');

    // Every message exactly once, in order, on both pages.
    const expected = ['Hello Bob, welcome to the room!', 'Second message, same author', 'Reply from Bob', 'line one\nline two'];
    await expectTexts(alice.bodies(), expected);
    await expectTexts(bob.bodies(), expected);

    // New messages from others are announced to screen readers.
    await expectIncludes(bob.page.locator('[data-testid="announcer"] p'), `${aliceName}: line one\nline two`);

    await alice.check();
    await bob.check();
    await alice.close();
    await bob.close();
  });

  test('join and leave notices: leaving a room, and closing the page (after the grace period)', async () => {
    const room = unique('presence');
    const alice = await openUser(browserOf(), URL);
    const aliceName = unique('Ann');
    await alice.login(aliceName, room);

    const bobName = unique('Ben');
    const bob = await openUser(browserOf(), URL);
    await bob.login(bobName, room);
    const joined = alice.page.locator('[data-testid="notice"][data-event="joined"] bdi');
    const left = alice.page.locator('[data-testid="notice"][data-event="left"] bdi');
    await expectTexts(joined, [bobName]);
    await expectTexts(alice.members(), [aliceName, bobName].sort(byName));

    // Bob leaves the room with the Leave button: announced at once.
    await bob.id('leave-room').click();
    await expectTexts(left, [bobName]);
    await expectTexts(alice.members(), [aliceName]);
    await bob.check();
    await bob.close();

    // Carol joins, then closes her page: she is listed until the grace period ends.
    const carolName = unique('Cat');
    const carol = await openUser(browserOf(), URL);
    await carol.login(carolName, room);
    await expectTexts(joined, [bobName, carolName]);
    await carol.check();
    await carol.close();
    await poll(() => texts(left), (v) => v.includes(carolName), { timeout: 20000, message: 'carol left' });
    await expectTexts(alice.members(), [aliceName]);
    await alice.check();
    await alice.close();
  });

  test('a user joining late sees the recent history, in order', async () => {
    const room = unique('late');
    const bot = await openBot(URL, unique('early'), { rooms: [room] });
    const lines = Array.from({ length: 8 }, (_, i) => `earlier message ${i + 1}`);
    for (const line of lines) await bot.send(room, line);

    const late = await openUser(browserOf(), URL);
    await late.login(unique('Late'), room);
    await expectTexts(late.bodies(), lines);
    await expectTexts(late.page.locator('[data-testid="message"]:not(.cont) [data-testid="author"]'), [bot.user]);
    await expectIncludes(late.id('history-status'), `This is the beginning of #${room}.`);

    // And live messages after that.
    await bot.send(room, 'and a new one');
    await expectTexts(late.bodies(), [...lines, 'and a new one']);
    await late.check();
    await late.close();
    await bot.close();
  });
});
