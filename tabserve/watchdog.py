"""Stop a TorchServe when the process that owns it dies, even by SIGKILL.

`python -m tabserve.watchdog OWNER_PID LAUNCHER_PID` polls both: when the owner is gone it
stops the launcher's whole tree; when the launcher is gone it exits. The batch scorer starts
one beside its embedded server, so a killed job never leaves Java or workers behind.
"""

from __future__ import annotations

import sys
import time

import psutil

from .server import stop_tree


def watch(owner: int, launcher: int, interval: float = 0.5) -> None:
    while psutil.pid_exists(launcher):
        try:
            alive = psutil.Process(owner).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            stop_tree(launcher, timeout=10.0)
            return
        time.sleep(interval)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
