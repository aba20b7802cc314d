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
import re
from pathlib import Path

import numpy as np
import torch

from data import (MAX_MOTION_LENGTH, SEED, SKELETONS, InputError, device_name, features_to_joints, float_range,
                  folder_path, int_range, line_error, load_checkpoint, load_weights, read_text_lines,
                  render_animation, render_filmstrip, user_errors)
from diffusion import alphas_cumprod, ddpm_sample, dpm_solver_pp, guided_x0, linear_betas
from moclip import moclip_from_state
from unet import UNet

# The paper says "DPM-Solver, 10 steps"; the default is the backbone's SDE variant with Karras steps.
# Paper is silent here; see README "Choices"
SAMPLERS = ["sde-dpmsolver++", "dpmsolver++", "ddpm"]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
                          seed=0, precision="fp32"):
        """texts list[str], lengths list[int] -> list of denormalised features (length_i, D).

        precision: "fp32", or "bf16" / "fp16" autocast for the networks on CUDA (the solver state stays fp32)."""
        _check_request(texts, lengths)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        autocast = torch.autocast(self.device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
        generator = torch.Generator(self.device).manual_seed(seed)
        T = max(lengths)                        # the backbone generates at the batch's longest length, then crops
        x_T = torch.randn(len(texts), T, self.mean.shape[0], generator=generator, device=self.device)
        with autocast:                          # the text tower and the UNet's text adapter: once per batch
            text_latent = self.unet.encode_text(self.text_encoder.encode_text_tokens(list(texts)))   # (B, 77, W')
        text_latent2 = torch.cat([text_latent, text_latent])                      # cond half, uncond half

        def denoise(x, t, cond_mask):
            with autocast:
                return self.unet(x, t, cond_mask=cond_mask, text_latent=text_latent2[: x.shape[0]])[0].float()

        def model_fn(x_t, t):
            return guided_x0(denoise, x_t, t, guidance)                           # Eq. (3), one 2B forward

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

    def write(self, texts, lengths, folder, num_samples=1, bvh_names=None, bvh_scale=1.0, **kwargs):
        """Generate and write features, joints, a GIF and a filmstrip per sample, and with bvh_names ("smpl" or
        "mixamo") a BVH file for animation tools (bvh.write_bvh; bvh_scale 100 = centimetres); returns the paths."""
        if bvh_names is not None and self.kind != "t2m":
            raise InputError(f"BVH export writes the HumanML3D (t2m) rig; this checkpoint's skeleton is {self.kind!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        seed = kwargs.pop("seed", 0)
        written = []
        for r in range(num_samples):
            all_features = self.generate_features(texts, lengths, seed=seed + r, **kwargs)
            for i, (text, features) in enumerate(zip(texts, all_features)):
                name = f"{i:02d}_{_slug(text)}_{r}"
                joints = features_to_joints(features, self.kind)
                np.save(folder / f"{name}.npy", features)
                np.save(folder / f"{name}_joints.npy", joints)
                render_animation(joints, folder / f"{name}.gif", kind=self.kind, title=text)
                render_filmstrip(joints, folder / f"{name}.png", kind=self.kind, title=text)
                if bvh_names is not None:
                    from bvh import write_bvh
                    write_bvh(folder / f"{name}.bvh", joints, bvh_names, bvh_scale)
                written.append(folder / name)
        return written


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
    src.add_argument("--text", help="one description, e.g. \"a person jumps\"")
    src.add_argument("--text-file", help="one `text#frames` per line")
    p.add_argument("--seconds", type=float_range(0, low_open=True), default=None,
                   help="duration for --text (or lines without #frames); default 6 s, at most 196 frames (9.8 s)")
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
                   help="torch.compile the UNet: the first batch compiles (about a minute on a CPU), so it pays "
                        "for many samples or a long --text-file")
    p.add_argument("--out", type=folder_path, default="samples", help="output folder")
    p.add_argument("--device", type=device_name, default=None, help="cuda or cpu (default: cuda if available)")
    args = p.parse_args(argv)
    if args.text is not None and not args.text.strip():
        p.error("--text is empty: describe the motion, e.g. --text \"a person jumps\"")
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
        if args.seconds is not None and not 1 <= default_frames <= MAX_MOTION_LENGTH:   # the frame rate is the model's
            raise InputError(f"--seconds {args.seconds:g} is {default_frames} frames at {fps:g} fps; the model "
                             f"generates 1..{MAX_MOTION_LENGTH} frames ({MAX_MOTION_LENGTH / fps:.1f} s at most)")
        if args.text is not None:
            texts, lengths = [args.text], [default_frames]
        else:
            texts, lengths = read_prompts(args.text_file)
            lengths = [n if n is not None else default_frames for n in lengths]
        _check_request(texts, lengths)
        written = model.write(texts, lengths, args.out, num_samples=args.num_samples, seed=args.seed,
                              bvh_names=args.bvh_names if args.bvh else None, bvh_scale=args.bvh_scale,
                              guidance=args.guidance, steps=args.steps, sampler=args.sampler,
                              karras=not args.no_karras, precision=args.precision)
        for name in written:
            print(f"wrote {name}.npy (features), {name.name}_joints.npy, {name.name}.gif, {name.name}.png"
                  + (f", {name.name}.bvh" if args.bvh else ""))
        return written


if __name__ == "__main__":
    main()
