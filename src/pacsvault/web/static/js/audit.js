// The audit page (auditors and admins): the verdict of `pacsvault audit verify` and the
// audit search (`audit search`; POST /api/audit/search, so a patient ID never is in a
// URL). /audit?study=UID is "who accessed this study": the search by that study runs
// at once. Both are recorded by the server as uses of the audit trail.
import { el } from './api.js';
import { Messages, fill, get, row, send, when } from './adminapi.js';
import { ready } from './shell.js';

const $ = (id) => document.getElementById(id);
const messages = new Messages($('status'), $('error'));
const form = $('audit-search');
const DISCLOSURES = new Set(['store', 'import', 'retrieve', 'view', 'export', 'delete']);

// -- verify ----------------------------------------------------------------------------------

async function verify() {
  const panel = $('verify');
  $('verify-state').textContent = 'Checking the hash chain and the signed checkpoints...';
  const v = await get('/api/audit/verify');
  panel.classList.toggle('intact', v.intact);
  panel.classList.toggle('broken', !v.intact);
  panel.dataset.intact = String(v.intact);
  $('verify-state').textContent = v.intact
    ? `Audit trail intact: ${v.records} records, ${v.checkpoints} checkpoints.`
    : `Audit trail NOT intact: ${v.problems.length} problem(s) in ${v.records} records.`;
  const items = (list, texts) => list.replaceChildren(...texts.map((t) => el('li', {}, t)));
  items($('verify-problems'), v.problems);
  items($('verify-warnings'), v.warnings.map((w) => `Warning: ${w}`));
  items($('verify-notes'), v.notes.map((n) => `Note: ${n}`));
}

$('verify-again').addEventListener('click', () => messages.run(verify));

// -- search ----------------------------------------------------------------------------------

/** The form's filters as the API takes them (empty fields left out). */
function filters() {
  const f = form.elements;
  const q = {};
  for (const name of ['patient', 'user', 'peer', 'study', 'action', 'outcome']) {
    const value = f[name].value.trim();
    if (value) q[name] = value;
  }
  for (const name of ['since', 'until']) {
    if (f[name].value) q[name] = new Date(f[name].value).toISOString(); // local time -> UTC
  }
  q.limit = Math.min(100000, Math.max(1, Number(f.limit.value) || 1000));
  return q;
}

async function search() {
  const q = filters();
  const disclosures = form.elements.disclosures.checked;
  messages.say('Searching...');
  const result = await send('POST', '/api/audit/search', q);
  const records = disclosures ? result.records.filter((r) => DISCLOSURES.has(r.action)) : result.records;
  fill($('audit-records').tBodies[0], records.map((r) => {
    const tr = row(String(r.seq), when(r.time), r.action, r.outcome, r.actor ?? '', r.address ?? '',
      el('td', { className: 'mono' }, r.study_uid ?? ''), el('td', { className: 'mono' }, r.patient_ref ?? ''),
      el('td', { className: 'detail' }, r.detail ?? ''));
    tr.dataset.outcome = r.outcome;
    return tr;
  }), 'No records match');
  const more = result.truncated ? ` More matched: raise "At most" (${q.limit}) or narrow the search.` : '';
  return `${records.length} record${records.length === 1 ? '' : 's'}.${more}`;
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  messages.run(search, (text) => text);
});
form.addEventListener('reset', () => {
  history.replaceState(null, '', '/audit');
  $('audit-title').textContent = 'Audit trail';
});

// -- start -----------------------------------------------------------------------------------

const study = new URLSearchParams(location.search).get('study');
if (study) {
  form.elements.study.value = study;
  $('audit-title').textContent = 'Who accessed this study';
  document.title = 'pacsvault: who accessed this study';
}

ready.then(async () => {
  await Promise.all([
    messages.run(verify),
    study ? messages.run(search, (text) => text) : Promise.resolve(),
  ]);
  document.body.dataset.loaded = '1';
});
