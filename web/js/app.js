// The dashboard's entry point: the login screen, the shell (navigation, live indicator) and a
// hash router that mounts one page at a time. Pages get a context whose timers stop when the
// page is left.

import { h, icon, replace, button } from './dom.js';
import { api, ApiError, getToken, setToken, clearToken, onUnauthorized } from './api.js';
import { ago } from './format.js';
import { field, errorBanner } from './ui.js';
import * as overview from './pages/overview.js';
import * as providers from './pages/providers.js';
import * as usage from './pages/usage.js';
import * as keys from './pages/keys.js';
import * as routing from './pages/routing.js';
import * as prices from './pages/prices.js';

const PAGES = [
  { path: 'overview', label: 'Overview', icon: 'overview', page: overview },
  { path: 'providers', label: 'Providers', icon: 'providers', page: providers },
  { path: 'routing', label: 'Routing', icon: 'routing', page: routing },
  { path: 'usage', label: 'Usage', icon: 'usage', page: usage },
  { path: 'keys', label: 'Keys', icon: 'keys', page: keys },
  { path: 'prices', label: 'Prices', icon: 'prices', page: prices },
];

const app = document.getElementById('app');
let current = null; // {ctx, path}
let shell = null; // {main, links, status}
let statusTimer = null;

// === login ===

function showLogin(message) {
  teardown();
  shell = null;
  document.title = 'Sign in · poolgate';
  const input = h('input', {
    type: 'password', name: 'token', autocomplete: 'off', spellcheck: false, required: true,
    placeholder: 'pga-…', dataset: { testid: 'token' },
  });
  const tokenField = field('Admin token', input, {
    hint: 'The value of POOLGATE_ADMIN_TOKEN, or the file admin-token in the data directory.',
  });
  const alert = h('div', { class: 'login-alert', dataset: { testid: 'login-error' } });
  if (message) alert.append(errorBanner(message));
  const submit = button('Sign in', { kind: 'primary', type: 'submit', testid: 'login' });
  submit.classList.add('btn-block');
  const form = h('form', { class: 'login-card', novalidate: true },
    h('div', { class: 'brand brand-lg' }, h('img', { src: 'img/favicon.svg', alt: '', width: 36, height: 36 }), h('span', { text: 'poolgate' })),
    h('h1', { text: 'Sign in' }),
    h('p', { class: 'muted', text: 'The dashboard uses the admin API with your admin token. It is kept in this tab only (session storage) and sent with every call.' }),
    alert,
    tokenField.wrap,
    submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    alert.replaceChildren();
    tokenField.setError('');
    if (!token) {
      tokenField.setError('Enter the admin token.');
      input.focus();
      return;
    }
    submit.disabled = true;
    try {
      await api('GET', '/pools/stats', { token });
      setToken(token);
      start();
    } catch (error) {
      const text = error instanceof ApiError && error.status === 401
        ? 'That admin token was refused. Check POOLGATE_ADMIN_TOKEN or the admin-token file in the data directory.'
        : error.message;
      alert.append(errorBanner(text));
      input.select();
    } finally {
      submit.disabled = false;
    }
  });
  replace(app, h('main', { class: 'login' }, form));
  input.focus();
}

onUnauthorized(() => {
  if (!getToken()) return;
  clearToken();
  showLogin('The admin token was refused (it may have changed). Sign in again.');
});

// === shell ===

function buildShell() {
  const links = new Map();
  const nav = h('nav', { class: 'nav', attrs: { 'aria-label': 'Main' } }, PAGES.map((p) => {
    const link = h('a', { href: `#/${p.path}`, class: 'nav-link', dataset: { nav: p.path } }, icon(p.icon), h('span', { text: p.label }));
    links.set(p.path, link);
    return link;
  }));
  const statusText = h('span', { class: 'live-text', text: 'Connecting…' });
  const status = h('div', { class: 'live', dataset: { testid: 'live' } }, h('span', { class: 'live-dot' }), statusText);
  const logout = button('Sign out', {
    kind: 'ghost', iconName: 'logout', size: 'sm', testid: 'logout',
    onclick: () => { clearToken(); showLogin(); },
  });
  const main = h('main', { class: 'main', id: 'main', tabIndex: -1 });
  replace(app, h('div', { class: 'shell' },
    h('aside', { class: 'sidebar' },
      h('a', { class: 'brand', href: '#/overview' }, h('img', { src: 'img/favicon.svg', alt: '', width: 28, height: 28 }), h('span', { text: 'poolgate' })),
      nav,
      h('div', { class: 'sidebar-foot' }, status, logout)),
    main));
  shell = { main, links, status, statusText, updatedAt: null, failed: null };
  if (!statusTimer) statusTimer = setInterval(paintStatus, 1000);
}

function paintStatus() {
  if (!shell) return;
  const { status, statusText, updatedAt, failed } = shell;
  status.classList.toggle('is-down', Boolean(failed));
  if (failed) statusText.textContent = 'Offline — retrying';
  else if (updatedAt) statusText.textContent = `Live · updated ${ago(updatedAt)}`;
}

// === router ===

function teardown() {
  if (current) {
    current.ctx.stop();
    current = null;
  }
}

function route() {
  if (!getToken()) {
    showLogin();
    return;
  }
  if (!shell) buildShell();
  const path = (window.location.hash.replace(/^#\/?/, '').split(/[/?]/)[0]) || 'overview';
  const entry = PAGES.find((p) => p.path === path);
  if (!entry) {
    window.location.replace('#/overview');
    return;
  }
  teardown();
  // Dialogs belong to the page being left.
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  for (const [name, link] of shell.links) {
    link.classList.toggle('active', name === entry.path);
    if (name === entry.path) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${entry.label} · poolgate`;
  const root = h('div', { class: 'page', dataset: { page: entry.path } });
  replace(shell.main, root);
  const ctx = makeContext(root);
  current = { ctx, path: entry.path };
  Promise.resolve(entry.page.mount(ctx)).catch((error) => {
    if (ctx.alive()) {
      root.append(errorBanner(error.message));
      console.warn(error);
    }
  });
}

function makeContext(root) {
  const timers = new Set();
  const cleanups = new Set();
  let alive = true;
  return {
    root,
    alive: () => alive,
    /** Runs fn now and then every `ms` while the page is shown and the tab visible. */
    every(ms, fn, { now = true } = {}) {
      const tick = () => {
        if (alive && document.visibilityState === 'visible') fn();
      };
      if (now) tick();
      timers.add(setInterval(tick, ms));
    },
    onStop(fn) {
      cleanups.add(fn);
    },
    /** Records the outcome of a background refresh for the live indicator. */
    refreshed(error) {
      if (!shell) return;
      if (error && !(error instanceof ApiError && error.status >= 400 && error.status < 500)) {
        shell.failed = error;
      } else {
        shell.failed = null;
        shell.updatedAt = Date.now();
      }
      paintStatus();
    },
    stop() {
      alive = false;
      for (const t of timers) clearInterval(t);
      for (const fn of cleanups) fn();
    },
  };
}

function start() {
  shell = null;
  if (!window.location.hash) window.location.replace('#/overview');
  route();
}

window.addEventListener('hashchange', route);
start();
