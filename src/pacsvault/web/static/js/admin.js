// The admin console: /admin (overview: status, warnings, the doctor's checks) and
// /admin/users, /peers, /tokens, /shares, /lockouts. Everything goes through the admin
// API with the session (changes with its CSRF token: adminapi.js), which checks the
// admin permission and audits every change. Secrets the server generates (passwords,
// tokens, second-factor secrets, certificate keys) are shown once, in a dialog, and
// forgotten when it closes.
import { el } from './api.js';
import { Messages, fill, get, row, send, when } from './adminapi.js';
import { ready } from './shell.js';

const SECTIONS = ['overview', 'users', 'peers', 'tokens', 'shares', 'lockouts'];
const ROLES = ['radiologist', 'referrer', 'uploader', 'auditor', 'admin'];
const DAY = 86400;

const section = (() => {
  const name = location.pathname.split('/')[2] || 'overview';
  return SECTIONS.includes(name) ? name : 'overview';
})();
const messages = new Messages(document.getElementById('status'), document.getElementById('error'));
const $ = (id) => document.getElementById(id);
const path = (value) => encodeURIComponent(value);

// -- shared bits ---------------------------------------------------------------------------

/** The focus key of the button whose action runs now, if it had the keyboard focus. */
let focusAfter = '';

/** A button that runs *action* (after *question*, if any, is confirmed). */
function button(text, label, action, { question = '', key = '' } = {}) {
  const b = el('button', { type: 'button', 'aria-label': label }, text);
  if (key) b.dataset.focusKey = key;
  b.addEventListener('click', async () => {
    if (question && !window.confirm(question)) return;
    focusAfter = document.activeElement === b ? key : '';
    b.disabled = true;
    try {
      await action();
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

/** Run *load*, keeping keyboard focus on the button of the same key when there is one. */
async function reload(load) {
  const key = focusAfter;
  focusAfter = '';
  await load();
  if (!key) return;
  const again = document.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
  if (again && !again.disabled) again.focus();
  else $(`${section}-title`)?.focus();
}

/** The shown-once dialog: *fields* are [label, value, {multiline, file}]. */
const dialog = $('secret');
let objectUrls = [];
function showOnce(title, fields, note = '') {
  $('secret-title').textContent = title;
  $('secret-note').textContent = note
    || 'Shown once: pacsvault keeps no readable copy. Copy it now, then close this dialog.';
  const body = fields.map(([label, value, opts = {}], n) => {
    const id = `secret-${n}`;
    const input = opts.multiline
      ? el('textarea', { id, readOnly: true, rows: 6, value, spellcheck: false })
      : el('input', { id, readOnly: true, value, spellcheck: false });
    const copy = el('button', { type: 'button', 'aria-label': `Copy ${label}` }, 'Copy');
    copy.addEventListener('click', async () => {
      input.select();
      try {
        await navigator.clipboard.writeText(value);
        copy.textContent = 'Copied';
      } catch {
        copy.textContent = 'Selected: press Ctrl+C';
      }
    });
    const extras = [copy];
    if (opts.file) {
      const url = URL.createObjectURL(new Blob([value], { type: 'application/x-pem-file' }));
      objectUrls.push(url);
      extras.push(el('a', { className: 'button', href: url, download: opts.file }, `Save ${opts.file}`));
    }
    return el('div', { className: 'secretfield' },
      el('label', { for: id }, label), el('div', { className: 'secretrow' }, input, ...extras));
  });
  $('secret-fields').replaceChildren(...body);
  dialog.showModal();
  dialog.querySelector('input, textarea')?.focus();
}
function forget() {
  $('secret-fields').replaceChildren();
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
}
$('secret-close').addEventListener('click', () => {
  forget();
  dialog.close();
});
dialog.addEventListener('close', forget);

/** Seconds from a "days" field, or null when it is empty. */
function lifetime(value) {
  const days = Number(value);
  return value && days > 0 ? Math.round(days * DAY) : null;
}

/** Fill *select* with the user names of *users* (keeping its choice when still there). */
function userOptions(select, users) {
  const chosen = select.value;
  select.replaceChildren(...users.map((u) => el('option', { value: u.name }, u.name)));
  if (users.some((u) => u.name === chosen)) select.value = chosen;
}

// -- overview ------------------------------------------------------------------------------

function bytes(n) {
  const units = ['bytes', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit ? `${value.toFixed(1)} ${units[unit]}` : `${value} bytes`;
}

async function loadOverview() {
  const [status, doctor] = await Promise.all([get('/api/status'), get('/api/doctor')]);
  const c = status.counts;
  const facts = [
    ['Version', status.version], ['AE title', status.ae_title],
    ['Patients', c.patients], ['Studies', c.studies], ['Series', c.series],
    ['Instances', c.instances], ['Stored', bytes(c.bytes)],
    ['Patient identity conflicts', status.identity_conflicts],
    ['TLS certificate', status.tls_certificate],
    ['Peers', status.peers], ['Users', status.users], ['Lockouts in force', status.lockouts],
  ];
  $('summary').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));
  const names = { dicom: 'DICOM (cleartext)', 'dicom-tls': 'DICOM-TLS', https: 'HTTPS',
    'http-redirect': 'HTTP redirect' };
  fill($('listeners').tBodies[0], status.listeners.map((x) => row(
    names[x.kind] ?? x.kind, x.address, String(x.port), x.enabled ? 'enabled' : 'disabled',
  )), 'No listeners');

  const failing = doctor.checks.filter((x) => x.result === 'FAIL');
  const warnings = failing.map((x) => el('li', { className: 'bad' },
    `${x.name}: ${x.detail} (${x.severity})`));
  if (status.identity_conflicts) {
    warnings.push(el('li', { className: 'bad' }, `${status.identity_conflicts} studies whose `
      + 'patient name or birth date differs from that patient\'s first study'));
  }
  if (status.lockouts) {
    warnings.push(el('li', {}, el('a', { href: '/admin/lockouts' },
      `${status.lockouts} lockout(s) in force`)));
  }
  $('warnings').replaceChildren(...(warnings.length ? warnings
    : [el('li', { className: 'ok' }, 'Nothing is weakened: every check passes.')]));
  $('doctor-summary').textContent = `${doctor.passed} passed, ${doctor.failed} failed`;
  fill($('doctor').tBodies[0], doctor.checks.map((x) => {
    const pass = x.result === 'PASS';
    const tr = row(el('td', {}, el('span', { className: `result ${pass ? 'pass' : 'fail'}` }, x.result)),
      x.name, x.detail, x.severity ?? '');
    tr.className = pass ? 'pass' : 'fail';
    return tr;
  }), 'No checks');
  $('doctor-note').textContent = doctor.note;
}

// -- users ---------------------------------------------------------------------------------

async function loadUsers() {
  const users = await get('/api/users');
  userOptions($('user-link').elements.user, users.filter((u) => u.role === 'referrer'));
  fill($('user-table').tBodies[0], users.map(userRow), 'No users');
  return users;
}

/** The logged-in user's name: changing one's own account asks more plainly. */
let me = '';
const yours = (name) => (name === me ? 'This is your own account. ' : '');

function userRow(u) {
  const name = u.name;
  const role = el('select', { 'aria-label': `Role of ${name}` },
    ...ROLES.map((r) => el('option', { value: r, selected: r === u.role }, r)));
  const setRole = button('Set role', `Set the role of ${name}`, () => {
    if (name === me && role.value !== 'admin'
      && !window.confirm(`${yours(name)}Without the admin role you leave the admin console. Go on?`)) {
      return undefined;
    }
    return messages.run(async () => {
      await send('PUT', `/api/users/${path(name)}/role`, { role: role.value });
      await reload(loadUsers);
    }, `${name} is now ${role.value}.`);
  }, { key: `role:${name}` });
  const physicians = el('ul', { className: 'physicians' }, ...u.physicians.map((p) => el('li', {},
    el('span', {}, p),
    button('Unlink', `Unlink ${name} from ${p}`, () => messages.run(async () => {
      await send('DELETE', `/api/users/${path(name)}/physicians/${path(p)}`);
      await reload(loadUsers);
    }, `${name} is no longer linked to ${p}.`), { key: `unlink:${name}:${p}` }))));
  const actions = el('td', { className: 'actions' },
    u.disabled
      ? button('Enable', `Enable ${name}`, () => toggle(name, false), { key: `state:${name}` })
      : button('Disable', `Disable ${name}`, () => toggle(name, true),
        { key: `state:${name}`, question: `${yours(name)}Disable ${name}? Its sessions end and its tokens stop working.` }),
    button('Reset password', `Reset the password of ${name}`, () => resetPassword(name),
      { key: `pw:${name}`, question: `${yours(name)}Give ${name} a new password? Its sessions end.` }),
    u.second_factor
      ? button('New second factor', `New second factor for ${name}`, () => secondFactor(name, true),
        { key: `2fa-new:${name}`, question: `Replace the second factor of ${name}? The old one stops working.` })
      : button('Add second factor', `Add a second factor for ${name}`, () => secondFactor(name, true),
        { key: `2fa:${name}` }),
    u.second_factor
      ? button('Remove second factor', `Remove the second factor of ${name}`,
        () => secondFactor(name, false),
        { key: `2fa:${name}`, question: `Remove the second factor of ${name}? It then logs in with its password alone.` })
      : null);
  return row(el('td', { className: 'mono' }, name), el('td', { className: 'actions' }, role, setRole),
    u.disabled ? 'disabled' : 'enabled', u.second_factor ? 'on' : 'off',
    el('td', {}, physicians), actions);
}

function toggle(name, disable) {
  return messages.run(async () => {
    await send('POST', `/api/users/${path(name)}/${disable ? 'disable' : 'enable'}`);
    await reload(loadUsers);
  }, `${name} is ${disable ? 'disabled' : 'enabled'}.`);
}

function resetPassword(name) {
  return messages.run(async () => {
    const r = await send('POST', `/api/users/${path(name)}/password`);
    showOnce(`New password for ${name}`, [['Password', r.password]]);
  }, `${name} has a new password.`);
}

function secondFactor(name, enabled) {
  return messages.run(async () => {
    const r = await send('PUT', `/api/users/${path(name)}/second-factor`, { enabled });
    await reload(loadUsers);
    if (r.enabled) {
      showOnce(`Second factor for ${name}`, [
        ['TOTP secret (base32)', r.secret], ['otpauth URI (for an authenticator app)', r.otpauth_uri],
      ], 'Shown once: enter the secret or the URI in the user\'s authenticator app now.');
    }
  }, enabled ? `${name} has a new second factor.` : `${name} has no second factor now.`);
}

$('user-add').addEventListener('submit', (e) => {
  e.preventDefault();
  const form = e.target;
  const body = { name: form.elements.name.value.trim(), role: form.elements.role.value };
  messages.run(async () => {
    const created = await send('POST', '/api/users', body);
    form.reset();
    await loadUsers();
    showOnce(`Password for ${created.name}`, [['User name', created.name], ['Password', created.password]]);
    return created;
  }, (c) => `${c.name} added as ${c.role}.`);
});

$('user-link').addEventListener('submit', (e) => {
  e.preventDefault();
  const form = e.target;
  const name = form.elements.user.value;
  const physician = form.elements.physician.value.trim();
  messages.run(async () => {
    const r = await send('POST', `/api/users/${path(name)}/physicians`, { physician });
    form.elements.physician.value = '';
    await loadUsers();
    return r;
  }, (r) => (r.changed ? `${name} now reads the studies of ${physician}.`
    : `${name} was linked to ${physician} already.`));
});

// -- peers ---------------------------------------------------------------------------------

async function loadPeers() {
  const peers = await get('/api/peers');
  fill($('peer-table').tBodies[0], peers.map((p) => row(
    el('td', { className: 'mono' }, p.name), el('td', { className: 'mono' }, p.ae_title),
    el('td', { className: 'mono' }, p.host), p.port === null ? '' : String(p.port),
    p.services.join(', '), p.tls, el('td', { className: 'mono' }, p.client_cert), p.user_identity,
    el('td', { className: 'actions' },
      button('Issue certificate', `Issue a client certificate for ${p.name}`, () => certificate(p.name),
        { key: `cert:${p.name}`, question: `Issue a new client certificate for ${p.name} from the local CA?` }),
      button('Remove', `Remove peer ${p.name}`, () => messages.run(async () => {
        await send('DELETE', `/api/peers/${path(p.name)}`);
        await reload(loadPeers);
      }, `Peer ${p.name} removed.`), { key: `rm:${p.name}`, question: `Remove peer ${p.name}? It can no longer associate.` })),
  )), 'No peers registered');
}

function certificate(name) {
  return messages.run(async () => {
    const c = await send('POST', `/api/peers/${path(name)}/certificate`);
    showOnce(`Client certificate for ${name}`, [
      ['Private key (PEM)', c.key_pem, { multiline: true, file: `${name}.key` }],
      ['Certificate (PEM)', c.cert_pem, { multiline: true, file: `${name}.crt` }],
      ['CA certificate (PEM)', c.ca_pem, { multiline: true, file: 'ca.crt' }],
    ], 'Shown once: the private key is kept nowhere. Save the three files for the peer now.');
  }, `Certificate issued for ${name}.`);
}

$('peer-add').addEventListener('submit', (e) => {
  e.preventDefault();
  const f = e.target.elements;
  const services = [...e.target.querySelectorAll('input[name=services]:checked')].map((x) => x.value);
  if (!services.length) {
    messages.fail('Choose at least one service.');
    e.target.querySelector('input[name=services]').focus();
    return;
  }
  const body = {
    name: f.name.value.trim(), ae_title: f.ae_title.value.trim(), host: f.host.value.trim(),
    services, tls: f.tls.value, client_cert: f.client_cert.value.trim() || 'ca',
    user_identity: f.user_identity.value,
  };
  if (f.port.value) body.port = Number(f.port.value);
  messages.run(async () => {
    const peer = await send('POST', '/api/peers', body);
    e.target.reset();
    await loadPeers();
    return peer;
  }, (p) => `Peer ${p.name} (${p.ae_title}) added.`);
});

// -- tokens --------------------------------------------------------------------------------

async function loadTokens() {
  const [tokens, users] = await Promise.all([get('/api/tokens'), get('/api/users')]);
  userOptions($('token-add').elements.user, users);
  fill($('token-table').tBodies[0], tokens.map((t) => row(
    el('td', { className: 'mono' }, t.id), t.user, t.scope, t.state, when(t.created_at),
    when(t.expires_at) || 'never', when(t.last_used_at) || 'never',
    el('td', { className: 'actions' }, t.state === 'active'
      ? button('Revoke', `Revoke token ${t.id}`, () => messages.run(async () => {
        await send('DELETE', `/api/tokens/${path(t.id)}`);
        await reload(loadTokens);
      }, `Token ${t.id} revoked.`), { key: `revoke:${t.id}`, question: `Revoke token ${t.id} of ${t.user}?` })
      : null),
  )), 'No tokens');
}

$('token-add').addEventListener('submit', (e) => {
  e.preventDefault();
  const f = e.target.elements;
  const body = { user: f.user.value, scope: f.scope.value };
  const expires = lifetime(f.days.value);
  if (expires) body.expires_in = expires;
  messages.run(async () => {
    const t = await send('POST', '/api/tokens', body);
    f.days.value = '';
    await loadTokens();
    showOnce(`Token for ${t.user}`, [['Token', t.token], ['Id', t.id]],
      'Shown once: send it as "Authorization: Bearer <token>". pacsvault keeps only its hash.');
    return t;
  }, (t) => `Token ${t.id} created for ${t.user} (${t.scope}).`);
});

// -- shares --------------------------------------------------------------------------------

async function loadShares() {
  const [shares, users] = await Promise.all([get('/api/shares'), get('/api/users')]);
  userOptions($('share-add').elements.user, users.filter((u) => u.role === 'referrer'));
  fill($('share-table').tBodies[0], shares.map((s) => row(
    String(s.id), el('td', { className: 'mono' }, s.study_uid), s.user, when(s.created_at),
    when(s.expires_at) || 'until revoked', s.created_by ?? '',
    el('td', { className: 'actions' }, button('Revoke', `Revoke share ${s.id}`,
      () => messages.run(async () => {
        await send('DELETE', `/api/shares/${s.id}`);
        await reload(loadShares);
      }, `Share ${s.id} revoked.`), { key: `revoke:${s.id}`, question: `Stop sharing this study with ${s.user}?` })),
  )), 'No studies shared');
}

$('share-add').addEventListener('submit', (e) => {
  e.preventDefault();
  const f = e.target.elements;
  const body = { study_uid: f.study_uid.value.trim(), user: f.user.value };
  const expires = lifetime(f.days.value);
  if (expires) body.expires_in = expires;
  messages.run(async () => {
    const s = await send('POST', '/api/shares', body);
    f.study_uid.value = '';
    f.days.value = '';
    await loadShares();
    return s;
  }, (s) => `Study shared with ${s.user} (share ${s.id}).`);
});

// -- lockouts ------------------------------------------------------------------------------

async function loadLockouts() {
  const entries = await get('/api/lockouts');
  $('lockout-clear-all').disabled = !entries.length;
  fill($('lockout-table').tBodies[0], entries.map((x) => row(
    el('td', { className: 'mono' }, x.key), when(x.until), x.reason,
    el('td', { className: 'actions' }, button('Clear', `Clear the lockout of ${x.key}`,
      () => messages.run(async () => {
        await send('DELETE', `/api/lockouts/${path(x.key)}`);
        await reload(loadLockouts);
      }, `${x.key} may try again.`), { key: `clear:${x.key}` })),
  )), 'No lockouts in force');
}

$('lockout-clear-all').addEventListener('click', () => {
  if (!window.confirm('Lift every lockout and forget every failure count?')) return;
  messages.run(async () => {
    const r = await send('DELETE', '/api/lockouts');
    await loadLockouts();
    $('lockouts-title').focus();
    return r;
  }, (r) => `${r.cleared} lockout(s) cleared.`);
});

// -- start ---------------------------------------------------------------------------------

const LOADERS = {
  overview: loadOverview, users: loadUsers, peers: loadPeers, tokens: loadTokens,
  shares: loadShares, lockouts: loadLockouts,
};

for (const link of document.querySelectorAll('[data-section]')) {
  if (link.dataset.section === section) link.setAttribute('aria-current', 'page');
}
const shown = $(section);
shown.hidden = false;
$(`${section}-title`).tabIndex = -1;
document.title = `pacsvault: admin: ${$(`${section}-title`).textContent.toLowerCase()}`;

ready.then(async (s) => {
  me = s.user;
  messages.say('Loading...');
  await messages.run(LOADERS[section]);
  if (!messages.error.textContent) messages.status.textContent = '';
  document.body.dataset.loaded = section;
});
window.pvAdmin = { section, reload: () => messages.run(LOADERS[section]) };
