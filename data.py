"""Motion data for LUMA: the HumanML3D / KIT-ML representation, the dataset loader, and stick-figure rendering.

LUMA (paper App. A.2, Eq. (12)) trains on the HumanML3D feature vector
    x^i = {r^a, r^x, r^z, r^y, j^P, j^v, j^r, f_contact}                                   # Eq. (12)
per frame: root yaw velocity, root XZ velocity, root height, root-relative joint positions ("ric"), joint
rotations (6D), joint velocities and four binary foot contacts: 263 numbers for the 22-joint HumanML3D skeleton,
251 for the 21-joint KIT-ML one. Everything here follows ../shared/spec/humanml3d_format.md (Part A), including
the quirks of the original HumanML3D `process_file`, so that features computed here match the released data.

Chapters, top to bottom:
  1. skeletons            SKELETONS["t2m" | "kit"]                               (spec A.2, A.3)
  2. quaternions          (w, x, y, z), Hamilton product, numpy or torch         (spec A.1)
  3. positions->features  joints_to_features(joints (T,J,3)) -> (T-1, D)         (spec A.4, A.5)
  4. features->positions  features_to_joints(features (...,T,D)) -> (...,T,J,3)  (spec A.6, recover_from_ric)
  5. mirroring, stats     mirror_joints, mirror_caption, feature_blocks, mean_std (spec A.7, A.8)
  6. dataset              MotionDataset (train mode and the evaluator's eval mode), collate_eval, to_device
  7. rendering            render_animation (GIF / MP4), render_filmstrip (PNG)
  8. user input           InputError, user_errors, argparse types (int_range, float_range, SEED, device_name,
                          folder_path, file_path), read_text_lines, read_array, load_checkpoint, load_weights,
                          write_atomic, save_checkpoint

Only numpy and torch are imported at module level; matplotlib is imported inside the rendering functions.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import pickle
import random
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The datasets the scripts know: --dataset name -> (default folder, skeleton kind).
DATA_ROOTS = {"humanml3d": "data/HumanML3D", "kit": "data/KIT-ML", "synthetic": "data/synthetic"}
KINDS = {"humanml3d": "t2m", "kit": "kit", "synthetic": "t2m"}
MAX_MOTION_LENGTH = 196  # frames fed to the model; longer clips are cropped (StableMoFusion, spec §4)

# -----------------------------------------------------------------------------
# 1. Skeletons (spec A.2, A.3)
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Skeleton:
    """Constants of one skeleton; indices follow the joint order of the released data."""
    name: str
    num_joints: int
    feature_dim: int
    fps: float
    parents: tuple
    kinematic_chain: tuple          # chains of joint indices, each starting at its parent joint
    raw_offsets: tuple              # unit rest-pose direction of the bone ending at each joint
    bone_lengths: tuple | None      # target length of the bone ending at each joint (index 0 unused); kit: None
    face_joint_indx: tuple          # (r_hip, l_hip, r_shoulder, l_shoulder) as the T2M code names them
    fid_l: tuple                    # left ankle, left foot
    fid_r: tuple                    # right ankle, right foot
    l_idx1: int                     # the two lower-leg bones whose lengths set the retarget scale (A.5.1)
    l_idx2: int
    feet_thre: float                # squared per-frame foot displacement below which a foot is in contact
    min_motion_len: int             # dataset length filter [min_motion_len, 200)
    left_joints: tuple              # mirror pairs: left_joints[i] <-> right_joints[i]
    right_joints: tuple


def _parents_from_chains(chains, num_joints):
    parents = [-1] * num_joints
    for chain in chains:
        for a, b in zip(chain[:-1], chain[1:]):
            parents[b] = a
    return tuple(parents)


_T2M_CHAINS = ((0, 2, 5, 8, 11), (0, 1, 4, 7, 10), (0, 3, 6, 9, 12, 15), (9, 14, 17, 19, 21), (9, 13, 16, 18, 20))
_T2M_RAW_OFFSETS = ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0), (0, 1, 0), (0, -1, 0),
                    (0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1),
                    (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0))
# Bone lengths of the HumanML3D target skeleton (clip 000021, frame 0); every released clip has exactly these.
_T2M_BONE_LENGTHS = (0.0, 0.103074, 0.109883, 0.131568, 0.393623, 0.390188, 0.143190, 0.432433, 0.425643,
                     0.057365, 0.143382, 0.149419, 0.219360, 0.137487, 0.143383, 0.103039, 0.131614, 0.122984,
                     0.256840, 0.263092, 0.266012, 0.269876)

# KIT-ML: the T2M code calls chain 0 (joints 11-15) the right leg although the MMM names say left; we go by the
# indices, like the feature layout does (foot contacts = fid_l [19, 20] then fid_r [14, 15]).
_KIT_CHAINS = ((0, 11, 12, 13, 14, 15), (0, 16, 17, 18, 19, 20), (0, 1, 2, 3, 4), (3, 5, 6, 7), (3, 8, 9, 10))
_KIT_RAW_OFFSETS = ((0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0),
                    (-1, 0, 0), (0, -1, 0), (0, -1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1),
                    (-1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1))

SKELETONS = {
    "t2m": Skeleton(
        name="t2m", num_joints=22, feature_dim=263, fps=20.0,
        parents=_parents_from_chains(_T2M_CHAINS, 22), kinematic_chain=_T2M_CHAINS,
        raw_offsets=_T2M_RAW_OFFSETS, bone_lengths=_T2M_BONE_LENGTHS,
        face_joint_indx=(2, 1, 17, 16), fid_l=(7, 10), fid_r=(8, 11), l_idx1=5, l_idx2=8,
        feet_thre=0.002, min_motion_len=40,
        left_joints=(1, 4, 7, 10, 13, 16, 18, 20), right_joints=(2, 5, 8, 11, 14, 17, 19, 21)),
    "kit": Skeleton(
        name="kit", num_joints=21, feature_dim=251, fps=12.5,
        parents=_parents_from_chains(_KIT_CHAINS, 21), kinematic_chain=_KIT_CHAINS,
        raw_offsets=_KIT_RAW_OFFSETS, bone_lengths=None,  # target clip 03950 is not shipped; see joints_to_features
        face_joint_indx=(11, 16, 5, 8), fid_l=(19, 20), fid_r=(14, 15), l_idx1=17, l_idx2=18,
        feet_thre=0.05, min_motion_len=24,
        left_joints=(16, 17, 18, 19, 20, 8, 9, 10), right_joints=(11, 12, 13, 14, 15, 5, 6, 7)),
}


def _skeleton(kind):
    if kind not in SKELETONS:
        raise ValueError(f"unknown skeleton kind {kind!r}; expected one of {sorted(SKELETONS)} "
                         "('t2m' for HumanML3D and the synthetic dataset, 'kit' for KIT-ML)")
    return SKELETONS[kind]


# -----------------------------------------------------------------------------
# 2. Quaternions (spec A.1): (w, x, y, z), Hamilton product. Written component-wise so that the same code
#    runs on numpy arrays and torch tensors and broadcasts over any leading dimensions.
# -----------------------------------------------------------------------------


def _stack(xs):
    return torch.stack(xs, dim=-1) if isinstance(xs[0], torch.Tensor) else np.stack(xs, axis=-1)


def _cross(a, b):
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return _stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])


def _normalize(v):
    return v / np.sqrt((v ** 2).sum(axis=-1, keepdims=True))


def qmul(q, r):
    """Hamilton product q (x) r; q, r (..., 4) -> (..., 4)."""
    w1, x1, y1, z1 = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    w2, x2, y2, z2 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    return _stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                   w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                   w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                   w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def qinv(q):
    """Conjugate (the inverse of a unit quaternion); q (..., 4) -> (..., 4)."""
    return _stack([q[..., 0], -q[..., 1], -q[..., 2], -q[..., 3]])


def qrot(q, v):
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4); leading dims broadcast."""
    w, u = q[..., :1], q[..., 1:]
    uv = _cross(u, v)
    return v + 2 * (w * uv + _cross(u, uv))


def qbetween(a, b):
    """Unit quaternion rotating direction a (..., 3) onto direction b (..., 3); w >= 0 (numpy)."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    w = np.sqrt((a ** 2).sum(-1) * (b ** 2).sum(-1)) + (a * b).sum(-1)
    q = np.concatenate([w[..., None], _cross(a, b)], axis=-1)
    # a = -b: HumanML3D's formula gives 0/0 (NaN). We turn 180 degrees about an axis perpendicular to a,
    # preferring the vertical one (a yaw turn); this only replaces NaNs.
    flip = np.sqrt((q ** 2).sum(-1)) < 1e-9 * np.maximum(np.sqrt((a ** 2).sum(-1) * (b ** 2).sum(-1)), 1e-30)
    if flip.any():
        af = a[flip]
        axis = _cross(af, np.array([0.0, 0.0, 1.0]))
        small = (axis ** 2).sum(-1) < 1e-12 * (af ** 2).sum(-1)
        axis[small] = _cross(af[small], np.array([1.0, 0.0, 0.0]))
        q[flip] = np.concatenate([np.zeros(af.shape[:-1] + (1,)), axis], axis=-1)
    return _normalize(q)


def quat_to_matrix(q):
    """Rotation matrices (..., 3, 3) of quaternions q (..., 4) (numpy), with s = 2/|q|^2."""
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    s = 2.0 / (q ** 2).sum(-1)
    rows = [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
            s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
            s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)]
    return np.stack(rows, axis=-1).reshape(q.shape[:-1] + (3, 3))


def quat_to_cont6d(q):
    """6D rotation = [first column, second column] of the rotation matrix; q (..., 4) -> (..., 6)."""
    m = quat_to_matrix(q)
    return np.concatenate([m[..., 0], m[..., 1]], axis=-1)


def cont6d_to_matrix(c):
    """Rotation matrices (..., 3, 3) from 6D rotations c (..., 6) by Gram-Schmidt (numpy)."""
    x = _normalize(c[..., 0:3])
    z = _normalize(_cross(x, c[..., 3:6]))
    y = _cross(z, x)
    return np.stack([x, y, z], axis=-1)


# -----------------------------------------------------------------------------
# 3. Positions -> features (spec A.5: HumanML3D's process_file, quirks included)
# -----------------------------------------------------------------------------


def gaussian_filter1d(x, sigma, axis=0, truncate=4.0):
    """1-D Gaussian smoothing of x along `axis` with edge ('nearest') padding, as scipy.ndimage.gaussian_filter1d."""
    radius = int(truncate * float(sigma) + 0.5)  # scipy's kernel radius
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    n = x.shape[0]
    padded = np.concatenate([np.repeat(x[:1], radius, 0), x, np.repeat(x[-1:], radius, 0)], axis=0)
    out = np.zeros_like(x)
    for k, w in enumerate(kernel):  # symmetric kernel: correlation == convolution
        out += w * padded[k:k + n]
    return np.moveaxis(out, 0, axis)


def _offsets(skel, bone_lengths):
    """(J, 3) rest-pose offsets = bone length * unit raw offset."""
    return np.asarray(bone_lengths, dtype=np.float64)[:, None] * np.asarray(skel.raw_offsets, dtype=np.float64)


def _bone_lengths_of(skel, frame):
    """Lengths (J,) of the bones ending at each joint, measured on one frame (J, 3)."""
    lengths = np.zeros(skel.num_joints)
    for j, p in enumerate(skel.parents):
        if p >= 0:
            lengths[j] = np.linalg.norm(frame[j] - frame[p])
    return lengths


def _uniform_skeleton(skel, positions, target_lengths):
    """A.5.1: retarget to the target bone lengths. HumanML3D does IK then FK with the target offsets; the two
    cancel to 'every bone keeps its direction and takes the target length, chained from the root', which is
    what we compute directly. The root trajectory is scaled by the lower-leg length ratio."""
    tgt = _offsets(skel, target_lengths)
    src = _offsets(skel, _bone_lengths_of(skel, positions[0]))
    tgt_leg = np.abs(tgt[skel.l_idx1]).max() + np.abs(tgt[skel.l_idx2]).max()
    src_leg = np.abs(src[skel.l_idx1]).max() + np.abs(src[skel.l_idx2]).max()
    scale = tgt_leg / src_leg
    out = np.zeros_like(positions)
    out[:, 0] = positions[:, 0] * scale
    for chain in skel.kinematic_chain:
        for a, b in zip(chain[:-1], chain[1:]):
            direction = _normalize(positions[:, b] - positions[:, a])
            out[:, b] = out[:, a] + target_lengths[b] * direction
    return out


def _root_quat(skel, positions, smooth_sigma):
    """A.5.5 steps 1-3: per-frame world->local heading quaternion (T, 4)."""
    # Quirk: HumanML3D unpacks face_joint_indx as (l_hip, r_hip, sdr_r, sdr_l), so the hip term points the wrong
    # way (HumanML3D issues #107/#112/#119). The released data was made like this; we keep it.
    l_hip, r_hip, sdr_r, sdr_l = skel.face_joint_indx
    across = (positions[:, r_hip] - positions[:, l_hip]) + (positions[:, sdr_r] - positions[:, sdr_l])
    across = _normalize(across)
    forward = _cross(np.array([0.0, 1.0, 0.0]), across)
    if smooth_sigma:
        forward = gaussian_filter1d(forward, smooth_sigma, axis=0)  # smoothed before normalising
    forward = _normalize(forward)
    root_quat = qbetween(forward, np.array([0.0, 0.0, 1.0]))
    root_quat[0] = (1.0, 0.0, 0.0, 0.0)  # quirk: frame 0 forced to identity
    return root_quat


def _inverse_kinematics(skel, positions, smooth_sigma=20.0):
    """A.5.5: local joint quaternions (T, J, 4) whose index 0 is the root heading."""
    root_quat = _root_quat(skel, positions, smooth_sigma)
    quat = np.zeros(positions.shape[:2] + (4,))
    quat[..., 0] = 1.0
    raw = np.asarray(skel.raw_offsets, dtype=np.float64)
    for chain in skel.kinematic_chain:
        r = root_quat  # quirk (HumanML3D #119): the arm chains start at joint 9 but also from the root heading
        for a, b in zip(chain[:-1], chain[1:]):
            u = np.broadcast_to(raw[b], positions[:, b].shape)
            v = _normalize(positions[:, b] - positions[:, a])
            r_loc = qmul(qinv(r), qbetween(u, v))
            quat[:, b] = r_loc
            r = qmul(r, r_loc)
    quat[:, 0] = root_quat
    return quat


def joints_to_features(joints, kind="t2m", target_joints=None):
    """HumanML3D features (T-1, D) float32 of joint positions (T, J, 3) in metres, Y-up (spec A.5).

    target_joints (J, 3), optional: a frame whose bone lengths define the target skeleton. Default: the
    skeleton's bone_lengths (t2m). KIT's target clip (03950) is not shipped, so for kit the default keeps the
    clip's own bone lengths (no retarget); pass frame 0 of 03950 to reproduce the released KIT features.
    """
    skel = _skeleton(kind)
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1] < skel.num_joints or joints.shape[2] != 3 or joints.shape[0] < 2:
        raise ValueError(f"joints_to_features expects (T >= 2, J >= {skel.num_joints}, 3) positions for "
                         f"kind={kind!r}, got shape {joints.shape}")
    positions = joints[:, :skel.num_joints].copy()  # HumanML3D uses the first J joints (e.g. of SMPL-H's 52)
    if not np.isfinite(positions).all():
        raise ValueError("joints_to_features got NaN or infinite positions")
    J = skel.num_joints

    # A.5.1 uniform skeleton
    if target_joints is not None:
        target_lengths = _bone_lengths_of(skel, np.asarray(target_joints, dtype=np.float64))
    elif skel.bone_lengths is not None:
        target_lengths = np.asarray(skel.bone_lengths)
    else:
        target_lengths = _bone_lengths_of(skel, positions[0])
    positions = _uniform_skeleton(skel, positions, target_lengths)

    # A.5.2 on the floor
    positions[:, :, 1] -= positions[:, :, 1].min()

    # A.5.3 root at the XZ origin, initial facing +Z (here the face joints are unpacked in the right order)
    init = positions[0].copy()
    positions = positions - init[0] * np.array([1.0, 0.0, 1.0])
    r_hip, l_hip, sdr_r, sdr_l = skel.face_joint_indx
    across = _normalize((init[r_hip] - init[l_hip]) + (init[sdr_r] - init[sdr_l]))
    forward = _normalize(_cross(np.array([0.0, 1.0, 0.0]), across))
    q0 = qbetween(forward, np.array([0.0, 0.0, 1.0]))
    positions = qrot(q0, positions)
    global_positions = positions.copy()

    # A.5.4 foot contacts: squared per-frame displacement below feet_thre (no height test)
    def contacts(fid):
        disp = ((positions[1:, list(fid)] - positions[:-1, list(fid)]) ** 2).sum(-1)
        return (disp < skel.feet_thre).astype(np.float64)           # (T-1, 2)
    feet_l, feet_r = contacts(skel.fid_l), contacts(skel.fid_r)

    # A.5.5 IK with the sigma=20 smoothed heading
    quat = _inverse_kinematics(skel, positions, smooth_sigma=20.0)  # (T, J, 4)
    cont6d = quat_to_cont6d(quat)                                    # (T, J, 6)
    r_rot = quat[:, 0]                                               # (T, 4) world -> local heading
    velocity = qrot(r_rot[1:], positions[1:, 0] - positions[:-1, 0])  # root velocity in the frame of t+1
    r_velocity = qmul(r_rot[1:], qinv(r_rot[:-1]))                   # heading change t -> t+1

    # A.5.6 rifke: root-relative in XZ, rotated to face +Z
    positions = positions.copy()
    positions[..., 0] -= positions[:, 0:1, 0]
    positions[..., 2] -= positions[:, 0:1, 2]
    positions = qrot(r_rot[:, None], positions)

    # A.5.7 assemble (T-1 rows). arcsin without a w >= 0 check: wrong sign where the heading wraps (issue #156).
    root_data = np.concatenate([np.arcsin(np.clip(r_velocity[:, 2:3], -1.0, 1.0)),  # r^a: half the yaw change
                                velocity[:, [0, 2]],                                  # r^x, r^z
                                positions[:-1, 0, 1:2]], axis=-1)                    # r^y
    ric = positions[:-1, 1:].reshape(-1, 3 * (J - 1))                                 # j^P
    rot = cont6d[:-1, 1:].reshape(-1, 6 * (J - 1))                                    # j^r
    local_vel = qrot(r_rot[:-1, None], global_positions[1:] - global_positions[:-1]).reshape(-1, 3 * J)  # j^v
    features = np.concatenate([root_data, ric, rot, local_vel, feet_l, feet_r], axis=-1)  # Eq. (12), (T-1, D)
    return features.astype(np.float32)


# -----------------------------------------------------------------------------
# 4. Features -> positions (spec A.6, recover_from_ric), numpy or torch, batched over leading dims
# -----------------------------------------------------------------------------


def _cumsum(x, axis):
    return torch.cumsum(x, dim=axis) if isinstance(x, torch.Tensor) else np.cumsum(x, axis=axis)


def _zeros(like, shape):
    if isinstance(like, torch.Tensor):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)


def recover_root_rot_pos(features):
    """Root heading quaternions (..., T, 4) and root positions (..., T, 3) from features (..., T, D)."""
    rot_vel = features[..., 0]
    ang = _zeros(rot_vel, rot_vel.shape)
    ang[..., 1:] = rot_vel[..., :-1]
    ang = _cumsum(ang, -1)                                     # exclusive cumsum: ang[0] = 0
    trig = (torch.cos, torch.sin) if isinstance(ang, torch.Tensor) else (np.cos, np.sin)
    zero = ang * 0
    r_rot_quat = _stack([trig[0](ang), zero, trig[1](ang), zero])  # yaw of frame t is 2 * ang[t]
    r_pos = _zeros(features, features.shape[:-1] + (3,))
    r_pos[..., 1:, 0] = features[..., :-1, 1]                 # velocity of t-1 -> t, in the frame of t
    r_pos[..., 1:, 2] = features[..., :-1, 2]
    r_pos = _cumsum(qrot(qinv(r_rot_quat), r_pos), -2)
    r_pos[..., 1] = features[..., 3]
    return r_rot_quat, r_pos


def features_to_joints(features, kind="t2m"):
    """Joint positions (..., T, J, 3) from features (..., T, D), numpy or torch (recover_from_ric)."""
    skel = _skeleton(kind)
    J = skel.num_joints
    if features.shape[-1] != skel.feature_dim:
        raise ValueError(f"features_to_joints(kind={kind!r}) expects last dim {skel.feature_dim}, "
                         f"got shape {tuple(features.shape)}")
    is_torch = isinstance(features, torch.Tensor)
    x = features if is_torch else np.asarray(features, dtype=np.float64)
    r_rot_quat, r_pos = recover_root_rot_pos(x)
    loc = x[..., 4:4 + 3 * (J - 1)].reshape(tuple(x.shape[:-1]) + (J - 1, 3))  # (..., T, J-1, 3)
    loc = qrot(qinv(r_rot_quat)[..., None, :], loc)
    loc[..., 0] = loc[..., 0] + r_pos[..., None, 0]
    loc[..., 2] = loc[..., 2] + r_pos[..., None, 2]
    cat = torch.cat if is_torch else np.concatenate
    joints = cat([r_pos[..., None, :], loc], -2)                                # (..., T, J, 3)
    if is_torch:
        return joints
    out_dtype = features.dtype if np.issubdtype(np.asarray(features).dtype, np.floating) else np.float32
    return joints.astype(out_dtype)


# -----------------------------------------------------------------------------
# 5. Mirroring and statistics (spec A.7, A.8)
# -----------------------------------------------------------------------------


def mirror_joints(joints, kind="t2m"):
    """Left/right mirror of positions (..., J, 3), numpy or torch: negate x, swap the left and right joints."""
    skel = _skeleton(kind)
    out = joints.clone() if isinstance(joints, torch.Tensor) else np.array(joints, copy=True)
    out[..., 0] = -out[..., 0]
    left, right = list(skel.left_joints), list(skel.right_joints)
    out[..., left + right, :] = out[..., right + left, :]
    return out


_MIRROR_WORDS = {"left": "right", "right": "left", "leftward": "rightward", "rightward": "leftward",
                 "leftwards": "rightwards", "rightwards": "leftwards", "clockwise": "counterclockwise",
                 "counterclockwise": "clockwise", "anticlockwise": "clockwise", "counter-clockwise": "clockwise",
                 "anti-clockwise": "clockwise"}
_MIRROR_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _MIRROR_WORDS), key=len, reverse=True)) + r")\b",
                        re.IGNORECASE)


def mirror_caption(text):
    """Caption (or whole text line) of the mirrored motion: left<->right, clockwise<->counterclockwise, ..."""
    def swap(m):
        word = m.group(0)
        new = _MIRROR_WORDS[word.lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        return new.capitalize() if word[0].isupper() else new
    # Like HumanML3D's word swap this also turns the verb 'left' ("he left the room") into 'right'.
    return _MIRROR_RE.sub(swap, text)


def feature_blocks(kind="t2m"):
    """The 7 blocks of the feature vector (spec A.4) as slices: r^a, r^xz, r^y, ric, rot, local vel, contacts."""
    J = _skeleton(kind).num_joints
    ric, rot, vel = 4 + 3 * (J - 1), 4 + 9 * (J - 1), 4 + 9 * (J - 1) + 3 * J
    return [slice(0, 1), slice(1, 3), slice(3, 4), slice(4, ric), slice(ric, rot), slice(rot, vel),
            slice(vel, vel + 4)]


def mean_std(feature_arrays, kind="t2m"):
    """Dataset Mean (D,) and block-averaged Std (D,), float32, over (T_i, D) arrays (cal_mean_variance).

    feature_arrays may be any iterable (e.g. a generator reading files): the statistics are accumulated one array at
    a time in float64, so memory stays at one clip however large the dataset.
    """
    D = _skeleton(kind).feature_dim
    count, total, total_sq = 0, np.zeros(D), np.zeros(D)
    for a in feature_arrays:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != D or not np.isfinite(a).all():
            continue                                               # NaN files are skipped, as HumanML3D does
        count, total, total_sq = count + len(a), total + a.sum(axis=0), total_sq + (a * a).sum(axis=0)
    if count == 0:
        raise ValueError(f"mean_std got no finite (T, {D}) feature arrays for kind={kind!r}")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))   # population std, as np.std
    for block in feature_blocks(kind):
        std[block] = std[block].mean()       # one std per block, so every joint shares its block's scale (A.7)
    if (std <= 0).any():
        # Paper is silent here; see README "Choices". A block that never varies (e.g. no foot contact at all)
        # would divide by zero; we give it std 1. Real HumanML3D / KIT-ML data never hits this.
        warnings.warn(f"mean_std: {int((std <= 0).sum())} feature dims have zero std (a constant block); set to 1")
        std[std <= 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


# -----------------------------------------------------------------------------
# 6. Dataset: the HumanML3D / KIT-ML folder layout (spec A.8), StableMoFusion's loader (backbone spec §4) and
#    the evaluator's ground-truth crop (t2m_evaluator spec B.3, B.6)
# -----------------------------------------------------------------------------

_MAX_LEN_EXCLUSIVE = 200    # length filter [min_motion_len, 200) of every T2M-derived loader
_TAG_FPS = 20.0             # start/end tags are seconds * 20, for KIT (12.5 fps) too (inherited T2M bug)
_MAX_TEXT_LEN = 20          # evaluator: at most 20 word tokens, plus sos/eos

_LAYOUT = """expected layout:
  <root>/                      e.g. data/HumanML3D or data/KIT-ML
    new_joint_vecs/<id>.npy    float32 (T-1, 263) features  [KIT-ML: (T-1, 251)]
    texts/<id>.txt             one 'caption#word/POS tokens#start#end' per line (HumanML3D: unzip texts.zip)
    Mean.npy  Std.npy          float32 (263,)  [KIT-ML: (251,)]
    train.txt  val.txt  test.txt   one id per line (ids M<id> are the mirrored copies)"""
_WHERE = ("Where the data comes from: HumanML3D must be built from AMASS with the notebooks of the HumanML3D "
          "repository (github.com/EricGuo5513/HumanML3D; AMASS may not be redistributed); KIT-ML is linked from "
          "the same README. Without either, use the built-in dataset: `--dataset synthetic`.")


def _missing_layout_error(what, path, root):
    if Path(path).is_file():
        return FileNotFoundError(f"{what} {path} is a file, not a folder\n{_LAYOUT}\n{_WHERE}")
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(root).iterdir()) if Path(root).is_dir() else []
    shown = ", ".join(present[:12]) + (" ..." if len(present) > 12 else "")
    found = f"\nfound in {root}: {shown or '(nothing)'}" if Path(root).is_dir() else ""
    return FileNotFoundError(f"{what} not found: {path}{found}\n{_LAYOUT}\n{_WHERE}")


def parse_text_line(line):
    """'caption#tokens#start#end' -> (caption, tokens, start, end), or None when malformed. NaN tags read as 0."""
    parts = line.strip().split("#")
    if len(parts) != 4 or not parts[0].strip():
        return None
    try:
        start, end = float(parts[2]), float(parts[3])
    except ValueError:
        return None
    start = 0.0 if math.isnan(start) else start
    end = 0.0 if math.isnan(end) else end
    return parts[0], [t for t in parts[1].split(" ") if t], start, end


def evaluator_tokens(tokens):
    """B.3: 'sos/OTHER' + up to 20 word/POS tokens + 'eos/OTHER', padded with 'unk/OTHER' to 22."""
    if len(tokens) < _MAX_TEXT_LEN:
        tokens = ["sos/OTHER"] + list(tokens) + ["eos/OTHER"]
        return tokens + ["unk/OTHER"] * (_MAX_TEXT_LEN + 2 - len(tokens))
    return ["sos/OTHER"] + list(tokens[:_MAX_TEXT_LEN]) + ["eos/OTHER"]


def _read_captions(text_path, name, motion, min_len, malformed):
    """Captions of one id: whole-motion [(caption, tokens)] and sub-clip samples [dict] (backbone spec §4).

    Malformed lines are appended to `malformed` as 'file:line: text'.
    """
    whole, subclips = [], []
    lines = text_path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = parse_text_line(line)
        if parsed is None:
            malformed.append(f"{text_path}:{lineno}: {line.strip()[:80]!r}")
            continue
        caption, tokens, start, end = parsed
        if start == 0.0 and end == 0.0:
            whole.append((caption, tokens))
            continue
        sub = motion[int(start * _TAG_FPS):int(end * _TAG_FPS)]
        if min_len <= len(sub) < _MAX_LEN_EXCLUSIVE:        # the same length filter as whole motions
            # T2M names it '<random letter A-W>_<id>'; a deterministic letter keeps runs reproducible.
            letter = "ABCDEFGHIJKLMNOPQRSTUVW"[len(subclips) % 23] + str(len(subclips) // 23 or "")
            subclips.append({"name": f"{letter}_{name}", "motion": sub, "texts": [(caption, tokens)]})
    return whole, subclips


def _load_stats(x, name, D):
    if x is None:
        return None
    if isinstance(x, (str, os.PathLike)):
        x = read_array(x, "statistics file", f"a float32 .npy of shape ({D},)")
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    if x.shape != (D,):
        raise InputError(f"{name} has shape {x.shape}, expected ({D},): 263 for HumanML3D and the synthetic data "
                         "(kind='t2m'), 251 for KIT-ML (kind='kit')")
    return x


class MotionDataset(torch.utils.data.Dataset):
    """Text-motion pairs from a HumanML3D / KIT-ML folder (or the synthetic one, same layout).

    mode "train": (caption, motion (max_motion_length, D) float32 normalised and zero-padded, length) with a random
        196-frame window of longer clips and one random caption per draw; normalised by .mean/.std, which are the
        dataset's Mean.npy/Std.npy with std[0:4] and std[-4:] divided by feat_bias (StableMoFusion's tweak).
    mode "eval": (caption, tokens (22 'word/POS' strings, B.3), motion (max_motion_length, D), length), the standard
        protocol's crop: length rounded down to a multiple of 4 (or one unit less, coin single/single/double), a
        random window, normalised with the evaluator's stats eval_mean/eval_std (arrays or .npy paths: the shipped
        meta files for the official evaluator). If they are not given, eval mode falls back to the training
        normalisation (.mean/.std), which is what an evaluator trained with this loader (synthetic data) expects.
    Each caption with start/end tags (seconds) becomes its own sample of that sub-clip; the whole motion is a sample
    only if some caption had tags (0, 0). Randomness comes from Python's `random` (seeded per DataLoader worker).
    """

    def __init__(self, root, split="train", kind="t2m", mode="train", max_motion_length=MAX_MOTION_LENGTH,
                 feat_bias=5.0, eval_mean=None, eval_std=None):
        skel = _skeleton(kind)
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        root = Path(root)
        self.root, self.split, self.kind, self.mode = root, split, kind, mode
        self.max_motion_length = int(max_motion_length)
        D, min_len = skel.feature_dim, skel.min_motion_len

        if not root.is_dir():
            raise _missing_layout_error("dataset root", root, root)
        for sub in ("new_joint_vecs", "texts"):
            if not (root / sub).is_dir():
                raise _missing_layout_error(f"sub-folder {sub}/", root / sub, root)
        for stat in ("Mean.npy", "Std.npy"):
            if not (root / stat).is_file():
                raise _missing_layout_error(f"statistics file {stat}", root / stat, root)
        split_file = root / f"{split}.txt"
        if not split_file.is_file():
            raise _missing_layout_error(f"split file for split={split!r}", split_file, root)

        mean, std = _load_stats(root / "Mean.npy", "Mean.npy", D), _load_stats(root / "Std.npy", "Std.npy", D)
        if not (std > 0).all():
            raise InputError(f"{root / 'Std.npy'} has {int((std <= 0).sum())} non-positive entries; recompute it "
                             "with data.mean_std (block-averaged std)")
        std = std.copy()
        std[0:4] /= feat_bias     # root rotation velocity, root XZ velocity, root height: x feat_bias in
        std[-4:] /= feat_bias     # normalised space, and so are the foot contacts (StableMoFusion, spec §4)
        self.mean, self.std = mean, std
        self.eval_mean = _load_stats(eval_mean, "eval_mean", D)
        self.eval_std = _load_stats(eval_std, "eval_std", D)
        if (self.eval_mean is None) != (self.eval_std is None):
            raise ValueError("give both eval_mean and eval_std, or neither")
        if self.eval_mean is None:
            self.eval_mean, self.eval_std = self.mean, self.std

        ids = [line.strip() for _, line in read_text_lines(split_file, "split file", "one clip id per line")]
        self.items = []                        # dicts: name, motion (T, D) float32, texts [(caption, tokens)]
        missing, bad_nan, bad_shape, malformed = [], [], [], []
        n_short_or_long = n_no_caption = 0
        for name in ids:
            motion_path, text_path = root / "new_joint_vecs" / f"{name}.npy", root / "texts" / f"{name}.txt"
            if not (motion_path.is_file() and text_path.is_file()):
                missing.append(name)
                continue
            motion = read_array(motion_path, "motion file", f"float32 features (T, {D})")
            if motion.ndim != 2 or motion.shape[1] != D:
                bad_shape.append(f"{name} {motion.shape}")
                continue
            if not np.isfinite(motion).all():
                bad_nan.append(name)
                continue
            motion = motion.astype(np.float32)
            if not (min_len <= len(motion) < _MAX_LEN_EXCLUSIVE):
                n_short_or_long += 1
                continue
            whole, subclips = _read_captions(text_path, name, motion, min_len, malformed)
            self.items.extend(subclips)
            if whole:
                self.items.append({"name": name, "motion": motion, "texts": whole})
            elif not subclips:
                n_no_caption += 1

        for msg in malformed[:20]:
            warnings.warn(f"malformed text line skipped (expected 'caption#word/POS tokens#start#end'): {msg}",
                          stacklevel=2)
        if len(malformed) > 20:
            warnings.warn(f"{len(malformed) - 20} more malformed text lines skipped", stacklevel=2)
        if bad_nan or bad_shape:
            warnings.warn(
                f"skipped {len(bad_nan) + len(bad_shape)} motions of split {split!r} in {root / 'new_joint_vecs'}: "
                f"{len(bad_nan)} with NaN/inf values (HumanML3D's 007975 is one){': ' if bad_nan else ''}"
                f"{', '.join(bad_nan[:5])}; {len(bad_shape)} with the wrong shape (kind={kind!r} expects (T, {D}))"
                f"{': ' if bad_shape else ''}{', '.join(bad_shape[:5])}", stacklevel=2)
        if missing:
            warnings.warn(f"{len(missing)} of {len(ids)} ids listed in {split_file} are missing on disk "
                          f"(new_joint_vecs/<id>.npy or texts/<id>.txt), e.g. {', '.join(missing[:5])}; skipped",
                          stacklevel=2)
        self.skipped = {"missing": len(missing), "nan": len(bad_nan), "bad_shape": len(bad_shape),
                        "length": n_short_or_long, "no_caption": n_no_caption, "malformed_lines": len(malformed)}
        if not self.items:
            raise InputError(
                f"no samples left in {root} split {split!r} (kind={kind!r}): {len(ids)} ids listed, "
                f"{len(missing)} missing on disk, {len(bad_nan) + len(bad_shape)} bad motions, {n_short_or_long} "
                f"outside the length range [{min_len}, {_MAX_LEN_EXCLUSIVE}) frames, {n_no_caption} without a "
                f"usable caption. Check the split file and --dataset/kind.\n{_LAYOUT}")
        self.names = [item["name"] for item in self.items]
        self.lengths = np.array([len(item["motion"]) for item in self.items])

    def __len__(self):
        return len(self.items)

    def normalise(self, x):
        """(x - mean) / std with the training stats; x (..., D) numpy or torch."""
        mean, std = self._stats_like(x, self.mean, self.std)
        return (x - mean) / std

    def denormalise(self, x):
        """x * std + mean with the training stats; x (..., D) numpy or torch."""
        mean, std = self._stats_like(x, self.mean, self.std)
        return x * std + mean

    @staticmethod
    def _stats_like(x, mean, std):
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(mean, dtype=x.dtype, device=x.device),
                    torch.as_tensor(std, dtype=x.dtype, device=x.device))
        return mean, std

    def _pad(self, motion):
        out = np.zeros((self.max_motion_length, motion.shape[1]), dtype=np.float32)  # zeros in normalised space
        out[:len(motion)] = motion
        return out

    def __getitem__(self, index):
        item = self.items[index]
        caption, tokens = random.choice(item["texts"])
        motion = item["motion"]
        length = len(motion)
        if self.mode == "train":
            if length >= self.max_motion_length:
                start = random.randint(0, length - self.max_motion_length)
                motion, length = motion[start:start + self.max_motion_length], self.max_motion_length
            return caption, self._pad((motion - self.mean) / self.std), length
        # eval: the evaluator's crop (B.6): a multiple of 4 frames, one unit shorter a third of the time
        units = min(length, self.max_motion_length) // 4
        m_len = 4 * units if random.choice(["single", "single", "double"]) == "single" else 4 * (units - 1)
        start = random.randint(0, length - m_len)
        motion = (motion[start:start + m_len] - self.eval_mean) / self.eval_std
        return caption, evaluator_tokens(tokens), self._pad(motion), m_len


def collate_eval(batch):
    """Collate eval-mode items, sorted by sentence length descending as the evaluator's packed GRU expects.

    Returns (captions list[str], tokens list[list[str]], motions (B, T, D) float32, lengths (B,) long,
    sent_lens (B,) long) where sent_len counts sos..eos.
    """
    sent_len = [tokens.index("eos/OTHER") + 1 for _, tokens, _, _ in batch]
    order = sorted(range(len(batch)), key=lambda i: -sent_len[i])
    batch = [batch[i] for i in order]
    return ([b[0] for b in batch], [b[1] for b in batch], torch.from_numpy(np.stack([b[2] for b in batch])),
            torch.tensor([b[3] for b in batch], dtype=torch.long),
            torch.tensor([sent_len[i] for i in order], dtype=torch.long))


def to_device(tensor, device):
    """Host tensor -> device without stalling the host: on CUDA the copy goes through pinned memory and is queued
    (non_blocking), so the CPU can prepare the next batch while the GPU still works on this one. A plain copy from
    pageable memory may wait for the GPU's queue to drain first."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# -----------------------------------------------------------------------------
# 7. Rendering: stick figures (matplotlib, imported lazily; drawn on an Agg canvas, no global backend change)
# -----------------------------------------------------------------------------

_RIGHT, _LEFT, _CENTRE, _TRAJ = "#d62728", "#1f77b4", "#404040", "#ff9f1c"
_DISPLAY_SCALE = {"t2m": 1.0, "kit": 1.0 / 600.0}   # KIT units are mm-like (mean root height ~560 vs 0.94 m)


def _chain_colours(skel):
    """Colour per kinematic chain, by joint index: right side red, left side blue, spine grey (spec A.2/A.3)."""
    right, left = set(skel.right_joints), set(skel.left_joints)
    return [_RIGHT if right & set(c) else _LEFT if left & set(c) else _CENTRE for c in skel.kinematic_chain]


def _display_joints(joints, kind):
    """(T, J, 3) Y-up joints (numpy/torch) -> (T, J, 3) matplotlib coordinates (x, -z, y) in metres, Z-up."""
    skel = _skeleton(kind)
    if isinstance(joints, torch.Tensor):
        joints = joints.detach().cpu().numpy()
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1] != skel.num_joints or joints.shape[2] != 3 or len(joints) == 0:
        raise ValueError(f"rendering expects joints (T, {skel.num_joints}, 3) for kind={kind!r}, got {joints.shape}"
                         "; features must go through features_to_joints first")
    if not np.isfinite(joints).all():
        raise ValueError("cannot render joints containing NaN or inf")
    j = joints * _DISPLAY_SCALE[kind]
    return np.stack([j[..., 0], -j[..., 2], j[..., 1]], axis=-1)   # a proper rotation: left stays left


def _floor_segments(cx, cy, radius, spacing=0.5):
    """Grid lines on the floor (z = 0) covering the square of half-size `radius` around (cx, cy)."""
    xs = np.arange(np.ceil((cx - radius) / spacing), np.floor((cx + radius) / spacing) + 1) * spacing
    ys = np.arange(np.ceil((cy - radius) / spacing), np.floor((cy + radius) / spacing) + 1) * spacing
    return ([[(x, cy - radius, 0.0), (x, cy + radius, 0.0)] for x in xs] +
            [[(cx - radius, y, 0.0), (cx + radius, y, 0.0)] for y in ys])


class _StickFigure:
    """One 3D axes showing a skeleton at a chosen frame, the floor grid and root trajectory around it."""

    def __init__(self, ax, joints, kind, radius=1.0):
        from mpl_toolkits.mplot3d.art3d import Line3DCollection
        self.ax, self.joints, self.radius = ax, joints, radius
        self.skel = _skeleton(kind)
        ax.set_axis_off()
        ax.view_init(elev=15, azim=-60)
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        self.grid = Line3DCollection(_floor_segments(0.0, 0.0, radius), colors="#c8c8c8", linewidths=0.6)
        ax.add_collection3d(self.grid)
        self.traj, = ax.plot([], [], [], color=_TRAJ, linewidth=1.2)
        self.bones = [ax.plot([], [], [], color=c, linewidth=2.0 if c != _CENTRE else 2.4,
                              solid_capstyle="round")[0] for c in _chain_colours(self.skel)]
        top = max(2.0 * radius, joints[..., 2].max() * 1.05)
        ax.set_zlim(0.0, top)
        self.top = top

    def draw(self, t):
        cx, cy = self.joints[t, 0, 0], self.joints[t, 0, 1]
        r = self.top / 2.0            # keep the box a cube, centred on the root in the floor plane
        self.ax.set_xlim(cx - r, cx + r)
        self.ax.set_ylim(cy - r, cy + r)
        self.grid.set_segments(_floor_segments(cx, cy, r))
        path = self.joints[:, 0].copy()
        path[:, 2] = 0.0
        outside = (np.abs(path[:, 0] - cx) > r) | (np.abs(path[:, 1] - cy) > r)
        path[outside] = np.nan        # 3D axes do not clip: hide the parts of the path outside the box
        self.traj.set_data_3d(path[:, 0], path[:, 1], path[:, 2])
        for line, chain in zip(self.bones, self.skel.kinematic_chain):
            p = self.joints[t, list(chain)]
            line.set_data_3d(p[:, 0], p[:, 1], p[:, 2])


def _new_figure(width, height, dpi):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _wrap(title, width):
    import textwrap
    return "\n".join(textwrap.wrap(str(title), width)[:3])


def render_filmstrip(joints, path, kind="t2m", title="", num_frames=6, dpi=80):
    """Static PNG of num_frames key frames of joints (T, J, 3) side by side, caption as title; returns path."""
    j = _display_joints(joints, kind)
    num_frames = max(1, min(int(num_frames), len(j)))
    fps = _skeleton(kind).fps
    frames = np.linspace(0, len(j) - 1, num_frames).round().astype(int)
    fig = _new_figure(1.6 * num_frames, 2.3, dpi)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=-0.05, top=1.0 if not title else 0.93, wspace=0.0)
    for k, t in enumerate(frames):
        ax = fig.add_subplot(1, num_frames, k + 1, projection="3d")
        _StickFigure(ax, j, kind).draw(t)
        ax.set_title(f"{t / fps:.1f} s", fontsize=7, y=0.84)
    if title:
        fig.suptitle(_wrap(title, 18 * num_frames), fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def render_animation(joints, path, kind="t2m", title="", fps=None, stride=1, dpi=80):
    """Animated stick figure of joints (T, J, 3): GIF (Pillow) or, for a .mp4 path, MP4 (ffmpeg); returns path.

    fps defaults to the skeleton's (20 / 12.5); every `stride`-th frame is drawn, played at fps / stride.
    """
    from matplotlib.animation import FFMpegWriter, PillowWriter
    j = _display_joints(joints, kind)
    path = Path(path)
    fps = float(fps or _skeleton(kind).fps)
    stride = max(1, int(stride))
    suffix = path.suffix.lower()
    if suffix == ".gif":
        writer = PillowWriter(fps=fps / stride)
    elif suffix == ".mp4":
        if shutil.which("ffmpeg") is None:
            raise FileNotFoundError(f"cannot write {path}: MP4 needs ffmpeg on PATH (install it, e.g. "
                                    "`apt-get install ffmpeg` or `conda install ffmpeg`), or use a .gif path")
        writer = FFMpegWriter(fps=fps / stride)
    else:
        raise ValueError(f"render_animation writes .gif or .mp4, got {path.name!r}")
    fig = _new_figure(3.0, 3.0, dpi)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.86 if title else 1.0)
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    figure = _StickFigure(ax, j, kind)
    if title:
        fig.suptitle(_wrap(title, 40), fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer.saving(fig, str(path), dpi):
        for t in range(0, len(j), stride):
            figure.draw(t)
            writer.grab_frame()
    return path


# -----------------------------------------------------------------------------
# 8. User input: the errors scripts answer without a traceback, command-line value types, user files, checkpoints
# -----------------------------------------------------------------------------

class InputError(ValueError):
    """Bad input from the user (a flag, a file, a checkpoint): the message says what was wrong, what was expected and
    how to fix it. Scripts print it as one paragraph with exit status 1 (see user_errors); any other exception is a
    bug and keeps its traceback."""


@contextlib.contextmanager
def user_errors(*expected):
    """Run a script's work; an expected user error becomes `error: <message>` on stderr and exit status 1.

    Expected are InputError, OSError (a missing, unreadable or unwritable file, a full disk: its message names the
    file) and the classes in `expected` (e.g. moclip.WeightsUnavailable). Anything else propagates with its traceback.
    Usage errors are found before this, by argparse and the scripts' check functions (exit status 2)."""
    try:
        yield
    except (InputError, OSError, *expected) as error:
        sys.exit(f"error: {error}")


def int_range(low, high=None):
    """argparse type: an integer in [low, high] (no upper bound when high is None)."""
    wanted = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value
    return parse


def float_range(low=-math.inf, high=math.inf, low_open=False):
    """argparse type: a finite float in [low, high], or (low, high] with low_open (e.g. a learning rate > 0)."""
    bounds = [f"> {low:g}" if low_open else f">= {low:g}"] if low > -math.inf else []
    bounds += [f"<= {high:g}"] if high < math.inf else []
    wanted = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value
    return parse


SEED = int_range(0, 2**32 - 1)      # argparse type of every --seed: numpy, torch and `random` all take it


def device_name(text):
    """argparse type: a torch device that exists on this machine (cpu, cuda, cuda:N, mps)."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}, but PyTorch sees no CUDA GPU on this machine (torch.cuda.is_available() is False: no "
                f"GPU, no driver, a CPU-only PyTorch build, or CUDA_VISIBLE_DEVICES hides it); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}, but this machine has {torch.cuda.device_count()} CUDA "
                                             f"GPU(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}, but Apple's MPS backend is not available here; use cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported here; expected cpu, cuda or cuda:N")
    return text


def folder_path(text):
    """argparse type: a folder to write into (it may not exist yet, but it must not be a file)."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; pass a folder path (it is created)")
    return text


def file_path(text):
    """argparse type: a file to write (it may not exist yet, but it must not be a folder)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; pass a file path, e.g. {Path(text) / 'out.pt'}")
    return text


def _readable_file(path, what, expected):
    """path as a Path, or an InputError if it is missing or a folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; expected {expected}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file; expected {expected}")
    return path


def read_text_lines(path, what, expected):
    """The non-blank lines of a user's text file as [(line number, line)], or an InputError naming the file: missing,
    a folder, unreadable, or not UTF-8 text. `what` names it ("prompt file"), `expected` says its format."""
    path = _readable_file(path, what, expected)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {error.start}: {error.reason}); expected "
                         f"{expected}") from None
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from None
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def line_error(path, number, line, problem, expected):
    """The InputError for a bad line of a user file: where, what was wrong, what each line must look like."""
    return InputError(f"{path}:{number}: {problem} in {line.strip()[:80]!r}; expected {expected}")


def read_array(path, what, expected):
    """np.load of a user's .npy file, never unpickling; any failure is an InputError naming the file."""
    path = _readable_file(path, what, expected)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise InputError(f"{what} {path} holds pickled Python objects, which are never loaded (unpickling can run "
                             f"code); expected {expected}") from None
        raise InputError(f"{what} {path} is not a readable .npy array ({error}); expected {expected}") from None
    except (OSError, EOFError) as error:
        raise InputError(f"{what} {path} is not a readable .npy array ({error}); expected {expected}") from None


def describe_checkpoint(state):
    """What a loaded checkpoint looks like, for error messages: 'a MoCLIP checkpoint (moclip.py)', ..."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a checkpoint dict"
    if state.get("format") == "luma":
        return ("a LUMA training checkpoint (train.py's checkpoint.pt)" if "model" in state else
                "a LUMA inference checkpoint (train.py's final.pt)")
    if state.get("format") == "moclip":
        return "a MoCLIP checkpoint (moclip.py)"
    if {"movement_encoder", "motion_encoder", "text_encoder"} <= set(state):
        return "a T2M evaluator checkpoint (finest.tar)"
    return f"a dict with keys {sorted(map(str, state))[:8]}"


def load_checkpoint(path, what, writer, fmt=None, keys=(), refused_hint=""):
    """A checkpoint file read safely and checked: plain types and tensors on the CPU (torch.load, weights_only=True).

    what: what the caller needs ("a LUMA checkpoint"); writer: the command that writes one; fmt: the required
    "format" tag (None: any dict); keys: keys it must hold. A missing or foreign file, a truncated one, one holding
    Python objects (which are never unpickled) or one lacking a key raises an InputError naming the file, what it is,
    what was expected and `writer`, with torch's reason where torch could not read it. refused_hint is added when
    the file holds Python objects (e.g. how to convert a trusted official file once)."""
    path = _readable_file(path, "checkpoint", f"{what}, written by {writer}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's reason is its "Unsupported ..." line; its advice to load with weights_only=False is left out
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")),
                      lines[0] if lines else "")
        if "GLOBAL" not in reason:                   # not a pickle of a checkpoint at all (e.g. an .npy file)
            raise InputError(f"{path} is not a PyTorch checkpoint (torch: {reason}). Expected {what}, written by "
                             f"{writer}.") from None
        raise InputError(f"{path} holds Python objects that are never loaded here (unpickling them could run code; "
                         f"torch: {reason}). Expected {what}, written by {writer}.{refused_hint}") from None
    except Exception as error:   # truncated, not a torch.save file, unreadable: torch's reason, never a traceback
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path} is not a readable PyTorch checkpoint: truncated, damaged or not written by "
                         f"torch.save (torch: {reason}). Expected {what}, written by {writer}.") from None
    if not isinstance(state, dict) or (fmt is not None and state.get("format") != fmt):
        raise InputError(f"{path} is {describe_checkpoint(state)}, not {what}; pass the file {writer} writes")
    missing = [key for key in keys if key not in state]
    if missing:
        raise InputError(f"{path} lacks {', '.join(map(repr, missing))} that {what} holds; it looks like "
                         f"{describe_checkpoint(state)}. Pass the file {writer} writes (write a damaged or older one "
                         f"again)")
    return state


def load_weights(module, state_dict, path, what):
    """module.load_state_dict(state_dict) (strict), or an InputError naming the file when the weights do not fit."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        reason = "; ".join(lines[1:3] if lines[0].startswith("Error(s) in loading state_dict") else lines[:2])
        raise InputError(f"{path}: the {what} weights do not fit the model its configuration describes ({reason}); "
                         f"the file is damaged or was edited") from None
    return module


def write_atomic(path, write):
    """write(binary file) into path through a temporary file and a rename: a crash never leaves a half-written file,
    and a failed write leaves an existing file as it was. A write that fails is an InputError naming the file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise InputError(f"could not write {path}: {error.strerror or error}") from None
    return path


def save_checkpoint(obj, path):
    """torch.save(obj) to path atomically (write_atomic); the project's checkpoints hold only plain types and tensors,
    so they load with weights_only=True."""
    return write_atomic(path, lambda f: torch.save(obj, f))
