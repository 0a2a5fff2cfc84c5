// Shared helpers for the browser tests: the browser, chat servers, users (a page in its own
// browser context), bots (plain WebSocket clients speaking the protocol) and polling
// assertions. Tests wait for specific states with timeouts; nothing sleeps and hopes.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';
import { after, before } from 'node:test';
import WebSocket from 'ws';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** How long any single expected state may take to appear. Generous: CI machines are slow. */
export const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS || 15000);

let counter = 0;
/** A name unique to this run (names and rooms are shared on the server). */
export function unique(prefix) {
  counter += 1;
  return `${prefix}${process.pid % 1000}${counter}${Math.floor(Math.random() * 1e4)}`.slice(0, 30);
}

// ---------------------------------------------------------------------------------------
// Polling assertions

/**
 * Polls `get` until `ok(value)` holds; throws with the last value after the timeout.
 * Used for everything a page shows, since it changes asynchronously.
 */
export async function poll(get, ok, { timeout = TIMEOUT, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await get();
      lastError = undefined;
      if (ok(last)) return last;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      const detail = lastError ? `error: ${lastError.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${message}; ${detail}`);
    }
    await sleep(50);
  }
}

export const texts = (locator) => locator.evaluateAll((els) => els.map((e) => e.textContent));

export async function expectTexts(locator, expected, message) {
  return poll(
    () => texts(locator),
    (v) => JSON.stringify(v) === JSON.stringify(expected),
    { message: message ?? `texts ${JSON.stringify(expected)}` },
  );
}

export async function expectIncludes(locator, item, message) {
  return poll(() => texts(locator), (v) => v.includes(item), { message: message ?? `a text ${JSON.stringify(item)}` });
}

export async function expectExcludes(locator, item, message) {
  return poll(() => texts(locator), (v) => !v.includes(item), { message: message ?? `no text ${JSON.stringify(item)}` });
}

export async function expectCount(locator, n, message) {
  return poll(() => locator.count(), (v) => v === n, { message: message ?? `${n} elements` });
}

// ---------------------------------------------------------------------------------------
// Chat servers

export function serverBinary() {
  const bin = process.env.CHAT_SERVER_BIN;
  if (!bin) throw new Error('CHAT_SERVER_BIN is not set: run the tests through e2e/run.sh');
  return bin;
}

/** The server e2e/run.sh started for all tests. */
export function sharedServerUrl() {
  const url = process.env.CHAT_URL;
  if (!url) throw new Error('CHAT_URL is not set: run the tests through e2e/run.sh');
  return url.endsWith('/') ? url : `${url}/`;
}

export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

/**
 * Starts a private chat server (for tests that restart it). `db` is passed as CHAT_DB:
 * a file path for durable history (where the server supports it) or ':memory:'.
 */
export async function startServer({ port = 0, db = ':memory:', env = {} } = {}) {
  const proc = spawn(serverBinary(), ['--addr', `127.0.0.1:${port}`], {
    env: { ...process.env, CHAT_LOG: 'warn', CHAT_DB: db, NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stderr.on('data', (d) => {
    output += d;
  });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${output}`)), 30000);
    proc.stdout.on('data', (d) => {
      output += d;
      const m = /^listening on (http:\/\/\S+)$/m.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${output}`));
    });
  });
  const exited = once(proc, 'exit');
  const server = {
    url: `${url}/`,
    port: Number(new URL(url).port),
    pid: proc.pid,
    /** SIGTERM (graceful: goodbye to every client), then waits for the exit. */
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 20000);
      await exited;
      clearTimeout(timer);
    },
    close() {
      opened.delete(server);
      return server.stop();
    },
  };
  opened.add(server);
  return server;
}

export function tempDir() {
  const dir = mkdtempSync(path.join(tmpdir(), 'chat-e2e-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

// ---------------------------------------------------------------------------------------
// Browser and users

export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

// Everything a test file opened, closed by `useBrowser`'s after hook even when a test
// failed halfway (an open WebSocket would keep the test process alive).
const opened = new Set();

export async function closeAll() {
  for (const thing of [...opened].reverse()) {
    opened.delete(thing);
    await thing.close().catch(() => {});
  }
}

/**
 * Registers before/after hooks for a test file: one browser for the file; every user,
 * bot and server opened by the file is closed at the end. Returns a getter.
 */
export function useBrowser() {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await closeAll();
    await browser?.close();
  });
  return () => browser;
}

/** Installed in every page before its scripts: records what must never happen. */
function watchdog() {
  window.__csp = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`);
  });
}

/**
 * A person with their own browser context (own storage, so own identity), on the chat
 * page; with `clock: true`, on a fake clock the test can pause and move. `problems`
 * collects page errors, dialogs and CSP reports; `check()` asserts there were none and
 * that no injected payload ran.
 */
export async function openUser(browser, url, { viewport = { width: 1280, height: 800 }, clock = false, ...ctxOptions } = {}) {
  const context = await browser.newContext({ viewport, locale: 'en-GB', timezoneId: 'UTC', ...ctxOptions });
  await context.addInitScript(watchdog);
  // Fake timers and Date (Playwright's clock): time flows until the test pauses it.
  if (clock) await context.clock.install();
  const page = await context.newPage();
  const user = makeUser(context, page, url);
  opened.add(user);
  await page.goto(url);
  return user;
}

function makeUser(context, page, url) {
  const problems = [];
  const watch = (p) => {
    p.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    p.on('dialog', (d) => {
      problems.push(`dialog: ${d.type()} ${d.message()}`);
      d.dismiss().catch(() => {});
    });
    p.on('console', (m) => {
      if (/Content.Security.Policy/i.test(m.text())) problems.push(`console: ${m.text()}`);
    });
  };
  watch(page);
  const user = {
    context,
    page,
    url,
    problems,
    watch,
    id: (testid) => page.getByTestId(testid),
    /** Logs in from the login form and waits until the chat is connected. */
    async login(name, room) {
      await page.getByTestId('login-name').fill(name);
      if (room !== undefined) await page.getByTestId('login-room').fill(room);
      await page.getByTestId('login-submit').click();
      await user.connected();
      return user;
    },
    async connected() {
      await page.locator('[data-testid="connection"][data-state="connected"]').waitFor({ timeout: TIMEOUT });
    },
    /** Types a message in the composer and sends it with Enter. */
    async say(text) {
      const box = page.getByTestId('composer');
      await box.fill(text);
      await box.press('Enter');
    },
    /** The current room's timeline. */
    timeline: () => page.locator('#timeline-host [data-testid="timeline"]'),
    messages: () => page.locator('#timeline-host [data-testid="message"]:not(.pending)'),
    bodies: () => page.locator('#timeline-host [data-testid="message"]:not(.pending) [data-testid="body"]'),
    members: () => page.locator('[data-testid="member-list"] [data-testid="member-name"]'),
    roomButton: (name) => page.locator(`[data-testid="room-list"] [data-testid="room"][data-room="${name}"]`),
    /** The message whose body is exactly `body` (in the current room). */
    message(body) {
      return page
        .locator('#timeline-host [data-testid="message"]:not(.pending)')
        .filter({ has: page.getByTestId('body').getByText(body, { exact: true }) });
    },
    async waitForBody(body) {
      return expectIncludes(user.bodies(), body, `message ${JSON.stringify(body)} on ${url}`);
    },
    async selectRoom(name) {
      await page.locator(`[data-testid="room"][data-room="${name}"], [data-testid="dm"][data-room="${name}"]`).click();
      await poll(() => page.getByTestId('timeline').first().getAttribute('data-room'), (v) => v === name, {
        message: `room ${name} selected`,
      });
    },
    /** Asserts nothing bad happened on this user's pages. */
    async check() {
      for (const p of context.pages()) {
        const csp = await p.evaluate(() => window.__csp ?? []).catch(() => []);
        for (const c of csp) problems.push(`CSP violation: ${c}`);
        const flag = await p.evaluate(() => window.__xss).catch(() => undefined);
        if (flag !== undefined) problems.push(`injected script ran: window.__xss = ${JSON.stringify(flag)}`);
      }
      if (problems.length) throw new Error(`problems on the page:\n${problems.join('\n')}`);
    },
    async close() {
      opened.delete(user);
      await context.close();
    },
  };
  return user;
}

// ---------------------------------------------------------------------------------------
// Bots: protocol clients without a browser (no Origin header, like chat-cli).

export async function openBot(url, name, { rooms, token } = {}) {
  const wsUrl = new URL('ws', url);
  wsUrl.protocol = 'ws:';
  const ws = new WebSocket(wsUrl);
  const frames = [];
  const waiters = [];
  ws.on('message', (data) => {
    const f = JSON.parse(String(data));
    frames.push(f);
    for (const w of [...waiters]) {
      if (w.match(f)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(f);
      }
    }
  });
  const closed = new Promise((resolve) => ws.on('close', resolve));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  let nextId = 1;
  const bot = {
    ws,
    frames,
    name,
    /** Resolves with the first frame (already received or future) matching `match`. */
    next(match, { timeout = TIMEOUT, from = 0 } = {}) {
      const seen = frames.slice(from).find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) {
            waiters.splice(i, 1);
            reject(new Error(`bot ${name}: no matching frame in ${timeout} ms; got ${JSON.stringify(frames.slice(-5))}`));
          }
        }, timeout);
        const w = {
          match,
          resolve: (f) => {
            clearTimeout(timer);
            resolve(f);
          },
        };
        waiters.push(w);
      });
    },
    async request(frame) {
      const id = nextId++;
      const from = frames.length;
      ws.send(JSON.stringify({ ...frame, id }));
      return bot.next((f) => f.id === id, { from });
    },
    /** Sends a message and waits for its ack (retrying when rate limited). */
    async send(room, body, extra = {}) {
      for (;;) {
        const reply = await bot.request({ type: 'send', room, body, ...extra });
        if (reply.type === 'ack') return reply;
        if (reply.type === 'error' && reply.code === 'rate_limited') {
          const ms = Number(/(\d+)\s*ms/.exec(reply.message)?.[1] ?? 500);
          await sleep(ms + 20);
          continue;
        }
        throw new Error(`send failed: ${JSON.stringify(reply)}`);
      }
    },
    async join(room) {
      const reply = await bot.request({ type: 'join', room });
      if (reply.type !== 'joined') throw new Error(`join failed: ${JSON.stringify(reply)}`);
      return reply;
    },
    typing(room, active) {
      ws.send(JSON.stringify({ type: 'typing', room, active }));
    },
    async close() {
      opened.delete(bot);
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
      await closed;
    },
    closed,
  };
  const hello = { type: 'hello', version: 1, name };
  if (rooms) hello.rooms = rooms.map((r) => (typeof r === 'string' ? { room: r } : r));
  if (token) hello.token = token;
  opened.add(bot);
  const welcome = await bot.request(hello);
  if (welcome.type !== 'welcome') throw new Error(`hello as ${JSON.stringify(name)} failed: ${JSON.stringify(welcome)}`);
  bot.welcome = welcome;
  bot.user = welcome.user;
  return bot;
}

/** A WebSocket client sending the Origin header a page at `origin` would send. */
export async function tryUpgrade(url, origin) {
  const wsUrl = new URL('ws', url);
  wsUrl.protocol = 'ws:';
  return new Promise((resolve) => {
    const ws = new WebSocket(wsUrl, { origin });
    ws.on('open', () => {
      ws.close();
      resolve({ opened: true });
    });
    ws.on('unexpected-response', (_req, res) => {
      resolve({ opened: false, status: res.statusCode });
      res.resume();
    });
    ws.on('error', () => resolve({ opened: false, status: null }));
  });
}
