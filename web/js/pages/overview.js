// Overview: one card per pool, every backend's status (with a live countdown while it cools),
// and the last hour's traffic. Refreshes every 5 s.

import { h, replace, button } from '../dom.js';
import { get, post } from '../api.js';
import * as fmt from '../format.js';
import { pageHeader, card, statusBadge, emptyState, stat, table, toast, chip, errorBanner, loading } from '../ui.js';
import { TimeChart } from '../charts.js';

const REFRESH_MS = 5000;
const HOUR_MS = 3600000;
const RATE_WINDOW_MIN = 5;

export async function mount(ctx) {
  const kpis = h('div', { class: 'stats-grid', dataset: { testid: 'kpis' } });
  const pools = h('div', { class: 'pool-grid', dataset: { testid: 'pools' } }, loading());
  const backendsBody = h('div', {}, loading());
  const alerts = h('div', {});
  const chartBox = h('div', {});
  ctx.root.append(
    pageHeader('Overview', 'Pools, backends and traffic right now · refreshes every 5 s'),
    alerts,
    kpis,
    h('h2', { class: 'section-title', text: 'Pools' }),
    pools,
    card('Backends', backendsBody, { testid: 'backends-card' }),
    card('Traffic · last hour', chartBox, { cls: 'card-chart' }),
  );
  const chart = new TimeChart(chartBox, { height: 200, format: fmt.num, integer: true, emptyText: 'No requests in the last hour yet.' });
  ctx.onStop(() => chart.destroy());

  let deadlinesDue = false;
  let inFlight = false;

  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    const now = Date.now();
    try {
      const [backends, poolStats, stats] = await Promise.all([
        get('/backends'),
        get('/pools/stats'),
        get('/stats', { from_ms: now - HOUR_MS, to_ms: now, bucket_seconds: 60 }),
      ]);
      if (!ctx.alive()) return;
      replace(alerts);
      renderKpis(kpis, stats);
      renderPools(pools, poolStats);
      renderBackends(backendsBody, backends, stats, refresh);
      renderChart(chart, stats);
      deadlinesDue = false;
      ctx.refreshed();
    } catch (error) {
      if (!ctx.alive()) return;
      replace(alerts, errorBanner(`Could not refresh: ${error.message}`));
      ctx.refreshed(error);
    } finally {
      inFlight = false;
    }
  }

  ctx.every(REFRESH_MS, refresh);
  // The cooldown countdowns tick locally between refreshes.
  ctx.every(1000, () => {
    for (const el of ctx.root.querySelectorAll('[data-deadline]')) {
      const left = Number(el.dataset.deadline) - performance.now();
      el.textContent = left > 0 ? fmt.countdown(left) : 'ending…';
      if (left <= 0 && !deadlinesDue) {
        deadlinesDue = true;
        setTimeout(refresh, 500);
      }
    }
  }, { now: false });
}

/** Requests per minute over the last few complete-ish buckets of a 60 s series. */
function ratePerMinute(series) {
  if (!series || !series.length) return 0;
  const recent = series.slice(-RATE_WINDOW_MIN);
  return recent.reduce((sum, b) => sum + b.requests, 0) / recent.length;
}

function renderKpis(root, stats) {
  const t = stats.total;
  replace(root,
    stat('Requests / min', fmt.decimal(ratePerMinute(stats.series)), `average of the last ${RATE_WINDOW_MIN} min`, { testid: 'kpi-rpm' }),
    stat('Requests · 1 h', fmt.num(t.requests), t.cancelled ? `${fmt.num(t.cancelled)} cancelled` : 'last 60 minutes', { testid: 'kpi-requests' }),
    stat('Error rate · 1 h', fmt.percent(t.error_rate), `${fmt.plural(t.errors, 'error')}`, { tone: t.error_rate >= 0.05 ? 'danger' : t.error_rate > 0 ? 'warning' : null, testid: 'kpi-errors' }),
    stat('Latency p50 / p95', `${fmt.ms(t.p50_latency_ms)} / ${fmt.ms(t.p95_latency_ms)}`, t.p50_ttfb_ms !== null ? `first byte p50 ${fmt.ms(t.p50_ttfb_ms)}` : 'no requests yet', { testid: 'kpi-latency' }),
    stat('Tokens · 1 h', fmt.num(t.prompt_tokens + t.completion_tokens), `${fmt.num(t.prompt_tokens)} prompt · ${fmt.num(t.completion_tokens)} completion`, { testid: 'kpi-tokens' }),
    stat('Prompt cache · 1 h', fmt.percent(t.cached_share), `${fmt.num(t.cached_tokens)} prompt tokens read from caches`, { testid: 'kpi-cache' }),
  );
}

function renderPools(root, pools) {
  replace(root, pools.map((pool) => {
    const segments = ['healthy', 'cooling', 'error', 'disabled'].map((status) => {
      const seg = h('span', { class: ['bar-seg', `bar-${status}`], title: `${pool[status]} ${status}` });
      seg.style.flexGrow = String(pool[status]);
      return pool[status] > 0 ? seg : null;
    });
    const count = (label, value, tone) => h('div', { class: ['count', tone && value > 0 && `count-${tone}`], dataset: { count: label.toLowerCase() } },
      h('span', { class: 'count-value', text: fmt.num(value) }),
      h('span', { class: 'count-label', text: label }));
    return h('section', { class: 'card pool-card', dataset: { pool: pool.name } },
      h('div', { class: 'pool-head' },
        h('h3', { text: pool.name }),
        chip(`priority ${pool.priority}`, 'chip-muted')),
      h('div', { class: ['bar', pool.total === 0 && 'bar-empty'], attrs: { role: 'img', 'aria-label': `${pool.healthy} healthy, ${pool.cooling} cooling, ${pool.error} in error, ${pool.disabled} disabled` } }, segments),
      h('div', { class: 'counts' },
        count('Total', pool.total),
        count('Enabled', pool.enabled),
        count('Healthy', pool.healthy, 'healthy'),
        count('Cooling', pool.cooling, 'cooling'),
        count('Error', pool.error, 'error')),
      pool.total === 0 ? h('p', { class: 'muted small', text: 'No backends in this pool.' }) : null);
  }));
}

function renderBackends(root, backends, stats, refresh) {
  if (!backends.length) {
    replace(root, emptyState('providers', 'No backends yet',
      'Add an upstream provider — an OpenAI-compatible base URL and its API key — and poolgate starts routing requests to it.',
      h('a', { class: 'btn btn-primary', href: '#/providers?new', text: 'Add a backend' })));
    return;
  }
  const rows = backends.map((b) => {
    const agg = stats.by_backend[b.id];
    const series = stats.series_by_backend[b.id];
    const statusLine = h('div', { class: 'status-line' }, statusBadge(b.status));
    const statusCell = h('td', { class: 'cell-status' }, statusLine);
    if (b.status === 'cooling' && b.cooldown_remaining_ms !== null && b.cooldown_remaining_ms !== undefined) {
      const deadline = performance.now() + b.cooldown_remaining_ms;
      statusLine.append(h('span', {
        class: 'countdown', title: 'Cooldown left', dataset: { deadline: String(deadline), testid: 'countdown' },
        text: fmt.countdown(b.cooldown_remaining_ms),
      }));
    }
    if ((b.status === 'error' || b.status === 'cooling') && b.last_error) {
      statusCell.append(h('div', { class: 'cell-note', text: b.last_error }));
    }
    const actions = h('td', { class: 'cell-actions' });
    if (b.status === 'cooling' || b.status === 'error') {
      actions.append(button('Reset', {
        kind: 'secondary', size: 'sm', iconName: 'reset', testid: 'reset',
        title: 'End the cooldown or error state now',
        onclick: async (event) => {
          event.currentTarget.disabled = true;
          try {
            await post(`/backends/${encodeURIComponent(b.id)}/reset-cooldown`);
            toast(`${b.label} is back in rotation.`);
          } catch (error) {
            toast(`Reset failed: ${error.message}`, 'error');
          }
          refresh();
        },
      }));
    }
    return h('tr', { dataset: { backend: b.name, status: b.status } },
      statusCell,
      h('td', { class: 'cell-primary' }, h('div', { class: 'cell-title', text: b.label }), b.label !== b.name ? h('div', { class: 'cell-sub mono', text: b.name }) : null),
      h('td', { text: b.pool }),
      h('td', { class: 'num', text: fmt.decimal(ratePerMinute(series)) }),
      h('td', { class: 'num', text: agg ? fmt.num(agg.requests) : '0' }),
      h('td', { class: ['num', agg && agg.error_rate > 0 && 'text-danger'], text: agg ? fmt.percent(agg.error_rate) : '—' }),
      h('td', { class: 'num', text: agg ? `${fmt.ms(agg.p50_latency_ms)} / ${fmt.ms(agg.p95_latency_ms)}` : '—' }),
      h('td', { class: 'num', text: agg ? fmt.num(agg.prompt_tokens + agg.completion_tokens) : '0' }),
      h('td', {
        class: 'num', dataset: { testid: 'cached-share' },
        title: 'Share of prompt tokens this backend read from its prompt cache',
        text: agg && agg.prompt_tokens ? fmt.percent(agg.cached_share) : '—',
      }),
      h('td', { class: 'num', text: fmt.num(b.in_flight) }),
      actions);
  });
  replace(root, table(
    ['Status', 'Backend', 'Pool', ['Req / min', 'num'], ['Requests · 1 h', 'num'], ['Error rate', 'num'], ['p50 / p95', 'num'], ['Tokens', 'num'], ['Cached', 'num'], ['In flight', 'num'], ''],
    rows, { testid: 'backend-status', cls: 'table-stack' }));
}

function renderChart(chart, stats) {
  const xs = stats.series.map((b) => Math.floor(b.ts_ms / 1000));
  chart.setData(xs, [
    { label: 'Requests', kind: 'bars', color: '--series-1' },
    { label: 'Errors', kind: 'bars', color: '--danger' },
  ], [
    stats.series.map((b) => b.requests),
    stats.series.map((b) => b.errors),
  ]);
}
