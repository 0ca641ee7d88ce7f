"""``python -m modelyard.cli``: the console script's commands, always run in this process (job workers and
torchrun ranks start yard so: their process tree, session and limits are the job's, never an agent's)."""

from modelyard.cli._app import main

raise SystemExit(main())
