"""accumgate harness: scenarios, warm multi-process worlds, traces, a pure-PyTorch oracle and comparison.

Floors, bottom up: data holders (scenario, trace, models, targets), computation (data, oracle, compare,
loops, backends), the world (rank processes), then the runner and its faces. No import runs back down-to-up.
"""
