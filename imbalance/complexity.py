"""How big a model is: parameters and forward FLOPs per sample (results.json ``model_info``)."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

__all__ = ["model_complexity", "format_complexity", "register_cpu_attention_flops"]


def register_cpu_attention_flops() -> None:
    """Count ``scaled_dot_product_attention`` on the CPU too: torch's flop counter knows the CUDA
    kernels (flash, efficient, cuDNN) but not the CPU flash kernel, so attention models would lose
    their ``Q K^T`` and ``A V`` products (``4 B H N^2 d`` FLOPs, torch's ``sdpa_flop_count``).
    Idempotent."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry:
        return

    def sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    flop_counter.register_flop_formula(op)(sdpa_cpu_flop)


def model_complexity(model: nn.Module, in_channels: int, length: int) -> Dict[str, int]:
    """Parameter counts and forward FLOPs for one sample of shape ``(in_channels, length)``.

    FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` on a batch of 1 in eval mode:
    convolutions and matrix products counted as 2 FLOPs per multiply-add; element-wise ops,
    normalisation, pooling and FFTs are not counted (they are a few percent at most). Attention
    (``scaled_dot_product_attention``) counts its two matrix products on every device.
    """
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.randn(1, int(in_channels), int(length), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                model(x)
        flops = int(counter.get_total_flops())
    finally:
        model.train(was_training)
    return {"params": int(params), "trainable_params": int(trainable), "flops_per_sample": flops}


def format_complexity(info: Dict[str, int]) -> str:
    """``'1.23 M parameters (1.23 M trainable), 4.56 GFLOPs per sample'``."""
    return (f"{info['params'] / 1e6:.3f} M parameters ({info['trainable_params'] / 1e6:.3f} M trainable), "
            f"{info['flops_per_sample'] / 1e9:.4f} GFLOPs per sample")
