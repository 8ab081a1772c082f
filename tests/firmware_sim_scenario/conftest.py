"""Scenarios shared by the tests: generated once per session, small enough to stay fast."""

from __future__ import annotations

import pytest

from firmware_sim.scenario.generate import ScenarioParams

from .helpers import Loaded, build

SMALL = ScenarioParams(seed=11, flats=12, days=2, buildings=2)
"""12 flats x 2 days: the format, determinism and both charging labels in a short run."""

MEDIUM = ScenarioParams(seed=5, flats=40, days=7, buildings=2)
"""Long enough for 5-day silences, with overloads and group rentals."""

FAST_POLL = ScenarioParams(seed=5, flats=16, days=3, buildings=2, meter_interval_s=15)
"""Meters read every 15 s: short excursions above the rating are visible."""


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    return build(SMALL, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="session")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    return build(MEDIUM, tmp_path_factory.mktemp("medium"))


@pytest.fixture(scope="session")
def fast_poll(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    return build(FAST_POLL, tmp_path_factory.mktemp("fast_poll"))
