"""
Evaluation of LUMA with the standard text-to-motion protocol (paper Sec. 4.1, Table 1; App. A.1 metrics).

The paper reports FID, R-Precision top-1/2/3, Diversity, MM-Dist and MultiModality "following the evaluation
protocol of StableMoFusion", i.e. the evaluator of Guo et al. (CVPR 2022) reused by MDM, T2M-GPT and MoMask.
The numbers are only comparable if that evaluator and protocol are reproduced exactly, so this file follows
shared/spec/t2m_evaluator.md (section numbers B.x below refer to it):

    T2MEvaluator(dim_pose)        the three evaluator networks (B.4); state_dict keys and shapes equal the official
                                  finest.tar, so it loads with strict=True
        .encode_motion(motions (B,196,D) eval-normalised, m_lens (B,))   -> (B, 512)
        .encode_text(word_embs (B,22,300), pos_ohot (B,22,15), cap_lens) -> (B, 512)
    load_evaluator(path_or_dir, dim_pose)           finest.tar in either directory layout of B.1
    WordVectorizer(glove_dir)     GloVe our_vab_* files (B.2); pickles read by a restricted unpickler
    evaluator_text_input(tokens, vectorizer)        B.3: "word/POS" tokens -> (22,300), (22,15), cap_len
    load_eval_meta(meta_dir, kind), to_eval_space(...)   the evaluator's mean/std and the bridge from model stats

    metrics (B.8), usable on their own on numpy arrays:
    euclidean_distance_matrix, r_precision, matching_score, activation_statistics, frechet_distance,
    diversity, multimodality, mean_ci;  results_table (markdown laid out like Table 1), write_results_json

    python evaluate.py --help     (subcommands t2m, train-evaluator, moclip, gradflow, spectrum; see README)

    gradient_flow (Fig. 3 / 8), dct_spectrum + energy_share (Fig. 7)   and their subcommands gradflow, spectrum

Status: the evaluator, word vectoriser, metrics and the two analyses are implemented and tested. The subcommands
t2m, train-evaluator and moclip exit with "not implemented yet" until the protocol loop (B.9) is written.
"""

import argparse
import json
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from anchors import dct, dual_anchor_loss
from data import KINDS, MotionDataset, _evaluator_tokens
from diffusion import alphas_cumprod, linear_betas, masked_mse, q_sample
from moclip import load_moclip, moclip_from_state

MAX_TEXT_LEN = 20          # B.3: captions longer than 20 tokens are cut; sos + 20 + eos = 22
UNIT_LENGTH = 4            # the movement encoder downsamples time by 4 (two stride-2 convs)
WORD_DIM, POS_DIM = 300, 15
KIND_OF_DIM = {263: "t2m", 251: "kit"}

# -----------------------------------------------------------------------------
# 1. The evaluator networks (B.4): movement conv encoder -> motion BiGRU, and a text BiGRU, both to 512-d
# -----------------------------------------------------------------------------


class MovementConvEncoder(nn.Module):
    """Two stride-2 convolutions over time: (B, T, D-4) -> (B, T//4, 512)."""

    def __init__(self, input_size, hidden_size=512, output_size=512):
        super().__init__()
        self.main = nn.Sequential(                     # indices 0 and 3 are the convs, as in finest.tar
            nn.Conv1d(input_size, hidden_size, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2, inplace=True))
        self.out_net = nn.Linear(output_size, output_size)

    def forward(self, x):
        x = self.main(x.transpose(1, 2)).transpose(1, 2)   # (B, T, C) -> (B, C, T) -> (B, T//4, 512)
        return self.out_net(x)


class _BiGRUEncoder(nn.Module):
    """Linear -> bidirectional GRU from a learned initial state -> [h_fwd, h_bwd] -> MLP head."""

    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = nn.Sequential(
            nn.Linear(hidden_size * 2, hidden_size), nn.LayerNorm(hidden_size),
            nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden_size, output_size))
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))   # learned h_0 (B.4, pitfall 7)

    def _encode(self, x, lengths):
        # x: (B, L, H). enforce_sorted=False lets PyTorch sort and un-sort internally, so h_n comes back in the
        # caller's batch order and each text stays paired with its motion (B.5 note).
        lengths = torch.as_tensor(lengths).detach().to("cpu", torch.long)
        if lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise ValueError(f"sequence lengths must lie in [1, {x.shape[1]}], got {lengths.min()}..{lengths.max()}")
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h0 = self.hidden.repeat(1, x.shape[0], 1)                      # (2, 1, H) -> (2, B, H)
        _, h_n = self.gru(packed, h0)                                  # (2, B, H), forward then backward
        return self.output_net(torch.cat([h_n[0], h_n[1]], dim=-1))   # (B, 2H) -> (B, 512)


class MotionEncoderBiGRUCo(_BiGRUEncoder):
    """Movement features (B, L, 512) with lengths m_len // 4 -> motion embedding (B, 512)."""

    def __init__(self, input_size=512, hidden_size=1024, output_size=512):
        super().__init__(input_size, hidden_size, output_size)

    def forward(self, movements, lengths):
        return self._encode(self.input_emb(movements), lengths)


class TextEncoderBiGRUCo(_BiGRUEncoder):
    """GloVe word vectors (B, 22, 300) + POS one-hots (B, 22, 15) with cap_lens -> text embedding (B, 512)."""

    def __init__(self, word_size=WORD_DIM, pos_size=POS_DIM, hidden_size=512, output_size=512):
        super().__init__(word_size, hidden_size, output_size)
        self.pos_emb = nn.Linear(pos_size, word_size)

    def forward(self, word_embs, pos_ohot, cap_lens):
        x = word_embs + self.pos_emb(pos_ohot)                         # (B, 22, 300)
        return self._encode(self.input_emb(x), cap_lens)


class T2MEvaluator(nn.Module):
    """Guo et al.'s text-motion matching model; dim_pose is 263 (HumanML3D) or 251 (KIT-ML)."""

    def __init__(self, dim_pose=263):
        super().__init__()
        if dim_pose not in KIND_OF_DIM:
            raise ValueError(f"dim_pose must be 263 (HumanML3D) or 251 (KIT-ML), got {dim_pose}")
        self.dim_pose = dim_pose
        self.movement_encoder = MovementConvEncoder(dim_pose - 4)    # foot contacts (last 4 dims) are dropped
        self.motion_encoder = MotionEncoderBiGRUCo()
        self.text_encoder = TextEncoderBiGRUCo()

    def encode_motion(self, motions, m_lens):
        """motions (B, 196, D) normalised with the evaluator's meta stats, m_lens (B,) -> (B, 512)."""
        if motions.ndim != 3 or motions.shape[-1] != self.dim_pose:
            raise ValueError(f"motions must be (B, T, {self.dim_pose}), got {tuple(motions.shape)}")
        m_lens = torch.as_tensor(m_lens)
        if (m_lens // UNIT_LENGTH).min() < 1:
            raise ValueError(f"every motion needs at least {UNIT_LENGTH} frames (m_len // 4 >= 1), got {m_lens}")
        movements = self.movement_encoder(motions[..., :-4].float())   # (B, T, D-4) -> (B, T//4, 512)
        return self.motion_encoder(movements, m_lens // UNIT_LENGTH)

    def encode_text(self, word_embs, pos_ohot, cap_lens):
        """word_embs (B, 22, 300), pos_ohot (B, 22, 15), cap_lens (B,) in 2..22 -> (B, 512); any batch order."""
        return self.text_encoder(word_embs.float(), pos_ohot.float(), cap_lens)


# -----------------------------------------------------------------------------
# 2. Loading finest.tar (B.1 layouts) and the evaluator's meta statistics
# -----------------------------------------------------------------------------

_DOWNLOADS = ("They come from the official evaluator zips (spec B.1): MDM prepare/download_t2m_evaluators.sh, "
              "MoMask prepare/download_evaluator.sh or T2M-GPT dataset/prepare/download_extractor.sh; download "
              "them on a machine with internet access and unzip.")
_SUBMODULES = ("movement_encoder", "motion_encoder", "text_encoder")


def _evaluator_candidates(root, kind):
    sub = Path(kind) / "text_mot_match" / "model" / "finest.tar"
    return [root / "finest.tar", root / "text_mot_match" / "model" / "finest.tar", root / sub,
            root / "checkpoints" / sub]


def _load_trusted_weights(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # We never fall back to weights_only=False ourselves: that would execute whatever the file contains.
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True) ({str(e).splitlines()[0]}).\n"
            "If (and only if) you trust this file, e.g. it is the official finest.tar, convert it once to a "
            "tensors-only file and point --evaluator-dir at the result:\n"
            f"  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
            "torch.save({k: c[k] for k in ('movement_encoder', 'motion_encoder', 'text_encoder')}, "
            f"'{Path(path).with_name('finest_weights.tar')}')\"") from e


def load_evaluator(path_or_dir, dim_pose=263):
    """Load finest.tar (a file, or a directory in one of the B.1 layouts) strictly; returns T2MEvaluator in eval()."""
    kind = KIND_OF_DIM.get(dim_pose)
    if kind is None:
        raise ValueError(f"dim_pose must be 263 (HumanML3D) or 251 (KIT-ML), got {dim_pose}")
    path = Path(path_or_dir)
    if path.is_dir():
        candidates = [path / "finest_weights.tar"] + _evaluator_candidates(path, kind)
        found = [c for c in candidates if c.is_file()]
        if not found:
            tried = "\n  ".join(str(c) for c in candidates)
            raise FileNotFoundError(f"no evaluator checkpoint for {kind!r} under {path}; looked for:\n  {tried}\n"
                                    f"{_DOWNLOADS} Point --evaluator-dir at the folder holding them.")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"evaluator checkpoint {path} does not exist. {_DOWNLOADS} "
                                "Point --evaluator-dir at the folder holding them.")
    ckpt = _load_trusted_weights(path)
    missing = [k for k in _SUBMODULES if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not an evaluator checkpoint: missing {missing}; expected a dict with "
                         f"state dicts under {list(_SUBMODULES)}")
    model = T2MEvaluator(dim_pose)
    for name in _SUBMODULES:
        try:
            getattr(model, name).load_state_dict(ckpt[name], strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: {name} does not match the evaluator for dim_pose={dim_pose} "
                             f"(HumanML3D 263 / KIT 251?):\n{e}") from e
    return model.eval()


def save_evaluator(model, path, **extra):
    """Write the three state dicts (plus plain extras) atomically in the finest.tar key layout."""
    from moclip import save_checkpoint
    save_checkpoint({name: getattr(model, name).state_dict() for name in _SUBMODULES} | extra, path)


def load_eval_meta(meta_dir, kind="t2m"):
    """Evaluator mean/std (D,) float32 from `<kind>_mean.npy` or `Comp_v6_KLD01|05/meta/mean.npy` (B.1, A.7)."""
    root = Path(meta_dir)
    opt_name = {"t2m": "Comp_v6_KLD01", "kit": "Comp_v6_KLD005"}[kind]
    layouts = [(root / f"{kind}_mean.npy", root / f"{kind}_std.npy"),
               (root / opt_name / "meta" / "mean.npy", root / opt_name / "meta" / "std.npy"),
               (root / kind / opt_name / "meta" / "mean.npy", root / kind / opt_name / "meta" / "std.npy"),
               (root / "meta" / "mean.npy", root / "meta" / "std.npy")]
    for mean_path, std_path in layouts:
        if mean_path.is_file() and std_path.is_file():
            mean = np.load(mean_path, allow_pickle=False).astype(np.float32)
            std = np.load(std_path, allow_pickle=False).astype(np.float32)
            if mean.shape != std.shape or mean.ndim != 1:
                raise ValueError(f"{mean_path} / {std_path}: expected two (D,) arrays, got {mean.shape}, {std.shape}")
            return mean, std
    tried = "\n  ".join(f"{m} + {s.name}" for m, s in layouts)
    raise FileNotFoundError(f"no evaluator meta mean/std for {kind!r} under {root}; looked for:\n  {tried}\n"
                            f"{_DOWNLOADS} Point --eval-meta-dir at the folder holding them.")


def to_eval_space(x, model_mean, model_std, eval_mean, eval_std):
    """Re-normalise model-space features (..., D) to the evaluator's meta stats (pitfall 1; also MM samples)."""
    return (x * model_std + model_mean - eval_mean) / eval_std


# -----------------------------------------------------------------------------
# 3. GloVe word vectoriser (B.2) and the caption -> evaluator input step (B.3)
# -----------------------------------------------------------------------------

POS_CLASSES = ("VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
               "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER")
_REAL_TAGS = POS_CLASSES[:9]
VIP_WORDS = {   # checked in this order (B.2); a vocabulary word in a list takes that class instead of its tag
    "Loc_VIP": "left right clockwise counterclockwise anticlockwise forward back backward up down straight curve",
    "Body_VIP": "arm chin foot feet face hand mouth leg waist eye knee shoulder thigh",
    "Obj_VIP": "stair dumbbell chair window floor car ball handrail baseball basketball",
    "Act_VIP": "walk run swing pick bring kick put squat throw hop dance jump turn stumble dance stop sit lift "
               "lower raise wash stand kneel stroll rub bend balance flap jog shuffle lean rotate spin spread climb",
    "Desc_VIP": "slowly carefully fast careful slow quickly happy angry sad happily angrily sadly",
}
VIP_WORDS = {k: frozenset(v.split()) for k, v in VIP_WORDS.items()}


class RestrictedUnpickler(pickle.Unpickler):
    """Reads pickles made only of str, int, float, list, dict (and tuples): any global lookup is refused.

    Those builtin types are written with dedicated opcodes and never reach find_class, while every way a pickle
    can run code (a class, os.system, __reduce__) has to name a global first, so refusing all globals is enough.
    """

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only str/int/list/dict are allowed "
                                     "in the word-vector pickles")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id in the word-vector pickles")


def restricted_load(path):
    """Unpickle `path` allowing only plain builtin containers and scalars (see RestrictedUnpickler)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f).load()


class WordVectorizer:
    """GloVe lookup over `<prefix>_data.npy` (V, 300), `<prefix>_words.pkl` (list) and `<prefix>_idx.pkl` (dict)."""

    def __init__(self, glove_dir, prefix="our_vab"):
        root = Path(glove_dir)
        files = [root / f"{prefix}_data.npy", root / f"{prefix}_words.pkl", root / f"{prefix}_idx.pkl"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"missing GloVe word-vector files: {missing}. They come from glove.zip (spec B.1: MDM/MoMask "
                "prepare/download_glove.sh or T2M-GPT dataset/prepare/download_glove.sh; text-to-motion keeps them "
                "in git under glove/), or from `evaluate.py train-evaluator` for datasets without official weights. "
                "Point --glove-dir at the folder holding them.")
        vectors = np.load(files[0], allow_pickle=False)
        words, word2idx = restricted_load(files[1]), restricted_load(files[2])
        if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise ValueError(f"{files[1]} must hold a list of str")
        if not (isinstance(word2idx, dict) and all(isinstance(k, str) and isinstance(v, int)
                                                   for k, v in word2idx.items())):
            raise ValueError(f"{files[2]} must hold a dict str -> int")
        if vectors.ndim != 2 or vectors.shape[1] != WORD_DIM:
            raise ValueError(f"{files[0]} must be (V, {WORD_DIM}), got {vectors.shape}")
        for special in ("sos", "eos", "unk"):
            if special not in word2idx:
                raise ValueError(f"{files[2]} lacks the special word {special!r}")
        bad = [w for w in words if w not in word2idx or not 0 <= word2idx[w] < len(vectors)]
        if bad:
            raise ValueError(f"{len(bad)} words of {files[1]} have no valid row in {files[0]}, e.g. {bad[:5]}")
        self.word2vec = {w: vectors[word2idx[w]].astype(np.float32) for w in words}
        self.unk = vectors[word2idx["unk"]].astype(np.float32)

    @staticmethod
    def pos_ohot(pos):
        """POS class name -> (15,) one-hot; anything outside the 9 real tags is OTHER."""
        ohot = np.zeros(POS_DIM, dtype=np.float32)
        ohot[POS_CLASSES.index(pos if pos in _REAL_TAGS else "OTHER")] = 1.0
        return ohot

    def __getitem__(self, token):
        """'word/POS' -> (word vector (300,), POS one-hot (15,))."""
        word, sep, pos = token.rpartition("/")
        if not sep:
            raise ValueError(f"token {token!r} is not of the form 'word/POS'")
        if word not in self.word2vec:
            return self.unk, self.pos_ohot("OTHER")
        vip = next((cls for cls, ws in VIP_WORDS.items() if word in ws), None)
        if vip is None:
            return self.word2vec[word], self.pos_ohot(pos)
        return self.word2vec[word], np.eye(POS_DIM, dtype=np.float32)[POS_CLASSES.index(vip)]

    def embed(self, padded_tokens):
        """22 padded tokens (sos .. eos unk*) -> word_embs (22, 300), pos_ohot (22, 15), cap_len = index(eos)+1."""
        if len(padded_tokens) != MAX_TEXT_LEN + 2 or "eos/OTHER" not in padded_tokens:
            raise ValueError(f"expected {MAX_TEXT_LEN + 2} tokens padded as in B.3, got {len(padded_tokens)}")
        vecs, pos = zip(*(self[t] for t in padded_tokens))
        return np.stack(vecs), np.stack(pos), padded_tokens.index("eos/OTHER") + 1   # MDM fix #189: not len()


def evaluator_text_input(tokens, vectorizer):
    """B.3: raw 'word/POS' tokens -> word_embs (22, 300), pos_ohot (22, 15), cap_len in 2..22."""
    return vectorizer.embed(_evaluator_tokens(tokens))


# -----------------------------------------------------------------------------
# 4. Metrics (B.8) on (N, 512) embeddings, numpy only
# -----------------------------------------------------------------------------

def euclidean_distance_matrix(a, b):
    """a (N, d), b (M, d) -> (N, M) Euclidean distances; tiny negative round-off is clipped to 0 before the sqrt."""
    d2 = -2.0 * a @ b.T + np.sum(a ** 2, axis=1, keepdims=True) + np.sum(b ** 2, axis=1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def r_precision(dist, top_k=3):
    """dist (B, B) text i vs motion j -> (top_k,) fraction of rows whose own motion is within the k nearest.

    The protocol uses equal batches of 32 (drop_last), so averaging these over batches equals B.8's hits / N.
    """
    ranks = np.argsort(dist, axis=1, kind="stable")[:, :top_k]            # (B, top_k) nearest motion indices
    hit = ranks == np.arange(len(dist))[:, None]
    return np.cumsum(hit, axis=1).clip(max=1).mean(axis=0)               # hit@k is cumulative in k


def matching_score(dist):
    """dist (B, B) -> mean distance from each text to its own motion (MM-Dist), i.e. trace / B."""
    return float(np.trace(dist)) / len(dist)


def activation_statistics(acts):
    """acts (N, d) -> mean (d,), covariance (d, d) with ddof=1 as np.cov(rowvar=False)."""
    if acts.ndim != 2 or len(acts) < 2:
        raise ValueError(f"need (N >= 2, d) activations, got {acts.shape}")
    return acts.mean(axis=0), np.cov(acts, rowvar=False)


def _psd_sqrt(sigma):
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """FID = ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2)  (B.8), for (d,) means and (d, d) covariances.

    tr sqrtm(S1 S2) without scipy: with R = S1^(1/2) (symmetric PSD), S1 S2 = R (R S2 R) R^-1 is similar to the
    symmetric PSD matrix R S2 R, so both have the same eigenvalues l_i >= 0, and the principal square root of
    S1 S2 has eigenvalues sqrt(l_i); hence tr sqrtm(S1 S2) = sum_i sqrt(l_i) (singular S1 by continuity).
    Everything stays real, so scipy's non-finite retry and complex-part checks are not needed; eigenvalues that
    round-off makes slightly negative are clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    if not all(np.isfinite(x).all() for x in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("frechet_distance got non-finite statistics")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def diversity(acts, times=300, rng=None):
    """acts (N, d), N > times -> mean distance over `times` random pairs (two independent draws without replacement)."""
    rng = np.random.default_rng() if rng is None else rng
    if len(acts) <= times:
        raise ValueError(f"diversity needs more than {times} samples, got {len(acts)}; generate more or lower times")
    i1 = rng.choice(len(acts), times, replace=False)
    i2 = rng.choice(len(acts), times, replace=False)
    return float(np.linalg.norm(acts[i1] - acts[i2], axis=1).mean())


def multimodality(acts, times=10, rng=None):
    """acts (M, R, d): R generations per caption -> mean distance over `times` pairs shared by all captions."""
    rng = np.random.default_rng() if rng is None else rng
    if acts.ndim != 3 or acts.shape[1] < times:
        raise ValueError(f"multimodality needs (M, R >= {times}, d) activations, got {acts.shape}")
    j1 = rng.choice(acts.shape[1], times, replace=False)
    j2 = rng.choice(acts.shape[1], times, replace=False)
    return float(np.linalg.norm(acts[:, j1] - acts[:, j2], axis=2).mean())


def mean_ci(values):
    """Replication values (n,) -> (mean, 95% half-width 1.96 * std / sqrt(n)) with ddof=0, as the protocol."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


# -----------------------------------------------------------------------------
# 5. Reporting: a markdown table laid out like the paper's Table 1, and JSON
# -----------------------------------------------------------------------------

METRICS = ("FID", "Top1", "Top2", "Top3", "Diversity", "MM-Dist", "MultiModality")   # Table 1 column order
_HEADER = ("FID ↓", "Top-1 ↑", "Top-2 ↑", "Top-3 ↑", "Diversity →", "MM-Dist ↓", "MultiModality ↑")


def results_table(results):
    """results {row name: {metric: list of replication values}} -> markdown, each cell 'mean ± CI' (3 decimals)."""
    lines = ["| Method | " + " | ".join(_HEADER) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, row in results.items():
        cells = []
        for metric in METRICS:
            if not row.get(metric):
                cells.append("-")                     # e.g. MultiModality of the Real row
                continue
            mean, ci = mean_ci(row[metric])
            cells.append(f"{mean:.3f} ± {ci:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results_json(results, path, **meta):
    """Write replication values, mean and CI per row and metric (plus plain meta, e.g. the command) atomically."""
    out = {"meta": meta, "results": {}}
    for name, row in results.items():
        out["results"][name] = {m: {"values": [float(v) for v in vals], "mean": mean_ci(vals)[0],
                                    "ci95": mean_ci(vals)[1]} for m, vals in row.items() if len(vals)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, path)
    return path


# -----------------------------------------------------------------------------
# 6. Analyses: gradient flow per UNet block (Fig. 3 / Fig. 8, App. G) and the DCT spectrum (Fig. 7, App. F)
# -----------------------------------------------------------------------------

def load_training_run(path, device="cpu"):
    """(LUMA model, text encoder, config) from a train.py checkpoint.pt (the one holding the anchor heads)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}; train.py writes runs/<run>/checkpoint.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != "luma" or "model" not in state:
        raise ValueError(f"{path} is not a train.py training checkpoint (final.pt has no anchor heads; pass "
                         f"runs/<run>/checkpoint.pt)")
    from train import build_model
    args = argparse.Namespace(**state["config"])
    text_encoder = moclip_from_state(state["text_encoder"]).to(device)
    anchor_dim = state["model"]["anchor.tem_proj.out.weight"].shape[0] if "anchor.tem_proj.out.weight" in \
        state["model"] else text_encoder.embed_dim
    model = build_model(args, state["unet_config"]["motion_dim"], text_encoder.text_width, anchor_dim)
    model.load_state_dict(state["model"])
    return model.to(device), text_encoder, args


def gradient_flow(model, text_tokens, x0, lengths, tem_target=None, timesteps=(750, 500, 250, 0),
                  anchor_loss=True, lambda_fre=0.1, lambda_tem=0.5, seed=0):
    """{t: {block: mean |grad| over the block's parameters}} for L_DDPM (+ the DAL with zeta = 1 if anchor_loss).

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
        if anchor_loss and (z_fre is not None or z_tem is not None):
            loss = loss + dual_anchor_loss(z_fre, z_tem, x0, tem_target, lambda_fre, lambda_tem)[0]  # Eq. (10), zeta=1
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


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


# -----------------------------------------------------------------------------
# 7. Command line
# -----------------------------------------------------------------------------

def _not_implemented(args):
    sys.exit(f"evaluate.py {args.command}: not implemented yet. Available now: the gradflow and spectrum "
             "subcommands, and as a library T2MEvaluator, load_evaluator, WordVectorizer and the metric functions.")


def run_gradflow(args):
    """Fig. 3 / 8: mean |grad| per block for each run at each timestep -> CSV + PNG bar charts."""
    from train import get_batch
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flows = {}
    for run in args.runs:
        checkpoint = Path(run) / "checkpoint.pt" if Path(run).is_dir() else Path(run)
        model, text_encoder, config = load_training_run(checkpoint, device)
        dataset = MotionDataset(config.data_root, split="train", kind=KINDS[config.dataset], feat_bias=config.feat_bias)
        x0, lengths, captions = get_batch(dataset, 0, args.batch_size, args.seed, device)
        with torch.no_grad():
            text_tokens = text_encoder.encode_text_tokens(captions)
            target = None
            if model.anchor is not None and model.anchor.tem_proj is not None:
                target = load_moclip(args.moclip_checkpoint or f"checkpoints/moclip_{config.dataset}.pt",
                                     device).encode_motion(x0, lengths)
        label = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        label += "" if model.anchor is not None else " (no DAL)"
        flows[label] = gradient_flow(model, text_tokens, x0, lengths, target, args.timesteps,
                                     lambda_fre=config.lambda_fre, lambda_tem=config.lambda_tem, seed=args.seed)
    with open(out / "gradflow.csv", "w") as f:
        f.write("run,t,block,mean_abs_grad,threshold_1pct_of_mean\n")
        for label, flow in flows.items():
            for t, blocks in flow.items():
                threshold = 0.01 * np.mean(list(blocks.values()))
                for name, value in blocks.items():
                    f.write(f"{label},{t},{name},{value:.6g},{threshold:.6g}\n")
    plot_gradient_flow(flows, out / "gradflow.png")
    for label, flow in flows.items():
        print(f"{label}: mean |grad| per block at t = {', '.join(map(str, flow))}")
        for name in next(iter(flow.values())):
            print(f"  {name:6}" + "".join(f"{flow[t][name]:12.3e}" for t in flow))
    print(f"wrote {out / 'gradflow.csv'} and {out / 'gradflow.png'}")


def run_spectrum(args):
    """Fig. 7: mean DCT magnitude per coefficient of the normalised training windows, energy share of the first k."""
    import random
    from data import DATA_ROOTS
    root = args.data_root or DATA_ROOTS[args.dataset]
    if args.dataset == "synthetic":
        from synthetic import ensure_dataset
        ensure_dataset(root)
    dataset = MotionDataset(root, split=args.split, kind=KINDS[args.dataset])
    random.seed(args.seed)                                       # the random 196-frame window of longer clips
    magnitude, energy = dct_spectrum(motion for _, motion, _ in dataset)
    shares = {k: energy_share(energy, k) for k in sorted({8, 16, 32, 64, 128, args.k})}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "spectrum.csv", np.stack([np.arange(len(magnitude)), magnitude], 1), delimiter=",",
               header="coefficient,mean_abs_dct", comments="", fmt=["%d", "%.6g"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(magnitude)
    ax.axvspan(0, args.k, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("DCT coefficient")
    ax.set_ylabel("mean |coefficient|")
    ax.set_title(f"{args.dataset} {args.split}: first {args.k} hold {100 * shares[args.k]:.1f}% of the energy",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "spectrum.png", dpi=100)
    plt.close(fig)
    print(f"{len(dataset)} windows of {args.dataset}/{args.split}; energy share of the first k DCT coefficients: "
          + ", ".join(f"k={k}: {100 * v:.1f}%" for k, v in shares.items()))
    print(f"wrote {out / 'spectrum.csv'} and {out / 'spectrum.png'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("t2m", help="standard protocol (Table 1): Real row and a LUMA checkpoint, 20 replications "
                                   "[not implemented yet]")
    p.add_argument("--checkpoint", required=True, help="LUMA checkpoint to evaluate")
    p.add_argument("--dataset", default="humanml3d", choices=["humanml3d", "kit", "synthetic"])
    p.add_argument("--data-root", default=None, help="dataset folder (HumanML3D layout)")
    p.add_argument("--evaluator-dir", default="checkpoints", help="folder with <t2m|kit>/text_mot_match/model/finest.tar")
    p.add_argument("--glove-dir", default="glove", help="folder with our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl")
    p.add_argument("--eval-meta-dir", default=None, help="folder with the evaluator mean/std (default: --evaluator-dir)")
    p.add_argument("--replications", type=int, default=20, help="replications for mean ± 95%% CI (paper: 20)")
    p.add_argument("--out", default="runs/eval", help="where the markdown table and JSON are written")
    p = sub.add_parser("train-evaluator", help="train the evaluator architecture for datasets without official "
                                               "weights [not implemented yet]")
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "humanml3d", "kit"])
    p = sub.add_parser("moclip", help="Table 5 analogue: MoCLIP retrieval next to the evaluator's [not implemented yet]")
    p.add_argument("--checkpoint", required=True, help="MoCLIP checkpoint")
    p = sub.add_parser("gradflow", help="Fig. 3 / Fig. 8 analogue: mean |grad| per UNet block at fixed timesteps, "
                                        "for runs with and without the dual anchor loss")
    p.add_argument("--runs", nargs="+", required=True,
                   help="train.py run folders (or their checkpoint.pt), e.g. runs/luma_synthetic "
                        "runs/luma_synthetic_no_anchors")
    p.add_argument("--timesteps", type=int, nargs="+", default=[750, 500, 250, 0], help="t of Fig. 8")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--moclip-checkpoint", default=None,
                   help="frozen MoCLIP for the temporal anchor target (default checkpoints/moclip_<dataset>.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/gradflow")
    p = sub.add_parser("spectrum", help="Fig. 7 analogue: mean DCT magnitude per coefficient and the energy share "
                                        "of the first k")
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "humanml3d", "kit"])
    p.add_argument("--data-root", default=None, help="dataset folder (default: data/<dataset>)")
    p.add_argument("--split", default="train")
    p.add_argument("--k", type=int, default=64, help="shaded low-frequency band (the paper's k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/spectrum")
    args = parser.parse_args(argv)
    try:
        {"gradflow": run_gradflow, "spectrum": run_spectrum}.get(args.command, _not_implemented)(args)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
