// Routing: sticky sessions (on/off, where the session key comes from, for which models) and model
// aliases (one name for another model) — both through the admin API, errors next to their field.

import { h, replace, button } from '../dom.js';
import { get, api, del, ApiError } from '../api.js';
import * as fmt from '../format.js';
import {
  pageHeader, card, emptyState, table, toast, chip, errorBanner, loading, confirmThen, field,
  textInput,
} from '../ui.js';

const list = (text) => text.split(',').map((item) => item.trim()).filter(Boolean);

export async function mount(ctx) {
  const alerts = h('div', {});
  const stickyBody = h('div', {}, loading());
  const aliasList = h('div', {}, loading());
  const aliasForm = aliasEditor(() => refresh());
  ctx.root.append(
    pageHeader('Routing', 'Sticky sessions for prompt caches, and model aliases.'),
    alerts,
    card('Sticky routing', stickyBody, { testid: 'sticky' }),
    card('Model aliases', h('div', {}, aliasForm, aliasList), { cls: 'card-flush', testid: 'aliases' }),
  );

  async function refresh() {
    try {
      const [sticky, aliases] = await Promise.all([get('/settings/sticky'), get('/aliases')]);
      if (!ctx.alive()) return;
      replace(alerts);
      if (!stickyBody.querySelector('form')) replace(stickyBody, stickyEditor(sticky));
      renderAliases(aliasList, aliases, refresh);
      ctx.refreshed();
    } catch (error) {
      if (!ctx.alive()) return;
      replace(alerts, errorBanner(`Could not load the routing settings: ${error.message}`));
      ctx.refreshed(error);
    }
  }
  await refresh();
}

/** What the sticky settings mean, in one line. */
function describeSticky(settings) {
  if (!settings.enabled) return 'Off: every request is routed afresh (round-robin inside each pool).';
  const models = settings.models.length ? settings.models.join(', ') : 'every model';
  return `On for ${models}: requests with the same key (${settings.key.join(', then ')}) stay on one backend while it is ready, for ${fmt.num(settings.ttl_seconds)} s after their last request.`;
}

function stickyEditor(initial) {
  const state = h('p', { class: 'muted', dataset: { testid: 'sticky-state' }, text: describeSticky(initial) });
  const enabled = h('input', { type: 'checkbox', name: 'enabled', checked: initial.enabled, dataset: { testid: 'sticky-enabled' } });
  const fields = {
    key: field('Session key', textInput({ value: initial.key.join(', ') }), {
      hint: 'Sources tried in order, separated by commas: prompt_cache_key, user, header:NAME, leading_messages (a hash of the system prompt and first turns).', name: 'key',
    }),
    models: field('Models', textInput({ value: initial.models.join(', '), placeholder: 'every model' }), {
      hint: 'Canonical names or prefix* patterns, separated by commas; empty = every model.', name: 'models',
    }),
    leading_turns: field('Leading turns', textInput({ value: String(initial.leading_turns), inputMode: 'numeric' }), {
      hint: 'Turns hashed by leading_messages, 1–8.', name: 'leading_turns',
    }),
    ttl_seconds: field('Session TTL (s)', textInput({ value: String(initial.ttl_seconds), inputMode: 'numeric' }), {
      hint: 'How long a quiet session keeps its backend.', name: 'ttl_seconds',
    }),
  };
  const banner = h('div', {});
  const submit = button('Save sticky routing', { kind: 'primary', type: 'submit', testid: 'sticky-save' });
  const form = h('form', { class: 'form', novalidate: true, dataset: { testid: 'sticky-form' } },
    state,
    banner,
    h('label', { class: 'checkbox' }, enabled, h('span', { text: 'Sticky routing on — keep each session on its backend while it is ready' })),
    h('div', { class: 'form-grid' }, fields.key.wrap, fields.models.wrap),
    h('div', { class: 'form-grid' }, fields.leading_turns.wrap, fields.ttl_seconds.wrap),
    h('p', { class: 'hint', text: 'Prompt caches only hit on the upstream key that saw the prompt: the Overview shows each backend’s cached-token share.' }),
    h('div', { class: 'form-actions' }, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    Object.values(fields).forEach((f) => f.setError(''));
    replace(banner);
    const body = {
      enabled: enabled.checked,
      key: list(fields.key.input.value),
      models: list(fields.models.input.value),
    };
    for (const name of ['leading_turns', 'ttl_seconds']) {
      const text = fields[name].input.value.trim();
      if (!/^\d+$/.test(text)) {
        fields[name].setError('Enter a whole number.');
        return;
      }
      body[name] = Number(text);
    }
    submit.disabled = true;
    try {
      const saved = await api('PUT', '/settings/sticky', { body });
      state.textContent = describeSticky(saved);
      toast(saved.enabled ? 'Sticky routing is on.' : 'Sticky routing is off.');
    } catch (error) {
      const param = error instanceof ApiError && error.param ? error.param.replace(/\[\d+\]$/, '') : null;
      if (param && fields[param]) fields[param].setError(error.message);
      else replace(banner, errorBanner(error.message));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function aliasEditor(refresh) {
  const alias = field('Alias', textInput({ placeholder: 'gpt-4o-latest', dataset: { testid: 'alias-name' } }), {
    hint: 'The name clients may ask for.', name: 'alias',
  });
  const target = field('Model', textInput({ placeholder: 'gpt-4o', dataset: { testid: 'alias-target' } }), {
    hint: 'The canonical model it is routed as (not itself an alias).', name: 'target',
  });
  const banner = h('div', {});
  const submit = button('Save alias', { kind: 'primary', iconName: 'plus', type: 'submit', testid: 'save-alias' });
  const form = h('form', { class: 'form form-inset', novalidate: true, dataset: { testid: 'alias-form' } },
    banner,
    h('div', { class: 'form-grid' }, alias.wrap, target.wrap),
    h('div', { class: 'form-actions' }, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    alias.setError('');
    target.setError('');
    replace(banner);
    const name = alias.input.value.trim();
    if (!name) {
      alias.setError('Enter the alias.');
      return;
    }
    submit.disabled = true;
    try {
      await api('PUT', `/aliases/${encodeURIComponent(name)}`, { body: { target: target.input.value.trim() } });
      toast(`${name} saved.`);
      form.reset();
      refresh();
    } catch (error) {
      const param = error instanceof ApiError ? error.param : null;
      if (param === 'alias') alias.setError(error.message);
      else if (param && param.endsWith('.target')) target.setError(error.message);
      else replace(banner, errorBanner(error.message));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function renderAliases(root, aliases, refresh) {
  if (!aliases.length) {
    replace(root, emptyState('routing', 'No aliases yet',
      'An alias lets clients ask for one name (gpt-4o-latest) and get another model (gpt-4o). /v1/models lists an alias once its model is served.'));
    return;
  }
  const rows = aliases.map((a) => h('tr', { dataset: { alias: a.alias } },
    h('td', { class: 'cell-primary mono', text: a.alias }),
    h('td', { class: 'mono', text: a.target }),
    h('td', {}, a.served
      ? chip('served', 'chip-ok', 'An enabled backend serves this model')
      : chip('not served', 'chip-warn', 'No enabled backend maps this model: requests get 404')),
    h('td', {}, chip(a.source, 'chip-muted')),
    h('td', { class: 'nowrap', title: a.updated_at, text: fmt.when(a.updated_at) }),
    h('td', { class: 'cell-actions' }, button('Delete', {
      kind: 'danger-ghost', size: 'sm', testid: 'delete-alias',
      onclick: () => confirmThen({
        title: 'Delete alias?',
        message: `Delete “${a.alias}” → ${a.target}? Clients asking for ${a.alias} get 404 unless a backend maps that name.${a.source === 'config' ? ' It is in the config file, so it comes back at the next start unless you remove it there.' : ''}`,
        confirmLabel: 'Delete alias',
      }, () => del(`/aliases/${encodeURIComponent(a.alias)}`), `${a.alias} deleted.`, refresh),
    }))));
  replace(root, table(['Alias', 'Model', 'Served', 'Source', 'Updated', ''], rows, { testid: 'alias-table', cls: 'table-stack' }));
}
