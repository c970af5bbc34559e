// Number, time and duration formatting for people.

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

export function num(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  return Math.abs(value) >= 100000 ? compact.format(value) : integer.format(value);
}

export function decimal(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  return value >= 100 ? integer.format(value) : oneDecimal.format(value);
}

export function percent(ratio) {
  if (ratio === null || ratio === undefined || Number.isNaN(ratio)) return '—';
  if (ratio === 0) return '0 %';
  const pct = ratio * 100;
  return `${pct < 10 ? pct.toFixed(1) : Math.round(pct)} %`;
}

export function ms(value) {
  if (value === null || value === undefined) return '—';
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(value < 10000 ? 2 : 1)} s`;
  return `${(value / 60000).toFixed(1)} min`;
}

/** A countdown: `0:42`, `12:05`, `1:02:03`. */
export function countdown(remainingMs) {
  const total = Math.max(0, Math.ceil(remainingMs / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, '0');
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, '0')}:${seconds}` : `${minutes}:${seconds}`;
}

/**
 * US dollars, with as many decimals as a small amount needs to show its first significant
 * digits: `$1,234.56`, `$0.42`, `$0.0123`, `$0.000123` (never `$0.00` for a cost above zero).
 * Amounts are exact to the nano-dollar on the server; nine decimals at most.
 */
export function usd(value) {
  if (value === null || value === undefined || typeof value !== 'number' || !Number.isFinite(value)) return '—';
  if (value === 0) return '$0.00';
  const abs = Math.abs(value);
  const decimals = abs >= 1 ? 2 : Math.min(9, Math.max(2, Math.ceil(-Math.log10(abs)) + 2));
  const text = abs.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: decimals });
  return `${value < 0 ? '−' : ''}$${text}`;
}

/**
 * A price in USD per million tokens, exactly: prices are whole thousandths of a dollar
 * (`$3.125`, `$2.50`, `$0.075`, `$0.005`).
 */
export function perMtok(value) {
  if (typeof value !== 'number' || !Number.isFinite(value) || Math.abs(value) < 1) return usd(value);
  return `$${value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 3 })}`;
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const timeOnly = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** Unix ms or an RFC 3339 string: today's times without the date. */
export function when(value) {
  if (value === null || value === undefined) return '—';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const today = new Date();
  return date.toDateString() === today.toDateString() ? timeOnly.format(date) : dateTime.format(date);
}

/** `just now`, `12 s ago`, `5 min ago`, … */
export function ago(timestampMs, nowMs = Date.now()) {
  const seconds = Math.max(0, Math.round((nowMs - timestampMs) / 1000));
  if (seconds < 3) return 'just now';
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.round(hours / 24)} d ago`;
}

/** A noun with its count: plural(3, 'backend') → `3 backends`. */
export function plural(count, noun, many = `${noun}s`) {
  return `${num(count)} ${count === 1 ? noun : many}`;
}
