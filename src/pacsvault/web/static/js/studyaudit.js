// The study page's "Who accessed" link: the audit search by this study's UID, for roles
// that may read the audit trail (shell.js shows it only to them; the audit page and
// the API check again).
const link = document.getElementById('whoaccessed');
const uid = decodeURIComponent(location.pathname.split('/')[2] || '');
if (link && uid) link.href = `/audit?study=${encodeURIComponent(uid)}`;
