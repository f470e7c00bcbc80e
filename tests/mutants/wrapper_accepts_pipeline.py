"""Bug (a fork's wrapper, §3 C28): a DeepSpeed ``PipelineEngine`` is wrapped like any engine instead of being refused
with a pointer to ``train_batch``; its own micro-batch schedule then fights the boundary."""
from reference_impl import BoundaryAwareDeepSpeedEngineWrapper, compat

CLAUSES = ("C28",)


class Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def __init__(self, engine):
        original = compat.is_pipeline_engine
        compat.is_pipeline_engine = lambda engine: False
        try:
            super().__init__(engine)
        finally:
            compat.is_pipeline_engine = original
