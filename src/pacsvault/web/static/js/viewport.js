// One viewport: a canvas showing one image of a series, with the tools a reader
// expects. Left drag uses the selected tool (window/level, pan, zoom, scroll, length);
// right drag is always window/level, middle drag pans, Shift+drag scrolls, Ctrl+drag
// zooms; the wheel scrolls (Ctrl+wheel zooms at the pointer). Overlay text and
// orientation markers are HTML laid over the canvas, so the canvas holds only pixels.

import { T, date, el, personName, text, time } from './api.js';
import { defaultWindow, isColour, render } from './pixels.js';

export const PRESETS = [
  { key: 'soft', name: 'CT soft tissue', center: 40, width: 400 },
  { key: 'lung', name: 'CT lung', center: -600, width: 1500 },
  { key: 'bone', name: 'CT bone', center: 400, width: 1800 },
  { key: 'brain', name: 'CT brain', center: 40, width: 80 },
];

export const TOOLS = {
  wl: 'Window/level',
  pan: 'Pan',
  zoom: 'Zoom',
  scroll: 'Scroll',
  length: 'Length',
};

const WHEEL_STEP = 50;

function axisLabel(v) {
  // Patient coordinates (LPS): +x left, +y posterior, +z head.
  const letters = [
    [Math.abs(v[0]), v[0] > 0 ? 'L' : 'R'],
    [Math.abs(v[1]), v[1] > 0 ? 'P' : 'A'],
    [Math.abs(v[2]), v[2] > 0 ? 'H' : 'F'],
  ].filter(([m]) => m > 0.25).sort((a, b) => b[0] - a[0]);
  return letters.slice(0, 2).map(([, l]) => l).join('');
}

export class Viewport {
  /**
   * *host*: the element to add to; *number*: 1..4; *handlers*: {activate(vp),
   * changed(vp)} called when it becomes active or its state changes.
   */
  constructor(host, number, handlers) {
    this.number = number;
    this.handlers = handlers;
    this.series = null;
    this.study = null;
    this.index = 0;
    this.window = null; // null: each image's own default
    this.invert = false;
    this.zoom = 1; // relative to fit
    this.pan = [0, 0]; // canvas pixels
    this.tool = 'wl';
    this.measures = new Map(); // image key -> [{a, b}]
    this.lastLength = '';
    this.cine = null;
    this.drag = null;
    this.wheel = 0;
    this.rendered = null;
    this.unlisten = null;
    this.buffer = document.createElement('canvas');
    this.bufferCtx = this.buffer.getContext('2d');
    this.imageData = null;
    this.build(host);
  }

  build(host) {
    const corner = (pos) => el('div', { className: `corner ${pos}`, 'aria-hidden': 'false' });
    const marker = (pos) => el('div', { className: `orient ${pos}`, 'aria-hidden': 'true' });
    this.canvas = el('canvas', { className: 'image' });
    this.annot = el('canvas', { className: 'annot' });
    this.corners = { tl: corner('tl'), tr: corner('tr'), bl: corner('bl'), br: corner('br') };
    this.markers = { top: marker('top'), bottom: marker('bottom'), left: marker('left'),
      right: marker('right') };
    this.bar = el('div', { className: 'bar' });
    this.progress = el('div', { className: 'progress', role: 'progressbar',
      'aria-label': 'Images loaded', 'aria-valuemin': '0' }, this.bar);
    this.slider = el('input', { type: 'range', className: 'slider', min: 1, max: 1, value: 1,
      'aria-label': `Image in series, viewport ${this.number}` });
    this.note = el('div', { className: 'note', role: 'status' });
    this.root = el('div', {
      className: 'viewport', tabIndex: 0, role: 'group',
      'aria-label': `Viewport ${this.number}`, dataset: { number: this.number },
    }, this.canvas, this.annot, ...Object.values(this.corners), ...Object.values(this.markers),
    this.progress, this.slider, this.note);
    host.append(this.root);
    this.ctx = this.canvas.getContext('2d');
    this.annotCtx = this.annot.getContext('2d');
    new ResizeObserver(() => this.resize()).observe(this.root);
    this.listen();
  }

  // -- series and images -------------------------------------------------------------------

  /** Show *series* (a loader Series) of *study* (the study's QIDO-RS row). */
  show(series, study) {
    this.stopCine();
    this.unlisten?.();
    this.series = series;
    this.study = study;
    this.index = 0;
    this.window = null;
    this.invert = false;
    this.zoom = 1;
    this.pan = [0, 0];
    this.rendered = null;
    this.root.dataset.ready = '';
    series.focus = 0;
    this.unlisten = series.listen((event) => {
      if (event.type === 'restack') {
        const i = series.images.indexOf(event.before[this.index]);
        this.index = Math.max(0, i >= 0 ? i : Math.min(this.index, series.images.length - 1));
        series.focus = this.index;
        this.slider.max = Math.max(1, series.images.length);
        this.slider.value = this.index + 1;
        this.redraw();
        this.handlers.changed(this);
      } else if (event.index === this.index) {
        this.redraw();
      } else {
        this.updateText();
      }
    });
    this.slider.max = Math.max(1, series.images.length);
    this.slider.value = 1;
    this.redraw();
    this.handlers.changed(this);
  }

  current() {
    return this.series?.images[this.index] ?? null;
  }

  /** Go to image *i* (clamped) of the stack. */
  go(i) {
    if (!this.series?.images.length) return;
    const n = this.series.images.length;
    const target = Math.max(0, Math.min(n - 1, Math.round(i)));
    if (target === this.index) return;
    this.index = target;
    this.series.focus = target;
    this.slider.value = target + 1;
    this.redraw();
    this.handlers.changed(this);
  }

  step(delta) {
    this.go(this.index + delta);
  }

  // -- display state -----------------------------------------------------------------------

  /** The window in use: the user's, else the current image's default. */
  effectiveWindow() {
    const im = this.current();
    if (this.window) return this.window;
    return im ? defaultWindow(im.info, im.pixels) : { center: 0, width: 1 };
  }

  setWindow(window) {
    this.window = window ? { center: window.center, width: Math.max(1, window.width),
      lut: window.lut ?? null, name: window.name } : null;
    this.redraw();
    this.handlers.changed(this);
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.redraw();
    this.handlers.changed(this);
  }

  fit() {
    this.zoom = 1;
    this.pan = [0, 0];
    this.redraw();
    this.handlers.changed(this);
  }

  zoomBy(factor, at = null) {
    const before = at ? this.canvasToImage(...at) : null;
    this.zoom = Math.max(0.05, Math.min(50, this.zoom * factor));
    if (before) {
      const after = this.imageToCanvas(...before);
      this.pan = [this.pan[0] + at[0] - after[0], this.pan[1] + at[1] - after[1]];
    }
    this.redraw();
    this.handlers.changed(this);
  }

  reset() {
    this.window = null;
    this.invert = false;
    this.zoom = 1;
    this.pan = [0, 0];
    this.measures.clear();
    this.lastLength = '';
    this.redraw();
    this.handlers.changed(this);
  }

  // -- geometry ----------------------------------------------------------------------------

  /** Horizontal and vertical scale, canvas pixels per image pixel. */
  scale() {
    const im = this.current();
    if (!im) return [1, 1];
    const { rows, columns, spacing } = im.info;
    const aspect = spacing ? spacing[0] / spacing[1] : 1; // row spacing / column spacing
    const fit = Math.min(this.canvas.width / columns, this.canvas.height / (rows * aspect));
    const s = fit * this.zoom;
    return [s, s * aspect];
  }

  /** Where the image's top left corner is on the canvas. */
  origin() {
    const im = this.current();
    const [sx, sy] = this.scale();
    return [
      this.canvas.width / 2 + this.pan[0] - (im.info.columns * sx) / 2,
      this.canvas.height / 2 + this.pan[1] - (im.info.rows * sy) / 2,
    ];
  }

  /** Image coordinates (columns, rows; continuous) of a canvas point, and back. */
  canvasToImage(x, y) {
    const [ox, oy] = this.origin();
    const [sx, sy] = this.scale();
    return [(x - ox) / sx, (y - oy) / sy];
  }

  imageToCanvas(x, y) {
    const [ox, oy] = this.origin();
    const [sx, sy] = this.scale();
    return [ox + x * sx, oy + y * sy];
  }

  /** The canvas point of a pointer event (device pixels). */
  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = this.canvas.width / Math.max(1, rect.width);
    return [(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr];
  }

  resize() {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(rect.width * dpr));
    const h = Math.max(1, Math.round(rect.height * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      for (const c of [this.canvas, this.annot]) {
        c.width = w;
        c.height = h;
      }
      this.redraw();
    }
  }

  // -- drawing -------------------------------------------------------------------------------

  redraw() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      this.draw();
    });
  }

  draw() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const im = this.current();
    this.note.textContent = '';
    if (!this.series) {
      this.note.textContent = 'Drop a series here';
    } else if (!im) {
      this.note.textContent = 'This series has no images';
    } else if (im.state === 'error') {
      this.note.textContent = `This image cannot be shown: ${im.error}`;
    } else if (!im.pixels) {
      this.note.textContent = 'Loading…';
    } else {
      this.paint(im);
      if (this.root.dataset.ready !== '1') {
        this.root.dataset.ready = '1';
        performance.mark('pv:first-image', { detail: { viewport: this.number } });
      }
    }
    this.drawAnnotations();
    this.updateText();
  }

  paint(im) {
    const { columns, rows } = im.info;
    const win = this.effectiveWindow();
    const key = this.rendered;
    const lut = win.lut ?? null;
    if (!key || key.im !== im || key.center !== win.center || key.width !== win.width
      || key.lut !== lut || key.invert !== this.invert) {
      if (this.buffer.width !== columns || this.buffer.height !== rows || !this.imageData) {
        this.buffer.width = columns;
        this.buffer.height = rows;
        this.imageData = this.bufferCtx.createImageData(columns, rows);
      }
      render(im.info, im.pixels, win, this.invert, this.imageData);
      this.bufferCtx.putImageData(this.imageData, 0, 0);
      this.rendered = { im, center: win.center, width: win.width, lut, invert: this.invert };
    }
    const [ox, oy] = this.origin();
    const [sx, sy] = this.scale();
    this.ctx.imageSmoothingEnabled = true; // bilinear, as most viewers show it
    this.ctx.drawImage(this.buffer, ox, oy, columns * sx, rows * sy);
  }

  imageKey(im = this.current()) {
    return im ? `${im.sop}:${im.frame}` : '';
  }

  lengthOf(m, info) {
    const dx = m.b[0] - m.a[0];
    const dy = m.b[1] - m.a[1];
    if (!info.spacing) return { value: Math.hypot(dx, dy), unit: 'px' };
    const mm = Math.hypot(dx * info.spacing[1], dy * info.spacing[0]);
    return { value: mm, unit: info.spacingSource === 'PixelSpacing' ? 'mm' : 'mm (detector)' };
  }

  drawAnnotations() {
    const ctx = this.annotCtx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.annot.width, this.annot.height);
    const im = this.current();
    if (!im?.pixels) return;
    const dpr = window.devicePixelRatio || 1;
    ctx.lineWidth = 1.5 * dpr;
    ctx.font = `${Math.round(13 * dpr)}px system-ui, sans-serif`;
    for (const m of this.measures.get(this.imageKey(im)) ?? []) {
      const a = this.imageToCanvas(...m.a);
      const b = this.imageToCanvas(...m.b);
      ctx.strokeStyle = '#ffd54f';
      ctx.beginPath();
      ctx.moveTo(...a);
      ctx.lineTo(...b);
      ctx.stroke();
      for (const p of [a, b]) {
        ctx.beginPath();
        ctx.arc(p[0], p[1], 3 * dpr, 0, 2 * Math.PI);
        ctx.stroke();
      }
      const { value, unit } = this.lengthOf(m, im.info);
      const label = `${value.toFixed(1)} ${unit}`;
      const x = (a[0] + b[0]) / 2 + 6 * dpr;
      const y = (a[1] + b[1]) / 2 - 6 * dpr;
      ctx.fillStyle = 'rgba(0,0,0,0.6)';
      ctx.fillRect(x - 2, y - 14 * dpr, ctx.measureText(label).width + 4, 17 * dpr);
      ctx.fillStyle = '#ffd54f';
      ctx.fillText(label, x, y);
    }
  }

  updateText() {
    const s = this.study;
    const im = this.current();
    const row = this.series?.row;
    const n = this.series?.images.length ?? 0;
    const lines = (...xs) => xs.filter(Boolean).join('\n');
    if (!s || !row) {
      for (const c of Object.values(this.corners)) c.textContent = '';
      for (const m of Object.values(this.markers)) m.textContent = '';
      return;
    }
    this.corners.tl.textContent = lines(
      personName(text(s, T.PatientName)),
      text(s, T.PatientID) && `ID ${text(s, T.PatientID)}`,
      [date(text(s, T.PatientBirthDate)), text(s, T.PatientSex)].filter(Boolean).join(' '),
    );
    this.corners.tr.textContent = lines(
      text(s, T.StudyDescription),
      `${date(text(s, T.StudyDate))} ${time(text(s, T.StudyTime))}`.trim(),
      text(s, T.AccessionNumber) && `Acc ${text(s, T.AccessionNumber)}`,
    );
    const info = im?.info;
    this.corners.bl.textContent = lines(
      `Se ${text(row, T.SeriesNumber)}: ${text(row, T.SeriesDescription)}`,
      im && `Im ${im.number ?? '?'} (${this.index + 1}/${n})`
        + (info?.frames > 1 ? ` Fr ${im.frame}/${info.frames}` : ''),
      info?.sliceLocation !== null && info?.sliceLocation !== undefined
        && `Loc ${info.sliceLocation.toFixed(1)} mm`,
      info?.sliceThickness && `Thk ${info.sliceThickness} mm`,
    );
    const win = im?.pixels ? this.effectiveWindow() : null;
    const [sx] = im?.pixels ? this.scale() : [0];
    const loaded = this.series.loaded;
    this.corners.br.textContent = lines(
      win && !isColour(info) && (win.lut ? win.lut.name
        : `W ${Math.round(win.width)} L ${Math.round(win.center)}`),
      im?.pixels && `Zoom ${Math.round(sx * 100 / (window.devicePixelRatio || 1))}%`,
      this.invert && 'Inverted',
      this.lastLength && `Length ${this.lastLength}`,
      loaded + this.series.failed < n && `Loading ${loaded}/${n}`,
    );
    this.root.dataset.loaded = String(loaded);
    this.root.dataset.total = String(n);
    this.progress.hidden = loaded + this.series.failed >= n;
    this.progress.setAttribute('aria-valuemax', String(n));
    this.progress.setAttribute('aria-valuenow', String(loaded));
    this.bar.style.width = `${n ? (100 * loaded) / n : 0}%`;
    const o = info?.orientation;
    if (o?.length === 6) {
      const r = o.slice(0, 3);
      const c = o.slice(3);
      this.markers.right.textContent = axisLabel(r);
      this.markers.left.textContent = axisLabel(r.map((v) => -v));
      this.markers.bottom.textContent = axisLabel(c);
      this.markers.top.textContent = axisLabel(c.map((v) => -v));
    } else {
      for (const m of Object.values(this.markers)) m.textContent = '';
    }
    this.root.setAttribute('aria-label', `Viewport ${this.number}: series ${text(row, T.SeriesNumber)}`
      + ` ${text(row, T.SeriesDescription)}, image ${this.index + 1} of ${n}`);
  }

  // -- cine ----------------------------------------------------------------------------------

  get playing() {
    return this.cine !== null;
  }

  toggleCine() {
    if (this.playing) this.stopCine();
    else this.startCine();
    this.handlers.changed(this);
  }

  startCine() {
    const info = this.current()?.info;
    if (!info || this.series.images.length < 2) return;
    const fps = info.frames > 1 && info.frameTime > 0 ? 1000 / info.frameTime
      : info.cineRate > 0 ? info.cineRate : 15;
    this.cine = setInterval(() => {
      const n = this.series.images.length;
      const next = (this.index + 1) % n;
      if (this.series.images[next].state === 'done') {
        this.index = next;
        this.series.focus = next;
        this.slider.value = next + 1;
        this.redraw();
      }
    }, 1000 / Math.min(60, Math.max(1, fps)));
  }

  stopCine() {
    if (this.cine !== null) clearInterval(this.cine);
    this.cine = null;
  }

  // -- input ---------------------------------------------------------------------------------

  listen() {
    const target = this.annot;
    target.addEventListener('contextmenu', (e) => e.preventDefault());
    target.addEventListener('pointerdown', (e) => this.pointerDown(e));
    target.addEventListener('pointermove', (e) => this.pointerMove(e));
    target.addEventListener('pointerup', (e) => this.pointerUp(e));
    target.addEventListener('pointercancel', (e) => this.pointerUp(e));
    this.root.addEventListener('wheel', (e) => this.onWheel(e), { passive: false });
    this.root.addEventListener('focusin', () => this.handlers.activate(this));
    this.slider.addEventListener('input', () => this.go(Number(this.slider.value) - 1));
  }

  pointerDown(e) {
    this.handlers.activate(this);
    this.root.focus({ preventScroll: true });
    const im = this.current();
    if (!im?.pixels) return;
    let tool = this.tool;
    if (e.button === 2) tool = 'wl';
    else if (e.button === 1) tool = 'pan';
    else if (e.shiftKey) tool = 'scroll';
    else if (e.ctrlKey || e.metaKey) tool = 'zoom';
    const p = this.point(e);
    this.drag = { tool, start: p, window: { ...this.effectiveWindow() }, zoom: this.zoom,
      pan: [...this.pan], index: this.index, measure: null };
    if (tool === 'length') {
      const a = this.canvasToImage(...p);
      const m = { a, b: [...a] };
      const key = this.imageKey();
      if (!this.measures.has(key)) this.measures.set(key, []);
      this.measures.get(key).push(m);
      this.drag.measure = m;
    }
    this.annot.setPointerCapture(e.pointerId);
    e.preventDefault();
  }

  pointerMove(e) {
    const d = this.drag;
    if (!d) return;
    const p = this.point(e);
    const dx = p[0] - d.start[0];
    const dy = p[1] - d.start[1];
    const im = this.current();
    if (d.tool === 'wl' && im?.pixels && !isColour(im.info)) {
      const range = im.pixels.kind === 'grey'
        ? Math.abs((im.pixels.max - im.pixels.min) * im.info.slope) : 256;
      const k = Math.max(0.1, range / 1000);
      this.window = { center: d.window.center + dy * k, width: Math.max(1, d.window.width + dx * k) };
      this.redraw();
    } else if (d.tool === 'pan') {
      this.pan = [d.pan[0] + dx, d.pan[1] + dy];
      this.redraw();
    } else if (d.tool === 'zoom') {
      this.zoom = Math.max(0.05, Math.min(50, d.zoom * Math.exp(-dy / 200)));
      this.redraw();
    } else if (d.tool === 'scroll') {
      this.go(d.index + Math.round(dy / 8));
    } else if (d.tool === 'length' && d.measure) {
      d.measure.b = this.canvasToImage(...p);
      this.lastLength = this.lengthText(d.measure);
      this.drawAnnotations();
      this.updateText();
    }
  }

  lengthText(m) {
    const { value, unit } = this.lengthOf(m, this.current().info);
    return `${value.toFixed(1)} ${unit}`;
  }

  pointerUp(e) {
    const d = this.drag;
    if (!d) return;
    this.drag = null;
    if (this.annot.hasPointerCapture(e.pointerId)) this.annot.releasePointerCapture(e.pointerId);
    if (d.measure) {
      const a = this.imageToCanvas(...d.measure.a);
      const b = this.imageToCanvas(...d.measure.b);
      if (Math.hypot(a[0] - b[0], a[1] - b[1]) < 3) {
        const list = this.measures.get(this.imageKey());
        list.splice(list.indexOf(d.measure), 1);
      } else {
        this.lastLength = this.lengthText(d.measure);
      }
      this.drawAnnotations();
      this.updateText();
    }
    this.handlers.changed(this);
  }

  onWheel(e) {
    e.preventDefault();
    if (e.ctrlKey || e.metaKey) {
      this.zoomBy(Math.exp(-e.deltaY / 500), this.point(e));
      return;
    }
    this.wheel += e.deltaY;
    if (Math.abs(this.wheel) >= WHEEL_STEP || e.deltaMode !== 0) {
      this.step(Math.sign(this.wheel || e.deltaY));
      this.wheel = 0;
    }
  }

  /** Remove the measurements of the current image. */
  clearMeasures() {
    this.measures.delete(this.imageKey());
    this.lastLength = '';
    this.drawAnnotations();
    this.updateText();
  }
}
