"""`dagmaker.rc`: a bash file of KEY=VALUE lines, read and edited by key (never by line index)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoproc.desgw.errors import DesgwInputError

KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# rc files use mixed-case keys such as TEFF_CUT_g; they are valid bash names too.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# One shell word: unquoted chars, backslash escapes, '…' and "…" strings, no unquoted blanks or '#'.
_WORD = r"""(?:[^\s'"\\#]|\\.|'[^']*'|"(?:[^"\\]|\\.)*")*"""
_ASSIGN = re.compile(rf"^(?P<indent>\s*)(?P<export>export\s+)?(?P<key>{_NAME})=(?P<value>{_WORD})(?P<rest>.*)$")
_COMMENTED = re.compile(rf"^\s*#\s*(?:export\s+)?(?P<key>{_NAME})=(?P<value>{_WORD})(?P<rest>.*)$")
_REST_OK = re.compile(r"^(?:\s+#.*|\s*)$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:/=+@%-]+$")


@dataclass(frozen=True)
class RcChange:
    """One key set by `edit_rc`; `how` is replaced, uncommented, appended or unchanged."""

    key: str
    old: str | None
    new: str
    how: Literal["replaced", "uncommented", "appended", "unchanged"]
    line: int


@dataclass(frozen=True)
class RcEdit:
    """The edited text and what changed, for the operator."""

    text: str
    changes: tuple[RcChange, ...]

    @property
    def changed(self) -> bool:
        return any(c.how != "unchanged" for c in self.changes)


def _check_rest(m: re.Match[str], source: str, lineno: int) -> None:
    rest = m["rest"]
    if _REST_OK.match(rest):
        return
    if rest[:1] in ("'", '"'):
        raise DesgwInputError(source, lineno, f"value of {m['key']} has an unterminated {rest[0]} quote")
    if rest[:1] == "\\":
        raise DesgwInputError(source, lineno, f"value of {m['key']} ends in a line continuation (not supported)")
    raise DesgwInputError(
        source, lineno,
        f"value of {m['key']} has unquoted text after it ({rest.strip()!r}); quote values with spaces",
    )


def _unquote(word: str, source: str, lineno: int) -> str:
    if word == "":
        return ""
    try:
        parts = shlex.split(word, comments=False, posix=True)
    except ValueError as err:
        raise DesgwInputError(source, lineno, f"cannot parse value {word!r}: {err}") from None
    return parts[0] if parts else ""


def parse_rc(text: str, source: str = "dagmaker.rc") -> dict[str, str]:
    """KEY -> value for every assignment line (last one wins, as in bash).

    Values are unquoted but not expanded (`"$JOBSUB_OPTS …"` stays literal). Comments,
    blank lines and other shell statements are skipped; an assignment with an unquoted
    blank in its value or an unterminated quote is an error naming the line.
    """
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ASSIGN.match(raw)
        if m is None:
            continue
        _check_rest(m, source, lineno)
        values[m["key"]] = _unquote(m["value"], source, lineno)
    return values


def read_rc(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read and parse a dagmaker.rc file."""
    path = Path(path)
    return parse_rc(path.read_text(), str(path))


def rc_season(values: Mapping[str, str], source: str = "dagmaker.rc") -> int:
    """The SEASON of a parsed rc; DAGMaker's default (11) is never what we want, so absent is an error."""
    raw = values.get("SEASON")
    if raw is None:
        raise DesgwInputError(source, None, "no SEASON= line")
    if not raw.isdigit():
        raise DesgwInputError(source, None, f"SEASON={raw!r} is not a positive integer")
    return int(raw)


def quote_value(value: str) -> str:
    """Shell-quote a value unless it is made only of characters that need no quoting."""
    if _SAFE_VALUE.match(value):
        return value
    return shlex.quote(value)


def _check(key: str, value: object) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        # Keys like TEFF_CUT_g exist in the rc; they are allowed, anything else is not.
        if not (isinstance(key, str) and re.match(r"^TEFF_CUT_[ugrizY]$", key)):
            raise ValueError(f"invalid dagmaker.rc key {key!r}: must match {KEY_RE.pattern}")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        raise ValueError(f"value of {key} must be a string or number, not {type(value).__name__}")
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"value of {key} must not contain a newline or NUL")
    return text


def edit_rc(text: str, updates: Mapping[str, object], source: str = "dagmaker.rc") -> RcEdit:
    """Set each KEY: replace its first `KEY=` line, else uncomment the first `#KEY=` line, else append.

    A trailing `# comment` on a replaced line is kept. Values are shell-quoted when needed,
    so `$` and spaces are literal. Keys must match `^[A-Z_][A-Z0-9_]*$` (or TEFF_CUT_<band>);
    values must not contain newlines. Other lines are left byte for byte.
    """
    checked = {key: _check(key, value) for key, value in updates.items()}
    lines = text.splitlines(keepends=True)
    changes: list[RcChange] = []
    for key, new in checked.items():
        rendered = quote_value(new)
        done = False
        for i, raw in enumerate(lines):
            m = _ASSIGN.match(raw.rstrip("\r\n"))
            if m and m["key"] == key:
                _check_rest(m, source, i + 1)
                old = _unquote(m["value"], source, i + 1)
                ending = raw[len(raw.rstrip("\r\n")):] or "\n"
                lines[i] = f"{m['indent']}{m['export'] or ''}{key}={rendered}{m['rest']}{ending}"
                changes.append(RcChange(key, old, new, "unchanged" if old == new else "replaced", i + 1))
                done = True
                break
        if done:
            continue
        for i, raw in enumerate(lines):
            m = _COMMENTED.match(raw.rstrip("\r\n"))
            if m and m["key"] == key:
                try:
                    was = _unquote(m["value"], source, i + 1)
                except DesgwInputError:
                    was = m["value"]
                ending = raw[len(raw.rstrip("\r\n")):] or "\n"
                lines[i] = f"{key}={rendered}{ending}"
                changes.append(RcChange(key, was, new, "uncommented", i + 1))
                done = True
                break
        if done:
            continue
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += "\n"
        lines.append(f"{key}={rendered}\n")
        changes.append(RcChange(key, None, new, "appended", len(lines)))
    return RcEdit("".join(lines), tuple(changes))
