// Messages live on (issue 15) in the page: the author edits and deletes their own
// messages, anyone reacts and replies, and the other user sees each change live and
// again after a reload; a member gets no edit or delete controls on someone else's
// message, a moderator (the room's owner, in the host app) deletes any; a room opened with
// unread messages shows a separator above the first of them, and reading it in one tab
// clears the count in the user's other tab. One test uses the keyboard alone.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { signIn, useHostAuth } from '../lib/host_auth.mjs';
import { TIMEOUT, expectCount, expectTexts, openUser, poll, sharedServerUrl, texts, unique, useBrowser } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();
const hostUrl = useHostAuth();

/** The message with this seq in the current room (also once it is a tombstone). */
const bySeq = (u, seq) => u.page.locator(`#timeline-host [data-testid="message"][data-seq="${seq}"]`);
const seqOf = async (u, body) => {
  await u.message(body).waitFor({ timeout: TIMEOUT });
  return u.message(body).getAttribute('data-seq');
};
const focused = (u) => u.page.evaluate(() => document.activeElement?.dataset?.testid ?? document.activeElement?.id ?? null);
const expectFocus = (u, testid) => poll(() => focused(u), (v) => v === testid, { message: `focus on ${testid}` });

/** The reaction chips of a message: "emoji count" each, and whether they are ours. */
const chips = (msg) =>
  msg.getByTestId('reaction').evaluateAll((els) => els.map((e) => `${e.dataset.emoji} ${e.querySelector('[data-testid="reaction-count"]').textContent}${e.getAttribute('aria-pressed') === 'true' ? ' mine' : ''}`));
const expectChips = (msg, expected) => poll(() => chips(msg), (v) => JSON.stringify(v) === JSON.stringify(expected), { message: `reactions ${JSON.stringify(expected)}` });

/** The quote above a reply: author and snippet. */
const quoteOf = (msg) => texts(msg.locator('[data-testid="reply-quote"] [data-testid="reply-author"], [data-testid="reply-quote"] [data-testid="reply-snippet"]'));
const expectQuote = (msg, expected) => poll(() => quoteOf(msg), (v) => JSON.stringify(v) === JSON.stringify(expected), { message: `quote ${JSON.stringify(expected)}` });

async function pair() {
  const room = unique('life');
  const alice = await openUser(browserOf(), URL);
  const aliceName = unique('Al');
  await alice.login(aliceName, room);
  const bob = await openUser(browserOf(), URL);
  const bobName = unique('Bo');
  await bob.login(bobName, room);
  return { room, alice, aliceName, bob, bobName };
}

describe('messages live on', () => {
  test('alice edits, reacts, replies and deletes; bob sees each live and after a reload', async () => {
    const { alice, aliceName, bob, bobName } = await pair();
    await alice.say('helo wrold');
    await bob.waitForBody('helo wrold');
    const seq = await seqOf(alice, 'helo wrold');

    // Bob has no edit or delete on Alice's message; Alice has both on hers.
    await bob.message('helo wrold').hover();
    await expectCount(bySeq(bob, seq).getByTestId('edit'), 0, 'no edit for bob');
    await expectCount(bySeq(bob, seq).getByTestId('delete'), 0, 'no delete for bob');
    await expectCount(bySeq(bob, seq).getByTestId('reply'), 1, 'bob may reply');

    // Edit inline: Enter saves.
    await bySeq(alice, seq).hover();
    await bySeq(alice, seq).getByTestId('edit').click();
    const box = bySeq(alice, seq).getByTestId('edit-input');
    await box.fill('hello world');
    await box.press('Enter');
    for (const u of [alice, bob]) {
      await expectTexts(bySeq(u, seq).getByTestId('body'), ['hello world']);
      await expectTexts(bySeq(u, seq).getByTestId('edited'), ['(edited)']);
      assert.match(await bySeq(u, seq).getByTestId('edited').getAttribute('title'), /^edited \S/);
    }
    // Escape cancels an edit.
    await bySeq(alice, seq).getByTestId('edit').click();
    await bySeq(alice, seq).getByTestId('edit-input').fill('never sent');
    await bySeq(alice, seq).getByTestId('edit-input').press('Escape');
    await expectTexts(bySeq(alice, seq).getByTestId('body'), ['hello world']);

    // Alice reacts from the picker; Bob adds his with a click on the chip.
    await bySeq(alice, seq).getByTestId('react-open').click();
    await bySeq(alice, seq).locator('[data-testid="picker"] [data-emoji="👍"]').click();
    await expectChips(bySeq(alice, seq), ['👍 1 mine']);
    await expectChips(bySeq(bob, seq), ['👍 1']);
    await bySeq(bob, seq).locator('[data-testid="reaction"][data-emoji="👍"]').click();
    await expectChips(bySeq(bob, seq), ['👍 2 mine']);
    await expectChips(bySeq(alice, seq), ['👍 2 mine']);
    await expectTexts(bySeq(alice, seq).getByTestId('reaction-who'), [`${aliceName}, ${bobName}`]);
    // A second emoji, then Alice takes hers back.
    await bySeq(bob, seq).getByTestId('react-open').click();
    await bySeq(bob, seq).locator('[data-testid="picker"] [data-emoji="🎉"]').click();
    await expectChips(bySeq(alice, seq), ['👍 2 mine', '🎉 1']);
    await bySeq(alice, seq).locator('[data-testid="reaction"][data-emoji="👍"]').click();
    await expectChips(bySeq(bob, seq), ['👍 1 mine', '🎉 1 mine']);
    await expectChips(bySeq(alice, seq), ['👍 1', '🎉 1']);

    // Bob replies to Alice's message; Alice replies to Bob's reply.
    await bySeq(bob, seq).getByTestId('reply').click();
    await expectTexts(bob.id('reply-bar-text'), [`Replying to ${aliceName}: hello world`]);
    await bob.say('me too');
    assert.equal(await bob.id('reply-bar').isVisible(), false, 'the quote goes once sent');
    await alice.waitForBody('me too');
    const replySeq = await seqOf(alice, 'me too');
    for (const u of [alice, bob]) await expectQuote(bySeq(u, replySeq), [aliceName, 'hello world']);
    await bySeq(alice, replySeq).getByTestId('reply').click();
    await alice.say('great');
    await bob.waitForBody('great');
    const greatSeq = await seqOf(bob, 'great');
    await expectQuote(bySeq(bob, greatSeq), [bobName, 'me too']);
    // Clicking a quote goes to the original.
    await bySeq(bob, replySeq).getByTestId('reply-quote').click();
    await poll(() => bob.page.evaluate(() => document.activeElement?.dataset?.seq ?? null), (v) => v === seq, { message: 'focus on the quoted message' });

    // After a reload Bob sees the same state, from the server.
    await bob.page.reload();
    await bob.connected();
    await bob.waitForBody('great');
    await expectTexts(bySeq(bob, seq).getByTestId('body'), ['hello world']);
    await expectTexts(bySeq(bob, seq).getByTestId('edited'), ['(edited)']);
    await expectChips(bySeq(bob, seq), ['👍 1 mine', '🎉 1 mine']);
    await expectQuote(bySeq(bob, replySeq), [aliceName, 'hello world']);
    await expectQuote(bySeq(bob, greatSeq), [bobName, 'me too']);

    // Alice deletes her message (after a confirmation): a tombstone for both, and the
    // reply quoting it says so.
    await bySeq(alice, seq).hover();
    await bySeq(alice, seq).getByTestId('delete').click();
    await expectTexts(bySeq(alice, seq).getByTestId('body'), ['hello world'], 'not deleted before the confirmation');
    await bySeq(alice, seq).getByTestId('delete-confirm').click();
    for (const u of [alice, bob]) {
      await expectTexts(bySeq(u, seq).getByTestId('tombstone'), ['message deleted']);
      await expectCount(bySeq(u, seq).getByTestId('body'), 0, 'the body is gone');
      await expectCount(bySeq(u, seq).getByTestId('reaction'), 0, 'the reactions are gone');
      await expectQuote(bySeq(u, replySeq), [aliceName, 'message deleted']);
    }
    await bob.page.reload();
    await bob.connected();
    await bob.waitForBody('great');
    await expectTexts(bySeq(bob, seq).getByTestId('tombstone'), ['message deleted']);
    await expectQuote(bySeq(bob, replySeq), [aliceName, 'message deleted']);
    await expectTexts(bob.bodies(), ['me too', 'great']);

    // A reply quoting markup shows it as text; nothing runs.
    const hostile = '<img src=x onerror="window.__xss=1"><b>bold</b>';
    await alice.say(hostile);
    await bob.waitForBody(hostile);
    const hostileSeq = await seqOf(bob, hostile);
    await bySeq(bob, hostileSeq).getByTestId('reply').click();
    await expectTexts(bob.id('reply-bar-text'), [`Replying to ${aliceName}: ${hostile}`]);
    await bob.say('no markup here');
    await alice.waitForBody('no markup here');
    const quotedSeq = await seqOf(alice, 'no markup here');
    await expectQuote(bySeq(alice, quotedSeq), [aliceName, hostile]);
    assert.equal(await alice.page.locator('#timeline-host img, #timeline-host b').count(), 0, 'no element made from the text');

    await alice.check();
    await bob.check();
  });

  test("a member cannot delete another's message; the room's owner can", async () => {
    const room = unique('modlife');
    const join = async (name) => {
      const u = await signIn(browserOf(), hostUrl(), name);
      await u.id('join-room').fill(room);
      await u.id('join-submit').click();
      await expectTexts(u.id('room-title'), [room]);
      return u;
    };
    const owner = await join('bob'); // creates the room: its owner
    const member = await join('carol');
    await owner.say('house rules');
    await member.waitForBody('house rules');
    await member.say('buy cheap watches');
    await owner.waitForBody('buy cheap watches');
    const ruleSeq = await seqOf(member, 'house rules');
    const spamSeq = await seqOf(owner, 'buy cheap watches');

    await expectCount(bySeq(member, ruleSeq).getByTestId('delete'), 0, "no delete on the owner's message for a member");
    await expectCount(bySeq(member, ruleSeq).getByTestId('edit'), 0, 'no edit either');
    await expectCount(bySeq(owner, spamSeq).getByTestId('edit'), 0, 'the owner cannot edit it');
    await bySeq(owner, spamSeq).hover();
    await bySeq(owner, spamSeq).getByTestId('delete').click();
    await bySeq(owner, spamSeq).getByTestId('delete-confirm').click();
    for (const u of [owner, member]) await expectTexts(bySeq(u, spamSeq).getByTestId('tombstone'), ['message deleted']);
    await expectTexts(member.bodies(), ['house rules']);

    await owner.check();
    await member.check();
  });

  test('unread: the count, the separator above the first unread message, and a read in one tab clears the other', async () => {
    const { room: home, alice, bob } = await pair();
    const side = unique('side');
    for (const u of [bob, alice]) {
      await u.id('join-room').fill(side);
      await u.id('join-submit').click();
      await expectTexts(u.id('room-title'), [side]);
    }
    await alice.say('already read');
    await bob.waitForBody('already read');
    await bob.selectRoom(home);
    await alice.say('first unread');
    await alice.say('second unread');
    const badge = (page) => page.locator(`[data-testid="room-list"] [data-testid="room"][data-room="${side}"] [data-testid="unread"]`);
    await expectTexts(badge(bob.page), ['2']);

    // After a reload the count is still there (the server counts from the read marker).
    await bob.page.reload();
    await bob.connected();
    await expectTexts(bob.id('room-title'), [home]);
    await expectTexts(badge(bob.page), ['2']);

    // A second tab of Bob's shows it too.
    const tab = await bob.context.newPage();
    bob.watch(tab);
    await tab.goto(URL);
    await tab.locator('[data-testid="connection"][data-state="connected"]').waitFor({ timeout: TIMEOUT });
    await expectTexts(badge(tab), ['2']);

    // Bob opens the room: the separator sits right above the first unread message.
    await bob.selectRoom(side);
    const around = () =>
      bob.page.evaluate(() => {
        const sep = document.querySelector('#timeline-host [data-testid="unread-separator"]');
        if (!sep) return null;
        const body = (n) => n?.querySelector('[data-testid="body"]')?.textContent ?? null;
        return [body(sep.previousElementSibling), body(sep.nextElementSibling)];
      });
    await poll(around, (v) => JSON.stringify(v) === JSON.stringify(['already read', 'first unread']), { message: 'the separator between the read and the unread' });
    await expectCount(badge(bob.page), 0, 'no count for the open room');
    // Reading it here clears the count in the other tab.
    await expectCount(badge(tab), 0, "the other tab's count cleared by the read marker");
    await tab.reload();
    await tab.locator('[data-testid="connection"][data-state="connected"]').waitFor({ timeout: TIMEOUT });
    await tab.locator(`[data-testid="room-list"] [data-testid="room"][data-room="${side}"]`).waitFor();
    await expectCount(badge(tab), 0, 'still read after a reload');
    // Switching away and back: nothing unread, no separator.
    await bob.selectRoom(home);
    await bob.selectRoom(side);
    await expectCount(bob.page.locator('#timeline-host [data-testid="unread-separator"]'), 0, 'no separator without unread messages');

    await alice.check();
    await bob.check();
  });

  test('with the keyboard alone: edit, react, reply, cancel a reply, delete', async () => {
    const { alice, aliceName, bob } = await pair();
    const key = (k) => alice.page.keyboard.press(k);
    await alice.id('composer').focus();
    await alice.page.keyboard.type('typo mesage');
    await key('Enter');
    await bob.waitForBody('typo mesage');
    await alice.waitForBody('typo mesage');
    const seq = await seqOf(alice, 'typo mesage');

    // From the message box, back into the last message's controls.
    await key('Shift+Tab');
    await expectFocus(alice, 'delete');
    await key('Shift+Tab');
    await expectFocus(alice, 'edit');
    await key('Enter');
    await expectFocus(alice, 'edit-input');
    await key('Control+A');
    await alice.page.keyboard.type('typo fixed');
    await key('Enter');
    await expectTexts(bySeq(bob, seq).getByTestId('body'), ['typo fixed']);
    await expectFocus(alice, 'edit');

    // The picker: arrows move, Enter picks, focus comes back.
    await key('Shift+Tab');
    await key('Shift+Tab');
    await expectFocus(alice, 'react-open');
    await key('Enter');
    await poll(() => alice.page.evaluate(() => document.activeElement?.dataset?.emoji ?? null), (v) => v === '👍', { message: 'focus in the picker' });
    await key('ArrowRight');
    await key('ArrowRight');
    await poll(() => alice.page.evaluate(() => document.activeElement?.dataset?.emoji ?? null), (v) => v === '😂', { message: 'arrows move in the picker' });
    await key('Enter');
    await expectChips(bySeq(bob, seq), ['😂 1']);
    await expectChips(bySeq(alice, seq), ['😂 1 mine']);
    await expectFocus(alice, 'react-open');
    // Escape closes the picker without reacting.
    await key('Enter');
    await key('Escape');
    await expectFocus(alice, 'react-open');
    await expectCount(bySeq(alice, seq).getByTestId('picker'), 0, 'the picker closed');

    // Reply, then Escape takes the quote away.
    await key('Tab');
    await expectFocus(alice, 'reply');
    await key('Enter');
    await expectFocus(alice, 'composer');
    await expectTexts(alice.id('reply-bar-text'), [`Replying to ${aliceName}: typo fixed`]);
    await key('Escape');
    assert.equal(await alice.id('reply-bar').isVisible(), false);
    // And again, sent this time.
    await key('Shift+Tab');
    await key('Shift+Tab');
    await key('Shift+Tab');
    await expectFocus(alice, 'reply');
    await key('Enter');
    await alice.page.keyboard.type('see above');
    await key('Enter');
    await bob.waitForBody('see above');
    const replySeq = await seqOf(bob, 'see above');
    await expectQuote(bySeq(bob, replySeq), [aliceName, 'typo fixed']);

    // Delete the reply: Escape cancels the confirmation, Enter confirms.
    await expectFocus(alice, 'composer');
    await key('Shift+Tab');
    await expectFocus(alice, 'delete');
    await key('Enter');
    await expectFocus(alice, 'delete-confirm');
    await key('Escape');
    await expectFocus(alice, 'delete');
    await expectCount(bySeq(alice, replySeq).getByTestId('confirm'), 0, 'the confirmation closed');
    await key('Enter');
    await key('Enter');
    await expectTexts(bySeq(bob, replySeq).getByTestId('tombstone'), ['message deleted']);
    await expectTexts(bob.bodies(), ['typo fixed']);

    await alice.check();
    await bob.check();
  });
});
