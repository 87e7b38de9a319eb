// Series: an ordered stack of images (an image is one frame of one instance), loaded
// progressively.
//
// Opening a series asks QIDO-RS for its instances (the index answers at once:
// InstanceNumber, NumberOfFrames) and the metadata of the first one, so the stack
// exists and its first image shows before the whole series' metadata has arrived;
// frames already fetched meanwhile wait, undecoded, for their instance's metadata.
// When the series' metadata comes, images are sorted along the normal of their plane
// (ImagePositionPatient), the image on screen staying on screen.
//
// One scheduler for the page runs a few requests at once (PARALLEL) and always fetches
// next the image nearest to where each viewport is looking (the active viewport's
// series first), so scrolling finds its neighbours already there. A multi-frame
// instance is fetched a few frames per request.

import { DICOMWEB, HttpError, T, getJson, number, reason, request, text } from './api.js';
import { boundaryOf, parts } from './multipart.js';
import { ACCEPT_FRAMES, decodeFrame, imageInfo, loadPalette } from './pixels.js';

export const PARALLEL = 6;
const FRAMES_PER_REQUEST = 8;

function dot(a, b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

function cross(a, b) {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

function byNumber(a, b) {
  return (a.number ?? 0) - (b.number ?? 0) || a.frame - b.frame;
}

/** Sort images along the normal of their plane (ImagePositionPatient), else by
 * InstanceNumber; the stack starts where InstanceNumber is lowest. */
export function sortImages(images) {
  const o = images[0]?.info?.orientation;
  const geometric = images.length > 1 && o?.length === 6 && images.every((im) =>
    im.info && im.info.position.length === 3 && im.info.frames === 1
    && im.info.orientation.every((v, i) => Math.abs(v - o[i]) < 1e-3));
  if (!geometric) return images.sort(byNumber);
  const normal = cross(o.slice(0, 3), o.slice(3));
  images.sort((a, b) => dot(a.info.position, normal) - dot(b.info.position, normal)
    || byNumber(a, b));
  const firstN = images[0].number;
  const lastN = images[images.length - 1].number;
  if (firstN !== null && lastN !== null && firstN > lastN) images.reverse();
  return images;
}

export class Series {
  /** *row*: the series' QIDO-RS answer; *instances*: its instances' QIDO-RS answers. */
  constructor(study, row, instances) {
    this.study = study;
    this.row = row;
    this.uid = text(row, T.SeriesInstanceUID);
    this.images = [];
    for (const inst of instances) {
      if (!number(inst, T.Rows, 0)) continue; // no pixel data (a report, a state...)
      const frames = Math.max(1, number(inst, T.NumberOfFrames, 1));
      const sop = text(inst, T.SOPInstanceUID);
      const n = number(inst, T.InstanceNumber, null);
      for (let f = 1; f <= frames; f++) {
        this.images.push({ sop, number: n, frame: f, info: null, raw: null, pixels: null,
          state: 'pending', error: null });
      }
    }
    this.images.sort(byNumber);
    this.complete = false; // every instance's metadata is in
    this.loaded = 0;
    this.failed = 0;
    this.listeners = new Set();
    this.focus = 0;
    this.priority = 0;
  }

  /** Call *fn({type, index})* when an image is loaded or fails ('image') or the stack
   * is reordered ('restack'). */
  listen(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(event) {
    for (const fn of this.listeners) fn(event);
  }

  get done() {
    return this.loaded + this.failed >= this.images.length;
  }

  instanceUrl(sop) {
    return `${DICOMWEB}/studies/${this.study}/series/${this.uid}/instances/${sop}`;
  }

  /** Add the metadata (DICOM JSON) of some instances; with *all*, it is every one:
   * drop images without pixels and sort the stack by geometry. */
  async addMetadata(metas, all = false) {
    const infos = new Map();
    for (const meta of metas) {
      const info = imageInfo(meta);
      infos.set(info.sop, info);
    }
    for (const im of this.images) {
      const info = infos.get(im.sop);
      if (!info || im.info) continue;
      im.info = info;
      if (im.raw) await this.decode(im, im.raw);
    }
    if (!all) return;
    const before = this.images;
    const kept = before.filter((im) => im.info?.hasPixels && im.frame <= im.info.frames);
    for (const im of before) {
      if (!kept.includes(im) && im.state !== 'error') {
        im.state = 'error';
        im.error = 'no pixel data';
        if (im.pixels) this.loaded--;
      }
    }
    this.failed = kept.filter((im) => im.state === 'error').length;
    this.loaded = kept.filter((im) => im.state === 'done').length;
    this.images = sortImages(kept);
    this.complete = true;
    performance.mark('pv:stack-sorted', { detail: { series: this.uid } });
    this.emit({ type: 'restack', before });
  }

  /** Fetch every instance's metadata (once); a promise of the stack sorted. */
  loadMetadata() {
    this.metadata ??= getJson(`${DICOMWEB}/studies/${this.study}/series/${this.uid}/metadata`)
      .then(({ body }) => this.addMetadata(body, true), (err) => {
        this.fail(err);
        throw err;
      });
    this.metadata.catch(() => {});
    return this.metadata;
  }

  /** The series' metadata could not be had: what is not shown yet cannot be. */
  fail(err) {
    this.images.forEach((im, index) => {
      if (im.state === 'done' || im.state === 'error') return;
      im.state = 'error';
      im.error = err.message;
      im.raw = null;
      this.failed++;
      this.emit({ type: 'image', index });
    });
  }

  async decode(im, bytes) {
    try {
      await loadPalette(im.info, (uri) => this.fetchBulk(uri));
      im.pixels = decodeFrame(im.info, bytes);
      im.raw = null;
      im.state = 'done';
      this.loaded++;
    } catch (err) {
      im.state = 'error';
      im.error = err.message;
      im.raw = null;
      this.failed++;
    }
    this.emit({ type: 'image', index: this.images.indexOf(im) });
    if (this.done) performance.mark('pv:all-loaded', { detail: { series: this.uid } });
    this.loadMetadata();
  }

  /** Whether the image in focus is being fetched (others wait: it comes first). */
  get focusLoading() {
    return this.images[this.focus]?.state === 'loading';
  }

  /** The next pending image to fetch: the one nearest the focus. */
  nextPending() {
    const n = this.images.length;
    for (let d = 0; d < n; d++) {
      for (const i of [this.focus + d, this.focus - d]) {
        if (i >= 0 && i < n && this.images[i].state === 'pending') return i;
      }
    }
    return -1;
  }

  /** Fetch the image at *index* (with the next frames of the same instance). */
  async fetch(index) {
    const start = this.images[index];
    const batch = [start];
    for (const im of this.images) {
      if (batch.length >= FRAMES_PER_REQUEST) break;
      if (im !== start && im.sop === start.sop && im.state === 'pending'
        && Math.abs(im.frame - start.frame) < FRAMES_PER_REQUEST) batch.push(im);
    }
    for (const im of batch) im.state = 'loading';
    try {
      const list = batch.map((im) => im.frame).join(',');
      const response = await request(`${this.instanceUrl(start.sop)}/frames/${list}`,
        { headers: { Accept: ACCEPT_FRAMES } });
      if (!response.ok) throw new HttpError(response.status, await reason(response));
      const body = await response.arrayBuffer();
      const found = parts(body, boundaryOf(response.headers.get('content-type')));
      if (found.length !== batch.length) throw new Error('the server sent fewer frames than asked');
      for (const [k, im] of batch.entries()) {
        if (im.state === 'error') continue; // the series' metadata failed meanwhile
        if (im.info) await this.decode(im, found[k].body);
        else {
          im.raw = found[k].body; // decoded when its metadata arrives
          im.state = 'fetched';
        }
      }
    } catch (err) {
      for (const im of batch) {
        if (im.state === 'done' || im.state === 'fetched') continue;
        im.state = 'error';
        im.error = err.message;
        this.failed++;
        this.emit({ type: 'image', index: this.images.indexOf(im) });
      }
      if (err instanceof HttpError && err.status === 401) throw err;
    }
  }

  async fetchBulk(uri) {
    const path = new URL(uri, location.href).pathname; // same origin only
    const response = await request(path, { headers: { Accept: ACCEPT_FRAMES } });
    if (!response.ok) throw new HttpError(response.status, await reason(response));
    const body = await response.arrayBuffer();
    return parts(body, boundaryOf(response.headers.get('content-type')))[0].body.slice();
  }
}

/** The page's loader: up to PARALLEL requests, nearest-to-focus first. */
export class Loader {
  constructor() {
    this.series = new Set();
    this.running = 0;
  }

  /** Load *series* (more urgent with a higher priority). */
  add(series) {
    this.series.add(series);
    this.pump();
  }

  remove(series) {
    this.series.delete(series);
  }

  pump() {
    while (this.running < PARALLEL) {
      const order = [...this.series].sort((a, b) => b.priority - a.priority);
      if (order[0]?.focusLoading && this.running > 0) return; // the image looked at first
      let picked = null;
      for (const s of order) {
        const i = s.nextPending();
        if (i >= 0) {
          picked = [s, i];
          break;
        }
      }
      if (!picked) return;
      const [s, i] = picked;
      this.running++;
      s.fetch(i).catch(() => {}).finally(() => {
        this.running--;
        this.pump();
      });
    }
  }
}

/**
 * Open a series: its instances (QIDO-RS) and its first instance's metadata now; the
 * rest of the metadata (WADO-RS) once the first image is in (:meth:`loadMetadata`),
 * so that the first image does not share the server with it.
 */
export async function openSeries(study, row) {
  const uid = text(row, T.SeriesInstanceUID);
  const base = `${DICOMWEB}/studies/${study}/series/${uid}`;
  const { body: instances } = await getJson(`${base}/instances?limit=100000`);
  const series = new Series(study, row, instances);
  if (series.images.length) {
    const { body } = await getJson(`${series.instanceUrl(series.images[0].sop)}/metadata`);
    await series.addMetadata(body);
  } else {
    series.loadMetadata();
  }
  return series;
}
