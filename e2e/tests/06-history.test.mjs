// Scroll-back through history pages, and auto-scroll that follows new messages only for
// a reader who is at the bottom.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { expectTexts, useBrowser, openBot, openUser, poll, sharedServerUrl, texts, unique } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

/** Posts `n` numbered messages from one user through several sessions (each session has
 *  its own flood-control bucket, so this goes at full speed). */
async function fill(room, n) {
  const first = await openBot(URL, unique('Archivist'), { rooms: [room] });
  const burst = first.welcome.limits.send_burst;
  const bots = [first];
  while (bots.length * burst < n) {
    bots.push(await openBot(URL, first.user, { rooms: [room], token: first.welcome.token }));
  }
  for (let i = 1; i <= n; i++) await bots[Math.floor((i - 1) / burst)].send(room, `history ${i}`);
  return bots;
}

const scrollInfo = (u) =>
  u.id('scroller').evaluate((s) => ({ top: s.scrollTop, height: s.scrollHeight, client: s.clientHeight }));

describe('history', () => {
  test('infinite scroll-back loads every older message once, keeping the reader in place', async () => {
    const room = unique('archive');
    const total = 130;
    const bots = await fill(room, total);
    const all = Array.from({ length: total }, (_, i) => `history ${i + 1}`);

    const u = await openUser(browserOf(), URL);
    await u.login(unique('Reader'), room);
    await u.waitForBody(`history ${total}`);
    // The newest page is shown, scrolled to the bottom.
    const firstPage = await texts(u.bodies());
    assert.ok(firstPage.length < total, `only a page at first (${firstPage.length})`);
    assert.deepEqual(firstPage, all.slice(total - firstPage.length));
    await poll(() => scrollInfo(u), (s) => s.height - s.top - s.client < 2, { message: 'at the bottom' });

    // Scrolling to the top loads the page before; what was on screen stays on screen.
    const oldest = u.message(firstPage[0]);
    await u.id('scroller').evaluate((s) => {
      s.scrollTop = 0;
    });
    await poll(() => u.bodies().count(), (n) => n > firstPage.length, { message: 'an older page' });
    await poll(
      async () => {
        const box = await oldest.boundingBox();
        const scroller = await u.id('scroller').boundingBox();
        return box.y - scroller.y;
      },
      (y) => y >= 0 && y < 200,
      { message: 'the message that was at the top is still near the top' },
    );

    // Keep scrolling up until the beginning.
    for (let i = 0; i < 10; i++) {
      const status = await u.id('history-status').textContent();
      if (status === `This is the beginning of #${room}.`) break;
      const count = await u.bodies().count();
      await u.id('scroller').evaluate((s) => {
        s.scrollTop = 0;
      });
      await poll(
        async () => [await u.id('history-status').textContent(), await u.bodies().count()],
        ([s, n]) => s === `This is the beginning of #${room}.` || (n > count && s === ''),
        { message: 'the page loaded' },
      );
    }
    await expectTexts(u.id('history-status'), [`This is the beginning of #${room}.`]);
    await expectTexts(u.bodies(), all);
    await u.check();
    await u.close();
    for (const b of bots) await b.close();
  });

  test('new messages do not yank a reader who scrolled up; they follow at the bottom', async () => {
    const room = unique('follow');
    const bots = await fill(room, 60);
    const u = await openUser(browserOf(), URL);
    await u.login(unique('Scroller'), room);
    await u.waitForBody('history 60');
    await poll(() => scrollInfo(u), (s) => s.height - s.top - s.client < 2, { message: 'at the bottom' });

    // What the reader sees: the first message in view and where it is; with `scrollTo`,
    // measured right after scrolling there, before the page has reacted to the scroll.
    const view = (scrollTo = null) =>
      u.page.evaluate((scrollTo) => {
        const s = document.querySelector('[data-testid="scroller"]');
        if (scrollTo !== null) s.scrollTop = scrollTo;
        const top = s.getBoundingClientRect().top;
        const first = [...s.querySelectorAll('[data-testid="message"]')].find((m) => m.getBoundingClientRect().bottom > top);
        return { body: first.querySelector('[data-testid="body"]').textContent, y: Math.round(first.getBoundingClientRect().top - top) };
      }, scrollTo);

    // Read something older: scroll up, near enough to the top that the older page (the
    // first 10 of the 60) loads above. The messages in view must not move meanwhile, also
    // not when the controls above them change ("Loading…", then the beginning).
    const before = await view(200);
    await expectTexts(u.id('history-status'), [`This is the beginning of #${room}.`]);
    await expectTexts(u.bodies(), Array.from({ length: 60 }, (_, i) => `history ${i + 1}`));
    const loaded = await view();
    assert.equal(loaded.body, before.body, 'the same message in view after the older page');
    assert.ok(Math.abs(loaded.y - before.y) <= 1, `not moved by the older page (${before.y} → ${loaded.y})`);

    await bots[0].send(room, 'news while reading');
    await u.waitForBody('news while reading');
    const after = await view();
    assert.equal(after.body, before.body, 'the same message in view');
    assert.ok(Math.abs(after.y - before.y) <= 1, `not moved (${before.y} → ${after.y})`);
    await expectTexts(u.id('jump-to-latest'), ['1 new message ↓']);

    // The button takes the reader down; from then on new messages are followed.
    await u.id('jump-to-latest').click();
    await poll(() => scrollInfo(u), (s) => s.height - s.top - s.client < 2, { message: 'at the bottom again' });
    await poll(() => u.id('jump-to-latest').isVisible(), (v) => !v, { message: 'button hidden' });
    await bots[0].send(room, 'followed');
    await u.waitForBody('followed');
    await poll(() => scrollInfo(u), (s) => s.height - s.top - s.client < 2, { message: 'still at the bottom' });
    const box = await u.message('followed').boundingBox();
    const pane = await u.id('scroller').boundingBox();
    assert.ok(box.y + box.height <= pane.y + pane.height + 1, 'the new message is visible');

    // Sending one's own message always scrolls down to it.
    await u.id('scroller').evaluate((s) => {
      s.scrollTop = s.scrollHeight - s.clientHeight - 500;
    });
    await u.say('my own words');
    await u.waitForBody('my own words');
    await poll(() => scrollInfo(u), (s) => s.height - s.top - s.client < 2, { message: 'at the bottom after sending' });
    await u.check();
    await u.close();
    for (const b of bots) await b.close();
  });
});
