// CSV cells for spreadsheet users: RFC 4180 quoting, and formula injection defused.
//
// A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and, in some, tab, CR, LF or
// NUL, the full-width ＝ ＋ － ＠, or one of these after leading spaces) as a formula — with
// `=HYPERLINK(...)` or DDE payloads a model name, key name or error text chosen by a client
// could act on the machine of whoever opens the export. Such text gets a leading `'`, which
// spreadsheets show as text (OWASP / ASVS 1.2.10).
//
// Numbers stay numbers: a value that is a JavaScript number (token counts, latencies, status,
// timestamps) is written as is, so a negative number is still a number in the sheet. Only
// strings are defused — a string that looks like a negative number stays text, as it was.

const FORMULA_START = /^[\s\u3000]*[=+\-@\uFF1D\uFF0B\uFF0D\uFF20]|^[\t\r\n\0]/;

/** One CSV cell. */
export function csvCell(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number' || typeof value === 'bigint') {
    return Number.isFinite(Number(value)) ? String(value) : '';
  }
  let text = String(value);
  if (FORMULA_START.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** One CSV line (without its line break) of `columns` taken from `row`. */
export function csvLine(columns, row) {
  return columns.map((column) => csvCell(row[column])).join(',');
}
