"""The one training engine every method runs on.

One step (:meth:`Trainer.train_step`), in this order::

    hand-over      at a phase's first step: method.on_phase_start(phase), fresh optimizers if asked
    lr             the phase's learning-rate policy at the phase's own step
    batch          labeled then unlabeled patches, augmented where the volumes live
    forward        out = method(batch, step, MAIN)   under autocast: "loss" and the logged terms
    backward       zero_grad; backward(out["loss"]); unscale; clip train.grad_clip; step (D frozen)
    discriminator  D unfrozen: out_d = method(batch, step, DISC, out["handoff"]); backward(loss_d); step
    EMA            teacher = d teacher + (1 - d) student for each (teacher, student, d) of the method
    after_step     method.after_step(step)           e.g. AD-MT's teacher alternation
    logging        every term detached and buffered; flushed, checked finite, every train.log_every

Around the steps (:meth:`Trainer.fit`): validation every ``train.val_every`` (``best.pt``), the
step-end hooks its builder passes (:func:`vasseg.training.default_hooks`: e.g. feature snapshots),
atomic checkpoints every ``train.ckpt_every`` (exact resume), and a clean stop on SIGTERM/SIGINT.
A method's training phases (:mod:`vasseg.methods.phases`) run back to back in this one loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from vasseg.config import Experiment, to_dict
from vasseg.data.batcher import Batch, TwoStreamBatcher
from vasseg.data.setup import DataBundle
from vasseg.engine import distributed
from vasseg.engine.checkpoint import (
    check_saved_phase,
    latest_checkpoint,
    load_checkpoint,
    phase_record,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    warn_precision_change,
)
from vasseg.engine.optim import ema_decay, ema_update, main_spec, make_optimizer, phase_lr_factor, set_lr
from vasseg.inferer.precision import precision_name, prepare_cpu_bf16
from vasseg.engine.scalars import NonFiniteError, ScalarLog, detached
from vasseg.engine.setup import autocast_dtype, describe_amp, use_channels_last
from vasseg.engine.stopping import StopRequest
from vasseg.errors import ConfigError, VassegError
from vasseg.rundir import BEST, RunDir, step_file
from vasseg.methods.base import Method
from vasseg.methods.phases import PhaseAt, check_phases, locate
from vasseg.methods.players import DISC, HANDOFF, LOSS, LOSS_D, MAIN

log = logging.getLogger(__name__)

StepEndHook = Callable[["Trainer"], None]
"""Called after every step (after validation, before the checkpoint) with the trainer, on every rank."""


class TrainingStopped(VassegError, RuntimeError):
    """Training cannot go on (non-finite values); the message says where and what to resume."""


class TrainingInterrupted(TrainingStopped):
    """SIGTERM/SIGINT: a checkpoint of the current step was saved; ``--resume`` continues."""


class Trainer:
    """Trains ``method`` on ``data`` for ``exp.train.iterations`` steps, in ``run_dir``."""

    def __init__(self, exp: Experiment, method: Method, data: DataBundle, run_dir: Path,
                 device: torch.device, rank: int = 0, world_size: int = 1,
                 hooks: Sequence[StepEndHook] = ()) -> None:
        self.exp, self.method, self.data, self.run_dir = exp, method, data, run_dir
        self.device, self.rank, self.world_size = device, rank, world_size
        self.is_main = rank == 0
        self.ckpt_dir = RunDir(run_dir).checkpoints
        self.step = 0
        self.best: dict[str, Any] = {"val_dice": -math.inf, "step": -1}
        self.nonfinite_skips = 0
        self.amp_dtype = autocast_dtype(exp, device)
        if self.is_main:
            log.info("training precision: %s", describe_amp(exp, device))
        self.channels_last = use_channels_last(exp, device)
        self._place_method()
        prepare_cpu_bf16(self.method, self.amp_dtype, device)
        self.phases = method.phases()
        check_phases(self.phases, exp.train.iterations, method.name)
        if world_size > 1 and exp.train.sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA devices (PyTorch has no CPU version)")
            distributed.convert_sync_bn(self.method)
        self.main_params = self.method.main_parameters()
        self.optimizers = self._build_optimizers()
        # The main phase runs through DDP when distributed (it averages the main gradients).
        self.model: nn.Module = distributed.wrap(self.method, device) if world_size > 1 else self.method
        self._stop = StopRequest()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.batcher = self._build_batcher()
        self.scalars = ScalarLog(run_dir, exp.run.tensorboard, enabled=self.is_main)
        self.step_end_hooks = list(hooks)
        if exp.run.feature_snapshots and not self.step_end_hooks:
            log.warning("run.feature_snapshots: no step-end hook was given to save them (vasseg.train and "
                        "`vasseg train` give vasseg.training.default_hooks(exp))")

    # -- construction -------------------------------------------------------------------------

    def _place_method(self) -> None:
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        self.method.to(self.device, memory_format=fmt)
        if self.exp.train.compile:
            for module in {self.method.student, *(t for t, _ in self.method.ema_pairs())}:
                module.compile()

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = {MAIN: make_optimizer(self.main_params, main_spec(self.exp.train))}
        self.scheduled_lr = {MAIN: self.exp.train.lr}  # optimizer -> base lr the policy factor scales
        disc = self.method.discriminator_parameters()
        spec = self.method.discriminator_optimizer()
        if disc:
            if spec is None:
                raise ValueError(f"method {self.method.name!r} has discriminator parameters but no optimizer spec")
            optimizers[DISC] = make_optimizer(disc, spec)
            if spec.schedule == "main":
                self.scheduled_lr[DISC] = spec.lr
            for p in disc:  # frozen except during its own step (generator step with D frozen)
                p.requires_grad_(False)
        return optimizers

    def _build_batcher(self) -> TwoStreamBatcher:
        d = self.exp.data
        where = self.device if d.on_device else torch.device("cpu")
        labeled = self.data.labeled.to(where)
        unlabeled = self.data.unlabeled.to(where) if self.data.unlabeled is not None else None
        return TwoStreamBatcher(
            labeled, unlabeled, labeled_bs=d.labeled_bs,
            unlabeled_bs=d.unlabeled_bs if unlabeled is not None else 0,
            patch=d.patch_size, augment=d.augment, seed=self.exp.train.seed,
            rank=self.rank, world_size=self.world_size,
        )

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "phase": phase_record(locate(self.phases, self.step), self.step),
            "method": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "batcher": self.batcher.state_dict(),
            "rng": rng_state(),
            "best": dict(self.best),
            "nonfinite_skips": self.nonfinite_skips,
            "config": to_dict(self.exp),
            "world_size": self.world_size,
            "precision": self.precision,
        }

    @property
    def precision(self) -> str:
        """The training precision as resolved on this device: ``fp32``, ``bf16`` or ``fp16``."""
        return precision_name(self.amp_dtype)

    def save(self, name: str | None = None) -> Path | None:
        if not self.is_main:
            return None
        name = name or step_file(self.step)
        path = save_checkpoint(self.ckpt_dir, name, self.state_dict(), point_latest=name.startswith("step_"))
        prune_checkpoints(self.ckpt_dir, self.exp.train.keep_checkpoints)
        return path

    def resume(self) -> bool:
        """Restore the latest checkpoint of this run; False when there is none."""
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        state = load_checkpoint(path, map_location=self.device)
        self.method.load_state_dict(state["method"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        self.scaler.load_state_dict(state["scaler"])
        self.batcher.load_state_dict(state["batcher"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        check_saved_phase(state.get("phase"), phase_record(locate(self.phases, self.step), self.step),
                          self.method.name, self.step, path)
        self.best = dict(state["best"])
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))
        warn_precision_change(state.get("precision"), self.precision, self.step, path)
        self.scalars.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # -- phases -------------------------------------------------------------------------------

    def _start_phase(self, at: PhaseAt) -> None:
        """The hand-over at a phase's first step (the first phase's too, at step 0)."""
        if len(self.phases) > 1:
            log.info("step %d: phase %r starts (%d iterations)", self.step, at.phase.name, at.phase.iterations)
        self.method.on_phase_start(at.phase)
        if at.phase.fresh_optimizer:
            self.optimizers = self._build_optimizers()
        if at.start > 0:  # best.pt is chosen within the phase that ends training
            self.best = {"val_dice": -math.inf, "step": -1}

    def ema_plan(self, step: int) -> list[tuple[nn.Module, nn.Module, float]]:
        """``(teacher, student, decay)`` averaged after ``step``: the method's, at its phase's decay."""
        t = self.exp.train
        at = locate(self.phases, step)
        decay = ema_decay(at.local(step), t.ema_decay) if at.phase.ema_warmup else t.ema_decay
        return self.method.ema_updates(step, decay)

    # -- one step -----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _next_batch(self) -> Batch:
        batch = self.batcher.next().to(self.device)
        if self.channels_last:
            batch = batch.to_memory_format(torch.channels_last_3d)
        return batch

    def _optimize(self, key: str, loss: torch.Tensor, params: list[nn.Parameter],
                  allreduce: bool = False) -> torch.Tensor | None:
        """Backward, (unscale,) clip, step; returns the gradient norm before clipping.

        Under fp16 loss scaling an infinite norm is the scaler's normal overflow signal (it skips
        the step itself), so no norm is returned for the non-finite guard to trip on.
        """
        opt = self.optimizers[key]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if allreduce:  # parameters outside DDP (the discriminator): average across ranks here
            distributed.average_gradients(params)
        self.scaler.unscale_(opt)
        max_norm = self.exp.train.grad_clip if (key == MAIN and self.exp.train.grad_clip > 0) else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if self.exp.train.nonfinite == "skip" and not (math.isfinite(loss.item()) and math.isfinite(norm.item())):
            self._skip_step(key, loss, norm)
        else:
            self.scaler.step(opt)
        return None if self.scaler.is_enabled() else norm

    def _skip_step(self, key: str, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.nonfinite_skips += 1
        opt = self.optimizers[key]
        opt.zero_grad(set_to_none=True)
        log.warning("step %d: skipped %s update (loss %s, grad norm %s); %d skipped so far",
                    self.step, key, loss.item(), norm.item(), self.nonfinite_skips)
        if self.nonfinite_skips > self.exp.train.max_nonfinite_skips:
            raise TrainingStopped(
                f"step {self.step}: more than {self.exp.train.max_nonfinite_skips} non-finite steps "
                f"skipped (last: {key} loss = {loss.item()}, grad norm = {norm.item()}). "
                f"{self._last_good()}"
            )

    def _last_good(self) -> str:
        """Where a stopped run can go on from, for its error message."""
        path = latest_checkpoint(self.ckpt_dir) if self.is_main else None
        if path is None:
            return (f"Last good checkpoint: none yet in {self.ckpt_dir} (rerun, perhaps with a lower "
                    f"train.lr or train.nonfinite=skip)")
        return (f"Last good checkpoint: {path} (resume from it with --resume, perhaps with a lower "
                f"train.lr or train.nonfinite=skip)")

    def train_step(self) -> dict[str, Any]:
        """One generator (+ discriminator) step and the EMA update; returns device scalars."""
        t = self.exp.train
        step = self.step
        at = locate(self.phases, step)
        if at.local(step) == 0:
            self._start_phase(at)
        factor = phase_lr_factor(t, at.phase, at.local(step))
        for key, base in self.scheduled_lr.items():
            set_lr(self.optimizers[key], base * factor)
        batch = self._next_batch()
        with self._autocast():
            out = dict(self.model(batch, step, MAIN))
        norm = self._optimize(MAIN, out[LOSS], self.main_params)
        handoff = out.pop(HANDOFF, None)
        out = detached(out)
        if norm is not None:
            out["grad_norm"] = norm
        if DISC in self.optimizers:
            out.update(self._discriminator_step(batch, step, handoff))
        self.scaler.update()
        for teacher, student, decay in self.ema_plan(step):
            ema_update(teacher, student, decay, buffers=self.method.ema_buffers)
        self.method.after_step(step)
        out["lr"] = t.lr * factor
        if len(self.phases) > 1:
            out["phase"] = at.index
        return out

    def _discriminator_step(self, batch: Batch, step: int, handoff: Any = None) -> dict[str, Any]:
        params = self.method.discriminator_parameters()
        for p in params:
            p.requires_grad_(True)
        try:
            with self._autocast():
                # Not through DDP: its forward would expect the main parameters' gradients.
                out = dict(self.method(batch, step, DISC, handoff))
            norm = self._optimize(DISC, out[LOSS_D], params, allreduce=self.world_size > 1)
            out = detached(out)
            if norm is not None:
                out["grad_norm_d"] = norm
        finally:
            for p in params:
                p.requires_grad_(False)
        return out

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> Path | None:
        """Run to ``train.iterations``; returns the last checkpoint written (rank 0)."""
        t = self.exp.train
        self.method.train()
        bar = tqdm(total=t.iterations, initial=self.step, disable=not (t.progress and self.is_main),
                   desc=self.method.name, dynamic_ncols=True)
        last: Path | None = None
        started = time.perf_counter()
        restore = self._stop.install()
        try:
            while self.step < t.iterations:
                out = self.train_step()
                self.scalars.record(self.step, out)
                self.step += 1
                at_ckpt = self.step % t.ckpt_every == 0 or self.step == t.iterations
                at_val = bool(t.val_every) and self.step % t.val_every == 0
                at_flush = self.step % t.log_every == 0 or at_ckpt or at_val
                # Every checkpoint (best.pt from validation included) follows a checked flush,
                # so no checkpoint ever holds weights trained on a non-finite step.
                if at_flush:
                    self._flush(bar)
                if at_val:
                    self.validate()
                for hook in self.step_end_hooks:
                    hook(self)
                if at_ckpt:
                    last = self.save() or last
                if self._stop.requested(self.world_size, at_flush, self.device):
                    self._stop_now(bar, at_ckpt)
        finally:
            restore()
            bar.close()
            self.scalars.close()
        log.info("trained %d steps in %.1f s", t.iterations, time.perf_counter() - started)
        return last

    def _stop_now(self, bar: tqdm, saved: bool) -> None:
        self._flush(bar)
        path = latest_checkpoint(self.ckpt_dir) if saved else self.save()
        raise TrainingInterrupted(
            f"stopped by {self._stop.name} at step {self.step}; checkpoint saved ({path}); "
            f"continue with the same command and --resume"
        )

    def _flush(self, bar: tqdm) -> None:
        try:
            # In skip mode every step was already checked (and skipped ones are logged as such).
            rows = self.scalars.flush(check=self.exp.train.nonfinite == "stop",
                                      reduce=distributed.mean_over_ranks if self.world_size > 1 else None)
        except NonFiniteError as exc:
            raise TrainingStopped(
                f"non-finite value at {exc}; stopped at step {self.step}. {self._last_good()}"
            ) from None
        if rows:
            bar.update(rows[-1]["step"] + 1 - bar.n)
            shown = {k: f"{v:.4g}" for k, v in rows[-1].items() if k.startswith("loss")}
            bar.set_postfix(shown, refresh=False)

    def validate(self) -> dict[str, float] | None:
        """Score the student on the validation split; keep ``best.pt`` on its mean Dice."""
        if self.data.val is None or not self.is_main:
            return None
        from vasseg.engine.evaluate import evaluate_cases, summarize_rows

        rows = evaluate_cases(self.method, self.data.val, self.exp, self.device, progress=False)
        summary = summarize_rows(rows)
        dice = summary["mean"]["dice"].mean
        self.method.train()
        values = {"val_dice": dice, "val_hd95": summary["mean"]["hd95"].mean}
        self.scalars.write_row(self.step, values)
        log.info("step %d: validation Dice %.4f", self.step, dice)
        if dice > self.best["val_dice"]:
            self.best = {"val_dice": dice, "step": self.step}
            self.save(BEST)
        return values
