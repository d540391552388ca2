"""``vas``: voxel-wise adversarial semi-supervised learning (Lee, Park, Shin, Chung).

Total loss ``L = alpha L_adv + beta L_feature + gamma(t) L_c + L_sup`` on a batch of labeled
then unlabeled patches:

* ``L_adv`` (Sec. III-A): encoder maps of the student -> multi-resolution fusion -> sampled voxel
  features -> voxel discriminator, one head per class. Classes come from the ground truth
  (labeled, "real") and from the teacher's pseudo-labels above ``threshold`` (unlabeled, "fake");
  the student makes unlabeled features look real; D's Adam steps on :meth:`VAS.discriminator_step`.
* ``L_feature`` (Sec. III-B, BYOL): fused features of class-balanced labeled voxels through the
  student's projector and predictor, against the EMA teacher's projector on the same voxels.
* ``L_c``: softmax MSE to the EMA teacher, ``gamma(t) = gamma exp(-5 (1 - t / t_max)^2)``.
* ``L_sup``: Dice (the paper's Eq. 4) or the lineage's 0.5 (CE + Dice).

Every weight update (EMA included) is the engine's; inference uses the student VNet only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import (Adversarial, DiscriminatorParams, TeacherMode, make_teacher, teacher_in_mode,
                                 teacher_noise)
from vasseg.methods.losses import ConsistencyReduction, consistency_term, supervised_loss
from vasseg.methods.voxel_gan import DiscCache, GeneratorLoss, VoxelReduction, discriminator_losses, generator_term
from vasseg.methods.players import HANDOFF
from vasseg.models.heads import (MultiResolutionFusion, ProjectionHead, VoxelDiscriminator, VoxelIndex, pseudo_labels,
                                 sample_voxels, select_levels, voxel_byol_loss)
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VASParams(DiscriminatorParams):
    """VAS hyper-parameters (paper values first; ``paper silent`` marks PAPER.md's defaults; D's Adam: the mixin's)."""

    alpha: float = 0.01  # weight of L_adv
    beta: float = 0.1  # weight of L_feature (0.1 on LA, 100 on multi-organ)
    gamma: float = 0.001  # maximum weight of L_c, reached by the Gaussian ramp
    rampup: float = 1.0  # gamma's ramp length, a fraction of train.iterations (paper: t_max = max iterations)
    threshold: float = 0.7  # pseudo-label threshold t; voxels not above it are left out (paper silent)
    use_adv: bool = True  # Table IV switches
    use_feature: bool = True
    use_consistency: bool = True
    consistency_on: Literal["all", "unlabeled"] = "all"  # all: PAPER.md; unlabeled: the mean-teacher lineage
    supervised_loss: Literal["dice", "ce_dice"] = "dice"  # dice: Eq. 4; ce_dice: the lineage's 0.5 (CE + Dice)
    channels: int = 64  # C of the fused voxel features, on the label grid (paper silent; its hidden sizes: 64)
    hidden: int = 64  # hidden and output size of D's MLP and the BYOL heads (paper: 64)
    # Encoder levels fused, 0..4 = strides 1..16; the paper's four (paper silent which): the first four.
    fusion_levels: tuple[int, ...] = (0, 1, 2, 3)
    fusion_kernel: int = 1  # per-level convolution kernel (paper silent)
    fusion_out_kernel: int = 1  # fusing convolution kernel (paper silent)
    fusion_mode: Literal["auto", "sampled", "dense"] = "auto"  # auto: the exact sampled path when both kernels are 1
    voxels_per_class: int = 512  # per class per image, with replacement when fewer (paper silent)
    noise_std: float = 0.1  # teacher input noise clamp(N(0, std), +-clip); 0 turns it off (paper silent)
    noise_clip: float = 0.2
    disc_lr_schedule: Literal["constant", "main"] = "constant"  # (paper silent) constant: DCGAN | main: the student's
    disc_slope: float = 0.2  # LeakyReLU slope in D's MLP (paper silent)
    gen_loss: GeneratorLoss = "nonsaturating"  # (paper silent) BCE(D(f_u), real) | minimax log(1 - D)
    # Who owns the fusion in front of D (paper silent; Fig. 3a draws it inside D): discriminator
    # (trained by D's optimiser, the generator's gradient passes through it to the encoder) | student.
    adv_fusion: Literal["discriminator", "student"] = "discriminator"
    byol_pairs: Literal["same_voxel", "same_class"] = "same_voxel"  # BYOL pair (paper silent): two voxels of one class
    byol_fusion: Literal["own", "shared"] = "own"  # BYOL's fusion (paper silent); shared needs adv_fusion: student
    byol_batchnorm: bool = True  # BatchNorm1d in projector/predictor as BYOL has (paper silent)
    # How L_adv and D's loss reduce over the sampled voxels (paper silent in practice; see
    # voxel_gan.VoxelReduction): "sum", Eq. 2 as written, pulls on the encoder 1.7x as hard as
    # L_sup through alpha L_adv and cost 10 Dice points on the 3-fold CPU protocol's fold 0.
    adv_reduction: VoxelReduction = "mean"
    # L_c's reduction (losses.softmax_mse): "mean", the lineage's MSE (L_c's Table IV gain, +0.17,
    # fits its tiny weight) | "sum", each image's squared norm ||f_t - f_s||^2 (Eq. 5 literally).
    consistency_reduction: ConsistencyReduction = "mean"
    teacher_mode: TeacherMode = "train"  # teacher forward for pseudo-labels, L_c, BYOL targets (paper silent)
    # EMA decay of BYOL's target fusion and projector (paper silent; BYOL: >= 0.996); None: the engine's
    # teacher decay (train.ema_decay, warm-up included). Target encoder features: the mean teacher's (no 2nd VNet).
    byol_target_decay: float | None = None


@register("vas")
class VAS(Adversarial):
    """Voxel-wise adversarial + BYOL representation learning on a mean-teacher VNet."""

    Params = VASParams

    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        """Reject inconsistent options with the key's name (the option sets are the Params' types)."""
        super().check_config(exp)
        p: VASParams = exp.method.params
        if not (levels := p.fusion_levels) or len(set(levels)) != len(levels) or any(not 0 <= i <= 4 for i in levels):
            raise ConfigError(f"method.fusion_levels: distinct encoder levels in 0..4 (got {p.fusion_levels})")
        if p.byol_target_decay is not None and not 0.0 <= p.byol_target_decay < 1.0:
            raise ConfigError(f"method.byol_target_decay: in [0, 1) (got {p.byol_target_decay})")
        if p.voxels_per_class <= 0 or p.channels <= 0 or p.hidden <= 0:
            raise ConfigError("method.voxels_per_class, channels and hidden must be positive")
        if p.byol_fusion == "shared" and p.use_feature and p.use_adv and p.adv_fusion != "student":
            raise ConfigError("method.byol_fusion: 'shared' needs adv_fusion: student (D's own fusion is "
                              "trained by D's optimiser only)")
        if (p.use_adv or (p.use_consistency and p.consistency_on == "unlabeled")) and exp.data.unlabeled_bs <= 0:
            raise ConfigError("vas: L_adv and unlabeled consistency need data.unlabeled_bs > 0")

    def __init__(self, exp: Experiment) -> None:
        super().__init__(exp)
        p: VASParams = self.params
        self.teacher = make_teacher(self.student) if (p.use_adv or p.use_feature or p.use_consistency) else None
        new_fusion = partial(MultiResolutionFusion, [self.student.encoder_channels[i] for i in p.fusion_levels],
                             p.channels, p.fusion_kernel, p.fusion_out_kernel, p.fusion_mode)
        if p.use_adv:
            self.adv_fusion = new_fusion()
            self.discriminator = VoxelDiscriminator(p.channels, p.hidden, self.num_classes, p.disc_slope)
        if p.use_feature:
            shared = p.byol_fusion == "shared" and p.use_adv
            self.feature_fusion = self.adv_fusion if shared else new_fusion()
            self.projector = ProjectionHead(p.channels, p.hidden, p.hidden, p.byol_batchnorm)
            self.predictor = ProjectionHead(p.hidden, p.hidden, p.hidden, p.byol_batchnorm)
            self.teacher_fusion = make_teacher(self.feature_fusion)
            self.teacher_projector = make_teacher(self.projector)
        fusion = getattr(self, "adv_fusion", None) or getattr(self, "feature_fusion", None)
        log.info("vas: L_adv %s, L_feature %s, L_c %s; fusion path %s", p.use_adv, p.use_feature,
                 p.use_consistency, "-" if fusion is None else ("sampled" if fusion.use_sampled else "dense"))

    # -- contract -----------------------------------------------------------------------------

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [] if self.teacher is None else [(self.teacher, self.student)]
        if self.params.use_feature:
            pairs += [(self.teacher_fusion, self.feature_fusion), (self.teacher_projector, self.projector)]
        return pairs

    def ema_updates(self, step: int, decay: float) -> list[tuple[nn.Module, nn.Module, float]]:
        """The engine's decay everywhere, except BYOL's target heads under ``byol_target_decay``."""
        own = self.params.byol_target_decay
        byol = {id(self.teacher_fusion), id(self.teacher_projector)} if self.params.use_feature else set()
        return [(t, s, own if own is not None and id(t) in byol else decay) for t, s in self.ema_pairs()]

    @property
    def ema_buffers(self) -> bool:  # type: ignore[override]  # per run, from teacher_mode
        return self.params.teacher_mode == "eval"

    def discriminator_parameters(self) -> list[nn.Parameter]:
        if not self.params.use_adv:
            return []
        own_fusion = self.adv_fusion.parameters() if self.params.adv_fusion == "discriminator" else []
        return [*self.discriminator.parameters(), *own_fusion]

    def discriminator_schedule(self) -> Literal["constant", "main"]:
        return self.params.disc_lr_schedule

    def consistency_weight(self, step: int) -> float:
        """``gamma exp(-5 (1 - t / t_max)^2)`` with ``t`` in iterations."""
        return self.ramp(self.params.gamma, self.params.rampup, step)

    # -- generator step -----------------------------------------------------------------------

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        p: VASParams = self.params
        n_l = batch.labeled_bs
        # The unlabeled patches go through the networks only when a loss uses them, so the
        # "VNet" ablation is plain supervised training (batch norm included).
        images = batch.image_all if (p.use_adv or p.use_consistency) else batch.image_l
        out = self.student(images)
        loss = sup = supervised_loss(out.logits[:n_l], batch.label_l, p.supervised_loss)
        logs: dict[str, Tensor | float] = {"loss_sup": sup}
        if self.teacher is None:
            return {"loss": loss, **logs}
        with torch.no_grad(), teacher_in_mode(self.teacher, p.teacher_mode):
            t_out = self.teacher(teacher_noise(images, p.noise_std, p.noise_clip))
        index_l = None
        if p.use_adv or p.use_feature:
            index_l = sample_voxels(batch.label_l, self.num_classes, p.voxels_per_class)
            logs.update(index_l.named_counts("vox_l"))
        if p.use_consistency:
            cons = consistency_term(out.logits, t_out.logits, n_l, p.consistency_on, p.consistency_reduction)
            logs.update(loss_cons=cons, w_cons=self.consistency_weight(step))
            loss = loss + logs["w_cons"] * cons
        if p.use_adv:
            loss = loss + p.alpha * self._adversarial(out.encoder, t_out.logits[n_l:], index_l, n_l, logs)
        if p.use_feature:
            loss = loss + p.beta * self._feature(out.encoder, t_out.encoder, index_l, n_l, logs)
        return {"loss": loss, **logs}

    def _adversarial(self, enc: list[Tensor], t_logits_u: Tensor, index_l: VoxelIndex, n_l: int, logs: dict) -> Tensor:
        """Generator term: unlabeled voxel features through the (frozen) D, labelled real."""
        p: VASParams = self.params
        pseudo, coverage = pseudo_labels(t_logits_u, p.threshold)
        index_u = sample_voxels(pseudo, self.num_classes, p.voxels_per_class)
        maps_l, maps_u = (select_levels(enc, p.fusion_levels, part) for part in (slice(None, n_l), slice(n_l, None)))
        gen = generator_term(self.adv_fusion, self.discriminator, maps_u, index_u, p.gen_loss, p.adv_reduction)
        logs[HANDOFF] = DiscCache.of(maps_l, index_l, maps_u, index_u)  # D's step learns on these
        logs.update(loss_adv=gen, w_adv=p.alpha, pseudo_coverage=coverage, **index_u.named_counts("vox_u"))
        return gen

    def _feature(self, enc_s: list[Tensor], enc_t: list[Tensor], index: VoxelIndex, n_l: int, logs: dict) -> Tensor:
        """BYOL on class-balanced labeled voxels: ``|p(z_s)/|p(z_s)| - z_t/|z_t| |^2``."""
        maps_s, maps_t = (select_levels(enc, self.params.fusion_levels, slice(None, n_l)) for enc in (enc_s, enc_t))
        pred = self.predictor(self.projector(self.feature_fusion(maps_s, index)))
        with torch.no_grad():
            target = self.teacher_projector(self.teacher_fusion(maps_t, index))
        feat = voxel_byol_loss(pred, target, index, same_class=self.params.byol_pairs == "same_class")
        logs.update(loss_feature=feat, w_feature=self.params.beta)
        return feat

    def discriminator_step(self, batch: Batch, step: int, handoff: DiscCache | None = None) -> dict[str, Tensor]:
        """``loss_d``: labeled voxel features real, unlabeled fake, on those ``training_step`` handed over."""
        if handoff is None:
            raise RuntimeError("vas: discriminator_step needs the features of training_step of the same step")
        owns = self.params.adv_fusion == "discriminator"
        return discriminator_losses(self.adv_fusion, self.discriminator, handoff, owns, self.params.adv_reduction)
