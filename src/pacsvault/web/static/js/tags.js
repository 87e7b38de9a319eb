// The tag browser (roles allowed to export): every element of the current instance's
// metadata, names from pydicom's dictionary (a static file of this version), nested
// sequences indented, bulk data named but not fetched, a filter.

import { el } from './api.js';

let dictionary = null;

async function names() {
  dictionary ??= fetch(new URL('../dictionary.json', import.meta.url), { credentials: 'same-origin' })
    .then((r) => (r.ok ? r.json() : {}))
    .catch(() => ({}));
  return dictionary;
}

function valueText(element) {
  if (element.BulkDataURI) return '(bulk data, not shown)';
  if (element.InlineBinary) return `(binary, ${Math.floor((element.InlineBinary.length * 3) / 4)} bytes)`;
  const values = element.Value ?? [];
  if (element.vr === 'SQ') return `${values.length} item(s)`;
  const shown = values.map((v) => (v && typeof v === 'object' ? v.Alphabetic ?? '' : String(v)));
  const joined = shown.join('\\');
  return joined.length > 300 ? `${joined.slice(0, 300)}…` : joined;
}

function rows(meta, dict, depth, out) {
  for (const tag of Object.keys(meta).sort()) {
    const element = meta[tag];
    const [keyword, name] = dict[tag] ?? (parseInt(tag.slice(0, 4), 16) % 2 ? ['', 'Private'] : ['', '']);
    out.push(el('tr', { dataset: { depth: String(depth) } },
      el('td', { className: 'tag' }, `(${tag.slice(0, 4)},${tag.slice(4)})`),
      el('td', { title: keyword }, name || keyword),
      el('td', {}, element.vr ?? ''),
      el('td', { className: 'value' }, valueText(element))));
    if (element.vr === 'SQ') {
      (element.Value ?? []).forEach((item, i) => {
        out.push(el('tr', { className: 'item', dataset: { depth: String(depth + 1) } },
          el('td', { colSpan: 4 }, `Item ${i + 1}`)));
        rows(item, dict, depth + 1, out);
      });
    }
  }
  return out;
}

/** Show the tags of *meta* (an instance's DICOM JSON) in the dialog. */
export async function showTags(meta, title) {
  const dialog = document.getElementById('tags');
  const body = document.getElementById('tagrows');
  const filter = document.getElementById('tagfilter');
  document.getElementById('tagstitle').textContent = title;
  body.replaceChildren(...rows(meta, await names(), 0, []));
  filter.value = '';
  filter.oninput = () => {
    const q = filter.value.trim().toLowerCase();
    for (const tr of body.rows) tr.hidden = Boolean(q) && !tr.textContent.toLowerCase().includes(q);
  };
  document.getElementById('tagsclose').onclick = () => dialog.close();
  if (!dialog.open) dialog.showModal();
  filter.focus();
}
