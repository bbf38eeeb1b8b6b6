"""SQLAlchemy's dialect compliance suite, run against a real gateway; what a read-only dialect cannot do is
declared in requirements.py, and the tests that need tables of their own are listed in conftest.py."""

from sqlalchemy.testing.suite import *  # noqa: F403
