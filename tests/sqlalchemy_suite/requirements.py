"""What the saferoom dialect supports, for SQLAlchemy's suite.

SuiteRequirements' defaults stand: the suite's own exclusions already follow the dialect's flags
(``supports_sequences``, ``supports_alter``, ... all false). What a read-only dialect cannot do at all (make,
fill or drop a table) is skipped by conftest.py, each test with its reason."""

from __future__ import annotations

from sqlalchemy.testing.requirements import SuiteRequirements


class Requirements(SuiteRequirements):
    """The suite's requirements for ``saferoom://``."""
