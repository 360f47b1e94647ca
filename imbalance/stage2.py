"""Stage 2 of decoupled training (Kang et al. 2020, "Decoupling Representation and Classifier").

Modes (registry ``STAGE2_MODES``):
- ``crt``: classifier re-training. The backbone is frozen (its BatchNorm statistics too with
  ``freeze_bn``), the classifier is re-initialised and retrained with the stage's loss and sampler.
- ``finetune``: every parameter trains; the backbone at ``lr``, the classifier at
  ``lr * clf_lr_mult``; BatchNorm statistics frozen or not (``freeze_bn``).
- ``lws``: learnable weight scaling. Everything is frozen except one scale per class,
  ``z_c = s_c * (w_c . f + b_c)``, initialised to 1.
- ``crt_lws``: MiSLAS's stage 2 (Zhong et al. 2021, official dvlab-research/MiSLAS,
  ``train_stage2.py``): the backbone frozen, the classifier (kept from stage 1 unless
  ``reinit_classifier``) trained at ``lr * clf_lr_mult`` (the official ``lr_factor``) together
  with LWS scales at ``lr``, in that parameter-group order as the official optimizer.

A mode returns a :class:`Stage2Plan`: which module trains, its parameter groups, how to set train
mode each epoch, and whether the backbone is frozen (then features can be computed once).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from torch import nn

from .classifier_chain import LWSClassifier  # noqa: F401  (public here too)
from .distributed import unwrap
from .registry import Registry

STAGE2_MODES = Registry("stage2 mode")


@dataclass
class Stage2Plan:
    param_groups: List[Dict[str, Any]]
    set_train_mode: Callable[[nn.Module], None]
    frozen_backbone: bool


def _bn_modules(module: nn.Module) -> List[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _reset_head(head: nn.Module) -> None:
    for m in head.modules():
        if m is not head and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if hasattr(head, "reset_parameters"):
        head.reset_parameters()


def _freeze_backbone(net: nn.Module) -> None:
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.classifier.parameters():
        p.requires_grad_(True)


@STAGE2_MODES.register("crt")
def plan_crt(model: nn.Module, *, lr: float, clf_lr_mult: float = 1.0, freeze_bn: bool = True,
             reinit_classifier: bool = True, **_: Any) -> Stage2Plan:
    net = unwrap(model)
    if reinit_classifier:
        _reset_head(net.classifier)
    _freeze_backbone(net)

    def set_train_mode(m: nn.Module) -> None:
        inner = unwrap(m)
        inner.train(not freeze_bn)
        inner.classifier.train()

    groups = [{"params": [p for p in net.classifier.parameters() if p.requires_grad], "lr": lr}]
    return Stage2Plan(groups, set_train_mode, frozen_backbone=True)


@STAGE2_MODES.register("finetune")
def plan_finetune(model: nn.Module, *, lr: float, clf_lr_mult: float = 1.0, freeze_bn: bool = False,
                  **_: Any) -> Stage2Plan:
    net = unwrap(model)
    for p in net.parameters():
        p.requires_grad_(True)
    head_ids = {id(p) for p in net.classifier.parameters()}
    backbone = [p for p in net.parameters() if id(p) not in head_ids]
    groups = [
        {"params": backbone, "lr": lr, "name": "backbone"},
        {"params": list(net.classifier.parameters()), "lr": lr * clf_lr_mult, "name": "classifier"},
    ]

    def set_train_mode(m: nn.Module) -> None:
        m.train()
        if freeze_bn:
            for bn in _bn_modules(unwrap(m)):
                bn.eval()

    return Stage2Plan(groups, set_train_mode, frozen_backbone=False)


@STAGE2_MODES.register("lws")
def plan_lws(model: nn.Module, *, lr: float, num_classes: int, **_: Any) -> Stage2Plan:
    net = unwrap(model)
    for p in net.parameters():
        p.requires_grad_(False)
    if not isinstance(net.classifier, LWSClassifier):
        net.classifier = LWSClassifier(net.classifier, num_classes)

    def set_train_mode(m: nn.Module) -> None:
        unwrap(m).eval()

    return Stage2Plan([{"params": [net.classifier.scales], "lr": lr}], set_train_mode, frozen_backbone=True)


@STAGE2_MODES.register("crt_lws")
def plan_crt_lws(model: nn.Module, *, lr: float, num_classes: int, clf_lr_mult: float = 1.0, freeze_bn: bool = True,
                 reinit_classifier: bool = False, **_: Any) -> Stage2Plan:
    net = unwrap(model)
    base = plan_crt(model, lr=lr * clf_lr_mult, freeze_bn=freeze_bn, reinit_classifier=reinit_classifier)
    if not isinstance(net.classifier, LWSClassifier):
        net.classifier = LWSClassifier(net.classifier, num_classes).to(next(net.classifier.parameters()).device)
    groups = base.param_groups + [{"params": [net.classifier.scales], "lr": lr}]
    return Stage2Plan(groups, base.set_train_mode, frozen_backbone=True)


def make_stage2_plan(mode: str, model: nn.Module, **kwargs: Any) -> Stage2Plan:
    return STAGE2_MODES.get(mode)(model, **kwargs)
