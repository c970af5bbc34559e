// Tokens and money in the dashboard, in a real headless Chromium against the real `poolgate` and
// `mock-upstream` binaries: a client key made through the form with a TPM limit and a small daily
// budget, a few requests through the mock (which reports usage), then the usage page's spend (the
// figures of the records the API returns), the key's budget bar, a backend's TPM limit and monthly
// cap set through its form, the limits an upstream reported in its rate-limit headers (a tiny
// upstream that says no requests are left), and the prices page (the default table listed; an edit
// persists across a reload; a reset brings the default back).
//
// One gateway of its own and one browser page; the steps run in order.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { startStack, launchBrowser, watch, screenshot, admin, readFile, ADMIN_TOKEN, MODEL } from './harness.js';

// The mock's model is sent upstream as a model the default price table knows.
const UPSTREAM_MODEL = 'gpt-4o';
const TPM = 50000;
const DAILY_BUDGET = 0.001;

const LIMITS_MODEL = 'limits-model';

/**
 * An OpenAI-shaped upstream whose answers say, in OpenAI's rate-limit headers, that no request
 * is left for 30 s (and most of the tokens are).
 */
async function startLimitsUpstream() {
  const server = createServer((request, response) => {
    request.resume();
    response.writeHead(200, {
      'content-type': 'application/json',
      'x-ratelimit-limit-requests': '100',
      'x-ratelimit-remaining-requests': '0',
      'x-ratelimit-reset-requests': '30s',
      'x-ratelimit-limit-tokens': '40000',
      'x-ratelimit-remaining-tokens': '39000',
      'x-ratelimit-reset-tokens': '1.5s',
    });
    response.end(JSON.stringify({
      id: 'chatcmpl-limits', object: 'chat.completion', created: Math.floor(Date.now() / 1000), model: LIMITS_MODEL,
      choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 },
    }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${server.address().port}/v1`, close: () => { server.closeAllConnections(); server.close(); } };
}

/** A chat completion with a client key; a small `max_tokens` keeps the cost estimate small. */
async function chat(base, key, { stream = false, model = MODEL } = {}) {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, stream, max_tokens: 16, messages: [{ role: 'user', content: 'What does this cost?' }] }),
  });
  const text = await response.text();
  assert.equal(response.status, 200, text);
}

/** `$0.000123` → 0.000123. */
const dollars = (text) => Number(text.replace(/[^0-9.]/g, ''));

/** The displayed amount is the exact one, rounded for people (3 significant digits at least). */
function assertShows(text, exact, what) {
  const shown = dollars(text);
  assert.ok(exact > 0, `${what}: a cost above zero (${exact})`);
  assert.ok(Math.abs(shown - exact) <= exact * 0.005, `${what}: shows ${text} for ${exact}`);
}

describe('tokens and money in the dashboard', { timeout: 60000 }, () => {
  let stack;
  let browser;
  let page;
  let watcher;
  let key;
  let limitsUpstream;
  const started = Date.now();

  before(async () => {
    stack = await startStack();
    limitsUpstream = await startLimitsUpstream();
    await admin(stack.base, 'POST', '/backends', {
      name: 'mock-priced', api_base_url: stack.mockUrl, api_key: 'sk-e2e-money-0001',
      model_mappings: { [MODEL]: UPSTREAM_MODEL },
    });
    browser = await launchBrowser();
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, colorScheme: 'light', locale: 'en-US', acceptDownloads: true });
    await context.addInitScript((token) => sessionStorage.setItem('poolgate.adminToken', token), ADMIN_TOKEN);
    page = await context.newPage();
    page.setDefaultTimeout(10000);
    watcher = await watch(page);
  });

  after(async () => {
    if (browser) await browser.close();
    if (stack) await stack.stop();
    if (limitsUpstream) limitsUpstream.close();
    console.log(`# money e2e: ${Date.now() - started} ms`);
  });

  const keyRow = () => page.locator('tr[data-key="budgeted"]');

  test('a key with a TPM limit and a daily budget, made through the form', async () => {
    await page.goto(`${stack.base}/dashboard/#/keys`);
    await page.getByText('No client keys yet').waitFor();
    await page.getByTestId('key-name').fill('budgeted');
    await page.getByTestId('key-tpm').fill(String(TPM));
    // A bad amount is refused under its field before anything is sent.
    await page.getByTestId('key-budget-daily').fill('five dollars');
    await page.getByTestId('create-key').click();
    await page.locator('[data-field="budget_daily_usd"] .field-error').waitFor();
    await page.getByTestId('key-budget-daily').fill(String(DAILY_BUDGET));
    await page.getByTestId('create-key').click();
    key = (await page.getByTestId('secret').textContent()).trim();
    assert.match(key, /^pgk-/);
    await keyRow().waitFor();
    assert.equal((await keyRow().getByTestId('key-tpm-cell').textContent()).trim(), '50,000');

    const [saved] = (await admin(stack.base, 'GET', '/keys')).filter((k) => k.name === 'budgeted');
    assert.equal(saved.tpm_limit, TPM);
    assert.equal(saved.budget_daily_usd, DAILY_BUDGET);
    assert.equal(saved.budget_monthly_usd, null);
    assert.equal(saved.budget_total_usd, null);
  });

  let records;
  let spent;

  test('requests through the mock: the usage page shows what the records cost', async () => {
    await chat(stack.base, key);
    await chat(stack.base, key);
    await chat(stack.base, key, { stream: true });
    // The usage writer flushes every 100 ms (harness config).
    const deadline = Date.now() + 5000;
    do {
      ({ records } = await admin(stack.base, 'GET', '/usage?limit=10'));
      if (records.length >= 3) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    } while (Date.now() < deadline);
    assert.equal(records.length, 3);
    for (const r of records) {
      assert.equal(r.upstream_model, UPSTREAM_MODEL);
      assert.equal(typeof r.cost_usd, 'number', `record ${r.request_id} has a cost`);
    }
    spent = records.reduce((sum, r) => sum + r.cost_usd, 0);

    await page.goto(`${stack.base}/dashboard/#/usage`);
    const rows = page.locator('[data-testid="recent-table"] tbody tr');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="recent-table"] tbody tr').length === 3);
    for (const r of records) {
      const cell = page.locator(`tr[data-request="${r.request_id}"] [data-testid="cost-cell"]`);
      assert.equal(Number(await cell.getAttribute('data-cost')), r.cost_usd, 'the exact cost of the record');
      const text = await cell.textContent();
      assertShows(text, r.cost_usd, `cost of ${r.request_id}`);
      assert.equal(text.startsWith('≈'), Boolean(r.tokens_estimated), 'estimated costs are marked');
    }
    assert.equal(await rows.count(), 3);
    assertShows(await page.locator('[data-testid="kpi-spend"] .stat-value').textContent(), spent, 'total spend');
    await page.waitForFunction(() => document.querySelector('[data-testid="chart-spend"] .chart')?.classList.contains('is-empty') === false);

    // The CSV export carries each record's cost as a plain decimal.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-csv').click()]);
    const [header, ...lines] = (await readFile(await download.path(), 'utf8')).trim().split(/\r\n/);
    const column = (name) => header.split(',').indexOf(name);
    assert.ok(column('cost_usd') > 0, header);
    for (const line of lines) {
      const cells = line.split(',');
      const record = records.find((r) => r.request_id === cells[column('request_id')]);
      assert.equal(Number(cells[column('cost_usd')]), record.cost_usd, line);
      assert.doesNotMatch(cells[column('cost_usd')], /e/i, 'no exponent');
    }

    // Spend by key: the one key, with all of it.
    await page.getByRole('radio', { name: 'By key' }).click();
    await page.locator('[data-testid="breakdown"] h2', { hasText: 'By key' }).waitFor();
    const group = page.locator('[data-testid="breakdown"] tbody tr').filter({ hasText: 'budgeted' });
    assertShows(await group.getByTestId('group-spend').textContent(), spent, 'spend of the key');
    await screenshot(page, 'money-usage');
  });

  test('the key’s budget bar: spent of the daily budget, reset time in its title; a budget added by editing', async () => {
    await page.goto(`${stack.base}/dashboard/#/keys`);
    const bar = keyRow().getByTestId('budget-daily');
    await bar.waitFor();
    const [saved] = (await admin(stack.base, 'GET', '/keys')).filter((k) => k.name === 'budgeted');
    assert.ok(Math.abs(saved.spend.daily.spent_usd - spent) < 1e-9, `the ledger has the records' cost (${saved.spend.daily.spent_usd} vs ${spent})`);
    const [used, limit] = (await bar.getByTestId('budget-value').textContent()).split('/');
    assertShows(used, spent, 'spent today');
    assert.equal(dollars(limit), DAILY_BUDGET);
    assert.match(await bar.getAttribute('title'), /resets at /);
    const width = await bar.locator('.budget-spent').evaluate((el) => el.getBoundingClientRect().width);
    assert.ok(width > 0, 'the bar shows what is spent');

    // Edit: a monthly budget too; the other limits stay.
    await keyRow().getByTestId('edit-key').click();
    const form = page.getByTestId('key-edit-form');
    assert.equal(await form.getByTestId('key-tpm').inputValue(), String(TPM));
    await form.getByTestId('key-budget-monthly').fill('1');
    await page.getByTestId('save-key').click();
    await form.waitFor({ state: 'detached' });
    await keyRow().getByTestId('budget-monthly').waitFor();
    const [edited] = (await admin(stack.base, 'GET', '/keys')).filter((k) => k.name === 'budgeted');
    assert.equal(edited.budget_monthly_usd, 1);
    assert.equal(edited.budget_daily_usd, DAILY_BUDGET);
    assert.equal(edited.tpm_limit, TPM);
    await screenshot(page, 'money-keys');
  });

  test('providers: a TPM limit and a monthly cap through the form; the limits an upstream reported', async () => {
    await page.goto(`${stack.base}/dashboard/#/providers`);
    const row = page.locator('tr[data-backend="mock-priced"]');
    await row.getByTestId('edit').click();
    const form = page.getByTestId('backend-form');
    const input = (name) => form.locator(`[data-field="${name}"] input`);
    await input('tpm_limit').fill('100000');
    await input('monthly_spend_cap_usd').fill('5');
    await page.getByTestId('save').click();
    await form.waitFor({ state: 'detached' });
    await row.getByTestId('backend-spend').waitFor();
    assert.match(await row.getByTestId('limits-cell').textContent(), /TPM\s*100K/);
    assert.match(await row.getByTestId('backend-spend').getByTestId('budget-value').textContent(), /\/ \$5\.00$/);
    const [saved] = (await admin(stack.base, 'GET', '/backends')).filter((b) => b.name === 'mock-priced');
    assert.equal(saved.tpm_limit, 100000);
    assert.equal(saved.monthly_spend_cap_usd, 5);

    // An upstream that says no request is left: the backend is held until its reset.
    await admin(stack.base, 'POST', '/backends', {
      name: 'says-limits', api_base_url: limitsUpstream.url, api_key: 'sk-e2e-limits-0002',
      model_mappings: { [LIMITS_MODEL]: LIMITS_MODEL },
    });
    await chat(stack.base, ADMIN_TOKEN, { model: LIMITS_MODEL });
    await page.reload();
    const limited = page.locator('tr[data-backend="says-limits"]');
    const learned = limited.getByTestId('upstream-limits');
    await learned.waitFor();
    assert.match(await learned.getByTestId('held').textContent(), /^held until /);
    assert.match(await learned.locator('[data-kind="requests"]').textContent(), /Requests\s*0 \/ 100\s*resets in 0:[23]\d/);
    assert.match(await learned.locator('[data-kind="tokens"]').textContent(), /Tokens\s*39,000 \/ 40,000/);
    await screenshot(page, 'money-providers');
  });

  test('prices: the default table is listed; an edit persists, a reset brings the default back', async () => {
    await page.goto(`${stack.base}/dashboard/#/prices`);
    const row = () => page.locator(`tr[data-model="${UPSTREAM_MODEL}"]`);
    await row().waitFor();
    assert.equal(await row().getAttribute('data-source'), 'default');
    assert.ok(await page.locator('[data-testid="price-table"] tbody tr[data-source="default"]').count() >= 20, 'the shipped table');
    assert.match(await page.getByTestId('prices-taken').textContent(), /taken \d{4}-\d\d-\d\d/);
    const original = await row().getByTestId('price-input').textContent();

    await row().getByTestId('edit-price').click();
    const input = page.getByTestId('price-field-input_per_mtok');
    await input.fill('3.1234');
    await page.getByTestId('save-price').click();
    // Finer than $0.001 / Mtok: the API's message, under the field.
    await page.locator('[data-testid="price-form"] [data-field="input_per_mtok"] .field-error').waitFor();
    await input.fill('3.125');
    await page.getByTestId('save-price').click();
    await page.getByTestId('price-form').waitFor({ state: 'detached' });
    await page.waitForFunction((model) => document.querySelector(`tr[data-model="${model}"]`)?.dataset.source === 'api', UPSTREAM_MODEL);

    await page.reload();
    await row().waitFor();
    assert.equal(await row().getAttribute('data-source'), 'api');
    assert.equal((await row().getByTestId('price-input').textContent()).trim(), '$3.125');
    const [stored] = (await admin(stack.base, 'GET', '/prices')).models.filter((m) => m.model === UPSTREAM_MODEL);
    assert.equal(stored.input_per_mtok, 3.125);
    assert.equal(stored.source, 'api');
    await screenshot(page, 'money-prices');

    await row().getByTestId('reset-price').click();
    await page.getByTestId('confirm').click();
    await page.waitForFunction((model) => document.querySelector(`tr[data-model="${model}"]`)?.dataset.source === 'default', UPSTREAM_MODEL);
    assert.equal(await row().getByTestId('price-input').textContent(), original);
  });

  test('no console errors, CSP violations or dialogs on the way', () => {
    assert.deepEqual(watcher.problems(), []);
  });
});
