"""``python -m saferoom``: the command line, for a caller that knows the interpreter but not where its scripts are."""

from saferoom.cli import main

main()
