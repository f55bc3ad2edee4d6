"""Export a diffusion run's candidate as a diffusers pipeline folder.

The folder holds the UNet (``unet/``, as trained), a scheduler whose config holds the
candidate's time steps and solver (``scheduler/``: presso.diffusion._schedulers, copied as
``scheduling_presso.py``), presso's pipeline (``pipeline_presso.py``: the sampling loop, with
the UNet blocks skipped per step) and ``model_index.json`` naming them and holding the skipped
blocks, plus the candidate's plan. diffusers loads it alone:

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

(the remote code is the two small files written here). With the same noise it makes the images
presso scored (tests/test_export_diffusers.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from presso.errors import PressoError
from presso.export._base import Exporter, Source, register
from presso.export._target import export_dir
from presso.plan import Plan

#: The file names of the custom code in the folder (diffusers finds them by these names).
PIPELINE, SCHEDULER = "pipeline_presso", "scheduling_presso"


@register
class DiffusersExporter(Exporter):
    name = "diffusers"
    help = (
        "a diffusers pipeline folder (diffusion runs): the UNet, a scheduler over the searched "
        "time steps, presso's pipeline; load with trust_remote_code=True"
    )
    folder = True
    requires = ("diffusers",)
    extra = "diffusion"
    kinds = ("steps", "skips")

    def check(self, plan: Plan) -> None:
        from presso.diffusion import is_diffusion_model

        super().check(plan)
        model = str(plan.about.get("model"))
        if not is_diffusion_model(model):
            raise PressoError(
                f"--format {self.name} exports a diffusion model's schedule; this run's model "
                f"{model} is not one: use --format hf or --format plan"
            )

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        import diffusers

        from presso.diffusion import _pipeline, _schedulers
        from presso.diffusion._evaluator import schedule_of, skips_of, solver_of
        from presso.diffusion._sample import scheduler_for

        setup = source.setup
        model = setup.handle
        timesteps = schedule_of(plan, setup.timestep_grid)
        scheduler = scheduler_for(model.scheduler_config, timesteps, solver_of(plan))
        index = {
            "_class_name": [PIPELINE, "PressoSchedulePipeline"],
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", type(model.unet).__name__],
            "scheduler": [SCHEDULER, type(scheduler).__name__],
            # The pipeline's own setting: per step, the UNet blocks it skips (keys as JSON has).
            "skips": {str(i): blocks for i, blocks in sorted(skips_of(plan).items())},
        }
        with export_dir(out, self.name, plan) as tmp:
            model.unet.save_pretrained(tmp / "unet")
            scheduler.save_pretrained(tmp / "scheduler")
            shutil.copyfile(_schedulers.__file__, tmp / "scheduler" / f"{SCHEDULER}.py")
            shutil.copyfile(_pipeline.__file__, tmp / f"{PIPELINE}.py")
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            (tmp / "presso_plan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")

    def notice(self, plan: Plan) -> str:
        return (
            "load it with DiffusionPipeline.from_pretrained(folder, trust_remote_code=True): the "
            f"sampling loop ({PIPELINE}.py) and the scheduler over the searched time steps "
            f"(scheduler/{SCHEDULER}.py) are code in the folder"
        )
