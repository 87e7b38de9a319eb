"""Users, their physician links and the studies shared with them, in the index."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from pacsvault.security.identity import physician_key
from pacsvault.security.users import Role, UnknownUser, User, UserError, verify_password
from pacsvault.storage import schema as s

# Built once: a user is read on every authenticated request.
_USER = select(s.users).where(s.users.c.name == bindparam("name"))
_LINKS = (
    select(s.user_physicians.c.physician)
    .where(s.user_physicians.c.user_name == bindparam("name"))
    .order_by(s.user_physicians.c.physician_key)
)


def user_named(conn: Connection, name: str) -> User | None:
    """The user called *name* with their physician links, read on *conn*; None if none."""
    row = conn.execute(_USER, {"name": name}).mappings().first()
    return _user(conn, row) if row else None


def _user(conn: Connection, row: Any) -> User:
    links = conn.execute(_LINKS, {"name": row["name"]}).scalars()
    return User(row["name"], Role(row["role"]), bool(row["disabled"]), tuple(links))


class UserRepository:
    """Reads users; writes them inside a caller's transaction (see storage.admin).

    Implements the policy's account and share directories.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, name: str) -> User | None:
        with self.engine.connect() as conn:
            return user_named(conn, name)

    def list(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.users).order_by(s.users.c.name)).mappings().all()
            return [_user(conn, r) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        """The enabled user whose password this is, else None (the same cost either way)."""
        with self.engine.connect() as conn:
            row = conn.execute(_USER, {"name": name}).mappings().first()
            ok = verify_password(row["password_hash"] if row else None, password)
            if not ok or row is None or row["disabled"]:
                return None
            return _user(conn, row)

    def totp_secret(self, name: str) -> str | None:
        """The user's second-factor secret, None when it has none."""
        with self.engine.connect() as conn:
            return conn.scalar(select(s.users.c.totp_secret).where(s.users.c.name == name))

    def studies_shared_with(self, user: str) -> list[str]:
        """Study Instance UIDs shared with *user* that have not expired."""
        now = time.time()
        sh = s.shares
        stmt = (
            select(sh.c.study_instance_uid)
            .where(sh.c.user_name == user, or_(sh.c.expires_at.is_(None), sh.c.expires_at > now))
            .distinct()
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def shares(self) -> list[dict[str, Any]]:
        """Every share in force (id, study, user, expiry, who made it)."""
        now = time.time()
        sh = s.shares
        stmt = select(sh).where(or_(sh.c.expires_at.is_(None), sh.c.expires_at > now))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt.order_by(sh.c.id)).mappings()]

    def get_share(self, share_id: int) -> dict[str, Any] | None:
        """The share *share_id*, in force or not (None if there is none)."""
        stmt = select(s.shares).where(s.shares.c.id == share_id)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return dict(row) if row is not None else None

    # -- writes, inside the caller's transaction ------------------------------------------

    @staticmethod
    def insert(conn: Connection, name: str, role: Role, password_hash: str) -> None:
        now = time.time()
        try:
            with conn.begin_nested():
                conn.execute(insert(s.users).values(
                    name=name, role=role.value, password_hash=password_hash, disabled=0,
                    created_at=now, updated_at=now,
                ))  # fmt: skip
        except IntegrityError:
            raise UserError(f"user '{name}' exists") from None

    @staticmethod
    def update(conn: Connection, name: str, **values: object) -> None:
        done = conn.execute(
            update(s.users).where(s.users.c.name == name).values(**values, updated_at=time.time())
        ).rowcount
        if not done:
            raise UnknownUser(f"no user named '{name}'")

    @staticmethod
    def link(conn: Connection, name: str, physician: str) -> bool:
        """Link *physician* to user *name*; False when it was linked already."""
        key = physician_key(physician)
        if not key:
            raise UserError("a physician name is needed, e.g. 'Last^First'")
        um = s.user_physicians
        exists = conn.scalar(select(um.c.user_name).where(um.c.user_name == name,
                                                           um.c.physician_key == key))  # fmt: skip
        if exists is not None:
            return False
        row = {"user_name": name, "physician_key": key, "physician": physician.strip(),
               "created_at": time.time()}  # fmt: skip
        conn.execute(insert(um).values(**row))
        return True

    @staticmethod
    def unlink(conn: Connection, name: str, physician: str) -> bool:
        um = s.user_physicians
        stmt = delete(um).where(
            and_(um.c.user_name == name, um.c.physician_key == physician_key(physician))
        )
        return bool(conn.execute(stmt).rowcount)

    @staticmethod
    def share(
        conn: Connection, study_uid: str, user: str, expires_at: float | None, by: str
    ) -> int:
        result = conn.execute(insert(s.shares).values(
            study_instance_uid=study_uid, user_name=user, created_at=time.time(),
            expires_at=expires_at, created_by=by,
        ))  # fmt: skip
        return int(result.inserted_primary_key[0])

    @staticmethod
    def unshare(conn: Connection, share_id: int) -> bool:
        return bool(conn.execute(delete(s.shares).where(s.shares.c.id == share_id)).rowcount)
