"""Registered peers in the index, so every node and every command sees the same list."""

from __future__ import annotations

import time

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from pacsvault.security.peers import Peer, PeerError, UnknownPeer, peer_from_row
from pacsvault.storage import schema as s


class PeerRepository:
    """Reads peers; writes them inside a caller's transaction (see storage.admin)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, name: str) -> Peer | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.peers).where(s.peers.c.name == name)).mappings().first()
        return peer_from_row(row) if row else None

    def list(self) -> list[Peer]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.peers).order_by(s.peers.c.name)).mappings().all()
        return [peer_from_row(r) for r in rows]

    def by_ae_title(self, ae_title: str) -> Peer | None:
        stmt = select(s.peers).where(s.peers.c.ae_title == ae_title.strip())
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return peer_from_row(row) if row else None

    @staticmethod
    def insert(conn: Connection, peer: Peer) -> None:
        """Add *peer*; raises PeerError when its name or AE title is taken."""
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(s.peers).values(
                        name=peer.name,
                        ae_title=peer.ae_title,
                        host=peer.host,
                        port=peer.port,
                        services=",".join(sorted(x.value for x in peer.services)),
                        tls=peer.tls.value,
                        client_cert=peer.client_cert,
                        user_identity=peer.user_identity.value,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:
            why = f"a peer named '{peer.name}' or with AE title '{peer.ae_title}' exists"
            raise PeerError(why) from None

    @staticmethod
    def delete(conn: Connection, name: str) -> None:
        """Remove the peer *name*; raises PeerError when there is none."""
        if conn.execute(delete(s.peers).where(s.peers.c.name == name)).rowcount == 0:
            raise UnknownPeer(f"no peer named '{name}'")
