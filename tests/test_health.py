"""The pure parts of volume health (mkv/volumes/health.py) and the full ranking beside key2volume
(mkv/placement.py): where a write goes when volumes are down, the order GET asks replicas in,
and when a volume counts as down or up."""

import hashlib

import pytest

from mkv.placement import key2ranking, key2volume, place
from mkv.volumes.health import (
    DOWN_AFTER_PROBES,
    VolumeState,
    asked_last,
    volume_of,
)

VOLUMES = [f"127.0.0.1:{3001 + i}" for i in range(5)]


def test_ranking_starts_with_key2volume() -> None:
    for i in range(500):
        key = f"/rank-{i}".encode()
        for subvolumes in (1, 3, 10):
            ranking = key2ranking(key, VOLUMES, subvolumes)
            assert sorted(r.partition("/")[0] for r in ranking) == sorted(VOLUMES)
            for replicas in range(1, len(VOLUMES) + 1):
                assert ranking[:replicas] == key2volume(key, VOLUMES, replicas, subvolumes)


def test_ranking_follows_the_formula() -> None:
    """Written out independently: md5(key + volume) descending, each with its own subvolume."""
    key = b"/formula"
    scores = {v: hashlib.md5(key + v.encode()).digest() for v in VOLUMES}
    expected = [f"{v}/sv{int.from_bytes(scores[v][12:16], 'big') % 7:02X}"
                for v in sorted(VOLUMES, key=scores.__getitem__, reverse=True)]
    assert key2ranking(key, VOLUMES, 7) == expected


def test_spec_example_ranking() -> None:
    # SPEC §2: with one replica hello→larry, helloworld→curly, world→moe
    stooges = ["larry", "moe", "curly"]
    for key, first in ((b"hello", "larry"), (b"helloworld", "curly"), (b"world", "moe")):
        assert key2ranking(key, stooges, 1)[0] == first


def test_placement_around_volumes_down_keeps_subvolumes() -> None:
    key = b"/skip"
    ranking = key2ranking(key, VOLUMES, 10)
    today = key2volume(key, VOLUMES, 3, 10)
    assert place(key, VOLUMES, 3, 10, down=set()) == today
    second = today[1].partition("/")[0]
    placed = place(key, VOLUMES, 3, 10, down={second})
    # the down volume's place goes to the next in rank, with that volume's own subvolume
    assert placed == [today[0], today[2], ranking[3]]
    assert place(key, VOLUMES, 1, 10, down=set(VOLUMES) - {volume_of(today[0])}) == today[:1]
    assert place(key, VOLUMES, 3, 10, down=set(VOLUMES) - {volume_of(r) for r in today}) == today


def test_placement_around_is_short_when_too_few_are_up() -> None:
    assert len(place(b"/few", VOLUMES, 3, 10, down=set(VOLUMES[:3]))) == 2
    assert len(place(b"/few", VOLUMES, 2, 10, down=set(VOLUMES[:3]))) == 2
    assert place(b"/few", VOLUMES, 1, 10, down=set(VOLUMES)) == []


def test_asked_last_moves_replicas_on_volumes_down_to_the_end() -> None:
    replicas = ["a:1/sv01", "b:2/sv02", "c:3/sv03"]
    assert asked_last(replicas, set()) == replicas
    assert asked_last(replicas, {"a:1"}) == ["b:2/sv02", "c:3/sv03", "a:1/sv01"]
    assert asked_last(replicas, {"b:2", "a:1"}) == ["c:3/sv03", "a:1/sv01", "b:2/sv02"]
    assert asked_last(replicas, {"a:1", "b:2", "c:3"}) == replicas  # all down: all still asked


def test_a_request_that_cannot_reach_a_volume_marks_it_down_at_once() -> None:
    state = VolumeState()
    assert state.up
    assert state.unreachable() is True
    assert not state.up
    assert state.unreachable() is False  # already down: no second change
    assert state.probed(True) is True  # the first probe answered: up again
    assert state.up


@pytest.mark.parametrize("failures", range(1, DOWN_AFTER_PROBES + 2))
def test_probes_mark_down_only_after_failures_in_a_row(failures: int) -> None:
    state = VolumeState()
    changes = [state.probed(False) for _ in range(failures)]
    assert state.up == (failures < DOWN_AFTER_PROBES)
    assert changes.count(True) == (0 if failures < DOWN_AFTER_PROBES else 1)


def test_an_answered_probe_resets_the_count() -> None:
    state = VolumeState()
    for _ in range(DOWN_AFTER_PROBES - 1):
        state.probed(False)
    state.probed(True)
    for _ in range(DOWN_AFTER_PROBES - 1):
        assert state.probed(False) is False
    assert state.up
