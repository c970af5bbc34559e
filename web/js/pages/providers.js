// Providers: the backends table (with their token limits, monthly spend and the limits learned
// from upstream answers), the create/edit form (API validation messages shown next to their
// fields), the model-mapping editor, enable/disable, reset cooldown and delete.

import { h, replace, button, icon } from '../dom.js';
import { get, post, patch, del, ApiError } from '../api.js';
import * as fmt from '../format.js';
import {
  pageHeader, card, statusBadge, emptyState, table, toast, chip, errorBanner, loading,
  modal, confirmDialog, field, textInput, select,
} from '../ui.js';
import { budgetBar, upstreamLimits, parseUsd, parseWhole, usdInputValue } from '../money.js';

const REFRESH_MS = 5000;

export async function mount(ctx) {
  const alerts = h('div', {});
  const body = h('div', {}, loading());
  const state = { backends: [], pools: [] };
  const openCreate = () => openForm(null, state.pools, refresh);
  ctx.root.append(
    pageHeader('Providers', 'Upstream backends: where requests go, with which key, at what rate.',
      button('Add backend', { kind: 'primary', iconName: 'plus', onclick: openCreate, testid: 'add-backend' })),
    alerts,
    card(null, body, { cls: 'card-flush', testid: 'backends' }),
  );

  async function refresh() {
    try {
      const [backends, pools] = await Promise.all([get('/backends'), get('/pools')]);
      if (!ctx.alive()) return;
      state.backends = backends;
      state.pools = pools;
      replace(alerts);
      renderTable(body, state, refresh, openCreate);
      ctx.refreshed();
    } catch (error) {
      if (!ctx.alive()) return;
      replace(alerts, errorBanner(`Could not load backends: ${error.message}`));
      ctx.refreshed(error);
    }
  }

  await refresh();
  ctx.every(REFRESH_MS, refresh, { now: false });
  if (/[?&]new\b/.test(window.location.hash)) {
    history.replaceState(null, '', '#/providers');
    openCreate();
  }
}

function renderTable(root, state, refresh, openCreate) {
  const { backends, pools } = state;
  if (!backends.length) {
    replace(root, emptyState('providers', 'No backends yet',
      'A backend is one upstream endpoint with one API key: an OpenAI-compatible base URL (including /v1), the key, and the models it serves. Add the first one to start routing.',
      button('Add backend', { kind: 'primary', iconName: 'plus', onclick: openCreate })));
    return;
  }
  const rows = backends.map((b) => {
    const models = Object.entries(b.model_mappings || {});
    const modelCell = h('td', { class: 'cell-models' });
    if (!models.length) modelCell.append(h('span', { class: 'muted small', text: 'none — add a mapping' }));
    for (const [canonical, mapping] of models.slice(0, 4)) {
      const upstream = mapping.upstream_model;
      const c = chip(upstream === canonical ? canonical : `${canonical} → ${upstream}`, 'chip-model');
      c.title = `${canonical} is sent upstream as ${upstream}`;
      modelCell.append(c);
    }
    if (models.length > 4) modelCell.append(chip(`+${models.length - 4}`, 'chip-muted'));

    const statusLine = h('div', { class: 'status-line' }, statusBadge(b.status));
    const statusCell = h('td', { class: 'cell-status' }, statusLine);
    if (b.status === 'cooling' && b.cooldown_remaining_ms) {
      statusLine.append(h('span', { class: 'countdown', text: fmt.countdown(b.cooldown_remaining_ms) }));
    }
    if (b.last_error && (b.status === 'error' || b.status === 'cooling')) {
      statusCell.append(h('div', { class: 'cell-note', text: b.last_error }));
    }
    // What the upstream's rate-limit headers last said.
    const learned = upstreamLimits(b.upstream_limits);
    if (learned) statusCell.append(learned);

    const actions = h('div', { class: 'row-actions' },
      iconButton('edit', `Edit ${b.name}`, 'edit', () => openForm(b, pools, refresh)),
      iconButton('power', b.enabled ? `Disable ${b.name}` : `Enable ${b.name}`, 'toggle', async () => {
        try {
          await patch(`/backends/${encodeURIComponent(b.id)}`, { enabled: !b.enabled });
          toast(`${b.name} ${b.enabled ? 'disabled' : 'enabled'}.`);
        } catch (error) {
          toast(error.message, 'error');
        }
        refresh();
      }, b.enabled ? null : 'is-off'),
      (b.status === 'cooling' || b.status === 'error')
        ? iconButton('reset', `Reset the cooldown of ${b.name}`, 'reset', async () => {
          try {
            await post(`/backends/${encodeURIComponent(b.id)}/reset-cooldown`);
            toast(`${b.name} is back in rotation.`);
          } catch (error) {
            toast(error.message, 'error');
          }
          refresh();
        })
        : null,
      iconButton('trash', `Delete ${b.name}`, 'delete', async () => {
        const ok = await confirmDialog({
          title: 'Delete backend?',
          message: `Delete “${b.label}” (${b.name})? Requests stop going to it at once; its usage history stays.${b.source === 'config' ? ' It is defined in the config file, so it comes back at the next start unless you remove it there.' : ''}`,
          confirmLabel: 'Delete backend',
          danger: true,
        });
        if (!ok) return;
        try {
          await del(`/backends/${encodeURIComponent(b.id)}`);
          toast(`${b.name} deleted.`);
        } catch (error) {
          toast(error.message, 'error');
        }
        refresh();
      }, 'danger'));

    return h('tr', { dataset: { backend: b.name, status: b.status }, class: !b.enabled && 'row-disabled' },
      h('td', { class: 'cell-primary' },
        h('div', { class: 'cell-title', text: b.label }),
        h('div', { class: 'cell-sub' },
          h('span', { class: 'mono', text: b.name }),
          b.source === 'config' ? chip('config', 'chip-muted') : null)),
      h('td', { text: b.pool }),
      h('td', { class: 'cell-api' }, chip(b.api, 'chip-muted'),
        b.responses ? chip('responses', 'chip-muted', 'Passes /v1/responses through') : null,
        HTTP_VERSION_CHIPS[b.http_version] ? chip(HTTP_VERSION_CHIPS[b.http_version], 'chip-muted', 'HTTP towards the upstream') : null),
      h('td', { class: 'cell-url mono', title: b.api_base_url, text: b.api_base_url }),
      h('td', { class: 'mono muted nowrap', text: b.api_key }),
      limitsCell(b),
      statusCell,
      modelCell,
      h('td', { class: 'cell-actions' }, actions));
  });
  replace(root, table(
    ['Backend', 'Pool', 'API', 'Base URL', 'Key', 'Limits', 'Status', 'Models', ''],
    rows, { testid: 'backend-table', cls: 'table-stack' }));
}

/** RPM and TPM limits, and the month's spend against the cap (when there is one or any spend). */
function limitsCell(b) {
  const rate = (value, unit) => h('div', { class: 'limit-line' },
    h('span', { class: 'muted', text: unit }),
    h('span', { class: 'num', text: value ? fmt.num(value) : '∞' }));
  const monthly = b.spend?.monthly ?? null;
  const capped = typeof b.monthly_spend_cap_usd === 'number';
  const spend = monthly && (capped || monthly.spent_usd > 0)
    ? budgetBar({ ...monthly, limit_usd: capped ? b.monthly_spend_cap_usd : monthly.limit_usd }, 'This month', { testid: 'backend-spend' })
    : null;
  return h('td', { class: 'cell-limits', dataset: { testid: 'limits-cell' } },
    rate(b.rpm_limit, 'RPM'),
    b.tpm_limit !== undefined ? rate(b.tpm_limit, 'TPM') : null,
    spend);
}

function iconButton(iconName, label, testid, onclick, extraClass) {
  const btn = h('button', {
    type: 'button', class: ['icon-btn', extraClass], title: label,
    attrs: { 'aria-label': label }, dataset: { testid }, onclick,
  }, icon(iconName));
  return btn;
}

// === the form ===

const NUMBER_FIELDS = ['rpm_limit', 'weight', 'timeout_seconds'];
// Sent only when they differ from the backend's (or the default, when adding).
const TPM_DEFAULT = 0;

// The backend's `http_version` as the list shows it (`auto` shows nothing).
const HTTP_VERSION_CHIPS = { http1: 'HTTP/1.1', http2: 'HTTP/2' };

const BASE_URL_HINTS = {
  openai: 'OpenAI-compatible, including /v1.',
  anthropic: 'Without /v1: https://api.anthropic.com.',
  azure: 'The resource endpoint https://NAME.openai.azure.com (deployment URLs), or …/openai/v1 (the v1 form).',
};

const BASE_URL_PLACEHOLDERS = {
  openai: 'https://api.openai.com/v1',
  anthropic: 'https://api.anthropic.com',
  azure: 'https://my-resource.openai.azure.com',
};

function openForm(backend, pools, refresh) {
  const editing = Boolean(backend);
  const { body, footer, close } = modal(editing ? `Edit ${backend.name}` : 'Add backend', { wide: true });
  const fields = {};
  const add = (name, label, input, hint) => {
    input.name = name;
    fields[name] = field(label, input, { hint, name });
    return fields[name].wrap;
  };

  const poolNames = pools.map((p) => p.name);
  if (editing && !poolNames.includes(backend.pool)) poolNames.push(backend.pool);
  const form = h('form', { class: 'form', novalidate: true, dataset: { testid: 'backend-form' } },
    h('div', { class: 'form-banner' }),
    h('div', { class: 'form-grid' },
      add('name', 'Name', textInput({ value: backend?.name ?? '', placeholder: 'openai-1', required: true }), 'Unique. Letters, digits, -, _ and .'),
      add('label', 'Label', textInput({ value: backend?.label ?? '', placeholder: 'Same as the name' }), 'Shown to people; any text.')),
    add('api_base_url', 'Base URL', textInput({ value: backend?.api_base_url ?? '', placeholder: 'https://api.openai.com/v1', inputMode: 'url', required: !editing }),
      BASE_URL_HINTS.openai),
    add('api_key', 'API key', h('input', {
      type: 'password', autocomplete: 'new-password', spellcheck: false,
      placeholder: editing ? 'Leave empty to keep the current key' : 'sk-…',
    }), editing ? `Write-only. Current key: ${backend.api_key}. Leave empty to keep it.` : 'Write-only: stored encrypted, never shown again.'),
    h('div', { class: 'form-grid' },
      add('api', 'API', select([['openai', 'OpenAI-compatible'], ['anthropic', 'Anthropic'], ['azure', 'Azure OpenAI']], backend?.api ?? 'openai')),
      add('pool', 'Pool', select(poolNames, backend?.pool ?? (poolNames.includes('primary') ? 'primary' : poolNames[0])), 'Pools are tried in priority order.')),
    h('div', { class: 'form-grid' },
      add('responses', 'Responses API', select([
        ['', 'Default for this API'],
        ['true', 'Yes: /v1/responses passes through'],
        ['false', 'No: translated to Chat / Messages'],
      ], editing ? String(backend.responses) : ''), 'Whether the upstream has the Responses API (default: OpenAI yes, Anthropic no, Azure by its version).'),
      add('api_version', 'Azure api-version', textInput({ value: backend?.api_version ?? '', placeholder: '2024-10-21' }),
        'Azure only. 2025-03-01-preview or later has the Responses API.')),
    add('http_version', 'HTTP towards the upstream', select([
      ['auto', 'Auto: HTTP/1.1 on http://, ALPN on https://'],
      ['http1', 'HTTP/1.1 only'],
      ['http2', 'HTTP/2: every stream over one connection'],
    ], backend?.http_version ?? 'auto'), 'HTTP/2 is h2c (prior knowledge) on http:// and ALPN h2 on https://.'),
    h('div', { class: 'form-grid form-grid-3' },
      add('rpm_limit', 'RPM limit', textInput({ value: String(backend?.rpm_limit ?? 0), inputMode: 'numeric' }), 'Requests per minute; 0 = unlimited.'),
      add('weight', 'Weight', textInput({ value: String(backend?.weight ?? 1), inputMode: 'numeric' }), '1–100: share inside the pool.'),
      add('timeout_seconds', 'Timeout (s)', textInput({ value: String(backend?.timeout_seconds ?? 60), inputMode: 'numeric' }), 'Time to first byte, 1–3600.')),
    h('div', { class: 'form-grid' },
      add('tpm_limit', 'TPM limit', textInput({ value: String(backend?.tpm_limit ?? TPM_DEFAULT), inputMode: 'numeric' }), 'Tokens per minute (prompt + answer); 0 = unlimited. A backend whose TPM is spent is skipped.'),
      add('monthly_spend_cap_usd', 'Monthly spend cap (USD)', textInput({ value: usdInputValue(backend?.monthly_spend_cap_usd), placeholder: 'none', inputMode: 'decimal' }), 'Past it, the backend is skipped until the 1st (UTC). Empty = no cap.')),
  );
  const enabled = h('input', { type: 'checkbox', name: 'enabled', checked: backend ? backend.enabled : true });
  form.append(h('label', { class: 'checkbox' }, enabled, h('span', { text: 'Enabled — take traffic' })));

  const mappings = mappingEditor(backend?.model_mappings || {});
  form.append(mappings.el);
  body.append(form);
  const banner = form.querySelector('.form-banner');

  // What the form asks for follows the API kind.
  const showApi = () => {
    const api = fields.api.input.value;
    fields.api_base_url.wrap.querySelector('.hint').textContent = BASE_URL_HINTS[api];
    fields.api_base_url.input.placeholder = BASE_URL_PLACEHOLDERS[api];
    fields.api_version.wrap.hidden = api !== 'azure';
    const responses = fields.responses.input;
    if (api === 'anthropic') responses.value = 'false';
    responses.disabled = api === 'anthropic';
  };
  fields.api.input.addEventListener('change', showApi);
  showApi();

  const submit = button(editing ? 'Save changes' : 'Add backend', { kind: 'primary', testid: 'save' });
  submit.addEventListener('click', () => form.requestSubmit());
  footer.append(button('Cancel', { onclick: close }), submit);
  fields.name.input.focus();

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    for (const f of Object.values(fields)) f.setError('');
    mappings.clearErrors();
    replace(banner);

    const value = (name) => fields[name].input.value.trim();
    const payload = {
      name: value('name'),
      label: value('label') || value('name'),
      api_base_url: value('api_base_url'),
      api: fields.api.input.value,
      pool: fields.pool.input.value,
      enabled: enabled.checked,
    };
    const responses = fields.responses.input.value;
    if (responses !== '') payload.responses = responses === 'true';
    const httpVersion = fields.http_version.input.value;
    if (httpVersion !== (backend?.http_version ?? 'auto')) payload.http_version = httpVersion;
    const version = value('api_version');
    if (payload.api === 'azure' && version !== '') payload.api_version = version;
    let clientErrors = false;
    for (const name of NUMBER_FIELDS) {
      const text = value(name);
      if (text === '') continue;
      if (!/^-?\d+$/.test(text)) {
        fields[name].setError('Enter a whole number.');
        clientErrors = true;
      } else {
        payload[name] = Number(text);
      }
    }
    const tpm = parseWhole(value('tpm_limit'), TPM_DEFAULT);
    if (tpm.error) {
      fields.tpm_limit.setError(tpm.error);
      clientErrors = true;
    } else if (tpm.value !== (backend?.tpm_limit ?? TPM_DEFAULT)) {
      payload.tpm_limit = tpm.value;
    }
    const cap = parseUsd(value('monthly_spend_cap_usd'));
    if (cap.error) {
      fields.monthly_spend_cap_usd.setError(cap.error);
      clientErrors = true;
    } else if (cap.value !== (backend?.monthly_spend_cap_usd ?? null)) {
      payload.monthly_spend_cap_usd = cap.value;
    }
    const key = fields.api_key.input.value;
    if (key !== '' || !editing) payload.api_key = key;
    const mapped = mappings.collect();
    if (mapped.errors) clientErrors = true;
    payload.model_mappings = mapped.value;
    if (clientErrors) return;

    submit.disabled = true;
    try {
      if (editing) {
        await patch(`/backends/${encodeURIComponent(backend.id)}`, payload);
        toast(`${payload.name} saved.`);
      } else {
        await post('/backends', payload);
        toast(`${payload.name} added.`);
      }
      close();
      refresh();
    } catch (error) {
      showApiError(error, fields, mappings, banner);
    } finally {
      submit.disabled = false;
    }
  });
}

/** Puts an API error next to the field it names (`param`), else above the form. */
function showApiError(error, fields, mappings, banner) {
  const param = error instanceof ApiError ? error.param : null;
  let target = null;
  if (param && fields[param]) target = fields[param];
  else if (!param && error.status === 409) target = fields.name;
  if (target) {
    target.setError(error.message);
    target.input.focus();
    return;
  }
  if (param && param.startsWith('model_mappings') && mappings.showError(param, error.message)) return;
  replace(banner, errorBanner(error.message));
}

/** Rows of canonical → upstream model names. */
function mappingEditor(initial) {
  const rows = h('div', { class: 'mapping-rows', dataset: { testid: 'mappings' } });
  const empty = h('p', { class: 'muted small mapping-empty', text: 'No models yet: this backend will get no traffic until it maps at least one.' });
  const list = [];

  const addRow = (canonical = '', upstream = '') => {
    const canonicalInput = textInput({ value: canonical, placeholder: 'gpt-4o-mini', attrs: { 'aria-label': 'Canonical model' }, dataset: { testid: 'canonical' } });
    const upstreamInput = textInput({ value: upstream, placeholder: 'same as canonical', attrs: { 'aria-label': 'Upstream model' }, dataset: { testid: 'upstream' } });
    const error = h('p', { class: 'field-error', hidden: true, attrs: { role: 'alert' } });
    const row = { canonicalInput, upstreamInput, error, el: null };
    row.el = h('div', { class: 'mapping-row' },
      h('div', { class: 'mapping-inputs' },
        canonicalInput,
        h('span', { class: 'mapping-arrow', attrs: { 'aria-hidden': 'true' }, text: '→' }),
        upstreamInput,
        h('button', {
          type: 'button', class: 'icon-btn', title: 'Remove this mapping', attrs: { 'aria-label': 'Remove this mapping' },
          dataset: { testid: 'remove-mapping' },
          onclick: () => {
            list.splice(list.indexOf(row), 1);
            row.el.remove();
            empty.hidden = list.length > 0;
          },
        }, icon('x'))),
      error);
    list.push(row);
    rows.append(row.el);
    empty.hidden = true;
    return row;
  };
  for (const [canonical, mapping] of Object.entries(initial)) addRow(canonical, mapping.upstream_model);
  empty.hidden = list.length > 0;

  const setRowError = (row, message) => {
    row.error.textContent = message || '';
    row.error.hidden = !message;
    row.el.classList.toggle('has-error', Boolean(message));
  };

  const el = h('fieldset', { class: 'mappings' },
    h('legend', { text: 'Model mappings' }),
    h('p', { class: 'hint', text: 'Clients ask for the canonical name; poolgate sends the upstream model id to this backend. Leave the upstream empty to use the same name. A name ending in * serves every model starting so (claude-* → claude-*: the same name; openai/* → *: without the prefix); exact names win over wildcards, longer over shorter. Azure: the upstream is the deployment.' }),
    h('div', { class: 'mapping-head', attrs: { 'aria-hidden': 'true' } }, h('span', { text: 'Canonical (clients ask for)' }), h('span', { text: 'Upstream (sent to this backend)' })),
    rows,
    empty,
    button('Add mapping', { kind: 'ghost', size: 'sm', iconName: 'plus', testid: 'add-mapping', onclick: () => addRow().canonicalInput.focus() }));

  return {
    el,
    clearErrors: () => list.forEach((row) => setRowError(row, '')),
    collect() {
      const value = {};
      let errors = false;
      for (const row of list) {
        const canonical = row.canonicalInput.value.trim();
        const upstream = row.upstreamInput.value.trim();
        if (!canonical && !upstream) continue;
        if (Object.hasOwn(value, canonical)) {
          setRowError(row, `“${canonical}” is mapped twice.`);
          errors = true;
          continue;
        }
        value[canonical] = { upstream_model: upstream || canonical };
      }
      return { value, errors };
    },
    /** Shows an API error about `model_mappings.<canonical>[.upstream_model]` on its row. */
    showError(param, message) {
      for (const row of list) {
        const canonical = row.canonicalInput.value.trim();
        if (param === `model_mappings.${canonical}` || param === `model_mappings.${canonical}.upstream_model`) {
          setRowError(row, message);
          (param.endsWith('.upstream_model') ? row.upstreamInput : row.canonicalInput).focus();
          return true;
        }
      }
      return false;
    },
  };
}
