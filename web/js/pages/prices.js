// Prices: what each upstream model costs (USD per million tokens) — the table shipped in the
// binary, the config file's entries and the admin API's, with where each came from; edit a price
// (PUT), add one for another model, and reset an API-set price (DELETE) so the config file's or
// the default shows through again.

import { h, replace, button, icon } from '../dom.js';
import { get, api, del, ApiError } from '../api.js';
import * as fmt from '../format.js';
import {
  pageHeader, card, emptyState, table, toast, chip, errorBanner, loading, confirmThen, field,
  textInput, modal,
} from '../ui.js';

const PRICE_FIELDS = [
  ['input_per_mtok', 'Input', 'Prompt tokens not read from a cache.', true],
  ['output_per_mtok', 'Output', 'Generated tokens (reasoning included).', true],
  ['cached_input_per_mtok', 'Cached input', 'Prompt tokens read from the provider’s cache. Empty = the input price.', false],
  ['cache_write_per_mtok', 'Cache write', 'Anthropic: prompt tokens written to the cache. Empty = the input price.', false],
];

const SOURCES = {
  default: ['default', 'chip-muted', 'The table shipped in this poolgate binary'],
  config: ['config', 'chip-warn', 'Set in the config file ([prices."model"])'],
  api: ['api', 'chip-ok', 'Set here or with PUT /admin/api/prices/{model}'],
};

export async function mount(ctx) {
  const alerts = h('div', {});
  const about = h('p', { class: 'muted small', dataset: { testid: 'prices-taken' } });
  const body = h('div', {}, loading());
  const search = textInput({ type: 'search', placeholder: 'Filter models', attrs: { 'aria-label': 'Filter models' }, dataset: { testid: 'price-filter' } });
  const state = { prices: null, filter: '' };
  const openAdd = () => openForm(null, refresh);

  ctx.root.append(
    pageHeader('Prices', 'What each upstream model costs, in US dollars per million tokens. Every request is priced by the model id sent upstream.',
      button('Add price', { kind: 'primary', iconName: 'plus', onclick: openAdd, testid: 'add-price' })),
    alerts,
    card(null, h('div', {},
      h('div', { class: 'form-inset prices-head' }, about, h('label', { class: 'inline-field' }, icon('search'), search)),
      body), { cls: 'card-flush', testid: 'prices' }),
  );

  const render = () => {
    if (state.prices) renderTable(body, state.prices.models, state.filter, refresh, openAdd);
  };
  search.addEventListener('input', () => {
    state.filter = search.value.trim().toLowerCase();
    render();
  });

  async function refresh() {
    try {
      const prices = await get('/prices');
      if (!ctx.alive()) return;
      state.prices = prices;
      replace(alerts);
      about.textContent = describe(prices);
      render();
      ctx.refreshed();
    } catch (error) {
      if (!ctx.alive()) return;
      replace(alerts, errorBanner(`Could not load the prices: ${error.message}`));
      ctx.refreshed(error);
    }
  }
  await refresh();
}

function describe(prices) {
  const models = prices.models || [];
  const count = (source) => models.filter((m) => m.source === source).length;
  const parts = [`${fmt.plural(models.length, 'model')}`];
  if (prices.taken) parts.push(`default prices taken ${prices.taken}`);
  if (count('config')) parts.push(`${fmt.num(count('config'))} from the config file`);
  if (count('api')) parts.push(`${fmt.num(count('api'))} set here`);
  return `${parts.join(' · ')}. A model without a price is recorded without a cost. Dated ids (gpt-4o-2024-08-06) use the price of their model (gpt-4o) unless listed themselves.`;
}

function price(value) {
  return typeof value === 'number' ? fmt.perMtok(value) : null;
}

function renderTable(root, models, filter, refresh, openAdd) {
  if (!models.length) {
    replace(root, emptyState('prices', 'No prices',
      'Add the price of the models your backends serve, so each request gets its cost and budgets can apply.',
      button('Add price', { kind: 'primary', iconName: 'plus', onclick: openAdd })));
    return;
  }
  const shown = models.filter((m) => !filter || m.model.toLowerCase().includes(filter));
  if (!shown.length) {
    replace(root, emptyState('prices', 'No model matches', `No model id contains “${filter}”.`));
    return;
  }
  const rows = shown.map((m) => {
    const [label, cls, title] = SOURCES[m.source] || [m.source, 'chip-muted', ''];
    return h('tr', { dataset: { model: m.model, source: m.source } },
      h('td', { class: 'cell-primary mono', text: m.model }),
      h('td', { class: 'num', dataset: { testid: 'price-input' }, text: price(m.input_per_mtok) ?? '—' }),
      h('td', { class: 'num', dataset: { testid: 'price-output' }, text: price(m.output_per_mtok) ?? '—' }),
      h('td', { class: 'num', dataset: { testid: 'price-cached' } }, price(m.cached_input_per_mtok) ?? h('span', { class: 'muted', title: 'Billed at the input price', text: '—' })),
      h('td', { class: 'num', dataset: { testid: 'price-cache-write' } }, price(m.cache_write_per_mtok) ?? h('span', { class: 'muted', title: 'Billed at the input price', text: '—' })),
      h('td', { dataset: { testid: 'price-source' } }, chip(label, cls, title)),
      h('td', { class: 'cell-actions' }, h('div', { class: 'row-actions' },
        button('Edit', { kind: 'ghost', size: 'sm', iconName: 'edit', testid: 'edit-price', onclick: () => openForm(m, refresh) }),
        m.source === 'api' ? button('Reset', {
          kind: 'danger-ghost', size: 'sm', iconName: 'reset', testid: 'reset-price',
          title: 'Remove the price set here: the config file’s or the default price applies again',
          onclick: () => confirmThen({
            title: 'Reset price?',
            message: `Remove the price set for ${m.model}? The config file’s or the default price applies again; without one, its requests are recorded without a cost.`,
            confirmLabel: 'Reset price',
          }, () => del(`/prices/${encodeURIComponent(m.model)}`), `${m.model}: price reset.`, refresh),
        }) : null)));
  });
  replace(root, table(['Model', ['Input', 'num'], ['Output', 'num'], ['Cached input', 'num'], ['Cache write', 'num'], 'Source', ''], rows, { testid: 'price-table', cls: 'table-stack table-compact' }));
}

/** The text of a price for an input: the number as the API sent it, or ''. */
const inputValue = (value) => (typeof value === 'number' ? String(value) : '');

/** Sets a model's price (PUT); `entry` null adds a model. API errors show under their field. */
function openForm(entry, refresh) {
  const editing = Boolean(entry);
  const { body, footer, close } = modal(editing ? `Price of ${entry.model}` : 'Add price');
  const model = field('Model id', textInput({ value: entry?.model ?? '', placeholder: 'gpt-4o-mini', readOnly: editing, dataset: { testid: 'price-model' } }),
    { hint: editing ? 'The upstream model id this price is for.' : 'The upstream model id (what the provider bills), as in the backend’s model mappings.', name: 'model' });
  const fields = { model };
  for (const [name, label, hint, required] of PRICE_FIELDS) {
    fields[name] = field(`${label} (USD / Mtok)`, textInput({
      value: inputValue(entry?.[name]), inputMode: 'decimal', placeholder: required ? '0.15' : 'input price',
      dataset: { testid: `price-field-${name}` },
    }), { hint, name });
  }
  const banner = h('div', {});
  const form = h('form', { class: 'form', novalidate: true, dataset: { testid: 'price-form' } },
    banner,
    model.wrap,
    h('div', { class: 'form-grid' }, fields.input_per_mtok.wrap, fields.output_per_mtok.wrap),
    h('div', { class: 'form-grid' }, fields.cached_input_per_mtok.wrap, fields.cache_write_per_mtok.wrap),
    editing && entry.source !== 'api'
      ? h('p', { class: 'hint', text: `Saving sets this price here; it overrides the ${entry.source === 'config' ? 'config file’s' : 'default'} price until you reset it.` })
      : null);
  body.append(form);
  const save = button(editing ? 'Save price' : 'Add price', { kind: 'primary', testid: 'save-price' });
  save.addEventListener('click', () => form.requestSubmit());
  footer.append(button('Cancel', { onclick: close }), save);
  (editing ? fields.input_per_mtok : model).input.focus();

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    Object.values(fields).forEach((f) => f.setError(''));
    replace(banner);
    const id = model.input.value.trim();
    let ok = true;
    if (!id) {
      model.setError('Enter the model id.');
      ok = false;
    }
    const payload = {};
    for (const [name, , , required] of PRICE_FIELDS) {
      const text = fields[name].input.value.trim().replace(/^\$\s*/, '');
      if (text === '') {
        if (required) {
          fields[name].setError('Enter the price in USD per million tokens.');
          ok = false;
        }
        continue;
      }
      if (!/^\d+(\.\d+)?$|^\.\d+$/.test(text)) {
        fields[name].setError('Enter a number of US dollars, like 0.15.');
        ok = false;
        continue;
      }
      // A decimal string: the API keeps it exact (and says when it has too many decimals).
      payload[name] = text;
    }
    if (!ok) return;
    save.disabled = true;
    try {
      await api('PUT', `/prices/${encodeURIComponent(id)}`, { body: payload });
      toast(`${id}: price saved.`);
      close();
      refresh();
    } catch (error) {
      const param = error instanceof ApiError && error.param ? error.param : null;
      if (param && fields[param]) fields[param].setError(error.message);
      else replace(banner, errorBanner(error.message));
    } finally {
      save.disabled = false;
    }
  });
}
