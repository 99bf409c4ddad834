"""SPEC §6's placement, checked as properties over random keys and volume lists, independently
of the code's own walk: with every weight 1 and no domains it is key2volume; with as many
domains as replicas no key has two replicas in one domain; a volume of weight N is first for
N/ΣN of the keys; a volume down is skipped by the same walk."""

import hashlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mkv.placement import key2volume, place

keys = st.binary(min_size=1, max_size=40)
volume_lists = st.lists(st.from_regex(r"[a-z]{1,8}:[1-9][0-9]{3}", fullmatch=True),
                        min_size=1, max_size=9, unique=True)


@given(keys, volume_lists, st.integers(1, 9), st.sampled_from([1, 3, 10]))
@settings(max_examples=400)
def test_without_domains_or_weights_it_is_key2volume(key, volumes, replicas, subvolumes):
    replicas = min(replicas, len(volumes))
    expected = key2volume(key, volumes, replicas, subvolumes)
    assert place(key, volumes, replicas, subvolumes) == expected
    assert place(key, volumes, replicas, subvolumes, {}, {v: 1 for v in volumes}) == expected


@given(keys, st.integers(2, 4), st.integers(1, 3), st.data())
@settings(max_examples=400)
def test_enough_domains_never_share_one(key, domains, per_domain, data):
    volumes = [f"d{d}v{v}:3001" for d in range(domains) for v in range(per_domain)]
    domain_of = {v: v.split("v")[0] for v in volumes}
    replicas = data.draw(st.integers(1, len(volumes)))
    placed = place(key, volumes, replicas, 1, domain_of)
    assert len(placed) == replicas and len(set(placed)) == replicas
    spread = [domain_of[v] for v in placed]
    if replicas <= domains:
        assert len(set(spread)) == replicas
    else:  # every domain used before any twice
        assert set(spread) == set(domain_of.values())


@given(keys, st.data())
@settings(max_examples=200)
def test_a_volume_down_is_skipped_by_the_same_walk(key, data):
    volumes = [f"d{d}v{v}:3001" for d in range(3) for v in range(2)]
    domain_of = {v: v.split("v")[0] for v in volumes}
    down = set(data.draw(st.lists(st.sampled_from(volumes), max_size=3)))
    placed = place(key, volumes, 2, 1, domain_of, down=down)
    up = [v for v in volumes if v not in down]
    assert placed == place(key, up, 2, 1, domain_of)  # as if the down ones were not there
    assert not set(placed) & down


def first_choice(key: bytes, volumes: list[str], weights: dict[str, int]) -> str:
    """Written out from SPEC §6: each volume's largest of its N scores, the largest first."""
    def score(v: str) -> bytes:
        return max(hashlib.md5(key + v.encode() + (b"#%d" % n if n else b"")).digest()
                   for n in range(weights.get(v, 1)))
    return max(volumes, key=score)


def test_weights_share_the_first_replica_as_they_say():
    volumes = ["a:1", "b:1", "c:1", "d:1"]
    weights = {"a:1": 1, "b:1": 2, "c:1": 3, "d:1": 4}
    keys = [b"/w/%d" % n for n in range(100_000)]
    first = Counter(place(k, volumes, 1, 1, weights=weights)[0] for k in keys)
    for k in keys[:2000]:
        assert place(k, volumes, 1, 1, weights=weights)[0] == first_choice(k, volumes, weights)
    for v, n in weights.items():
        share = first[v] / len(keys)
        print(f"{v} weight {n}: first for {share:.2%} of keys (predicted {n / 10:.0%})")
        assert abs(share - n / 10) <= 0.02


def test_with_colocation_a_directory_shares_its_spread_placement():
    from mkv.config import Config

    volumes = tuple(f"v{n}:3001" for n in range(6))
    racks = tuple((v, f"rack{n // 2}") for n, v in enumerate(volumes))
    config = Config(volumes=volumes, replicas=3, subvolumes=4, vdir_colocation=True,
                    domains=racks, weights=((volumes[0], 5),))
    for directory in range(200):
        placed = {tuple(config.placement(b"/d%d/file-%d" % (directory, n))) for n in range(5)}
        assert len(placed) == 1  # every file of the directory on the same replicas
        [replicas] = placed
        assert len({dict(racks)[r.partition("/")[0]] for r in replicas}) == 3
        assert list(replicas) == place(b"/d%d" % directory, list(volumes), 3, 4, dict(racks),
                                       {volumes[0]: 5})
