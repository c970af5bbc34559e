// Time-series charts on uPlot (vendored, see web/vendor/README.md), themed from the page's CSS
// variables so they follow light and dark mode.

import uPlot from '../vendor/uPlot.esm.js';
import { h } from './dom.js';

const live = new Set();
const INTEGER_STEPS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8].map((p) => m * p)).sort((a, b) => a - b);

function cssVar(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/** The series colours of the current theme. */
export function palette() {
  return Array.from({ length: 8 }, (_, i) => cssVar(`--series-${i + 1}`, '#4f46e5'));
}

function withAlpha(color, alpha) {
  return /^#[0-9a-f]{6}$/i.test(color) ? `${color}${alpha}` : color;
}

/**
 * A time chart that fills its container's width.
 * `series`: [{label, color?, kind: 'line' | 'area' | 'bars'}]; `format`: y-axis value formatter;
 * `axisWidth`: room for the y-axis labels (wider for dollar amounts).
 */
export class TimeChart {
  constructor(container, { height = 220, format = (v) => String(v), integer = false, axisWidth = 56, emptyText = 'No data in this range yet.' } = {}) {
    this.container = container;
    this.integer = integer;
    this.height = height;
    this.format = format;
    this.axisWidth = axisWidth;
    this.plot = null;
    this.key = '';
    this.last = null;
    this.empty = h('div', { class: 'chart-empty', hidden: true, text: emptyText });
    this.host = h('div', { class: 'chart-host' });
    container.classList.add('chart');
    container.append(this.host, this.empty);
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(container);
    live.add(this);
  }

  /** xs: Unix seconds; ys: one array per series (null = gap). */
  setData(xs, series, ys) {
    this.last = { xs, series, ys };
    const hasData = ys.some((values) => values.some((v) => v !== null && v !== 0));
    this.empty.hidden = hasData;
    this.container.classList.toggle('is-empty', !hasData);
    // A line with only a few points would be invisible: show its points.
    const sparse = ys.map((values) => values.filter((v) => v !== null).length <= 3);
    const key = JSON.stringify([series.map((s) => [s.label, s.kind, s.color]), sparse]);
    if (!this.plot || key !== this.key) {
      this.build(series, sparse);
      this.key = key;
    }
    this.plot.setData([xs, ...ys]);
  }

  build(series, sparse) {
    if (this.plot) this.plot.destroy();
    const colors = palette();
    const axis = cssVar('--chart-axis', '#6b7280');
    const grid = cssVar('--chart-grid', '#e5e7eb');
    const font = `12px ${cssVar('--font-sans', 'system-ui, sans-serif')}`;
    const format = this.format;
    const opts = {
      width: this.width(),
      height: this.height,
      cursor: { drag: { x: false, y: false }, points: { size: 7 } },
      legend: { show: true, live: true },
      scales: {
        x: { time: true },
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.15 : 4] },
      },
      axes: [
        { stroke: axis, font, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 } },
        {
          stroke: axis, font, size: this.axisWidth,
          grid: { stroke: grid, width: 1 }, ticks: { show: false },
          // Counts have whole-number ticks.
          ...(this.integer ? { incrs: INTEGER_STEPS } : {}),
          values: (_u, values) => values.map((v) => format(v)),
        },
      ],
      series: [
        {},
        ...series.map((s, i) => {
          const color = s.color ? (s.color.startsWith('--') ? cssVar(s.color, colors[i % colors.length]) : s.color) : colors[i % colors.length];
          const def = {
            label: s.label,
            stroke: color,
            width: 2,
            spanGaps: s.kind === 'line',
            points: { show: s.kind === 'line' && sparse[i], size: 7, fill: color },
            value: (_u, v) => (v === null || v === undefined ? '—' : format(v)),
          };
          if (s.kind === 'area') def.fill = withAlpha(color, '24');
          if (s.kind === 'bars') {
            def.fill = withAlpha(color, 'b3');
            def.width = 0;
            def.paths = uPlot.paths.bars({ size: [0.7, 24], gap: 1 });
          }
          return def;
        }),
      ],
    };
    this.plot = new uPlot(opts, [[]], this.host);
  }

  width() {
    return Math.max(240, Math.floor(this.container.clientWidth || 600));
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: this.height });
  }

  /** Rebuilds with the current theme's colours. */
  retheme() {
    if (!this.last) return;
    this.key = '';
    this.setData(this.last.xs, this.last.series, this.last.ys);
  }

  destroy() {
    live.delete(this);
    this.resizeObserver.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  for (const chart of live) chart.retheme();
});
