"""Signal augmentations (SEED: RandomTimeShift, RandomAmplitude, RandomGaussianNoise,
RandomCropOrPad) and ``build_augmentation``.

Every transform takes a batch ``(B, C, L)`` or a single signal ``(C, L)`` tensor and is
vectorised over the batch (one random draw per sample, no Python loop over samples).  Random
numbers come from an optional ``torch.Generator`` (given to the constructor or to the call;
the call's wins) so augmentation is reproducible.  ``p`` is the probability, per sample, that
a transform is applied to that sample.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .errors import ConfigError

__all__ = [
    "RandomTimeShift",
    "RandomAmplitude",
    "RandomGaussianNoise",
    "RandomCropOrPad",
    "Compose",
    "build_augmentation",
    "AUGMENT_KEYS",
]

Number = Union[int, float]


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augmentation probability p must be in [0, 1], got {p}")
    return p


def _range(name: str, v: Union[Number, Sequence[Number]], *, symmetric: bool = False) -> Tuple[float, float]:
    """A number (symmetric: [-v, v]; else [v, v]) or a pair (lo, hi) with lo <= hi."""
    if isinstance(v, (int, float)):
        return (-float(v), float(v)) if symmetric else (float(v), float(v))
    vals = [float(a) for a in v]
    if len(vals) != 2 or vals[0] > vals[1]:
        raise ConfigError(f"{name} must be a number or a pair [low, high] with low <= high, got {v!r}")
    return vals[0], vals[1]


class _BatchTransform:
    """Base: lift (C, L) to (1, C, L), draw per-sample randomness, apply with probability p."""

    p: float = 1.0

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        self.generator = generator

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if x.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__} expects (C, L) or (B, C, L), got shape {tuple(x.shape)}")
        single = x.dim() == 2
        xb = x.unsqueeze(0) if single else x
        gen = generator if generator is not None else self.generator
        out = self._apply(xb, gen)
        return out[0] if single else out

    # helpers -----------------------------------------------------------------------------
    @staticmethod
    def _rand(shape, gen: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
        dev = gen.device if gen is not None else device
        return torch.rand(shape, generator=gen, device=dev).to(device)

    @staticmethod
    def _randn(shape, gen: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
        dev = gen.device if gen is not None else device
        return torch.randn(shape, generator=gen, device=dev).to(device)

    def _mask(self, b: int, gen: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
        """(B,) bool: which samples this transform is applied to (probability p)."""
        return self._rand((b,), gen, device) < self.p

    def _apply(self, x: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError


def _shift_gather(x: torch.Tensor, offset: torch.Tensor, out_len: int, circular: bool) -> torch.Tensor:
    """out[b, :, t] = x[b, :, t - offset[b]] (circularly, or zero outside 0..L-1)."""
    b, c, length = x.shape
    pos = torch.arange(out_len, device=x.device)[None, :] - offset[:, None]  # (B, T)
    if circular:
        idx = torch.remainder(pos, length)
        return torch.gather(x, 2, idx[:, None, :].expand(b, c, out_len))
    valid = (pos >= 0) & (pos < length)
    idx = pos.clamp(0, max(length - 1, 0))
    out = torch.gather(x, 2, idx[:, None, :].expand(b, c, out_len))
    return out * valid[:, None, :].to(x.dtype)


class RandomTimeShift(_BatchTransform):
    """Shift each signal in time by an integer uniform in [-max_shift, max_shift] samples.

    ``mode='roll'`` (default) shifts circularly (``torch.roll`` per sample); ``'zero'`` fills
    the samples shifted in with zeros.
    """

    def __init__(self, *, max_shift: int = 32, p: float = 0.5, mode: str = "roll",
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(generator)
        if int(max_shift) < 0:
            raise ConfigError(f"max_shift must be >= 0, got {max_shift}")
        if mode not in ("roll", "zero"):
            raise ConfigError(f"time-shift mode must be 'roll' or 'zero', got {mode!r}")
        self.max_shift, self.p, self.mode = int(max_shift), _check_p(p), mode

    def _apply(self, x, gen):
        b = x.shape[0]
        u = self._rand((b,), gen, x.device)
        shift = torch.floor(u * (2 * self.max_shift + 1)).long() - self.max_shift
        shift = shift * self._mask(b, gen, x.device).long()
        return _shift_gather(x, shift, x.shape[2], circular=self.mode == "roll")

    def __repr__(self) -> str:
        return f"RandomTimeShift(max_shift={self.max_shift}, p={self.p}, mode={self.mode!r})"


class RandomAmplitude(_BatchTransform):
    """``x * a + b`` with ``a ~ U(scale)`` per sample (same for all channels, keeping the I/Q
    relation) and ``b ~ U(-bias, bias)`` per sample and channel (a DC offset)."""

    def __init__(self, *, scale: Tuple[float, float] = (0.8, 1.2), bias: float = 0.0, p: float = 0.5,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(generator)
        self.scale = _range("amplitude scale", scale)
        self.bias = float(bias)
        if self.bias < 0:
            raise ConfigError(f"amplitude bias must be >= 0, got {bias}")
        self.p = _check_p(p)

    def _apply(self, x, gen):
        b, c, _ = x.shape
        lo, hi = self.scale
        a = lo + (hi - lo) * self._rand((b,), gen, x.device)
        off = (2 * self._rand((b, c), gen, x.device) - 1) * self.bias
        m = self._mask(b, gen, x.device)
        a = torch.where(m, a, torch.ones_like(a)).to(x.dtype)
        off = (off * m[:, None]).to(x.dtype)
        return x * a[:, None, None] + off[:, :, None]

    def __repr__(self) -> str:
        return f"RandomAmplitude(scale={self.scale}, bias={self.bias}, p={self.p})"


class RandomGaussianNoise(_BatchTransform):
    """Add white Gaussian noise: a fixed ``std``, or a per-sample SNR ``snr_db`` (a number or
    a range drawn uniformly) relative to the sample's mean power over channels and time
    (noise variance = mean(x^2) / 10^(snr/10))."""

    def __init__(self, *, std: Optional[float] = None, snr_db: Optional[Union[Number, Sequence[Number]]] = None,
                 p: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(generator)
        if (std is None) == (snr_db is None):
            raise ConfigError("RandomGaussianNoise needs exactly one of std or snr_db")
        if std is not None and float(std) < 0:
            raise ConfigError(f"noise std must be >= 0, got {std}")
        self.std = None if std is None else float(std)
        self.snr_db = None if snr_db is None else _range("noise snr_db", snr_db)
        self.p = _check_p(p)

    def _apply(self, x, gen):
        b = x.shape[0]
        if self.std is not None:
            sigma = torch.full((b,), self.std, device=x.device)
        else:
            lo, hi = self.snr_db
            snr = lo + (hi - lo) * self._rand((b,), gen, x.device)
            power = x.detach().float().pow(2).mean(dim=(1, 2))
            sigma = torch.sqrt(power / 10.0 ** (snr / 10.0))
        sigma = sigma * self._mask(b, gen, x.device)
        noise = self._randn(tuple(x.shape), gen, x.device).to(x.dtype)
        return x + noise * sigma.to(x.dtype)[:, None, None]

    def __repr__(self) -> str:
        what = f"std={self.std}" if self.std is not None else f"snr_db={self.snr_db}"
        return f"RandomGaussianNoise({what}, p={self.p})"


class RandomCropOrPad(_BatchTransform):
    """Bring every signal to ``target_length``: a random window of a longer signal, or a
    shorter signal zero-padded at a random position (always applied)."""

    def __init__(self, *, target_length: int, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(generator)
        if int(target_length) < 1:
            raise ConfigError(f"target_length must be >= 1, got {target_length}")
        self.target_length = int(target_length)

    def _apply(self, x, gen):
        b, _, length = x.shape
        t = self.target_length
        if length == t:
            return x
        u = self._rand((b,), gen, x.device)
        if length > t:   # crop: start in [0, L - T]; out[t'] = x[start + t']
            offset = -torch.floor(u * (length - t + 1)).long()
        else:            # pad: signal placed at offset in [0, T - L]
            offset = torch.floor(u * (t - length + 1)).long()
        return _shift_gather(x, offset, t, circular=False)

    def __repr__(self) -> str:
        return f"RandomCropOrPad(target_length={self.target_length})"


class Compose:
    """Apply transforms in order (each with its own probability), sharing one generator."""

    def __init__(self, transforms: Sequence[Any], *, generator: Optional[torch.Generator] = None) -> None:
        self.transforms: List[Any] = list(transforms)
        self.generator = generator

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        gen = generator if generator is not None else self.generator
        for t in self.transforms:
            x = t(x, generator=gen) if isinstance(t, (_BatchTransform, Compose)) else t(x)
        return x

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


#: Keys of the augmentation spec (``data.augment.*``) and their meaning.
AUGMENT_KEYS: Dict[str, str] = {
    "enabled": "bool; false (default) -> no augmentation",
    "p": "probability per sample of each random transform (default 0.5)",
    "time_shift": "max circular shift in samples (RandomTimeShift); 0/null = off",
    "time_shift_mode": "'roll' (default) or 'zero'",
    "amplitude": "[low, high] scale range (RandomAmplitude); null = off",
    "amplitude_bias": "max |DC offset| added per channel with the amplitude transform (default 0)",
    "noise_std": "std of added Gaussian noise (RandomGaussianNoise); null = off",
    "noise_snr_db": "SNR in dB (number or [low, high]) of added noise, instead of noise_std",
    "crop_length": "RandomCropOrPad target length; null = off",
}


def build_augmentation(spec: Optional[Mapping[str, Any]], *,
                       generator: Optional[torch.Generator] = None) -> Optional[Compose]:
    """Build the batch augmentation from a plain dict (the config's ``data.augment``).

    Example: ``{"enabled": True, "time_shift": 32, "amplitude": [0.8, 1.2], "noise_std": 0.05,
    "p": 0.5}`` -> ``Compose([RandomTimeShift, RandomAmplitude, RandomGaussianNoise])``.
    Order: crop/pad, time shift, amplitude, noise.  Returns None when disabled or empty.
    Unknown keys raise ConfigError listing the valid ones (``AUGMENT_KEYS``).
    """
    if spec is None:
        return None
    spec = dict(spec)
    unknown = sorted(set(spec) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(f"unknown data.augment key(s) {', '.join(unknown)}; valid: {', '.join(AUGMENT_KEYS)}")
    if not spec.get("enabled", False):
        return None
    p = spec.get("p", 0.5)
    ts: List[Any] = []
    if spec.get("crop_length"):
        ts.append(RandomCropOrPad(target_length=int(spec["crop_length"])))
    if spec.get("time_shift"):
        ts.append(RandomTimeShift(max_shift=int(spec["time_shift"]), p=p,
                                  mode=spec.get("time_shift_mode") or "roll"))
    if spec.get("amplitude") is not None:
        ts.append(RandomAmplitude(scale=tuple(spec["amplitude"]), bias=float(spec.get("amplitude_bias") or 0.0), p=p))
    if spec.get("noise_std") is not None and spec.get("noise_snr_db") is not None:
        raise ConfigError("data.augment: set noise_std or noise_snr_db, not both")
    if spec.get("noise_std") is not None:
        ts.append(RandomGaussianNoise(std=float(spec["noise_std"]), p=p))
    elif spec.get("noise_snr_db") is not None:
        ts.append(RandomGaussianNoise(snr_db=spec["noise_snr_db"], p=p))
    if not ts:
        return None
    return Compose(ts, generator=generator)
