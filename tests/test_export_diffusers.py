"""``presso export --format diffusers``: diffusers alone loads the folder and, with the same
noise, makes the images presso scored, so it reproduces the stored held-out score."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("torchmetrics")

import torch  # noqa: E402

from presso.cli import main  # noqa: E402
from tests.test_diffusion import tiny_steps_experiment  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, presso_cache: Path) -> Path:
    """A finished tiny time-step search (with the DDIM and DPM-Solver baselines)."""
    folder = tmp_path_factory.mktemp("run")
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump({"store": str(folder / "runs.db"), **tiny_steps_experiment()}))
    with pytest.MonkeyPatch.context() as mp:  # the session's cache, not the user's
        mp.setenv("PRESSO_CACHE", str(presso_cache))
        assert main(["search", str(path), "--quiet"]) == 0
    return folder


@pytest.fixture(scope="module")
def skips_run(tmp_path_factory: pytest.TempPathFactory, presso_cache: Path) -> Path:
    """A finished tiny two-stage search: 3 steps, at most 12 of their 15 UNet blocks run."""
    folder = tmp_path_factory.mktemp("skips-run")
    exp = tiny_steps_experiment(space={"kind": "joint", "steps": 3, "blocks": 12})
    exp["search"]["options"]["skip_generations"] = 2
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump({"store": str(folder / "runs.db"), **exp}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRESSO_CACHE", str(presso_cache))
        assert main(["search", str(path), "--quiet"]) == 0
    return folder


def export(run: Path, candidate: str, out: Path) -> int:
    store = str(run / "runs.db")
    args = ["export", "steps", "--store", store, "--candidate", candidate]
    return main([*args, "--format", "diffusers", "--out", str(out)])


def presso_side(run: Path, candidate: str):  # noqa: ANN201
    """presso's evaluator of the run and the candidate's configuration and stored scores."""
    from presso.config import Experiment
    from presso.experiment import Setup
    from presso.store import ResultsStore

    attrs = ResultsStore(str(run / "runs.db")).open("steps").user_attrs
    setup = Setup(Experiment.model_validate(attrs["experiment"]))
    setup.prepare()
    cand = attrs["summary"]["candidates"][candidate]
    config = setup.space.from_dict(dict(zip(setup.space.names, cand["levels"])))
    return setup.evaluator(), config, cand["heldout"]


@pytest.mark.parametrize("candidate", ["search", "baseline:dpm-solver"])
def test_diffusers_reproduces_presso_samples_and_score(
    run: Path, candidate: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from diffusers import DiffusionPipeline

    out = tmp_path / "pipe"
    assert export(run, candidate, out) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    evaluator, config, heldout = presso_side(run, candidate)
    schedule, solver = evaluator.schedule(config), evaluator.solver(config)
    assert pipe.scheduler.config.timesteps == schedule
    assert ("DPMSolver" in type(pipe.scheduler).__name__) == (solver == "dpm-solver")

    n, seed = evaluator.heldout_images, evaluator.heldout_seed
    generator = torch.Generator().manual_seed(seed)
    theirs = pipe(batch_size=n, generator=generator, output_type="pt").images
    ours = evaluator.images(schedule, n, seed, solver)
    assert (theirs - ours).abs().max() < 1e-5
    score = evaluator.heldout_score(theirs)
    assert score["fid"] == pytest.approx(heldout["fid"], rel=1e-4, abs=1e-6)
    assert score["kid"] == pytest.approx(heldout["kid"], rel=1e-3, abs=1e-6)


def test_a_language_model_run_is_refused(write_experiment, tmp_path: Path, capsys) -> None:
    from tests.conftest import tiny_experiment

    path = write_experiment(tiny_experiment(space={"mean_bits": 3.0}))
    assert main(["search", str(path), "--quiet"]) == 0
    out = tmp_path / "pipe"
    store = str(tmp_path / "runs.db")
    code = main(["export", "tiny", "--store", store, "--format", "diffusers", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "--format diffusers cannot hold bits levels" in capsys.readouterr().err


@pytest.mark.parametrize("candidate", ["search", "baseline:ddim"])
def test_skipped_blocks_export_and_reproduce(
    skips_run: Path, candidate: str, tmp_path: Path
) -> None:
    from diffusers import DiffusionPipeline

    out = tmp_path / "pipe"
    assert export(skips_run, candidate, out) == 0
    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    evaluator, config, heldout = presso_side(skips_run, candidate)
    schedule, solver, skips = evaluator.sampling(config)
    assert skips and sum(map(len, skips.values())) >= 3  # 15 blocks, at most 12 run
    assert pipe.config.skips == {str(i): blocks for i, blocks in skips.items()}
    n, seed = evaluator.heldout_images, evaluator.heldout_seed
    theirs = pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), output_type="pt")
    ours = evaluator.images(schedule, n, seed, solver, skips)
    assert (theirs.images - ours).abs().max() < 1e-5
    assert evaluator.heldout_score(theirs.images)["fid"] == pytest.approx(heldout["fid"], rel=1e-4)
    unskipped = evaluator.images(schedule, n, seed, solver)
    assert (unskipped - ours).abs().max() > 1e-4  # the skips change the images


def test_show_prints_the_skipped_blocks(skips_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", "steps", "--store", str(skips_run / "runs.db")]) == 0
    out = capsys.readouterr().out
    assert "UNet blocks skipped per step of the search's best" in out and "step 1:" in out
    assert "sampling schedule of the search's best" in out
