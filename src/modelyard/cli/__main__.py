"""``python -m modelyard.cli``: the same entry point as the ``yard`` console script."""

from modelyard.cli import main

raise SystemExit(main())
