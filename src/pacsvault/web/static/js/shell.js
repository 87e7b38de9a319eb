// What every page behind the login shares: the top bar (user, role, the links the role
// may use, log out). Admin and Audit appear only for roles that have those permissions.
import { logout, session } from './api.js';

export const ready = session().then((s) => {
  const user = document.getElementById('user');
  if (user) user.textContent = `${s.user} (${s.role ?? 'token'})`;
  for (const link of document.querySelectorAll('[data-permission]')) {
    link.hidden = !s.permissions.includes(link.dataset.permission);
  }
  document.getElementById('logout')?.addEventListener('click', () => logout());
  return s;
});
