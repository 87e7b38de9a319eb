// Talking to the server: same-origin requests with the session cookie (never another
// origin), DICOM JSON helpers and formatting. A 401 anywhere means the session ended
// (logged out, idle too long): the page is wiped and the login page shown, which comes
// back here after logging in. The idle watcher does the same when the user has left
// the page alone for the session's idle time, so images do not stay on an unattended
// screen; while the user works on images already loaded (no requests), it keeps the
// session alive with a small request at most once a minute.

export const DICOMWEB = '/dicom-web';

let lastRequest = Date.now();
let leaving = false;

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Leave for the login page, coming back to this page afterwards. */
export function toLogin() {
  if (leaving) return;
  leaving = true;
  sessionStorage.clear(); // the last search (it may name a patient) ends with the session
  document.body.replaceChildren();
  const next = location.pathname + location.search;
  location.replace('/login?next=' + encodeURIComponent(next));
}

/** fetch() on this origin with the session; a 401 ends the page. */
export async function request(url, options = {}) {
  lastRequest = Date.now();
  const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store', ...options });
  if (response.status === 401) {
    toLogin();
    throw new HttpError(401, 'the session has ended');
  }
  return response;
}

/** The reason a failed response gives (its JSON detail), for messages. */
export async function reason(response) {
  try {
    const body = await response.json();
    return String(body.detail ?? response.statusText);
  } catch {
    return response.statusText || `HTTP ${response.status}`;
  }
}

/** GET JSON (DICOM JSON or ours); throws HttpError when not 2xx. */
export async function getJson(url, options = {}) {
  const response = await request(url, {
    ...options,
    headers: { Accept: 'application/dicom+json, application/json' },
  });
  if (!response.ok) throw new HttpError(response.status, await reason(response));
  if (response.status === 204) return { body: [], response };
  return { body: await response.json(), response };
}

let current = null;

/** Who is logged in: {user, role, permissions, csrf, idle_timeout} (fetched once). */
export function session() {
  current ??= getJson('/api/session').then(({ body }) => {
    watchIdle(body);
    return body;
  });
  return current;
}

/** Whether the session's role has *permission* (e.g. "export", "admin", "audit"). */
export async function may(permission) {
  const s = await session();
  return s.permissions.includes(permission);
}

/** POST with the session's CSRF token (refreshed once if another page rotated it). */
export async function post(url) {
  const s = await session();
  let response = await request(url, { method: 'POST', headers: { 'X-CSRF-Token': s.csrf } });
  if (response.status === 403) {
    const { body } = await getJson('/api/session');
    s.csrf = body.csrf;
    response = await request(url, { method: 'POST', headers: { 'X-CSRF-Token': s.csrf } });
  }
  return response;
}

export async function logout() {
  try {
    await post('/logout');
  } finally {
    leaving = true;
    sessionStorage.clear();
    location.replace('/login');
  }
}

function watchIdle(s) {
  const idle = Math.max(5, Number(s.idle_timeout) || 900) * 1000;
  const keepAliveEvery = Math.min(60000, idle / 3);
  let lastActivity = Date.now();
  const refresh = async () => {
    const { body } = await getJson('/api/session');
    s.csrf = body.csrf;
  };
  const onActivity = () => {
    lastActivity = Date.now();
    if (lastActivity - lastRequest > keepAliveEvery) refresh().catch(() => {});
  };
  for (const type of ['pointerdown', 'keydown', 'wheel', 'pointermove']) {
    addEventListener(type, onActivity, { passive: true, capture: true });
  }
  setInterval(() => {
    const now = Date.now();
    // Nothing asked of the server for the idle time: the server has ended the session
    // (or another page kept it alive): ask, and a 401 leaves for the login page.
    if (now - lastRequest > idle + 1000 && now - lastActivity > idle) refresh().catch(() => {});
  }, Math.min(15000, idle / 4));
}

// -- DICOM JSON ---------------------------------------------------------------------------

export const T = {
  SpecificCharacterSet: '00080005',
  ImageType: '00080008',
  SOPClassUID: '00080016',
  SOPInstanceUID: '00080018',
  StudyDate: '00080020',
  SeriesDate: '00080021',
  StudyTime: '00080030',
  AccessionNumber: '00080050',
  Modality: '00080060',
  ModalitiesInStudy: '00080061',
  ReferringPhysicianName: '00080090',
  StudyDescription: '00081030',
  SeriesDescription: '0008103E',
  AvailableTransferSyntaxUID: '00083002',
  PatientName: '00100010',
  PatientID: '00100020',
  PatientBirthDate: '00100030',
  PatientSex: '00100040',
  SliceThickness: '00180050',
  FrameTime: '00181063',
  ImagerPixelSpacing: '00181164',
  CineRate: '00180040',
  StudyInstanceUID: '0020000D',
  SeriesInstanceUID: '0020000E',
  StudyID: '00200010',
  SeriesNumber: '00200011',
  InstanceNumber: '00200013',
  ImagePositionPatient: '00200032',
  ImageOrientationPatient: '00200037',
  SliceLocation: '00201041',
  NumberOfStudyRelatedSeries: '00201206',
  NumberOfStudyRelatedInstances: '00201208',
  NumberOfSeriesRelatedInstances: '00201209',
  SamplesPerPixel: '00280002',
  PhotometricInterpretation: '00280004',
  PlanarConfiguration: '00280006',
  NumberOfFrames: '00280008',
  Rows: '00280010',
  Columns: '00280011',
  PixelSpacing: '00280030',
  BitsAllocated: '00280100',
  BitsStored: '00280101',
  HighBit: '00280102',
  PixelRepresentation: '00280103',
  WindowCenter: '00281050',
  WindowWidth: '00281051',
  RescaleIntercept: '00281052',
  RescaleSlope: '00281053',
  WindowCenterWidthExplanation: '00281055',
  VOILUTFunction: '00281056',
  ModalityLUTSequence: '00283000',
  LUTDescriptor: '00283002',
  LUTExplanation: '00283003',
  LUTData: '00283006',
  VOILUTSequence: '00283010',
  RedPaletteColorLookupTableDescriptor: '00281101',
  GreenPaletteColorLookupTableDescriptor: '00281102',
  BluePaletteColorLookupTableDescriptor: '00281103',
  RedPaletteColorLookupTableData: '00281201',
  GreenPaletteColorLookupTableData: '00281202',
  BluePaletteColorLookupTableData: '00281203',
  RetrieveURL: '00081190',
};

/** The values of element *tag* of a DICOM JSON object (an empty list when absent). */
export function values(obj, tag) {
  return obj?.[tag]?.Value ?? [];
}

/** The first value, or undefined. */
export function first(obj, tag) {
  return values(obj, tag)[0];
}

/** The first value as text (a person name: its alphabetic form). */
export function text(obj, tag) {
  const v = first(obj, tag);
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') return v.Alphabetic ?? '';
  return String(v);
}

/** The first value as a number, or *fallback*. */
export function number(obj, tag, fallback = undefined) {
  const v = Number(first(obj, tag));
  return Number.isFinite(v) ? v : fallback;
}

/** Every value as numbers (for DS/IS multi-values). */
export function numbers(obj, tag) {
  return values(obj, tag).map(Number).filter(Number.isFinite);
}

// -- formatting ---------------------------------------------------------------------------

/** "DOE^JANE^^^" -> "DOE, JANE". */
export function personName(pn) {
  const parts = String(pn ?? '').split('^').map((p) => p.trim());
  const [family, given, middle, prefix, suffix] = parts;
  const rest = [prefix, given, middle, suffix].filter(Boolean).join(' ');
  return family && rest ? `${family}, ${rest}` : family || rest || '';
}

/** "20240131" -> "2024-01-31" (other text as it is). */
export function date(da) {
  const s = String(da ?? '');
  return /^\d{8}$/.test(s) ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}` : s;
}

/** "083005.123" -> "08:30". */
export function time(tm) {
  const s = String(tm ?? '').replace(/:/g, '');
  return /^\d{4}/.test(s) ? `${s.slice(0, 2)}:${s.slice(2, 4)}` : s;
}

/** A Date as the DICOM DA "YYYYMMDD" (local time). */
export function toDA(d) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}`;
}

/** Create an element: el('td', {className: 'x'}, 'text', child...). */
export function el(name, props = {}, ...children) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('aria-') || key === 'role' || key === 'for') node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}
