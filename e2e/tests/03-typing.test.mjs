// Typing indicator: appears while someone types, goes away when they stop, send, or
// leave the input; and the server's typing events from other clients are shown too.

import { describe, test } from 'node:test';
import { expectTexts, useBrowser, openBot, openUser, poll, sharedServerUrl, unique } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

describe('typing indicator', () => {
  test('appears and disappears', async () => {
    const room = unique('typing');
    const aliceName = unique('Tess');
    const bobName = unique('Tom');
    const alice = await openUser(browserOf(), URL);
    await alice.login(aliceName, room);
    const bob = await openUser(browserOf(), URL);
    await bob.login(bobName, room);
    await expectTexts(alice.members(), [aliceName, bobName].sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase())));
    const typing = bob.id('typing');
    const empty = (t) => t.trim() === '';

    // Typing shows on the other page; clearing the input takes it away.
    await alice.id('composer').pressSequentially('hel');
    await expectTexts(typing, [`${aliceName} is typing…`]);
    await alice.id('composer').fill('');
    await poll(() => typing.textContent(), empty, { message: 'indicator gone after clearing' });

    // Sending the message takes it away (the message itself clears it).
    await alice.id('composer').pressSequentially('hello there');
    await expectTexts(typing, [`${aliceName} is typing…`]);
    await alice.id('composer').press('Enter');
    await bob.waitForBody('hello there');
    await poll(() => typing.textContent(), empty, { message: 'indicator gone after the message' });

    // Leaving the input (blur) stops it too.
    await alice.id('composer').pressSequentially('wait');
    await expectTexts(typing, [`${aliceName} is typing…`]);
    await alice.id('join-room').focus();
    await poll(() => typing.textContent(), empty, { message: 'indicator gone after blur' });

    // Nobody sees their own indicator.
    await poll(() => alice.id('typing').textContent(), empty, { message: 'no own indicator' });

    // Two people typing at once.
    const carol = await openBot(URL, unique('Cy'), { rooms: [room] });
    carol.typing(room, true);
    await alice.id('composer').pressSequentially('again');
    await poll(
      () => typing.textContent(),
      (t) => t === `${aliceName} and ${carol.user} are typing…` || t === `${carol.user} and ${aliceName} are typing…`,
      { message: 'two typing' },
    );
    carol.typing(room, false);
    await expectTexts(typing, [`${aliceName} is typing…`]);
    await alice.check();
    await bob.check();
    await carol.close();
    await alice.close();
    await bob.close();
  });

  test('an indicator nobody renews expires (the server ends it after typing_expiry_ms)', async () => {
    const room = unique('expiry');
    const viewer = await openUser(browserOf(), URL);
    await viewer.login(unique('Vi'), room);
    const bot = await openBot(URL, unique('Quiet'), { rooms: [room] });
    bot.typing(room, true);
    await expectTexts(viewer.id('typing'), [`${bot.user} is typing…`]);
    const shown = Date.now();
    const expiry = bot.welcome.limits.typing_expiry_ms;
    await poll(() => viewer.id('typing').textContent(), (t) => t.trim() === '', {
      timeout: expiry + 15000,
      message: 'expired indicator gone',
    });
    // Not before the expiry (minus the time the frame took to be shown).
    const lasted = Date.now() - shown;
    if (lasted < expiry - 1000) throw new Error(`indicator went away after ${lasted} ms, expiry is ${expiry} ms`);
    await viewer.check();
    await viewer.close();
    await bot.close();
  });
});
