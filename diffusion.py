"""
Diffusion for LUMA: the DDPM forward process and x0-prediction loss, classifier-free guidance, and the samplers
(paper Sec. 3.1.1, Eq. 1-3; DPM-Solver++ of Lu et al. 2023, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models").

Notation. Code timesteps are t = 0..999 (the paper's t = 1..1000). The paper's alpha_t in Eq. (1) is the cumulative
product, called alphas_cumprod (abar_t) here. For the solver we use the VP pair alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t), so x_t = alpha_t x0 + sigma_t eps, and the half log-SNR lambda_t = log(alpha_t / sigma_t).

Public API
    linear_betas(num_steps, start, end) -> (T,)     alphas_cumprod(betas) -> (T,)     q_sample(x0, t, noise, abar)
    masked_mse(pred, target, lengths)               guided_x0(denoise, x, t, scale)
    dpm_solver_schedule(abar, steps, karras) -> (timesteps (steps,), rhos (steps + 1,))
    dpm_solver_pp(model_fn, x_T, abar, steps=10, order=2, karras=False, sde=False, generator=None) -> x0
    ddpm_sample(model_fn, x_T, abar, generator=None) -> x0
    inpainting(model_fn, known, mask, abar, generator=None) -> model_fn that keeps a known part (editing)
A sampler's model_fn(x_t (B, ...), t (B,) long) returns the x0 prediction; guidance is applied inside it by the caller.
"""

import math

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------------------------
# Forward process and training loss (Eq. 1-2)


def linear_betas(num_steps=1000, start=1e-4, end=0.02, dtype=torch.float32):
    """Linear beta schedule (num_steps,), beta_1 = start ... beta_T = end (Eq. 1). In float32 by default, so that it and
    its cumprod equal, bit for bit, the diffusers schedule StableMoFusion trained with."""
    return torch.linspace(start, end, num_steps, dtype=dtype)


def alphas_cumprod(betas):
    """abar_t = prod_{i <= t} (1 - beta_i) (T,): the paper's alpha_t of Eq. (1)."""
    return torch.cumprod(1 - betas, dim=0)


def q_sample(x0, t, noise, alphas_cumprod):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Eq. 1); x0, noise (B, ...), t (B,) long in [0, T)."""
    # The range check reads the values, which on a GPU would stall the host every training step: check host tensors
    # only (the training loop draws t in range on the device itself).
    if t.device.type == "cpu" and (t.min() < 0 or t.max() >= len(alphas_cumprod)):
        raise ValueError(f"q_sample: timesteps must lie in [0, {len(alphas_cumprod)}), got [{t.min()}, {t.max()}]")
    abar = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))   # (B, 1, ...), schedule's precision
    return abar.sqrt().to(x0.dtype) * x0 + (1 - abar).sqrt().to(x0.dtype) * noise   # Eq. (1)


def masked_mse(pred, target, lengths):
    """Eq. (2) over valid frames: pred, target (B, T, D), lengths (B,) -> mean over features, then over each
    sample's first lengths[b] frames, then over the batch (padded frames never count)."""
    T = pred.shape[1]
    if lengths.device.type == "cpu" and (lengths.min() < 1 or lengths.max() > T):   # host tensors only, as q_sample
        raise ValueError(f"masked_mse: lengths must lie in [1, {T}] (frames of pred, shape (B, T, D)), "
                         f"got [{lengths.min()}, {lengths.max()}]")
    per_frame = ((pred - target) ** 2).mean(dim=-1)                        # (B, T, D) -> (B, T)
    mask = (torch.arange(T, device=pred.device)[None, :] < lengths.to(pred.device)[:, None]).to(per_frame.dtype)
    per_sample = (per_frame * mask).sum(dim=1) / mask.sum(dim=1)           # (B,)
    return per_sample.mean()                                               # Eq. (2)


# ---------------------------------------------------------------------------------------------------------------------
# Classifier-free guidance (Eq. 3)


def guided_x0(denoise, x, t, scale):
    """Eq. (3) as ONE forward of 2B samples: x (B, ...), t (B,) -> G(x, t, 0) + scale (G(x, t, c) - G(x, t, 0)).

    denoise(x (2B, ...), t (2B,), cond_mask (2B,) bool) -> x0 (2B, ...): the first half is conditional
    (cond_mask True), the second half unconditional (cond_mask False, the backbone's null condition). It is
    the caller's closure over the text, so this does not depend on the denoiser's signature; the text it
    holds must have 2B rows (the same text twice)."""
    B = x.shape[0]
    cond_mask = torch.arange(2 * B, device=x.device) < B                   # (2B,): True for the first half
    out = denoise(torch.cat([x, x]), torch.cat([t, t]), cond_mask)         # one batched forward
    x0_cond, x0_uncond = out[:B], out[B:]
    return x0_uncond + scale * (x0_cond - x0_uncond)                       # Eq. (3)


# ---------------------------------------------------------------------------------------------------------------------
# DPM-Solver++ (2M), data prediction, deterministic or SDE (Lu et al. 2023)
#
# Write rho = sigma / alpha = exp(-lambda) for the noise-to-signal ratio (Karras et al.'s sigma). A noise level rho
# corresponds to alpha = 1 / sqrt(1 + rho^2), sigma = rho * alpha.
#
# Probability-flow ODE. With the data prediction x0(x, lambda) it reads d(x / sigma)/dlambda = e^lambda x0(x, lambda),
# so from lambda_s to a less noisy lambda_t (step h = lambda_t - lambda_s > 0), exactly:
#     x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda.
# * First order (DPM-Solver++ 1 = DDIM): hold x0 = x0_s constant; sigma_t (e^lambda_t - e^lambda_s) = alpha_t (1 - e^-h):
#     x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0_s.
# * Second order, multistep (2M): reuse the previous step's prediction x0_{s1} at lambda_{s1} = lambda_s - h_prev and
#   take x0 linear in lambda, x0(lambda) ~ x0_s + (lambda - lambda_s) (x0_s - x0_{s1}) / h_prev. The midpoint rule
#   replaces (lambda - lambda_s) under the integral by its mean h / 2, so with r = h_prev / h:
#     x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D,     D = x0_s + (x0_s - x0_{s1}) / (2 r).
# SDE (SDE-DPM-Solver++). The reverse SDE in data-prediction form has the exact solution
#     x_t = (sigma_t / sigma_s) e^-h x_s + 2 alpha_t int e^{-2 (lambda_t - lambda)} x0(lambda) dlambda
#           + sigma_t sqrt(1 - e^-2h) z,    z ~ N(0, I),
#   and the same two approximations of x0(lambda) give (2 int_{lambda_s}^{lambda_t} e^{-2 (lambda_t - lambda)} = 1 - e^-2h)
#     x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D + sigma_t sqrt(1 - e^-2h) z.
#   Its first-order step is exactly DDPM's posterior q(x_t | x_s, x0 = x0_s): mean coefficient
#   (sigma_t / sigma_s) e^-h = (sigma_t^2 alpha_s) / (sigma_s^2 alpha_t), variance sigma_t^2 (1 - e^-2h).
# Final step to rho = 0 (sigma = 0, lambda = inf, e^-h = 0): both variants give x = x0 exactly, so the last step
# simply returns the model's prediction (a first-order step, like diffusers' lower_order_final / final sigma 0).


def dpm_solver_schedule(alphas_cumprod, steps, karras=False):
    """The solver's time grid: the integer timesteps handed to the model (steps,) long and the noise levels
    rho_i = sigma_i / alpha_i (steps + 1,) float64, the last one 0. Matches diffusers' DPMSolverMultistepScheduler
    with timestep_spacing='linspace', final_sigmas_type='zero' and use_karras_sigmas=karras."""
    abar = alphas_cumprod.detach().double().cpu().numpy()
    num_train = len(abar)
    if not 1 <= steps < num_train:   # more steps than T - 1 would repeat integer timesteps (h = 0)
        raise ValueError(f"dpm_solver_schedule: steps must be in [1, {num_train - 1}], got {steps}")
    rho_table = np.sqrt((1 - abar) / abar)                                 # rho(t) for t = 0..T-1, increasing
    if not karras:
        # 'linspace' spacing: steps + 1 points from 0 to T-1, rounded (half to even), the last (t = 0) dropped;
        # the update uses the noise level of exactly these timesteps.
        timesteps = np.round(np.linspace(0, num_train - 1, steps + 1))[::-1][:-1].astype(np.int64)
        rhos = rho_table[timesteps]
    else:
        # Karras et al. (2022), rho = 7: equal steps in rho^(1/7) from rho(T-1) down to rho(0). The model is told the
        # timestep whose noise level matches, by linear interpolation of log rho(t), rounded; the update uses the
        # Karras rho itself.
        ramp = np.linspace(0, 1, steps)
        rho_max, rho_min = rho_table[-1], rho_table[0]
        rhos = (rho_max ** (1 / 7) + ramp * (rho_min ** (1 / 7) - rho_max ** (1 / 7))) ** 7
        timesteps = np.round(np.interp(np.log(rhos), np.log(rho_table), np.arange(num_train))).astype(np.int64)
    rhos = np.concatenate([rhos, [0.0]])                                   # final noise level 0 (x0 itself)
    return torch.from_numpy(timesteps.copy()), torch.from_numpy(rhos)


def dpm_solver_pp(model_fn, x_T, alphas_cumprod, steps=10, order=2, karras=False, sde=False, generator=None):
    """DPM-Solver++(2M) from x_T ~ N(0, I) (B, ...) to x0: model_fn(x_t, t (B,) long) -> x0 prediction.

    order 1 or 2 (multistep; the first step is first order); karras: Karras noise levels; sde: SDE-DPM-Solver++
    (fresh noise from generator each step). Matches diffusers' DPMSolverMultistepScheduler (prediction_type='sample',
    solver_type='midpoint', lower_order_final=True, final_sigmas_type='zero') step for step, same seed included."""
    if order not in (1, 2):
        raise ValueError(f"dpm_solver_pp: order must be 1 or 2 (DPM-Solver++ 1 / 2M), got {order}")
    timesteps, rhos = dpm_solver_schedule(alphas_cumprod, steps, karras)
    rhos = rhos.tolist()
    alphas = [1 / math.sqrt(1 + r * r) for r in rhos]                      # alpha_i = 1 / sqrt(1 + rho_i^2)
    sigmas = [r * a for r, a in zip(rhos, alphas)]                         # sigma_i = rho_i alpha_i
    lambdas = [-math.log(r) if r > 0 else math.inf for r in rhos]          # lambda_i = log(alpha_i / sigma_i)

    x = x_T.to(torch.promote_types(x_T.dtype, torch.float32))              # keep the state in at least fp32
    B = x.shape[0]
    x0_prev, h_prev = None, None
    for i in range(steps - 1):
        t = torch.full((B,), int(timesteps[i]), dtype=torch.long, device=x.device)
        x0 = model_fn(x, t).to(x.dtype)                                    # data prediction at lambda_s
        alpha_t, sigma_t, sigma_s = alphas[i + 1], sigmas[i + 1], sigmas[i]
        h = lambdas[i + 1] - lambdas[i]                                    # h = lambda_t - lambda_s > 0
        if order == 2 and x0_prev is not None:
            r = h_prev / h
            D = x0 + (x0 - x0_prev) / (2 * r)                              # midpoint 2M correction
        else:
            D = x0                                                         # first order (the first step)
        if sde:
            z = _randn_like(x, generator)
            x = ((sigma_t / sigma_s) * math.exp(-h) * x
                 + alpha_t * (-math.expm1(-2 * h)) * D                     # alpha_t (1 - e^-2h) D
                 + sigma_t * math.sqrt(-math.expm1(-2 * h)) * z)           # sigma_t sqrt(1 - e^-2h) z
        else:
            x = (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * D    # (sigma_t/sigma_s) x - alpha_t (e^-h - 1) D
        x0_prev, h_prev = x0, h
    # Last step, to rho = 0: e^-h = 0, so x = x0 for both variants.
    t = torch.full((B,), int(timesteps[-1]), dtype=torch.long, device=x.device)
    return model_fn(x, t)


# ---------------------------------------------------------------------------------------------------------------------
# DDPM ancestral sampling (Ho et al. 2020), the slow reference: all T steps


def ddpm_sample(model_fn, x_T, alphas_cumprod, generator=None):
    """Ancestral sampling x_T -> x0 over all T steps with the x0 prediction model_fn(x_t, t (B,) long), posterior
    q(x_{t-1} | x_t, x0) with the 'fixed_small' variance beta~_t (StableMoFusion's DDPMScheduler)."""
    abar = alphas_cumprod.detach().double().cpu()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])                  # abar_{t-1}, with abar_{-1} = 1
    betas = 1 - abar / abar_prev
    x = x_T
    B = x.shape[0]
    for t in reversed(range(len(abar))):
        x0 = model_fn(x, torch.full((B,), t, dtype=torch.long, device=x.device)).to(x.dtype)
        a, a_prev, beta = abar[t].item(), abar_prev[t].item(), betas[t].item()
        mean = (math.sqrt(a_prev) * beta / (1 - a)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)) * x
        if t > 0:                                                          # posterior mean, Ho et al. Eq. (7)
            variance = beta * (1 - a_prev) / (1 - a)                       # beta~_t ('fixed_small')
            mean = mean + math.sqrt(variance) * _randn_like(x, generator)
        x = mean
    return x


# ---------------------------------------------------------------------------------------------------------------------
# Inpainting: a known part kept while the rest is sampled (RePaint's replacement, Lugmayr et al. 2022; MDM's editing)


def inpainting(model_fn, known, mask, alphas_cumprod, generator=None):
    """Wrap an x0 predictor so that either sampler above keeps a known part of x0 and generates the rest.

    known (B, ...) is the known clean x0 (normalised as the model's data), mask (broadcastable to it) in [0, 1] says
    where: 1 = known, 0 = generated. Before every prediction the known part of x_t is replaced by the known motion
    diffused to that step's noise level, and the prediction's known part by the known x0 itself:

        x_t  <-  m * (sqrt(abar_t) x0_known + sqrt(1 - abar_t) eps) + (1 - m) * x_t,     eps ~ N(0, I) fresh
        x0^  <-  m * x0_known + (1 - m) * G(x_t, t)

    The solver's own update is untouched; the final step returns x0^, so where m = 1 the result is x0_known exactly.
    A fractional m blends the two (a cross-fade over the overlap of two windows of a long motion). With independent
    dimensions the generated part follows its exact distribution; with correlated ones it follows the conditional
    distribution given the known part only approximately (RePaint's resampling would tighten it; measured in the
    tests)."""
    mask = torch.as_tensor(mask, dtype=known.dtype, device=known.device)

    def model_fn_inpainted(x, t):
        known_t = q_sample(known, t, _randn_like(known, generator), alphas_cumprod).to(x.dtype)
        x = mask * known_t + (1 - mask) * x
        x0 = model_fn(x, t)
        return mask * known.to(x0.dtype) + (1 - mask) * x0
    return model_fn_inpainted


def _randn_like(x, generator):
    """Standard normal noise shaped like x, drawn on the generator's device (as diffusers does), then moved to x."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
