"""Mandatory access control: move the worker and the ns socket source into
their own AppArmor profile or SELinux domain.

Both LSMs confine a process by the label it runs under, and both change a
running process's label through a file in ``/proc`` that only the process
itself may write (``attr/apparmor/current`` or ``attr/current``).  The
worker is forked after the jail has taken ``/proc`` away, so ``prepare``
runs before the jail closes: it reads the current label, decides the new
one and keeps ``/proc`` open (``O_PATH``) for the child, which ``enter``s
the new label right after the fork and closes that fd before it runs any
worker code.

* AppArmor: a process under our profile ``passt-sep`` (``pasta-sep``) stacks
  ``passt-sep-worker`` (``pasta-sep-worker``) on it.  A stack, because the
  jail sets no_new_privs and AppArmor then refuses a plain profile change;
  stacking only takes permissions away.
* SELinux: a process in ``passt_sep_t`` switches to ``passt_sep_worker_t``
  (``setcon``: a ``dyntransition`` in the policy).

Under any other label (no LSM, unconfined, ``python3 -m passt_sep``, which
no profile attaches to, someone else's profile) nothing happens, and
nothing is said; nor when the kernel does not know the target (an older
policy without the worker's profile or domain loaded).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

PROC = "/proc"
APPARMOR_ATTR = "thread-self/attr/apparmor/current"
LEGACY_ATTR = "thread-self/attr/current"
WORKER_PROFILES = {"passt-sep": "passt-sep-worker", "pasta-sep": "pasta-sep-worker"}
DOMAIN, WORKER_DOMAIN = "passt_sep_t", "passt_sep_worker_t"
# Patterns compiled where first used (re keeps them), not at every start's import:
# "NAME (MODE)", as AppArmor shows a single profile; a stack has "//&"
_APPARMOR_LABEL = r"(?P<name>[^\s/]+) \([a-z_]+\)"
# user:role:type[:level], as SELinux shows a context
_SELINUX_CONTEXT = r"(?P<user>[^:\s]+):(?P<role>[^:\s]+):(?P<type>[^:\s]+)(?P<level>:\S+)?"
# the target is not loaded: no such AppArmor profile, an invalid SELinux context
_NOT_LOADED = (errno.ENOENT, errno.EINVAL)


@dataclass(frozen=True)
class Confinement:
    """A pending switch: what to write to which attribute file (relative to
    the held ``/proc``, opened with ``O_PATH``)."""

    attr: str
    value: bytes
    proc_fd: int


def worker_label(lsm: str, current: str) -> bytes | None:
    """What to write to move a process under ``current`` into the worker's
    confinement, or None to leave it where it is."""
    current = current.rstrip("\0\n")
    if lsm == "apparmor":
        match = re.fullmatch(_APPARMOR_LABEL, current)
        worker = WORKER_PROFILES.get(match["name"]) if match else None
        return f"stack {worker}".encode() if worker else None
    match = re.fullmatch(_SELINUX_CONTEXT, current)
    if lsm != "selinux" or not match or match["type"] != DOMAIN:
        return None
    return f"{match['user']}:{match['role']}:{WORKER_DOMAIN}{match['level'] or ''}".encode()


def prepare(proc: str = PROC) -> Confinement | None:
    """Before the jail: the switch a child should make, with ``/proc`` held
    for it, or None."""
    try:
        proc_fd = os.open(proc, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    for attr in (APPARMOR_ATTR, LEGACY_ATTR):
        current = _read(attr, proc_fd)
        if current is not None:
            lsm = "apparmor" if attr == APPARMOR_ATTR or \
                not re.fullmatch(_SELINUX_CONTEXT, current.rstrip("\0\n")) else "selinux"
            value = worker_label(lsm, current)
            if value is not None:
                return Confinement(attr, value, proc_fd)
            break
    os.close(proc_fd)
    return None


def enter(confinement: Confinement | None) -> None:
    """In the child, after the jail, before anything else: take the worker's
    label and let go of ``/proc``.  A refusal other than "not loaded" ends
    the child: it does not run with more than the policy meant to give it."""
    if confinement is None:
        return
    try:
        fd = os.open(confinement.attr, os.O_WRONLY | os.O_CLOEXEC, dir_fd=confinement.proc_fd)
        try:
            os.write(fd, confinement.value)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in _NOT_LOADED:
            os.write(2, f"passt-sep: cannot confine the worker ({confinement.value.decode()}): "
                        f"{exc.strerror}\n".encode())
            os._exit(1)
    finally:
        os.close(confinement.proc_fd)


def release(confinement: Confinement | None) -> None:
    """In the process that prepared it, once the child has its copy."""
    if confinement is not None:
        os.close(confinement.proc_fd)


def _read(attr: str, proc_fd: int) -> str | None:
    """The attribute's text, or None where no LSM provides it (EINVAL) or
    the kernel lacks the file."""
    try:
        fd = os.open(attr, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)
