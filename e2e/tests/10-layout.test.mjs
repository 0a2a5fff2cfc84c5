// Phone width and keyboard/screen-reader basics: nothing overflows sideways, the side
// panels become drawers, every field has a label, focus lands where the user types.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { expectTexts, openBot, openUser, poll, sharedServerUrl, unique, useBrowser } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

const overflow = (u) => u.page.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);

describe('layout and accessibility', () => {
  test('works at phone width', async () => {
    const u = await openUser(browserOf(), URL, { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
    assert.ok((await overflow(u)) <= 0, 'login fits');
    const room = unique('phone');
    const name = unique('Pat');
    await u.login(name, room);
    assert.ok(await u.id('composer').isVisible());
    assert.ok(await u.id('send').isVisible());
    assert.equal(await u.id('sidebar').isVisible(), false, 'rooms are in a drawer');

    // Long words and long names wrap instead of widening the page.
    const bot = await openBot(URL, 'W'.repeat(32), { rooms: [room] });
    await bot.send(room, 'x'.repeat(600));
    await bot.send(room, 'https://example.com/' + 'very-long-path/'.repeat(20));
    await u.say('a reply with a long word: ' + 'supercalifragilistic'.repeat(8));
    await u.waitForBody('a reply with a long word: ' + 'supercalifragilistic'.repeat(8));
    assert.ok((await overflow(u)) <= 0, 'no sideways scrolling');
    const wide = await u.page.evaluate(() =>
      [...document.querySelectorAll('#timeline-host [data-testid="message"]')].filter((m) => m.scrollWidth > m.clientWidth + 1).length,
    );
    assert.equal(wide, 0, 'messages wrap');

    // The rooms drawer opens and closes; choosing a room closes it.
    await u.id('toggle-rooms').click();
    await poll(() => u.id('sidebar').isVisible(), (v) => v, { message: 'drawer open' });
    assert.equal(await u.id('toggle-rooms').getAttribute('aria-expanded'), 'true');
    await u.page.locator(`[data-testid="room"][data-room="${room}"]`).click();
    await poll(() => u.id('sidebar').isVisible(), (v) => !v, { message: 'drawer closed' });

    // The people drawer, and a DM from it.
    await u.id('toggle-members').click();
    await poll(() => u.id('members-panel').isVisible(), (v) => v, { message: 'people open' });
    await u.page.locator(`[data-testid="member"][data-user="${'W'.repeat(32)}"]`).click();
    await expectTexts(u.id('room-title'), ['W'.repeat(32)]);
    await poll(() => u.id('members-panel').isVisible(), (v) => !v, { message: 'people closed' });
    assert.ok((await overflow(u)) <= 0, 'still no sideways scrolling');
    await u.check();
    await u.close();
    await bot.close();
  });

  test('labels, focus order and a live region', async () => {
    const u = await openUser(browserOf(), URL);
    // Labelled fields, focus starts in the name field, Tab goes name → room → Join.
    await u.page.getByLabel('Username', { exact: true }).waitFor();
    await u.page.getByLabel('Room', { exact: true }).waitFor();
    assert.equal(await u.page.evaluate(() => document.activeElement.id), 'login-name');
    await u.page.keyboard.press('Tab');
    assert.equal(await u.page.evaluate(() => document.activeElement.id), 'login-room');
    await u.page.keyboard.press('Tab');
    assert.equal(await u.page.evaluate(() => document.activeElement.id), 'login-submit');

    // Keyboard only: type a name, Enter joins.
    await u.page.getByLabel('Username', { exact: true }).fill(unique('Kay'));
    const room = unique('keys');
    await u.page.getByLabel('Room', { exact: true }).fill(room);
    await u.page.keyboard.press('Enter');
    await u.connected();
    // Focus is in the message box, which is labelled with the room.
    assert.equal(await u.page.evaluate(() => document.activeElement.dataset.testid), 'composer');
    await u.page.getByRole('textbox', { name: `Message #${room}` }).waitFor();
    await u.page.getByRole('button', { name: 'Send' }).waitFor();
    await u.page.getByRole('status').filter({ hasText: 'Connected' }).waitFor();
    assert.equal(await u.id('announcer').getAttribute('aria-live'), 'polite');
    await u.page.getByRole('navigation', { name: 'Rooms' }).waitFor({ state: 'attached' });
    // Every visible form control has an accessible name.
    const unnamed = await u.page.evaluate(() =>
      [...document.querySelectorAll('input, textarea, button')]
        .filter((e) => e.offsetParent !== null)
        .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim() || e.title))
        .map((e) => e.outerHTML.slice(0, 80)),
    );
    assert.deepEqual(unnamed, []);
    await u.check();
    await u.close();
  });
});
