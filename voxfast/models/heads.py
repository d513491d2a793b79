"""Classification heads used only for training; kept apart so the embedding network exports alone.

All margin heads compute cosines in float32: under fp16 autocast the margin arithmetic near
cos = ±1 loses the precision that makes the margin meaningful.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from voxfast.errors import VoxfastError

HEAD_NAMES: tuple[str, ...] = ("softmax", "am", "aam", "sub_center_aam", "proto", "angleproto", "softmaxproto", "ge2e")
METRIC_HEADS = ("proto", "angleproto", "softmaxproto", "ge2e")  # losses over the batch's own speakers


def available_heads() -> list[str]:
    """Names accepted by :func:`create_head`, in the order error messages list them."""
    return list(HEAD_NAMES)


def _fp32_cosine(emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cosines between embeddings (B, D) and class vectors (C, D) -> (B, C), computed in float32.

    Autocast is switched off here: ``.float()`` alone is not enough, because autocast casts
    ``F.linear``'s inputs back to fp16/bf16, and the margin arithmetic near cos = ±1 needs fp32.
    """
    with torch.autocast(device_type=emb.device.type, enabled=False):
        return F.linear(F.normalize(emb.float()), F.normalize(weight.float())).clamp(-1.0, 1.0)


def _additive_angular(target: torch.Tensor, m: float) -> torch.Tensor:
    """ArcFace target logit cos(theta + m), with the linear fallback past theta = pi - m.

    Past theta = pi - m, cos(theta + m) would start increasing again and reward moving away from the
    class; the fallback cos(theta) - sin(pi - m) * m keeps the logit monotonic.
    """
    # The floor on 1 - cos^2 keeps the sqrt gradient finite at cos = ±1 (where torch.where would
    # otherwise multiply an infinite gradient by zero and give NaN); it moves no value above 1e-6.
    sine = torch.sqrt((1.0 - target * target).clamp(min=1e-12))
    phi = target * math.cos(m) - sine * math.sin(m)
    return torch.where(target > math.cos(math.pi - m), phi, target - math.sin(math.pi - m) * m)


class TrainingHead(nn.Module):
    """A training head: (embeddings (B, D), speaker labels (B,)) -> (loss, logits); `target` says what the logits'
    argmax should be (the labels for classifiers over all speakers; positions within the batch for losses that
    compare the batch's speakers with each other), so accuracy is logged the same way for every head."""

    def target(self, labels: torch.Tensor) -> torch.Tensor:
        return labels


class SoftmaxHead(TrainingHead):
    """Plain linear classifier with cross-entropy."""

    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, n_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, D), (B,) -> loss (), logits (B, n_classes)
        logits = self.fc(emb.float())
        return F.cross_entropy(logits, labels), logits


class MarginHead(TrainingHead):
    """Cosine classifier with an additive (AM-softmax) or angular (AAM / ArcFace) margin on the target.

    The margin is an attribute so that a schedule can raise it during training.
    """

    def __init__(self, embed_dim: int, n_classes: int, margin: float, scale: float, angular: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, embed_dim))
        nn.init.xavier_normal_(self.weight)
        self.margin = margin
        self.scale = scale
        self.angular = angular

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, D), (B,) -> loss (), logits (B, n_classes)
        cosine = _fp32_cosine(emb, self.weight)
        target = cosine.gather(1, labels[:, None])
        phi = _additive_angular(target, self.margin) if self.angular else target - self.margin
        logits = cosine.scatter(1, labels[:, None], phi) * self.scale
        return F.cross_entropy(logits, labels), logits


class SubCenterAAMHead(TrainingHead):
    """AAM (ArcFace) head with K sub-centers per class and the inter-top-k penalty, as in WeSpeaker.

    Sub-centers: each class owns K vectors and an embedding is scored against the closest one, so a
    noisy or multi-condition speaker can form a few clusters instead of dragging one centre between
    them (Deng et al., "Sub-center ArcFace", ECCV 2020). Inter-top-k: the ``top_k`` non-target
    classes closest to the embedding get their logit raised from cos(theta) to cos(theta - m'),
    which concentrates the loss on the confusable speakers that dominate verification errors
    (Zhao et al., arXiv:2110.05042). The target gets the usual ArcFace margin with the same
    fallback past theta = pi - m as :class:`MarginHead`, so K = 1 with top_k = 0 is exactly the AAM head.

    ``margin`` (and ``top_k_margin``) are plain attributes so that a schedule can change them during
    training. Unlike WeSpeaker's ``update()``, changing ``margin`` does not rescale ``top_k_margin``.
    Weight rows are laid out class-major: row ``c * sub_centers + k`` is sub-center k of class c.
    """

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        margin: float,
        scale: float,
        sub_centers: int = 3,
        top_k: int = 5,
        top_k_margin: float = 0.06,
    ) -> None:
        super().__init__()
        if isinstance(sub_centers, bool) or not isinstance(sub_centers, int) or sub_centers < 1:
            raise VoxfastError(f"head.sub_centers must be an integer >= 1, got {sub_centers!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise VoxfastError(f"head.top_k must be an integer >= 0, got {top_k!r}")
        if not (math.isfinite(top_k_margin) and top_k_margin >= 0.0):
            raise VoxfastError(f"head.top_k_margin must be a finite number >= 0, got {top_k_margin!r}")
        self.weight = nn.Parameter(torch.empty(n_classes * sub_centers, embed_dim))
        nn.init.xavier_normal_(self.weight)
        self.n_classes = n_classes
        self.sub_centers = sub_centers
        self.top_k = top_k
        self.top_k_margin = top_k_margin
        self.margin = margin
        self.scale = scale

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, D), (B,) -> loss (), logits (B, n_classes)
        cosine = _fp32_cosine(emb, self.weight)  # (B, C * K)
        cosine = cosine.view(cosine.shape[0], self.n_classes, self.sub_centers).amax(dim=2)  # (B, C)
        target = cosine.gather(1, labels[:, None])
        logits = cosine
        # A top_k beyond the n_classes - 1 negatives penalises them all, so small data sets run with the defaults.
        top_k = min(self.top_k, self.n_classes - 1)
        if top_k > 0:
            with torch.no_grad():
                # Hardest negatives on the un-penalised cosines; the target is pushed below -1 to exclude it.
                ranked = cosine.scatter(1, labels[:, None], -3.0)
                hard = ranked.topk(top_k, dim=1).indices  # (B, top_k)
            neg = cosine.gather(1, hard)
            mp = self.top_k_margin
            neg_sine = torch.sqrt((1.0 - neg * neg).clamp(min=1e-12))
            logits = logits.scatter(1, hard, neg * math.cos(mp) + neg_sine * math.sin(mp))  # cos(theta - m')
        logits = logits.scatter(1, labels[:, None], _additive_angular(target, self.margin)) * self.scale
        return F.cross_entropy(logits, labels), logits

    def extra_repr(self) -> str:
        return (
            f"n_classes={self.n_classes}, sub_centers={self.sub_centers}, margin={self.margin}, scale={self.scale}, "
            f"top_k={self.top_k}, top_k_margin={self.top_k_margin}"
        )


# ------------------------------------------------------------------------- metric learning (Chung et al., 2020)


def _fp32_cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of every row of a (P, D) with every row of b (Q, D) -> (P, Q), in float32 with autocast off."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


class _GroupedHead(TrainingHead):
    """Losses over the batch's own speakers ("In defence of metric learning", Chung et al., Interspeech 2020).

    The sampler lays `n_per_speaker` crops of a speaker side by side, so the batch is (N speakers, M crops, D).
    Nothing is learnt per training speaker (softmaxproto aside), so these heads do not grow with the speaker
    count, and each step contrasts every speaker of the batch with every other.
    """

    def __init__(self, n_per_speaker: int) -> None:
        super().__init__()
        if n_per_speaker < 2:
            raise VoxfastError(f"metric-learning heads ({', '.join(METRIC_HEADS)}) compare crops of one speaker: "
                               f"set data.n_per_speaker >= 2 (got {n_per_speaker})")
        self.m = n_per_speaker

    def group(self, emb: torch.Tensor) -> torch.Tensor:
        # (N * M, D) -> (N, M, D): crops of a speaker are consecutive
        if emb.shape[0] % self.m:
            raise VoxfastError(f"a batch of {emb.shape[0]} crops is not whole groups of data.n_per_speaker = "
                               f"{self.m}; make train.micro_batch a multiple of it")
        return emb.float().view(-1, self.m, emb.shape[1])

    def target(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.arange(len(labels) // self.m, device=labels.device)  # query i belongs to speaker i


class ProtoHead(_GroupedHead):
    """Prototypical: the first crop of each speaker is the query, the mean of the others its prototype; logits are
    minus squared Euclidean distances from each query to every prototype of the batch."""

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.group(emb)  # (N, M, D)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = -(x[:, None, 0] - x[None, :, 1:].mean(2)).square().sum(-1)  # (N queries, N prototypes)
        return F.cross_entropy(logits, self.target(labels)), logits


class AngleProtoHead(_GroupedHead):
    """Angular prototypical: cosines between queries and prototypes, scaled and shifted by a learnt w > 0 and b
    (initialised at 10 and -5, as in the paper), with cross-entropy over the batch's speakers."""

    def __init__(self, n_per_speaker: int, init_w: float = 10.0, init_b: float = -5.0) -> None:
        super().__init__(n_per_speaker)
        self.w = nn.Parameter(torch.tensor(init_w))
        self.b = nn.Parameter(torch.tensor(init_b))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.group(emb)
        cos = _fp32_cosine_matrix(x[:, 0], x[:, 1:].mean(1))  # (N, N)
        logits = cos * self.w.float().clamp(min=1e-6) + self.b.float()
        return F.cross_entropy(logits, self.target(labels)), logits


class SoftmaxProtoHead(TrainingHead):
    """Softmax over the training speakers plus angular prototypical over the batch's (the paper's best recipe):
    the classifier gives every step a global view of all speakers, the prototypical term a metric one."""

    def __init__(self, embed_dim: int, n_classes: int, n_per_speaker: int) -> None:
        super().__init__()
        self.softmax = SoftmaxHead(embed_dim, n_classes)
        self.proto = AngleProtoHead(n_per_speaker)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.softmax(emb, labels)  # logits over all speakers: accuracy as for softmax
        return loss + self.proto(emb, labels)[0], logits


class GE2EHead(_GroupedHead):
    """Generalised end-to-end loss (Wan et al., 2018): every crop against every speaker's centroid, its own
    speaker's centroid computed without it; S = w cos + b (w > 0, b learnt), cross-entropy over the speakers.

    The paper's formula: voxceleb_trainer's GE2E also clamps cosines below 1e-6 up to 1e-6, which this does not.
    """

    def __init__(self, n_per_speaker: int, init_w: float = 10.0, init_b: float = -5.0) -> None:
        super().__init__(n_per_speaker)
        self.w = nn.Parameter(torch.tensor(init_w))
        self.b = nn.Parameter(torch.tensor(init_b))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.group(emb)  # (N, M, D)
        n, m, _ = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            centroids = x.mean(1)  # (N, D)
            own = (x.sum(1, keepdim=True) - x) / (m - 1)  # (N, M, D): each crop's centroid without it
            cos = _fp32_cosine_matrix(x.reshape(n * m, -1), centroids).view(n, m, n)
            own_cos = F.cosine_similarity(x, own, dim=-1)  # (N, M)
            speaker = torch.arange(n, device=x.device)
            cos = cos.clone()
            cos[speaker, :, speaker] = own_cos
            logits = (cos * self.w.float().clamp(min=1e-6) + self.b.float()).view(n * m, n)
        return F.cross_entropy(logits, self.target(labels)), logits

    def target(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.arange(len(labels) // self.m, device=labels.device).repeat_interleave(self.m)


def create_head(
    name: str,
    embed_dim: int,
    n_classes: int,
    margin: float = 0.2,
    scale: float = 30.0,
    *,
    sub_centers: int = 3,
    top_k: int = 5,
    top_k_margin: float = 0.06,
    n_per_speaker: int = 2,
) -> nn.Module:
    """Build the training head named by the config; the sub-center options are used by "sub_center_aam" only,
    `n_per_speaker` (crops of a speaker side by side in a batch) by the metric-learning heads.

    Unknown names raise :class:`VoxfastError` listing every name, so a config typo is fixed in one go.
    """
    if name == "softmax":
        return SoftmaxHead(embed_dim, n_classes)
    if name in ("am", "aam"):
        return MarginHead(embed_dim, n_classes, margin, scale, angular=name == "aam")
    if name == "sub_center_aam":
        return SubCenterAAMHead(embed_dim, n_classes, margin, scale, sub_centers, top_k, top_k_margin)
    metric = {"proto": ProtoHead, "angleproto": AngleProtoHead, "ge2e": GE2EHead}
    if name in metric:
        return metric[name](n_per_speaker)
    if name == "softmaxproto":
        return SoftmaxProtoHead(embed_dim, n_classes, n_per_speaker)
    raise VoxfastError(f"unknown head {name!r}; available: {', '.join(HEAD_NAMES)} (set head.name)")
