"""A throwaway PostgreSQL server on this machine: a fresh cluster from Debian's `postgresql`
package on 127.0.0.1, trusting local connections, removed when done. What the store's tests
and the load benchmark run PostgreSQL against (never a server of the user's)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def unavailable() -> str | None:
    """Why no throwaway cluster can start here (None: it can), with what to install."""
    import importlib.util

    if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
        return "no PostgreSQL server binaries: apt-get install postgresql (see .ci/install)"
    if importlib.util.find_spec("psycopg") is None:
        return "no PostgreSQL driver: pip install 'presso[postgres]'"
    if os.geteuid() == 0 and (
        shutil.which("runuser") is None
        or subprocess.run(["id", "postgres"], capture_output=True).returncode
    ):
        return "running as root without a `postgres` user to own the cluster"
    return None


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a fresh cluster; yields its base URL (no database name: see ``new_database``).
    Stopped and deleted afterwards. Check ``unavailable()`` first."""
    if why := unavailable():
        raise RuntimeError(why)
    initdb, pg_ctl = str(_pg_bin("initdb")), str(_pg_bin("pg_ctl"))
    # PostgreSQL refuses to run as root: the cluster then belongs to the package's own user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="presso-pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    try:
        run(initdb, "-D", str(data), "-U", "presso", "--auth=trust", "-E", "UTF8")
        # -F: no fsync, a throwaway cluster needs no durability.
        options = f"-k {folder} -p {port} -c listen_addresses=127.0.0.1 -F"
        run(pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start")
        yield f"postgresql://presso@127.0.0.1:{port}"
    finally:
        if data.exists():
            subprocess.run(
                [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server: str, name: str) -> str:
    """Create database ``name`` on the cluster at ``server``; returns its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
