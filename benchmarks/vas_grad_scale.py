"""How hard each VAS loss term pulls on the student's encoder: gradient norms per term.

    python benchmarks/vas_grad_scale.py --config configs/la_cv/vas_8.yaml --repeats 4 \\
        [--checkpoint RUN/checkpoints/step_001200.pt] [override ...]

For real LA patches (the config's labeled and unlabeled cases, random crops as in training) it
computes, for each term of ``L = L_sup + alpha L_adv + beta L_feature + gamma(t) L_c`` separately,
the L2 norm of its gradient w.r.t. the student's encoder parameters, under both reductions of
L_adv (mean / sum over voxels) and L_c (mean / sum over the map); gamma is taken at the end of its
ramp (its largest value). Prints a markdown table (median over ``--repeats`` batches). Without a
checkpoint the networks are at initialisation (seeded); with one, at that training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from vasseg.config import load_config
from vasseg.data.batcher import TwoStreamBatcher
from vasseg.data.setup import build_data
from vasseg.engine.setup import build_method, seed_everything
from vasseg.methods.losses import softmax_mse, supervised_loss
from vasseg.methods.vas import VAS
from vasseg.methods.voxel_gan import generator_loss
from vasseg.models.heads import pseudo_labels, reduce_voxels, sample_voxels, select_levels


def term_grads(method: VAS, batch, step: int) -> dict[str, float]:
    """Encoder-gradient norm of every weighted term on one batch."""
    p = method.params
    enc_params = [q for q in method.student.encoder.parameters() if q.requires_grad]
    n_l = batch.labeled_bs
    images = batch.image_all
    out = method.student(images)
    with torch.no_grad():
        t_out = method.teacher(images)
    index_l = sample_voxels(batch.label_l, method.num_classes, p.voxels_per_class)
    pseudo, _ = pseudo_labels(t_out.logits[n_l:], p.threshold)
    index_u = sample_voxels(pseudo, method.num_classes, p.voxels_per_class)
    maps_u = select_levels(out.encoder, p.fusion_levels, slice(n_l, None))
    logit_u = method.discriminator(method.adv_fusion(maps_u, index_u), index_u.classes)
    gen = generator_loss(logit_u, p.gen_loss)
    gamma = method.consistency_weight(method.exp.train.iterations)
    terms = {
        "L_sup": supervised_loss(out.logits[:n_l], batch.label_l, p.supervised_loss),
        "alpha L_adv (mean)": p.alpha * reduce_voxels(gen, index_u, "mean"),
        "alpha L_adv (sum)": p.alpha * reduce_voxels(gen, index_u, "sum"),
        "beta L_feature": p.beta * method._feature(out.encoder, t_out.encoder, index_l, n_l, {}),
        "gamma L_c (mean)": gamma * softmax_mse(out.logits, t_out.logits, "mean"),
        "gamma L_c (sum)": gamma * softmax_mse(out.logits, t_out.logits, "sum"),
        "0.1 L_c (mean, mean teacher's)": 0.1 * softmax_mse(out.logits[n_l:], t_out.logits[n_l:], "mean"),
    }
    norms = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, enc_params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoint", default=None, help="a training checkpoint of the same config")
    ap.add_argument("--repeats", type=int, default=4, help="batches to take the median over")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    exp = load_config(args.config, args.overrides)
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, folds=0, fold=0, num_val=0))
    seed_everything(exp.train.seed)
    method = build_method(exp)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        method.load_state_dict(state["method"])
    method.train()
    data = build_data(exp, type(method), progress=False)
    batcher = TwoStreamBatcher(data.labeled, data.unlabeled, exp.data.labeled_bs, exp.data.unlabeled_bs,
                               exp.data.patch_size, augment=True, seed=exp.train.seed)
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, value in term_grads(method, batcher.next(), exp.train.iterations).items():
            rows.setdefault(name, []).append(value)
    ref = statistics.median(rows["L_sup"])
    print("| term | encoder grad norm (median) | / L_sup |")
    print("|---|---|---|")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3g} | {med / ref:.3g} |")


if __name__ == "__main__":
    main()
