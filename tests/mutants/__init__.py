"""Small, deliberately wrong implementations. Each is the reference with one bug, named by its module, and
each must be caught by the check meant for it (tests/test_mutants.py): proof that a green run means something.
A mutant is a target like any other: ``--target tests.mutants.always_step:Accelerator``.
"""
