// Moderation in the page, in the host app (examples/host_auth.rs, identities from its
// session cookie): the user who creates a room owns it and moderates it from the member
// list, with the keyboard alone; the topic is shown to everyone and set by the owner;
// the member sees being muted (and a send while muted is refused with a visible reason),
// then being kicked. Members get no moderation controls. The app's roles are room roles
// too (the example's `RoomPolicy::role`): its moderator moderates a room nobody gave them
// a role in.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { signIn as signInAt, useHostAuth } from '../lib/host_auth.mjs';
import { expectCount, expectExcludes, expectIncludes, expectTexts, openUser, poll, texts, unique, useBrowser } from '../lib/harness.mjs';

const browserOf = useBrowser();
const hostUrl = useHostAuth();

/** Signs in to the host app, opens its chat and joins (or creates) `room`. */
async function signInTo(user, room) {
  const u = await signInAt(browserOf(), hostUrl(), user);
  await u.id('join-room').fill(room);
  await u.id('join-submit').click();
  await expectTexts(u.id('room-title'), [room]);
  return u;
}

/** A moderation notice in the current room's timeline (its text before the time). */
const expectNotice = (u, text) =>
  poll(
    () => texts(u.page.locator('#timeline-host [data-testid="mod-notice"] .notice-text')),
    (v) => v.some((t) => t.startsWith(`${text} · `)),
    { message: `notice ${JSON.stringify(text)}` },
  );

const focused = (u) => u.page.evaluate(() => document.activeElement?.dataset?.testid ?? document.activeElement?.id ?? null);

describe('moderation', () => {
  test('a moderator sets the topic, mutes and kicks a member; the member sees each, and a muted send is refused', async () => {
    const room = unique('modroom');
    const modName = 'alice';
    const memberName = 'carol';
    const mod = await signInTo(modName, room); // creates the room: its owner
    const member = await signInTo(memberName, room);
    await expectIncludes(mod.members(), memberName);

    // The member has no moderation controls; the owner has one per other member.
    await expectCount(member.page.getByTestId('mod-toggle'), 0, 'no controls for a member');
    assert.equal(await member.id('topic-edit').isVisible(), false, 'a member cannot set the topic');
    const toggle = mod.page.locator(`[data-testid="mod-toggle"][data-user="${memberName}"]`);
    await toggle.waitFor();
    await expectCount(mod.page.locator(`[data-testid="mod-toggle"][data-user="${modName}"]`), 0, 'none for oneself');

    // The topic, set with the keyboard, shown to both.
    await mod.id('topic-edit').focus();
    await mod.page.keyboard.press('Enter');
    await poll(() => focused(mod), (v) => v === 'topic-input', { message: 'focus in the topic field' });
    await mod.page.keyboard.type('Be kind to each other');
    await mod.page.keyboard.press('Enter');
    await expectTexts(mod.id('room-topic'), ['Be kind to each other']);
    await expectTexts(member.id('room-topic'), ['Be kind to each other']);
    await poll(() => focused(mod), (v) => v === 'topic-edit', { message: 'focus back on the topic button' });

    // Mute, with the keyboard: open the member's panel, give a reason, press Mute.
    await member.say('first words');
    await mod.waitForBody('first words');
    await toggle.focus();
    await mod.page.keyboard.press('Enter');
    assert.equal(await toggle.getAttribute('aria-expanded'), 'true');
    await poll(() => focused(mod), (v) => v === 'mod-reason', { message: 'focus in the reason field' });
    await mod.page.keyboard.type('too loud');
    await mod.page.keyboard.press('Tab');
    assert.equal(await focused(mod), 'mod-mute');
    await mod.page.keyboard.press('Enter');

    // The member sees it: a status line, a notice, the tag in the member list.
    await expectTexts(member.id('room-state'), [`You are muted in #${room}: you can read, but your messages are refused.`]);
    await expectNotice(member, `You were muted in #${room} by ${modName}: too loud. You can read but not post.`);
    await member.page.locator(`[data-testid="member"][data-user="${memberName}"] [data-testid="muted-tag"]`).waitFor();
    await mod.page.locator(`[data-testid="member"][data-user="${memberName}"] [data-testid="muted-tag"]`).waitFor();
    await poll(() => mod.page.getByTestId('mod-panel').count(), (n) => n === 0, { message: 'the panel closes when done' });
    await poll(() => focused(mod), (v) => v === 'mod-toggle', { message: 'focus back on the member' });

    // The muted member's send is refused, visibly, and nobody gets it.
    await member.say('can I still talk?');
    await member.page.getByTestId('msg-status').filter({ hasText: 'Not sent: you are muted in this room.' }).waitFor();
    await mod.say('moderator here');
    await member.waitForBody('moderator here');
    await mod.waitForBody('moderator here');
    await expectExcludes(mod.bodies(), 'can I still talk?');

    // Kick, with the keyboard, with a reason.
    await toggle.focus();
    await mod.page.keyboard.press('Enter');
    await poll(() => focused(mod), (v) => v === 'mod-reason', { message: 'focus in the reason field' });
    await mod.page.keyboard.type('take a break');
    await mod.page.getByTestId('mod-kick').focus();
    await mod.page.keyboard.press('Enter');

    // The member sees being kicked: an alert that stays, and the room gone.
    await expectTexts(member.id('mod-alert-text'), [`You were removed from #${room} by ${modName}: take a break. You may join it again.`]);
    assert.equal(await member.id('mod-alert').isVisible(), true);
    await poll(
      () => member.page.locator('[data-testid="room-list"] [data-testid="room"]').evaluateAll((els) => els.map((e) => e.dataset.room)),
      (rooms) => !rooms.includes(room),
      { message: `${room} gone from the member's rooms` },
    );
    // The moderator sees them leave, and the notice.
    await expectExcludes(mod.members(), memberName);
    await expectNotice(mod, `${memberName} was removed by ${modName}: take a break`);
    // Dismissed with the keyboard.
    await member.id('mod-alert-close').focus();
    await member.page.keyboard.press('Enter');
    assert.equal(await member.id('mod-alert').isVisible(), false);

    await mod.check();
    await member.check();
  });

  test("the app's moderator moderates any room without anyone setting a role", async () => {
    const room = unique('approles');
    // bob creates the room (its owner) and gives nobody a role; dave is the app's moderator.
    const owner = await signInTo('bob', room);
    const member = await signInTo('carol', room);
    const mod = await signInTo('dave', room);
    await expectIncludes(mod.members(), 'carol');
    const toggle = mod.page.locator('[data-testid="mod-toggle"][data-user="carol"]');
    await toggle.waitFor();
    await toggle.click();
    await mod.id('mod-reason').fill('app rules');
    await mod.id('mod-mute').click();
    await expectNotice(member, `You were muted in #${room} by dave: app rules. You can read but not post.`);
    await expectNotice(owner, 'carol was muted by dave: app rules');
    await member.say('still here?');
    await member.page.getByTestId('msg-status').filter({ hasText: 'Not sent: you are muted in this room.' }).waitFor();
    // A member of the app is a member of the room: no controls for carol.
    await expectCount(member.page.getByTestId('mod-toggle'), 0, 'no controls for a member');

    await owner.check();
    await member.check();
    await mod.check();
  });
});
