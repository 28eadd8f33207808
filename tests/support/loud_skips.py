"""Skips that shout: a part of the suite that cannot run here (no PostgreSQL, no llama.cpp
build, no Docker engine) is skipped with a warning and a red line at the end of the summary,
in capitals: a silent skip would let that support rot unnoticed. Loaded as a pytest plugin."""

from __future__ import annotations

import warnings

import pytest

_reasons: list[str] = []


def skip_loudly(reason: str) -> None:
    _reasons.append(reason)
    warnings.warn(reason)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter) -> None:
    for reason in dict.fromkeys(_reasons):
        terminalreporter.write_sep("!", reason, red=True, bold=True)
