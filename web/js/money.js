// Spend and token limits, shared by the pages: budget bars (spent, reserved, limit), the limits
// learned from upstream answers, and the parsing of the USD and whole-number form fields.

import { h } from './dom.js';
import * as fmt from './format.js';

const PERIODS = [
  ['daily', 'Today'],
  ['monthly', 'This month'],
  ['total', 'In total'],
];

const isNumber = (value) => typeof value === 'number' && Number.isFinite(value);

/**
 * A form field's USD amount: '' → null (no limit), '0.5' or '$0.50' → 0.5; otherwise
 * `{error}`. The API checks the precision and says so under the field.
 */
export function parseUsd(text) {
  const value = text.trim().replace(/^\$\s*/, '');
  if (value === '') return { value: null };
  if (!/^\d+(\.\d+)?$|^\.\d+$/.test(value)) return { error: 'Enter an amount in US dollars, like 5 or 0.25 (empty = none).' };
  return { value: Number(value) };
}

/** A form field's whole number ('' → `fallback`); otherwise `{error}`. */
export function parseWhole(text, fallback = null) {
  const value = text.trim();
  if (value === '') return { value: fallback };
  if (!/^-?\d+$/.test(value)) return { error: 'Enter a whole number.' };
  return { value: Number(value) };
}

/** The text of an optional USD amount for an input: null → ''. */
export function usdInputValue(value) {
  return isNumber(value) ? String(value) : '';
}

/**
 * One spend window as a bar: `spent` of `limit` filled, `reserved` (requests in flight) shaded
 * after it, "resets at …" in the title. `spend` is `{spent_usd, reserved_usd, limit_usd,
 * resets_at}`; without a limit, only what was spent.
 */
export function budgetBar(spend, label, { testid } = {}) {
  if (!spend) return null;
  const spent = isNumber(spend.spent_usd) ? spend.spent_usd : 0;
  const reserved = isNumber(spend.reserved_usd) ? spend.reserved_usd : 0;
  const limit = isNumber(spend.limit_usd) ? spend.limit_usd : null;
  const title = [
    `${label}: ${fmt.usd(spent)} spent`,
    reserved > 0 ? `${fmt.usd(reserved)} reserved by requests in flight` : null,
    limit !== null ? `limit ${fmt.usd(limit)}` : 'no limit',
    spend.resets_at ? `resets at ${fmt.when(spend.resets_at)}` : null,
  ].filter(Boolean).join(' · ');
  const text = limit !== null ? `${fmt.usd(spent)} / ${fmt.usd(limit)}` : `${fmt.usd(spent)} spent`;
  const children = [h('div', { class: 'budget-line' },
    h('span', { class: 'budget-label', text: label }),
    h('span', { class: 'budget-value', dataset: { testid: 'budget-value' }, text }))];
  if (limit !== null) {
    const share = (value) => `${Math.min(100, limit > 0 ? (value / limit) * 100 : 100).toFixed(2)}%`;
    const used = h('span', { class: 'budget-spent' });
    used.style.width = share(spent);
    const held = h('span', { class: 'budget-reserved' });
    held.style.width = share(Math.min(reserved, Math.max(0, limit - spent)));
    const state = spent >= limit ? 'over' : spent + reserved >= limit * 0.8 ? 'near' : 'ok';
    children.push(h('div', {
      class: ['budget-bar', `budget-${state}`],
      attrs: { role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': String(limit), 'aria-valuenow': String(Math.min(spent, limit)), 'aria-label': title },
    }, used, held));
  }
  return h('div', { class: 'budget', title, dataset: { testid: testid || 'budget', period: label } }, children);
}

/**
 * The budget bars of a client key (`spend: {daily, monthly, total}`): one per window with a
 * limit; without any limit, the total spent, or nothing when the API reports no spend.
 */
export function keyBudgets(key) {
  const spend = key.spend || {};
  const limited = PERIODS.filter(([period]) => spend[period] && isNumber(spend[period].limit_usd));
  if (limited.length) {
    return h('div', { class: 'budgets' }, limited.map(([period, label]) => budgetBar(spend[period], label, { testid: `budget-${period}` })));
  }
  const total = spend.total || spend.monthly;
  if (total && isNumber(total.spent_usd)) {
    return h('div', { class: 'budgets' }, h('span', { class: 'muted small', dataset: { testid: 'spent' }, text: `${fmt.usd(total.spent_usd)} spent · no budget` }));
  }
  return h('span', { class: 'muted', text: '—' });
}

// === limits learned from upstream answers ===

const UPSTREAM_KINDS = [
  ['requests', 'Requests'],
  ['tokens', 'Tokens'],
  ['input_tokens', 'Input tokens'],
  ['output_tokens', 'Output tokens'],
];

/** Milliseconds until an RFC 3339 time or Unix ms; null when it cannot be read. */
export function msUntil(at, now = Date.now()) {
  if (at === null || at === undefined) return null;
  const time = typeof at === 'number' ? at : Date.parse(at);
  return Number.isFinite(time) ? time - now : null;
}

/**
 * What a backend's upstream last said about its limits (`upstream_limits`): remaining / limit
 * per kind with the time to its reset, and a "held until …" badge while poolgate holds the
 * backend back because the upstream said nothing is left. Null when it said nothing.
 */
export function upstreamLimits(limits) {
  if (!limits) return null;
  const rows = [];
  for (const [kind, label] of UPSTREAM_KINDS) {
    const figure = limits[kind];
    if (!figure || (!isNumber(figure.remaining) && !isNumber(figure.limit))) continue;
    const left = msUntil(figure.reset_at);
    const empty = figure.remaining === 0;
    rows.push(h('div', { class: ['learned', empty && 'learned-empty'], dataset: { kind } },
      h('span', { class: 'learned-label', text: label }),
      h('span', { class: 'learned-value', text: `${fmt.num(figure.remaining)} / ${fmt.num(figure.limit)}` }),
      left !== null && left > 0
        ? h('span', { class: 'learned-reset', title: `resets at ${fmt.when(figure.reset_at)}`, text: `resets in ${fmt.countdown(left)}` })
        : null));
  }
  const held = msUntil(limits.blocked_until);
  const badge = held !== null && held > 0
    ? h('span', {
      class: 'badge badge-cooling', dataset: { testid: 'held' },
      title: 'The upstream said nothing is left: poolgate sends it nothing until then, so its 429 never happens.',
    }, h('span', { class: 'dot' }), `held until ${fmt.when(limits.blocked_until)}`)
    : null;
  if (!rows.length && !badge) return null;
  return h('div', {
    class: 'learned-limits', dataset: { testid: 'upstream-limits' },
    title: limits.observed_at ? `As the upstream said at ${fmt.when(limits.observed_at)}` : undefined,
  }, badge, rows);
}
