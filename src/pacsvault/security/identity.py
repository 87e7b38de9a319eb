"""Who is acting: the identity every Archive call and audit record carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """The acting party: a registered peer, a local operator, or (later) a user."""

    kind: str  # "peer", "operator"
    name: str  # peer name or operator login
    address: str | None = None  # network source, when there is one
    ae_title: str | None = None

    def describe(self) -> str:
        """Short description for logs: never contains patient data."""
        where = f" from {self.address}" if self.address else ""
        aet = f" ({self.ae_title})" if self.ae_title else ""
        return f"{self.kind} {self.name}{aet}{where}"


def local_operator() -> Actor:
    """The operator running a local command such as ``pacsvault import``."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return Actor(kind="operator", name=user, address="local")
