"""Start the worker and hand it everything: the broker's last act.

The worker is forked from the jailed broker, so it starts inside the jail
(empty root, no capabilities, its own PID namespace as PID 1).  Right after
the fork it closes every fd except its end of the handoff socket, then
receives the manifest and the fds through SCM_RIGHTS (``passt_sep.handoff``).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py's enums cost 1 ms of start-up
import os
import socket

import prctl

from ..config import Config, Mode
from ..handoff import READY, FdEntry, WorkerConfig
from ..netparams import Network
from ..system import handoff_io
from ..system.handoff_io import WorkerStartError
from ..system.sandbox import Prepared
from ..worker import main as worker_main
from . import mac


def start_worker(config: Config, network: Network, entries: list[FdEntry],
                 sandbox: Prepared, tied: bool = False,
                 confinement: mac.Confinement | None = None,
                 host_tcp_listening: list[int] | None = None) -> int:
    """Fork the worker, hand everything over, wait until it serves; its pid.

    ``tied``: this process stays for the worker's lifetime (foreground,
    pasta's command mode), and whatever ends it, SIGKILL included, ends
    the worker too (SIGTERM as the parent-death signal).  If this process
    died before the child asked for that, the handoff never arrives and
    the child exits on its end of file.  ``confinement``: the worker's own
    AppArmor profile or SELinux domain, entered first thing in the child.
    ``host_tcp_listening``: what the worker's first scan of the host's TCP
    listeners sees (``WorkerConfig.host_tcp_listening``).
    """
    broker_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        broker_end.close()
        mac.enter(confinement)                # its own profile or domain, first
        if tied:
            prctl.set_pdeathsig(signal.SIGTERM)
        prog = "pasta-sep" if config.mode == Mode.PASTA else "passt-sep"
        worker_main.run(worker_end, sandbox, prog)  # never returns
    mac.release(confinement)
    worker_end.close()
    try:
        handoff_io.send(broker_end, WorkerConfig.from_config(config, host_tcp_listening),
                        network, entries)
        for entry in entries:
            os.close(entry.fd)
        answer = broker_end.recv(1)
    except OSError as exc:
        answer = b""
        reason = exc.strerror
    else:
        reason = "it exited during start-up"
    finally:
        broker_end.close()
    if answer != READY:
        status = _reap(pid)
        raise WorkerStartError(f"the worker did not start: {reason} (status {status})")
    return pid


def _reap(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status)
