"""
Benchmark LUMA: the training step and the sampler, in every precision x eager / compiled, in one run.

    python bench.py                      # CUDA GPU: paper configuration, batch 64, 196 frames, random data
    python bench.py --cpu                # the same measurement on a CPU with the small preset
    python bench.py --modes bf16-compiled --what train --steps 50

Training is the full LUMA step of train.py (train.train_step): the frozen text tower and MoCLIP motion encoder, the
UNet, both anchors, the losses, backward, gradient clipping, fused AdamW and the EMA. Sampling is sample.py's
DPM-Solver++ with 10 steps and classifier-free guidance (one 2B forward per step), at batch 1 and 32.

For each mode it prints the mean milliseconds per step (per sampling call), samples per second, the achieved TFLOP/s and model
FLOP utilisation (FLOPs counted once per configuration by torch.utils.flop_counter, divided by the GPU's dense peak
for that precision), peak memory, and the ratio to the anchor figures: the backbone's public UNet measured on the
same kind of GPU (H100; the table in the README's Performance section). Results also go to --out as JSON.

Modes: fp32 (true fp32: TF32 off), tf32 (fp32 tensors, TF32 matrix units), bf16 (autocast); -eager or -compiled
(torch.compile of the UNet + anchors for training, of the UNet for sampling).
"""

import argparse
import copy
import json
import platform
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import train
from data import float_range, int_range, write_atomic
from diffusion import alphas_cumprod, linear_betas
from moclip import PRESETS as MOCLIP_PRESETS, MoCLIP
from sample import LUMASampler

MODES = [f"{precision}-{kind}" for kind in ("eager", "compiled") for precision in ("fp32", "tf32", "bf16")]
MOTION_DIM, FRAMES = 263, 196
CAPTIONS = ["a person walks forward and then turns around", "someone jumps up twice",
            "a man waves with his right hand while standing still", "a person squats down, then stands up and kicks"]

# The backbone's public UNet on the lent H100, paper configuration, batch 64, 196 frames, random data (ms).
# Training in fp32 is its default; TF32 and bf16 autocast measured the same. Sampling: 10 steps + guidance, fp16.
ANCHOR_TRAIN_MS = {"fp32-eager": 862.0, "tf32-eager": 135.0, "bf16-eager": 135.0, "bf16-compiled": 88.0}
ANCHOR_SAMPLE_MS = {1: 196.0, 32: 247.0}
TARGET_TRAIN_MS, TARGET_SAMPLE_MS = 35.0, {1: 20.0, 32: 100.0}

# Dense peak TFLOP/s per precision (vendor datasheets, SXM parts) for the MFU column.
PEAK_TFLOPS = {"H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
               "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
               "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on the CPU with the small preset (modes fp32-eager and "
                                                      "fp32-compiled unless --modes says otherwise)")
    p.add_argument("--preset", choices=list(train.PRESETS), default=None, help="default: paper on CUDA, small on CPU")
    p.add_argument("--modes", nargs="+", default=None, choices=MODES, help=f"default: all of {MODES} on CUDA")
    p.add_argument("--what", nargs="+", default=["train", "sample"], choices=["train", "sample"])
    p.add_argument("--batch-size", type=int_range(1), default=None,
                   help="training batch (default: the preset's, paper 64)")
    p.add_argument("--sample-batches", type=int_range(1), nargs="+", default=[1, 32], help="sampling batch sizes")
    p.add_argument("--steps", type=int_range(1), default=None,
                   help="timed steps per mode (default 30 on CUDA, 5 on a CPU)")
    p.add_argument("--warmup", type=int_range(0), default=None,
                   help="untimed steps first (default 10 on CUDA, 2 on a CPU; compiled modes compile here)")
    p.add_argument("--peak-tflops", type=float_range(0, low_open=True), default=None,
                   help="the device's dense peak for the MFU column when it is not a known GPU (e.g. a CPU's)")
    p.add_argument("--out", default="runs/bench.json", help="JSON with every measured row")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA GPU here: pass --cpu to run the same measurement on the CPU with the small preset")
    args.device = torch.device("cpu" if args.cpu else "cuda")
    args.preset = args.preset or ("small" if args.cpu else "paper")
    args.modes = args.modes or (["fp32-eager", "fp32-compiled"] if args.cpu else MODES)
    if args.cpu and any(not m.startswith("fp32") for m in args.modes):
        p.error("on a CPU only fp32-eager and fp32-compiled apply (TF32 and bf16 autocast are GPU modes here)")
    args.steps = args.steps or (5 if args.cpu else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.cpu else 10)
    return args


def set_precision(mode):
    """fp32 turns TF32 off (true fp32), every other mode allows it; bf16 adds autocast where it runs."""
    precision = mode.split("-")[0]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    return precision


def build(args, mode):
    """A LUMA training run's models at initialisation: (train.py args, LUMA, frozen MoCLIP = text tower + f_tem)."""
    precision = set_precision(mode)
    argv = ["--dataset", "humanml3d", "--preset", args.preset, "--device", str(args.device),
            "--precision", "bf16" if precision == "bf16" else "fp32"]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    run = train.get_args(argv)
    run.compile = mode.endswith("compiled")
    torch.manual_seed(0)
    hp = MOCLIP_PRESETS[args.preset]                                   # random weights: only the speed matters
    moclip = MoCLIP(MOTION_DIM, hp["clip_model"], "none", motion_width=hp["motion_width"],
                    motion_layers=hp["motion_layers"], motion_heads=hp["motion_heads"], motion_ff=hp["motion_ff"],
                    dropout=hp["dropout"])
    moclip = moclip.to(args.device).eval().requires_grad_(False)       # frozen, as in training
    model = train.build_model(run, MOTION_DIM, moclip.text_width, moclip.embed_dim).to(args.device)
    return run, model, moclip


def random_batch(batch_size, device, seed=0):
    """Random normalised motions, lengths in [40, 196] on the host, captions, and no cache keys (as train.get_batch)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch_size, FRAMES, MOTION_DIM, generator=g).to(device)
    lengths = torch.randint(40, FRAMES + 1, (batch_size,), generator=g)
    return x0, lengths, [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)], [None] * batch_size


def timed(fn, steps, warmup, device):
    """Mean milliseconds per call of fn() over `steps` back-to-back calls after `warmup` untimed ones. The GPU is
    drained only before and after the timed calls, so the host may run ahead as it does in training."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return 1000 * (time.perf_counter() - start) / steps


def count_flops(fn):
    """FLOPs of one call of fn (matrix products, convolutions, attention), counted in eager mode."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def bench_train(args, mode):
    run, model, moclip = build(args, mode)
    optimizer = train.build_optimizer(run, model, args.device)
    ema_unet = copy.deepcopy(model.unet).eval().requires_grad_(False)
    abar = alphas_cumprod(linear_betas(1000)).to(args.device)
    batch = random_batch(run.batch_size, args.device)
    features = train.FrozenFeatures(moclip, moclip, cache=False)     # the whole step: both frozen towers run
    forward = torch.compile(model) if run.compile else model
    step = [0]

    def one_step():
        train.train_step(run, model, forward, optimizer, ema_unet, features, abar, batch, step[0])
        step[0] += 1

    flops = count_flops(lambda: train.train_step(run, model, model, optimizer, ema_unet, features, abar, batch, 0))
    _reset_peak(args.device)
    ms = timed(one_step, args.steps, args.warmup, args.device)
    return dict(what="train", mode=mode, batch=run.batch_size, ms=ms, flops=flops, peak_gib=_peak_gib(args.device),
                anchor_ms=ANCHOR_TRAIN_MS.get(mode), target_ms=TARGET_TRAIN_MS)


def bench_sample(args, mode, batch_size):
    _, model, moclip = build(args, mode)
    unet = model.unet.eval()                                           # sampling never runs the anchor heads
    sampler = LUMASampler(unet, moclip, torch.zeros(MOTION_DIM), torch.ones(MOTION_DIM), kind="t2m")
    precision = "bf16" if mode.startswith("bf16") else "fp32"
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]

    def one_call():
        sampler.generate_features(texts, [FRAMES] * batch_size, steps=10, guidance=2.5, precision=precision)

    flops = count_flops(one_call)
    if mode.endswith("compiled"):
        sampler.unet = torch.compile(unet)
    _reset_peak(args.device)
    ms = timed(one_call, args.steps, args.warmup, args.device)
    return dict(what="sample", mode=mode, batch=batch_size, ms=ms, flops=flops, peak_gib=_peak_gib(args.device),
                anchor_ms=ANCHOR_SAMPLE_MS.get(batch_size), target_ms=TARGET_SAMPLE_MS.get(batch_size))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux; the process's high-water mark


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x {torch.get_num_threads()} threads"


def peak_tflops(args, mode):
    if args.peak_tflops:
        return args.peak_tflops
    if args.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(args.device)
    for gpu, peaks in PEAK_TFLOPS.items():
        if gpu in name:
            return peaks[mode.split("-")[0]]
    return None


def table(rows, args):
    """Markdown: one row per (what, mode, batch) with speed, FLOP rate, MFU, memory and the ratio to the anchor."""
    memory = "peak GPU memory (GiB)" if args.device.type == "cuda" else "peak RSS (GiB)"
    lines = [f"| what | mode | batch | ms | samples/s | TFLOP/s | MFU | {memory} | anchor ms | anchor / ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['what']} | {r['mode']} | {r['batch']} | {r['error']} | | | | | | |")
            continue
        tflops = r["flops"] / r["ms"] / 1e9
        peak = peak_tflops(args, r["mode"])
        anchor = r["anchor_ms"] if args.device.type == "cuda" else None      # the anchors are H100 figures
        ratio = f"{anchor / r['ms']:.2f}x" if anchor else "-"
        lines.append(f"| {r['what']} | {r['mode']} | {r['batch']} | {r['ms']:.1f} | {1000 * r['batch'] / r['ms']:.1f} "
                     f"| {tflops:.3g} | {f'{100 * tflops / peak:.0f}%' if peak else '-'} | {r['peak_gib']:.2f} "
                     f"| {anchor or '-'} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    args = get_args(argv)
    print(f"{device_name(args.device)}, torch {torch.__version__}, preset {args.preset}; {args.warmup} warm-up and "
          f"{args.steps} timed steps per mode (mean)")
    rows = []
    jobs = [("train", mode, None) for mode in args.modes if "train" in args.what]
    jobs += [("sample", mode, b) for mode in args.modes for b in args.sample_batches if "sample" in args.what]
    for what, mode, batch_size in jobs:
        label = f"{what} {mode}" + (f" batch {batch_size}" if batch_size else "")
        print(f"  {label} ...", end="", flush=True)
        try:
            row = bench_train(args, mode) if what == "train" else bench_sample(args, mode, batch_size)
            print(f" {row['ms']:.1f} ms")
        except torch.cuda.OutOfMemoryError:
            row = dict(what=what, mode=mode, batch=batch_size, error="out of memory")
            print(" out of memory")
        rows.append(row)
        torch._dynamo.reset()                   # each compiled mode compiles afresh
        _reset_peak(args.device)
    print(table(rows, args))
    out = Path(args.out)
    summary = json.dumps({"device": device_name(args.device), "torch": torch.__version__, "preset": args.preset,
                          "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1)
    write_atomic(out, lambda f: f.write(summary.encode()))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
