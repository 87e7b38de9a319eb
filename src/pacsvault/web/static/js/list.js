// The study list: opens on the most recent studies, searches with QIDO-RS, sorts and
// pages in the browser, remembers the last search for the session (sessionStorage),
// and is driven from the keyboard (Enter searches; in the list the arrow keys move,
// Enter opens, PageUp/PageDown change page).
//
// QIDO-RS has no sort order, so "most recent" is a date range: the last 7 days, else
// 30, else a year, else any date, the first that fills a page. Each search fetches up
// to CHUNK matches (the server says when there are more; "Load more" asks for them).
import {
  DICOMWEB, HttpError, T, date, el, getJson, number, personName, text, time, toDA,
} from './api.js';
import { ready } from './shell.js';

const CHUNK = 500;
const SAVED = 'pv.search';
const RECENT_DAYS = [7, 30, 365, null];
const FIELDS = ['PatientName', 'PatientID', 'AccessionNumber', 'ModalitiesInStudy',
  'ReferringPhysicianName', 'StudyDescription', 'from', 'to'];
const NUMERIC = new Set(['NumberOfStudyRelatedSeries', 'NumberOfStudyRelatedInstances']);

const form = document.getElementById('search');
const table = document.getElementById('studies');
const tbody = table.querySelector('tbody');
const statusLine = document.getElementById('status');
const pageInfo = document.getElementById('pageinfo');
const prev = document.getElementById('prev');
const next = document.getElementById('next');
const pageSize = document.getElementById('pagesize');
const more = document.getElementById('more');

const state = {
  criteria: {}, rows: [], more: false, sortKey: 'StudyDate', sortDir: -1, page: 0,
  selected: 0, label: '',
};

// -- the query -----------------------------------------------------------------------------

function hasWildcard(v) {
  return /[*?]/.test(v);
}

/** QIDO-RS parameters for the form's criteria. */
export function qidoParams(c) {
  const q = new URLSearchParams();
  const put = (key, value) => { if (value) q.set(key, value); };
  const prefix = (v) => (v && !hasWildcard(v) ? `${v}*` : v); // names: any case
  put('PatientName', prefix(c.PatientName?.trim()));
  put('PatientID', c.PatientID?.trim());
  put('AccessionNumber', c.AccessionNumber?.trim());
  put('ModalitiesInStudy', c.ModalitiesInStudy);
  put('ReferringPhysicianName', prefix(c.ReferringPhysicianName?.trim()));
  const d = c.StudyDescription?.trim();
  put('StudyDescription', d && !hasWildcard(d) ? `*${d}*` : d);
  const from = (c.from || '').replace(/-/g, '');
  const to = (c.to || '').replace(/-/g, '');
  if (from || to) q.set('StudyDate', from === to ? from : `${from}-${to}`);
  q.set('includefield', 'StudyTime');
  return q;
}

async function fetchRows(criteria, offset) {
  const q = qidoParams(criteria);
  q.set('limit', String(CHUNK));
  q.set('offset', String(offset));
  const { body, response } = await getJson(`${DICOMWEB}/studies?${q}`);
  return { rows: body, more: (response.headers.get('Warning') || '').startsWith('299') };
}

function isoDaysAgo(days) {
  const d = new Date();
  d.setDate(d.getDate() - days);
  const s = toDA(d);
  return `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6)}`;
}

function range(days) {
  if (days === null || days === '') return { from: '', to: '' };
  return { from: isoDaysAgo(Number(days)), to: isoDaysAgo(0) };
}

// -- searching -----------------------------------------------------------------------------

function readForm() {
  const out = {};
  for (const name of FIELDS) out[name] = form.elements[name].value;
  return out;
}

function fillForm(c) {
  for (const name of FIELDS) form.elements[name].value = c[name] ?? '';
}

function save() {
  const { criteria, sortKey, sortDir, page, label } = state;
  sessionStorage.setItem(SAVED, JSON.stringify({
    criteria, sortKey, sortDir, page, label, pageSize: pageSize.value,
  }));
}

async function run(criteria, label = '') {
  statusLine.textContent = 'Searching…';
  table.setAttribute('aria-busy', 'true');
  try {
    const { rows, more: hasMore } = await fetchRows(criteria, 0);
    Object.assign(state, { criteria, rows, more: hasMore, page: 0, selected: 0, label });
    show();
    save();
  } catch (err) {
    if (!(err instanceof HttpError && err.status === 401)) {
      statusLine.textContent = `The search failed: ${err.message}`;
    }
  } finally {
    table.removeAttribute('aria-busy');
  }
}

/** The most recent studies: the shortest recent date range that fills a page. */
async function recent() {
  statusLine.textContent = 'Looking for the most recent studies…';
  for (const days of RECENT_DAYS) {
    const criteria = { ...range(days) };
    const { rows, more: hasMore } = await fetchRows(criteria, 0);
    if (rows.length >= Number(pageSize.value) || days === null) {
      const label = days === null ? 'all dates' : `the last ${days} days`;
      fillForm(criteria);
      Object.assign(state, { criteria, rows, more: hasMore, page: 0, selected: 0,
        label: `Most recent studies (${label})` });
      show();
      save();
      return;
    }
  }
}

async function loadMore() {
  more.disabled = true;
  try {
    const { rows, more: hasMore } = await fetchRows(state.criteria, state.rows.length);
    state.rows.push(...rows);
    state.more = hasMore;
    show();
  } finally {
    more.disabled = false;
  }
}

// -- the table -----------------------------------------------------------------------------

function sortValue(row, key) {
  if (NUMERIC.has(key)) return number(row, T[key], 0);
  if (key === 'StudyDate') return text(row, T.StudyDate) + text(row, T.StudyTime);
  if (key === 'ModalitiesInStudy') return (row[T.ModalitiesInStudy]?.Value ?? []).join('/');
  return text(row, T[key]).toLowerCase();
}

function sorted() {
  const { sortKey, sortDir } = state;
  return [...state.rows].sort((a, b) => {
    const x = sortValue(a, sortKey);
    const y = sortValue(b, sortKey);
    return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
  });
}

function cells(row) {
  const uid = text(row, T.StudyInstanceUID);
  const link = el('a', { href: `/study/${encodeURIComponent(uid)}`, tabIndex: -1 },
    personName(text(row, T.PatientName)) || '(no name)');
  return [
    el('td', {}, link),
    el('td', {}, text(row, T.PatientID)),
    el('td', {}, date(text(row, T.PatientBirthDate))),
    el('td', {}, `${date(text(row, T.StudyDate))} ${time(text(row, T.StudyTime))}`.trim()),
    el('td', {}, (row[T.ModalitiesInStudy]?.Value ?? []).join(', ')),
    el('td', {}, text(row, T.StudyDescription)),
    el('td', {}, text(row, T.AccessionNumber)),
    el('td', {}, personName(text(row, T.ReferringPhysicianName))),
    el('td', { className: 'num' }, String(number(row, T.NumberOfStudyRelatedSeries, ''))),
    el('td', { className: 'num' }, String(number(row, T.NumberOfStudyRelatedInstances, ''))),
  ];
}

function pages() {
  return Math.max(1, Math.ceil(state.rows.length / Number(pageSize.value)));
}

function show() {
  const size = Number(pageSize.value);
  state.page = Math.min(state.page, pages() - 1);
  const start = state.page * size;
  const shown = sorted().slice(start, start + size);
  state.selected = Math.min(state.selected, Math.max(0, shown.length - 1));
  tbody.replaceChildren(...shown.map((row, i) => {
    const tr = el('tr', {
      tabIndex: i === state.selected ? 0 : -1,
      dataset: { uid: text(row, T.StudyInstanceUID) },
      'aria-selected': String(i === state.selected),
    }, ...cells(row));
    return tr;
  }));
  for (const th of table.tHead.rows[0].cells) {
    th.setAttribute('aria-sort', th.dataset.key === state.sortKey
      ? (state.sortDir > 0 ? 'ascending' : 'descending') : 'none');
  }
  const total = state.rows.length;
  const plus = state.more ? '+' : '';
  const what = `${total}${plus} ${total === 1 && !plus ? 'study' : 'studies'}`;
  statusLine.textContent = state.label ? `${state.label}: ${what}` : `${what} found`;
  pageInfo.textContent = total
    ? `${start + 1}–${start + shown.length} of ${total}${plus} · page ${state.page + 1} of ${pages()}`
    : 'No studies';
  prev.disabled = state.page === 0;
  next.disabled = state.page >= pages() - 1;
  more.hidden = !state.more;
}

function rowsShown() {
  return [...tbody.rows];
}

function select(i, focus = true) {
  const rows = rowsShown();
  if (!rows.length) return;
  state.selected = Math.max(0, Math.min(rows.length - 1, i));
  rows.forEach((tr, n) => {
    tr.tabIndex = n === state.selected ? 0 : -1;
    tr.setAttribute('aria-selected', String(n === state.selected));
  });
  if (focus) rows[state.selected].focus();
}

function open(tr) {
  if (tr?.dataset.uid) location.assign(`/study/${encodeURIComponent(tr.dataset.uid)}`);
}

function turn(delta, focusRow = true) {
  const target = Math.max(0, Math.min(pages() - 1, state.page + delta));
  if (target === state.page) return;
  state.page = target;
  state.selected = 0;
  show();
  save();
  if (focusRow) select(0);
}

// -- events ----------------------------------------------------------------------------------

form.addEventListener('submit', (event) => {
  event.preventDefault();
  run(readForm());
});

form.addEventListener('reset', () => {
  setTimeout(() => { sessionStorage.removeItem(SAVED); }, 0);
});

form.addEventListener('keydown', (event) => {
  if (event.key === 'ArrowDown' && event.target.tagName === 'INPUT' && tbody.rows.length) {
    event.preventDefault();
    select(state.selected);
  }
});

for (const button of form.querySelectorAll('[data-days]')) {
  button.addEventListener('click', () => {
    const c = { ...readForm(), ...range(button.dataset.days) };
    fillForm(c);
    run(c);
  });
}

table.tHead.addEventListener('click', (event) => {
  const th = event.target.closest('th');
  if (!th) return;
  const key = th.dataset.key;
  state.sortDir = state.sortKey === key ? -state.sortDir : (key === 'StudyDate' ? -1 : 1);
  state.sortKey = key;
  show();
  save();
});

tbody.addEventListener('click', (event) => {
  const tr = event.target.closest('tr');
  if (!tr || event.target.closest('a')) return;
  select(tr.sectionRowIndex);
});

tbody.addEventListener('dblclick', (event) => open(event.target.closest('tr')));

tbody.addEventListener('keydown', (event) => {
  const keys = {
    ArrowDown: () => select(state.selected + 1),
    ArrowUp: () => select(state.selected - 1),
    Home: () => select(0),
    End: () => select(tbody.rows.length - 1),
    PageDown: () => turn(1),
    PageUp: () => turn(-1),
    Enter: () => open(tbody.rows[state.selected]),
  };
  const action = keys[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

prev.addEventListener('click', () => turn(-1, false));
next.addEventListener('click', () => turn(1, false));
more.addEventListener('click', () => loadMore());
pageSize.addEventListener('change', () => { state.page = 0; show(); save(); });

// -- start -----------------------------------------------------------------------------------

ready.then(() => {
  const saved = JSON.parse(sessionStorage.getItem(SAVED) || 'null');
  if (!saved) return recent();
  pageSize.value = saved.pageSize || '50';
  Object.assign(state, { sortKey: saved.sortKey, sortDir: saved.sortDir });
  fillForm(saved.criteria);
  return run(saved.criteria, saved.label).then(() => {
    state.page = saved.page || 0;
    show();
  });
}).catch((err) => {
  if (!(err instanceof HttpError && err.status === 401)) {
    statusLine.textContent = `The studies could not be listed: ${err.message}`;
  }
});
