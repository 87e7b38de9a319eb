"""Every command the README shows works as a new user would type it.

The README's "Use" block is read from the file itself: each of its lines must have a
runner below (so a command added to the README without a test fails here), and each
runner runs that line's commands against one data directory, in README order, with
the README's example addresses replaced by loopback ones. The DICOM clients the
README and ``make run`` show (DCMTK with and without TLS) run against the server.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from conftest import SERVER_AET, Server, cli, dcmtk, free_port, write_data_set
from pacsvault.dicom.synthetic import SOP_CLASS_FOR, Spec

README = Path(__file__).resolve().parent.parent / "README.md"


def use_block() -> list[str]:
    """The commands of the README's Use block, without their comments."""
    text = README.read_text()
    block = text.split("## Use", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line]


@dataclass
class Site:
    """What the README's commands share: a data directory, a server, example files."""

    data: Path
    tmp: Path
    server: Server | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, ok: bool = True):  # type: ignore[no-untyped-def]
        return cli(self.data, *args, check=ok)


def _password(out: str) -> str:
    return out.split("(shown once): ")[1].strip()


def r_init(s: Site) -> None:
    out = s.run("init", "--aet", "PACSVAULT").stdout
    assert "No peers are registered" in out
    assert (s.data / "pacsvault.toml").stat().st_mode & 0o777 == 0o600


def r_peer_ct1(s: Site) -> None:
    s.run("peer", "add", "CT1", "--aet", "CT1", "--host", "127.0.0.1", "--allow", "store")


def r_peer_ws1(s: Site) -> None:
    s.notes["ws1_port"] = str(free_port())
    s.run("peer", "add", "WS1", "--aet", "WS1", "--host", "127.0.0.0/24",
          "--port", s.notes["ws1_port"], "--allow", "echo,find,move,get")  # fmt: skip


def r_peer_ws2(s: Site) -> None:
    s.run("peer", "add", "WS2", "--aet", "WS2", "--host", "127.0.0.1",
          "--allow", "find,get", "--tls", "required")  # fmt: skip


def r_peer_cert(s: Site) -> None:
    out = s.run("peer", "cert", "WS2", "--out", str(s.tmp / "ws2-certs")).stdout.split()
    assert [Path(p).name for p in out] == ["WS2.key", "WS2.crt", "ca.crt"]


def r_peer_list_remove(s: Site) -> None:
    s.run("peer", "add", "OLD", "--aet", "OLD", "--host", "127.0.0.9", "--allow", "echo")
    listed = s.run("peer", "list").stdout
    assert all(name in listed for name in ("CT1", "WS1", "WS2", "OLD"))
    s.run("peer", "remove", "OLD")
    assert "OLD" not in s.run("peer", "list").stdout


def r_user_add(s: Site) -> None:
    s.notes["alice"] = _password(s.run("user", "add", "alice", "--role", "radiologist").stdout)


def r_user_manage(s: Site) -> None:
    assert "alice\tradiologist\tenabled" in s.run("user", "list").stdout
    s.run("user", "disable", "alice")
    assert "disabled" in s.run("user", "list").stdout
    s.run("user", "enable", "alice")
    s.notes["alice"] = _password(s.run("user", "passwd", "alice").stdout)


def r_referrer(s: Site) -> None:
    s.run("user", "add", "rita", "--role", "referrer")
    assert "linked rita" in s.run("user", "link", "rita", "--physician", "Smith^John").stdout
    assert "rita\treferrer\tenabled\tphysicians=1" in s.run("user", "list").stdout


def r_share(s: Site) -> None:
    out = s.run("share", s.notes["study_uid"], "--user", "rita", "--expires", "7d").stdout
    share_id = out.split()[1].rstrip(":")
    assert s.notes["study_uid"] in s.run("share", "--list").stdout
    assert "revoked" in s.run("share", "--revoke", share_id).stdout


def r_totp(s: Site) -> None:
    out = s.run("user", "totp", "alice").stdout
    assert "otpauth://totp/" in out and "secret: " in out


def r_tokens(s: Site) -> None:
    out = s.run("token", "create", "--user", "alice", "--scope", "read", "--expires", "30d")
    text = out.stdout.strip().splitlines()[-1]
    assert text.startswith("pvt_")
    s.notes["token"] = text
    token_id = text.split("_")[1]
    assert token_id in s.run("token", "list").stdout
    assert s.server is not None  # the token works over HTTPS
    import requests

    session = requests.Session()
    session.verify, session.trust_env = str(s.data / "tls" / "ca.crt"), False
    r = session.get(f"https://localhost:{s.server.https_port}/dicom-web/studies",
                    headers={"Authorization": f"Bearer {text}"})  # fmt: skip
    assert r.status_code == 200 and s.notes["study_uid"] in r.text
    other = s.run("token", "create", "--user", "alice").stdout.strip().splitlines()[-1]
    assert (
        f"token {other.split('_')[1]} revoked"
        in s.run("token", "revoke", other.split("_")[1]).stdout
    )


def r_lockout(s: Site) -> None:
    assert "no lockouts" in s.run("lockout", "list").stdout
    assert "cleared 0 lockout(s)" in s.run("lockout", "clear", "address:10.9.9.9").stdout
    assert "cleared 0 lockout(s)" in s.run("lockout", "clear", "account:alice").stdout
    assert "cleared 0 lockout(s)" in s.run("lockout", "clear").stdout


def r_tls(s: Site) -> None:
    assert "BEGIN CERTIFICATE" in s.run("tls", "export-ca").stdout
    s.run("tls", "export-ca", "--out", str(s.tmp / "ca.pem"))
    assert (s.tmp / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE")


def r_audit_verify_search(s: Site) -> None:
    assert s.run("audit", "verify").returncode == 0
    out = s.run("audit", "search", "--peer", "WS1", "--since", "2000-01-01").stdout
    assert "WS1" in out or "peer:WS1" in out
    s.run("audit", "search", "--user", "alice", "--patient", s.notes["patient_id"])
    study = s.notes.get("study_uid", "1.2.3")
    s.run("audit", "search", "--study", study)


def r_audit_who_export(s: Site) -> None:
    out = s.run("audit", "who-accessed", "--patient", s.notes["patient_id"]).stdout
    assert "\tstore\t" in out and "\tretrieve\t" in out
    s.run("audit", "export", "--out", str(s.tmp / "audit.xml"))
    assert "<AuditMessage" in (s.tmp / "audit.xml").read_text()
    assert "AuditMessage" in s.run("audit", "export").stdout


def r_audit_checkpoints(s: Site) -> None:
    copy = s.tmp / "checkpoints.copy"
    s.run("audit", "export-checkpoints", "--out", str(copy))
    assert copy.read_text().strip()
    assert s.run("audit", "export-checkpoints").stdout.strip()
    assert s.run("audit", "verify", "--checkpoints", str(copy)).returncode == 0


def r_doctor(s: Site) -> None:
    s.run("doctor", ok=False)  # exit status reflects findings; it must run
    proc = s.run("doctor", "--fail-on", "medium", ok=False)
    assert "PASS" in proc.stdout and "Traceback" not in proc.stderr


def r_fsck(s: Site) -> None:
    for args in (["fsck"], ["fsck", "--quick"], ["fsck", "--repair"]):
        assert s.run(*args).returncode == 0


def r_scan(s: Site) -> None:
    assert s.server is not None
    target = f"127.0.0.1:{s.server.port}"
    out = s.tmp / "scan"
    proc = s.run("scan", target, "--authorized", "--json", str(out) + ".json",
                 "--html", str(out) + ".html", "--fail-on", "high", ok=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(Path(str(out) + ".json").read_text())
    assert Path(str(out) + ".html").read_text().lstrip().startswith("<")
    s.run("scan", target, "--intrusive", ok=False)


def r_serve(s: Site) -> None:
    """`serve --bind --dicom-port --tls-port`, then the DICOM clients the README shows."""
    s.server = Server(s.data, free_port(), s.tmp / "server.log")
    s.server.start()  # runs `serve --bind 127.0.0.1 --dicom-port N --tls-port M`
    port = str(s.server.port)
    files = write_data_set(s.tmp / "files", Spec(patients=1, studies_per_patient=1))
    s.notes["study_uid"] = str(files[0][1].StudyInstanceUID)
    s.notes["patient_id"] = str(files[0][1].PatientID)
    # The modality CT1 stores (storescu), as `make run` shows with DEMOSCU.
    proc = dcmtk("storescu", "-aet", "CT1", "-aec", SERVER_AET, "127.0.0.1", port,
                 *[str(p) for p, _ in files])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # WS1 echoes, finds, gets and moves to itself.
    assert dcmtk("echoscu", "-aet", "WS1", "-aec", SERVER_AET, "127.0.0.1", port).returncode == 0
    proc = dcmtk("findscu", "-aet", "WS1", "-aec", SERVER_AET, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*",
                 "-k", "StudyInstanceUID", "127.0.0.1", port)  # fmt: skip
    assert proc.returncode == 0 and s.notes["study_uid"] in proc.stderr + proc.stdout
    got = s.tmp / "ws1-get"
    got.mkdir()
    proc = dcmtk("getscu", "-aet", "WS1", "-aec", SERVER_AET, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={s.notes['study_uid']}",
                 "-od", str(got), "127.0.0.1", port)  # fmt: skip
    assert proc.returncode == 0 and len(list(got.iterdir())) == len(files), proc.stderr
    # WS2 (find,get, TLS required) finds with findscu +tls and its certificate...
    certs = s.tmp / "ws2-certs"
    tls = ["+tls", str(certs / "WS2.key"), str(certs / "WS2.crt"), "+cf", str(certs / "ca.crt")]
    proc = dcmtk("findscu", *tls, "-aet", "WS2", "-aec", SERVER_AET, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                 "127.0.0.1", str(s.server.tls_port))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # ... and retrieves with C-GET over TLS (DCMTK 3.6.7's getscu has no TLS options).
    assert _get_over_tls(s, certs) == len(files)
    # ... but is refused in cleartext, and cannot store.
    proc = dcmtk("findscu", "-aet", "WS2", "-aec", SERVER_AET, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "127.0.0.1", port)  # fmt: skip
    assert proc.returncode != 0


def _get_over_tls(s: Site, certs: Path) -> int:
    assert s.server is not None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.crt"))
    ctx.load_cert_chain(certs / "WS2.crt", certs / "WS2.key")
    received: list[str] = []

    def on_store(event) -> int:  # type: ignore[no-untyped-def]
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title="WS2")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in SOP_CLASS_FOR.values():
        ae.add_requested_context(uid, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", s.server.tls_port, ae_title=SERVER_AET,
                         tls_args=(ctx, "localhost"),
                         ext_neg=[build_role(u, scp_role=True) for u in SOP_CLASS_FOR.values()],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = s.notes["study_uid"]
    statuses = [int(st.Status) for st, _ in
                assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]  # fmt: skip
    assoc.release()
    assert statuses[-1] == 0x0000
    return len(received)


def r_status(s: Site) -> None:
    out = s.run("status").stdout
    assert "instances: " in out and "DICOM listener" in out and "HTTPS listener" in out


def r_import(s: Site) -> None:
    write_data_set(s.tmp / "import", Spec(patients=1, seed=5))
    out = s.run("import", str(s.tmp / "import")).stdout
    assert "stored:" in out


def r_demo(s: Site) -> None:
    assert "synthetic instances (5 patients)" in s.run("demo", "--patients", "5").stdout


#: Each README line and what runs it, in the order the commands depend on each other.
RUNNERS: list[tuple[str, Callable[[Site], None]]] = [
    ("pacsvault init [--aet PACSVAULT]", r_init),
    ("pacsvault peer add CT1 --aet CT1 --host 10.1.2.3 --allow store", r_peer_ct1),
    (
        "pacsvault peer add WS1 --aet WS1 --host 10.1.2.0/24 --port 11113 --allow echo,find,move,get",  # noqa: E501
        r_peer_ws1,
    ),
    (
        "pacsvault peer add WS2 --aet WS2 --host 10.1.9.9 --allow find,get --tls required",
        r_peer_ws2,
    ),
    ("pacsvault peer cert WS2 --out ./ws2-certs", r_peer_cert),
    ("pacsvault peer list | pacsvault peer remove NAME", r_peer_list_remove),
    ("pacsvault user add alice --role radiologist", r_user_add),
    ("pacsvault user list | disable | enable | passwd NAME", r_user_manage),
    (
        "pacsvault user add rita --role referrer && pacsvault user link rita --physician "
        "'Smith^John'",
        r_referrer,
    ),
    ("pacsvault lockout list | clear [address:IP|account:NAME]", r_lockout),
    ("pacsvault tls export-ca [--out FILE]", r_tls),
    ("pacsvault serve [--bind ADDRESS] [--dicom-port N] [--tls-port N] [--https-port N]", r_serve),
    (
        "pacsvault share STUDY_UID --user rita --expires 7d | share --list | share --revoke ID",
        r_share,
    ),
    ("pacsvault user totp alice", r_totp),
    (
        "pacsvault token create --user alice --scope read --expires 30d | token list | "
        "token revoke ID",
        r_tokens,
    ),
    ("pacsvault status", r_status),
    ("pacsvault import PATH...", r_import),
    ("pacsvault demo --patients 5", r_demo),
    (
        "pacsvault audit verify | search [--user U --peer P --patient ID --study UID --since T ...]",  # noqa: E501
        r_audit_verify_search,
    ),
    ("pacsvault audit who-accessed --patient ID | export [--out FILE]", r_audit_who_export),
    (
        "pacsvault audit verify --checkpoints FILE | export-checkpoints [--out FILE]",
        r_audit_checkpoints,
    ),
    ("pacsvault doctor [--fail-on medium]", r_doctor),
    ("pacsvault fsck [--quick] [--repair]", r_fsck),
    (
        "pacsvault scan TARGET... [--authorized] [--json F] [--html F] [--fail-on high] [--intrusive]",  # noqa: E501
        r_scan,
    ),
]


def test_every_readme_command_has_a_runner() -> None:
    assert sorted(use_block()) == sorted(line for line, _ in RUNNERS)


def test_every_readme_command_works(tmp_path: Path) -> None:
    site = Site(tmp_path / "data", tmp_path)
    try:
        for line, runner in RUNNERS:
            try:
                runner(site)
            except Exception as exc:
                pytest.fail(f"README command failed: {line}\n{type(exc).__name__}: {exc}")
    finally:
        if site.server is not None:
            site.server.stop()
