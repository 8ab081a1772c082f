"""The ``ebike_charging_suspected`` rule on synthetic meter curves, through the engine.

Each test builds a flat's load from appliance models (standby, a cycling fridge, a charger's
CC-CV curve, a PC, a heater, a kettle), reads it once a minute like a DDSU666 would, and checks
the episodes. Noise comes from a seeded generator, so every run is the same.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from contract.alerts import AlertChange, Change, Severity, Subject
from contract.events import MeterReading, RuleInput, Tick
from contract.site import MeterPlacement, RulesConfig, Site, Unit
from rules.ebike_suspected import EbikeChargingSuspectedRule
from rules.engine import RuleEngine
from tests.rules.builders import SCOPE, TZ, feed

MIDNIGHT = datetime(2026, 3, 2, 0, 0, tzinfo=TZ)
METER = "m-3-301"
SUBJECT = Subject(unit_id="3-301", meter_id=METER)
SITE = Site(
    site_id=SCOPE,
    units=[Unit(unit_id="3-301", building="3")],
    meters=[MeterPlacement(meter_id=METER, unit_id="3-301")],
)

Load = Callable[[float], tuple[float, float]]
"""Seconds since midnight -> (real power W, power factor) of one appliance (0 W when off)."""


def hours(h: float) -> float:
    return h * 3600.0


def standby(t: float) -> tuple[float, float]:
    return 30.0, 0.9


def fridge(t: float) -> tuple[float, float]:
    """120 W compressor, 12 minutes on in every 40."""
    return (120.0, 0.75) if (t % 2400.0) < 720.0 else (0.0, 1.0)


def charger(start: float, cc: float, taper: float, watts: float = 160.0, pf: float = 0.6) -> Load:
    """CC-CV: ``watts`` (rising 8 % over the CC phase) for ``cc`` s, then an exponential taper
    over ``taper`` s down to a few watts, then off."""

    def load(t: float) -> tuple[float, float]:
        x = t - start
        if x < 0 or x >= cc + taper:
            return 0.0, 1.0
        if x < cc:
            return watts * (1.0 + 0.08 * x / cc), pf
        peak = watts * 1.08
        return max(3.0, peak * math.exp(-4.0 * (x - cc) / taper)), pf

    return load


def steady(start: float, length: float, watts: float, pf: float) -> Load:
    """An appliance switched on and off at once (a PC, a TV)."""

    def load(t: float) -> tuple[float, float]:
        return (watts, pf) if start <= t < start + length else (0.0, 1.0)

    return load


def heater(start: float, length: float) -> Load:
    """2 kW, thermostat: 10 minutes on, 5 off."""

    def load(t: float) -> tuple[float, float]:
        x = t - start
        return (2000.0, 1.0) if 0 <= x < length and (x % 900.0) < 600.0 else (0.0, 1.0)

    return load


def kettle(*starts: float) -> Load:
    def load(t: float) -> tuple[float, float]:
        return (2000.0, 1.0) if any(0 <= t - s < 180 for s in starts) else (0.0, 1.0)

    return load


def readings(
    loads: list[Load],
    *,
    until: float = hours(30),
    every: float = 60.0,
    current: bool = True,
    gaps: tuple[tuple[float, float], ...] = (),
    seed: int = 1,
    ripple: float = 0.0,
) -> list[RuleInput]:
    """One reading every ``every`` s from midnight, with 1 % noise (and ``ripple`` more on the
    current: a charger's), except in ``gaps``."""
    rng = random.Random(seed)
    out: list[RuleInput] = []
    t = 0.0
    while t < until:
        if not any(a <= t < b for a, b in gaps):
            power = apparent = 0.0
            for load in loads:
                p, pf = load(t)
                power += p
                apparent += p / pf
            noise = 1.0 + rng.uniform(-0.01, 0.01)
            volts = 230.0 + rng.uniform(-1.0, 1.0)
            ts = MIDNIGHT + timedelta(seconds=t + rng.uniform(0.0, 2.0))
            if current:
                amps = apparent * noise / volts
                if ripple:
                    amps *= 1.0 + rng.uniform(-ripple, ripple)
                out.append(
                    MeterReading(
                        ts=ts,
                        meter_id=METER,
                        power_w=round(power * noise, 1),
                        voltage_v=round(volts, 1),
                        current_a=round(amps, 3),
                    )
                )
            else:
                out.append(MeterReading(ts=ts, meter_id=METER, power_w=round(power * noise, 1)))
        t += every
    return out


def run(events: list[RuleInput], cfg: RulesConfig | None = None) -> list[AlertChange]:
    rules = cfg or RulesConfig()
    rule = EbikeChargingSuspectedRule(SITE, rules.ebike_charging_suspected, scope=SCOPE)
    eng = RuleEngine(SITE, rules, scope=SCOPE, rules=[rule])
    return feed(eng, events)


def at(h: float) -> datetime:
    return MIDNIGHT + timedelta(hours=h)


HOUSE: list[Load] = [standby, fridge]


# -- a charger is recognised --------------------------------------------------------------


def test_evening_charge_with_current_raised_on_the_plateau_and_cleared_at_the_end() -> None:
    changes = run(readings([*HOUSE, charger(hours(19), cc=hours(2.5), taper=hours(1.5))]))
    assert [(c.change, c.episode.severity) for c in changes] == [
        (Change.RAISED, Severity.MEDIUM),
        (Change.UPDATED, Severity.HIGH),  # the session runs into the night (22:00)
        (Change.CLEARED, Severity.HIGH),
    ]
    raised, night, cleared = (c.episode for c in changes)
    assert raised.subject == SUBJECT
    # shown in the envelope half an hour after the plug-in, held 10 minutes more, steadily
    assert at(19.6) <= raised.raised_at <= at(20.2)
    assert night.raised_at == raised.raised_at
    assert night.id == raised.id == cleared.id
    assert cleared.cleared_at is not None
    # The taper (exponential, from 21:30) is down to 15 % of the step by about 22:20.
    assert at(22.0) <= cleared.cleared_at <= at(23.1)
    ev = raised.evidence
    assert ev["signal"] == "non_active_va"
    assert ev["recognised_by"] == "non_active_plateau"
    assert ev["power_factor"] is not None and 0.5 <= float(ev["power_factor"]) <= 0.7
    assert ev["step_w"] is not None and 140 <= float(ev["step_w"]) <= 190
    assert (
        ev["start"] is not None and at(18.9).isoformat() <= str(ev["start"]) <= at(19.1).isoformat()
    )
    assert ev["ended_by"] is None
    assert cleared.evidence["ended_by"] in {"tail", "switched_off"}


def test_night_charge_without_current_recognised_by_its_taper() -> None:
    events = readings([*HOUSE, charger(hours(23), cc=hours(3), taper=hours(2))], current=False)
    changes = run(events)
    assert [(c.change, c.episode.severity) for c in changes] == [
        (Change.RAISED, Severity.HIGH),
        (Change.CLEARED, Severity.HIGH),
    ]
    raised, cleared = (c.episode for c in changes)
    # CC ends 02:00; raised once the taper has run 10+ minutes and lost about half the step
    assert at(26.1) <= raised.raised_at <= at(27.0)
    assert raised.evidence["recognised_by"] == "taper"
    assert raised.evidence["signal"] == "power_w"
    assert raised.evidence["night"] is True
    assert cleared.cleared_at is not None and cleared.cleared_at <= at(28.5)


def test_a_charger_unplugged_on_its_plateau_ends_the_episode_at_once() -> None:
    changes = run(readings([*HOUSE, charger(hours(14), cc=hours(2), taper=0.0)], until=hours(20)))
    assert [c.change for c in changes] == [Change.RAISED, Change.CLEARED]
    cleared = changes[-1].episode
    assert cleared.evidence["ended_by"] == "switched_off"
    assert cleared.cleared_at is not None and at(16.0) <= cleared.cleared_at <= at(16.34)


def test_a_meter_gone_silent_ends_the_episode() -> None:
    events = readings(
        [*HOUSE, charger(hours(14), cc=hours(4), taper=hours(1))],
        until=hours(20),
        gaps=((hours(15.5), hours(20)),),
    )
    changes = run([*events, Tick(at(19.9))])
    assert [c.change for c in changes] == [Change.RAISED, Change.CLEARED]
    cleared = changes[-1].episode
    assert cleared.evidence["ended_by"] == "silence"
    assert cleared.cleared_at is not None and at(16.4) <= cleared.cleared_at <= at(16.6)


# -- confounders --------------------------------------------------------------------------


def test_a_pc_that_runs_all_evening_is_not_a_charger() -> None:
    pc = steady(hours(18.5), hours(5), 150.0, 0.95)  # PFC-corrected, switched off at once
    assert run(readings([*HOUSE, pc])) == []
    assert run(readings([*HOUSE, pc], current=False)) == []


def test_a_tv_without_pfc_switched_off_at_once_is_not_a_charger_without_current() -> None:
    tv = steady(hours(19), hours(4), 120.0, 0.6)  # low power factor, but no taper
    assert run(readings([*HOUSE, tv], current=False)) == []


def test_a_fridge_alone_is_nothing() -> None:
    assert run(readings(HOUSE)) == []
    assert run(readings(HOUSE, current=False)) == []


def test_a_heater_and_a_kettle_are_nothing() -> None:
    loads = [*HOUSE, heater(hours(18), hours(3)), kettle(hours(7), hours(12.5), hours(19))]
    assert run(readings(loads)) == []
    assert run(readings(loads, current=False)) == []


def test_a_charger_under_a_heater_is_still_seen_with_current() -> None:
    loads = [*HOUSE, heater(hours(19), hours(4)), charger(hours(19.5), hours(3), hours(1.5))]
    changes = run(readings(loads))
    assert changes[0].change == Change.RAISED
    assert changes[0].episode.evidence["recognised_by"] == "non_active_plateau"


def test_same_input_same_output() -> None:
    events = readings([*HOUSE, charger(hours(19), cc=hours(2.5), taper=hours(1.5))])
    assert run(events) == run(events)


def test_a_taper_after_a_heater_switched_off_reports_the_chargers_own_step() -> None:
    # A 2 kW heater runs steadily under the charger's plateau and is switched off when the
    # taper begins: the step that started the session is the charger's (about 160 W), not the
    # fall from the heater's level, which would make the step negative.
    loads = [
        *HOUSE,
        steady(hours(17), hours(4.5), 2000.0, 1.0),
        charger(hours(19), cc=hours(2.5), taper=hours(1.5)),
    ]
    changes = run(readings(loads, current=False))
    assert [c.change for c in changes] == [Change.RAISED, Change.UPDATED, Change.CLEARED]
    ev = changes[0].episode.evidence
    assert ev["recognised_by"] == "taper"
    assert ev["step_w"] is not None and 130.0 <= float(ev["step_w"]) <= 200.0
    assert ev["baseline"] is not None and float(ev["baseline"]) < 200.0


def test_a_second_battery_charged_alongside_the_first_gets_its_own_episode() -> None:
    # Two riders: one plugs in at 19:00 (5 h plateau), the other at 20:30 (2 h plateau) and is
    # done first. Each session has its own episode: the first is still open when the second is
    # raised, and neither is raised twice.
    loads = [
        *HOUSE,
        charger(hours(19), cc=hours(5), taper=hours(1.5)),
        charger(hours(20.5), cc=hours(2), taper=hours(1), watts=220.0, pf=0.62),
    ]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    clears = [c.episode for c in changes if c.change is Change.CLEARED]
    assert len(raises) == 2
    assert [ep.id for ep in clears] == [ep.id for ep in raises]
    first, second = raises
    assert first.raised_at < at(20.6)
    assert at(21.15) <= second.raised_at <= at(22.5)  # on the second plateau, before it tapers
    assert clears[0].cleared_at is not None and clears[0].cleared_at > at(22.5)  # concurrent
    assert clears[1].cleared_at is not None and clears[1].cleared_at >= at(23.0)
    assert {c.evidence["ended_by"] for c in clears} <= {"tail", "switched_off"}
    assert (
        second.evidence["step_w"] is not None and 180.0 <= float(second.evidence["step_w"]) <= 260.0
    )


def test_one_charger_is_one_episode_however_long_its_plateau() -> None:
    changes = run(readings([*HOUSE, charger(hours(18), cc=hours(6), taper=hours(2))]))
    assert [c.change for c in changes if c.change is not Change.UPDATED] == [
        Change.RAISED,
        Change.CLEARED,
    ]


# -- steps that show over two bins, laptops, batteries plugged in one after the other ----------


def soft_start(load: Load, start: float, length: float = 480.0, share: float = 0.45) -> Load:
    """``load`` drawing only ``share`` of its power for its first ``length`` s (a charger's soft
    start): the lower envelope shows its step in two rises, each below ``min_step_va``."""

    def wrapped(t: float) -> tuple[float, float]:
        p, pf = load(t)
        return (p * share, pf) if 0 <= t - start < length else (p, pf)

    return wrapped


def test_a_step_the_envelope_shows_in_two_small_rises_is_one_charger() -> None:
    # 110 W at PF 0.6 is about 73 VA of non-active power: 33 VA for 8 minutes, then the rest.
    loads = [
        *HOUSE,
        soft_start(charger(hours(19), cc=hours(3), taper=hours(1), watts=110.0), hours(19)),
    ]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    assert len(raises) == 1
    ev = raises[0].evidence
    assert ev["recognised_by"] == "non_active_plateau"
    assert ev["step_non_active_va"] is not None and 60.0 <= float(ev["step_non_active_va"]) <= 90.0
    # a step below 80 VA holds half an hour longer than a larger one (a laptop's is that small)
    assert at(20.4) <= raises[0].raised_at <= at(21.1)


def test_a_laptop_charging_for_an_hour_and_a_half_is_not_an_ebike() -> None:
    # A laptop adapter is CC-CV too, and below 75 W needs no PFC: 80 W at PF 0.6 (53-57 VA),
    # a plateau of 85 minutes and a 20-minute taper. Too small for an e-bike charger, with
    # current or without.
    laptop = charger(hours(20), cc=hours(85 / 60), taper=hours(20 / 60), watts=80.0)
    assert run(readings([*HOUSE, laptop])) == []
    assert run(readings([*HOUSE, laptop], current=False)) == []


def test_a_second_battery_plugged_in_a_quarter_of_an_hour_later_gets_its_own_episode() -> None:
    # Two batteries plugged in at 19:00 and 19:15: the envelope shows two steps, so there are
    # two sessions, each with its own episode, open together until the tapers.
    loads = [
        *HOUSE,
        charger(hours(19), cc=hours(4), taper=hours(1.5)),
        charger(hours(19.25), cc=hours(3), taper=hours(1), watts=200.0, pf=0.62),
    ]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    clears = [c.episode for c in changes if c.change is Change.CLEARED]
    assert len(raises) == 2
    assert [ep.id for ep in clears] == [ep.id for ep in raises]
    first, second = raises
    assert first.raised_at < second.raised_at <= at(20.8)
    assert all(c.cleared_at is not None and c.cleared_at > at(22.5) for c in clears)
    assert (
        second.evidence["step_w"] is not None and 170.0 <= float(second.evidence["step_w"]) <= 240.0
    )


def test_a_heater_cycling_under_a_charging_plateau_does_not_hide_it() -> None:
    # The heater (2 kW, 10 minutes on, 5 off) runs for the whole plateau; the charger has no
    # PFC. Raised on the plateau, once.
    loads = [*HOUSE, heater(hours(18.5), hours(4)), charger(hours(19), cc=hours(3), taper=hours(1))]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    assert len(raises) == 1
    assert at(19.6) <= raises[0].raised_at <= at(20.6)
    assert raises[0].evidence["recognised_by"] == "non_active_plateau"


def test_a_cooker_burst_and_a_pc_evening_are_nothing() -> None:
    # A PC (PFC, 150 W at 0.95) on for 4 h with 5 % noise, switched off at once, and an hour of
    # cooking (2 kW in bursts): no plateau of non-active power, no taper.
    rng = random.Random(7)
    noise = [rng.uniform(0.95, 1.05) for _ in range(24 * 60)]

    def pc(t: float) -> tuple[float, float]:
        on = hours(19) <= t < hours(23)
        return (150.0 * noise[int(t // 60) % len(noise)], 0.95) if on else (0.0, 1.0)

    def cooker(t: float) -> tuple[float, float]:
        on = hours(18) <= t < hours(19) and (t % 600.0) < 240.0
        return (2000.0, 0.98) if on else (0.0, 1.0)

    assert run(readings([*HOUSE, pc, cooker])) == []
    assert run(readings([*HOUSE, pc, cooker], current=False)) == []


# -- several chargers at once, chargers under a heater, small steps ----------------------------


def test_three_batteries_of_a_group_rental_evening_give_three_episodes() -> None:
    # Three chargers plugged in 40 minutes apart (a group rental's evening), all on together
    # from 20:20 to 22:00; the sum is what the meter shows. One episode per battery, each raised
    # while its own battery charges, with the three open at the same time.
    loads = [
        *HOUSE,
        charger(hours(19), cc=hours(3), taper=hours(1)),
        charger(hours(19 + 40 / 60), cc=hours(3), taper=hours(1), watts=200.0, pf=0.62),
        charger(hours(20 + 20 / 60), cc=hours(3), taper=hours(1), watts=130.0, pf=0.55),
    ]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    clears = {c.episode.id: c.episode for c in changes if c.change is Change.CLEARED}
    assert len(raises) == 3
    assert len({ep.id for ep in raises}) == 3
    starts = [at(19), at(19 + 40 / 60), at(20 + 20 / 60)]
    for ep, start in zip(raises, starts, strict=True):
        assert start + timedelta(minutes=36) <= ep.raised_at <= start + timedelta(hours=2)
    last_raise = raises[-1].raised_at
    # all three open at once: none cleared before the last one was raised
    assert all(ep.cleared_at is not None and ep.cleared_at > last_raise for ep in clears.values())


def test_a_charger_switched_on_with_a_heater_is_recognised_once_the_heater_is_off() -> None:
    # A 2 kW heater (steady, no thermostat) and a charger switched on together at 19:00: the
    # real-power step (2.2 kW) is no charger's, but the non-active step is. The heater goes off
    # at 20:00; then the step's own power (about 165 W at PF 0.6) is seen and it is raised.
    loads = [
        *HOUSE,
        steady(hours(19), hours(1), 2000.0, 1.0),
        charger(hours(19), cc=hours(4), taper=hours(1)),
    ]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    assert len(raises) == 1
    ep = raises[0]
    assert at(20.0) <= ep.raised_at <= at(21.0)
    # measured on the envelope once the heater is off: the charger, perhaps with the fridge
    assert ep.evidence["step_w"] is not None and 130.0 <= float(ep.evidence["step_w"]) <= 320.0
    assert ep.evidence["power_factor"] is not None and float(ep.evidence["power_factor"]) <= 0.78


def test_a_motor_switched_on_with_a_heater_is_not_a_charger_once_its_power_factor_shows() -> None:
    # A 400 W motor at PF 0.85 (a non-active step of about 70 VA, like a charger's) switched on
    # with a 2 kW heater: once the heater is off the step's power factor is known, and too high.
    loads = [
        *HOUSE,
        steady(hours(19), hours(1), 2000.0, 1.0),
        steady(hours(19), hours(5), 400.0, 0.85),
    ]
    assert run(readings(loads)) == []


def test_a_laptop_and_a_phone_charging_together_are_not_an_ebike() -> None:
    # An 85 W laptop and a 15 W phone (both PF 0.6, about 67 VA together, 100 W: as much as the
    # smallest e-bike charger) charged together for an hour and 40 minutes. A step that small
    # must hold longer, and the laptop is done before it has.
    laptop = charger(hours(20), cc=hours(80 / 60), taper=hours(20 / 60), watts=85.0)
    phone = steady(hours(20), hours(100 / 60), 15.0, 0.6)
    assert run(readings([*HOUSE, laptop, phone])) == []


def test_a_small_lead_acid_charger_is_raised_after_the_longer_hold() -> None:
    # A 12 Ah lead-acid pack: 120 W at PF 0.65 (about 65 VA) for 3 h. Its step is small, so it
    # is raised only after the longer hold (still well before its taper).
    loads = [*HOUSE, charger(hours(19), cc=hours(3), taper=hours(1.5), watts=120.0, pf=0.65)]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    assert len(raises) == 1
    assert at(20.5) <= raises[0].raised_at <= at(21.5)


# -- a busy flat: the envelope follows every bin -------------------------------------------------


def busy(start: float, length: float, watts: float = 60.0, pf: float = 0.5) -> Load:
    """Something with non-active power switched on in every 5-minute bin (a fan, a washing
    machine's motor, the lamps of a group rental's rooms): on 2 minutes in every 4."""

    def load(t: float) -> tuple[float, float]:
        x = t - start
        return (watts, pf) if 0 <= x < length and (x % 240.0) < 120.0 else (0.0, 1.0)

    return load


def test_a_charger_plugged_in_while_something_switches_in_every_bin_is_seen_at_once() -> None:
    # From 18:30 to 20:30 no 5-minute bin is steady; the charger is plugged in at 19:00. The
    # lower envelope (the minimum of every bin of the trailing half hour) still shows its
    # step at once, so the session is raised soon after the flat calms down, with its start.
    loads = [*HOUSE, busy(hours(18.5), hours(2)), charger(hours(19), cc=hours(3), taper=hours(1))]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    assert len(raises) == 1
    ep = raises[0]
    assert at(20.5) <= ep.raised_at <= at(21.0)
    assert ep.evidence["recognised_by"] == "non_active_plateau"
    start = ep.evidence["start"]
    assert start is not None and at(18.9).isoformat() <= str(start) <= at(19.3).isoformat()
    assert ep.evidence["step_w"] is not None and 130 <= float(ep.evidence["step_w"]) <= 200


def test_the_busy_load_alone_is_nothing() -> None:
    # Two hours of switching with a low power factor never holds still: no plateau.
    assert run(readings([*HOUSE, busy(hours(18.5), hours(2))])) == []


# -- the taper of a charger with PFC, the steadiness a plateau needs --------------------------------


def test_a_charger_with_pfc_is_recognised_by_its_taper_with_current() -> None:
    # PF 0.95: its taper loses about 5 % of its fall in non-active power, below the 12 % a
    # corrected power factor allows. Nothing shows on the non-active plateau.
    loads = [*HOUSE, charger(hours(19), cc=hours(3), taper=hours(1.5), pf=0.95)]
    raises = [c.episode for c in run(readings(loads)) if c.change is Change.RAISED]
    assert len(raises) == 1
    assert raises[0].evidence["recognised_by"] == "taper"
    assert at(22.1) <= raises[0].raised_at <= at(23.0)


def test_the_same_curve_at_power_factor_0_85_is_no_charger_with_current() -> None:
    # The same CC-CV shape drawn by a load at PF 0.85 (a fan's motor, a lamp group) loses 18 %
    # of its fall in non-active power: not a PFC charger's taper, and too high a power factor
    # for a charger without PFC.
    loads = [*HOUSE, charger(hours(19), cc=hours(3), taper=hours(1.5), pf=0.85)]
    assert run(readings(loads)) == []


def test_a_washing_machine_motor_is_not_a_charger() -> None:
    # 90 minutes of a motor at PF 0.65 whose draw changes every minute (wash, pause, spin):
    # its non-active step is there, but no bin of it is steady.
    rng = random.Random(3)
    draw = [rng.choice([0.0, 60.0, 150.0, 300.0]) for _ in range(90)]

    def washer(t: float) -> tuple[float, float]:
        x = t - hours(19)
        return (draw[int(x // 60)], 0.65) if 0 <= x < hours(1.5) else (0.0, 1.0)

    assert run(readings([*HOUSE, washer])) == []


def fluctuating(start: float, length: float) -> Load:
    """A washing machine's motor: 0, 150 and 300 W in turn, a minute each, at PF 0.65 (never
    two readings alike, so no switch-on edge is seen while it runs)."""

    def load(t: float) -> tuple[float, float]:
        x = t - start
        if not 0 <= x < length:
            return 0.0, 1.0
        return (0.0, 150.0, 300.0)[int(x // 60) % 3], 0.65

    return load


def test_a_small_charger_without_pfc_is_recognised_by_its_taper_with_current() -> None:
    # 115 W at PF 0.72 (a 12 Ah lead-acid pack): its non-active step, about 45 VA, is below the
    # 50 VA a plateau needs, and it is plugged in while a washing machine runs (no clean
    # switch-on edge); but its taper loses about 39 % of its fall in non-active power, as a
    # charger without PFC does (30-80 %).
    loads = [
        *HOUSE,
        fluctuating(hours(22.75), hours(0.5)),
        charger(hours(23), cc=hours(3), taper=hours(3), watts=115.0, pf=0.72),
    ]
    changes = run(readings(loads))
    assert [c.change for c in changes] == [Change.RAISED, Change.CLEARED]
    raised, cleared = (c.episode for c in changes)
    assert raised.evidence["recognised_by"] == "taper"
    assert raised.evidence["signal"] == "power_w"
    # CC ends 02:00: raised during the taper, cleared once the charger is off (05:00)
    assert at(26.1) <= raised.raised_at <= at(28.0)
    assert cleared.cleared_at is not None and at(28.5) <= cleared.cleared_at <= at(29.5)


def test_a_session_raised_on_its_plateau_is_not_raised_again_by_its_taper() -> None:
    # The plateau's episode clears once the charger is down to its tail; the real-power taper
    # that follows belongs to the same session and is no second alert.
    loads = [*HOUSE, charger(hours(19), cc=hours(2.5), taper=hours(3), watts=200.0, pf=0.6)]
    changes = run(readings(loads))
    raises = [c.episode for c in changes if c.change is Change.RAISED]
    assert len(raises) == 1
    assert raises[0].evidence["recognised_by"] == "non_active_plateau"


# -- the switch-on edge: what the envelope's steps do not show ------------------------------------


def test_a_small_charger_without_pfc_is_recognised_by_its_switch_on_edge() -> None:
    # The same 115 W charger at PF 0.72 plugged in with nothing else switching: its 45 VA
    # switch-on is a clean edge between two readings, no switch-off matches it, and its load
    # holds: recognised 70 minutes later, on its plateau (not waiting for the taper at 02:00).
    loads = [*HOUSE, charger(hours(23), cc=hours(3), taper=hours(3), watts=115.0, pf=0.72)]
    changes = run(readings(loads))
    assert [c.change for c in changes] == [Change.RAISED, Change.CLEARED]
    raised, cleared = (c.episode for c in changes)
    ev = raised.evidence
    assert ev["recognised_by"] == "switch_on_edge"
    assert at(24.1) <= raised.raised_at <= at(24.5)
    assert str(ev["start"]) >= at(22.99).isoformat() and str(ev["start"]) <= at(23.05).isoformat()
    assert ev["power_factor"] is not None and 0.68 <= float(ev["power_factor"]) <= 0.76
    assert cleared.cleared_at is not None and at(26.0) <= cleared.cleared_at <= at(29.5)


def test_a_fridge_sized_edge_with_a_fridges_power_factor_is_no_charger() -> None:
    # 120 W at PF 0.8 that stays on for hours (a chest freezer's long run): a clean edge of
    # about 30 VA, but a power factor above a charger's without PFC.
    loads = [*HOUSE, steady(hours(19), hours(4), 120.0, 0.8)]
    assert run(readings(loads)) == []


def test_a_load_that_stops_holding_is_no_charger_by_its_edge() -> None:
    # A charger-like switch-on (120 W at PF 0.65) whose load drops back by more than half
    # every quarter of an hour without a clean switch-off (a motor that runs and idles): the
    # edge's load does not hold, so it is not recognised by its edge.
    def idling(t: float) -> tuple[float, float]:
        x = t - hours(19)
        if not 0 <= x < hours(3):
            return 0.0, 1.0
        return (120.0 if x % 900.0 < 600.0 else 40.0), 0.65

    changes = run(readings([*HOUSE, idling]))
    assert all(c.episode.evidence["recognised_by"] != "switch_on_edge" for c in changes)


def test_a_session_never_stays_open_longer_than_a_charger_runs() -> None:
    # A low-power-factor load that looks like a charger's plateau but runs for 14 hours (a
    # dehumidifier left on): it is raised like a charger, but no charger holds its plateau
    # for more than max_plateau_s (10 h), so the episode ends then, not when the load stops.
    loads = [*HOUSE, steady(hours(19), hours(14), 150.0, 0.6)]
    changes = run(readings(loads, until=hours(36)))
    kinds = [c.change for c in changes if c.change is not Change.UPDATED]
    assert kinds == [Change.RAISED, Change.CLEARED]
    cleared = changes[-1].episode
    assert cleared.evidence["ended_by"] == "timeout"
    assert cleared.cleared_at is not None and at(28.5) <= cleared.cleared_at <= at(29.6)


def test_a_charger_read_every_10_s_is_recognised_like_one_read_every_minute() -> None:
    # A charger's current ripples by a few per cent. The spread of a 5-minute bin's readings
    # grows with their number: judged on every reading, a meter polled every 10 s would show
    # no quiet bin for the same ripple that a meter polled every minute shows as quiet.
    for every in (60.0, 10.0):
        loads = [standby, charger(hours(19), cc=hours(3), taper=hours(1.5))]
        changes = run(readings(loads, every=every, ripple=0.03, until=hours(26)))
        raised = [c.episode for c in changes if c.change is Change.RAISED]
        assert len(raised) == 1, every
        assert raised[0].evidence["recognised_by"] == "non_active_plateau", every
        assert at(19.5) <= raised[0].raised_at <= at(20.3), every
