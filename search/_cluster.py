"""A two-node Ray cluster on this machine, to try ``runner: {kind: ray, address: ...}`` (and to
test and benchmark it) without a second machine: a head node with no CPUs for work and a worker
node with ``cpus``, each its own process group, temp dir and presso cache, so the nodes share
nothing through presso's cache path, as machines of a real cluster would not."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from presso.errors import MissingExtraError


def ray_command() -> str:
    """The ``ray`` command of this environment (MissingExtraError where ray is not installed)."""
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    if not Path(ray_bin).exists():
        raise MissingExtraError("ray", "ray", "a local Ray cluster")
    return ray_bin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the Ray head node exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray head node does not listen on {port}")


@contextlib.contextmanager
def two_node_cluster(caches: tuple[Path, Path], cpus: int = 2) -> Iterator[str]:
    """Start the cluster (``caches``: the head's and the worker node's presso cache); yields
    its address. Only these nodes are stopped afterwards: never `ray stop`, which would stop
    every Ray instance on the machine."""
    ray_bin = ray_command()
    port = _free_port()
    # Ray's socket paths must stay short: temp dirs directly under /tmp.
    temps = [Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in ("rh", "rn")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    # Set by a local Ray instance presso started earlier in this process: it keeps Ray to one
    # node, so a worker node inheriting it would never join the cluster.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    address = f"127.0.0.1:{port}"
    common = ["start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    nodes = [
        [ray_bin, *common, "--head", f"--port={port}", "--num-cpus=0"]
        + ["--include-dashboard=false", f"--temp-dir={temps[0]}"],
        [ray_bin, *common, f"--address={address}", f"--num-cpus={cpus}"]
        + [f"--temp-dir={temps[1]}"],
    ]
    procs: list[subprocess.Popen] = []
    try:
        for argv, cache in zip(nodes, caches):
            procs.append(
                subprocess.Popen(
                    argv,
                    env={**env, "PRESSO_CACHE": str(cache)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            if len(procs) == 1:  # the head listens before the worker node joins
                _wait_for_port(port, procs[0])
        yield address
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for d in temps:
            shutil.rmtree(d, ignore_errors=True)
