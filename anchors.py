"""
LUMA's dual semantic anchors (paper Sec. 3.2.1-3.2.2, Eq. 4-11; the DCT of App. F, Eq. 16-17).

A deep UNet feature h (B, C, T') is projected two ways, each modulated by the timestep (FiLM):
    z_fre = ((1 + gamma_f(t)) * P_theta(h) + beta_f(t))^T   (B, k, d_m)   ~ DCT_k(x0)        Eq. (6), (8)
    z_tem = (1 + gamma_t(t)) * Q_theta(h) + beta_t(t)        (B, D_a)      ~ MoCLIP(x0)       Eq. (7), (9)
and the two alignment losses are added to the denoising loss with a weight that decays over training:
    L = L_DDPM + zeta(n) * (lambda_fre * L_fre + lambda_tem * L_tem)                          Eq. (10), (11)
The anchors act in training only; sampling never runs them.

Public API
    dct_matrix(n, dtype, device) -> (n, n)    dct(x, dim) / idct(x, dim)    lowfreq_dct(x0 (B, T, D), k) -> (B, k, D)
    FiLM(cond_dim, feature_dim)               FrequencyProjector (P_theta), TemporalProjector (Q_theta)
    DualAnchor(channels, motion_dim, anchor_frames, anchor_dim, ...)(h, e(t), valid) -> (z_fre, z_tem)
    frequency_anchor_loss, temporal_anchor_loss, dual_anchor_loss
    cosine_anchor_weight(step, decay_steps)   AnchorWeighting(kind, decay_steps)   (Eq. 11 and Table 4)
"""

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------------
# DCT-II (App. F)


@functools.lru_cache(maxsize=32)
def dct_matrix(n, dtype=torch.float32, device=None):
    """Orthonormal DCT-II matrix D (n, n): D[k, m] = A(k) cos(pi (2m + 1) k / 2n), so v_f = D @ v (Eq. 16-17)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]      # frequency index, rows
    m = torch.arange(n, dtype=torch.float64)[None, :]      # sample index, columns
    A = torch.full((n, 1), math.sqrt(2.0 / n), dtype=torch.float64)  # Eq. (17), k > 0
    A[0] = math.sqrt(1.0 / n)                                         # Eq. (17), k = 0
    D = A * torch.cos(math.pi * (2 * m + 1) * k / (2 * n))            # Eq. (16)
    return D.to(dtype=dtype, device=device)                # cached: treat as read-only


def dct(x, dim=-1):
    """Orthonormal DCT-II of x along dim (same shape as x)."""
    D = dct_matrix(x.shape[dim], x.dtype, x.device)
    return (x.movedim(dim, -1) @ D.T).movedim(-1, dim)


def idct(x, dim=-1):
    """Inverse of dct: D is orthonormal, so the inverse is its transpose (a DCT-III)."""
    D = dct_matrix(x.shape[dim], x.dtype, x.device)
    return (x.movedim(dim, -1) @ D).movedim(-1, dim)


def lowfreq_dct(x0, k):
    """DCT_k of Eq. (8): x0 (B, T, D) -> its first k DCT-II coefficients along time, (B, k, D)."""
    if not 1 <= k <= x0.shape[1]:
        raise ValueError(f"lowfreq_dct: k must be in [1, T={x0.shape[1]}] (frames of x0, shape (B, T, D)), got {k}")
    D_k = dct_matrix(x0.shape[1], x0.dtype, x0.device)[:k]    # (k, T): only the rows we keep
    return torch.einsum("kt,btd->bkd", D_k, x0)                # (B, T, D) -> (B, k, D)


# ---------------------------------------------------------------------------------------------------------------------
# Timestep-aware FiLM (Eq. 4-7)


class FiLM(nn.Module):
    """F_psi: e(t) (B, cond_dim) -> (gamma, beta) (B, feature_dim) each; modulates z (B, feature_dim, ...)."""

    def __init__(self, cond_dim, feature_dim, hidden=None):
        super().__init__()
        hidden = hidden or cond_dim  # Paper is silent here; see README "Choices"
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * feature_dim))
        nn.init.zeros_(self.net[-1].weight)  # gamma = beta = 0 at init: the anchor starts un-modulated
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z, emb):
        """z (B, F, ...) features on dim 1, emb (B, cond_dim) -> (1 + gamma) * z + beta, broadcast over dims > 1."""
        gamma, beta = self.net(emb).chunk(2, dim=-1)             # Eq. (4) / (5): (B, F) each
        shape = gamma.shape + (1,) * (z.dim() - 2)                # (B, F, 1, ...): broadcast along k (Eq. 6)
        return (1 + gamma.view(shape)) * z + beta.view(shape)     # Eq. (6) / (7)


# ---------------------------------------------------------------------------------------------------------------------
# Projectors and the dual-anchor module (Eq. 6-7)


class FrequencyProjector(nn.Module):
    """P_theta: h (B, C, T') -> (B, d_m, k): a channel MLP of 1x1 convs, then a learned linear map over time T' -> k."""

    def __init__(self, channels, motion_dim, anchor_frames, k, hidden=1024):
        super().__init__()
        self.channel_mlp = nn.Sequential(nn.Conv1d(channels, hidden, 1), nn.SiLU(), nn.Conv1d(hidden, motion_dim, 1))
        self.time_map = nn.Linear(anchor_frames, k)  # Paper is silent here; see README "Choices"

    def forward(self, h):
        return self.time_map(self.channel_mlp(h))   # (B, C, T') -> (B, d_m, T') -> (B, d_m, k)


class TemporalProjector(nn.Module):
    """Q_theta: h (B, C, T'), valid (B, T') bool -> (B, D_a): 1x1-conv MLP, mean over valid frames, Linear."""

    def __init__(self, channels, anchor_dim, hidden=1024):
        super().__init__()
        self.channel_mlp = nn.Sequential(nn.Conv1d(channels, hidden, 1), nn.SiLU(),
                                         nn.Conv1d(hidden, hidden, 1), nn.SiLU())
        self.out = nn.Linear(hidden, anchor_dim)

    def forward(self, h, valid):
        f = self.channel_mlp(h)                                   # (B, C, T') -> (B, hidden, T')
        w = valid.to(f.dtype)[:, None, :]                         # (B, 1, T')
        pooled = (f * w).sum(-1) / w.sum(-1).clamp(min=1.0)       # masked mean over time: (B, hidden)
        # Paper is silent here (the pooling); see README "Choices"
        return self.out(pooled)                                   # (B, D_a)


class DualAnchor(nn.Module):
    """The two anchor heads of Sec. 3.2.1 on the UNet feature h (B, C, T'), each with its timestep-aware FiLM.

    channels C and anchor_frames T' describe h at the tap point for the fixed training window (196 frames padded to 208,
    divided by the tap block's downsampling); motion_dim d_m, dct_k k; anchor_dim D_a is MoCLIP's embedding width.
    The switches remove their parts entirely (Table 2): no parameters exist for a disabled head or for FiLM.
    """

    def __init__(self, channels, motion_dim, anchor_frames, anchor_dim, dct_k=64, hidden=1024, time_dim=512,
                 use_fre=True, use_tem=True, use_film=True):
        super().__init__()
        self.anchor_frames, self.dct_k, self.time_dim = anchor_frames, dct_k, time_dim
        self.freq_proj = FrequencyProjector(channels, motion_dim, anchor_frames, dct_k, hidden) if use_fre else None
        self.freq_film = FiLM(time_dim, motion_dim) if use_fre and use_film else None       # F_psi
        self.tem_proj = TemporalProjector(channels, anchor_dim, hidden) if use_tem else None
        self.tem_film = FiLM(time_dim, anchor_dim) if use_tem and use_film else None        # F_psi'

    def forward(self, h, e, valid=None):
        """h (B, C, T'), e (B, time_dim) = e(t), the sinusoidal embedding of the timestep (unet.timestep_embedding;
        FiLM's input, Eq. 4-5), valid (B, T') bool -> z_fre (B, k, d_m) or None, z_tem (B, D_a) or None."""
        if h.shape[-1] != self.anchor_frames:
            raise ValueError(f"DualAnchor: h has {h.shape[-1]} frames but the frequency projector maps exactly "
                             f"{self.anchor_frames} (the training window at the tap block); train on full windows")
        if valid is None:
            valid = torch.ones(h.shape[0], h.shape[-1], dtype=torch.bool, device=h.device)
        if e.shape != (h.shape[0], self.time_dim):
            raise ValueError(f"DualAnchor: e(t) has shape {tuple(e.shape)}, expected ({h.shape[0]}, {self.time_dim})")
        e = e.to(h.dtype)

        z_fre = z_tem = None
        if self.freq_proj is not None:
            z_fre = self.freq_proj(h)                                    # (B, C, T') -> (B, d_m, k)
            if self.freq_film is not None:
                z_fre = self.freq_film(z_fre, e)                         # Eq. (4), (6): gamma_f, beta_f in R^{d_m}
            z_fre = z_fre.transpose(1, 2)                                # Eq. (6)'s ^T: (B, d_m, k) -> (B, k, d_m)
        if self.tem_proj is not None:
            z_tem = self.tem_proj(h, valid)                              # (B, C, T') -> (B, D_a)
            if self.tem_film is not None:
                z_tem = self.tem_film(z_tem, e)                          # Eq. (5), (7): gamma_t, beta_t in R^{D_a}
        return z_fre, z_tem


# ---------------------------------------------------------------------------------------------------------------------
# Dual Anchor Loss (Eq. 8-10)


def frequency_anchor_loss(z_fre, x0, k=None):
    """L_fre of Eq. (8): MSE between z_fre (B, k, D) and DCT_k(x0), x0 (B, T, D) the clean normalised window."""
    k = z_fre.shape[1] if k is None else k
    if z_fre.shape[1] != k:
        raise ValueError(f"frequency_anchor_loss: z_fre has {z_fre.shape[1]} coefficients, expected k={k}")
    # Paper is silent here (sum vs mean); see README "Choices"
    return F.mse_loss(z_fre, lowfreq_dct(x0, k).detach())   # Eq. (8), mean over B, k, D


def temporal_anchor_loss(z_tem, target):
    """L_tem of Eq. (9): mean over the batch of 1 - cos(z_tem, f_tem(x0)); z_tem, target (B, D_a)."""
    return (1 - F.cosine_similarity(z_tem, target.detach(), dim=-1)).mean()   # Eq. (9); the target is frozen


def dual_anchor_loss(z_fre, z_tem, x0, tem_target, lambda_fre=0.1, lambda_tem=0.5):
    """lambda_fre L_fre + lambda_tem L_tem (the bracket of Eq. 10) and a dict of the terms present ("fre", "tem")."""
    terms, total = {}, x0.new_zeros(())
    if z_fre is not None:
        terms["fre"] = frequency_anchor_loss(z_fre, x0)
        total = total + lambda_fre * terms["fre"]                 # Eq. (10), lambda_fre = 0.1 (App. D)
    if z_tem is not None:
        terms["tem"] = temporal_anchor_loss(z_tem, tem_target)
        total = total + lambda_tem * terms["tem"]                 # Eq. (10), lambda_tem = 0.5 (App. D)
    return total, terms


# ---------------------------------------------------------------------------------------------------------------------
# Anchor weighting zeta(n) (Eq. 11 and the alternatives of Table 4)


def cosine_anchor_weight(step, decay_steps):
    """zeta(n) of Eq. (11): 1/2 [1 + cos(pi min(n / N, 1))], 1 at n = 0, falling to 0 at n = N and after."""
    if decay_steps <= 0:
        raise ValueError(f"cosine_anchor_weight: decay_steps N must be positive, got {decay_steps}")
    return 0.5 * (1 + math.cos(math.pi * min(step / decay_steps, 1.0)))   # Eq. (11)


class AnchorWeighting(nn.Module):
    """zeta(n) for Eq. (10): 'cosine' (Eq. 11, the paper's), 'static' (1 throughout), 'learnable' (Table 4).

    Use: zeta = weighting(step); loss = L_DDPM + weighting.weigh(zeta, lambda_fre L_fre + lambda_tem L_tem).
    'learnable' is one global weight zeta = sigmoid(w) in (0, 1), starting at 0.99 (w = logit 0.99): like Eq. (11)'s
    schedule it starts near 1 and can only fall. Its gradient is sigmoid'(w) * L_anchor > 0, so the optimiser lowers
    zeta as fast as the anchor losses are worth lowering; the bound keeps it from running away (an unbounded
    exp(-s) with Kendall et al.'s +s term has its optimum at zeta = 1 / L and grows as the anchor losses fall).
    """

    KINDS = ("cosine", "static", "learnable")
    LEARNABLE_START = 0.99                            # zeta at step 0 for 'learnable'

    def __init__(self, kind="cosine", decay_steps=30_000):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"AnchorWeighting: kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "cosine" and decay_steps <= 0:
            raise ValueError(f"AnchorWeighting: decay_steps N of Eq. (11) must be positive, got {decay_steps}")
        self.kind, self.decay_steps = kind, decay_steps
        # Paper is silent here (Table 4 names the row only); see README "Choices"
        start_logit = math.log(self.LEARNABLE_START / (1 - self.LEARNABLE_START))
        self.logit = nn.Parameter(torch.tensor(start_logit)) if kind == "learnable" else None   # w; zeta = sigmoid(w)

    def forward(self, step):
        """zeta(n) at training step n (0-d tensor; carries a gradient for 'learnable')."""
        if self.kind == "cosine":
            return torch.tensor(cosine_anchor_weight(step, self.decay_steps))    # Eq. (11)
        if self.kind == "static":
            return torch.tensor(1.0)                                              # Table 4 "static (fixed)"
        return torch.sigmoid(self.logit)                                         # Table 4 "learnable (global)"

    def weigh(self, zeta, anchor_loss):
        """zeta * anchor_loss, the anchor part of Eq. (10)."""
        # A fixed zeta lives on the host (a 0-d CPU tensor): multiply by its Python value, so no host-to-GPU copy
        # sits in the training step; the learnable zeta is already on the loss's device.
        factor = zeta if zeta.requires_grad else zeta.item()
        return factor * anchor_loss
