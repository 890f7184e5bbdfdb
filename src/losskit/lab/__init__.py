"""``losskit lab``: experiments on bundled data that show what each loss does, with a report and plots.

Run ``losskit lab --quick`` (or ``python -m losskit lab``); see :mod:`losskit.lab.cli` for the options.
Needs the ``lab`` extra (scikit-learn for the bundled data sets, matplotlib, tqdm).
"""

from __future__ import annotations

from .core import ExperimentResult, LabContext, Unavailable
from .runner import EXPERIMENTS, LabError, run_experiments, run_lab

__all__ = [
    "EXPERIMENTS",
    "ExperimentResult",
    "LabContext",
    "LabError",
    "Unavailable",
    "run_experiments",
    "run_lab",
]
