"""The diffusion slice: the built-in DDPM (trained tiny), DDIM sampling over a schedule, FID,
the steps kind's checks, and the time-step search from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torchmetrics")

import torch  # noqa: E402

from presso.cli import main  # noqa: E402
from presso.errors import PressoError  # noqa: E402

TINY = "tiny-ddpm"


def tiny_steps_experiment(**overrides: object) -> dict:
    """A seconds-long time-step search on the tiny DDPM."""
    exp = {
        "name": "steps",
        "model": TINY,
        "data": {"calibration": 24, "evaluation": 24},
        "schedule": {"candidates": 20},
        "space": {"kind": "steps", "steps": 3},
        "search": {
            "strategy": "autodiffusion",
            "options": {"generations": 2, "offspring": 3, "stages": [[8, 2], [24, 1]]},
        },
        "baselines": ["ddim", "dpm-solver"],
        "runner": {"kind": "local", "threads": 1},
    }
    for key, value in overrides.items():
        exp[key] = {**exp[key], **value} if isinstance(value, dict) else value  # type: ignore[dict-item]
    return exp


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from presso.diffusion._model import load_diffusion

    return load_diffusion(TINY, cache_root=tmp_path_factory.mktemp("ddpm-cache"))


def test_training_is_cached_and_reproducible(tiny, tmp_path: Path) -> None:
    from presso.diffusion._train import RECIPES, builtin_folder

    again = builtin_folder(TINY, tiny.folder.parents[1])  # the same content address: no training
    assert again == tiny.folder
    other = builtin_folder(TINY, tmp_path)  # trained anew elsewhere: the same weights
    name = "unet/diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    a, b = load_file(tiny.folder / name), load_file(other / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert RECIPES[TINY].key() in tiny.folder.name


def test_full_schedule_equals_diffusers_ddim_pipeline(tiny) -> None:
    from diffusers import DDIMPipeline

    from presso.diffusion._sample import sample, seeded_noise, trailing_grid

    pipe = DDIMPipeline(unet=tiny.unet, scheduler=tiny.scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.register_to_config(timestep_spacing="trailing")
    gen = torch.Generator().manual_seed(3)
    theirs = pipe(batch_size=4, generator=gen, num_inference_steps=10, output_type="np").images
    noise = seeded_noise(3, 4, tiny.shape)  # randn from the same seeded generator
    ours = sample(tiny.unet, tiny.scheduler_config, trailing_grid(tiny.train_steps, 10), noise)
    ours = ((ours / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    assert abs(ours - theirs).max() < 1e-5


def test_dpm_solver_is_diffusers_dpm_solver_at_the_same_steps(tiny) -> None:
    """The dpm-solver baseline's sampler is diffusers' own DPMSolverMultistepScheduler loop at
    the same number of steps (trailing spacing), on the same seeded noise; and deterministic."""
    from diffusers import DPMSolverMultistepScheduler

    from presso.diffusion._sample import sample, seeded_noise, trailing_grid

    noise = seeded_noise(5, 6, tiny.shape)
    theirs = DPMSolverMultistepScheduler.from_config(
        tiny.scheduler_config, timestep_spacing="trailing", thresholding=True, sample_max_value=1.0
    )
    theirs.set_timesteps(5)
    x = noise
    with torch.no_grad():
        for t in theirs.timesteps:
            x = theirs.step(tiny.unet(x, t).sample, t, x).prev_sample
    grid = trailing_grid(tiny.train_steps, 5)
    assert theirs.timesteps.tolist() == grid
    ours = sample(tiny.unet, tiny.scheduler_config, grid, noise, solver="dpm-solver")
    assert (ours - x).abs().max() < 1e-5
    again = sample(tiny.unet, tiny.scheduler_config, grid, noise, solver="dpm-solver")
    assert torch.equal(ours, again)
    batched = sample(
        tiny.unet, tiny.scheduler_config, grid, noise, solver="dpm-solver", batch_size=4
    )
    assert (ours - batched).abs().max() < 1e-5  # each batch starts the multistep solver afresh
    ddim = sample(tiny.unet, tiny.scheduler_config, grid, noise)
    assert (ddim - ours).abs().max() > 1e-3  # a different solver, not DDIM renamed


def test_skipping_nothing_is_the_identity(tiny) -> None:
    from presso.diffusion._sample import sample, seeded_noise

    noise = seeded_noise(2, 4, tiny.shape)
    plain = sample(tiny.unet, tiny.scheduler_config, [999, 600, 300], noise)
    for skips in ({}, {1: [], 2: []}):
        again = sample(tiny.unet, tiny.scheduler_config, [999, 600, 300], noise, skips=skips)
        assert torch.equal(plain, again)
    skipped = sample(
        tiny.unet, tiny.scheduler_config, [999, 600, 300], noise, skips={2: ["mid_block"]}
    )
    assert (skipped - plain).abs().max() > 1e-4


def test_a_skipped_block_reuses_its_last_output(tiny) -> None:
    """Skipping every block at a step gives the UNet output of the step before (only the
    input and output convolutions lie outside the blocks, and the output one reads the last
    block's reused output); skipping one block gives something else again."""
    from presso.diffusion._pipeline import BlockReuse, unet_blocks

    blocks = list(unet_blocks(tiny.unet))
    assert blocks[0] == "down_blocks.0" and "mid_block" in blocks and blocks[-1].startswith("up_")
    x0, x1 = torch.randn(2, *tiny.shape), torch.randn(2, *tiny.shape)
    with torch.no_grad():
        full = tiny.unet(x1, torch.tensor(500)).sample
        reuse = BlockReuse(tiny.unet, {1: blocks, 2: ["mid_block"]})
        with reuse.step(0):
            e0 = tiny.unet(x0, torch.tensor(900)).sample
        with reuse.step(1):
            e1 = tiny.unet(x1, torch.tensor(500)).sample
        with reuse.step(2):
            e2 = tiny.unet(x1, torch.tensor(500)).sample
    assert torch.equal(e0, e1)
    assert (e2 - full).abs().max() > 1e-5 and (e2 - e1).abs().max() > 1e-5
    assert all("forward" not in b.__dict__ for b in unet_blocks(tiny.unet).values())  # restored
    with pytest.raises(ValueError, match="step 0 cannot skip"):
        BlockReuse(tiny.unet, {0: ["mid_block"]})
    with pytest.raises(ValueError, match="no such UNet blocks"):
        BlockReuse(tiny.unet, {1: ["up_blocks.9"]})


def test_a_schedule_must_descend(tiny) -> None:
    from presso.diffusion._sample import sample, seeded_noise

    with pytest.raises(ValueError, match="strictly descending"):
        sample(tiny.unet, tiny.scheduler_config, [10, 500], seeded_noise(0, 1, tiny.shape))


def test_fid_is_deterministic_and_near_zero_on_itself(tiny) -> None:
    from presso.diffusion._digits import load_digits
    from presso.diffusion._fid import FIDScorer
    from presso.diffusion._sample import sample, seeded_noise

    data = load_digits(tiny.size)
    scorer = FIDScorer(tiny.features, data.heldout)
    assert scorer(data.heldout)["fid"] < 1e-3
    noisy = scorer((data.heldout + 0.5 * torch.randn_like(data.heldout)).clamp(-1, 1))["fid"]
    assert noisy > 1.0

    def fid_of(schedule: list[int]) -> dict[str, float]:
        images = sample(tiny.unet, tiny.scheduler_config, schedule, seeded_noise(7, 32, tiny.shape))
        return scorer(images)

    assert fid_of([999, 600, 200]) == fid_of([999, 600, 200])


def test_kid_reads_standardised_features(tiny) -> None:
    """KID's cubic kernel assumes unit-scale features: on the classifier's standardised
    features it is ~0 for a set against itself, grows with noise, and stays of order one (on
    the raw features it reached the tens of thousands)."""
    from presso.diffusion._digits import load_digits
    from presso.diffusion._fid import FIDScorer

    data = load_digits(tiny.size)
    scorer = FIDScorer(tiny.features, data.heldout)
    with torch.no_grad():
        z = scorer._standardised(data.heldout)
    std = z.std(0)  # 1, or 0 for a feature constant on the real images (a dead ReLU)
    assert z.mean(0).abs().max() < 1e-4 and (((std - 1).abs() < 1e-3) | (std < 1e-6)).all()
    gen = torch.Generator().manual_seed(0)

    def noisy(sigma: float) -> torch.Tensor:
        noise = torch.randn(data.heldout.shape, generator=gen)
        return (data.heldout + sigma * noise).clamp(-1, 1)

    kids = [scorer(data.heldout)["kid"], scorer(noisy(0.3))["kid"], scorer(noisy(1.0))["kid"]]
    assert abs(kids[0]) < 0.1 and kids[0] < kids[1] < kids[2] < 50, kids


def test_diffusers_loads_without_torchao_noise() -> None:
    """Loading diffusers' models through presso prints nothing (torchao's import-time log
    lines are silenced at the import site), and leaves the loggers as they were."""
    import subprocess
    import sys

    code = (
        "import logging; from presso.diffusion import require; require(); import sys; "
        "assert 'diffusers.models.unets' in sys.modules; "
        "assert logging.getLogger('torchao').level == logging.NOTSET"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


def test_the_steps_kind_refuses_bad_config(write_experiment) -> None:
    from presso.config import load_experiment

    path = write_experiment(tiny_steps_experiment(space={"steps": 30}))
    with pytest.raises(PressoError, match=r"exp\.yaml:\d+: space\.steps: 30 steps, but .* 20"):
        load_experiment(path)
    path = write_experiment(tiny_steps_experiment(space={"kind": "steps", "steps": 0}))
    with pytest.raises(PressoError, match=r"exp\.yaml:\d+: space\.steps: .*greater than or equal"):
        load_experiment(path)
    path = write_experiment(tiny_steps_experiment(model="tiny-llama"))
    with pytest.raises(PressoError, match=r"exp\.yaml:\d+: space\.kind: kind: steps needs a diff"):
        load_experiment(path)
    path = write_experiment(tiny_steps_experiment(space={"kind": "bits", "mean_bits": 3}))
    with pytest.raises(PressoError, match=r"space\.kind: a diffusion model's space is kind: steps"):
        load_experiment(path)


def test_the_skips_kind_refuses_bad_config(write_experiment, capsys) -> None:
    from presso.config import load_experiment

    path = write_experiment({**tiny_steps_experiment(), "space": {"kind": "skips", "blocks": 10}})
    with pytest.raises(PressoError, match=r"space\.blocks: blocks are skipped per sampling step"):
        load_experiment(path)
    path = write_experiment(tiny_steps_experiment(space={"kind": "skips", "blocks": 10}))
    with pytest.raises(PressoError, match=r"space\.kind: .* or kind: joint with steps and blocks"):
        load_experiment(path)
    joint = {"kind": "joint", "steps": 3, "blocks": 15}  # 3 steps of 5 blocks: nothing to skip
    path = write_experiment(tiny_steps_experiment(space=joint))
    assert main(["search", str(path), "--quiet"]) == 2
    assert "space.blocks: 15, but the schedule's first step runs all 5" in capsys.readouterr().err


def test_candidates_must_divide_the_training_steps(write_experiment, capsys) -> None:
    path = write_experiment(tiny_steps_experiment(schedule={"candidates": 30}))
    assert main(["search", str(path), "--quiet"]) == 2
    assert "steps.candidates: 30 must divide the model's 1000" in capsys.readouterr().err


def test_uniform_schedule_is_trailing_ddim() -> None:
    from presso.diffusion._sample import trailing_grid, uniform_schedule

    grid = trailing_grid(1000, 100)
    assert uniform_schedule(grid, 4) == [999, 749, 499, 249]


def test_steps_search_from_the_cli(write_experiment, tmp_path: Path, capsys) -> None:
    from presso.store import ResultsStore

    path = write_experiment(tiny_steps_experiment())
    assert main(["search", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fid" in out and "baseline:ddim" in out
    summary = ResultsStore(str(tmp_path / "runs.db")).open("steps").user_attrs["summary"]
    ddim = summary["candidates"]["baseline:ddim"]
    assert ddim["steps"] == 3 and ddim["levels"][:-1].count(1) == 3
    assert ddim["levels"][-1] == 1  # the solver dimension: kept, DDIM
    dpm = summary["candidates"]["baseline:dpm-solver"]
    assert dpm["steps"] == 3 and dpm["levels"][:-1] == ddim["levels"][:-1]
    assert dpm["levels"][-1] == 0  # the same schedule, sampled by DPM-Solver
    assert dpm["heldout"]["fid"] != ddim["heldout"]["fid"]
    assert summary["candidates"]["search"]["steps"] <= 3
    assert {"fid", "kid"} <= set(summary["candidates"]["search"]["heldout"])
    assert main(["show", "steps", "--store", str(tmp_path / "runs.db")]) == 0
    assert "fid" in capsys.readouterr().out.lower()
    out = tmp_path / "plan.json"
    assert main(["export", "steps", "--store", str(tmp_path / "runs.db"), "--out", str(out)]) == 0


def test_a_missing_extra_names_it(monkeypatch) -> None:
    import importlib.util

    from presso.diffusion import require
    from presso.errors import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name)
    )
    with pytest.raises(MissingExtraError, match=r"pip install 'presso\[diffusion\]'"):
        require("model digits-ddpm")


def test_a_users_diffusers_folder_is_a_model(tiny, tmp_path: Path) -> None:
    from diffusers import DDPMScheduler

    from presso.diffusion import is_diffusion_model
    from presso.diffusion._model import load_diffusion

    folder = tmp_path / "my-ddpm"
    tiny.unet.save_pretrained(folder / "unet")
    DDPMScheduler.from_config(tiny.scheduler_config).save_pretrained(folder / "scheduler")
    assert is_diffusion_model(str(folder)) and not is_diffusion_model(str(tmp_path))
    mine = load_diffusion(str(folder), cache_root=tmp_path / "cache")  # trains a classifier
    assert mine.train_steps == tiny.train_steps and mine.shape == tiny.shape
    assert mine.classifier_path.parent == tmp_path / "cache" / "diffusion"
    assert mine.features(torch.zeros(2, *mine.shape)).shape == (2, mine.features.num_features)


@pytest.mark.slow
def test_the_builtin_model_samples_digits_the_classifier_reads(tmp_path: Path) -> None:
    """The real built-in model (about 10 minutes of training on one core): its 100-step DDIM
    samples are digits the classifier recognises confidently, and 4-step ones are worse."""
    from presso.diffusion._digits import load_digits
    from presso.diffusion._fid import FIDScorer
    from presso.diffusion._model import load_diffusion
    from presso.diffusion._sample import sample, seeded_noise, trailing_grid

    model = load_diffusion("digits-ddpm", cache_root=tmp_path)
    noise = seeded_noise(0, 200, model.shape)
    full = sample(model.unet, model.scheduler_config, trailing_grid(1000, 100), noise)
    few = sample(model.unet, model.scheduler_config, trailing_grid(1000, 4), noise)
    with torch.no_grad():
        confident = model.features.logits(full).softmax(-1).max(-1).values.mean()
    assert confident > 0.8
    scorer = FIDScorer(model.features, load_digits(model.size).heldout)
    assert scorer(full)["fid"] < scorer(few)["fid"]


def test_a_schedule_plan_uses_the_steps_kind_only() -> None:
    from presso.plan import Plan
    from presso.spaces import MaxSteps, SearchSpace, solver_dim, solver_of, steps_dims

    space = SearchSpace([*steps_dims([999, 499, 0]), solver_dim()], [MaxSteps(2)])
    plan = space.plan((1, 0, 1, 1))
    assert plan.dropped == ("timestep.499",) and plan.kinds() == ["steps"]
    assert space.metrics((1, 0, 1, 1))["steps"] == 2  # the solver costs no step
    assert solver_of(plan.dropped) == "ddim"
    dpm = space.plan((1, 0, 1, 0))
    assert solver_of(dpm.dropped) == "dpm-solver" and dpm.kinds() == ["steps"]
    assert "cannot hold a sampling schedule" in (plan_refusal := _refusal(plan)), plan_refusal
    assert Plan(dropped=("m.l.1",)).kinds() == ["depth"]


def _refusal(plan) -> str:
    from presso.spaces import KINDS

    return " ".join(filter(None, (k.refusal(plan, "hf") for k in KINDS.values())))
