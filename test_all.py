"""
The LUMA test suite: a specification of every component, runnable on a CPU in minutes.

    python -m pytest -q test_all.py

Sections follow the components (data, synthetic, moclip, unet, anchors + diffusion, train + sample, evaluate). Reference
implementations (scipy's DCT and Gaussian filter, diffusers' DPM-Solver++ and DDPM) are test-only dependencies; a test
whose tool is missing fails (it is never skipped) and says how to install it; .ci/run installs them all. Golden data comes from ../shared/reference/.
"""

import csv
import importlib
import inspect
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import analysis
import data
import evaluate
import moclip
import pickle
import sample
import synthetic
import train
from anchors import (AnchorWeighting, DualAnchor, FiLM, cosine_anchor_weight, dct, dct_matrix, dual_anchor_loss,
    frequency_anchor_loss, idct, lowfreq_dct, temporal_anchor_loss)
from analysis import dct_spectrum, energy_share, final_layer_attention, gradient_flow, plot_gradient_flow
from diffusion import (alphas_cumprod, ddpm_sample, dpm_solver_pp, dpm_solver_schedule, guided_x0, inpainting,
    linear_betas, masked_mse, q_sample)
from evaluate import (POS_CLASSES, RestrictedUnpickler, T2MEvaluator, WordVectorizer, activation_statistics,
    diversity, euclidean_distance_matrix, evaluator_text_input, frechet_distance, generation_lengths, load_eval_meta,
    load_evaluator, matching_score, mean_ci, multimodality, r_precision, restricted_load, results_table,
    save_evaluator, to_eval_space, write_results_json)
from moclip import (MoCLIP, contrastive_loss, load_moclip, moclip_from_state, moclip_state, retrieval_eval, set_stage,
    topk_accuracy)
from unet import ANCHOR_BLOCKS, FrameGroupNorm, LinearCrossAttention, PRESETS, UNet, mish, timestep_embedding

# The repository sits beside shared/ (reference data and specs), in CI as on a developer machine.
REPO_ROOT = Path(__file__).resolve().parent
SHARED = REPO_ROOT.parent / "shared"
# The test-only reference implementations (requirements-test.txt)
SCIPY_INSTALL, DIFFUSERS_INSTALL = "pip install scipy", "pip install diffusers"


def require(module, install):
    """Import a test-only tool, or fail saying how to install it: a missing reference is a red test, never a skip."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"this test needs {module} ({error}); install it with `{install}` (.ci/run does)", pytrace=False)


def require_program(name, install):
    """The path of a program on PATH, or fail saying how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"this test needs the program {name} on PATH; install it with `{install}` (.ci/run does)",
                    pytrace=False)
    return path


# =====================================================================================================================
# data.py: the HumanML3D representation, the dataset loader, stick-figure rendering
# =====================================================================================================================

REF = SHARED / "reference" / "humanml3d"


def _axis_angle_quat(axis, angle):
    """(w, x, y, z) quaternions for a fixed unit axis and angles (...,)."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    angle = np.asarray(angle, dtype=np.float64)
    return np.concatenate([np.cos(angle / 2)[..., None], np.sin(angle / 2)[..., None] * axis], axis=-1)


def _fk_motion(kind="t2m", T=60, seed=0, yaw_total=0.6, amplitude=0.35, bone_scale=1.0):
    """A smooth forward-kinematics motion on the skeleton's target bone lengths (t2m) / unit-ish lengths (kit).

    Frame 0 is the rest pose (every local rotation identity, zero yaw) with the root at the XZ origin, and the
    whole motion is lifted so its lowest joint touches the floor: i.e. already in HumanML3D's canonical frame.
    """
    skel = data.SKELETONS[kind]
    rng = np.random.default_rng(seed)
    J = skel.num_joints
    if skel.bone_lengths is not None:
        lengths = np.array(skel.bone_lengths) * bone_scale
    else:  # kit: mm-like units; hips narrower than shoulders, else KIT's (buggy) IK 'across' vector vanishes
        lengths = np.random.default_rng(100).uniform(80.0, 300.0, size=J) * bone_scale
        lengths[[11, 16]] = 70.0
    lengths[0] = 0.0
    offsets = lengths[:, None] * np.asarray(skel.raw_offsets, dtype=np.float64)
    s = np.linspace(0.0, 1.0, T)
    quat = np.zeros((T, J, 4))
    quat[..., 0] = 1.0
    for j in range(1, J):
        axis = rng.normal(size=3)
        freq, phase = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        quat[:, j] = _axis_angle_quat(axis, amplitude * (np.sin(2 * np.pi * freq * s + phase) - np.sin(phase)))
    quat[:, 0] = _axis_angle_quat([0, 1, 0], yaw_total * s ** 2)        # root yaw, 0 at frame 0
    if kind == "kit":  # the KIT rest pose faces -Z under KIT's face joints; turn it to face +Z
        quat[:, 0] = data.qmul(_axis_angle_quat([0, 1, 0], np.pi), quat[:, 0])
    root = np.stack([0.4 * np.sin(2.0 * s), 1.0 + 0.03 * np.sin(6 * s), 1.2 * s], -1) * lengths[1:].sum() / 5.0
    root -= root[0] * np.array([1.0, 0.0, 1.0])
    joints = np.zeros((T, J, 3))
    joints[:, 0] = root
    for chain in skel.kinematic_chain:
        r = quat[:, 0]
        for a, b in zip(chain[:-1], chain[1:]):
            r = data.qmul(r, quat[:, b])
            joints[:, b] = joints[:, a] + data.qrot(r, np.broadcast_to(offsets[b], (T, 3)))
    joints[..., 1] -= joints[..., 1].min()
    return joints


# =============================================================================
# data.py — skeletons and quaternions
# =============================================================================

def test_skeleton_constants_are_consistent():
    for kind, (J, D, fps) in {"t2m": (22, 263, 20.0), "kit": (21, 251, 12.5)}.items():
        skel = data.SKELETONS[kind]
        assert (skel.num_joints, skel.feature_dim, skel.fps) == (J, D, fps)
        assert D == 1 + 2 + 1 + 3 * (J - 1) + 6 * (J - 1) + 3 * J + 4                  # spec A.4
        assert len(skel.parents) == len(skel.raw_offsets) == J
        assert sorted({j for c in skel.kinematic_chain for j in c}) == list(range(J))
        assert sorted(skel.left_joints + skel.right_joints + tuple(
            j for j in range(J) if j not in skel.left_joints + skel.right_joints)) == list(range(J))
    t2m = data.SKELETONS["t2m"]
    assert t2m.parents == (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
    assert data.SKELETONS["kit"].parents == (-1, 0, 1, 2, 3, 3, 5, 6, 3, 8, 9, 0, 11, 12, 13, 14, 0, 16, 17, 18, 19)
    # the reference clip carries exactly the target bone lengths (spec A.2)
    joints = np.load(REF / "new_joints_000000.npy")
    lengths = [np.linalg.norm(joints[:, j] - joints[:, p], axis=-1) for j, p in enumerate(t2m.parents) if p >= 0]
    np.testing.assert_allclose(np.stack(lengths, -1), np.broadcast_to(t2m.bone_lengths[1:], (len(joints), 21)),
                               atol=2e-6)


def test_quaternion_helpers_match_rotation_matrices():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    r = rng.normal(size=(50, 4))
    r /= np.linalg.norm(r, axis=-1, keepdims=True)
    v = rng.normal(size=(50, 3))
    mq, mr = data.quat_to_matrix(q), data.quat_to_matrix(r)
    np.testing.assert_allclose(data.qrot(q, v), np.einsum("nij,nj->ni", mq, v), atol=1e-12)
    np.testing.assert_allclose(data.quat_to_matrix(data.qmul(q, r)), mq @ mr, atol=1e-12)     # Hamilton order
    np.testing.assert_allclose(data.qrot(data.qinv(q), data.qrot(q, v)), v, atol=1e-12)
    np.testing.assert_allclose(data.cont6d_to_matrix(data.quat_to_cont6d(q)), mq, atol=1e-12)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    qb = data.qbetween(a, b)
    assert (qb[:, 0] >= 0).all()
    np.testing.assert_allclose(data.qrot(qb, a / np.linalg.norm(a, axis=-1, keepdims=True)),
                               b / np.linalg.norm(b, axis=-1, keepdims=True), atol=1e-12)
    qt = data.qrot(torch.from_numpy(q), torch.from_numpy(v)).numpy()                           # torch path
    np.testing.assert_allclose(qt, data.qrot(q, v), atol=1e-12)


def test_gaussian_filter_matches_scipy():
    ndimage = require("scipy.ndimage", SCIPY_INSTALL)
    rng = np.random.default_rng(1)
    for T, sigma in [(200, 20.0), (40, 20.0), (7, 20.0), (100, 3.3), (1, 2.0)]:   # T shorter than the radius too
        x = rng.normal(size=(T, 3)).cumsum(0)
        ours = data.gaussian_filter1d(x, sigma, axis=0)
        ref = ndimage.gaussian_filter1d(x, sigma, axis=0, mode="nearest")
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    x = rng.normal(size=(3, 50))
    np.testing.assert_allclose(data.gaussian_filter1d(x, 4.0, axis=1),
                               ndimage.gaussian_filter1d(x, 4.0, axis=1, mode="nearest"), atol=1e-12)


# =============================================================================
# data.py — positions <-> features (golden files and round trips)
# =============================================================================

def test_features_to_joints_golden():
    vecs = np.load(REF / "new_joint_vecs_000000.npy")
    joints = np.load(REF / "new_joints_000000.npy")
    ours = data.features_to_joints(vecs)
    assert ours.shape == joints.shape == (116, 22, 3)
    assert np.abs(ours - joints).max() < 1e-5
    ours_t = data.features_to_joints(torch.from_numpy(vecs).float())
    assert isinstance(ours_t, torch.Tensor) and ours_t.dtype == torch.float32
    assert (ours_t.numpy() - joints).__abs__().max() < 1e-5


def test_joints_to_features_golden():
    vecs = np.load(REF / "new_joint_vecs_000000.npy")     # made from the 117-frame source clip
    joints = np.load(REF / "new_joints_000000.npy")       # 116 frames -> 115 feature rows
    ours = data.joints_to_features(joints)
    assert ours.shape == (115, 263) and ours.dtype == np.float32
    assert np.abs(ours[:80] - vecs[:80]).max() < 1e-4
    # later rows drift by design: one frame fewer changes the sigma=20 heading smoothing near the end
    assert np.abs(ours[-1] - vecs[114]).max() > 1e-5
    np.testing.assert_array_equal(ours[:, -4:], vecs[:115, -4:])             # foot contacts exactly, all rows
    assert set(np.unique(ours[:, -4:])) <= {0.0, 1.0}


def test_round_trip_on_canonical_fk_motions():
    # joints -> features -> joints is exact only for motions already on the target skeleton, on the floor, with
    # the root at the XZ origin and facing +Z at frame 0 (everything else is canonicalised away): build such ones.
    for kind, seed in [("t2m", 0), ("t2m", 1), ("kit", 2)]:
        joints = _fk_motion(kind, T=70, seed=seed)
        feats = data.joints_to_features(joints, kind)
        assert feats.shape == (69, data.SKELETONS[kind].feature_dim)
        back = data.features_to_joints(feats.astype(np.float64), kind)
        scale = 1.0 if kind == "t2m" else 1e-3      # kit units are mm-like
        assert np.abs(back - joints[:-1]).max() * scale < 1e-5, kind
    # and on the reference clip itself (already canonical): reproduces its own positions
    ref = np.load(REF / "new_joints_000000.npy").astype(np.float64)
    back = data.features_to_joints(data.joints_to_features(ref).astype(np.float64))
    assert np.abs(back - ref[:-1]).max() < 1e-5


def test_features_are_invariant_to_placement_heading_and_body_size():
    joints = _fk_motion("t2m", T=50, seed=3)
    feats = data.joints_to_features(joints)
    yaw = data.quat_to_matrix(_axis_angle_quat([0, 1, 0], 2.0))
    moved = joints @ yaw.T + np.array([3.0, 0.7, -2.0])         # turned, lifted off the floor, moved away
    np.testing.assert_allclose(data.joints_to_features(moved), feats, atol=2e-5)
    bigger = _fk_motion("t2m", T=50, seed=3, bone_scale=1.3)    # retargeted to the target bone lengths (A.5.1)
    np.testing.assert_allclose(data.joints_to_features(bigger), feats, atol=2e-5)


def test_heading_wrap_quirk_is_reproduced():
    # HumanML3D issue #156: arcsin of the heading-change quaternion's y without a w >= 0 check flips the sign of
    # r^a on the frame where the heading passes +-180 degrees. The released data has it, so do we.
    joints = _fk_motion("t2m", T=80, seed=4, yaw_total=4.5, amplitude=0.05)
    ra = data.joints_to_features(joints)[:, 0]
    signs = np.sign(ra[1:])                 # a steady turn: every row has the same sign but one
    minority = min((signs < 0).sum(), (signs > 0).sum())
    assert minority == 1 and (signs != 0).all()


def test_features_to_joints_torch_numpy_and_batched_agree():
    vecs = np.load(REF / "new_joint_vecs_000000.npy").astype(np.float32)
    batch = np.stack([vecs[:100], vecs[10:110], vecs[16:116]])[None]          # (1, 3, 100, 263)
    out_np = data.features_to_joints(batch)
    assert out_np.shape == (1, 3, 100, 22, 3) and out_np.dtype == np.float32
    for i, start in enumerate([0, 10, 16]):
        np.testing.assert_allclose(out_np[0, i], data.features_to_joints(vecs[start:start + 100]), atol=1e-6)
    out_t = data.features_to_joints(torch.from_numpy(batch))
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-5)
    with pytest.raises(ValueError, match="expects last dim 263"):
        data.features_to_joints(vecs[:, :251])


def test_joints_to_features_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(T >= 2, J >= 22, 3\)"):
        data.joints_to_features(np.zeros((10, 21, 3)))
    bad = _fk_motion("t2m", T=10)
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        data.joints_to_features(bad)
    with pytest.raises(ValueError, match="unknown skeleton kind"):
        data.joints_to_features(_fk_motion("t2m", T=10), kind="smpl")
    # extra joints (e.g. SMPL-H's 52) are ignored, as HumanML3D does with [:, :22]
    j = _fk_motion("t2m", T=20)
    extra = np.concatenate([j, np.random.default_rng(0).normal(size=(20, 30, 3))], axis=1)
    np.testing.assert_array_equal(data.joints_to_features(extra), data.joints_to_features(j))


# =============================================================================
# data.py — mirroring and statistics
# =============================================================================

def test_mirror_joints_swaps_sides_and_mirrors_features():
    joints = np.load(REF / "new_joints_000000.npy").astype(np.float64)
    mirrored = data.mirror_joints(joints)
    np.testing.assert_array_equal(data.mirror_joints(mirrored), joints)                  # an involution
    np.testing.assert_array_equal(mirrored[:, 7, 0], -joints[:, 8, 0])                   # L ankle <- R ankle
    np.testing.assert_array_equal(mirrored[:, 0], joints[:, 0] * np.array([-1, 1, 1]))   # root: only x flips
    # Features of the mirror are the mirrored features only approximately: the target skeleton is not symmetric
    # (left hip 0.1031 m, right hip 0.1099 m), so retargeting the swapped sides moves joints by up to ~1 cm.
    f, fm = data.joints_to_features(joints), data.joints_to_features(mirrored)
    assert np.corrcoef(fm[:, 0], -f[:, 0])[0, 1] > 0.99                # yaw velocity flips
    np.testing.assert_allclose(fm[:, 0], -f[:, 0], atol=1e-2)
    np.testing.assert_allclose(fm[:, 1], -f[:, 1], atol=1e-3)          # sideways velocity flips
    np.testing.assert_allclose(fm[:, 2:4], f[:, 2:4], atol=5e-3)       # forward velocity, height stay
    assert (fm[:, -4:] == f[:, [-2, -1, -4, -3]]).mean() > 0.95        # left and right foot contacts swap
    back = data.features_to_joints(fm.astype(np.float64))
    np.testing.assert_allclose(data.mirror_joints(back), joints[:-1], atol=2e-2)
    mt = data.mirror_joints(torch.from_numpy(joints))
    np.testing.assert_array_equal(mt.numpy(), mirrored)


def test_mirror_caption():
    line = ("a man kicks with his left leg, then turns clockwise.#a/DET man/NOUN kick/VERB with/ADP his/DET "
            "left/ADJ leg/NOUN then/ADV turn/VERB clockwise/ADV#0.0#0.0")
    out = data.mirror_caption(line)
    assert out.startswith("a man kicks with his right leg, then turns counterclockwise.#")
    assert "right/ADJ" in out and "counterclockwise/ADV" in out
    assert data.mirror_caption(out) == line
    assert data.mirror_caption("Left hand up, RIGHT foot out") == "Right hand up, LEFT foot out"
    assert data.mirror_caption("spins counter-clockwise, then anticlockwise") == "spins clockwise, then clockwise"
    assert data.mirror_caption("moves leftwards over the leftover box") == "moves rightwards over the leftover box"


def test_reference_mean_std_are_block_constant():
    mean, std = np.load(REF / "Mean.npy"), np.load(REF / "Std.npy")
    blocks = data.feature_blocks("t2m")
    assert [(b.start, b.stop) for b in blocks] == [(0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259),
                                                    (259, 263)]
    expected = [0.0128256, 0.0169271, 0.153766, 0.122244, 0.299692, 0.0194703, 0.355933]      # spec A.7
    for block, value in zip(blocks, expected):
        assert np.ptp(std[block]) == 0.0
        assert abs(std[block][0] - value) < 1e-6
    np.testing.assert_allclose(mean[:4], [-1e-5, -2e-5, 0.00868, 0.93855], atol=1e-5)
    assert data.feature_blocks("kit")[-1] == slice(247, 251) and data.feature_blocks("kit")[3] == slice(4, 64)


def test_mean_std_block_averages_and_skips_nan():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 263)) * np.linspace(0.1, 3, 263) for n in (50, 70)]
    mean, std = data.mean_std(arrays + [np.full((10, 263), np.nan)])
    x = np.concatenate(arrays)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    for block in data.feature_blocks("t2m"):
        np.testing.assert_allclose(std[block], x.std(0)[block].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="no finite"):
        data.mean_std([np.full((5, 263), np.nan)])
    with pytest.warns(UserWarning, match="zero std"):
        _, std = data.mean_std([np.zeros((5, 263))])
    assert (std == 1).all()


# =============================================================================
# data.py — MotionDataset over the real HumanML3D layout
# =============================================================================

REF_TEXT = (REF / "texts_000000.txt").read_text()


def _write_motion(root, name, T, D=263, seed=0):
    x = np.random.default_rng(seed).normal(size=(T, D)).astype(np.float32)
    np.save(root / "new_joint_vecs" / f"{name}.npy", x)
    return x


def _make_dataset(root, kind="t2m"):
    """A small real-layout dataset with every case the loader must handle. Returns the raw motions."""
    D = data.SKELETONS[kind].feature_dim
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    motions = {
        "000000": _write_motion(root, "000000", 120, D, 0),   # the reference captions, whole clip
        "M000000": _write_motion(root, "M000000", 120, D, 1),  # its mirror, mirrored captions
        "000001": _write_motion(root, "000001", 199, D, 2),   # a sub-clip, a NaN-tagged and a whole caption
        "000002": _write_motion(root, "000002", 150, D, 3),   # only sub-clip captions: no whole-motion sample
        "000003": _write_motion(root, "000003", 60, D, 4),    # malformed lines around one good one
        "000007": _write_motion(root, "000007", 250, D, 5),   # too long (>= 200)
        "000008": _write_motion(root, "000008", 30, D, 6),    # too short for t2m (< 40), fine for kit (>= 24)
    }
    nan = np.ones((80, D), np.float32)
    nan[5, 7] = np.nan
    np.save(root / "new_joint_vecs" / "000004.npy", nan)                         # NaN motion
    np.save(root / "new_joint_vecs" / "000005.npy", np.ones((80, D - 12), np.float32))  # wrong width
    texts = {
        "000000": REF_TEXT,
        "M000000": data.mirror_caption(REF_TEXT),
        "000001": "a person jumps.#a/DET person/NOUN jump/VERB#1.0#4.0\n"
                  "a person walks forward.#a/DET person/NOUN walk/VERB forward/ADV#nan#nan\n"
                  "someone moves.#someone/PRON move/VERB#0.0#0.0\n",
        "000002": "a person waves.#a/DET person/NOUN wave/VERB#0.5#5.0\n"
                  "too short a piece.#too/ADV short/ADJ a/DET piece/NOUN#0.0#1.0\n",
        "000003": "just a caption without tags\n\n"
                  "a person sits.#a/DET person/NOUN sit/VERB#0.0#0.0\n"
                  "bad tags#bad/ADJ tag/NOUN#zero#0.0\n",
        "000004": "nan motion.#nan/NOUN#0.0#0.0\n", "000005": "wide motion.#wide/ADJ#0.0#0.0\n",
        "000007": "long.#long/ADJ#0.0#0.0\n", "000008": "short.#short/ADJ#0.0#0.0\n",
    }
    for name, text in texts.items():
        (root / "texts" / f"{name}.txt").write_text(text)
    ids = ["000000", "M000000", "000001", "000002", "000003", "000004", "000005", "000006", "000007", "000008"]
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "test.txt").write_text("000000\nM000000\n000001\n")
    (root / "val.txt").write_text("000006\n000004\n")
    mean, std = data.mean_std([m for m in motions.values()], kind)
    np.save(root / "Mean.npy", mean)
    np.save(root / "Std.npy", std)
    return motions


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / "HumanML3D"
    return root, _make_dataset(root)


def _load_with_warnings(*args, **kwargs):
    with pytest.warns(UserWarning) as record:
        ds = data.MotionDataset(*args, **kwargs)
    return ds, [str(w.message) for w in record]


def test_reference_text_file_parses():
    lines = [data.parse_text_line(line) for line in REF_TEXT.splitlines()]
    assert len(lines) == 4 and all(line is not None for line in lines)
    caption, tokens, start, end = lines[0]
    assert caption == "a man kicks something or someone with his left leg."
    assert tokens[:3] == ["a/DET", "man/NOUN", "kick/VERB"] and tokens[-1] == "leg/NOUN"
    assert (start, end) == (0.0, 0.0)
    assert data.parse_text_line("a b#a/DET#nan#NaN")[2:] == (0.0, 0.0)        # NaN tags read as 0
    assert data.parse_text_line("no tags at all") is None
    assert data.parse_text_line("x#y#1.0") is None


def test_dataset_samples_subclips_and_reports_bad_input(dataset_root):
    root, motions = dataset_root
    ds, messages = _load_with_warnings(root, split="train")
    # whole-motion samples, sub-clips as their own samples, no whole sample for 000002 (no (0, 0) caption)
    assert sorted(ds.names) == sorted(["000000", "M000000", "A_000001", "000001", "A_000002", "000003"])
    by_name = {item["name"]: item for item in ds.items}
    assert len(by_name["000000"]["texts"]) == 4
    assert [c for c, _ in by_name["M000000"]["texts"]][0] == "a man kicks something or someone with his right leg."
    np.testing.assert_array_equal(by_name["A_000001"]["motion"], motions["000001"][20:80])   # 1.0 s .. 4.0 s
    assert [c for c, _ in by_name["A_000001"]["texts"]] == ["a person jumps."]
    assert [c for c, _ in by_name["000001"]["texts"]] == ["a person walks forward.", "someone moves."]  # NaN tags
    assert len(by_name["A_000002"]["motion"]) == 90                                        # 0.5 s .. 5.0 s
    assert ds.skipped == {"missing": 1, "nan": 1, "bad_shape": 1, "length": 2, "no_caption": 0,
                          "malformed_lines": 2}
    # each bad input has its message, naming the file and line / the ids
    assert any(re.search(r"malformed text line skipped.*000003\.txt:1: 'just a caption without tags'", m)
               for m in messages)
    assert any(re.search(r"000003\.txt:4: 'bad tags#bad/ADJ tag/NOUN#zero#0.0'", m) for m in messages)
    bad = [m for m in messages if m.startswith("skipped 2 motions")]
    assert len(bad) == 1 and "1 with NaN/inf values" in bad[0] and "000004" in bad[0]
    assert "1 with the wrong shape" in bad[0] and "000005 (80, 251)" in bad[0]
    assert any(re.search(r"1 of 10 ids listed in .*train\.txt are missing on disk.*e\.g\. 000006", m)
               for m in messages)
    assert len(messages) == 4


def test_dataset_train_mode_items(dataset_root):
    root, motions = dataset_root
    ds, _ = _load_with_warnings(root, split="train")
    raw_mean, raw_std = np.load(root / "Mean.npy"), np.load(root / "Std.npy")
    np.testing.assert_allclose(ds.std[0:4], raw_std[0:4] / 5.0)           # feat_bias tweak
    np.testing.assert_allclose(ds.std[-4:], raw_std[-4:] / 5.0)
    np.testing.assert_array_equal(ds.std[4:-4], raw_std[4:-4])
    np.testing.assert_array_equal(ds.mean, raw_mean)
    random.seed(0)
    i = ds.names.index("000001")                                          # 199 frames: a random 196 window
    starts = set()
    for _ in range(20):
        caption, motion, length = ds[i]
        assert motion.shape == (196, 263) and motion.dtype == np.float32 and length == 196
        raw = ds.denormalise(motion)
        start = int(np.argmin(np.abs(motions["000001"][:4, 0] - raw[0, 0])))
        np.testing.assert_allclose(raw, motions["000001"][start:start + 196], atol=1e-5)
        starts.add(start)
    assert len(starts) > 1
    i = ds.names.index("000000")                                          # 120 frames: zero padded
    captions = set()
    for _ in range(30):
        caption, motion, length = ds[i]
        captions.add(caption)
        assert length == 120 and (motion[120:] == 0).all()
        np.testing.assert_allclose(ds.denormalise(motion[:120]), motions["000000"], atol=1e-5)
    assert captions == {line.split("#")[0] for line in REF_TEXT.splitlines()}   # one random caption per draw
    xt = torch.from_numpy(motion)
    np.testing.assert_allclose(ds.normalise(ds.denormalise(xt)).numpy(), motion, atol=1e-4)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[1].shape == (3, 196, 263) and len(batch[0]) == 3


def test_dataset_eval_mode_crop_tokens_and_stats(dataset_root):
    root, motions = dataset_root
    eval_mean, eval_std = np.zeros(263, np.float32), np.full(263, 2.0, np.float32)
    ds, _ = _load_with_warnings(root, split="train", mode="eval", eval_mean=eval_mean, eval_std=eval_std)
    random.seed(0)
    i = ds.names.index("000001")                                          # 199 frames -> 196 or 192
    lengths = set()
    for _ in range(40):
        caption, tokens, motion, m_len = ds[i]
        lengths.add(m_len)
        assert motion.shape == (196, 263) and (motion[m_len:] == 0).all()
        window = motion[:m_len] * 2.0
        start = int(np.argmin(np.abs(motions["000001"][:8, 0] - window[0, 0])))
        np.testing.assert_allclose(window, motions["000001"][start:start + m_len], atol=1e-6)
        assert len(tokens) == 22 and tokens[0] == "sos/OTHER"
        words = caption.rstrip(".").split()
        assert tokens[len(words) + 1] == "eos/OTHER" and set(tokens[len(words) + 2:]) <= {"unk/OTHER"}
    assert lengths == {196, 192}
    assert data.evaluator_tokens(["w/NOUN"] * 25) == ["sos/OTHER"] + ["w/NOUN"] * 20 + ["eos/OTHER"]
    # without evaluator stats, eval mode falls back to the training normalisation
    ds2, _ = _load_with_warnings(root, split="train", mode="eval")
    np.testing.assert_array_equal(ds2.eval_std, ds2.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=data.collate_eval)
    captions, tokens, motion, m_lens, sent_lens = next(iter(loader))
    assert motion.shape == (4, 196, 263) and (m_lens % 4 == 0).all()
    assert (sent_lens[:-1] >= sent_lens[1:]).all() and len(tokens[0]) == 22
    with pytest.raises(ValueError, match=r"eval_std has shape \(7,\), expected \(263,\): 263 for HumanML3D"):
        data.MotionDataset(root, split="test", mode="eval", eval_mean=eval_mean, eval_std=np.ones(7))


def test_dataset_kit_length_filter(tmp_path):
    root = tmp_path / "KIT-ML"
    _make_dataset(root, kind="kit")
    ds, _ = _load_with_warnings(root, split="train", kind="kit")
    assert "000008" in ds.names                                           # 30 frames >= 24 is kept for KIT
    assert ds[0][1].shape == (196, 251)


def test_dataset_layout_errors(tmp_path, dataset_root):
    root, _ = dataset_root
    with pytest.raises(FileNotFoundError, match=r"(?s)dataset root not found.*new_joint_vecs/<id>\.npy.*"
                                                r"HumanML3D must be built from AMASS.*--dataset synthetic"):
        data.MotionDataset(tmp_path / "nowhere")
    (root / "texts").rename(root / "texts_zipped")
    with pytest.raises(FileNotFoundError, match=r"(?s)sub-folder texts/ not found.*found in .*texts_zipped/"):
        data.MotionDataset(root)
    (root / "texts_zipped").rename(root / "texts")
    with pytest.raises(FileNotFoundError, match=r"split file for split='train_val' not found"):
        data.MotionDataset(root, split="train_val")
    with pytest.raises(ValueError, match="unknown skeleton kind"):
        data.MotionDataset(root, kind="smplx")
    with pytest.raises(ValueError, match="Mean.npy has shape"):
        data.MotionDataset(root, kind="kit")
    with pytest.warns(UserWarning) as record:
        with pytest.raises(ValueError, match=r"no samples left in .* split 'val'.*1 missing on disk, 1 bad"):
            data.MotionDataset(root, split="val")
    messages = [str(w.message) for w in record]
    assert any("missing on disk" in m for m in messages) and any("NaN/inf" in m for m in messages)


# =============================================================================
# data.py — stick-figure rendering
# =============================================================================

def test_render_animation_writes_gif_with_all_frames(tmp_path):
    Image = require("PIL.Image", "pip install pillow")
    joints = np.load(REF / "new_joints_000000.npy")[:30]
    path = data.render_animation(joints, tmp_path / "out" / "kick.gif", title="a man kicks with his left leg.",
                                 stride=3)
    with Image.open(path) as gif:
        assert gif.n_frames == 10 and gif.size == (240, 240)
        assert gif.info["duration"] == 150                      # 20 fps / stride 3
    path = data.render_animation(torch.from_numpy(joints[:4]), tmp_path / "t.gif")   # torch input, no title
    with Image.open(path) as gif:
        assert gif.n_frames == 4


def test_render_filmstrip_writes_png(tmp_path):
    Image = require("PIL.Image", "pip install pillow")
    joints = np.load(REF / "new_joints_000000.npy")
    path = data.render_filmstrip(joints, tmp_path / "kick.png", title="a man kicks with his left leg.",
                                 num_frames=4, dpi=50)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (320, 115)   # (1.6 in * 4 frames, 2.3 in) at 50 dpi
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    red = ((pixels[:, 0] > 150) & (pixels[:, 1] < 90) & (pixels[:, 2] < 90)).sum()
    blue = ((pixels[:, 2] > 150) & (pixels[:, 0] < 90)).sum()
    assert red > 50 and blue > 50                                 # both body sides drawn, in distinct colours
    kit = _fk_motion("kit", T=20)
    with Image.open(data.render_filmstrip(kit, tmp_path / "kit.png", kind="kit", num_frames=2, dpi=40)) as png:
        assert png.size == (128, 92)


def test_render_errors(tmp_path, monkeypatch):
    joints = np.load(REF / "new_joints_000000.npy")[:5]
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        data.render_animation(joints, tmp_path / "x.avi")
    with pytest.raises(ValueError, match=r"expects joints \(T, 22, 3\).*features_to_joints"):
        data.render_filmstrip(np.zeros((5, 263)), tmp_path / "x.png")
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="MP4 needs ffmpeg on PATH"):
        data.render_animation(joints, tmp_path / "x.mp4")


def test_render_animation_mp4(tmp_path):
    require_program("ffmpeg", "apt-get install -y ffmpeg")
    path = data.render_animation(np.load(REF / "new_joints_000000.npy")[:10], tmp_path / "kick.mp4", title="kick")
    assert path.stat().st_size > 1000


# =====================================================================================================================
# synthetic.py: the built-in synthetic motion-language dataset
# =====================================================================================================================

REPO = Path(synthetic.__file__).resolve().parent
SKEL = data.SKELETONS["t2m"]
UD_TAGS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "SCONJ",
           "VERB"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.generate_dataset(tmp_path_factory.mktemp("synthetic") / "ds", num_motions=24, seed=3,
                                      progress=False)


def _motion(actions, seed=0):
    joints, described = synthetic.make_motion(actions, np.random.default_rng(seed))
    return joints, described


def _facing(joints):
    """Unit forward direction (T, 3) of a body from its hips (left = +X when facing +Z)."""
    across = joints[:, 1] - joints[:, 2]                      # right hip -> left hip
    forward = np.stack([-across[:, 2], 0 * across[:, 0], across[:, 0]], axis=-1)  # up x across, in x-z
    return forward / np.linalg.norm(forward, axis=-1, keepdims=True)


def _path_length(points):
    return np.linalg.norm(np.diff(points, axis=0), axis=-1).sum()


# ----------------------------------------------------------------------------- skeleton and forward kinematics


def test_forward_kinematics_keeps_the_target_bone_lengths():
    rng = np.random.default_rng(0)
    T = 30
    joints = synthetic.forward_kinematics(rng.uniform(-2, 2, (T, SKEL.num_joints, 3)), rng.uniform(-3, 3, T),
                                          rng.normal(size=(T, 3)))
    for j, p in enumerate(SKEL.parents):
        if p >= 0:
            np.testing.assert_allclose(np.linalg.norm(joints[:, j] - joints[:, p], axis=-1), SKEL.bone_lengths[j],
                                       rtol=0, atol=1e-12)


def test_rest_pose_is_an_upright_person_facing_plus_z():
    joints = synthetic.forward_kinematics(np.zeros((1, SKEL.num_joints, 3)), np.zeros(1))[0]
    assert joints[15, 1] > joints[12, 1] > joints[9, 1] > joints[0, 1] > joints[4, 1] > joints[7, 1]  # head up
    assert joints[10, 2] > joints[7, 2] and joints[11, 2] > joints[8, 2]                           # toes forward
    assert all(joints[left, 0] > 0 > joints[right, 0]                                              # left = +X
               for left, right in zip(SKEL.left_joints, SKEL.right_joints))
    np.testing.assert_allclose(_facing(joints[None])[0], [0, 0, 1], atol=1e-12)


# ----------------------------------------------------------------------------- primitives and composition


def test_at_least_12_distinct_primitives_each_a_plausible_motion():
    assert len(synthetic.PRIMITIVES) >= 12
    trajectories = []
    for k, name in enumerate(synthetic.PRIMITIVES):
        joints, described = _motion([(name, {})], seed=k)
        assert described[0][0] == name
        assert synthetic.MIN_FRAMES <= len(joints) <= synthetic.MAX_FRAMES, name
        assert np.isfinite(joints).all()
        np.testing.assert_allclose(joints[0, 0, [0, 2]], 0.0, atol=1e-12)        # starts at the origin
        assert joints[..., 1].min() == pytest.approx(0.0, abs=1e-9), name          # on the floor, not below it
        assert (joints[:, 15, 1] > joints[:, 0, 1] + 0.3).all(), name              # head stays above the pelvis
        trajectories.append(joints[:40] - joints[:40, :1])
    for a in range(len(trajectories)):
        for b in range(a + 1, len(trajectories)):
            assert np.abs(trajectories[a] - trajectories[b]).max() > 0.05, "two primitives move identically"


def test_walk_forward_has_alternating_planted_feet_and_moves_forward():
    joints, _ = _motion([("walk", {"direction": "forward", "speed": "normal", "steps": 6, "path": "straight"})])
    feet = joints[:, [7, 10, 8, 11]]
    assert (feet[..., 1].min(axis=1) < 0.01).all()                 # some foot on the floor in every frame
    assert joints[-1, 0, 2] > 1.5 and abs(joints[-1, 0, 0]) < 0.2  # walked forward (+Z), roughly straight
    contacts = data.joints_to_features(joints)[:, -4:]              # HumanML3D's foot contact labels
    left_only = (contacts[:, 0] > 0) & (contacts[:, 2] == 0)
    right_only = (contacts[:, 2] > 0) & (contacts[:, 0] == 0)
    phases = [1 if left else 2 for left, right in zip(left_only, right_only) if left or right]
    assert sum(a != b for a, b in zip(phases[:-1], phases[1:])) >= 4  # left, right, left, ... support
    hand_l, ankle_l = joints[:, 20, 2] - joints[:, 0, 2], joints[:, 7, 2] - joints[:, 0, 2]
    assert np.corrcoef(hand_l, ankle_l)[0, 1] < -0.5               # arms swing against the legs


def test_turn_left_and_sidestep_left_go_to_the_persons_left():
    joints, _ = _motion([("turn", {"direction": "left", "angle": 90})])
    np.testing.assert_allclose(_facing(joints[-1:])[0], [1, 0, 0], atol=0.05)   # was facing +Z, left is +X
    joints, _ = _motion([("sidestep", {"direction": "left", "steps": 3})])
    assert joints[-1, 0, 0] > 0.4 and abs(joints[-1, 0, 2]) < 0.15


def test_jump_leaves_the_floor_and_lands_where_it_started():
    joints, _ = _motion([("jump", {"mode": "in_place", "count": 1, "height": "high"})])
    feet_height = joints[:, [7, 10, 8, 11], 1].min(axis=1)
    assert feet_height.max() > 0.1
    assert np.linalg.norm(joints[-1, 0, [0, 2]]) < 0.1


def test_composition_is_continuous_and_keeps_the_heading():
    joints, described = _motion([("walk", {"direction": "forward", "steps": 4, "path": "straight"}),
                                 ("turn", {"direction": "left", "angle": 90}), ("wave", {"side": "right"})])
    assert [name for name, _ in described] == ["walk", "turn", "wave"]
    step = np.linalg.norm(np.diff(joints, axis=0), axis=-1).max()
    assert step < 0.3                                               # no jumps between actions (m per frame)
    np.testing.assert_allclose(_facing(joints[-1:])[0], [1, 0, 0], atol=0.1)


def test_heading_limit_is_enforced():
    with pytest.raises(ValueError, match="165"):
        _motion([("turn", {"direction": "left", "angle": 165}), ("turn", {"direction": "left", "angle": 90})])


def test_generated_motions_round_trip_through_the_features():
    # joints -> joints_to_features -> features_to_joints gives the same positions (issue 2 must-show)
    rng = np.random.default_rng(7)
    for _ in range(12):
        joints, _ = synthetic.sample_motion(rng)
        back = data.features_to_joints(data.joints_to_features(joints))
        assert np.abs(back - joints[:-1]).max() < 1e-5


def test_wave_right_hand_moves_the_right_wrist_and_its_mirror_the_left():
    joints, described = _motion([("wave", {"side": "right"})])
    right, left = _path_length(joints[:, 21]), _path_length(joints[:, 20])
    assert right > 1.0 and right > 10 * left
    mirrored = data.mirror_joints(joints)
    assert _path_length(mirrored[:, 20]) > 10 * _path_length(mirrored[:, 21])
    caption = synthetic._text_lines(described, np.random.default_rng(0))[0].split("#")[0]
    mirror = data.mirror_text_line(f"{caption}#x#0.0#0.0")
    assert "right" in caption.split() and "left" not in caption.split()
    assert "left" in mirror.split("#")[0].split() and "right" not in mirror.split("#")[0].split()
    assert "left/ADJ" in mirror.split("#")[1]


# ----------------------------------------------------------------------------- captions and lexicon


def test_tokenize_reproduces_humanml3d_tokens():
    lines = (SHARED / "reference" / "humanml3d" / "texts_000000.txt").read_text().splitlines()
    for line in (lines[0], lines[2]):     # the lines whose words are all in our lexicon
        caption, tokens, _, _ = line.split("#")
        assert data.tokenize(caption) == tokens
    assert data.tokenize("He takes 3 steps to the left, then turns left.") == \
        "he/PRON take/VERB step/NOUN to/ADP the/DET left/NOUN then/ADV turn/VERB left/ADV"
    with pytest.raises(ValueError, match="lexicon"):
        data.tokenize("a person moonwalks")


def test_every_caption_template_is_in_the_lexicon_and_the_glove_vocabulary():
    glove = set((SHARED / "reference" / "evaluator_meta" / "glove_vocab_words.txt").read_text().split())
    rng = np.random.default_rng(1)
    names = list(synthetic.PRIMITIVES)
    for i in range(20 * len(names)):
        name = names[i % len(names)]
        _, params = synthetic.PRIMITIVES[name](rng)
        for phrase in synthetic._phrases(name, params, rng, ("his", "her", "their")[i % 3]):
            for text in (phrase, synthetic._gerund(phrase), data.mirror_caption(phrase)):
                for token in data.tokenize("a person " + text).split():
                    word, pos = token.split("/")
                    assert word in glove and pos in UD_TAGS, token


# ----------------------------------------------------------------------------- the dataset on disk


def test_layout_files_shapes_and_mirrors(dataset):
    ids = (dataset / "all.txt").read_text().split()
    originals = [i for i in ids if not i.startswith("M")]
    assert len(originals) == 24 and sorted(ids) == sorted(originals + ["M" + i for i in originals])
    for clip_id in ids:
        vecs = np.load(dataset / "new_joint_vecs" / f"{clip_id}.npy")
        joints = np.load(dataset / "new_joints" / f"{clip_id}.npy")
        assert vecs.dtype == np.float32 and joints.dtype == np.float32
        assert vecs.shape[1] == SKEL.feature_dim and 40 <= len(vecs) <= 196
        assert joints.shape == (len(vecs), SKEL.num_joints, 3)
        np.testing.assert_allclose(joints, data.features_to_joints(vecs), atol=1e-6)
        assert len((dataset / "texts" / f"{clip_id}.txt").read_text().splitlines()) == 3
    for clip_id in originals:
        lines = (dataset / "texts" / f"{clip_id}.txt").read_text().splitlines()
        mirrored = (dataset / "texts" / f"M{clip_id}.txt").read_text().splitlines()
        assert [m.split("#")[0] for m in mirrored] == [data.mirror_caption(x.split("#")[0]) for x in lines]
        a = np.load(dataset / "new_joints" / f"{clip_id}.npy")
        b = np.load(dataset / "new_joints" / f"M{clip_id}.npy")
        assert a.shape == b.shape
        # mirrored motion: the reflected root path, scaled by the retarget's lower-leg ratio (spec A.5.1): the
        # mirror's right leg carries the left leg's lengths until joints_to_features gives it the target ones
        lengths = SKEL.bone_lengths
        left_of = dict(zip(SKEL.right_joints, SKEL.left_joints))
        scale = ((lengths[SKEL.l_idx1] + lengths[SKEL.l_idx2]) /
                 (lengths[left_of[SKEL.l_idx1]] + lengths[left_of[SKEL.l_idx2]]))
        np.testing.assert_allclose(b[:, 0, [0, 2]], a[:, 0, [0, 2]] * [-scale, scale], atol=1e-4)
    marker = json.loads((dataset / synthetic.MARKER).read_text())
    assert marker["complete"] and marker["num_motions"] == 24 and marker["seed"] == 3


def test_text_lines_parse_as_caption_tokens_start_end(dataset):
    pattern = re.compile(r"^[^#]+#([a-z]+/[A-Z]+)( [a-z]+/[A-Z]+)*#0\.0#0\.0$")
    for path in (dataset / "texts").glob("*.txt"):
        lines = path.read_text().splitlines()
        assert len(set(lines)) == 3
        for line in lines:
            assert pattern.match(line), line
            caption, tokens, start, end = line.split("#")
            assert caption == caption.lower() and float(start) == float(end) == 0.0
            for token in tokens.split():
                word, pos = token.split("/")
                assert pos in UD_TAGS
                if pos in ("NOUN", "VERB"):
                    assert data.LEXICON[word].get(pos, word) == word, f"{token} is not lemmatised"


def test_splits_are_disjoint_and_keep_mirrors_together(dataset):
    split = {name: (dataset / f"{name}.txt").read_text().split() for name in
             ("train", "val", "test", "train_val", "all")}
    train, val, test = set(split["train"]), set(split["val"]), set(split["test"])
    assert not (train & val or train & test or val & test)
    assert set(split["train_val"]) == train | val and set(split["all"]) == train | val | test
    assert len(split["all"]) == 48 and min(len(val), len(test)) >= 2
    for part in (train, val, test):
        assert all(("M" + i in part) for i in part if not i.startswith("M"))
        assert all((i[1:] in part) for i in part if i.startswith("M"))


def test_synthetic_split_follows_humanml3d_proportions(dataset):
    # HumanML3D's split files are ~80/5/15 % train/val/test (not the paper's 0.8:0.15:0.05): 24 motions give
    # round(1.2) = 1 validation and round(3.6) = 4 test motions, each with its mirror
    clips = {name: len((dataset / f"{name}.txt").read_text().split()) // 2 for name in ("train", "val", "test")}
    assert clips == {"train": 24 - 1 - 4, "val": round(0.05 * 24), "test": round(0.15 * 24)}


def test_mean_std_are_humanml3d_style_block_averaged(dataset):
    ids = (dataset / "all.txt").read_text().split()
    vecs = np.concatenate([np.load(dataset / "new_joint_vecs" / f"{i}.npy") for i in ids]).astype(np.float64)
    mean, std = np.load(dataset / "Mean.npy"), np.load(dataset / "Std.npy")
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (SKEL.feature_dim,)
    np.testing.assert_allclose(mean, vecs.mean(axis=0), atol=1e-5)
    for block in data.feature_blocks("t2m"):
        assert np.all(std[block] == std[block][0]), "std is not constant inside a block"
        np.testing.assert_allclose(std[block][0], vecs[:, block].std(axis=0).mean(), rtol=1e-4)
    assert (std > 0).all()


def test_the_loader_reads_the_synthetic_dataset(dataset):
    ds = data.MotionDataset(dataset, split="train")
    caption, motion, length = ds[0]
    assert isinstance(caption, str) and motion.shape == (196, SKEL.feature_dim) and 40 <= length <= 196


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    a = files(synthetic.generate_dataset(tmp_path / "a", num_motions=5, seed=11, progress=False))
    b = files(synthetic.generate_dataset(tmp_path / "b", num_motions=5, seed=11, progress=False))
    c = files(synthetic.generate_dataset(tmp_path / "c", num_motions=5, seed=12, progress=False))
    assert a == b
    assert a.keys() == c.keys() and a[Path("texts/000000.txt")] != c[Path("texts/000000.txt")]


def test_ensure_dataset_generates_only_when_needed(tmp_path):
    root = tmp_path / "ds"
    synthetic.ensure_dataset(root, num_motions=4, seed=0)
    marker = root / synthetic.MARKER
    stamp = marker.stat().st_mtime_ns
    synthetic.ensure_dataset(root, num_motions=4, seed=0)
    assert marker.stat().st_mtime_ns == stamp                       # complete and matching: left alone
    synthetic.ensure_dataset(root, num_motions=5, seed=0)           # different request: regenerated
    assert len((root / "all.txt").read_text().split()) == 10
    assert len(list((root / "texts").glob("*.txt"))) == 10          # no leftovers of the old one
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "complete": False}))  # interrupted run
    synthetic.ensure_dataset(root, num_motions=5, seed=0)
    assert json.loads(marker.read_text())["complete"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a dataset")
    with pytest.raises(data.InputError, match="not a dataset this project wrote"):
        synthetic.ensure_dataset(tmp_path / "other", num_motions=4)
    with pytest.raises(ValueError, match="num_motions"):
        synthetic.generate_dataset(tmp_path / "tiny", num_motions=2)


def test_cli_writes_the_dataset_and_reports_counts(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "synthetic.py"), "--out", str(tmp_path / "cli"),
                          "--num-motions", "3", "--seed", "0"], capture_output=True, text=True, cwd=REPO, check=True)
    assert "wrote 6 clips" in out.stdout and "18 captions" in out.stdout
    assert (tmp_path / "cli" / "Std.npy").exists()
    help_text = subprocess.run([sys.executable, str(REPO / "synthetic.py"), "--help"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout
    assert "--num-motions" in help_text and "--seed" in help_text and "--out" in help_text


# =====================================================================================================================
# bvh.py: BVH reading, forward kinematics, retargeting, and the real-mocap import (Bandai-Namco)
# =====================================================================================================================

import bvh  # noqa: E402  (the component under test; it imports numpy only)

BANDAI = SHARED / "data" / "bandai"
BANDAI_1 = BANDAI / "Bandai-Namco-Research-Motiondataset-1.tar.xz"

# A small hierarchy exercising what real files do: a 6-channel root, a 3-channel joint in XYZ order, a joint with
# position channels in YXZ order, an End Site, tabs, CRLF line ends and scientific notation.
INLINE_BVH = ("HIERARCHY\r\nROOT Hips\r\n{\r\n\tOFFSET 0 0 0\r\n"
              "\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation\r\n"
              "\tJOINT Spine\r\n\t{\r\n\t\tOFFSET 0 1.0e1 0\r\n\t\tCHANNELS 3 Xrotation Yrotation Zrotation\r\n"
              "\t\tJOINT Head\r\n\t\t{\r\n\t\t\tOFFSET 0 5 0\r\n"
              "\t\t\tCHANNELS 6 Xposition Yposition Zposition Yrotation Xrotation Zrotation\r\n"
              "\t\t\tEnd Site\r\n\t\t\t{\r\n\t\t\t\tOFFSET 0 2 0\r\n\t\t\t}\r\n\t\t}\r\n\t}\r\n"
              "\tJOINT Leg\r\n\t{\r\n\t\tOFFSET 3 -9 0\r\n\t\tCHANNELS 3 Zrotation Yrotation Xrotation\r\n"
              "\t\tEnd Site\r\n\t\t{\r\n\t\t\tOFFSET 0 -8 0\r\n\t\t}\r\n\t}\r\n}\r\n"
              "MOTION\r\nFrames: 2\r\nFrame Time: 0.05\r\n"
              "1 90 2 0 0 0  90 0 0  0 5 0 0 0 0  0 0 0\r\n"
              "0 90 0 0 0 90  0 0 0  0 5 0 90 0 0  0 0 -9e1\r\n")


def _inline_bvh(tmp_path, text=INLINE_BVH, name="inline.bvh"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_read_bvh_hierarchy_channels_and_motion(tmp_path):
    clip = bvh.read_bvh(_inline_bvh(tmp_path))
    assert clip.names == ["Hips", "Spine", "Head", "Leg"] and clip.parents == [-1, 0, 1, 0]
    np.testing.assert_array_equal(clip.offsets, [[0, 0, 0], [0, 10, 0], [0, 5, 0], [3, -9, 0]])
    assert clip.channels[1] == ["Xrotation", "Yrotation", "Zrotation"]
    assert clip.channels[2] == ["Xposition", "Yposition", "Zposition", "Yrotation", "Xrotation", "Zrotation"]
    assert set(clip.end_sites) == {2, 3} and clip.motion.shape == (2, 18) and clip.fps == pytest.approx(20.0)
    np.testing.assert_array_equal(clip.joint_motion(3)[1], [0, 0, -90])


def test_forward_kinematics_by_hand(tmp_path):
    # frame 0: the root at (1, 90, 2), Spine rotated 90 degrees about X: the Head's bone (0, 5, 0) turns to +Z
    # frame 1: the root turned 90 degrees about Y (its last channel), the Head 90 degrees about Y, the Leg -90 about X
    P = bvh.forward_kinematics(bvh.read_bvh(_inline_bvh(tmp_path)), end_sites=True)     # (2, 4 joints + 2 ends, 3)
    np.testing.assert_allclose(P[0], [[1, 90, 2], [1, 100, 2], [1, 100, 7], [4, 81, 2], [1, 100, 9], [4, 73, 2]],
                               atol=1e-9)
    np.testing.assert_allclose(P[1], [[0, 90, 0], [0, 100, 0], [0, 105, 0], [0, 81, -3], [0, 107, 0],
                                      [8, 81, -3]], atol=1e-9)


def _bvhio_positions(path, num_joints):
    bvhio = require("bvhio", "pip install bvhio")
    root = bvhio.readAsHierarchy(str(path))
    joints = [joint for joint, _, _ in root.layout()][:num_joints]
    out = np.zeros((len(root.Keyframes), num_joints, 3))
    for frame in range(len(out)):
        root.loadPose(frame)
        out[frame] = [(j.PositionWorld.x, j.PositionWorld.y, j.PositionWorld.z) for j in joints]
    return out


def test_forward_kinematics_matches_bvhio_on_random_angles(tmp_path):
    # bvhio (an independent reader, float32) on the inline hierarchy with random angles and positions in every frame
    rng = np.random.default_rng(0)
    head, _, _ = INLINE_BVH.partition("MOTION")
    frames = rng.uniform(-170, 170, size=(30, 18))
    frames[:, 9:12] = rng.uniform(-3, 3, size=(30, 3))               # the Head's position channels
    text = head + "MOTION\nFrames: 30\nFrame Time: 0.05\n" + "\n".join(" ".join(f"{v:.6e}" for v in row)
                                                                     for row in frames) + "\n"
    path = _inline_bvh(tmp_path, text)
    ours = bvh.forward_kinematics(bvh.read_bvh(path))
    np.testing.assert_allclose(ours, _bvhio_positions(path, 4), atol=2e-3)    # float32 on values up to ~100


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("Frames: 2", "Frames: 3"), r"inline.bvh:\d+: the MOTION block has 2 frame lines but Frames "
                                                    r"says 3 \(truncated file\)"),
    (lambda t: t + "1 2 3\r\n", r"inline.bvh:\d+: the MOTION block has 3 frame lines but Frames says 2 \(extra"),
    (lambda t: t.replace("0 0 -9e1", "0 0"), r"inline.bvh:34: a frame has 17 values but the hierarchy declares 18"),
    (lambda t: t.replace("Zrotation Yrotation Xrotation", "Zrotation Yrotation Wrotation"),
     r"inline.bvh:23: unknown channel 'Wrotation'"),
    (lambda t: t.replace("\t\t\t}\r\n\t\t}\r\n\t}", "\t\t\t}\r\n\t}", 1), r"inline.bvh: the HIERARCHY ends early"),
    (lambda t: t.replace("}\r\nMOTION", "}\r\n}\r\nMOTION"), r"inline.bvh:\d+: unexpected '}' after the root"),
    (lambda t: t.replace("MOTION", "MOTON"), r"inline.bvh: no MOTION section"),
    (lambda t: t.replace("0 0 -9e1", "0 0 x"), r"inline.bvh:34: 'x' is not a number"),
    (lambda t: t.replace("OFFSET 3 -9 0", "OFFSET 3 -9"), r"inline.bvh:23: OFFSET expects 3 numbers, found 'CHANNELS'"),
    (lambda t: t.replace("Frame Time: 0.05", "Frame Time: 0"), r"inline.bvh:31: Frames must be >= 1 and Frame Time"),
])
def test_malformed_bvh_names_the_file_and_the_line(tmp_path, edit, message):
    with pytest.raises(bvh.BVHError, match=message):
        bvh.read_bvh(_inline_bvh(tmp_path, edit(INLINE_BVH)))


def test_joint_maps_list_the_skeletons_joints_in_order():
    for rig, maps in bvh.JOINT_MAPS.items():
        for kind, joint_map in maps.items():
            assert tuple(joint_map) == data.SKELETONS[kind].joint_names, (rig, kind)
    cmu = bvh.JOINT_MAPS["cmu"]["t2m"]
    assert (cmu["left_hip"], cmu["spine3"], cmu["left_collar"], cmu["right_wrist"]) == \
        ("LeftHip", "Chest2", "LeftCollar", "RightWrist")
    mb = bvh.JOINT_MAPS["cmu-mb"]["t2m"]
    assert (mb["left_hip"], mb["spine1"], mb["left_collar"], mb["left_shoulder"]) == \
        ("LeftUpLeg", "LowerBack", "LeftShoulder", "LeftArm")


def test_joint_map_for_resolves_built_in_names_for_the_skeleton_and_reads_files(tmp_path):
    assert bvh.joint_map_for("cmu", "t2m") is bvh.JOINT_MAPS["cmu"]["t2m"]
    assert bvh.joint_map_for("bandai", "kit") is bvh.JOINT_MAPS["bandai"]["kit"]
    user_map = tmp_path / "my_map.json"
    user_map.write_text(json.dumps({"pelvis": "Hips", "spine1": ["Spine", "Chest"]}))
    for given in (user_map, str(user_map)):                                   # a user's file, read once, here
        assert bvh.joint_map_for(given, "t2m") == {"pelvis": "Hips", "spine1": ["Spine", "Chest"]}
    assert bvh.joint_map_for(None) is None
    with pytest.raises(bvh.BVHError, match="cannot read the joint map"):
        bvh.joint_map_for(tmp_path / "absent.json", "t2m")
    with pytest.raises(bvh.BVHError, match="the built-in map cmu has no kit target; pass a JSON map"):
        bvh.joint_map_for("cmu", "kit")


def test_retarget_midpoints_and_the_missing_joints_message():
    positions = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
    out = bvh.retarget(positions, ["a", "b", "c"], {"x": "c", "y": ["a", "b"]}, ["x", "y"])
    np.testing.assert_array_equal(out[:, 0], positions[:, 2])
    np.testing.assert_array_equal(out[:, 1], 0.5 * (positions[:, 0] + positions[:, 1]))
    with pytest.raises(bvh.BVHError, match=r"target joints without a source: \['y'\]; source joints the file "
                                           r"lacks: \['nope'\]"):
        bvh.retarget(positions, ["a", "b", "c"], {"x": "nope"}, ["x", "y"])


def test_zero_length_bones_are_moved_apart_and_never_give_nan():
    # a CMU-like rig where spine1 (lowerback) sits on the pelvis and a collar on spine3: features would be 0/0
    joints = _fk_motion("t2m", T=30).copy()
    skeleton = data.SKELETONS["t2m"]
    joints[:, 3] = joints[:, 0]
    joints[:, 13] = joints[:, 9]
    assert ("pelvis", "spine1") in bvh.coincident_joints(joints, skeleton.joint_names)
    with np.errstate(invalid="ignore"):
        assert not np.isfinite(data.joints_to_features(joints)).all()          # what the import must avoid
    fixed, moved = bvh.separate_coincident_joints(joints, skeleton.parents)
    assert moved == [3, 13] and np.isfinite(data.joints_to_features(fixed)).all()
    np.testing.assert_allclose(fixed[:, 3], 0.5 * (joints[:, 0] + joints[:, 6]))    # halfway to spine2


def test_units_up_axis_and_resampling():
    standing = np.zeros((5, 2, 3))
    standing[:, 1, 1] = 160.0                                                        # 160 cm tall
    assert bvh.infer_scale(standing) == 0.01 and bvh.infer_scale(standing / 10) == 0.1
    z_up = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(bvh.to_y_up(z_up, "z"), [[1.0, 3.0, -2.0]])       # a rotation, not a reflection
    t = np.arange(31, dtype=float)[:, None] / 30                                     # 1 s at 30 fps, x = time
    np.testing.assert_allclose(bvh.resample(t, 30, 20)[:, 0], np.arange(21) / 20, atol=1e-12)
    assert bvh.windows(30, True) == [] and bvh.windows(150, False) == [(0, 150)]
    assert bvh.windows(420, True) == [(0, 140), (140, 280), (280, 420)]
    assert bvh.windows(420, False) == [(110, 310)]


def _bandai_clips(folder, names):
    """The named clips of dataset 1, extracted from its archive into folder (a few seconds: it is 7 MB)."""
    import tarfile
    if not BANDAI_1.is_file():
        pytest.fail(f"the Bandai-Namco archive {BANDAI_1} is missing (it ships in ../shared/data/bandai)")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(BANDAI_1) as archive:
        for member in archive.getmembers():
            if Path(member.name).stem in names and member.name.endswith(".bvh"):
                (folder / Path(member.name).name).write_bytes(archive.extractfile(member).read())
    assert len(list(folder.glob("*.bvh"))) == len(names)
    return folder


BANDAI_TEST_CLIPS = [f"dataset-1_{c}_{s}_001" for c in ("walk", "run", "bow", "bye", "walk-left", "walk-back")
                     for s in ("normal", "old", "happy")] + ["dataset-1_kick_normal_001", "dataset-1_walk_not-confident_001"]


@pytest.fixture(scope="module")
def bandai_clips(tmp_path_factory):
    return _bandai_clips(tmp_path_factory.mktemp("bandai") / "src", BANDAI_TEST_CLIPS)


def test_real_bandai_clips_match_bvhio_and_have_6_channels_everywhere(bandai_clips):
    for path in sorted(bandai_clips.glob("*.bvh"))[:4]:
        clip = bvh.read_bvh(path)
        assert len(clip.names) == 22 and all(len(c) == 6 for c in clip.channels)            # every joint: 6
        np.testing.assert_allclose(bvh.forward_kinematics(clip), _bvhio_positions(path, 22), atol=1e-3)  # cm


def test_bandai_import_end_to_end(bandai_clips, tmp_path):
    out = tmp_path / "bandai"
    report = bvh.import_dataset([bandai_clips], out, "bandai", progress=False)
    assert report["files"] == 20 and not report["bad_files"]
    src = lambda name: str(bandai_clips / f"{name}.bvh")
    assert report["windowed"] == {src("dataset-1_walk_not-confident_001"): 2}     # 16 s of walking: two windows
    assert report["cropped"] == [src("dataset-1_kick_normal_001")]                 # a 12 s kick keeps its middle
    assert sorted(r.split(" (")[0] for r in report["too_short"]) == [src("dataset-1_run_normal_001"),
                                                                     src("dataset-1_walk-back_normal_001")]
    ds = data.MotionDataset(out, "train", "t2m")
    assert len(ds) > 0 and ds.mean.shape == (263,)
    lines = (out / "texts" / "dataset-1_bye_old_001.txt").read_text().splitlines()
    assert len(lines) == 3 and all(line.endswith("#0.0#0.0") for line in lines)
    mirrored = (out / "texts" / "Mdataset-1_walk-left_normal_001.txt").read_text()
    assert "right" in mirrored and "left" not in mirrored.split("#")[0]
    splits = {s: set((out / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["test"]) and all(("M" + c) in ids for ids in splits.values()
                                                           for c in ids if not c.startswith("M"))
    # left is the person's left: the "bye" clips wave the right wrist (index 21), and a walk goes forward (+Z)
    for style in ("normal", "old", "happy"):
        joints = np.load(out / "new_joints" / f"dataset-1_bye_{style}_001.npy")
        assert np.ptp(joints[:, 21, 1]) > 2 * np.ptp(joints[:, 20, 1]), style
    for name in ("dataset-1_walk_normal_001", "dataset-1_walk_not-confident_001_w1"):
        walk = np.load(out / "new_joints" / f"{name}.npy")
        assert walk[-1, 0, 2] - walk[0, 0, 2] > 2.0, name
    checked = bvh.check_dataset(out, progress=False)
    assert np.max(checked["bone length spread"]) < 1e-5 and np.median(checked["median lower foot (m)"]) < 0.03
    with pytest.raises(data.InputError, match="not a dataset this project wrote"):
        bvh.import_dataset([bandai_clips], bandai_clips, "bandai", progress=False)    # never into a foreign folder


def test_import_from_a_tar_archive_and_a_users_joint_map(bandai_clips, tmp_path):
    import tarfile
    archive, names = tmp_path / "clips.tar.xz", [f"dataset-1_{c}_001" for c in ("walk_normal", "walk_old",
                                                                                "bow_normal", "bye_normal")]
    with tarfile.open(archive, "w:xz") as tar:
        for name in names:
            tar.add(bandai_clips / f"{name}.bvh", arcname=f"some/folder/{name}.bvh")
    joint_map = tmp_path / "map.json"
    joint_map.write_text(json.dumps(bvh.JOINT_MAPS["bandai"]["t2m"]))
    captions = tmp_path / "captions.csv"
    captions.write_text("file,caption\n" + "".join(f"{n}.bvh,a person moonwalks gracefully\n{n},someone moves\n"
                                                 for n in names))
    report = bvh.import_dataset([archive], tmp_path / "mine", "generic", joint_map, captions, progress=False)
    assert report["files"] == report["kept_clips"] == 4
    line = (tmp_path / "mine" / "texts" / f"{names[0]}.txt").read_text().splitlines()[0]
    assert line == "a person moonwalks gracefully#a/DET person/NOUN moonwalks/X gracefully/ADV#0.0#0.0"


def test_bad_bvh_files_and_maps_are_skipped_or_refused_with_a_message(bandai_clips, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(bandai_clips / f"{BANDAI_TEST_CLIPS[0]}.bvh", src)
    (src / "dataset-1_run_normal_009.bvh").write_text(INLINE_BVH.replace("Frames: 2", "Frames: 5"))
    with pytest.warns(UserWarning, match=r"skipped .*dataset-1_run_normal_009.bvh: .*truncated file"):
        report = bvh.import_dataset([src], tmp_path / "out", "bandai", progress=False)
    assert len(report["bad_files"]) == 1 and report["kept_clips"] >= 1
    bad_map = tmp_path / "bad_map.json"
    bad_map.write_text(json.dumps({"pelvis": "Hips", "spine3": ["Chest"]}))
    with pytest.raises(bvh.BVHError, match=r"these entries are not: \['spine3'\]"):
        bvh.read_joint_map(bad_map)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({k: v for k, v in bvh.JOINT_MAPS["bandai"]["t2m"].items() if k != "head"}))
    captions = tmp_path / "c.csv"
    captions.write_text(f"file,caption\n{BANDAI_TEST_CLIPS[0]},a person walks\n")
    with pytest.warns(UserWarning, match=r"target joints without a source: \['head'\]"):
        with pytest.raises(bvh.BVHError, match="no clip could be imported"):
            bvh.import_dataset([src], tmp_path / "out2", "generic", missing, captions, progress=False)
    (tmp_path / "bad.csv").write_text("name,text\nx,y\n")
    with pytest.raises(bvh.BVHError, match="expected a CSV with a header 'file,caption'"):
        bvh.read_captions_csv(tmp_path / "bad.csv")
    with pytest.raises(SystemExit, match="is neither a folder nor a tar archive"):
        bvh.main(["import", "--format", "bandai", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])


def test_fk_command_writes_positions_and_names(bandai_clips, tmp_path):
    path = bandai_clips / f"{BANDAI_TEST_CLIPS[0]}.bvh"
    bvh.main(["fk", str(path), "--out", str(tmp_path / "walk.npz")])
    saved = np.load(tmp_path / "walk.npz")
    assert saved["positions"].shape[1:] == (22, 3) and list(saved["names"][:2]) == ["joint_Root", "Hips"]
    np.testing.assert_array_equal(saved["positions"], bvh.forward_kinematics(bvh.read_bvh(path)))


# ----------------------------------------------------------------------------- BVH export (bvh.write_bvh)

def _exported_positions(path):
    """Our reader's world positions of an exported file, back in t2m joint order (the file is in tree order)."""
    clip = bvh.read_bvh(path)
    order = [list(data.SKELETONS["t2m"].joint_names).index(n) if n in data.SKELETONS["t2m"].joint_names
             else list(bvh.MIXAMO_NAMES).index(n) for n in clip.names]
    positions = np.zeros((len(clip.motion), 22, 3))
    positions[:, order] = bvh.forward_kinematics(clip)
    return clip, positions


def test_write_bvh_reproduces_joints_with_the_rigs_bone_lengths(tmp_path):
    # released HumanML3D joints and a synthetic motion, both forward kinematics of the target skeleton's lengths:
    # every position back to float precision through our reader (measured: 4.3e-6 m and 8e-7 m)
    released = np.load(REF / "new_joints_000000.npy").astype(np.float64)
    built = synthetic.sample_motion(np.random.default_rng(0))[0]           # forward kinematics of the same skeleton
    for name, joints in (("released", released), ("synthetic", built)):
        path, rig = bvh.write_bvh(tmp_path / f"{name}.bvh", joints)
        clip, positions = _exported_positions(path)
        assert np.abs(positions - joints).max() < 1e-4, name
        assert np.abs(rig - joints).max() < 1e-5, name
        assert clip.frame_time == pytest.approx(0.05) and len(clip.motion) == len(joints)
        assert clip.channels[0] == ["Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation"]
        assert all(c == ["Zrotation", "Xrotation", "Yrotation"] for c in clip.channels[1:])
        assert clip.names[0] == "pelvis" and set(clip.names) == set(data.SKELETONS["t2m"].joint_names)
    # continuous in time: on the released clip no channel moves more than 60 degrees between frames (measured: 44,
    # a knee at 20 fps), and no channel of any export jumps by 180 or 360 (the Euler triple follows the frame before)
    for name in ("released", "synthetic"):
        clip = bvh.read_bvh(tmp_path / f"{name}.bvh")
        jumps = np.abs(np.diff(np.concatenate([clip.joint_motion(j)[:, -3:] for j in range(22)], axis=1), axis=0))
        assert jumps.max() < (60 if name == "released" else 120), name
    # centimetres, and Mixamo names
    path, _ = bvh.write_bvh(tmp_path / "cm.bvh", released, "mixamo", scale=100)
    clip, positions = _exported_positions(path)
    assert clip.names[:3] == ["Hips", "LeftUpLeg", "LeftLeg"] and np.abs(positions / 100 - released).max() < 1e-4


def test_write_bvh_keeps_hands_and_feet_where_shorter_bones_put_them(tmp_path):
    # a motion whose forearms are 20% short: the rig keeps its own lengths, and by IK the wrists stay where they were
    joints = synthetic.sample_motion(np.random.default_rng(1))[0]
    for wrist, elbow in ((20, 18), (21, 19)):
        joints[:, wrist] = joints[:, elbow] + 0.8 * (joints[:, wrist] - joints[:, elbow])
    _, rig = bvh.write_bvh(tmp_path / "short.bvh", joints)
    error = np.linalg.norm(rig - joints, axis=-1)
    assert error[:, [20, 21, 7, 8]].max() < 1e-6 and error[:, [18, 19]].max() > 0.01   # the elbows move instead
    lengths = np.linalg.norm(rig[:, 20] - rig[:, 18], axis=-1)
    np.testing.assert_allclose(lengths, data.SKELETONS["t2m"].bone_lengths[20], rtol=1e-9)


def test_bvhio_reads_the_export(tmp_path):
    joints = np.load(REF / "new_joints_000000.npy").astype(np.float64)
    path, _ = bvh.write_bvh(tmp_path / "clip.bvh", joints)
    clip, ours = _exported_positions(path)
    theirs = np.zeros_like(ours)
    theirs[:, [list(data.SKELETONS["t2m"].joint_names).index(n) for n in clip.names]] = _bvhio_positions(path, 22)
    assert np.abs(theirs - joints).max() < 1e-4        # float32 inside bvhio


# Blender headless: import with the settings the README gives, step through the frames, read every pose bone's
# head in world space. Debian's Blender 3.4 runs its BVH importer on Python 3.11, which refuses the file mode 'rU'
# the importer asks for: the script drops the 'U' (official Blender builds do not need this).
BLENDER_READ = """
import bpy, json, sys
path, out_path = sys.argv[sys.argv.index("--") + 1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
import io_anim_bvh.import_bvh as importer
importer.open = lambda file, mode="r", *args, **kwargs: open(file, mode.replace("U", ""), *args, **kwargs)
bpy.ops.import_anim.bvh(filepath=path, axis_forward="-Z", axis_up="Y", global_scale=1.0, frame_start=1,
                        use_fps_scale=False, update_scene_fps=True, update_scene_duration=True, rotate_mode="NATIVE")
scene = bpy.context.scene
armature = next(o for o in scene.objects if o.type == "ARMATURE")
first, last = (int(round(f)) for f in armature.animation_data.action.frame_range)
heads = []
for frame in range(first, last + 1):
    scene.frame_set(frame)
    heads.append([list(armature.matrix_world @ bone.head) for bone in armature.pose.bones])
json.dump({"fps": scene.render.fps / scene.render.fps_base, "frames": last - first + 1,
           "bones": [bone.name for bone in armature.pose.bones], "heads": heads}, open(out_path, "w"))
"""


def _blender_read(path, tmp_path):
    blender = require_program("blender", "apt-get install -y blender")
    script = tmp_path / "read_in_blender.py"
    script.write_text(BLENDER_READ)
    done = subprocess.run([blender, "-b", "--factory-startup", "--python", str(script), "--", str(path),
                           str(tmp_path / "blender.json")], capture_output=True, text=True, timeout=300)
    assert (tmp_path / "blender.json").is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((tmp_path / "blender.json").read_text())


def test_blender_reads_the_export_to_the_millimetre(tmp_path):
    joints = np.load(REF / "new_joints_000000.npy").astype(np.float64)
    path, _ = bvh.write_bvh(tmp_path / "clip.bvh", joints, "mixamo")
    seen = _blender_read(path, tmp_path)
    assert seen["frames"] == len(joints) and seen["fps"] == pytest.approx(20.0)
    assert sorted(seen["bones"]) == sorted(bvh.MIXAMO_NAMES)
    heads = np.array(seen["heads"])                                                   # Blender: Z up, -Y forward
    ours = joints[:, [list(bvh.MIXAMO_NAMES).index(n) for n in seen["bones"]]]
    ours = np.stack([ours[..., 0], -ours[..., 2], ours[..., 1]], axis=-1)             # (x, y, z) -> (x, -z, y)
    assert np.abs(heads - ours).max() < 1e-3                                          # measured: 4.9e-6 m


def test_write_bvh_refuses_bad_joints_and_leaves_no_partial_file(tmp_path):
    good = _fk_motion("t2m", T=10)
    with pytest.raises(bvh.BVHError, match=r"expects HumanML3D joints \(T, 22, 3\) in metres, got shape \(10, 21, 3\)"):
        bvh.write_bvh(tmp_path / "a.bvh", good[:, :21])
    bad = good.copy()
    bad[3, 5, 1] = np.nan
    with pytest.raises(bvh.BVHError, match="NaN or inf"):
        bvh.write_bvh(tmp_path / "b.bvh", bad)
    with pytest.raises(bvh.BVHError, match="joint names must be 'smpl' or 'mixamo', got 'ue4'"):
        bvh.write_bvh(tmp_path / "c.bvh", good, "ue4")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(bvh.BVHError, match="could not write .*a_file/d.bvh"):
        bvh.write_bvh(tmp_path / "a_file" / "d.bvh", good)                          # its folder is a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]                  # nothing half-written
    with pytest.raises(SystemExit, match="not a .npy array"):
        np.save(tmp_path / "x.npy", good)
        (tmp_path / "x.npy").write_text("not numpy")
        bvh.main(["export", "--joints", str(tmp_path / "x.npy"), "--out", str(tmp_path / "x.bvh")])


def test_bvh_imports_alone(tmp_path):
    # the component copies out alone: numpy only
    shutil.copy(REPO_ROOT / "bvh.py", tmp_path)
    done = subprocess.run([sys.executable, "-c", "import bvh, sys; assert 'torch' not in sys.modules"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# =====================================================================================================================
# moclip.py: MoCLIP (App. B), two-stage training, retrieval
# =====================================================================================================================

# ---------------------------------------------------------------------------------------------------------------------
# MoCLIP (moclip.py): paper App. B, Eq. (14)-(15), Table 5


TINY_TEXT = dict(embed_dim=32, quick_gelu=False, context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
CAPTIONS = ["a person walks forward", "a person jumps up", "someone waves the right hand", "a man turns left",
            "a person kicks with the left leg", "someone runs in a circle", "a person sits down", "a person crawls",
            "a person throws a ball", "the person bows", "a person squats twice", "someone claps hands",
            "a person steps back", "a person spins around", "a woman dances", "a person climbs stairs"]


def tiny_moclip(seed=0, dropout=0.0, motion_dim=12):
    torch.manual_seed(seed)
    return MoCLIP(motion_dim, clip_model="small", clip_pretrained="none", text_config=TINY_TEXT, motion_width=32,
                  motion_layers=2, motion_heads=4, motion_ff=64, dropout=dropout, max_len=40)


def random_motion(B=6, T=40, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, T + 1, (B,), generator=g)
    motion = torch.randn(B, T, D, generator=g)
    motion[torch.arange(T)[None, :] >= lengths[:, None]] = 0       # zero padding, as the loader does
    return motion, lengths


def test_moclip_loss_matches_eq15_by_hand():
    g = torch.Generator().manual_seed(0)
    text, motion, scale = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), 7.0
    cos = torch.tensor([[F.cosine_similarity(motion[i], text[j], dim=0).item() for j in range(5)] for i in range(5)])
    m2t = -np.mean([math.log(math.exp(scale * cos[i, i]) / sum(math.exp(scale * cos[i, j]) for j in range(5)))
                    for i in range(5)])
    t2m = -np.mean([math.log(math.exp(scale * cos[i, i]) / sum(math.exp(scale * cos[j, i]) for j in range(5)))
                    for i in range(5)])
    assert contrastive_loss(text, motion, scale).item() == pytest.approx(0.5 * (m2t + t2m), rel=1e-5)  # Eq. (15)
    # invariant to the embeddings' norms (cosine similarity of L2-normalised embeddings)
    assert contrastive_loss(3 * text, 0.5 * motion, scale).item() == pytest.approx(0.5 * (m2t + t2m), rel=1e-5)


def test_moclip_loss_falls_on_tiny_set():
    model = tiny_moclip().train()
    set_stage(model, 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    motion, lengths = random_motion(B=16, seed=1)
    losses = []
    for _ in range(30):
        loss = model(CAPTIONS, motion, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.8 * math.log(16)                           # ~chance at the start
    assert losses[-1] < 0.3 * losses[0]


def test_moclip_batch_order_equivariance():
    model = tiny_moclip().eval()
    motion, lengths = random_motion(B=6, seed=2)
    texts = CAPTIONS[:6]
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        t, m = model.encode_text(texts), model.encode_motion(motion, lengths)
        tp, mp = model.encode_text([texts[i] for i in perm]), model.encode_motion(motion[perm], lengths[perm])
        logits = F.normalize(m, dim=-1) @ F.normalize(t, dim=-1).T
        logits_p = F.normalize(mp, dim=-1) @ F.normalize(tp, dim=-1).T
        torch.testing.assert_close(tp, t[perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mp, m[perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits_p, logits[perm][:, perm], atol=1e-5, rtol=1e-5)
        assert model(texts, motion, lengths).item() == pytest.approx(
            model([texts[i] for i in perm], motion[perm], lengths[perm]).item(), abs=1e-5)


def test_moclip_padding_leaves_encode_motion_unchanged():
    model = tiny_moclip(dropout=0.2).eval()
    motion, lengths = random_motion(B=4, seed=3)
    lengths = torch.tensor([7, 40, 23, 12])
    with torch.no_grad():
        ref = model.encode_motion(motion, lengths)
        garbage = motion.clone()
        pad = torch.arange(40)[None, :] >= lengths[:, None]
        garbage[pad] = 100 * torch.randn(int(pad.sum()), 12)           # anything in the padding frames
        torch.testing.assert_close(model.encode_motion(garbage, lengths), ref, atol=1e-5, rtol=1e-5)
        for i in range(4):                                            # each clip alone, cropped to its length
            alone = model.encode_motion(motion[i:i + 1, :lengths[i]], lengths[i:i + 1])
            torch.testing.assert_close(alone[0], ref[i], atol=1e-5, rtol=1e-5)


def test_moclip_text_features_shapes_and_eot_pooling():
    model = tiny_moclip().eval()
    with torch.no_grad():
        tokens = model.encode_text_tokens(["a person jumps", "someone walks slowly in a circle"])
        pooled = model.encode_text(["a person jumps", "someone walks slowly in a circle"])
        ids = model.tokenize(["a person jumps", "someone walks slowly in a circle"])
    assert tokens.shape == (2, 77, model.text_width) and pooled.shape == (2, model.embed_dim)
    eot = ids.argmax(-1)                                              # end-of-text has the largest BPE id
    torch.testing.assert_close(pooled, tokens[torch.arange(2), eot] @ model.text.text_projection)
    with pytest.raises(ValueError, match="list of captions"):
        model.encode_text("a person jumps")


def test_moclip_stage_trainable_parameter_sets():
    model = tiny_moclip()
    motion = {f"motion.{n}" for n, _ in model.motion.named_parameters()}
    stage1 = motion                                                   # App. B: "Only the MotionEncoder"
    precursor_stage1 = motion | {"logit_scale", "text.text_projection"}
    assert set(set_stage(model, 1, stage1_projection=True)) == precursor_stage1
    last = f"text.transformer.resblocks.{TINY_TEXT['layers'] - 1}."
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    stage2 = precursor_stage1 | {last + n for n in block} | {"text.ln_final.weight", "text.ln_final.bias"}
    assert set(set_stage(model, 1)) == stage1
    assert {n for n, p in model.named_parameters() if p.requires_grad} == stage1
    assert set(set_stage(model, 2)) == stage2
    assert "text.token_embedding.weight" not in stage2 and "text.positional_embedding" not in stage2
    assert not any(n.startswith("text.transformer.resblocks.0.") for n in stage2)
    # gradients reach exactly the trainable set
    motion_x, lengths = random_motion(B=4, seed=4)
    model(CAPTIONS[:4], motion_x, lengths).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == stage2
    assert set(set_stage(model, 1)) == stage1                         # and back


def test_moclip_checkpoint_round_trip(tmp_path):
    model = tiny_moclip(seed=5).eval()
    with torch.no_grad():                                             # make the state differ from a fresh init
        model.logit_scale.fill_(2.5)
        model.text.text_projection.mul_(1.7)
    path = tmp_path / "moclip.pt"
    data.save_checkpoint({"format": "moclip", **moclip_state(model), "mean": torch.zeros(12), "std": torch.ones(12)}, path)
    loaded = load_moclip(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == model.config and loaded.mean.shape == (12,)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(restored[name], saved[name]) for name in saved)      # every weight, bit for bit
    # The outputs, compared like with like: a weight's requires_grad flag picks the kernel even under no_grad (ATen's
    # matmul folds open_clip's sequence-first attention input into one mm when the weight requires grad, and runs a
    # bmm when it does not; the two round differently). Frozen as load_moclip freezes, both run the same code path.
    model.requires_grad_(False)
    motion, lengths = random_motion(B=3, seed=6)
    texts = CAPTIONS[:3]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(texts), model.encode_text(texts), atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_text_tokens(texts), model.encode_text_tokens(texts), atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_motion(motion, lengths), model.encode_motion(motion, lengths),
                                   atol=0, rtol=0)
        assert loaded.scale().item() == pytest.approx(math.exp(2.5))
    # the in-memory form train.py embeds in its own checkpoint
    again = moclip_from_state(moclip_state(loaded))
    torch.testing.assert_close(again.encode_text(texts), model.encode_text(texts), atol=0, rtol=0)
    with pytest.raises(ValueError, match="not a MoCLIP checkpoint"):
        torch.save({"model": {}}, tmp_path / "other.pt")
        load_moclip(tmp_path / "other.pt")


def test_moclip_attention_dropout_is_its_own_setting_and_old_checkpoints_keep_theirs(tmp_path):
    # The small preset drops the attention weights' dropout only (a CPU speed choice); the other dropouts stay
    small = moclip.PRESETS["small"]
    assert small["attention_dropout"] == 0.0 and small["dropout"] == 0.1
    model = MoCLIP(12, "small", "none", motion_width=32, motion_layers=2, motion_heads=4, motion_ff=64,
                   dropout=0.1, attention_dropout=0.0)
    layers = model.motion.transformer.layers
    assert all(layer.self_attn.dropout == 0.0 and layer.dropout.p == 0.1 for layer in layers)
    assert model.config["attention_dropout"] == 0.0
    # In training mode an encoder without attention dropout is deterministic given its other masks: with the other
    # dropouts at 0 as well, two forward passes agree, and with attention dropout 0.5 they do not
    motion, lengths = random_motion(B=3, seed=1)
    for attention_dropout, same in ((0.0, True), (0.5, False)):
        encoder = moclip.MotionEncoder(12, 16, 32, 2, 4, 64, dropout=0.0, attention_dropout=attention_dropout).train()
        assert torch.equal(encoder(motion, lengths), encoder(motion, lengths)) == same
    # A checkpoint written before the setting existed has no such key: its attention dropout stays `dropout`
    old = moclip_state(model)
    old["config"] = {k: v for k, v in old["config"].items() if k != "attention_dropout"}
    rebuilt = moclip_from_state(old)
    assert all(layer.self_attn.dropout == 0.1 for layer in rebuilt.motion.transformer.layers)


def test_moclip_vit_b32_text_tower_runs_on_cpu():
    torch.manual_seed(0)
    model = MoCLIP(263, clip_model="ViT-B-32", clip_pretrained="none").eval()   # real-data path, random weights
    assert (model.embed_dim, model.text_width) == (512, 512)
    assert not any(n.startswith(("visual", "text.visual")) for n, _ in model.named_parameters())  # text side only
    assert sum(p.numel() for p in model.text.parameters()) == 63_428_096          # CLIP ViT-B/32 text tower
    with torch.no_grad():
        tokens = model.encode_text_tokens(["a person jumps"])
        pooled = model.encode_text(["a person jumps"])
        z = model.encode_motion(torch.randn(1, 60, 263), torch.tensor([60]))
    assert tokens.shape == (1, 77, 512) and pooled.shape == (1, 512) and z.shape == (1, 512)
    assert torch.isfinite(tokens).all() and torch.isfinite(pooled).all()


def test_moclip_pretrained_weights_fill_the_text_only_tower(monkeypatch):
    # stands in for a download: open_clip's full ViT-B-32 CLIP with random weights plays the "pretrained" one
    made, create_model = {}, open_clip.create_model

    def fake_create_model(name, pretrained=None, **kwargs):
        torch.manual_seed(1)
        made["clip"] = create_model(name, pretrained=None, **kwargs)
        return made["clip"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                         # no connectivity probe
    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    torch.manual_seed(0)
    model = MoCLIP(263, clip_model="ViT-B-32", clip_pretrained="openai").eval()
    assert model.config["text_config"]["quick_gelu"] is True          # the openai weights use QuickGELU
    clip = made["clip"].eval()
    for name, p in model.text.state_dict().items():
        torch.testing.assert_close(p, clip.state_dict()[name], atol=0, rtol=0)
    ids = model.tokenize(["a person jumps", "someone waves"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(["a person jumps", "someone waves"]), clip.encode_text(ids))


def test_moclip_offline_pretrained_fails_fast_with_hint(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(RuntimeError, match="--clip-pretrained none"):
        MoCLIP(263, clip_model="ViT-B-32", clip_pretrained="openai")
    # when the hub itself fails (e.g. HF_HUB_OFFLINE=1 and nothing cached), the same hint, not a hub traceback

    def hub_error(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai'")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(open_clip, "create_model", hub_error)
    with pytest.raises(RuntimeError, match="--clip-pretrained none"):
        MoCLIP(263, clip_model="ViT-B-32", clip_pretrained="openai")
    with pytest.raises(ValueError, match="--clip-pretrained none"):
        MoCLIP(263, clip_model="small", clip_pretrained="openai")


# Retrieval (Table 5's top-k, pools of 32)

def test_moclip_topk_accuracy_on_constructed_similarities():
    assert topk_accuracy(torch.eye(32)) == {1: 1.0, 2: 1.0, 3: 1.0}
    # rows 0, 1 keep their match on top; rows 2, 3 have one distractor above it (a swap 2<->3)
    sim = torch.full((4, 4), 0.0)
    sim[torch.arange(4), torch.arange(4)] = 0.5
    sim[2, 3] = sim[3, 2] = 1.0
    assert topk_accuracy(sim) == {1: 0.5, 2: 1.0, 3: 1.0}
    # match ranked last of 4 in every row: top-3 misses all
    sim = -torch.eye(4)
    assert topk_accuracy(sim, ks=(1, 3, 4)) == {1: 0.0, 3: 0.0, 4: 1.0}
    assert topk_accuracy(torch.ones(4, 4))[1] == 0.0                   # ties count against


class _OracleMoCLIP(torch.nn.Module):
    """Text 'clip i' and a motion whose first feature is i map to the same one-hot: retrieval must be perfect."""
    device = torch.device("cpu")

    def encode_text(self, texts):
        return F.one_hot(torch.tensor([int(t.split()[1]) for t in texts]), 100).float()

    def encode_motion(self, motion, lengths):
        return F.one_hot(motion[:, 0, 0].long(), 100).float()


def test_moclip_retrieval_eval_protocol():
    dataset = [(f"clip {i}", np.full((10, 3), i, dtype=np.float32), 10) for i in range(70)]
    result = retrieval_eval(_OracleMoCLIP(), dataset, repeats=3, batch_size=32)
    assert set(result) == {f"{d}_top{k}" for d in ("t2m", "m2t") for k in (1, 2, 3)}
    assert all(mean == 1.0 and ci == 0.0 for mean, ci in result.values())
    with pytest.raises(ValueError, match="fewer than one batch"):
        retrieval_eval(_OracleMoCLIP(), dataset[:20], repeats=1, batch_size=32)


# Training (two stages, early stopping, atomic checkpoints, resume) on a tiny synthetic dataset

def test_moclip_train_two_stages_resume_and_eval_cli(tmp_path, capsys):
    from data import MotionDataset
    root, out = tmp_path / "synthetic", tmp_path / "moclip.pt"
    kw = dict(dataset="synthetic", data_root=root, out=out, batch_size=8, stage1_epochs=1, device="cpu",
              synthetic_motions=30, progress=False)
    path = moclip.train_moclip(epochs=2, **kw)
    state = torch.load(path, map_location="cpu", weights_only=True)   # plain types and tensors only
    last = torch.load(tmp_path / "moclip_last.pt", map_location="cpu", weights_only=True)
    assert state["format"] == "moclip" and state["dataset"] == "synthetic"
    assert [h["stage"] for h in last["history"]] == [1, 2] and last["stage"] == 2 and last["epoch"] == 2
    assert last["hparams"]["stage2_lr"] < last["hparams"]["lr"]
    train_set = MotionDataset(root, "train")
    np.testing.assert_array_equal(state["mean"].numpy(), train_set.mean)
    np.testing.assert_array_equal(state["std"].numpy(), train_set.std)
    assert not list(tmp_path.glob("*.tmp"))                            # atomic writes leave no temporary files
    model = load_moclip(path)
    assert model.config["clip_model"] == "small" and model.text_width == moclip.SMALL_TEXT_CONFIG["width"]
    # --resume continues the epoch count, in stage 2, with the optimiser state
    moclip.train_moclip(epochs=3, resume=True, **kw)
    resumed = torch.load(tmp_path / "moclip_last.pt", map_location="cpu", weights_only=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3] and resumed["stage"] == 2
    assert resumed["history"][:2] == last["history"]
    step = resumed["optimizer"]["state"][0]["step"].item()
    assert step == 2 * last["optimizer"]["state"][0]["step"].item()      # the stage-2 optimiser carried on
    # the Table 5 retrieval CLI on the checkpoint (pools of 2 here: the tiny test split has a handful of clips)
    moclip.main(["--eval", "--checkpoint", str(path), "--repeats", "2", "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert "text -> motion" in printed and "motion -> text" in printed


# =====================================================================================================================
# unet.py: the StableMoFusion UNet backbone
# =====================================================================================================================

# ---------------------------------------------------------------------------------------------------------------------
# unet.py: StableMoFusion's 1-D UNet (paper Sec. 3.1-3.2, Eq. 2-3) — shapes, zero-init, null condition, gradients,
# anchor taps, per-frame GroupNorm, parameter count of the paper configuration.
# ---------------------------------------------------------------------------------------------------------------------


D, W = 263, 24  # HumanML3D motion features; a small text-token width
# 64 channels = 8 per GroupNorm group, as in the small preset. With 2 channels per group a per-frame GroupNorm is
# nearly a sign function and float round-off is amplified chaotically through 18 blocks.
TINY = dict(base_dim=64, dim_mults=(1, 1, 1, 1), time_dim=32, text_latent_dim=32, text_ff_dim=64, num_heads=8)


def _tiny_unet(seed=0, **overrides):
    torch.manual_seed(seed)
    return UNet(D, W, **{**TINY, **overrides})


def _randomise_zero_init(model, seed=1):
    """Give every all-zero parameter random values.

    The zero-initialised layers (final conv, second conv and AdaGN linear of every block) make x0_pred exactly 0 at
    init, so at init the text and the time step cannot influence the output and every parameter upstream of the final
    conv gets exactly zero gradient. Tests of conditioning and of gradient flow therefore run on a randomised copy.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _inputs(B=2, T=57, L=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    t = torch.randint(0, 1000, (B,), generator=gen)
    tokens = torch.randn(B, L, W, generator=gen)
    return x, t, tokens


def test_timestep_embedding_is_interleaved_sinusoid():
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 32)
    assert emb.shape == (4, 32) and emb.dtype == torch.float32
    i = np.arange(16)
    angles = t.numpy()[:, None].astype(np.float64) * np.exp(-math.log(10000.0) * 2 * i / 32)  # spec 1.5
    np.testing.assert_allclose(emb[:, 0::2].numpy(), np.sin(angles), atol=2e-4)  # sin at even indices
    np.testing.assert_allclose(emb[:, 1::2].numpy(), np.cos(angles), atol=2e-4)  # cos at odd indices
    with pytest.raises(ValueError):
        timestep_embedding(t, 31)


@pytest.mark.parametrize("T", [40, 57, 64, 196])
def test_output_shapes_for_any_length(T):
    model = _tiny_unet().eval()
    x, t, tokens = _inputs(B=3, T=T)
    with torch.no_grad():
        x0, anchor = model(x, t, tokens, torch.tensor([True, False, True]))
    assert x0.shape == (3, T, D)
    assert anchor.shape == (3, model.anchor_channels, model.anchor_frames(T))
    assert model.anchor_frames(T) == math.ceil(T / 16) * 16 // 8  # down3: padded length / 8


def test_zero_init_output_is_exactly_zero_until_final_conv_changes():
    model = _tiny_unet().eval()
    x, t, tokens = _inputs()
    with torch.no_grad():
        x0, _ = model(x, t, tokens)
        assert torch.count_nonzero(x0) == 0  # final conv is zero-initialised
        nn.init.normal_(model.final_conv.weight, std=0.1)
        x0, _ = model(x, t, tokens)
    assert torch.count_nonzero(x0) == x0.numel()


def test_unconditional_output_does_not_depend_on_text():
    model = _randomise_zero_init(_tiny_unet()).eval()
    x, t, tokens = _inputs()
    off = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        a, ha = model(x, t, tokens, off)
        b, hb = model(x, t, torch.randn_like(tokens) * 5, off)
        c, hc = model(x, t)  # no text at all: every sample is unconditional
    assert torch.equal(a, b) and torch.equal(ha, hb)  # the null condition of Eq. (3): exactly the same numbers
    assert torch.equal(a, c) and torch.equal(ha, hc)


def test_conditional_output_depends_on_text():
    model = _randomise_zero_init(_tiny_unet()).eval()
    x, t, tokens = _inputs()
    with torch.no_grad():
        a, _ = model(x, t, tokens)  # cond_mask None = all conditional
        b, _ = model(x, t, torch.randn_like(tokens))
        u, _ = model(x, t, tokens, torch.zeros(2, dtype=torch.bool))
    assert (a - b).abs().amax(dim=(1, 2)).min() > 1e-4  # every sample changes
    assert (a - u).abs().amax(dim=(1, 2)).min() > 1e-4


def test_mixed_cond_mask_batch_equals_separate_runs():
    # Classifier-free guidance runs [conditional; unconditional] as one batch; the multiplicative mask must act per
    # sample, and nothing (per-frame GroupNorm included) may mix samples of a batch.
    model = _randomise_zero_init(_tiny_unet()).eval()
    x, t, tokens = _inputs(B=1)
    with torch.no_grad():
        both, h_both = model(x.repeat(2, 1, 1), t.repeat(2), tokens.repeat(2, 1, 1), torch.tensor([True, False]))
        cond, h_cond = model(x, t, tokens, torch.tensor([True]))
        uncond, h_uncond = model(x, t, tokens, torch.tensor([False]))
    torch.testing.assert_close(both, torch.cat([cond, uncond]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h_both, torch.cat([h_cond, h_uncond]), atol=1e-4, rtol=1e-4)


def test_pre_encoded_text_gives_the_same_output():
    # Samplers encode the text once per call: as text_latent, or further as the cross-attention contexts.
    model = _randomise_zero_init(_tiny_unet()).eval()
    x, t, tokens = _inputs()
    with torch.no_grad():
        a, _ = model(x, t, tokens)
        b, _ = model(x, t, text_latent=model.encode_text(tokens))
        c, _ = model(x, t, text_context=model.text_context(model.encode_text(tokens)))
    assert torch.equal(a, b) and torch.equal(a, c)
    context = model.text_context(model.encode_text(tokens))
    with pytest.raises(ValueError, match="not several"):
        model(x, t, tokens, text_context=context)
    with pytest.raises(ValueError, match="batch 2 > motion batch 1"):
        model(x[:1], t[:1], text_context=context)
    latent = model.encode_text(tokens)
    with pytest.raises(ValueError, match="text_latent batch 2 != motion batch 1"):
        model(x[:1], t[:1], text_latent=latent)
    with pytest.raises(ValueError, match=r"text_latent must be \(B, L, \d+\) from encode_text, got \(2, \d+\)"):
        model(x, t, text_latent=latent[..., 0])
    # a context of the first sample only: the second is unconditional, as a guided sampler's second half
    first = model.text_context(model.encode_text(tokens[:1]))
    with torch.no_grad():
        d, _ = model(x, t, cond_mask=torch.tensor([True, False]), text_context=first)
        e, _ = model(x, t, tokens, cond_mask=torch.tensor([True, False]))
    torch.testing.assert_close(d, e, rtol=1e-5, atol=1e-5)
    assert torch.equal(d[1], e[1])                                # the unconditional sample: the same ops, bit for bit
    with pytest.raises(ValueError, match="beyond the 1 the text_context covers"):
        model(x, t, cond_mask=torch.tensor([True, True]), text_context=first)
    with pytest.raises(ValueError, match="the dict UNet.text_context returns"):
        model(x, t, text_context={"down0": context["down0"]})


def test_linear_cross_attention_matches_the_backbones_formula():
    # The block builds its query channels-first (for speed on CPUs); the numbers must be the backbone's layout:
    # q = softmax over each head's d channels of query(LayerNorm(x^T)) viewed (B, T, H, d), k = softmax over the
    # tokens, y = q (k^T v) per head, added to x where cond is 1.
    torch.manual_seed(0)
    B, C, T, L, E, H = 3, 64, 26, 7, 32, 8
    attn = LinearCrossAttention(C, E, H, dropout=0.0).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p))
        x, text, cond = torch.randn(B, C, T), torch.randn(B, L, E), torch.tensor([1.0, 0.0, 1.0])
        q = attn.query(F.layer_norm(x.transpose(1, 2), (C,), attn.norm.weight, attn.norm.bias))
        q = q.view(B, T, H, C // H).softmax(dim=-1)
        normed = F.layer_norm(text, (E,), attn.text_norm.weight, attn.text_norm.bias)
        k = attn.key(normed).view(B, L, H, C // H).softmax(dim=1)
        v = attn.value(normed).view(B, L, H, C // H)
        y = torch.einsum("bthd,blhd,blhe->bthe", q, k, v).reshape(B, T, C).transpose(1, 2)
        expected = x + y * cond[:, None, None]
        got = attn(x, attn.context(text), cond)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], x[1])                              # the null condition: exactly the input


def test_every_parameter_receives_a_gradient():
    model = _randomise_zero_init(_tiny_unet()).train()
    x, t, tokens = _inputs(B=3)
    x0, anchor = model(x, t, tokens, torch.tensor([True, False, True]))
    (x0.square().mean() + anchor.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        if name.endswith("attn.key.bias"):
            # Adding the same bias to every token's key logit leaves the softmax over tokens unchanged, so this
            # parameter's true gradient is 0 (it exists only to match the backbone's parameter count).
            assert p.grad.abs().max() <= 1e-4 * model.get_parameter(name[:-4] + "weight").grad.abs().max(), name
        else:
            assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


# Paper channel layout (the same width on every level) scaled down, and an uneven layout to check channel bookkeeping.
@pytest.mark.parametrize("dim_mults,channels", [((2, 2, 2, 2), (32, 32, 32, 32)), ((1, 2, 3, 4), (16, 32, 48, 64))])
@pytest.mark.parametrize("block", ANCHOR_BLOCKS)
def test_anchor_feature_shape_and_location(block, dim_mults, channels):
    model = _tiny_unet(anchor_block=block, base_dim=16, dim_mults=dim_mults).eval()
    level = 4 if block == "mid" else int(block[-1])
    expected = (2, channels[min(level, 3)], 208 // 2 ** level)  # 196 frames padded to 208; mid: 13 frames
    assert (model.anchor_channels, model.anchor_frames(196)) == expected[1:]
    captured = {}
    hook = model.blocks[block].register_forward_hook(
        lambda mod, inp, out: captured.update(h=out[0] if block != "mid" else out))  # DownLevel -> (skip, down)
    x, t, tokens = _inputs(T=196)
    with torch.no_grad():
        _, anchor = model(x, t, tokens)
    hook.remove()
    assert anchor.shape == expected
    assert anchor is captured["h"]  # the skip feature before downsampling (or the mid output)


def test_named_blocks_are_in_forward_order_and_hookable():
    model = _tiny_unet()
    names = [n for n, _ in model.named_blocks()]
    assert names == ["down0", "down1", "down2", "down3", "mid", "up0", "up1", "up2", "up3"]
    fine = list(model.named_blocks(fine=True))
    assert len(fine) == 18 and fine[0][0] == "down0.block1" and fine[-1][0] == "up3.block2"
    order = []
    for name, module in model.named_blocks():
        module.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
    with torch.no_grad():
        model(*_inputs())
    assert order == names


def test_mish_written_with_a_sigmoid_matches_pytorchs_to_rounding():
    # unet.mish replaces F.mish in CPU inference by sigma(x) (1 + u) / (1 + u^2) with u = sigma(-x). Relative error
    # against float64 measured at most 2.7e-7 over [-100, 100] (F.mish's own: 1.8e-7); the tolerance leaves ~4x.
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.randn(10000, generator=torch.Generator().manual_seed(0)) * 4,
                   torch.tensor([0.0, 1e-30, -1e-30, 88.0, -88.0, 1e4, -1e4])])
    before = x.clone()
    y = mish(x)
    assert torch.equal(x, before)                                   # the in-place arithmetic never touches x
    assert not torch.equal(y, F.mish(x))                            # the sigmoid form ran, not F.mish
    torch.testing.assert_close(y.double(), F.mish(x.double()), rtol=1e-6, atol=1e-30)
    assert torch.equal(mish(torch.tensor([float("inf")])), torch.tensor([float("inf")]))
    # Training (inputs that need gradients) keeps PyTorch's Mish and its backward, bit for bit.
    x.requires_grad_(True)
    y = mish(x)
    assert torch.equal(y, F.mish(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()
    # A whole sampling forward is as close to the float64 network on F.mish as the float32 one on F.mish (errors
    # measured 9.1e-4 and 5.7e-4 at outputs up to 22; the network's own rounding grows through its 18 blocks).
    torch.manual_seed(0)
    net = UNet(12, 16, base_dim=8, dim_mults=(2, 2, 2, 2), time_dim=32, text_latent_dim=16, text_ff_dim=32,
               num_heads=2, dropout=0.0).eval()
    for block in net.modules():                                     # wake the zero-initialised layers
        if isinstance(block, (nn.Conv1d, nn.Linear)):
            nn.init.normal_(block.weight, std=0.3)
    xt, t, text = torch.randn(2, 40, 12), torch.tensor([10, 900]), torch.randn(2, 77, 16)
    with torch.no_grad():
        fast = net(xt, t, text)[0].double()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys.modules["unet"], "mish", F.mish)
            slow = net(xt, t, text)[0].double()
            exact = net.double()(xt.double(), t, text.double())[0]
    assert not torch.equal(fast, slow)
    assert (fast - exact).abs().max() <= 3 * (slow - exact).abs().max() + 1e-6


def test_frame_group_norm_is_per_frame():
    torch.manual_seed(0)
    norm = FrameGroupNorm(8, 32)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 32, 20) * 3 + 1
    reference = nn.functional.group_norm(x.transpose(1, 2).reshape(40, 32), 8, norm.weight, norm.bias, norm.eps)
    reference = reference.view(2, 20, 32).transpose(1, 2)
    # both ways of computing it: layer_norm where a gradient is needed (training), two means in CPU inference
    with_grad = norm(x.clone().requires_grad_(True))
    y = norm(x)
    assert with_grad.requires_grad and not torch.equal(y, with_grad.detach())   # the inference form ran
    torch.testing.assert_close(with_grad.detach(), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, reference, atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[:, :, 13:] = torch.randn(2, 32, 7) * 100  # change the "padding" frames only
    assert torch.equal(norm(x2)[:, :, :13], y[:, :, :13])  # valid frames' values are untouched


def _analytic_parameter_count(D, W, chans, time_dim, text_latent_dim, text_ff_dim):
    """Parameters written out from the architecture (spec 1.2-1.7), independently of the module code."""
    lin = lambda i, o: i * o + o
    conv = lambda i, o, k: i * o * k + o
    gn = lambda c: 2 * c

    def cond_block(i, o):
        res = conv(i, o, 5) + gn(o) + lin(time_dim, 2 * o) + conv(o, o, 5) + gn(o) + (conv(i, o, 1) if i != o else 0)
        attn = gn(o) + lin(o, o) + 2 * text_latent_dim + 2 * lin(text_latent_dim, o)  # LN_x, Wq, LN_t, Wk, Wv
        return res + attn

    body = lin(time_dim, 4 * time_dim) + lin(4 * time_dim, time_dim)
    c = D
    for ch in chans:  # down levels: 2 blocks + Conv1d(k3, s2)
        body += cond_block(c, ch) + cond_block(ch, ch) + conv(ch, ch, 3)
        c = ch
    body += 2 * cond_block(c, c)  # mid
    for ch in reversed(chans):  # up levels: ConvTranspose1d(k4) + concat skip + 2 blocks
        body += conv(c, c, 4) + cond_block(c + ch, ch) + cond_block(ch, ch)
        c = ch
    body += conv(chans[0], D, 1)  # final conv
    d = text_latent_dim
    layer = lin(d, 3 * d) + lin(d, d) + lin(d, text_ff_dim) + lin(text_ff_dim, d) + 2 * gn(d)  # MHA, FF, 2 LN
    text = lin(W, d) + 4 * layer + gn(d)
    return body, text


@pytest.mark.parametrize("preset", ["paper", "small"])
def test_parameter_count(preset):
    cfg = PRESETS[preset]
    with torch.device("meta"):  # no memory, no time, even for 299 M parameters
        model = UNet(263, 512, **cfg)
    text = sum(p.numel() for p in model.text_adapter.parameters())
    body = sum(p.numel() for p in model.parameters()) - text
    chans = [cfg["base_dim"] * m for m in cfg["dim_mults"]]
    assert (body, text) == _analytic_parameter_count(263, 512, chans, cfg["time_dim"], cfg["text_latent_dim"],
                                                     cfg["text_ff_dim"])
    if preset == "paper":
        assert (body, text) == (293_654_279, 5_392_128)  # stablemofusion_backbone.md 1.10
        per_level = {name: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for name, m in model.named_blocks()}
        assert per_level == {"down0": 25.76, "down1": 29.39, "down2": 29.39, "down3": 29.39, "mid": 26.24,
                             "up0": 37.78, "up1": 37.78, "up2": 37.78, "up3": 37.78}  # spec table, in M


def test_config_rebuilds_the_model_from_a_weights_only_checkpoint(tmp_path):
    model = _tiny_unet(anchor_block="mid")
    torch.save({"unet_config": model.config, "unet": model.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    rebuilt = UNet(**state["unet_config"])
    rebuilt.load_state_dict(state["unet"])  # strict: same architecture, same names
    assert rebuilt.anchor_block == "mid" and rebuilt.padded_length(57) == 64 and rebuilt.anchor_frames(57) == 4


def test_bad_inputs_raise_clear_errors():
    model = _tiny_unet()
    x, t, tokens = _inputs()
    with pytest.raises(ValueError, match="motion features"):
        model(x[:, :, :10], t, tokens)
    with pytest.raises(ValueError, match="integer timesteps"):
        model(x, t.float(), tokens)
    with pytest.raises(ValueError, match="no text"):
        model(x, t, cond_mask=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="anchor_block"):
        _tiny_unet(anchor_block="down0")
    with pytest.raises(ValueError, match="text_tokens"):
        model.encode_text(tokens[:, :, :5])


# =====================================================================================================================
# anchors.py and diffusion.py: DCT, FiLM, dual anchors, zeta(n), DDPM, guidance, DPM-Solver++
# =====================================================================================================================



# ---------------------------------------------------------------------------------------------------------------------
# DCT-II (App. F, Eq. 16-17)

def test_dct_matrix_is_orthonormal():
    D = dct_matrix(196, torch.float64)
    assert torch.allclose(D @ D.T, torch.eye(196, dtype=torch.float64), atol=1e-6, rtol=0)


def test_idct_inverts_dct_along_any_dim():
    x = torch.randn(3, 196, 5, dtype=torch.float64)
    for dim in (1, -1, 0):
        assert torch.allclose(idct(dct(x, dim=dim), dim=dim), x, atol=1e-10)


def test_dct_equals_direct_sum_of_eq16():
    n = 7
    v = torch.randn(n, dtype=torch.float64)
    direct = []
    for k in range(n):                                                       # Eq. (16) with A(k) of Eq. (17)
        A = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
        direct.append(A * sum(v[m].item() * math.cos(math.pi * (2 * m + 1) * k / (2 * n)) for m in range(n)))
    assert torch.allclose(dct(v), torch.tensor(direct, dtype=torch.float64), atol=1e-12)


def test_dct_equals_scipy_ortho_dct():
    scipy_fft = require("scipy.fft", SCIPY_INSTALL)
    x = torch.randn(2, 196, 4, dtype=torch.float64)
    ref = scipy_fft.dct(x.numpy(), type=2, norm="ortho", axis=1)
    assert torch.allclose(dct(x, dim=1), torch.from_numpy(ref), atol=1e-10)


def test_lowfreq_dct_keeps_first_k_coefficients_along_time():
    x0 = torch.randn(2, 196, 263)
    z = lowfreq_dct(x0, 64)
    assert z.shape == (2, 64, 263)
    assert torch.allclose(z, dct(x0, dim=1)[:, :64], atol=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        lowfreq_dct(x0, 197)


# ---------------------------------------------------------------------------------------------------------------------
# FiLM and the dual anchors (Eq. 4-7)

SMALL = dict(channels=16, motion_dim=7, anchor_frames=13, anchor_dim=10, dct_k=8, hidden=32, time_dim=16)


def _anchor_inputs(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, SMALL["channels"], SMALL["anchor_frames"], generator=g)
    e = timestep_embedding(torch.randint(0, 1000, (B,), generator=g), SMALL["time_dim"])     # e(t)
    valid = torch.arange(SMALL["anchor_frames"])[None, :] < torch.tensor([13, 9, 4])[:B, None]
    return h, e, valid


def test_film_starts_as_identity():
    film = FiLM(cond_dim=16, feature_dim=7)
    emb = torch.randn(3, 16)
    for z in (torch.randn(3, 7), torch.randn(3, 7, 8)):                  # temporal (B, D_a) and frequency (B, d_m, k)
        assert torch.equal(film(z, emb), z)
    with torch.no_grad():
        film.net[-1].bias.fill_(0.5)                                       # once trained it does modulate
    assert not torch.allclose(film(z, emb), z)


def test_film_broadcasts_gamma_beta_along_k():
    film = FiLM(cond_dim=4, feature_dim=3)
    with torch.no_grad():
        film.net[-1].bias.copy_(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]))   # gamma = (1,2,3), beta = (10,20,30)
    z = torch.ones(2, 3, 5)
    expected = torch.tensor([2.0 + 10, 3.0 + 20, 4.0 + 30])[None, :, None].expand(2, 3, 5)   # (1 + gamma) z + beta
    assert torch.allclose(film(z, torch.zeros(2, 4)), expected)


def test_dual_anchor_shapes_and_film_identity_at_init():
    torch.manual_seed(0)
    with_film = DualAnchor(**SMALL)
    without_film = DualAnchor(**SMALL, use_film=False)
    missing, unexpected = without_film.load_state_dict(with_film.state_dict(), strict=False)
    assert not missing and all("film" in key for key in unexpected)
    h, t, valid = _anchor_inputs()
    z_fre, z_tem = with_film(h, t, valid)
    assert z_fre.shape == (3, SMALL["dct_k"], SMALL["motion_dim"]) and z_tem.shape == (3, SMALL["anchor_dim"])
    z_fre0, z_tem0 = without_film(h, t, valid)
    assert torch.equal(z_fre, z_fre0) and torch.equal(z_tem, z_tem0)      # zero-initialised FiLM = identity


def test_temporal_anchor_pools_only_valid_frames():
    torch.manual_seed(0)
    anchor = DualAnchor(**SMALL)
    h, t, valid = _anchor_inputs()
    _, z_tem = anchor(h, t, valid)
    h2 = torch.where(valid[:, None, :], h, torch.randn_like(h) * 100)    # change only the padded frames
    _, z_tem2 = anchor(h2, t, valid)
    assert torch.allclose(z_tem, z_tem2, atol=1e-5)
    _, z_tem_all = anchor(h2, t, torch.ones_like(valid))
    assert not torch.allclose(z_tem, z_tem_all, atol=1e-3)


def test_dual_anchor_rejects_other_frame_counts():
    anchor = DualAnchor(**SMALL)
    h, t, valid = _anchor_inputs()
    with pytest.raises(ValueError, match="frames"):
        anchor(h[..., :10], t, valid[:, :10])


def test_ablation_switches_remove_parameters_and_loss_terms():
    def names(**switches):
        return [n for n, _ in DualAnchor(**SMALL, **switches).named_parameters()]

    full = names()
    assert any(n.startswith("freq_") for n in full) and any(n.startswith("tem_") for n in full)
    assert not any(n.startswith("freq_") for n in names(use_fre=False))
    assert not any(n.startswith("tem_") for n in names(use_tem=False))
    assert not any("film" in n for n in names(use_film=False))
    assert sorted(names(use_fre=False) + names(use_tem=False)) == sorted(full)   # nothing shared, nothing extra

    h, t, valid = _anchor_inputs()
    x0, target = torch.randn(3, 20, SMALL["motion_dim"]), torch.randn(3, SMALL["anchor_dim"])
    z_fre, z_tem = DualAnchor(**SMALL, use_fre=False)(h, t, valid)
    assert z_fre is None and z_tem is not None
    assert set(dual_anchor_loss(z_fre, z_tem, x0, target)[1]) == {"tem"}
    z_fre, z_tem = DualAnchor(**SMALL, use_tem=False)(h, t, valid)
    assert z_tem is None and z_fre is not None
    assert set(dual_anchor_loss(z_fre, z_tem, x0, target)[1]) == {"fre"}


def test_anchor_losses_send_gradient_into_the_tapped_feature():
    torch.manual_seed(0)
    anchor = DualAnchor(**SMALL)
    h, t, valid = _anchor_inputs()
    h.requires_grad_(True)
    z_fre, z_tem = anchor(h, t, valid)
    total, _ = dual_anchor_loss(z_fre, z_tem, torch.randn(3, 20, SMALL["motion_dim"]), torch.randn(3, SMALL["anchor_dim"]))
    total.backward()
    assert h.grad.abs().sum() > 0                                          # the deep layer receives anchor gradients
    for name, p in anchor.named_parameters():
        if "film.net.0" not in name:                                       # behind the zero-initialised last layer
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------------------------
# Dual Anchor Loss and its weighting (Eq. 8-11, Table 4)

def test_frequency_anchor_loss_is_mse_to_lowfreq_dct():
    x0 = torch.randn(2, 196, 5)
    target = lowfreq_dct(x0, 64)
    assert frequency_anchor_loss(target, x0, 64).item() < 1e-12
    z = torch.randn(2, 64, 5)
    assert torch.allclose(frequency_anchor_loss(z, x0, 64), ((z - target) ** 2).mean())
    with pytest.raises(ValueError):
        frequency_anchor_loss(z, x0, 32)


def test_temporal_anchor_loss_is_one_minus_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])               # parallel, orthogonal, opposite
    assert torch.allclose(temporal_anchor_loss(a, b), torch.tensor((0.0 + 1.0 + 2.0) / 3))


def test_dual_anchor_loss_weights_terms_with_lambdas():
    x0, z_fre = torch.randn(2, 196, 5), torch.randn(2, 64, 5)
    z_tem, target = torch.randn(2, 8), torch.randn(2, 8)
    total, terms = dual_anchor_loss(z_fre, z_tem, x0, target)
    assert torch.allclose(terms["fre"], frequency_anchor_loss(z_fre, x0))
    assert torch.allclose(terms["tem"], temporal_anchor_loss(z_tem, target))
    assert torch.allclose(total, 0.1 * terms["fre"] + 0.5 * terms["tem"])  # App. D lambdas
    assert dual_anchor_loss(None, None, x0, None)[0].item() == 0.0


def test_cosine_anchor_weight_eq11():
    N = 1000
    assert cosine_anchor_weight(0, N) == 1.0
    assert cosine_anchor_weight(N, N) == 0.0
    assert cosine_anchor_weight(N // 2, N) == pytest.approx(0.5)
    values = [cosine_anchor_weight(n, N) for n in range(N + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))                 # monotone non-increasing
    assert all(0 < v < 1 for v in values[1:-1])
    assert cosine_anchor_weight(N + 1, N) == 0.0 and cosine_anchor_weight(10 * N, N) == 0.0
    with pytest.raises(ValueError):
        cosine_anchor_weight(0, 0)


def test_anchor_weighting_kinds():
    cosine = AnchorWeighting("cosine", decay_steps=100)
    assert [float(cosine(n)) for n in (0, 50, 100, 150)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert len(list(cosine.parameters())) == 0
    static = AnchorWeighting("static")
    assert [float(static(n)) for n in (0, 10**6)] == [1.0, 1.0] and len(list(static.parameters())) == 0
    loss = torch.tensor(0.7)
    assert torch.allclose(static.weigh(static(3), loss), loss)
    with pytest.raises(ValueError):
        AnchorWeighting("adaptive")


def test_learnable_anchor_weight_is_bounded_and_cannot_run_away():
    # Table 4 "learnable (global)": zeta = sigmoid(w) starts at 0.99, stays in (0, 1) and only falls. The former
    # exp(-s) + s form went to 1 / L: here it would have reached 4 for an anchor loss of 0.25.
    weighting = AnchorWeighting("learnable")
    assert weighting(0).item() == pytest.approx(0.99) and len(list(weighting.parameters())) == 1
    optimiser = torch.optim.AdamW(weighting.parameters(), lr=0.05, weight_decay=0.0)
    zetas = []
    for step in range(400):
        anchor_loss = torch.tensor(0.25 * 0.99 ** step)                # the anchor losses fall as training goes on
        optimiser.zero_grad()
        weighting.weigh(weighting(step), anchor_loss).backward()
        optimiser.step()
        zetas.append(weighting(step).item())
    assert all(0.0 < z < 1.0 for z in zetas)
    assert all(b <= a for a, b in zip(zetas, zetas[1:]))                  # never grows
    assert zetas[-1] < 0.9                                                 # and does learn


# ---------------------------------------------------------------------------------------------------------------------
# Forward process, loss and guidance (Eq. 1-3)

def test_linear_betas_and_alphas_cumprod():
    betas = linear_betas()
    assert betas.shape == (1000,) and betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    abar = alphas_cumprod(betas)
    assert torch.all(abar[1:] < abar[:-1]) and abar[0].item() == pytest.approx(1 - 1e-4)
    assert abar[-1].item() == pytest.approx(4.04e-5, rel=0.01)             # nearly pure noise at t = T


def test_linear_schedule_equals_diffusers_bit_for_bit():
    diffusers = require("diffusers", DIFFUSERS_INSTALL)
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    assert torch.equal(alphas_cumprod(linear_betas()), reference)


def test_q_sample_formula_and_marginal():
    abar = alphas_cumprod(linear_betas())
    t = torch.tensor([0, 250, 999])
    x0, noise = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    expected = abar[t].sqrt()[:, None, None] * x0 + (1 - abar[t]).sqrt()[:, None, None] * noise
    assert torch.allclose(q_sample(x0, t, noise, abar), expected, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 1.5)
    for step in (100, 500, 900):
        x_t = q_sample(x0, torch.full((20000,), step), torch.randn(20000, 1, generator=g), abar)
        assert x_t.mean().item() == pytest.approx(1.5 * abar[step].sqrt().item(), abs=0.03)
        assert x_t.var().item() == pytest.approx(1 - abar[step].item(), abs=0.03)
    with pytest.raises(ValueError):
        q_sample(x0[:1], torch.tensor([1000]), x0[:1], abar)


def test_masked_mse_ignores_padding_and_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 10, 4, generator=g), torch.randn(3, 10, 4, generator=g)
    lengths = torch.tensor([10, 6, 1])
    loss = masked_mse(pred, target, lengths)
    hand = sum(((pred[b, :n] - target[b, :n]) ** 2).mean() for b, n in enumerate(lengths.tolist())) / 3
    assert torch.allclose(loss, hand)
    pred2 = pred.clone()
    pred2[1, 6:] += 100.0                                                  # change only padded frames
    pred2[2, 1:] -= 50.0
    assert torch.allclose(masked_mse(pred2, target, lengths), loss)
    with pytest.raises(ValueError):
        masked_mse(pred, target, torch.tensor([10, 11, 1]))


def test_guided_x0_is_one_batched_forward():
    calls = []

    def denoise(x, t, cond_mask):                                          # cond: 2x, uncond: -x
        calls.append((x.shape[0], cond_mask.tolist()))
        return torch.where(cond_mask[:, None, None], 2 * x, -x)

    x, t = torch.randn(3, 5, 2), torch.tensor([1, 2, 3])
    assert torch.allclose(guided_x0(denoise, x, t, 1.0), 2 * x)           # scale 1: conditional prediction
    assert torch.allclose(guided_x0(denoise, x, t, 0.0), -x)              # scale 0: unconditional prediction
    assert torch.allclose(guided_x0(denoise, x, t, 2.5), -x + 2.5 * (3 * x))   # Eq. (3)
    assert calls == [(6, [True] * 3 + [False] * 3)] * 3                    # ONE forward of 2B per call


# ---------------------------------------------------------------------------------------------------------------------
# Samplers: DPM-Solver++ against diffusers, and against the analytic Gaussian

def _gaussian_denoiser(mu, s, abar):
    """Exact x0 predictor for data x0 ~ N(mu, s^2) per dim: x_t = a x0 + sigma eps with a = sqrt(abar_t),
    sigma^2 = 1 - abar_t makes (x0, x_t) jointly Gaussian, Cov(x0, x_t) = a s^2, Var(x_t) = a^2 s^2 + sigma^2, so
    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu), linear in x_t. Samplers hand every sample the
    same t, so the per-timestep coefficients are looked up once per call."""
    a = abar.double().sqrt()[:, None]                                      # (T, 1)
    gain = a * s**2 / (a**2 * s**2 + (1 - a**2))                           # (T, D)
    offset = mu - gain * a * mu                                            # E[x0 | x_t] = offset + gain x_t

    def model_fn(x, t):
        assert torch.all(t == t[0])
        return offset[t[0]].to(x.dtype) + gain[t[0]].to(x.dtype) * x
    return model_fn


def _recording(model_fn):
    """model_fn that also records the integer timesteps it is handed."""
    seen = []

    def wrapped(x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        seen.append(int(t[0]))
        return model_fn(x, t)
    return wrapped, seen


def _diffusers_dpm(model_fn, x_T, steps, karras, sde=False, generator=None):
    diffusers = require("diffusers", DIFFUSERS_INSTALL)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type="sample", solver_order=2,
        algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++", solver_type="midpoint",
        timestep_spacing="linspace", lower_order_final=True, final_sigmas_type="zero", use_karras_sigmas=karras)
    scheduler.set_timesteps(steps)
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(model_fn(x, t.expand(x.shape[0])), t, x, generator=generator).prev_sample
    return x


GAUSS_MU = torch.tensor([1.0, -0.5, 2.0, 0.0], dtype=torch.float64)
GAUSS_S = torch.tensor([0.5, 1.2, 0.3, 1.0], dtype=torch.float64)


def test_dpm_solver_schedule_equals_diffusers():
    diffusers = require("diffusers", DIFFUSERS_INSTALL)
    abar = alphas_cumprod(linear_betas())
    for karras in (False, True):
        for steps in (1, 2, 5, 7, 10, 18, 20, 25, 50):
            scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", prediction_type="sample",
                                                              use_karras_sigmas=karras, final_sigmas_type="zero")
            scheduler.set_timesteps(steps)
            timesteps, rhos = dpm_solver_schedule(abar, steps, karras)
            assert torch.equal(timesteps, scheduler.timesteps), (karras, steps)
            assert torch.allclose(rhos.float(), scheduler.sigmas, rtol=1e-5, atol=0), (karras, steps)


@pytest.mark.parametrize("karras", [False, True], ids=["uniform", "karras"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpm_solver_pp_matches_diffusers_step_for_step(steps, karras):
    abar = alphas_cumprod(linear_betas())
    denoiser = _gaussian_denoiser(GAUSS_MU, GAUSS_S, abar)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(steps))
    ours_fn, ours_t = _recording(denoiser)
    ref_fn, ref_t = _recording(denoiser)
    ours = dpm_solver_pp(ours_fn, x_T, abar, steps=steps, order=2, karras=karras)
    ref = _diffusers_dpm(ref_fn, x_T, steps, karras)
    assert ours_t == ref_t and len(ours_t) == steps
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("karras", [False, True], ids=["uniform", "karras"])
def test_sde_dpm_solver_pp_matches_diffusers_with_the_same_seed(karras):
    abar = alphas_cumprod(linear_betas())
    denoiser = _gaussian_denoiser(GAUSS_MU, GAUSS_S, abar)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    ours_fn, ours_t = _recording(denoiser)
    ref_fn, ref_t = _recording(denoiser)
    ours = dpm_solver_pp(ours_fn, x_T, abar, steps=10, karras=karras, sde=True,
                         generator=torch.Generator().manual_seed(7))
    ref = _diffusers_dpm(ref_fn, x_T, 10, karras, sde=True, generator=torch.Generator().manual_seed(7))
    assert ours_t == ref_t
    assert (ours - ref).abs().max().item() < 1e-4
    other = dpm_solver_pp(denoiser, x_T, abar, steps=10, karras=karras, sde=True,
                          generator=torch.Generator().manual_seed(8))
    assert (other - ours).abs().max().item() > 1e-2                      # the noise really enters


def _moment_errors(x, mu, s, abar):
    """|mean - analytic| and |var / analytic - 1| per dim. The analytic law of the exact probability-flow ODE from
    x_T ~ N(0, I): the standardised (x_t - a_t mu) / sqrt(a_t^2 s^2 + sigma_t^2) is constant along it, so
    x0 = mu + s (x_T - a_T mu) / sqrt(v_T): mean mu - s a_T mu / sqrt(v_T), variance s^2 / v_T."""
    a_T = abar[-1].double().sqrt()
    v_T = a_T**2 * s**2 + 1 - a_T**2
    mean, var = mu - s * a_T * mu / v_T.sqrt(), s**2 / v_T
    x = x.double()
    return (x.mean(0) - mean).abs().max().item(), (x.var(0) / var - 1).abs().max().item()


def test_dpm_solver_pp_gaussian_moments_converge_with_steps():
    """Unit-variance Gaussian data (like normalised motion features). x_T is standardised per dim so that, the whole
    sampler being affine per dim, sample moments equal the sampler's exact output moments (no Monte Carlo noise)."""
    abar = alphas_cumprod(linear_betas())
    mu, s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    z = torch.randn(10000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = ((z - z.mean(0)) / z.std(0)).float()
    errors = {steps: _moment_errors(dpm_solver_pp(_gaussian_denoiser(mu, s, abar), x_T, abar, steps=steps), mu, s, abar)
              for steps in (5, 10, 20)}
    mean_err, var_err = errors[10]
    assert mean_err < 0.01 and var_err < 0.15                             # 10 steps: see README "Sampling"
    assert errors[5][0] > errors[10][0] > errors[20][0]                    # the mean error shrinks with steps
    assert errors[5][1] > errors[10][1] > errors[20][1]                    # and so does the variance error
    assert errors[20][1] < 0.02


def test_ddpm_sample_matches_the_gaussian_marginal():
    abar = alphas_cumprod(linear_betas())
    N = 20000
    x_T = torch.randn(N, 4, generator=torch.Generator().manual_seed(0))
    x0 = ddpm_sample(_gaussian_denoiser(GAUSS_MU, GAUSS_S, abar), x_T, abar, generator=torch.Generator().manual_seed(1))
    mean_err, var_err = _moment_errors(x0, GAUSS_MU, GAUSS_S, abar)
    assert mean_err < 4 * GAUSS_S.max().item() / math.sqrt(N)            # 4 Monte Carlo standard errors
    # 'fixed_small' (beta~_t) leaves out Var(x0 | x_t) from the reverse step, a known slight under-dispersion
    # (Ho et al. 2020); measured 1-2% here with 1e5 samples. Monte Carlo standard error of var / var: sqrt(2 / N) = 1%.
    assert var_err < 0.02 + 3 * math.sqrt(2 / N)


def test_ddpm_sample_matches_diffusers_with_the_same_seed():
    diffusers = require("diffusers", DIFFUSERS_INSTALL)
    abar = alphas_cumprod(linear_betas())
    denoiser = _gaussian_denoiser(GAUSS_MU, GAUSS_S, abar)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small",
                                        prediction_type="sample", clip_sample=False)
    g, x = torch.Generator().manual_seed(3), x_T
    for t in scheduler.timesteps:
        x = scheduler.step(denoiser(x, t.expand(64)), t, x, generator=g).prev_sample
    ours = ddpm_sample(denoiser, x_T, abar, generator=torch.Generator().manual_seed(3))
    assert (ours - x).abs().max().item() < 1e-4


# Inpainting (editing, long motions): the known part kept, the rest sampled

def test_inpainting_keeps_the_known_part_and_leaves_independent_dims_exact():
    # Diagonal Gaussian data: the generated dims do not depend on the known ones, so with the deterministic solver
    # they equal a run without inpainting bit for bit; the known (frame, dim) entries come back exactly.
    abar = alphas_cumprod(linear_betas())
    denoiser = _gaussian_denoiser(GAUSS_MU, GAUSS_S, abar)
    x_T = torch.randn(512, 6, 4, generator=torch.Generator().manual_seed(0))        # (B, frames, dims)
    known = torch.randn(512, 6, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(6, 4)
    mask[:2] = 1.0                                                                    # the first two frames
    mask[:, 3] = 1.0                                                                  # and dim 3 throughout
    free = mask == 0
    for karras in (False, True):
        plain = dpm_solver_pp(denoiser, x_T, abar, steps=10, karras=karras)
        edited = dpm_solver_pp(inpainting(denoiser, known, mask, abar, torch.Generator().manual_seed(2)), x_T, abar,
                               steps=10, karras=karras)
        assert torch.equal(edited[:, mask == 1], known[:, mask == 1])
        assert torch.equal(edited[:, free], plain[:, free])


def test_inpainting_moves_correlated_dims_toward_the_conditional():
    # Two correlated dims (rho = 0.8), dim 0 known at c: the exact conditional of dim 1 is N(mu1 + rho (c - mu0),
    # 1 - rho^2) = N(-0.2, 0.36), the unconditional N(-1, 1). Replacement without RePaint's resampling only goes part
    # of the way, because at low noise the predictor reads dim 1 off x_t itself. Measured (20,000 samples): DDPM 1,000
    # steps mean -0.509 (61% of the shift), variance 0.49; SDE-DPM-Solver++ 10 Karras steps -0.432 (71%), 0.82.
    abar = alphas_cumprod(linear_betas()).double()
    mu, rho, c = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.8, 1.5
    sigma = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)

    def denoiser(x, t):                                   # E[x0 | x_t] for x0 ~ N(mu, sigma), jointly Gaussian
        a = abar[t[0]].sqrt()
        gain = a * sigma @ torch.linalg.inv(a * a * sigma + (1 - a * a) * torch.eye(2, dtype=torch.float64))
        return mu + (x.double() - a * mu) @ gain.T
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    conditional, unconditional = mu[1] + rho * (c - mu[0]), mu[1]
    for sampler, N, (low, high), (var_low, var_high) in (("ddpm", 4000, (0.5, 0.72), (0.4, 0.6)),
                                                         ("dpm", 20000, (0.65, 0.77), (0.75, 0.9))):
        known = torch.zeros(N, 2, dtype=torch.float64)
        known[:, 0] = c
        x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        g = torch.Generator().manual_seed(1)
        model_fn = inpainting(denoiser, known, mask, abar, g)
        if sampler == "ddpm":
            x0 = ddpm_sample(model_fn, x_T, abar, generator=g)
        else:
            x0 = dpm_solver_pp(model_fn, x_T, abar, steps=10, karras=True, sde=True, generator=g)
        assert torch.equal(x0[:, 0], known[:, 0])
        shift = float((x0[:, 1].mean() - unconditional) / (conditional - unconditional))
        assert low < shift < high and var_low < x0[:, 1].var() < var_high, (sampler, shift, x0[:, 1].var())


def test_samplers_reject_bad_arguments():
    abar = alphas_cumprod(linear_betas())
    x_T = torch.randn(2, 3)
    with pytest.raises(ValueError, match="order"):
        dpm_solver_pp(lambda x, t: x, x_T, abar, order=3)
    with pytest.raises(ValueError, match="steps"):
        dpm_solver_pp(lambda x, t: x, x_T, abar, steps=0)


# =====================================================================================================================
# train.py and sample.py: end to end, resume, ablation switches, sampling
# =====================================================================================================================

REPO = Path(train.__file__).resolve().parent      # where the scripts live


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 24-motion synthetic dataset and a one-epoch MoCLIP on it: enough to run train.py end to end in seconds."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_dataset(root, num_motions=24, seed=0, progress=False)
    ckpt = moclip.train_moclip("synthetic", data_root=root, out=root / "moclip.pt", epochs=1, stage1_epochs=1,
                               batch_size=8, progress=False)
    return root, ckpt


def _train_flags(tiny, out_dir, steps):
    root, ckpt = tiny
    return ["--dataset", "synthetic", "--data-root", str(root), "--moclip-checkpoint", str(ckpt), "--steps",
            str(steps), "--batch-size", "4", "--out-dir", str(out_dir), "--log-every", "1", "--save-every", "3",
            "--sample-every", "0", "--anchor-decay-steps", "4"]


def _train(tiny, out_dir, steps, *extra):
    return train.main([*_train_flags(tiny, out_dir, steps), *extra])


def test_train_compiles_only_when_asked(tiny, tmp_path, monkeypatch):
    # Off by default (on 2 CPU cores compiling cost ~140 s and the compiled step was no faster); --compile asks for it,
    # and a compile that fails is the user's to see, not silently replaced by an eager run
    assert train.get_args(["--dataset", "synthetic"]).compile is False
    assert train.get_args(["--dataset", "synthetic", "--compile"]).compile is True
    assert train.get_args(["--dataset", "synthetic", "--no-compile"]).compile is False

    def failing_compile(module):
        def forward(*args, **kwargs):
            raise RuntimeError("C++ compile error: no compiler")
        return forward
    monkeypatch.setattr(train.torch, "compile", failing_compile)
    _train(tiny, tmp_path / "eager", 2)                       # the default never calls torch.compile
    assert (tmp_path / "eager" / "final.pt").exists()
    with pytest.raises(RuntimeError, match="no compiler"):
        _train(tiny, tmp_path / "asked", 2, "--compile")


def _compare_runs(run_a, run_b, steps):
    """Both runs' checkpoint.pt at `steps`, every LUMA and EMA weight equal bit for bit (runs of the same code path)."""
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for key in ("model", "ema_unet"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], atol=0, rtol=0, msg=f"{key}.{name} differs")
    return a, b


@pytest.mark.parametrize("component", ["unet", "anchors", "diffusion", "moclip", "bvh"])
def test_each_component_file_copies_out_alone(component, tmp_path):
    # A user copies one file into their project: it must import with torch / numpy (open_clip for MoCLIP) only
    shutil.copy(REPO / f"{component}.py", tmp_path)
    code = f"import {component}"
    if component == "moclip":
        code += "; import torch; torch.manual_seed(0); m = moclip.MoCLIP(12, 'small', 'none'); " \
                "print(m.encode_text(['a person jumps']).shape)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr


def test_the_commands_import_open_clip_only_when_they_build_a_text_tower():
    # open_clip brings torchvision (half of a command's start on a CPU): --help, a bad flag or a missing file stop
    # before any text tower is built, so importing the scripts must not import it
    code = "import analysis, evaluate, moclip, sample, train, sys; assert 'open_clip' not in sys.modules, " \
           "[m for m in sys.modules if m.startswith(('open_clip', 'torchvision'))][:3]"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_train_docstring_maps_every_line_of_algorithm_1_to_code():
    # App. C's Alg. 1, lines 1-8, each named with the function that implements it, and every name exists
    doc = train.__doc__
    block = doc[doc.index("Alg. 1 (App. C), line by line:"):doc.index("Everything the paper fixes")]
    numbered = [line.split()[0] for line in block.splitlines()[1:] if line.strip()[:1].isdigit()]
    assert numbered == [str(n) for n in range(1, 9)]
    for name in ("get_batch", "draw_diffusion_noise", "luma_loss", "train_step", "LUMA", "q_sample", "masked_mse",
                 "dual_anchor_loss", "timestep_embedding"):
        assert name in block and hasattr(train, name), name
    assert "Alg. 1 lines 2-7" in train.luma_loss.__doc__


def test_resume_is_exact(tiny, tmp_path):
    # 6 steps straight vs 3 steps, stop, --resume to 6: every parameter, EMA weight and optimiser moment identical.
    _train(tiny, tmp_path / "straight", 6)
    _train(tiny, tmp_path / "resumed", 3)
    _train(tiny, tmp_path / "resumed", 6, "--resume")
    a, b = _compare_runs(tmp_path / "straight", tmp_path / "resumed", 6)           # bit for bit
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # the log of the resumed run continues where it stopped, and zeta follows Eq. (11) with N = 4
    rows = list(csv.DictReader(open(tmp_path / "resumed" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert float(r["zeta"]) == pytest.approx(cosine_anchor_weight(int(r["step"]), 4), abs=1e-6)
    assert float(rows[-1]["zeta"]) == 0.0 and float(rows[0]["fre"]) > 0 and float(rows[0]["tem"]) > 0


def test_feature_cache_trains_the_same_model_up_to_rounding(tiny, tmp_path):
    # The cached MoCLIP features are each computed alone, the uncached ones in batches: the same numbers up to float
    # rounding, so 4 steps give the same weights to within 1e-5 of their norm (measured: 1.5e-7). Resume stays exact
    # with the cache on (test_resume_is_exact runs with it: the small preset's default).
    _train(tiny, tmp_path / "cached", 4, "--feature-cache")
    _train(tiny, tmp_path / "uncached", 4, "--no-feature-cache")
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["model"] for run in ("cached", "uncached"))
    assert _relative_difference([a[n] for n in b], [b[n] for n in b]) < 1e-5
    dataset = data.MotionDataset(tiny[0], split="train", kind="t2m", mode="train")
    x0, lengths, captions, keys = train.get_batch(dataset, 0, 4, 0, "cpu")
    moclip_model = load_moclip(tiny[1])
    features = train.FrozenFeatures(moclip_model, moclip_model)
    with torch.no_grad():
        torch.testing.assert_close(features.text_tokens(captions), moclip_model.encode_text_tokens(captions),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(features.motion_targets(x0, lengths, keys), moclip_model.encode_motion(x0, lengths),
                                   atol=1e-5, rtol=1e-5)
    assert set(features.tokens) == set(captions) and set(features.targets) == {k for k in keys if k is not None}


def _torchrun(tiny, out_dir, steps, *extra, processes=2):
    """train.py under torchrun with the gloo backend: the flags of _train, one CPU thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "train.py", *_train_flags(tiny, out_dir, steps), "--device", "cpu", *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_ddp_rank_shares_are_the_halves_of_the_global_batch(tiny):
    # What each of 2 ranks trains on is exactly its half of the one-process batch: the clips, their random windows and
    # captions, the lengths, and t, eps and the text-drop draws. Slicing and indexing run the same code on both sides,
    # so the comparison is exact. Step 9 starts the second epoch (38 training samples: 9 batches of 4 per epoch).
    from data import MotionDataset
    dataset = MotionDataset(tiny[0], split="train", kind="t2m", mode="train")
    for step in (0, 1, 9):
        x0, lengths, captions, keys = train.get_batch(dataset, step, 4, 0, "cpu")
        shares = [train.get_batch(dataset, step, 4, 0, "cpu", rank, 2) for rank in (0, 1)]
        assert shares[0][3] + shares[1][3] == keys
        assert torch.equal(torch.cat([share[0] for share in shares]), x0)
        assert torch.equal(torch.cat([share[1] for share in shares]), lengths)
        assert shares[0][2] + shares[1][2] == captions
        draws = train.draw_diffusion_noise(step, 4, x0.shape[1:], 0, "cpu")
        shared = [train.draw_diffusion_noise(step, 4, x0.shape[1:], 0, "cpu", rank, 2) for rank in (0, 1)]
        for i in range(3):                                                              # t, eps, drop
            assert torch.equal(torch.cat([share[i] for share in shared]), draws[i])


def _relative_difference(a, b):
    """||a - b|| / ||b|| of two lists of tensors, each taken as one long vector."""
    a, b = (torch.cat([x.flatten().double() for x in tensors]) for tensors in (a, b))
    return ((a - b).norm() / b.norm()).item()


def test_ddp_two_processes_equal_one_process_and_resume(tiny, tmp_path):
    # 2 gloo processes, each training on its half of the global batch of 4 (the test above), against one process: one
    # step, stop, --resume to 4. Not bit for bit: the gradient all-reduce, kernels on half batches and one thread per
    # process sum floats in other orders. So each property is checked where it is well conditioned, with tolerances set
    # between the measured difference of the real runs and that of a sabotaged DDP (every rank training on the first
    # half), under ATEN_CPU_CAPABILITY default, avx2 and avx512 alike (numbers: real / sabotaged).
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _train(tiny, single, 1)
    _torchrun(tiny, ddp, 1)
    # 1. The averaged gradient of step 1 equals the full-batch gradient. After one step AdamW's exp_avg is (1 - beta1) g,
    #    g the clipped gradient, so the checkpoints carry it. Per tensor, relative to the tensor's norm or to 1e-4 of the
    #    whole gradient's where that is larger (the attention key biases' true gradient is 0; every tensor behind the
    #    zero-initialised output convs gets exactly 0 at step 1). Worst tensor: 1.5e-6 / 0.80.
    g_single, g_ddp = ([s["exp_avg"] for s in torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]
                        ["state"].values()] for run in (single, ddp))
    floor = 1e-4 * torch.cat([g.flatten() for g in g_single]).norm()
    for i, (a, b) in enumerate(zip(g_single, g_ddp)):
        assert (b - a).norm() <= 1e-3 * (a.norm() + floor), f"parameter #{i}: DDP gradient differs"
    # 2. The weights after 4 steps agree relative to their norm. Element by element they need not: AdamW's first update
    #    lr * g / (|g| + eps) turns rounding noise in a gradient element near eps = 1e-8 into a lasting difference of a
    #    few per cent of lr (measured: 2e-5 at lr 5e-4, in one element of a zero-initialised conv). All weights: model
    #    3.6e-7 / 1.3e-2, EMA 2.4e-7 / 2.9e-3.
    _train(tiny, single, 4, "--resume")            # = 4 steps straight, bit for bit (test_resume_is_exact)
    _torchrun(tiny, ddp, 4, "--resume")
    a, b = (torch.load(run / "checkpoint.pt", weights_only=True) for run in (single, ddp))
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema_unet"):
        assert a[key].keys() == b[key].keys()
        assert _relative_difference([b[key][n] for n in a[key]], [a[key][n] for n in a[key]]) < 1e-4, key
    assert a["model"]["unet.final_conv.weight"].abs().max() > 0   # zero at init: training moved the weights
    # rank 0 alone logs: one header, one row per step, the global batch's mean loss (6 digits: equal / 0.70)
    rows_a = list(csv.DictReader(open(single / "log.csv")))
    rows_b = list(csv.DictReader(open(ddp / "log.csv")))
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == ["1", "2", "3", "4"]
    for ra, rb in zip(rows_a, rows_b):
        for column in ("loss", "ddpm", "fre", "tem", "zeta"):
            assert float(rb[column]) == pytest.approx(float(ra[column]), rel=1e-4, abs=1e-6), column
    # a global batch that does not split evenly is refused with a message
    with pytest.raises(AssertionError, match="must divide evenly"):
        _torchrun(tiny, tmp_path / "odd", 1, "--batch-size", "5")


def test_bench_cpu_measures_the_full_step_and_the_sampler(tmp_path, capsys):
    import bench
    rows = bench.main(["--cpu", "--modes", "fp32-eager", "--steps", "1", "--warmup", "0", "--sample-batches", "1",
                       "--out", str(tmp_path / "bench.json")])
    train_row, sample_row = rows
    assert (train_row["what"], train_row["batch"], sample_row["what"], sample_row["batch"]) == ("train", 24, "sample", 1)
    assert all(r["ms"] > 0 and r["peak_gib"] > 0 for r in rows)
    # the counted FLOPs cover the whole step: the frozen encoders' forward, plus forward and backward of the UNet and
    # anchors, where backward costs about twice the forward (a bit less: no gradient for the input of the first layers)
    run, model, moclip = bench.build(bench.get_args(["--cpu"]), "fp32-eager")
    x0, lengths, captions, _ = bench.random_batch(24, "cpu")
    t = torch.zeros(24, dtype=torch.long)
    with torch.no_grad():
        tokens = moclip.encode_text_tokens(captions)
        frozen = (bench.count_flops(lambda: moclip.encode_text_tokens(captions))
                  + bench.count_flops(lambda: moclip.encode_motion(x0, lengths)))
        forward = bench.count_flops(lambda: model(x0, t, tokens, t == 0, lengths))
    assert frozen + 2.7 * forward < train_row["flops"] < frozen + 3.0 * forward
    # sampling: 10 solver steps, each one UNet forward of 2B (guidance batched), about 10x one such forward
    # (the text tower, the UNet's text adapter and the cross-attention contexts run once per call, not per step)
    with torch.no_grad():
        x2, t2 = x0[:2], torch.zeros(2, dtype=torch.long)
        context1 = model.unet.text_context(model.unet.encode_text(tokens[:1]))   # the conditional half only
        unet_2b = bench.count_flops(lambda: model.unet(x2, t2, cond_mask=torch.tensor([True, False]),
                                                       text_context=context1))
    assert 10 * unet_2b < sample_row["flops"] < 10.5 * unet_2b
    table = capsys.readouterr().out
    assert "| train | fp32-eager | 24 |" in table and "peak RSS" in table
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["mode"] == "fp32-eager"
    with pytest.raises(SystemExit):                               # TF32 / bf16 are GPU modes: a clear refusal
        bench.get_args(["--cpu", "--modes", "bf16-eager"])


def test_ablation_flags_remove_their_parts(tiny, tmp_path):
    final = _train(tiny, tmp_path / "no_anchors", 1, "--no-anchors")
    state = torch.load(tmp_path / "no_anchors" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("anchor.") for k in state["model"])
    rows = list(csv.DictReader(open(tmp_path / "no_anchors" / "log.csv")))
    assert float(rows[0]["fre"]) == 0.0 and float(rows[0]["tem"]) == 0.0
    _train(tiny, tmp_path / "no_film", 1, "--no-film", "--no-tem", "--anchor-block", "mid", "--dct-k", "8")
    keys = torch.load(tmp_path / "no_film" / "checkpoint.pt", weights_only=True)["model"].keys()
    assert any(k.startswith("anchor.freq_proj.") for k in keys)
    assert not any("film" in k or k.startswith("anchor.tem_proj.") for k in keys)
    assert final.is_file()
    # "w/o MoCLIP" (Table 2): the cross-attention text comes from the tower MoCLIP started from, bit for bit
    clip_final = _train(tiny, tmp_path / "clip_text", 1, "--text-encoder", "clip")
    text = torch.load(clip_final, weights_only=True)["text_encoder"]["model"]
    initial = moclip.initial_text_tower(load_moclip(tiny[1])).state_dict()
    assert all(torch.equal(text[k], initial[k]) for k in initial if k.startswith("text."))


def test_initial_text_tower_is_the_one_moclip_started_from(tiny, tmp_path):
    # Rebuilt from the seed the checkpoint records: the layers no stage trains equal the trained model's bit for
    # bit, the ones stage 2 fine-tunes do not, and the whole tower is the seed's fresh draw (not another random one).
    root, _ = tiny
    path = moclip.train_moclip("synthetic", data_root=root, out=tmp_path / "moclip.pt", epochs=2, stage1_epochs=1,
                               batch_size=8, seed=7, progress=False)
    trained = load_moclip(path.with_name("moclip_last.pt"))                  # the state after stage 2's epoch
    assert trained.seed == 7 and trained.feat_bias == 5.0 and trained.stats_sha1 == data.stats_checksum(
        np.load(root / "Mean.npy"), np.load(root / "Std.npy"))
    initial = moclip.initial_text_tower(trained)
    frozen = ("text.token_embedding.weight", "text.positional_embedding",
              "text.transformer.resblocks.0.mlp.c_fc.weight")
    assert all(torch.equal(initial.state_dict()[k], trained.state_dict()[k]) for k in frozen)
    last = f"text.transformer.resblocks.{len(trained.text.transformer.resblocks) - 1}.mlp.c_fc.weight"
    assert not torch.equal(initial.state_dict()[last], trained.state_dict()[last])       # fine-tuned in stage 2
    torch.manual_seed(7)
    fresh = MoCLIP(**trained.config)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in initial.state_dict().items())
    assert not initial.training and not any(p.requires_grad for p in initial.parameters())
    trained.seed = None                                                                   # an older checkpoint
    with pytest.raises(ValueError, match="does not record the seed"):
        moclip.initial_text_tower(trained)


def test_a_moclip_trained_on_another_normalisation_is_refused(tiny, tmp_path, capsys):
    # The frozen MoCLIP scores LUMA's normalised motions (Eq. 9): a different --feat-bias (or Mean/Std) is refused,
    # with both named and the command that trains a matching one.
    root, ckpt = tiny
    status, message = _cli(train.main, _train_flags(tiny, tmp_path / "run", 1) + ["--feat-bias", "2"], capsys)
    sha = data.stats_checksum(np.load(root / "Mean.npy"), np.load(root / "Std.npy"))
    assert status == 1 and f"MoCLIP checkpoint {ckpt} was trained on motions normalised differently" in message
    assert f"Mean/Std {sha}, --feat-bias 5.0" in message and f"Mean/Std {sha}, --feat-bias 2.0" in message
    assert "python moclip.py --dataset synthetic" in message and "--feat-bias 2.0" in message
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    _train(tiny, tmp_path, 3)
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    with pytest.raises(SystemExit, match="last good checkpoint"):
        _train(tiny, tmp_path, 9, "--resume", "--lr", "1e30", "--grad-clip", "1e30")
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert kept["step"] == 3
    assert all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])


def test_long_motions_and_edits_keep_what_they_keep(tiny, tmp_path):
    final = _train(tiny, tmp_path / "run", 2)
    model = sample.load_model(final, device="cpu")
    assert sample.plan_windows(150, 20) == [(0, 150)]
    assert sample.plan_windows(600, 20) == [(0, 196), (176, 196), (352, 196), (404, 196)]
    close = dict(rtol=1e-5, atol=1e-5)                   # normalise -> keep -> denormalise rounds at 1e-7
    # a long motion of two segments: the second window (frames 54..250) keeps the 142 frames already made, fully
    # for all but the last 10, which cross-fade into the new window
    features, seams = model.generate_long(["a person walks", "a person jumps"], 250, overlap=20, steps=2)
    first = model.generate_features(["a person walks"], [196], steps=2, seed=0)[0]
    assert features.shape == (250, 263) and seams == [196]
    np.testing.assert_allclose(features[:186], first[:186], **close)
    assert not np.allclose(features[190:196], first[190:196], atol=1e-3)
    clips = [np.load(path) for path in sorted((tiny[0] / "new_joint_vecs").glob("*.npy"))]
    known = next(clip for clip in clips if len(clip) >= 100)[:100]                # a motion of the data
    edited, seams = sample.edit_motion(model, "in-between", "a person jumps", known, keep_start=1.0, keep_end=0.5,
                                       steps=2)
    assert seams == [20, 90] and edited.shape == known.shape
    np.testing.assert_allclose(edited[:20], known[:20], **close)
    np.testing.assert_allclose(edited[90:], known[90:], **close)
    assert not np.allclose(edited[20:90], known[20:90], atol=1e-3)
    edited, _ = sample.edit_motion(model, "upper-body", "a person waves", known, steps=2)
    legs = data.joint_feature_dims(sample.LOWER_BODY_JOINTS)
    np.testing.assert_allclose(edited[:, legs], known[:, legs], **close)
    assert not np.allclose(np.delete(edited, legs, axis=1), np.delete(known, legs, axis=1), atol=1e-3)
    edited, seams = sample.edit_motion(model, "continue", "a person walks", known, total=220, keep_start=1.0, steps=2)
    assert edited.shape == (220, 263) and seams == [20, 196]
    np.testing.assert_allclose(edited[:20], known[:20], **close)
    # the command line: two texts make one motion; its transitions are measured and written
    np.save(tmp_path / "known.npy", known)
    sample.main(["--checkpoint", str(final), "--text", "a person walks", "--text", "a person jumps", "--seconds",
                 "10.5", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "long")])
    name = tmp_path / "long" / "long_a_person_walks_then_a_person_jumps_0"
    assert np.load(f"{name}_joints.npy").shape == (210, 22, 3)
    measured = json.loads(Path(f"{name}_transitions.json").read_text())
    assert measured["seams"] == [196] and measured["seam_acceleration"] > 0 and measured["foot_skate"] >= 0
    sample.main(["--checkpoint", str(final), "--text", "a person jumps", "--edit", "in-between", "--motion",
                 str(tmp_path / "known.npy"), "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "edit")])
    edited = np.load(tmp_path / "edit" / "in-between_a_person_jumps_0.npy")
    np.testing.assert_allclose(edited[:20], known[:20], **close)
    np.testing.assert_allclose(edited[80:], known[80:], **close)


def test_joint_feature_dims_are_the_features_a_joint_moves():
    # moving the elbows and wrists changes exactly their feature dims (positions, rotations, velocities); the
    # lower body's dims are the 4 root, 8 x 9 joint and 9 x 3 velocity ones and the 4 foot contacts
    joints = _fk_motion("t2m", T=40, seed=5)
    moved = joints.copy()
    arm = [18, 19, 20, 21]
    moved[:, arm] += np.random.default_rng(0).normal(0, 0.05, (40, 4, 3))
    changed = np.abs(data.joints_to_features(moved) - data.joints_to_features(joints)).max(0) > 1e-6
    dims = data.joint_feature_dims(arm)
    assert not changed[np.setdiff1d(np.arange(263), dims)].any() and changed[dims].mean() > 0.9
    legs = data.joint_feature_dims(sample.LOWER_BODY_JOINTS)
    assert len(legs) == 4 + 8 * 9 + 9 * 3 + 4 and legs[-4:] == [259, 260, 261, 262]


def test_transition_measures_on_constructed_motions():
    T, fps = 60, 20.0
    steady = np.zeros((T, 22, 3))
    steady[:, :, 2] = np.arange(T)[:, None] / fps * 1.5                # everything glides forward at 1.5 m/s
    steady[:, :, 1] = 1.0
    steady[:, [10, 11], 1] = 0.0                                         # the feet on the floor: they skate
    measured = evaluate.transition_measures(steady, [30])
    assert measured["seam_speed"] == pytest.approx(1.5) and measured["inside_speed"] == pytest.approx(1.5)
    assert measured["seam_acceleration"] == pytest.approx(0, abs=1e-9) and measured["foot_skate"] == pytest.approx(1.5)
    jump = steady.copy()
    jump[30:, :, 0] += 0.2                                              # a 20 cm jump sideways at frame 30
    measured = evaluate.transition_measures(jump, [30])
    assert measured["seam_acceleration"] > 100 * max(measured["inside_acceleration"], 1e-9)
    assert evaluate.transition_measures(steady, [])["seam_acceleration"] is None


def test_sample_from_the_final_checkpoint(tiny, tmp_path):
    final = _train(tiny, tmp_path / "run", 2)
    model = sample.load_model(final, device="cpu")
    joints = model.generate(["a person jumps", "a person waves"], [40, 57], steps=3)
    assert [j.shape for j in joints] == [(40, 22, 3), (57, 22, 3)] and all(np.isfinite(j).all() for j in joints)
    # the deterministic sampler is a pure function of the seed
    a = model.generate_features(["a person jumps"], [40], steps=3, sampler="dpmsolver++", seed=1)[0]
    b = model.generate_features(["a person jumps"], [40], steps=3, sampler="dpmsolver++", seed=1)[0]
    assert np.array_equal(a, b)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person jumps#44\na person squats\n")
    sample.main(["--checkpoint", str(final), "--text-file", str(prompts), "--seconds", "2.5", "--steps", "2",
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--bvh"])
    for stem in ("00_a_person_jumps_0", "01_a_person_squats_0"):
        assert (tmp_path / "out" / f"{stem}.gif").is_file() and (tmp_path / "out" / f"{stem}.png").is_file()
    assert np.load(tmp_path / "out" / "00_a_person_jumps_0_joints.npy").shape == (44, 22, 3)
    assert len(bvh.read_bvh(tmp_path / "out" / "00_a_person_jumps_0.bvh").motion) == 44
    assert np.load(tmp_path / "out" / "01_a_person_squats_0.npy").shape == (50, 263)


def test_one_text_on_a_cpu_samples_with_native_convolution(monkeypatch):
    # One text is a guided batch of 2 rows: the UNet runs with oneDNN off (PyTorch's native convolution, faster
    # there), oneDNN's other settings kept, and the flag restored after; two texts keep oneDNN; both kernels give
    # the same motion
    torch.manual_seed(0)
    unet = _randomise_zero_init(UNet(D, TINY_TEXT["width"], **TINY))
    sampler = sample.LUMASampler(unet, tiny_moclip(motion_dim=D), torch.zeros(D), torch.ones(D))
    mkldnn, onednn_seen = torch.backends.mkldnn, []
    unet.register_forward_pre_hook(lambda module, inputs: onednn_seen.append((mkldnn.enabled, mkldnn.deterministic)))

    def generate(texts):
        onednn_seen.clear()
        with mkldnn.flags(enabled=True, deterministic=True, allow_tf32=None):   # a user's setting, to be kept
            features = sampler.generate_features(texts, [40] * len(texts), steps=3, sampler="dpmsolver++", seed=1)
            assert mkldnn.enabled and mkldnn.deterministic                     # restored
        assert len(onednn_seen) == 3 and all(deterministic for _, deterministic in onednn_seen)   # 3 forwards
        return features[0], [enabled for enabled, _ in onednn_seen]

    native, enabled = generate(["a person jumps"])
    assert not any(enabled)
    _, enabled = generate(["a person jumps", "a person waves"])
    assert all(enabled)
    monkeypatch.setattr(sample, "NATIVE_CONVOLUTION_MAX_ROWS", 0)              # oneDNN for one text too
    onednn, enabled = generate(["a person jumps"])
    assert all(enabled)
    np.testing.assert_allclose(native, onednn, rtol=0, atol=2e-4)     # measured: 3.2e-5 (AVX-512), 4.5e-5 (AVX2)


def test_sample_rejects_bad_requests(tiny, tmp_path):
    final = _train(tiny, tmp_path / "run", 1)
    model = sample.load_model(final, device="cpu")
    with pytest.raises(ValueError, match="outside 1..196"):
        model.generate(["a person jumps"], [300])
    with pytest.raises(ValueError, match="empty text"):
        model.generate(["  "], [40])
    with pytest.raises(data.InputError, match="missing.pt does not exist; expected a LUMA checkpoint"):
        sample.load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not a LUMA checkpoint"):
        sample.load_model(tiny[1])                                  # a MoCLIP checkpoint
    with pytest.raises(SystemExit):                                 # longer than 64 windows can cover
        sample.main(["--checkpoint", str(final), "--text", "a person jumps", "--seconds", "1000",
                     "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_a_missing_self_trained_evaluator_says_how_to_train_it(tiny, tmp_path):
    # run where no checkpoints/ folder exists, so the default checkpoints/evaluator_synthetic is surely missing
    for command in (["t2m", "--real-only"], ["moclip", "--checkpoint", str(tiny[1])]):
        result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), *command, "--dataset", "synthetic",
                                 "--data-root", str(tiny[0]), "--device", "cpu"],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "checkpoints/evaluator_synthetic does not exist: synthetic has no official evaluator, so train one " \
               "first with `python evaluate.py train-evaluator --dataset synthetic`" in result.stderr


def test_train_cli_reports_a_missing_dataset_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--dataset", "humanml3d", "--data-root", str(tmp_path / "none"),
                             "--out-dir", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "new_joint_vecs" in result.stderr and "HumanML3D" in result.stderr    # names the expected layout


# =====================================================================================================================
# evaluate.py: the standard evaluator (B.2-B.4), metrics (B.8), gradient flow, DCT spectrum
# =====================================================================================================================

def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- metrics ---------------------------------------------------------------

def test_fid_identical_statistics_is_zero_and_mean_shift_is_squared_norm():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=8), _random_spd(rng, 8)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    delta = rng.normal(size=8)
    assert frechet_distance(mu + delta, sigma, mu, sigma) == pytest.approx(delta @ delta, abs=1e-9)


def test_fid_matches_scipy_sqrtm_reference():
    linalg = require("scipy.linalg", SCIPY_INSTALL)
    rng = np.random.default_rng(1)
    for d in (3, 16, 64):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        covmean = linalg.sqrtm(s1 @ s2).real
        ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-7, abs=1e-8)


def test_fid_on_activations_and_singular_covariance():
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(10, 32))           # N < d: rank-deficient covariance, still finite and ~0 to itself
    mu, sigma = activation_statistics(acts)
    assert sigma.shape == (32, 32) and np.allclose(sigma, np.cov(acts, rowvar=False))
    # zero eigenvalues carry ~1e-16 round-off whose square roots (~1e-8 each) add up: tiny vs tr(sigma) ~ 32
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-5
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


def test_euclidean_distance_matrix():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    ref = np.linalg.norm(a[:, None] - b[None], axis=2)
    assert np.allclose(euclidean_distance_matrix(a, b), ref)
    assert np.all(np.diag(euclidean_distance_matrix(a, a)) < 1e-6)    # no NaN from round-off


def test_r_precision_on_constructed_distances():
    # Row i: own motion at rank r_i (0-based) -> hit@1 only rank 0, hit@2 ranks 0-1, hit@3 ranks 0-2.
    ranks = [0, 1, 2, 3, 0, 5, 1, 0]
    n = len(ranks)
    dist = np.zeros((n, n))
    for i, r in enumerate(ranks):
        others = [j for j in range(n) if j != i]
        order = others[:r] + [i] + others[r:]
        dist[i, order] = np.arange(n) + 1.0
    assert np.allclose(r_precision(dist, top_k=3), [3 / 8, 5 / 8, 6 / 8])


def test_matching_score_is_mean_diagonal():
    dist = np.array([[1.0, 9.0, 9.0], [9.0, 2.0, 9.0], [9.0, 9.0, 6.0]])
    assert matching_score(dist) == pytest.approx(3.0)


def test_diversity_and_multimodality_on_equidistant_points():
    # Scaled one-hot points: every pair of distinct points is exactly c*sqrt(2) apart, a point is 0 from itself.
    c, n = 3.0, 400
    acts = c * np.eye(n)
    rng = np.random.default_rng(4)
    ref_rng = np.random.default_rng(5)                        # replay the draws diversity() makes
    i1, i2 = ref_rng.choice(n, 300, replace=False), ref_rng.choice(n, 300, replace=False)
    same = np.mean(i1 == i2)                                  # pairs that happen to coincide contribute 0
    assert diversity(acts, 300, np.random.default_rng(5)) == pytest.approx(c * np.sqrt(2) * (1 - same))
    assert 0 < diversity(acts, 300, rng) <= c * np.sqrt(2) + 1e-12
    with pytest.raises(ValueError, match="more than 300"):
        diversity(acts[:300], 300, rng)
    # MultiModality: 30 generations per caption, equidistant within each caption.
    mm = np.stack([c * np.eye(30), 2 * c * np.eye(30)])      # (M=2, 30, 30)
    ref_rng = np.random.default_rng(6)
    j1, j2 = ref_rng.choice(30, 10, replace=False), ref_rng.choice(30, 10, replace=False)
    frac = np.mean(j1 != j2)
    assert multimodality(mm, 10, np.random.default_rng(6)) == pytest.approx(1.5 * c * np.sqrt(2) * frac)
    identical = np.repeat(np.ones((1, 1, 4)), 30, axis=1)
    assert multimodality(identical, 10, rng) == 0.0


def test_mean_ci_uses_population_std():
    values = [1.0, 2.0, 3.0, 4.0]
    mean, ci = mean_ci(values)
    assert mean == 2.5 and ci == pytest.approx(1.96 * np.std(values) / 2)


def test_results_table_and_json(tmp_path):
    results = {"Real": {"FID": [0.0, 0.002], "Top1": [0.5, 0.52], "MultiModality": []},
               "LUMA": {"FID": [0.1, 0.3], "MultiModality": [2.0, 2.0]}}
    table = results_table(results).splitlines()
    assert table[0].startswith("| Method | FID") and len(table) == 4
    assert "| Real | 0.001 ± 0.001 | 0.510 ± 0.014 |" in table[2] and table[2].endswith("| - |")
    assert "0.200 ± 0.139" in table[3] and "2.000 ± 0.000" in table[3]
    import json
    data = json.loads(write_results_json(results, tmp_path / "r.json", command="test").read_text())
    assert data["results"]["LUMA"]["FID"]["mean"] == pytest.approx(0.2) and "MultiModality" not in data["results"]["Real"]


# --- evaluator networks ------------------------------------------------------

def _expected_keys(d_in):
    def gru(h, i):
        return {f"gru.{w}_{kind}_l0{rev}": ((3 * h, i if kind == "ih" else h) if w == "weight" else (3 * h,))
                for w in ("weight", "bias") for kind in ("ih", "hh") for rev in ("", "_reverse")}
    movement = {"main.0.weight": (512, d_in, 4), "main.0.bias": (512,), "main.3.weight": (512, 512, 4),
                "main.3.bias": (512,), "out_net.weight": (512, 512), "out_net.bias": (512,)}
    text = {"hidden": (2, 1, 512), "pos_emb.weight": (300, 15), "pos_emb.bias": (300,),
            "input_emb.weight": (512, 300), "input_emb.bias": (512,), **gru(512, 512),
            "output_net.0.weight": (512, 1024), "output_net.0.bias": (512,), "output_net.1.weight": (512,),
            "output_net.1.bias": (512,), "output_net.3.weight": (512, 512), "output_net.3.bias": (512,)}
    motion = {"hidden": (2, 1, 1024), "input_emb.weight": (1024, 512), "input_emb.bias": (1024,),
              **gru(1024, 1024), "output_net.0.weight": (1024, 2048), "output_net.0.bias": (1024,),
              "output_net.1.weight": (1024,), "output_net.1.bias": (1024,), "output_net.3.weight": (512, 1024),
              "output_net.3.bias": (512,)}
    return {"movement_encoder": movement, "text_encoder": text, "motion_encoder": motion}


@pytest.mark.parametrize("dim_pose, counts", [
    (263, {"movement_encoder": 1_842_688, "text_encoder": 4_100_288, "motion_encoder": 15_747_584}),
    (251, {"movement_encoder": 1_818_112, "text_encoder": 4_100_288, "motion_encoder": 15_747_584})])
def test_evaluator_keys_shapes_and_param_counts_match_spec(dim_pose, counts):
    model = T2MEvaluator(dim_pose)
    for name, expected in _expected_keys(dim_pose - 4).items():
        sd = getattr(model, name).state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == expected, name
        assert sum(v.numel() for v in sd.values()) == counts[name], name


def test_evaluator_strict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = T2MEvaluator(263)
    path = tmp_path / "t2m" / "text_mot_match" / "model" / "finest.tar"
    save_evaluator(model, path, epoch=3, iter=100)            # same key layout as the official file
    loaded = load_evaluator(tmp_path, 263)                     # directory layout <root>/t2m/text_mot_match/...
    assert not loaded.training
    for name in ("movement_encoder", "motion_encoder", "text_encoder"):
        for k, v in getattr(model, name).state_dict().items():
            assert torch.equal(v, getattr(loaded, name).state_dict()[k])
    with pytest.raises(data.InputError, match=r"movement_encoder \(evaluator for dim_pose=251: .*\) weights do not fit"):
        load_evaluator(path, 251)                              # a HumanML3D file is not a KIT evaluator
    with pytest.raises(FileNotFoundError, match="--evaluator-dir"):
        load_evaluator(tmp_path / "nowhere", 263)


def test_evaluator_refuses_code_carrying_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("PWNED_MARK", str(tmp_path / "pwned"))
    path = tmp_path / "finest.tar"
    torch.save({"movement_encoder": {}, "motion_encoder": {}, "text_encoder": {}, "x": _Pwned()}, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        load_evaluator(path, 263)
    assert not (tmp_path / "pwned").exists()


def test_encode_shapes_and_batch_order_invariance():
    torch.manual_seed(0)
    model = T2MEvaluator(263).eval()
    B = 5
    motions = torch.randn(B, 196, 263)
    m_lens = torch.tensor([196, 40, 120, 64, 4])
    word_embs, pos = torch.randn(B, 22, 300), torch.randn(B, 22, 15)
    cap_lens = torch.tensor([5, 22, 2, 9, 9])
    with torch.no_grad():
        memb, temb = model.encode_motion(motions, m_lens), model.encode_text(word_embs, pos, cap_lens)
        perm = torch.tensor([3, 0, 4, 1, 2])
        memb_p = model.encode_motion(motions[perm], m_lens[perm])
        temb_p = model.encode_text(word_embs[perm], pos[perm], cap_lens[perm])
        # padding past the length must not matter (packed sequences)
        noisy = motions.clone()
        noisy[1, 48:] = 100.0
        memb_noisy = model.encode_motion(noisy, m_lens)
    assert memb.shape == temb.shape == (B, 512)
    assert torch.allclose(memb_p, memb[perm], atol=1e-5) and torch.allclose(temb_p, temb[perm], atol=1e-5)
    assert torch.allclose(memb_noisy[1], memb[1], atol=1e-5)
    with pytest.raises(ValueError, match="at least 4 frames"):
        model.encode_motion(motions[:1], torch.tensor([3]))


# --- word vectoriser ----------------------------------------------------------

class _Pwned:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('PWNED_MARK', '/tmp/evaluate_test_pwned')}",))


def test_restricted_unpickler_refuses_code_and_accepts_plain_data(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARK", str(mark))
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps([_Pwned()]))
    with pytest.raises(data.InputError, match="bad.pkl is not a plain word-vector pickle.*refusing"):
        restricted_load(bad)
    assert not mark.exists()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        good = tmp_path / f"good{protocol}.pkl"
        plain = {"words": ["sos", "walk"], "idx": {"sos": 0, "walk": 1}, "n": 2}
        good.write_bytes(pickle.dumps(plain, protocol=protocol))
        assert restricted_load(good) == plain
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)


def _write_vocab(root, words):
    vectors = np.arange(len(words) * 300, dtype=np.float32).reshape(len(words), 300)
    np.save(root / "our_vab_data.npy", vectors)
    (root / "our_vab_words.pkl").write_bytes(pickle.dumps(words))
    (root / "our_vab_idx.pkl").write_bytes(pickle.dumps({w: i for i, w in enumerate(words)}))
    return vectors


def test_word_vectorizer_lookup_pos_and_b3_padding(tmp_path):
    words = ["sos", "eos", "unk", "a", "person", "walk", "left", "slowly", "the"]
    vectors = _write_vocab(tmp_path, words)
    wv = WordVectorizer(tmp_path)
    onehot = {c: np.eye(15)[i] for i, c in enumerate(POS_CLASSES)}
    vec, pos = wv["person/NOUN"]
    assert np.array_equal(vec, vectors[4]) and np.array_equal(pos, onehot["NOUN"])
    assert np.array_equal(wv["walk/VERB"][1], onehot["Act_VIP"])        # VIP overrides the tag
    assert np.array_equal(wv["left/ADJ"][1], onehot["Loc_VIP"])
    assert np.array_equal(wv["slowly/ADV"][1], onehot["Desc_VIP"])
    assert np.array_equal(wv["the/PUNCT"][1], onehot["OTHER"])          # not one of the 9 real tags
    vec, pos = wv["zebra/NOUN"]                                          # out of vocabulary -> unk / OTHER
    assert np.array_equal(vec, vectors[2]) and np.array_equal(pos, onehot["OTHER"])
    assert np.array_equal(wv["kick/VERB"][1], onehot["OTHER"])           # VIP word but unknown -> OTHER

    tokens = ["a/DET", "person/NOUN", "walk/VERB", "left/ADV", "slowly/ADV"]
    word_embs, pos_ohot, cap_len = evaluator_text_input(tokens, wv)
    assert word_embs.shape == (22, 300) and pos_ohot.shape == (22, 15) and cap_len == 7
    assert np.array_equal(word_embs[0], vectors[0]) and np.array_equal(word_embs[6], vectors[1])
    assert np.array_equal(word_embs[7:], np.repeat(vectors[2:3], 15, axis=0))
    assert np.all(pos_ohot[[0, 6, 7, 21], 14] == 1)
    long_tokens = ["person/NOUN"] * 25
    word_embs, _, cap_len = evaluator_text_input(long_tokens, wv)
    assert cap_len == 22 and np.array_equal(word_embs[21], vectors[1])  # cut to 20 + sos + eos


def test_word_vectorizer_missing_and_malicious_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="our_vab_data.npy.*--glove-dir"):
        WordVectorizer(tmp_path)
    _write_vocab(tmp_path, ["sos", "eos", "unk"])
    (tmp_path / "our_vab_words.pkl").write_bytes(pickle.dumps(_Pwned()))
    with pytest.raises(data.InputError, match="our_vab_words.pkl is not a plain word-vector pickle"):
        WordVectorizer(tmp_path)


# --- meta stats, normalisation bridge, CLI ------------------------------------

def test_eval_meta_layouts_and_bridge(tmp_path):
    mean, std = np.arange(4, dtype=np.float32), np.full(4, 2.0, np.float32)
    meta = tmp_path / "Comp_v6_KLD01" / "meta"
    meta.mkdir(parents=True)
    np.save(meta / "mean.npy", mean)
    np.save(meta / "std.npy", std)
    m, s = load_eval_meta(tmp_path, "t2m")
    assert np.array_equal(m, mean) and np.array_equal(s, std)
    with pytest.raises(FileNotFoundError, match="--eval-meta-dir"):
        load_eval_meta(tmp_path, "kit")
    x = np.random.default_rng(0).normal(size=(3, 4))
    model_mean, model_std = np.ones(4), np.full(4, 0.5)
    raw = x * model_std + model_mean
    assert np.allclose(to_eval_space(x, model_mean, model_std, mean, std), (raw - mean) / std)


def test_moclip_command_reports_missing_files(tmp_path):
    with pytest.raises(SystemExit, match="error: checkpoint .*x.pt does not exist; expected a MoCLIP checkpoint"):
        evaluate.main(["moclip", "--checkpoint", str(tmp_path / "x.pt"), "--dataset", "synthetic"])


def _tiny_luma(anchor_block="down3"):
    args = train.get_args(["--dataset", "synthetic", "--anchor-block", anchor_block, "--dct-k", "8"])
    args.anchor_hidden = 32
    torch.manual_seed(0)
    model = train.build_model(args, 263, 16, 12)
    for module in model.modules():        # give the zero-initialised layers values, or no gradient reaches deep blocks
        for name, p in module.named_parameters(recurse=False):
            if torch.count_nonzero(p) == 0 and p.dim() > 0:
                torch.nn.init.normal_(p, std=0.02)
    return model


def test_gradient_flow_reaches_only_blocks_up_to_the_anchor_tap():
    model = _tiny_luma("down3")
    x0, lengths = torch.randn(2, 196, 263), torch.tensor([196, 120])
    text, target = torch.randn(2, 5, 16), torch.randn(2, 12)
    plain = gradient_flow(model, text, x0, lengths, target, timesteps=(750, 0), zeta=0.0)
    dal = gradient_flow(model, text, x0, lengths, target, timesteps=(750, 0), zeta=1.0)
    names = [n for n, _ in model.unet.named_blocks()]
    assert list(plain[750]) == names and all(v > 0 for v in plain[750].values())
    for t in (750, 0):
        for name in names:   # the DAL flows back from the down3 tap only: mid and up blocks see the same gradient
            if name.startswith("down"):
                assert dal[t][name] != pytest.approx(plain[t][name], rel=1e-6), name
            else:
                assert dal[t][name] == pytest.approx(plain[t][name], rel=1e-6), name


def test_plot_gradient_flow_writes_a_png(tmp_path):
    flows = {"LUMA": {750: {"down0": 1.0, "mid": 0.01, "up0": 2.0}}, "w/o DAL": {750: {"down0": 0.5, "mid": 0.001,
                                                                                      "up0": 2.0}}}
    path = plot_gradient_flow(flows, tmp_path / "gradflow.png")
    from PIL import Image
    assert Image.open(path).size[0] > 100


def test_final_layer_attention_matches_the_layer_by_hand():
    # Fig. 9's measure: attention each position receives from all others in the last text layer, head-averaged and
    # normalised; recomputed here from the layer's input and its in_proj weights, softmax(q k^T / sqrt(d) + mask).
    model = tiny_moclip(seed=3).eval()
    texts = ["a person jumps", "someone waves the left hand"]
    rows = final_layer_attention(model, texts)
    block = model.text.transformer.resblocks[-1]
    captured = {}
    hook = block.ln_1.register_forward_hook(lambda module, args, out: captured.__setitem__("x", out))
    ids = model.tokenize(texts)
    with torch.no_grad():
        model.text(ids)
    hook.remove()
    x, heads, width = captured["x"].double(), TINY_TEXT["heads"], TINY_TEXT["width"]
    with torch.no_grad():
        qkv = x @ block.attn.in_proj_weight.double().T + block.attn.in_proj_bias.double()
    q, k, _ = qkv.split(width, dim=-1)
    q, k = (t.reshape(len(texts), 77, heads, width // heads).transpose(1, 2) for t in (q, k))   # (B, H, L, d)
    causal = torch.full((77, 77), float("-inf"), dtype=torch.float64).triu(1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads) + causal, dim=-1).mean(1)
    for b, (tokens, received) in enumerate(rows):
        n = len(texts[b].split()) + 2
        assert tokens == ["<start_of_text>", *texts[b].split(), "<end_of_text>"]
        w = weights[b, :n, :n]
        expected = w.sum(0) - w.diagonal()
        np.testing.assert_allclose(received, (expected / expected.sum()).numpy(), rtol=1e-5, atol=1e-7)
        assert received.sum() == pytest.approx(1.0)


def test_attention_command_compares_moclip_with_its_initial_tower(tiny, tmp_path, capsys):
    # The tiny MoCLIP trained stage 1 only, which leaves the text tower as it started: every difference is 0.
    _, ckpt = tiny
    analysis.main(["attention", "--checkpoint", str(ckpt), "--text", "a person jumps", "--text", "a man turns left",
                   "--device", "cpu", "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "attention.csv")))
    assert [r["token"] for r in rows[:5]] == ["<start_of_text>", "a", "person", "jumps", "<end_of_text>"]
    assert len(rows) == 5 + 6 and all(float(r["difference"]) == 0.0 for r in rows)
    assert sum(float(r["moclip"]) for r in rows[:5]) == pytest.approx(1.0, abs=1e-5)
    from PIL import Image
    assert Image.open(tmp_path / "attention.png").size[0] > 100
    assert "most gained by" in capsys.readouterr().out


def test_dct_spectrum_on_known_signals():
    T = 196
    constant = np.ones((T, 3))
    magnitude, energy = dct_spectrum([constant])
    assert energy_share(energy, 1) == pytest.approx(1.0) and magnitude[0] == pytest.approx(np.sqrt(T))
    assert magnitude[1:].max() < 1e-9
    n = np.arange(T)[:, None]
    tone = np.cos(np.pi * (2 * n + 1) * 70 / (2 * T)) * np.ones((1, 2))          # exactly DCT basis vector 70
    magnitude, energy = dct_spectrum([tone])
    assert energy_share(energy, 64) == pytest.approx(0.0, abs=1e-12) and magnitude.argmax() == 70
    _, energy = dct_spectrum([constant, tone])                                    # energies add (Parseval)
    assert energy.sum() == pytest.approx((constant ** 2).sum() + (tone ** 2).sum())
    assert energy_share(energy, 64) == pytest.approx(3 * T / (3 * T + T))


def test_spectrum_and_gradflow_commands(tiny, tmp_path):
    root, _ = tiny
    analysis.main(["spectrum", "--data-root", str(root), "--out", str(tmp_path / "spectrum")])
    rows = np.loadtxt(tmp_path / "spectrum" / "spectrum.csv", delimiter=",", skiprows=1)
    assert rows.shape == (196, 2) and (tmp_path / "spectrum" / "spectrum.png").is_file()
    _train(tiny, tmp_path / "with", 2)
    _train(tiny, tmp_path / "without", 2, "--no-anchors")
    analysis.main(["gradflow", "--runs", str(tmp_path / "with"), str(tmp_path / "without"), "--batch-size", "4",
                   "--timesteps", "750", "0", "--moclip-checkpoint", str(tiny[1]), "--device", "cpu",
                   "--out", str(tmp_path / "gradflow")])
    with open(tmp_path / "gradflow" / "gradflow.csv", newline="") as f:
        lines = list(csv.reader(f))                               # the labels hold commas: quoted fields
    # by default the DAL is weighted by the zeta(n) training applied at the checkpoint's step (Eq. 11)
    zeta = cosine_anchor_weight(2, 4)                             # _train_flags: --anchor-decay-steps 4
    assert lines[0] == ["run", "zeta", "t", "block", "mean_abs_grad", "threshold_1pct_of_mean"]
    assert len(lines) == 1 + 2 * 2 * 9 and lines[1][:4] == ["with (step 2, zeta 0.50)", f"{zeta:.4g}", "750", "down0"]
    assert any(line[:4] == ["without (step 2, no DAL)", "0", "0", "up3"] for line in lines)
    assert (tmp_path / "gradflow" / "gradflow.png").is_file()
    analysis.main(["gradflow", "--runs", str(tmp_path / "with"), "--batch-size", "4", "--timesteps", "750",
                   "--zeta", "0", "--moclip-checkpoint", str(tiny[1]), "--device", "cpu",
                   "--out", str(tmp_path / "gradflow0")])
    with open(tmp_path / "gradflow0" / "gradflow.csv", newline="") as f:
        assert list(csv.reader(f))[1][:4] == ["with (step 2, zeta 0.00)", "0", "750", "down0"]


# ----- train-evaluator (B.4 training recipe), word table, and the protocol loop (B.9) -----

def test_word_table_round_trips_through_word_vectorizer(tmp_path):
    sentences = [["person", "walk", "forward"], ["person", "run", "forward"], ["man", "walk", "back"]] * 3
    words, vectors = evaluate.build_word_vectors(sentences)
    assert words[:3] == ["sos", "eos", "unk"] and sorted(words[3:]) == sorted({w for s in sentences for w in s})
    assert vectors.shape == (len(words), 300) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    evaluate.write_word_vectors(words, vectors, tmp_path)
    assert restricted_load(tmp_path / "our_vab_idx.pkl") == {w: i for i, w in enumerate(words)}
    wv = WordVectorizer(tmp_path)
    for i, w in enumerate(words):
        np.testing.assert_array_equal(wv.word2vec[w], vectors[i])
    vec, pos = wv["forward/ADV"]                         # a Loc_VIP word keeps its row, POS becomes the VIP class
    np.testing.assert_array_equal(vec, vectors[words.index("forward")])
    assert pos[POS_CLASSES.index("Loc_VIP")] == 1
    vec, _ = wv["zebra/NOUN"]
    np.testing.assert_array_equal(vec, vectors[2])       # unknown word -> the 'unk' row


def test_contrastive_matching_loss_by_hand():
    text = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    motion = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    # positives: d = 0 and 5 -> mean d^2 = 12.5; negatives (shift 1): t0 vs m1 d = 10 -> 0, t1 vs m0 d = 5 -> 25
    loss = evaluate.contrastive_matching_loss(text, motion, shift=1)
    assert loss.item() == pytest.approx(12.5 + 12.5)
    assert evaluate.contrastive_matching_loss(text, motion, shift=1, margin=2.0).item() == pytest.approx(12.5)


def test_movement_autoencoder_shapes_and_loss():
    torch.manual_seed(0)
    enc, dec = evaluate.MovementConvEncoder(263 - 4), evaluate.MovementConvDecoder(512, 512, 263)
    windows = torch.randn(3, 24, 263)
    assert dec(enc(windows[..., :-4])).shape == (3, 24, 263)
    loss, rec = evaluate.movement_autoencoder_loss(enc, dec, windows)
    assert rec.item() > 0 and loss.item() > rec.item()          # + the two 0.001-weighted latent terms


def _root_with_split(root, data_root, split, ids):
    """A copy of root by links, its <split>.txt replaced by the motion ids given -> data_root."""
    data_root.mkdir()
    for entry in root.iterdir():
        if entry.name != f"{split}.txt":
            (data_root / entry.name).symlink_to(entry)
    (data_root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return data_root


def test_train_evaluator_writes_files_that_load_strictly(tiny, tmp_path):
    root, _ = tiny
    out = evaluate.train_evaluator("synthetic", root, tmp_path / "ev", ae_steps=1, ae_batch_size=4, epochs=1,
                                   batch_size=8, progress=False)   # tiny val: 2 samples, one batch
    path = out / "t2m" / "text_mot_match" / "model" / "finest.tar"
    assert path.is_file()
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and np.isfinite(state["val_loss"])
    model = load_evaluator(out, 263)                   # strict=True inside
    assert isinstance(model, T2MEvaluator) and not model.training
    wv = WordVectorizer(out / "glove")
    assert {"sos", "eos", "unk", "walk"} <= set(wv.word2vec)
    mean, std = load_eval_meta(out, "t2m")
    ds = evaluate.MotionDataset(root, "train", "t2m")
    np.testing.assert_array_equal(mean, ds.mean)
    np.testing.assert_array_equal(std, ds.std)
    # Retrained from the same command on the same machine, the evaluator is the same weights, bit for bit (the same
    # code path); its fingerprint, which every results JSON records, tells it from any other set of weights
    again = evaluate.train_evaluator("synthetic", root, tmp_path / "ev2", ae_steps=1, ae_batch_size=4, epochs=1,
                                     batch_size=8, progress=False)
    assert evaluate.weights_sha1(load_evaluator(again, 263)) == evaluate.weights_sha1(model)
    other = load_evaluator(again, 263)
    with torch.no_grad():
        next(other.parameters())[0].view(-1)[0] += 1e-6
    assert evaluate.weights_sha1(other) != evaluate.weights_sha1(model)
    # a val split of one sample cannot be scored (the matching loss pairs each text with another motion): a message
    one_val = _root_with_split(root, tmp_path / "one_val", "val", (root / "val.txt").read_text().split()[:1])
    with pytest.raises(evaluate.InputError, match=r"val split has 1 sample\(s\); the matching loss needs at least 2"):
        evaluate.train_evaluator("synthetic", one_val, tmp_path / "ev3", ae_steps=1, ae_batch_size=4, epochs=1,
                                 batch_size=8, progress=False)


def test_protocol_real_row_and_identity_generator_on_tiny(tiny, tmp_path, monkeypatch):
    root, _ = tiny
    torch.manual_seed(0)
    words, vectors = evaluate.build_word_vectors(evaluate.caption_vocabulary(root / "texts"))
    evaluate.write_word_vectors(words, vectors, tmp_path)
    dataset = torch.utils.data.Subset(evaluate.MotionDataset(root, "train", "t2m", mode="eval"), range(10))
    evaluator = T2MEvaluator(263).eval()
    seen, last = [], {}
    original = evaluate.embed_eval_batch

    def capture(ev, wv, tokens, motions, m_lens, device="cpu"):     # remembers the GT batch the Real row embeds
        last["motions"] = motions
        seen.append(len(tokens))
        return original(ev, wv, tokens, motions, m_lens, device)
    monkeypatch.setattr(evaluate, "embed_eval_batch", capture)

    def identity(captions, m_lens):          # a "model" returning the GT batch: same crops and texts as Real
        return last["motions"]
    results = evaluate.evaluate_protocol(evaluator, WordVectorizer(tmp_path), dataset, replications=2,
                                         generators={"identity": identity}, batch_size=8, progress=False,
                                         diversity_times=4, mm_captions=0)
    assert set(seen) == {8}                                 # drop_last: only full batches
    for row in ("Real", "identity"):
        for metric in ("FID", "Top1", "Top2", "Top3", "Diversity", "MM-Dist"):
            assert len(results[row][metric]) == 2 and np.isfinite(results[row][metric]).all()
        assert results[row]["MultiModality"] == []
        assert all(0 <= a <= b <= c <= 1 for a, b, c in zip(*(results[row][k] for k in ("Top1", "Top2", "Top3"))))
    for metric in ("Top1", "Top2", "Top3", "MM-Dist", "FID"):  # identical motions and texts -> identical metrics
        np.testing.assert_allclose(results["identity"][metric], results["Real"][metric], rtol=1e-9, atol=1e-9)
    table = results_table(results)
    assert "| Real |" in table and "| identity |" in table and "nan" not in table
    # a row's numbers do not depend on the other rows of the table: Real alone, and identity beside a second row,
    # get the same Diversity pairs (one shared stream used to hand later rows other pairs from replication 2 on)
    alone = evaluate.evaluate_protocol(evaluator, WordVectorizer(tmp_path), dataset, replications=2, batch_size=8,
                                       progress=False, diversity_times=4, mm_captions=0)
    wider = evaluate.evaluate_protocol(evaluator, WordVectorizer(tmp_path), dataset, replications=2,
                                       generators={"first": identity, "identity": identity}, batch_size=8,
                                       progress=False, diversity_times=4, mm_captions=0)
    assert alone["Real"] == results["Real"] == wider["Real"]
    assert wider["identity"] == results["identity"]
    assert results["Real"]["Diversity"][0] != results["Real"]["Diversity"][1]          # replications draw anew
    draws = [evaluate.protocol_stream(0, 1, row, purpose).integers(2 ** 32)
             for row, purpose in (("Real", "diversity"), ("Real", "diversity"), ("a", "diversity"), ("Real", "x"))]
    assert draws[0] == draws[1] and len(set(draws)) == 3


def test_protocol_multimodality_on_tiny(tiny, tmp_path):
    # B.9 step 6: MM for generated rows only, from mm_repeats generations of mm_captions test items (caption + eval
    # m_len) shared by all rows; a deterministic generator has MM exactly 0, a noisy one > 0.
    root, _ = tiny
    torch.manual_seed(0)
    words, vectors = evaluate.build_word_vectors(evaluate.caption_vocabulary(root / "texts"))
    evaluate.write_word_vectors(words, vectors, tmp_path)
    dataset = torch.utils.data.Subset(evaluate.MotionDataset(root, "train", "t2m", mode="eval"), range(10))
    evaluator, vectorizer = T2MEvaluator(263).eval(), WordVectorizer(tmp_path)
    calls = {"constant": [], "noisy": []}
    noise = torch.Generator().manual_seed(0)

    def constant(captions, m_lens, name="constant"):
        calls[name].append((list(captions), m_lens.tolist()))
        return torch.ones(len(captions), 196, 263) * (torch.arange(196)[None, :, None] < m_lens[:, None, None])

    def noisy(captions, m_lens):
        return constant(captions, m_lens, "noisy") * torch.randn(len(captions), 196, 263, generator=noise)

    def run(**mm):
        noise.manual_seed(0)
        return evaluate.evaluate_protocol(evaluator, vectorizer, dataset, replications=2, batch_size=4,
                                          generators={"constant": constant, "noisy": noisy}, progress=False,
                                          diversity_times=4, **mm)
    results = run(mm_captions=4, mm_repeats=3, mm_times=2)
    assert results["Real"]["MultiModality"] == []
    assert results["constant"]["MultiModality"] == [0.0, 0.0]
    assert len(results["noisy"]["MultiModality"]) == 2 and all(v > 0 for v in results["noisy"]["MultiModality"])
    # per replication 2 GT batches of 4, then one call per caption (3 repeats < batch 4); both rows get the same items
    assert calls["constant"] == calls["noisy"] and len(calls["noisy"]) == 2 * (2 + 4)
    mm_calls = calls["noisy"][2:6]
    assert all(len(set(c)) == 1 and len(c) == 3 and len(set(n)) == 1 for c, n in mm_calls)
    assert len({c[0] for c, _ in mm_calls}) > 1
    assert all(n[0] % 4 == 0 and n[0] >= 4 for _, n in mm_calls)                   # eval-mode crops (B.6)
    lines = {line.split(" | ")[0][2:]: line for line in results_table(results).splitlines()}
    assert lines["constant"].endswith("| 0.000 ± 0.000 |") and lines["Real"].endswith("| - |")
    # the same seed reproduces MM; turning MM off changes nothing else (its draws use their own random streams)
    assert run(mm_captions=4, mm_repeats=3, mm_times=2)["noisy"]["MultiModality"] == results["noisy"]["MultiModality"]
    off = run(mm_captions=0)
    assert off["constant"]["MultiModality"] == off["noisy"]["MultiModality"] == []
    for metric in ("FID", "Top1", "Top2", "Top3", "Diversity", "MM-Dist"):
        assert off["Real"][metric] == results["Real"][metric]
        assert off["constant"][metric] == results["constant"][metric]
    with pytest.raises(ValueError, match="--mm-repeats"):
        run(mm_captions=4, mm_repeats=3, mm_times=4)


def _tiny_evaluator_dir(root, out):
    """A random T2MEvaluator, a word table from root's captions and root's stats in the train-evaluator layout."""
    torch.manual_seed(0)
    save_evaluator(T2MEvaluator(263), out / "t2m" / "text_mot_match" / "model" / "finest.tar")
    words, vectors = evaluate.build_word_vectors(evaluate.caption_vocabulary(root / "texts"))
    evaluate.write_word_vectors(words, vectors, out / "glove")
    np.save(out / "t2m_mean.npy", np.load(root / "Mean.npy"))
    np.save(out / "t2m_std.npy", np.load(root / "Std.npy"))
    return out


def test_moclip_command_scores_the_protocol_batches(tiny, tmp_path, capsys):
    # Table 5 analogue: the evaluator's R-precision and MoCLIP retrieval (both ways) on the same B.9 batches. The tiny
    # test split is shorter than one batch of 32, so a copy of the data uses all 48 items as its test split.
    root, ckpt = tiny
    data_root = _root_with_split(root, tmp_path / "data", "test", (root / "all.txt").read_text().split())
    ev_dir = _tiny_evaluator_dir(root, tmp_path / "ev")
    out = tmp_path / "out"
    evaluate.main(["moclip", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--data-root", str(data_root),
                   "--evaluator-dir", str(ev_dir), "--replications", "2", "--seed", "3", "--device", "cpu",
                   "--out", str(out)])
    table = (out / "moclip_table.md").read_text()
    assert table in capsys.readouterr().out
    rows = ("Evaluator (text→motion)", "MoCLIP text→motion", "MoCLIP motion→text")
    assert all(f"| {row} |" in table for row in rows)
    saved = json.loads((out / "moclip_results.json").read_text())["results"]
    for row in rows:
        tops = [saved[row][k]["values"] for k in ("Top1", "Top2", "Top3")]
        assert all(len(v) == 2 for v in tops)
        assert all(0 <= a <= b <= c <= 1 for a, b, c in zip(*tops))
    # the evaluator row is the protocol's Real row on the same seed: same captions, crops and batches (first pass)
    evaluator = load_evaluator(ev_dir, 263)
    mean, std = load_eval_meta(ev_dir, "t2m")
    dataset = evaluate.MotionDataset(data_root, "test", "t2m", mode="eval", eval_mean=mean, eval_std=std)
    real = evaluate.evaluate_protocol(evaluator, WordVectorizer(ev_dir / "glove"), dataset, replications=1, seed=3,
                                      progress=False, diversity_times=4)["Real"]
    for k in ("Top1", "Top2", "Top3"):
        assert saved[rows[0]][k]["values"][0] == pytest.approx(real[k][0], abs=1e-12)
    meta = json.loads((out / "moclip_results.json").read_text())["meta"]
    assert meta["evaluator_sha1"] == evaluate.weights_sha1(evaluator)
    assert meta["moclip_sha1"] == evaluate.weights_sha1(load_moclip(ckpt, "cpu"))


def _short_clip_root(root, data_root):
    """root's clips cut to 41 frames, its texts, stats and train split, with every clip in val (48 items: one batch
    of 32 per pass) -> (data_root, ids)."""
    (data_root / "new_joint_vecs").mkdir(parents=True)
    ids = (root / "all.txt").read_text().split()
    for name in ids:
        np.save(data_root / "new_joint_vecs" / f"{name}.npy", np.load(root / "new_joint_vecs" / f"{name}.npy")[:41])
    for name in ("texts", "Mean.npy", "Std.npy", "train.txt"):
        (data_root / name).symlink_to(root / name)
    (data_root / "val.txt").write_text("\n".join(ids) + "\n")
    return data_root, ids


def test_t2m_generates_at_the_loader_minimum_on_the_chosen_split(tiny, tmp_path, monkeypatch):
    # Generated rows are made and scored at the GT eval length clamped to >= 40 frames (t2m) / 24 (KIT) and <= 196,
    # as the backbone's evaluation does; --split val evaluates the validation split. Every clip here is cut to 41
    # frames, so the eval crop (a multiple of 4, or one unit less) is 40 or 36 frames.
    assert generation_lengths(torch.tensor([36, 40, 120, 200])).tolist() == [40, 40, 120, 196]
    assert generation_lengths(torch.tensor([20, 24, 30]), "kit").tolist() == [24, 24, 30]
    root, _ = tiny
    data_root, ids = _short_clip_root(root, tmp_path / "data")
    (data_root / "test.txt").write_text("\n".join(ids[:5]) + "\n")      # fewer than one batch: would be refused
    calls = []                        # per replication: the Real batch, the generated batch, FID's second GT pass
    original = evaluate.embed_eval_batch

    def capture(ev, wv, tokens, motions, m_lens, device="cpu"):
        calls.append(m_lens.tolist())
        return original(ev, wv, tokens, motions, m_lens, device)

    def recording_generator(checkpoint, eval_mean, eval_std, device, guidance, steps, seed):
        return lambda captions, m_lens: torch.ones(len(captions), 196, 263)
    monkeypatch.setattr(evaluate, "embed_eval_batch", capture)
    monkeypatch.setattr(evaluate, "_luma_generator", recording_generator)
    monkeypatch.setattr(evaluate, "diversity", lambda acts, times, rng: 0.0)     # 32 samples: too few for B.7's
    out = tmp_path / "out"
    evaluate.main(["t2m", "--dataset", "synthetic", "--data-root", str(data_root), "--split", "val",
                   "--evaluator-dir", str(_tiny_evaluator_dir(root, tmp_path / "ev")), "--checkpoint", "model.pt",
                   "--replications", "2", "--mm-captions", "0", "--device", "cpu", "--out", str(out)])
    saved = json.loads((out / "t2m_results.json").read_text())
    assert saved["meta"]["split"] == "val" and saved["meta"]["test_samples"] == 48
    assert saved["meta"]["evaluator_sha1"] == evaluate.weights_sha1(load_evaluator(tmp_path / "ev", 263))
    assert len(calls) == 2 * 3
    gt_lens, generated_lens = calls[0::3], calls[1::3]
    assert min(n for batch in gt_lens for n in batch) == 36                       # short crops do occur
    assert generated_lens == [[max(n, 40) for n in batch] for batch in gt_lens]


def test_eval_every_logs_fixed_validation_points_and_keeps_their_checkpoints(tiny, tmp_path, monkeypatch):
    # Fig. 4's points: the EMA model scored on the same validation batches with the same seed at each point, logged
    # to eval.csv with the training hours; the checkpoints kept; a resume continues the log and its hours (on a slow
    # disk too: the hours leave out writing checkpoint.pt, whose time a resume starts from); training is unchanged
    root, moclip_ckpt = tiny
    data_root, _ = _short_clip_root(root, tmp_path / "data")
    evaluator_dir = _tiny_evaluator_dir(root, tmp_path / "ev")
    flags = ["--dataset", "synthetic", "--data-root", str(data_root), "--moclip-checkpoint", str(moclip_ckpt),
             "--batch-size", "4", "--log-every", "1", "--save-every", "3", "--sample-every", "0",
             "--anchor-decay-steps", "4", "--device", "cpu"]
    probe_flags = ["--eval-every", "2", "--evaluator-dir", str(evaluator_dir), "--keep-checkpoints"]
    run, plain = tmp_path / "run", tmp_path / "plain"
    write = train.save_checkpoint

    def slow_disk(state, path):                  # the last checkpoint.pt takes 1 s to write, more than the two
        if Path(path).name == "checkpoint.pt" and state["step"] == 4:      # steps after the resume (0.24 s here)
            time.sleep(1.0)
        write(state, path)
    monkeypatch.setattr(train, "save_checkpoint", slow_disk)
    train.main(flags + probe_flags + ["--steps", "4", "--out-dir", str(run)])
    monkeypatch.undo()
    train.main(flags + ["--steps", "4", "--out-dir", str(plain)])
    _compare_runs(run, plain, 4)                                    # evaluating draws nothing from training's streams
    rows = list(csv.DictReader(open(run / "eval.csv")))
    assert [r["step"] for r in rows] == ["2", "4"] and list(rows[0]) == train.EVAL_COLUMNS
    assert 0 < float(rows[0]["train_hours"]) < float(rows[1]["train_hours"])
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("FID", "Top1", "Top2", "Top3", "MM-Dist"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002.pt", "step_000004.pt"]
    from sample import load_model
    probe = evaluate.ValidationProbe("synthetic", data_root, evaluator_dir=evaluator_dir)
    assert len(probe) == 32 and probe.real["FID"] >= 0
    for row in rows:                      # a fresh probe on the kept checkpoint reproduces the logged point
        again = probe(load_model(run / "checkpoints" / f"step_{int(row['step']):06d}.pt", "cpu"))
        for key in ("FID", "Top1", "Top3", "MM-Dist"):
            assert again[key] == pytest.approx(float(row[key]), rel=1e-5, abs=1e-6), key
    train.main(flags + probe_flags + ["--steps", "6", "--out-dir", str(run), "--resume"])
    rows = list(csv.DictReader(open(run / "eval.csv")))
    assert [r["step"] for r in rows] == ["2", "4", "6"]              # resumed from step 4: no point twice
    assert float(rows[1]["train_hours"]) < float(rows[2]["train_hours"])


def test_convergence_plots_fid_curves_and_the_steps_to_a_threshold(tmp_path, capsys):
    from PIL import Image
    # Fig. 4 from eval.csv files: one run folder, and one holding a subfolder per seed (mean and band over seeds)
    def write(folder, fids):
        folder.mkdir(parents=True)
        with open(folder / "eval.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(train.EVAL_COLUMNS)
            for i, fid in enumerate(fids, 1):
                w.writerow([100 * i, 0.01 * i, fid, 0.1, 0.2, 0.3 + 0.01 * i, 5.0, 1.0])
    write(tmp_path / "luma", [9.0, 4.0, 2.5, 2.0])                             # reaches 3.0 at step 300
    write(tmp_path / "base" / "seed_0", [9.0, 6.0, 3.5, 2.9])                  # at 400
    write(tmp_path / "base" / "seed_1", [9.0, 5.0, 3.0, 2.7])                  # at 300
    analysis.main(["convergence", "--runs", str(tmp_path / "luma"), str(tmp_path / "base"), "--fid-threshold", "3",
                   "--out", str(tmp_path / "out")])
    table = capsys.readouterr().out
    luma, base = [line for line in table.splitlines() if line.startswith(("| luma", "| base"))]
    assert luma.split(" | ")[1:6] == ["1", "400", "2.000", "0.340", "300"]
    half = analysis.t_quantile_975(1) * np.std([2.9, 2.7], ddof=1) / np.sqrt(2)                # t(1) interval, 2 seeds
    assert f"| 2 | 400 | 2.800 ± {half:.3f} | 0.340 | 350 (seeds: 400, 300) | 1.17 |" in base   # 350 / 300
    with Image.open(tmp_path / "out" / "convergence.png") as png:
        assert png.size[0] > 600 and len(np.unique(np.asarray(png.convert("L")))) > 10
    assert (tmp_path / "out" / "convergence.md").read_text() in table


def test_seed_interval_is_students_t_over_seeds():
    from scipy import stats
    for df in range(1, 61):
        assert analysis.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=3e-3), df
    values = [2.0, 2.6, 2.3]
    mean, half = analysis.seed_interval(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(2.3) and half == pytest.approx((high - low) / 2, rel=1e-3)
    assert analysis.seed_interval([1.5]) == (1.5, 0.0)


def test_seeds_table_groups_t2m_rows_by_variant_over_seeds(tmp_path, capsys):
    # evaluate.py t2m names rows by their last folders where the seed folders repeat; analysis.py seeds groups them
    names = evaluate.row_names([tmp_path / v / f"seed_{s}" / "final.pt" for v in ("luma", "base") for s in (0, 1, 2)])
    assert names == [f"{v}/seed_{s}" for v in ("luma", "base") for s in (0, 1, 2)]
    # one variant's seeds on their own keep the variant's name (as "seed_0" they would be three variants)
    alone = evaluate.row_names([tmp_path / "no_fre" / f"seed_{s}" / "final.pt" for s in (0, 1, 2)])
    assert alone == [f"no_fre/seed_{s}" for s in (0, 1, 2)]
    assert evaluate.row_names([tmp_path / "a" / "final.pt", tmp_path / "b" / "final.pt"]) == ["a", "b"]
    with pytest.raises(data.InputError, match="share a folder"):
        evaluate.row_names([tmp_path / "a" / "final.pt", tmp_path / "a" / "checkpoint.pt"])
    fids = {"luma": [2.0, 2.6, 2.3], "base": [1.2, 1.4, 1.3]}
    results = {"Real": {"FID": [0.01, 0.03], "Top3": [0.6, 0.6]}}
    for variant, values in fids.items():
        for seed, fid in enumerate(values):     # two replications per seed, whose mean is the seed's value
            results[f"{variant}/seed_{seed}"] = {"FID": [fid - 0.1, fid + 0.1], "Top3": [0.5, 0.5 + 0.02 * seed]}
    evaluate.write_results_json(results, tmp_path / "t2m_results.json")
    analysis.main(["seeds", "--results", str(tmp_path / "t2m_results.json"), "--out", str(tmp_path / "out")])
    table = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table.splitlines()[2:] if line.startswith("|")}
    assert set(rows) == {"Real", "luma", "base"} and rows["luma"][0] == "3" and rows["Real"][0] == "1"
    for variant, values in fids.items():
        mean, half = np.mean(values), analysis.t_quantile_975(2) * np.std(values, ddof=1) / np.sqrt(3)
        assert rows[variant][1] == f"{mean:.3f} ± {half:.3f}"
        assert rows[variant][-1].rstrip(" |") == ", ".join(f"{v:.3f}" for v in values)
    assert rows["luma"][2].startswith(f"{np.mean([0.5, 0.51, 0.52]):.3f} ± ")
    assert rows["Real"][1] == "0.020"                    # one seed: its mean, no interval
    assert (tmp_path / "out" / "seeds.md").read_text() in table


def test_t2m_cli_needs_checkpoint_or_real_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        evaluate.main(["t2m", "--dataset", "synthetic", "--out", str(tmp_path)])
    assert exit.value.code == 2 and "--real-only" in capsys.readouterr().err       # a usage error


def test_luma_generator_returns_eval_normalised_padded_batch(tiny, tmp_path):
    final = _train(tiny, tmp_path / "run", 2)
    mean, std = np.full(263, 0.5, np.float32), np.full(263, 2.0, np.float32)
    generate = evaluate._luma_generator(final, mean, std, "cpu", guidance=2.5, steps=2, seed=0)
    out = generate(["a person walks forward.", "a man jumps."], torch.tensor([40, 24]))
    assert out.shape == (2, 196, 263) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out[0, 40:] == 0).all() and (out[1, 24:] == 0).all() and (out[1, :24] != 0).any()
    from sample import load_model
    raw = load_model(final, "cpu").generate_features(["a person walks forward."], [40], steps=2, seed=0)[0]
    np.testing.assert_allclose(out[0, :40].numpy(), (raw - 0.5) / 2.0, rtol=1e-4, atol=1e-4)   # B.7 bridge (batch 2 vs 1)


# =====================================================================================================================
# Bad input, every script: one message and an exit status, never a traceback (data.py chapter 8)
# =====================================================================================================================
# Each case runs a script's main(argv) in-process, as its command line would: a usage error exits with status 2
# (argparse's usage line and one sentence on stderr), an expected runtime error with status 1 and "error: ..." (the
# message names the file and what was expected). Any other exception would escape main and fail the test with its
# traceback, which is exactly what no case may do.

@pytest.fixture(scope="module")
def bad(tiny, tmp_path_factory):
    """A one-step LUMA run on the tiny data, and the files a careless user passes to the scripts."""
    root = tmp_path_factory.mktemp("bad_input")
    run = root / "run"
    _train(tiny, run, 1)
    files = {"run": run, "final": run / "final.pt", "checkpoint": run / "checkpoint.pt", "data": tiny[0],
             "moclip": tiny[1], "mark": root / "PWNED", "out": root / "out"}

    class Payload:                                   # unpickling it would run a shell command
        def __reduce__(self):
            return (os.system, (f"touch {files['mark']}",))

    write = lambda name, text: (root / name).write_text(text) and root / name
    files.update(abc=write("abc.txt", "a person jumps#abc\n"), neg=write("neg.txt", "a person jumps#-5\n"),
                 extra=write("extra.txt", "a person jumps#30#extra\n"), long=write("long.txt", "a person jumps#500\n"),
                 notext=write("notext.txt", "#40\n"), blank=write("blank.txt", "\n   \n"),
                 afile=write("afile.txt", "a file, not a folder\n"), text_ckpt=write("text.pt", "hello\n"))
    files["binary"] = root / "binary.txt"
    files["binary"].write_bytes(bytes(range(256)))
    files["folder"] = root / "folder"
    files["folder"].mkdir()
    state = files["final"].read_bytes()
    files["truncated"] = root / "truncated.pt"
    files["truncated"].write_bytes(state[: len(state) // 3])
    files["npy_ckpt"] = root / "array.pt"
    with open(files["npy_ckpt"], "wb") as f:
        np.save(f, np.zeros(3))
    files["payload"] = root / "payload.pt"
    torch.save({"format": "luma", "unet": Payload()}, files["payload"])
    final = torch.load(files["final"], weights_only=True)
    files["no_config"] = root / "no_config.pt"
    torch.save({k: v for k, v in final.items() if k != "unet_config"}, files["no_config"])
    files["bad_shapes"] = root / "bad_shapes.pt"
    torch.save({**final, "unet": {k: v[:1] for k, v in final["unet"].items()}}, files["bad_shapes"])
    for key in ("model", "optimizer"):                # run folders whose checkpoint.pt lacks a key
        folder = root / f"run_without_{key}"
        folder.mkdir()
        torch.save({k: v for k, v in torch.load(files["checkpoint"], weights_only=True).items() if k != key},
                   folder / "checkpoint.pt")
        files[f"run_without_{key}"] = folder
    files["pickled_mean"] = root / "pickled_mean"                  # a dataset whose Mean.npy is a pickle payload
    shutil.copytree(tiny[0], files["pickled_mean"])
    np.save(files["pickled_mean"] / "Mean.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    for name, array in (("kit_features", np.zeros((30, 251), np.float32)), ("short_motion", np.zeros((30, 263))),
                        ("kit_joints", np.zeros((30, 21, 3), np.float32))):   # known motions for --edit
        files[name] = root / f"{name}.npy"
        np.save(files[name], array)
    return files


def _cli(main, argv, capsys):
    """(exit status, what it printed on stderr) of a script's main(argv), run as its command line runs it."""
    try:
        main(argv)
        status, message = 0, ""
    except SystemExit as exit:
        status, message = (1, exit.code) if isinstance(exit.code, str) else (exit.code, "")
    return status, message + capsys.readouterr().err


SAMPLE = ["--checkpoint", "{final}", "--text", "a person jumps", "--steps", "2", "--device", "cpu", "--out", "{out}"]
TRAIN = ["--dataset", "synthetic", "--data-root", "{data}", "--moclip-checkpoint", "{moclip}", "--batch-size", "4",
         "--steps", "2", "--sample-every", "0", "--device", "cpu"]
MOCLIP = ["--dataset", "synthetic", "--data-root", "{data}", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]
EVAL_T2M = ["t2m", "--dataset", "synthetic", "--data-root", "{data}", "--out", "{out}"]
GPU = "cuda" if not torch.cuda.is_available() else "cuda:99"     # a device this machine does not have

BAD_INPUT = [   # (script, argv, exit status, a phrase of the message)
    # flags: ranges, finite numbers, devices, output paths, flags against each other (usage errors, status 2)
    ("sample", SAMPLE + ["--seconds", "nan"], 2, "--seconds: expected a finite number > 0, got nan"),
    ("sample", SAMPLE + ["--seconds", "inf"], 2, "--seconds: expected a finite number > 0"),
    ("sample", SAMPLE + ["--seconds", "0"], 2, "--seconds: expected a finite number > 0, got 0"),
    ("sample", SAMPLE + ["--seconds", "1000"], 1, "--seconds 1000 is 20000 frames at 20 fps; the model generates 1..11284 frames (564.2 s at most) in at most 64 windows"),
    ("sample", SAMPLE[:4] + ["--text", ""] + SAMPLE[4:], 2, "--text is empty"),
    ("sample", SAMPLE + ["--edit", "in-between"], 2, "--edit and --motion go together"),
    ("sample", SAMPLE + ["--motion", "{short_motion}"], 2, "--edit and --motion go together"),
    ("sample", SAMPLE + ["--text", "b", "--edit", "continue", "--motion", "{short_motion}"], 2, "takes one --text"),
    ("sample", SAMPLE + ["--overlap", "1"], 2, "--overlap: expected an integer in 2..98, got 1"),
    ("sample", SAMPLE + ["--edit", "in-between", "--motion", "{kit_features}"], 1, "kit_features.npy has shape (30, 251); this t2m checkpoint needs features (T, 263) or joints (T, 22, 3)"),
    ("sample", SAMPLE + ["--edit", "upper-body", "--motion", "{kit_joints}"], 1, "kit_joints.npy has shape (30, 21, 3)"),
    ("sample", SAMPLE + ["--edit", "in-between", "--motion", "{short_motion}", "--keep-start", "1", "--keep-end", "0.5"], 1, "--keep-start 1 s + --keep-end 0.5 s is 30 frames, but the known motion has only 30: nothing is left to generate"),
    ("sample", SAMPLE + ["--edit", "continue", "--motion", "{short_motion}", "--keep-start", "2"], 1, "--keep-start 2 s is 40 frames; the known motion has 30"),
    ("sample", SAMPLE + ["--edit", "continue", "--motion", "{short_motion}", "--seconds", "1"], 1, "--seconds gives 20 frames, no more than the 20 kept"),
    ("sample", SAMPLE + ["--edit", "continue", "--motion", "nosuchclip"], 1, "--motion nosuchclip: not a .npy or .bvh file, and no clip 'nosuchclip' in"),
    ("sample", SAMPLE + ["--edit", "continue", "--motion", "{out}/none.bvh"], 1, "none.bvh"),
    ("sample", SAMPLE + ["--num-samples", "0"], 2, "--num-samples: expected an integer in 1..1000, got 0"),
    ("sample", SAMPLE + ["--num-samples", "-2"], 2, "--num-samples: expected an integer in 1..1000, got -2"),
    ("sample", SAMPLE + ["--steps", "0"], 2, "--steps: expected an integer in 1..999, got 0"),
    ("sample", SAMPLE + ["--steps", "1000"], 2, "--steps: expected an integer in 1..999, got 1000"),
    ("sample", SAMPLE + ["--guidance", "nan"], 2, "--guidance: expected a finite number >= 0, got nan"),
    ("sample", SAMPLE + ["--seed", "-1"], 2, "--seed: expected an integer in 0..4294967295"),
    ("sample", SAMPLE + ["--device", GPU], 2, "--device: 'cuda"),
    ("sample", SAMPLE + ["--device", "toaster"], 2, "unknown device 'toaster'"),
    ("sample", SAMPLE + ["--out", "{afile}"], 2, "afile.txt is a file, not a folder"),
    ("sample", SAMPLE + ["--precision", "bf16"], 2, "--precision bf16 autocasts on a CUDA GPU; on a CPU use"),
    ("sample", ["--checkpoint", "{final}", "--text", "  "], 2, "--text is empty"),
    ("train", TRAIN + ["--batch-size", "0"], 2, "--batch-size: expected an integer >= 1, got 0"),
    ("train", TRAIN + ["--batch-size", "-1"], 2, "--batch-size: expected an integer >= 1, got -1"),
    ("train", TRAIN + ["--save-every", "0"], 2, "--save-every: expected an integer >= 1, got 0"),
    ("train", TRAIN + ["--log-every", "0"], 2, "--log-every: expected an integer >= 1"),
    ("train", TRAIN + ["--steps", "0"], 2, "--steps: expected an integer >= 1, got 0"),
    ("train", TRAIN + ["--steps", "-1"], 2, "--steps: expected an integer >= 1, got -1"),
    ("train", TRAIN + ["--lr", "nan"], 2, "--lr: expected a finite number > 0, got nan"),
    ("train", TRAIN + ["--cond-drop", "1.5"], 2, "--cond-drop: expected a finite number >= 0 and <= 1"),
    ("train", TRAIN + ["--ema-decay", "-0.1"], 2, "--ema-decay: expected a finite number >= 0 and <= 1"),
    ("train", TRAIN + ["--dct-k", "500"], 2, "--dct-k: expected an integer in 1..196, got 500"),
    ("train", TRAIN + ["--no-anchors", "--anchor-weighting", "learnable"], 2, "there is nothing to weigh"),
    ("train", TRAIN + ["--lambda-tem", "inf"], 2, "--lambda-tem: expected a finite number >= 0"),
    ("train", TRAIN + ["--precision", "bf16"], 2, "--precision bf16 is a CUDA setting"),
    ("train", TRAIN + ["--precision", "tf32"], 2, "--precision tf32 is a CUDA setting"),
    ("train", TRAIN + ["--device", GPU], 2, "--device: 'cuda"),
    ("train", TRAIN + ["--out-dir", "{afile}"], 2, "afile.txt is a file, not a folder"),
    ("train", TRAIN + ["--resume", "--overwrite", "--out-dir", "{run}"], 2, "pass one of them"),
    ("moclip", MOCLIP + ["--epochs", "0"], 2, "--epochs: expected an integer >= 1, got 0"),
    ("moclip", MOCLIP + ["--batch-size", "1"], 2, "--batch-size: expected an integer >= 2, got 1"),
    ("moclip", MOCLIP + ["--lr", "-1"], 2, "--lr: expected a finite number > 0"),
    ("moclip", MOCLIP + ["--patience", "0"], 2, "--patience: expected an integer >= 1"),
    ("moclip", MOCLIP + ["--out", "{folder}"], 2, "is a folder; pass a file path"),
    ("moclip", MOCLIP + ["--clip-model", "ViT-Nope"], 2, "unknown --clip-model 'ViT-Nope'"),
    ("moclip", ["--eval", "--checkpoint", "{moclip}", "--repeats", "0"], 2, "--repeats: expected an integer >= 1"),
    ("evaluate", EVAL_T2M + ["--real-only", "--replications", "0"], 2, "--replications: expected an integer >= 1"),
    ("evaluate", EVAL_T2M + ["--checkpoint", "{final}", "--guidance", "nan"], 2, "--guidance: expected a finite"),
    ("evaluate", EVAL_T2M + ["--checkpoint", "{final}", "--steps", "0"], 2, "--steps: expected an integer in 1..999"),
    ("evaluate", EVAL_T2M + ["--checkpoint", "{final}", "--mm-captions", "-1"], 2, "--mm-captions: expected an integer >= 0"),
    ("evaluate", EVAL_T2M + ["--checkpoint", "{final}", "--mm-times", "40"], 2, "--mm-times (40) is more than --mm-repeats (30)"),
    ("evaluate", EVAL_T2M, 2, "pass --checkpoint CKPT"),
    ("analysis", ["gradflow", "--runs", "{run}", "--timesteps", "1000"], 2, "--timesteps: expected an integer in 0..999"),
    ("analysis", ["spectrum", "--k", "0"], 2, "--k: expected an integer in 1..196, got 0"),
    ("evaluate", ["train-evaluator", "--epochs", "0"], 2, "--epochs: expected an integer >= 1"),
    # user files: prompt files (status 1, the file and the line named, the expected format said)
    ("sample", SAMPLE[:2] + ["--text-file", "{abc}"] + SAMPLE[4:], 1, "abc.txt:1: the frame count 'abc' is not an integer in 1..196"),
    ("sample", SAMPLE[:2] + ["--text-file", "{neg}"] + SAMPLE[4:], 1, "neg.txt:1: the frame count '-5' is not"),
    ("sample", SAMPLE[:2] + ["--text-file", "{extra}"] + SAMPLE[4:], 1, "extra.txt:1: the frame count '30#extra'"),
    ("sample", SAMPLE[:2] + ["--text-file", "{long}"] + SAMPLE[4:], 1, "long.txt:1: the frame count '500'"),
    ("sample", SAMPLE[:2] + ["--text-file", "{notext}"] + SAMPLE[4:], 1, "notext.txt:1: no text before the '#'"),
    ("sample", SAMPLE[:2] + ["--text-file", "{blank}"] + SAMPLE[4:], 1, "blank.txt holds no prompts; expected one prompt per line"),
    ("sample", SAMPLE[:2] + ["--text-file", "{folder}"] + SAMPLE[4:], 1, "prompt file {folder} is a folder, not a file"),
    ("sample", SAMPLE[:2] + ["--text-file", "{binary}"] + SAMPLE[4:], 1, "binary.txt is not UTF-8 text"),
    ("sample", SAMPLE[:2] + ["--text-file", "{out}/none.txt"] + SAMPLE[4:], 1, "none.txt does not exist; expected one prompt"),
    # checkpoints: missing, a folder, truncated, foreign, code-carrying, incomplete, damaged (status 1)
    ("sample", ["--checkpoint", "{out}/none.pt", "--text", "x"], 1, "none.pt does not exist; expected a LUMA checkpoint, written by train.py"),
    ("sample", ["--checkpoint", "{folder}", "--text", "x"], 1, "is a folder, not a file; expected a LUMA checkpoint"),
    ("sample", ["--checkpoint", "{truncated}", "--text", "x"], 1, "truncated.pt is not a readable PyTorch checkpoint: truncated"),
    ("sample", ["--checkpoint", "{text_ckpt}", "--text", "x"], 1, "text.pt is not a readable PyTorch checkpoint"),
    ("sample", ["--checkpoint", "{npy_ckpt}", "--text", "x"], 1, "array.pt is not a PyTorch checkpoint (torch: "),
    ("sample", ["--checkpoint", "{payload}", "--text", "x"], 1, "payload.pt holds Python objects that are never loaded here"),
    ("sample", ["--checkpoint", "{moclip}", "--text", "x"], 1, "is a MoCLIP checkpoint (moclip.py), not a LUMA checkpoint"),
    ("sample", ["--checkpoint", "{no_config}", "--text", "x"], 1, "no_config.pt lacks 'unet_config' that a LUMA checkpoint holds"),
    ("sample", ["--checkpoint", "{bad_shapes}", "--text", "x"], 1, "bad_shapes.pt: the UNet weights do not fit"),
    ("train", TRAIN[:4] + ["--moclip-checkpoint", "{out}/none.pt"] + TRAIN[6:] + ["--out-dir", "{out}/t1"], 1, "none.pt does not exist; expected a MoCLIP checkpoint"),
    ("train", TRAIN[:4] + ["--moclip-checkpoint", "{final}"] + TRAIN[6:] + ["--out-dir", "{out}/t2"], 1, "is a LUMA inference checkpoint (train.py's final.pt), not a MoCLIP checkpoint"),
    ("train", TRAIN[:4] + ["--moclip-checkpoint", "{payload}"] + TRAIN[6:] + ["--out-dir", "{out}/t3"], 1, "holds Python objects that are never loaded here"),
    ("train", TRAIN + ["--resume", "--out-dir", "{run_without_model}"], 1, "checkpoint.pt lacks 'model' that a resumable LUMA training checkpoint holds"),
    ("train", TRAIN + ["--resume", "--out-dir", "{run_without_optimizer}"], 1, "lacks 'optimizer'"),
    ("moclip", ["--eval", "--checkpoint", "{final}"], 1, "is a LUMA inference checkpoint (train.py's final.pt), not a MoCLIP checkpoint"),
    ("moclip", ["--eval", "--checkpoint", "{truncated}"], 1, "is not a readable PyTorch checkpoint"),
    ("analysis", ["gradflow", "--runs", "{final}"], 1, "final.pt lacks 'model' that a LUMA training checkpoint with its anchor heads (final.pt has none) holds; it looks like a LUMA inference checkpoint"),
    ("analysis", ["gradflow", "--runs", "{payload}"], 1, "holds Python objects that are never loaded here"),
    ("evaluate", ["moclip", "--checkpoint", "{final}", "--dataset", "synthetic"], 1, "not a MoCLIP checkpoint"),
    # runs and data: never overwrite a run, resume only what fits, data files that are not what they claim (status 1)
    ("train", TRAIN + ["--out-dir", "{run}"], 1, "already holds a training run (checkpoint.pt, final.pt, log.csv); pass --resume to continue it, --overwrite"),
    ("train", TRAIN + ["--out-dir", "{out}/fresh", "--resume"], 1, "--resume given but"),
    ("train", TRAIN + ["--text-encoder", "clip", "--clip-pretrained", "openai", "--out-dir", "{out}/t7"], 1, "--text-encoder clip: the small text tower has no pretrained weights; pass --clip-pretrained none (got 'openai')"),
    ("moclip", MOCLIP + ["--clip-model", "small", "--clip-pretrained", "openai", "--out", "{out}/m.pt"], 1, "the small text tower has no pretrained weights; pass --clip-pretrained none (got 'openai')"),
    ("train", TRAIN + ["--out-dir", "{run}", "--resume", "--dct-k", "8"], 1, "was trained with other flags: --dct-k 64 (now 8)"),
    ("train", TRAIN + ["--out-dir", "{run}", "--resume", "--preset", "paper"], 1, "--unet 'small' (now 'paper')"),
    ("train", TRAIN + ["--data-root", "{pickled_mean}", "--out-dir", "{out}/t4"], 1, "Mean.npy holds pickled Python objects, which are never loaded"),
    ("train", TRAIN + ["--batch-size", "1000", "--out-dir", "{out}/t5"], 1, "fewer than --batch-size 1000; lower --batch-size"),
    ("train", ["--dataset", "humanml3d", "--data-root", "{out}/nowhere", "--out-dir", "{out}/t6"], 1, "dataset root not found"),
    ("analysis", ["spectrum", "--dataset", "synthetic", "--data-root", "{pickled_mean}", "--out", "{out}/s"], 1, "holds pickled Python objects"),
    ("analysis", ["convergence", "--runs", "{out}", "--out", "{out}/c"], 1, "no eval.csv in"),
    ("analysis", ["convergence", "--runs", "{out}", "--fid-threshold", "0"], 2, "--fid-threshold: expected a finite number > 0, got 0"),
    ("analysis", ["seeds", "--results", "{final}", "--out", "{out}/se"], 1, "as evaluate.py t2m's t2m_results.json"),
    ("evaluate", ["t2m", "--dataset", "synthetic", "--checkpoint", "{final}", "{checkpoint}", "--out", "{out}/e"], 1, "share a folder"),
    ("train", TRAIN + ["--keep-checkpoints", "--out-dir", "{out}/t7"], 2, "--keep-checkpoints keeps the checkpoint of each evaluation point; pass --eval-every N as well"),
    ("train", TRAIN + ["--eval-every", "1", "--evaluator-dir", "{out}/noevaluator", "--out-dir", "{out}/t8"], 1, "noevaluator"),
]


@pytest.mark.parametrize("script,argv,status,phrase", BAD_INPUT, ids=[f"{c[0]} {' '.join(c[1][-3:])}"[:70]
                                                                        for c in BAD_INPUT])
def test_every_bad_input_gets_a_message_and_an_exit_status(bad, capsys, script, argv, status, phrase):
    main = {"sample": sample.main, "train": train.main, "moclip": moclip.main, "evaluate": evaluate.main,
            "analysis": analysis.main}[script]
    fill = lambda text: text.format(**{k: str(v) for k, v in bad.items()})
    got_status, message = _cli(main, [fill(a) for a in argv], capsys)
    assert (got_status, fill(phrase) in message) == (status, True), message
    assert not bad["mark"].exists()                              # no pickle payload ever ran


def test_a_bad_input_on_the_command_line_prints_no_traceback(bad):
    # the same answers through the real command line: usage error 2, runtime error 1, no traceback in either
    for argv, status in ((["sample.py", "--checkpoint", str(bad["final"]), "--text", "x", "--seconds", "nan"], 2),
                         (["sample.py", "--checkpoint", str(bad["payload"]), "--text", "x"], 1)):
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == status and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(("sample.py: error:", "error:"))
    assert not bad["mark"].exists()


def test_an_internal_error_keeps_its_traceback(tiny, tmp_path, monkeypatch):
    # only expected user errors are turned into messages: a bug still raises, with its traceback
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a user error")
    monkeypatch.setattr(train, "train_step", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _train(tiny, tmp_path / "run", 2)


def test_a_finished_run_is_never_overwritten_without_resume_or_overwrite(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    _train(tiny, run, 2)
    log, checkpoint = (run / "log.csv").read_bytes(), (run / "checkpoint.pt").read_bytes()
    status, message = _cli(train.main, _train_flags(tiny, run, 3), capsys)
    assert status == 1 and "--resume" in message and "--overwrite" in message
    assert (run / "log.csv").read_bytes() == log and (run / "checkpoint.pt").read_bytes() == checkpoint
    (run / "samples").mkdir()
    _train(tiny, run, 1, "--overwrite")                          # explicitly asked: the old run is replaced
    assert [r["step"] for r in csv.DictReader(open(run / "log.csv"))] == ["1"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1 and not (run / "samples").exists()


def test_resume_after_a_crash_logs_one_uninterrupted_run(tiny, tmp_path, monkeypatch):
    # saved every 3 steps and killed during step 5: rows 4 (after the last checkpoint) must not appear twice
    run = tmp_path / "run"
    real_step = train.train_step

    def crash_at_step_5(*args, **kwargs):
        step = inspect.signature(real_step).bind(*args, **kwargs).arguments["step"]
        if step == 4:                                             # `step` is 0-based
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)
    monkeypatch.setattr(train, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny, run, 6)
    assert [r["step"] for r in csv.DictReader(open(run / "log.csv"))] == ["1", "2", "3", "4"]
    monkeypatch.setattr(train, "train_step", real_step)
    _train(tiny, run, 6, "--resume")
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    _train(tiny, tmp_path / "straight", 6)                       # the same numbers as a run that never stopped
    straight = list(csv.DictReader(open(tmp_path / "straight" / "log.csv")))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight]


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_last_good_one(tiny, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _train(tiny, run, 3)
    good = (run / "checkpoint.pt").read_bytes()

    def read_only(obj, f, *args, **kwargs):
        raise OSError(30, "Read-only file system")               # EROFS; as root, chmod would not stop the write
    monkeypatch.setattr(torch, "save", read_only)
    status, message = _cli(train.main, _train_flags(tiny, run, 6) + ["--resume"], capsys)
    assert status == 1 and f"could not write {run / 'checkpoint.pt'}: Read-only file system" in message
    assert "the last good checkpoint (step 3)" in message
    assert (run / "checkpoint.pt").read_bytes() == good and not list(run.glob("*.tmp"))


def test_resume_past_the_last_step_is_refused(tiny, tmp_path, capsys):
    _train(tiny, tmp_path, 3)
    status, message = _cli(train.main, _train_flags(tiny, tmp_path, 2) + ["--resume"], capsys)
    assert status == 1 and "is at step 3, past --steps 2: nothing to train" in message
