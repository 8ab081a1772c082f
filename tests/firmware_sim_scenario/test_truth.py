"""The labels in truth.json say what the events show, and nothing else."""

from __future__ import annotations

import itertools

from firmware_sim.scenario.households import is_group_rental_density

from .helpers import Loaded, ts

DAY = 86_400.0
FAMILIES = {"family", "large_family", "couple", "single", "elderly"}


def _subjects_exist(sc: Loaded) -> None:
    site = sc.site
    ids = {
        "unit_id": {u["unit_id"] for u in site["units"]},
        "meter_id": {m["meter_id"] for m in site["meters"]},
        "sensor_id": {s["sensor_id"] for s in site["sensors"]},
        "reader_id": {r["reader_id"] for r in site["readers"]},
        "building": {u["building"] for u in site["units"]},
    }
    for e in sc.truth["episodes"]:
        named = [k for k in ids if k in e]
        assert named, e
        for k in named:
            assert e[k] in ids[k], e
        assert e["end"] is None or ts(e["end"]) > ts(e["start"])
    assert set(sc.truth["group_rental_units"]) <= ids["unit_id"]
    assert set(sc.truth["households"]) == ids["unit_id"]


def test_every_labelled_subject_exists(small: Loaded, medium: Loaded) -> None:
    _subjects_exist(small)
    _subjects_exist(medium)


def test_two_days_hold_both_charging_labels(small: Loaded) -> None:
    kinds = {e["kind"] for e in small.truth["episodes"]}
    assert {"ebike_charging", "ebike_charging_suspected"} <= kinds


def test_sensor_sessions_show_as_charging(small: Loaded, medium: Loaded) -> None:
    for sc in (small, medium):
        location = {s["sensor_id"]: s["location"] for s in sc.site["sensors"]}
        for e in sc.episodes("ebike_charging"):
            assert location[e["sensor_id"]] != "bike_shed"
            start = ts(e["start"])
            end = ts(e["end"]) if e["end"] else sc.end
            assert end - start >= 120
            reports = [c for t, c, _ in sc.sensors[e["sensor_id"]] if start <= t <= end]
            assert any(reports), e
            if location[e["sensor_id"]] == "unit":
                assert "unit_id" in e
            else:
                assert "building" in e


def test_bike_shed_charging_is_reported_but_never_labelled(medium: Loaded) -> None:
    sheds = {s["sensor_id"] for s in medium.site["sensors"] if s["location"] == "bike_shed"}
    assert sheds
    assert any(c for s in sheds for _, c, _ in medium.sensors[s])
    assert not [e for e in medium.episodes("ebike_charging") if e["sensor_id"] in sheds]


def test_a_unit_sensor_session_is_also_on_the_meter(small: Loaded, medium: Loaded) -> None:
    for sc in (small, medium):
        on_meter = {(e["unit_id"], e["start"]) for e in sc.episodes("ebike_charging_suspected")}
        for e in sc.episodes("ebike_charging"):
            if "unit_id" in e:
                assert (e["unit_id"], e["start"]) in on_meter


def test_group_rentals_are_over_the_legal_density_and_families_never_listed(
    small: Loaded, medium: Loaded
) -> None:
    for sc in (small, medium):
        houses = sc.truth["households"]
        listed = set(sc.truth["group_rental_units"])
        assert listed
        for unit_id, h in houses.items():
            if h["type"] == "group_rental":
                assert unit_id in listed
                assert is_group_rental_density(h["occupants"], h["rooms"], h["floor_area_m2"])
            else:
                assert unit_id not in listed
            if h["type"] == "flat_share":
                assert not is_group_rental_density(h["occupants"], h["rooms"], h["floor_area_m2"])
        assert any(h["type"] in FAMILIES for h in houses.values())


def _gaps(times: list[float], start: float, end: float) -> list[tuple[float, float]]:
    points = [start, *times, end]
    return [(a, b) for a, b in itertools.pairwise(points) if b - a > 3600]


def test_silences_are_labelled_and_other_gaps_are_short(medium: Loaded) -> None:
    sc = medium
    labels = sc.episodes("data_silence")
    assert labels
    long_by_device: dict[str, list[tuple[float, float]]] = {}
    for e in labels:
        device = e.get("meter_id") or e.get("reader_id") or e.get("sensor_id")
        assert device
        start, end = ts(e["start"]), ts(e["end"]) if e["end"] else sc.end
        long_by_device.setdefault(device, []).append((start, end))
    series: dict[str, list[float]] = {m: [r.t for r in rs] for m, rs in sc.meters.items()}
    series.update({s: [t for t, _, _ in rs] for s, rs in sc.sensors.items()})
    readers: dict[str, list[float]] = {}
    for t, r, _ in sc.swipes:
        readers.setdefault(r, []).append(t)
    for device, times in series.items():
        for a, b in _gaps(times, sc.start, sc.end):
            labelled = any(
                la - 900 <= a and b <= lb + 900 for la, lb in long_by_device.get(device, [])
            )
            if labelled:
                assert b - a >= 5 * DAY or b >= sc.end - 1
            else:
                assert b - a < 6 * 3600, (device, a, b)
    building_of = {r["reader_id"]: r["building"] for r in sc.site["readers"]}
    for device, spans in long_by_device.items():
        times = series.get(device, readers.get(device, []))
        for la, lb in spans:
            assert not [t for t in times if la <= t < lb], device
            if device in building_of and lb - la < 5 * DAY:  # a dead reader, its peer working
                assert lb - la >= DAY
                peers = [
                    r for r, b in building_of.items() if b == building_of[device] and r != device
                ]
                assert peers
                busy = [t for r in peers for t in readers.get(r, []) if la <= t < lb]
                assert len(busy) >= 10
            elif lb < sc.end:
                assert lb - la >= 5 * DAY


def test_households_look_like_their_type(medium: Loaded) -> None:
    houses = medium.truth["households"]
    card_unit = {c["card"]: c["unit_id"] for c in medium.site["cards"]}
    swipes: dict[str, int] = {}
    for _, _, card in medium.swipes:
        unit = card_unit.get(card)
        if unit:
            swipes[unit] = swipes.get(unit, 0) + 1
    days = (medium.end - medium.start) / DAY
    vacant = [u for u, h in houses.items() if h["type"] == "vacant"]
    assert vacant and all(swipes.get(u, 0) == 0 for u in vacant)
    for u in vacant:
        assert max(r.power for r in medium.meters[f"m-{u}"]) < 300
    rentals = [swipes.get(u, 0) / days for u, h in houses.items() if h["type"] == "group_rental"]
    families = [swipes.get(u, 0) / days for u, h in houses.items() if h["type"] in FAMILIES]
    assert sum(rentals) / len(rentals) > 2 * sum(families) / len(families)
