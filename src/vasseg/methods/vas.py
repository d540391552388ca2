"""``vas``: voxel-wise adversarial semi-supervised learning (Lee, Park, Shin, Chung).

Total loss ``L = alpha L_adv + beta L_feature + gamma(t) L_c + L_sup`` on a batch of labeled
then unlabeled patches:

* ``L_adv`` (Sec. III-A): encoder maps of the student -> multi-resolution fusion -> sampled voxel
  features -> voxel discriminator, one head per class. Classes come from the ground truth
  (labeled, "real") and from the teacher's pseudo-labels above ``threshold`` (unlabeled, "fake");
  the student is trained to make unlabeled features look real; D has its own Adam, stepped by
  the engine on ``loss_d`` from :meth:`VAS.discriminator_step` with the features cached here.
* ``L_feature`` (Sec. III-B, BYOL): fused features of class-balanced labeled voxels through the
  student's projector and predictor, against the EMA teacher's projector on the same voxels.
* ``L_c``: softmax MSE to the EMA teacher, ``gamma(t) = gamma exp(-5 (1 - t / t_max)^2)``.
* ``L_sup``: Dice (the paper's Eq. 4) or the lineage's 0.5 (CE + Dice).

Every weight update (EMA included) is the engine's; inference uses the student VNet only.
Where the paper is silent the option says so (``paper silent``) and uses PAPER.md's default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg.config import ConfigError, Experiment
from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method, OptimizerSpec, make_teacher, teacher_in_mode, teacher_noise
from vasseg.methods.losses import sigmoid_rampup, softmax_mse, supervised_loss
from vasseg.models.heads import (
    MultiResolutionFusion,
    ProjectionHead,
    VoxelDiscriminator,
    VoxelIndex,
    byol_loss,
    masked_mean,
    pseudo_labels,
    reduce_voxels,
    sample_voxels,
)

log = logging.getLogger(__name__)

_CHOICES = {
    "consistency_on": ("all", "unlabeled"),
    "supervised_loss": ("dice", "ce_dice"),
    "fusion_mode": ("auto", "sampled", "dense"),
    "gen_loss": ("nonsaturating", "minimax"),
    "adv_fusion": ("discriminator", "student"),
    "byol_pairs": ("same_voxel", "same_class"),
    "byol_fusion": ("own", "shared"),
    "adv_reduction": ("mean", "sum"),
    "consistency_reduction": ("mean", "sum"),
    "teacher_mode": ("train", "eval"),
}


@dataclass(frozen=True)
class VASParams:
    """VAS hyper-parameters (paper values first; ``paper silent`` marks PAPER.md's defaults)."""

    alpha: float = 0.01  # weight of L_adv
    beta: float = 0.1  # weight of L_feature (0.1 on LA, 100 on multi-organ)
    gamma: float = 0.001  # maximum weight of L_c, reached by the Gaussian ramp
    # gamma's ramp length as a fraction of train.iterations (paper: t_max = max iterations).
    rampup: float = 1.0
    threshold: float = 0.7  # pseudo-label threshold t; voxels not above it are left out (paper silent)
    use_adv: bool = True  # Table IV switches
    use_feature: bool = True
    use_consistency: bool = True
    consistency_on: str = "all"  # all (PAPER.md) | unlabeled (the mean-teacher lineage)
    supervised_loss: str = "dice"  # dice (Eq. 4) | ce_dice (the lineage's 0.5 (CE + Dice))
    # C of the fused voxel features (paper silent; its hidden sizes are 64). The fused grid is
    # the label (input) resolution, PAPER.md's default: fixed, and free on the sampled path.
    channels: int = 64
    hidden: int = 64  # hidden and output size of D's MLP and the BYOL heads (paper: 64)
    # Encoder levels fused, 0..4 = strides 1..16; the paper's four (paper silent which): the first four.
    fusion_levels: tuple[int, ...] = (0, 1, 2, 3)
    fusion_kernel: int = 1  # per-level convolution kernel (paper silent)
    fusion_out_kernel: int = 1  # fusing convolution kernel (paper silent)
    fusion_mode: str = "auto"  # auto: exact sampled fast path when both kernels are 1 | sampled | dense
    voxels_per_class: int = 512  # per class per image, with replacement when fewer (paper silent)
    noise_std: float = 0.1  # teacher input noise clamp(N(0, std), +-clip); 0 turns it off (paper silent)
    noise_clip: float = 0.2
    disc_lr: float = 2e-4  # D's Adam (the paper, after DCGAN)
    disc_betas: tuple[float, float] = (0.5, 0.999)
    disc_slope: float = 0.2  # LeakyReLU slope in D's MLP (paper silent)
    gen_loss: str = "nonsaturating"  # generator loss (paper silent): BCE(D(f_u), real) | minimax log(1 - D)
    # Who owns the fusion in front of D (paper silent; Fig. 3a draws it inside D): discriminator
    # (trained by D's optimiser, the generator's gradient passes through it to the encoder) | student.
    adv_fusion: str = "discriminator"
    byol_pairs: str = "same_voxel"  # BYOL pair (paper silent): same voxel | two voxels of one class
    byol_fusion: str = "own"  # BYOL's fusion (paper silent): own | shared (with adv_fusion: student)
    byol_batchnorm: bool = True  # BatchNorm1d in projector/predictor as BYOL has (paper silent)
    # How L_adv (and D's loss) reduce over the sampled voxels (paper silent in practice): "mean"
    # over voxels; "sum" over each image's voxels, mean over images, as Eq. 2 is written
    # (1/N sum_n sum_f; 1024x the mean at 512 voxels x 2 classes, alpha L_adv then pulls on the
    # encoder 1.7x as hard as L_sup and cost 10 Dice points on the 3-fold CPU protocol's fold 0).
    adv_reduction: str = "mean"
    # L_c's reduction: "mean" over elements (the lineage's MSE; the Table IV gain of L_c, +0.17,
    # fits its tiny weight) | "sum": each image's squared norm ||f_t - f_s||^2 (Eq. 5 literally).
    consistency_reduction: str = "mean"
    # Teacher forward for pseudo-labels, L_c and BYOL targets (paper silent): "train" as the
    # lineage (batch statistics, dropout on) | "eval" (running statistics, EMA-averaged by the engine).
    teacher_mode: str = "train"


@register("vas")
class VAS(Method):
    """Voxel-wise adversarial + BYOL representation learning on a mean-teacher VNet."""

    Params = VASParams

    def __init__(self, exp: Experiment) -> None:
        super().__init__(exp)
        p: VASParams = self.params
        check_params(p, exp.data.unlabeled_bs)
        self._cache: _DiscCache | None = None
        self.teacher = make_teacher(self.student) if (p.use_adv or p.use_feature or p.use_consistency) else None
        levels = [self.student.encoder_channels[i] for i in p.fusion_levels]
        if p.use_adv:
            self.adv_fusion = self._fusion(levels)
            self.discriminator = VoxelDiscriminator(p.channels, p.hidden, self.num_classes, p.disc_slope)
        if p.use_feature:
            shared = p.byol_fusion == "shared" and p.use_adv
            self.feature_fusion = self.adv_fusion if shared else self._fusion(levels)
            self.projector = ProjectionHead(p.channels, p.hidden, p.hidden, p.byol_batchnorm)
            self.predictor = ProjectionHead(p.hidden, p.hidden, p.hidden, p.byol_batchnorm)
            self.teacher_fusion = make_teacher(self.feature_fusion)
            self.teacher_projector = make_teacher(self.projector)
        fusion = getattr(self, "adv_fusion", None) or getattr(self, "feature_fusion", None)
        log.info("vas: L_adv %s, L_feature %s, L_c %s; fusion path %s", p.use_adv, p.use_feature,
                 p.use_consistency, "-" if fusion is None else ("sampled" if fusion.use_sampled else "dense"))

    def _fusion(self, levels: list[int]) -> MultiResolutionFusion:
        p = self.params
        return MultiResolutionFusion(levels, p.channels, p.fusion_kernel, p.fusion_out_kernel, p.fusion_mode)

    # -- contract -----------------------------------------------------------------------------

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [] if self.teacher is None else [(self.teacher, self.student)]
        if self.params.use_feature:
            pairs += [(self.teacher_fusion, self.feature_fusion), (self.teacher_projector, self.projector)]
        return pairs

    @property
    def ema_buffers(self) -> bool:  # type: ignore[override]  # per run, from teacher_mode
        return self.params.teacher_mode == "eval"

    def discriminator_parameters(self) -> list[nn.Parameter]:
        if not self.params.use_adv:
            return []
        params = list(self.discriminator.parameters())
        if self.params.adv_fusion == "discriminator":
            params += list(self.adv_fusion.parameters())
        return params

    def discriminator_optimizer(self) -> OptimizerSpec | None:
        if not self.params.use_adv:
            return None
        return OptimizerSpec(name="adam", lr=self.params.disc_lr, betas=self.params.disc_betas)

    def consistency_weight(self, step: int) -> float:
        """``gamma exp(-5 (1 - t / t_max)^2)`` with ``t`` in iterations."""
        return self.params.gamma * sigmoid_rampup(step, self.params.rampup * self.exp.train.iterations)

    # -- generator step -----------------------------------------------------------------------

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        p: VASParams = self.params
        n_l = batch.labeled_bs
        # The unlabeled patches go through the networks only when a loss uses them, so the
        # "VNet" ablation is plain supervised training (batch norm included).
        images = batch.image_all if (p.use_adv or p.use_consistency) else batch.image_l
        out = self.student(images)
        sup = supervised_loss(out.logits[:n_l], batch.label_l, p.supervised_loss)
        logs: dict[str, Tensor | float] = {"loss_sup": sup.detach()}
        loss = sup
        if self.teacher is None:
            return {"loss": loss, **logs}
        with torch.no_grad(), teacher_in_mode(self.teacher, p.teacher_mode):
            t_out = self.teacher(teacher_noise(images, p.noise_std, p.noise_clip))
        index_l = None
        if p.use_adv or p.use_feature:
            index_l = sample_voxels(batch.label_l, self.num_classes, p.voxels_per_class)
            logs.update(_class_counts("vox_l", index_l))
        if p.use_consistency:
            loss = loss + self._consistency(out.logits, t_out.logits, n_l, step, logs)
        if p.use_adv:
            loss = loss + p.alpha * self._adversarial(out.encoder, t_out.logits[n_l:], index_l, n_l, logs)
        if p.use_feature:
            loss = loss + p.beta * self._feature(out.encoder, t_out.encoder, index_l, n_l, logs)
        return {"loss": loss, **logs}

    def _levels(self, maps: list[Tensor], part: slice) -> list[Tensor]:
        return [maps[i][part] for i in self.params.fusion_levels]

    def _consistency(self, s_logits: Tensor, t_logits: Tensor, n_l: int, step: int, logs: dict) -> Tensor:
        if self.params.consistency_on == "unlabeled":
            s_logits, t_logits = s_logits[n_l:], t_logits[n_l:]
        cons = softmax_mse(s_logits, t_logits, self.params.consistency_reduction)
        weight = self.consistency_weight(step)
        logs.update(loss_cons=cons.detach(), w_cons=weight)
        return weight * cons

    def _adversarial(self, enc: list[Tensor], t_logits_u: Tensor, index_l: VoxelIndex, n_l: int,
                     logs: dict) -> Tensor:
        """Generator term: unlabeled voxel features through the (frozen) D, labelled real."""
        p: VASParams = self.params
        pseudo, coverage = pseudo_labels(t_logits_u, p.threshold)
        index_u = sample_voxels(pseudo, self.num_classes, p.voxels_per_class)
        maps_l, maps_u = self._levels(enc, slice(None, n_l)), self._levels(enc, slice(n_l, None))
        logit_u = self.discriminator(self.adv_fusion(maps_u, index_u), index_u.classes)
        gen = reduce_voxels(generator_loss(logit_u, p.gen_loss), index_u, p.adv_reduction)
        self._cache = _DiscCache([m.detach() for m in maps_l], index_l, [m.detach() for m in maps_u], index_u)
        logs.update(loss_adv=gen.detach(), w_adv=p.alpha, pseudo_coverage=coverage)
        logs.update(_class_counts("vox_u", index_u))
        return gen

    def _feature(self, enc_s: list[Tensor], enc_t: list[Tensor], index: VoxelIndex, n_l: int,
                 logs: dict) -> Tensor:
        """BYOL on class-balanced labeled voxels: ``|p(z_s)/|p(z_s)| - z_t/|z_t| |^2``."""
        labeled = slice(None, n_l)
        pred = self.predictor(self.projector(self.feature_fusion(self._levels(enc_s, labeled), index)))
        with torch.no_grad():
            target = self.teacher_projector(self.teacher_fusion(self._levels(enc_t, labeled), index))
        if self.params.byol_pairs == "same_class":
            target = _shuffle_within_class(target, index)
        feat = masked_mean(byol_loss(pred, target), index.mask)
        logs.update(loss_feature=feat.detach(), w_feature=self.params.beta)
        return feat

    # -- discriminator step -------------------------------------------------------------------

    def discriminator_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """``loss_d``: labeled voxel features real, unlabeled fake, on this step's cached features."""
        cache, self._cache = self._cache, None
        if cache is None:
            raise RuntimeError("vas: discriminator_step needs the features of training_step of the same step")
        owns_fusion = self.params.adv_fusion == "discriminator"
        with torch.set_grad_enabled(owns_fusion and torch.is_grad_enabled()):
            f_l = self.adv_fusion(cache.maps_l, cache.index_l)
            f_u = self.adv_fusion(cache.maps_u, cache.index_u)
        if not owns_fusion:
            f_l, f_u = f_l.detach(), f_u.detach()
        logit_l = self.discriminator(f_l, cache.index_l.classes)
        logit_u = self.discriminator(f_u, cache.index_u.classes)
        mask_l, mask_u = cache.index_l.mask, cache.index_u.mask
        reduction = self.params.adv_reduction
        real = reduce_voxels(_bce(logit_l, 1.0), cache.index_l, reduction)
        fake = reduce_voxels(_bce(logit_u, 0.0), cache.index_u, reduction)
        return {
            "loss_d": real + fake,
            "loss_d_real": real.detach(),
            "loss_d_fake": fake.detach(),
            "d_acc_real": masked_mean((logit_l > 0).float(), mask_l).detach(),
            "d_acc_fake": masked_mean((logit_u < 0).float(), mask_u).detach(),
        }


@dataclass
class _DiscCache:
    """Detached student encoder maps (the fused levels) and sampled voxels of one step."""

    maps_l: list[Tensor]
    index_l: VoxelIndex
    maps_u: list[Tensor]
    index_u: VoxelIndex


def _bce(logits: Tensor, target: float) -> Tensor:
    """Per-voxel BCE-with-logits ``(N,)`` against a constant target (1 real, 0 fake)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")


def generator_loss(logits: Tensor, kind: str) -> Tensor:
    """Per-voxel generator loss on fake logits ``(N,)``.

    ``nonsaturating``: ``-log D`` (BCE with target real); ``minimax``: ``log(1 - D)`` (Eq. 2).
    """
    return _bce(logits, 1.0) if kind == "nonsaturating" else -_bce(logits, 0.0)


def _shuffle_within_class(rows: Tensor, index: VoxelIndex) -> Tensor:
    """Permute the ``n`` slots of every (image, class) block alike: pairs of one class."""
    bsz, k, n = index.flat.shape
    perm = torch.randperm(n, device=rows.device)
    return rows.view(bsz, k, n, -1)[:, :, perm].reshape(rows.shape)


def _class_counts(prefix: str, index: VoxelIndex) -> dict[str, Tensor]:
    counts = index.counts()
    return {f"{prefix}_c{c}": counts[c] for c in range(index.num_classes)}


def check_params(p: VASParams, unlabeled_bs: int) -> None:
    """Reject inconsistent options with the key's name."""
    for key, allowed in _CHOICES.items():
        if getattr(p, key) not in allowed:
            raise ConfigError(f"method.{key}: {getattr(p, key)!r} is not one of {', '.join(allowed)}")
    if not p.fusion_levels or len(set(p.fusion_levels)) != len(p.fusion_levels) \
            or any(not 0 <= i <= 4 for i in p.fusion_levels):
        raise ConfigError(f"method.fusion_levels: distinct encoder levels in 0..4 (got {p.fusion_levels})")
    if p.voxels_per_class <= 0 or p.channels <= 0 or p.hidden <= 0:
        raise ConfigError("method.voxels_per_class, channels and hidden must be positive")
    if p.byol_fusion == "shared" and p.use_feature and p.use_adv and p.adv_fusion != "student":
        raise ConfigError("method.byol_fusion: 'shared' needs adv_fusion: student (D's own fusion is "
                         "trained by D's optimiser only)")
    needs_unlabeled = p.use_adv or (p.use_consistency and p.consistency_on == "unlabeled")
    if needs_unlabeled and unlabeled_bs <= 0:
        raise ConfigError("vas: L_adv and unlabeled consistency need data.unlabeled_bs > 0")
