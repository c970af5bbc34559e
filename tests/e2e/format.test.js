// Dollar amounts as the dashboard shows them (web/js/format.js), without a browser: small costs
// keep their first significant digits, absent values are a dash.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { usd, perMtok } from '../../web/js/format.js';

test('small costs are never shown as $0.00', () => {
  assert.equal(usd(0.000123), '$0.000123');
  assert.equal(usd(0.0000039), '$0.0000039');
  assert.equal(usd(0.000000005), '$0.000000005');
  assert.equal(usd(0.0123), '$0.0123');
  assert.equal(usd(0.075), '$0.075');
});

test('ordinary amounts have cents', () => {
  assert.equal(usd(0), '$0.00');
  assert.equal(usd(0.5), '$0.50');
  assert.equal(usd(2.5), '$2.50');
  assert.equal(usd(1234.5678), '$1,234.57');
});

test('prices per million tokens are shown exactly (thousandths of a dollar)', () => {
  assert.equal(perMtok(3.125), '$3.125');
  assert.equal(perMtok(2.5), '$2.50');
  assert.equal(perMtok(0.075), '$0.075');
  assert.equal(perMtok(0.005), '$0.005');
  assert.equal(perMtok(1250), '$1,250.00');
  assert.equal(perMtok(null), '—');
});

test('absent or broken values are a dash, never undefined or NaN', () => {
  for (const value of [null, undefined, Number.NaN, Infinity, '0.5']) assert.equal(usd(value), '—');
});
