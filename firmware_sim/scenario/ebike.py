"""E-bike batteries and their chargers: constant current, constant voltage, float (CC-CV).

No package ships e-bike charging curves, so they are simulated from the chargers' physics
(``shared/domain.md``):

* lead-acid 48 V (four 12 V blocks, 12-20 Ah): constant current about 0.15 C (1.8-3 A) while the
  pack voltage climbs from about 51 V to the 58.8 V absorption voltage, for 2-6 h; then constant
  voltage with the current decaying roughly exponentially for 1-3 h; then float (about 55 V and a
  trickle): a few watts until the plug is pulled;
* lithium 48 V (13S, 54.6 V): 2-5 A for about Ah / A hours (times depth of discharge), a shorter
  taper, then the charger switches off;
* illegal 60-72 V packs (above the GB 17761-2018 limit of 48 V): 300-500 W at the wall.

Wall power is DC power over the charger's efficiency (0.8-0.9) plus a few watts of overhead, with
2-5 % ripple. Cheap chargers have no power-factor correction (PF 0.55-0.72), so the current a
meter sees is higher than P/V.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from firmware_sim.scenario._rng import chance, clamp
from firmware_sim.scenario.timebase import HOUR, MINUTE

LEAD_ACID = "lead_acid"
LITHIUM = "lithium"
LITHIUM_HV = "lithium_60_72v"


class Curve:
    """A load whose power depends on time (``r`` is a uniform random number for noise)."""

    __slots__ = ()

    def power(self, t: int, r: float) -> float:  # pragma: no cover - interface
        raise NotImplementedError


class ChargeSession(Curve):
    """One plug-in of one battery: a CC-CV(-float) wall-power curve."""

    __slots__ = (
        "cc_end",
        "chemistry",
        "overhead",
        "p_cc",
        "p_start",
        "pf",
        "ripple",
        "start",
        "tail_w",
        "taper_end",
        "tau",
        "unplug",
    )

    def __init__(
        self,
        *,
        chemistry: str,
        start: int,
        cc_end: int,
        taper_end: int,
        unplug: int,
        p_start: float,
        p_cc: float,
        tau: float,
        overhead: float,
        tail_w: float,
        ripple: float,
        pf: float,
    ) -> None:
        self.chemistry = chemistry
        self.start = start
        self.cc_end = cc_end
        self.taper_end = taper_end
        self.unplug = unplug
        self.p_start = p_start
        self.p_cc = p_cc
        self.tau = tau
        self.overhead = overhead
        self.tail_w = tail_w
        self.ripple = ripple
        self.pf = pf

    @property
    def end(self) -> int:
        """End of charging: the end of the taper, or the unplug if that came first."""
        return min(self.taper_end, self.unplug)

    @property
    def plateau_w(self) -> float:
        return (self.p_start + self.p_cc) / 2

    @property
    def unplugged_early(self) -> bool:
        return self.unplug < self.taper_end

    def power(self, t: int, r: float) -> float:
        if t < self.start or t >= self.unplug:
            return 0.0
        if t < self.cc_end:
            u = (t - self.start) / (self.cc_end - self.start)
            base = self.p_start + (self.p_cc - self.p_start) * math.pow(u, 1.6)
        elif t < self.taper_end:
            base = self.overhead + (self.p_cc - self.overhead) * math.exp(
                -(t - self.cc_end) / self.tau
            )
        else:
            return self.tail_w * (0.95 + 0.1 * r)
        return base * (1.0 + self.ripple * (2.0 * r - 1.0))


class PlugIn(Curve):
    """A charger plugged in and pulled out again within a minute (not a charging session)."""

    __slots__ = ("end", "start", "watts")

    def __init__(self, start: int, end: int, watts: float) -> None:
        self.start = start
        self.end = end
        self.watts = watts

    @property
    def unplug(self) -> int:
        return self.end

    def power(self, t: int, r: float) -> float:
        return self.watts * (0.97 + 0.06 * r) if self.start <= t < self.end else 0.0


@dataclass(slots=True)
class Battery:
    chemistry: str
    volts: int
    ah: float
    i_cc: float
    eff: float
    pf: float
    owner: int
    """Index of the person who charges it."""
    interval_days: float
    next_due: float
    on_sensor: bool = False
    busy_until: int = 0
    twice_daily: bool = False
    forced_first: bool = False

    def describe(self) -> str:
        return f"{self.volts} V {self.ah:.0f} Ah {self.chemistry}"


def make_battery(rng: random.Random, owner: int, *, rider: bool, illegal_p: float) -> Battery:
    r = rng.random()
    eff = rng.uniform(0.8, 0.9)
    pf = rng.uniform(0.55, 0.72) if chance(rng, 0.8) else rng.uniform(0.92, 0.98)
    if r < illegal_p:
        volts = rng.choice([60, 72])
        v_cv = 67.2 if volts == 60 else 84.0
        wall = rng.uniform(320.0, 530.0)  # at the end of CC: the plateau averages 300-500 W
        bat = Battery(
            LITHIUM_HV,
            volts,
            rng.uniform(20.0, 32.0),
            wall * eff / v_cv,
            eff,
            pf,
            owner,
            rng.uniform(0.8, 2.0),
            0.0,
        )
    elif r < illegal_p + (1 - illegal_p) * 0.42:
        bat = Battery(
            LITHIUM,
            48,
            rng.uniform(10.0, 24.0),
            rng.uniform(2.0, 5.0),
            eff,
            pf,
            owner,
            rng.uniform(1.2, 3.5),
            0.0,
        )
    else:
        ah = rng.choice([12.0, 12.0, 14.0, 20.0, 20.0])
        bat = Battery(
            LEAD_ACID,
            48,
            ah,
            0.15 * ah * rng.uniform(0.9, 1.1),
            eff,
            pf,
            owner,
            rng.uniform(1.0, 3.0),
            0.0,
        )
    if rider:
        bat.interval_days = rng.uniform(0.45, 1.2)
        bat.twice_daily = chance(rng, 0.6)
    bat.next_due = rng.uniform(0.0, bat.interval_days)
    return bat


def new_session(
    rng: random.Random, bat: Battery, start: int, *, hold_until: int | None = None
) -> ChargeSession:
    """A charging session of ``bat`` plugged in at ``start``.

    ``hold_until``: when the owner will pull the plug at the latest (e.g. leaving in the
    morning); sessions are sometimes cut short, which is realistic (an unfinished charge).
    """
    ripple = rng.uniform(0.02, 0.05)
    overhead = rng.uniform(1.5, 4.0)
    if bat.chemistry == LEAD_ACID:
        v0, v_cv = rng.uniform(52.5, 55.0), rng.uniform(58.2, 59.4)
        cc_h = rng.uniform(2.0, 6.0)
        taper_h = rng.uniform(1.0, 3.0)
        ratio = rng.uniform(0.05, 0.12)
        tail = 55.0 * rng.uniform(0.04, 0.1) / bat.eff + overhead
    elif bat.chemistry == LITHIUM:
        v0, v_cv = rng.uniform(46.5, 50.0), 54.6
        cc_h = clamp(bat.ah * rng.uniform(0.3, 0.9) / bat.i_cc, 1.0, 7.0)
        taper_h = rng.uniform(0.4, 1.5)
        ratio = rng.uniform(0.08, 0.2)
        tail = rng.uniform(0.3, 1.5)
    else:
        v_cv = 67.2 if bat.volts == 60 else 84.0
        v0 = v_cv * rng.uniform(0.86, 0.92)
        cc_h = clamp(bat.ah * rng.uniform(0.3, 0.9) / bat.i_cc, 1.5, 6.0)
        taper_h = rng.uniform(0.4, 1.2)
        ratio = rng.uniform(0.08, 0.2)
        tail = rng.uniform(0.3, 1.5)
    cc_end = start + int(cc_h * HOUR)
    taper_end = cc_end + int(taper_h * HOUR)
    tau = taper_h * HOUR / math.log(1.0 / ratio)
    if chance(rng, 0.12):  # unplugged before the end (needed the bike, or the battery)
        unplug = start + max(25 * MINUTE, int((taper_end - start) * rng.uniform(0.25, 0.95)))
    else:
        unplug = taper_end + int(rng.uniform(0.3, 10.0) * HOUR)
    if hold_until is not None and hold_until > start + 25 * MINUTE:
        unplug = min(unplug, hold_until)
    return ChargeSession(
        chemistry=bat.chemistry,
        start=start,
        cc_end=cc_end,
        taper_end=taper_end,
        unplug=unplug,
        p_start=v0 * bat.i_cc / bat.eff + overhead,
        p_cc=v_cv * bat.i_cc / bat.eff + overhead,
        tau=tau,
        overhead=overhead,
        tail_w=tail,
        ripple=ripple,
        pf=bat.pf,
    )


def random_battery(rng: random.Random) -> Battery:
    """A battery of someone from the building (for common-area sensors)."""
    return make_battery(rng, -1, rider=False, illegal_p=0.12)
