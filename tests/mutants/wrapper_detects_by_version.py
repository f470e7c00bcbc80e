"""Bug (a fork's wrapper, §3 C29): the boundary API is assumed from DeepSpeed's version string (0.5.8+) instead of
being looked for on the engine, so a fork or engine without ``set_gradient_accumulation_boundary`` crashes on the
missing method instead of following its own counter."""
from reference_impl import BoundaryAwareDeepSpeedEngineWrapper, compat

CLAUSES = ("C29",)


class Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def __init__(self, engine):
        original = compat.engine_has_boundary_api
        compat.engine_has_boundary_api = lambda engine: True  # "deepspeed >= 0.5.8 has it"
        try:
            super().__init__(engine)
        finally:
            compat.engine_has_boundary_api = original
