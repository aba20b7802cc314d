"""
MoCLIP: the contrastive text-motion encoder of LUMA (paper App. B, Eq. (14)-(15), Table 5).

Two encoders map a caption and a motion into one D_a-dimensional space:

    z_text   = open_clip text tower: pooled end-of-text token @ text_projection            (B, D_a)
    z_motion = Linear -> + sinusoidal positions -> TransformerEncoder(mask) -> masked mean -> Linear
                                                                                   Eq. (14)  (B, D_a)
    L = 1/2 (CE(motion->text) + CE(text->motion)) on cosine similarities / tau             Eq. (15)

Training has two stages (App. B.0.3): stage 1 trains only the motion encoder, the whole text side frozen (App. B;
--stage1-projection also trains the text projection and the temperature, as the precursor does); stage 2 unfreezes
the last text layer, the final LayerNorm, the projection and the temperature and fine-tunes all of it at a lower
learning rate. Early stopping on the validation loss. Retrieval is top-1/2/3 inside shuffled batches of
32 on the test split, both directions, mean and 95% CI over repeats (Table 5's measure; the paper gives no
protocol, so the pools of 32 follow App. A.1's R-precision).

LUMA uses the trained MoCLIP twice: its token-wise text features (77 x W, after ln_final) feed the UNet's
cross-attention, and its frozen motion encoder gives the temporal anchor target f_tem(x0) (Eq. 9).

    python moclip.py --dataset synthetic                          # CPU, minutes: small text tower from scratch
    python moclip.py --dataset humanml3d --data-root data/HumanML3D  # ViT-B-32 / openai text tower (paper setting)
    python moclip.py --eval --checkpoint checkpoints/moclip_synthetic.pt

Public API: MoCLIP, contrastive_loss, set_stage, train_moclip, load_moclip, moclip_state, moclip_from_state,
retrieval_eval, topk_accuracy.
"""

import argparse
import math
import os
import random
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# The model half of this file (text tower, MotionEncoder, MoCLIP, the loss) needs only torch and open_clip, so it
# copies out alone. Training, checkpoint files and the command line use the project's data.py, imported inside the
# functions that need it. open_clip too is imported where a text tower or tokenizer is built: it brings torchvision
# with it (about 2.3 s of a command's 4.5 s start on a 2-core CPU), which a command that stops at --help, a bad flag
# or a missing file never uses.

MAX_MOTION_LENGTH = 196                       # HumanML3D's training window in frames (data.MAX_MOTION_LENGTH)


def _host_to_device(tensor, device):
    """A small host tensor to `device` without stalling the host: on CUDA through pinned memory, queued. The same as
    data.to_device, kept here so that this file copies out alone."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# A small open_clip text tower for CPUs and the synthetic dataset: the same TextTransformer class, BPE tokenizer,
# 77-token context and causal mask as ViT-B-32's, only narrower and shallower. Trained from random initialisation.
# Paper is silent here; see README "Choices"
SMALL_TEXT_CONFIG = dict(embed_dim=128, quick_gelu=False, context_length=77, vocab_size=49408,
                         width=128, heads=4, layers=3)

# Training presets. "paper": App. B and the MoCLIP precursor (stablemofusion_backbone.md §6.3). "small": tuned so the
# synthetic dataset trains on a 2-core CPU in minutes (a from-scratch tower learns faster than a pretrained one
# may be nudged, hence the higher learning rates; stage 2 still drops the rate, 3x here, 10x in the paper).
PRESETS = {
    "paper": dict(clip_model="ViT-B-32", clip_pretrained="openai", motion_width=None, motion_layers=4,
                  motion_heads=8, motion_ff=2048, dropout=0.2, attention_dropout=None, batch_size=32, lr=1e-4,
                  stage2_lr=1e-5, weight_decay=1e-4, stage1_epochs=5, epochs=300, patience=3, stage1_projection=False),
    # attention_dropout=0: drawing the dropout mask of the (B, heads, T, T) attention weights was 30% of a CPU step
    # and kept PyTorch off its fused attention kernel; without it a step is 1.7x faster (425 -> 238 ms on 2 cores).
    # The other dropouts stay. Paper is silent here; see README "Choices"
    "small": dict(clip_model="small", clip_pretrained="none", motion_width=128, motion_layers=2,
                  motion_heads=4, motion_ff=256, dropout=0.1, attention_dropout=0.0, batch_size=32, lr=1e-3,
                  stage2_lr=3e-4, weight_decay=1e-4, stage1_epochs=4, epochs=10, patience=2, stage1_projection=False),
}


# ---------------------------------------------------------------------------------------------------------------------
# Text tower (open_clip): only the text side of a CLIP is built and kept

def _text_config(clip_model, clip_pretrained):
    """Resolve {embed_dim, quick_gelu, **open_clip text_cfg} for a named open_clip model or 'small'."""
    if clip_model == "small":
        return dict(SMALL_TEXT_CONFIG)
    import open_clip
    cfg = open_clip.get_model_config(clip_model)
    if cfg is None:
        raise ValueError(f"unknown --clip-model {clip_model!r}: use 'small' or an open_clip model name "
                         f"such as ViT-B-32 (open_clip.list_models() lists them)")
    if "hf_model_name" in cfg["text_cfg"]:
        raise ValueError(f"--clip-model {clip_model!r} has a HuggingFace text tower; MoCLIP supports open_clip's "
                         f"own TextTransformer towers (e.g. ViT-B-32, ViT-B-16, ViT-L-14)")
    quick_gelu = cfg.get("quick_gelu", False)
    if clip_pretrained != "none":  # e.g. the 'openai' weights were trained with QuickGELU
        quick_gelu = (open_clip.get_pretrained_cfg(clip_model, clip_pretrained) or {}).get("quick_gelu", quick_gelu)
    return dict(embed_dim=cfg["embed_dim"], quick_gelu=quick_gelu, **cfg["text_cfg"])


def clip_model_name(text):
    """argparse type: 'small' or an open_clip model whose text tower MoCLIP can use."""
    try:
        _text_config(text, "none")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


class WeightsUnavailable(RuntimeError):
    """Pretrained open_clip weights could not be fetched (offline); the message says what to pass instead."""


def _offline_hint(clip_model, clip_pretrained, reason):
    return WeightsUnavailable(
        f"cannot load the open_clip weights {clip_model}/{clip_pretrained} ({reason}). Without internet pass "
        f"--clip-pretrained none (a randomly initialised text tower; or --clip-model small), or put the weights in "
        f"the Hugging Face cache and set HF_HUB_OFFLINE=1, or pass --clip-pretrained /path/to/weights.pt")


def _pretrained_text_state(clip_model, clip_pretrained):
    """The text-side state dict of an open_clip CLIP with pretrained weights; fails fast (no hub retries) offline."""
    import open_clip
    if not os.path.isfile(clip_pretrained) and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false"):
        cfg = open_clip.get_pretrained_cfg(clip_model, clip_pretrained) or {}
        host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
        if host:  # huggingface_hub would retry for ~45 s before giving up; a 3 s probe answers at once
            try:
                socket.create_connection((host, 443), timeout=3).close()
            except OSError as error:
                raise _offline_hint(clip_model, clip_pretrained, f"{host} unreachable: {error}") from None
    try:
        clip = open_clip.create_model(clip_model, pretrained=clip_pretrained,
                                      force_quick_gelu=_text_config(clip_model, clip_pretrained)["quick_gelu"])
    except Exception as error:
        raise _offline_hint(clip_model, clip_pretrained, f"{type(error).__name__}: {error}") from None
    state = clip.state_dict()
    if hasattr(clip, "text"):  # CustomTextCLIP keeps its tower under .text
        return {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    return {k: v for k, v in state.items() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}


def build_text_tower(text_config, clip_model="small", clip_pretrained="none"):
    """An open_clip TextTransformer (text side only) returning (pooled (B, D_a), tokens (B, 77, W)) per call."""
    import open_clip
    cfg = dict(text_config)
    embed_dim, quick_gelu = cfg.pop("embed_dim"), cfg.pop("quick_gelu")
    text_cfg = open_clip.CLIPTextCfg(**cfg, output_tokens=True)
    # open_clip's own builder of CLIP.text; building it alone skips the vision tower (88 M parameters for ViT-B-32)
    tower = open_clip.model._build_text_tower(embed_dim, text_cfg, quick_gelu=quick_gelu)
    if tower.text_projection is None or tower.cls_emb is not None:
        raise ValueError("MoCLIP needs a text tower with a text projection and end-of-text pooling (CLIP-style)")
    if clip_pretrained != "none":
        tower.load_state_dict(_pretrained_text_state(clip_model, clip_pretrained))
    return tower


# ---------------------------------------------------------------------------------------------------------------------
# Motion encoder (App. B.0.1, Eq. 14)

def sinusoidal_positions(length, dim):
    """Fixed sinusoidal table (length, dim), interleaved: even channels sin, odd channels cos."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


class MotionEncoder(nn.Module):
    """Normalised motion (B, T, D) with true lengths (B,) -> embedding (B, D_a), independent of the padding."""

    def __init__(self, motion_dim, embed_dim, width=512, layers=4, heads=8, ff=2048, dropout=0.2,
                 max_len=MAX_MOTION_LENGTH, attention_dropout=None):
        super().__init__()
        self.input = nn.Linear(motion_dim, width)                                           # W_p
        self.register_buffer("positions", sinusoidal_positions(max_len, width), persistent=False)  # P
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, ff, dropout, batch_first=True)  # post-norm, ReLU (precursor)
        if attention_dropout is not None:          # on the attention weights; None = `dropout`, as the layer's default
            layer.self_attn.dropout = attention_dropout
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.output = nn.Linear(width, embed_dim)                                          # W_o

    def forward(self, motion, lengths):
        """motion (B, T, D), lengths (B,) -> (B, D_a). Lengths are read on the host (checks, the trim below): pass
        them as a list or CPU tensor, so that a GPU caller never waits for the device."""
        B, T, _ = motion.shape
        if T > self.positions.shape[0]:
            raise ValueError(f"motion has {T} frames; the encoder was built for at most {self.positions.shape[0]}")
        host_lengths = torch.as_tensor(lengths, device="cpu")
        if len(host_lengths) != B or host_lengths.min() < 1 or host_lengths.max() > T:
            raise ValueError(f"need one length in 1..{T} per motion, got {host_lengths.tolist()}")
        T = int(host_lengths.max())                                                         # the rest is padding
        lengths = _host_to_device(host_lengths, motion.device)
        motion = motion[:, :T]
        valid = torch.arange(T, device=motion.device)[None, :] < lengths[:, None]           # (B, T), True = real frame
        s = self.dropout(self.input(motion) + self.positions[:T])                           # (B, T, D) -> (B, T, width)
        s = self.transformer(s, src_key_padding_mask=~valid)                                # Eq. (14), L layers
        s = (s * valid[..., None]).sum(1) / lengths[:, None].to(s.dtype)                    # masked mean: (B, width)
        return self.output(self.dropout(s))                                                 # (B, D_a)


# ---------------------------------------------------------------------------------------------------------------------
# MoCLIP

class MoCLIP(nn.Module):
    """Text tower + motion encoder + learnable temperature; .embed_dim = D_a, .text_width = W, .config rebuilds it."""

    def __init__(self, motion_dim, clip_model="ViT-B-32", clip_pretrained="openai", text_config=None,
                 motion_width=None, motion_layers=4, motion_heads=8, motion_ff=2048, dropout=0.2,
                 max_len=MAX_MOTION_LENGTH, max_logit_scale=20.0, attention_dropout=None):
        super().__init__()
        if clip_model == "small" and clip_pretrained != "none":
            raise ValueError(f"the small text tower has no pretrained weights; pass --clip-pretrained none "
                             f"(got {clip_pretrained!r}) or a named --clip-model such as ViT-B-32")
        text_config = dict(text_config) if text_config is not None else _text_config(clip_model, clip_pretrained)
        self.text = build_text_tower(text_config, clip_model, clip_pretrained)
        import open_clip
        if clip_model == "small":
            self.tokenizer = open_clip.SimpleTokenizer(context_length=text_config["context_length"])
        else:
            self.tokenizer = open_clip.get_tokenizer(clip_model, context_length=text_config["context_length"])
        self.embed_dim = text_config["embed_dim"]                                           # D_a
        self.text_width = text_config["width"]                                              # W
        # Paper is silent here; see README "Choices" (motion width = D_a, as the precursor's 768 = CLIP-L's D_a)
        motion_width = motion_width or self.embed_dim
        self.motion = MotionEncoder(motion_dim, self.embed_dim, motion_width, motion_layers, motion_heads,
                                    motion_ff, dropout, max_len, attention_dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))                  # log(1/tau), tau = 0.07
        # exp(logit_scale) clamped at 20 as the precursor does (CLIP: 100). Paper is silent here; see README "Choices"
        self.max_logit_scale = max_logit_scale
        self.config = dict(motion_dim=motion_dim, clip_model=clip_model, clip_pretrained=clip_pretrained,
                           text_config=text_config, motion_width=motion_width, motion_layers=motion_layers,
                           motion_heads=motion_heads, motion_ff=motion_ff, dropout=dropout, max_len=max_len,
                           attention_dropout=attention_dropout,
                           max_logit_scale=max_logit_scale)

    @property
    def device(self):
        return self.logit_scale.device

    def tokenize(self, texts):
        """list[str] (B) -> token ids (B, 77) on the model's device (lower-cased BPE, truncated at 77)."""
        if isinstance(texts, str):
            raise ValueError("pass a list of captions, e.g. ['a person jumps'], not a single string")
        return _host_to_device(self.tokenizer(list(texts)), self.device)

    def encode_text(self, texts):
        """list[str] (B) -> sentence embedding (B, D_a): the end-of-text token after ln_final @ text_projection."""
        return self.text(self.tokenize(texts))[0]

    def encode_text_tokens(self, texts):
        """list[str] (B) -> token-wise features (B, 77, W) after ln_final, for the UNet's cross-attention."""
        return self.text(self.tokenize(texts))[1]

    def encode_motion(self, motion, lengths):
        """Normalised motion (B, T, D) and true lengths (B,) -> motion embedding (B, D_a)."""
        return self.motion(motion, lengths)

    def scale(self):
        """exp(logit_scale) = 1/tau, clamped at max_logit_scale."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, texts, motion, lengths):
        """-> Eq. (15) loss for a batch of matched pairs (B captions, motion (B, T, D), lengths (B,))."""
        return contrastive_loss(self.encode_text(texts), self.encode_motion(motion, lengths), self.scale())


def moclip_state(model):
    """Everything needed to rebuild `model` (plain types and tensors only): {'config', 'model'}."""
    return {"config": model.config, "model": model.state_dict()}


def moclip_from_state(state, source="the MoCLIP state"):
    """MoCLIP from moclip_state(...) or a MoCLIP checkpoint, in eval mode and frozen; downloads nothing. A state whose
    config or weights do not build a MoCLIP raises an InputError naming `source` (the file it came from)."""
    from data import InputError, load_weights
    config = dict(state["config"])
    clip_pretrained = config.pop("clip_pretrained", "none")
    try:
        model = MoCLIP(**config, clip_pretrained="none")          # the weights are in the state dict
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(f"{source}: its MoCLIP configuration does not build a model ({error}); the file is damaged "
                         f"or was written by another version of moclip.py") from None
    model.config["clip_pretrained"] = clip_pretrained             # keeps what the tower was initialised from
    load_weights(model, state["model"], source, "MoCLIP")
    return model.eval().requires_grad_(False)


MOCLIP_WRITER = "moclip.py (python moclip.py --dataset <name> writes checkpoints/moclip_<name>.pt)"


def load_moclip(path, device="cpu"):
    """Frozen MoCLIP (eval mode) from a checkpoint of train_moclip. .mean/.std (D,) are its motion normalisation,
    .dataset and .data_root the data it was trained on, .stats_sha1 and .feat_bias what that normalisation was made
    of (data.stats_checksum of the dataset's Mean/Std files, the std divisor) and .seed the seed of its random
    initialisation (None where an older checkpoint did not record them)."""
    from data import load_checkpoint
    state = load_checkpoint(path, "a MoCLIP checkpoint", MOCLIP_WRITER, fmt="moclip",
                            keys=("config", "model", "mean", "std"))
    model = moclip_from_state(state, source=path).to(device)
    model.mean, model.std = state["mean"], state["std"]
    model.dataset, model.data_root = state.get("dataset"), state.get("data_root")
    model.stats_sha1, model.feat_bias = state.get("stats_sha1"), state.get("feat_bias")
    model.seed = state.get("seed", state.get("hparams", {}).get("seed"))   # older _last.pt files: in hparams
    return model


def initial_text_tower(model):
    """The text tower `model` started from, frozen, as a MoCLIP (its text side is what counts): the pretrained
    weights it was initialised from (e.g. ViT-B-32 / openai), or, for a randomly initialised tower (the small one of
    the CPU presets), the very same random draw, rebuilt from the seed its checkpoint records. This is "CLIP"
    in Table 2's "w/o MoCLIP" and the StableMoFusion row: the text encoder before MoCLIP's training."""
    config = dict(model.config)
    if config["clip_pretrained"] == "none":
        if getattr(model, "seed", None) is None:
            raise ValueError("this MoCLIP checkpoint does not record the seed of its random initialisation (older "
                             "moclip.py): retrain it with python moclip.py to use its initial text tower")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model.seed)                     # as train_moclip does before building the model
            initial = MoCLIP(**config)
    else:
        initial = MoCLIP(**config)                            # the pretrained weights, fetched as at training time
    return initial.to(model.device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------------
# Loss (App. B.0.2)

def contrastive_loss(text_emb, motion_emb, scale):
    """Eq. (15) on matched pairs text_emb (B, D_a), motion_emb (B, D_a) with scale = 1/tau -> scalar."""
    text_emb = F.normalize(text_emb, dim=-1)                     # L2-normalised, so the products are cosines
    motion_emb = F.normalize(motion_emb, dim=-1)
    logits = scale * motion_emb @ text_emb.T                     # (B, B): motion i vs text j
    target = torch.arange(len(logits), device=logits.device)
    loss_m2t = F.cross_entropy(logits, target)
    loss_t2m = F.cross_entropy(logits.T, target)
    return 0.5 * (loss_m2t + loss_t2m)                           # Eq. (15)


def set_stage(model, stage, stage1_projection=False):
    """Freeze for training stage 1 or 2 (App. B.0.3); returns the names of the trainable parameters.

    Stage 1 trains only the MotionEncoder, the text tower frozen (App. B: "Only the MotionEncoder components are
    trained"); stage1_projection=True also trains the text projection and the temperature from the start, as the
    precursor does. Stage 2 unfreezes the last text layer and the final LayerNorm and trains them with the motion
    encoder, the text projection and the temperature ("the entire model is then fine-tuned jointly")."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    model.requires_grad_(False)
    model.motion.requires_grad_(True)
    if stage == 2 or stage1_projection:
        model.logit_scale.requires_grad_(True)
        model.text.text_projection.requires_grad_(True)
    if stage == 2:
        model.text.transformer.resblocks[-1].requires_grad_(True)
        model.text.ln_final.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------------------------------
# Training

def _open_dataset(dataset, data_root, split, feat_bias=5.0):
    from data import KINDS, MotionDataset
    if dataset not in KINDS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(KINDS)}")
    return MotionDataset(data_root, split=split, kind=KINDS[dataset], mode="train", feat_bias=feat_bias)


def _loader(data, batch_size, generator=None):
    """Shuffled batches (drop last) when a generator is given, else in order (a short split keeps its last batch)."""
    from data import InputError
    if generator is not None and len(data) < batch_size:
        raise InputError(f"the training split has {len(data)} samples, fewer than the batch size {batch_size}; "
                         f"lower --batch-size")
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=generator is not None,
                                       drop_last=len(data) >= batch_size, generator=generator)


def _batch(batch, device):
    captions, motion, lengths = batch
    return list(captions), _host_to_device(motion.float(), device), lengths    # lengths stay on the host


@torch.no_grad()
def _validation_loss(model, loader, device, seed):
    random.seed(seed)                                            # the same captions and windows every epoch
    model.eval()
    return float(np.mean([model(*_batch(batch, device)).item() for batch in loader]))


def _optimizer(model, stage, hp):
    set_stage(model, stage, hp.get("stage1_projection", False))
    lr = hp["lr"] if stage == 1 else hp["stage2_lr"]
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                             weight_decay=hp["weight_decay"])


def train_moclip(dataset="synthetic", data_root=None, out=None, clip_model=None, clip_pretrained=None,
                 epochs=None, stage1_epochs=None, batch_size=None, lr=None, stage2_lr=None, weight_decay=None,
                 patience=None, device=None, seed=0, resume=False, keep_stage1=False, synthetic_motions=None,
                 progress=True, feat_bias=5.0, stage1_projection=None):
    """Two-stage MoCLIP training with early stopping; returns the best checkpoint's path. None = the preset's value.
    feat_bias must be the one LUMA will train with (train.py checks): both see the same normalised motions."""
    from data import (BUILT_DATASETS, DATA_ROOTS, KINDS, InputError, load_checkpoint, prepare_dataset,
                      save_checkpoint)
    if dataset not in KINDS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(KINDS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data_root = Path(data_root or DATA_ROOTS[dataset])
    out = Path(out or f"checkpoints/moclip_{dataset}.pt")
    last_path = out.with_name(out.stem + "_last.pt")             # resumable state, optimiser included
    given = dict(clip_model=clip_model, clip_pretrained=clip_pretrained, epochs=epochs, stage1_epochs=stage1_epochs,
                 batch_size=batch_size, lr=lr, stage2_lr=stage2_lr, weight_decay=weight_decay, patience=patience,
                 stage1_projection=stage1_projection)
    given = {k: v for k, v in given.items() if v is not None}

    prepare_dataset(dataset, data_root, synthetic_motions)      # synthetic, bandai: built on first use
    train_set = _open_dataset(dataset, data_root, "train", feat_bias)
    val_set = _open_dataset(dataset, data_root, "val", feat_bias)

    if resume:
        if not last_path.is_file():
            raise InputError(f"--resume given but {last_path} does not exist (moclip.py writes it after every epoch; "
                             f"check --out, or train without --resume)")
        state = load_checkpoint(last_path, "MoCLIP's resumable training state", "moclip.py after every epoch",
                                fmt="moclip", keys=("config", "model", "optimizer", "hparams", "stage", "epoch",
                                                    "best_val", "bad_epochs", "history", "rng"))
        hp = {**state["hparams"], **given}                       # e.g. a larger --epochs extends the run
        seed = hp["seed"]
        model = moclip_from_state(state, source=last_path).to(device)
        stage, epoch, best_val, bad_epochs, history = (state["stage"], state["epoch"], state["best_val"],
                                                       state["bad_epochs"], state["history"])
        optimizer = _optimizer(model, stage, hp)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        print(f"resumed {last_path}: stage {stage}, epoch {epoch}, best validation loss {best_val:.4f}")
    else:
        hp = {**PRESETS["small" if dataset in BUILT_DATASETS else "paper"], **given, "seed": seed}
        if hp["clip_model"] == "small" and clip_pretrained is None:
            hp["clip_pretrained"] = "none"                       # the small tower has no pretrained weights
        torch.manual_seed(seed)
        try:
            model = MoCLIP(train_set.mean.shape[0], hp["clip_model"], hp["clip_pretrained"],
                           motion_width=hp["motion_width"], motion_layers=hp["motion_layers"],
                           motion_heads=hp["motion_heads"], motion_ff=hp["motion_ff"], dropout=hp["dropout"],
                           attention_dropout=hp.get("attention_dropout"))
        except ValueError as error:               # the model's own check of the tower choice: the user's to fix
            raise InputError(str(error)) from None
        model = model.to(device)
        stage, epoch, best_val, bad_epochs, history = 1, 0, float("inf"), 0, []
        optimizer = _optimizer(model, 1, hp)
    generator = torch.Generator()
    train_loader, val_loader = _loader(train_set, hp["batch_size"], generator), _loader(val_set, hp["batch_size"])
    n_text, n_motion = (sum(p.numel() for p in m.parameters()) for m in (model.text, model.motion))
    print(f"MoCLIP: text tower {hp['clip_model']}/{hp['clip_pretrained']} {n_text / 1e6:.2f} M, motion encoder "
          f"{n_motion / 1e6:.2f} M parameters; {len(train_set)} train / {len(val_set)} val samples; device {device}")

    def checkpoint():
        return {"format": "moclip", **moclip_state(model), "mean": torch.from_numpy(train_set.mean),
                "std": torch.from_numpy(train_set.std), "dataset": dataset, "data_root": str(data_root),
                "kind": KINDS[dataset], "stats_sha1": train_set.stats_sha1, "feat_bias": feat_bias,
                "seed": hp["seed"], "stage1_projection": hp.get("stage1_projection", False), "stage": stage,
                "epoch": epoch, "history": history}

    while epoch < hp["epochs"]:
        if stage == 2 and bad_epochs >= hp["patience"]:          # early stopping on the validation loss
            print(f"MoCLIP: early stop, no validation improvement for {bad_epochs} epochs")
            break
        if stage == 1 and epoch >= hp["stage1_epochs"]:          # App. B.0.3: joint fine-tuning at a lower lr
            if keep_stage1:
                save_checkpoint(checkpoint(), out.with_name(out.stem + "_stage1.pt"))
            stage, bad_epochs = 2, 0
            optimizer = _optimizer(model, 2, hp)
        generator.manual_seed(seed * 1000 + epoch)               # epoch-wise order, windows and captions, so
        random.seed(seed * 1000 + epoch)                         # --resume replays the same stream
        model.train()
        losses, start = [], time.time()
        bar = tqdm(train_loader, desc=f"MoCLIP stage {stage} epoch {epoch + 1}", disable=not progress,
                   dynamic_ncols=True, leave=False)
        for batch in bar:
            loss = model(*_batch(batch, device))                 # Eq. (15)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tau=f"{1 / model.scale().item():.3f}")
        if not math.isfinite(np.mean(losses)):
            raise InputError(f"the MoCLIP loss became {np.mean(losses)} in epoch {epoch + 1}; lower --lr (the "
                             f"checkpoints of the earlier epochs are kept)")
        val_loss = _validation_loss(model, val_loader, device, seed)
        epoch += 1
        history.append(dict(epoch=epoch, stage=stage, train_loss=float(np.mean(losses)), val_loss=val_loss,
                            seconds=time.time() - start))
        improved = val_loss < best_val
        best_val, bad_epochs = (val_loss, 0) if improved else (best_val, bad_epochs + 1)
        print(f"MoCLIP stage {stage} epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, validation "
              f"{val_loss:.4f}{' (best)' if improved else ''}, {history[-1]['seconds']:.0f} s")
        if improved:
            save_checkpoint(checkpoint(), out)
        save_checkpoint({**checkpoint(), "optimizer": optimizer.state_dict(), "hparams": hp, "best_val": best_val,
                         "bad_epochs": bad_epochs, "rng": torch.get_rng_state()}, last_path)
    print(f"MoCLIP: best validation loss {best_val:.4f} -> {out}")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval (Table 5's top-k; pools of 32 as App. A.1's R-precision, since Table 5 states no protocol)

def topk_accuracy(similarity, ks=(1, 2, 3)):
    """Square similarity (N, N) with the match on the diagonal -> {k: fraction of rows whose match is in the top k}."""
    # rank = entries at least as similar as the match, other than itself (ties count against)
    rank = (similarity >= similarity.diagonal()[:, None]).sum(1) - 1
    return {k: (rank < k).float().mean().item() for k in ks}


@torch.no_grad()
def retrieval_eval(model, dataset, repeats=20, batch_size=32, seed=0):
    """Top-1/2/3 text->motion and motion->text in shuffled batches (drop last) -> {'t2m_top1': (mean, ci95), ...}."""
    from data import InputError
    model.eval()
    runs = []
    for r in range(repeats):
        random.seed(seed + r)                                    # a fresh random caption (and window) per motion
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + r))
        scores = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            captions, motion, lengths = zip(*(dataset[i] for i in order[start:start + batch_size].tolist()))
            text = F.normalize(model.encode_text(list(captions)), dim=-1)
            motion = torch.as_tensor(np.stack(motion), dtype=torch.float32, device=model.device)
            motion = F.normalize(model.encode_motion(motion, torch.tensor(lengths)), dim=-1)
            sim = text @ motion.T                                # (B, B): text i vs motion j
            t2m, m2t = topk_accuracy(sim), topk_accuracy(sim.T)
            scores.append([t2m[1], t2m[2], t2m[3], m2t[1], m2t[2], m2t[3]])
        if not scores:
            raise InputError(f"the split has {len(dataset)} samples, fewer than one batch of {batch_size}; lower "
                             f"--batch-size")
        runs.append(np.mean(scores, axis=0))
    runs = np.array(runs)                                        # (repeats, 6)
    names = ["t2m_top1", "t2m_top2", "t2m_top3", "m2t_top1", "m2t_top2", "m2t_top3"]
    return {name: (float(runs[:, i].mean()), float(1.96 * runs[:, i].std() / math.sqrt(repeats)))
            for i, name in enumerate(names)}


def format_retrieval(result):
    """The retrieval dict as a small table (rows: direction; columns: top-1/2/3, mean +- 95% CI)."""
    lines = [f"{'':16}{'top-1':>16}{'top-2':>16}{'top-3':>16}"]
    for key, label in (("t2m", "text -> motion"), ("m2t", "motion -> text")):
        cells = [f"{result[f'{key}_top{k}'][0]:.3f} ± {result[f'{key}_top{k}'][1]:.3f}" for k in (1, 2, 3)]
        lines.append(f"{label:16}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# CLI

def get_args(argv=None):
    """The command line, every value checked before any work starts (a bad one exits with the usage line, status 2)."""
    from data import KINDS, SEED, device_name, file_path, float_range, int_range
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None, choices=sorted(KINDS),
                   help="training data (default synthetic, generated on first use); for --eval the default is the "
                        "checkpoint's own dataset")
    p.add_argument("--data-root", default=None, help="dataset folder (default: data/HumanML3D, data/KIT-ML, "
                                                     "data/synthetic)")
    p.add_argument("--out", type=file_path, default=None,
                   help="checkpoint path (default: checkpoints/moclip_<dataset>.pt)")
    p.add_argument("--clip-model", type=clip_model_name, default=None,
                   help="open_clip text tower: a model name (ViT-B-32, the default for humanml3d/kit) or 'small' "
                        "(the default for synthetic)")
    p.add_argument("--clip-pretrained", default=None,
                   help="open_clip weights tag (openai, the default for real data), a weights file, or 'none' "
                        "for random initialisation (needed offline)")
    p.add_argument("--epochs", type=int_range(1), default=None, help="max epochs, both stages (paper preset 300)")
    p.add_argument("--stage1-epochs", type=int_range(0), default=None,
                   help="stage-1 epochs, text tower frozen (paper 5)")
    p.add_argument("--batch-size", type=int_range(2), default=None,
                   help="contrastive batch, and the retrieval pool of --eval (paper 32)")
    p.add_argument("--lr", type=float_range(0, low_open=True), default=None,
                   help="stage-1 AdamW learning rate (paper 1e-4)")
    p.add_argument("--stage2-lr", type=float_range(0, low_open=True), default=None,
                   help="stage-2 learning rate, whole model (paper 1e-5)")
    p.add_argument("--weight-decay", type=float_range(0), default=None, help="AdamW weight decay (1e-4)")
    p.add_argument("--patience", type=int_range(1), default=None, help="early stopping patience in epochs (3)")
    p.add_argument("--synthetic-motions", type=int_range(3), default=None,
                   help="--dataset synthetic: (re)generate with this many motions (default: keep an existing "
                        "dataset, else generate 2000)")
    p.add_argument("--keep-stage1", action="store_true", help="also save <out>_stage1.pt at the end of stage 1")
    p.add_argument("--stage1-projection", action="store_true", default=None,
                   help="also train the text projection and the temperature in stage 1, as the precursor does (App. "
                        "B trains only the MotionEncoder there; see README 'Choices')")
    p.add_argument("--feat-bias", type=float_range(0, low_open=True), default=5.0,
                   help="std divisor of the root and foot-contact features (StableMoFusion); must match train.py's")
    p.add_argument("--resume", action="store_true", help="continue from <out>_last.pt")
    p.add_argument("--device", type=device_name, default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--eval", action="store_true", help="retrieval on the test split (Table 5) instead of training")
    p.add_argument("--checkpoint", default=None, help="checkpoint for --eval (default: the --out path)")
    p.add_argument("--repeats", type=int_range(1), default=20, help="--eval: shuffles to average, for the 95%% CI")
    args = p.parse_args(argv)
    if args.eval and args.resume:
        p.error("--eval evaluates a checkpoint and --resume continues training; pass one of them")
    return args


def evaluate_checkpoint(args):
    """--eval: the Table 5 retrieval of a checkpoint on the test split of its own dataset (or --dataset)."""
    from data import DATA_ROOTS, InputError, prepare_dataset
    path = args.checkpoint or args.out or f"checkpoints/moclip_{args.dataset or 'synthetic'}.pt"
    model = load_moclip(path, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = args.dataset or model.dataset
    if dataset is None:
        raise InputError(f"{path} does not record the dataset it was trained on; pass --dataset and --data-root")
    root = args.data_root or (model.data_root if dataset == model.dataset else DATA_ROOTS[dataset])
    prepare_dataset(dataset, root)                               # synthetic, bandai: built on first use
    test_set = _open_dataset(dataset, root, "test", model.feat_bias or 5.0)
    if not np.allclose(test_set.mean, model.mean.numpy()) or not np.allclose(test_set.std, model.std.numpy()):
        raise InputError(f"{root} normalises motions differently from the data {path} was trained on "
                         f"({model.dataset} at {model.data_root}); evaluate on that data, or pass its --data-root")
    batch_size = args.batch_size or 32
    result = retrieval_eval(model, test_set, repeats=args.repeats, batch_size=batch_size, seed=args.seed)
    print(f"MoCLIP retrieval, {dataset} test split ({len(test_set)} samples), batches of {batch_size}, "
          f"{args.repeats} repeats, mean ± 95% CI (Table 5's top-k)")
    print(format_retrieval(result))


def main(argv=None):
    from data import user_errors
    args = get_args(argv)
    with user_errors(WeightsUnavailable):          # our messages, not tracebacks; a bug keeps its traceback
        if args.eval:
            return evaluate_checkpoint(args)
        return train_moclip(args.dataset or "synthetic", args.data_root, args.out, args.clip_model,
                            args.clip_pretrained, args.epochs, args.stage1_epochs, args.batch_size, args.lr,
                            args.stage2_lr, args.weight_decay, args.patience, args.device, args.seed, args.resume,
                            args.keep_stage1, args.synthetic_motions, feat_bias=args.feat_bias,
                            stage1_projection=args.stage1_projection)


if __name__ == "__main__":
    main()
