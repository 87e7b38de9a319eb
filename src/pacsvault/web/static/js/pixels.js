// Pixels in the browser: what an instance's metadata says about its image, its frames
// turned into typed arrays, and grey or colour values into an ImageData.
//
// Frames are fetched as application/octet-stream in Explicit VR Little Endian: native
// frames as stored (little endian whatever the stored byte order; YBR and planar
// colour as stored), compressed ones decompressed by the server (pydicom), which turns
// YBR into RGB and gives samples interleaved. So a frame is "as stored" or "decoded",
// and AvailableTransferSyntaxUID in the metadata says which.
//
// Grey: stored value -> modality value (Rescale Slope/Intercept, or the object's
// Modality LUT) -> VOI window (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT or SIGMOID) or
// the object's own VOI LUT (C.11.2.1.1) -> 0..255, inverted for MONOCHROME1 and when
// the user inverts. Integer frames go through a lookup table over
// the frame's range of stored values, rebuilt when the window changes, so window/level
// drags redraw at once without the server.

import { T, number, numbers, text, values } from './api.js';

const NATIVE = new Set([
  '1.2.840.10008.1.2', '1.2.840.10008.1.2.1', '1.2.840.10008.1.2.2', '1.2.840.10008.1.2.1.99',
]);

export const ACCEPT_FRAMES =
  'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';

/** What one instance's DICOM JSON says about its pixels, geometry and display. */
export function imageInfo(meta) {
  const syntax = text(meta, T.AvailableTransferSyntaxUID) || '1.2.840.10008.1.2.1';
  const centers = numbers(meta, T.WindowCenter);
  const widths = numbers(meta, T.WindowWidth);
  const names = values(meta, T.WindowCenterWidthExplanation);
  const windows = centers.map((c, i) => ({ center: c, width: widths[i] ?? widths[0],
    name: names[i] || `Window ${i + 1}` })).filter((w) => w.width > 0);
  const pixelRepresentation = number(meta, T.PixelRepresentation, 0);
  const intercept = number(meta, T.RescaleIntercept, 0);
  const modalityLut = lookupTable(values(meta, T.ModalityLUTSequence)[0], 'Modality LUT',
    pixelRepresentation === 1);
  const voiLuts = values(meta, T.VOILUTSequence)
    .map((item, i) => lookupTable(item, `VOI LUT ${i + 1}`,
      modalityLut ? modalityLut.min < 0 : pixelRepresentation === 1 || intercept < 0))
    .filter(Boolean).map(lutWindow);
  let spacing = numbers(meta, T.PixelSpacing);
  let spacingSource = 'PixelSpacing';
  if (spacing.length < 2) {
    spacing = numbers(meta, T.ImagerPixelSpacing);
    spacingSource = 'ImagerPixelSpacing';
  }
  const photometric = text(meta, T.PhotometricInterpretation).trim() || 'MONOCHROME2';
  const bitsAllocated = number(meta, T.BitsAllocated, 16);
  return {
    meta,
    sop: text(meta, T.SOPInstanceUID),
    series: text(meta, T.SeriesInstanceUID),
    study: text(meta, T.StudyInstanceUID),
    rows: number(meta, T.Rows, 0),
    columns: number(meta, T.Columns, 0),
    samples: number(meta, T.SamplesPerPixel, 1),
    bitsAllocated,
    bitsStored: number(meta, T.BitsStored, bitsAllocated),
    pixelRepresentation,
    photometric,
    planar: number(meta, T.PlanarConfiguration, 0),
    frames: Math.max(1, number(meta, T.NumberOfFrames, 1)),
    slope: number(meta, T.RescaleSlope, 1) || 1,
    intercept,
    modalityLut,
    windows,
    voiLuts,
    voiFunction: text(meta, T.VOILUTFunction).trim().toUpperCase() || 'LINEAR',
    spacing: spacing.length >= 2 && spacing[0] > 0 && spacing[1] > 0 ? spacing : null,
    spacingSource,
    position: numbers(meta, T.ImagePositionPatient),
    orientation: numbers(meta, T.ImageOrientationPatient),
    instanceNumber: number(meta, T.InstanceNumber, null),
    sliceLocation: number(meta, T.SliceLocation, null),
    sliceThickness: number(meta, T.SliceThickness, null),
    frameTime: number(meta, T.FrameTime, null),
    cineRate: number(meta, T.CineRate, null),
    syntax,
    decoded: !NATIVE.has(syntax),
    hasPixels: Boolean(meta['7FE00010']) && number(meta, T.Rows, 0) > 0,
  };
}

/**
 * A lookup table of a Modality or VOI LUT Sequence item (PS3.3 C.11.1, C.11.2):
 * {name, entries, first, bits, data, min, max}, or null when it has no usable data.
 * LUT Data comes as numbers (US) or base64 (OW, 16-bit little endian words); the first
 * value mapped is signed when the values it maps are (*signedInput*).
 */
function lookupTable(item, fallbackName, signedInput) {
  if (!item) return null;
  const descriptor = numbers(item, T.LUTDescriptor);
  const element = item[T.LUTData];
  if (descriptor.length < 3 || !element) return null;
  const entries = descriptor[0] || 65536;
  let first = descriptor[1];
  if (signedInput && first >= 32768) first -= 65536;
  const bits = Math.min(16, Math.max(8, descriptor[2] || 16));
  let data;
  if (Array.isArray(element.Value) && element.Value.length) {
    data = Float64Array.from(element.Value.map(Number));
  } else if (element.InlineBinary) {
    const bytes = Uint8Array.from(atob(element.InlineBinary), (ch) => ch.charCodeAt(0));
    data = bytes.length >= entries * 2
      ? new Uint16Array(bytes.buffer, 0, entries)
      : bytes;
  } else {
    return null; // a BulkDataURI inside a sequence: the server inlines them
  }
  if (data.length < entries) return null;
  let [min, max] = range(data.subarray(0, entries));
  if (!Number.isFinite(min)) [min, max] = [0, 0];
  return { name: text(item, T.LUTExplanation).trim() || fallbackName, entries, first, bits,
    data, min, max };
}

/** A VOI LUT as a window choice: its centre and width approximate its input range (where
 * a window/level drag starts from). */
function lutWindow(lut) {
  return { name: lut.name, center: lut.first + lut.entries / 2, width: lut.entries, lut };
}

/** The table's output for input *x* (clamped to its first and last entries). */
export function lookup(lut, x) {
  const k = Math.round(x) - lut.first;
  return lut.data[k < 0 ? 0 : k >= lut.entries ? lut.entries - 1 : k];
}

/** Whether the image is shown in colour (and so without a VOI window). */
export function isColour(info) {
  return info.samples > 1 || info.photometric === 'PALETTE COLOR';
}

// -- frames -> typed arrays ------------------------------------------------------------------

function aligned(bytes, size) {
  // A typed array needs its offset to be a multiple of its element size: copy if not.
  return bytes.byteOffset % size === 0 ? bytes : bytes.slice();
}

/** The stored values of a grey frame as a typed array (a view where it can be). */
function greyValues(info, bytes) {
  const n = info.rows * info.columns;
  const signed = info.pixelRepresentation === 1;
  switch (info.bitsAllocated) {
    case 1: {
      const data = new Uint8Array(n);
      for (let i = 0; i < n; i++) data[i] = (bytes[i >> 3] >> (i & 7)) & 1;
      return data;
    }
    case 8: {
      const b = bytes.subarray(0, n);
      return signed ? new Int8Array(b.buffer, b.byteOffset, n) : b;
    }
    case 16: {
      const b = aligned(bytes, 2);
      return signed ? new Int16Array(b.buffer, b.byteOffset, n)
        : new Uint16Array(b.buffer, b.byteOffset, n);
    }
    case 32: {
      const b = aligned(bytes, 4);
      return signed ? new Int32Array(b.buffer, b.byteOffset, n)
        : new Uint32Array(b.buffer, b.byteOffset, n);
    }
    default:
      throw new Error(`${info.bitsAllocated} bits allocated is not supported`);
  }
}

function range(data) {
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

/** *data* with only BitsStored bits, sign-extended when signed: a copy when bits above
 * BitsStored are set (overlays, garbage), else *data* itself. */
function masked(info, data, min, max) {
  const stored = info.bitsStored;
  if (!(stored > 0 && stored < info.bitsAllocated && info.bitsAllocated > 1)) return data;
  const signed = info.pixelRepresentation === 1;
  const lo = signed ? -(2 ** (stored - 1)) : 0;
  const hi = signed ? 2 ** (stored - 1) - 1 : 2 ** stored - 1;
  if (min >= lo && max <= hi) return data;
  const out = data.slice();
  const mask = 2 ** stored - 1;
  for (let i = 0; i < out.length; i++) {
    let v = out[i] & mask;
    if (signed && v > hi) v -= 2 ** stored;
    out[i] = v;
  }
  return out;
}

function clamp8(v) {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function ybrToRgb(y, cb, cr) {
  return [
    clamp8(Math.round(y + 1.402 * (cr - 128))),
    clamp8(Math.round(y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128))),
    clamp8(Math.round(y + 1.772 * (cb - 128))),
  ];
}

/** A colour frame as RGBA bytes (RGB, YBR_FULL, YBR_FULL_422, planar or not). */
function colourValues(info, bytes) {
  const n = info.rows * info.columns;
  const out = new Uint8ClampedArray(n * 4);
  let src = bytes;
  if (info.bitsAllocated === 16) { // rare: keep the top 8 bits of each sample
    const words = new Uint16Array(aligned(bytes, 2).buffer, aligned(bytes, 2).byteOffset,
      bytes.length >> 1);
    const shift = Math.max(0, info.bitsStored - 8);
    src = new Uint8Array(words.length);
    for (let i = 0; i < words.length; i++) src[i] = words[i] >> shift;
  }
  const photometric = info.decoded && info.photometric.startsWith('YBR') ? 'RGB' : info.photometric;
  const planar = info.decoded ? 0 : info.planar;
  if (photometric === 'YBR_FULL_422') { // two pixels in four bytes: Y1 Y2 Cb Cr
    for (let p = 0, s = 0; p < n; p += 2, s += 4) {
      for (let k = 0; k < 2 && p + k < n; k++) {
        const [r, g, b] = ybrToRgb(src[s + k], src[s + 2], src[s + 3]);
        out.set([r, g, b, 255], (p + k) * 4);
      }
    }
    return out;
  }
  const at = planar === 1 ? (i, c) => src[c * n + i] : (i, c) => src[i * 3 + c];
  const ybr = photometric.startsWith('YBR');
  for (let i = 0; i < n; i++) {
    const o = i * 4;
    if (ybr) {
      const [r, g, b] = ybrToRgb(at(i, 0), at(i, 1), at(i, 2));
      out[o] = r; out[o + 1] = g; out[o + 2] = b;
    } else {
      out[o] = at(i, 0); out[o + 1] = at(i, 1); out[o + 2] = at(i, 2);
    }
    out[o + 3] = 255;
  }
  return out;
}

function lutTable(info, colour) {
  const d = info.palette[colour];
  const count = d.descriptor[0] || 65536;
  return { ...d, count, firstMapped: d.descriptor[1], bits: d.descriptor[2] };
}

/** A palette colour frame as RGBA bytes (the lookup tables are in info.palette). */
function paletteValues(info, bytes) {
  const unsigned = { ...info, pixelRepresentation: 0 };
  const raw = greyValues(unsigned, bytes);
  const index = masked(unsigned, raw, ...range(raw));
  const n = info.rows * info.columns;
  const out = new Uint8ClampedArray(n * 4);
  const luts = ['red', 'green', 'blue'].map((c) => lutTable(info, c));
  for (let i = 0; i < n; i++) {
    const v = index[i];
    for (let c = 0; c < 3; c++) {
      const lut = luts[c];
      const k = Math.min(Math.max(v - lut.firstMapped, 0), lut.count - 1);
      const entry = lut.data[k] ?? 0;
      out[i * 4 + c] = lut.bits > 8 ? entry >> 8 : entry;
    }
    out[i * 4 + 3] = 255;
  }
  return out;
}

/**
 * One frame's bytes as a decoded frame: {kind: 'grey', data, min, max} (stored values,
 * with their range) or {kind: 'colour', rgba}.
 */
export function decodeFrame(info, bytes) {
  if (info.photometric === 'PALETTE COLOR' && info.palette) {
    return { kind: 'colour', rgba: paletteValues(info, bytes) };
  }
  if (info.samples > 1) return { kind: 'colour', rgba: colourValues(info, bytes) };
  let data = greyValues(info, bytes);
  let [min, max] = range(data);
  const clean = masked(info, data, min, max);
  if (clean !== data) {
    data = clean;
    [min, max] = range(data);
  }
  return { kind: 'grey', data, min, max };
}

// -- display ---------------------------------------------------------------------------------

/** The modality value (e.g. HU) of a stored value. */
export function modality(info, stored) {
  if (info.modalityLut) return lookup(info.modalityLut, stored);
  return stored * info.slope + info.intercept;
}

/** The default window of an image: its first WindowCenter/Width, else its first VOI
 * LUT, else its full range. */
export function defaultWindow(info, frame) {
  if (info.windows.length) return { center: info.windows[0].center, width: info.windows[0].width };
  if (info.voiLuts.length) return info.voiLuts[0];
  if (frame?.kind !== 'grey') return { center: 127.5, width: 256 };
  const lo = modality(info, frame.min);
  const hi = modality(info, frame.max);
  const a = Math.min(lo, hi);
  const b = Math.max(lo, hi);
  return { center: (a + b) / 2, width: Math.max(1, b - a + 1) };
}

/** The 0..255 output of the VOI window for modality value x (PS3.3 C.11.2.1.2). */
export function voi(x, center, width, fn = 'LINEAR') {
  if (fn === 'SIGMOID') return 255 / (1 + Math.exp((-4 * (x - center)) / width));
  if (fn === 'LINEAR_EXACT') {
    if (x <= center - width / 2) return 0;
    if (x > center + width / 2) return 255;
    return ((x - center) / width + 0.5) * 255;
  }
  const w = Math.max(1, width);
  if (x <= center - 0.5 - (w - 1) / 2) return 0;
  if (x > center - 0.5 + (w - 1) / 2) return 255;
  return ((x - (center - 0.5)) / (w - 1) + 0.5) * 255;
}

const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function packGrey(g) {
  return LITTLE ? (0xff000000 | (g << 16) | (g << 8) | g) >>> 0 : ((g << 24) | (g << 16) | (g << 8) | 0xff) >>> 0;
}

/**
 * Fill *imageData* (columns x rows) with the frame shown with *window* ({center,
 * width}) and *invert* (the user's; MONOCHROME1 is inverted on top of it).
 */
export function render(info, frame, window, invert, imageData) {
  const out = imageData.data;
  if (frame.kind === 'colour') {
    out.set(frame.rgba);
    if (invert) for (let i = 0; i < out.length; i += 4) {
      out[i] = 255 - out[i]; out[i + 1] = 255 - out[i + 1]; out[i + 2] = 255 - out[i + 2];
    }
    return;
  }
  const flip = (info.photometric === 'MONOCHROME1') !== Boolean(invert);
  const { center, width, lut } = window;
  const fn = info.voiFunction;
  const top = lut ? 2 ** lut.bits - 1 : 0;
  const grey = (stored) => {
    const m = modality(info, stored);
    const g = lut ? clamp8(Math.round((lookup(lut, m) * 255) / top))
      : Math.round(voi(m, center, width, fn));
    return flip ? 255 - g : g;
  };
  const pixels = new Uint32Array(out.buffer, out.byteOffset, out.length >> 2);
  const { data, min, max } = frame;
  const integer = !(data instanceof Float32Array || data instanceof Float64Array);
  if (integer && max - min <= 1 << 20) {
    const lut = new Uint32Array(max - min + 1);
    for (let v = min; v <= max; v++) lut[v - min] = packGrey(grey(v));
    for (let i = 0; i < data.length; i++) pixels[i] = lut[data[i] - min];
  } else {
    for (let i = 0; i < data.length; i++) pixels[i] = packGrey(grey(data[i]));
  }
}

/** Fetch palette colour lookup tables (inline or bulk data) into info.palette. */
export async function loadPalette(info, fetchBulk) {
  if (info.photometric !== 'PALETTE COLOR' || info.palette) return;
  const tags = {
    red: [T.RedPaletteColorLookupTableDescriptor, T.RedPaletteColorLookupTableData],
    green: [T.GreenPaletteColorLookupTableDescriptor, T.GreenPaletteColorLookupTableData],
    blue: [T.BluePaletteColorLookupTableDescriptor, T.BluePaletteColorLookupTableData],
  };
  const palette = {};
  for (const [colour, [descTag, dataTag]] of Object.entries(tags)) {
    const descriptor = values(info.meta, descTag).map(Number);
    const element = info.meta[dataTag];
    if (!element || descriptor.length < 3) throw new Error('the palette is missing or segmented');
    let bytes;
    if (element.InlineBinary) {
      bytes = Uint8Array.from(atob(element.InlineBinary), (ch) => ch.charCodeAt(0));
    } else if (element.BulkDataURI) {
      bytes = await fetchBulk(element.BulkDataURI);
    } else {
      throw new Error('the palette has no data');
    }
    const entries = descriptor[0] || 65536;
    let data;
    if (bytes.length >= entries * 2) {
      const b = aligned(bytes, 2);
      data = new Uint16Array(b.buffer, b.byteOffset, entries);
    } else {
      data = bytes;
    }
    palette[colour] = { descriptor, data };
  }
  info.palette = palette;
}
