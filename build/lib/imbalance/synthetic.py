"""Built-in synthetic ADS-B specific-emitter-identification (SEI) data.

Each class is one transmitter with fixed hardware impairments; each sample is one Mode-S
extended squitter (DF17) burst of that transmitter received through an AWGN channel, as two
channels (I, Q).  The physics follows ``ADSB.md``:

Waveform (1090ES, per burst)
    Preamble 8 us (0.5 us pulses at 0, 1.0, 3.5, 4.5 us), then 112 random bits at 1 Mbit/s,
    pulse-position modulated (a 1 is a pulse in the first half of its 1 us bit, a 0 in the
    second half).  Whole burst 120 us.  The on/off chip sequence (240 chips of 0.5 us) is
    turned into an envelope whose edges rise in the emitter's rise time and fall in its fall
    time (raised-cosine edges).

Transmitter impairments (fixed per emitter, a pure function of ``emitter_seed`` and
``difficulty``)
    * Rapp power-amplifier AM/AM: ``A_out = A / (1 + (A / A_sat)^(2p))^(1/(2p))`` (Rapp 1991),
      plus a small AM/PM term ``phi(A) = k_pm * A^2 / (1 + A^2)`` (Saleh 1981 form);
    * pulse rise and fall times;
    * carrier frequency offset ``f`` (a residual rotation ``exp(j 2 pi f t)``) and phase noise
      (a Wiener random walk with the emitter's linewidth);
    * I/Q imbalance ``I' = I, Q' = g (Q cos phi - I sin phi)`` and a DC offset on I and Q.

    Each impairment of emitter ``k`` is ``centre + spread * u_k / difficulty`` with ``u_k`` a
    fixed draw in [-1, 1] from ``emitter_seed`` (Latin hypercube over the K emitters): a higher ``difficulty`` draws the
    emitters closer together (the same ``u`` at every difficulty, so the emitters only move
    towards the centre).  ``difficulty = 1`` is the tuned default (see ``bench/tune_synthetic.py``).

Channel and receiver (per burst, from ``seed``)
    random initial carrier phase, random timing offset of the burst start in [0, 2] us,
    random receiver gain, complex AWGN at an SNR drawn uniformly from ``snr_db`` (or fixed).
    The SNR is the ratio of the clean burst's mean power over its 120 us to the noise power.

Record length
    The record is ``length`` samples at ``sample_rate``.  A record longer than the burst
    (``length / sample_rate > 120 us`` plus the offset) is padded with noise after the burst;
    a shorter record cuts the burst (its tail is lost; the preamble is always kept).

Everything is vectorised numpy over all samples (one pass, no per-sample Python loop):
10,000 records of 1024 samples take about a second.

Command line (writes the built-in data in a user file layout)::

    python -m imbalance.synthetic --out data/ [--format mat|mat73|h5|npz] [--num-classes 10]
        [--length 1024] [--seed 0] [--train-per-class 600] [--test-per-class 200]
        [--difficulty 1.0] [--real-channels] [--num-unknown 0] [--unknown-per-class N]

``--num-unknown U`` also writes ``test_unknown.<ext>``: bursts of U extra emitters (open-set
unknowns, labels K+1..K+U in the file's 1-based labels), never in the train file; train and
test files are the same as without it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "generate_adsb",
    "builtin_dataset",
    "emitter_impairments",
    "generate_unknown_adsb",
    "unknown_emitter_impairments",
    "BURST_US",
    "DEFAULT_DIFFICULTY",
]

#: Duration of a 1090ES (DF17) burst: 8 us preamble + 112 bits of 1 us.
BURST_US = 120.0
_CHIP_US = 0.5
_N_CHIPS = int(BURST_US / _CHIP_US)  # 240
_PREAMBLE_CHIPS = np.array([1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=np.int8)
_N_BITS = 112
_MAX_OFFSET_US = 2.0

#: The default difficulty of the built-in data (tuned with bench/tune_synthetic.py).
DEFAULT_DIFFICULTY = 1.0

# name: (centre, spread at difficulty 1).  Value of emitter k: centre + spread * u_k / difficulty.
_IMPAIRMENTS: Dict[str, Tuple[float, float]] = {
    "cfo_hz": (0.0, 12e3),           # carrier frequency offset (tolerance is +-1 MHz)
    "iq_gain": (1.0, 0.06),          # Q-branch gain g
    "iq_phase_deg": (0.0, 6.0),      # I/Q phase skew phi
    "dc_i": (0.0, 0.06),             # DC offsets, relative to the pulse amplitude 1
    "dc_q": (0.0, 0.06),
    "pa_sat": (1.0, 0.35),           # Rapp saturation amplitude (input pulse amplitude is 1)
    "pa_p": (2.5, 0.6),              # Rapp smoothness
    "am_pm_rad": (0.0, 0.15),        # AM/PM at full amplitude (Saleh form)
    "rise_us": (0.075, 0.03),        # pulse rise time
    "fall_us": (0.125, 0.07),        # pulse fall time
    "pn_linewidth_hz": (600.0, 500.0),  # phase-noise (Wiener) linewidth
}
_PARAM_NAMES = tuple(_IMPAIRMENTS)


def _check_difficulty(difficulty: float) -> float:
    d = float(difficulty)
    if not np.isfinite(d) or d <= 0:
        raise ConfigError(f"difficulty must be a positive number, got {difficulty!r}")
    return d


def _impairments_from_rng(k: int, rng: np.random.Generator, d: float) -> Dict[str, np.ndarray]:
    # Latin-hypercube draw: per impairment, the K emitters take one value in each of K equal
    # strata of [-1, 1] in random order, so every emitter set is spread alike (the difficulty
    # does not hinge on two emitters of one seed landing close together by chance).
    p = len(_PARAM_NAMES)
    strata = np.argsort(rng.random((k, p)), axis=0)
    u = (strata + rng.random((k, p))) / k * 2.0 - 1.0
    out = {}
    for j, name in enumerate(_PARAM_NAMES):
        centre, spread = _IMPAIRMENTS[name]
        out[name] = centre + spread * u[:, j] / d
    # keep physically meaningful values
    out["pa_sat"] = np.maximum(out["pa_sat"], 0.3)
    out["pa_p"] = np.maximum(out["pa_p"], 1.0)
    out["rise_us"] = np.clip(out["rise_us"], 0.02, 0.45)
    out["fall_us"] = np.clip(out["fall_us"], 0.02, 0.45)
    out["pn_linewidth_hz"] = np.maximum(out["pn_linewidth_hz"], 0.0)
    out["iq_gain"] = np.maximum(out["iq_gain"], 0.1)
    return out


def emitter_impairments(
    num_classes: int, *, emitter_seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY
) -> Dict[str, np.ndarray]:
    """Fixed impairments of ``num_classes`` emitters: a dict name -> array of shape (K,).

    A pure function of ``num_classes``, ``emitter_seed`` and ``difficulty``: per impairment
    the K emitters' uniform draws ``u`` in [-1, 1] form a Latin hypercube (one per stratum of
    width 2/K, random order and position), scaled by ``spread / difficulty`` about the centre.
    """
    d = _check_difficulty(difficulty)
    rng = np.random.default_rng([int(emitter_seed), 0x5E1])
    return _impairments_from_rng(int(num_classes), rng, d)


def unknown_emitter_impairments(
    num_unknown: int, *, emitter_seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY
) -> Dict[str, np.ndarray]:
    """Impairments of ``num_unknown`` extra emitters (open-set unknowns): same ranges and the
    same Latin-hypercube draw as :func:`emitter_impairments`, from a separate random stream of
    ``emitter_seed`` (``[emitter_seed, 0x5E1, 0x0DD]``), so the known emitters of a seed are the
    same whether or not unknown emitters are drawn.  An unknown emitter may land close to a
    known one (as a real unseen transmitter of the same type can): that is the hard case."""
    d = _check_difficulty(difficulty)
    u = int(num_unknown)
    if u < 0:
        raise ConfigError(f"num_unknown must be >= 0, got {num_unknown!r}")
    rng = np.random.default_rng([int(emitter_seed), 0x5E1, 0x0DD])
    return _impairments_from_rng(u, rng, d)


def _counts(num_classes: int, samples_per_class: Union[int, Sequence[int]]) -> np.ndarray:
    if isinstance(samples_per_class, (int, np.integer)):
        counts = np.full(num_classes, int(samples_per_class), dtype=np.int64)
    else:
        counts = np.asarray(list(samples_per_class), dtype=np.int64)
        if counts.shape != (num_classes,):
            raise ConfigError(
                f"samples_per_class must be an int or a list of num_classes={num_classes} "
                f"ints, got {len(counts)} values"
            )
    if (counts < 0).any():
        raise ConfigError(f"samples_per_class must be >= 0, got {counts.tolist()}")
    return counts


def _snr_draw(rng: np.random.Generator, snr_db, n: int) -> np.ndarray:
    if np.isscalar(snr_db):
        return np.full(n, float(snr_db))
    vals = [float(v) for v in snr_db]
    if len(vals) != 2 or vals[0] > vals[1]:
        raise ConfigError(f"snr_db must be a number or a range (low, high), got {snr_db!r}")
    return rng.uniform(vals[0], vals[1], size=n)


def _edge(u: np.ndarray, t_edge: np.ndarray) -> np.ndarray:
    """Raised-cosine step from 0 to 1 over ``t_edge`` (same units as u), 0 before, 1 after."""
    r = np.clip(u / t_edge, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * r)


def generate_adsb(
    num_classes: int = 10,
    samples_per_class: Union[int, Sequence[int]] = 200,
    length: int = 1024,
    sample_rate: float = 8e6,
    snr_db: Union[float, Tuple[float, float]] = (5.0, 20.0),
    difficulty: float = DEFAULT_DIFFICULTY,
    seed: Union[int, Sequence[int]] = 0,
    emitter_seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Synthetic ADS-B bursts of ``num_classes`` emitters.

    Returns ``(x, y)``: x float32 of shape (N, 2, length) holding (I, Q), y int64 (N,) with
    classes 0..K-1 in blocks (class 0 first).  Emitters depend only on ``emitter_seed`` and
    ``difficulty``; bursts (bits, phase, timing, SNR, noise) only on ``seed``: data drawn with
    different ``seed`` and the same ``emitter_seed`` share emitters (train/test).
    """
    k = int(num_classes)
    if k < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes!r}")
    length, fs = _check_record(length, sample_rate)
    counts = _counts(k, samples_per_class)
    imp = emitter_impairments(k, emitter_seed=emitter_seed, difficulty=difficulty)
    return _render_bursts(imp, counts, length=length, fs=fs, snr_db=snr_db, seed=seed)


def _check_record(length: int, sample_rate: float) -> Tuple[int, float]:
    length = int(length)
    if length < 1:
        raise ConfigError(f"length must be >= 1, got {length!r}")
    fs = float(sample_rate)
    if not fs > 0:
        raise ConfigError(f"sample_rate must be positive, got {sample_rate!r}")
    return length, fs


def generate_unknown_adsb(
    num_unknown: int,
    samples_per_class: Union[int, Sequence[int]] = 200,
    *,
    num_known: int,
    length: int = 1024,
    sample_rate: float = 8e6,
    snr_db: Union[float, Tuple[float, float]] = (5.0, 20.0),
    difficulty: float = DEFAULT_DIFFICULTY,
    seed: Union[int, Sequence[int]] = 0,
    emitter_seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Bursts of ``num_unknown`` extra emitters (:func:`unknown_emitter_impairments`) with
    labels ``num_known .. num_known + num_unknown - 1`` (they never collide with the known
    labels 0..num_known-1), in blocks.  Same waveform, channel and receiver as
    :func:`generate_adsb`; the bursts come from their own stream of ``seed``."""
    u = int(num_unknown)
    if u < 1:
        raise ConfigError(f"num_unknown must be >= 1, got {num_unknown!r}")
    if int(num_known) < 0:
        raise ConfigError(f"num_known must be >= 0, got {num_known!r}")
    length, fs = _check_record(length, sample_rate)
    counts = _counts(u, samples_per_class)
    imp = unknown_emitter_impairments(u, emitter_seed=emitter_seed, difficulty=difficulty)
    seed_seq = [int(s) for s in np.atleast_1d(np.asarray(seed, dtype=np.int64))] + [0x0DD]
    return _render_bursts(imp, counts, length=length, fs=fs, snr_db=snr_db, seed=seed_seq,
                          label_offset=int(num_known))


def _render_bursts(imp: Dict[str, np.ndarray], counts: np.ndarray, *, length: int, fs: float,
                   snr_db, seed, label_offset: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Bursts of the emitters described by ``imp`` (index j = emitter j), ``counts[j]`` each;
    labels ``label_offset + j``."""
    y = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    n = int(y.size)
    if n == 0:
        return np.zeros((0, 2, length), np.float32), y + int(label_offset)

    seed_seq = [int(s) for s in np.atleast_1d(np.asarray(seed, dtype=np.int64))]
    rng = np.random.default_rng(seed_seq + [0xAD5B])

    # --- per-burst random draws --------------------------------------------------------
    bits = rng.integers(0, 2, size=(n, _N_BITS), dtype=np.int8)
    phase0 = rng.uniform(0, 2 * np.pi, size=n)
    offset_us = rng.uniform(0.0, _MAX_OFFSET_US, size=n)
    gain = rng.uniform(0.5, 2.0, size=n)
    snr = _snr_draw(rng, snr_db, n)

    # --- chip sequence (n, 1 + 240 + 2): zero chips before and after the burst ----------
    chips = np.zeros((n, _N_CHIPS + 3), dtype=np.float32)
    chips[:, 1:17] = _PREAMBLE_CHIPS
    data = np.empty((n, 2 * _N_BITS), dtype=np.float32)
    data[:, 0::2] = bits       # 1 -> pulse in the first half
    data[:, 1::2] = 1 - bits   # 0 -> pulse in the second half
    chips[:, 17:17 + 2 * _N_BITS] = data

    # --- envelope: level of the previous chip, moving to the current chip's level through
    # the emitter's rise (or fall) edge that starts at the chip boundary -------------------
    t_us = (np.arange(length, dtype=np.float64) * (1e6 / fs))[None, :]  # (1, L)
    rel = t_us - offset_us[:, None]                                       # (n, L)
    s = np.floor(rel / _CHIP_US)
    u = (rel - s * _CHIP_US).astype(np.float32)                           # time into chip
    # +1: leading zero chip; after the burst both this and the previous chip are zero chips
    s = np.clip(s + 1, 0, _N_CHIPS + 2).astype(np.int64)
    cur = np.take_along_axis(chips, s, axis=1)
    prev = np.take_along_axis(chips, np.maximum(s - 1, 0), axis=1)
    rise = imp["rise_us"][y].astype(np.float32)[:, None]
    fall = imp["fall_us"][y].astype(np.float32)[:, None]
    step = cur - prev
    t_edge = np.where(step > 0, rise, fall)
    env = prev + step * _edge(u, t_edge)                                  # (n, L) in [0, 1]
    del cur, prev, step, t_edge, u, s

    # --- power amplifier: Rapp AM/AM + Saleh-form AM/PM --------------------------------
    a_sat = imp["pa_sat"][y].astype(np.float32)[:, None]
    two_p = (2.0 * imp["pa_p"][y]).astype(np.float32)[:, None]
    amp = env / (1.0 + (env / a_sat) ** two_p) ** (1.0 / two_p)
    am_pm = imp["am_pm_rad"][y].astype(np.float32)[:, None] * (env * env) / (1.0 + env * env)
    del env

    # --- carrier: CFO rotation, initial phase, phase noise (Wiener process) --------------
    t_s = (np.arange(length, dtype=np.float64) / fs)[None, :]
    phase = 2 * np.pi * imp["cfo_hz"][y][:, None] * t_s + phase0[:, None]
    # phase-noise increment variance 2 pi * linewidth / fs per sample
    pn_std = np.sqrt(2 * np.pi * imp["pn_linewidth_hz"][y] / fs).astype(np.float32)[:, None]
    pn = rng.standard_normal(size=(n, length), dtype=np.float32) * pn_std
    phase = (phase + np.cumsum(pn, axis=1) + am_pm).astype(np.float32)
    del pn, am_pm
    i_sig = amp * np.cos(phase)
    q_sig = amp * np.sin(phase)
    del phase, amp

    # --- I/Q imbalance and DC offset -------------------------------------------------
    g = imp["iq_gain"][y].astype(np.float32)[:, None]
    phi = np.deg2rad(imp["iq_phase_deg"][y]).astype(np.float32)[:, None]
    q_sig = g * (q_sig * np.cos(phi) - i_sig * np.sin(phi))
    # DC offset only while the transmitter is keyed (inside the burst window)
    keyed = ((rel >= 0) & (rel < BURST_US)).astype(np.float32)
    i_sig += imp["dc_i"][y].astype(np.float32)[:, None] * keyed
    q_sig += imp["dc_q"][y].astype(np.float32)[:, None] * keyed

    # --- channel: receiver gain and complex AWGN at the burst SNR -------------------------
    # signal power: mean |s|^2 over the 120 us burst window (whatever part of it is recorded)
    n_keyed = np.maximum(keyed.sum(axis=1), 1.0)
    p_sig = ((i_sig * i_sig + q_sig * q_sig) * keyed).sum(axis=1) / n_keyed
    del keyed, rel
    sigma = np.sqrt(p_sig / (10.0 ** (snr / 10.0)) / 2.0).astype(np.float32)[:, None]
    x = np.empty((n, 2, length), dtype=np.float32)
    gain32 = gain.astype(np.float32)[:, None]
    x[:, 0, :] = gain32 * (i_sig + sigma * rng.standard_normal(size=(n, length), dtype=np.float32))
    x[:, 1, :] = gain32 * (q_sig + sigma * rng.standard_normal(size=(n, length), dtype=np.float32))
    return x, y + int(label_offset)


def builtin_dataset(
    num_classes: int = 10,
    train_per_class: Union[int, Sequence[int]] = 600,
    val_per_class: Union[int, Sequence[int]] = 0,
    test_per_class: Union[int, Sequence[int]] = 200,
    length: int = 1024,
    difficulty: float = DEFAULT_DIFFICULTY,
    snr_db: Union[float, Tuple[float, float]] = (5.0, 20.0),
    seed: int = 0,
    sample_rate: float = 8e6,
    num_unknown: int = 0,
    unknown_per_class: Optional[Union[int, Sequence[int]]] = None,
) -> Dict[str, Optional[Tuple[np.ndarray, np.ndarray]]]:
    """The built-in data set: ``{"train": (x, y), "val": (x, y) or None, "test": (x, y),
    "test_unknown": (x, y) or None}``.

    All splits share the emitters (``emitter_seed = seed``); their bursts are drawn from
    independent streams.  The default train split is a *balanced pool* of 600 bursts per
    emitter: the pipeline takes a stratified validation split from it (``val_ratio``) and then
    the long-tailed training subset (``make_long_tailed_indices``, ratio 100: 480 -> 4 per
    class).  ``val_per_class = 0`` (default) gives ``"val": None``; test is balanced.

    Open set: ``num_unknown > 0`` adds that many extra emitters
    (:func:`generate_unknown_adsb`), never in train or val: ``"test_unknown"`` holds their
    bursts, ``unknown_per_class`` each (default: ``test_per_class``, or its mean when it is
    a list), labelled ``num_classes .. num_classes + num_unknown - 1``.  The other splits are
    bit-for-bit the same as with ``num_unknown = 0`` (the unknown emitters and bursts come from
    random streams of their own), so adding unknowns never changes the closed-set data.
    """
    common = dict(num_classes=num_classes, length=length, sample_rate=sample_rate,
                  snr_db=snr_db, difficulty=difficulty, emitter_seed=seed)
    train = generate_adsb(samples_per_class=train_per_class, seed=[seed, 1], **common)
    has_val = (np.sum(val_per_class) > 0)
    val = generate_adsb(samples_per_class=val_per_class, seed=[seed, 2], **common) if has_val else None
    test = generate_adsb(samples_per_class=test_per_class, seed=[seed, 3], **common)
    u = int(num_unknown)
    if u < 0:
        raise ConfigError(f"num_unknown must be >= 0, got {num_unknown!r}")
    test_unknown = None
    if u > 0:
        per = unknown_per_class
        if per is None:
            per = (int(test_per_class) if isinstance(test_per_class, (int, np.integer))
                   else int(round(float(np.mean(list(test_per_class))))))
        common.pop("num_classes")
        test_unknown = generate_unknown_adsb(u, per, num_known=int(num_classes), seed=[seed, 3],
                                             **common)
    return {"train": train, "val": val, "test": test, "test_unknown": test_unknown}


# ----------------------------------------------------------------------------- writers
_FORMATS = {"mat": ".mat", "mat73": ".mat", "h5": ".h5", "npz": ".npz"}
_FORMAT_NAMES = {"mat": "MATLAB v5", "mat73": "MATLAB v7.3 (HDF5)", "h5": "HDF5", "npz": "NumPy npz"}


def _file_arrays(x: np.ndarray, y: np.ndarray, fmt: str, real_channels: bool):
    """User-file layout: MATLAB files get X complex (N, L) (or (N, 2, L) real) and Y (N, 1)
    float64; HDF5/npz files get X (N, 2, L) float32 (or complex64 (N, L)) and Y (N,) int64.

    The label values are the built-in data's own, 0..K-1, in every format (one convention
    wherever the data appears): a model trained on the built-in data in memory evaluates the
    exported files, and the other way round."""
    if fmt in ("mat", "mat73"):
        xx = x if real_channels else (x[:, 0, :].astype(np.float64) + 1j * x[:, 1, :].astype(np.float64))
        yy = y.astype(np.float64).reshape(-1, 1)
    else:
        xx = x if real_channels else (x[:, 0, :] + 1j * x[:, 1, :]).astype(np.complex64)
        yy = y.astype(np.int64)
    return xx, yy


def write_dataset(path: str, x: np.ndarray, y: np.ndarray, *, fmt: str,
                  real_channels: bool = False) -> None:
    """Write ``x`` (N, 2, L) and ``y`` (N,) 0-based to ``path`` in format ``fmt``."""
    xx, yy = _file_arrays(x, y, fmt, real_channels)
    if fmt == "mat":
        import scipy.io
        scipy.io.savemat(path, {"X": xx, "Y": yy}, do_compression=False)
    elif fmt == "mat73":
        import hdf5storage
        hdf5storage.savemat(path, {"X": xx, "Y": yy}, format="7.3", matlab_compatible=True,
                            store_python_metadata=False, truncate_existing=True)
    elif fmt == "h5":
        import h5py
        with h5py.File(path, "w") as f:
            f.create_dataset("X", data=xx)
            f.create_dataset("Y", data=yy)
    elif fmt == "npz":
        np.savez(path, X=xx, Y=yy)
    else:  # pragma: no cover - guarded by argparse
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(_FORMATS)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m imbalance.synthetic",
        description="Write the built-in synthetic ADS-B data as train/test files "
                    "(balanced; the training pipeline draws validation and the long tail).")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--format", default="mat", choices=sorted(_FORMATS),
                   help="mat = MATLAB v5 (scipy), mat73 = MATLAB v7.3 (HDF5), h5, npz")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY)
    p.add_argument("--real-channels", action="store_true",
                   help="store X as real (N, 2, L) instead of complex (N, L)")
    p.add_argument("--num-unknown", type=int, default=0,
                   help="extra emitters never in training, written to test_unknown.<ext> (open set)")
    p.add_argument("--unknown-per-class", type=int, default=None,
                   help="bursts per unknown emitter (default: --test-per-class)")
    a = p.parse_args(argv)
    try:
        data = builtin_dataset(num_classes=a.num_classes, train_per_class=a.train_per_class,
                               test_per_class=a.test_per_class, length=a.length,
                               difficulty=a.difficulty, seed=a.seed, num_unknown=a.num_unknown,
                               unknown_per_class=a.unknown_per_class)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    ext = _FORMATS[a.format]
    splits = ("train", "test") + (("test_unknown",) if data["test_unknown"] is not None else ())
    for split in splits:
        x, y = data[split]
        path = os.path.join(a.out, split + ext)
        write_dataset(path, x, y, fmt=a.format, real_channels=a.real_channels)
        xx, yy = _file_arrays(x[:1], y[:1], a.format, a.real_channels)
        shape = (len(y),) + xx.shape[1:]
        yshape = (len(y),) + yy.shape[1:]
        print(f"wrote {path} ({_FORMAT_NAMES[a.format]}): X {shape} {xx.dtype}, Y {yshape} {yy.dtype} "
              f"(labels {int(y.min()) if len(y) else 0}..{int(y.max()) if len(y) else -1}, "
              f"{len(y) // max(len(np.unique(y)), 1)} per class)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
