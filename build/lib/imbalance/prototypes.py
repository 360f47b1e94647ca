"""Non-parametric classifiers on a trained backbone's features, for evaluation
(registry ``PROTOTYPE_CLASSIFIERS``: ``ncm``, ``knn``; config ``evaluation.classifier:
linear | ncm | knn``, ``linear`` being the model's own head).

Both are fitted on the features of the TRAINING set (``model.forward_features`` in eval mode,
without augmentation or re-sampling: every training sample once, as the official code's
``train_plain`` loader) and map features ``(N, D)`` to class scores ``(N, K)``, so the
analyzer's metrics apply to ``scores.argmax(1)`` and to ``softmax(scores)`` as to logits.

* :class:`NCMClassifier` -- nearest class mean (Kang et al., ICLR 2020, "Decoupling
  Representation and Classifier"; official facebookresearch/classifier-balancing,
  ``models/KNNClassifier.py`` and ``run_networks.py: get_knncentroids``).
* :class:`KNNClassifier` -- cosine k-nearest neighbours with a majority or a similarity-weighted
  vote (the weighted vote of Wu et al. 2018 as used by DINO's ``eval_knn.py``: weights
  ``exp(cos / T)``, ``k = 20``, ``T = 0.07``).

Usage::

    clf = create_prototype_classifier("ncm").fit(train_feats, train_labels, num_classes)
    scores = clf(test_feats)                   # (N, K), like logits
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Tuple

import torch
from torch import nn

from .errors import ConfigError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["PROTOTYPE_CLASSIFIERS", "NCMClassifier", "KNNClassifier", "create_prototype_classifier",
           "class_centroids", "FEAT_TYPES", "NCM_DISTANCES", "KNN_VOTES", "KNN_LOG_FLOOR"]

PROTOTYPE_CLASSIFIERS = Registry("evaluation classifier")

FEAT_TYPES = ("cl2n", "l2n", "un")
NCM_DISTANCES = ("l2", "cos")
KNN_VOTES = ("weighted", "majority")
KNN_LOG_FLOOR = math.log(1e-12)
"""kNN scores are ``log(vote share)``; a class without votes gets this floor instead of -inf."""


def _check_fit_inputs(features: torch.Tensor, labels: torch.Tensor, num_classes: int, who: str
                      ) -> Tuple[torch.Tensor, torch.Tensor, int]:
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"{who}.fit: expected features (N, D) and labels (N,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"{who}.fit: no training features")
    k = int(num_classes)
    labels = labels.long().to(features.device)
    if k < 1 or int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(f"{who}.fit: labels must lie in 0..{k - 1}, got {int(labels.min())}..{int(labels.max())}")
    return features.float(), labels, k


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (a zero row stays zero instead of becoming NaN)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _transform(x: torch.Tensor, feat_type: str, mean: torch.Tensor) -> torch.Tensor:
    if feat_type == "cl2n":
        x = x - mean
    if feat_type in ("l2n", "cl2n"):
        x = _normalize(x)
    return x


def class_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                    feat_type: str = "cl2n") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(centroids (K, D), feature mean (D,), counts (K,))`` as the official
    ``get_knncentroids``: ``un`` the class means of the raw features; ``l2n`` of the
    L2-normalised features; ``cl2n`` of the features centred by the mean training feature,
    then L2-normalised. The centroids themselves are not re-normalised. A class without
    samples gets a zero centroid and count 0."""
    if feat_type not in FEAT_TYPES:
        raise ConfigError(f"unknown feat_type {feat_type!r}; valid: {', '.join(FEAT_TYPES)}")
    x, y, k = _check_fit_inputs(features, labels, num_classes, "class_centroids")
    mean = x.mean(dim=0)
    t = _transform(x, feat_type, mean)
    sums = torch.zeros(k, t.shape[1], dtype=t.dtype, device=t.device).index_add_(0, y, t)
    counts = torch.bincount(y, minlength=k)
    cents = sums / counts.clamp_min(1).to(t.dtype)[:, None]
    return cents, mean, counts


@PROTOTYPE_CLASSIFIERS.register("ncm")
class NCMClassifier(nn.Module):
    """Nearest class mean classifier (Kang et al. 2020), as the official ``KNNClassifier``.

    ``feat_type`` (official default ``cl2n``) transforms training and test features alike
    (see :func:`class_centroids`); ``distance`` (official default ``l2``) gives the scores:

    * ``l2``: ``-||x - c_k||^2`` (computed as ``-(|x|^2 + |c_k|^2 - 2 x.c_k)``);
    * ``cos``: ``x . c_k / D`` -- the official "cos" similarity: the centroids (means of unit
      vectors) are NOT re-normalised there (the line is commented out), so this is a scaled
      dot product, not the cosine the paper's text describes.

    A class without training samples can never be predicted: its score is ``-inf`` (the
    official code would silently shift the class indices). Zero feature vectors stay zero
    under normalisation instead of giving NaN.
    """

    def __init__(self, *, feat_type: str = "cl2n", distance: str = "l2") -> None:
        super().__init__()
        if feat_type not in FEAT_TYPES:
            raise ConfigError(f"NCM feat_type={feat_type!r} is not valid; valid: {', '.join(FEAT_TYPES)}")
        if distance not in NCM_DISTANCES:
            raise ConfigError(f"NCM distance={distance!r} is not valid; valid: {', '.join(NCM_DISTANCES)}")
        self.feat_type = feat_type
        self.distance = distance
        self.register_buffer("centroids", torch.zeros(0, 0))
        self.register_buffer("feat_mean", torch.zeros(0))
        self.register_buffer("counts", torch.zeros(0, dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return self.centroids.numel() > 0

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "NCMClassifier":
        cents, mean, counts = class_centroids(features, labels, num_classes, feat_type=self.feat_type)
        self.centroids, self.feat_mean, self.counts = cents, mean, counts
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            logger.warning("NCM: class(es) %s have no training features and will never be predicted", empty)
        return self

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("NCMClassifier: call fit(train_features, train_labels, num_classes) first")
        x = _transform(features.float().to(self.centroids.device), self.feat_type, self.feat_mean)
        c = self.centroids
        if self.distance == "l2":
            scores = -((x * x).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2.0 * x @ c.t())
        else:
            scores = (x @ c.t()) / x.shape[1]
        return scores.masked_fill((self.counts == 0)[None, :], float("-inf"))

    def extra_repr(self) -> str:
        return f"feat_type={self.feat_type!r}, distance={self.distance!r}"


@PROTOTYPE_CLASSIFIERS.register("knn")
class KNNClassifier(nn.Module):
    """Cosine k-nearest-neighbour classifier on L2-normalised features.

    The ``k`` training features with the highest cosine similarity vote: ``weighted`` (default)
    with weight ``exp(cos / temperature)`` (DINO's ``knn_classifier``, ``k = 20``,
    ``T = 0.07``), ``majority`` with weight 1 each (ties go to the lowest class index, as
    ``argmax``). The scores are ``log(votes_c / sum votes)``, so ``softmax(scores)`` is the
    vote share; a class without votes gets :data:`KNN_LOG_FLOOR` (log 1e-12) instead of -inf.
    ``k`` larger than the training set uses every training sample. Test features are
    processed ``chunk_size`` at a time (memory ``chunk_size x N_train``).
    """

    def __init__(self, *, k: int = 20, vote: str = "weighted", temperature: float = 0.07,
                 chunk_size: int = 1024) -> None:
        super().__init__()
        if int(k) != k or int(k) < 1:
            raise ConfigError(f"kNN k={k!r} must be an integer >= 1")
        if vote not in KNN_VOTES:
            raise ConfigError(f"kNN vote={vote!r} is not valid; valid: {', '.join(KNN_VOTES)}")
        t = float(temperature)
        if not (math.isfinite(t) and t > 0):
            raise ConfigError(f"kNN temperature={temperature!r} must be a finite number > 0")
        if int(chunk_size) < 1:
            raise ConfigError(f"kNN chunk_size={chunk_size!r} must be >= 1")
        self.k, self.vote, self.temperature, self.chunk_size = int(k), vote, t, int(chunk_size)
        self.num_classes = 0
        self.register_buffer("bank", torch.zeros(0, 0))
        self.register_buffer("bank_labels", torch.zeros(0, dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return self.bank.numel() > 0

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "KNNClassifier":
        x, y, k = _check_fit_inputs(features, labels, num_classes, "KNNClassifier")
        self.bank, self.bank_labels, self.num_classes = _normalize(x), y, k
        if self.k > x.shape[0]:
            logger.warning("kNN: k=%d > %d training samples; every sample votes", self.k, x.shape[0])
        return self

    @torch.no_grad()
    def votes(self, features: torch.Tensor) -> torch.Tensor:
        """The raw votes ``(N, K)`` (sums of neighbour weights per class)."""
        if not self.fitted:
            raise RuntimeError("KNNClassifier: call fit(train_features, train_labels, num_classes) first")
        k = min(self.k, self.bank.shape[0])
        out = []
        for q in _normalize(features.float().to(self.bank.device)).split(self.chunk_size):
            sim, idx = (q @ self.bank.t()).topk(k, dim=1)
            w = torch.exp(sim / self.temperature) if self.vote == "weighted" else torch.ones_like(sim)
            v = torch.zeros(q.shape[0], self.num_classes, dtype=w.dtype, device=w.device)
            out.append(v.scatter_add_(1, self.bank_labels[idx], w))
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        v = self.votes(features)
        share = v / v.sum(dim=1, keepdim=True)
        return torch.log(share.clamp_min(1e-12)).clamp_min(KNN_LOG_FLOOR)

    def extra_repr(self) -> str:
        return f"k={self.k}, vote={self.vote!r}, temperature={self.temperature:g}"


def create_prototype_classifier(name: str, **kwargs: Any) -> nn.Module:
    """Build ``ncm`` or ``knn`` (unknown names list the valid ones; unknown keywords raise
    :class:`ConfigError` listing the accepted ones). Fit it with ``.fit(features, labels, K)``."""
    cls = PROTOTYPE_CLASSIFIERS.get(str(name))
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
        raise ConfigError(f"evaluation classifier {PROTOTYPE_CLASSIFIERS.canonical(str(name))} got unknown "
                          f"argument(s) {bad}; accepted: {', '.join(params)}")
    return cls(**kwargs)
