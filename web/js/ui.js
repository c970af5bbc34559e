// Shared pieces of the interface: page headers, cards, status badges, empty states, toasts,
// dialogs and form fields.

import { h, icon, button, uid } from './dom.js';

export const STATUS_LABELS = {
  healthy: 'Healthy',
  cooling: 'Cooling',
  error: 'Error',
  disabled: 'Disabled',
};

/** A coloured status pill. */
export function statusBadge(status, extra) {
  return h('span', { class: ['badge', `badge-${status}`], dataset: { status } },
    h('span', { class: 'dot', attrs: { 'aria-hidden': 'true' } }),
    STATUS_LABELS[status] || status,
    extra ? h('span', { class: 'badge-extra' }, extra) : null);
}

export function pageHeader(title, subtitle, ...actions) {
  return h('header', { class: 'page-header' },
    h('div', { class: 'page-title' },
      h('h1', { text: title }),
      subtitle ? h('p', { class: 'muted', text: subtitle }) : null),
    actions.length ? h('div', { class: 'page-actions' }, actions) : null);
}

export function card(title, body, { actions, cls, testid } = {}) {
  return h('section', { class: ['card', cls], dataset: testid ? { testid } : undefined },
    title ? h('div', { class: 'card-header' }, h('h2', { text: title }), actions ? h('div', { class: 'card-actions' }, actions) : null) : null,
    body);
}

/** What to show where a list is empty: what it is and what to do next. */
export function emptyState(iconName, title, text, action) {
  return h('div', { class: 'empty' },
    h('div', { class: 'empty-icon' }, icon(iconName)),
    h('h3', { text: title }),
    h('p', { class: 'muted', text }),
    action || null);
}

export function errorBanner(message) {
  return h('div', { class: 'banner banner-error', attrs: { role: 'alert' } }, icon('alert'), h('span', { text: message }));
}

export function loading(text = 'Loading…') {
  return h('div', { class: 'loading' }, h('span', { class: 'spinner', attrs: { 'aria-hidden': 'true' } }), text);
}

/** A short-lived message in the corner. */
export function toast(message, kind = 'success') {
  const region = document.getElementById('toasts');
  if (!region) return;
  const el = h('div', { class: ['toast', `toast-${kind}`] }, icon(kind === 'error' ? 'alert' : 'check'), h('span', { text: message }));
  region.append(el);
  setTimeout(() => el.classList.add('toast-leave'), 3600);
  setTimeout(() => el.remove(), 4000);
}

/**
 * A modal `<dialog>`; returns {dialog, body, footer, close}. Closed dialogs remove themselves.
 */
export function modal(title, { wide = false, onClose } = {}) {
  const titleId = uid('dlg');
  const body = h('div', { class: 'dialog-body' });
  const footer = h('div', { class: 'dialog-footer' });
  const dialog = h('dialog', { class: ['dialog', wide && 'dialog-wide'], attrs: { 'aria-labelledby': titleId } },
    h('div', { class: 'dialog-header' },
      h('h2', { id: titleId, text: title }),
      button('', { kind: 'ghost', iconName: 'x', title: 'Close', onclick: () => dialog.close() })),
    body, footer);
  dialog.addEventListener('close', () => {
    dialog.remove();
    if (onClose) onClose();
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body, footer, close: () => dialog.close() };
}

/** Asks before something irreversible; resolves true when confirmed. */
export function confirmDialog({ title, message, confirmLabel = 'Confirm', danger = false }) {
  return new Promise((resolve) => {
    let confirmed = false;
    const { body, footer, close } = modal(title, { onClose: () => resolve(confirmed) });
    body.append(h('p', { text: message }));
    const ok = button(confirmLabel, {
      kind: danger ? 'danger' : 'primary',
      testid: 'confirm',
      onclick: () => { confirmed = true; close(); },
    });
    footer.append(button('Cancel', { kind: 'secondary', onclick: close }), ok);
    ok.focus();
  });
}

/**
 * Asks (a danger dialog), then runs `action`; says `done` in a toast, or the error; then
 * `refresh()` either way.
 */
export async function confirmThen(dialog, action, done, refresh) {
  if (!(await confirmDialog({ ...dialog, danger: true }))) return;
  try {
    await action();
    toast(done);
  } catch (error) {
    toast(error.message, 'error');
  }
  refresh();
}

/**
 * A labelled form field with a slot for its error message.
 * Returns {wrap, input, error, setError(message)}.
 */
export function field(label, input, { hint, name } = {}) {
  const id = input.id || uid('in');
  input.id = id;
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  const error = h('p', { class: 'field-error', id: errorId, hidden: true, attrs: { role: 'alert' } });
  if (hintId) input.setAttribute('aria-describedby', `${hintId} ${errorId}`);
  else input.setAttribute('aria-describedby', errorId);
  const wrap = h('div', { class: 'field', dataset: name ? { field: name } : undefined },
    h('label', { attrs: { for: id }, text: label }),
    input,
    hint ? h('p', { class: 'hint', id: hintId, text: hint }) : null,
    error);
  const setError = (message) => {
    error.textContent = message || '';
    error.hidden = !message;
    wrap.classList.toggle('has-error', Boolean(message));
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  };
  return { wrap, input, error, setError };
}

export function textInput(props = {}) {
  return h('input', { type: 'text', autocomplete: 'off', spellcheck: false, ...props });
}

export function select(options, value) {
  const el = h('select', {});
  for (const option of options) {
    const [val, label] = Array.isArray(option) ? option : [option, option];
    el.append(h('option', { value: val, text: label, selected: val === value }));
  }
  return el;
}

/** A segmented control (radio-like buttons); calls onChange(value). */
export function segmented(options, value, onChange, label) {
  const group = h('div', { class: 'segmented', attrs: { role: 'radiogroup', 'aria-label': label } });
  for (const [val, text] of options) {
    const btn = h('button', {
      type: 'button',
      class: ['segment', val === value && 'active'],
      attrs: { role: 'radio', 'aria-checked': String(val === value) },
      dataset: { value: val },
      text,
      onclick: () => {
        for (const other of group.children) {
          other.classList.toggle('active', other === btn);
          other.setAttribute('aria-checked', String(other === btn));
        }
        onChange(val);
      },
    });
    group.append(btn);
  }
  return group;
}

/** A table in a horizontally scrolling wrapper. */
export function table(columns, rows, { cls, testid } = {}) {
  const labels = columns.map((col) => (Array.isArray(col) ? col[0] : col));
  const thead = h('thead', {}, h('tr', {}, columns.map((col) => {
    const [label, colCls] = Array.isArray(col) ? col : [col, null];
    return h('th', { class: colCls, attrs: { scope: 'col' }, text: label });
  })));
  // Each cell knows its column's name: small screens show rows as labelled cards.
  for (const row of rows) {
    [...row.children].forEach((cell, i) => {
      if (cell.dataset.label === undefined) cell.dataset.label = labels[i] || '';
    });
  }
  const tbody = h('tbody', {}, rows);
  return h('div', { class: 'table-wrap', dataset: testid ? { testid } : undefined },
    h('table', { class: ['table', cls] }, thead, tbody));
}

/** A small stat tile. */
export function stat(label, value, sub, { tone, testid } = {}) {
  return h('div', { class: ['stat', tone && `stat-${tone}`], dataset: testid ? { testid } : undefined },
    h('div', { class: 'stat-label', text: label }),
    h('div', { class: 'stat-value', text: value }),
    sub ? h('div', { class: 'stat-sub', text: sub }) : null);
}

export function chip(text, cls, title) {
  return h('span', { class: ['chip', cls], text, title });
}
