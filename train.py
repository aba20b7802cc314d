"""
Train LUMA: the StableMoFusion UNet with LUMA's dual anchors (paper Sec. 3.2, Alg. 1).

    python train.py --dataset synthetic      # offline, CPU: generates data, trains MoCLIP, then LUMA (~18 min on 2 cores)
    python train.py --dataset humanml3d      # the paper's configuration on a CUDA GPU
    torchrun --nproc_per_node=8 train.py --dataset humanml3d      # the same, data-parallel over 8 GPUs (DDP)

One training step (Alg. 1):
    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps                                   Eq. (1)
    x0_hat, h = UNet(x_t, t, MoCLIP_text_tokens(c))                          Eq. (2), text dropped w.p. 0.1 for Eq. (3)
    z_fre, z_tem = DualAnchor(h, t)                                          Eq. (4)-(7)
    L = L_DDPM + zeta(n) (lambda_fre L_fre + lambda_tem L_tem)                Eq. (8)-(11)

Alg. 1 (App. C), line by line:
    1  for n = 1 to N_train                      main(): the `while step < args.steps` loop; n = step + 1
    2  sample (x0, c), t, eps                     get_batch (x0, c); draw_diffusion_noise (t, eps, the CFG drop)
    3  x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps     luma_loss: q_sample                              Eq. (1)
    4  (x0_hat, h) = DENOISER(x_t, f_text(c), t)  luma_loss: features.text_tokens, then LUMA.forward -> UNet
                                                  (LUMA predicts x0, the backbone's choice; Alg. 1 writes eps_hat)
    5  (z_fre, z_tem) = ANCHOR(h, t)              LUMA.forward: timestep_embedding e(t), DualAnchor  Eq. (4)-(7)
    6  zeta = 1/2 [1 + cos(pi min(n / N, 1))]     luma_loss: model.weighting(step + 1)             Eq. (11)
    7  L_total = L_DDPM + zeta (lambda_fre L_fre + lambda_tem L_tem)
                                                  luma_loss: masked_mse, dual_anchor_loss, weigh   Eq. (8)-(10)
    8  Theta <- Theta - eta grad L_total          train_step: backward, clip, AdamW (and the EMA)

Everything the paper fixes is a default here; every ablation of Tables 2-4 is a flag. MoCLIP (App. B) is trained
first by moclip.py when no --moclip-checkpoint is given. The run folder holds a resumable checkpoint, a CSV of the
loss terms and zeta, sample animations, and a self-contained final checkpoint for sample.py / evaluate.py. With
--eval-every N it also holds eval.csv: FID and R-precision of the EMA model on fixed validation batches every N steps,
against steps and training hours, the curves of Fig. 4 (plotted by `python analysis.py convergence`).
"""

import argparse
import copy
import csv
import datetime
import io
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anchors import AnchorWeighting, DualAnchor, dual_anchor_loss
from data import (BUILT_DATASETS, DATA_ROOTS, KINDS, MAX_MOTION_LENGTH, SEED, InputError, MotionDataset, device_name, float_range,
                  folder_path, int_range, load_checkpoint, load_weights, prepare_dataset, save_checkpoint, to_device,
                  user_errors, write_atomic)
from diffusion import alphas_cumprod, linear_betas, masked_mse, q_sample
from moclip import (MoCLIP, WeightsUnavailable, clip_model_name, initial_text_tower, load_moclip, moclip_state,
                    train_moclip)
from unet import PRESETS as UNET_PRESETS, UNet, timestep_embedding


# Training presets. "paper" is Sec. 4 / StableMoFusion's recipe; "small" fits a 2-core CPU in minutes (the README's
# main command takes under 20 minutes end to end; 2,000 steps are needed: at 1,000 the turn prompt passed 3 of 24
# samples over three training seeds, at 1,500 16, at 2,000 18, and with the lr decay and N of Eq. (11) scaled to
# 1,000 or 1,500 steps 5 and 10; README "Performance", sixth and ninth rounds).
PRESETS = {
    # N of Eq. (11) = 30,000: Paper is silent here; see README "Choices". EMA every 32 steps at 0.99317 is the
    # backbone's effective AveragedModel setting.
    "paper": dict(unet="paper", batch_size=64, steps=50_000, lr=2e-4, lr_decay_every=5_000, ema_decay=0.99317,
                  ema_every=32, anchor_decay_steps=30_000, anchor_hidden=1024, log_every=100, save_every=5_000,
                  sample_every=10_000, feature_cache=False),
    "small": dict(unet="small", batch_size=24, steps=2_000, lr=5e-4, lr_decay_every=500, ema_decay=0.995,
                  ema_every=1, anchor_decay_steps=1_200, anchor_hidden=256, log_every=20, save_every=500,
                  sample_every=1_000, feature_cache=True),
}
SAMPLE_PROMPTS = ["a person jumps", "a person waves with the right hand", "a person walks forward then turns left"]


RUN_FILES = ("checkpoint.pt", "final.pt", "log.csv", "eval.csv")   # what a run folder holds, besides samples/ and
RUN_FOLDERS = ("samples", "checkpoints")                            # checkpoints/ (--keep-checkpoints)
# The flags that define the model and what it learns; --resume refuses a checkpoint trained with other values.
MODEL_FLAGS = ("dataset", "unet", "anchor_block", "dct_k", "anchor_hidden", "no_fre", "no_tem", "no_film",
               "anchor_weighting", "text_encoder", "clip_model", "clip_pretrained", "feat_bias")


def get_args(argv=None):
    """The command line, every value checked before any work starts (a bad one exits with the usage line, status 2)."""
    positive, count, fraction = float_range(0, low_open=True), int_range(1), float_range(0, 1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=list(DATA_ROOTS),
                   help="synthetic (built in) and bandai (real mocap, imported on first use) train with the small "
                        "preset by default")
    g.add_argument("--data-root", default=None, help="dataset folder (default: data/HumanML3D, data/KIT-ML, data/synthetic)")
    g.add_argument("--synthetic-motions", type=int_range(3), default=None,
                   help="motions in the synthetic dataset (default: the existing one, or 2000 if none)")
    g.add_argument("--feat-bias", type=positive, default=5.0,
                   help="root and foot-contact std divided by this (backbone)")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="paper (default for humanml3d/kit) or small (default for synthetic; CPU-sized)")
    g.add_argument("--moclip-checkpoint", default=None, help="frozen MoCLIP; trained first by moclip.py if omitted")
    g.add_argument("--text-encoder", choices=["moclip", "clip"], default="moclip",
                   help="cross-attention text features: MoCLIP's fine-tuned tower, or the tower MoCLIP started from "
                        "(Table 2 'w/o MoCLIP'; with the small preset that is its seeded random initialisation)")
    g.add_argument("--clip-model", type=clip_model_name, default=None,
                   help="open_clip text tower for --text-encoder clip (default: MoCLIP's)")
    g.add_argument("--clip-pretrained", default=None, help="its weights, or 'none' (default: MoCLIP's)")
    g = p.add_argument_group("dual anchors (Sec. 3.2; ablations of Tables 2-4)")
    g.add_argument("--no-anchors", action="store_true", help="no dual anchor loss at all (Table 2 'w/o DAL')")
    g.add_argument("--no-fre", action="store_true", help="no frequency anchor (Table 2 'w/o L_fre')")
    g.add_argument("--no-tem", action="store_true", help="no temporal anchor (Table 2 'w/o L_tem')")
    g.add_argument("--no-film", action="store_true", help="no timestep-aware FiLM (Table 2 'w/o FiLM')")
    g.add_argument("--anchor-block", default="down3", choices=["down1", "down2", "down3", "mid"],
                   help="where the anchors tap the UNet (Table 3; 'mid' = Bottleneck)")
    g.add_argument("--dct-k", type=int_range(1, MAX_MOTION_LENGTH), default=64,
                   help=f"low-frequency DCT coefficients kept, 1..{MAX_MOTION_LENGTH} (the training window) (Table 3)")
    g.add_argument("--anchor-weighting", default=None, choices=["cosine", "static", "learnable"],
                   help="zeta(n): Eq. (11) cosine decay (default), or Table 4's static / learnable alternatives")
    g.add_argument("--anchor-decay-steps", type=count, default=None, help="N of Eq. (11) (paper silent; 30k of 50k)")
    g.add_argument("--lambda-fre", type=float_range(0), default=0.1, help="weight of L_fre in Eq. (10) (App. D)")
    g.add_argument("--lambda-tem", type=float_range(0), default=0.5, help="weight of L_tem in Eq. (10) (App. D)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=count, default=None, help="training steps (paper 50k)")
    g.add_argument("--batch-size", type=count, default=None, help="batch size (paper 64); under torchrun the global one")
    g.add_argument("--lr", type=positive, default=None, help="AdamW learning rate (paper 2e-4)")
    g.add_argument("--lr-decay-every", type=count, default=None, help="multiply the lr by 0.9 every this many steps")
    g.add_argument("--weight-decay", type=float_range(0), default=0.01)
    g.add_argument("--grad-clip", type=positive, default=1.0, help="global gradient-norm clip")
    g.add_argument("--ema-decay", type=fraction, default=None, help="EMA decay per EMA update, 0..1")
    g.add_argument("--ema-every", type=count, default=None, help="steps between EMA updates")
    g.add_argument("--cond-drop", type=fraction, default=0.1, help="probability of dropping the text (CFG, Eq. 3)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                   help="tf32 matmuls or bf16 autocast, both on CUDA")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the UNet and the anchor heads (off by default: on 2 CPU cores the first step "
                        "compiles for about 2.5 minutes and later steps were no faster, README 'Performance')")
    g.add_argument("--feature-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the frozen MoCLIP's features once per caption and per whole clip, and reuse them "
                        "(host memory: ~40 KB per caption for the small tower, ~160 KB for ViT-B-32; default on for "
                        "the small preset, off for paper)")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", type=folder_path, default=None, help="run folder (default runs/luma_<dataset>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an --out-dir that holds a run (its checkpoint.pt, final.pt, log.csv, "
                        "eval.csv, samples/ and checkpoints/ are deleted first)")
    g.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--log-every", type=count, default=None, help="steps between log rows")
    g.add_argument("--save-every", type=count, default=None, help="steps between checkpoints")
    g.add_argument("--sample-every", type=int_range(0), default=None,
                   help="steps between sample animations (0: never)")
    g = p.add_argument_group("convergence (Fig. 4): FID and R-precision on the validation split during training")
    g.add_argument("--eval-every", type=int_range(0), default=0,
                   help="steps between evaluations of the EMA model with the dataset's evaluator, logged to eval.csv "
                        "(0: never)")
    g.add_argument("--eval-batches", type=int_range(0), default=0,
                   help="validation batches of 32 per evaluation, the same ones each time (0: one whole pass)")
    g.add_argument("--evaluator-dir", default=None,
                   help="the evaluator's folder (default: checkpoints, or checkpoints/evaluator_<dataset> for "
                        "synthetic and bandai, as evaluate.py)")
    g.add_argument("--eval-seed", type=SEED, default=0,
                   help="seed of the validation batches and of their generations, fixed over the run")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep the inference checkpoint of each evaluation point, as checkpoints/step_NNNNNN.pt")
    args = p.parse_args(argv)

    args.preset = args.preset or ("small" if args.dataset in BUILT_DATASETS else "paper")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.data_root = args.data_root or DATA_ROOTS[args.dataset]
    args.out_dir = args.out_dir or f"runs/luma_{args.dataset}"
    if args.no_anchors:
        args.no_fre = args.no_tem = True
    if args.no_fre and args.no_tem and args.anchor_weighting is not None:
        p.error(f"--anchor-weighting {args.anchor_weighting} weighs the anchor losses, and --no-anchors (or --no-fre "
                f"with --no-tem) removes both: there is nothing to weigh; drop one of the flags")
    args.anchor_weighting = args.anchor_weighting or "cosine"
    check_args(p, args)
    return args


def check_args(p, args):
    """What no single flag's type can check: flags against each other and the device."""
    if args.precision != "fp32" and not args.device.startswith("cuda"):
        what = "TF32 matmuls" if args.precision == "tf32" else "bf16 autocast"
        p.error(f"--precision {args.precision} is a CUDA setting ({what}); on a CPU use --precision fp32")
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out-dir and --overwrite replaces it; pass one of them")
    if args.keep_checkpoints and not args.eval_every:
        p.error("--keep-checkpoints keeps the checkpoint of each evaluation point; pass --eval-every N as well")


def check_run_folder(args):
    """Never lose a run: a folder holding one is continued (--resume) or replaced (--overwrite), never overwritten."""
    out_dir = Path(args.out_dir)
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if args.resume and not (out_dir / "checkpoint.pt").exists():
        raise InputError(f"--resume given but {out_dir / 'checkpoint.pt'} does not exist (check --out-dir, or drop "
                         f"--resume)")
    if existing and not (args.resume or args.overwrite):
        raise InputError(f"{out_dir} already holds a training run ({', '.join(existing)}); pass --resume to continue "
                         f"it, --overwrite to replace it, or another --out-dir")


# ---------------------------------------------------------------------------------------------------------------------
# Model: UNet + dual-anchor heads, trained together

class LUMA(torch.nn.Module):
    """The trainable parts: the UNet denoiser G_theta, the anchor projectors + FiLM, and the anchor weighting."""

    def __init__(self, unet, anchor, weighting):
        super().__init__()
        self.unet, self.anchor, self.weighting = unet, anchor, weighting

    def forward(self, x_t, t, text_tokens, cond_mask, lengths):
        """x_t (B, T, D), t (B,) -> x0_hat (B, T, D), z_fre (B, k, D) | None, z_tem (B, D_a) | None."""
        x0_hat, h = self.unet(x_t, t, text_tokens, cond_mask)                # h: (B, C, T')
        if self.anchor is None:
            return x0_hat, None, None
        lengths = lengths.to(h.device)                                       # callers may pass host lengths
        valid = torch.arange(h.shape[-1], device=h.device) * self.unet.anchor_downsample < lengths[:, None]  # (B, T')
        e = timestep_embedding(t, self.anchor.time_dim)                      # e(t) of Eq. (4)-(5), sinusoidal
        z_fre, z_tem = self.anchor(h, e, valid)                              # Eq. (6), (7)
        return x0_hat, z_fre, z_tem


def build_model(args, motion_dim, text_width, anchor_dim):
    """The UNet of the chosen preset and, unless --no-anchors, the dual anchor of Sec. 3.2."""
    unet = UNet(motion_dim, text_width, anchor_block=args.anchor_block, **UNET_PRESETS[args.unet])
    anchor = None
    if not (args.no_fre and args.no_tem):
        anchor = DualAnchor(unet.anchor_channels, motion_dim, unet.anchor_frames(MAX_MOTION_LENGTH), anchor_dim,
                            dct_k=args.dct_k, hidden=args.anchor_hidden, time_dim=unet.time_dim,
                            use_fre=not args.no_fre, use_tem=not args.no_tem, use_film=not args.no_film)
    return LUMA(unet, anchor, AnchorWeighting(args.anchor_weighting, args.anchor_decay_steps))


def build_optimizer(args, model, device):
    """AdamW over every trainable part (UNet, anchor heads, a learnable zeta), with PyTorch's fused kernel on CPUs and
    GPUs alike: one pass over all parameters instead of a handful of small ops per tensor (4.7x faster on 2 CPU
    cores for the small preset's 464 tensors)."""
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                             fused=torch.device(device).type in ("cuda", "cpu"))


def check_moclip_normalisation(moclip, moclip_path, dataset, args):
    """The frozen MoCLIP must have seen motions normalised as LUMA's are: its motion encoder gives the temporal anchor
    target f_tem(x0) of Eq. (9) for LUMA's normalised x0. Compared on the arrays, named by what made them."""
    if np.allclose(moclip.mean.numpy(), dataset.mean) and np.allclose(moclip.std.numpy(), dataset.std):
        return
    trained = (f"{moclip.dataset} at {moclip.data_root}, Mean/Std {moclip.stats_sha1 or 'unrecorded'}, --feat-bias "
               f"{moclip.feat_bias if moclip.feat_bias is not None else 'unrecorded'}")
    raise InputError(
        f"the MoCLIP checkpoint {moclip_path} was trained on motions normalised differently ({trained}) from this "
        f"run's ({args.dataset} at {args.data_root}, Mean/Std {dataset.stats_sha1}, --feat-bias {args.feat_bias}); "
        f"its motion encoder would score the temporal anchor on the wrong scale. Train a MoCLIP on this data: python "
        f"moclip.py --dataset {args.dataset} --data-root {args.data_root} --feat-bias {args.feat_bias} --out "
        f"<new.pt>, then pass --moclip-checkpoint <new.pt>")


def build_text_encoder(args, moclip):
    """The frozen text tower for cross-attention: MoCLIP's (default) or CLIP before MoCLIP's training (Table 2's
    "w/o MoCLIP"): the tower MoCLIP started from (moclip.initial_text_tower: its pretrained weights, or its random
    initialisation rebuilt from the recorded seed), or with --clip-model / --clip-pretrained another open_clip tower."""
    if args.text_encoder == "moclip":
        return moclip
    clip_model = args.clip_model or moclip.config["clip_model"]
    clip_pretrained = args.clip_pretrained or moclip.config["clip_pretrained"]
    if clip_model == moclip.config["clip_model"] and clip_pretrained == moclip.config["clip_pretrained"]:
        try:
            return initial_text_tower(moclip)
        except ValueError as error:
            raise InputError(f"--text-encoder clip: {error}") from None
    try:
        tower = MoCLIP(moclip.config["motion_dim"], clip_model=clip_model, clip_pretrained=clip_pretrained)
    except ValueError as error:                   # the model's own check of the tower choice: the user's to fix
        raise InputError(f"--text-encoder clip: {error}") from None
    return tower.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------------
# One training step (Alg. 1). Everything random in it is a pure function of (seed, step): --resume replays exactly the
# same stream, and data-parallel ranks each take their share of the very same global batch.

def get_batch(dataset, step, batch_size, seed, device, rank=0, world_size=1):
    """This rank's share of global batch `step` of an epoch-wise shuffled stream: x0 (B/W, 196, D) on `device`,
    lengths (B/W,) long on the host (read on the host without waiting for the GPU), captions list[str], and keys:
    the dataset index of each sample whose motion is its whole clip (no random window), else None."""
    per_epoch = len(dataset) // batch_size
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    share = batch_size // world_size
    indices = [int(order[i * batch_size + j]) for j in range(rank * share, (rank + 1) * share)]
    items = []
    for j, index in zip(range(rank * share, (rank + 1) * share), indices):   # position j in the global batch
        random.seed(f"{seed}:{step}:{j}")                     # its random window and caption (the dataset uses `random`)
        items.append(dataset[index])
    captions = [caption for caption, _, _ in items]
    x0 = to_device(torch.from_numpy(np.stack([motion for _, motion, _ in items])), device)
    lengths = torch.tensor([length for _, _, length in items])
    keys = [index if dataset.lengths[index] <= dataset.max_motion_length else None for index in indices]
    return x0, lengths, captions, keys


class FrozenFeatures:
    """What the frozen MoCLIP gives a training step: the token features of its captions (the cross-attention text)
    and f_tem(x0), the temporal anchor's target (Eq. 9).

    With cache=True each is computed once and reused: a caption's tokens, and the target of a clip that fits the
    training window whole (a longer clip's random window is encoded every time). Each is encoded alone, so its value
    never depends on the batch it first came in: --resume and the DDP ranks see the same numbers. Host memory: 77 x W
    floats per caption (39 KB for the small text tower) and D_a per clip."""

    def __init__(self, text_encoder, moclip, cache=True):
        self.text_encoder, self.moclip, self.cache = text_encoder, moclip, cache
        self.tokens, self.targets = {}, {}

    @torch.no_grad()
    def text_tokens(self, captions):
        """list[str] (B) -> (B, 77, W) on the encoder's device."""
        if not self.cache:
            return self.text_encoder.encode_text_tokens(captions)
        for caption in dict.fromkeys(c for c in captions if c not in self.tokens):
            self.tokens[caption] = self.text_encoder.encode_text_tokens([caption])[0].cpu()
        return to_device(torch.stack([self.tokens[c] for c in captions]), self.text_encoder.device)

    @torch.no_grad()
    def motion_targets(self, x0, lengths, keys):
        """x0 (B, T, D), host lengths (B,), keys (see get_batch) -> f_tem(x0) (B, D_a)."""
        if not self.cache:
            return self.moclip.encode_motion(x0, lengths)
        fresh = [i for i, key in enumerate(keys) if key is None]
        batch = dict(zip(fresh, self.moclip.encode_motion(x0[fresh], lengths[fresh]))) if fresh else {}
        for i, key in enumerate(keys):
            if key is not None and key not in self.targets:                 # kept on x0's device: D_a floats each
                self.targets[key] = self.moclip.encode_motion(x0[i:i + 1, :lengths[i]], lengths[i:i + 1])[0]
        return torch.stack([batch[i] if key is None else self.targets[key] for i, key in enumerate(keys)])


def draw_diffusion_noise(step, batch_size, shape, seed, device, rank=0, world_size=1):
    """t ~ U[0, T), eps ~ N(0, I) and the text-drop uniforms for this rank's share of global batch `step`: drawn for
    the whole global batch from a generator seeded by (seed, step), on the device (no host round trip), then sliced."""
    generator = torch.Generator(device).manual_seed(seed * 1_000_003 + step)
    t = torch.randint(0, 1000, (batch_size,), generator=generator, device=device)          # t ~ U[0, T)
    noise = torch.randn((batch_size, *shape), generator=generator, device=device)          # eps of Eq. (1)
    drop = torch.rand(batch_size, generator=generator, device=device)                      # for Eq. (3)
    share = slice(rank * (batch_size // world_size), (rank + 1) * (batch_size // world_size))
    return t[share], noise[share], drop[share]


def luma_loss(args, model, luma_forward, features, abar, batch, step, rank=0, world_size=1):
    """Alg. 1 lines 2-7 on this rank's share of batch `step` -> (loss, {"ddpm", "fre", "tem", "zeta": 0-d tensors}).

    luma_forward is `model`, or its torch.compile / DistributedDataParallel wrapper; features (FrozenFeatures) runs
    the frozen MoCLIP towers under the same autocast as the UNet."""
    x0, lengths, captions, keys = batch
    device = x0.device
    device_lengths = to_device(lengths, device)   # one queued copy; MoCLIP reads the host lengths for its trim
    t, noise, drop = draw_diffusion_noise(step, args.batch_size, x0.shape[1:], args.seed, device, rank, world_size)
    x_t = q_sample(x0, t, noise, abar)                                                     # Eq. (1)
    cond_mask = drop >= args.cond_drop                                     # null condition for CFG, Eq. (3)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with torch.no_grad(), autocast:
        text_tokens = features.text_tokens(captions)                                       # (B, 77, W), frozen
        target_tem = features.motion_targets(x0, lengths, keys) if not args.no_tem else None   # f_tem(x0), frozen
    with autocast:
        x0_hat, z_fre, z_tem = luma_forward(x_t, t, text_tokens, cond_mask, device_lengths)
    loss_ddpm = masked_mse(x0_hat.float(), x0, device_lengths)                             # Eq. (2)
    anchor_loss, terms = dual_anchor_loss(_float(z_fre), _float(z_tem), x0, _float(target_tem),
                                          args.lambda_fre, args.lambda_tem)               # Eq. (8), (9)
    zeta = model.weighting(step + 1)                    # Eq. (11) or Table 4; n = 1..N_train as in Alg. 1
    loss = loss_ddpm + model.weighting.weigh(zeta, anchor_loss)                            # Eq. (10)
    return loss, {"ddpm": loss_ddpm, **terms, "zeta": zeta}


def train_step(args, model, luma_forward, optimizer, ema_unet, features, abar, batch, step, rank=0, world_size=1):
    """One optimisation step: the loss, backward (where DDP averages the gradients over ranks), gradient clipping,
    AdamW and, every ema_every steps, the EMA update -> (loss, terms) as luma_loss. Nothing in it waits for the GPU."""
    loss, terms = luma_loss(args, model, luma_forward, features, abar, batch, step, rank, world_size)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    if step % args.ema_every == 0:
        update_ema(ema_unet, model.unet, args.ema_decay, first=step == 0)
    return loss, terms


def _float(z):
    return None if z is None else z.float()


# ---------------------------------------------------------------------------------------------------------------------
# EMA and checkpoints (atomic writes via moclip.save_checkpoint, weights_only loads)

@torch.no_grad()
def update_ema(ema, model, decay, first):
    """ema <- decay * ema + (1 - decay) * model; the first update copies (as the backbone's AveragedModel)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.copy_(p) if first else e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def inference_checkpoint(args, ema_unet, text_encoder, dataset, step):
    """Everything sample.py / evaluate.py need, and nothing else: EMA UNet, text tower, config, normalisation."""
    return {
        "format": "luma", "step": step, "config": vars(args), "kind": dataset.kind,
        "unet_config": ema_unet.config, "unet": ema_unet.state_dict(),
        "text_encoder": moclip_state(text_encoder),
        "mean": torch.from_numpy(dataset.mean), "std": torch.from_numpy(dataset.std),
    }


# ---------------------------------------------------------------------------------------------------------------------

def setup_distributed(args):
    """Data parallelism under torchrun (it sets WORLD_SIZE, RANK, LOCAL_RANK): one process per GPU with NCCL, or per
    CPU process with gloo. -> (rank, world_size, device); a plain `python train.py` is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, torch.device(args.device)
    if args.batch_size % world_size:
        raise InputError(f"--batch-size {args.batch_size} is the global batch; it must divide evenly over "
                         f"{world_size} processes (e.g. {args.batch_size // world_size * world_size or world_size})")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if args.device.startswith("cuda"):
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         timeout=datetime.timedelta(minutes=30))
    return rank, world_size, device


RESUME_WRITER = "train.py (runs/<run>/checkpoint.pt, every --save-every steps)"


def check_resumable(state, args, path):
    """--resume continues the same model: refuse a checkpoint trained with other model-defining flags."""
    saved = state["config"]
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} (now {getattr(args, k)!r})" for k in MODEL_FLAGS
               if k in saved and saved[k] != getattr(args, k)]
    if changed:
        raise InputError(f"{path} was trained with other flags: {'; '.join(changed)}. Resume with the run's own "
                         f"flags, or start a new run with another --out-dir")
    if state["step"] > args.steps:
        raise InputError(f"{path} is at step {state['step']}, past --steps {args.steps}: nothing to train; pass "
                         f"--steps larger than {state['step']} to continue")


LOG_COLUMNS = ["step", "loss", "ddpm", "fre", "tem", "zeta", "lr", "seconds_per_step"]
# eval.csv (--eval-every): train_hours is the wall-clock of the training alone, without the evaluations and the
# writes of checkpoint.pt (Fig. 4's x axis)
EVAL_COLUMNS = ["step", "train_hours", "FID", "Top1", "Top2", "Top3", "MM-Dist", "eval_seconds"]


def open_log(path, columns, resume, step):
    """A CSV log to append to: a new one with its header, or on --resume the old one cut back to `step`."""
    if resume:
        continue_log(path, step, columns)
    f = open(path, "a" if resume else "w", newline="")
    if not resume:
        csv.writer(f).writerow(columns)
    return f


def continue_log(log_path, step, columns=LOG_COLUMNS):
    """On --resume, keep the log rows up to the checkpoint's step: the steps after it run again, so their old rows
    go, and the log reads as one uninterrupted run. Written atomically; a missing log starts with its header."""
    rows = []
    if log_path.exists():
        with open(log_path, newline="") as f:
            rows = list(csv.reader(f))
    header, rows = (rows[0], rows[1:]) if rows else (columns, [])
    text = io.StringIO()
    csv.writer(text).writerows([header] + [row for row in rows if row and row[0].isdigit() and int(row[0]) <= step])
    write_atomic(log_path, lambda f: f.write(text.getvalue().encode()))


def main(argv=None):
    args = get_args(argv)                          # usage errors: the usage line and exit status 2, before any work
    with user_errors(WeightsUnavailable):          # expected errors: one paragraph, exit status 1; bugs: a traceback
        return run(args)


def run(args):
    """The whole job of `python train.py`: data, MoCLIP (trained first if needed), LUMA, samples, final checkpoint."""
    check_run_folder(args)                                    # every rank, before rank 0 writes anything
    rank, world_size, device = setup_distributed(args)
    is_main = rank == 0                                       # rank 0 alone writes checkpoints, logs and samples
    out_dir = Path(args.out_dir)
    if args.overwrite and is_main:                            # the user asked to replace the run in out_dir
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed + rank)                       # per-rank stream for dropout
    # fp32 means fp32: PyTorch would otherwise run cuDNN convolutions in TF32 by default.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision != "fp32"

    # Data (synthetic and bandai are built on first use, by rank 0 while the others wait)
    if is_main:
        prepare_dataset(args.dataset, args.data_root, args.synthetic_motions)
    if world_size > 1:
        torch.distributed.barrier()
    dataset = MotionDataset(args.data_root, split="train", kind=KINDS[args.dataset], mode="train",
                            feat_bias=args.feat_bias)
    if len(dataset) < args.batch_size:
        raise InputError(f"the training split of {args.data_root} has {len(dataset)} samples, fewer than --batch-size "
                         f"{args.batch_size}; lower --batch-size")
    motion_dim = dataset.mean.shape[0]
    probe = None                                              # Fig. 4: built before any training, so a missing
    if args.eval_every and is_main:                           # evaluator stops the run before work is done
        from evaluate import ValidationProbe
        probe = ValidationProbe(args.dataset, args.data_root, "val", args.eval_batches, args.eval_seed, str(device),
                                evaluator_dir=args.evaluator_dir)
        print(f"evaluating the EMA model every {args.eval_every} steps on {len(probe)} validation samples -> "
              f"{out_dir / 'eval.csv'}; the ground truth on them: FID {probe.real['FID']:.3f}, R@3 "
              f"{probe.real['Top3']:.3f}")

    # MoCLIP (App. B): trained first unless given; frozen from here on
    moclip_path = args.moclip_checkpoint
    if moclip_path is None:
        moclip_path = Path("checkpoints") / f"moclip_{args.dataset}.pt"
        if moclip_path.exists():
            print(f"using the existing MoCLIP checkpoint {moclip_path} (delete it or pass --moclip-checkpoint to change)")
        elif world_size > 1:
            raise InputError(f"no MoCLIP checkpoint at {moclip_path}. Under torchrun, train it first in one process: "
                             f"python moclip.py --dataset {args.dataset} --out {moclip_path}")
        else:
            print(f"no --moclip-checkpoint given: training MoCLIP first -> {moclip_path}")
            train_moclip(dataset=args.dataset, data_root=args.data_root, out=moclip_path, device=args.device,
                         seed=args.seed, feat_bias=args.feat_bias)
    moclip = load_moclip(moclip_path, device=device)
    check_moclip_normalisation(moclip, moclip_path, dataset, args)
    text_encoder = build_text_encoder(args, moclip).to(device)
    features = FrozenFeatures(text_encoder, moclip, cache=args.feature_cache)    # the frozen towers' outputs

    # Model, EMA, optimiser
    model = build_model(args, motion_dim, text_encoder.text_width, moclip.embed_dim).to(device)
    ema_unet = copy.deepcopy(model.unet).eval().requires_grad_(False)      # EMA weights: sampling and evaluation
    optimizer = build_optimizer(args, model, device)
    abar = alphas_cumprod(linear_betas(1000)).to(device)  # the paper's alpha_t of Eq. (1)
    luma_forward = model
    if world_size > 1:   # averages the gradients over ranks during backward
        luma_forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                                 else None)
    if args.compile:
        luma_forward = torch.compile(luma_forward)
    n_params = sum(p.numel() for p in model.unet.parameters())
    n_anchor = sum(p.numel() for p in model.anchor.parameters()) if model.anchor is not None else 0
    if is_main:
        print(f"UNet ({args.unet}): {n_params / 1e6:.2f} M parameters; anchor heads: {n_anchor / 1e6:.2f} M; "
              f"{len(dataset)} training samples; device {device}"
              + (f" x {world_size} processes, {args.batch_size // world_size} samples each" if world_size > 1 else ""))

    step = 0
    checkpoint_path = out_dir / "checkpoint.pt"
    if args.resume:   # loaded on the CPU: the RNG states must stay there
        state = load_checkpoint(checkpoint_path, "a resumable LUMA training checkpoint", RESUME_WRITER, fmt="luma",
                                keys=("config", "model", "ema_unet", "optimizer", "step", "rng_cpu"))
        check_resumable(state, args, checkpoint_path)
        load_weights(model, state["model"], checkpoint_path, "LUMA")
        load_weights(ema_unet, state["ema_unet"], checkpoint_path, "EMA UNet")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise InputError(f"{checkpoint_path}: its optimiser state does not fit the model ({error}); the file is "
                             f"damaged") from None
        step = state["step"]
        if is_main:   # the saved dropout stream is rank 0's; the other ranks start fresh, distinct ones
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and state.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(state["rng_cuda"])
            print(f"resumed from {checkpoint_path} at step {step}")
        else:
            torch.manual_seed(args.seed * 1_000_003 + step * 1_009 + rank)

    def save(state, path):
        try:
            save_checkpoint(state, path)                  # atomic: a failed write leaves the last good file as it was
        except InputError as error:
            kept = (f"the last good checkpoint (step {last_good}) is {checkpoint_path}, unchanged" if last_good else
                    "no checkpoint was written yet")
            raise InputError(f"{error}; {kept}. Free disk space or make {out_dir} writable, then run again with "
                             f"--resume") from None

    def training_state():
        return {**inference_checkpoint(args, ema_unet, text_encoder, dataset, step),
                "model": model.state_dict(), "ema_unet": ema_unet.state_dict(), "optimizer": optimizer.state_dict(),
                "train_seconds": train_seconds(), "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}

    log_path, eval_path = out_dir / "log.csv", out_dir / "eval.csv"
    if is_main:
        log_file = open_log(log_path, LOG_COLUMNS, args.resume, step)
        log = csv.writer(log_file)
        eval_file = open_log(eval_path, EVAL_COLUMNS, args.resume, step) if probe is not None else None

    # Wall-clock of the training alone, carried over a --resume. Left out: the evaluations, and the writing of
    # checkpoint.pt, which records the time at which it is written, so a resumed run goes on from the time logged last
    seconds_before = state.get("train_seconds", 0.0) if args.resume else 0.0
    t_start, paused_seconds = time.time(), 0.0

    def train_seconds():
        return seconds_before + time.time() - t_start - paused_seconds

    def evaluate_now():
        """Fig. 4's point at this step: the EMA model on the probe's fixed validation batches -> a row of eval.csv."""
        nonlocal paused_seconds
        from sample import LUMASampler
        start = time.time()
        metrics = probe(LUMASampler(ema_unet, text_encoder, dataset.mean, dataset.std, dataset.kind))
        spent = time.time() - start
        paused_seconds += spent
        csv.writer(eval_file).writerow([step, f"{train_seconds() / 3600:.7f}",  # 7 decimals: 0.36 ms
                                        *[f"{metrics[k]:.6g}" for k in EVAL_COLUMNS[2:7]], f"{spent:.1f}"])
        eval_file.flush()
        if args.keep_checkpoints:
            save(inference_checkpoint(args, ema_unet, text_encoder, dataset, step),
                 out_dir / "checkpoints" / f"step_{step:06d}.pt")
        bar.write(f"step {step}: validation FID {metrics['FID']:.3f}, R@1/2/3 {metrics['Top1']:.3f} / "
                  f"{metrics['Top2']:.3f} / {metrics['Top3']:.3f} ({spent:.0f} s)")
    bar = tqdm(total=args.steps, initial=step, desc="LUMA", dynamic_ncols=True, disable=not is_main)
    last_good = last_logged = step
    t_last = time.time()
    model.train()
    # The loop never reads a GPU value except at log steps, so the host runs ahead: it prepares the next batch while
    # the GPU is still busy with this one.
    while step < args.steps:
        lr = args.lr * 0.9 ** (step // args.lr_decay_every)                 # ExponentialLR(0.9) every N steps
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = get_batch(dataset, step, args.batch_size, args.seed, device, rank, world_size)
        loss, terms = train_step(args, model, luma_forward, optimizer, ema_unet, features, abar, batch, step,
                                 rank, world_size)
        step += 1
        bar.update(1)

        saving = step % args.save_every == 0 or step == args.steps
        if step % args.log_every == 0 or saving:                               # a NaN is never saved
            values = torch.stack([loss.detach().float(), *(terms[k].detach().float().to(device) if k in terms
                                                            else torch.zeros((), device=device)
                                                            for k in ("ddpm", "fre", "tem", "zeta"))])
            if world_size > 1:                                                 # the global batch's mean
                torch.distributed.all_reduce(values)
                values /= world_size
            values = values.tolist()
            if not all(math.isfinite(v) for v in values):
                if is_main:
                    log_file.close()
                    if eval_file is not None:
                        eval_file.close()
                raise InputError(f"the loss became {values[0]} at step {step}; stopping without saving. The last good "
                                 f"checkpoint (step {last_good}) is {checkpoint_path}. Try a lower --lr or --precision "
                                 f"fp32.")
            seconds = (time.time() - t_last) / (step - last_logged)
            t_last, last_logged = time.time(), step
            if is_main:
                log.writerow([step, *[f"{v:.6g}" for v in values], f"{lr:.3g}", f"{seconds:.4f}"])
                log_file.flush()
                bar.set_postfix(loss=f"{values[0]:.4f}", ddpm=f"{values[1]:.4f}", fre=f"{values[2]:.3f}",
                                tem=f"{values[3]:.3f}", zeta=f"{values[4]:.2f}")
        if saving and is_main:
            write_start = time.time()
            save(training_state(), checkpoint_path)
            paused_seconds += time.time() - write_start
        last_good = step if saving else last_good
        if is_main and args.sample_every and (step % args.sample_every == 0 or step == args.steps):
            render_samples(ema_unet, text_encoder, dataset, out_dir / "samples" / f"step_{step:06d}", device)
        if probe is not None and (step % args.eval_every == 0 or step == args.steps):
            evaluate_now()
    bar.close()
    final_path = out_dir / "final.pt"
    if is_main:
        log_file.close()
        if eval_file is not None:
            eval_file.close()
        save(inference_checkpoint(args, ema_unet, text_encoder, dataset, step), final_path)
        if device.type == "cuda":
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        print(f"done: {step} steps. Final checkpoint (EMA UNet + text tower + stats): {final_path}\n"
              f"  log: {log_path}\n  try: python sample.py --checkpoint {final_path} --text \"a person jumps\"")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return final_path


def render_samples(ema_unet, text_encoder, dataset, folder, device):
    """A few animations from the EMA model, to watch training progress."""
    from sample import LUMASampler
    sampler = LUMASampler(ema_unet, text_encoder, dataset.mean, dataset.std, dataset.kind)
    sampler.write(SAMPLE_PROMPTS, [120] * len(SAMPLE_PROMPTS), folder, seed=0)


if __name__ == "__main__":
    main()
