// The host app of examples/host_auth.rs for the tests that embed the chat in it: started
// once per test file (CHAT_HOST_AUTH_BIN, set by e2e/run.sh) and stopped after it.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before } from 'node:test';
import { openUser, poll } from './harness.mjs';

/**
 * Starts the host app before the file's tests and stops it after them; returns a
 * function giving its base URL (known once `before` has run).
 */
export function useHostAuth() {
  let app;
  let appUrl;
  before(async () => {
    const bin = process.env.CHAT_HOST_AUTH_BIN;
    if (!bin) throw new Error('CHAT_HOST_AUTH_BIN is not set: run the tests through e2e/run.sh');
    app = spawn(bin, ['--addr', '127.0.0.1:0'], {
      env: { ...process.env, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    app.stderr.on('data', (d) => {
      output += d;
    });
    appUrl = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`host_auth did not start:\n${output}`)), 30000);
      app.stdout.on('data', (d) => {
        output += d;
        const m = /^listening on (http:\/\/\S+)$/m.exec(output);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      app.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`host_auth exited with ${code}:\n${output}`));
      });
    });
  });
  after(async () => {
    if (app && app.exitCode === null && app.signalCode === null) {
      const exited = once(app, 'exit');
      app.kill('SIGINT');
      const timer = setTimeout(() => app.kill('SIGKILL'), 20000);
      await exited;
      clearTimeout(timer);
    }
  });
  return () => appUrl;
}

/** Signs in to the host app at `appUrl` as `user` and opens its chat at /chat (no trailing slash). */
export async function signIn(browser, appUrl, user) {
  const u = await openUser(browser, `${appUrl}/`);
  await u.page.getByTestId('app-user-name').fill(user);
  await u.page.getByTestId('app-password').fill(user);
  await u.page.getByTestId('app-login').click();
  // The app sends us to /chat, which the chat redirects to /chat/.
  await poll(() => u.page.url(), (url) => url === `${appUrl}/chat/`, { message: 'the chat page at /chat/' });
  await u.connected();
  return u;
}
