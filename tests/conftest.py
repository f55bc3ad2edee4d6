"""Shared fixtures: a session-wide presso cache (levels are built once per test session),
tiny experiments written to temporary folders, and one Ray instance for the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def presso_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("presso-cache")


@pytest.fixture(autouse=True)
def _cache_env(presso_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never touch the user's cache.
    monkeypatch.setenv("PRESSO_CACHE", str(presso_cache))


def tiny_experiment(**overrides: object) -> dict:
    """A seconds-long experiment on the tiny random Llama."""
    exp = {
        "name": "tiny",
        "model": "tiny-llama",
        "data": {"corpus": "pydoc", "seq_len": 64, "calibration": 8, "evaluation": 4},
        "compress": {"operator": "rtn", "levels": [2, 3, 4, 8], "group_size": 32, "calibration": 4},
        "space": {"mean_bits": 3.0},
        "search": {
            "strategy": "evopress",
            "seed": 0,
            "options": {"generations": 3, "offspring": 4, "stages": [[128, 2], [256, 1]]},
        },
        "baselines": ["uniform"],
        "runner": {"kind": "local", "threads": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(exp.get(key), dict):
            exp[key] = {**exp[key], **value}  # type: ignore[dict-item]
        else:
            exp[key] = value
    return exp


@pytest.fixture
def write_experiment(tmp_path: Path):
    def write(exp: dict, name: str = "exp.yaml") -> Path:
        exp = {"store": str(tmp_path / "runs.db"), **exp}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False
    )
    yield ray
    ray.shutdown()
