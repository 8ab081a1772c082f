"""Labelled building scenarios: a seeded, realistic compound written in the replay format.

:func:`generate` writes ``site.json`` and ``events.jsonl`` (``shared/spec/replay.md``) and
``truth.json`` (``docs/scenarios.md``); :mod:`firmware_sim.scenario.score` scores rule alerts
against the truth. The command line is :func:`firmware_sim.scenario.cli.main`.
"""

from firmware_sim.scenario.generate import ScenarioParams, Summary, generate

__all__ = ["ScenarioParams", "Summary", "generate"]
