"""
The paper's analyses of LUMA and MoCLIP, each a figure: the gradient flow per UNet block (Fig. 3 / Fig. 8, App. G),
the DCT spectrum of the motions that sets k (Fig. 7, App. F), the attention of MoCLIP's final text layer against
the tower it started from (Fig. 9, App. B), and the convergence curves of Fig. 4 (validation FID against steps and
hours, from train.py --eval-every). evaluate.py is the evaluation protocol; this file measures why.

    load_training_run(checkpoint.pt) -> (LUMA, text encoder, config)
    gradient_flow(model, text_tokens, x0, lengths, tem_target, timesteps, zeta)  -> {t: {block: mean |grad|}}
    plot_gradient_flow(flows, path)
    dct_spectrum(motions) -> (mean |coefficient|, energy) per frequency;  energy_share(energy, k)
    final_layer_attention(model, texts) -> per text: tokens, attention each position receives (normalised)
    plot_attention(rows, path)
    read_eval_runs(folder) -> per seed (steps, hours, FID, R@3);  plot_convergence(curves, path, threshold)
    read_seed_results(t2m_results.json files) -> {variant: {seed: metrics}};  seed_table(...);  seed_interval(values)

    python analysis.py gradflow --runs runs/luma_synthetic runs/luma_synthetic_no_anchors   # Fig. 3 / 8
    python analysis.py spectrum --dataset synthetic                                          # Fig. 7
    python analysis.py attention --checkpoint checkpoints/moclip_synthetic.pt                # Fig. 9
    python analysis.py convergence --runs runs/luma_synthetic runs/no_anchors_synthetic --fid-threshold 3   # Fig. 4
    python analysis.py seeds --results runs/study/t2m/t2m_results.json        # Table 2 over seeds: mean ± 95% CI
"""

import argparse
import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from anchors import dct, dual_anchor_loss
from data import (DATA_ROOTS, KINDS, SEED, InputError, MotionDataset, device_name, float_range, folder_path,
                  int_range, load_checkpoint, load_weights, prepare_dataset, read_text_lines, user_errors,
                  write_atomic)
from diffusion import alphas_cumprod, linear_betas, masked_mse, q_sample
from evaluate import METRICS, row_names
from moclip import initial_text_tower, load_moclip, moclip_from_state


def write_csv(path, header, rows):
    """A CSV file written atomically; the csv module quotes fields that hold commas or quotes (run labels, captions)."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    write_atomic(Path(path), lambda f: f.write(text.getvalue().encode()))


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no screen needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------------------------------------------------------------
# 1. Gradient flow per UNet block (Fig. 3 / Fig. 8, App. G)


def load_training_run(path, device="cpu"):
    """(LUMA model, text encoder, config) from a train.py checkpoint.pt (the one holding the anchor heads); config.step
    is the number of optimiser steps the checkpoint has taken."""
    state = load_checkpoint(path, "a LUMA training checkpoint with its anchor heads (final.pt has none)",
                            "train.py (runs/<run>/checkpoint.pt)", fmt="luma",
                            keys=("model", "config", "unet_config", "text_encoder"))
    from train import build_model
    args = argparse.Namespace(**{**state["config"], "step": state.get("step", 0)})   # .step: optimiser steps done
    text_encoder = moclip_from_state(state["text_encoder"], source=path).to(device)
    anchor_dim = state["model"]["anchor.tem_proj.out.weight"].shape[0] if "anchor.tem_proj.out.weight" in \
        state["model"] else text_encoder.embed_dim
    model = build_model(args, state["unet_config"]["motion_dim"], text_encoder.text_width, anchor_dim)
    load_weights(model, state["model"], path, "LUMA")
    return model.to(device), text_encoder, args


def gradient_flow(model, text_tokens, x0, lengths, tem_target=None, timesteps=(750, 500, 250, 0),
                  zeta=1.0, lambda_fre=0.1, lambda_tem=0.5, seed=0):
    """{t: {block: mean |grad| over the block's parameters}} for Eq. (10): L_DDPM + zeta * DAL (zeta = 0: L_DDPM).

    model: train.LUMA; text_tokens (B, L, W), x0 (B, T, D) normalised clean motion, lengths (B,), tem_target
    (B, D_a) = frozen MoCLIP(x0). Every sample gets the same t, all conditional; dropout off (eval mode).
    """
    abar = alphas_cumprod(linear_betas(1000)).to(x0.device)
    generator = torch.Generator(x0.device).manual_seed(seed)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)          # one noise for every t
    cond = torch.ones(len(x0), dtype=torch.bool, device=x0.device)
    was_training = model.training
    model.eval()
    result = {}
    for t_value in timesteps:
        t = torch.full((len(x0),), t_value, dtype=torch.long, device=x0.device)
        model.zero_grad(set_to_none=True)
        x0_hat, z_fre, z_tem = model(q_sample(x0, t, noise, abar), t, text_tokens, cond, lengths)   # Eq. (1)
        loss = masked_mse(x0_hat, x0, lengths)                                                       # Eq. (2)
        if zeta > 0 and (z_fre is not None or z_tem is not None):
            loss = loss + zeta * dual_anchor_loss(z_fre, z_tem, x0, tem_target, lambda_fre, lambda_tem)[0]  # Eq. (10)
        loss.backward()
        result[t_value] = {}
        for name, block in model.unet.named_blocks():
            grads = [p.grad.abs().flatten() for p in block.parameters() if p.grad is not None]
            result[t_value][name] = torch.cat(grads).mean().item() if grads else 0.0
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return result


def plot_gradient_flow(flows, path, threshold=0.01):
    """Bar charts like Fig. 3/8: one row per run (label -> gradient_flow result), one panel per timestep.

    Down and mid blocks red, up blocks blue; the dashed line marks threshold x the mean over blocks (1%).
    """
    plt = _pyplot()
    labels = list(flows)
    timesteps = list(next(iter(flows.values())))
    fig, axes = plt.subplots(len(labels), len(timesteps), figsize=(3.2 * len(timesteps), 2.8 * len(labels)),
                             squeeze=False, sharey=True)
    for r, label in enumerate(labels):
        for c, t in enumerate(timesteps):
            names, values = zip(*flows[label][t].items())
            colours = ["tab:blue" if n.startswith("up") else "tab:red" for n in names]
            ax = axes[r][c]
            ax.bar(range(len(names)), values, color=colours)
            ax.axhline(threshold * np.mean(values), color="k", linestyle="--", linewidth=1)
            ax.set_yscale("log")
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_title(f"{label}\nt = {t}", fontsize=8)
    axes[0][0].set_ylabel("mean |grad|")
    fig.tight_layout()
    write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------------
# 2. The DCT spectrum of the training motions (Fig. 7, App. F)

def dct_spectrum(motions):
    """Mean |DCT coefficient| (T,) and total energy (T,) per frequency, over motions (T, D) each.

    motions: an iterable of normalised, zero-padded windows of one length T (the training windows). Energy is the sum
    of squared coefficients over motions and features (Parseval: it adds up to the signal energy).
    """
    magnitude, energy, count = None, None, 0
    for motion in motions:
        coefficients = dct(torch.as_tensor(np.asarray(motion), dtype=torch.float64), dim=0)   # Eq. (16): (T, D)
        if magnitude is None:
            magnitude = torch.zeros(coefficients.shape[0], dtype=torch.float64)
            energy = torch.zeros_like(magnitude)
        magnitude += coefficients.abs().mean(dim=1)
        energy += (coefficients ** 2).sum(dim=1)
        count += 1
    if count == 0:
        raise ValueError("dct_spectrum got no motions")
    return (magnitude / count).numpy(), energy.numpy()


def energy_share(energy, k):
    """Fraction of the spectral energy (T,) in the first k coefficients (App. F: 83.6% for k = 64 on HumanML3D)."""
    return float(energy[:k].sum() / energy.sum())


# ---------------------------------------------------------------------------------------------------------------------
# 3. Attention in MoCLIP's final text layer, against the tower it started from (Fig. 9, App. B)

FIG9_PROMPTS = ["a man crouched down and then rolled forward", "a person waves with the right hand",
                "a person walks forward then turns left", "a person jumps up and down"]


def final_layer_attention(model, texts):
    """Per text: (tokens list[str], received (n,) float64) in the final Transformer layer of model's text tower.

    received[j] is the attention position j receives from all other positions (under the causal mask position i
    sees j <= i), averaged over the heads and normalised to sum 1 over the caption's n tokens, start and end tokens
    included (App. B: "the total attention received by the feature vector at each sequence position from all other
    positions, ... averaged across all attention heads and normalized"). The layer's attention is recomputed from
    its own input, captured by a hook, with the weights returned; the tower itself runs unchanged."""
    tower, captured = model.text, {}
    attention = tower.transformer.resblocks[-1].attn

    def keep_input(module, args, kwargs):
        captured["x"], captured["mask"] = args[0], kwargs.get("attn_mask")
    hook = attention.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        ids = model.tokenize(texts)
        with torch.no_grad():
            tower(ids)
            x = captured["x"]
            _, weights = attention(x, x, x, need_weights=True, attn_mask=captured["mask"],
                                   average_attn_weights=True)                    # (B, L, L): query i, key j
    finally:
        hook.remove()
    rows = []
    for b in range(len(texts)):
        n = int(ids[b].argmax()) + 1                      # the end-of-text token has the largest id
        w = weights[b, :n, :n].double().cpu()
        received = w.sum(0) - w.diagonal()                # from all other positions
        tokens = [model.tokenizer.decode([int(i)]).strip() for i in ids[b, :n]]
        rows.append((tokens, (received / received.sum()).numpy()))
    return rows


def plot_attention(rows, path):
    """One bar chart per prompt of MoCLIP's minus the initial tower's attention per token (red: more in MoCLIP)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.2 * len(rows)), squeeze=False)
    for ax, (text, tokens, trained, initial) in zip(axes[:, 0], rows):
        difference = trained - initial
        ax.bar(range(len(tokens)), difference, color=["tab:red" if d > 0 else "tab:blue" for d in difference])
        ax.axhline(0, color="k", lw=0.5)
        labels = [{"<start_of_text>": "<sot>", "<end_of_text>": "<eot>"}.get(t, t) for t in tokens]  # fit the bars
        ax.set_xticks(range(len(tokens)), labels, fontsize=8)
        ax.set_title(f'"{text}"', fontsize=9)
        ax.set_ylabel("Δ attention", fontsize=8)
    fig.suptitle("final text layer: attention received, MoCLIP minus the tower it started from", fontsize=10)
    fig.tight_layout()
    write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------------
# 4. Convergence: FID against steps and training hours (Fig. 4), from train.py --eval-every's eval.csv

def read_eval_runs(folder):
    """A run folder -> [(step (n,), train_hours (n,), FID (n,), Top3 (n,))], one per seed: its own eval.csv, or
    the eval.csv of each subfolder (one training run per seed, e.g. luma/seed_0, luma/seed_1)."""
    folder = Path(folder)
    paths = [folder / "eval.csv"] if (folder / "eval.csv").is_file() else sorted(folder.glob("*/eval.csv"))
    if not paths:
        raise InputError(f"no eval.csv in {folder} or its subfolders: train with `python train.py --eval-every N "
                         f"--out-dir {folder}` (or one --out-dir {folder}/seed_<s> per seed) first")
    runs = []
    for path in paths:
        with open(path, newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("step", "").isdigit()]
        if not rows or not {"step", "train_hours", "FID", "Top3"} <= set(rows[0]):
            raise InputError(f"{path} holds no evaluation rows (columns step, train_hours, FID, Top3 of train.py "
                             f"--eval-every)")
        runs.append(tuple(np.array([float(row[key]) for row in rows]) for key in ("step", "train_hours", "FID",
                                                                                   "Top3")))
    return runs


def t_quantile_975(df):
    """Student's t quantile for a two-sided 95% interval with df degrees of freedom: a table to 10, then the
    Cornish-Fisher expansion about the normal's 1.96 (within 0.003 of scipy.stats.t.ppf(0.975, df) beyond 10)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    if df in table:
        return table[df]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def seed_interval(values):
    """Per-seed values (n,) -> (mean, 95% half-width t(n-1) * std / sqrt(n), ddof=1); 0 for one seed. Seeds are
    few (3), so the normal 1.96 * std / sqrt(n) of the protocol's 20 replications would be about 2.7x too narrow."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), t_quantile_975(len(values) - 1) * float(values.std(ddof=1)) / np.sqrt(len(values))


def seed_band(runs, column):
    """The seeds' curves on the steps they all share -> (steps, mean, low, high); the band is the mean ± the 95%
    interval over seeds (seed_interval), none for one seed."""
    steps = sorted(set.intersection(*(set(run[0].tolist()) for run in runs)))
    values = np.array([[run[column][run[0].tolist().index(s)] for s in steps] for run in runs])   # (seeds, steps)
    mean, half = np.array([seed_interval(per_step) for per_step in values.T]).T
    return np.array(steps), mean, mean - half, mean + half


def steps_to_threshold(run, threshold):
    """The first evaluated step whose FID is at or below threshold, or None."""
    below = np.flatnonzero(run[2] <= threshold)
    return float(run[0][below[0]]) if len(below) else None


def plot_convergence(curves, path, threshold=None):
    """Fig. 4: FID (log scale) against optimiser steps and against training hours: per run the mean over its seeds
    (bold) and each seed's own curve (thin). With 3 seeds the 95% interval is wide and often reaches below 0, which a
    log axis cannot draw; the seeds themselves show the spread, and convergence.md gives the intervals."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for label, runs in curves.items():
        steps, mean, _, _ = seed_band(runs, 2)
        hours = seed_band(runs, 1)[1]
        name = f"{label} (mean of {len(runs)} seeds)" if len(runs) > 1 else label
        for ax, x in zip(axes, (steps, hours)):
            line, = ax.plot(x, mean, marker="o", markersize=3, linewidth=2, label=name)
            for run in runs if len(runs) > 1 else []:
                ax.plot(run[0] if x is steps else run[1], run[2], color=line.get_color(), linewidth=0.8, alpha=0.4)
    for ax, xlabel in zip(axes, ("optimiser steps", "training hours (evaluation time excluded)")):
        if threshold is not None:
            ax.axhline(threshold, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")                    # FID falls over decades: early points would flatten the rest
    for ticks in (axes[0].yaxis.set_major_formatter, axes[0].yaxis.set_minor_formatter):
        ticks(plt.FuncFormatter(lambda value, _: f"{value:g}"))     # 2, 3, 4 ... rather than 2x10^0
    axes[0].set_ylabel("validation FID ↓ (log scale)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Seeds: a study's final numbers per variant, mean and 95% interval over training seeds

def read_seed_results(paths):
    """evaluate.py t2m's t2m_results.json files -> {variant: {seed: {metric: mean over replications}}}. Rows named
    <variant>/<seed folder> (as t2m names runs/study/luma/seed_0/final.pt next to runs/study/no_anchors/seed_0/...)
    are grouped by variant; any other row (Real, a single run) is a variant with one seed, taken from the first file
    that has it."""
    variants = {}
    for path in paths:
        try:
            results = json.loads(Path(path).read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"cannot read {path} as evaluate.py t2m's t2m_results.json ({error}); run `python "
                             f"evaluate.py t2m --checkpoint <runs>/*/seed_*/final.pt --out <folder>` first") from None
        for name, row in results.items():
            variant, _, seed = name.rpartition("/") if "/" in name else (name, "", "")
            seeds = variants.setdefault(variant, {})
            if seed in seeds and not seed:       # e.g. the Real row of every t2m run: the first file's is kept
                continue
            if seed in seeds:
                raise InputError(f"{path}: row {name!r} appears in more than one of the --results files")
            seeds[seed] = {metric: float(value["mean"]) for metric, value in row.items()}
    return variants


def seed_table(variants):
    """{variant: {seed: {metric: value}}} -> markdown: mean ± seed_interval per metric, and each seed's FID."""
    metrics = [m for m in METRICS if any(m in values for seeds in variants.values() for values in seeds.values())]
    lines = ["| variant | seeds | " + " | ".join(metrics) + " | FID per seed |",
             "|---|---|" + "---|" * len(metrics) + "---|"]
    for variant, seeds in variants.items():
        cells = []
        for metric in metrics:
            values = [v[metric] for v in seeds.values() if metric in v]
            mean, half = seed_interval(values) if values else (None, None)
            cells.append("-" if mean is None else f"{mean:.3f}" + (f" ± {half:.3f}" if len(values) > 1 else ""))
        per_seed = ", ".join(f"{v['FID']:.3f}" for v in seeds.values() if "FID" in v)
        lines.append(f"| {variant} | {len(seeds)} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines) + "\n"


def run_seeds(args):
    """The study's table: each variant's final numbers as mean ± 95% interval over seeds -> seeds.md."""
    table = seed_table(read_seed_results(args.results))
    print(table)
    out = Path(args.out)
    write_atomic(out / "seeds.md", lambda f: f.write(table.encode()))
    print(f"wrote {out / 'seeds.md'}")
    return table


# ---------------------------------------------------------------------------------------------------------------------
# 6. Command line

def run_gradflow(args):
    """Fig. 3 / 8: mean |grad| per block for each run at each timestep -> CSV + PNG bar charts."""
    from train import get_batch
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flows, zetas = {}, {}
    names = row_names([Path(run) / "final.pt" if Path(run).is_dir() else run for run in args.runs])
    for run, name in zip(args.runs, names):         # luma/seed_0 and no_anchors/seed_0 keep their variant's name
        checkpoint = Path(run) / "checkpoint.pt" if Path(run).is_dir() else Path(run)
        model, text_encoder, config = load_training_run(checkpoint, device)
        dataset = MotionDataset(config.data_root, split="train", kind=KINDS[config.dataset], feat_bias=config.feat_bias)
        x0, lengths, captions, _ = get_batch(dataset, 0, args.batch_size, args.seed, device)
        with torch.no_grad():
            text_tokens = text_encoder.encode_text_tokens(captions)
            target = None
            if model.anchor is not None and model.anchor.tem_proj is not None:
                target = load_moclip(args.moclip_checkpoint or f"checkpoints/moclip_{config.dataset}.pt",
                                     device).encode_motion(x0, lengths)
        # zeta: what training applied at this checkpoint's step (Eq. 11 / Table 4), unless --zeta is given
        if model.anchor is None:
            zeta = 0.0
        elif args.zeta is not None:
            zeta = args.zeta
        else:
            zeta = float(model.weighting(config.step).detach())
        label = name + f" (step {config.step}, " + ("no DAL)" if model.anchor is None else f"zeta {zeta:.2f})")
        zetas[label] = zeta
        flows[label] = gradient_flow(model, text_tokens, x0, lengths, target, args.timesteps, zeta=zeta,
                                     lambda_fre=config.lambda_fre, lambda_tem=config.lambda_tem, seed=args.seed)
    rows = []
    for label, flow in flows.items():
        for t, blocks in flow.items():
            threshold = 0.01 * np.mean(list(blocks.values()))
            rows += [[label, f"{zetas[label]:.4g}", t, name, f"{value:.6g}", f"{threshold:.6g}"]
                     for name, value in blocks.items()]
    write_csv(out / "gradflow.csv", ["run", "zeta", "t", "block", "mean_abs_grad", "threshold_1pct_of_mean"], rows)
    plot_gradient_flow(flows, out / "gradflow.png")
    for label, flow in flows.items():
        print(f"{label}: mean |grad| per block at t = {', '.join(map(str, flow))}")
        for name in next(iter(flow.values())):
            print(f"  {name:6}" + "".join(f"{flow[t][name]:12.3e}" for t in flow))
    print(f"wrote {out / 'gradflow.csv'} and {out / 'gradflow.png'}")


def run_spectrum(args):
    """Fig. 7: mean DCT magnitude per coefficient of the normalised training windows, energy share of the first k."""
    root = args.data_root or DATA_ROOTS[args.dataset]
    prepare_dataset(args.dataset, root)
    dataset = MotionDataset(root, split=args.split, kind=KINDS[args.dataset])
    random.seed(args.seed)                                       # the random 196-frame window of longer clips
    magnitude, energy = dct_spectrum(motion for _, motion, _ in dataset)
    shares = {k: energy_share(energy, k) for k in sorted({8, 16, 32, 64, 128, args.k})}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "spectrum.csv", lambda f: np.savetxt(
        f, np.stack([np.arange(len(magnitude)), magnitude], 1), delimiter=",", header="coefficient,mean_abs_dct",
        comments="", fmt=["%d", "%.6g"]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(magnitude)
    ax.axvspan(0, args.k, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("DCT coefficient")
    ax.set_ylabel("mean |coefficient|")
    ax.set_title(f"{args.dataset} {args.split}: first {args.k} hold {100 * shares[args.k]:.1f}% of the energy",
                 fontsize=9)
    fig.tight_layout()
    write_atomic(out / "spectrum.png", lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    print(f"{len(dataset)} windows of {args.dataset}/{args.split}; energy share of the first k DCT coefficients: "
          + ", ".join(f"k={k}: {100 * v:.1f}%" for k, v in shares.items()))
    print(f"wrote {out / 'spectrum.csv'} and {out / 'spectrum.png'}")


def run_attention(args):
    """Fig. 9: attention received per token in the final text layer, MoCLIP vs its initial tower -> CSV + PNG."""
    model = load_moclip(args.checkpoint, args.device)
    try:
        initial = initial_text_tower(model)
    except ValueError as error:
        raise InputError(f"{args.checkpoint}: {error}") from None
    texts = list(args.text or [])
    if args.text_file:
        texts += [line.strip() for _, line in read_text_lines(args.text_file, "prompt file", "one caption per line")]
    texts = texts or FIG9_PROMPTS
    rows = [(text, tokens, trained, initial_row[1]) for text, (tokens, trained), initial_row in
            zip(texts, final_layer_attention(model, texts), final_layer_attention(initial, texts))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    write_csv(out / "attention.csv", ["prompt", "position", "token", "moclip", "initial", "difference"],
              [[text, j, token, f"{trained[j]:.6g}", f"{start[j]:.6g}", f"{trained[j] - start[j]:.6g}"]
               for text, tokens, trained, start in rows for j, token in enumerate(tokens)])
    plot_attention(rows, out / "attention.png")
    tower = f"{model.config['clip_model']}/{model.config['clip_pretrained']}"
    print(f"final-layer attention received per token, {args.checkpoint} against its initial tower ({tower}):")
    for text, tokens, trained, start in rows:
        order = np.argsort(start - trained)                   # largest gain first
        gains = ", ".join(f"{tokens[j]} {trained[j] - start[j]:+.3f}" for j in order[:3])
        print(f'  "{text}": most gained by {gains}')
    print(f"wrote {out / 'attention.csv'} and {out / 'attention.png'}")
    return rows


def run_convergence(args):
    """Fig. 4: the runs' validation FID against steps and hours -> PNG, and the steps each needs to reach
    --fid-threshold, with the ratio to the first run (the paper's "1.4x faster": steps(--no-anchors) / steps(LUMA))."""
    names = row_names([Path(run) / "eval.csv" for run in args.runs])     # a/luma and b/luma keep apart
    curves = {name: read_eval_runs(run) for name, run in zip(names, args.runs)}
    out = Path(args.out)
    plot_convergence(curves, out / "convergence.png", args.fid_threshold)
    lines = ["| run | seeds | last step | final FID | final R@3 | steps to FID <= threshold | ratio to the first |",
             "|---|---|---|---|---|---|---|"]
    first, reference = next(iter(curves)), None
    for label, runs in curves.items():
        steps, fid, fid_low, _ = seed_band(runs, 2)
        top3 = seed_band(runs, 3)[1]
        reached = [steps_to_threshold(run, args.fid_threshold) for run in runs] if args.fid_threshold else []
        needed = float(np.mean(reached)) if reached and None not in reached else None
        if label == first:
            reference = needed
        if not args.fid_threshold:
            to_threshold, ratio = "-", "-"
        elif needed is None:
            to_threshold, ratio = f"not reached by {reached.count(None)} of {len(runs)} seeds", "-"
        else:
            to_threshold = f"{needed:.0f}" + (f" (seeds: {', '.join(f'{r:.0f}' for r in reached)})" if len(runs) > 1
                                              else "")
            ratio = f"{needed / reference:.2f}" if reference else "-"
        lines.append(f"| {label} | {len(runs)} | {steps[-1]:.0f} | {fid[-1]:.3f}"
                     + (f" ± {fid[-1] - fid_low[-1]:.3f}" if len(runs) > 1 else "")
                     + f" | {top3[-1]:.3f} | {to_threshold} | {ratio} |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_atomic(out / "convergence.md", lambda f: f.write(table.encode()))
    print(f"wrote {out / 'convergence.png'} and {out / 'convergence.md'}")
    return curves


def _add_run_args(p, out):
    """--seed, --device and --out, which every subcommand has."""
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=folder_path, default=out, help="folder the results are written to")


def get_args(argv=None):
    """The command line, every value checked before any work starts (a bad one exits with the usage line, status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    count = int_range(1)
    p = sub.add_parser("gradflow", help="Fig. 3 / Fig. 8 analogue: mean |grad| per UNet block at fixed timesteps, "
                                        "for runs with and without the dual anchor loss")
    p.add_argument("--runs", nargs="+", required=True,
                   help="train.py run folders (or their checkpoint.pt), e.g. runs/luma_synthetic "
                        "runs/luma_synthetic_no_anchors")
    p.add_argument("--timesteps", type=int_range(0, 999), nargs="+", default=[750, 500, 250, 0],
                   help="t of Fig. 8, each in 0..999")
    p.add_argument("--batch-size", type=count, default=32)
    p.add_argument("--moclip-checkpoint", default=None,
                   help="frozen MoCLIP for the temporal anchor target (default checkpoints/moclip_<dataset>.pt)")
    p.add_argument("--zeta", type=float_range(0, 1), default=None,
                   help="weight of the DAL in the measured loss (default: the zeta(n) training applied at each "
                        "checkpoint's step; the paper's 40k-step point with N = 30k has zeta = 0); 1 adds it whole")
    _add_run_args(p, "runs/gradflow")
    p = sub.add_parser("spectrum", help="Fig. 7 analogue: mean DCT magnitude per coefficient and the energy share "
                                        "of the first k")
    p.add_argument("--dataset", default="synthetic", choices=list(DATA_ROOTS))
    p.add_argument("--data-root", default=None, help="dataset folder (default: data/<dataset>)")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "train_val", "all"])
    p.add_argument("--k", type=int_range(1, 196), default=64, help="shaded low-frequency band (the paper's k), 1..196")
    _add_run_args(p, "runs/spectrum")
    p = sub.add_parser("attention", help="Fig. 9 analogue: attention received per token in the final text layer, "
                                         "a MoCLIP checkpoint against the tower it started from")
    p.add_argument("--checkpoint", default="checkpoints/moclip_synthetic.pt", help="a moclip.py checkpoint")
    p.add_argument("--text", action="append", default=None,
                   help="a caption (repeatable; default: four motion descriptions, the first Fig. 9's)")
    p.add_argument("--text-file", default=None, help="captions, one per line")
    _add_run_args(p, "runs/attention")
    p = sub.add_parser("convergence", help="Fig. 4 analogue: validation FID against steps and hours from train.py "
                                           "--eval-every runs, and the steps each needs to reach a threshold")
    p.add_argument("--runs", nargs="+", required=True,
                   help="run folders holding eval.csv, or one subfolder per seed that does (mean and interval over "
                        "seeds); the first is the reference of the ratio")
    p.add_argument("--fid-threshold", type=float_range(0, low_open=True), default=None,
                   help="the dashed line: report the first evaluated step at or below it, per run")
    p.add_argument("--out", type=folder_path, default="runs/convergence", help="folder the results are written to")
    p = sub.add_parser("seeds", help="a study's final numbers per variant: mean ± 95%% interval over training seeds, "
                                     "from evaluate.py t2m results of <variant>/seed_<s> run folders")
    p.add_argument("--results", nargs="+", required=True, help="t2m_results.json file(s) written by evaluate.py t2m")
    p.add_argument("--out", type=folder_path, default="runs/study", help="folder seeds.md is written to")
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)                          # usage errors: the usage line and exit status 2, before any work
    with user_errors():                            # expected errors: one paragraph, exit status 1; bugs: a traceback
        return {"gradflow": run_gradflow, "spectrum": run_spectrum, "attention": run_attention,
                "convergence": run_convergence, "seeds": run_seeds}[args.command](args)


if __name__ == "__main__":
    main()
