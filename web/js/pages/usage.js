// Usage: charts over a chosen range (requests and errors, tokens, spend, latency percentiles;
// overall or split by backend, model or client key), a breakdown table, and the recent requests
// (with their cost) with filters and CSV export.

import { h, append, replace, button } from '../dom.js';
import { get } from '../api.js';
import * as fmt from '../format.js';
import { pageHeader, card, emptyState, table, stat, chip, errorBanner, loading, segmented, select, toast } from '../ui.js';
import { TimeChart } from '../charts.js';
import { csvLine } from '../csv.js';

const RANGES = {
  hour: { label: 'Last hour', ms: 3600000, bucket: 60, refresh: 15000 },
  day: { label: 'Last day', ms: 86400000, bucket: 900, refresh: 60000 },
  week: { label: 'Last week', ms: 7 * 86400000, bucket: 7200, refresh: 120000 },
};
const MAX_GROUPS = 6;
const ADMIN_CALLER = 'admin';
const PAGE_SIZE = 50;
const CSV_PAGE = 1000;
const CSV_MAX_ROWS = 100000;

export async function mount(ctx) {
  const view = { range: 'hour', split: 'total', backend: '', model: '', key: '' };
  const names = { backends: new Map(), keys: new Map(), models: new Set() };

  const backendFilter = select([['', 'All backends']], '');
  const modelFilter = select([['', 'All models']], '');
  const keyFilter = select([['', 'All callers']], '');
  backendFilter.dataset.testid = 'filter-backend';
  modelFilter.dataset.testid = 'filter-model';
  keyFilter.dataset.testid = 'filter-key';

  const alerts = h('div', {});
  const kpis = h('div', { class: 'stats-grid' });
  const boxes = { requests: h('div', {}), tokens: h('div', {}), spend: h('div', {}), latency: h('div', {}) };
  const titles = { requests: h('h2', {}), tokens: h('h2', {}), spend: h('h2', {}), latency: h('h2', {}) };
  const chartCard = (key, testid) => h('section', { class: 'card card-chart', dataset: { testid } }, h('div', { class: 'card-header' }, titles[key]), boxes[key]);
  const breakdown = h('div', {});
  const breakdownTitle = h('h2', { text: 'By backend' });
  const recentBody = h('div', {}, loading());
  const more = button('Load older requests', { kind: 'secondary', size: 'sm', testid: 'load-more' });
  more.hidden = true;
  const exportBtn = button('Export CSV', { kind: 'secondary', size: 'sm', iconName: 'download', testid: 'export-csv' });

  ctx.root.append(
    pageHeader('Usage', 'Traffic, tokens, spend and latency over time, and every request.',
      button('Refresh', { kind: 'ghost', iconName: 'refresh', onclick: () => loadAll(), testid: 'refresh' })),
    h('div', { class: 'toolbar' },
      segmented(Object.entries(RANGES).map(([k, r]) => [k, r.label]), view.range, (v) => { view.range = v; restartTimer(); loadAll(); }, 'Range'),
      segmented([['total', 'Total'], ['backend', 'By backend'], ['model', 'By model'], ['key', 'By key']], view.split, (v) => { view.split = v; loadStats(); }, 'Split'),
      h('div', { class: 'toolbar-filters' },
        labelled('Backend', backendFilter), labelled('Model', modelFilter))),
    alerts,
    kpis,
    h('div', { class: 'chart-grid' },
      chartCard('requests', 'chart-requests'),
      chartCard('tokens', 'chart-tokens'),
      chartCard('spend', 'chart-spend'),
      chartCard('latency', 'chart-latency'),
      h('section', { class: 'card card-wide', dataset: { testid: 'breakdown' } }, h('div', { class: 'card-header' }, breakdownTitle), breakdown)),
    h('section', { class: 'card card-flush', dataset: { testid: 'recent' } },
      h('div', { class: 'card-header' },
        h('h2', { text: 'Recent requests' }),
        h('div', { class: 'card-actions' }, labelled('Caller', keyFilter), exportBtn)),
      recentBody,
      h('div', { class: 'card-footer' }, more)),
  );

  const charts = {
    requests: new TimeChart(boxes.requests, { format: fmt.num, integer: true, emptyText: 'No requests in this range. Send one to /v1/chat/completions and it shows up here.' }),
    tokens: new TimeChart(boxes.tokens, { format: fmt.num, integer: true, emptyText: 'No tokens counted in this range.' }),
    spend: new TimeChart(boxes.spend, { format: fmt.usd, axisWidth: 76, emptyText: 'No spend in this range: requests cost what the Prices page says their upstream model costs.' }),
    latency: new TimeChart(boxes.latency, { format: fmt.ms, emptyText: 'No latency samples in this range.' }),
  };
  ctx.onStop(() => Object.values(charts).forEach((c) => c.destroy()));

  backendFilter.addEventListener('change', () => { view.backend = backendFilter.value; loadAll(); });
  modelFilter.addEventListener('change', () => { view.model = modelFilter.value; loadAll(); });
  keyFilter.addEventListener('change', () => { view.key = keyFilter.value; loadRecent(); });
  more.addEventListener('click', () => loadRecent(true));
  exportBtn.addEventListener('click', () => exportCsv(view, names, exportBtn));

  let stats = null;
  let records = [];
  let cursor = null;
  let timer = null;

  function rangeQuery() {
    const now = Date.now();
    return { from_ms: now - RANGES[view.range].ms, to_ms: now };
  }

  async function loadNames() {
    const [backends, keys] = await Promise.all([get('/backends'), get('/keys')]);
    names.backends = new Map(backends.map((b) => [b.id, b.name]));
    // Requests made with the admin token are recorded with the caller id `admin`.
    names.keys = new Map([[ADMIN_CALLER, 'admin token'], ...keys.map((k) => [k.id, k.name])]);
    for (const b of backends) for (const m of Object.keys(b.model_mappings || {})) names.models.add(m);
    fillSelect(backendFilter, [['', 'All backends'], ...backends.map((b) => [b.id, b.name])], view.backend);
    fillSelect(keyFilter, [['', 'All callers'], [ADMIN_CALLER, 'Admin token'], ...keys.map((k) => [k.id, `${k.name}${k.revoked_at ? ' (revoked)' : ''}`])], view.key);
  }

  async function loadStats() {
    const q = rangeQuery();
    stats = await get('/stats', { ...q, bucket_seconds: RANGES[view.range].bucket, backend_id: view.backend, model: view.model });
    if (!ctx.alive()) return;
    for (const m of Object.keys(stats.by_model)) if (m !== '-') names.models.add(m);
    fillSelect(modelFilter, [['', 'All models'], ...[...names.models].sort().map((m) => [m, m])], view.model);
    renderKpis(kpis, stats, RANGES[view.range]);
    renderCharts(charts, titles, stats, view.split, names);
    const by = view.split === 'total' ? 'backend' : view.split;
    breakdownTitle.textContent = SPLITS[by].title;
    renderBreakdown(breakdown, stats, by, names);
  }

  async function loadRecent(append = false) {
    const q = rangeQuery();
    const page = await get('/usage', {
      ...q,
      backend_id: view.backend, model: view.model,
      client_key_id: view.key,
      limit: PAGE_SIZE, before: append ? cursor : null,
    });
    if (!ctx.alive()) return;
    records = append ? records.concat(page.records) : page.records;
    cursor = page.next_cursor ?? null;
    more.hidden = cursor === null;
    renderRecent(recentBody, records, names);
  }

  async function loadAll() {
    try {
      await loadNames();
      await Promise.all([loadStats(), loadRecent()]);
      if (ctx.alive()) replace(alerts);
      ctx.refreshed();
    } catch (error) {
      if (!ctx.alive()) return;
      replace(alerts, errorBanner(`Could not load usage: ${error.message}`));
      ctx.refreshed(error);
    }
  }

  function restartTimer() {
    if (timer) clearInterval(timer);
    timer = setInterval(() => {
      if (document.visibilityState === 'visible' && ctx.alive()) loadAll();
    }, RANGES[view.range].refresh);
  }
  ctx.onStop(() => clearInterval(timer));

  await loadAll();
  restartTimer();
}

function labelled(text, control) {
  return h('label', { class: 'inline-field' }, h('span', { text }), control);
}

function fillSelect(el, options, value) {
  el.replaceChildren(...options.map(([v, label]) => h('option', { value: v, text: label, selected: v === value })));
  if (![...el.options].some((o) => o.value === value)) el.value = '';
}

function backendName(id, names) {
  if (!id || id === '-') return 'no backend';
  return names.backends.get(id) || `${id} (deleted)`;
}

function callerName(id, names) {
  if (!id) return '—';
  return names.keys.get(id) || `${id} (deleted)`;
}

function renderKpis(root, stats, range) {
  const t = stats.total;
  const minutes = range.ms / 60000;
  replace(root,
    stat('Requests', fmt.num(t.requests), `${fmt.decimal(t.requests / minutes)} per minute on average`),
    stat('Errors', fmt.num(t.errors), `${fmt.percent(t.error_rate)} error rate`, { tone: t.error_rate >= 0.05 ? 'danger' : t.error_rate > 0 ? 'warning' : null }),
    stat('Latency p50 / p95', `${fmt.ms(t.p50_latency_ms)} / ${fmt.ms(t.p95_latency_ms)}`, `first byte p50 ${fmt.ms(t.p50_ttfb_ms)}`),
    stat('Prompt tokens', fmt.num(t.prompt_tokens), `sent upstream · ${fmt.percent(t.cached_share)} from prompt caches`),
    stat('Completion tokens', fmt.num(t.completion_tokens), 'generated'),
    stat('Spend', fmt.usd(t.cost_usd), spendNote(t), { testid: 'kpi-spend' }),
  );
}

/** What the spend figure covers. */
function spendNote(t) {
  if (typeof t.cost_usd !== 'number') return 'not reported by this gateway';
  if (!t.requests) return 'no requests in this range';
  const estimated = t.estimated_requests ? ` · ${fmt.num(t.estimated_requests)} estimated` : '';
  return `${fmt.usd(t.cost_usd / t.requests)} per request on average${estimated}`;
}

// The ways the charts and the breakdown split the traffic.
const SPLITS = {
  backend: { noun: 'backend', title: 'By backend', series: 'series_by_backend', totals: 'by_backend', label: (k, names) => backendName(k, names) },
  model: { noun: 'model', title: 'By model', series: 'series_by_model', totals: 'by_model', label: (k) => (k === '-' ? 'no model' : k) },
  key: { noun: 'key', title: 'By key', series: 'series_by_key', totals: 'by_key', label: (k, names) => (k === '-' ? 'no caller' : callerName(k, names)) },
};

/** The biggest groups of a split series, the rest summed as "other". */
function topGroups(seriesMap, total, label) {
  const keys = Object.keys(seriesMap).sort((a, b) => (total[b]?.requests ?? 0) - (total[a]?.requests ?? 0));
  const top = keys.slice(0, MAX_GROUPS).map((k) => ({ key: k, label: label(k), series: seriesMap[k] }));
  const rest = keys.slice(MAX_GROUPS);
  if (rest.length) top.push({ key: '__other', label: `${rest.length} others`, series: null, rest: rest.map((k) => seriesMap[k]) });
  return top;
}

/** A bucket's cost; null where the gateway reports none (a gap, not a zero). */
const costOf = (b) => (typeof b.cost_usd === 'number' ? b.cost_usd : null);

function renderCharts(charts, titles, stats, split, names) {
  const xs = stats.series.map((b) => Math.floor(b.ts_ms / 1000));
  const sum = (group, pick) => stats.series.map((_, i) => (group.series ? pick(group.series[i]) : group.rest.reduce((s, ser) => s + (pick(ser[i]) ?? 0), 0)));
  if (split === 'total') {
    titles.requests.textContent = 'Requests and errors';
    titles.tokens.textContent = 'Tokens';
    titles.spend.textContent = 'Spend';
    titles.latency.textContent = 'Latency percentiles';
    charts.requests.setData(xs, [
      { label: 'Requests', kind: 'bars', color: '--series-1' },
      { label: 'Errors', kind: 'bars', color: '--danger' },
    ], [stats.series.map((b) => b.requests), stats.series.map((b) => b.errors)]);
    charts.tokens.setData(xs, [
      { label: 'Prompt', kind: 'area', color: '--series-2' },
      { label: 'Completion', kind: 'area', color: '--series-3' },
    ], [stats.series.map((b) => b.prompt_tokens), stats.series.map((b) => b.completion_tokens)]);
    charts.spend.setData(xs, [{ label: 'Spend', kind: 'bars', color: '--series-5' }], [stats.series.map(costOf)]);
    charts.latency.setData(xs, [
      { label: 'p50', kind: 'line', color: '--series-1' },
      { label: 'p95', kind: 'line', color: '--series-4' },
      { label: 'First byte p50', kind: 'line', color: '--series-2' },
    ], [stats.series.map((b) => b.p50_latency_ms), stats.series.map((b) => b.p95_latency_ms), stats.series.map((b) => b.p50_ttfb_ms)]);
    return;
  }
  const how = SPLITS[split];
  const groups = topGroups(stats[how.series] || {}, stats[how.totals] || {}, (k) => how.label(k, names));
  titles.requests.textContent = `Requests by ${how.noun}`;
  titles.tokens.textContent = `Tokens by ${how.noun}`;
  titles.spend.textContent = `Spend by ${how.noun}`;
  titles.latency.textContent = `p95 latency by ${how.noun}`;
  const defs = (kind) => groups.map((g) => ({ label: g.label, kind }));
  charts.requests.setData(xs, defs('line'), groups.map((g) => sum(g, (b) => b.requests)));
  charts.tokens.setData(xs, defs('line'), groups.map((g) => sum(g, (b) => b.prompt_tokens + b.completion_tokens)));
  charts.spend.setData(xs, defs('line'), groups.map((g) => sum(g, costOf)));
  charts.latency.setData(xs, defs('line').filter((_, i) => groups[i].series),
    groups.filter((g) => g.series).map((g) => g.series.map((b) => b.p95_latency_ms)));
}

function renderBreakdown(root, stats, by, names) {
  const how = SPLITS[by];
  const entries = Object.entries(stats[how.totals] || {})
    .sort((a, b) => b[1].requests - a[1].requests);
  if (!entries.length) {
    replace(root, emptyState('usage', 'Nothing yet', `Requests in the chosen range appear here, grouped by ${how.noun}.`));
    return;
  }
  const rows = entries.map(([key, a]) => h('tr', { dataset: { group: key } },
    h('td', { class: 'cell-title', text: how.label(key, names) }),
    h('td', { class: 'num', text: fmt.num(a.requests) }),
    h('td', { class: ['num', a.error_rate > 0 && 'text-danger'], text: fmt.percent(a.error_rate) }),
    h('td', { class: 'num', text: fmt.num(a.prompt_tokens + a.completion_tokens) }),
    h('td', { class: 'num', dataset: { testid: 'group-spend' }, text: fmt.usd(a.cost_usd) }),
    h('td', { class: 'num', text: fmt.ms(a.p50_latency_ms) }),
    h('td', { class: 'num', text: fmt.ms(a.p95_latency_ms) })));
  const label = by === 'key' ? 'Caller' : by === 'model' ? 'Model' : 'Backend';
  replace(root, table([label, ['Requests', 'num'], ['Error rate', 'num'], ['Tokens', 'num'], ['Spend', 'num'], ['p50', 'num'], ['p95', 'num']], rows, { cls: 'table-compact' }));
}

function statusChip(status) {
  const tone = status < 300 ? 'ok' : status === 429 ? 'warn' : status < 500 ? 'warn' : 'bad';
  return chip(String(status), `chip-status chip-${tone}`);
}

const ESTIMATED = 'Estimated by poolgate: the upstream reported no usage for this request (a stream cut early, or the client left), so its tokens were counted here.';

/** A record's cost, marked `≈` when its tokens are poolgate's estimate. */
function costCell(r) {
  const cell = h('td', { class: 'num', dataset: { testid: 'cost-cell' } });
  if (typeof r.cost_usd === 'number') {
    append(cell, [r.tokens_estimated ? h('span', { class: 'estimated', title: ESTIMATED, text: '≈ ' }) : null, fmt.usd(r.cost_usd)]);
    cell.dataset.cost = String(r.cost_usd);
  } else {
    cell.append(h('span', { class: 'muted', text: '—' }));
    if (r.upstream_model && r.total_tokens) cell.title = `No price for ${r.upstream_model}: add one on the Prices page.`;
  }
  return cell;
}

function renderRecent(root, records, names) {
  if (!records.length) {
    replace(root, emptyState('usage', 'No requests in this range',
      'Point a client at /v1 with a client key (Keys page) and its requests are listed here, newest first.'));
    return;
  }
  const rows = records.map((r) => h('tr', { dataset: { status: String(r.status), request: r.request_id ?? '' } },
    h('td', { class: 'nowrap', title: new Date(r.ts_ms).toISOString(), text: fmt.when(r.ts_ms) }),
    h('td', {},
      h('div', { class: 'mono', text: r.canonical_model ?? '—' }),
      r.upstream_model && r.upstream_model !== r.canonical_model ? h('div', { class: 'cell-sub mono', text: `→ ${r.upstream_model}` }) : null),
    h('td', {}, h('div', { text: r.backend_id ? backendName(r.backend_id, names) : '—' }), r.pool ? h('div', { class: 'cell-sub', text: r.pool }) : null),
    h('td', { text: callerName(r.client_key_id, names) }),
    h('td', {}, statusChip(r.status), r.outcome !== 'success' ? h('div', { class: 'cell-sub', text: r.error_kind ? `${r.outcome} · ${r.error_kind}` : r.outcome }) : null),
    h('td', { class: 'num', text: fmt.num(r.attempts) }),
    h('td', { class: 'num', title: r.tokens_estimated ? ESTIMATED : undefined },
      r.tokens_estimated && r.total_tokens !== null && r.total_tokens !== undefined ? h('span', { class: 'estimated', text: '≈ ' }) : null,
      fmt.num(r.total_tokens)),
    h('td', { class: 'num', text: r.cached_tokens ? fmt.num(r.cached_tokens) : '—' }),
    costCell(r),
    h('td', { class: 'num', text: fmt.ms(r.latency_ms) }),
    h('td', { class: 'num', text: fmt.ms(r.ttfb_ms) }),
    h('td', { text: r.streamed ? 'stream' : '' })));
  replace(root, table(['Time', 'Model', 'Backend', 'Caller', 'Status', ['Tries', 'num'], ['Tokens', 'num'], ['Cached', 'num'], ['Cost', 'num'], ['Latency', 'num'], ['First byte', 'num'], ''], rows, { testid: 'recent-table', cls: 'table-compact table-recent' }));
}

// === CSV ===

const CSV_COLUMNS = [
  'request_id', 'time', 'ts_ms', 'client_key_id', 'client_key_name', 'endpoint', 'canonical_model', 'upstream_model',
  'backend_id', 'backend_name', 'pool', 'attempts', 'status', 'outcome', 'error_kind', 'prompt_tokens',
  'completion_tokens', 'total_tokens', 'cached_tokens', 'cache_write_tokens', 'tokens_estimated',
  'cost_usd', 'latency_ms', 'ttfb_ms', 'streamed',
];

/** A USD amount as a plain decimal (no exponent): the server's figures are exact to 9 places. */
function usdDecimal(value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return null;
  return value.toFixed(9).replace(/0+$/, '').replace(/\.$/, '');
}

async function exportCsv(view, names, btn) {
  btn.disabled = true;
  try {
    const now = Date.now();
    const query = {
      from_ms: now - RANGES[view.range].ms, to_ms: now,
      backend_id: view.backend, model: view.model,
      client_key_id: view.key, limit: CSV_PAGE,
    };
    const lines = [CSV_COLUMNS.join(',')];
    let before = null;
    let count = 0;
    do {
      const page = await get('/usage', { ...query, before });
      for (const r of page.records) {
        const row = {
          ...r,
          time: new Date(r.ts_ms).toISOString(),
          client_key_name: callerName(r.client_key_id, names),
          backend_name: r.backend_id ? names.backends.get(r.backend_id) ?? '' : '',
          cost_usd: usdDecimal(r.cost_usd),
        };
        lines.push(csvLine(CSV_COLUMNS, row));
        count += 1;
      }
      before = page.next_cursor ?? null;
    } while (before !== null && count < CSV_MAX_ROWS);
    const blob = new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv;charset=utf-8' });
    const url = URL.createObjectURL(blob);
    const stamp = new Date(now).toISOString().slice(0, 16).replace(/[-:T]/g, '');
    const link = h('a', { href: url, download: `poolgate-usage-${view.range}-${stamp}.csv`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    toast(`Exported ${fmt.plural(count, 'request')}.`);
  } catch (error) {
    toast(`Export failed: ${error.message}`, 'error');
  } finally {
    btn.disabled = false;
  }
}
