"""Which classes are unknown (imbalance.openset_protocols): each protocol picks the classes its
definition names; splits and relabelling keep unknown samples out of the known set."""
from __future__ import annotations

import numpy as np
import pytest

from imbalance.analysis import assign_groups
from imbalance.errors import ConfigError
from imbalance.openset_protocols import (
    PROTOCOLS,
    UNKNOWN_LABEL,
    choose_unknown_classes,
    relabel_known,
    resolve_unknown_classes,
    split_known_unknown,
)

# Cao et al. profile, ratio 100 over 10 classes: many (> 100) 0-3, medium 4-6, few (< 20) 7-9
LT = [480, 288, 173, 104, 62, 37, 22, 13, 8, 4]


def test_protocol_names():
    assert set(PROTOCOLS) == {"random", "head_unknown", "tail_unknown", "stratified"}


def test_head_unknown_picks_the_most_frequent_and_tail_the_rarest():
    assert choose_unknown_classes(LT, "head_unknown", 3) == [0, 1, 2]
    assert choose_unknown_classes(LT, "tail_unknown", 3) == [7, 8, 9]
    # label values of any kind (a mapping), order of the counts not by label
    counts = {10: 5, 20: 50, 30: 7, 40: 49, 50: 1}
    assert choose_unknown_classes(counts, "head_unknown", 2) == [20, 40]
    assert choose_unknown_classes(counts, "tail_unknown", 2) == [10, 50]
    # ties: head takes the smaller label first, tail the larger
    tied = {1: 9, 2: 9, 3: 9, 4: 1}
    assert choose_unknown_classes(tied, "head_unknown", 2) == [1, 2]
    assert choose_unknown_classes(tied, "tail_unknown", 2) == [3, 4]


def test_seed_does_not_change_head_and_tail():
    for p in ("head_unknown", "tail_unknown"):
        assert len({tuple(choose_unknown_classes(LT, p, 2, seed=s)) for s in range(5)}) == 1


def test_random_is_seeded_and_uniform():
    a = choose_unknown_classes(LT, "random", 3, seed=7)
    assert a == choose_unknown_classes(LT, "random", 3, seed=7)
    draws = [choose_unknown_classes(LT, "random", 3, seed=s) for s in range(1000)]
    assert len({tuple(d) for d in draws}) > 50
    freq = np.bincount(np.concatenate(draws), minlength=10) / 1000
    # each class is unknown with probability 3/10 (binomial sd ~0.015)
    np.testing.assert_allclose(freq, 0.3, atol=0.06)
    for d in draws[:50]:
        assert len(set(d)) == 3 and d == sorted(d)


def _group_of(classes, counts=LT):
    g = assign_groups(counts, grouping="absolute", many_thresh=100, few_thresh=20)[0]
    return [g[c] for c in classes]


def test_stratified_spreads_over_many_medium_few():
    for seed in range(20):
        c3 = choose_unknown_classes(LT, "stratified", 3, seed=seed)
        assert sorted(_group_of(c3)) == ["few", "many", "medium"]
        c5 = choose_unknown_classes(LT, "stratified", 5, seed=seed)
        gs = _group_of(c5)
        assert (gs.count("many"), gs.count("medium"), gs.count("few")) == (2, 2, 1)
    # the classes inside a group are drawn with the seed
    assert len({tuple(choose_unknown_classes(LT, "stratified", 3, seed=s)) for s in range(30)}) > 5


def test_stratified_skips_an_exhausted_group_and_respects_thresholds():
    counts = [500, 400, 50, 10, 8, 6, 5]   # many 0-1, medium 2, few 3-6
    c = choose_unknown_classes(counts, "stratified", 5, seed=0)
    gs = _group_of(c, counts)
    assert (gs.count("many"), gs.count("medium"), gs.count("few")) == (2, 1, 2)
    # other thresholds move the groups: with many > 9 and few < 7 the medium group is {3, 4}
    c = choose_unknown_classes(counts, "stratified", 3, seed=1, many_thresh=9, few_thresh=7)
    groups = assign_groups(counts, grouping="absolute", many_thresh=9, few_thresh=7)[0]
    assert sorted(groups[i] for i in c) == ["few", "many", "medium"]


def test_bad_protocol_and_num_unknown():
    with pytest.raises(ConfigError, match="head_unknown"):
        choose_unknown_classes(LT, "head", 2)
    for n in (0, 9, -1):
        with pytest.raises(ConfigError, match="num_unknown"):
            choose_unknown_classes(LT, "random", n)
    with pytest.raises(ConfigError, match="integer"):
        choose_unknown_classes(LT, "random", 2.5)


def test_resolve_explicit_list_protocol_and_errors():
    counts = {1.0: 30, 2.0: 20, 3.0: 10, 4.0: 5}     # MATLAB-style float labels
    assert resolve_unknown_classes(counts, unknown_classes=[3, 2]) == [2.0, 3.0]
    assert resolve_unknown_classes(counts, protocol="head_unknown", num_unknown=1) == [1.0]
    with pytest.raises(ConfigError, match="valid labels"):
        resolve_unknown_classes(counts, unknown_classes=[7])
    with pytest.raises(ConfigError, match="not both"):
        resolve_unknown_classes(counts, unknown_classes=[1], protocol="random", num_unknown=1)
    with pytest.raises(ConfigError, match="at least two"):
        resolve_unknown_classes(counts, unknown_classes=[1, 2, 3])
    with pytest.raises(ConfigError, match="openset.protocol"):
        resolve_unknown_classes(counts)
    with pytest.raises(ConfigError, match="num_unknown"):
        resolve_unknown_classes(counts, protocol="random")


def test_split_known_unknown_and_relabel():
    y = np.array([5, 7, 5, 9, 7, 9, 1])
    known, unknown = split_known_unknown(y, [7, 9])
    assert known.tolist() == [0, 2, 6] and unknown.tolist() == [1, 3, 4, 5]
    assert set(y[known]).isdisjoint({7, 9}) and set(y[unknown]) == {7, 9}
    new, known_classes = relabel_known(y, [7])
    assert known_classes.tolist() == [1, 5, 9]
    assert new.tolist() == [1, UNKNOWN_LABEL, 1, 2, UNKNOWN_LABEL, 2, 0]
    # classes given: a class absent from these labels still takes its index
    new, known_classes = relabel_known(np.array([9, 1]), [7], classes=[1, 5, 7, 9])
    assert known_classes.tolist() == [1, 5, 9] and new.tolist() == [2, 0]
    with pytest.raises(ConfigError, match="neither"):
        relabel_known(np.array([1, 4]), [7], classes=[1, 5, 7])
    k, u = split_known_unknown(y, [])
    assert k.tolist() == list(range(7)) and u.size == 0
