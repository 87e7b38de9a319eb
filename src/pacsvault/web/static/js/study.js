// The study page: the patient/study header, the series (thumbnails), and 1, 2 or 4
// viewports. Everything comes from DICOMweb with the session: QIDO-RS for the study
// and its series, WADO-RS metadata and frames for the pixels, the series thumbnail
// resource for the thumbnails (asked for once the first image is on screen).

import {
  DICOMWEB, HttpError, T, date, el, getJson, number, personName, session, text, time,
} from './api.js';
import { Loader, openSeries } from './loader.js';
import { ready } from './shell.js';
import { showTags } from './tags.js';
import { PRESETS, TOOLS, Viewport } from './viewport.js';

const studyUid = decodeURIComponent(location.pathname.split('/')[2] || '');
const NO_IMAGES = new Set(['SR', 'PR', 'KO', 'DOC', 'RWV', 'REG', 'FID', 'AU', 'ECG']);
const LAYOUTS = { '1x1': 1, '1x2': 2, '2x2': 4 };

const loader = new Loader();
const host = document.getElementById('viewports');
const list = document.getElementById('series');
const preset = document.getElementById('preset');
const objectWindows = document.getElementById('objectwindows');
const customWindow = document.getElementById('customwindow');

const state = {
  study: null, rows: [], opened: new Map(), viewports: [], active: null, layout: '1x1',
  tool: 'wl',
};

// -- viewports -------------------------------------------------------------------------------

const handlers = {
  activate(vp) {
    if (state.active === vp) return;
    state.active = vp;
    for (const v of state.viewports) v.root.classList.toggle('active', v === vp);
    priorities();
    syncToolbar();
  },
  changed(vp) {
    if (vp === state.active) syncToolbar();
  },
};

function visible() {
  return state.viewports.slice(0, LAYOUTS[state.layout]);
}

function makeViewport() {
  const vp = new Viewport(host, state.viewports.length + 1, handlers);
  vp.tool = state.tool;
  vp.root.addEventListener('dragover', (e) => {
    if (e.dataTransfer.types.includes('text/x-pv-series')) e.preventDefault();
  });
  vp.root.addEventListener('drop', (e) => {
    const uid = e.dataTransfer.getData('text/x-pv-series');
    if (!uid) return;
    e.preventDefault();
    handlers.activate(vp);
    showSeries(vp, uid);
  });
  state.viewports.push(vp);
  return vp;
}

function priorities() {
  const shown = new Set();
  for (const vp of visible()) {
    if (!vp.series) continue;
    vp.series.priority = Math.max(vp === state.active ? 2 : 1,
      shown.has(vp.series) ? vp.series.priority : 0);
    shown.add(vp.series);
  }
  for (const series of loader.series) if (!shown.has(series)) loader.remove(series);
  for (const series of shown) loader.add(series);
  for (const li of list.children) {
    const uid = li.dataset.series;
    li.classList.toggle('shown', visible().some((vp) => vp.series?.uid === uid));
  }
}

async function showSeries(vp, uid) {
  const row = state.rows.find((r) => text(r, T.SeriesInstanceUID) === uid);
  if (!row) return;
  let opening = state.opened.get(uid);
  if (!opening) {
    opening = openSeries(studyUid, row);
    state.opened.set(uid, opening);
    opening.catch(() => state.opened.delete(uid));
  }
  vp.note.textContent = 'Loading…';
  try {
    const series = await opening;
    vp.show(series, state.study);
    priorities();
  } catch (err) {
    if (!(err instanceof HttpError && err.status === 401)) {
      vp.note.textContent = `This series cannot be shown: ${err.message}`;
    }
  }
}

function setLayout(layout) {
  state.layout = layout;
  host.className = `viewports layout-${layout}`;
  while (state.viewports.length < LAYOUTS[layout]) makeViewport();
  state.viewports.forEach((vp, i) => {
    vp.root.hidden = i >= LAYOUTS[layout];
    if (vp.root.hidden) vp.stopCine();
  });
  for (const b of document.querySelectorAll('[data-layout]')) {
    b.setAttribute('aria-pressed', String(b.dataset.layout === layout));
  }
  if (state.active?.root.hidden) handlers.activate(state.viewports[0]);
  const shown = new Set(visible().map((vp) => vp.series?.uid).filter(Boolean));
  const spare = state.rows.filter((r) => imageSeries(r) && !shown.has(text(r, T.SeriesInstanceUID)));
  for (const vp of visible()) {
    if (!vp.series && spare.length) showSeries(vp, text(spare.shift(), T.SeriesInstanceUID));
  }
  priorities();
}

// -- toolbar ---------------------------------------------------------------------------------

function syncToolbar() {
  const vp = state.active;
  if (!vp) return;
  document.getElementById('invert').setAttribute('aria-pressed', String(vp.invert));
  const cine = document.getElementById('cine');
  cine.setAttribute('aria-pressed', String(vp.playing));
  cine.textContent = vp.playing ? 'Pause' : 'Play';
  const info = vp.current()?.info;
  const windows = [...(info?.windows ?? []), ...(info?.voiLuts ?? [])];
  if (objectWindows.children.length !== windows.length
    || [...objectWindows.children].some((o, i) => o.textContent !== windowLabel(windows[i]))) {
    objectWindows.replaceChildren(...windows.map((w, i) => el('option', { value: `object:${i}` },
      windowLabel(w))));
  }
  customWindow.hidden = true;
  if (!vp.window) {
    preset.value = 'default';
  } else {
    const same = (w) => w.center === vp.window.center && w.width === vp.window.width
      && (w.lut?.name ?? null) === (vp.window.lut?.name ?? null); // each image has its own
    const p = PRESETS.find(same);
    const o = windows.findIndex(same);
    if (p) preset.value = p.key;
    else if (o >= 0) preset.value = `object:${o}`;
    else {
      customWindow.hidden = false;
      preset.value = 'custom';
    }
  }
}

function windowLabel(w) {
  return w.lut ? w.name : `${w.name} ${Math.round(w.center)}/${Math.round(w.width)}`;
}

function applyPreset(value) {
  const vp = state.active;
  if (!vp) return;
  if (value === 'default') vp.setWindow(null);
  else if (value.startsWith('object:')) {
    const { info } = vp.current() ?? {};
    const w = info && [...info.windows, ...info.voiLuts][Number(value.slice(7))];
    if (w) vp.setWindow(w);
  } else {
    const p = PRESETS.find((x) => x.key === value);
    if (p) vp.setWindow(p);
  }
}

function setTool(tool) {
  state.tool = tool;
  for (const vp of state.viewports) vp.tool = tool;
  for (const b of document.querySelectorAll('[data-tool]')) {
    b.setAttribute('aria-pressed', String(b.dataset.tool === tool));
  }
}

function openTags() {
  const im = state.active?.current();
  if (!im) return;
  showTags(im.info.meta, `Tags: instance ${im.info.instanceNumber ?? ''}`.trim());
}

function wireToolbar(canExport) {
  for (const b of document.querySelectorAll('[data-tool]')) {
    b.addEventListener('click', () => setTool(b.dataset.tool));
  }
  for (const b of document.querySelectorAll('[data-layout]')) {
    b.addEventListener('click', () => setLayout(b.dataset.layout));
  }
  preset.addEventListener('change', () => applyPreset(preset.value));
  const on = (id, fn) => document.getElementById(id).addEventListener('click', () => {
    if (state.active) fn(state.active);
  });
  on('fit', (vp) => vp.fit());
  on('zoomin', (vp) => vp.zoomBy(1.25));
  on('zoomout', (vp) => vp.zoomBy(0.8));
  on('invert', (vp) => vp.toggleInvert());
  on('reset', (vp) => vp.reset());
  on('cine', (vp) => vp.toggleCine());
  on('clearmeasures', (vp) => vp.clearMeasures());
  if (canExport) {
    document.getElementById('exporttools').hidden = false;
    document.getElementById('download').href = `/api/studies/${encodeURIComponent(studyUid)}/archive.zip`;
    document.getElementById('tagsbutton').addEventListener('click', openTags);
  }
  document.addEventListener('keydown', (e) => onKey(e, canExport));
}

function onKey(e, canExport) {
  const t = e.target;
  if (t.closest?.('dialog') || ['INPUT', 'SELECT', 'TEXTAREA'].includes(t.tagName)) return;
  if (t.tagName === 'BUTTON' && (e.key === 'Enter' || e.key === ' ')) return;
  if (t.tagName === 'A' && e.key === 'Enter') return;
  if (e.altKey || e.ctrlKey || e.metaKey) return;
  const vp = state.active;
  if (!vp) return;
  const n = vp.series?.images.length ?? 0;
  const page = Math.max(1, Math.round(n / 10));
  const keys = {
    ArrowDown: () => vp.step(1),
    ArrowRight: () => vp.step(1),
    ArrowUp: () => vp.step(-1),
    ArrowLeft: () => vp.step(-1),
    PageDown: () => vp.step(page),
    PageUp: () => vp.step(-page),
    Home: () => vp.go(0),
    End: () => vp.go(n - 1),
    '+': () => vp.zoomBy(1.25),
    '=': () => vp.zoomBy(1.25),
    '-': () => vp.zoomBy(0.8),
    f: () => vp.fit(),
    i: () => vp.toggleInvert(),
    r: () => vp.reset(),
    ' ': () => vp.toggleCine(),
    Delete: () => vp.clearMeasures(),
    Escape: () => vp.clearMeasures(),
    0: () => applyPreset('default'),
    1: () => applyPreset('soft'),
    2: () => applyPreset('lung'),
    3: () => applyPreset('bone'),
    4: () => applyPreset('brain'),
    w: () => setTool('wl'),
    p: () => setTool('pan'),
    z: () => setTool('zoom'),
    s: () => setTool('scroll'),
    l: () => setTool('length'),
    t: () => canExport && openTags(),
  };
  const action = keys[e.key.length === 1 ? e.key.toLowerCase() : e.key];
  if (action) {
    e.preventDefault();
    action();
  }
}

// -- study and series ------------------------------------------------------------------------

function imageSeries(row) {
  return !NO_IMAGES.has(text(row, T.Modality));
}

function header() {
  const s = state.study;
  const patient = [
    personName(text(s, T.PatientName)), text(s, T.PatientID) && `ID ${text(s, T.PatientID)}`,
    [date(text(s, T.PatientBirthDate)), text(s, T.PatientSex)].filter(Boolean).join(' '),
  ].filter(Boolean).join(' · ');
  const study = [
    `${date(text(s, T.StudyDate))} ${time(text(s, T.StudyTime))}`.trim(),
    text(s, T.StudyDescription), text(s, T.AccessionNumber) && `Acc ${text(s, T.AccessionNumber)}`,
  ].filter(Boolean).join(' · ');
  document.getElementById('studyinfo').replaceChildren(
    el('span', { className: 'patient' }, patient), el('span', { className: 'studydesc' }, study));
}

function seriesItem(row) {
  const uid = text(row, T.SeriesInstanceUID);
  const count = number(row, T.NumberOfSeriesRelatedInstances, 0);
  const label = `Series ${text(row, T.SeriesNumber)}: ${text(row, T.SeriesDescription) || '(no description)'}`;
  const img = el('img', { alt: '', width: 96, height: 96, decoding: 'async' });
  img.dataset.src = `${DICOMWEB}/studies/${studyUid}/series/${uid}/thumbnail?viewport=96,96`;
  img.addEventListener('error', () => img.classList.add('none'));
  const button = el('button', {
    type: 'button', className: 'thumb', draggable: true,
    'aria-label': `${label}, ${text(row, T.Modality)}, ${count} images`,
  }, imageSeries(row) ? img : el('span', { className: 'noimage' }, text(row, T.Modality)),
  el('span', { className: 'label' }, label),
  el('span', { className: 'count' }, `${text(row, T.Modality)} · ${count} img`));
  button.addEventListener('click', () => {
    if (imageSeries(row) && state.active) showSeries(state.active, uid);
  });
  button.addEventListener('dragstart', (e) => {
    e.dataTransfer.setData('text/x-pv-series', uid);
    e.dataTransfer.effectAllowed = 'copy';
  });
  return el('li', { dataset: { series: uid } }, button);
}

function loadThumbnails() {
  for (const img of list.querySelectorAll('img[data-src]')) {
    img.src = img.dataset.src;
    delete img.dataset.src;
  }
}

async function main() {
  const s = await ready;
  const canExport = s.permissions.includes('export');
  wireToolbar(canExport);
  const q = new URLSearchParams({ StudyInstanceUID: studyUid, includefield: 'StudyTime' });
  const [{ body: studies }, { body: rows }] = await Promise.all([
    getJson(`${DICOMWEB}/studies?${q}`),
    getJson(`${DICOMWEB}/studies/${studyUid}/series?limit=1000`),
  ]);
  if (!studies.length) {
    document.getElementById('studyinfo').textContent = 'Study not found';
    return;
  }
  state.study = studies[0];
  header();
  state.rows = rows.sort((a, b) => number(a, T.SeriesNumber, 0) - number(b, T.SeriesNumber, 0));
  list.replaceChildren(...state.rows.map(seriesItem));
  const first = makeViewport();
  handlers.activate(first);
  setLayout('1x1');
  // Thumbnails once the first image is on screen (they would compete with it), or soon.
  const wait = setTimeout(loadThumbnails, 1500);
  const poll = setInterval(() => {
    if (first.root.dataset.ready === '1') {
      clearInterval(poll);
      clearTimeout(wait);
      loadThumbnails();
    }
  }, 50);
}

// For tests, benchmarks and the curious: the viewports (no more data than is on screen).
window.pv = { state, loader, TOOLS };

main().catch((err) => {
  if (!(err instanceof HttpError && err.status === 401)) {
    document.getElementById('studyinfo').textContent = `The study cannot be shown: ${err.message}`;
  }
});
session();
