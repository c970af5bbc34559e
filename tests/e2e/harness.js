// The e2e harness: starts the real binaries (`mock-upstream`, `poolgate serve`) and a tiny upstream
// that always answers 429, on loopback port 0 (each process reports the port it bound, so no port
// is picked in advance and raced for), and launches Debian's headless Chromium through
// playwright-core. Everything it starts it also stops.

import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile, mkdir, readFile, copyFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TARGET = path.resolve(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'));
export const BIN_DIR = path.join(TARGET, 'debug');
export const SCREENSHOT_DIR = path.join(TARGET, 'dashboard-screenshots');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const ADMIN_TOKEN = 'pg-e2e-admin-token-0123456789abcdef';
export const MODEL = 'gpt-4o-mini';
export const LIMITED_MODEL = 'rate-limited-model';

const STARTUP_TIMEOUT_MS = 15000;

function binary(name) {
  const file = path.join(BIN_DIR, name);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: build it with \`cargo build -p poolgate -p mock-upstream\` (tests/e2e/run.sh does)`);
  }
  return file;
}

/** Spawns a process, keeping the tail of its output for error messages. */
function start(name, args, env = {}) {
  const child = spawn(binary(name), args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  const keep = (chunk) => {
    log.push(chunk.toString());
    if (log.length > 200) log.shift();
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.logTail = () => log.join('').split('\n').slice(-40).join('\n');
  child.allOutput = () => log.join('');
  return child;
}

/**
 * Waits until the child's output shows the address it bound (`pattern` captures the port) and
 * returns that port; fails with the output's tail if it exits or says nothing in time.
 */
async function boundPort(child, pattern, name) {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    // Colour codes (if any) stripped so the pattern sees plain `addr=127.0.0.1:PORT`.
    const match = child.allOutput().replace(/\x1b\[[0-9;]*m/g, '').match(pattern);
    if (match) return Number(match[1]);
    if (child.exitCode !== null) {
      throw new Error(`${name} exited early (code ${child.exitCode}):\n${child.logTail()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`${name} did not report its address within ${STARTUP_TIMEOUT_MS} ms:\n${child.logTail()}`);
}

async function stopProcess(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

async function waitForHttp(url, child, name) {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`${name} exited early (code ${child.exitCode}):\n${child.logTail()}`);
    }
    try {
      const response = await fetch(url);
      if (response.status < 500) return;
    } catch {
      // not up yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${name} did not answer ${url} within ${STARTUP_TIMEOUT_MS} ms:\n${child.logTail()}`);
}

/** An upstream that answers every request with 429 and `retry-after: 60`. */
async function startRateLimitedUpstream() {
  let hits = 0;
  const server = createServer((request, response) => {
    hits += 1;
    request.resume();
    response.writeHead(429, { 'content-type': 'application/json', 'retry-after': '60' });
    response.end(JSON.stringify({ error: { message: 'rate limited (e2e)', type: 'rate_limit_error', param: null, code: 'rate_limit_exceeded' } }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${server.address().port}/v1`, hits: () => hits };
}

/**
 * Starts mock-upstream, the 429 upstream and poolgate. Returns the URLs and a `stop()`.
 */
export async function startStack() {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'poolgate-e2e-'));
  const started = { dataDir };
  try {
    // A little latency so the latency charts have something to show.
    started.mock = start('mock-upstream', ['--listen', '127.0.0.1:0', '--latency-ms', '15', '--stream-chunks', '4']);
    const mockPort = await boundPort(started.mock, /listening on 127\.0\.0\.1:(\d+)/, 'mock-upstream');
    await waitForHttp(`http://127.0.0.1:${mockPort}/v1/models`, started.mock, 'mock-upstream');

    started.limited = await startRateLimitedUpstream();

    const configPath = path.join(dataDir, 'poolgate.toml');
    await writeFile(configPath, [
      '[cooldown]',
      'base_seconds = 1',
      'max_seconds = 120',
      'jitter = 0.0',
      'error_seconds = 1',
      '',
      '[usage]',
      'flush_interval_ms = 100',
      '',
    ].join('\n'));
    started.poolgate = start('poolgate', ['serve', '--listen', '127.0.0.1:0', '--data-dir', path.join(dataDir, 'data'), '--config', configPath], {
      POOLGATE_ADMIN_TOKEN: ADMIN_TOKEN,
      // Warnings only, but the start-up line that says which port it bound.
      RUST_LOG: 'poolgate=warn,poolgate::server=info',
      NO_COLOR: '1',
    });
    const port = await boundPort(started.poolgate, /poolgate listening addr=127\.0\.0\.1:(\d+)/, 'poolgate');
    const base = `http://127.0.0.1:${port}`;
    await waitForHttp(`${base}/healthz`, started.poolgate, 'poolgate');

    return {
      base,
      mockUrl: `http://127.0.0.1:${mockPort}/v1`,
      limitedUrl: started.limited.url,
      limitedHits: started.limited.hits,
      poolgateLog: () => started.poolgate.logTail(),
      stop: () => stopStack(started),
    };
  } catch (error) {
    await stopStack(started);
    throw error;
  }
}

async function stopStack(started) {
  await stopProcess(started.poolgate);
  await stopProcess(started.mock);
  if (started.limited) {
    started.limited.server.closeAllConnections();
    started.limited.server.close();
  }
  await rm(started.dataDir, { recursive: true, force: true });
}

/** The admin API, straight from Node. */
export async function admin(base, method, route, body) {
  const response = await fetch(`${base}/admin/api${route}`, {
    method,
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** One proxied chat completion; returns the HTTP status. */
export async function chat(base, { key = ADMIN_TOKEN, model = MODEL, stream = false } = {}) {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, stream, messages: [{ role: 'user', content: 'Hello from the dashboard e2e test' }] }),
  });
  await response.arrayBuffer();
  return response.status;
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does)`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic', '--disable-dev-shm-usage'],
  });
}

/**
 * Watches a page for trouble: console errors, uncaught exceptions, CSP violations and dialogs
 * (an `alert()` would mean injected script ran). `problems()` lists what is not expected.
 */
export async function watch(page) {
  const seen = { console: [], pageErrors: [], csp: [], dialogs: [] };
  // Failed admin calls the tests cause on purpose (wrong token, validation errors) are logged by
  // Chromium as "Failed to load resource"; every other console error counts.
  const expected = /^Failed to load resource: the server responded with a status of (400|401|409) /;
  page.on('console', (message) => {
    if (message.type() === 'error' && !expected.test(message.text())) seen.console.push(message.text());
  });
  page.on('pageerror', (error) => seen.pageErrors.push(String(error)));
  page.on('dialog', async (dialog) => {
    seen.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss();
  });
  await page.exposeBinding('__reportCsp', (_source, text) => seen.csp.push(text));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      window.__reportCsp(`${event.violatedDirective} blocked ${event.blockedURI || 'inline'} (${event.sourceFile}:${event.lineNumber})`);
    });
  });
  return {
    seen,
    problems: () => [
      ...seen.console.map((t) => `console: ${t}`),
      ...seen.pageErrors.map((t) => `page error: ${t}`),
      ...seen.csp.map((t) => `CSP: ${t}`),
      ...seen.dialogs.map((t) => `dialog: ${t}`),
    ],
  };
}

/** Saves a full-page screenshot under target/dashboard-screenshots/. */
export async function screenshot(page, name) {
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, `${name}.png`);
  // Let charts and transitions settle; passing toasts are not part of the page.
  await page.evaluate(() => document.querySelectorAll('.toast').forEach((t) => t.remove()));
  await page.waitForTimeout(250);
  await page.screenshot({ path: file, fullPage: true, animations: 'disabled', caret: 'hide' });
  return file;
}

export async function copyToDocs(name, docName) {
  await mkdir(path.join(REPO, 'docs/img'), { recursive: true });
  await copyFile(path.join(SCREENSHOT_DIR, `${name}.png`), path.join(REPO, 'docs/img', docName));
}

export { readFile };
