"""The AccessPolicy, in process and table-driven: every branch of every decision.

The policy reads peers, users, shares and lockout counters through small protocols;
here they are plain in-memory tables, so each row of a table below is one decision
with a known answer. The front doors' own tests (DCMTK, pynetdicom) show the same
decisions on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pacsvault.config import SecuritySettings
from pacsvault.security.audit import Action, AuditUnavailable, Outcome
from pacsvault.security.authn import IdentityVerifier
from pacsvault.security.identity import (
    Actor,
    Permission,
    Principal,
    Proof,
    Refusal,
    RefusalReason,
    Scope,
    physician_key,
)
from pacsvault.security.peers import Peer, Service, TlsMode, new_peer, parse_services
from pacsvault.security.policy import (
    ROLE_PERMISSIONS,
    AccessPolicy,
    AssociationRequest,
    IdentityClaim,
    account_key,
    address_key,
    peer_key,
)
from pacsvault.security.tls import LocalCA, TlsInfo, fingerprint
from pacsvault.security.users import Role, User

AET = "PACSVAULT"


@dataclass
class Fakes:
    """In-memory peers, users, shares, lockout counters and audit sink."""

    peers: dict[str, Peer] = field(default_factory=dict)
    users: dict[str, tuple[User, str]] = field(default_factory=dict)
    shared: dict[str, list[str]] = field(default_factory=dict)
    locks: set[str] = field(default_factory=set)
    failures: list[tuple[str, ...]] = field(default_factory=list)
    records: list[tuple[Action, Outcome, str]] = field(default_factory=list)
    audit_down: bool = False

    def by_ae_title(self, ae_title: str) -> Peer | None:
        return next((p for p in self.peers.values() if p.ae_title == ae_title), None)

    def get(self, name: str) -> User | None:
        return self.users[name][0] if name in self.users else None

    def authenticate(self, name: str, password: str) -> User | None:
        user, secret = self.users.get(name, (None, None))
        return user if user is not None and secret == password and not user.disabled else None

    def studies_shared_with(self, user: str) -> list[str]:
        return self.shared.get(user, [])

    def locked(self, *keys: str) -> bool:
        return any(k in self.locks for k in keys)

    def failure(self, *keys: str, reason: str) -> list[str]:
        self.failures.append(keys)
        return []

    def record(self, action, outcome, actor, *, detail=None, best_effort=False, **_):  # type: ignore[no-untyped-def]
        if self.audit_down and not best_effort:
            raise AuditUnavailable("audit trail unavailable (test)")
        self.records.append((action, outcome, detail or ""))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """DER client certificates: 'ws' and 'other' from the site CA, 'rogue' from another."""
    out: dict[str, bytes] = {}
    site = tmp_path_factory.mktemp("ca")
    ca = LocalCA(site)
    ca.create(AET)
    for name in ("ws", "other"):
        out[name] = _der(ca.issue_peer(name, site / name)[1])
    rogue = LocalCA(tmp_path_factory.mktemp("rogue"))
    rogue.create("ROGUE")
    out["rogue-ws"] = _der(rogue.issue_peer("ws", tmp_path_factory.mktemp("rogue-ws"))[1])
    return out


def _der(pem: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(Encoding.DER)


JWT_KEY = b"j" * 32


@pytest.fixture
def world(tmp_path: Path, certs: dict[str, bytes]) -> tuple[AccessPolicy, Fakes]:
    fakes = Fakes()
    for peer in (
        new_peer("ct", "CT", "10.0.0.5", None, parse_services("store")),
        new_peer(
            "ws", "WS", "10.0.1.0/24", 104, parse_services("echo,find,get,move"), tls="required"
        ),
        new_peer(
            "pin",
            "PIN",
            "10.0.2.1",
            None,
            parse_services("echo"),
            tls="required",
            client_cert=f"sha256:{fingerprint(certs['other'])}",
        ),
        new_peer("nocert", "NOCERT", "10.0.3.1", None, parse_services("echo"), client_cert="none"),
        new_peer("plain", "PLAIN", "10.0.4.1", 11112, parse_services("echo,store"), tls="off"),
        new_peer(
            "idreq",
            "IDREQ",
            "10.0.5.1",
            None,
            parse_services("echo,find"),
            user_identity="required",
        ),
        new_peer("dest", "DEST", "10.0.6.1", 11113, parse_services("store")),
        new_peer("net", "NET", "10.0.7.0/24", 11113, parse_services("store")),
    ):
        fakes.peers[peer.name] = peer
    fakes.users["alice"] = (User("alice", Role.RADIOLOGIST), "alice-pw")
    fakes.users["rita"] = (User("rita", Role.REFERRER, physicians=("Smith^John^^",)), "rita-pw")
    fakes.users["ulla"] = (User("ulla", Role.UPLOADER), "ulla-pw")
    fakes.users["off"] = (User("off", Role.ADMIN, disabled=True), "off-pw")
    key = tmp_path / "jwt.key"
    key.write_bytes(JWT_KEY)
    settings = SecuritySettings(jwt_hs256_key_file=str(key), allow_passcode_without_tls=True)
    policy = AccessPolicy(
        ae_title=AET,
        peers=fakes,
        audit=fakes,
        identities=IdentityVerifier(fakes, settings, AET),
        lockout=fakes,
        shares=fakes,
        cleartext_networks=["10.0.0.0/16"],
    )
    return policy, fakes


def tls(certs: dict[str, bytes], name: str | None) -> TlsInfo:
    return TlsInfo("TLSv1.3", certs[name] if name else None)


def passcode(name: str, password: str) -> IdentityClaim:
    return IdentityClaim(2, name.encode(), password.encode())


def token(sub: str, exp: int = 4102444800) -> IdentityClaim:
    encoded = jwt.encode({"sub": sub, "exp": exp, "aud": AET}, JWT_KEY, algorithm="HS256")
    return IdentityClaim(5, encoded.encode())


# (id, called, calling, address, tls cert name or "" for cleartext / None for TLS without a
#  certificate, identity, locks, expected: a RefusalReason or the granted permissions)
CASES = [
    ("accepted", AET, "CT", "10.0.0.5", "", None, set(), {Permission.STORE}),
    ("called-ae-wrong", "OTHER", "CT", "10.0.0.5", "", None, set(),
     RefusalReason.WRONG_RECIPIENT),
    ("cleartext-from-elsewhere", AET, "CT", "192.0.2.1", "", None, set(),
     RefusalReason.TRANSPORT),
    ("cleartext-from-loopback", AET, "PLAIN", "127.0.0.1", "", None, set(),
     RefusalReason.UNKNOWN_CALLER),  # registered for 10.0.4.1 only
    ("unknown-calling-ae", AET, "STRANGER", "10.0.0.5", "", None, set(),
     RefusalReason.UNKNOWN_CALLER),
    ("wrong-address", AET, "CT", "10.0.0.6", "", None, set(), RefusalReason.UNKNOWN_CALLER),
    ("network-peer", AET, "WS", "10.0.1.77", "ws", None, set(),
     {Permission.ECHO, Permission.QUERY, Permission.RETRIEVE, Permission.MOVE}),
    ("tls-required-in-cleartext", AET, "WS", "10.0.1.7", "", None, set(),
     RefusalReason.TRANSPORT),
    ("tls-without-certificate", AET, "WS", "10.0.1.7", None, None, set(),
     RefusalReason.TRANSPORT),
    ("certificate-of-another-peer", AET, "WS", "10.0.1.7", "other", None, set(),
     RefusalReason.TRANSPORT),
    # The TLS layer refuses certificates from CAs it does not trust (test_tls); what reaches
    # the policy was verified, and it decides on the name in it.
    ("verified-certificate-names-the-peer", AET, "WS", "10.0.1.7", "rogue-ws", None, set(),
     {Permission.ECHO, Permission.QUERY, Permission.RETRIEVE, Permission.MOVE}),
    ("pinned-certificate", AET, "PIN", "10.0.2.1", "other", None, set(), {Permission.ECHO}),
    ("pinned-mismatch", AET, "PIN", "10.0.2.1", "ws", None, set(), RefusalReason.TRANSPORT),
    ("no-certificate-needed", AET, "NOCERT", "10.0.3.1", None, None, set(), {Permission.ECHO}),
    ("cleartext-only-peer-over-tls", AET, "PLAIN", "10.0.4.1", "ws", None, set(),
     RefusalReason.TRANSPORT),
    ("identity-required-missing", AET, "IDREQ", "10.0.5.1", "", None, set(),
     RefusalReason.IDENTITY),
    ("identity-passcode", AET, "IDREQ", "10.0.5.1", "", passcode("alice", "alice-pw"), set(),
     {Permission.ECHO, Permission.QUERY}),
    ("identity-wrong-passcode", AET, "IDREQ", "10.0.5.1", "", passcode("alice", "x"), set(),
     RefusalReason.IDENTITY),
    ("identity-disabled-user", AET, "IDREQ", "10.0.5.1", "", passcode("off", "off-pw"), set(),
     RefusalReason.IDENTITY),
    ("identity-username-only", AET, "IDREQ", "10.0.5.1", "", IdentityClaim(1, b"alice"),
     set(), RefusalReason.IDENTITY),  # proves nothing: still no verified user
    ("identity-jwt", AET, "IDREQ", "10.0.5.1", "", token("alice"), set(),
     {Permission.ECHO, Permission.QUERY}),
    ("identity-jwt-expired", AET, "IDREQ", "10.0.5.1", "", token("alice", exp=1), set(),
     RefusalReason.IDENTITY),
    ("user-narrows-peer", AET, "IDREQ", "10.0.5.1", "", passcode("ulla", "ulla-pw"), set(),
     {Permission.ECHO}),  # an uploader through a find peer may only echo
    ("address-locked", AET, "CT", "10.0.0.5", "", None, {address_key("10.0.0.5")},
     RefusalReason.UNKNOWN_CALLER),
    ("address-locked-wrong-called", "OTHER", "CT", "10.0.0.5", "", None,
     {address_key("10.0.0.5")}, RefusalReason.WRONG_RECIPIENT),  # the unlocked answer
    ("address-locked-cert-proven", AET, "WS", "10.0.1.7", "ws", None,
     {address_key("10.0.1.7")},
     {Permission.ECHO, Permission.QUERY, Permission.RETRIEVE, Permission.MOVE}),
    ("peer-locked", AET, "WS", "10.0.1.7", "ws", None, {peer_key("ws")},
     RefusalReason.UNKNOWN_CALLER),
    ("account-locked", AET, "IDREQ", "10.0.5.1", "", passcode("alice", "alice-pw"),
     {account_key("alice")}, RefusalReason.IDENTITY),
]  # fmt: skip


@pytest.mark.parametrize(
    ("called", "calling", "address", "cert", "identity", "locks", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_association_decisions(
    world, certs, called, calling, address, cert, identity, locks, expected
) -> None:
    policy, fakes = world
    fakes.locks |= locks
    info = None if cert == "" else tls(certs, cert)
    outcome = policy.authenticate_association(
        AssociationRequest(called, calling, address, info, identity)
    )
    if isinstance(expected, RefusalReason):
        assert isinstance(outcome, Refusal), outcome
        assert outcome.reason is expected, outcome.why
        assert fakes.records[-1][:2] == (Action.ASSOCIATION, Outcome.REFUSED)
        assert fakes.failures, "a refused association counts towards lockout"
    else:
        assert isinstance(outcome, Principal), outcome
        assert outcome.permissions == expected
        assert fakes.records[-1][:2] == (Action.ASSOCIATION, Outcome.SUCCESS)
        assert not fakes.failures


def test_failures_count_against_the_right_keys(world, certs) -> None:
    policy, fakes = world
    # Unauthenticated: the address. A certificate-proven peer: itself, not the address.
    policy.authenticate_association(AssociationRequest("OTHER", "CT", "10.0.0.5"))
    policy.authenticate_association(AssociationRequest("OTHER", "WS", "10.0.1.7", tls(certs, "ws")))
    # A wrong passcode: the address and the account.
    policy.authenticate_association(
        AssociationRequest(AET, "IDREQ", "10.0.5.1", None, passcode("alice", "bad"))
    )
    assert fakes.failures == [
        (address_key("10.0.0.5"),),
        (peer_key("ws"),),
        (address_key("10.0.5.1"), account_key("alice")),
    ]


def test_transport_failures_count_unless_told_not_to(world) -> None:
    policy, fakes = world
    policy.transport_failure("10.9.9.9", "TLS handshake failed")
    policy.transport_failure("10.9.9.9", "not DICOM", count=False)
    assert fakes.failures == [(address_key("10.9.9.9"),)]
    assert [r[1] for r in fakes.records] == [Outcome.REFUSED, Outcome.REFUSED]


def test_an_unrecordable_acceptance_is_a_transient_refusal(world) -> None:
    policy, fakes = world
    fakes.audit_down = True
    outcome = policy.authenticate_association(AssociationRequest(AET, "CT", "10.0.0.5"))
    assert isinstance(outcome, Refusal) and outcome.reason is RefusalReason.BUSY


def test_proofs(world, certs) -> None:
    policy, _ = world
    p = policy.authenticate_association(AssociationRequest(AET, "WS", "10.0.1.7", tls(certs, "ws")))
    assert isinstance(p, Principal) and p.proofs == {Proof.ADDRESS, Proof.CERTIFICATE}
    p = policy.authenticate_association(
        AssociationRequest(AET, "IDREQ", "10.0.5.1", None, token("alice"))
    )
    assert isinstance(p, Principal) and p.proofs == {Proof.ADDRESS, Proof.JWT}
    assert p.actor == Actor("user", "alice", "10.0.5.1", "IDREQ") and p.user is not None


@pytest.mark.parametrize("permission", list(Permission))
@pytest.mark.parametrize("role", list(Role))
def test_authorize_follows_the_role_table(world, role: Role, permission: Permission) -> None:
    policy, fakes = world
    principal = policy.user_principal(User("u", role), "10.0.0.1", Proof.SESSION)
    allowed = policy.require(principal, permission, Action.QUERY)
    assert allowed == (permission in ROLE_PERMISSIONS[role])
    assert allowed == policy.authorize(principal, permission)
    if not allowed:
        assert fakes.records[-1] == (Action.QUERY, Outcome.REFUSED,
                                     f"{permission.value} not granted")  # fmt: skip


def test_role_table() -> None:
    assert ROLE_PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    assert Permission.STORE in ROLE_PERMISSIONS[Role.RADIOLOGIST]
    assert ROLE_PERMISSIONS[Role.REFERRER] & {Permission.STORE, Permission.ADMIN} == set()
    assert Permission.QUERY not in ROLE_PERMISSIONS[Role.UPLOADER]
    assert ROLE_PERMISSIONS[Role.AUDITOR] == {Permission.ECHO, Permission.AUDIT}


SCOPES = [
    ("peer", None, Scope.everything()),
    ("operator", "operator", Scope.everything()),
    ("admin", Role.ADMIN, Scope.everything()),
    ("radiologist", Role.RADIOLOGIST, Scope.everything()),
    ("referrer", Role.REFERRER, Scope(False, ("smith^john",), ("1.2.3", "1.2.4"))),
    ("referrer-without-links", "bare-referrer", Scope.nothing()),
    ("uploader", Role.UPLOADER, Scope.nothing()),
    ("auditor", Role.AUDITOR, Scope.nothing()),
    ("store-only-peer", "ct", Scope.nothing()),
]


@pytest.mark.parametrize(("who", "expected"), [(c[1], c[2]) for c in SCOPES],
                         ids=[c[0] for c in SCOPES])  # fmt: skip
def test_scope(world, who, expected: Scope) -> None:
    policy, fakes = world
    fakes.shared["rita"] = ["1.2.3", "1.2.4"]
    if who is None:
        principal = policy.peer_principal(fakes.peers["ws"], "10.0.1.7", "WS")
    elif who == "operator":
        principal = policy.operator("root")
    elif who == "ct":
        principal = policy.peer_principal(fakes.peers["ct"], "10.0.0.5", "CT")
    elif who == "bare-referrer":
        principal = policy.user_principal(User("bob", Role.REFERRER), None, Proof.TOKEN)
    elif who is Role.REFERRER:
        principal = policy.user_principal(fakes.get("rita"), None, Proof.TOKEN)  # type: ignore[arg-type]
    else:
        principal = policy.user_principal(User("u", who), None, Proof.TOKEN)
    scope = policy.scope(principal)
    assert scope == expected
    assert scope.empty == expected.empty


def test_physician_key() -> None:
    assert physician_key("  Smith^John^^ ") == "smith^john"
    assert physician_key("SMITH^JOHN=") == "smith^john"


def test_move_destinations(world) -> None:
    policy, fakes = world
    ws = policy.peer_principal(fakes.peers["ws"], "10.0.1.7", "WS")
    ct = policy.peer_principal(fakes.peers["ct"], "10.0.0.5", "CT")
    assert policy.move_destination(ws, "DEST") == fakes.peers["dest"]
    assert policy.move_destination(ws, "NOBODY") is None
    assert policy.move_destination(ws, "CT") is None  # no port: not a destination
    assert policy.move_destination(ws, "NET") is None  # a network: no single address
    assert policy.move_destination(ct, "DEST") is None  # CT may not move


def test_operator_may_do_everything() -> None:
    op = AccessPolicy.operator("root")
    assert op.permissions == frozenset(Permission) and op.proofs == {Proof.LOCAL}
    assert op.actor == Actor("operator", "root", "local")


def test_peer_services_map_to_permissions(world) -> None:
    policy, fakes = world
    for service in Service:
        peer = new_peer("p", "P", "10.0.0.9", None, frozenset({service}))
        principal = policy.peer_principal(peer, "10.0.0.9", "P")
        assert len(principal.permissions) == 1
    assert TlsMode.REQUIRED is fakes.peers["ws"].tls
