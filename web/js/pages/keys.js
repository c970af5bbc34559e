// Keys: create client keys (the plaintext is shown once, with a copy button), list them with each
// one's budget use, edit their limits and budgets, and revoke them.

import { h, replace, button, icon } from '../dom.js';
import { get, post, patch, del, ApiError } from '../api.js';
import * as fmt from '../format.js';
import { pageHeader, card, emptyState, table, toast, chip, errorBanner, loading, confirmThen, field, textInput, modal } from '../ui.js';
import { parseUsd, parseWhole, usdInputValue, keyBudgets } from '../money.js';

const REFRESH_MS = 10000;
const WHOLE_FIELDS = ['rpm_limit', 'tpm_limit', 'max_parallel_requests'];
const USD_FIELDS = ['budget_daily_usd', 'budget_monthly_usd', 'budget_total_usd'];

// The form's fields: label, hint, test id, input properties.
const FIELDS = {
  name: ['Name', 'Who uses this key; for people.', 'key-name', { placeholder: 'my-app', maxLength: 128 }],
  rpm_limit: ['RPM limit', 'Requests per minute; 0 = unlimited.', 'key-rpm', { inputMode: 'numeric' }],
  tpm_limit: ['TPM limit', 'Tokens per minute (prompt + answer); 0 = unlimited.', 'key-tpm', { inputMode: 'numeric' }],
  max_parallel_requests: ['Parallel requests', 'Requests in flight at once; past it, 429. 0 = unlimited.', 'key-parallel', { inputMode: 'numeric' }],
  allowed_models: ['Allowed models', 'Canonical names, separated by commas; empty = all.', 'key-models', { placeholder: 'all models' }],
  budget_daily_usd: ['Daily budget (USD)', 'Resets at midnight UTC.', 'key-budget-daily', { placeholder: 'none', inputMode: 'decimal' }],
  budget_monthly_usd: ['Monthly budget (USD)', 'Resets on the 1st (UTC).', 'key-budget-monthly', { placeholder: 'none', inputMode: 'decimal' }],
  budget_total_usd: ['Total budget (USD)', 'For the key’s whole life. Empty = no budget.', 'key-budget-total', { placeholder: 'none', inputMode: 'decimal' }],
};

/** What a field shows for `key` (editing) or a new key. */
function initial(name, key) {
  if (name === 'name') return key?.name ?? '';
  if (name === 'allowed_models') return (key?.allowed_models || []).join(', ');
  if (WHOLE_FIELDS.includes(name)) return String(key?.[name] ?? 0);
  return usdInputValue(key?.[name]);
}

/**
 * The fields of a key's limits and budgets, filled from `key` (editing) or empty (creating).
 * `collect()` returns the body for the API, or null after marking the fields it refuses.
 */
function keyFields(key) {
  const fields = {};
  for (const [name, [label, hint, testid, props]] of Object.entries(FIELDS)) {
    fields[name] = field(label, textInput({ ...props, value: initial(name, key), dataset: { testid } }), { hint, name });
  }
  const grid = h('div', { class: 'form-rows' },
    h('div', { class: 'form-grid form-grid-keys' }, fields.name.wrap, fields.rpm_limit.wrap, fields.tpm_limit.wrap, fields.max_parallel_requests.wrap),
    h('div', { class: 'form-grid form-grid-keys' }, fields.allowed_models.wrap, fields.budget_daily_usd.wrap, fields.budget_monthly_usd.wrap, fields.budget_total_usd.wrap));
  const collect = () => {
    Object.values(fields).forEach((f) => f.setError(''));
    const body = { name: fields.name.input.value.trim() };
    let ok = true;
    for (const name of WHOLE_FIELDS) {
      const parsed = parseWhole(fields[name].input.value, key ? 0 : null);
      if (parsed.error) {
        fields[name].setError(parsed.error);
        ok = false;
      } else if (parsed.value !== null && (key || parsed.value !== 0)) {
        // Creating: 0 is the default (unlimited) and is left out.
        body[name] = parsed.value;
      }
    }
    for (const name of USD_FIELDS) {
      const parsed = parseUsd(fields[name].input.value);
      if (parsed.error) {
        fields[name].setError(parsed.error);
        ok = false;
      } else if (parsed.value !== null || key) {
        // Editing: an emptied field removes the budget (null).
        body[name] = parsed.value;
      }
    }
    const models = fields.allowed_models.input.value.split(',').map((m) => m.trim()).filter(Boolean);
    if (models.length || key) body.allowed_models = models;
    return ok ? body : null;
  };
  /** Shows an API error under the field it names; false when it names none of them. */
  const showError = (error) => {
    const param = error instanceof ApiError && error.param ? error.param.replace(/\[\d+\]$/, '') : null;
    if (!param || !fields[param]) return false;
    fields[param].setError(error.message);
    fields[param].input.focus();
    return true;
  };
  return { fields, grid, collect, showError };
}

export async function mount(ctx) {
  const alerts = h('div', {});
  const listBody = h('div', {}, loading());
  const reveal = h('div', { dataset: { testid: 'new-key' } });

  let form = null;
  const banner = h('div', {});
  const submit = button('Create key', { kind: 'primary', iconName: 'plus', type: 'submit', testid: 'create-key' });
  const formHost = h('form', { class: 'form', novalidate: true, dataset: { testid: 'key-form' } });
  const resetForm = () => {
    form = keyFields(null);
    replace(formHost, banner, form.grid, h('div', { class: 'form-actions' }, submit));
  };
  resetForm();

  ctx.root.append(
    pageHeader('Keys', 'Client keys for your applications, with their limits and budgets. poolgate stores only a hash of each key.'),
    alerts,
    card('New client key', h('div', {}, formHost, reveal)),
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

  formHost.addEventListener('submit', async (event) => {
    event.preventDefault();
    replace(banner);
    const body = form.collect();
    if (!body) return;
    submit.disabled = true;
    try {
      const created = await post('/keys', body);
      showCreated(reveal, created);
      resetForm();
      refresh();
    } catch (error) {
      if (!form.showError(error)) replace(banner, errorBanner(error.message));
    } finally {
      submit.disabled = false;
    }
  });

  await refresh();
  // Spend moves with traffic.
  ctx.every(REFRESH_MS, refresh, { now: false });
}

/** Edits a key's name, limits, budgets and models (the secret stays). */
function openEdit(key, refresh) {
  const { body, footer, close } = modal(`Edit ${key.name}`, { wide: true });
  const form = keyFields(key);
  const banner = h('div', {});
  const el = h('form', { class: 'form', novalidate: true, dataset: { testid: 'key-edit-form' } }, banner, form.grid);
  body.append(el);
  const save = button('Save changes', { kind: 'primary', testid: 'save-key' });
  save.addEventListener('click', () => el.requestSubmit());
  footer.append(button('Cancel', { onclick: close }), save);
  form.fields.name.input.focus();
  el.addEventListener('submit', async (event) => {
    event.preventDefault();
    replace(banner);
    const payload = form.collect();
    if (!payload) return;
    save.disabled = true;
    try {
      await patch(`/keys/${encodeURIComponent(key.id)}`, payload);
      toast(`${payload.name || key.name} saved.`);
      close();
      refresh();
    } catch (error) {
      if (!form.showError(error)) replace(banner, errorBanner(error.message));
    } finally {
      save.disabled = false;
    }
  });
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

function limit(value) {
  return value ? fmt.num(value) : '∞';
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
      h('td', { class: 'num', text: limit(k.rpm_limit) }),
      h('td', { class: 'num', dataset: { testid: 'key-tpm-cell' }, text: limit(k.tpm_limit) }),
      h('td', { class: 'num', dataset: { testid: 'key-parallel-cell' }, text: limit(k.max_parallel_requests) }),
      h('td', { class: 'cell-budget', dataset: { testid: 'key-budget-cell' } }, keyBudgets(k)),
      h('td', {}, k.allowed_models.length ? k.allowed_models.map((m) => chip(m, 'chip-model')) : h('span', { class: 'muted', text: 'all' })),
      h('td', { class: 'nowrap', title: k.created_at, text: fmt.when(k.created_at) }),
      h('td', {}, revoked
        ? h('span', { class: 'badge badge-disabled', title: k.revoked_at }, h('span', { class: 'dot' }), 'Revoked')
        : h('span', { class: 'badge badge-healthy' }, h('span', { class: 'dot' }), 'Active')),
      h('td', { class: 'cell-actions' }, revoked ? null : h('div', { class: 'row-actions' },
        button('Edit', { kind: 'ghost', size: 'sm', iconName: 'edit', testid: 'edit-key', onclick: () => openEdit(k, refresh) }),
        button('Revoke', {
          kind: 'danger-ghost', size: 'sm', testid: 'revoke',
          onclick: () => confirmThen({
            title: 'Revoke key?',
            message: `Revoke “${k.name}” (${k.display_prefix})? Applications using it get 401 from the next request on. This cannot be undone.`,
            confirmLabel: 'Revoke key',
          }, () => del(`/keys/${encodeURIComponent(k.id)}`), `${k.name} revoked.`, refresh),
        }))));
  });
  replace(root, table(['Name', 'Prefix', ['RPM', 'num'], ['TPM', 'num'], ['Parallel', 'num'], 'Budget', 'Models', 'Created', 'State', ''], rows, { testid: 'key-table', cls: 'table-stack' }));
}
