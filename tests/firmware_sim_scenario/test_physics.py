"""The generated curves behave like the physics they stand for."""

from __future__ import annotations

import itertools
import random
from bisect import bisect_left

import pytest

from firmware_sim.scenario.ebike import LEAD_ACID, LITHIUM, LITHIUM_HV, make_battery, new_session

from .helpers import Loaded, Reading, ts


def _window(readings: list[Reading], a: float, b: float) -> list[Reading]:
    times = [r.t for r in readings]
    return readings[bisect_left(times, a) : bisect_left(times, b)]


def _floor(values: list[float]) -> float:
    """A low percentile: the load that is always there (standby, the charger), not the spikes."""
    return sorted(values)[len(values) // 10]


@pytest.mark.parametrize("chemistry", [LEAD_ACID, LITHIUM, LITHIUM_HV])
def test_charge_curve_is_a_plateau_then_an_exponential_taper(chemistry: str) -> None:
    rng = random.Random(7)
    for _ in range(50):
        bat = make_battery(rng, 0, rider=False, illegal_p=1.0 if chemistry == LITHIUM_HV else 0.0)
        if bat.chemistry != chemistry:
            continue
        s = new_session(rng, bat, 0)
        if s.unplugged_early:
            continue
        cc = [s.power(t, 0.5) for t in range(s.start, s.cc_end, 60)]
        taper = [s.power(t, 0.5) for t in range(s.cc_end, s.taper_end, 60)]
        # Constant current: within 20 % of the plateau; rising slowly with the pack voltage.
        assert max(cc) / min(cc) < 1.25
        assert cc[-1] >= cc[0]
        # Constant voltage: falls monotonically to a small fraction of the plateau.
        assert all(b <= a for a, b in itertools.pairwise(taper))
        assert taper[-1] < 0.3 * cc[-1]
        assert s.power(s.taper_end + 60, 0.5) < 15  # float or off: a few watts
        lo, hi = {LEAD_ACID: (100, 230), LITHIUM: (100, 340), LITHIUM_HV: (290, 520)}[chemistry]
        assert lo <= s.plateau_w <= hi
        hours_cc = (s.cc_end - s.start) / 3600
        assert 1.0 <= hours_cc <= 7.0
        # Ripple of a few per cent.
        assert s.power(s.start + 60, 1.0) / s.power(s.start + 60, 0.0) < 1.11


def test_meter_sessions_show_a_raised_floor_that_declines(medium: Loaded) -> None:
    eps = medium.episodes("ebike_charging_suspected")
    declining = raised = total = 0
    for e in eps:
        if e["unplugged_early"] or e["end"] is None:
            continue
        start, end = ts(e["start"]), ts(e["end"])
        # Sessions overlapping another one in the same flat are mixed: judge the clean ones.
        if any(
            o is not e
            and o["unit_id"] == e["unit_id"]
            and ts(o["start"]) < end + 3600
            and start - 3600 < (ts(o["end"]) if o["end"] else medium.end)
            for o in eps
        ):
            continue
        readings = medium.meters[e["meter_id"]]
        before = _window(readings, start - 3600, start)
        q = (end - start) / 4
        first = _window(readings, start, start + q)
        last = _window(readings, end - q, end)
        if not before or not first or not last:
            continue
        base = _floor([r.power for r in before])
        first_net = _floor([r.power for r in first]) - base
        last_net = _floor([r.power for r in last]) - base
        total += 1
        declining += last_net < first_net
        raised += first_net >= 0.5 * e["power_w"]
    assert total >= 10
    assert declining / total >= 0.75
    assert raised / total >= 0.75


def test_overloads_hold_above_the_rating_and_nothing_else_does(
    medium: Loaded, fast_poll: Loaded
) -> None:
    excursions = 0
    for sc in (medium, fast_poll):
        labelled: dict[str, list[tuple[float, float]]] = {}
        for e in sc.episodes("overload"):
            start, end = ts(e["start"]), ts(e["end"])
            assert end - start >= 300
            labelled.setdefault(e["meter_id"], []).append((start, end))
            rated = sc.unit(e["unit_id"])["rated_current_a"]
            inside = _window(sc.meters[e["meter_id"]], start, end)
            assert inside
            for r in inside:
                current = r.current if r.current is not None else r.power / (r.voltage or 230.0)
                assert current > rated, (e, r)
        assert labelled, "the scenario has overload episodes"
        for m in sc.site["meters"]:
            rated = sc.unit(m["unit_id"])["rated_current_a"]
            run: list[float] = []
            for r in [*sc.meters[m["meter_id"]], Reading(sc.end + 1e6, 0.0, None, 0.0, None)]:
                over = r.current is not None and r.current > rated
                if over and not any(a <= r.t < b for a, b in labelled.get(m["meter_id"], [])):
                    run.append(r.t)
                    continue
                if run:
                    excursions += 1
                    assert run[-1] - run[0] < 120, (m["meter_id"], run)
                run = []
    assert excursions, "short harmless excursions above the rating exist"


def test_voltage_current_and_energy_are_consistent(small: Loaded) -> None:
    for meter_id, readings in small.meters.items():
        energies = [r.energy for r in readings if r.energy is not None]
        assert all(b >= a for a, b in itertools.pairwise(energies)), meter_id
        for r in readings:
            if r.voltage is not None:
                assert 200.0 <= r.voltage <= 245.0
            if r.current is not None and r.voltage is not None and r.power > 50:
                pf = r.power / (r.voltage * r.current)
                assert 0.4 <= pf <= 1.02, (meter_id, r)
