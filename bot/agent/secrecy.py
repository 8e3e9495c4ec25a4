"""Keeps Shepherd's own secrets out of reach of other processes: scrubbed from its environment, and the process made undumpable.

`/proc/<pid>/environ` shows the environment block the kernel laid out at exec time, not what
`unsetenv` leaves: removing a variable from `os.environ` only drops libc's pointer to it. So
`scrub_environment` overwrites the bytes themselves, in that original block and wherever libc's
`environ` array points, before removing the variables. `make_undumpable` clears the dumpable flag:
then the kernel hands `/proc/<pid>/environ`, `mem` and `ptrace` to root only, not to other
processes of the same uid (an agent running as Shepherd's own user, for example).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable

log = logging.getLogger(__name__)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
# In /proc/self/stat, counted from 1: the start and end address of the environment block.
STAT_ENV_START_FIELD = 50
STAT_ENV_END_FIELD = 51

SCRUB_FAILED = "could not overwrite the environment block (%s); the variables were only unset"
UNDUMPABLE_FAILED = "could not make the process undumpable: %s"

_libc = ctypes.CDLL(None, use_errno=True)


def scrub_environment(names: Iterable[str]) -> list[str]:
    """Remove each of `names` from the environment and overwrite its bytes; return those that were set.

    Both the name and the value are zeroed, so `/proc/<pid>/environ` shows neither; the entry
    reads as empty.
    """
    names = list(dict.fromkeys(names))
    present = [name for name in names if name in os.environ]
    wanted = {name.encode() + b"=" for name in names}
    try:
        strings = _strings_in_block(wanted) + _strings_in_libc_environ(wanted)
    except (OSError, ValueError, IndexError) as error:
        log.warning(SCRUB_FAILED, error)
        strings = []
    # Unset first, while libc can still find the names; then zero the strings it no longer points
    # at (libc never frees them), so children inherit no empty leftover entry either.
    for name in names:
        os.environ.pop(name, None)  # unsetenv, and out of posix.environ (the same dictionary)
    for address, length in strings:
        ctypes.memset(address, 0, length)
    return sorted(present)


def _strings_in_block(wanted: set[bytes]) -> list[tuple[int, int]]:
    """Address and length of each matching `NAME=value` in the block the kernel set up at exec time."""
    start, end = _environment_block()
    if not start or end <= start:
        return []
    found = []
    offset = 0
    for entry in ctypes.string_at(start, end - start).split(b"\0"):
        if _matches(entry, wanted):
            found.append((start + offset, len(entry)))
        offset += len(entry) + 1
    return found


def _strings_in_libc_environ(wanted: set[bytes]) -> list[tuple[int, int]]:
    """Matching strings libc's `environ` points at (a `setenv` copy lives on the heap)."""
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(_libc, "environ")
    found = []
    index = 0
    while environ[index]:
        entry = ctypes.string_at(environ[index])
        if _matches(entry, wanted):
            found.append((environ[index], len(entry)))
        index += 1
    return found


def _matches(entry: bytes, wanted: set[bytes]) -> bool:
    return any(entry.startswith(prefix) for prefix in wanted)


def _environment_block() -> tuple[int, int]:
    with open("/proc/self/stat", "rb") as stat:
        text = stat.read()
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    fields = text[text.rindex(b")") + 2 :].split()
    first = 3
    return int(fields[STAT_ENV_START_FIELD - first]), int(fields[STAT_ENV_END_FIELD - first])


def make_undumpable() -> bool:
    """Clear this process's dumpable flag; False (and a warning) if the kernel refused."""
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning(UNDUMPABLE_FAILED, os.strerror(ctypes.get_errno()))
        return False
    return True


def is_dumpable() -> bool:
    """Whether this process is dumpable (readable and traceable by processes of its uid)."""
    return _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0
