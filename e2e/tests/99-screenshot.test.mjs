// A lively conversation, saved as docs/screenshot.png for the README. Runs last, on its
// own server so that only this conversation is on it.
//
// Every run writes e2e/test-results/screenshot.png; docs/screenshot.png is written when it
// is missing or with UPDATE_SCREENSHOT=1 (so a test run does not dirty the work tree).

import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { describe, test } from 'node:test';
import { expectTexts, openBot, openUser, poll, startServer, useBrowser } from '../lib/harness.mjs';

const browserOf = useBrowser();
const HERE = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.resolve(HERE, '../test-results/screenshot.png');
const DOCS = path.resolve(HERE, '../../docs/screenshot.png');

describe('screenshot', () => {
  test('a lively conversation → docs/screenshot.png', async () => {
    const server = await startServer();
    const room = 'general';
    const bots = {};
    for (const name of ['bob', 'carol']) bots[name] = await openBot(server.url, name, { rooms: [room, 'random'] });

    await bots.carol.send(room, 'Morning all! Did the deploy go out?');
    await bots.bob.send(room, 'Yes, v2.3 is live since 9:40.');
    await bots.bob.send(room, 'Rollback plan is in the runbook if anything looks off.');

    const alice = await openUser(browserOf(), server.url, { viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1 });
    await alice.login('alice', 'random');
    await alice.id('join-room').fill(room);
    await alice.id('join-submit').click();
    await expectTexts(alice.id('room-title'), [room]);
    await alice.say('Nice! The new room list is so much faster.');
    await alice.say('And history survives restarts now.');
    await bots.carol.send(room, 'Love it. Could someone review my PR this afternoon?\nhttps://example.com/chat/pull/42');
    await bots.carol.send('random', 'Lunch at the usual place?');
    await bots.bob.send('random', 'I am in');
    await bots.carol.send('random', 'Booked a table for 12:30');

    const dave = await openBot(server.url, 'dave', { rooms: [room] });
    await dave.send(room, 'Hi everyone, just joined from the mobile app.');
    await dave.send(undefined, 'Hey alice, got a minute after standup?', { to: 'alice' });
    await alice.say('Welcome dave! @carol I can take the review.');
    bots.bob.typing(room, true);

    await expectTexts(alice.id('typing'), ['bob is typing…']);
    await alice.waitForBody('Welcome dave! @carol I can take the review.');
    await poll(() => alice.page.locator('[data-testid="unread"]').count(), (n) => n === 2, { message: 'unread badges' });
    await alice.id('composer').fill('Sounds good, ');
    await alice.page.mouse.move(0, 0);
    mkdirSync(path.dirname(OUT), { recursive: true });
    await alice.page.screenshot({ path: OUT });
    if (process.env.UPDATE_SCREENSHOT === '1' || !existsSync(DOCS)) copyFileSync(OUT, DOCS);
    await alice.check();
    for (const b of [...Object.values(bots), dave]) await b.close();
    await alice.close();
    await server.close();
  });
});
