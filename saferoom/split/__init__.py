"""The split (`saferoom build`): a closed analytics database made from the sources through one role's eyes.

Modules, each named for what it owns: ``plan`` (what a build will do), ``run`` (doing it),
``writers`` (the staged target and its swap), ``manifest``, ``fingerprints`` (the leak index),
``fragment`` (the policy that serves the result), ``queries`` and ``tokens`` (the SQL it generates),
``postgres`` and ``spark`` (reading those sources).
"""

from __future__ import annotations

from saferoom.split.manifest import Manifest, TableResult
from saferoom.split.plan import BuildPlan, TablePlan, make_plan
from saferoom.split.run import Progress, build

__all__ = ["BuildPlan", "Manifest", "Progress", "TablePlan", "TableResult", "build", "make_plan"]
