"""pytest configuration for the benchmarks.

The benchmark modules are named ``bench_*.py`` so that a plain ``pytest`` run
(testpaths = tests) never picks them up; this hook makes ``pytest benchmarks``
collect them. Files named on the command line are collected by pytest itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    return pytest.Module.from_parent(parent, path=file_path)
