"""Imports point one way (DESIGN.md): front doors -> storage/security -> dicom.

Every module of the package is parsed (imports inside functions included) and each
import of another pacsvault module is checked against the allowed layers below, so
a shortcut such as ``security`` reaching into ``storage`` fails here, in ``make
test``, before review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "pacsvault"

#: What each part may import. The leaf modules (config, logsafe, the package root) may be
#: imported by anyone and import nothing of ours but each other and dicom.
LEAVES = {"pacsvault", "config", "logsafe", "__main__"}
ALLOWED: dict[str, set[str]] = {
    "config": {"dicom"},
    "dicom": {"dicom"},
    "security": {"security", "dicom"},
    "storage": {"storage", "security", "dicom"},
    "site": {"storage", "security", "dicom"},
    "importer": {"storage", "security", "dicom"},
    "dimse": {"dimse", "storage", "security", "dicom"},
    "web": {"web", "storage", "security", "dicom", "site"},
    "scan": {"scan", "dicom"},  # a client for any PACS: it knows nothing of our server
    "cli": {"cli", "site", "importer", "dimse", "web", "scan", "storage", "security", "dicom"},
    "__main__": {"cli"},
}


def part_of(module: str) -> str:
    """'pacsvault.storage.index' -> 'storage'; 'pacsvault' -> 'pacsvault'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every pacsvault import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("pacsvault")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            if base.startswith("pacsvault"):
                out.append((node.lineno, base))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_point_one_way(path: Path) -> None:
    me = part_of(module_name(path))
    # dicom and the leaves are the bottom: they may not import the leaves back.
    bottom = me in ("dicom", "config", "logsafe")
    allowed = ALLOWED.get(me, set()) | ({"pacsvault"} if bottom else LEAVES)
    wrong = [
        f"line {line}: {target}"
        for line, target in imports(path)
        if part_of(target) not in allowed | {me}
    ]
    assert not wrong, f"{module_name(path)} ({me}) may not import: {wrong}"


def test_every_part_has_a_rule() -> None:
    parts = {part_of(module_name(p)) for p in MODULES}
    assert parts <= set(ALLOWED) | LEAVES, parts - set(ALLOWED) - LEAVES


def test_security_holds_no_sql() -> None:
    """Decisions and rules only: every SQL statement lives in storage."""
    for path in (PACKAGE / "security").rglob("*.py"):
        text = path.read_text()
        assert "sqlalchemy" not in text, path.name
