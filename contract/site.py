"""The site model (which device is in which flat or place) and rule thresholds.

Both travel on the wire (the fleet manager pushes them as part of a gateway's desired config)
and both are read by ``edge-agent replay`` from ``site.json`` / the agent config, so they live in
the contract. Field names follow ``spec/replay.md``.
"""

from __future__ import annotations

from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(StrEnum):
    UNIT = "unit"
    STAIRWELL = "stairwell"
    CORRIDOR = "corridor"
    LOBBY = "lobby"
    BIKE_SHED = "bike_shed"


class Unit(_Strict):
    unit_id: str = Field(min_length=1)
    building: str = Field(min_length=1)
    floor_area_m2: float | None = Field(default=None, gt=0)
    rooms: int | None = Field(default=None, ge=1)
    registered_occupants: int | None = Field(default=None, ge=0)
    rated_current_a: float | None = Field(default=None, gt=0)


class CardRegistration(_Strict):
    card: str = Field(min_length=1)
    unit_id: str


class MeterPlacement(_Strict):
    meter_id: str = Field(min_length=1)
    unit_id: str


class SensorPlacement(_Strict):
    sensor_id: str = Field(min_length=1)
    location: Location
    unit_id: str | None = None
    building: str | None = None

    @model_validator(mode="after")
    def _placed(self) -> SensorPlacement:
        if self.location is Location.UNIT and self.unit_id is None:
            raise ValueError("a sensor at location 'unit' needs unit_id")
        if self.location is not Location.UNIT and self.building is None and self.unit_id is None:
            raise ValueError(f"a sensor at location {self.location.value!r} needs building")
        return self


class ReaderPlacement(_Strict):
    reader_id: str = Field(min_length=1)
    building: str


class Site(_Strict):
    """``site.json`` of the replay spec; also the mapping part of a gateway's config."""

    site_id: str = Field(min_length=1)
    timezone: str = "Asia/Shanghai"
    units: list[Unit] = Field(default_factory=list)
    cards: list[CardRegistration] = Field(default_factory=list)
    meters: list[MeterPlacement] = Field(default_factory=list)
    sensors: list[SensorPlacement] = Field(default_factory=list)
    readers: list[ReaderPlacement] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Site:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r} (use an IANA name)") from None
        units = {u.unit_id for u in self.units}
        refs: list[tuple[str, list[str]]] = [
            ("cards", [c.unit_id for c in self.cards]),
            ("meters", [m.unit_id for m in self.meters]),
        ]
        for kind, unit_ids in refs:
            for i, unit_id in enumerate(unit_ids):
                if unit_id not in units:
                    raise ValueError(f"{kind}[{i}]: unknown unit_id {unit_id!r}")
        for i, s in enumerate(self.sensors):
            if s.unit_id is not None and s.unit_id not in units:
                raise ValueError(f"sensors[{i}]: unknown unit_id {s.unit_id!r}")
        for kind, ids in (
            ("unit_id", [u.unit_id for u in self.units]),
            ("meter_id", [m.meter_id for m in self.meters]),
            ("sensor_id", [s.sensor_id for s in self.sensors]),
            ("reader_id", [r.reader_id for r in self.readers]),
        ):
            seen: set[str] = set()
            for x in ids:
                if x in seen:
                    raise ValueError(f"duplicate {kind} {x!r}")
                seen.add(x)
        return self


class EbikeChargingConfig(_Strict):
    """Thresholds of the ``ebike_charging`` rule (charging sensors).

    Charging indoors, in lobbies, corridors, stairwells and exits is forbidden:
    高层民用建筑消防安全管理规定 (2021) art. 37; 上海市非机动车安全管理条例 (amended 2024).
    """

    min_duration_s: float = Field(default=120.0, ge=0, description="charging must hold this long")
    clear_after_s: float = Field(
        default=60.0, ge=0, description="not-charging must hold this long to clear (hysteresis)"
    )
    stale_after_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "no report for this long ends the episode. BLE adverts are lost for minutes at a "
            "time (interference, the bike's frame shielding the sensor) while the charger stays "
            "plugged in for hours, so a shorter value splits one charging session into several "
            "alerts"
        ),
    )
    resume_within_s: float = Field(
        default=21600.0,
        ge=0,
        description=(
            "an episode whose sensor went silent is held this long after the last report: a "
            "charging report within it continues the same episode (a BLE sensor can drop out "
            "for hours while the charger stays plugged in, and a charge lasts up to 8-10 h); "
            "otherwise it clears at the last report + stale_after_s. At or below "
            "stale_after_s, silence clears at once"
        ),
    )
    peak_update_ratio: float = Field(
        default=1.10,
        ge=1.0,
        description="re-publish an open episode when its peak power rises by this factor",
    )
    night_start_hour: int = Field(default=22, ge=0, le=23)
    night_end_hour: int = Field(default=6, ge=0, le=23)


class GroupRentalConfig(_Strict):
    """Thresholds of the ``suspected_group_rental`` rule (card swipes, corroborated by meters).

    Legal figures (domain.md, regulation table): at most 2 persons per room, family excepted,
    and at least 5 m² of living area per person (上海市居住房屋租赁管理办法, 2014 amendment;
    苏州市出租房屋居住安全管理条例 2019 uses 4 m² of usable area); 10 or more residents in one
    unit is a group rental by count (seed 002, Changzhou 2019). Seed 000 asks for swipe
    frequency at the entrance as the base data (以电子门禁刷卡频次为基础数据). The door-access
    pilot alarm of Putuo (2021: more than 6 registered persons or 20 openings a day) was
    criticised as too strict, so the usage signals here are relative to the building's own
    flats rather than absolute, and one signal alone never raises.
    """

    window_days: int = Field(
        default=7, ge=2, le=31, description="rolling window of local days the rule looks at"
    )
    warmup_days: int = Field(
        default=5,
        ge=1,
        le=31,
        description="complete local days seen before the first evaluation (no alert earlier)",
    )
    min_active_days: int = Field(
        default=3,
        ge=1,
        description="a registered card counts as an occupant when used on at least this many "
        "days of the window",
    )
    max_persons_per_room: float = Field(
        default=2.0,
        gt=0,
        description="at most 2 persons per room, family excepted (Shanghai 2014 amendment)",
    )
    min_area_per_person_m2: float = Field(
        default=5.0,
        ge=0,
        description="at least 5 m² living area per person (Shanghai; Suzhou/Hangzhou: 4 m² usable)",
    )
    max_residents: int = Field(
        default=10,
        ge=2,
        description="this many residents or more in one unit is a group rental by count "
        "(seed 002, Changzhou 2019)",
    )
    family_margin: int = Field(
        default=0,
        ge=0,
        description="a flat whose estimated occupants do not exceed registered_occupants + this "
        "is the registered household and is never flagged (families are exempt from the "
        "density limits, however large)",
    )
    shared_card_ratio: float = Field(
        default=2.5,
        gt=1,
        description="a card swiped on its active days at least this many times the building's "
        "median per-card rate counts as shared (one person does not swipe that often)",
    )
    max_persons_per_card: int = Field(
        default=4, ge=1, description="cap on the persons one shared card is taken to stand for"
    )
    paired_entry_min_s: float = Field(
        default=120.0,
        ge=0,
        description="a paired entry: a card's swipe at least this long after its previous "
        "swipe (a re-swipe at a reader that did not beep comes seconds later)...",
    )
    paired_entry_max_s: float = Field(
        default=1800.0,
        gt=0,
        description="... and at most this long after it: one person must have gone out and "
        "come back in that time, two people on one card come home at the same hour",
    )
    paired_card_ratio: float = Field(
        default=2.0,
        gt=1,
        description="a card swiped on its active days at least this many times the building's "
        "median per-card rate (two people's worth) also counts as shared when its entries "
        "include paired entries (paired_min_days, paired_min_share)",
    )
    paired_min_days: int = Field(
        default=2,
        ge=1,
        description="days of the window on which a card needs a paired entry to count as shared "
        "(two people on one card come home together again and again; a burst of errands is "
        "one afternoon)",
    )
    paired_min_share: float = Field(
        default=0.08,
        ge=0,
        le=1,
        description="... and at least this share of the card's swipes in the window",
    )
    swipes_min_ratio: float = Field(
        default=1.5,
        ge=1,
        description="the swipes signal: a flat's swipes per day at least this many times the "
        "building's median over occupied flats...",
    )
    swipes_mad_k: float = Field(
        default=1.0,
        ge=0,
        description="... and above median + k * MAD * 1.4826 (robust z-score; MAD floored at "
        "10 % of the median)",
    )
    unregistered_min_days: int = Field(
        default=3,
        ge=1,
        description="a card not in the site's card list used on at least this many days of "
        "the window is an unregistered card in daily use (building-level corroboration)",
    )
    load_ratio: float = Field(
        default=1.3,
        ge=1,
        description="the load signal: daily energy and evening peak-to-valley spread both at "
        "least this many times the median of similar flats",
    )
    hidden_load_ratio: float = Field(
        default=2.0,
        ge=1,
        description="the hidden-tenants signal: the load at least this many times that of "
        "similar flats...",
    )
    hidden_min_unregistered: int = Field(
        default=2,
        ge=1,
        description="... in a building where at least this many unregistered cards are in "
        "daily use (people live there whom the card list does not place)",
    )
    explained_load_ratio: float = Field(
        default=3.0,
        ge=1,
        description="the registered household no longer explains the flat when its load is at "
        "least this many times that of similar flats while hidden_tenants holds (unregistered "
        "cards in daily use in the building): three times the energy and the evening spread is "
        "what three households make, and a large family's cards are mostly registered",
    )
    explained_load_per_person: float = Field(
        default=1.25,
        gt=0,
        description="... or at least this many times that of similar flats per registered "
        "occupant, when that is lower: a registered couple accounts for up to 2.5 times a "
        "similar flat's load (generous: a household's energy grows less than its size, one "
        "fridge and one water heater whatever the number of people)",
    )
    over_registration_margin: int = Field(
        default=2,
        ge=1,
        description="the over-registration signal: at least this many more card holders in "
        "daily use than the flat's registered_occupants (people live there whom the household "
        "registration does not list: the 治安 hazard of unregistered tenants, seed 002)",
    )
    strong_swipes_ratio: float = Field(
        default=2.5,
        ge=1,
        description="without the density signal, a flat is suspected only on strong usage: "
        "swipes at least this many times the building's median...",
    )
    strong_load_ratio: float = Field(
        default=1.8,
        ge=1,
        description="... or a load at least this many times that of similar flats (or a shared "
        "card, or hidden tenants)",
    )
    evening_start_hour: int = Field(default=18, ge=0, le=23)
    evening_end_hour: int = Field(default=23, ge=1, le=24)
    valley_start_hour: int = Field(default=2, ge=0, le=23)
    valley_end_hour: int = Field(default=5, ge=1, le=24)
    min_signals: int = Field(
        default=2, ge=1, description="independent signals that must agree to suspect a flat"
    )
    raise_after_days: int = Field(
        default=2,
        ge=1,
        description="consecutive daily evaluations that must suspect the flat before it is "
        "raised (hysteresis)",
    )
    clear_after_days: int = Field(
        default=3,
        ge=1,
        description="consecutive daily evaluations without suspicion before an episode clears "
        "(hysteresis)",
    )
    occupants_update_step: int = Field(
        default=2,
        ge=1,
        description="re-publish an open episode when the occupant estimate moves by this many",
    )

    @model_validator(mode="after")
    def _paired_bounds(self) -> GroupRentalConfig:
        if self.paired_entry_min_s >= self.paired_entry_max_s:
            raise ValueError("paired_entry_min_s must be below paired_entry_max_s")
        return self


class EbikeChargingSuspectedConfig(_Strict):
    """Thresholds of the ``ebike_charging_suspected`` rule (a flat's meter alone).

    Signature (domain.md): a constant-current plateau of about 60-300 W (up to ~500 W for
    illegal 60 V+ packs) for 1-6 h, then a constant-voltage taper over 0.5-3 h to a few watts.
    GB 17761-2018 caps e-bike batteries at 48 V nominal (a 48 V pack at 2-5 A draws roughly
    100-300 W). Chargers have a low power factor (no PFC: about 0.5-0.7), so when the meter
    reports voltage and current the rule works on the non-active part of the load,
    ``voltage_v * current_a - power_w`` (VA): heaters, kettles and cookers have none, PCs and
    TVs above 75 W little (GB 17625.1 makes them correct their power factor). Charging inside
    residential buildings is forbidden in Shanghai (上海市非机动车安全管理条例, amended 2024).
    Durations are deliberately looser than the typical figures, so that partly charged
    batteries are still recognised.
    """

    bin_s: float = Field(
        default=300.0,
        ge=30,
        le=900,
        description="readings are reduced to the minimum of each bin of this length",
    )
    envelope_s: float = Field(
        default=1800.0,
        ge=0,
        description="the lower envelope is the minimum over this trailing window: hides "
        "kettles, cookers and fridge cycles, keeps continuous loads such as a charger",
    )
    min_step_w: float = Field(
        default=60.0,
        gt=0,
        description="smallest fall a taper of real power must make (the charger's step)",
    )
    max_step_w: float = Field(
        default=500.0,
        gt=0,
        description="largest fall a taper of real power may make (60 V+ packs; heaters are kW)",
    )
    min_step_va: float = Field(
        default=50.0,
        gt=0,
        description="smallest charger step of voltage_v * current_a - power_w: a 75 W load at "
        "power factor 0.6 (below 75 W, GB 17625.1 class D, laptops and LED lights need no PFC "
        "either; the smallest 48 V charger draws about 110 W)",
    )
    max_step_va: float = Field(
        default=450.0,
        gt=0,
        description="largest charger step of voltage_v * current_a - power_w (500 W at 0.53)",
    )
    max_pf: float = Field(
        default=0.78,
        gt=0,
        le=1,
        description="with voltage and current: a step whose power factor is known to be above "
        "this is not a charger (chargers without PFC: 0.5-0.7; fridges, fans and PFC-corrected "
        "electronics: higher)",
    )
    min_plateau_s: float = Field(
        default=3600.0,
        ge=0,
        description="before a taper, the constant-current plateau must have held this long "
        "(an e-bike pack's CC phase is 1-6 h; a laptop's is under an hour)",
    )
    max_plateau_s: float = Field(
        default=10 * 3600.0,
        gt=0,
        description="a plateau longer than this is another continuous load, not a charger",
    )
    plateau_hold_s: float = Field(
        default=600.0,
        ge=0,
        description="with voltage and current: a low-power-factor step is recognised once it "
        "has held this long after it shows in the envelope (so after envelope_s + this, 40 "
        "minutes of charging: an e-bike pack's CC phase is 1-6 h) and min_quiet_bins of it "
        "were steady",
    )
    plateau_tolerance: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="with voltage and current, a candidate's taper starts when its level falls "
        "this fraction below its step; before a taper of real power, the plateau may sag by "
        "twice this fraction of the fall",
    )
    recognise_fraction: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="with voltage and current, a candidate is recognised on its plateau only "
        "while it still holds this fraction of its step",
    )
    min_taper_s: float = Field(
        default=600.0,
        ge=0,
        description="a taper of real power must have lasted this long to be recognised",
    )
    max_taper_s: float = Field(
        default=4 * 3600.0, gt=0, description="a taper longer than this ends the session"
    )
    taper_max_drop_fraction: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="a taper is gradual: no single bin carries more than this fraction of it "
        "(a PC or a TV switched off drops all at once)",
    )
    taper_ramp_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="at least this fraction of a taper must fall as a ramp (readings falling "
        "bit by bit), not as appliances switching off one after another",
    )
    taper_non_active_fraction: float = Field(
        default=0.12,
        ge=0,
        description="with voltage and current, a taper recognised on real power must lose at most "
        "this fraction of its fall in non-active power: a charger with active PFC (power factor "
        "0.9 or more loses at most 11 %, 0.95 about 5 %); lamps, fans and motors lose more, and "
        "low-power-factor chargers are recognised by their plateau",
    )
    taper_rise_fraction: float = Field(
        default=0.25,
        ge=0,
        description="small rises within a taper (a lamp) are tolerated up to this fraction of the "
        "decline so far (or quiet_w); more ends the run",
    )
    taper_pause_s: float = Field(
        default=1200.0,
        gt=0,
        description="a taper that has not fallen for this long has ended (the tail is reached)",
    )
    taper_step_fraction: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="with voltage and current, at most this fraction of a candidate's step can "
        "taper away within one bin",
    )
    tail_fraction: float = Field(
        default=0.15,
        ge=0,
        lt=1,
        description="with voltage and current, a session ends when the charger's non-active "
        "step is down to this fraction of its peak...",
    )
    tail_va: float = Field(default=8.0, ge=0, description="... or to this many VA")
    match_tolerance: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="a sudden drop within this relative tolerance of a load's level is that load "
        "switched off (a PC or TV ends abruptly; a charger tapers)",
    )
    quiet_w: float = Field(
        default=10.0,
        ge=0,
        description="a bin whose readings spread by at most this (plus quiet_fraction of its "
        "level) is quiet: nothing switched and nothing fluctuated in it",
    )
    quiet_va: float = Field(
        default=10.0,
        ge=0,
        description="the same for the non-active signal (a charger's current ripples by a few "
        "per cent: 5-10 VA of a 100-300 VA step; a meter's 0.01 A resolution is 2.3 VA)",
    )
    quiet_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="added to quiet_w / quiet_va as a fraction of the bin's level: a charger's "
        "current ripples by 2-5 %, and several chargers on at once ripple together",
    )
    min_quiet_bins: int = Field(
        default=5,
        ge=0,
        description="a candidate is recognised only after this many quiet bins while it was on "
        "(25 minutes of steady non-active load): a charger draws a steady current, a washing "
        "machine or a PC under load does not",
    )
    max_gap_s: float = Field(
        default=1800.0,
        gt=0,
        description="a gap in a meter's readings longer than this drops unconfirmed sessions",
    )
    stale_after_s: float = Field(
        default=3600.0,
        gt=0,
        description="an open episode whose meter sends nothing for this long ends",
    )
    high_step_w: float = Field(
        default=300.0,
        gt=0,
        description="a step at least this large is severity high (beyond a 48 V pack's charger, "
        "GB 17761-2018)",
    )
    night_start_hour: int = Field(default=22, ge=0, le=23)
    night_end_hour: int = Field(default=6, ge=0, le=23)


class OverloadConfig(_Strict):
    """Thresholds of the ``overload`` rule (current above the flat's rated current).

    Flats typically have a 32-63 A main breaker; sustained current above it is the
    私拉乱接 / 大功率电器 hazard of seed 002. Miniature circuit breakers (IEC 60898-1 /
    GB/T 10963.1) must trip within 1 h at 1.45 times their rating (the conventional tripping
    current); a flat sustaining that much means the breaker was bypassed or oversized.
    """

    sustain_s: float = Field(
        default=300.0, ge=0, description="current must stay above the rating this long"
    )
    clear_ratio: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="an open episode clears once current stays below this fraction of the rating",
    )
    clear_after_s: float = Field(default=180.0, ge=0, description="... for this long (hysteresis)")
    stale_after_s: float = Field(
        default=180.0,
        gt=0,
        description="a reading is believed for at most this long when the next one is missing",
    )
    episode_stale_s: float = Field(
        default=1800.0,
        gt=0,
        description="an open episode survives a gap in the readings shorter than this (a meter "
        "that misses polls does not end an overload); longer, it clears",
    )
    default_rated_current_a: float | None = Field(
        default=None,
        gt=0,
        description="rating for flats without rated_current_a; None skips those flats",
    )
    nominal_voltage_v: float = Field(
        default=220.0,
        gt=0,
        description="voltage used to derive current from power when a reading has neither "
        "current_a nor voltage_v (GB/T 156 nominal 220 V)",
    )
    high_ratio: float = Field(
        default=1.45,
        ge=1,
        description="peak at least this many times the rating is severity high (IEC 60898-1 "
        "conventional tripping current)",
    )
    high_after_s: float = Field(
        default=3600.0,
        gt=0,
        description="an overload lasting this long is severity high (conventional time, 1 h)",
    )
    peak_update_ratio: float = Field(
        default=1.10,
        ge=1.0,
        description="re-publish an open episode when its peak current rises by this factor",
    )


class DataSilenceConfig(_Strict):
    """Thresholds of the ``data_silence`` rule (devices that stopped sending).

    Seed 001: points with no data uploaded within 5 days are to be followed up with a visit
    (5日内无数据上传的点位及时跟进上门核查). A reader that stays silent for a day while another
    reader of its building keeps reporting swipes is broken, unplugged or bypassed.
    """

    silence_s: float = Field(
        default=5 * 86400.0, gt=0, description="no data for this long (seed 001: 5 days)"
    )
    reader_silence_s: float = Field(
        default=86400.0,
        gt=0,
        description="a reader silent this long while a reader of the same building is busy",
    )
    reader_peer_min_swipes: int = Field(
        default=10,
        ge=1,
        description="the other reader must have reported at least this many swipes meanwhile",
    )
    reader_peer_recent_s: float = Field(
        default=12 * 3600.0,
        gt=0,
        description="... the latest of them no longer ago than this (it is still reporting)",
    )


class RulesConfig(_Strict):
    """All rule thresholds. Defaults and their sources are documented in docs/rules.md."""

    ebike_charging: EbikeChargingConfig = Field(default_factory=EbikeChargingConfig)
    suspected_group_rental: GroupRentalConfig = Field(default_factory=GroupRentalConfig)
    ebike_charging_suspected: EbikeChargingSuspectedConfig = Field(
        default_factory=EbikeChargingSuspectedConfig
    )
    overload: OverloadConfig = Field(default_factory=OverloadConfig)
    data_silence: DataSilenceConfig = Field(default_factory=DataSilenceConfig)
