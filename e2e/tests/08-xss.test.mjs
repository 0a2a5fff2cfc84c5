// Hostile input from other clients: markup, event handlers, javascript: URLs, SVG, broken
// markup and template syntax as message bodies, user names and room names. Nothing may
// execute (each payload would set window.__xss or open a dialog), no CSP violation may
// fire (the page must not even try to inline anything), and the text shown must be
// exactly the text sent.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { expectIncludes, expectTexts, openBot, openUser, poll, sharedServerUrl, texts, unique, useBrowser } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();

// Valid user names: at most 32 characters, no whitespace, no '@' or ','.
const NAMES = [
  '<script>__xss=1</script>',
  '<img/src/onerror=__xss=2>',
  '<svg/onload=__xss=3>',
  '"><b>bold</b><!--',
  'javascript:__xss=4',
  '{{7*7}}${7*7}<%=7*7%>',
  '</bdi></li></ul><i>',
  '&lt;&amp;&#x3C;&quot;',
  '<iframe/srcdoc=x>',
];

// Valid room names: also lowercase (the server lowercases them), at most 64 characters.
const ROOMS = ['<script>__xss=5</script>', '<svg/onload=__xss=6>', '"><img/src/onerror=__xss=7>', 'javascript:__xss=8', '{{7*7}}${7*7}'];

const BODIES = [
  '<script>window.__xss="script"</script>',
  '<img src=x onerror="window.__xss=\'img\'">',
  '<svg onload="window.__xss=\'svg\'"><circle r="1"/></svg>',
  '<a href="javascript:window.__xss=\'href\'">click me</a>',
  'javascript:window.__xss="bare"',
  'javascript:alert(document.domain)',
  '<iframe srcdoc="<script>parent.__xss=\'iframe\'</script>"></iframe>',
  '<div style="background:url(javascript:window.__xss=1)">styled</div>',
  '</li></ol></div><h1 onclick="window.__xss=\'broken\'">broken markup',
  '<<script>script>window.__xss="nested"<</script>/script>',
  '<style>body{display:none}</style>',
  '"><img src=x onerror=alert(1)>',
  '{{constructor.constructor("window.__xss=\'tpl\'")()}}',
  '${window.__xss="tpl2"} {{7*7}} <%= 7*7 %> #{7*7}',
  '<math><mtext><table><mglyph><style><img src=x onerror="window.__xss=\'math\'">',
  '&lt;b&gt;not bold&lt;/b&gt; &amp; &#x3C;',
  '\u202Ereversed\u202C and <bdo dir=rtl>bdo</bdo>',
  'http://example.com/"><img src=x onerror=window.__xss=1>',
  'https://example.com/?q=<script>window.__xss="link"</script>',
  'line\n<script>\nwindow.__xss="lines"\n</script>',
];

describe('hostile input is shown as text and never runs', () => {
  test('bodies, user names and room names from other clients', async () => {
    const room = unique('xss');
    const me = await openUser(browserOf(), URL);
    await me.login(unique('Target'), room);
    const meName = await me.id('me-name').textContent();

    // Hostile users join, write, type, and send a direct message.
    const bots = [];
    for (const name of NAMES) bots.push(await openBot(URL, name, { rooms: [room] }));
    assert.deepEqual(
      bots.map((b) => b.user),
      NAMES,
      'the server accepts these names unchanged',
    );
    for (let i = 0; i < BODIES.length; i++) await bots[i % bots.length].send(room, BODIES[i]);
    await bots[0].send(undefined, BODIES[0], { to: meName });

    await expectTexts(me.bodies(), BODIES);
    const authors = await texts(me.messages().getByTestId('author'));
    assert.deepEqual(authors, BODIES.map((_, i) => NAMES[i % NAMES.length]));
    await poll(
      () => texts(me.members()),
      (v) => JSON.stringify([...v].sort()) === JSON.stringify([meName, ...NAMES].sort()),
      { message: 'member list shows every name as text' },
    );
    await poll(
      () => texts(me.page.locator('[data-testid="notice"][data-event="joined"] bdi')),
      (v) => JSON.stringify(v) === JSON.stringify(NAMES),
      { message: 'join notices show every name as text' },
    );

    // Typing from a hostile name.
    bots[1].typing(room, true);
    await expectTexts(me.id('typing'), [`${NAMES[1]} is typing…`]);

    // The direct message: its entry and title carry the name as text.
    const dm = me.page.locator('[data-testid="dm"]');
    await expectTexts(dm.locator('.room-name'), [NAMES[0]]);
    await dm.click();
    await expectTexts(me.id('room-title'), [NAMES[0]]);
    await expectTexts(me.bodies(), [BODIES[0]]);

    // Hostile room names: listed as text, joinable, shown as the title.
    for (const r of ROOMS) await bots[2].join(r);
    await me.id('join-room').focus(); // refreshes the room list
    for (const r of ROOMS) await expectIncludes(me.page.locator('[data-testid="more-room"] .room-name'), r);
    for (const r of ROOMS) {
      await me.page.locator('[data-testid="more-room"]').filter({ hasText: r }).first().click();
      await expectTexts(me.id('room-title'), [r]);
      await bots[2].send(r, `in ${r}`);
      await expectTexts(me.bodies(), [`in ${r}`]);
    }
    await poll(
      () => texts(me.page.locator('[data-testid="room-list"] .room-name')),
      (v) => ROOMS.every((r) => v.includes(r)),
      { message: 'joined rooms listed as text' },
    );

    // Nothing that a payload would have created exists in the page.
    await me.selectRoom(room);
    const found = await me.page.evaluate(() => ({
      injected: document.querySelectorAll(
        '#timeline-host :is(img, script, iframe, style, svg, b, i, h1, a[href^="javascript"], bdo, math), #member-list :is(img, script, svg, b, i, iframe), #sidebar :is(img, script, svg, b, i, iframe)',
      ).length,
      links: [...document.querySelectorAll('#timeline-host a')].map((a) => a.href),
      scripts: [...document.scripts].map((s) => s.src),
    }));
    assert.equal(found.injected, 0, 'no element created from a payload');
    assert.deepEqual(found.links, ['http://example.com/', 'https://example.com/?q='], 'only http(s) links');
    assert.equal(found.scripts.length, 1, 'only the page script');

    await me.check();
    for (const b of bots) await b.close();
    await me.close();
  });

  test('a hostile name typed into the login form is shown as text', async () => {
    const name = '<img/src/onerror=__xss=9>';
    const u = await openUser(browserOf(), URL);
    await u.login(name, unique('selfxss'));
    await expectTexts(u.id('me-name'), [name]);
    await expectTexts(u.members(), [name]);
    await u.say('<img src=x onerror="window.__xss=10">');
    await expectTexts(u.bodies(), ['<img src=x onerror="window.__xss=10">']);
    await expectTexts(u.messages().getByTestId('author'), [name]);
    await u.check();
    await u.close();
  });

  test('a right-to-left name cannot reorder the line around it', async () => {
    const rtl = 'שלוםabc';
    const room = unique('bidi');
    const u = await openUser(browserOf(), URL);
    await u.login(unique('Reader'), room);
    const bot = await openBot(URL, rtl, { rooms: [room] });
    await bot.send(room, 'مرحبا hello 123');
    await u.waitForBody('مرحبا hello 123');
    // Names are isolated (<bdi>), bodies take their own direction (dir=auto, isolated).
    const info = await u.messages().first().evaluate((m) => {
      const author = m.querySelector('[data-testid="author"]');
      const body = m.querySelector('[data-testid="body"]');
      return { tag: author.tagName, bidi: getComputedStyle(author).unicodeBidi, dir: body.dir, bodyBidi: getComputedStyle(body).unicodeBidi };
    });
    assert.deepEqual(info, { tag: 'BDI', bidi: 'isolate', dir: 'auto', bodyBidi: 'isolate' });
    await u.check();
    await u.close();
    await bot.close();
  });
});
