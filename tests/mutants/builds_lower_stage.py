"""Bug: asked for ZeRO-3, the accelerator quietly builds ZeRO-2 (a fork falling back to a stage it handles better).
Every number it produces is right for ZeRO-2, and the model reads the stage from the engine built, so only the check
of the built stack (harness/job.py: the stage, offload and precision asked for) can see it: every verdict is error."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C25",)


class Accelerator(BoundaryAwareAccelerator):
    def __init__(self, *args, **kwargs):
        plugin = kwargs.get("deepspeed_plugin")
        config = getattr(getattr(plugin, "hf_ds_config", None), "config", None)
        if config is not None and config.get("zero_optimization", {}).get("stage") == 3:
            config["zero_optimization"]["stage"] = 2
            plugin.zero_stage = 2
        super().__init__(*args, **kwargs)
