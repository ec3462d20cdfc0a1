"""Configs shipped inside the package: ``default.py`` is the command line's default job, found
from any directory after ``pip install`` (``configs/`` at the repository root holds the rest)."""

import os

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
