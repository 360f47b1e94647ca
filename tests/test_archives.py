"""imbalance.archives: offline UCR/UEA sources, .ts/.arff/.tsv files, fixed length + mask, export."""
from __future__ import annotations

import importlib.util
import os
import socket
import sys

import numpy as np
import pytest

from imbalance import archives as ar
from imbalance.errors import ConfigError, DataError, UnknownNameError

HAS_AEON = importlib.util.find_spec("aeon") is not None
needs_aeon = pytest.mark.skipif(not HAS_AEON, reason="aeon (pip install .[archives]) not installed")

# Official sizes of the data sets aeon bundles (timeseriesclassification.com / the archive
# papers): source, n_train, n_test, channels, length (None = unequal), classes.
OFFICIAL = {
    "ucr:ACSF1": (100, 100, 1, 1460, 10),
    "ucr:ArrowHead": (36, 175, 1, 251, 3),
    "uea:BasicMotions": (40, 40, 6, 100, 4),
    "ucr:GunPoint": (50, 150, 1, 150, 2),
    "ucr:ItalyPowerDemand": (67, 1029, 1, 24, 2),
    "uea:JapaneseVowels": (270, 370, 12, None, 9),
    "ucr:OSULeaf": (200, 242, 1, 427, 6),
    "ucr:PickupGestureWiimoteZ": (50, 50, 1, None, 10),
}


def _aeon_dir() -> str:
    return dict(ar.bundled_dirs())["aeon"]


def _aeon_read(name: str, split: str):
    """Reference: aeon's own reader on the bundled file, no code of ours."""
    from aeon.datasets import load_from_ts_file
    return load_from_ts_file(os.path.join(_aeon_dir(), name, f"{name}_{split.upper()}.ts"))


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


# A hand-written 2-channel, unequal-length .ts file with string labels (mixed case in the file).
TINY_TRAIN = """# a comment line
@problemName Tiny
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true Badminton walk jump
@data
1.0,2.0,3.0:4.0,5.0,6.0:Badminton
7.5,8.5:9.5,10.5:walk
-1.0,-2.0,-3.0,-4.0:0.5,0.25,0.125,0.0625:walk
"""
TINY_TEST = """@problemName Tiny
@univariate false
@dimensions 2
@equalLength false
@classLabel true Badminton walk jump
@data
11.0:12.0:Badminton
1.0,1.0,1.0,1.0,1.0,2.0:3.0,3.0,3.0,3.0,3.0,4.0:walk
"""


def _tiny_archive(root) -> str:
    _write(os.path.join(root, "Tiny", "Tiny_TRAIN.ts"), TINY_TRAIN)
    _write(os.path.join(root, "Tiny", "Tiny_TEST.ts"), TINY_TEST)
    return str(root)


# ====================================================================== parse_source
def test_parse_source_valid_and_prefix_case():
    assert ar.parse_source("ucr:ArrowHead") == ("ucr", "ArrowHead")
    assert ar.parse_source("UEA: BasicMotions ") == ("uea", "BasicMotions")
    assert ar.is_archive_source("ucr:GunPoint") and not ar.is_archive_source("data/train.mat")
    assert not ar.is_archive_source(None)


@pytest.mark.parametrize("source, err, words", [
    ("xyz:GunPoint", UnknownNameError, ["xyz", "ucr", "uea"]),
    ("GunPoint", ConfigError, ["ucr:<Name>", "uea:<Name>"]),
    ("ucr:", ConfigError, ["names no data set"]),
    ("ucr:../GunPoint", ConfigError, ["not a path", "data.archive_dir"]),
])
def test_parse_source_errors_one_line(source, err, words):
    with pytest.raises(err) as ei:
        ar.parse_source(source)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


# ====================================================================== labels
@pytest.mark.parametrize("raw, expected", [
    (["10", "2", "1"], np.array([10, 2, 1], dtype=np.int64)),       # numeric, not '10' < '2'
    (["1.0", "2.0", "0.0"], np.array([1, 2, 0], dtype=np.int64)),
    ([" -1", "1 "], np.array([-1, 1], dtype=np.int64)),
    (["0.5", "1"], np.array([0.5, 1.0])),
    (["Badminton", "walk", "WALK"], np.array(["badminton", "walk", "walk"])),
    (["1", "a"], np.array(["1", "a"])),
    (["nan", "1"], np.array(["nan", "1"])),
    (np.array([3, 1], dtype=np.int32), np.array([3, 1], dtype=np.int64)),
    (np.array([2.0, 1.0]), np.array([2, 1], dtype=np.int64)),
    (np.array([b"x", b"Y"]), np.array(["x", "y"])),
])
def test_convert_labels(raw, expected):
    got = ar.convert_labels(raw)
    assert got.dtype.kind == expected.dtype.kind
    np.testing.assert_array_equal(got, expected)


# ====================================================================== to_fixed_length
RAGGED = [np.array([[1., 2., 3., 4., 5.]]), np.array([[6., 7.]]), np.array([[8., 9., 10.]])]


def test_fixed_length_pads_to_longest_with_mask():
    x, m = ar.to_fixed_length(RAGGED)
    assert x.shape == (3, 1, 5) and x.dtype == np.float32 and m.dtype == bool
    np.testing.assert_array_equal(x[:, 0], [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 9, 10, 0, 0]])
    np.testing.assert_array_equal(m, [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])


@pytest.mark.parametrize("crop, first_row", [
    ("end", [1, 2, 3]),      # keep the first L (the data layer's target_length rule)
    ("start", [3, 4, 5]),    # keep the last L
    ("center", [2, 3, 4]),
])
def test_fixed_length_crop_modes(crop, first_row):
    x, m = ar.to_fixed_length(RAGGED, 3, crop=crop)
    np.testing.assert_array_equal(x[0, 0], first_row)
    np.testing.assert_array_equal(x[1, 0], [6, 7, 0])      # shorter: padded at the end
    np.testing.assert_array_equal(x[2, 0], [8, 9, 10])     # exact: unchanged
    np.testing.assert_array_equal(m, [[1, 1, 1], [1, 1, 0], [1, 1, 1]])


def test_fixed_length_center_crop_odd_surplus_drops_extra_at_end():
    x, m = ar.to_fixed_length([np.arange(1., 7.)], 3, crop="center")   # 1..6, surplus 3
    np.testing.assert_array_equal(x[0, 0], [2, 3, 4])
    assert m.all()


@pytest.mark.parametrize("pad, row, mask", [
    ("end", [6, 7, -1, -1, -1], [1, 1, 0, 0, 0]),
    ("start", [-1, -1, -1, 6, 7], [0, 0, 0, 1, 1]),
    ("center", [-1, 6, 7, -1, -1], [0, 1, 1, 0, 0]),
])
def test_fixed_length_pad_modes_and_value(pad, row, mask):
    x, m = ar.to_fixed_length(RAGGED, 5, pad=pad, pad_value=-1.0)
    np.testing.assert_array_equal(x[1, 0], row)
    np.testing.assert_array_equal(m[1], mask)
    np.testing.assert_array_equal(x[0, 0], [1, 2, 3, 4, 5])


def test_fixed_length_multichannel_ragged_and_1d_entries():
    a = np.array([[1., 2., 3.], [4., 5., 6.]])
    b = np.array([[7.], [8.]])
    x, m = ar.to_fixed_length([a, b], 4)
    assert x.shape == (2, 2, 4)
    np.testing.assert_array_equal(x[1], [[7, 0, 0, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(m, [[1, 1, 1, 0], [1, 0, 0, 0]])
    x1, m1 = ar.to_fixed_length([np.array([1., 2.]), np.array([3.])])     # (L_i,) series
    assert x1.shape == (2, 1, 2)
    np.testing.assert_array_equal(m1, [[1, 1], [1, 0]])


def test_fixed_length_equal_length_array_input():
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)       # (N, L)
    x, m = ar.to_fixed_length(arr)
    assert x.shape == (3, 1, 4) and m.all()
    np.testing.assert_array_equal(x[:, 0], arr)
    x6, m6 = ar.to_fixed_length(arr.reshape(3, 1, 4), 6)
    np.testing.assert_array_equal(x6[:, 0, 4:], 0)
    assert m6[:, :4].all() and not m6[:, 4:].any()


def test_fixed_length_empty_series_row_is_all_padding():
    x, m = ar.to_fixed_length([np.zeros((1, 0)), np.array([[1., 2.]])])
    assert not m[0].any() and m[1].all()
    np.testing.assert_array_equal(x[0, 0], [0, 0])


@pytest.mark.parametrize("kwargs, err", [
    (dict(crop="middle"), ConfigError),
    (dict(pad="left"), ConfigError),
    (dict(target_length=0), ConfigError),
    (dict(target_length=2.5), ConfigError),
])
def test_fixed_length_bad_options(kwargs, err):
    with pytest.raises(err):
        ar.to_fixed_length(RAGGED, **kwargs)


def test_fixed_length_bad_input():
    with pytest.raises(DataError, match="channel counts"):
        ar.to_fixed_length([np.zeros((1, 3)), np.zeros((2, 3))])
    with pytest.raises(DataError, match="empty"):
        ar.to_fixed_length([])


# ====================================================================== bundled data sets
@needs_aeon
@pytest.mark.parametrize("source", sorted(OFFICIAL))
@pytest.mark.parametrize("split", ["train", "test"])
def test_bundled_dataset_matches_aeon_and_archive_sizes(source, split):
    n_train, n_test, chans, length, k = OFFICIAL[source]
    name = source.split(":")[1]
    X, y, info = ar.load_archive(source, split=split)
    Xa, ya = _aeon_read(name, split)
    n = n_train if split == "train" else n_test
    assert len(X) == len(y) == n == len(Xa)
    assert info["n_channels"] == chans and info["origin"] == "aeon" and info["split"] == split
    assert len(info["class_values"]) == k
    if length is None:
        assert isinstance(X, list) and not info["equal_length"]
        for xi, xa in zip(X, Xa):
            np.testing.assert_array_equal(xi, xa)
        lens = [xa.shape[1] for xa in Xa]
        assert (info["min_length"], info["max_length"]) == (min(lens), max(lens))
    else:
        assert X.shape == (n, chans, length) and info["equal_length"]
        np.testing.assert_array_equal(X, Xa)
    # labels: aeon's strings, converted to numbers where they are numbers
    if y.dtype.kind in "iuf":
        np.testing.assert_array_equal(y.astype(np.float64), ya.astype(np.float64))
    else:
        np.testing.assert_array_equal(y, np.char.lower(ya.astype(str)))
    vals, counts = np.unique(y, return_counts=True)
    a_vals, a_counts = np.unique(ya, return_counts=True)
    assert sorted(counts.tolist()) == sorted(a_counts.tolist())
    assert set(vals.tolist()) <= set(info["class_values"].tolist())


@needs_aeon
def test_numeric_labels_sort_numerically():
    _, y, info = ar.load_archive("ucr:PickupGestureWiimoteZ", split="train")
    assert y.dtype == np.int64
    np.testing.assert_array_equal(info["class_values"], np.arange(1, 11))    # 10 after 9


@needs_aeon
def test_multivariate_string_labels_basicmotions():
    X, y, info = ar.load_archive("uea:BasicMotions", split="train")
    assert X.shape[1] == 6
    assert info["class_values"].tolist() == ["badminton", "running", "standing", "walking"]
    assert np.bincount(np.searchsorted(info["class_values"], y)).tolist() == [10, 10, 10, 10]


@needs_aeon
def test_both_splits_in_one_format_arrowhead():
    # aeon bundles ArrowHead_TRAIN.arff but no ArrowHead_TEST.arff: both splits come from .ts
    _, _, i_tr = ar.load_archive("ucr:ArrowHead", split="train")
    _, _, i_te = ar.load_archive("ucr:ArrowHead", split="test")
    assert i_tr["path"].endswith("_TRAIN.ts") and i_te["path"].endswith("_TEST.ts")


@needs_aeon
def test_both_splits_in_one_format_when_only_one_split_has_ts(tmp_path):
    # Only the training split exists as .ts; both exist as .tsv: both splits must come from
    # .tsv (aeon's .ts reader lower-cases labels, the others do not).
    _write(tmp_path / "Mix" / "Mix_TRAIN.ts",
           "@problemName Mix\n@univariate true\n@classLabel true 1 2\n@data\n1,2:1\n3,4:2\n")
    _write(tmp_path / "Mix" / "Mix_TRAIN.tsv", "1\t5.0\t6.0\n2\t7.0\t8.0\n")
    _write(tmp_path / "Mix" / "Mix_TEST.tsv", "2\t9.0\t10.0\n")
    X, y, info = ar.load_archive("ucr:Mix", split="train", archive_dir=str(tmp_path))
    assert info["path"].endswith("Mix_TRAIN.tsv")
    np.testing.assert_array_equal(X[:, 0], [[5, 6], [7, 8]])
    Xt, yt, it = ar.load_archive("ucr:Mix", split="test", archive_dir=str(tmp_path))
    assert it["path"].endswith("Mix_TEST.tsv") and yt.tolist() == [2]
    assert it["class_values"].tolist() == info["class_values"].tolist() == [1, 2]


@needs_aeon
def test_variable_length_japanese_vowels_mask():
    Xtr, _, itr = ar.load_archive("uea:JapaneseVowels", split="train")
    Xte, _, ite = ar.load_archive("uea:JapaneseVowels", split="test")
    L = itr["max_length"]
    x, m = ar.to_fixed_length(Xtr)                   # default: the longest training series
    assert x.shape == (270, 12, L) and m.shape == (270, L)
    lens = ar.series_lengths(Xtr)
    np.testing.assert_array_equal(m.sum(axis=1), lens)
    for i in (0, int(np.argmin(lens)), int(np.argmax(lens))):
        np.testing.assert_allclose(x[i, :, : lens[i]], Xtr[i].astype(np.float32))
        assert np.all(x[i, :, lens[i]:] == 0)
    # the test split at the training length: longer test series are cropped (mask all True)
    xt, mt = ar.to_fixed_length(Xte, L)
    te_lens = ar.series_lengths(Xte)
    assert ite["max_length"] > L and xt.shape == (370, 12, L)
    np.testing.assert_array_equal(mt.sum(axis=1), np.minimum(te_lens, L))
    j = int(np.argmax(te_lens))
    np.testing.assert_allclose(xt[j], Xte[j][:, :L].astype(np.float32))


@needs_aeon
def test_variable_length_pickup_gesture_center_pad():
    X, _, info = ar.load_archive("ucr:PickupGestureWiimoteZ", split="train")
    x, m = ar.to_fixed_length(X, pad="center")
    lens = ar.series_lengths(X)
    i = int(np.argmin(lens))
    off = (info["max_length"] - lens[i]) // 2
    assert m[i].sum() == lens[i] and m[i, off] and not m[i, off - 1]
    np.testing.assert_allclose(x[i, 0, off: off + lens[i]], X[i][0].astype(np.float32))


@needs_aeon
def test_prefix_must_match_channels():
    with pytest.raises(ConfigError, match="uea:BasicMotions"):
        ar.load_archive("ucr:BasicMotions", split="train")
    with pytest.raises(ConfigError, match="ucr:GunPoint"):
        ar.load_archive("uea:GunPoint", split="train")


@needs_aeon
def test_regression_set_refused():
    if not os.path.isdir(os.path.join(_aeon_dir(), "Covid3Month")):
        pytest.skip("aeon copy without Covid3Month")
    assert "Covid3Month" not in ar.available_datasets()["aeon"]
    with pytest.raises(DataError, match="regression"):
        ar.load_archive("ucr:Covid3Month", split="train")


@needs_aeon
def test_bad_split_name():
    with pytest.raises(ConfigError, match="train, test"):
        ar.load_archive("ucr:GunPoint", split="val")


# ====================================================================== missing names, no network
@needs_aeon
def test_missing_name_one_line_no_network(monkeypatch, tmp_path):
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(DataError) as ei:
        ar.load_archive("ucr:FordA", split="train", archive_dir=str(tmp_path))
    msg = str(ei.value)
    assert calls == []
    assert "\n" not in msg
    assert "FordA" in msg and "data.archive_dir" in msg
    for bundled in ("ArrowHead", "GunPoint", "OSULeaf"):
        assert bundled in msg
    # nothing written next to aeon's data (its downloader would create local_data/)
    assert not os.path.exists(os.path.join(os.path.dirname(_aeon_dir()), "local_data", "FordA"))
    with pytest.raises(DataError, match=r"did you mean ucr:GunPoint\?"):
        ar.load_archive("ucr:GunPiont", split="train")


def test_archive_dir_not_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="data.archive_dir is not a folder"):
        ar.load_archive("ucr:GunPoint", split="train", archive_dir=str(tmp_path / "nope"))


def test_without_aeon_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "aeon.datasets", None)    # import fails
    path = _write(tmp_path / "Tiny" / "Tiny_TRAIN.ts", TINY_TRAIN)
    with pytest.raises(ConfigError, match=r"pip install \.\[archives\]"):
        ar.read_series_file(path)


# ====================================================================== files in a folder
@needs_aeon
def test_ts_round_trip_from_archive_dir(tmp_path):
    root = _tiny_archive(tmp_path)
    assert ar.available_datasets(root)["archive_dir"] == ["Tiny"]
    X, y, info = ar.load_archive("uea:Tiny", split="train", archive_dir=root)
    assert info["origin"] == "archive_dir" and info["n_channels"] == 2 and not info["equal_length"]
    assert isinstance(X, list) and [xi.shape for xi in X] == [(2, 3), (2, 2), (2, 4)]
    np.testing.assert_array_equal(X[1], [[7.5, 8.5], [9.5, 10.5]])
    np.testing.assert_array_equal(X[2][1], [0.5, 0.25, 0.125, 0.0625])
    assert y.tolist() == ["badminton", "walk", "walk"]
    # 'jump' is in the header but in no split: still a class of both splits
    assert info["class_values"].tolist() == ["badminton", "jump", "walk"]
    Xt, yt, it = ar.load_archive("uea:Tiny", split="test", archive_dir=root)
    assert it["class_values"].tolist() == info["class_values"].tolist()
    assert yt.tolist() == ["badminton", "walk"] and [xi.shape[1] for xi in Xt] == [1, 6]
    x, m = ar.to_fixed_length(Xt, info["max_length"])            # training length 4
    np.testing.assert_array_equal(x[0], [[11, 0, 0, 0], [12, 0, 0, 0]])
    np.testing.assert_array_equal(x[1], [[1, 1, 1, 1], [3, 3, 3, 3]])
    np.testing.assert_array_equal(m, [[1, 0, 0, 0], [1, 1, 1, 1]])
    # read_series_file gives the same, and its info the header's classes
    X2, y2, i2 = ar.read_series_file(os.path.join(root, "Tiny", "Tiny_TRAIN.ts"), return_info=True)
    assert y2.tolist() == y.tolist()
    assert i2["class_values"].tolist() == ["badminton", "jump", "walk"]
    assert (i2["n_cases"], i2["n_channels"], i2["min_length"], i2["max_length"]) == (3, 2, 2, 4)
    for a, b in zip(X2, X):
        np.testing.assert_array_equal(a, b)


@needs_aeon
def test_archive_dir_takes_precedence_over_bundled(tmp_path):
    text = ("@problemName GunPoint\n@univariate true\n@equalLength true\n@seriesLength 3\n"
            "@classLabel true 1 2 10\n@data\n1,2,3:10\n4,5,6:2\n")
    _write(tmp_path / "GunPoint" / "GunPoint_TRAIN.ts", text)
    _write(tmp_path / "GunPoint" / "GunPoint_TEST.ts", text)
    X, y, info = ar.load_archive("ucr:GunPoint", split="train", archive_dir=str(tmp_path))
    assert info["origin"] == "archive_dir" and X.shape == (2, 1, 3)
    assert y.tolist() == [10, 2] and info["class_values"].tolist() == [1, 2, 10]


@needs_aeon
def test_arff_file_univariate_and_labels_lowercased(tmp_path):
    text = ("@relation tiny\n@attribute t0 numeric\n@attribute t1 numeric\n"
            "@attribute target {Up,Down}\n@data\n1.5,2.5,Up\n-3,4,Down\n")
    path = _write(tmp_path / "tiny.arff", text)
    X, y = ar.read_series_file(path)
    assert X.shape == (2, 1, 2)
    np.testing.assert_array_equal(X[:, 0], [[1.5, 2.5], [-3, 4]])
    assert y.tolist() == ["up", "down"]     # as aeon's .ts reader gives labels


@needs_aeon
def test_bundled_arff_and_ts_copies_agree():
    root = os.path.join(_aeon_dir(), "BasicMotions")
    Xa, ya = ar.read_series_file(os.path.join(root, "BasicMotions_TRAIN.arff"))
    Xt, yt = ar.read_series_file(os.path.join(root, "BasicMotions_TRAIN.ts"))
    np.testing.assert_allclose(Xa, Xt)
    assert ya.tolist() == yt.tolist()


@needs_aeon
def test_tsv_trailing_nan_is_variable_length(tmp_path):
    path = _write(tmp_path / "tiny.tsv", "1\t1.0\t2.0\t3.0\n2\t4.0\tNaN\tNaN\n1\t5.0\t6.0\tNaN\n")
    X, y = ar.read_series_file(path)
    assert y.dtype == np.int64 and y.tolist() == [1, 2, 1]
    assert [xi.shape for xi in X] == [(1, 3), (1, 1), (1, 2)]
    np.testing.assert_array_equal(X[2], [[5.0, 6.0]])


@needs_aeon
def test_unreadable_and_missing_files_one_line(tmp_path):
    bad = _write(tmp_path / "bad.ts", "@problemName x\n@classLabel true a b\n@data\n1,2:a\n1,2,3,4,5:b\n")
    with pytest.raises(DataError) as ei:
        ar.read_series_file(bad)
    assert "\n" not in str(ei.value) and "bad.ts" in str(ei.value)
    with pytest.raises(DataError, match="not found"):
        ar.read_series_file(str(tmp_path / "none.ts"))
    with pytest.raises(DataError, match="unsupported"):
        ar.read_series_file(_write(tmp_path / "x.csv", "1,2\n"))


# ====================================================================== export
@needs_aeon
def test_export_mat_numeric_labels_read_back(tmp_path):
    import scipy.io
    paths = ar.export_archive("ucr:ArrowHead", str(tmp_path))
    assert paths == {"train": str(tmp_path / "train.mat"), "test": str(tmp_path / "test.mat")}
    Xa, ya = _aeon_read("ArrowHead", "test")
    d = scipy.io.loadmat(paths["test"])
    assert d["X"].shape == (175, 1, 251) and d["X"].dtype == np.float32
    np.testing.assert_array_equal(d["X"], Xa.astype(np.float32))
    assert d["Y"].shape == (175, 1)
    np.testing.assert_array_equal(d["Y"][:, 0], ya.astype(np.float64))
    assert d["mask"].all() and (d["lengths"].ravel() == 251).all()


@needs_aeon
def test_export_mat_string_labels_codes_and_names(tmp_path):
    import scipy.io
    paths = ar.export_archive("uea:BasicMotions", str(tmp_path))
    _, y, info = ar.load_archive("uea:BasicMotions", split="train")
    d = scipy.io.loadmat(paths["train"])
    names = [str(np.asarray(c).ravel()[0]) for c in d["classes"].ravel()]
    assert names == info["class_values"].tolist()
    codes = d["Y"].ravel().astype(int)
    assert [names[c - 1] for c in codes] == y.tolist()


@needs_aeon
def test_export_variable_length_mask_and_lengths(tmp_path):
    paths = ar.export_archive("ucr:PickupGestureWiimoteZ", str(tmp_path), fmt="npz")
    X, _, info = ar.load_archive("ucr:PickupGestureWiimoteZ", split="test")
    with np.load(paths["test"], allow_pickle=False) as z:
        x, m, lens = z["X"], z["mask"].astype(bool), z["lengths"]
    L_train = ar.load_archive("ucr:PickupGestureWiimoteZ", split="train")[2]["max_length"]
    assert x.shape == (50, 1, L_train)
    np.testing.assert_array_equal(lens, ar.series_lengths(X))
    np.testing.assert_array_equal(m.sum(axis=1), np.minimum(lens, L_train))
    i = int(np.argmin(lens))
    np.testing.assert_allclose(x[i, 0, : lens[i]], X[i][0].astype(np.float32))


@needs_aeon
def test_export_npz_keeps_string_labels(tmp_path):
    paths = ar.export_archive("uea:BasicMotions", str(tmp_path), fmt="npz")
    _, y, _ = ar.load_archive("uea:BasicMotions", split="test")
    with np.load(paths["test"], allow_pickle=False) as z:
        assert z["Y"].tolist() == y.tolist()


@needs_aeon
def test_exported_files_map_classes_like_the_archive(tmp_path):
    """The data layer's 0..K-1 mapping of the exported file equals the sorted class order."""
    from imbalance.data import ADSBSignalDataset
    for source in ("uea:BasicMotions", "ucr:OSULeaf"):
        out = tmp_path / source.replace(":", "_")
        paths = ar.export_archive(source, str(out))
        _, y, info = ar.load_archive(source, split="train")
        ds = ADSBSignalDataset(paths["train"], normalize=False)
        np.testing.assert_array_equal(ds.labels, np.searchsorted(info["class_values"], y))
        assert ds.num_channels == info["n_channels"]


def test_export_unknown_format(tmp_path):
    with pytest.raises(UnknownNameError, match="mat, npz"):
        ar.export_archive("ucr:GunPoint", str(tmp_path), fmt="xlsx")


@needs_aeon
def test_cli_list_and_export(tmp_path, capsys):
    assert ar.main([]) == 0
    assert "ArrowHead" in capsys.readouterr().out
    assert ar.main(["ucr:ItalyPowerDemand", "--out", str(tmp_path)]) == 0
    assert os.path.exists(tmp_path / "train.mat") and os.path.exists(tmp_path / "test.mat")
    assert ar.main(["ucr:NoSuchSet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ucr:NoSuchSet") and err.count("\n") == 1


@needs_aeon
def test_sktime_bundled_copies_found_without_importing_sktime(tmp_path, monkeypatch):
    if importlib.util.find_spec("sktime") is not None:
        pytest.skip("a real sktime is installed")
    pkg = tmp_path / "site" / "sktime"
    _write(pkg / "__init__.py", "raise RuntimeError('sktime must not be imported')\n")
    text = "@problemName Fake\n@univariate true\n@classLabel true 1 2\n@data\n1,2,3:1\n4,5,6:2\n"
    _write(pkg / "datasets" / "data" / "FakePLAID" / "FakePLAID_TRAIN.ts", text)
    _write(pkg / "datasets" / "data" / "FakePLAID" / "FakePLAID_TEST.ts", text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert ("sktime", str(pkg / "datasets" / "data")) in ar.bundled_dirs()
    assert ar.available_datasets()["sktime"] == ["FakePLAID"]
    X, y, info = ar.load_archive("ucr:FakePLAID", split="test")
    assert info["origin"] == "sktime" and X.shape == (2, 1, 3) and y.tolist() == [1, 2]
    assert "sktime" not in sys.modules
