// Cluster mode: two example servers on one real redis-server. A person on the page of
// the first server and the real chat-cli on the second are in one room: each sees the
// other's messages, in one order (the CLI's `tail` prints what the page shows), and the
// page lists a user connected to the other server.

import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, describe, test } from 'node:test';
import {
  expectIncludes,
  expectTexts,
  freePort,
  openBot,
  openUser,
  serverBinary,
  startServer,
  tempDir,
  texts,
  unique,
  useBrowser,
} from '../lib/harness.mjs';

const browserOf = useBrowser();
const run = promisify(execFile);

/** The chat-cli binary next to the example server (same target dir and profile). */
function cliBinary() {
  const bin = path.join(path.dirname(serverBinary()), '..', 'chat-cli');
  if (!existsSync(bin)) throw new Error(`${bin} missing: e2e/run.sh builds it`);
  return bin;
}

/** A redis-server on a free loopback port, data in a temp dir; killed by its PID. */
async function startRedis() {
  const port = await freePort();
  const dir = tempDir();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir.dir], {
    stdio: 'ignore',
  });
  const deadline = Date.now() + 10000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.end();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error('redis-server did not start (is it installed?)');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}/`,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGKILL');
        await once(proc, 'exit');
      }
      dir.remove();
    },
  };
}

/** Runs chat-cli against `server` as `name`; its stdout. */
async function cli(server, name, args) {
  const state = tempDir();
  try {
    const wsUrl = new URL('ws', server.url);
    wsUrl.protocol = 'ws:';
    const env = { ...process.env, CHAT_URL: String(wsUrl), CHAT_NAME: name, XDG_STATE_HOME: state.dir };
    delete env.CHAT_TOKEN;
    const { stdout } = await run(cliBinary(), args, { env, timeout: 30000 });
    return stdout;
  } finally {
    state.remove();
  }
}

describe('cluster mode', () => {
  let redis;
  after(async () => redis?.stop());

  test('the page on one server and chat-cli on another share one room, in one order', async () => {
    redis = await startRedis();
    const env = { CHAT_REDIS: redis.url };
    const a = await startServer({ env });
    const b = await startServer({ env });
    const room = unique('cluster');
    const aliceName = unique('Alice');

    const alice = await openUser(browserOf(), a.url);
    await alice.login(aliceName, room);
    // A user connected to the other server is listed on the page.
    const bobName = unique('Bob');
    const bob = await openBot(b.url, bobName, { rooms: [room] });
    await expectIncludes(alice.members(), bobName, 'the other server\'s user listed');

    // chat-cli posts through the second server; the page on the first shows it.
    const cliName = unique('cli');
    const printed = await cli(b, cliName, ['send', '--room', room, 'hello from the cli on b']);
    assert.match(printed.trim(), new RegExp(`^${room}#1$`), printed);
    await alice.waitForBody('hello from the cli on b');
    await expectTexts(alice.message('hello from the cli on b').getByTestId('author'), [cliName]);

    // The page posts through the first server, the bot through the second.
    await alice.say('hello from the page on a');
    await alice.waitForBody('hello from the page on a');
    await bob.send(room, 'hello from a bot on b');
    await alice.waitForBody('hello from a bot on b');

    // chat-cli on the second server prints the history the page shows, in its order.
    const tail = await cli(b, unique('reader'), ['tail', '--room', room, '--history', '10', '--count', '3', '--json']);
    const lines = tail.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((m) => m.seq), [1, 2, 3], tail);
    assert.deepEqual(lines.map((m) => m.body), await texts(alice.bodies()), 'one order on both servers');
    assert.deepEqual(lines.map((m) => m.user), [cliName, aliceName, bobName]);

    await bob.close();
    await alice.check();
    await alice.close();
    await a.close();
    await b.close();
  });
});
