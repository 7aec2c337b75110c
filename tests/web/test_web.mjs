// Browser end-to-end test of the web chat page: Debian's chromium driven
// by playwright-core, against an imchatd this test starts itself
// (--dev-login, a free loopback port, its own data directory).
//
//   IMCHATD=build/hosts/imchatd IMC_WEB_DIR=web \
//   IMC_SCREENSHOTS=build/web-screenshots node tests/web/test_web.mjs
//
// Scenarios: alice -> bob shows "delivered"; bob closes his page, alice
// sends two, bob comes back and sees them once and in order; a group of
// three (membership set with the admin API); imchatd restarted in the
// middle of the group conversation: nothing lost, nothing doubled. Every
// wait is for a condition (a selector, a log line), never a fixed sleep.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const IMCHATD = process.env.IMCHATD;
const WEB_DIR = process.env.IMC_WEB_DIR;
const SHOTS = process.env.IMC_SCREENSHOTS || path.resolve('web-screenshots');
const CHROMIUM = process.env.IMC_CHROMIUM || '/usr/bin/chromium';
const ADMIN = 'web-test-admin-token';
const WAIT = 20000;
if (!IMCHATD || !WEB_DIR) {
  console.error('set IMCHATD (the imchatd binary) and IMC_WEB_DIR (web/ with node_modules)');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(WEB_DIR), 'package.json'));
const { chromium } = require('playwright-core');

fs.mkdirSync(SHOTS, { recursive: true });
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'imchat-web-'));

// ---- imchatd -----------------------------------------------------------------

class Server {
  constructor(listen) {
    this.listen = listen;
    this.log = '';
    this.proc = null;
  }

  start() {
    this.log = '';
    this.proc = spawn(IMCHATD, [
      '--listen', this.listen, '--data-dir', dataDir, '--dev-login',
      '--admin-token', ADMIN, '--ack-timeout', '3',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, sig) => resolve({ code, sig })));
    for (const s of [this.proc.stdout, this.proc.stderr]) {
      s.setEncoding('utf8');
      s.on('data', (d) => { this.log += d; });
    }
    return this.waitLog(/listening on (127\.0\.0\.1:\d+)/).then(async (m) => {
      this.listen = m[1];
      await this.waitLog(/web page: open http:/);
      return this;
    }).catch((e) => {
      // Never leave a half-started server behind.
      if (this.proc.exitCode === null) this.proc.kill('SIGKILL');
      throw e;
    });
  }

  waitLog(re, ms = WAIT) {
    return new Promise((resolve, reject) => {
      const t0 = Date.now();
      const poll = () => {
        const m = this.log.match(re);
        if (m) return resolve(m);
        if (this.proc.exitCode !== null) return reject(new Error(`imchatd exited:\n${this.log}`));
        if (Date.now() - t0 > ms) return reject(new Error(`no ${re} in the log:\n${this.log}`));
        setTimeout(poll, 20);
      };
      poll();
    });
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGTERM');
    const { code } = await this.exited;
    if (code !== 0) throw new Error(`imchatd exited with ${code}:\n${this.log}`);
    if (/AddressSanitizer|LeakSanitizer|runtime error:/.test(this.log)) {
      throw new Error(`imchatd printed a sanitizer report:\n${this.log}`);
    }
  }

  get base() { return `http://${this.listen}`; }
}

async function admin(server, method, p) {
  const r = await fetch(`${server.base}${p}`, { method, headers: { Authorization: `Bearer ${ADMIN}` } });
  if (!r.ok) throw new Error(`${method} ${p}: HTTP ${r.status} ${await r.text()}`);
}

// ---- pages -----------------------------------------------------------------

const problems = [];
const users = [];
let theServer = null;

// What each page shows, and the server's log: for a failure's report.
async function report() {
  for (const u of users) {
    if (!u.page || u.page.isClosed()) continue;
    const html = await u.page.evaluate(() => [
      document.getElementById('conn-state').outerHTML,
      document.getElementById('conv-list').outerHTML,
      document.getElementById('messages').outerHTML,
      JSON.stringify(localStorage),
    ].join('\n')).catch((e) => String(e));
    console.error(`--- ${u.name}:\n${html}`);
    await u.page.screenshot({ path: path.join(SHOTS, `failure-${u.name}.png`) }).catch(() => {});
  }
  if (theServer) console.error(`--- imchatd log:\n${theServer.log.split('\n').slice(-60).join('\n')}`);
}

async function newUser(browser, name, server, viewport = { width: 1100, height: 720 }) {
  const ctx = await browser.newContext({ viewport });
  const u = { name, ctx, page: null };
  users.push(u);
  await openPage(u, server);
  return u;
}

// Opens the page and signs in; with refuseSocket the page's WebSocket
// connections are refused (it stays offline).
async function openPage(u, server, { refuseSocket = false } = {}) {
  const page = await u.ctx.newPage();
  if (refuseSocket) await page.routeWebSocket(/\/ws/, (ws) => ws.close());
  page.on('console', (msg) => {
    const t = msg.text();
    // The socket failing while imchatd restarts is expected; nothing else is.
    if (msg.type() === 'error' && !/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|Failed to load resource/.test(t)) {
      problems.push(`${u.name}: console: ${t}`);
    }
  });
  page.on('pageerror', (e) => problems.push(`${u.name}: page error: ${e.message}`));
  await page.goto(`${server.base}/`);
  await page.fill('#dev-user', u.name);
  await page.press('#dev-user', 'Enter');
  u.page = page;
  if (refuseSocket) {
    await page.waitForSelector('#chat:not([hidden])', { timeout: WAIT });
    return page;
  }
  await online(page);
  return page;
}

const online = (page) => page.waitForSelector('#conn-state[data-state="online"]', { timeout: WAIT });

async function openConv(u, target) {
  await u.page.fill('#open-input', target);
  await u.page.press('#open-input', 'Enter');
  await u.page.waitForSelector('#composer-input:not([disabled])');
}

async function send(u, text) {
  await u.page.fill('#composer-input', text);
  await u.page.press('#composer-input', 'Enter');
  return u.page.waitForSelector(`#messages .msg.mine:has(.body:text-is("${text}"))`, { timeout: WAIT });
}

async function waitState(u, text, state) {
  await u.page.waitForSelector(`#messages .msg.mine[data-state="${state}"]:has(.body:text-is("${text}"))`, { timeout: WAIT });
}

// The bodies shown in the open conversation, in order.
const bodies = (u) => u.page.$$eval('#messages .msg .body', (els) => els.map((e) => e.textContent));

async function waitBodies(u, expected) {
  try {
    await u.page.waitForFunction((exp) => {
      const got = [...document.querySelectorAll('#messages .msg .body')].map((e) => e.textContent);
      return got.length === exp.length && got.every((b, i) => b === exp[i]);
    }, expected, { timeout: WAIT });
  } catch (e) {
    throw new Error(`${u.name} shows ${JSON.stringify(await bodies(u))}, expected ${JSON.stringify(expected)}`);
  }
  const ids = await u.page.$$eval('#messages .msg', (els) => els.map((e) => e.dataset.msgId));
  if (new Set(ids).size !== ids.length || ids.some((x) => !x)) throw new Error(`${u.name}: message ids ${ids}`);
}

async function shot(u, name) {
  const file = path.join(SHOTS, `${name}.png`);
  await u.page.screenshot({ path: file });
  console.log(`screenshot: ${file}`);
}

function step(msg) { console.log(`# ${msg}`); }

// ---- the scenarios -----------------------------------------------------------

async function main() {
  const server = await new Server('127.0.0.1:0').start();
  theServer = server;
  step(`imchatd on ${server.base}`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  try {
    // The page's own headers.
    const r = await fetch(`${server.base}/`);
    const csp = r.headers.get('content-security-policy') || '';
    if (!csp.includes("script-src 'self'") || r.headers.get('cache-control') !== 'no-cache') {
      throw new Error(`index.html headers: ${[...r.headers].join('; ')}`);
    }

    step('a token in the query signs in and leaves the address bar');
    const login = await fetch(`${server.base}/dev/login`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user: 'dave' }),
    });
    const { token } = await login.json();
    const daveCtx = await browser.newContext();
    const dave = await daveCtx.newPage();
    await dave.goto(`${server.base}/?token=${encodeURIComponent(token)}`);
    await online(dave);
    if (dave.url().includes('token=')) throw new Error(`the token stayed in the URL: ${dave.url()}`);
    if (!(await dave.textContent('#me')).includes('dave')) throw new Error('dave is not shown as signed in');
    // A token the server refuses (bad signature): back to the sign-in form.
    const forged = `${token.slice(0, token.lastIndexOf('.'))}.AAAA`;
    await dave.goto(`${server.base}/?token=${encodeURIComponent(forged)}`);
    await dave.waitForSelector('#signin:not([hidden]) #signin-error:text-matches("refused the token")', { timeout: WAIT });
    await daveCtx.close();

    step('alice -> bob: delivered');
    const alice = await newUser(browser, 'alice', server);
    const bob = await newUser(browser, 'bob', server);
    await openConv(alice, 'bob');
    await send(alice, 'Hello Bob!');
    await waitState(alice, 'Hello Bob!', 'delivered');
    await bob.page.waitForSelector('[data-conv="p:alice:bob"] .unread[data-unread="1"]', { timeout: WAIT });
    // Keyboard only: Tab from the "open" field to the conversation, Enter
    // opens it (and puts the focus in the message field), type, Enter.
    await bob.page.focus('#open-input');
    for (let i = 0; i < 5; i++) {
      await bob.page.keyboard.press('Tab');
      if (await bob.page.evaluate(() => document.activeElement?.dataset?.conv) === 'p:alice:bob') break;
    }
    await bob.page.keyboard.press('Enter');
    await waitBodies(bob, ['Hello Bob!']);
    await bob.page.waitForSelector('#composer-input:focus');
    await bob.page.keyboard.type('Hi Alice, how are you?');
    await bob.page.keyboard.press('Enter');
    await waitState(bob, 'Hi Alice, how are you?', 'delivered');
    await waitBodies(alice, ['Hello Bob!', 'Hi Alice, how are you?']);

    step('bob closes his page; alice sends two; bob comes back');
    await bob.page.close();
    await send(alice, 'Are you there?');
    await send(alice, 'Call me when you are back.');
    await waitState(alice, 'Are you there?', 'stored');
    await waitState(alice, 'Call me when you are back.', 'stored');
    await openPage(bob, server);
    await bob.page.waitForSelector('[data-conv="p:alice:bob"] .unread[data-unread="2"]', { timeout: WAIT });
    await bob.page.click('[data-conv="p:alice:bob"]');
    await waitBodies(bob, ['Hello Bob!', 'Hi Alice, how are you?', 'Are you there?', 'Call me when you are back.']);
    step('a send queued while the socket is refused survives a new page');
    await alice.page.close();
    await openPage(alice, server, { refuseSocket: true });
    await alice.page.click('[data-conv="p:alice:bob"]');
    await send(alice, 'Written while offline');
    await waitState(alice, 'Written while offline', 'sending');
    await alice.page.close();
    await openPage(alice, server);
    await alice.page.click('[data-conv="p:alice:bob"]');
    await waitState(alice, 'Written while offline', 'delivered');
    const oneToOne = ['Hello Bob!', 'Hi Alice, how are you?', 'Are you there?', 'Call me when you are back.', 'Written while offline'];
    await waitBodies(bob, oneToOne);
    await waitBodies(alice, oneToOne);
    await shot(alice, 'alice-1to1');
    await shot(bob, 'bob-1to1');

    step('a group of three');
    for (const m of ['alice', 'bob', 'carol']) await admin(server, 'PUT', `/v1/groups/team/members/${m}`);
    const carol = await newUser(browser, 'carol', server, { width: 390, height: 760 });
    for (const u of [alice, bob, carol]) await openConv(u, '#team');
    await send(alice, 'Team meeting at 10?');
    await waitState(alice, 'Team meeting at 10?', 'stored');
    await waitBodies(bob, ['Team meeting at 10?']);
    await waitBodies(carol, ['Team meeting at 10?']);
    await send(bob, 'Works for me.');
    await send(carol, 'Same here.');
    const group = ['Team meeting at 10?', 'Works for me.', 'Same here.'];
    for (const u of [alice, bob, carol]) await waitBodies(u, group);
    await shot(carol, 'carol-group-phone');

    step('imchatd restarts in the middle of the conversation');
    await server.stop();
    for (const u of [alice, bob, carol]) {
      await u.page.waitForSelector('#conn-state:not([data-state="online"])', { timeout: WAIT });
    }
    await send(alice, 'Sent while the server was down');
    await waitState(alice, 'Sent while the server was down', 'sending');
    await shot(alice, 'alice-offline');
    await server.start();
    for (const u of [alice, bob, carol]) await online(u.page);
    await waitState(alice, 'Sent while the server was down', 'stored');
    await send(carol, 'Back again.');
    const after = [...group, 'Sent while the server was down', 'Back again.'];
    for (const u of [alice, bob, carol]) await waitBodies(u, after);

    step('a reload resends nothing twice and loses nothing');
    // The token stays in the tab's sessionStorage: the reload signs in.
    await bob.page.reload();
    await online(bob.page);
    await bob.page.click('[data-conv="g:team"]');
    await waitBodies(bob, after);
    await shot(alice, 'alice-group');

    if (problems.length) throw new Error(`console errors:\n${problems.join('\n')}`);
    step('ok');
  } catch (e) {
    await report();
    throw e;
  } finally {
    await browser.close();
    await server.stop().catch((e) => console.error(e.message));
  }
}

main().then(() => {
  fs.rmSync(dataDir, { recursive: true, force: true });
  process.exit(0);
}, (e) => {
  console.error(`FAIL: ${e.stack || e}`);
  console.error(`(data directory kept: ${dataDir})`);
  process.exit(1);
});
