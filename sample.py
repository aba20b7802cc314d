"""
Text to motion with a trained LUMA checkpoint: DPM-Solver++ with classifier-free guidance (paper Sec. 3.1, 4).

    python sample.py --checkpoint runs/luma_synthetic/final.pt --text "a person jumps" --seconds 6
    python sample.py --checkpoint CKPT --text-file prompts.txt        # one `text#frames` per line

For each sample it writes the denormalised features (<name>.npy, (T, D)), the joints (<name>_joints.npy, (T, J, 3)),
an animation (<name>.gif) and a filmstrip of key frames (<name>.png), and prints where.

Python API:
    model = load_model("final.pt")
    joints = model.generate(["a person jumps"], [120])       # list of (T, J, 3) arrays

Sampling never runs the anchor heads (they act in training only). The guided x0 prediction of Eq. (3) is one batched
forward of 2B samples; the sampler is diffusion.dpm_solver_pp (10 steps by default, Sec. 4).
"""

import argparse
import contextlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from data import (MAX_MOTION_LENGTH, SEED, SKELETONS, InputError, device_name, features_to_joints, float_range,
                  folder_path, int_range, joint_feature_dims, joints_to_features, line_error, load_checkpoint,
                  load_weights, read_array, read_text_lines, render_animation, render_filmstrip, user_errors,
                  write_atomic)
from diffusion import alphas_cumprod, ddpm_sample, dpm_solver_pp, guided_x0, inpainting, linear_betas
from moclip import moclip_from_state
from unet import UNet

# The paper says "DPM-Solver, 10 steps"; the default is the backbone's SDE variant with Karras steps.
# Paper is silent here; see README "Choices"
SAMPLERS = ["sde-dpmsolver++", "dpmsolver++", "ddpm"]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Guided batches of at most this many rows (2 = one text) take PyTorch's native convolution on a CPU, not oneDNN's:
# see generate_features.
NATIVE_CONVOLUTION_MAX_ROWS = 2


def onednn_off():
    """A context in which CPU convolutions take PyTorch's native kernels instead of oneDNN's; oneDNN's other
    settings stay as they are (torch.backends.mkldnn.flags would otherwise reset them to its defaults)."""
    mkldnn = torch.backends.mkldnn
    return mkldnn.flags(enabled=False, deterministic=mkldnn.deterministic, allow_tf32=mkldnn.allow_tf32,
                        fp32_precision=mkldnn.fp32_precision)


class LUMASampler:
    """A trained denoiser with its text tower and normalisation: texts + lengths -> motions."""

    def __init__(self, unet, text_encoder, mean, std, kind="t2m"):
        self.unet, self.text_encoder, self.kind = unet.eval(), text_encoder.eval(), kind
        self.device = next(unet.parameters()).device
        self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32, device=self.device)
        self.std = torch.as_tensor(np.asarray(std), dtype=torch.float32, device=self.device)
        self.alphas_cumprod = alphas_cumprod(linear_betas(1000)).to(self.device)   # Eq. (1)

    @torch.no_grad()
    def generate_features(self, texts, lengths, guidance=2.5, steps=10, sampler="sde-dpmsolver++", karras=True,
                          seed=0, precision="fp32", known=None, mask=None):
        """texts list[str], lengths list[int] -> list of denormalised features (length_i, D).

        precision: "fp32", or "bf16" / "fp16" autocast for the networks on CUDA (the solver state stays fp32).
        known (B, T, D) denormalised features and mask (T, D) or (B, T, D) in [0, 1], T = max(lengths): keep the
        known part where mask is 1 and generate the rest (diffusion.inpainting; editing and long motions)."""
        _check_request(texts, lengths)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        autocast = torch.autocast(self.device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
        generator = torch.Generator(self.device).manual_seed(seed)
        T = max(lengths)                        # the backbone generates at the batch's longest length, then crops
        x_T = torch.randn(len(texts), T, self.mean.shape[0], generator=generator, device=self.device)
        with autocast:     # the text tower, the UNet's text adapter and its cross-attention contexts: once per call
            text_latent = self.unet.encode_text(self.text_encoder.encode_text_tokens(list(texts)))   # (B, 77, W')
            text_context = self.unet.text_context(text_latent)     # the conditional half; the other half has no text

        # One text on a CPU: the guided forward has 2 rows, and there PyTorch's own convolution kernel beats oneDNN's
        # (oneDNN pays a fixed ~46 us per call, which at 2 rows and 64 channels is most of a convolution): the whole
        # call ran 15-25% faster with oneDNN off, on AVX-512 and AVX2 alike. From 2 texts (4 rows) oneDNN is even or
        # ahead (at 4 texts, far ahead), so it stays on there, and under torch.compile, which picks its own kernels.
        # Measured 2026-12-05, 2-core AMD EPYC (Zen 5), PyTorch 2.14.1; README "The laptop path, fifth round".
        compiled = hasattr(self.unet, "_orig_mod")                   # torch.compile's wrapper (load_model --compile)
        native = (self.device.type == "cpu" and precision == "fp32" and not compiled
                  and 2 * len(texts) <= NATIVE_CONVOLUTION_MAX_ROWS)

        def denoise(x, t, cond_mask):
            with autocast, onednn_off() if native else contextlib.nullcontext():
                return self.unet(x, t, cond_mask=cond_mask, text_context=text_context)[0].float()

        def model_fn(x_t, t):
            return guided_x0(denoise, x_t, t, guidance)                           # Eq. (3), one 2B forward

        if known is not None:
            known = (torch.as_tensor(np.asarray(known), dtype=torch.float32, device=self.device) - self.mean) / self.std
            mask = torch.as_tensor(np.asarray(mask), dtype=torch.float32, device=self.device)
            if known.shape != x_T.shape or mask.shape[-2:] != x_T.shape[-2:]:
                raise ValueError(f"known {tuple(known.shape)} and mask {tuple(mask.shape)} must match the batch "
                                 f"{tuple(x_T.shape)}")
            model_fn = inpainting(model_fn, known, mask, self.alphas_cumprod, generator)

        if sampler == "ddpm":
            x0 = ddpm_sample(model_fn, x_T, self.alphas_cumprod, generator=generator)
        else:
            x0 = dpm_solver_pp(model_fn, x_T, self.alphas_cumprod, steps=steps, order=2, karras=karras,
                               sde=sampler == "sde-dpmsolver++", generator=generator)
        features = x0 * self.std + self.mean                                      # denormalise
        if not torch.isfinite(features).all():                 # e.g. a checkpoint whose weights hold NaN
            raise InputError("the model produced NaN or infinite motion; its checkpoint is damaged (NaN weights), or "
                             "the guidance is extreme")
        return [f[:n].float().cpu().numpy() for f, n in zip(features, lengths)]

    def generate(self, texts, lengths, **kwargs):
        """texts list[str], lengths list[int] (frames) -> list of joints (length_i, J, 3)."""
        return [features_to_joints(f, self.kind) for f in self.generate_features(texts, lengths, **kwargs)]

    def generate_long(self, texts, total, overlap=20, known_start=None, seed=0, **kwargs):
        """One motion of `total` frames (any length) -> (features (total, D) denormalised, seams list[int]).

        texts: one caption, or one per segment (the motion split into equal segments, in order). It is generated in
        windows of MAX_MOTION_LENGTH frames; each window after the first starts `overlap` frames (or more, for the
        last) before the motion so far ends, and keeps those frames through inpainting: fully for the first half of
        the overlap, then with a weight falling linearly to 0, a cross-fade into the new window. known_start
        (K, D): frames the motion must begin with (--edit continue). The features are relative (root velocities,
        heading rate, poses in the root frame), so the windows' features concatenate and the recovery integrates
        the root trajectory and heading across them. seams: the first frame after each kept part."""
        windows = plan_windows(total, overlap)
        D = self.mean.shape[0]
        motion = np.zeros((total, D), np.float32)
        done = 0                                               # frames [0, done) are known
        if known_start is not None:
            done = len(known_start)
            motion[:done] = known_start
        seams = []
        for k, (start, length) in enumerate(windows):
            kept = max(0, min(done, start + length) - start)     # frames of this window already in the motion
            new_middle = start + (kept + length) // 2            # the text of the segment the new frames centre on
            text = texts[min(len(texts) - 1, new_middle * len(texts) // total)]
            mask = np.zeros((length, D), np.float32)
            blend = overlap // 2 if k > 0 else 0                 # the first window's known start is kept whole
            mask[:kept] = 1.0
            if blend and kept > blend:
                mask[kept - blend:kept] = ((blend - np.arange(blend)) / (blend + 1))[:, None]   # 1 -> 0
            known = motion[None, start:start + length] if kept else None
            window = self.generate_features([text], [length], seed=seed + k, known=known,
                                            mask=mask if kept else None, **kwargs)[0]
            motion[start:start + length] = window
            if kept:
                seams.append(start + kept)
            done = start + length
        return motion, seams

    def save(self, features, folder, name, title, bvh_names=None, bvh_scale=1.0):
        """Write features (name.npy), joints (name_joints.npy), a GIF, a filmstrip and with bvh_names ("smpl" or
        "mixamo") a BVH file for animation tools (bvh.write_bvh; bvh_scale 100 = centimetres) -> joints."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        joints = features_to_joints(features, self.kind)
        np.save(folder / f"{name}.npy", features)
        np.save(folder / f"{name}_joints.npy", joints)
        render_animation(joints, folder / f"{name}.gif", kind=self.kind, title=title)
        render_filmstrip(joints, folder / f"{name}.png", kind=self.kind, title=title,
                         num_frames=min(12, max(6, len(joints) // 50)))
        if bvh_names is not None:
            from bvh import write_bvh
            write_bvh(folder / f"{name}.bvh", joints, bvh_names, bvh_scale)
        return joints

    def write(self, texts, lengths, folder, num_samples=1, bvh_names=None, bvh_scale=1.0, **kwargs):
        """Generate and write features, joints, a GIF and a filmstrip per sample (and a BVH, see save); returns the
        paths without suffix."""
        self._check_bvh(bvh_names)
        seed = kwargs.pop("seed", 0)
        written = []
        for r in range(num_samples):
            all_features = self.generate_features(texts, lengths, seed=seed + r, **kwargs)
            for i, (text, features) in enumerate(zip(texts, all_features)):
                name = f"{i:02d}_{_slug(text)}_{r}"
                self.save(features, folder, name, text, bvh_names, bvh_scale)
                written.append(Path(folder) / name)
        return written

    def _check_bvh(self, bvh_names):
        if bvh_names is not None and self.kind != "t2m":
            raise InputError(f"BVH export writes the HumanML3D (t2m) rig; this checkpoint's skeleton is {self.kind!r}")


LUMA_WRITER = "train.py (runs/<run>/final.pt)"


def load_model(path, device=None, compile=False):
    """A LUMASampler from a checkpoint written by train.py (final.pt or checkpoint.pt); needs nothing else.
    compile: torch.compile the UNet (the first call compiles, about a minute on a CPU; later calls are faster)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = load_checkpoint(path, "a LUMA checkpoint", LUMA_WRITER, fmt="luma",
                            keys=("unet_config", "unet", "text_encoder", "mean", "std", "kind"))
    try:
        unet = UNet(**state["unet_config"])
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: its UNet configuration does not build a model ({error}); the file is damaged or "
                         f"was written by another version of train.py") from None
    load_weights(unet, state["unet"], path, "UNet")
    text_encoder = moclip_from_state(state["text_encoder"], source=path).to(device)
    sampler = LUMASampler(unet.to(device), text_encoder, state["mean"].numpy(), state["std"].numpy(), state["kind"])
    sampler.data_root = (state.get("config") or {}).get("data_root")      # where a clip id for --motion is looked up
    if compile:
        sampler.unet = torch.compile(sampler.unet)           # encode_text and the config pass through unchanged
    return sampler


def _check_request(texts, lengths):
    if len(texts) == 0 or len(texts) != len(lengths):
        raise InputError(f"need one length per text, got {len(texts)} texts and {len(lengths)} lengths")
    for text, n in zip(texts, lengths):
        if not isinstance(text, str) or not text.strip():
            raise InputError("empty text: describe the motion, e.g. --text \"a person jumps\"")
        if not 1 <= n <= MAX_MOTION_LENGTH:
            raise InputError(f"length {n} frames for {text!r} is outside 1..{MAX_MOTION_LENGTH}: the model was "
                             f"trained on windows of at most {MAX_MOTION_LENGTH} frames (9.8 s at 20 fps)")


# ---------------------------------------------------------------------------------------------------------------------
# Editing and long motions: the same sampler, driven with a known part (diffusion.inpainting)

EDITS = ["in-between", "continue", "upper-body"]
# --edit upper-body keeps these t2m joints (their feature dimensions: data.joint_feature_dims) and regenerates the
# spine, neck, head, collars, arms and hands from the text: pelvis (the root: heading, velocity, height), hips,
# knees, ankles, feet; with the feet go the foot contacts.
LOWER_BODY_JOINTS = (0, 1, 2, 4, 5, 7, 8, 10, 11)
MAX_WINDOWS = 64                  # a long motion has at most this many windows (about 9 minutes at 20 fps)


def plan_windows(total, overlap, window=MAX_MOTION_LENGTH):
    """(start, length) of the windows a motion of `total` frames is generated in: one window if it fits, else full
    windows starting `window - overlap` frames apart, the last ending at `total` (overlapping by `overlap` or more)."""
    if total <= window:
        return [(0, total)]
    step = window - overlap
    return [(start, window) for start in list(range(0, total - window, step)) + [total - window]]


def max_long_frames(overlap):
    """The longest motion MAX_WINDOWS windows cover."""
    return MAX_MOTION_LENGTH + (MAX_WINDOWS - 1) * (MAX_MOTION_LENGTH - overlap)


KNOWN_FORMAT = ("a features .npy (T, D) as sample.py writes, a joints .npy (T, J, 3) such as a sample's _joints.npy, "
                "a .bvh file (with --joint-map), or a clip id of the checkpoint's dataset (new_joint_vecs/<id>.npy)")


def read_known_motion(source, kind, data_root=None, joint_map="bandai"):
    """The motion an edit keeps part of -> denormalised features (T, D) float32, from KNOWN_FORMAT's sources."""
    skeleton = SKELETONS[kind]
    D, J = skeleton.feature_dim, skeleton.num_joints
    path = Path(source)
    if path.suffix.lower() == ".bvh":
        from bvh import bvh_to_joints, joint_map_for, read_bvh
        joints, _ = bvh_to_joints(read_bvh(path), joint_map_for(joint_map, kind), kind)
        return joints_to_features(joints, kind).astype(np.float32)
    if path.suffix.lower() != ".npy":
        path = Path(data_root or ".") / "new_joint_vecs" / f"{source}.npy"
        if not path.is_file():
            raise InputError(f"--motion {source}: not a .npy or .bvh file, and no clip {source!r} in "
                             f"{Path(data_root or '.') / 'new_joint_vecs'}; pass {KNOWN_FORMAT} (--data-root "
                             f"names the dataset folder)")
    array = read_array(path, "known motion", KNOWN_FORMAT)
    if array.ndim == 3 and array.shape[1:] == (J, 3):
        features = joints_to_features(array.astype(np.float64), kind)
    elif array.ndim == 2 and array.shape[1] == D:
        features = array
    else:
        raise InputError(f"known motion {path} has shape {array.shape}; this {kind} checkpoint needs features "
                         f"(T, {D}) or joints (T, {J}, 3) (263 / 22 for HumanML3D, 251 / 21 for KIT-ML)")
    if len(features) < 2 or not np.isfinite(features).all():
        raise InputError(f"known motion {path} has {len(features)} frames or non-finite values; expected a motion "
                         f"of at least 2 frames")
    return np.asarray(features, np.float32)


def edit_motion(model, edit, text, known, total=None, keep_start=1.0, keep_end=1.0, overlap=20, seed=0,
                **kwargs):
    """One edit of a known motion (features (T, D), denormalised) -> (features, seams): the first frames generated
    after (and before) each kept part, for transition_measures.
      in-between: keep the first keep_start and the last keep_end seconds, generate the middle (length T).
      continue:   keep the first keep_start seconds, generate the rest up to `total` frames (any length).
      upper-body: keep the lower body's feature dimensions (LOWER_BODY_JOINTS) throughout (length T)."""
    fps = SKELETONS[model.kind].fps
    T, D = known.shape
    head, tail = round(keep_start * fps), round(keep_end * fps)
    if edit in ("in-between", "upper-body") and T > MAX_MOTION_LENGTH:
        raise InputError(f"--edit {edit} regenerates within one window of at most {MAX_MOTION_LENGTH} frames; the "
                         f"known motion has {T} ({T / fps:.1f} s): trim it")
    if edit == "in-between":
        if head + tail >= T:
            raise InputError(f"--keep-start {keep_start:g} s + --keep-end {keep_end:g} s is {head + tail} frames, "
                             f"but the known motion has only {T}: nothing is left to generate; keep less")
        mask = np.zeros((T, D), np.float32)
        mask[:head], mask[T - tail:] = 1.0, 1.0
        features = model.generate_features([text], [T], seed=seed, known=known[None], mask=mask, **kwargs)[0]
        return features, [head, T - tail]
    if edit == "upper-body":
        if model.kind != "t2m":
            raise InputError(f"--edit upper-body knows the HumanML3D (t2m) joints; this checkpoint is {model.kind!r}")
        mask = np.zeros((T, D), np.float32)
        mask[:, joint_feature_dims(LOWER_BODY_JOINTS, "t2m")] = 1.0
        return model.generate_features([text], [T], seed=seed, known=known[None], mask=mask, **kwargs)[0], []
    if head > T or head < 1:
        raise InputError(f"--keep-start {keep_start:g} s is {head} frames; the known motion has {T}: keep 1..{T}")
    if total <= head:
        raise InputError(f"--seconds gives {total} frames, no more than the {head} kept: nothing to continue")
    return model.generate_long([text], total, overlap, known_start=known[:head], seed=seed, **kwargs)


def _slug(text, width=40):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:width] or "sample"


PROMPT_FORMAT = f"one prompt per line, `text` or `text#frames` with frames an integer in 1..{MAX_MOTION_LENGTH}"


def read_prompts(path):
    """Lines `text#frames` (frames optional) -> (texts, lengths or None per line); a bad line is an InputError."""
    texts, lengths = [], []
    for number, line in read_text_lines(path, "prompt file", PROMPT_FORMAT):
        text, _, frames = line.partition("#")
        frames = frames.strip()
        if not text.strip():
            raise line_error(path, number, line, "no text before the '#'", PROMPT_FORMAT)
        if frames and not (frames.isdigit() and 1 <= int(frames) <= MAX_MOTION_LENGTH):
            raise line_error(path, number, line, f"the frame count {frames!r} is not an integer in "
                             f"1..{MAX_MOTION_LENGTH}", PROMPT_FORMAT)
        texts.append(text.strip())
        lengths.append(int(frames) if frames else None)
    if not texts:
        raise InputError(f"prompt file {path} holds no prompts; expected {PROMPT_FORMAT}")
    return texts, lengths


def get_args(argv=None):
    """The command line, every value checked before any work starts (a bad one exits with the usage line, status 2)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="final.pt written by train.py")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append",
                     help="a description, e.g. \"a person jumps\"; given several times, one motion made of "
                          "segments in that order (with --seconds the whole length)")
    src.add_argument("--text-file", help="one `text#frames` per line")
    p.add_argument("--seconds", type=float_range(0, low_open=True), default=None,
                   help="duration for --text (or lines without #frames); default 6 s. Longer than 9.8 s (196 "
                        "frames, one window) is generated in overlapping windows, up to 64 windows")
    p.add_argument("--overlap", type=int_range(2, 98), default=20,
                   help="long motions: frames each window shares with the previous one (half kept, half blended)")
    g = p.add_argument_group("editing a known motion (inpainting in the sampler; no retraining)")
    g.add_argument("--edit", choices=EDITS, default=None,
                   help="in-between: keep the start and end, generate the middle; continue: keep the start, "
                        "generate the rest (--seconds in all); upper-body: keep legs and root, regenerate the rest")
    g.add_argument("--motion", default=None, help=f"the known motion: {KNOWN_FORMAT}")
    g.add_argument("--keep-start", type=float_range(0), default=1.0, help="seconds kept at the start (default 1)")
    g.add_argument("--keep-end", type=float_range(0), default=1.0, help="in-between: seconds kept at the end (1)")
    g.add_argument("--data-root", default=None,
                   help="dataset folder for a clip id in --motion (default: the checkpoint's training data)")
    g.add_argument("--joint-map", default="bandai",
                   help="a BVH --motion's joint map: bandai, cmu, cmu-mb or a JSON file (as bvh.py import)")
    p.add_argument("--num-samples", type=int_range(1, 1000), default=1,
                   help="samples per text, each with its own seed")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--guidance", type=float_range(0), default=2.5,
                   help="classifier-free guidance scale omega >= 0 (Eq. 3; paper 2.5)")
    p.add_argument("--steps", type=int_range(1, 999), default=10, help="sampler steps, 1..999 (paper 10)")
    p.add_argument("--sampler", default="sde-dpmsolver++", choices=SAMPLERS,
                   help="DPM-Solver++ 2M stochastic (the backbone's) or deterministic; ddpm = 1000-step reference")
    p.add_argument("--no-karras", action="store_true", help="uniform instead of Karras time steps")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="bf16 / fp16: autocast the networks on a CUDA GPU (faster; the solver state stays fp32)")
    p.add_argument("--bvh", action="store_true", help="also write <name>.bvh beside each sample (Blender, Unity, ...)")
    p.add_argument("--bvh-names", choices=["smpl", "mixamo"], default="smpl",
                   help="the BVH's joint names: SMPL's (pelvis, left_hip, ...) or Mixamo's (Hips, LeftUpLeg, ...)")
    p.add_argument("--bvh-scale", type=float_range(0, low_open=True), default=1.0,
                   help="BVH length unit: 1 = metres, 100 = centimetres")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet: the first batch compiles (about a minute on a CPU); on 2 CPU "
                        "cores it then paid 1.2-1.6x at batch 1 and nothing at batch 32 (README, fifth round)")
    p.add_argument("--out", type=folder_path, default="samples", help="output folder")
    p.add_argument("--device", type=device_name, default=None, help="cuda or cpu (default: cuda if available)")
    args = p.parse_args(argv)
    if args.text is not None and not all(text.strip() for text in args.text):
        p.error("--text is empty: describe the motion, e.g. --text \"a person jumps\"")
    if (args.edit is None) != (args.motion is None):
        p.error("--edit and --motion go together: --edit in-between|continue|upper-body --motion <known motion>")
    if args.edit is not None and (args.text is None or len(args.text) != 1):
        p.error(f"--edit {args.edit} takes one --text describing the generated part")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.precision != "fp32" and not args.device.startswith("cuda"):
        p.error(f"--precision {args.precision} autocasts on a CUDA GPU; on a CPU use --precision fp32")
    return args


def main(argv=None):
    args = get_args(argv)                          # usage errors: the usage line and exit status 2, before any work
    from bvh import BVHError
    with user_errors(BVHError):                    # expected errors: one paragraph, exit status 1; bugs: a traceback
        model = load_model(args.checkpoint, args.device, compile=args.compile)
        fps = SKELETONS[model.kind].fps
        seconds = 6.0 if args.seconds is None else args.seconds
        default_frames = round(seconds * fps)
        longest = max_long_frames(args.overlap) if args.text is not None else MAX_MOTION_LENGTH
        if args.seconds is not None and not 1 <= default_frames <= longest:          # the frame rate is the model's
            windows = "" if args.text is None else f" in at most {MAX_WINDOWS} windows"
            raise InputError(f"--seconds {args.seconds:g} is {default_frames} frames at {fps:g} fps; the model "
                             f"generates 1..{longest} frames ({longest / fps:.1f} s at most){windows}")
        sampling = dict(guidance=args.guidance, steps=args.steps, sampler=args.sampler, karras=not args.no_karras,
                        precision=args.precision)
        bvh_names = args.bvh_names if args.bvh else None
        model._check_bvh(bvh_names)
        if args.edit is not None or default_frames > MAX_MOTION_LENGTH or len(args.text or []) > 1:
            return write_long_or_edit(model, args, default_frames, bvh_names, sampling)
        if args.text is not None:
            texts, lengths = args.text, [default_frames]
        else:
            texts, lengths = read_prompts(args.text_file)
            lengths = [n if n is not None else default_frames for n in lengths]
        _check_request(texts, lengths)
        written = model.write(texts, lengths, args.out, num_samples=args.num_samples, seed=args.seed,
                              bvh_names=bvh_names, bvh_scale=args.bvh_scale, **sampling)
        for name in written:
            print(f"wrote {name}.npy (features), {name.name}_joints.npy, {name.name}.gif, {name.name}.png"
                  + (f", {name.name}.bvh" if args.bvh else ""))
        return written


def write_long_or_edit(model, args, frames, bvh_names, sampling):
    """--edit, or a motion longer than one window or made of several texts: one motion per sample, written with
    its transitions measured (<name>_transitions.json: the seams against the rest, and foot skating)."""
    from evaluate import transition_measures
    texts = args.text
    known = None
    if args.edit is not None:
        known = read_known_motion(args.motion, model.kind, args.data_root or model.data_root, args.joint_map)
    written = []
    for r in range(args.num_samples):
        seed = args.seed + 1000 * r
        if args.edit is not None:
            features, seams = edit_motion(model, args.edit, texts[0], known, frames, args.keep_start,
                                          args.keep_end, args.overlap, seed=seed, **sampling)
            name, title = f"{args.edit}_{_slug(texts[0])}_{r}", f"{args.edit}: {texts[0]}"
        else:
            features, seams = model.generate_long(texts, frames, args.overlap, seed=seed, **sampling)
            name, title = f"long_{_slug(' then '.join(texts))}_{r}", " / ".join(texts)
        joints = model.save(features, args.out, name, title, bvh_names, args.bvh_scale)
        measures = transition_measures(joints, seams, model.kind)
        write_atomic(Path(args.out) / f"{name}_transitions.json",
                     lambda f: f.write(json.dumps({"seams": seams, **measures}, indent=1).encode()))
        print(f"wrote {Path(args.out) / name}.npy (features), {name}_joints.npy, {name}.gif, {name}.png, "
              f"{name}_transitions.json" + (f", {name}.bvh" if bvh_names else "")
              + f"; {len(joints) / SKELETONS[model.kind].fps:.1f} s, seams at frames {seams}: "
              + format_transitions(measures))
        written.append(Path(args.out) / name)
    return written


def format_transitions(measures):
    """The transition measures in one line."""
    seam = ("" if measures["seam_acceleration"] is None else
            f"joint acceleration at the seams {measures['seam_acceleration']:.2f} m/s^2 against "
            f"{measures['inside_acceleration']:.2f} elsewhere, ")
    return seam + (f"foot skating {100 * measures['foot_skate']:.1f} cm/s over {measures['contact_frames']} "
                   f"contact frames")


if __name__ == "__main__":
    main()
