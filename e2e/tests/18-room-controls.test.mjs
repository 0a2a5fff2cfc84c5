// The moderation controls of the page beyond a member's panel, in the host app
// (examples/host_auth.rs): slow mode (set by the owner, shown to every member, an early
// send refused with when the member may send again), giving and taking back a role (the
// new moderator's page gets the controls, then loses them) and unbanning a user who is
// offline (by name: the member list cannot hold them). Keyboard alone where it matters.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { signIn as signInAt, useHostAuth } from '../lib/host_auth.mjs';
import { expectCount, expectIncludes, expectTexts, poll, texts, unique, useBrowser } from '../lib/harness.mjs';

const browserOf = useBrowser();
const hostUrl = useHostAuth();

/** Signs in to the host app, opens its chat and joins (or creates) `room`. */
async function signInTo(user, room) {
  const u = await signInAt(browserOf(), hostUrl(), user);
  await joinRoom(u, room);
  return u;
}

async function joinRoom(u, room) {
  await u.id('join-room').fill(room);
  await u.id('join-submit').click();
  await expectTexts(u.id('room-title'), [room]);
}

/** A moderation notice in the current room's timeline (its text before the time). */
const expectNotice = (u, text) =>
  poll(
    () => texts(u.page.locator('#timeline-host [data-testid="mod-notice"] .notice-text')),
    (v) => v.some((t) => t.startsWith(`${text} · `)),
    { message: `notice ${JSON.stringify(text)}` },
  );

const focused = (u) => u.page.evaluate(() => document.activeElement?.dataset?.testid ?? document.activeElement?.id ?? null);

/** Opens the moderation panel of `user` in `u`'s member list, with the keyboard. */
async function openPanel(u, user) {
  const toggle = u.page.locator(`[data-testid="mod-toggle"][data-user="${user}"]`);
  await toggle.waitFor();
  await toggle.focus();
  await u.page.keyboard.press('Enter');
  await poll(() => focused(u), (v) => v === 'mod-reason', { message: 'focus in the reason field' });
}

describe('room controls', () => {
  test('slow mode: the owner sets it, every member sees it, an early send says when to try again', async () => {
    const room = unique('slowroom');
    const owner = await signInTo('bob', room); // creates the room: its owner
    const member = await signInTo('carol', room);
    await expectIncludes(owner.members(), 'carol');

    // Only the owner has the room's controls; nobody sees a slow mode yet.
    await owner.id('room-mod').waitFor();
    assert.equal(await member.id('room-mod').isVisible(), false, 'no room controls for a member');
    assert.equal(await member.id('room-slow').isVisible(), false);

    // Set with the keyboard: the field, 30, Enter.
    await owner.id('slow-input').focus();
    await owner.page.keyboard.press('Control+A');
    await owner.page.keyboard.type('30');
    await owner.page.keyboard.press('Enter');
    await expectTexts(member.id('room-slow'), ['Slow mode: one message every 30 s']);
    await expectTexts(owner.id('room-slow'), ['Slow mode: one message every 30 s']);
    await expectNotice(member, 'bob turned on slow mode: one message every 30 s');

    // The member's first post goes through; the second, right after, is refused with the wait.
    await member.say('first under slow mode');
    await owner.waitForBody('first under slow mode');
    await member.say('second too soon');
    const status = member.page.getByTestId('msg-status').filter({ hasText: /^Not sent: slow mode is on; you may send again in \d+ s\./ });
    await status.waitFor();
    // The owner is exempt.
    await owner.say('owners are not slowed');
    await owner.say('not even twice');
    await member.waitForBody('not even twice');

    // Off again (0): the member's page says so and shows no slow mode.
    await owner.id('slow-input').fill('0');
    await owner.id('slow-save').click();
    await expectNotice(member, 'bob turned off slow mode');
    await poll(() => member.id('room-slow').isVisible(), (v) => v === false, { message: 'slow mode gone from the member page' });

    // A bad value is explained in the page, not sent.
    await owner.id('slow-input').fill('-3');
    await owner.id('slow-save').click();
    await expectTexts(owner.id('slow-error'), ['Slow mode is a whole number of seconds from 0 (off) to 86400.']);

    await owner.check();
    await member.check();
  });

  test('roles: the owner makes a member moderator (their page gets the controls) and member again', async () => {
    const room = unique('roleroom');
    const owner = await signInTo('bob', room);
    const member = await signInTo('carol', room);
    await expectIncludes(owner.members(), 'carol');
    await expectCount(member.page.getByTestId('mod-toggle'), 0, 'no controls for a member');

    // With the keyboard: open carol's panel, pick "moderator", press Set role.
    await openPanel(owner, 'carol');
    await owner.id('mod-role').focus();
    await owner.id('mod-role').selectOption('moderator');
    await owner.id('mod-set-role').focus();
    await owner.page.keyboard.press('Enter');
    await expectNotice(member, `You are now moderator of #${room} by bob.`);
    await expectNotice(owner, 'carol is now moderator by bob');
    // carol moderates now: the member list has controls, the room's controls show.
    await member.page.locator('[data-testid="mod-toggle"][data-user="bob"]').waitFor();
    await member.id('room-mod').waitFor();
    // A moderator gives no roles: carol's panel has none.
    await openPanel(member, 'bob');
    await expectCount(member.page.getByTestId('mod-role'), 0, 'no role control for a moderator');

    // And back to member.
    await openPanel(owner, 'carol');
    await owner.id('mod-role').selectOption('member');
    await owner.id('mod-set-role').click();
    await expectNotice(member, `You are now member of #${room} by bob.`);
    await expectCount(member.page.getByTestId('mod-toggle'), 0, 'controls gone');
    await poll(() => member.id('room-mod').isVisible(), (v) => v === false, { message: 'room controls gone' });

    await owner.check();
    await member.check();
  });

  test('unban: a banned user cannot come back until the owner unbans them by name', async () => {
    const room = unique('banroom');
    const owner = await signInTo('bob', room);
    const member = await signInTo('carol', room);
    await expectIncludes(owner.members(), 'carol');

    await openPanel(owner, 'carol');
    await owner.page.keyboard.type('spam');
    await owner.id('mod-ban').click();
    await expectTexts(member.id('mod-alert-text'), [`You were banned from #${room} for 10 minutes by bob: spam.`]);
    await poll(
      () => owner.members().evaluateAll((els) => els.map((e) => e.textContent)),
      (names) => !names.includes('carol'),
      { message: 'carol gone from the member list' },
    );

    // carol may not come back.
    await member.id('join-room').fill(room);
    await member.id('join-submit').click();
    await expectTexts(member.id('join-error'), [`you may not join ${room}`]);

    // The owner unbans her by name, with the keyboard (she is not in the member list).
    await owner.id('unban-input').focus();
    await owner.page.keyboard.type('carol');
    await owner.page.keyboard.press('Enter');
    await expectNotice(owner, 'carol may come back by bob');
    await poll(() => owner.id('unban-input').inputValue(), (v) => v === '', { message: 'the field cleared' });
    assert.equal(await focused(owner), 'unban-input', 'focus stays in the field');

    // And she joins again; the owner sees her.
    await joinRoom(member, room);
    await expectIncludes(owner.members(), 'carol');

    await owner.check();
    await member.check();
  });
});
