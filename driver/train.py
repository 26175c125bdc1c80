"""`dpr train`: the command line lives in :mod:`retriever.train_cli`, which `torchrun -m retriever.train`
runs too, so both launchers take exactly the same flags."""
from __future__ import annotations

from retriever.train_cli import add_arguments, run

__all__ = ["add_arguments", "run"]
