// Names: the page's name rules (chat-axum/assets/names.js) are the server's
// (chat-core/src/ids.rs). The page cannot link the Rust code, so both run one corpus
// (chat-core/tests/data/names.json) and must give the same file of results
// (chat-core/tests/data/names.expected.json, checked on the Rust side by
// chat-core/tests/names.rs). And the page's limits are the server's, not its own.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import { expectTexts, openBot, openUser, poll, sharedServerUrl, unique, useBrowser } from '../lib/harness.mjs';

const URL = sharedServerUrl();
const browserOf = useBrowser();
const DATA = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../chat-core/tests/data');
const corpus = JSON.parse(readFileSync(path.join(DATA, 'names.json'), 'utf8'));
const expected = JSON.parse(readFileSync(path.join(DATA, 'names.expected.json'), 'utf8'));
const chars = JSON.parse(readFileSync(path.join(DATA, 'names.chars.expected.json'), 'utf8'));

/** What is in `a` and not in `b`, at most a few. */
const missing = (a, b) => {
  const set = new Set(b);
  return a.filter((x) => !set.has(x)).slice(0, 10);
};

describe('names', () => {
  test('the page folds and validates every name of the corpus exactly as the server does', async () => {
    assert.deepEqual(
      expected.cases.map((c) => c.input),
      corpus.map((c) => c.input),
      'names.expected.json is out of date: UPDATE_EXPECTED=1 cargo test -p chat-core --test names',
    );
    const u = await openUser(browserOf(), URL);
    // The module the page itself imports, loaded from the server like chat.js loads it.
    const actual = await u.page.evaluate(
      async ({ inputs, limits }) => {
        const names = await import(new URL('names.js', document.baseURI).href);
        return inputs.map((input) => {
          const user = names.parseUserName(input, limits.max_name_chars);
          const room = names.parseRoomName(input, limits.max_room_chars, limits.max_name_chars);
          return {
            fold: names.fold(input),
            input,
            room: room.error ?? { room: room.room },
            user: user.error ?? { key: user.key, name: user.name },
          };
        });
      },
      { inputs: corpus.map((c) => c.input), limits: expected.limits },
    );
    const differences = [];
    actual.forEach((got, i) => {
      try {
        assert.deepEqual(got, expected.cases[i]);
      } catch {
        differences.push(`${corpus[i].why}: ${JSON.stringify(corpus[i].input)}\n  rust:    ${JSON.stringify(expected.cases[i])}\n  browser: ${JSON.stringify(got)}`);
      }
    });
    assert.equal(differences.length, 0, `names.js disagrees with chat-core on:\n${differences.join('\n')}`);
    await u.check();
    await u.close();
  });

  test('the page refuses and folds every code point as the server does', async () => {
    const u = await openUser(browserOf(), URL);
    const actual = await u.page.evaluate(async () => {
      const names = await import(new URL('names.js', document.baseURI).href);
      const refused = [];
      const folded = [];
      for (let c = 0; c <= 0x10ffff; c++) {
        if (c >= 0xd800 && c <= 0xdfff) continue; // not characters (Rust has no such char)
        const s = String.fromCodePoint(c);
        if (names.parseUserName(s, 32).error) {
          const last = refused.at(-1);
          if (last && last[1] + 1 === c) last[1] = c;
          else refused.push([c, c]);
        }
        const f = names.fold(s);
        if (f !== s) folded.push(`${c.toString(16)}:${[...f].map((x) => x.codePointAt(0).toString(16)).join(' ')}`);
      }
      return { refused: refused.map(([a, b]) => `${a.toString(16)}-${b.toString(16)}`), folded };
    });
    assert.deepEqual(actual.refused, chars.refused, 'the refused characters (hex ranges) differ from chat-core');
    assert.deepEqual(
      { onlyInBrowser: missing(actual.folded, chars.folded), onlyInRust: missing(chars.folded, actual.folded) },
      { onlyInBrowser: [], onlyInRust: [] },
      'fold (code point: result) differs from chat-core',
    );
    await u.check();
    await u.close();
  });

  test('the page has the server’s limits before the welcome, the same as in it', async () => {
    const bot = await openBot(URL, unique('limits'), { rooms: [] });
    const u = await openUser(browserOf(), URL);
    const served = await u.page.evaluate(() => JSON.parse(document.querySelector('meta[name="chat-limits"]').content));
    assert.deepEqual(served, bot.welcome.limits);
    // The login form counts against them.
    const max = served.max_name_chars;
    await u.id('login-name').fill('n'.repeat(max + 1));
    await u.id('login-submit').click();
    await poll(
      () => u.id('login-error').textContent(),
      (t) => t.includes(`at most ${max} characters (this one has ${max + 1})`),
      { message: 'the length error with the server’s limit' },
    );
    await u.check();
    await u.close();
    await bot.close();
  });

  test('the login form applies the server’s rule where the browser’s own string functions differ', async () => {
    const u = await openUser(browserOf(), URL);
    // String.prototype.trim strips U+FEFF, the server refuses it: refused inline.
    await u.id('login-name').fill(`\uFEFF${unique('bom')}`);
    await u.id('login-submit').click();
    await poll(
      () => u.id('login-error').textContent(),
      (t) => t.includes('invisible character (U+FEFF)'),
      { message: 'U+FEFF refused inline' },
    );
    // String.prototype.trim keeps U+0085 (NEL), the server trims it: accepted, and the
    // name is shown as the server normalized it (NFD accents composed, NEL gone).
    const base = unique('x');
    await u.login(`${base}Re\u0301my\u0085`);
    await expectTexts(u.id('me-name'), [`${base}R\u00e9my`]);
    await u.check();
    await u.close();
  });
});
