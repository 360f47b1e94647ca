"""Mixed precision: which autocast dtype to use where, and the gradient scaler.

``amp: true`` means fp16 autocast with a GradScaler on CUDA (bf16 when ``amp_dtype=bf16``, or
``auto`` on a GPU that supports bf16 ... we keep fp16 as the seed's default there), and bf16
autocast on a CPU with native bf16 (AVX512-BF16 or AMX); elsewhere the CPU stays in fp32 (it
is said once in the log). Losses cast logits to float32 themselves.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX (bf16 matmuls and convolutions run natively)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:  # not Linux: trust oneDNN's own check
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:  # pragma: no cover - exotic builds
            return False


@dataclass
class Precision:
    """What a stage runs in: ``dtype`` is None for fp32."""

    device_type: str
    dtype: Optional[torch.dtype]
    scaler: Optional[Any]

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def make_precision(device: torch.device, amp: bool, amp_dtype: str = "auto") -> Precision:
    if not amp:
        return Precision(device.type, None, None)
    if device.type == "cuda":
        if amp_dtype == "bf16":
            if not torch.cuda.is_bf16_supported():
                log.warning("amp_dtype=bf16 but this GPU has no bf16; using fp16 with GradScaler")
            else:
                return Precision("cuda", torch.bfloat16, None)
        scaler = torch.amp.GradScaler("cuda")
        return Precision("cuda", torch.float16, scaler)
    if device.type == "cpu":
        if amp_dtype == "fp16":
            log.warning("amp_dtype=fp16 is not supported on the CPU; using bf16 if native, else fp32")
        if cpu_has_native_bf16():
            log.info("amp: bf16 autocast on the CPU (native bf16 detected)")
            return Precision("cpu", torch.bfloat16, None)
        log.info("amp: this CPU has no native bf16 (AVX512-BF16/AMX); training stays in fp32")
        return Precision("cpu", None, None)
    log.info("amp is not supported on %s; training stays in fp32", device)
    return Precision(device.type, None, None)
