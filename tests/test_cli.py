"""End to end from the CLI on the tiny model: search, runs, show, export, determinism,
resume after a kill, and Ray agreeing with the in-process runner."""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from presso.cli import main
from presso.store import ResultsStore

from .conftest import tiny_experiment


def _records(store: Path, run: str) -> list[tuple]:
    s = ResultsStore(str(store))
    recs = s.records(s.open(run))
    return sorted((r.phase, r.step, r.index, tuple(r.levels), r.fitness) for r in recs)


def _summary(store: Path, run: str) -> dict:
    s = ResultsStore(str(store))
    return s.open(run).user_attrs["summary"]


def test_search_show_runs_export(
    write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_experiment(tiny_experiment())
    store = str(tmp_path / "runs.db")
    assert main(["search", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "baseline:uniform" in out and "search vs uniform" in out

    assert main(["runs", "--store", store]) == 0
    assert "tiny" in capsys.readouterr().out
    assert main(["show", "tiny", "--store", store]) == 0
    shown = capsys.readouterr().out
    assert "per-layer bits" in shown and "gate_p" in shown

    plan_path = tmp_path / "plan.json"
    assert main(["export", "tiny", "--store", store, "--out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["presso_plan"] == 1 and len(plan["units"]) == 28
    assert plan["mean_bits"] <= 3.0
    bits = [u["bits"] for u in plan["units"].values()]
    assert set(bits) <= {2, 3, 4, 8}
    # never silently overwritten
    assert main(["export", "tiny", "--store", store, "--out", str(plan_path)]) == 2
    assert "exists" in capsys.readouterr().err
    yaml_path = tmp_path / "plan.yaml"
    assert main(["export", "tiny", "--store", store, "--out", str(yaml_path)]) == 0
    capsys.readouterr()
    assert yaml.safe_load(yaml_path.read_text()) == plan
    assert main(["export", "tiny", "--store", store, "--format", "evopress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 28 and lines[0].startswith("model.layers.0.self_attn.q_proj: ")
    assert [int(line.split(": ")[1]) for line in lines] == bits

    # the same name again is refused, not overwritten
    assert main(["search", str(path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["show", "nope", "--store", store]) == 2


def test_same_seed_same_run(write_experiment, tmp_path: Path) -> None:
    path = write_experiment(tiny_experiment())
    assert main(["search", str(path), "--quiet"]) == 0
    assert main(["search", str(path), "--quiet", "--name", "again"]) == 0
    store = tmp_path / "runs.db"
    assert _records(store, "tiny") == _records(store, "again")
    other = write_experiment(tiny_experiment(name="seed1", search={"seed": 1}), "seed1.yaml")
    assert main(["search", str(other), "--quiet"]) == 0
    assert _records(store, "seed1") != _records(store, "tiny")


def test_resume_after_kill_reevaluates_nothing(write_experiment, tmp_path: Path) -> None:
    exp = tiny_experiment(
        search={"options": {"generations": 6, "offspring": 4, "stages": [[128, 2], [256, 1]]}}
    )
    path = write_experiment(exp)
    store = tmp_path / "runs.db"
    env = {**os.environ}
    cmd = [sys.executable, "-m", "presso.cli", "search", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600  # generous: a loaded machine is slow to start the model
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if store.exists():
            try:
                stored = len(_records(store, "tiny"))
            except Exception:
                continue
            if stored >= 12:
                break
    assert proc.poll() is None, proc.stderr.read().decode()  # still running: kill it mid-search
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _records(store, "tiny")
    assert 12 <= len(before) < 6 * 7

    assert main(["search", str(path), "--quiet", "--resume"]) == 0
    after = _records(store, "tiny")
    assert set(before) <= set(after)
    keys = [r[:3] for r in after]
    assert len(keys) == len(set(keys))  # nothing evaluated twice

    # identical to an uninterrupted run
    assert main(["search", str(path), "--quiet", "--name", "straight"]) == 0
    assert after == _records(store, "straight")
    assert _summary(store, "tiny")["candidates"] == _summary(store, "straight")["candidates"]


def test_resume_refuses_a_changed_experiment(write_experiment, tmp_path: Path, capsys) -> None:
    path = write_experiment(tiny_experiment(search={"options": {"generations": 1}}))
    assert main(["search", str(path), "--quiet"]) == 0
    path.write_text(path.read_text().replace("mean_bits: 3.0", "mean_bits: 3.5"))
    assert main(["search", str(path), "--quiet", "--resume"]) == 2
    assert "different 'space' section" in capsys.readouterr().err


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # a port the OS just handed out, and nothing listens on now
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_ray_cluster_is_said_at_once(write_experiment, tmp_path: Path, capsys) -> None:
    port = _closed_port()
    path = write_experiment(
        tiny_experiment(runner={"kind": "ray", "workers": 2, "address": f"127.0.0.1:{port}"})
    )
    start = time.perf_counter()
    assert main(["search", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"runner.address: no Ray cluster answers at '127.0.0.1:{port}'" in err
    assert time.perf_counter() - start < 60  # Ray alone waited minutes for such an address
    assert ResultsStore(str(tmp_path / "runs.db")).runs() == []  # fix it, start again, no --resume


@pytest.mark.parametrize(
    ("overrides", "package", "extra"),
    [
        ({"runner": {"kind": "ray", "workers": 2}}, "ray", "ray"),
        ({"hardware": {"backend": "onnxruntime"}}, "onnxruntime", "onnx"),
        ({"hardware": {"backend": "tvm"}}, "tvm", "tvm"),
        ({"hardware": {"backend": "torch", "cost_model": "learned"}}, "scikit-learn", "cost"),
        ({"baselines": ["uniform", "gp"]}, "scipy", "bayes"),
    ],
)
def test_a_missing_extra_is_said_before_any_work(
    write_experiment, tmp_path: Path, capsys, monkeypatch, overrides, package, extra
) -> None:
    import importlib.util

    from presso.experiment import Setup

    find_spec = importlib.util.find_spec
    gone = {"scikit-learn": "sklearn"}.get(package, package)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == gone else find_spec(name, *a)
    )

    def prepare(*args, **kwargs):
        raise AssertionError("the model was prepared before the missing extra was said")

    monkeypatch.setattr(Setup, "prepare", prepare)
    assert main(["search", str(write_experiment(tiny_experiment(**overrides))), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'{package}' package" in err
    assert f"pip install 'presso[{extra}]'" in err
    assert not (tmp_path / "runs.db").exists()


def test_dashboard_takes_store_as_every_command_does(monkeypatch) -> None:
    from presso.dashboards import _server

    served = []
    monkeypatch.setattr(_server, "serve", lambda stores, **kw: served.append(stores) or 0)
    assert main(["dashboard", "--store", "a.db"]) == 0
    assert main(["dashboard", "b.db", "--store", "a.db", "--store", "c.db"]) == 0
    assert main(["dashboard"]) == 0
    assert served == [["a.db"], ["b.db", "a.db", "c.db"], ["runs/presso.db"]]


def test_ray_address_check() -> None:
    import socket

    from presso.errors import PressoError
    from presso.search._runner import check_address

    for fine in (None, "", "auto"):
        check_address(fine)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_address(f"127.0.0.1:{port}")
        check_address(f"ray://127.0.0.1:{port}")
    with pytest.raises(PressoError, match="is not a Ray address; give host:port"):
        check_address("my-head-node")
    with pytest.raises(PressoError, match="no Ray cluster answers"):
        check_address(f"127.0.0.1:{_closed_port()}")


#: Starts presso's local Ray instance (in a fresh process: this one may hold the session's)
#: and prints the addresses its processes listen on.
_LISTENING = """
import ray
import psutil
from presso.search import RayPool

pool = RayPool(dict, workers=1)  # the actor holds the one CPU: the task below asks none
ray.get(ray.remote(num_cpus=0)(lambda: 1).remote())
procs = psutil.Process().children(recursive=True)
print(sorted({c.laddr.ip for p in procs for c in p.net_connections("tcp") if c.status == "LISTEN"}))
ray.shutdown()
"""


def test_local_ray_instance_listens_on_loopback_only() -> None:
    pytest.importorskip("ray")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    out = subprocess.run(
        [sys.executable, "-c", _LISTENING], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ips = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert ips and all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip in ips)


def test_ray_runner_agrees_with_in_process(write_experiment, tmp_path: Path, ray_session) -> None:
    local = write_experiment(tiny_experiment(name="local"), "local.yaml")
    on_ray = write_experiment(
        tiny_experiment(name="ray", runner={"kind": "ray", "workers": 2, "threads": 1}), "ray.yaml"
    )
    assert main(["search", str(local), "--quiet"]) == 0
    assert main(["search", str(on_ray), "--quiet"]) == 0
    store = tmp_path / "runs.db"
    assert _records(store, "local") == _records(store, "ray")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "r", "--threads", "0"], "--threads must be 1 or more, got 0"),
        (["generate", "r", "--max-new-tokens", "0"], "--max-new-tokens must be 1 or more"),
        (["generate", "r", "--trials", "-1"], "--trials must be 0 or more, got -1"),
        (["profile", "tiny-llama", "--backend", "torch", "--repeats", "0"], "--repeats must be 1"),
        (["profile", "tiny-llama", "--backend", "torch", "--threads", "-2"], "--threads must be 1"),
        (["profile", "tiny-llama", "--backend", "torch", "--group-size", "-32"], "--group-size"),
        (["profile", "tiny-llama", "--backend", "torch", "--max-dropped", "-1"], "--max-dropped"),
        (["profile", "tiny-llama", "--backend", "torch", "--bits", "4", "1"], "got [1]"),
        (["profile", "tiny-llama", "--backend", "torch", "--sparsity", "150"], "0..99, got [150]"),
    ],
)
def test_counts_out_of_range_are_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    store, db = tmp_path / "runs.db", tmp_path / "profiles.sqlite"
    extra = ["--store", str(store)] if argv[0] == "generate" else ["--db", str(db)]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("presso: ") and message in err and "Traceback" not in err
    assert not store.exists() and not db.exists()  # refused before anything was opened
