// DOM building without HTML strings: every value becomes a text node or a property, so nothing
// the API returns is ever parsed as markup (a backend named `<img onerror=…>` renders as text).

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * h('button', {class: 'btn', type: 'button', onclick: fn}, 'Save')
 * Props: `class` (string or array, falsy entries skipped), `text`, `dataset` (object),
 * `on*` (event listeners), `attrs` (set with setAttribute), anything else as a DOM property.
 * Children: strings and numbers become text nodes; null/undefined/false are skipped; arrays flatten.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  applyProps(el, props);
  append(el, children);
  return el;
}

function applyProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') {
      const names = (Array.isArray(value) ? value : [value])
        .filter(Boolean)
        .flatMap((name) => String(name).split(/\s+/))
        .filter(Boolean);
      el.classList.add(...names);
    } else if (key === 'text') {
      el.textContent = String(value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'attrs') {
      for (const [name, attr] of Object.entries(value)) {
        if (attr !== undefined && attr !== null && attr !== false) el.setAttribute(name, String(attr));
      }
    } else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else {
      el[key] = value;
    }
  }
}

/** Appends children (strings as text nodes). */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// Icon paths (24×24, stroked). Constants of this file, never data.
const ICONS = {
  overview: ['M3 13h8V3H3z', 'M13 21h8V11h-8z', 'M3 21h8v-6H3z', 'M13 3v6h8V3z'],
  providers: ['M4 6h16', 'M4 12h16', 'M4 18h16', 'M7 6h.01', 'M7 12h.01', 'M7 18h.01'],
  usage: ['M3 3v18h18', 'M7 15l4-4 3 3 6-6'],
  keys: ['M15 7a4 4 0 1 1-3.9 4.9L4 19v2h3v-2h2v-2h2l1.1-1.1', 'M16 7h.01'],
  plus: ['M12 5v14', 'M5 12h14'],
  edit: ['M4 20h4L19 9l-4-4L4 16z', 'M14 6l4 4'],
  trash: ['M4 7h16', 'M10 11v6', 'M14 11v6', 'M6 7l1 13h10l1-13', 'M9 7V4h6v3'],
  reset: ['M4 4v6h6', 'M20 12a8 8 0 1 1-2.3-5.7L20 8'],
  power: ['M12 3v9', 'M6.3 6.3a8 8 0 1 0 11.4 0'],
  copy: ['M8 8h12v12H8z', 'M16 8V4H4v12h4'],
  logout: ['M15 4h4v16h-4', 'M10 8l-4 4 4 4', 'M6 12h10'],
  download: ['M12 4v11', 'M7 10l5 5 5-5', 'M5 20h14'],
  refresh: ['M20 4v6h-6', 'M4 12a8 8 0 0 1 14.3-4.9L20 10', 'M4 20v-6h6', 'M20 12a8 8 0 0 1-14.3 4.9L4 14'],
  x: ['M6 6l12 12', 'M18 6L6 18'],
  check: ['M5 12l5 5L20 7'],
  alert: ['M12 8v5', 'M12 16h.01', 'M10.3 3.9L2.4 18a2 2 0 0 0 1.7 3h15.8a2 2 0 0 0 1.7-3L13.7 3.9a2 2 0 0 0-3.4 0z'],
  clock: ['M12 7v5l3 2', 'M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z'],
  pool: ['M12 3l9 5-9 5-9-5z', 'M3 13l9 5 9-5'],
  prices: ['M3 12V3h9l9 9-9 9z', 'M7.5 7.5h.01'],
  search: ['M11 18a7 7 0 1 0 0-14 7 7 0 0 0 0 14z', 'M20 20l-4-4'],
  routing: ['M4 7h11', 'M12 4l3 3-3 3', 'M20 17H9', 'M12 14l-3 3 3 3'],
};

/** An inline SVG icon from the table above. */
export function icon(name, cls = 'icon') {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', cls);
  for (const d of ICONS[name] || []) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

/** A button with an optional icon. */
export function button(label, { kind = 'secondary', iconName, size, title, onclick, type = 'button', testid, disabled } = {}) {
  return h('button', {
    type,
    class: ['btn', `btn-${kind}`, size && `btn-${size}`],
    title,
    disabled: Boolean(disabled),
    onclick,
    dataset: testid ? { testid } : undefined,
  }, iconName ? icon(iconName) : null, label ? h('span', { text: label }) : null);
}

let idCounter = 0;
/** A unique element id. */
export function uid(prefix = 'f') {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}
