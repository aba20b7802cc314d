"""A built-in synthetic text-to-motion dataset in the HumanML3D on-disk layout.

Why: HumanML3D and KIT-ML cannot be downloaded on our machines (AMASS may not be redistributed), yet the project
needs data to train, test and demonstrate LUMA offline. This file makes a small motion-language dataset that
every other file can read exactly like HumanML3D (../shared/spec/humanml3d_format.md, A.8):

    <out>/new_joint_vecs/<id>.npy   float32 (T-1, 263)   features, via data.joints_to_features
    <out>/new_joints/<id>.npy       float32 (T-1, 22, 3) data.features_to_joints of the features
    <out>/texts/<id>.txt            3 lines 'caption#word/POS tokens#0.0#0.0'
    <out>/Mean.npy, Std.npy         data.mean_std over all clips incl. mirrors (block-averaged std, A.7)
    <out>/{train,val,test,train_val,all}.txt    ids; <id> and its mirror M<id> always in the same split
    <out>/synthetic.json            seed, count, version; written last (ensure_dataset checks it)

How: a motion is one to three parameterised action primitives (walk, run, sidestep, turn, jump, squat, wave,
raise arms, kick, punch, jumping jacks, bow, clap, balance on one leg, throw, hop), each a set of per-joint
rotation curves on the 22-joint HumanML3D skeleton with its target bone lengths, crossfaded into one clip.
Forward kinematics gives joint positions; the root is then placed so the lowest foot touches the floor and the
supporting foot does not slide. Captions are paraphrased from templates and tagged with a built-in lexicon
the way HumanML3D's spaCy step tags them. Mirrored copies (M<id>) swap left and right in motion and text.
Everything is a pure function of (seed, motion index), so a seed always gives the same bytes.

Chapters: 1 skeleton and forward kinematics, 2 action primitives, 3 composition and root placement, 4 captions
(tagged with data.tokenize and its lexicon), 5 writing the dataset, 6 CLI.
Public: PRIMITIVES, forward_kinematics, make_motion, sample_motion, generate_dataset, ensure_dataset.
CLI: python synthetic.py --out data/synthetic --num-motions 2000 --seed 0
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import (SEED, SKELETONS, VERB_FORMS, DatasetWriter, features_to_joints, folder_path, int_range,
                  joints_to_features, read_marker, tokenize, user_errors)

_NUMBER_WORDS = dict(enumerate("zero one two three four five six seven eight nine ten".split()))
_THIRD_PERSON = {third: gerund for _, third, gerund in VERB_FORMS}     # 'walks' -> 'walking', for "is walking"

VERSION = 2                       # bump when the generator changes, so ensure_dataset regenerates old folders
SKEL = SKELETONS["t2m"]
FPS = SKEL.fps                    # 20 frames per second
MIN_FRAMES = SKEL.min_motion_len + 1   # T frames give T-1 feature rows; loaders keep 40 <= rows < 200
MAX_FRAMES = 196 + 1                   # at most 196 feature rows = the training window
MAX_HEADING = np.deg2rad(165.0)   # see make_motion: keeps clips clear of the +-180 degree arcsin quirk

# -----------------------------------------------------------------------------
# 1. Skeleton and forward kinematics. Joint order, parents, mirror pairs and target bone lengths come from
#    data.SKELETONS["t2m"]; only the natural rest pose is ours. The spec's raw offsets are IK reference axes,
#    not a pose (the head would point forward, the shoulders hang below the collars), so the rest pose uses
#    directions measured on the released clip 000000, frame 0, symmetrised. Hips, collars and shoulders have no
#    z component, so a rest frame 0 faces +Z exactly (spec A.5.3) and the clip is already canonical.
# -----------------------------------------------------------------------------

JOINTS = SKEL.joint_names        # pelvis, left_hip, ... right_wrist (spec A.2)
_J = {name: i for i, name in enumerate(JOINTS)}
_LEFT_REST = {  # direction of the bone ending at each joint, person facing +Z, left = +X, Y up
    "left_hip": (0.56, -0.83, 0.0), "spine1": (0.0, 0.95, -0.30), "left_knee": (0.06, -1.0, 0.0),
    "spine2": (0.0, 0.975, 0.22), "left_ankle": (0.0, -1.0, -0.05), "spine3": (0.0, 0.987, 0.16),
    "left_foot": (0.25, -0.28, 0.92), "neck": (0.0, 0.994, -0.11), "left_collar": (0.53, 0.85, 0.0),
    "head": (0.0, 0.9, 0.44), "left_shoulder": (0.9, -0.44, 0.0), "left_elbow": (0.09, -0.99, -0.05),
    "left_wrist": (0.10, -0.97, 0.20)}


def _rest_offsets():
    dirs = np.zeros((SKEL.num_joints, 3))
    for name, d in _LEFT_REST.items():
        dirs[_J[name]] = d
    for left, right in zip(SKEL.left_joints, SKEL.right_joints):
        dirs[right] = dirs[left] * (-1.0, 1.0, 1.0)       # the right side is the mirror image
    dirs[1:] /= np.linalg.norm(dirs[1:], axis=1, keepdims=True)
    return np.asarray(SKEL.bone_lengths)[:, None] * dirs  # (J, 3): target bone length * rest direction


_OFFSETS = _rest_offsets()
_SIDE_SIGN = np.ones(SKEL.num_joints)
_SIDE_SIGN[list(SKEL.right_joints)] = -1.0           # mirrors abduction and horizontal rotations
_FEET = list(SKEL.fid_l) + list(SKEL.fid_r)          # ankles and toes: what touches the floor


def _euler_to_matrix(a):
    """Local rotations (..., 3, 3) of Euler angles a (..., 3) = (x, y, z) radians: R = Ry(y) Rx(x) Rz(z)."""
    cx, cy, cz = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    sx, sy, sz = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    rows = [cy * cz + sy * sx * sz, -cy * sz + sy * sx * cz, sy * cx,
            cx * sz, cx * cz, -sx,
            -sy * cz + cy * sx * sz, sy * sz + cy * sx * cz, cy * cx]
    return np.stack(rows, axis=-1).reshape(a.shape[:-1] + (3, 3))


def forward_kinematics(angles, heading, root=None):
    """Joint positions (T, 22, 3) from local rotations angles (T, 22, 3) (Euler x, y, z, see _euler_to_matrix),
    body yaw heading (T,) in radians (+ = turned left) and root positions root (T, 3) (default: origin)."""
    local = _euler_to_matrix(np.asarray(angles, dtype=np.float64))          # (T, J, 3, 3)
    yaw = _euler_to_matrix(np.stack([0 * heading, heading, 0 * heading], axis=-1))  # (T, 3, 3)
    glob = np.empty_like(local)
    pos = np.zeros(local.shape[:2] + (3,))
    glob[:, 0] = yaw @ local[:, 0]
    for j in range(1, SKEL.num_joints):   # parents come before their children in the SMPL order
        p = SKEL.parents[j]
        pos[:, j] = pos[:, p] + glob[:, p] @ _OFFSETS[j]   # the bone ending at j turns with its parent joint
        glob[:, j] = glob[:, p] @ local[:, j]
    if root is not None:
        pos += np.asarray(root, dtype=np.float64)[:, None]
    return pos


# -----------------------------------------------------------------------------
# 2. Action primitives. Each returns a _Clip (rotation curves plus what the root does) and its parameters,
#    which the captions describe. Time t is in seconds, 0 when the action starts; t < 0 is a short lead-in
#    and the lead-out follows the action, both in the rest pose, so clips crossfade through natural poses.
#    Angle conventions (radians), for a joint j rotating the bones below it:
#      _swing  swing a hanging limb forward (hip / shoulder flexion; elbow flexion)
#      _bend   knee flexion; spine / neck bending forward; ankle pointing the toes down
#      _spread move a limb away from the body's midline (abduction), mirrored for the right side
#      _reach  turn a limb about the vertical towards the front / the midline (horizontal adduction)
#      _twist  turn the spine or pelvis to the left (negative: to the right)
# -----------------------------------------------------------------------------


@dataclass
class _Clip:
    angles: np.ndarray    # (T, 22, 3) local Euler rotations
    heading: np.ndarray   # (T,) body yaw, radians, starts at 0
    contact: np.ndarray   # (T,) bool: some foot on the floor (False = in the air)
    lift: np.ndarray      # (T,) extra root height while in the air, metres
    push: np.ndarray      # (T, 2) extra horizontal velocity while in the air, body frame (x left, z forward), m/s
    carry: np.ndarray     # (T,) 1 = keep the take-off velocity in the air (running), 0 = only `push`

    def __len__(self):
        return len(self.heading)


def _clip(T):
    return _Clip(np.zeros((T, SKEL.num_joints, 3)), np.zeros(T), np.ones(T, dtype=bool), np.zeros(T),
                 np.zeros((T, 2)), np.zeros(T))


def _timeline(rng, active):
    """Time axis (T,) in seconds for an action lasting `active` seconds, with a random rest lead-in/out."""
    lead, tail = rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)
    T = int(round((lead + active + tail) * FPS))
    return np.arange(T) / FPS - lead


def _smooth(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _keys(t, *keys):
    """Curve through keyframes (time, value), eased between them and held constant outside."""
    out = np.full(t.shape, float(keys[0][1]))
    for (t0, v0), (t1, v1) in zip(keys[:-1], keys[1:]):
        out = np.where(t >= t0, v0 + (v1 - v0) * _smooth((t - t0) / max(t1 - t0, 1e-9)), out)
    return out


def _envelope(t, start, end, ramp):
    """1 inside [start, end], easing in and out over `ramp` seconds, 0 outside."""
    return _smooth((t - start) / ramp) * _smooth((end - t) / ramp)


def _swing(c, j, a):
    c.angles[:, _J[j], 0] -= a


def _bend(c, j, a):
    c.angles[:, _J[j], 0] += a


def _spread(c, j, a):
    c.angles[:, _J[j], 2] += _SIDE_SIGN[_J[j]] * a


def _reach(c, j, a):
    c.angles[:, _J[j], 1] -= _SIDE_SIGN[_J[j]] * a


def _twist(c, j, a):
    c.angles[:, _J[j], 1] += a


def _flat_feet(c, point=None):
    """Keep both feet level with the floor (ankle pitch cancels pelvis, hip and knee pitch), plus optional
    toe pointing per side {'left': (T,), 'right': (T,)}."""
    for side in ("left", "right"):
        pitch = c.angles[:, 0, 0] + c.angles[:, _J[f"{side}_hip"], 0] + c.angles[:, _J[f"{side}_knee"], 0]
        c.angles[:, _J[f"{side}_ankle"], 0] = -pitch + (point or {}).get(side, 0.0)


def _other(side):
    return "right" if side == "left" else "left"


def _pick(rng, given, **choices):
    """Parameters: the given ones, the others drawn from their choices (in the order listed)."""
    unknown = set(given) - set(choices)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; this primitive takes {sorted(choices)}")
    out = {}
    for name, options in choices.items():
        drawn = options[rng.integers(len(options))]           # always draw, so overrides keep the stream
        out[name] = given.get(name, drawn)
        if out[name] not in options:
            raise ValueError(f"{name}={out[name]!r} is not one of {list(options)}")
    return out


def _leg_cycle(u, duty, amp):
    """One leg over a gait cycle u (T,) (any real; the cycle is u mod 1): hip flexion (T,) and stance mask (T,).
    In stance (u < duty) the foot sweeps back at constant speed, so a planted foot carries the body evenly;
    the swing (a cubic Hermite curve) leaves the floor moving forward and lands already sweeping back."""
    u = np.mod(u, 1.0)
    stance = u < duty
    s = np.clip((u - duty) / (1.0 - duty), 0.0, 1.0)          # swing progress
    sweep = 2.0 * amp * (1.0 - duty) / duty                   # stance speed, per unit of swing progress
    h00, h01 = 2 * s**3 - 3 * s**2 + 1, -2 * s**3 + 3 * s**2  # Hermite basis: end points ...
    h10, h11 = s**3 - 2 * s**2 + s, s**3 - s**2               # ... and end slopes
    swing = -amp * h00 + amp * h01 + sweep * h10 - sweep * h11
    return np.where(stance, amp * (1.0 - 2.0 * u / duty), swing), stance


def _periodic(u, values):
    """Smooth periodic curve through values at u = 0, 1/n, ..., (n-1)/n (uniform Catmull-Rom), u (T,) any real."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    x = np.mod(u, 1.0) * n
    i = np.floor(x).astype(int)
    f = x - i
    p0, p1, p2, p3 = v[(i - 1) % n], v[i % n], v[(i + 1) % n], v[(i + 2) % n]
    return p1 + 0.5 * f * (p2 - p0 + f * (2 * p0 - 5 * p1 + 4 * p2 - p3 + f * (3 * (p1 - p2) + p3 - p0)))


# Knee flexion and toe pointing over one gait cycle (u = 0 at foot strike), sampled every 10% of the cycle,
# shaped after the textbook walking curves (loading bend, pre-swing bend, swing peak) and a running variant.
_WALK_KNEE = (0.05, 0.25, 0.28, 0.15, 0.08, 0.3, 0.65, 1.0, 0.75, 0.2)
_WALK_TOE = (0.0, 0.0, 0.0, 0.0, 0.02, 0.15, 0.4, 0.2, 0.0, -0.1)
_RUN_KNEE = (0.4, 0.7, 0.55, 0.3, 0.35, 1.1, 1.7, 1.75, 1.5, 0.95)
_RUN_TOE = (0.0, 0.0, 0.0, 0.3, 0.55, 0.35, 0.1, 0.0, 0.0, 0.0)


def _gait(c, u, env, duty, hip, knee, toe, arm, elbow, lean):
    """Walking or running legs with opposite arm swing. u (T,) is the cycle (1 = two steps); the right leg is
    half a cycle behind the left; duty is the fraction of the cycle a foot is on the floor (> 0.5: walking,
    with double support; < 0.5: running, with flight); knee and toe are curves as _WALK_KNEE, _WALK_TOE.
    Returns the left and right stance masks."""
    stances, point = [], {}
    for side, offset in (("left", 0.0), ("right", 0.5)):
        flex, stance = _leg_cycle(u + offset, duty, hip)
        _swing(c, f"{side}_hip", env * flex)
        _bend(c, f"{side}_knee", env * _periodic(u + offset, knee))
        _swing(c, f"{side}_shoulder", -env * arm * flex / hip)            # arms swing against the legs
        _spread(c, f"{side}_shoulder", env * 0.08)
        _swing(c, f"{side}_elbow", env * elbow * (1.0 - 0.3 * flex / hip))
        point[side] = env * _periodic(u + offset, toe)                   # heel rise and push-off
        stances.append(stance)
    twist = (c.angles[:, _J["left_hip"], 0] - c.angles[:, _J["right_hip"], 0]) / (2 * hip)
    _twist(c, "pelvis", 0.1 * twist)                                # the forward leg's hip comes forward ...
    _twist(c, "spine3", -0.15 * twist)                              # ... the chest turns against it
    _bend(c, "spine1", env * lean)
    _bend(c, "neck", -env * lean * 0.6)                             # keep the gaze level
    _flat_feet(c, point)
    return stances


def _walk(rng, **given):
    p = _pick(rng, given, direction=("forward", "forward", "backward"), speed=("slow", "normal", "fast"),
              steps=(2, 3, 4, 5, 6, 7, 8), path=("straight", "straight", "straight", "left", "right"))
    if p["direction"] == "backward" or p["steps"] < 4:
        p["path"] = "straight"       # curves only for longer forward walks
    step_s = {"slow": 0.62, "normal": 0.53, "fast": 0.45}[p["speed"]] * rng.uniform(0.93, 1.07)
    hip = {"slow": 0.34, "normal": 0.43, "fast": 0.5}[p["speed"]] * rng.uniform(0.9, 1.1)
    if p["direction"] == "backward":
        step_s, hip = step_s * 1.15, hip * 0.75
    active = (p["steps"] + 0.5) * step_s
    t = _timeline(rng, active)
    c = _clip(len(t))
    direction = 1.0 if p["direction"] == "forward" else -1.0
    env = _envelope(t, 0.0, active, step_s)
    # the cycle starts with the left leg in mid-swing; walking backward plays the forward cycle in reverse
    u = 0.8 + direction * np.clip(t, 0.0, active) / (2 * step_s)
    _gait(c, u, env, duty=0.6, hip=hip, knee=np.array(_WALK_KNEE) * (0.6 + hip), toe=_WALK_TOE, arm=0.8 * hip,
          elbow=0.25, lean=0.05 if direction > 0 else -0.02)
    if p["path"] != "straight":
        c.heading[:] = (1.0 if p["path"] == "left" else -1.0) * np.pi / 2 * _smooth(t / active)
    return c, p


def _run(rng, **given):
    p = _pick(rng, given, speed=("jog", "run"), steps=(4, 5, 6, 7, 8, 9, 10))
    step_s = {"jog": 0.38, "run": 0.33}[p["speed"]] * rng.uniform(0.95, 1.05)
    hip = {"jog": 0.38, "run": 0.5}[p["speed"]] * rng.uniform(0.9, 1.1)
    active = (p["steps"] + 0.5) * step_s
    t = _timeline(rng, active)
    c = _clip(len(t))
    env = _envelope(t, 0.0, active, step_s)
    u = 0.8 + np.clip(t, 0.0, active) / (2 * step_s)
    left, right = _gait(c, u, env, duty=0.35, hip=hip, knee=_RUN_KNEE, toe=_RUN_TOE, arm=0.9 * hip, elbow=1.4,
                        lean=0.12)
    c.contact[:] = left | right | (env < 0.95)     # in the air between steps once the run is under way
    c.carry[:] = 1.0                                # and keeps its speed there
    for start, end in _runs(~c.contact):
        u_air = (np.arange(start, end) - start + 1.0) / (end - start + 1.0)
        c.lift[start:end] = 9.81 * ((end - start + 1) / FPS) ** 2 / 2 * u_air * (1 - u_air)
    return c, p


def _sidestep(rng, **given):
    p = _pick(rng, given, direction=("left", "right"), steps=(2, 3, 4, 5), speed=("slow", "normal", "fast"))
    cycle = {"slow": 1.1, "normal": 0.9, "fast": 0.72}[p["speed"]] * rng.uniform(0.93, 1.07)
    amp = rng.uniform(0.17, 0.24)
    active = p["steps"] * cycle
    t = _timeline(rng, active)
    c = _clip(len(t))
    lead, trail = p["direction"], _other(p["direction"])
    out_lead, out_trail, lift_lead, lift_trail = (np.zeros(len(t)) for _ in range(4))
    for k in range(p["steps"]):
        t0 = k * cycle
        # the lead leg steps out while the body moves over the trail leg, to a symmetric straddle; then the
        # body moves over the lead leg while the trail leg closes in
        out_lead += _keys(t, (t0, 0), (t0 + cycle / 2, amp), (t0 + cycle, 0))
        out_trail += _keys(t, (t0, 0), (t0 + cycle / 2, amp), (t0 + cycle, 0))
        lift_lead += _keys(t, (t0, 0), (t0 + cycle / 4, 1), (t0 + cycle / 2, 0))
        lift_trail += _keys(t, (t0 + cycle / 2, 0), (t0 + 3 * cycle / 4, 1), (t0 + cycle, 0))
    env = _envelope(t, 0.0, active, 0.2)
    for side, out, lift in ((lead, out_lead, lift_lead), (trail, out_trail, lift_trail)):
        _spread(c, f"{side}_hip", out)
        _swing(c, f"{side}_hip", 0.25 * lift)
        _bend(c, f"{side}_knee", 0.12 * env + 0.5 * lift)
        _spread(c, f"{side}_shoulder", env * 0.2)
        _swing(c, f"{side}_elbow", env * 0.4)
    _flat_feet(c)
    return c, p


def _turn(rng, **given):
    p = _pick(rng, given, direction=("left", "right"), angle=(45, 90, 90, 165), speed=("slow", "normal", "fast"))
    steps = {45: 1, 90: 2, 165: 3}[p["angle"]] + int(rng.integers(2))
    step_s = {"slow": 0.7, "normal": 0.55, "fast": 0.42}[p["speed"]] * rng.uniform(0.93, 1.07)
    active = steps * step_s
    t = _timeline(rng, active)
    c = _clip(len(t))
    sign = 1.0 if p["direction"] == "left" else -1.0
    c.heading[:] = sign * np.deg2rad(p["angle"]) * _smooth(t / active)
    for k in range(steps):              # step around on the spot, leading with the foot on the turning side
        side = p["direction"] if k % 2 == 0 else _other(p["direction"])
        lift = _keys(t, (k * step_s, 0), ((k + 0.5) * step_s, 1), ((k + 1) * step_s, 0))
        _swing(c, f"{side}_hip", 0.3 * lift)
        _bend(c, f"{side}_knee", 0.65 * lift)
        _twist(c, f"{side}_hip", 0.3 * lift * sign)
    env = _envelope(t, 0.0, active, 0.3)
    _twist(c, "spine3", 0.15 * sign * env * np.sin(np.pi * np.clip(t / active, 0, 1)))  # chest leads the turn
    for side in ("left", "right"):
        _swing(c, f"{side}_elbow", 0.3 * env)
    _flat_feet(c)
    return c, p


def _jump(rng, **given):
    p = _pick(rng, given, mode=("in_place", "forward"), count=(1, 1, 2, 3), height=("low", "high"))
    flight = {"low": 0.3, "high": 0.42}[p["height"]] * rng.uniform(0.92, 1.08)
    crouch, push, land = 0.38, 0.12, 0.45
    period = crouch + push + flight + land
    distance = rng.uniform(0.5, 0.9) if p["mode"] == "forward" else 0.0
    active = p["count"] * period
    t = _timeline(rng, active)
    c = _clip(len(t))
    bend, arms, point, tuck = (np.zeros(len(t)) for _ in range(4))
    for k in range(p["count"]):
        t0 = k * period
        up, down = t0 + crouch + push, t0 + crouch + push + flight
        bend += _keys(t, (t0, 0), (t0 + crouch, 1), (up, 0), (down, 0), (down + 0.12, 0.6), (down + land, 0))
        arms += _keys(t, (t0, 0), (t0 + crouch, -0.8), (up, 1.6), (down, 0.7), (down + land, 0))
        point += _keys(t, (t0 + crouch, 0), (up, 0.6), (down, 0.4), (down + 0.1, 0))
        tuck += _keys(t, (up, 0), ((up + down) / 2, 1), (down, 0))
        air = (t > up) & (t < down)
        c.contact[air] = False
        u = (t[air] - up) / flight
        c.lift[air] = 9.81 * flight ** 2 / 2 * u * (1 - u)         # ballistic arc, peak g*tf^2/8
        c.push[air, 1] = distance / flight
    lean = 1.0 if p["mode"] == "forward" else 0.6
    for side in ("left", "right"):
        _swing(c, f"{side}_hip", 0.95 * bend + 0.35 * tuck)
        _bend(c, f"{side}_knee", 1.5 * bend + 0.6 * tuck)
        _swing(c, f"{side}_shoulder", arms)
        _swing(c, f"{side}_elbow", 0.25 * _envelope(t, 0, active, 0.2))
        _spread(c, f"{side}_shoulder", 0.1 * np.abs(arms))
    _bend(c, "spine1", 0.35 * lean * bend)
    _bend(c, "spine2", 0.15 * lean * bend)
    _flat_feet(c, {"left": point, "right": point})
    return c, p


def _squat(rng, **given):
    p = _pick(rng, given, count=(1, 2, 3, 4), depth=("shallow", "deep"), speed=("slow", "normal"))
    d = {"shallow": 0.6, "deep": 1.0}[p["depth"]] * rng.uniform(0.9, 1.05)
    down = {"slow": 0.8, "normal": 0.55}[p["speed"]] * rng.uniform(0.9, 1.1)
    hold = rng.uniform(0.1, 0.4)
    period = 2 * down + hold + 0.1
    active = p["count"] * period
    t = _timeline(rng, active)
    c = _clip(len(t))
    s = sum(_keys(t, (k * period, 0), (k * period + down, d), (k * period + down + hold, d),
                  (k * period + 2 * down + hold, 0)) for k in range(p["count"]))
    arms = _envelope(t, 0.0, active, down) * rng.uniform(1.1, 1.5)
    pelvis = 0.35 * s                   # pelvis tips forward; thigh ~75 deg, shin ~30 deg, chest ~30 deg forward
    _bend(c, "pelvis", pelvis)
    for side in ("left", "right"):
        _swing(c, f"{side}_hip", 1.3 * s + pelvis)
        _bend(c, f"{side}_knee", 1.85 * s)
        _swing(c, f"{side}_shoulder", arms * (0.5 + 0.5 * s / d) + pelvis)   # arms reach forward for balance
        _spread(c, f"{side}_hip", 0.12 * s)
    _bend(c, "spine2", 0.05 * s)
    _bend(c, "neck", -0.3 * s)
    _flat_feet(c)
    return c, p


def _wave(rng, **given):
    p = _pick(rng, given, side=("left", "right"), count=(2, 3, 4, 5))
    raise_s, per = rng.uniform(0.45, 0.65), rng.uniform(0.4, 0.6)
    active = 2 * raise_s + p["count"] * per
    t = _timeline(rng, active)
    c = _clip(len(t))
    up = _keys(t, (0, 0), (raise_s, 1), (active - raise_s, 1), (active, 0))
    wag = np.sin(2 * np.pi * (t - raise_s) / per) * _envelope(t, raise_s, active - raise_s, 0.15)
    alpha = rng.uniform(1.4, 1.9)
    side = p["side"]
    _spread(c, f"{side}_shoulder", alpha * up)
    _reach(c, f"{side}_shoulder", 0.35 * up)
    _spread(c, f"{side}_elbow", (np.pi - alpha - 0.15) * up + 0.35 * wag)   # forearm up, swinging side to side
    _spread(c, f"{side}_collar", 0.1 * up)
    _bend(c, "neck", -0.05 * up)
    return c, p


def _raise(rng, **given):
    p = _pick(rng, given, side=("left", "right", "both"), mode=("up", "forward", "side"))
    move, hold = rng.uniform(0.6, 0.9), rng.uniform(0.5, 1.5)
    active = 2 * move + hold
    t = _timeline(rng, active)
    c = _clip(len(t))
    a = _keys(t, (0, 0), (move, 1), (move + hold, 1), (active, 0))
    for side in (("left", "right") if p["side"] == "both" else (p["side"],)):
        if p["mode"] == "up":
            _spread(c, f"{side}_shoulder", 2.75 * a)
            _reach(c, f"{side}_shoulder", 0.25 * a)
            _spread(c, f"{side}_collar", 0.15 * a)
        elif p["mode"] == "forward":
            _swing(c, f"{side}_shoulder", 1.5 * a)
            _spread(c, f"{side}_shoulder", -0.05 * a)
        else:
            _spread(c, f"{side}_shoulder", 1.45 * a)
        _swing(c, f"{side}_elbow", -0.1 * a)   # straighten the slight resting bend
    return c, p


def _kick(rng, **given):
    p = _pick(rng, given, side=("left", "right"), count=(1, 1, 2, 3), height=("low", "high"))
    per = rng.uniform(1.0, 1.25)
    top = {"low": 0.85, "high": 1.35}[p["height"]] * rng.uniform(0.9, 1.1)
    active = p["count"] * per
    t = _timeline(rng, active)
    c = _clip(len(t))
    hip, knee, lean = (np.zeros(len(t)) for _ in range(3))
    for k in range(p["count"]):      # chamber the knee, snap the leg out, pull it back, put the foot down
        lift, snap, back, down = ((k + x) * per for x in (0.3, 0.45, 0.6, 0.9))
        hip += _keys(t, (k * per, 0), (lift, 0.6 * top), (snap, top), (back, 0.6 * top), (down, 0))
        knee += _keys(t, (k * per, 0), (lift, 1.6), (snap, 0.1), (back, 1.3), (down, 0))
        lean += _keys(t, (k * per, 0), (snap, 1), (down, 0))
    env = _envelope(t, 0, active, 0.3)
    kicker, stand = p["side"], _other(p["side"])
    _swing(c, f"{kicker}_hip", hip)
    _bend(c, f"{kicker}_knee", knee)
    _bend(c, f"{stand}_knee", 0.12 * env)
    _bend(c, "spine1", -0.2 * lean * top)
    for side, arm in ((stand, 0.5), (kicker, -0.35)):
        _swing(c, f"{side}_shoulder", arm * env)
        _spread(c, f"{side}_shoulder", 0.25 * env)
        _swing(c, f"{side}_elbow", 0.8 * env)
    _flat_feet(c, {kicker: 0.5 * lean})
    return c, p


def _punch(rng, **given):
    p = _pick(rng, given, side=("left", "right", "both"), count=(2, 3, 4, 5, 6))
    guard, per = rng.uniform(0.4, 0.6), rng.uniform(0.38, 0.55)
    active = 2 * guard + p["count"] * per
    t = _timeline(rng, active)
    c = _clip(len(t))
    g = _keys(t, (0, 0), (guard, 1), (active - guard, 1), (active, 0))
    first = p["side"] if p["side"] != "both" else ("left", "right")[rng.integers(2)]
    ext = {"left": np.zeros(len(t)), "right": np.zeros(len(t))}
    for k in range(p["count"]):
        side = first if p["side"] != "both" or k % 2 == 0 else _other(first)
        t0 = guard + k * per
        ext[side] += _keys(t, (t0, 0), (t0 + 0.35 * per, 1), (t0 + 0.9 * per, 0))
    for side in ("left", "right"):
        e = ext[side]
        _swing(c, f"{side}_shoulder", 0.55 * g + 0.95 * e)
        _spread(c, f"{side}_shoulder", -0.15 * g - 0.1 * e)
        _swing(c, f"{side}_elbow", 2.0 * g - 1.9 * e)
        _twist(c, "spine3", -_SIDE_SIGN[_J[f"{side}_hip"]] * 0.3 * e)  # the punching shoulder comes forward
        _bend(c, f"{side}_knee", 0.15 * g)
    _flat_feet(c)
    return c, p


def _jumping_jacks(rng, **given):
    p = _pick(rng, given, count=(2, 3, 4, 5, 6), speed=("normal", "fast"))
    per = {"normal": 0.95, "fast": 0.78}[p["speed"]] * rng.uniform(0.95, 1.05)
    air = 0.26
    active = p["count"] * per + 0.3
    t = _timeline(rng, active)
    c = _clip(len(t))
    open_, absorb = np.zeros(len(t)), np.zeros(len(t))
    for k in range(2 * p["count"]):           # hop out (arms up, legs apart), hop in (arms down, legs together)
        t0 = 0.15 + k * per / 2
        target = 1.0 if k % 2 == 0 else -1.0
        open_ += target * _keys(t, (t0, 0), (t0 + air, 1))
        absorb += _keys(t, (t0 - 0.12, 0), (t0 - 0.02, 1), (t0 + air, 0.2), (t0 + air + 0.12, 1), (t0 + air + 0.3, 0))
        inside = (t > t0) & (t < t0 + air)
        c.contact[inside] = False
        u = (t[inside] - t0) / air
        c.lift[inside] = 9.81 * air ** 2 / 2 * u * (1 - u)
    for side in ("left", "right"):
        _spread(c, f"{side}_hip", 0.28 * open_)
        _bend(c, f"{side}_knee", 0.35 * absorb)
        _swing(c, f"{side}_hip", 0.15 * absorb)
        _spread(c, f"{side}_shoulder", 2.6 * open_)
        _reach(c, f"{side}_shoulder", 0.15 * open_)
        _swing(c, f"{side}_elbow", 0.2 * open_)
    point = 0.15 * c.lift / c.lift.max()                     # toes pointed in the air
    _flat_feet(c, {"left": point, "right": point})
    return c, p


def _bow(rng, **given):
    p = _pick(rng, given, count=(1, 1, 2), depth=("slight", "deep"))
    depth = {"slight": 0.55, "deep": 1.1}[p["depth"]] * rng.uniform(0.9, 1.1)
    down, hold = rng.uniform(0.6, 0.9), rng.uniform(0.3, 0.9)
    per = 2 * down + hold
    active = p["count"] * per
    t = _timeline(rng, active)
    c = _clip(len(t))
    b = sum(_keys(t, (k * per, 0), (k * per + down, depth), (k * per + down + hold, depth), ((k + 1) * per, 0))
            for k in range(p["count"]))
    _bend(c, "pelvis", 0.45 * b)       # mostly from the hips, legs stay vertical
    for side in ("left", "right"):
        _swing(c, f"{side}_hip", 0.45 * b)
        _swing(c, f"{side}_shoulder", 0.8 * b)    # arms hang towards the floor
    for j in ("spine1", "spine2", "spine3"):
        _bend(c, j, 0.55 * b / 3)
    _bend(c, "neck", 0.1 * b)
    _flat_feet(c)
    return c, p


def _clap(rng, **given):
    p = _pick(rng, given, count=(2, 3, 4, 5, 6, 8))
    up, per = rng.uniform(0.4, 0.55), rng.uniform(0.32, 0.48)
    active = 2 * up + p["count"] * per
    t = _timeline(rng, active)
    c = _clip(len(t))
    a = _keys(t, (0, 0), (up, 1), (active - up, 1), (active, 0))
    close = sum(_keys(t, (up + k * per, 0), (up + (k + 0.5) * per, 1), (up + (k + 1) * per, 0))
                for k in range(p["count"]))
    for side in ("left", "right"):
        _swing(c, f"{side}_shoulder", 0.75 * a)
        _swing(c, f"{side}_elbow", 1.25 * a)
        _spread(c, f"{side}_shoulder", 0.3 * a)
        _reach(c, f"{side}_shoulder", 0.25 * a + 0.52 * close)
    return c, p


def _balance(rng, **given):
    p = _pick(rng, given, side=("left", "right"), mode=("knee", "back"))
    move, hold = rng.uniform(0.6, 0.8), rng.uniform(1.0, 2.2)
    active = 2 * move + hold
    t = _timeline(rng, active)
    c = _clip(len(t))
    a = _keys(t, (0, 0), (move, 1), (move + hold, 1), (active, 0))
    free = _other(p["side"])
    if p["mode"] == "knee":
        _swing(c, f"{free}_hip", 1.25 * a)
        _bend(c, f"{free}_knee", 1.6 * a)
    else:
        _swing(c, f"{free}_hip", -0.15 * a)
        _bend(c, f"{free}_knee", 1.75 * a)
    wobble = 0.06 * np.sin(2 * np.pi * t / rng.uniform(0.9, 1.4)) * a
    for side in ("left", "right"):
        _spread(c, f"{side}_shoulder", (1.2 + wobble) * a)
        _swing(c, f"{side}_elbow", 0.2 * a)
    _bend(c, f"{p['side']}_knee", 0.08 * a)
    _flat_feet(c, {free: 0.4 * a})
    return c, p


def _throw(rng, **given):
    p = _pick(rng, given, side=("left", "right"))
    wind, release = rng.uniform(0.55, 0.75), rng.uniform(0.18, 0.26)
    active = wind + release + 0.8
    t = _timeline(rng, active)
    c = _clip(len(t))
    w = _keys(t, (0, 0), (wind, 1), (wind + release, 0))                       # arm cocked back
    r = _keys(t, (wind, 0), (wind + release, 1), (wind + release + 0.15, 1), (active, 0))  # follow-through
    side, sign = p["side"], _SIDE_SIGN[_J[p["side"] + "_hip"]]
    _spread(c, f"{side}_shoulder", 1.7 * w + 0.5 * r)
    _reach(c, f"{side}_shoulder", -0.6 * w + 0.9 * r)
    _swing(c, f"{side}_shoulder", 0.7 * r)
    _spread(c, f"{side}_elbow", 1.4 * w)
    _swing(c, f"{side}_elbow", 0.2 * r)
    _twist(c, "spine3", sign * (0.4 * w - 0.35 * r))     # shoulders wind up and then whip through
    _bend(c, "spine2", 0.25 * r)
    other = _other(side)
    _spread(c, f"{other}_shoulder", 0.5 * w + 0.2 * r)
    _swing(c, f"{other}_shoulder", 0.5 * w)
    _swing(c, f"{other}_elbow", 0.6 * (w + r))
    _bend(c, "left_knee", 0.1 * (w + r))
    _bend(c, "right_knee", 0.1 * (w + r))
    _flat_feet(c)
    return c, p


def _hop(rng, **given):
    p = _pick(rng, given, side=("left", "right"), count=(2, 3, 4, 5), mode=("in_place", "forward"))
    lift_s, crouch, flight = 0.45, 0.22, rng.uniform(0.22, 0.3)
    per = crouch + flight + 0.12
    active = 2 * lift_s + p["count"] * per
    t = _timeline(rng, active)
    c = _clip(len(t))
    a = _keys(t, (0, 0), (lift_s, 1), (active - lift_s, 1), (active, 0))
    bend, point = np.zeros(len(t)), np.zeros(len(t))
    step = rng.uniform(0.2, 0.35) if p["mode"] == "forward" else 0.0
    for k in range(p["count"]):
        t0 = lift_s + k * per
        up, down = t0 + crouch, t0 + crouch + flight
        bend += _keys(t, (t0, 0), (t0 + crouch * 0.7, 1), (up, 0), (down, 0), (down + 0.06, 0.8), (t0 + per, 0))
        point += _keys(t, (t0 + crouch * 0.6, 0), (up, 0.5), (down, 0.3), (down + 0.05, 0))
        air = (t > up) & (t < down)
        c.contact[air] = False
        u = (t[air] - up) / flight
        c.lift[air] = 9.81 * flight ** 2 / 2 * u * (1 - u)
        c.push[air, 1] = step / flight
    stand, free = p["side"], _other(p["side"])
    _swing(c, f"{free}_hip", 0.5 * a)
    _bend(c, f"{free}_knee", 1.3 * a)
    _swing(c, f"{stand}_hip", 0.45 * bend)
    _bend(c, f"{stand}_knee", 0.8 * bend + 0.05 * a)
    _bend(c, "spine1", 0.15 * bend)
    for side in ("left", "right"):
        _spread(c, f"{side}_shoulder", 0.45 * a)
        _swing(c, f"{side}_elbow", 0.6 * a)
        _swing(c, f"{side}_shoulder", 0.3 * bend)
    _flat_feet(c, {stand: point, free: 0.3 * a})
    return c, p


PRIMITIVES = {  # name -> builder(rng, **overrides) -> (_Clip, parameters)
    "walk": _walk, "run": _run, "sidestep": _sidestep, "turn": _turn, "jump": _jump, "squat": _squat,
    "wave": _wave, "raise": _raise, "kick": _kick, "punch": _punch, "jumping_jacks": _jumping_jacks,
    "bow": _bow, "clap": _clap, "balance": _balance, "throw": _throw, "hop": _hop,
}


# -----------------------------------------------------------------------------
# 3. Composition and root placement
# -----------------------------------------------------------------------------

_BLEND = int(round(0.3 * FPS))   # crossfade 0.3 s of rotations between consecutive actions


def _concat(a, b):
    """Crossfade clip b onto the end of clip a over _BLEND frames; b's heading continues from a's."""
    n = _BLEND
    w = _smooth((np.arange(n) + 1.0) / (n + 1.0))
    heading_b = b.heading + a.heading[-1]

    def fade(x, y):
        ww = w.reshape((n,) + (1,) * (x.ndim - 1))
        return np.concatenate([x[:-n], (1 - ww) * x[-n:] + ww * y[:n], y[n:]])

    return _Clip(fade(a.angles, b.angles), fade(a.heading, heading_b),
                 np.concatenate([a.contact[:-n], a.contact[-n:] & b.contact[:n], b.contact[n:]]),
                 fade(a.lift, b.lift), fade(a.push, b.push), fade(a.carry, b.carry))


def _runs(mask):
    """(start, end) of each run of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _place_root(c):
    """Joint positions (T, 22, 3): the lowest foot joint rests on the floor (y = 0) and the supporting foot
    does not slide; in the air the root follows a ballistic arc and keeps its take-off velocity."""
    rel = forward_kinematics(c.angles, c.heading)               # (T, J, 3), root at the origin
    feet = rel[:, _FEET]                                        # (T, 4, 3)
    low = feet[..., 1].min(axis=1)
    height = -low
    air = ~c.contact
    if air.any():
        frames = np.arange(len(c))
        height[air] = np.interp(frames[air], frames[~air], height[~air]) + c.lift[air]
        height[air] = np.maximum(height[air], -low[air])        # never push a foot through the floor
    # Supporting foot = softly the lowest foot joint; the root moves opposite to its motion relative to the root.
    weight = np.exp(-(feet[..., 1] - low[:, None]) / 0.01)
    weight /= weight.sum(axis=1, keepdims=True)
    step = -(weight[:-1, :, None] * (feet[1:, :, ::2] - feet[:-1, :, ::2])).sum(axis=1)   # (T-1, 2) x, z
    cos, sin = np.cos(c.heading), np.sin(c.heading)
    push = np.stack([cos * c.push[:, 0] + sin * c.push[:, 1], -sin * c.push[:, 0] + cos * c.push[:, 1]], -1)
    for start, end in _runs(air[1:] | air[:-1]):                # transitions that touch the air
        momentum = step[max(0, start - 3):start].mean(axis=0) if start > 0 else np.zeros(2)
        step[start:end] = c.carry[start:end, None] * momentum + push[start:end] / FPS
    root = np.zeros((len(c), 3))
    root[1:, 0], root[1:, 2] = np.cumsum(step[:, 0]), np.cumsum(step[:, 1])
    root[:, 1] = height
    return rel + root[:, None]


def make_motion(actions, rng):
    """Joint positions (T, 22, 3) float64 and [(name, parameters), ...] of a list of actions [(name, overrides)],
    e.g. [("walk", {"direction": "forward"}), ("wave", {"side": "right"})]; rng: np.random.Generator.

    Frame 0 is the rest pose at the origin facing +Z with the feet on the floor, i.e. HumanML3D's canonical
    frame, so joints_to_features -> features_to_joints gives back joints[:-1]. The body's yaw stays within
    +-165 degrees: past 180 the feature pipeline's arcsin flips sign (HumanML3D issue #156, kept in data.py),
    which would break that round trip and teach the model a spurious spin.
    """
    clip, described, heading = None, [], 0.0
    for name, overrides in actions:
        if name not in PRIMITIVES:
            raise ValueError(f"unknown action {name!r}; expected one of {sorted(PRIMITIVES)}")
        for _ in range(20):     # redraw the free parameters until the turn keeps the heading in range
            part, params = PRIMITIVES[name](rng, **overrides)
            if np.abs(heading + part.heading).max() <= MAX_HEADING + 1e-9:
                break
        else:
            raise ValueError(f"{name} {overrides} would turn the body past +-165 degrees (already at "
                             f"{np.rad2deg(heading):.0f}); turn the other way or less")
        heading += part.heading[-1]
        clip = part if clip is None else _concat(clip, part)
        described.append((name, params))
    if len(clip) < MIN_FRAMES:      # too short for the loaders: stand still a little longer
        clip = _concat(clip, _clip(MIN_FRAMES - len(clip) + _BLEND))
    return _place_root(clip), described


def sample_motion(rng):
    """A random composition of 1-3 actions: joints (T, 22, 3) with MIN_FRAMES <= T <= MAX_FRAMES, and
    [(name, parameters), ...]."""
    names = list(PRIMITIVES)
    for _ in range(100):
        k = 1 + int(rng.choice(3, p=[0.4, 0.4, 0.2]))
        chosen = []
        while len(chosen) < k:
            name = names[rng.integers(len(names))]
            if not chosen or name != chosen[-1]:
                chosen.append(name)
        joints, described = make_motion([(n, {}) for n in chosen], rng)
        if len(joints) <= MAX_FRAMES:
            return joints, described
    raise RuntimeError("could not draw a motion short enough; this is a bug in synthetic.py")


# -----------------------------------------------------------------------------
# 4. Captions: three paraphrases per motion from templates (synonyms, word order, numbers as words or digits).
#    Phrases are verb phrases in the third person; a subject and connectors ("..., then ...") join them.
# -----------------------------------------------------------------------------

_SUBJECTS = (("a person", "their"), ("a person", "his"), ("a man", "his"), ("someone", "their"),
             ("the person", "their"), ("a woman", "her"), ("the man", "his"), ("a person", "her"))


def _count(n, rng):
    return str(n) if rng.random() < 0.3 else _NUMBER_WORDS[n]


def _times(n, rng):
    options = {1: ["once", "one time"], 2: ["twice", "two times", "2 times"]}.get(
        n, [f"{_NUMBER_WORDS[n]} times", f"{n} times"])
    return options[rng.integers(len(options))]


def _phrases(name, p, rng, his):
    """Candidate verb phrases for one action with parameters p; `his` is the subject's possessive."""
    n = p.get("count", p.get("steps", 1))
    N, X = _count(n, rng), _times(n, rng)
    d = p.get("side", p.get("direction", ""))
    o = _other(d) if d in ("left", "right") else ""
    if name == "walk":
        if p["direction"] == "backward":
            back = ("backward", "backwards", "back")[rng.integers(3)]
            return [f"walks {back}", f"takes {N} steps {back}", f"steps {back}", f"moves {back}",
                    f"walks {back} slowly" if p["speed"] == "slow" else f"walks {back} {N} steps"]
        if p["path"] != "straight":
            side = p["path"]
            return [f"walks forward and curves to the {side}", f"walks forward while turning {side}",
                    f"walks in a curve to the {side}", f"walks forward, turning to the {side}"]
        adverb = {"slow": ["slowly", "slowly"], "normal": ["", "straight"], "fast": ["quickly", "briskly"]}
        adv = adverb[p["speed"]][rng.integers(2)]
        adj = {"slow": "slow ", "normal": "", "fast": "quick "}[p["speed"]]
        out = [f"walks {adv} forward", f"walks forward {adv}", f"takes {N} {adj}steps forward",
               f"walks {N} steps forward", "moves forward" + (" " + adv if adv != "straight" else "")]
        if p["speed"] == "slow":
            out.append("strolls forward")
        return out
    if name == "run":
        if p["speed"] == "jog":
            return ["jogs forward", "jogs ahead", "runs slowly forward", "jogs in a straight line"]
        return ["runs forward", "runs straight ahead", "runs quickly forward", f"runs {N} steps forward"]
    if name == "sidestep":
        return [f"sidesteps to the {d}", f"steps sideways to the {d}", f"moves sideways to the {d}",
                f"shuffles to {his} {d}", f"takes {N} steps to the {d}", f"walks sideways to the {d}"]
    if name == "turn":
        if p["angle"] == 45:
            return [f"turns slightly to the {d}", f"turns a little to the {d}", f"turns {d} a bit"]
        if p["angle"] == 90:
            return [f"turns {d}", f"turns to the {d}", f"turns 90 degrees to the {d}",
                    f"turns ninety degrees {d}", f"makes a {d} turn", f"rotates to {his} {d}"]
        spin = "counterclockwise" if d == "left" else "clockwise"
        return ["turns around", f"turns around to the {d}", f"turns around {spin}",
                "turns to face the opposite direction", f"turns {d} all the way around"]
    if name == "jump":
        high = " high" if p["height"] == "high" else ""
        if p["mode"] == "forward":
            if n == 1:
                return ["jumps forward", "leaps forward", "jumps forward with both feet", "does a long jump"]
            return [f"jumps forward {X}", f"leaps forward {X}", f"does {N} jumps forward"]
        if n == 1:
            return [f"jumps{high}", f"jumps up{high}", "jumps in place", f"does a{high} jump" if high else "jumps once"]
        return [f"jumps {X}", f"jumps up and down {X}", f"hops in place {X}", f"jumps in place {X}",
                f"does {N} jumps"]
    if name == "squat":
        deep = "deep " if p["depth"] == "deep" else ""
        if n == 1:
            return ["squats down and stands back up", "crouches down and gets back up", f"does a {deep}squat",
                    "squats once", "bends the knees into a squat and stands up again"]
        return [f"squats {X}", f"does {N} {deep}squats", f"squats down and stands up {X}", f"crouches down {X}"]
    if name == "wave":
        return [f"waves {his} {d} hand", f"waves with {his} {d} hand", f"raises {his} {d} hand and waves",
                f"waves with the {d} hand", f"lifts the {d} arm and waves {X}", f"waves the {d} hand {X}"]
    if name == "raise":
        if d == "both":
            return {"up": ["raises both arms above " + his + " head", "lifts both hands up", "puts both hands up",
                           "reaches up with both arms", "raises both arms up in the air"],
                    "forward": ["holds both arms out in front", "raises both arms in front of " + his + " body",
                                "stretches both arms forward", "lifts both arms forward"],
                    "side": ["stretches both arms out to the sides", "raises both arms out to the sides",
                             "holds both arms out sideways", "lifts both arms sideways"]}[p["mode"]]
        return {"up": [f"raises {his} {d} arm above {his} head", f"lifts the {d} arm up",
                       f"puts {his} {d} hand up in the air", f"reaches up with {his} {d} hand"],
                "forward": [f"raises {his} {d} arm in front of {his} body", f"holds the {d} arm out in front",
                            f"lifts {his} {d} arm forward", f"stretches the {d} arm forward"],
                "side": [f"raises {his} {d} arm out to the side", f"lifts the {d} arm sideways",
                         f"holds {his} {d} arm out to the side", f"stretches the {d} arm out to the side"]
                }[p["mode"]]
    if name == "kick":
        high, kick = ("high ", "kicks high") if p["height"] == "high" else ("", "kicks")
        if n == 1:
            return [f"{kick} with {his} {d} leg", f"kicks forward with {his} {d} foot",
                    f"does a {high}kick with the {d} leg", f"kicks {his} {d} leg out in front"]
        return [f"{kick} {X} with {his} {d} leg", f"does {N} {high}kicks with the {d} foot",
                f"kicks forward with {his} {d} leg {X}"]
    if name == "punch":
        if d == "both":
            return [f"punches {X} with both fists", f"throws {N} punches, alternating hands",
                    "punches forward with both hands", f"boxes, throwing {N} punches"]
        return [f"punches with {his} {d} fist", f"punches forward {X} with {his} {d} hand",
                f"throws {N} punches with the {d} hand", f"punches {X} with the {d} arm"]
    if name == "jumping_jacks":
        return [f"does {N} jumping jacks", f"performs {N} jumping jacks", "does jumping jacks",
                f"does jumping jacks {X}"]
    if name == "bow":
        deep = " deeply" if p["depth"] == "deep" else ""
        if n == 1:
            return [f"bows{deep}", "bows forward", f"takes a{' deep' if deep else ''} bow",
                    "bends forward at the waist", "bows down", "bends over and stands back up"]
        return [f"bows {X}", f"bows forward {X}", f"takes a bow {X}", f"bends forward at the waist {X}"]
    if name == "clap":
        return [f"claps {X}", f"claps {his} hands {X}", f"claps {his} hands together", f"claps {N} times",
                f"claps in front of {his} chest"]
    if name == "balance":
        if p["mode"] == "knee":
            return [f"lifts {his} {o} knee and balances on {his} {d} leg", f"stands on {his} {d} leg",
                    f"balances on {his} {d} foot", f"raises the {o} knee and stands on one leg"]
        return [f"stands on {his} {d} leg", f"balances on the {d} foot",
                f"lifts {his} {o} foot behind {his} body and balances on the {d} leg"]
    if name == "throw":
        return [f"throws something with {his} {d} hand", f"throws a ball with {his} {d} arm",
                f"makes an overhand throw with the {d} arm", f"winds up and throws with the {d} hand",
                f"throws an object overhand with {his} {d} hand"]
    if name == "hop":
        if p["mode"] == "forward":
            return [f"hops forward on {his} {d} leg", f"hops forward {X} on the {d} foot",
                    f"jumps forward on {his} {d} leg {X}"]
        return [f"hops on {his} {d} leg {X}", f"hops {X} on the {d} foot", f"jumps on {his} {d} leg {X}",
                f"hops in place on {his} {d} foot"]
    raise ValueError(f"no caption templates for action {name!r}")


def _gerund(phrase):
    """'walks forward and turns' -> 'walking forward and turning' (first verb, and verbs after 'and')."""
    words, seen_verb = phrase.split(" "), False
    for i, w in enumerate(words):
        if w in _THIRD_PERSON and (not seen_verb or words[i - 1] == "and"):
            words[i], seen_verb = _THIRD_PERSON[w], True
    return " ".join(words)


def _caption(described, rng):
    """One caption (str) for the actions [(name, parameters), ...]."""
    subject, his = _SUBJECTS[rng.integers(len(_SUBJECTS))]
    parts = []
    for name, p in described:
        options = [" ".join(x.split()) for x in _phrases(name, p, rng, his)]
        parts.append(options[rng.integers(len(options))])
    k = len(parts)
    if k == 1:
        forms = ["{S} {0}", "{S} {0}", "{S} is {g0}"]
    elif k == 2:
        forms = ["{S} {0}, then {1}", "{S} {0} and then {1}", "{S} {0}, and then {1}", "{S} first {0}, then {1}",
                 "{S} {0} and {1}", "{S} {0} before {g1}", "{S} is {g0}, then {1}"]
    else:
        forms = ["{S} {0}, {1}, and then {2}", "{S} {0}, then {1}, then {2}",
                 "{S} first {0}, then {1}, and finally {2}", "{S} {0}, {1} and {2}"]
    text = forms[rng.integers(len(forms))].format(*parts, S=subject, **{f"g{i}": _gerund(x) for i, x in
                                                                          enumerate(parts)})
    return text + ("." if rng.random() < 0.7 else "")


def _text_lines(described, rng, num=3):
    """num distinct HumanML3D text lines 'caption#tokens#0.0#0.0' for one motion."""
    captions = []
    for _ in range(10 * num):
        cap = _caption(described, rng)
        if cap not in captions:
            captions.append(cap)
        if len(captions) == num:
            break
    return [f"{cap}#{tokenize(cap)}#0.0#0.0" for cap in captions]


# -----------------------------------------------------------------------------
# 5. Writing the dataset (layout of spec A.8)
# -----------------------------------------------------------------------------

MARKER = "synthetic.json"
# By motion, the rest is train: HumanML3D's released split files (train 23,384 / val 1,460 / test 4,384 with mirrors,
# ~80/5/15), not the paper's text (0.8:0.15:0.05); see README "Choices". 2,000 motions: 600 test samples with mirrors.
_SPLIT_FRACTIONS = {"val": 0.05, "test": 0.15}


def _marker(seed, num_motions):
    return {"generator": "synthetic.py", "version": VERSION, "seed": int(seed), "num_motions": int(num_motions)}


def _splits(num_motions, seed):
    """{split: motion ids}; data.DatasetWriter adds each one's mirror to the same split."""
    order = np.random.default_rng([seed, 1]).permutation(num_motions)
    n_val = max(1, int(round(_SPLIT_FRACTIONS["val"] * num_motions)))
    n_test = max(1, int(round(_SPLIT_FRACTIONS["test"] * num_motions)))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {k: [f"{i:06d}" for i in v] for k, v in parts.items()}


def generate_dataset(out_dir, num_motions=2000, seed=0, progress=True):
    """Write num_motions motions and their mirrors in the HumanML3D layout under out_dir; returns the Path."""
    if int(num_motions) < 3:
        raise ValueError(f"num_motions must be >= 3 (one each for train, val and test), got {num_motions}")
    writer = DatasetWriter(out_dir, MARKER, _marker(seed, num_motions))
    for i in tqdm(range(num_motions), desc="synthetic motions", disable=not progress):
        rng = np.random.default_rng([seed, 0, i])         # motion i depends on (seed, i) only
        for _ in range(10):
            joints, described = sample_motion(rng)
            vecs = joints_to_features(joints)                               # (T-1, 263) float32
            # Redraw the rare motion that does not survive the round trip, e.g. if the heading that the feature
            # code measures from hips and shoulders still wraps past 180 degrees (see make_motion).
            if np.abs(features_to_joints(vecs) - joints[:-1]).max() < 1e-4:
                break
        writer.add(f"{i:06d}", joints, _text_lines(described, rng), features=vecs)   # and its mirror M<id>
    return writer.finish(_splits(num_motions, seed))


def ensure_dataset(out_dir, num_motions=None, seed=None):
    """The synthetic dataset at out_dir, generated first if missing, incomplete or made differently; -> Path.

    num_motions / seed None accept whatever complete dataset is there (and generate 2000 motions with seed 0 if
    there is none), so every script of a run reads the same data whatever its own seed.
    """
    out = Path(out_dir)
    marker = read_marker(out, MARKER)
    num_motions = marker.get("num_motions", 2000) if num_motions is None else num_motions
    seed = marker.get("seed", 0) if seed is None else seed
    if marker != {**_marker(seed, num_motions), "complete": True} or not (out / "Std.npy").exists():
        generate_dataset(out, num_motions=num_motions, seed=seed)
    return out


# -----------------------------------------------------------------------------
# 6. CLI
# -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write the built-in synthetic text-to-motion dataset in the HumanML3D layout "
                    "(new_joint_vecs/, new_joints/, texts/, Mean.npy, Std.npy, split files). Each motion also "
                    "gets a left/right mirrored copy M<id>, so the folder holds 2 x --num-motions clips.")
    parser.add_argument("--out", type=folder_path, default="data/synthetic",
                        help="output folder (default: data/synthetic)")
    parser.add_argument("--num-motions", type=int_range(3), default=2000,
                        help="number of motions before mirroring, >= 3 (default: 2000)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed; the same seed writes the same bytes")
    args = parser.parse_args(argv)
    start = time.time()
    with user_errors():
        out = generate_dataset(args.out, num_motions=args.num_motions, seed=args.seed)
    seconds = time.time() - start
    splits = {s: len((out / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")}
    captions = sum(len(p.read_text().splitlines()) for p in (out / "texts").glob("*.txt"))
    print(f"wrote {2 * args.num_motions} clips ({args.num_motions} motions + mirrors), {captions} captions "
          f"to {out.resolve()} in {seconds:.1f} s; splits train {splits['train']} / val {splits['val']} / "
          f"test {splits['test']} clips")


if __name__ == "__main__":
    main()
