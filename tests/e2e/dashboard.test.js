// The dashboard end to end, in a real headless Chromium against the real `poolgate` binary:
// log in (and a wrong token refused), create a backend through the form (with a validation
// error), edit it, proxy requests to a mock upstream so the charts fill, see a 429 cool a backend
// down with a live countdown and reset it, create and revoke a client key, export CSV, check
// that hostile names render as text, add an Azure backend (api-version, the Responses setting),
// turn sticky routing on and add a model alias, and see the cached-token share per backend. Screenshots of every page land in target/dashboard-screenshots/.
//
// The steps share one gateway and one browser page and run in order.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startStack, launchBrowser, watch, screenshot, copyToDocs, admin, chat,
  ADMIN_TOKEN, MODEL, LIMITED_MODEL, readFile,
} from './harness.js';

const XSS = '<img src=x onerror=alert(1)>';
const DESKTOP = { width: 1440, height: 900 };
const PHONE = { width: 390, height: 844 };

describe('dashboard', { timeout: 120000 }, () => {
  let stack;
  let browser;
  let context;
  let page;
  let watcher;
  const ids = {};

  before(async () => {
    stack = await startStack();
    browser = await launchBrowser();
    context = await browser.newContext({ viewport: DESKTOP, colorScheme: 'light', acceptDownloads: true });
    page = await context.newPage();
    page.setDefaultTimeout(10000);
    watcher = await watch(page);
  });

  after(async () => {
    if (browser) await browser.close();
    if (stack) await stack.stop();
  });

  const rowOf = (name) => page.locator(`tr[data-backend="${name}"]`);
  const field = (name) => page.locator(`[data-testid="backend-form"] [data-field="${name}"]`);

  test('serves the dashboard with a strict CSP', async () => {
    const redirect = await fetch(`${stack.base}/`, { redirect: 'manual' });
    assert.equal(redirect.headers.get('location'), '/dashboard/');
    const response = await fetch(`${stack.base}/dashboard/`);
    assert.equal(response.status, 200);
    const csp = response.headers.get('content-security-policy');
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /unsafe-inline|https?:/);
    assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
    const html = await response.text();
    assert.doesNotMatch(html, /<script>|<style|\sstyle=|\son[a-z]+=/i, 'no inline script or style in the page');
  });

  test('a wrong token is refused with a clear message', async () => {
    await page.goto(`${stack.base}/dashboard/`);
    await page.getByTestId('token').waitFor();
    await screenshot(page, 'desktop-light-login');
    await page.getByTestId('token').fill('definitely-not-the-admin-token');
    await page.getByTestId('login').click();
    const message = page.getByTestId('login-error');
    await message.getByText('That admin token was refused').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('poolgate.adminToken')), null);
  });

  test('logs in and shows the empty overview', async () => {
    await page.getByTestId('token').fill(ADMIN_TOKEN);
    await page.getByTestId('login').click();
    await page.locator('[data-page="overview"]').waitFor();
    await page.locator('[data-pool="primary"]').waitFor();
    await page.getByText('No backends yet').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('poolgate.adminToken')), ADMIN_TOKEN);
    await screenshot(page, 'desktop-light-overview-empty');
  });

  test('creates a backend through the form, showing validation errors from the API', async () => {
    await page.locator('[data-nav="providers"]').click();
    await page.getByTestId('add-backend').first().click();
    const form = page.getByTestId('backend-form');
    await form.waitFor();
    await field('name').locator('input').fill('mock-1');
    await field('api_base_url').locator('input').fill('not a url');
    await field('api_key').locator('input').fill('sk-e2e-upstream-key-0001');
    await form.getByTestId('add-mapping').click();
    await form.getByTestId('canonical').last().fill(MODEL);
    await form.getByTestId('upstream').last().fill('mock-model');
    await page.getByTestId('save').click();

    const urlError = field('api_base_url').locator('.field-error');
    await urlError.waitFor();
    assert.match(await urlError.textContent(), /api_base_url.*not a valid URL/);
    await screenshot(page, 'desktop-light-providers-form-error');

    // A negative RPM is refused by the API too, next to its field.
    await field('api_base_url').locator('input').fill(stack.mockUrl);
    await field('rpm_limit').locator('input').fill('-5');
    await page.getByTestId('save').click();
    await field('rpm_limit').locator('.field-error').waitFor();
    assert.equal(await field('api_base_url').locator('.field-error').isHidden(), true, 'the fixed field is clear again');

    await field('rpm_limit').locator('input').fill('600');
    await page.getByTestId('save').click();
    await form.waitFor({ state: 'detached' });
    const row = rowOf('mock-1');
    await row.waitFor();
    assert.match(await row.textContent(), /sk-…0001|…0001/);
    assert.match(await row.textContent(), /gpt-4o-mini → mock-model/);
    assert.equal(await row.getAttribute('data-status'), 'healthy');
  });

  test('edits the backend; an empty key field keeps the key', async () => {
    await rowOf('mock-1').getByTestId('edit').click();
    const form = page.getByTestId('backend-form');
    await form.waitFor();
    assert.equal(await field('api_key').locator('input').inputValue(), '', 'the key is write-only');
    await field('label').locator('input').fill('Mock upstream (primary)');
    await form.getByTestId('add-mapping').click();
    await form.getByTestId('canonical').last().fill('gpt-4o');
    await form.getByTestId('upstream').last().fill('mock-model-large');
    await screenshot(page, 'desktop-light-providers-edit');
    await page.getByTestId('save').click();
    await form.waitFor({ state: 'detached' });
    const row = rowOf('mock-1');
    await row.getByText('Mock upstream (primary)').waitFor();
    assert.match(await row.textContent(), /gpt-4o → mock-model-large/);
    const [backend] = (await admin(stack.base, 'GET', '/backends')).filter((b) => b.name === 'mock-1');
    assert.equal(backend.api_key, 'sk-…0001');
    assert.equal(backend.rpm_limit, 600);
    ids.mock = backend.id;
  });

  test('more backends: one that answers 429, one with a hostile label', async () => {
    const limited = await admin(stack.base, 'POST', '/backends', {
      name: 'limited', label: 'Rate-limited upstream', api_base_url: stack.limitedUrl,
      api_key: 'sk-e2e-limited-key-0002', model_mappings: { [LIMITED_MODEL]: 'anything' },
    });
    ids.limited = limited.id;
    const xss = await admin(stack.base, 'POST', '/backends', {
      name: 'xss-probe', label: XSS, api_base_url: stack.mockUrl, pool: 'fallback',
      api_key: 'sk-e2e-xss-key-0003', model_mappings: { [MODEL]: 'mock-model' },
    });
    ids.xss = xss.id;
    await rowOf('xss-probe').waitFor();
    await rowOf('limited').waitFor();
  });

  test('proxied requests show up; a 429 cools the backend with a live countdown', async () => {
    const statuses = [];
    for (let i = 0; i < 24; i += 1) statuses.push(await chat(stack.base, { stream: i % 3 === 0 }));
    assert.deepEqual(new Set(statuses), new Set([200]));
    // Requests the gateway refuses count as errors in the charts.
    assert.equal(await chat(stack.base, { model: 'no-such-model' }), 404);
    assert.equal(await chat(stack.base, { model: LIMITED_MODEL }), 429);
    assert.equal(stack.limitedHits(), 1);

    await page.locator('[data-nav="overview"]').click();
    const row = rowOf('limited');
    await page.waitForFunction(() => document.querySelector('tr[data-backend="limited"]')?.dataset.status === 'cooling');
    const countdown = row.getByTestId('countdown');
    const first = await countdown.textContent();
    assert.match(first, /^[01]:\d\d$/);
    await page.waitForFunction(
      (before) => {
        const now = document.querySelector('tr[data-backend="limited"] [data-testid="countdown"]')?.textContent;
        return now && now !== before;
      },
      first,
    );
    const pool = page.locator('[data-pool="primary"]');
    assert.equal((await pool.locator('[data-count="cooling"] .count-value').textContent()).trim(), '1');
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="kpi-requests"] .stat-value')?.textContent.replace(/\D/g, '')) >= 26);
    await screenshot(page, 'desktop-light-overview');
  });

  test('reset ends the cooldown', async () => {
    await rowOf('limited').getByTestId('reset').click();
    await page.waitForFunction(() => document.querySelector('tr[data-backend="limited"]')?.dataset.status === 'healthy');
    const [backend] = (await admin(stack.base, 'GET', '/backends')).filter((b) => b.name === 'limited');
    assert.equal(backend.status, 'healthy');
  });

  test('usage: charts fill, recent requests listed, CSV exported', async () => {
    await page.locator('[data-nav="usage"]').click();
    await page.locator('[data-testid="recent-table"] tbody tr').first().waitFor();
    await page.waitForFunction(() => document.querySelectorAll('.chart:not(.is-empty) canvas').length >= 3);
    const rows = await page.locator('[data-testid="recent-table"] tbody tr').count();
    assert.ok(rows >= 26, `recent requests listed (${rows})`);
    assert.ok(await page.locator('[data-testid="recent-table"] tr[data-status="429"]').count() >= 1);

    // Other ranges: the same requests, in wider buckets.
    const weekly = page.waitForResponse((r) => r.url().includes('/admin/api/stats') && r.url().includes('bucket_seconds=7200'));
    await page.getByRole('radio', { name: 'Last week' }).click();
    assert.ok((await (await weekly).json()).total.requests >= 26);
    await page.waitForFunction(() => document.querySelector('[data-testid="chart-requests"] .chart')?.classList.contains('is-empty') === false);
    await page.getByRole('radio', { name: 'Last hour' }).click();

    // Split by backend: one series per backend, named.
    await page.getByRole('radio', { name: 'By backend' }).click();
    await page.locator('[data-testid="chart-requests"] .u-legend').getByText('mock-1').waitFor();
    await screenshot(page, 'desktop-light-usage');

    // Filter the table to one backend.
    await page.getByTestId('filter-backend').selectOption(ids.limited);
    await page.waitForFunction(() => {
      const trs = document.querySelectorAll('[data-testid="recent-table"] tbody tr');
      return trs.length === 1 && trs[0].dataset.status === '429';
    });
    await page.getByTestId('filter-backend').selectOption('');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="recent-table"] tbody tr').length >= 26);

    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-csv').click()]);
    assert.match(download.suggestedFilename(), /^poolgate-usage-hour-\d+\.csv$/);
    const csv = await readFile(await download.path(), 'utf8');
    const lines = csv.trim().split(/\r\n/);
    assert.match(lines[0], /^request_id,time,ts_ms,/);
    assert.ok(lines.length >= 27, `CSV rows (${lines.length})`);
  });

  test('creates a client key (shown once), uses it, revokes it', async () => {
    await page.locator('[data-nav="keys"]').click();
    await page.getByText('No client keys yet').waitFor();
    await page.getByTestId('key-name').fill('ci-app');
    await page.getByTestId('key-parallel').fill('2');
    await page.getByTestId('create-key').click();
    const secret = page.getByTestId('secret');
    await secret.waitFor();
    const parallelCell = page.locator('tr[data-key="ci-app"] [data-testid="key-parallel-cell"]');
    await parallelCell.waitFor();
    assert.equal((await parallelCell.textContent()).trim(), '2', 'max_parallel_requests is shown');
    const key = (await secret.textContent()).trim();
    assert.match(key, /^pgk-/);
    await page.getByTestId('copy-key').waitFor();
    assert.equal(await chat(stack.base, { key }), 200, 'the new key works');

    // A hostile key name renders as text too.
    await page.getByTestId('key-name').fill(XSS);
    await page.getByTestId('create-key').click();
    await page.locator(`tr[data-key="${XSS}"]`).waitFor();
    await screenshot(page, 'desktop-light-keys');

    await page.locator('tr[data-key="ci-app"]').getByTestId('revoke').click();
    await page.getByTestId('confirm').click();
    await page.waitForFunction(() => document.querySelector('tr[data-key="ci-app"]')?.dataset.state === 'revoked');
    assert.equal(await chat(stack.base, { key }), 401, 'the revoked key is refused');
  });

  test('hostile names render as text, and nothing ran', async () => {
    await page.locator('[data-nav="providers"]').click();
    const title = rowOf('xss-probe').locator('.cell-title');
    await title.waitFor();
    assert.equal(await title.textContent(), XSS);
    assert.equal(await page.locator('img[src="x"]').count(), 0);
    await page.locator('[data-nav="keys"]').click();
    const keyName = page.locator(`tr[data-key="${XSS}"] .cell-title`);
    await keyName.waitFor();
    assert.equal(await keyName.textContent(), XSS);
    assert.equal(await page.locator('img[src="x"]').count(), 0);
    assert.deepEqual(watcher.seen.dialogs, []);
  });

  test('delete asks first', async () => {
    await page.locator('[data-nav="providers"]').click();
    await rowOf('xss-probe').getByTestId('delete').click();
    await page.getByRole('button', { name: 'Cancel' }).click();
    await rowOf('xss-probe').waitFor();
    await screenshot(page, 'desktop-light-providers');
    await rowOf('xss-probe').getByTestId('delete').click();
    await page.getByTestId('confirm').click();
    await rowOf('xss-probe').waitFor({ state: 'detached' });
  });

  test('Azure in the provider form: api-version and the Responses setting, errors from the API', async () => {
    await page.locator('[data-nav="providers"]').click();
    await page.getByTestId('add-backend').first().click();
    const form = page.getByTestId('backend-form');
    await form.waitFor();
    assert.equal(await field('api_version').isHidden(), true, 'the Azure field shows only for Azure');
    await field('api').locator('select').selectOption('azure');
    await field('api_version').waitFor();
    assert.match(await field('api_base_url').locator('.hint').textContent(), /openai\.azure\.com/);
    await field('name').locator('input').fill('azure-1');
    // mock-upstream serves Azure's URLs below its root.
    await field('api_base_url').locator('input').fill(stack.mockUrl.replace(/\/v1$/, ''));
    await field('api_key').locator('input').fill('azure-e2e-key-0001');
    await field('api_version').locator('input').fill('2024-10-21');
    await field('responses').locator('select').selectOption('true');
    await form.getByTestId('add-mapping').click();
    await form.getByTestId('canonical').last().fill('gpt-4o-azure');
    await form.getByTestId('upstream').last().fill('gpt4o-prod');
    await page.getByTestId('save').click();
    const responsesError = field('responses').locator('.field-error');
    await responsesError.waitFor();
    assert.match(await responsesError.textContent(), /2025-03-01-preview/);
    await screenshot(page, 'desktop-light-providers-azure');

    await field('api_version').locator('input').fill('2025-04-01-preview');
    await page.getByTestId('save').click();
    await form.waitFor({ state: 'detached' });
    const row = rowOf('azure-1');
    await row.waitFor();
    assert.match(await row.locator('.cell-api').textContent(), /azure.*responses/);
    const [backend] = (await admin(stack.base, 'GET', '/backends')).filter((b) => b.name === 'azure-1');
    assert.equal(backend.api, 'azure');
    assert.equal(backend.api_version, '2025-04-01-preview');
    assert.equal(backend.responses, true);
    assert.equal(await chat(stack.base, { model: 'gpt-4o-azure' }), 200, 'routed through Azure URLs');

    // HTTP/2 towards the upstream: chosen in the form, shown in the list, used by requests.
    await rowOf('azure-1').getByTestId('edit').click();
    await form.waitFor();
    assert.equal(await field('http_version').locator('select').inputValue(), 'auto');
    await field('http_version').locator('select').selectOption('http2');
    await page.getByTestId('save').click();
    await form.waitFor({ state: 'detached' });
    await page.waitForFunction(() => /HTTP\/2/.test(
      document.querySelector('tr[data-backend="azure-1"] .cell-api')?.textContent ?? ''));
    const [http2] = (await admin(stack.base, 'GET', '/backends')).filter((b) => b.name === 'azure-1');
    assert.equal(http2.http_version, 'http2');
    assert.equal(http2.api_version, '2025-04-01-preview', 'the other settings are kept');
    assert.equal(await chat(stack.base, { model: 'gpt-4o-azure' }), 200, 'routed over h2c');

    // Anthropic backends have no Responses API: the form says so.
    await rowOf('azure-1').getByTestId('edit').click();
    await form.waitFor();
    await field('api').locator('select').selectOption('anthropic');
    assert.equal(await field('responses').locator('select').isDisabled(), true);
    assert.equal(await field('responses').locator('select').inputValue(), 'false');
    assert.equal(await field('api_version').isHidden(), true);
    await page.getByRole('button', { name: 'Cancel' }).click();
    await form.waitFor({ state: 'detached' });
  });

  test('routing: the sticky setting and model aliases', async () => {
    await page.locator('[data-nav="routing"]').click();
    const state = page.getByTestId('sticky-state');
    await state.waitFor();
    assert.match(await state.textContent(), /^Off/);
    await page.getByTestId('sticky-enabled').check();
    const sticky = (name) => page.locator(`[data-testid="sticky-form"] [data-field="${name}"]`);
    await sticky('ttl_seconds').locator('input').fill('0');
    await page.getByTestId('sticky-save').click();
    await sticky('ttl_seconds').locator('.field-error').waitFor();
    assert.match(await sticky('ttl_seconds').locator('.field-error').textContent(), /ttl_seconds/);
    await sticky('ttl_seconds').locator('input').fill('900');
    await sticky('models').locator('input').fill(MODEL);
    await page.getByTestId('sticky-save').click();
    await page.waitForFunction((model) => document.querySelector('[data-testid="sticky-state"]')?.textContent.startsWith(`On for ${model}`), MODEL);
    const saved = await admin(stack.base, 'GET', '/settings/sticky');
    assert.equal(saved.enabled, true);
    assert.deepEqual(saved.models, [MODEL]);
    assert.equal(saved.ttl_seconds, 900);

    await page.getByText('No aliases yet').waitFor();
    await page.getByTestId('alias-name').fill('latest');
    await page.getByTestId('alias-target').fill(MODEL);
    await page.getByTestId('save-alias').click();
    const alias = page.locator('tr[data-alias="latest"]');
    await alias.waitFor();
    assert.match(await alias.textContent(), /served/);
    assert.equal(await chat(stack.base, { model: 'latest' }), 200, 'the alias routes');
    // An alias of an alias is refused, next to the field.
    await page.getByTestId('alias-name').fill('chain');
    await page.getByTestId('alias-target').fill('latest');
    await page.getByTestId('save-alias').click();
    const aliasError = page.locator('[data-testid="alias-form"] [data-field="alias"] .field-error');
    await aliasError.waitFor();
    assert.match(await aliasError.textContent(), /itself an alias/);
    await screenshot(page, 'desktop-light-routing');
    await alias.getByTestId('delete-alias').click();
    await page.getByTestId('confirm').click();
    await alias.waitFor({ state: 'detached' });
    assert.deepEqual(await admin(stack.base, 'GET', '/aliases'), []);
    // Leave one for the screenshots.
    await admin(stack.base, 'PUT', '/aliases/gpt-4o-mini-latest', { target: MODEL });
  });

  test('the overview shows the cached-token share per backend', async () => {
    for (let i = 0; i < 2; i += 1) {
      const response = await fetch(`${stack.base}/v1/responses`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: MODEL, prompt_cache_key: 'e2e-session', input: 'Hello' }),
      });
      assert.equal(response.status, 200, await response.text());
    }
    await page.locator('[data-nav="overview"]').click();
    await page.waitForFunction(() => {
      const text = document.querySelector('tr[data-backend="mock-1"] [data-testid="cached-share"]')?.textContent;
      return text && /^[\d.]+ %$/.test(text) && text !== '0 %';
    });
    assert.match(await page.getByTestId('kpi-cache').textContent(), /Prompt cache/);
  });

  test('screenshots: dark mode and a phone', async () => {
    const shots = [
      { name: 'desktop-dark', viewport: DESKTOP, colorScheme: 'dark', pages: ['overview', 'providers', 'routing', 'usage', 'keys', 'prices'] },
      { name: 'phone-light', viewport: PHONE, colorScheme: 'light', pages: ['overview', 'providers', 'routing', 'usage', 'keys', 'prices'] },
      { name: 'phone-dark', viewport: PHONE, colorScheme: 'dark', pages: ['overview', 'usage'] },
      // For docs/img/dashboard-overview.png (README): the final state, one backend cooling.
      { name: 'readme', viewport: DESKTOP, colorScheme: 'light', pages: ['overview'] },
    ];
    // Cool the limited backend again so the screenshots show every state.
    assert.equal(await chat(stack.base, { model: LIMITED_MODEL }), 429);
    for (const shot of shots) {
      const ctx = await browser.newContext({
        viewport: shot.viewport, colorScheme: shot.colorScheme,
        deviceScaleFactor: shot.viewport === PHONE ? 2 : 1, isMobile: shot.viewport === PHONE, hasTouch: shot.viewport === PHONE,
      });
      await ctx.addInitScript((token) => sessionStorage.setItem('poolgate.adminToken', token), ADMIN_TOKEN);
      const p = await ctx.newPage();
      p.setDefaultTimeout(10000);
      const w = await watch(p);
      for (const name of shot.pages) {
        await p.goto(`${stack.base}/dashboard/#/${name}`);
        await p.locator(`[data-page="${name}"]`).waitFor();
        await p.locator(`[data-page="${name}"] .loading`).first().waitFor({ state: 'detached' });
        if (name === 'usage') await p.waitForFunction(() => document.querySelectorAll('.chart:not(.is-empty) canvas').length >= 3);
        await screenshot(p, `${shot.name}-${name}`);
      }
      assert.deepEqual(w.problems(), [], `${shot.name}: no console errors, CSP violations or dialogs`);
      await ctx.close();
    }
    if (process.env.UPDATE_DOCS_SCREENSHOT) await copyToDocs('readme-overview', 'dashboard-overview.png');
  });

  test('no console errors, CSP violations or dialogs on the way', () => {
    assert.deepEqual(watcher.problems(), []);
  });
});
