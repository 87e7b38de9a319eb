"""``pacsvault peer``, ``user``, ``share`` and ``lockout``: the site's administration.

Every change goes through :class:`~pacsvault.storage.admin.Administration` as the
local operator, which writes the change and its audit record together.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from pacsvault.cli.base import CommandError, Subparsers
from pacsvault.security.peers import new_peer, parse_services
from pacsvault.security.users import Role
from pacsvault.site import open_site


def cmd_peer_add(args: argparse.Namespace) -> int:
    peer = new_peer(
        args.name,
        args.aet,
        args.host,
        args.port,
        parse_services(args.allow),
        tls=args.tls,
        client_cert=args.client_cert,
        user_identity=args.user_identity,
    )
    with open_site(args.data_dir) as site:
        site.admin.add_peer(site.operator(), peer)
    print(f"peer {peer.name} added")
    return 0


def cmd_peer_cert(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        paths = site.admin.issue_peer_certificate(site.operator(), args.name, args.out)
    for path in paths:
        print(path)
    return 0


def cmd_peer_remove(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        site.admin.remove_peer(site.operator(), args.name)
    print(f"peer {args.name} removed")
    return 0


def cmd_peer_list(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        peers = site.peers.list()
    if not peers:
        print("no peers registered")
    for p in peers:
        services = ",".join(sorted(s.value for s in p.services))
        port = p.port if p.port is not None else "-"
        print(
            f"{p.name}\t{p.ae_title}\t{p.host}\tport={port}\tallow={services}"
            f"\ttls={p.tls.value}\tclient-cert={p.client_cert}"
            f"\tuser-identity={p.user_identity.value}"
        )
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        password = site.admin.add_user(site.operator(), args.name, args.role)
    print(f"user {args.name} added with role {args.role}")
    print(f"password (shown once): {password}")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        password = site.admin.reset_password(site.operator(), args.name)
    print(f"new password for {args.name} (shown once): {password}")
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    disable = args.user_cmd == "disable"
    with open_site(args.data_dir) as site:
        site.admin.set_user_disabled(site.operator(), args.name, disable)
    print(f"user {args.name} {args.user_cmd}d")
    return 0


def cmd_user_role(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        site.admin.set_role(site.operator(), args.name, args.role)
    print(f"user {args.name} now has role {args.role}")
    return 0


def cmd_user_link(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        if args.unlink:
            done = site.admin.unlink_physician(site.operator(), args.name, args.physician)
            print(f"unlinked {args.name} from a physician" if done else "no such link")
        else:
            done = site.admin.link_physician(site.operator(), args.name, args.physician)
            print(f"linked {args.name} to a physician" if done else "already linked")
    return 0


def cmd_user_totp(args: argparse.Namespace) -> int:
    from pacsvault.security.totp import provisioning_uri

    with open_site(args.data_dir) as site:
        secret = site.admin.set_second_factor(site.operator(), args.name, not args.disable)
    if secret is None:
        print(f"second factor removed for {args.name}")
        return 0
    print(f"second factor for {args.name}: add this to an authenticator app (shown once)")
    print(f"secret: {secret}")
    print(provisioning_uri(secret, args.name))
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    expires = time.time() + parse_duration(args.expires) if args.expires else None
    with open_site(args.data_dir) as site:
        new = site.admin.create_token(site.operator(), args.user, args.scope, expires)
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires)) if expires else "revoked"
    print(f"token {new.id} for {args.user}, scope {args.scope}, until {until} (shown once):")
    print(new.text)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        records = site.web_sessions.tokens(args.user)
    if not records:
        print("no tokens")
    now = time.time()
    for t in records:
        state = t.state(now)
        until = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(t.expires_at)) if t.expires_at else "-"
        )
        print(f"{t.id}\t{t.user_name}\t{t.scope.value}\t{state}\tuntil {until}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        done = site.admin.revoke_token(site.operator(), args.id)
    print(f"token {args.id} revoked" if done else f"no active token {args.id}")
    return 0 if done else 1


def cmd_user_list(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        users = site.users.list()
    for u in users:
        links = f"\tphysicians={len(u.physicians)}" if u.physicians else ""
        print(f"{u.name}\t{u.role.value}\t{'disabled' if u.disabled else 'enabled'}{links}")
    return 0


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``...; raises CommandError otherwise."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise CommandError(f"a duration is a number and a unit (s, m, h, d, w), e.g. 7d: {text}")
    return int(match.group(1)) * _UNIT[match.group(2)]


def cmd_share(args: argparse.Namespace) -> int:
    expires = time.time() + parse_duration(args.expires) if args.expires else None
    with open_site(args.data_dir) as site:
        share_id = site.admin.share_study(site.operator(), args.study_uid, args.user, expires)
    until = time.strftime(" until %Y-%m-%d %H:%M", time.localtime(expires)) if expires else ""
    print(f"share {share_id}: study shared with {args.user}{until}")
    return 0


def cmd_share_list(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        shares = site.users.shares()
    if not shares:
        print("no shares")
    for sh in shares:
        until = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(sh["expires_at"]))
            if sh["expires_at"]
            else "-"
        )
        print(f"{sh['id']}\t{sh['user_name']}\t{sh['study_instance_uid']}\tuntil {until}")
    return 0


def cmd_share_revoke(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        done = site.admin.revoke_share(site.operator(), args.id)
    print(f"share {args.id} revoked" if done else f"no share {args.id}")
    return 0 if done else 1


def cmd_lockout_clear(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        n = site.admin.clear_lockout(site.operator(), args.key)
    print(f"cleared {n} lockout(s)")
    return 0


def cmd_lockout_list(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        entries = site.lockout.entries()
    if not entries:
        print("no lockouts")
    for e in entries:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.until))
        print(f"{e.key}\tuntil {until}\t{e.reason}")
    return 0


def _register_peer(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("peer", parents=[common], help="manage registered DICOM peers")
    peer_sub = p.add_subparsers(dest="peer_cmd", required=True)
    a = peer_sub.add_parser("add", parents=[common], help="register a peer")
    a.add_argument("name")
    a.add_argument("--aet", required=True, help="the peer's AE title")
    a.add_argument("--host", required=True, help="its address, or a CIDR network")
    a.add_argument("--port", type=int, help="its port (needed to be a C-MOVE destination)")
    a.add_argument("--allow", required=True, help="services: echo,store,find,move,get")
    a.add_argument(
        "--tls",
        default="optional",
        choices=["required", "optional", "off"],
        help="DICOM over TLS for this peer (default optional: cleartext only where allowed)",
    )
    a.add_argument(
        "--client-cert",
        default="ca",
        metavar="ca|none|sha256:HEX",
        help="over TLS: a certificate from a trusted CA issued to this peer name (ca, the "
        "default), a pinned certificate fingerprint, or none",
    )
    a.add_argument(
        "--user-identity",
        default="optional",
        choices=["required", "optional"],
        help="require a DICOM user identity (username+passcode or JWT)",
    )
    a.set_defaults(func=cmd_peer_add)
    c = peer_sub.add_parser("cert", parents=[common], help="issue a client certificate")
    c.add_argument("name")
    c.add_argument("--out", type=Path, required=True, metavar="DIR")
    c.set_defaults(func=cmd_peer_cert)
    peer_sub.add_parser("list", parents=[common], help="list peers").set_defaults(
        func=cmd_peer_list
    )
    r = peer_sub.add_parser("remove", parents=[common], help="remove a peer")
    r.add_argument("name")
    r.set_defaults(func=cmd_peer_remove)


def _register_user(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("user", parents=[common], help="manage users")
    user_sub = p.add_subparsers(dest="user_cmd", required=True)
    u = user_sub.add_parser("add", parents=[common], help="add a user (password shown once)")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=[r.value for r in Role])
    u.set_defaults(func=cmd_user_add)
    user_sub.add_parser("list", parents=[common], help="list users").set_defaults(
        func=cmd_user_list
    )
    for verb, func in (("disable", cmd_user_enable), ("enable", cmd_user_enable),
                       ("passwd", cmd_user_passwd)):  # fmt: skip
        v = user_sub.add_parser(verb, parents=[common], help=f"{verb} a user")
        v.add_argument("name")
        v.set_defaults(func=func)
    r = user_sub.add_parser("role", parents=[common], help="change a user's role")
    r.add_argument("name")
    r.add_argument("--role", required=True, choices=[r.value for r in Role])
    r.set_defaults(func=cmd_user_role)
    link = user_sub.add_parser(
        "link", parents=[common], help="let a referrer read a physician's studies"
    )
    link.add_argument("name")
    link.add_argument("--physician", required=True, metavar="'Last^First'",
                      help="a ReferringPhysicianName, as in the studies")  # fmt: skip
    link.add_argument("--unlink", action="store_true", help="remove the link instead")
    link.set_defaults(func=cmd_user_link)
    t = user_sub.add_parser("totp", parents=[common], help="a second factor (TOTP) for web logins")
    t.add_argument("name")
    t.add_argument("--disable", action="store_true", help="remove the second factor")
    t.set_defaults(func=cmd_user_totp)


def _register_token(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("token", parents=[common], help="API tokens for programs and viewers")
    token_sub = p.add_subparsers(dest="token_cmd", required=True)
    c = token_sub.add_parser("create", parents=[common], help="a token, shown once")
    c.add_argument("--user", required=True)
    c.add_argument("--scope", default="read", choices=["read", "write", "admin"])
    c.add_argument("--expires", metavar="30d", help="lifetime (s, m, h, d, w); default: none")
    c.set_defaults(func=cmd_token_create)
    ls = token_sub.add_parser("list", parents=[common], help="tokens (never their secrets)")
    ls.add_argument("--user")
    ls.set_defaults(func=cmd_token_list)
    r = token_sub.add_parser("revoke", parents=[common], help="revoke a token")
    r.add_argument("id")
    r.set_defaults(func=cmd_token_revoke)


def _register_share(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("share", parents=[common], help="share a study with a user")
    p.add_argument("study_uid", metavar="STUDY_UID", nargs="?")
    p.add_argument("--user", help="the user who may read it")
    p.add_argument("--expires", metavar="7d", help="for how long (s, m, h, d, w); default: "
                   "until revoked")  # fmt: skip
    p.add_argument("--list", action="store_true", help="list the shares in force")
    p.add_argument("--revoke", type=int, metavar="ID", help="revoke a share")
    p.set_defaults(func=cmd_share_dispatch)


def cmd_share_dispatch(args: argparse.Namespace) -> int:
    """``share UID --user U``, ``share --list`` or ``share --revoke ID``."""
    if args.list:
        return cmd_share_list(args)
    if args.revoke is not None:
        args.id = args.revoke
        return cmd_share_revoke(args)
    if not args.study_uid or not args.user:
        raise CommandError("share STUDY_UID --user NAME [--expires 7d] | --list | --revoke ID")
    return cmd_share(args)


def _register_lockout(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("lockout", parents=[common], help="show or clear lockouts")
    lock_sub = p.add_subparsers(dest="lockout_cmd", required=True)
    lock_sub.add_parser("list", parents=[common], help="lockouts in force").set_defaults(
        func=cmd_lockout_list
    )
    cl = lock_sub.add_parser("clear", parents=[common], help="lift lockouts")
    cl.add_argument(
        "key", nargs="?", help="e.g. address:10.1.2.3, account:alice or peer:CT1 (all if omitted)"
    )
    cl.set_defaults(func=cmd_lockout_clear)


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    _register_peer(sub, common)
    _register_user(sub, common)
    _register_token(sub, common)
    _register_share(sub, common)
    _register_lockout(sub, common)
