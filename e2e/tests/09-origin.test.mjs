// Cross-site WebSocket hijacking: a page from another origin must not be able to open the
// chat WebSocket as its visitor (the server answers 403 to a foreign Origin).

import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { openUser, poll, sharedServerUrl, tryUpgrade, unique, useBrowser } from '../lib/harness.mjs';

const URL_ = sharedServerUrl();
const browserOf = useBrowser();

// The probe: tries the chat WebSocket and records what happened.
const PROBE = (target) => `<!doctype html><title>elsewhere</title><script>
  window.result = 'pending';
  const ws = new WebSocket(${JSON.stringify(target)});
  ws.onopen = () => { window.result = 'open'; };
  ws.onclose = (e) => { if (window.result === 'pending') window.result = 'closed ' + e.code; };
</script>`;

describe('origin check', () => {
  test('a page from another origin cannot open the chat WebSocket; the chat page can', async () => {
    const target = new URL('ws', URL_);
    target.protocol = 'ws:';

    // Another site on another port (a different origin), serving the probe.
    const site = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(PROBE(target.href));
    });
    site.listen(0, '127.0.0.1');
    await once(site, 'listening');
    const elsewhere = `http://127.0.0.1:${site.address().port}/`;

    try {
      const u = await openUser(browserOf(), elsewhere);
      const consoleLines = [];
      u.page.on('console', (m) => consoleLines.push(m.text()));
      await u.page.reload();
      const result = await poll(() => u.page.evaluate(() => window.result), (r) => r !== 'pending', {
        message: 'the foreign page’s WebSocket to settle',
      });
      assert.equal(result, 'closed 1006', 'the handshake is refused');
      await poll(() => consoleLines.join('\n'), (t) => /403/.test(t), { message: 'the browser reports 403' });
      await u.close();

      // Same probe from the chat's own origin: allowed (and the page itself connects).
      const own = await openUser(browserOf(), URL_);
      const same = await own.page.evaluate(
        (t) =>
          new Promise((resolve) => {
            const ws = new WebSocket(t);
            ws.onopen = () => {
              ws.close();
              resolve('open');
            };
            ws.onclose = (e) => resolve(`closed ${e.code}`);
          }),
        target.href,
      );
      assert.equal(same, 'open');
      await own.login(unique('Home'), unique('origin'));
      await own.check();
      await own.close();

      // The same, seen from a plain client sending the Origin header.
      assert.deepEqual(await tryUpgrade(URL_, elsewhere.replace(/\/$/, '')), { opened: false, status: 403 });
      assert.deepEqual(await tryUpgrade(URL_, 'null'), { opened: false, status: 403 });
      assert.deepEqual(await tryUpgrade(URL_, new URL(URL_).origin), { opened: true });
    } finally {
      site.closeAllConnections();
      site.close();
    }
  });
});
