"""Log hygiene: control characters from the network never reach a log line raw.

AE titles, UIDs and other values a peer chooses end up in log messages (ours and
those of the libraries we use). A CR/LF would let a peer forge log lines; an
escape sequence would drive the terminal of whoever reads the log. One filter,
installed on every handler of the root logger, escapes them in every record,
whatever logger produced it.
"""

from __future__ import annotations

import logging
import re
import traceback

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """*text* with every control character written as ``\\xNN`` (or ``\\uNNNN``)."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else
        f"\\u{ord(m.group()):04x}",
        text,
    )  # fmt: skip


def format_exception(exc_info: tuple) -> str:  # type: ignore[type-arg]
    """A traceback whose lines are kept, with every exception message escaped whole
    (a newline inside a message must not start a log line of its own)."""
    te = traceback.TracebackException(*exc_info)
    seen: set[int] = set()
    stack = [te]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(getattr(item, "_str", None), str):
            item._str = escape(item._str)  # the message as str() gives it
        stack += [e for e in (item.__cause__, item.__context__) if e is not None]
    lines = "".join(te.format()).rstrip("\n").split("\n")
    return "\n".join(escape(line) for line in lines)


class ControlCharacterFilter(logging.Filter):
    """Rewrites each record so its message (and traceback text) holds no raw controls.

    Tracebacks keep their line structure: each line is escaped on its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = escape(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = format_exception(record.exc_info)
        elif record.exc_text:
            record.exc_text = "\n".join(escape(line) for line in record.exc_text.split("\n"))
        if record.stack_info:
            record.stack_info = "\n".join(escape(line) for line in record.stack_info.split("\n"))
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of *logger* (the root logger by default), once."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, ControlCharacterFilter) for f in handler.filters):
            handler.addFilter(ControlCharacterFilter())
