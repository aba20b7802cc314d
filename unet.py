"""StableMoFusion's 1-D convolutional UNet: the denoiser G_theta of LUMA (paper Sec. 3.1-3.2, Fig. 2).

The network predicts the clean motion x0 from a noisy motion x_t, the timestep t and the text (Eq. 2). Text enters
every residual block through linear cross-attention to token-wise text features; the null condition of classifier-free
guidance (Eq. 3) is "skip the cross-attention" (there is no learned null token). Besides x0 the forward returns the
feature of one block, h, from which LUMA's dual anchors are projected (Sec. 3.2.1; see anchors.py).

Paper configuration (base 512, multipliers (2,2,2,2)), D = 263 (HumanML3D), T = 196 padded to 208:

    stage               output (C, T)          anchor name
    down0  2 blocks     skip (1024, 208)  -> Downsample -> (1024, 104)
    down1  2 blocks     skip (1024, 104)  -> (1024, 52)     down1
    down2  2 blocks     skip (1024, 52)   -> (1024, 26)     down2
    down3  2 blocks     skip (1024, 26)   -> (1024, 13)     down3  (paper default, "Down-block3")
    mid    2 blocks     (1024, 13)                          mid    ("Bottleneck")
    up0    Upsample -> (1024, 26), concat skip of down3 -> (2048, 26) -> 2 blocks -> (1024, 26)
    up1    -> (1024, 52);   up2 -> (1024, 104);   up3 -> (1024, 208)
    final_conv 1x1 -> (263, 208) -> crop -> (263, 196) -> transpose -> (196, 263)

Each block = residual block (k=5 convs, per-frame GroupNorm(8), Mish, AdaGN scale-shift from the timestep embedding)
followed by linear cross-attention (8 heads) to the text. There is no self-attention over frames. 18 blocks in all.
The paper configuration has 293,654,279 parameters in the UNet body plus 5,392,128 in the text adapter (W = 512).

Public: timestep_embedding(t, dim), mish(x), PRESETS, ANCHOR_BLOCKS, FrameGroupNorm,
        UNet (forward, encode_text, text_context, named_blocks, padded_length, anchor_frames, .config,
        .anchor_channels).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ANCHOR_BLOCKS = ("down1", "down2", "down3", "mid")  # Table 3 rows: Down-block1..3, Bottleneck

PRESETS = {
    # StableMoFusion's trained configuration (build_models): 1024 channels on every level, about 294 M parameters.
    "paper": dict(base_dim=512, dim_mults=(2, 2, 2, 2), time_dim=512, text_latent_dim=256, text_ff_dim=2048,
                  num_heads=8, dropout=0.1),
    # Same structure with 64 channels on every level (1/16 of the width), for CPUs and the synthetic dataset:
    # about 2 M parameters, a training step at batch 32 x 196 frames takes about 0.4 s on 2 CPU cores.
    # Keep >= 8 channels per GroupNorm group: with 2 a per-frame GroupNorm is nearly a sign function.
    # No dropout: drawing its masks was 12% of a CPU training step, and a 2 M-parameter model trained for 2,000
    # steps does not need the regulariser. Paper is silent here; see README "Choices"
    "small": dict(base_dim=32, dim_mults=(2, 2, 2, 2), time_dim=128, text_latent_dim=64, text_ff_dim=256,
                  num_heads=8, dropout=0.0),
}


def timestep_embedding(t, dim):
    """Fixed sinusoidal embedding e(t): t (B,) integer timesteps -> (B, dim) float32; sin at even, cos at odd index."""
    if dim % 2 != 0:
        raise ValueError(f"timestep_embedding needs an even dim, got {dim}; pass an even time_dim")
    if t.dim() != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got {tuple(t.shape)}")
    freqs = torch.exp(torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = t.to(torch.float32)[:, None] * freqs  # (B, dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # (B, dim/2, 2) -> (B, dim): interleaved


def _eager_cpu_inference(x):
    """True where x needs no gradient, lies on a CPU and torch.compile is not tracing: sampling on a CPU. There
    mish and FrameGroupNorm take forms with faster CPU kernels; training, GPUs and compiled code keep PyTorch's."""
    return x.device.type == "cpu" and not x.requires_grad and not torch.compiler.is_compiling()


def mish(x):
    """Mish, x * tanh(softplus(x)), the UNet's activation.

    This is F.mish everywhere but in inference on a CPU without torch.compile (sampling), where PyTorch's Mish
    kernel is slow: on 2 cores it takes 12-14x the time of SiLU over the same tensor. There the same function is
    written with one sigmoid, which has a fast kernel. With u = sigma(-x) = 1 / (1 + e^x), the identity
    e^(2 softplus(x)) = (1 + e^x)^2 = 1 / u^2 gives tanh(softplus(x)) = (1 - u^2) / (1 + u^2) = sigma(x) (1 + u) /
    (1 + u^2): nothing overflows, and it agrees with F.mish to float rounding (a test checks it).
    """
    if not _eager_cpu_inference(x):
        return F.mish(x)
    s = torch.sigmoid(x)
    u = 1 - s  # = sigma(-x)
    return (u + 1).div_(u.mul_(u).add_(1)).mul_(s).mul_(x)  # in place, left to right: x * s * (1 + u) / (1 + u^2)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are taken over channel groups within each frame, never across time.

    A padded frame therefore cannot change the normalised value of a valid frame. Parameters are those of
    nn.GroupNorm(num_groups, C); the input is (B, C, T).
    """

    def forward(self, x):
        B, C, T = x.shape
        G = self.num_groups
        if not _eager_cpu_inference(x):
            # Same numbers as nn.GroupNorm on (B*T, C): LayerNorm over the C/G channels of each (sample, group,
            # frame). Measured ~15% faster for the whole small-preset step on CPU than transposing to (B*T, C) and back.
            groups = x.reshape(B, G, C // G, T).transpose(2, 3)  # (B, G, T, C/G), a view
            y = F.layer_norm(groups, (C // G,), eps=self.eps).transpose(2, 3).reshape(B, C, T)
        else:
            # Inference on a CPU (sampling): the same statistics as two means over the channel axis of the
            # (B, G, C/G, T) view, with no transposes. PyTorch's CPU layer_norm over rows of C/G = 8 channels is
            # slow: over (2, 64, 196) it takes 2.6x the time of this, over (64, 64, 196) 4.8x. With a gradient the
            # two means mostly lose (forward + backward 1.3-1.4x slower at 128-256 channels), so training keeps it.
            groups = x.reshape(B, G, C // G, T)
            centred = groups - groups.mean(2, keepdim=True)
            variance = centred.square().mean(2, keepdim=True)  # biased, as GroupNorm's
            y = centred.mul_(torch.rsqrt(variance.add_(self.eps))).reshape(B, C, T)
        return torch.addcmul(self.bias[:, None], y, self.weight[:, None])  # per-channel affine


class ResBlock(nn.Module):
    """Residual temporal block with AdaGN: x (B, C_in, T), temb (B, time_dim) -> (B, C_out, T)."""

    def __init__(self, in_ch, out_ch, time_dim, dropout, groups=8):
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, out_ch, 5, padding=2)
        self.norm1 = FrameGroupNorm(groups, out_ch)
        self.scale_shift = nn.Linear(time_dim, 2 * out_ch)  # AdaGN: timestep -> (scale, shift), zero-initialised
        self.conv2 = nn.Conv1d(out_ch, out_ch, 5, padding=2)  # zero-initialised: the block starts as its residual path
        self.norm2 = FrameGroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        for layer in (self.scale_shift, self.conv2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, temb):
        scale, shift = self.scale_shift(mish(temb))[:, :, None].chunk(2, dim=1)  # (B, 2C) -> 2 x (B, C, 1)
        h = mish(self.norm1(self.conv1(x)) * (1 + scale) + shift)  # AdaGN on the first conv only
        h = mish(self.norm2(self.conv2(h)))
        return self.dropout(h) + self.skip(x)


class LinearCrossAttention(nn.Module):
    """Efficient (linear) cross-attention from motion frames to text tokens, added as a residual where cond is 1.

    q is a softmax over each head's channels, k a softmax over the tokens, so attention costs O(T + L), not O(T*L).
    No output projection and no feed-forward, as in the backbone.
    """

    def __init__(self, dim, text_dim, num_heads, dropout):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"channels {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(text_dim)  # shared by keys and values
        self.query = nn.Linear(dim, dim)
        # The key bias shifts every token's logit by the same amount, so the softmax over tokens cancels it: it never
        # receives gradient. Kept so the parameter count matches the backbone's.
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def context(self, text):
        """text (B, L, text_dim) -> context (B, H, d, d): each head's keys (softmax over tokens) summed against its
        values. It depends on the text alone, so a sampler computes it once for all its steps (UNet.text_context)."""
        B, L, _ = text.shape
        H, d = self.num_heads, self.query.out_features // self.num_heads
        text = self.text_norm(text)
        k = self.key(text).view(B, L, H, d).softmax(dim=1)  # (B, L, H, d), softmax over tokens
        v = self.value(text).view(B, L, H, d)  # (B, L, H, d)
        return self.dropout(torch.einsum("blhd,blhe->bhde", k, v))  # (B, H, d, d)

    def forward(self, x, context, cond):
        """x (B, C, T), context (n, H, d, d) = self.context(text) of the first n <= B samples, cond (B,) float 0/1
        -> (B, C, T). Samples n.. have no text and skip the attention's work (a guided sampler's unconditional half)."""
        n = context.shape[0]
        if n < x.shape[0]:
            return torch.cat([self.forward(x[:n], context, cond[:n]), x[n:]])
        B, C, T = x.shape
        H = self.num_heads
        # The query is built channels-first, (B, C, T) = (B, H, d, T), so the softmax over each head's d channels
        # runs along a middle axis and the output is already in the motion's layout. The same numbers as
        # query(norm(x^T)).view(B, T, H, d).softmax(-1), but a CPU softmax along a last axis shorter than its vector
        # width (d = 8 in the small preset, 16 floats with AVX-512) runs unvectorised: this layout measured 3.5x
        # faster forward and 2x forward + backward for this attention on an AVX-512 CPU, 1.4x / 1.3x with PyTorch's
        # AVX2 kernels (README "Performance").
        h = self.norm(x.transpose(1, 2))  # (B, T, C), LayerNorm over each frame's channels
        q = torch.matmul(self.query.weight, h.transpose(1, 2)) + self.query.bias[:, None]  # (B, C, T) = query(h)^T
        q = q.view(B, H, C // H, T).softmax(dim=2)  # (B, H, d, T), softmax over each head's channels
        y = torch.einsum("bhdt,bhde->bhet", q, context).reshape(B, C, T)  # (B, H, d, T) -> (B, C, T)
        # Null condition (Eq. 3): samples with cond = 0 skip the residual; a multiplicative mask keeps one batched op.
        return x + y * cond[:, None, None]


class CondBlock(nn.Module):
    """ResBlock then cross-attention: x (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_ch, out_ch, time_dim, text_dim, num_heads, dropout):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, time_dim, dropout)
        self.attn = LinearCrossAttention(out_ch, text_dim, num_heads, dropout)

    def forward(self, x, temb, context, cond):
        x = self.res(x, temb)
        return x if context is None else self.attn(x, context, cond)


class DownLevel(nn.Module):
    """Two blocks, then a stride-2 conv: x (B, C_in, T) -> (skip (B, C, T), down (B, C, T/2))."""

    def __init__(self, in_ch, out_ch, time_dim, text_dim, num_heads, dropout):
        super().__init__()
        self.block1 = CondBlock(in_ch, out_ch, time_dim, text_dim, num_heads, dropout)
        self.block2 = CondBlock(out_ch, out_ch, time_dim, text_dim, num_heads, dropout)
        self.downsample = nn.Conv1d(out_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x, temb, contexts, cond):
        context1, context2 = contexts or (None, None)  # one cross-attention context per block; None = no text
        skip = self.block2(self.block1(x, temb, context1, cond), temb, context2, cond)
        return skip, self.downsample(skip)


class MidLevel(nn.Module):
    """Two blocks at the lowest resolution: (B, C, T) -> (B, C, T)."""

    def __init__(self, ch, time_dim, text_dim, num_heads, dropout):
        super().__init__()
        self.block1 = CondBlock(ch, ch, time_dim, text_dim, num_heads, dropout)
        self.block2 = CondBlock(ch, ch, time_dim, text_dim, num_heads, dropout)

    def forward(self, x, temb, contexts, cond):
        context1, context2 = contexts or (None, None)
        return self.block2(self.block1(x, temb, context1, cond), temb, context2, cond)


class UpLevel(nn.Module):
    """Transposed conv x2, concat the skip, two blocks: x (B, C_in, T), skip (B, C, 2T) -> (B, C, 2T)."""

    def __init__(self, in_ch, skip_ch, time_dim, text_dim, num_heads, dropout):
        super().__init__()
        self.upsample = nn.ConvTranspose1d(in_ch, in_ch, 4, stride=2, padding=1)  # exactly doubles the length
        self.block1 = CondBlock(in_ch + skip_ch, skip_ch, time_dim, text_dim, num_heads, dropout)
        self.block2 = CondBlock(skip_ch, skip_ch, time_dim, text_dim, num_heads, dropout)

    def forward(self, x, skip, temb, contexts, cond):
        context1, context2 = contexts or (None, None)
        x = torch.cat((self.upsample(x), skip), dim=1)  # (B, C_in + C, 2T)
        return self.block2(self.block1(x, temb, context1, cond), temb, context2, cond)


class TextAdapter(nn.Module):
    """Trainable text adapter on frozen token features: (B, L, W) -> (B, L, text_latent_dim)."""

    def __init__(self, text_dim, latent_dim, ff_dim, dropout, num_layers=4, num_heads=4):
        super().__init__()
        self.proj = nn.Linear(text_dim, latent_dim)
        layer = nn.TransformerEncoderLayer(latent_dim, num_heads, ff_dim, dropout, activation="gelu",
                                           batch_first=True)  # post-norm (norm_first=False), as in the backbone
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(latent_dim)

    def forward(self, tokens):
        # All L tokens are kept, padding after end-of-text included, and no key-padding mask is used (as the backbone).
        return self.norm(self.encoder(self.proj(tokens)))


class UNet(nn.Module):
    """StableMoFusion's text-conditioned 1-D UNet that predicts x0 and exposes LUMA's anchor feature.

    Channels per level are int(base_dim * m) for m in dim_mults. The input length is zero-padded to a multiple of
    2**len(dim_mults) (16) and the output cropped back. anchor_block selects the feature returned for the anchors.
    """

    def __init__(self, motion_dim, text_dim, base_dim=512, dim_mults=(2, 2, 2, 2), time_dim=512, text_latent_dim=256,
                 num_heads=8, dropout=0.1, anchor_block="down3", text_ff_dim=2048):
        super().__init__()
        # Plain values only, so checkpoints can store it and rebuild with UNet(**config) under weights_only=True.
        self.config = dict(motion_dim=motion_dim, text_dim=text_dim, base_dim=base_dim, dim_mults=list(dim_mults),
                           time_dim=time_dim, text_latent_dim=text_latent_dim, num_heads=num_heads, dropout=dropout,
                           anchor_block=anchor_block, text_ff_dim=text_ff_dim)
        chans = [int(base_dim * m) for m in dim_mults]
        if len(chans) < 4:
            raise ValueError(f"dim_mults needs 4 levels (down0..down3) for the anchor blocks, got {tuple(dim_mults)}")
        if any(c % 8 != 0 or c % num_heads != 0 for c in chans):
            raise ValueError(f"level channels {chans} must be divisible by 8 (GroupNorm) and num_heads={num_heads}")
        if anchor_block not in ANCHOR_BLOCKS:
            raise ValueError(f"anchor_block must be one of {ANCHOR_BLOCKS}, got {anchor_block!r}")
        if text_latent_dim % 4 != 0:
            raise ValueError(f"text_latent_dim {text_latent_dim} must be divisible by the adapter's 4 heads")
        self.motion_dim, self.text_dim, self.time_dim = motion_dim, text_dim, time_dim
        self.text_latent_dim = text_latent_dim
        self.num_levels = len(chans)
        self.pad_multiple = 2 ** len(chans)  # every level halves the length, the last one included

        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, time_dim))
        self.text_adapter = TextAdapter(text_dim, text_latent_dim, text_ff_dim, dropout)

        args = (time_dim, text_latent_dim, num_heads, dropout)
        blocks = {}
        in_ch = motion_dim  # no separate input projection: the first block's conv and 1x1 skip serve as one
        for k, ch in enumerate(chans):
            blocks[f"down{k}"] = DownLevel(in_ch, ch, *args)
            in_ch = ch
        blocks["mid"] = MidLevel(in_ch, *args)
        for j, ch in enumerate(reversed(chans)):  # up0 mirrors the deepest down level
            blocks[f"up{j}"] = UpLevel(in_ch, ch, *args)
            in_ch = ch
        self.blocks = nn.ModuleDict(blocks)
        self.final_conv = nn.Conv1d(chans[0], motion_dim, 1)
        nn.init.zeros_(self.final_conv.weight)  # zero-initialised: x0_pred is exactly 0 at the start
        nn.init.zeros_(self.final_conv.bias)

        # Down-block k = the output of down level k's two blocks, before its downsampling (the skip feature);
        # "mid" = the output of the two middle blocks.
        # Paper is silent here; see README "Choices"
        self.anchor_block = anchor_block
        level = len(chans) if anchor_block == "mid" else int(anchor_block[len("down"):])
        self.anchor_channels = chans[min(level, len(chans) - 1)]
        self.anchor_downsample = 2 ** level  # T' = padded T / anchor_downsample

    def padded_length(self, T):
        """Length the network runs at for an input of T frames: T rounded up to a multiple of 16."""
        return -(-T // self.pad_multiple) * self.pad_multiple

    def anchor_frames(self, T):
        """Number of frames T' of the anchor feature for an input of T frames: padded_length(T) / anchor_downsample."""
        return self.padded_length(T) // self.anchor_downsample

    def named_blocks(self, fine=False):
        """(name, module) in forward order: down0..down3, mid, up0..up3; fine=True gives the 18 CondBlocks instead."""
        for name, level in self.blocks.items():
            if not fine:
                yield name, level
                continue
            for sub, module in level.named_children():
                if isinstance(module, CondBlock):
                    yield f"{name}.{sub}", module

    def encode_text(self, text_tokens):
        """Trainable text adapter: text_tokens (B, L, text_dim) -> text_latent (B, L, text_latent_dim)."""
        if text_tokens.dim() != 3 or text_tokens.shape[-1] != self.text_dim:
            raise ValueError(f"text_tokens must be (B, L, {self.text_dim}) token features from the text encoder, "
                             f"got {tuple(text_tokens.shape)}")
        return self.text_adapter(text_tokens)

    def text_context(self, text_latent):
        """text_latent (B, L, text_latent_dim) -> {level name: (context of block1, context of block2)}, each
        (B, H, d, d): every cross-attention's text side, which no timestep changes (LinearCrossAttention.context)."""
        if text_latent.dim() != 3 or text_latent.shape[-1] != self.text_latent_dim:
            raise ValueError(f"text_latent must be (B, L, {self.text_latent_dim}) from encode_text, "
                             f"got {tuple(text_latent.shape)}")
        return {name: (level.block1.attn.context(text_latent), level.block2.attn.context(text_latent))
                for name, level in self.blocks.items()}

    def forward(self, x, t, text_tokens=None, cond_mask=None, text_latent=None, text_context=None):
        """Predict x0 (Eq. 2): x (B, T, D), t (B,) long, text_tokens (B, L, W) -> (x0 (B, T, D), anchor (B, C_a, T')).

        Text is given in one of three forms: raw as text_tokens (the adapter runs here; training), pre-encoded as
        text_latent = encode_text(text_tokens), or as text_context = text_context(text_latent), the cross-attention
        contexts themselves (samplers compute them once per call: the text is the same at every step). cond_mask (B,)
        bool: False = the null condition of Eq. (3), the sample skips every cross-attention; None = all True. With no
        text at all every sample is unconditional. A text_context of n < B samples conditions the first n; the rest
        are unconditional and skip the attention's work (a guided sampler's unconditional half, Eq. 3).
        """
        B, T, D = self._check_inputs(x, t, text_tokens, cond_mask, text_latent, text_context)
        if text_latent is None and text_tokens is not None:
            text_latent = self.encode_text(text_tokens)  # (B, L, W) -> (B, L, text_latent_dim)
        if text_context is None and text_latent is not None:
            text_context = self.text_context(text_latent)  # per block (B, H, d, d)
        if cond_mask is None:
            cond_mask = torch.full((B,), text_context is not None, dtype=torch.bool, device=x.device)
        cond = cond_mask.to(x.dtype)  # (B,) 0/1, multiplies the cross-attention residual

        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))  # (B, time_dim)
        h = F.pad(x.transpose(1, 2), (0, self.padded_length(T) - T))  # (B, T, D) -> (B, D, T_pad), zeros on the right

        contexts = text_context or {}  # no text: every block skips its cross-attention
        skips, features = [], {}
        for k in range(self.num_levels):
            skip, h = self.blocks[f"down{k}"](h, temb, contexts.get(f"down{k}"), cond)  # skip (B, C_k, T_pad/2^k)
            skips.append(skip)
            features[f"down{k}"] = skip
        h = self.blocks["mid"](h, temb, contexts.get("mid"), cond)  # (B, C, T_pad/16)
        features["mid"] = h
        for j in range(self.num_levels):
            h = self.blocks[f"up{j}"](h, skips.pop(), temb, contexts.get(f"up{j}"), cond)  # (B, C_k, T_pad/2^k)
        x0 = self.final_conv(h)[:, :, :T].transpose(1, 2)  # Eq. (2): x0 prediction, (B, C_0, T_pad) -> (B, T, D)
        return x0, features[self.anchor_block]

    def _check_inputs(self, x, t, text_tokens, cond_mask, text_latent, text_context):
        if x.dim() != 3 or x.shape[-1] != self.motion_dim:
            raise ValueError(f"x must be (B, T, {self.motion_dim}) motion features, got {tuple(x.shape)}")
        B, T, D = x.shape
        if t.shape != (B,) or t.is_floating_point():
            raise ValueError(f"t must be integer timesteps of shape ({B},), got {t.dtype} {tuple(t.shape)}")
        if sum(text is not None for text in (text_tokens, text_latent, text_context)) > 1:
            raise ValueError("pass one of text_tokens, text_latent and text_context, not several")
        if text_tokens is not None and text_tokens.shape[0] != B:
            raise ValueError(f"text_tokens batch {text_tokens.shape[0]} != motion batch {B}")
        if text_latent is not None and text_latent.dim() == 3 and text_latent.shape[0] != B:  # shape: text_context
            raise ValueError(f"text_latent batch {text_latent.shape[0]} != motion batch {B}")
        if text_context is not None:
            if not isinstance(text_context, dict) or set(text_context) != set(self.blocks):
                raise ValueError(f"text_context must be the dict UNet.text_context returns, with the levels "
                                 f"{list(self.blocks)}")
            n = text_context["down0"][0].shape[0]
            if n > B:
                raise ValueError(f"text_context batch {n} > motion batch {B}")
        if cond_mask is not None:
            if cond_mask.shape != (B,) or cond_mask.dtype != torch.bool:
                raise ValueError(f"cond_mask must be a bool tensor of shape ({B},), got {cond_mask.dtype} "
                                 f"{tuple(cond_mask.shape)}")
            if text_context is not None and n < B and bool(cond_mask[n:].any()):
                raise ValueError(f"cond_mask asks for conditional samples beyond the {n} the text_context covers")
            if text_tokens is None and text_latent is None and text_context is None and bool(cond_mask.any()):
                raise ValueError("cond_mask asks for conditional samples but no text was given; pass text_tokens")
        return B, T, D
