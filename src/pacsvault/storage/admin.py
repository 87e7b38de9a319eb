"""Site administration: peers, users, physician links, shares and lockouts.

Each change is a service call that takes the acting principal, asks the policy for
the ``admin`` permission, and writes the change and its audit record in one
transaction, so a change never lacks its record. The command line and the admin API
call the same functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from pacsvault.dicom.uids import require_uid
from pacsvault.security import totp
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.identity import Permission, Principal
from pacsvault.security.peers import Peer, UnknownPeer
from pacsvault.security.policy import AccessPolicy, NotPermitted
from pacsvault.security.tls import LocalCA
from pacsvault.security.tokens import NewToken, TokenScope, digest, new_token
from pacsvault.security.users import (
    UnknownUser,
    User,
    UserError,
    generate_password,
    hash_password,
    parse_role,
    validate_user_name,
)
from pacsvault.storage.audit import AuditTrail
from pacsvault.storage.lockout import Lockout
from pacsvault.storage.peers import PeerRepository
from pacsvault.storage.users import UserRepository
from pacsvault.storage.web_sessions import WebSessionRepository

log = logging.getLogger("pacsvault.admin")


Submit = Callable[[Callable[[Connection], Any]], Any]


class Administration:
    """The changes an administrator makes, each audited in its own transaction."""

    def __init__(
        self,
        submit: Submit,
        audit: AuditTrail,
        policy: AccessPolicy,
        peers: PeerRepository,
        users: UserRepository,
        ca: LocalCA,
        web: WebSessionRepository,
    ) -> None:
        self._submit = submit
        self.audit = audit
        self.policy = policy
        self.peers = peers
        self.users = users
        self.ca = ca
        self.web = web

    def _change(
        self,
        by: Principal,
        action: Action,
        detail: str,
        change: Callable[[Connection], Any],
    ) -> Any:
        """Run *change* and append its audit record in one transaction; return its result."""
        if not self.policy.require(by, Permission.ADMIN, action):
            raise NotPermitted(f"{by.name} may not change the site's administration")

        def op(conn: Connection) -> Any:
            result = change(conn)
            self.audit.insert(conn, self.audit.row(action, Outcome.SUCCESS, by.actor,
                                                   detail=detail))  # fmt: skip
            return result

        return self._submit(op)

    # -- peers ----------------------------------------------------------------------------

    def add_peer(self, by: Principal, peer: Peer) -> Peer:
        detail = (
            f"add {peer.name} aet={peer.ae_title} host={peer.host} "
            f"allow={','.join(sorted(s.value for s in peer.services))} tls={peer.tls.value} "
            f"client-cert={peer.client_cert} user-identity={peer.user_identity.value}"
        )
        self._change(by, Action.PEER_CHANGE, detail, lambda c: self.peers.insert(c, peer))
        return peer

    def remove_peer(self, by: Principal, name: str) -> None:
        self._change(by, Action.PEER_CHANGE, f"remove {name}",
                     lambda c: self.peers.delete(c, name))  # fmt: skip

    def issue_peer_certificate(self, by: Principal, name: str, out: Path) -> list[Path]:
        """A client certificate from the local CA for peer *name*; the files written."""
        if self.peers.get(name) is None:
            raise UnknownPeer(f"no peer named '{name}'")
        paths: list[Path] = []

        def issue(_conn: Connection) -> None:
            paths.extend(self.ca.issue_peer(name, out))

        self._change(by, Action.PEER_CHANGE, f"certificate for {name}", issue)
        return paths

    # -- users ----------------------------------------------------------------------------

    def add_user(self, by: Principal, name: str, role: str) -> str:
        """Create a user with a generated password; returns the password (shown once)."""
        validate_user_name(name)
        role_value = parse_role(role)
        password = generate_password()
        hashed = hash_password(password)
        self._change(by, Action.USER_CHANGE, f"add {name} role={role_value.value}",
                     lambda c: self.users.insert(c, name, role_value, hashed))  # fmt: skip
        return password

    def set_user_disabled(self, by: Principal, name: str, disabled: bool) -> None:
        """Disable (ending its sessions) or enable a user."""
        verb = "disable" if disabled else "enable"

        def change(c: Connection) -> None:
            self.users.update(c, name, disabled=int(disabled))
            if disabled:
                self.web.end_sessions_of(c, name)

        self._change(by, Action.USER_CHANGE, f"{verb} {name}", change)

    def reset_password(self, by: Principal, name: str) -> str:
        """Replace the user's password with a generated one (ending its sessions); returns
        it (shown once)."""
        password = generate_password()
        hashed = hash_password(password)

        def change(c: Connection) -> None:
            self.users.update(c, name, password_hash=hashed)
            self.web.end_sessions_of(c, name)

        self._change(by, Action.USER_CHANGE, f"new password for {name}", change)
        return password

    def set_second_factor(self, by: Principal, name: str, enabled: bool) -> str | None:
        """Give *name* a new TOTP secret (returned, shown once) or remove its second factor."""
        secret = totp.new_secret() if enabled else None
        what = "new second factor for" if enabled else "second factor removed for"
        self._change(by, Action.USER_CHANGE, f"{what} {name}",
                     lambda c: self.users.update(c, name, totp_secret=secret))  # fmt: skip
        return secret

    # -- tokens ---------------------------------------------------------------------------

    def create_token(
        self, by: Principal, user: str, scope: str, expires_at: float | None
    ) -> NewToken:
        """A new API token for *user* (its text is returned once; only a hash is kept)."""
        self._user(user)
        try:
            scope_value = TokenScope(scope)
        except ValueError:
            raise UserError(f"a token scope is one of {', '.join(TokenScope)}") from None
        new = new_token()
        until = f" until {expires_at:.0f}" if expires_at else ""
        self._change(
            by, Action.USER_CHANGE, f"token {new.id} for {user} scope={scope_value.value}{until}",
            lambda c: self.web.insert_token(c, new.id, user, digest(new.secret), scope_value,
                                            expires_at, by.name),
        )  # fmt: skip
        return new

    def revoke_token(self, by: Principal, token_id: str) -> bool:
        return bool(self._change(by, Action.USER_CHANGE, f"revoke token {token_id}",
                                 lambda c: self.web.revoke_token(c, token_id)))  # fmt: skip

    def set_role(self, by: Principal, name: str, role: str) -> None:
        role_value = parse_role(role)
        self._change(by, Action.USER_CHANGE, f"role of {name}: {role_value.value}",
                     lambda c: self.users.update(c, name, role=role_value.value))  # fmt: skip

    def link_physician(self, by: Principal, name: str, physician: str) -> bool:
        """Let referrer *name* read the studies of *physician* (``Last^First``)."""
        user = self._user(name)
        # The name itself is personal data of a physician, not of a patient: it is kept.
        return bool(self._change(by, Action.USER_CHANGE, f"link {user.name} to a physician",
                                 lambda c: self.users.link(c, name, physician)))  # fmt: skip

    def unlink_physician(self, by: Principal, name: str, physician: str) -> bool:
        self._user(name)
        return bool(self._change(by, Action.USER_CHANGE, f"unlink {name} from a physician",
                                 lambda c: self.users.unlink(c, name, physician)))  # fmt: skip

    def share_study(
        self, by: Principal, study_uid: str, name: str, expires_at: float | None
    ) -> int:
        """Share one study with user *name* until *expires_at* (None: until revoked)."""
        study_uid = require_uid(study_uid.strip(), "Study Instance UID")
        self._user(name)
        until = f" until {expires_at:.0f}" if expires_at else ""
        return int(self._change(
            by, Action.USER_CHANGE, f"share a study with {name}{until}",
            lambda c: self.users.share(c, study_uid, name, expires_at, by.name),
        ))  # fmt: skip

    def revoke_share(self, by: Principal, share_id: int) -> bool:
        return bool(self._change(by, Action.USER_CHANGE, f"revoke share {share_id}",
                                 lambda c: self.users.unshare(c, share_id)))  # fmt: skip

    def _user(self, name: str) -> User:
        user = self.users.get(name)
        if user is None:
            raise UnknownUser(f"no user named '{name}'")
        return user

    # -- lockouts -------------------------------------------------------------------------

    def clear_lockout(self, by: Principal, key: str | None) -> int:
        """Lift the lockout of *key* (``address:IP``, ``account:NAME``, ``peer:NAME``) or all."""
        return int(self._change(by, Action.LOCKOUT, f"cleared {key or 'all'}",
                                lambda c: Lockout.clear(c, key)))  # fmt: skip
