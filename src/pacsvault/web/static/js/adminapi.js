// The admin API from the admin console and audit pages: same-origin JSON requests with
// the session cookie; every change (POST, PUT, DELETE) carries the session's CSRF token
// in X-CSRF-Token, fetched once with the session and refreshed once if another page of
// the same session rotated it. Errors are HttpErrors with the server's reason.
import { HttpError, el, getJson, reason, request, session } from './api.js';

export const CSRF_REFUSED = 'missing or wrong CSRF token';

/** GET *url* as JSON. */
export async function get(url) {
  return (await getJson(url)).body;
}

/** A change: *method* on *url* with *body* as JSON (if any) and the CSRF token. */
export async function send(method, url, body = undefined) {
  const s = await session();
  const attempt = () => request(url, {
    method,
    headers: {
      Accept: 'application/json',
      'X-CSRF-Token': s.csrf ?? '',
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let response = await attempt();
  if (response.status === 403 && (await reason(response.clone())) === CSRF_REFUSED) {
    s.csrf = (await getJson('/api/session')).body.csrf;
    response = await attempt();
  }
  if (!response.ok) throw new HttpError(response.status, await reason(response));
  const type = response.headers.get('content-type') ?? '';
  return type.includes('json') ? response.json() : response;
}

/** A stored time (ISO 8601, UTC) as local "YYYY-MM-DD HH:MM:SS"; "" for none. */
export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A <tr> of cells: strings become text cells; nodes are placed in a cell as they are. */
export function row(...cells) {
  return el('tr', {}, ...cells.map((c) => (c instanceof HTMLTableCellElement ? c
    : el('td', {}, c ?? ''))));
}

/** Replace *tbody*'s rows; an "empty" row naming *nothing* when there are none. */
export function fill(tbody, rows, nothing) {
  const columns = tbody.closest('table').querySelectorAll('thead th').length;
  tbody.replaceChildren(...(rows.length ? rows
    : [el('tr', {}, el('td', { className: 'empty', colSpan: columns }, nothing))]));
}

/** Messages for the page: *status* (polite) and *error* (an alert). */
export class Messages {
  constructor(status, error) {
    this.status = status;
    this.error = error;
  }

  say(text) {
    this.error.textContent = '';
    this.status.textContent = text;
  }

  fail(err) {
    this.status.textContent = '';
    this.error.textContent = err instanceof HttpError || err instanceof Error
      ? `Refused: ${err.message}` : String(err);
  }

  /** Run *task*; say *done* (its result's text when a function) or show the error. */
  async run(task, done = '') {
    try {
      const result = await task();
      const text = typeof done === 'function' ? done(result) : done;
      if (text) this.say(text);
      return result;
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) return undefined; // to the login
      this.fail(err);
      return undefined;
    }
  }
}
