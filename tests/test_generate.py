"""`presso generate`: a run's candidate assembled on a backend generates text, with tokens/s."""

from __future__ import annotations

import pytest

from presso.cli import main
from tests.conftest import tiny_experiment


@pytest.fixture(scope="module")
def run_store(tmp_path_factory, presso_cache):  # noqa: ANN001, ANN201
    import os

    import yaml

    os.environ["PRESSO_CACHE"] = str(presso_cache)
    folder = tmp_path_factory.mktemp("generate")
    exp = tiny_experiment(space={"mean_bits": 3.5, "dropped": 1, "kind": "joint"})
    exp["search"]["options"] = {"generations": 1, "offspring": 2, "stages": [[128, 1]]}
    exp["store"] = str(folder / "runs.db")
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    assert main(["search", str(path), "--quiet"]) == 0
    return exp["store"]


def _greedy_reference(store: str, prompt: str, n: int) -> str:
    """presso's own model of the candidate (exact weights, dropped block skipped), greedy."""
    import torch

    from presso.export import Source
    from presso.store import ResultsStore

    attrs = ResultsStore(store).open("tiny").user_attrs
    evaluator = Source(attrs, "search").evaluator()
    handle = evaluator.handle
    ids = handle.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(n):
            logits = handle.model(input_ids=ids, use_cache=False).logits[0, -1]
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return handle.tokenizer.decode(ids[0, -n:], skip_special_tokens=True)


def _generate_args(store: str, prompt: str, n: int) -> list[str]:
    """``presso generate`` of run "tiny" in ``store``: ``n`` new tokens after ``prompt``."""
    return ["generate", "tiny", "--store", store, "--prompt", prompt, "--max-new-tokens", str(n)]


def test_generate_on_onnxruntime_matches_presso(run_store, capsys) -> None:  # noqa: ANN001
    args = _generate_args(run_store, "def main", 6)
    assert main(args + ["--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "on onnxruntime" in out
    expected = _greedy_reference(run_store, "def main", 6)
    assert out.splitlines()[0] == "def main" + expected


def test_generate_on_torch_kernels(run_store, capsys) -> None:  # noqa: ANN001
    args = _generate_args(run_store, "def main", 4)
    assert main(args + ["--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "on torch" in out and "decode 4 tokens at" in out
    assert main(args + ["--backend", "nope"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert main(args + ["--candidate", "baseline:nope"]) == 2


def test_generate_on_tvm_kernels_matches_presso(run_store, capsys) -> None:  # noqa: ANN001
    pytest.importorskip("tvm")
    prompt = "def main(args"  # a prompt length that is no power of two: rows are padded
    args = _generate_args(run_store, prompt, 4)
    # --trials 0: untuned kernels, correct and quick to build (a test cannot wait for tuning).
    assert main(args + ["--backend", "tvm", "--trials", "0"]) == 0
    out = capsys.readouterr().out
    assert "on tvm" in out and "decode 4 tokens at" in out
    assert out.splitlines()[0] == prompt + _greedy_reference(run_store, prompt, 4)
    assert main(args + ["--backend", "tvm", "--trials", "-1"]) == 2
    assert "--trials must be 0 or more" in capsys.readouterr().err


def test_unknown_backend_fails_before_the_model_loads() -> None:
    from presso.errors import PressoError
    from presso.generate import generate

    class Unloadable:
        @property
        def handle(self):  # noqa: ANN202
            raise AssertionError("the model was loaded before the backend name was checked")

    from presso.plan import Plan

    units = {"layers.0.mlp": {"bits": 4, "group_size": 32}}
    plan = Plan.from_dict({"presso_plan": 1, "units": units, "dropped": []})
    with pytest.raises(PressoError, match="unknown backend 'nope'"):
        generate(Unloadable(), plan, "nope", "hello")


def test_generate_on_triton_needs_cuda_or_the_interpreter(run_store, capsys) -> None:  # noqa: ANN001
    import os

    import torch

    pytest.importorskip("triton")
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("a GPU or the interpreter is here")
    args = _generate_args(run_store, "def main", 2)
    assert main(args + ["--backend", "triton"]) == 2  # --device cpu by default
    err = capsys.readouterr().err.strip()
    assert "--device cuda" in err and len(err.splitlines()) == 1
    assert main(args + ["--backend", "triton", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a CUDA GPU" in err and len(err.splitlines()) == 1


def test_generate_on_triton_under_the_interpreter_matches_presso(run_store) -> None:  # noqa: ANN001
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    prompt = "def main(args"
    args = _generate_args(run_store, prompt, 4) + ["--backend", "triton", "--device", "cpu"]
    code = "import sys; from presso.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on triton" in done.stdout
    # fp16 activations into the packed kernel: on this tiny model the greedy tokens still agree.
    assert done.stdout.splitlines()[0] == prompt + _greedy_reference(run_store, prompt, 4)
