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
    weights_sha1(model)           which weights scored a table (recorded in every results JSON)
    WordVectorizer(glove_dir)     GloVe our_vab_* files (B.2); pickles read by a restricted unpickler
    evaluator_text_input(tokens, vectorizer)        B.3: "word/POS" tokens -> (22,300), (22,15), cap_len
    load_eval_meta(meta_dir, kind), to_eval_space(...)   the evaluator's mean/std and the bridge from model stats

    metrics (B.8), usable on their own on numpy arrays:
    euclidean_distance_matrix, r_precision, matching_score, activation_statistics, frechet_distance,
    diversity, multimodality, mean_ci;  results_table (markdown laid out like Table 1), write_results_json

    python evaluate.py --help     (subcommands t2m, train-evaluator, moclip, prompts; see README)

    The paper's analyses (gradient flow, DCT spectrum, MoCLIP attention) are in analysis.py.

    train_evaluator (B.4 recipe) for datasets without official weights: word table (PPMI-SVD of the captions, in the
    our_vab format), movement autoencoder, then margin-10 contrastive text-motion matching
    evaluate_protocol (B.9): the "Real" row and generated rows on the same GT batches, replications -> mean ± CI,
                                  MultiModality from mm_repeats generations of mm_captions random test captions
                                  (mm_embeddings -> (M, R, 512) -> multimodality)
    moclip_retrieval (Table 5 analogue): MoCLIP retrieval both ways next to the evaluator's R-precision, same batches
    ValidationProbe: FID / R-precision on a fixed pass of the validation split, for train.py --eval-every (Fig. 4)

    python evaluate.py train-evaluator --dataset synthetic        # -> checkpoints/evaluator_synthetic/
    python evaluate.py t2m --dataset synthetic --real-only        # Real row, 20 replications
    python evaluate.py t2m --dataset synthetic --checkpoint runs/luma_synthetic/final.pt --mm-captions 10
    python evaluate.py moclip --dataset synthetic                 # checkpoints/moclip_synthetic.pt vs the evaluator

Status: all four subcommands are built; MultiModality (B.8) is computed for every generated row of t2m.
"""

import argparse
import contextlib
import hashlib
import json
import math
import pickle
import random
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from tqdm import tqdm

from data import (BUILT_DATASETS, DATA_ROOTS, KINDS, SEED, SKELETONS, InputError, MotionDataset, device_name,
                  evaluator_tokens, float_range, folder_path, int_range, load_checkpoint, load_weights, parse_text_line,
                  prepare_dataset, read_array, save_checkpoint, user_errors, write_atomic)
from moclip import load_moclip, topk_accuracy

MAX_TEXT_LEN = 20          # B.3: captions longer than 20 tokens are cut; sos + 20 + eos = 22
MAX_EVAL_LEN = 196         # B.6: eval motions are zero-padded to 196 frames
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


_EVALUATOR_WRITER = "the official evaluator zips (finest.tar), or `python evaluate.py train-evaluator`"


def _load_trusted_weights(path):
    # We never fall back to weights_only=False ourselves: that would execute whatever the file contains. A file the
    # user trusts (the official finest.tar) is converted once, by the user, with the command in the message.
    convert = ("\nIf (and only if) you trust this file, e.g. it is the official finest.tar, convert it once to a "
               "tensors-only file and point --evaluator-dir at the result:\n"
               f"  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
               "torch.save({k: c[k] for k in ('movement_encoder', 'motion_encoder', 'text_encoder')}, "
               f"'{Path(path).with_name('finest_weights.tar')}')\"")
    return load_checkpoint(path, "a T2M evaluator checkpoint (finest.tar)", _EVALUATOR_WRITER, keys=_SUBMODULES,
                           refused_hint=convert)


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
    model = T2MEvaluator(dim_pose)
    for name in _SUBMODULES:
        load_weights(getattr(model, name), ckpt[name], path, f"{name} (evaluator for dim_pose={dim_pose}: "
                                                             f"HumanML3D 263, KIT-ML 251)")
    return model.eval()


def save_evaluator(model, path, **extra):
    """Write the three state dicts (plus plain extras) atomically in the finest.tar key layout."""
    save_checkpoint({name: getattr(model, name).state_dict() for name in _SUBMODULES} | extra, path)


def weights_sha1(model):
    """A short fingerprint (12 hex digits of SHA-1) of a module's weights, name by name in state_dict order.
    A self-trained evaluator retrained from the same command on another CPU can be a different evaluator (float
    rounding differs between kernels, and training amplifies it) that scores the same motions differently, so every
    results JSON records which weights scored it; two tables compare only where this matches."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


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
            mean = read_array(mean_path, "evaluator mean", "a (D,) float array").astype(np.float32)
            std = read_array(std_path, "evaluator std", "a (D,) float array").astype(np.float32)
            if mean.shape != std.shape or mean.ndim != 1:
                raise InputError(f"{mean_path} / {std_path}: expected two (D,) arrays, got {mean.shape}, {std.shape}")
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
    """Unpickle `path` allowing only plain builtin containers and scalars (see RestrictedUnpickler); a refused or
    unreadable pickle is an InputError naming the file."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as error:
        raise InputError(f"{path} is not a plain word-vector pickle ({error}); only str/int/list/dict are loaded, "
                         f"never code. Expected the GloVe files of the evaluator zips or of train-evaluator") from None


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
        vectors = read_array(files[0], "GloVe vectors", f"a (V, {WORD_DIM}) float array")
        words, word2idx = restricted_load(files[1]), restricted_load(files[2])
        if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise InputError(f"{files[1]} must hold a list of str")
        if not (isinstance(word2idx, dict) and all(isinstance(k, str) and isinstance(v, int)
                                                   for k, v in word2idx.items())):
            raise InputError(f"{files[2]} must hold a dict str -> int")
        if vectors.ndim != 2 or vectors.shape[1] != WORD_DIM:
            raise InputError(f"{files[0]} must be (V, {WORD_DIM}), got {vectors.shape}")
        for special in ("sos", "eos", "unk"):
            if special not in word2idx:
                raise InputError(f"{files[2]} lacks the special word {special!r}")
        bad = [w for w in words if w not in word2idx or not 0 <= word2idx[w] < len(vectors)]
        if bad:
            raise InputError(f"{len(bad)} words of {files[1]} have no valid row in {files[0]}, e.g. {bad[:5]}")
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
    return vectorizer.embed(evaluator_tokens(tokens))


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
_HEADER = dict(zip(METRICS, ("FID ↓", "Top-1 ↑", "Top-2 ↑", "Top-3 ↑", "Diversity →", "MM-Dist ↓",
                             "MultiModality ↑")))


def results_table(results, metrics=METRICS):
    """results {row name: {metric: list of replication values}} -> markdown, each cell 'mean ± CI' (3 decimals).

    metrics: the columns, in order (default: Table 1's); a row without values for one shows '-'.
    """
    lines = ["| Method | " + " | ".join(_HEADER[m] for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in results.items():
        cells = []
        for metric in metrics:
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
    return write_atomic(path, lambda f: f.write(json.dumps(out, indent=2).encode()))


# -----------------------------------------------------------------------------
# 6. Training the evaluator for datasets without official weights (B.4 "How the evaluator was trained")
# -----------------------------------------------------------------------------

SPECIAL_WORDS = ("sos", "eos", "unk")     # rows 0, 1, 2 of the word table, as our_vab_idx.pkl expects them


def caption_vocabulary(text_dir):
    """All 'word/POS' token lists of texts/*.txt (caption#tokens#start#end lines) -> list of word lists."""
    files = sorted(Path(text_dir).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no caption files {Path(text_dir) / '*.txt'}; the dataset layout is "
                                "<root>/texts/<id>.txt with lines 'caption#word/POS ...#start#end'")
    sentences = []
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parsed = parse_text_line(line)                      # the loader's parser; malformed lines are None
            if parsed is not None:
                words = [t.rpartition("/")[0] for t in parsed[1] if "/" in t]
                sentences.append([w for w in words if w])
    return sentences


def build_word_vectors(sentences, dim=WORD_DIM, window=4, seed=0):
    """Word list and (V, dim) float32 vectors from tokenised captions: SVD of a PPMI co-occurrence matrix.

    Stands in for GloVe (B.2), which has no vectors for a synthetic vocabulary. Counts pairs within `window` words in
    a caption, PPMI = max(log p(w,c) / (p(w) p(c)), 0), vectors = U sqrt(S) of its SVD, zero-padded to `dim` when the
    vocabulary is smaller, rows scaled to unit norm (GloVe rows differ in norm; unit norm keeps every word on one
    scale). 'sos', 'eos', 'unk' come first as fixed random unit vectors (seeded), like GloVe's own rows for them.
    Paper is silent here; see README "Choices".
    """
    vocab = sorted({w for s in sentences for w in s} - set(SPECIAL_WORDS))
    if not vocab:
        raise ValueError("no caption words found to build a word-vector table from")
    index = {w: i for i, w in enumerate(vocab)}
    counts = np.zeros((len(vocab), len(vocab)), np.float64)
    for sentence in sentences:
        ids = [index[w] for w in sentence if w in index]
        for i, a in enumerate(ids):
            for b in ids[max(0, i - window):i]:            # symmetric window: count (a, b) and (b, a)
                counts[a, b] += 1
                counts[b, a] += 1
    total = counts.sum()
    row = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts * total / (row * row.T))
    ppmi = np.where(np.isfinite(pmi), np.maximum(pmi, 0.0), 0.0)               # (V, V)
    u, s, _ = np.linalg.svd(ppmi)
    k = min(dim, len(vocab))
    vectors = np.zeros((len(vocab), dim), np.float64)
    vectors[:, :k] = u[:, :k] * np.sqrt(s[:k])                                   # (V, k) -> zero-padded (V, 300)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0)
    special = np.random.default_rng(seed).standard_normal((len(SPECIAL_WORDS), dim))
    special /= np.linalg.norm(special, axis=1, keepdims=True)
    return list(SPECIAL_WORDS) + vocab, np.concatenate([special, vectors]).astype(np.float32)


def write_word_vectors(words, vectors, glove_dir, prefix="our_vab"):
    """Write words (list[str]) and vectors (V, 300) as <prefix>_data.npy / _words.pkl / _idx.pkl (B.2 format)."""
    if len(words) != len(vectors) or vectors.shape[1:] != (WORD_DIM,):
        raise ValueError(f"need V words and (V, {WORD_DIM}) vectors, got {len(words)} and {vectors.shape}")
    root = Path(glove_dir)
    word2idx = {w: i for i, w in enumerate(words)}
    write_atomic(root / f"{prefix}_data.npy", lambda f: np.save(f, np.asarray(vectors, np.float32)))
    write_atomic(root / f"{prefix}_words.pkl", lambda f: pickle.dump(list(words), f))
    write_atomic(root / f"{prefix}_idx.pkl", lambda f: pickle.dump(word2idx, f))
    return root


class MovementConvDecoder(nn.Module):
    """Mirror of MovementConvEncoder: (B, T//4, 512) -> two stride-2 transposed convs -> (B, T, D)."""

    def __init__(self, input_size=512, hidden_size=512, output_size=263):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose1d(input_size, hidden_size, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose1d(hidden_size, output_size, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True))
        self.out_net = nn.Linear(output_size, output_size)

    def forward(self, x):
        x = self.main(x.transpose(1, 2)).transpose(1, 2)   # (B, L, 512) -> (B, 512, L) -> (B, 4L, D)
        return self.out_net(x)


def movement_autoencoder_loss(encoder, decoder, windows):
    """B.4: L1 reconstruction of all D features from D-4 inputs + 0.001 mean|latent| + 0.001 L1 of latent steps.

    windows (B, W, D) normalised, W a multiple of 4 -> (loss, reconstruction L1).
    """
    latent = encoder(windows[..., :-4])                          # (B, W, D-4) -> (B, W/4, 512)
    recon = decoder(latent)                                      # (B, W/4, 512) -> (B, W, D)
    rec = (recon - windows).abs().mean()
    sparsity = latent.abs().mean()
    smooth = (latent[:, 1:] - latent[:, :-1]).abs().mean()
    return rec + 0.001 * sparsity + 0.001 * smooth, rec


def contrastive_matching_loss(text_emb, motion_emb, shift, margin=10.0):
    """B.4 text_mot_match loss on (B, 512) pairs: mean d(t_i, m_i)^2 + mean clamp(margin - d(t_i, m_{i+shift}), 0)^2."""
    pos = (text_emb - motion_emb).norm(dim=1)                                 # (B,)
    neg = (text_emb - torch.roll(motion_emb, -shift, dims=0)).norm(dim=1)    # motion i+shift (mod B) for text i
    return (pos ** 2).mean() + (torch.clamp(margin - neg, min=0.0) ** 2).mean()


def _text_batch(vectorizer, tokens, device):
    """Padded 22-token lists (collate_eval order) -> word_embs (B, 22, 300), pos_ohot (B, 22, 15), cap_lens (B,)."""
    words, pos, lens = zip(*(vectorizer.embed(t) for t in tokens))
    return (torch.from_numpy(np.stack(words)).to(device), torch.from_numpy(np.stack(pos)).to(device),
            torch.tensor(lens, dtype=torch.long))


def _random_windows(items, mean, std, batch_size, window, rng):
    """(batch_size, window, D) normalised windows from random motions of a MotionDataset's items."""
    out = []
    for i in rng.integers(0, len(items), batch_size):
        motion = items[i]["motion"]
        start = rng.integers(0, len(motion) - window + 1)
        out.append((motion[start:start + window] - mean) / std)
    return torch.from_numpy(np.stack(out).astype(np.float32))


def _matching_pass(evaluator, vectorizer, loader, device, optimizer=None, rng=None, grad_clip=0.5):
    """One epoch of text_mot_match (training if optimizer is given) -> mean contrastive loss."""
    total, count = 0.0, 0
    for _, tokens, motions, m_lens, _ in loader:
        word_embs, pos_ohot, cap_lens = _text_batch(vectorizer, tokens, device)
        with torch.no_grad():                                    # the movement encoder is frozen (B.4)
            movements = evaluator.movement_encoder(motions[..., :-4].to(device))
        with torch.set_grad_enabled(optimizer is not None):
            motion_emb = evaluator.motion_encoder(movements, m_lens // UNIT_LENGTH)
            text_emb = evaluator.text_encoder(word_embs, pos_ohot, cap_lens)
            # The original draws shift in [0, B-2], where shift 0 makes the "negatives" the positives; we draw from
            # [1, B-1] so every negative is another motion. Validation uses a fixed shift of 1.
            shift = int(rng.integers(1, len(tokens))) if rng is not None else 1
            loss = contrastive_matching_loss(text_emb, motion_emb, shift)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(list(evaluator.text_encoder.parameters()) +
                                     list(evaluator.motion_encoder.parameters()), grad_clip)
            optimizer.step()
        total, count = total + loss.item() * len(tokens), count + len(tokens)
        if hasattr(loader, "set_postfix"):
            loader.set_postfix(loss=f"{loss.item():.3f}")
    return total / max(count, 1)


def train_evaluator(dataset="synthetic", data_root=None, out=None, ae_steps=200,
                    ae_batch_size=128, window=24, epochs=3, batch_size=32, lr=5e-4, seed=0, device="cpu",
                    progress=True):
    """Train T2MEvaluator the official way (B.4) on a dataset without official weights; returns the out folder.

    Writes <out>/glove/our_vab_* (word table from the captions), <out>/t2m_mean.npy + t2m_std.npy (the evaluator's
    normalisation = the dataset's training normalisation MotionDataset.mean/.std) and the best-validation-loss
    weights at <out>/<kind>/text_mot_match/model/finest.tar, so load_evaluator / WordVectorizer / load_eval_meta read
    them exactly as they read the official files.
    Differences from the official run (B.4), chosen so it trains in a few minutes on a CPU: batch 32 instead of 8,
    Adam lr 5e-4 instead of 1e-4 for both stages, 200 autoencoder steps and 3 matching epochs instead of training to
    convergence (up to 300 epochs); the negative shift is drawn from [1, B-1] (see _matching_pass). The autoencoder
    uses the train split's motions only, and both stages use the dataset's training normalisation.
    """
    from data import collate_eval
    kind = KINDS[dataset]
    root = Path(data_root or DATA_ROOTS[dataset])
    prepare_dataset(dataset, root)
    out = Path(out or f"checkpoints/evaluator_{dataset}")
    random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device(device)

    # (a) word table in the our_vab format, loaded back through the same code as the official GloVe files
    words, vectors = build_word_vectors(caption_vocabulary(root / "texts"), seed=seed)
    write_word_vectors(words, vectors, out / "glove")
    vectorizer = WordVectorizer(out / "glove")
    print(f"word table: {len(words)} words (incl. sos/eos/unk) -> {out / 'glove'}")

    train_set = MotionDataset(root, "train", kind, mode="eval")          # eval crop, normalised with .mean/.std
    val_set = MotionDataset(root, "val", kind, mode="eval")
    for name, stat in (("mean", train_set.mean), ("std", train_set.std)):
        write_atomic(out / f"{kind}_{name}.npy", lambda f, stat=stat: np.save(f, stat.astype(np.float32)))
    dim_pose = train_set.mean.shape[0]
    evaluator = T2MEvaluator(dim_pose).to(device)

    # (b) movement autoencoder on random `window`-frame crops, then frozen
    decoder = MovementConvDecoder(512, 512, dim_pose).to(device)
    optimizer = torch.optim.Adam(list(evaluator.movement_encoder.parameters()) + list(decoder.parameters()), lr=lr)
    long_enough = [item for item in train_set.items if len(item["motion"]) >= window]
    bar = tqdm(range(ae_steps), desc="movement autoencoder", disable=not progress)
    for _ in bar:
        windows = _random_windows(long_enough, train_set.mean, train_set.std, ae_batch_size, window, rng).to(device)
        loss, rec = movement_autoencoder_loss(evaluator.movement_encoder, decoder, windows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(l1=f"{rec.item():.4f}")
    evaluator.movement_encoder.eval().requires_grad_(False)

    # (c) text-motion matching: text and motion encoders, contrastive loss with margin 10, best val loss kept
    train_loader = torch.utils.data.DataLoader(train_set, batch_size, shuffle=True, drop_last=True,
                                               collate_fn=collate_eval)
    if len(train_loader) == 0:
        raise InputError(f"the train split ({len(train_set)} samples) needs at least one batch of {batch_size}; "
                         "lower --batch-size")
    if len(val_set) < 2:
        raise InputError(f"the val split has {len(val_set)} sample(s); the matching loss needs at least 2: list "
                         f"more motions in {root / 'val.txt'}")
    # a val split smaller than one training batch (a small custom dataset) is scored as one batch of all its samples
    val_loader = torch.utils.data.DataLoader(val_set, min(batch_size, len(val_set)), shuffle=False, drop_last=True,
                                             collate_fn=collate_eval)
    optimizer = torch.optim.Adam(list(evaluator.text_encoder.parameters()) +
                                 list(evaluator.motion_encoder.parameters()), lr=lr)
    path = out / kind / "text_mot_match" / "model" / "finest.tar"
    best = math.inf
    for epoch in range(epochs):
        evaluator.text_encoder.train(), evaluator.motion_encoder.train()
        bar = tqdm(train_loader, desc=f"text-motion matching epoch {epoch + 1}/{epochs}", disable=not progress)
        train_loss = _matching_pass(evaluator, vectorizer, bar, device, optimizer, rng)
        evaluator.text_encoder.eval(), evaluator.motion_encoder.eval()
        random.seed(seed + 1)                                     # the same val crops and captions every epoch
        with torch.no_grad():
            val_loss = _matching_pass(evaluator, vectorizer, val_loader, device)
        mark = ""
        if val_loss < best:
            best, mark = val_loss, " (best, saved)"
            save_evaluator(evaluator, path, epoch=epoch + 1, val_loss=float(val_loss), dataset=dataset)
        print(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val_loss:.4f}{mark}")
    print(f"evaluator -> {path}; meta -> {out / (kind + '_mean.npy')}, {out / (kind + '_std.npy')}")
    return out


# -----------------------------------------------------------------------------
# 7. The protocol loop (B.9): GT "Real" row and generated rows, replications with mean ± 95% CI
# -----------------------------------------------------------------------------

def embed_eval_batch(evaluator, vectorizer, tokens, motions, m_lens, device="cpu"):
    """B.5 co-embeddings: padded token lists, motions (B, 196, D) eval-normalised, m_lens (B,) -> two (B, 512) np."""
    word_embs, pos_ohot, cap_lens = _text_batch(vectorizer, tokens, device)
    with torch.no_grad():
        text_emb = evaluator.encode_text(word_embs, pos_ohot, cap_lens)
    return text_emb.cpu().numpy().astype(np.float64), _embed_motions(evaluator, motions, m_lens, device)


def _embed_motions(evaluator, motions, m_lens, device="cpu"):
    """Motions (B, 196, D) eval-normalised, m_lens (B,) in any order -> (B, 512) float64 numpy."""
    with torch.no_grad():   # encode_motion packs with enforce_sorted=False, so lengths need no descending sort (B.5)
        return evaluator.encode_motion(motions.to(device), m_lens).cpu().numpy().astype(np.float64)


def _batch_metrics(text_emb, motion_emb):
    dist = euclidean_distance_matrix(text_emb, motion_emb)       # (32, 32): text i vs motion j
    return r_precision(dist), matching_score(dist)


def _protocol_loader(dataset, batch_size=32, seed=0):
    """The B.9 GT loader: shuffled by a seeded generator, batches of batch_size with drop_last, sort collate (B.6).

    Also seeds Python's `random`, which draws each item's caption and crop, so evaluate_protocol and moclip_retrieval
    with the same seed see the same first pass: the same captions, crops and batches.
    """
    from data import collate_eval
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True, collate_fn=collate_eval,
                                         generator=torch.Generator().manual_seed(seed))
    if len(loader) == 0:
        raise InputError(f"the {getattr(dataset, 'split', 'test')} split has {len(dataset)} samples, fewer than one "
                         f"batch of {batch_size} (B.9 needs batches of exactly 32)")
    random.seed(seed)
    return loader


def _mm_items(dataset, count, rng):
    """`count` (B.9 mm_num_samples) distinct random eval-mode items -> captions list[str], their m_lens (count,) long.

    Each item's caption and crop come from Python's `random`, reseeded from rng; its state is put back afterwards, so
    the next replication's GT crops (and the Real row) are the same whether MultiModality is computed or not.
    """
    state = random.getstate()
    random.seed(int(rng.integers(2 ** 32)))
    items = [dataset[int(i)] for i in rng.choice(len(dataset), count, replace=False)]   # (caption, tokens, motion, len)
    random.setstate(state)
    return [item[0] for item in items], torch.tensor([item[3] for item in items], dtype=torch.long)


def mm_embeddings(evaluator, generate, captions, m_lens, repeats=30, batch_size=32, device="cpu", progress=False,
                  desc="MultiModality"):
    """M captions, m_lens (M,) -> (M, repeats, 512) evaluator embeddings of `repeats` generations per caption.

    Each generate call covers whole captions (batch_size // repeats of them, at least one: 1 x 30 for batch 32), and
    each caption's repeats are embedded as one batch, as the original MM loader does (B.7); so identical generations
    give identical embeddings.
    """
    per_call = max(1, batch_size // repeats)
    m_lens = torch.as_tensor(m_lens)
    acts = []
    for start in tqdm(range(0, len(captions), per_call), desc=desc, disable=not progress, leave=False):
        lens = m_lens[start:start + per_call].repeat_interleave(repeats)            # (k,) -> (k * repeats,)
        # generate returns eval-normalised motions: the B.7 bridge lives in the generator (_luma_generator), so the MM
        # samples get it too (B.7, pitfall 1: MDM missed it for them before PR #241)
        motions = generate([c for c in captions[start:start + per_call] for _ in range(repeats)], lens)
        for i in range(0, len(lens), repeats):                                       # (k * R, 196, D) -> k x (R, 512)
            acts.append(_embed_motions(evaluator, motions[i:i + repeats], lens[i:i + repeats], device))
    return np.stack(acts)                                                            # (M, R, 512)


def generation_lengths(m_lens, kind="t2m"):
    """The lengths a generated row is made and scored at: the GT eval lengths clamped to the loader's minimum (40
    frames for t2m, 24 for KIT) and to 196, as the backbone's evaluation does (its §5.1). An eval crop can fall below
    the minimum (a 40-frame clip cropped one unit of 4 shorter is 36 frames)."""
    return torch.as_tensor(m_lens).clamp(SKELETONS[kind].min_motion_len, MAX_EVAL_LEN)


def protocol_stream(seed, replication, row, purpose):
    """The random stream for one kind of draw (purpose) of one table row in one replication, keyed by their names: a
    row's Diversity and MultiModality pairs are then the same whichever other rows share the table (one stream that
    every row drew from in turn made the Real row's Diversity depend on the number of rows)."""
    return np.random.default_rng([seed, replication, zlib.crc32(row.encode()), zlib.crc32(purpose.encode())])


def evaluate_protocol(evaluator, vectorizer, dataset, replications=20, generators=None, batch_size=32, seed=0,
                      device="cpu", progress=True, diversity_times=None, mm_captions=100, mm_repeats=30, mm_times=10,
                      kind="t2m"):
    """B.9 on an eval-mode MotionDataset -> {row: {metric: [value per replication]}}; 'Real' is the GT loader.

    generators: {row name: fn(captions list[str], m_lens (B,) long) -> motions (B, 196, D) eval-normalised}; each
    generated row uses the same GT batches (captions, lengths) as the Real row, as T2M-GPT / MoMask do (B.7), at
    generation_lengths(m_lens, kind).
    diversity_times: None is the B.7 rule (300 pairs if N > 300, else 100); tests on tiny data pass fewer.
    MultiModality (generated rows only; B.9 step 6): per replication, mm_captions random test items (caption and
    eval-mode m_len; the same for every row) are generated mm_repeats times each, and multimodality() averages
    mm_times pairs (B.9: 100, 30, 10). mm_captions=0 skips it. Its random draws never shift the protocol's own
    draws (GT crops, Diversity pairs); a generator that counts its calls (as _luma_generator does for its seeds) does
    see the MM calls. Diversity and MultiModality pairs come from a stream of their own per replication and row
    (protocol_stream), so a row's numbers do not depend on which other rows share the table.
    """
    generators = generators or {}
    if mm_captions < 0:
        raise ValueError(f"--mm-captions must be >= 0 (0 skips MultiModality), got {mm_captions}")
    if mm_captions and generators and mm_repeats < mm_times:
        raise ValueError(f"--mm-repeats ({mm_repeats}) must be at least --mm-times ({mm_times}): MultiModality draws "
                         f"{mm_times} distinct repeats per caption twice (B.8)")
    if mm_captions > len(dataset) and generators:
        raise InputError(f"--mm-captions {mm_captions} is more than the {len(dataset)} test samples; lower it")
    loader = _protocol_loader(dataset, batch_size, seed)
    rows = ["Real"] + list(generators)
    results = {row: {m: [] for m in METRICS} for row in rows}
    for rep in tqdm(range(replications), desc="replications", disable=not progress):
        acts = {row: [] for row in rows}
        top, dist_sum = {row: np.zeros(3) for row in rows}, {row: 0.0 for row in rows}
        n = 0
        for captions, tokens, motions, m_lens, _ in loader:
            gen_lens = generation_lengths(m_lens, kind)
            for row in rows:
                lens = m_lens if row == "Real" else gen_lens
                batch = motions if row == "Real" else generators[row](captions, lens)
                text_emb, motion_emb = embed_eval_batch(evaluator, vectorizer, tokens, batch, lens, device)
                hits, score = _batch_metrics(text_emb, motion_emb)
                top[row] += hits * len(tokens)                                   # B.8: hits summed, / N
                dist_sum[row] += score * len(tokens)                             # sum of traces, / N
                acts[row].append(motion_emb)
            n += len(tokens)
        gt = np.concatenate([embed_eval_batch(evaluator, vectorizer, t, m, l, device)[1]   # B.9 step 4: 2nd GT pass
                             for _, t, m, l, _ in loader])
        mu_gt, sigma_gt = activation_statistics(gt)
        for row in rows:
            a = np.concatenate(acts[row])
            times = diversity_times or (300 if len(a) > 300 else 100)           # B.7 (T2M-GPT / MoMask rule)
            results[row]["FID"].append(frechet_distance(*activation_statistics(a), mu_gt, sigma_gt))
            for k, name in enumerate(("Top1", "Top2", "Top3")):
                results[row][name].append(float(top[row][k] / n))
            results[row]["MM-Dist"].append(dist_sum[row] / n)
            results[row]["Diversity"].append(diversity(a, times, protocol_stream(seed, rep, row, "diversity")))
        if mm_captions and generators:                                           # B.9 step 6: GT shows '-'
            mm_caps, mm_lens = _mm_items(dataset, mm_captions,                   # shared by all generated rows
                                         protocol_stream(seed, rep, "", "multimodality items"))
            mm_lens = generation_lengths(mm_lens, kind)
            for row, generate in generators.items():
                mm_acts = mm_embeddings(evaluator, generate, mm_caps, mm_lens, mm_repeats, batch_size, device,
                                        progress, f"MultiModality {row}: {mm_captions} x {mm_repeats}")
                pairs = protocol_stream(seed, rep, row, "multimodality pairs")
                results[row]["MultiModality"].append(multimodality(mm_acts, mm_times, pairs))    # B.8 MultiModality
    return results


def moclip_retrieval(evaluator, vectorizer, moclip_model, dataset, eval_mean, eval_std, replications=20,
                     batch_size=32, seed=0, device="cpu", progress=True):
    """Table 5 analogue -> {row: {'Top1'|'Top2'|'Top3': [value per replication]}} on one eval-mode test set.

    Every batch of the B.9 loader is scored three ways on the same captions and crops: the evaluator's text->motion
    R-precision (Euclidean, B.8, as evaluate_protocol) and MoCLIP text->motion and motion->text (cosine, as
    moclip.retrieval_eval). eval_mean/eval_std (D,) are the dataset's evaluator normalisation, undone for MoCLIP.
    Replication 1 sees exactly evaluate_protocol's first pass for the same seed; later passes differ because the
    protocol makes a second GT pass per replication for FID.
    """
    rows = {"evaluator": "Evaluator (text→motion)", "t2m": "MoCLIP text→motion", "m2t": "MoCLIP motion→text"}
    loader = _protocol_loader(dataset, batch_size, seed)
    moclip_model.eval()
    results = {name: {m: [] for m in ("Top1", "Top2", "Top3")} for name in rows.values()}
    for rep in tqdm(range(replications), desc="replications", disable=not progress):
        hits, n = {key: np.zeros(3) for key in rows}, 0
        for captions, tokens, motions, m_lens, _ in loader:
            text_emb, motion_emb = embed_eval_batch(evaluator, vectorizer, tokens, motions, m_lens, device)
            hits["evaluator"] += _batch_metrics(text_emb, motion_emb)[0] * len(tokens)     # B.8 R-precision
            # eval-normalised -> raw -> MoCLIP's own normalisation: the B.7 bridge with the roles of the stats swapped
            x = to_eval_space(motions, torch.as_tensor(eval_mean), torch.as_tensor(eval_std),
                              moclip_model.mean.cpu(), moclip_model.std.cpu())
            x = x * (torch.arange(x.shape[1])[None, :] < m_lens[:, None])[..., None]   # padded frames stay 0
            with torch.no_grad():
                text = F.normalize(moclip_model.encode_text(captions), dim=-1)                      # (B, D_a)
                motion = F.normalize(moclip_model.encode_motion(x.to(moclip_model.device), m_lens), dim=-1)
            similarity = text @ motion.T                                   # (B, B) cosines: text i vs motion j
            for key, sim in (("t2m", similarity), ("m2t", similarity.T)):
                accuracy = topk_accuracy(sim)                              # {k: fraction}, ties count against
                hits[key] += np.array([accuracy[k] for k in (1, 2, 3)]) * len(tokens)
            n += len(tokens)
        for key, name in rows.items():
            for k, metric in enumerate(("Top1", "Top2", "Top3")):
                results[name][metric].append(float(hits[key][k] / n))
    return results


class ValidationProbe:
    """Fig. 4's measurement during training (train.py --eval-every): FID, R-precision and MM-Dist of a model on one
    fixed pass of the validation split.

    Built once: the dataset's evaluator, the first `batches` batches of the B.9 loader (captions, crops, lengths;
    all of one pass by default) and, for FID, the ground truth of a second pass over the same split (other crops), as
    B.9 step 4 does per replication. Every call generates those captions with the same seed, so two points of a run,
    and two runs with the same probe settings, differ only by their models. With few batches FID is biased upwards:
    compare points with each other, not with Table 1. `real` holds the ground truth's own values on the same batches.
    Building and calling it leave torch's and Python's global random streams as they were, so a training run draws
    the same numbers with and without it.
    """

    def __init__(self, dataset, data_root=None, split="val", batches=0, seed=0, device="cpu", guidance=2.5,
                 steps=10, evaluator_dir=None):
        with _random_streams_kept():           # the evaluator's construction initialises (then replaces) weights
            self._build(dataset, data_root, split, batches, seed, device, guidance, steps, evaluator_dir)

    def _build(self, dataset, data_root, split, batches, seed, device, guidance, steps, evaluator_dir):
        args = argparse.Namespace(dataset=dataset, data_root=data_root, split=split, device=device,
                                  evaluator_dir=evaluator_dir, glove_dir=None, eval_meta_dir=None)
        self.evaluator, self.vectorizer, data = _protocol_inputs(args)
        self.kind, self.device, self.seed, self.guidance, self.steps = KINDS[dataset], device, seed, guidance, steps
        self.eval_mean, self.eval_std = data.eval_mean, data.eval_std
        loader = _protocol_loader(data, 32, seed)
        self.batches = [batch[:4] for _, batch in zip(range(batches or len(loader)), loader)]   # the scored pass
        reference = [embed_eval_batch(self.evaluator, self.vectorizer, t, m, l, device)[1]    # the second pass
                     for _, t, m, l, _ in loader]
        self.reference = activation_statistics(np.concatenate(reference))
        pairs = [embed_eval_batch(self.evaluator, self.vectorizer, tokens, motions, m_lens, device)   # (text, motion)
                 for _, tokens, motions, m_lens in self.batches]
        self.text_embs = [text_emb for text_emb, _ in pairs]
        self.real = self._metrics([motion_emb for _, motion_emb in pairs])

    def __len__(self):
        return 32 * len(self.batches)

    def _metrics(self, motion_embs):
        """Per-batch motion embeddings, in the order of self.batches -> the metrics against the fixed text."""
        hits, dist = np.zeros(3), 0.0
        for text_emb, motion_emb in zip(self.text_embs, motion_embs):
            batch_hits, score = _batch_metrics(text_emb, motion_emb)
            hits, dist = hits + batch_hits * len(text_emb), dist + score * len(text_emb)
        n = len(self)
        return {"FID": frechet_distance(*activation_statistics(np.concatenate(motion_embs)), *self.reference),
                "Top1": hits[0] / n, "Top2": hits[1] / n, "Top3": hits[2] / n, "MM-Dist": dist / n}

    def __call__(self, sampler):
        """A sample.LUMASampler (e.g. over train.py's EMA UNet) -> {"FID", "Top1", "Top2", "Top3", "MM-Dist"}."""
        generate = luma_generator(sampler, self.eval_mean, self.eval_std, self.guidance, self.steps, self.seed)
        motion_embs = []
        with _random_streams_kept():
            for captions, _, _, m_lens in self.batches:
                lens = generation_lengths(m_lens, self.kind)          # made and scored at the clamped lengths
                motion_embs.append(_embed_motions(self.evaluator, generate(captions, lens), lens, self.device))
        return self._metrics(motion_embs)


@contextlib.contextmanager
def _random_streams_kept():
    """Run a block without moving torch's CPU generator or Python's `random` (the block may seed or draw them)."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(state)


def _resolve_evaluator_paths(args):
    """Default evaluator, GloVe and meta folders: the official layout, or train-evaluator's output for synthetic."""
    built = args.dataset in BUILT_DATASETS                # no official weights: train-evaluator's output
    base = Path(args.evaluator_dir or (f"checkpoints/evaluator_{args.dataset}" if built else "checkpoints"))
    glove = Path(args.glove_dir or (base / "glove" if built else "glove"))
    meta = Path(args.eval_meta_dir or base)
    return base, glove, meta


def _luma_generator(checkpoint, eval_mean, eval_std, device, guidance, steps, seed):
    """luma_generator for a train.py final.pt."""
    from sample import load_model
    return luma_generator(load_model(checkpoint, device), eval_mean, eval_std, guidance, steps, seed)


def luma_generator(sampler, eval_mean, eval_std, guidance=2.5, steps=10, seed=0):
    """A sample.LUMASampler -> fn(captions, m_lens) -> (B, 196, D) eval-normalised samples generated at the GT lengths
    (B.7, MDM). Each call draws new noise (seeds seed, seed + 1, ...), so replications and MM chunks differ."""
    counter = [seed]

    def generate(captions, m_lens):
        lengths = [int(v) for v in m_lens]
        feats = sampler.generate_features(list(captions), lengths, guidance=guidance, steps=steps, seed=counter[0])
        counter[0] += 1                                  # new noise for every batch, replication and MM chunk
        out = np.zeros((len(lengths), MAX_EVAL_LEN, len(eval_mean)), np.float32)
        for i, f in enumerate(feats):                           # numpy (length_i, D) each
            # generate_features returns denormalised features, so only the evaluator normalisation is left (B.7);
            # MultiModality generates through this function too, so its samples get the same bridge
            out[i, :lengths[i]] = (f[:lengths[i]] - eval_mean) / eval_std
        return torch.from_numpy(out)
    return generate


def _protocol_inputs(args):
    """(evaluator, word vectoriser, eval-mode test split normalised with the evaluator's meta stats) for t2m, moclip."""
    kind = KINDS[args.dataset]
    root = Path(args.data_root or DATA_ROOTS[args.dataset])
    prepare_dataset(args.dataset, root)
    evaluator_dir, glove_dir, meta_dir = _resolve_evaluator_paths(args)
    if args.dataset in BUILT_DATASETS and not args.evaluator_dir and not evaluator_dir.is_dir():
        raise InputError(f"{evaluator_dir} does not exist: {args.dataset} has no official evaluator, so train one "
                         f"first with `python evaluate.py train-evaluator --dataset {args.dataset}` (it writes that "
                         f"folder), or point --evaluator-dir at one")
    evaluator = load_evaluator(evaluator_dir, {"t2m": 263, "kit": 251}[kind]).to(args.device)
    vectorizer = WordVectorizer(glove_dir)
    eval_mean, eval_std = load_eval_meta(meta_dir, kind)
    dataset = MotionDataset(root, args.split, kind, mode="eval", eval_mean=eval_mean, eval_std=eval_std)
    print(f"{args.dataset} {args.split}: {len(dataset)} samples -> {len(dataset) // 32} batches of 32 per pass; "
          f"evaluator {evaluator_dir} (weights sha1 {weights_sha1(evaluator)})")
    return evaluator, vectorizer, dataset


def row_names(checkpoints):
    """A table row name per checkpoint (or other file of a run folder): its folder's name, or as many trailing folders as tell the rows apart
    (runs/study/luma/seed_0/final.pt and runs/study/no_anchors/seed_0/final.pt -> luma/seed_0, no_anchors/seed_0).
    A seed folder (seed_<n>) is always named with its parent, the variant, so that one variant's seeds evaluated on
    their own (runs/study/no_fre/seed_{0,1,2}) still give no_fre/seed_0 ... for analysis.py seeds to group."""
    folders = [Path(c).resolve().parent.parts for c in checkpoints]
    if not folders:
        return []
    if len(set(folders)) < len(folders):
        raise InputError(f"two of {', '.join(map(str, checkpoints))} share a folder; their rows are named by the "
                         f"folder, so pass one per run folder")
    first_depth = 2 if any(re.fullmatch(r"seed_\d+", f[-1]) for f in folders if f) else 1
    for depth in range(first_depth, max(len(f) for f in folders) + 1):
        names = ["/".join(f[-depth:]) or "LUMA" for f in folders]
        if len(set(names)) == len(names):
            return names


def run_t2m(args):
    """Table 1: Real row (and a LUMA checkpoint's row) under the standard protocol, mean ± 95% CI -> table + JSON."""
    checkpoints = [] if args.real_only else args.checkpoint
    names = row_names(checkpoints)                          # before the slow part: a clash is the user's to fix
    evaluator, vectorizer, dataset = _protocol_inputs(args)
    generators = {}
    for name, checkpoint in zip(names, checkpoints):
        generators[name] = _luma_generator(checkpoint, dataset.eval_mean, dataset.eval_std, args.device,
                                           args.guidance, args.steps, args.seed)
    results = evaluate_protocol(evaluator, vectorizer, dataset, args.replications, generators, seed=args.seed,
                                device=args.device, mm_captions=args.mm_captions, mm_repeats=args.mm_repeats,
                                mm_times=args.mm_times, kind=KINDS[args.dataset])
    table = results_table(results)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "t2m_table.md", lambda f: f.write(table.encode()))
    write_results_json(results, out / "t2m_results.json", command=" ".join(sys.argv), dataset=args.dataset,
                       replications=args.replications, split=args.split, test_samples=len(dataset),
                       evaluator_sha1=weights_sha1(evaluator), mm_captions=args.mm_captions,
                       mm_repeats=args.mm_repeats, mm_times=args.mm_times)
    print(f"wrote {out / 't2m_table.md'} and {out / 't2m_results.json'}")
    return results


def run_moclip(args):
    """Table 5 analogue: MoCLIP retrieval both ways next to the evaluator's R-precision on the same batches."""
    checkpoint = args.checkpoint or f"checkpoints/moclip_{args.dataset}.pt"
    moclip_model = load_moclip(checkpoint, args.device)
    evaluator, vectorizer, dataset = _protocol_inputs(args)
    if moclip_model.config["motion_dim"] != evaluator.dim_pose:
        raise InputError(f"{checkpoint} encodes {moclip_model.config['motion_dim']}-d motions but the {args.dataset} "
                         f"evaluator expects {evaluator.dim_pose}; pass the MoCLIP trained on --dataset {args.dataset}")
    results = moclip_retrieval(evaluator, vectorizer, moclip_model, dataset, dataset.eval_mean, dataset.eval_std,
                               args.replications, seed=args.seed, device=args.device)
    table = results_table(results, ("Top1", "Top2", "Top3"))
    print(f"Retrieval in batches of 32 (31 distractors) of the {args.dataset} {args.split} split, the same captions "
          f"and crops for every row; evaluator: Euclidean on its co-embeddings, MoCLIP: cosine; mean ± 95% CI over "
          f"{args.replications} replications\n{table}")
    out = Path(args.out)
    write_atomic(out / "moclip_table.md", lambda f: f.write(table.encode()))
    write_results_json(results, out / "moclip_results.json", command=" ".join(sys.argv), dataset=args.dataset,
                       checkpoint=str(checkpoint), replications=args.replications, split=args.split,
                       test_samples=len(dataset), evaluator_sha1=weights_sha1(evaluator),
                       moclip_sha1=weights_sha1(moclip_model))
    print(f"wrote {out / 'moclip_table.md'} and {out / 'moclip_results.json'}")
    return results


def run_train_evaluator(args):
    train_evaluator(args.dataset, args.data_root, args.out, ae_steps=args.ae_steps, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)


# -----------------------------------------------------------------------------
# 8. Prompt checks: the README's three sample prompts, measured on the joints instead of looked at
# -----------------------------------------------------------------------------

# (prompt, the measure that decides, its threshold): what "it did what the text says" means, per prompt
PROMPT_CHECKS = (("a person jumps", "airborne frames", 3),                       # both toes above toe_height
                 ("a person waves with the right hand", "right / left wrist range", 2.0),
                 ("a person walks forward then turns left", "walks and turns left", 1))


def motion_measures(joints, toe_height=0.05):
    """What a reader looks for in a t2m filmstrip, from joints (T, 22, 3) in metres, Y up, facing +Z at frame 0."""
    toes = joints[:, [10, 11], 1]                                       # left_foot, right_foot heights
    root = joints[:, 0]
    across = joints[:, 1] - joints[:, 2]                                # left hip - right hip: the person's left
    forward = np.cross(across, [0.0, 1.0, 0.0])
    heading = np.unwrap(np.arctan2(forward[:, 0], forward[:, 2]))       # from +Z towards +X (the left) is positive
    wrist_range = np.ptp(joints[:, [20, 21], 1], axis=0)                # left, right wrist height ranges
    return {"airborne frames": int(((toes > toe_height).all(axis=1)).sum()),
            "lowest root (m)": float(root[:, 1].min()),
            "root travel (m)": float(np.linalg.norm(root[-1, [0, 2]] - root[0, [0, 2]])),
            "right / left wrist range": float(wrist_range[1] / max(wrist_range[0], 1e-6)),
            "right wrist range (m)": float(wrist_range[1]), "left wrist range (m)": float(wrist_range[0]),
            "heading change (deg)": float(np.degrees(heading[-1] - heading[0]))}


def transition_measures(joints, seams, kind="t2m", contact_height=0.05, seam_width=2):
    """How smooth an edited or long motion is where its parts meet, from joints (T, J, 3) in metres, Y up.

    Per frame, the mean over joints of the speed |x_{t+1} - x_t| fps and of the acceleration |x_{t+1} - 2 x_t +
    x_{t-1}| fps^2; "seam" values average the frames within seam_width of each seam frame, "inside" values the rest.
    Foot skating: the mean horizontal speed of a foot joint (left_foot / right_foot) over the frames it is in
    contact, i.e. lower than contact_height above the motion's lowest foot (HumanML3D puts the floor at 0)."""
    fps = SKELETONS[kind].fps
    speed = np.linalg.norm(np.diff(joints, axis=0), axis=-1).mean(1) * fps                  # (T-1,) at t + 1/2
    accel = np.linalg.norm(np.diff(joints, 2, axis=0), axis=-1).mean(1) * fps ** 2          # (T-2,) at t
    near = np.zeros(len(joints), bool)
    for s in seams:
        near[max(0, s - seam_width):s + seam_width + 1] = True
    near_speed, near_accel = near[1:] | near[:-1], near[1:-1]
    feet = joints[:, [SKELETONS[kind].fid_l[1], SKELETONS[kind].fid_r[1]]]                  # (T, 2, 3)
    height = feet[..., 1] - feet[..., 1].min()
    contact = (height[1:] < contact_height) & (height[:-1] < contact_height)                # (T-1, 2)
    foot_speed = np.linalg.norm(np.diff(feet[..., [0, 2]], axis=0), axis=-1) * fps          # (T-1, 2)

    def mean(values, where):
        return float(values[where].mean()) if where.any() else None
    return {"seam_speed": mean(speed, near_speed), "inside_speed": mean(speed, ~near_speed),
            "seam_acceleration": mean(accel, near_accel), "inside_acceleration": mean(accel, ~near_accel),
            "foot_skate": float(foot_speed[contact].mean()) if contact.any() else 0.0,
            "contact_frames": int(contact.sum())}


def prompt_checks(sampler, samples=4, frames=120, seed=0, toe_height=0.05, out=None):
    """The three PROMPT_CHECKS, `samples` generations each (one batch, one seed) -> {prompt: [measures per sample]};
    a sample passes when its deciding measure reaches the threshold ("walks and turns left": >= 1 m of travel and
    a heading change of >= +45 degrees). With `out`, a filmstrip per sample too."""
    results = {}
    for prompt, measure, threshold in PROMPT_CHECKS:
        results[prompt] = []
        for i, joints in enumerate(sampler.generate([prompt] * samples, [frames] * samples, seed=seed)):
            m = motion_measures(joints, toe_height)
            m["walks and turns left"] = int(m["root travel (m)"] >= 1.0 and m["heading change (deg)"] >= 45)
            m["passes"] = bool(m[measure] >= threshold)
            results[prompt].append(m)
            if out is not None:
                from data import render_filmstrip
                render_filmstrip(joints, Path(out) / f"{prompt.replace(' ', '_')}_{i}.png", title=prompt)
    return results


def prompt_table(results):
    """Markdown: one row per prompt and sample with the measures, and the passes out of the samples."""
    columns = ["airborne frames", "lowest root (m)", "root travel (m)", "right wrist range (m)", "left wrist range (m)",
               "heading change (deg)"]
    lines = ["| prompt | sample | " + " | ".join(columns) + " | passes |", "|---" * (len(columns) + 3) + "|"]
    for prompt, rows in results.items():
        for i, m in enumerate(rows):
            cells = [f"{m[c]:.2f}" if isinstance(m[c], float) else str(m[c]) for c in columns]
            lines.append(f"| {prompt} | {i} | " + " | ".join(cells) + f" | {'yes' if m['passes'] else 'no'} |")
    lines.append("")
    lines += [f"- {prompt}: {sum(m['passes'] for m in rows)} of {len(rows)} pass ({measure} >= {threshold})"
              for (prompt, measure, threshold), rows in zip(PROMPT_CHECKS, results.values())]
    return "\n".join(lines) + "\n"


def run_prompts(args):
    from sample import load_model
    sampler = load_model(args.checkpoint, args.device)
    results = prompt_checks(sampler, args.samples, args.frames, args.seed, args.toe_height,
                            args.out if args.filmstrips else None)
    table = prompt_table(results)
    print(table)
    write_atomic(Path(args.out) / "prompts.md", lambda f: f.write(table.encode()))
    write_atomic(Path(args.out) / "prompts.json", lambda f: f.write(json.dumps(
        {"checkpoint": str(args.checkpoint), "toe_height": args.toe_height, "results": results}, indent=1).encode()))
    print(f"wrote {Path(args.out) / 'prompts.md'} and prompts.json" + (" and the filmstrips" if args.filmstrips else ""))
    return results


# -----------------------------------------------------------------------------
# 9. Command line
# -----------------------------------------------------------------------------

def _add_protocol_args(p, out):
    """The flags t2m and moclip share: data, evaluator files, replications, seed, device, output folder."""
    p.add_argument("--dataset", default="humanml3d", choices=list(DATA_ROOTS))
    p.add_argument("--data-root", default=None, help="dataset folder (HumanML3D layout; default data/<dataset>)")
    p.add_argument("--evaluator-dir", default=None,
                   help="folder with <t2m|kit>/text_mot_match/model/finest.tar (default: checkpoints, or "
                        "checkpoints/evaluator_<dataset> for synthetic and bandai)")
    p.add_argument("--glove-dir", default=None, help="folder with our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl "
                                                     "(default: glove, or <evaluator-dir>/glove for synthetic)")
    p.add_argument("--eval-meta-dir", default=None, help="folder with the evaluator mean/std (default: --evaluator-dir)")
    p.add_argument("--replications", type=int_range(1), default=20, help="replications for mean ± 95%% CI (paper: 20)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="split to evaluate on: test (Table 1), or val for App. D's grid search (default test)")
    _add_run_args(p, out)


def _add_run_args(p, out, out_help="folder the results are written to"):
    """--seed, --device and --out, which every subcommand has."""
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=folder_path, default=out, help=out_help)


def get_args(argv=None):
    """The command line, every value checked before any work starts (a bad one exits with the usage line, status 2)."""
    count = int_range(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("t2m", help="standard protocol (Table 1): Real row and a LUMA checkpoint, 20 replications")
    p.add_argument("--checkpoint", nargs="+", default=None,
                   help="LUMA checkpoint(s) to evaluate (train.py final.pt); one table row each, named by its folder "
                        "(by its last folders where names repeat, e.g. luma/seed_0)")
    p.add_argument("--real-only", action="store_true", help="only the ground-truth 'Real' row (no checkpoint needed)")
    _add_protocol_args(p, "runs/eval")
    p.add_argument("--guidance", type=float_range(0), default=2.5,
                   help="classifier-free guidance scale for generation (>= 0)")
    p.add_argument("--steps", type=int_range(1, 999), default=10, help="sampler steps for generation, 1..999")
    p.add_argument("--mm-captions", type=int_range(0), default=100,
                   help="MultiModality: random test captions per replication, each generated --mm-repeats times "
                        "(B.9 mm_num_samples 100); 0 skips it. At the defaults that is 3,000 generations per row and "
                        "replication, minutes each on a CPU: --mm-captions 10 keeps a CPU run to minutes in all")
    p.add_argument("--mm-repeats", type=count, default=30, help="MultiModality: generations per caption (B.9: 30)")
    p.add_argument("--mm-times", type=count, default=10,
                   help="MultiModality: pairs of repeats averaged per caption, at most --mm-repeats (B.9: 10)")
    p = sub.add_parser("train-evaluator", help="train the evaluator architecture for datasets without official "
                                               "weights: movement autoencoder, then text-motion matching (B.4)")
    p.add_argument("--dataset", default="synthetic", choices=list(DATA_ROOTS))
    p.add_argument("--data-root", default=None, help="dataset folder (default data/<dataset>)")
    p.add_argument("--ae-steps", type=count, default=200, help="movement autoencoder steps (batch 128, window 24)")
    p.add_argument("--epochs", type=count, default=3, help="text-motion matching epochs (official: up to 300)")
    p.add_argument("--batch-size", type=int_range(2), default=32, help="text-motion matching batch (official: 8)")
    p.add_argument("--lr", type=float_range(0, low_open=True), default=5e-4,
                   help="Adam learning rate of both stages (official 1e-4; higher to train in minutes on CPU)")
    _add_run_args(p, None, "default checkpoints/evaluator_<dataset>: writes glove/, <kind>_mean.npy, <kind>_std.npy "
                           "and <kind>/text_mot_match/model/finest.tar")
    p = sub.add_parser("moclip", help="Table 5 analogue: MoCLIP retrieval (text->motion, motion->text) next to the "
                                      "evaluator's R-precision, on the same test batches")
    p.add_argument("--checkpoint", default=None, help="MoCLIP checkpoint (default checkpoints/moclip_<dataset>.pt)")
    _add_protocol_args(p, "runs/eval_moclip")
    p = sub.add_parser("prompts", help="the README's three sample prompts, each generated --samples times, measured "
                                       "on the joints: airborne frames, root travel, wrist ranges, heading change")
    p.add_argument("--checkpoint", required=True, help="a train.py final.pt")
    p.add_argument("--samples", type=int_range(1, 64), default=4, help="samples per prompt (one batch, one seed)")
    p.add_argument("--frames", type=int_range(41, 196), default=120, help="frames per sample (120 = 6 s)")
    p.add_argument("--toe-height", type=float_range(0, low_open=True), default=0.05,
                   help="both toes above this (m) make a frame airborne")
    p.add_argument("--filmstrips", action="store_true", help="also write a filmstrip PNG per sample")
    _add_run_args(p, "runs/prompts")
    args = parser.parse_args(argv)
    p = sub.choices[args.command]
    if args.command == "t2m" and args.checkpoint is None and not args.real_only:
        p.error("pass --checkpoint CKPT (a train.py final.pt) or --real-only for the ground-truth row alone")
    if args.command == "t2m" and args.mm_captions and args.mm_times > args.mm_repeats:
        p.error(f"--mm-times ({args.mm_times}) is more than --mm-repeats ({args.mm_repeats}): MultiModality averages "
                f"--mm-times pairs of the --mm-repeats generations of each caption")
    return args


def main(argv=None):
    args = get_args(argv)                          # usage errors: the usage line and exit status 2, before any work
    with user_errors():                            # expected errors: one paragraph, exit status 1; bugs: a traceback
        return {"t2m": run_t2m, "moclip": run_moclip, "train-evaluator": run_train_evaluator,
                "prompts": run_prompts}[args.command](args)


if __name__ == "__main__":
    main()
