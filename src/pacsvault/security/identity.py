"""Who is acting: principals, what they may do, and what they may see.

Every front door (DIMSE, HTTP, a local command) turns whatever the caller proved
into a :class:`Principal`, or gets a :class:`Refusal` with a protocol-neutral
reason; the front door alone turns that reason into its protocol's answer
(A-ASSOCIATE-RJ, DIMSE status, HTTP code). The Archive takes the principal on every
call and records its :class:`Actor` in the audit trail.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from enum import StrEnum

from pacsvault.security.peers import Peer
from pacsvault.security.users import User


@dataclass(frozen=True)
class Actor:
    """The acting party as the audit trail names it: never patient data."""

    kind: str  # "peer", "user", "operator", "unknown", "address", "account"
    name: str
    address: str | None = None  # network source, when there is one
    ae_title: str | None = None

    def describe(self) -> str:
        """Short description for logs."""
        where = f" from {self.address}" if self.address else ""
        aet = f" ({self.ae_title})" if self.ae_title else ""
        return f"{self.kind} {self.name}{aet}{where}"

    # One constructor per origin, so every front door names actors the same way.
    @classmethod
    def of_peer(cls, peer: Peer, address: str, ae_title: str | None = None) -> Actor:
        return cls("peer", peer.name, address, ae_title or peer.ae_title)

    @classmethod
    def of_user(cls, user: User, address: str | None, ae_title: str | None = None) -> Actor:
        return cls("user", user.name, address, ae_title)

    @classmethod
    def unknown(cls, address: str, ae_title: str | None = None) -> Actor:
        return cls("unknown", ae_title or "-", address, ae_title)

    @classmethod
    def operator(cls, name: str | None = None) -> Actor:
        """The operator running a local command (``pacsvault import``, ``serve``...)."""
        if name is None:
            try:
                name = getpass.getuser()
            except Exception:
                name = "unknown"
        return cls("operator", name, "local")


class Permission(StrEnum):
    """An action the policy decides on, whatever the protocol asks for it."""

    ECHO = "echo"  # verification
    STORE = "store"  # C-STORE, STOW-RS, import
    QUERY = "query"  # C-FIND, QIDO-RS
    RETRIEVE = "retrieve"  # C-GET, WADO, the viewer
    MOVE = "move"  # C-MOVE: send to a registered third party
    EXPORT = "export"  # download or de-identified export
    AUDIT = "audit"  # read the audit trail
    ADMIN = "admin"  # peers, users, tokens, shares, lockouts, settings


class Proof(StrEnum):
    """How a principal proved who it is."""

    ADDRESS = "address"  # registered AE title from its registered address
    CERTIFICATE = "certificate"  # a TLS client certificate issued to it
    PASSCODE = "passcode"  # DICOM user identity or web login password
    TOTP = "totp"  # a second factor
    JWT = "jwt"
    TOKEN = "token"
    SESSION = "session"
    LOCAL = "local"  # a command run on this machine by its operator


@dataclass(frozen=True)
class Principal:
    """A registered peer or a user (or the local operator) and how it proved itself.

    ``permissions`` are what it may do; which studies it may see is the policy's
    :meth:`~pacsvault.security.policy.AccessPolicy.scope`.
    """

    actor: Actor
    permissions: frozenset[Permission]
    proofs: frozenset[Proof] = frozenset()
    peer: Peer | None = None
    user: User | None = None

    @property
    def name(self) -> str:
        return f"{self.actor.kind}:{self.actor.name}"


@dataclass(frozen=True)
class Scope:
    """Which studies a principal may see: all, or those matching one of its links.

    A restricted scope admits a study whose ReferringPhysicianName is one of
    ``physicians`` (compared case-insensitively, without trailing empty name
    components) or whose StudyInstanceUID is one of ``studies`` (shared with it).
    """

    unrestricted: bool
    physicians: tuple[str, ...] = field(default=())
    studies: tuple[str, ...] = field(default=())

    @classmethod
    def everything(cls) -> Scope:
        return cls(True)

    @classmethod
    def nothing(cls) -> Scope:
        return cls(False)

    @property
    def empty(self) -> bool:
        return not self.unrestricted and not self.physicians and not self.studies


def physician_key(name: str) -> str:
    """The form under which a referring physician's name is compared: case-folded,
    without padding and trailing empty components (``Smith^John^^`` -> ``smith^john``)."""
    return name.strip().rstrip("^= ").casefold()


class RefusalReason(StrEnum):
    """Why a caller was refused, before any protocol turns it into an answer."""

    UNKNOWN_CALLER = "unknown-caller"  # unregistered, wrong address, or locked out
    WRONG_RECIPIENT = "wrong-recipient"  # called AE title (or host) is not ours
    TRANSPORT = "transport"  # cleartext not allowed, TLS or certificate not as required
    IDENTITY = "identity"  # user identity missing, wrong, disabled or locked
    BUSY = "busy"  # transient: try again later (limits, audit trail unavailable)


@dataclass(frozen=True)
class Refusal:
    """A refusal: a neutral reason and, for logs and the audit trail only, why."""

    reason: RefusalReason
    why: str
