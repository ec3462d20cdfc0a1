"""The public API: every name in ``cljax.__all__`` imports, and docs/api.md lists exactly them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import cljax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_public_name_imports():
    missing = [name for name in cljax.__all__ if getattr(cljax, name, None) is None]
    assert missing == []
    assert len(set(cljax.__all__)) == len(cljax.__all__)


def test_docs_list_exactly_the_public_names():
    with open(os.path.join(REPO_ROOT, "docs", "api.md"), encoding="utf-8") as f:
        documented = re.findall(r"^- `([A-Za-z_][A-Za-z0-9_]*)", f.read(), flags=re.MULTILINE)
    assert len(documented) == len(set(documented)), "a name is documented twice"
    assert sorted(documented) == sorted(cljax.__all__)


def test_version_is_the_one_pyproject_reads():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cljax.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", cljax.__version__)


def test_import_is_cheap():
    """``import cljax`` loads neither JAX nor any dataset module."""
    code = "import sys, cljax; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'cljax', 'sklearn')))"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "['cljax']"


def test_unknown_name_is_an_attribute_error():
    try:
        cljax.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")
