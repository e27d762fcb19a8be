"""The jail the broker closes around itself before it forks the worker.

Stages, named as passt's isolation.c names them:

* initial: nothing to do in Python beyond what the kernel gives us;
* user namespace: done by ``namespaces.create_user_namespace`` (rootless) or
  by joining the target's (``enter_user_namespace``); real root joining a
  user namespace switches to an unprivileged uid first (``become``), as a
  uid keeps its host value inside any user namespace;
* pre-fork (``close``): new mount, IPC and UTS namespaces, and a new PID
  namespace for the children to come (the worker is its PID 1); root
  ``pivot_root``ed into an empty read-only tmpfs with the old root detached;
  every capability dropped from the bounding, ambient, inheritable,
  permitted and effective sets (``CAP_NET_BIND_SERVICE`` kept on request);
  switch to an unprivileged uid when running as real root; no_new_privs;
  not dumpable;
* post-fork: the worker arms seccomp itself (``worker/sandbox.py``).

Everything the processes will ever need must be imported and opened before
``close`` runs: there is no filesystem afterwards.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from dataclasses import dataclass

import prctl

from ..system import linux

JAIL_MOUNT_POINT = "/tmp"
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
NOBODY = "nobody"

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(Exception):
    """The jail could not be closed; we refuse to run without it."""


@dataclass(frozen=True)
class Identity:
    """A uid and gid to run as."""

    uid: int
    gid: int


def resolve_runas(runas: str | None, real_root: bool) -> Identity | None:
    """The uid/gid to switch to: ``--runas``, else ``nobody`` for real root.

    Real root may not name root's uid or gid: whatever it asks for, the
    worker and the ns socket source never run as host uid or gid 0.
    """
    if runas is None:
        if not real_root:
            return None
        runas = NOBODY
    identity = _lookup(runas)
    if real_root and 0 in (identity.uid, identity.gid):
        raise JailError(f"--runas {runas}: the worker never runs as root's uid or gid (0): "
                        "name an unprivileged user")
    return identity


def owner_identity(uid: int) -> Identity:
    """Who to be to join a user namespace that ``uid`` owns: ``uid``, with
    its login group (or a group of the same number), never root's group."""
    try:
        gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        gid = uid
    return Identity(uid, gid or _lookup(NOBODY).gid)


def _lookup(runas: str) -> Identity:
    user, _, group = runas.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise JailError(f"--runas: unknown user {user!r}") from None
        uid = gid = int(user)
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise JailError(f"--runas: unknown group {group!r}") from None
    return Identity(uid, gid)


def close(identity: Identity | None, keep_net_bind: bool = False) -> None:
    """Close the jail around this process (pre-fork stage)."""
    try:
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
                      | linux.CLONE_NEWPID)
        _empty_root()
        _drop_privileges(identity, keep_net_bind)
    except OSError as exc:
        raise JailError(f"cannot set up the sandbox: {exc}") from None


def _empty_root() -> None:
    linux.mount("", "/", "", linux.MS_PRIVATE | linux.MS_REC)
    linux.mount("tmpfs", JAIL_MOUNT_POINT, "tmpfs",
                linux.MS_NODEV | linux.MS_NOEXEC | linux.MS_NOSUID | linux.MS_RDONLY,
                "nr_inodes=2,size=0")
    os.chdir(JAIL_MOUNT_POINT)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")


def become(identity: Identity) -> None:
    """Switch every uid and gid to ``identity``, with no supplementary
    groups.  From root, this also empties the permitted capabilities
    (unless ``keep_caps`` is set)."""
    os.setgroups([])
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)


def _drop_privileges(identity: Identity | None, keep_net_bind: bool) -> None:
    """Every capability gone from every set but ``CAP_NET_BIND_SERVICE``
    when kept (in the bounding, permitted and effective sets); no new
    privileges; not dumpable."""
    kept = (prctl.CAP_NET_BIND_SERVICE,) if keep_net_bind else ()
    prctl.capbset.limit(*kept)
    if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "clearing ambient capabilities")
    if identity is not None:
        if kept:
            prctl.securebits.keep_caps = True
        become(identity)
    prctl.cap_inheritable.limit()
    prctl.cap_effective.limit(*kept)  # effective must stay within permitted
    prctl.cap_permitted.limit(*kept)
    if kept:                          # a uid change cleared it from effective
        prctl.cap_effective.net_bind_service = True
    prctl.set_no_new_privs(1)
    prctl.set_dumpable(False)
