// Login: the server's name rules checked inline, server refusals shown inline, and the
// name (with its token) remembered so a reload or a second tab is the same person.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { expectTexts, useBrowser, openBot, openUser, poll, sharedServerUrl, unique } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

describe('login', () => {
  test('invalid names are explained inline before anything is sent', async () => {
    const u = await openUser(browserOf(), URL);
    const error = u.id('login-error');
    const attempts = [
      ['two words', /spaces/],
      ['a@b', /“@”/],
      ['a,b', /“,”/],
      ['x'.repeat(33), /at most 32 characters/],
      ['zero\u200Bwidth', /invisible character \(U\+200B\)/],
      ['   ', /Enter a username/],
    ];
    for (const [name, why] of attempts) {
      await u.id('login-name').fill(name);
      await u.id('login-submit').click();
      await poll(() => error.textContent(), (t) => why.test(t), { message: `error for ${JSON.stringify(name)}` });
      assert.equal(await u.id('login-name').getAttribute('aria-invalid'), 'true');
      assert.equal(await u.id('chat').isVisible(), false);
    }
    // A room name is checked the same way.
    await u.id('login-name').fill(unique('ok'));
    await u.id('login-room').fill('no spaces please');
    await u.id('login-submit').click();
    await poll(() => error.textContent(), (t) => /room name cannot contain spaces/i.test(t), { message: 'room error' });
    await u.check();
    await u.close();
  });

  test('a name someone else holds is refused by the server, shown inline; another name works', async () => {
    const holder = unique('Taken');
    const bot = await openBot(URL, holder, { rooms: [] });
    const u = await openUser(browserOf(), URL);
    await u.id('login-name').fill(holder.toLowerCase());
    await u.id('login-submit').click();
    await poll(() => u.id('login-error').textContent(), (t) => /in use/.test(t), { message: 'name_taken shown' });
    assert.equal(await u.id('login').isVisible(), true);
    const name = unique('free');
    await u.login(name);
    await expectTexts(u.id('me-name'), [name]);
    await u.check();
    await u.close();
    await bot.close();
  });

  test('the name is remembered: a reload and a second tab are the same user, listed once', async () => {
    const name = unique('Remy');
    const room = unique('remember');
    const u = await openUser(browserOf(), URL);
    await u.login(name, room);
    await expectTexts(u.id('room-title'), [room]);
    await expectTexts(u.members(), [name]);

    // Reload: no login form, same name, same room, still one member.
    await u.page.reload();
    await u.connected();
    assert.equal(await u.id('login').isVisible(), false);
    await expectTexts(u.id('me-name'), [name]);
    await expectTexts(u.id('room-title'), [room]);

    // A second tab in the same browser: the same user (the token in localStorage).
    const tab2 = await u.context.newPage();
    u.watch(tab2);
    await tab2.goto(URL);
    await tab2.locator('[data-testid="connection"][data-state="connected"]').waitFor();
    await expectTexts(tab2.getByTestId('me-name'), [name]);
    await expectTexts(tab2.locator('[data-testid="member-list"] [data-testid="member-name"]'), [name]);

    // Someone else in the room sees one entry for that user, however many tabs.
    const other = await openUser(browserOf(), URL);
    const otherName = unique('Otto');
    await other.id('login-room').fill(room);
    await other.login(otherName);
    const expected = [name, otherName].sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
    await expectTexts(other.members(), expected);
    await u.check();
    await other.check();
    await u.close();
    await other.close();
  });

  test('signing out returns to the login form; the others see the user leave', async () => {
    const room = unique('signout');
    const name = unique('Sid');
    const u = await openUser(browserOf(), URL);
    await u.login(name, room);
    const watcher = await openBot(URL, unique('Watcher'), { rooms: [room] });
    await u.id('logout').click();
    await watcher.next((f) => f.type === 'user_left' && f.user === name);
    await u.id('login').waitFor();
    assert.equal(await u.id('chat').isVisible(), false);
    assert.equal(await u.id('login-name').inputValue(), name, 'the name is offered again');
    // A reload stays signed out; signing in again works (same name, same token).
    await u.page.reload();
    await u.id('login').waitFor();
    await u.login(name, room);
    await watcher.next((f) => f.type === 'user_joined' && f.user === name);
    await u.check();
    await u.close();
    await watcher.close();
  });
});
