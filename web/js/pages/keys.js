// Keys: create client keys (the plaintext is shown once, with a copy button), list and revoke them.

import { h, replace, button, icon } from '../dom.js';
import { get, post, del, ApiError } from '../api.js';
import * as fmt from '../format.js';
import { pageHeader, card, emptyState, table, toast, chip, errorBanner, loading, confirmThen, field, textInput } from '../ui.js';

export async function mount(ctx) {
  const alerts = h('div', {});
  const listBody = h('div', {}, loading());
  const reveal = h('div', { dataset: { testid: 'new-key' } });

  const name = field('Name', textInput({ placeholder: 'my-app', maxLength: 128, dataset: { testid: 'key-name' } }), { hint: 'Who uses this key; for people.', name: 'name' });
  const rpm = field('RPM limit', textInput({ value: '0', inputMode: 'numeric' }), { hint: 'Requests per minute for this key; 0 = unlimited.', name: 'rpm_limit' });
  const parallel = field('Parallel requests', textInput({ value: '0', inputMode: 'numeric', dataset: { testid: 'key-parallel' } }), { hint: 'Requests in flight at once; past it, 429. 0 = unlimited.', name: 'max_parallel_requests' });
  const models = field('Allowed models', textInput({ placeholder: 'all models' }), { hint: 'Canonical names, separated by commas; empty = all.', name: 'allowed_models' });
  const banner = h('div', {});
  const submit = button('Create key', { kind: 'primary', iconName: 'plus', type: 'submit', testid: 'create-key' });
  const form = h('form', { class: 'form', novalidate: true, dataset: { testid: 'key-form' } },
    banner,
    h('div', { class: 'form-grid form-grid-keys' }, name.wrap, rpm.wrap, parallel.wrap, models.wrap),
    h('div', { class: 'form-actions' }, submit));

  ctx.root.append(
    pageHeader('Keys', 'Client keys for your applications. poolgate stores only a hash of each key.'),
    alerts,
    card('New client key', h('div', {}, form, reveal)),
    card('Client keys', listBody, { cls: 'card-flush', testid: 'keys' }),
  );

  async function refresh() {
    try {
      const keys = await get('/keys');
      if (!ctx.alive()) return;
      replace(alerts);
      renderList(listBody, keys, refresh);
      ctx.refreshed();
    } catch (error) {
      if (!ctx.alive()) return;
      replace(alerts, errorBanner(`Could not load keys: ${error.message}`));
      ctx.refreshed(error);
    }
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const fields = { name, rpm_limit: rpm, max_parallel_requests: parallel, allowed_models: models };
    Object.values(fields).forEach((f) => f.setError(''));
    replace(banner);
    const body = { name: name.input.value.trim() };
    for (const [key, f] of [['rpm_limit', rpm], ['max_parallel_requests', parallel]]) {
      const text = f.input.value.trim();
      if (text === '') continue;
      if (!/^-?\d+$/.test(text)) {
        f.setError('Enter a whole number.');
        return;
      }
      body[key] = Number(text);
    }
    const list = models.input.value.split(',').map((m) => m.trim()).filter(Boolean);
    if (list.length) body.allowed_models = list;
    submit.disabled = true;
    try {
      const created = await post('/keys', body);
      showCreated(reveal, created);
      form.reset();
      rpm.input.value = '0';
      parallel.input.value = '0';
      refresh();
    } catch (error) {
      const param = error instanceof ApiError && error.param ? error.param.replace(/\[\d+\]$/, '') : null;
      if (param && fields[param]) fields[param].setError(error.message);
      else replace(banner, errorBanner(error.message));
    } finally {
      submit.disabled = false;
    }
  });

  await refresh();
}

/** The new key, shown once. */
function showCreated(root, created) {
  const value = h('code', { class: 'secret', dataset: { testid: 'secret' }, text: created.key });
  const copy = button('Copy', {
    kind: 'primary', size: 'sm', iconName: 'copy', testid: 'copy-key',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(created.key);
        toast('Key copied to the clipboard.');
      } catch {
        const range = document.createRange();
        range.selectNodeContents(value);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        toast('Press Ctrl+C (⌘C) to copy the selected key.', 'info');
      }
    },
  });
  replace(root, h('div', { class: 'reveal', attrs: { role: 'status' } },
    h('div', { class: 'reveal-head' }, icon('keys'), h('strong', { text: `Key “${created.name}” created` })),
    h('p', { class: 'small', text: 'Copy it now: this is the only time it is shown. poolgate keeps only a hash, so a lost key cannot be recovered — revoke it and create a new one.' }),
    h('div', { class: 'secret-row' }, value, copy),
    h('p', { class: 'muted small', text: 'Use it as the API key of any OpenAI client, with this gateway’s /v1 as the base URL.' }),
    button('Done', { kind: 'ghost', size: 'sm', onclick: () => root.replaceChildren() })));
}

function renderList(root, keys, refresh) {
  if (!keys.length) {
    replace(root, emptyState('keys', 'No client keys yet',
      'Create a key for each application above, and give it the key instead of your upstream keys or the admin token.'));
    return;
  }
  const sorted = [...keys].sort((a, b) => Number(Boolean(a.revoked_at)) - Number(Boolean(b.revoked_at)) || b.created_at.localeCompare(a.created_at));
  const rows = sorted.map((k) => {
    const revoked = Boolean(k.revoked_at);
    return h('tr', { dataset: { key: k.name, state: revoked ? 'revoked' : 'active' }, class: revoked && 'row-disabled' },
      h('td', { class: 'cell-primary' }, h('div', { class: 'cell-title', text: k.name })),
      h('td', { class: 'mono', text: k.display_prefix }),
      h('td', { class: 'num', text: k.rpm_limit ? fmt.num(k.rpm_limit) : '∞' }),
      h('td', { class: 'num', dataset: { testid: 'key-parallel-cell' }, text: k.max_parallel_requests ? fmt.num(k.max_parallel_requests) : '∞' }),
      h('td', {}, k.allowed_models.length ? k.allowed_models.map((m) => chip(m, 'chip-model')) : h('span', { class: 'muted', text: 'all' })),
      h('td', { class: 'nowrap', title: k.created_at, text: fmt.when(k.created_at) }),
      h('td', {}, revoked
        ? h('span', { class: 'badge badge-disabled', title: k.revoked_at }, h('span', { class: 'dot' }), 'Revoked')
        : h('span', { class: 'badge badge-healthy' }, h('span', { class: 'dot' }), 'Active')),
      h('td', { class: 'cell-actions' }, revoked ? null : button('Revoke', {
        kind: 'danger-ghost', size: 'sm', testid: 'revoke',
        onclick: () => confirmThen({
          title: 'Revoke key?',
          message: `Revoke “${k.name}” (${k.display_prefix})? Applications using it get 401 from the next request on. This cannot be undone.`,
          confirmLabel: 'Revoke key',
        }, () => del(`/keys/${encodeURIComponent(k.id)}`), `${k.name} revoked.`, refresh),
      })));
  });
  replace(root, table(['Name', 'Prefix', ['RPM', 'num'], ['Parallel', 'num'], 'Models', 'Created', 'State', ''], rows, { testid: 'key-table', cls: 'table-stack' }));
}
