"""What holds for the whole test session: every xdist worker and every process a test starts."""

from __future__ import annotations

import os
import sys

# Compiled modules are cached (in the gitignored __pycache__ directories) even where the
# environment asks Python not to write them (PYTHONDONTWRITEBYTECODE): otherwise every worker
# and every CLI subprocess compiles the project, and pytest rewrites every test module, anew at
# each run, about a sixth of the suite's CPU time on a two-core machine. Workers and
# subprocesses inherit the environment from here.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
