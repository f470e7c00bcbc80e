"""``tox -e fsdp``: on a GPU machine, the conformance suite on FSDP; on a CPU-only one, a line saying why not.

accelerate turns FSDP on only for GPU distributed types; with an fsdp_plugin on CPU it silently stays
``DistributedType.NO`` (cpu-deepspeed.md), so running "fsdp" scenarios there would test plain training.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import torch

    if not torch.cuda.is_available():
        print("fsdp: not run on this machine: accelerate enables FSDP only on GPU distributed types "
              "(on CPU it silently stays DistributedType.NO); run `tox -e fsdp` on a GPU machine")
        return 0
    import pytest

    return int(pytest.main(["conformance", "-m", "fsdp", "--accumgate-backends", "fsdp", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
