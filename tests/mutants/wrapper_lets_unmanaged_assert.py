"""Bug (a fork's wrapper, §3 C27): ``managed_gradient_accumulation: false`` is not checked up front, so the user meets
DeepSpeed's internal assertion inside ``set_gradient_accumulation_boundary`` instead of an error naming the key."""
from reference_impl import BoundaryAwareDeepSpeedEngineWrapper, compat

CLAUSES = ("C27",)


class Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def __init__(self, engine):
        original = compat.engine_manages_accumulation
        compat.engine_manages_accumulation = lambda engine: True
        try:
            super().__init__(engine)
        finally:
            compat.engine_manages_accumulation = original
