"""The ONNX Runtime profiler: real ORT kernels timed (dense MatMul, MatMulNBits at 2/4/8 bits
and carried widths), failures returned as data, whole candidates timed for prefill and decode."""

from __future__ import annotations

import pytest

from presso.models import load_model
from presso.plan import Plan
from presso.profilers import LinearOp, Workload, available, levels_plan, make_profiler

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

PREFILL = Workload(batch=1, seq_len=8)
DECODE = Workload(batch=2, seq_len=16, phase="decode")


@pytest.fixture(scope="module")
def profiler():
    return make_profiler("onnxruntime", warmup=1, repeats=3)


def test_registered() -> None:
    assert "onnxruntime" in available()


def test_cuda_without_a_cuda_provider_fails_when_made() -> None:
    import onnxruntime as ort

    from presso.errors import PressoError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    # Checked when the profiler is made, before any model is loaded or graph built.
    with pytest.raises(PressoError, match="no CUDA execution provider.*--device cpu"):
        make_profiler("onnxruntime", device="cuda")


@pytest.mark.parametrize(
    ("bits", "sparsity", "kernel", "carrier"),
    [(16, 0, "dense", None), (4, 0, "MatMulNBits", 4), (8, 0, "MatMulNBits", 8),
     (2, 0, "MatMulNBits", 2), (3, 0, "MatMulNBits", 4), (16, 50, "dense", None),
     (4, 50, "MatMulNBits", 4)],
)  # fmt: skip
def test_ops_measure(profiler, bits: int, sparsity: int, kernel: str, carrier: int | None) -> None:
    op = LinearOp(64, 128, bits=bits, sparsity=sparsity, group_size=32)
    m = profiler.measure(op, PREFILL)
    assert m.ok, m.error
    assert m.median_ms > 0 and m.repeats == 3 and m.backend == "onnxruntime"
    assert m.detail["kernel"] == kernel
    assert m.detail.get("carrier_bits") == carrier
    assert m.detail.get("sparsity_exploited", True) is (sparsity == 0)


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (LinearOp(64, 96, bits=4, group_size=24), "powers of two >= 16"),
        (LinearOp(64, 100, bits=4, group_size=32), "does not divide"),
        (LinearOp(64, 128, bits=12), "bits must be 2..8"),
    ],
)
def test_impossible_levels_are_failed_measurements(profiler, op: LinearOp, message: str) -> None:
    m = profiler.measure(op, PREFILL)
    assert not m.ok and m.median_ms is None
    assert message in m.error


@pytest.mark.parametrize("workload", [PREFILL, DECODE], ids=["prefill", "decode"])
def test_model_prefill_and_decode(profiler, workload: Workload) -> None:
    handle = load_model("tiny-llama")
    names = handle.unit_names
    units = {n: ((3, 4, 8)[i % 3], 0) for i, n in enumerate(names)}
    assignment = levels_plan(units=units, dropped=("model.layers.2",), group_size=32)
    m = profiler.measure_model(handle, assignment, workload)
    assert m.ok, m.error
    assert m.op == "model" and m.workload == workload.key
    assert m.detail["dropped"] == ["model.layers.2"]
    assert set(m.detail["carried"].values()) == {4}  # the 3-bit units
    assert m.detail["build_s"] > 0


def test_model_failure_is_data(profiler) -> None:
    handle = load_model("tiny-bert")  # a BERT graph has no attention sublayer to leave out
    m = profiler.measure_model(handle, levels_plan(dropped=("encoder.layer.0.self_attn",)), PREFILL)
    assert not m.ok and "dropped whole" in m.error
    assert profiler.measure_model(handle, levels_plan(), PREFILL).ok  # an encoder is timed


@pytest.fixture
def built(monkeypatch) -> list:
    """The paths ONNX graphs are built at, in order (the real build_onnx runs)."""
    import presso.onnx_model

    real, paths = presso.onnx_model.build_onnx, []

    def counting(handle, assignment, path, **kw):  # noqa: ANN001, ANN003
        paths.append(path)
        return real(handle, assignment, path, **kw)

    monkeypatch.setattr(presso.onnx_model, "build_onnx", counting)
    return paths


def _two_candidates(handle) -> tuple[Plan, Plan]:  # noqa: ANN001
    a = levels_plan(units={n: (4, 0) for n in handle.unit_names}, group_size=32)
    return a, levels_plan(
        units={n: (4, 0) for n in handle.unit_names}, dropped=("model.layers.1",), group_size=32
    )


def test_kept_builds_are_reused_within_the_block(profiler, built: list) -> None:
    handle = load_model("tiny-llama")
    a, b = _two_candidates(handle)
    with profiler.keeping_builds():
        first = [profiler.measure_model(handle, x, w) for x in (a, b) for w in (PREFILL, DECODE)]
        again = [profiler.measure_model(handle, x, w) for x in (a, b) for w in (PREFILL, DECODE)]
        folder = built[0].parent
        assert len(built) == 4 and len(set(built)) == 4  # one graph per assignment and phase
        assert all(p.exists() for p in built)
    assert all(m.ok for m in first + again)
    # A reused graph reports the build time of the graph it runs.
    assert [m.detail["build_s"] for m in again] == [m.detail["build_s"] for m in first]
    assert not folder.exists()  # kept graphs go with the block
    profiler.measure_model(handle, a, PREFILL)
    profiler.measure_model(handle, a, PREFILL)
    assert len(built) == 6  # outside the block every call builds its own


def test_kept_builds_stay_within_their_disk_budget(profiler, built: list, monkeypatch) -> None:
    from presso.profilers import _onnxruntime

    handle = load_model("tiny-llama")
    a, b = _two_candidates(handle)
    with profiler.keeping_builds():
        profiler.measure_model(handle, a, PREFILL)
        size = sum(f.stat().st_size for f in built[-1].parent.iterdir())  # one graph (b's alike)
    # Room for one graph of this size: the first is kept, the second is built every time.
    monkeypatch.setattr(_onnxruntime, "KEPT_BYTES", size + size // 2)
    built.clear()
    with profiler.keeping_builds():
        for _ in range(3):
            assert profiler.measure_model(handle, a, PREFILL).ok
            assert profiler.measure_model(handle, b, PREFILL).ok
    assert len(built) == 1 + 3


@pytest.mark.parametrize("group", [16, None])
def test_weight_copies_are_the_same_values_in_other_places(group: int | None) -> None:
    import torch

    from presso.profilers._onnxruntime import _rolled
    from presso.profilers._torch import quantized_level

    q = quantized_level(torch.randn(6, 64), 4, 0, group)
    width = 16 if group else 1
    seen = set()
    for i in range(6 * (64 // width if group else 64)):
        c = _rolled(q, i)
        # Every code keeps its own grid: the copy is the dequantized weight, rolled.
        shift = (i % 6, (i // 6) * width)
        assert torch.equal(c.dequantize(), torch.roll(q.dequantize(), shift, (0, 1)))
        seen.add(c.codes.numpy().tobytes())
    assert len(seen) == i + 1  # all distinct (ORT would share equal weights)
    dense = torch.randn(6, 64)
    assert torch.equal(_rolled(dense, 7), torch.roll(dense, (1, 1), (0, 1)))


def test_kept_builds_left_by_a_killed_process_are_swept(profiler) -> None:
    import os
    import subprocess
    import sys

    from presso.paths import cache_dir

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = cache_dir() / f"ort-builds-{int(gone.stdout)}-abc"
    alive = cache_dir() / f"ort-builds-{os.getppid()}-def"  # this test's parent: running
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "x.onnx").write_bytes(b"0" * 1024)
    with profiler.keeping_builds():
        assert profiler._kept.name.startswith(f"ort-builds-{os.getpid()}-")
    assert not stale.exists() and alive.exists()
