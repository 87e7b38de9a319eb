"""Browser sessions and API tokens in the index, so every node sees the same ones."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, insert, select, update

from pacsvault.security.tokens import SessionRecord, TokenRecord, TokenScope
from pacsvault.security.users import User
from pacsvault.storage import schema as s
from pacsvault.storage.users import user_named

# Built once: a session or token is looked up on every authenticated request.
_SESSION = select(s.web_sessions).where(s.web_sessions.c.id_hash == bindparam("id_hash"))
_TOKEN = select(s.api_tokens).where(s.api_tokens.c.id == bindparam("id"))


class WebSessionRepository:
    """Reads sessions and tokens; writes them inside a caller's transaction where a change
    must be audited with them (see storage.admin), directly where it is bookkeeping."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- sessions ------------------------------------------------------------------------

    def session(self, id_hash: str) -> SessionRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(_SESSION, {"id_hash": id_hash}).mappings().first()
        return _session(row) if row else None

    def session_holder(self, id_hash: str) -> tuple[SessionRecord, User | None] | None:
        """A session and its user (None when the account is gone), read on one connection:
        every request of a browser asks for both."""
        with self.engine.connect() as conn:
            row = conn.execute(_SESSION, {"id_hash": id_hash}).mappings().first()
            return (_session(row), user_named(conn, row["user_name"])) if row else None

    def create_session(
        self, id_hash: str, user: str, csrf_hash: str, address: str | None, expires_at: float
    ) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(delete(s.web_sessions).where(s.web_sessions.c.expires_at < now))
            conn.execute(insert(s.web_sessions).values(
                id_hash=id_hash, user_name=user, csrf_hash=csrf_hash, address=address,
                created_at=now, last_seen=now, expires_at=expires_at,
            ))  # fmt: skip

    def touch_session(self, id_hash: str, now: float) -> None:
        ws = s.web_sessions
        with self.engine.begin() as conn:
            conn.execute(update(ws).where(ws.c.id_hash == id_hash).values(last_seen=now))

    def set_csrf(self, id_hash: str, csrf_hash: str) -> bool:
        ws = s.web_sessions
        stmt = update(ws).where(ws.c.id_hash == id_hash).values(csrf_hash=csrf_hash)
        with self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def end_session(self, id_hash: str) -> bool:
        ws = s.web_sessions
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(ws).where(ws.c.id_hash == id_hash)).rowcount)

    def end_sessions_of(self, conn: Connection, user: str) -> int:
        """End every session of *user* (a disabled account, a new password)."""
        ws = s.web_sessions
        return int(conn.execute(delete(ws).where(ws.c.user_name == user)).rowcount)

    # -- tokens --------------------------------------------------------------------------

    def token_holder(self, token_id: str) -> tuple[TokenRecord, User | None] | None:
        """A token and its user (None when the account is gone), read on one connection:
        every request of a program asks for both."""
        with self.engine.connect() as conn:
            row = conn.execute(_TOKEN, {"id": token_id}).mappings().first()
            return (_token(row), user_named(conn, row["user_name"])) if row else None

    def tokens(self, user: str | None = None) -> list[TokenRecord]:
        t = s.api_tokens
        stmt = select(t).order_by(t.c.created_at)
        if user is not None:
            stmt = stmt.where(t.c.user_name == user)
        with self.engine.connect() as conn:
            return [_token(r) for r in conn.execute(stmt).mappings()]

    def token_used(self, token_id: str, now: float) -> None:
        t = s.api_tokens
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == token_id).values(last_used_at=now))

    @staticmethod
    def insert_token(
        conn: Connection,
        token_id: str,
        user: str,
        secret_hash: str,
        scope: TokenScope,
        expires_at: float | None,
        by: str,
    ) -> None:
        conn.execute(insert(s.api_tokens).values(
            id=token_id, user_name=user, secret_hash=secret_hash, scope=scope.value,
            created_at=time.time(), expires_at=expires_at, created_by=by,
        ))  # fmt: skip

    @staticmethod
    def revoke_token(conn: Connection, token_id: str) -> bool:
        t = s.api_tokens
        stmt = (
            update(t)
            .where(t.c.id == token_id, t.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
        return bool(conn.execute(stmt).rowcount)


def _session(row: Any) -> SessionRecord:
    return SessionRecord(row["user_name"], row["csrf_hash"], row["created_at"],
                         row["last_seen"], row["expires_at"])  # fmt: skip


def _token(row: object) -> TokenRecord:
    r = dict(row)  # type: ignore[call-overload]
    return TokenRecord(
        r["id"], r["user_name"], r["secret_hash"], TokenScope(r["scope"]), r["created_at"],
        r["expires_at"], r["revoked_at"], r["last_used_at"],
    )  # fmt: skip
