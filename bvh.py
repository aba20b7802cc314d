"""
BVH motion capture files: read them, compute their joint positions, and retarget them onto the HumanML3D (t2m) and
KIT-ML skeletons, so that real mocap becomes a dataset LUMA trains on (the data of paper App. A, from a file format).

A BVH file (Biovision Hierarchy) has two parts:
    HIERARCHY   a tree of joints: each has an OFFSET from its parent (in the parent's frame), a CHANNELS list of
                positions and Euler rotations in file order, and child joints or an End Site (a leaf offset)
    MOTION      "Frames: T", "Frame Time: dt", then T lines with one value per channel of every joint, in tree order
Forward kinematics, per frame, joints in tree order (a parent before its children):
    t_j = OFFSET_j, each axis replaced by the joint's position channel on that axis if it has one
    R_j = R_a1(v1) R_a2(v2) R_a3(v3)         the rotation channels in file order (degrees), as one rotation matrix
    R^w_j = R^w_parent R_j,   p_j = R^w_parent t_j + p_parent                  (the root's parent is the identity)
    an End Site below joint j is at R^w_j offset + p_j
Retargeting maps each target joint to one source joint, or to the midpoint of two (a joint map, JSON-writable), then
converts units to metres, Z-up sources to Y-up, and resamples to the skeleton's frame rate by interpolating positions.
data.joints_to_features turns the result into HumanML3D features exactly as for HumanML3D's own clips.

Chapters: 1 reading, 2 forward kinematics, 3 retargeting, 4 units, axes and frame rate, 5 the Bandai-Namco labels
and captions, 6 importing a dataset (and checking one), 7 command line.
Public API (numpy only; `import bvh` works with this file alone):
    read_bvh(path) / parse_bvh(bytes) -> BVH          forward_kinematics(bvh, end_sites=False) -> (T, J, 3)
    JOINT_MAPS, joint_map_for(name | path, kind), read_joint_map(path)
    retarget(positions, names, joint_map, target_names) -> (T, J', 3)
    coincident_joints, separate_coincident_joints     infer_scale, to_y_up, resample, windows
The dataset import and check use data.py, imported where they are needed:
    import_dataset(sources, out, fmt, ...) -> report   ensure_bandai(out)   check_dataset(root) -> per-clip measures
Command line:
    python bvh.py fk FILE.bvh --out positions.npz
    python bvh.py import --format bandai --src DIR_OR_TAR_XZ [--src ...] --out data/bandai
    python bvh.py import --src DIR --joint-map map.json --captions captions.csv --out data/mydata
    python bvh.py check data/bandai
"""
import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class BVHError(ValueError):
    """A malformed BVH file or joint map; the message names the file and, where it can, the line."""


# ---------------------------------------------------------------------------------------------------------------------
# 1. Reading: the hierarchy and the motion

CHANNEL_NAMES = ("Xposition", "Yposition", "Zposition", "Xrotation", "Yrotation", "Zrotation")


@dataclass
class BVH:
    """One BVH file. Joints are in file order (each parent before its children); End Sites are kept apart."""
    path: str
    names: list                 # joint names (J,)
    parents: list               # parent index of each joint, -1 for the root (J,)
    offsets: np.ndarray         # (J, 3) OFFSET of each joint in its parent's frame
    channels: list              # per joint, its channel names in file order, e.g. ["Zrotation", "Xrotation", ...]
    end_sites: dict             # joint index -> (3,) OFFSET of the End Site below it
    motion: np.ndarray          # (T, C) every frame's channel values, C = total number of channels
    frame_time: float           # seconds per frame
    channel_start: list = field(default_factory=list)   # index of each joint's first channel in a motion row

    @property
    def fps(self):
        return 1.0 / self.frame_time

    def joint_motion(self, j):
        """(T, len(channels[j])) the channel values of joint j."""
        start = self.channel_start[j]
        return self.motion[:, start:start + len(self.channels[j])]


def _tokens(lines):
    """(token, line number) for every whitespace-separated token; braces are tokens of their own."""
    for number, line in enumerate(lines, 1):
        for token in line.replace("{", " { ").replace("}", " } ").split():
            yield token, number


def read_bvh(path):
    """Read a BVH file: any number and order of channels per joint (3 or 6, positions on non-root joints included),
    any Euler order, tabs or spaces, CRLF, scientific notation. A malformed file raises BVHError naming file and line."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BVHError(f"cannot read {path}: {error.strerror or error}") from None
    return parse_bvh(data, str(path))


def parse_bvh(data, path="<bvh>"):
    """read_bvh of a file's bytes (or text), e.g. a member of an archive; `path` names it in error messages."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as error:
        raise BVHError(f"{path}: not a text file (byte {error.start}: {error.reason}); expected a BVH file") from None
    lines = text.splitlines()
    motion = next((i for i, line in enumerate(lines) if line.strip() == "MOTION"), None)
    if motion is None:
        raise BVHError(f"{path}: no MOTION section (the file is truncated, or not a BVH file)")
    bvh = _read_hierarchy(path, lines[:motion])
    bvh.motion, bvh.frame_time = _read_motion(path, lines[motion + 1:], motion + 2, sum(map(len, bvh.channels)))
    return bvh


def _read_hierarchy(path, lines):
    tokens = _tokens(lines)
    names, parents, offsets, channels, end_sites, starts = [], [], [], [], {}, []

    def take(expected=None):
        token, line = next(tokens, (None, None))
        if token is None:
            raise BVHError(f"{path}: the HIERARCHY ends early (unbalanced braces?); expected {expected or 'more'}")
        if expected is not None and token != expected:
            raise BVHError(f"{path}:{line}: expected {expected!r}, found {token!r}")
        return token, line

    def numbers(count, what):
        values = []
        for _ in range(count):
            token, line = take()
            try:
                values.append(float(token))
            except ValueError:
                raise BVHError(f"{path}:{line}: {what} expects {count} numbers, found {token!r}") from None
        return values

    def joint(parent, line):
        index = len(names)
        name_tokens = []
        token, line = take()
        while token != "{":                                   # a name may contain spaces
            name_tokens.append(token)
            token, line = take()
        if not name_tokens:
            raise BVHError(f"{path}:{line}: a joint without a name")
        names.append(" ".join(name_tokens))
        parents.append(parent)
        take("OFFSET")
        offsets.append(numbers(3, "OFFSET"))
        take("CHANNELS")
        token, line = take()
        if not token.isdigit():
            raise BVHError(f"{path}:{line}: CHANNELS expects a count, found {token!r}")
        own = []
        for _ in range(int(token)):
            name, line = take()
            canonical = next((c for c in CHANNEL_NAMES if c.lower() == name.lower()), None)
            if canonical is None:
                raise BVHError(f"{path}:{line}: unknown channel {name!r}; expected one of {', '.join(CHANNEL_NAMES)}")
            own.append(canonical)
        channels.append(own)
        starts.append(sum(len(c) for c in channels[:-1]))
        while True:
            token, line = take()
            if token == "}":
                return
            if token == "JOINT":
                joint(index, line)
            elif token.lower() == "end":
                take_site, line = take()
                if take_site.lower() != "site":
                    raise BVHError(f"{path}:{line}: expected 'End Site', found 'End {take_site}'")
                take("{")
                take("OFFSET")
                end_sites[index] = np.array(numbers(3, "OFFSET"))
                take("}")
            else:
                raise BVHError(f"{path}:{line}: expected JOINT, End Site or '}}' in joint {names[index]!r}, "
                               f"found {token!r}")

    take("HIERARCHY")
    token, line = take("ROOT")
    joint(-1, line)
    extra = next(tokens, None)
    if extra is not None:
        raise BVHError(f"{path}:{extra[1]}: unexpected {extra[0]!r} after the root joint's closing brace (unbalanced "
                       f"braces, or a second ROOT, which this reader does not support)")
    return BVH(path, names, parents, np.array(offsets, dtype=np.float64), channels, end_sites,
               np.zeros((0, sum(map(len, channels)))), 0.0, starts)


def _read_motion(path, lines, first_line, num_channels):
    """The lines after MOTION (the first is line number first_line) -> motion (T, C), frame time."""
    header = {}
    for key, pattern in (("frames", r"^\s*Frames:\s*(\S+)\s*$"), ("frame_time", r"^\s*Frame Time:\s*(\S+)\s*$")):
        index = len(header)
        if index >= len(lines) or not re.match(pattern, lines[index]):
            raise BVHError(f"{path}:{first_line + index}: expected '{pattern[4:].split(':')[0]}: <number>' "
                           f"after MOTION")
        header[key] = re.match(pattern, lines[index]).group(1)
    try:
        frames, frame_time = int(header["frames"]), float(header["frame_time"])
    except ValueError:
        raise BVHError(f"{path}:{first_line}: Frames must be an integer and Frame Time a number, got "
                       f"{header['frames']!r} and {header['frame_time']!r}") from None
    if frames < 1 or not frame_time > 0:
        raise BVHError(f"{path}:{first_line}: Frames must be >= 1 and Frame Time > 0, got {frames}, {frame_time}")
    rows = [(first_line + 2 + i, line) for i, line in enumerate(lines[2:]) if line.strip()]
    if len(rows) != frames:
        where = f"{path}:{rows[-1][0] if rows else first_line + 1}"
        raise BVHError(f"{where}: the MOTION block has {len(rows)} frame lines but Frames says {frames} "
                       f"({'truncated file' if len(rows) < frames else 'extra lines'})")
    for number, line in rows:
        if len(line.split()) != num_channels:
            raise BVHError(f"{path}:{number}: a frame has {len(line.split())} values but the hierarchy declares "
                           f"{num_channels} channels")
    try:
        motion = np.array(" ".join(line for _, line in rows).split(), dtype=np.float64).reshape(frames, num_channels)
    except ValueError:
        bad = next((number, token) for number, line in rows for token in line.split() if not _is_number(token))
        raise BVHError(f"{path}:{bad[0]}: {bad[1]!r} is not a number") from None
    if not np.isfinite(motion).all():
        number = rows[int(np.argwhere(~np.isfinite(motion))[0, 0])][0]
        raise BVHError(f"{path}:{number}: a frame holds nan or inf")
    return motion, frame_time


def _is_number(token):
    try:
        float(token)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------------------------
# 2. Forward kinematics

def _axis_rotations(axis, degrees):
    """(T, 3, 3) rotation matrices about axis 'X' | 'Y' | 'Z' by angles (T,) in degrees (right-handed)."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    R = np.zeros((len(a), 3, 3))
    i, j = {"X": (1, 2), "Y": (2, 0), "Z": (0, 1)}[axis]
    k = 3 - i - j
    R[:, k, k] = 1.0
    R[:, i, i], R[:, i, j], R[:, j, i], R[:, j, j] = c, -s, s, c
    return R


def local_transforms(bvh, j):
    """Joint j's local rotation (T, 3, 3) and translation (T, 3) in its parent's frame, per frame."""
    values = bvh.joint_motion(j)
    T = len(bvh.motion)
    translation = np.repeat(bvh.offsets[j][None], T, axis=0)
    rotation = np.repeat(np.eye(3)[None], T, axis=0)
    for c, name in enumerate(bvh.channels[j]):
        axis = "XYZ".index(name[0])
        if name.endswith("position"):
            translation[:, axis] = values[:, c]                 # the channel replaces the offset on its axis
        else:
            rotation = rotation @ _axis_rotations(name[0], values[:, c])   # R_a1 R_a2 R_a3, in file order
    return rotation, translation


def forward_kinematics(bvh, end_sites=False):
    """World positions (T, J, 3) of every joint in file order, in the file's own units and axes; with end_sites=True,
    the End Sites follow as (T, J + E, 3), in the order of their joints."""
    T, J = len(bvh.motion), len(bvh.names)
    world_rotation = np.zeros((T, J, 3, 3))
    positions = np.zeros((T, J, 3))
    for j, parent in enumerate(bvh.parents):
        rotation, translation = local_transforms(bvh, j)
        if parent < 0:
            world_rotation[:, j], positions[:, j] = rotation, translation
        else:
            world_rotation[:, j] = world_rotation[:, parent] @ rotation
            positions[:, j] = np.einsum("tab,tb->ta", world_rotation[:, parent], translation) + positions[:, parent]
    if not end_sites:
        return positions
    ends = [np.einsum("tab,b->ta", world_rotation[:, j], offset) + positions[:, j]
            for j, offset in sorted(bvh.end_sites.items())]
    return np.concatenate([positions, np.stack(ends, axis=1)], axis=1) if ends else positions


# ---------------------------------------------------------------------------------------------------------------------
# 3. Retargeting: a joint map puts every target joint on one source joint, or on the midpoint of two

def _cmu_map(hip, knee, ankle, toe, spine, chest, chest2, neck, head, collar, shoulder, elbow, wrist):
    """The t2m map of a CMU rig, given its joint names with 'Left' / 'Right' as '{s}'."""
    side = lambda name, s: name.format(s=s)
    joints = {"pelvis": "Hips", "left_hip": side(hip, "Left"), "right_hip": side(hip, "Right"), "spine1": spine,
              "left_knee": side(knee, "Left"), "right_knee": side(knee, "Right"), "spine2": chest,
              "left_ankle": side(ankle, "Left"), "right_ankle": side(ankle, "Right"), "spine3": chest2,
              "left_foot": side(toe, "Left"), "right_foot": side(toe, "Right"), "neck": neck,
              "left_collar": side(collar, "Left"), "right_collar": side(collar, "Right"), "head": head}
    for target, source in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist)):
        joints[f"left_{target}"], joints[f"right_{target}"] = side(source, "Left"), side(source, "Right")
    return joints


# Built-in maps, {rig: {skeleton: {target joint: source joint | [source a, source b]}}}, target joints in the
# skeleton's order (data.SKELETONS[kind].joint_names; a test checks it). The Bandai-Namco rig (21 joints under
# joint_Root): one to one, spine3 (upper chest) halfway between Chest and Neck; for KIT, LMrot halfway along the foot.
JOINT_MAPS = {
    "bandai": {
        "t2m": {"pelvis": "Hips", "left_hip": "UpperLeg_L", "right_hip": "UpperLeg_R", "spine1": "Spine",
                "left_knee": "LowerLeg_L", "right_knee": "LowerLeg_R", "spine2": "Chest", "left_ankle": "Foot_L",
                "right_ankle": "Foot_R", "spine3": ["Chest", "Neck"], "left_foot": "Toes_L", "right_foot": "Toes_R",
                "neck": "Neck", "left_collar": "Shoulder_L", "right_collar": "Shoulder_R", "head": "Head",
                "left_shoulder": "UpperArm_L", "right_shoulder": "UpperArm_R", "left_elbow": "LowerArm_L",
                "right_elbow": "LowerArm_R", "left_wrist": "Hand_L", "right_wrist": "Hand_R"},
        "kit": {"root": "Hips", "BP": "Spine", "BT": "Chest", "BLN": "Neck", "BUN": "Head", "LS": "UpperArm_L",
                "LE": "LowerArm_L", "LW": "Hand_L", "RS": "UpperArm_R", "RE": "LowerArm_R", "RW": "Hand_R",
                "LH": "UpperLeg_L", "LK": "LowerLeg_L", "LA": "Foot_L", "LMrot": ["Foot_L", "Toes_L"], "LF": "Toes_L",
                "RH": "UpperLeg_R", "RK": "LowerLeg_R", "RA": "Foot_R", "RMrot": ["Foot_R", "Toes_R"],
                "RF": "Toes_R"},
    },
    # The CMU mocap rig in its two published namings: the original ASF conversion (lowerback, Chest2, lowerneck, the
    # collars) and the MotionBuilder-friendly one (LowerBack, Spine1, Neck1, LeftShoulder as the collar).
    "cmu": {"t2m": _cmu_map("{s}Hip", "{s}Knee", "{s}Ankle", "{s}Toe", "lowerback", "Chest", "Chest2", "lowerneck",
                            "Head", "{s}Collar", "{s}Shoulder", "{s}Elbow", "{s}Wrist")},
    "cmu-mb": {"t2m": _cmu_map("{s}UpLeg", "{s}Leg", "{s}Foot", "{s}ToeBase", "LowerBack", "Spine", "Spine1", "Neck",
                               "Head", "{s}Shoulder", "{s}Arm", "{s}ForeArm", "{s}Hand")},
}


def joint_map_for(joint_map, kind="t2m"):
    """--joint-map as the commands take it -> the map itself: a built-in rig's name (JOINT_MAPS) gives its map onto
    the `kind` skeleton, any other string or path is a user's JSON file (read_joint_map); a dict or None is returned
    as given."""
    if joint_map is None or isinstance(joint_map, dict):
        return joint_map
    name = str(joint_map)
    if name not in JOINT_MAPS:
        return read_joint_map(joint_map)
    if kind not in JOINT_MAPS[name]:
        raise BVHError(f"the built-in map {name} has no {kind} target; pass a JSON map")
    return JOINT_MAPS[name][kind]


def read_joint_map(path):
    """A user's joint map: JSON {"<target joint>": "<source joint>" | ["<source a>", "<source b>"]}."""
    try:
        joint_map = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise BVHError(f"cannot read the joint map {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise BVHError(f"{path}: not valid JSON ({error})") from None
    bad = [k for k, v in joint_map.items() if not (isinstance(v, str) or (isinstance(v, list) and len(v) == 2 and
                                                                       all(isinstance(x, str) for x in v)))] \
        if isinstance(joint_map, dict) else ["(the whole file)"]
    if bad:
        raise BVHError(f"{path}: a joint map is a JSON object {{\"<target joint>\": \"<source joint>\" or "
                       f"[\"<source a>\", \"<source b>\"]}}; these entries are not: {bad}")
    return joint_map


def retarget(positions, names, joint_map, target_names, source="the BVH file"):
    """Source positions (T, J, 3) with joint names (J,) -> target positions (T, J', 3) in target_names' order.

    Each target joint is its mapped source joint, or the midpoint of two. A map that leaves a target joint unmapped
    or names a joint the file lacks raises BVHError listing what is missing. Real rigs have zero-length bones (CMU's
    lowerback, lowerneck and collars sit on their parents): see separate_coincident_joints."""
    unmapped = [t for t in target_names if t not in joint_map]
    unknown = sorted({s for t in target_names if t in joint_map
                      for s in ([joint_map[t]] if isinstance(joint_map[t], str) else joint_map[t]) if s not in names})
    extra = [t for t in joint_map if t not in target_names]
    if unmapped or unknown or extra:
        raise BVHError(f"the joint map does not fit {source}: "
                       + "; ".join(part for part in (
                           f"target joints without a source: {unmapped}" if unmapped else "",
                           f"source joints the file lacks: {unknown} (it has {list(names)})" if unknown else "",
                           f"unknown target joints: {extra} (the targets are {list(target_names)})" if extra else "")
                                   if part))
    index = {name: i for i, name in enumerate(names)}
    columns = []
    for target in target_names:
        mapped = joint_map[target]
        if isinstance(mapped, str):
            columns.append(positions[:, index[mapped]])
        else:
            columns.append(0.5 * (positions[:, index[mapped[0]]] + positions[:, index[mapped[1]]]))
    return np.stack(columns, axis=1)


def coincident_joints(joints, names, tolerance=1e-4):
    """Pairs of target joints (names) that sit on the same point in every frame, within tolerance x body size."""
    size = max(float(np.ptp(joints[0], axis=0).max()), 1e-12)
    distance = np.linalg.norm(joints[:, :, None] - joints[:, None, :], axis=-1).max(axis=0)   # (J, J) over frames
    return [(names[a], names[b]) for a in range(len(names)) for b in range(a + 1, len(names))
            if distance[a, b] <= tolerance * size]


def separate_coincident_joints(joints, parents, tolerance=1e-4):
    """Give every zero-length bone a length: a joint on its parent in every frame moves halfway to its first child,
    a leaf 1% of the body size beyond its parent along the parent's own bone -> (joints, moved joint indices).
    The features divide by bone lengths; a zero-length bone would make them 0/0 (NaN)."""
    joints, moved = joints.copy(), []
    size = max(float(np.ptp(joints[0], axis=0).max()), 1e-12)
    children = {j: [c for c, p in enumerate(parents) if p == j] for j in range(len(parents))}
    for j, parent in enumerate(parents):        # parents before children, so a moved parent is already in place
        if parent < 0 or np.linalg.norm(joints[:, j] - joints[:, parent], axis=-1).max() > tolerance * size:
            continue
        if children[j]:
            joints[:, j] = 0.5 * (joints[:, parent] + joints[:, children[j][0]])
        else:
            along = joints[:, parent] - joints[:, max(parents[parent], 0)]
            along /= np.maximum(np.linalg.norm(along, axis=-1, keepdims=True), 1e-12)
            joints[:, j] = joints[:, parent] + 0.01 * size * along
        moved.append(j)
    return joints, moved


# ---------------------------------------------------------------------------------------------------------------------
# 4. Units, axes and frame rate

UNITS = {"m": 1.0, "dm": 0.1, "cm": 0.01, "mm": 0.001, "inch": 0.0254}
STANDING_HEIGHT = 1.5     # metres from the lowest to the highest joint of a standing adult (the head joint ~1.5 m)


def infer_scale(positions, up="y", frames=10):
    """Metres per file unit (one of UNITS) that makes the standing height of the first frames closest to 1.5 m."""
    axis = "xyz".index(up)
    height = float(np.median(np.ptp(positions[:frames, :, axis], axis=1)))
    if not height > 0:
        raise BVHError("cannot infer the units: every joint is at the same height in the first frames; pass --scale")
    return min(UNITS.values(), key=lambda s: abs(math.log(height * s / STANDING_HEIGHT)))


def to_y_up(positions, up="y"):
    """(..., 3) positions with `up` ('y' or 'z') as the up axis -> Y up, by a proper rotation (left stays left):
    Z-up (x, y, z) -> (x, z, -y), a rotation of -90 degrees about X."""
    if up == "y":
        return positions
    if up == "z":
        return np.stack([positions[..., 0], positions[..., 2], -positions[..., 1]], axis=-1)
    raise BVHError(f"up must be 'y' or 'z', got {up!r}")


def resample(positions, fps, new_fps):
    """(T, ...) positions sampled at fps -> the same motion at new_fps, by linear interpolation, from time 0 to the
    last frame (T' = floor((T - 1) new_fps / fps) + 1 frames)."""
    T = len(positions)
    count = int(math.floor((T - 1) * new_fps / fps + 1e-9)) + 1
    t = np.arange(count) * fps / new_fps                     # new frame k at source frame position t_k
    lo = np.minimum(np.floor(t).astype(int), T - 1)
    hi = np.minimum(lo + 1, T - 1)
    w = (t - lo).reshape(-1, *([1] * (positions.ndim - 1)))
    return (1 - w) * positions[lo] + w * positions[hi]


# ---------------------------------------------------------------------------------------------------------------------
# 5. The Bandai-Namco-Research motion datasets 1 and 2 (Kobayashi et al. 2023, arXiv 2306.08861; CC BY-NC 4.0):
#    labels become captions. A clip is `dataset-N_<content>_<style>_<NNN>.bvh` with a same-name JSON of label indices.

BANDAI_CONTENTS = {   # content -> verb phrases (third person); mirror_caption swaps left and right for the mirrors
    "walk": ["walks forward", "walks straight ahead", "is walking forward"],
    "run": ["runs forward", "runs straight ahead", "is running forward"],
    "dash": ["dashes forward", "sprints forward", "runs forward fast"],
    "walk-back": ["walks backward", "walks backwards", "is walking backward"],
    "walk-left": ["walks to the left", "walks forward and to the left", "walks toward the left"],
    "walk-right": ["walks to the right", "walks forward and to the right", "walks toward the right"],
    "bow": ["bows", "bows forward", "takes a bow"],
    "bye": ["waves goodbye", "waves a hand to say goodbye", "waves to say goodbye"],
    "byebye": ["waves goodbye with both hands", "waves both hands to say goodbye", "says goodbye with both hands"],
    "guide": ["points the way with a hand", "gestures to guide someone", "shows someone the way"],
    "respond": ["raises a hand to answer", "answers with a gesture", "gestures to answer"],
    "call": ["beckons someone over", "calls someone over with a hand", "waves someone over"],
    "punch": ["punches", "throws punches", "punches forward"],
    "kick": ["kicks", "kicks with a leg", "kicks forward"],
    "slash": ["slashes with a sword", "swings a sword", "slashes the air with a sword"],
    "dance-long": ["dances", "is dancing", "does a dance"],
    "dance-short": ["dances", "is dancing", "does a dance"],
    "walk-turn-left": ["walks and turns left", "walks forward, turning to the left", "walks and turns to the left"],
    "walk-turn-right": ["walks and turns right", "walks forward, turning to the right", "walks and turns to the right"],
    "wave-both-hands": ["waves both hands", "waves with both hands", "is waving both hands"],
    "wave-left-hand": ["waves with the left hand", "waves the left hand", "is waving the left hand"],
    "wave-right-hand": ["waves with the right hand", "waves the right hand", "is waving the right hand"],
    "raise-up-both-hands": ["raises both hands", "raises both hands up", "lifts both arms up"],
    "raise-up-left-hand": ["raises the left hand", "raises the left hand up", "lifts the left arm up"],
    "raise-up-right-hand": ["raises the right hand", "raises the right hand up", "lifts the right arm up"],
}
BANDAI_STYLES = {     # style -> (adjective for "a/an ... person", adverbial phrases); normal has none
    "normal": ("", []), "happy": ("happy", ["happily"]), "sad": ("sad", ["sadly"]),
    "angry": ("angry", ["angrily"]), "proud": ("proud", ["proudly"]),
    "not-confident": ("shy", ["shyly", "without confidence"]),
    "masculinity": ("masculine", ["in a masculine way"]), "masculine": ("masculine", ["in a masculine way"]),
    "feminine": ("feminine", ["in a feminine way", "gracefully"]), "childish": ("childish", ["like a child"]),
    "old": ("old", ["like an old person"]), "elderly": ("elderly", ["in an elderly manner", "like an old person"]),
    "tired": ("tired", ["tiredly", "as if tired"]), "exhausted": ("exhausted", ["as if exhausted", "tiredly"]),
    "active": ("energetic", ["energetically", "actively"]), "musical": ("rhythmic", ["rhythmically"]),
    "giant": ("huge", ["like a giant", "heavily"]), "chimpira": ("tough", ["like a gangster", "in a tough way"]),
    "youthful": ("young", ["like a young person"]),
}
# Contents that keep their label in any part of a long clip (a repeated or continuous action): a clip longer than the
# model's window is split into windows. Any other long clip keeps its central window (its action is in the middle).
BANDAI_WINDOWABLE = {"walk", "run", "dash", "walk-back", "walk-left", "walk-right", "dance-long", "dance-short",
                     "bye", "byebye", "wave-both-hands", "wave-left-hand", "wave-right-hand"}


def bandai_labels(stem):
    """'dataset-2_walk-turn-left_elderly_017' -> ('walk-turn-left', 'elderly')."""
    parts = stem.split("_")
    if len(parts) != 4 or not parts[0].startswith("dataset-") or parts[1] not in BANDAI_CONTENTS \
            or parts[2] not in BANDAI_STYLES:
        raise BVHError(f"{stem}: not a Bandai-Namco clip name 'dataset-N_<content>_<style>_<NNN>' with a known "
                       f"content and style")
    return parts[1], parts[2]


def bandai_captions(stem, count=3):
    """`count` distinct captions for a Bandai clip, from its content and style (deterministic per clip name)."""
    content, style = bandai_labels(stem)
    adjective, adverbs = BANDAI_STYLES[style]
    phrases = BANDAI_CONTENTS[content]
    article = "an" if adjective[:1] in "aeiou" and adjective else "a"
    forms = [f"a person {p}" for p in phrases] + [f"someone {p}" for p in phrases]
    if adjective:
        forms = ([f"{article} {adjective} person {p}" for p in phrases]
                 + [f"{subject} {p} {adverb}" for subject in ("a person", "someone") for p in phrases
                    for adverb in adverbs])
    rng = np.random.default_rng(list(stem.encode()))
    return [str(c) for c in rng.choice(forms, size=min(count, len(forms)), replace=False)]


# ---------------------------------------------------------------------------------------------------------------------
# 6. Importing a folder or archive of BVH files as a dataset in the HumanML3D layout (uses data.py, imported here)

IMPORT_VERSION = 1                 # bump when the import changes, so that an old imported folder is rebuilt
MARKER = "bvh_import.json"
KIT_UNITS_PER_METRE = 1000.0       # KIT-ML's positions are in an mm-like scale (spec A.8); ours are millimetres
SPLIT_FRACTIONS = {"val": 0.05, "test": 0.15}   # by clip, the rest is train: HumanML3D's own split files, ~80/5/15


def bvh_to_joints(bvh, joint_map, kind="t2m", scale=None, up="y"):
    """A BVH clip on the target skeleton: joints (T', J, 3), Y up, in metres (KIT: mm), at the skeleton's frame rate
    (20 fps t2m, 12.5 fps kit) -> (joints, info {scale, coincident, moved})."""
    from data import SKELETONS
    skeleton = SKELETONS[kind]
    positions = forward_kinematics(bvh)
    scale = infer_scale(positions, up) if scale is None else scale
    joints = retarget(positions, bvh.names, joint_map, skeleton.joint_names, source=bvh.path)
    joints = to_y_up(joints * scale, up) * (KIT_UNITS_PER_METRE if kind == "kit" else 1.0)
    coincident = coincident_joints(joints, skeleton.joint_names)
    joints, moved = separate_coincident_joints(joints, skeleton.parents)
    joints = resample(joints, bvh.fps, skeleton.fps)
    return joints.astype(np.float32), {"scale": scale, "coincident": coincident,
                                       "moved": [skeleton.joint_names[j] for j in moved]}


def windows(num_frames, windowable, max_frames=200, min_frames=41):
    """Frame ranges [(start, stop)] a clip of num_frames becomes: itself if it fits the loader ([41, 200] frames:
    40 to 199 feature rows), equal consecutive windows if it is longer and windowable, else its central max_frames;
    [] if it is too short."""
    if num_frames < min_frames:
        return []
    if num_frames <= max_frames:
        return [(0, num_frames)]
    if not windowable:
        start = (num_frames - max_frames) // 2
        return [(start, start + max_frames)]
    count = math.ceil((num_frames - 1) / (max_frames - 1))
    bounds = np.linspace(0, num_frames, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def iter_bvh_sources(sources):
    """(name, bytes) of every .bvh file in the given folders (recursively, sorted) and tar archives (.tar.xz,
    .tar.gz, .tar; streamed in one pass, so an archive is decompressed once)."""
    import tarfile
    for source in map(Path, sources):
        if source.is_dir():
            for path in sorted(source.rglob("*.bvh")):
                yield str(path), path.read_bytes()
        elif source.is_file() and tarfile.is_tarfile(source):
            with tarfile.open(source, mode="r|*") as archive:
                for member in archive:
                    if member.isfile() and member.name.endswith(".bvh"):
                        yield f"{source}:{member.name}", archive.extractfile(member).read()
        else:
            raise BVHError(f"--src {source} is neither a folder nor a tar archive (.tar.xz, .tar.gz, .tar)")


def read_captions_csv(path):
    """captions.csv with columns file,caption (one or more rows per clip) -> {clip file stem: [captions]}."""
    import csv
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as error:
        raise BVHError(f"cannot read the captions file {path}: {error}") from None
    if not rows or not {"file", "caption"} <= set(rows[0]):
        raise BVHError(f"{path}: expected a CSV with a header 'file,caption' and one row per caption")
    captions = {}
    for number, row in enumerate(rows, 2):
        if not (row["file"] or "").strip() or not (row["caption"] or "").strip():
            raise BVHError(f"{path}:{number}: empty file or caption in {row}")
        captions.setdefault(Path(row["file"].strip()).stem, []).append(row["caption"].strip())
    return captions


def stratified_splits(labels, seed=0):
    """{clip: label} -> {split: [clips]}: about 80/5/15 train/val/test by clip within every label. Each label keeps
    at least one clip in train; a label's share of test (and val) is rounded at random, up or down with the odds of
    its fraction, so small labels reach the overall 15% (5%) on average and a label of 7 or more clips is always in
    test. At least one clip goes to val."""
    groups = {}
    for clip in sorted(labels):
        groups.setdefault(labels[clip], []).append(clip)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": [], "test": []}
    for label in sorted(groups, key=str):
        clips = list(groups[label])
        rng.shuffle(clips)
        for split in ("test", "val"):
            quota = SPLIT_FRACTIONS[split] * len(groups[label])
            take = min(int(quota) + int(rng.random() < quota - int(quota)), len(clips) - 1)
            splits[split] += clips[:take]
            clips = clips[take:]
        splits["train"] += clips
    if not splits["val"] and len(splits["train"]) > 1:
        splits["val"].append(splits["train"].pop())
    return splits


def import_dataset(sources, out, fmt="bandai", joint_map=None, captions=None, kind="t2m", scale=None, up="y",
                   progress=True):
    """Import BVH files (folders and archives) into the HumanML3D layout at `out` -> the import report (a dict).

    fmt "bandai": the Bandai-Namco rig, captions from the labels in the file names, long continuous clips split into
    windows. fmt "generic": `joint_map` (a dict or a JSON path) and `captions` ({file stem: [captions]} or a CSV
    path). A bad file is skipped with a warning naming it; everything dropped is counted in the report."""
    import warnings
    from tqdm import tqdm
    from data import DatasetWriter, SKELETONS, tokenize
    start = time.time()
    if fmt == "bandai":
        joint_map, captions = JOINT_MAPS["bandai"][kind], None
    elif fmt == "generic":
        if joint_map is None or captions is None:
            raise BVHError("a generic import needs --joint-map map.json and --captions captions.csv")
        joint_map = joint_map_for(joint_map, kind)
        captions = read_captions_csv(captions) if isinstance(captions, (str, Path)) else captions
    else:
        raise BVHError(f"unknown import format {fmt!r}; expected 'bandai' or 'generic'")
    fps = SKELETONS[kind].fps
    marker = {"generator": "bvh.py import", "version": IMPORT_VERSION, "format": fmt, "skeleton": kind,
              "sources": [str(Path(s)) for s in sources]}
    writer = DatasetWriter(out, MARKER, marker, kind)
    report = {"files": 0, "bad_files": [], "no_caption": [], "too_short": [], "windowed": {}, "cropped": [],
              "coincident_warnings": {}, "kept_clips": 0, "kept_frames": 0}
    labels, clip_of = {}, {}      # per written clip: its label (for the stratified split) and its source clip
    unknown_pos = None if fmt == "bandai" else "X"       # our own captions use only lexicon words; a user's may not
    for name, raw in tqdm(iter_bvh_sources(sources), desc="importing BVH", unit=" files", disable=not progress):
        report["files"] += 1
        stem = Path(name.split(":")[-1]).stem
        try:
            bvh = parse_bvh(raw, name)
            if fmt == "bandai":
                content, style = bandai_labels(stem)
                texts, windowable, label = bandai_captions(stem), content in BANDAI_WINDOWABLE, (
                    stem.split("_")[0], content, style)
            else:
                texts, windowable, label = captions.get(stem), True, None
                if not texts:
                    report["no_caption"].append(name)
                    continue
            joints, info = bvh_to_joints(bvh, joint_map, kind, scale, up)
        except BVHError as error:
            warnings.warn(f"skipped {name}: {error}")
            report["bad_files"].append(f"{name}: {error}")
            continue
        if info["coincident"]:
            report["coincident_warnings"][name] = info["coincident"]
        lines = [f"{c}#{tokenize(c, unknown_pos)}#0.0#0.0" for c in texts]
        ranges = windows(len(joints), windowable)
        if not ranges:
            report["too_short"].append(f"{name} ({len(joints) / fps:.2f} s)")
            continue
        if len(ranges) > 1:
            report["windowed"][name] = len(ranges)
        elif ranges[0] != (0, len(joints)):
            report["cropped"].append(name)
        for w, (a, b) in enumerate(ranges):
            clip = stem if len(ranges) == 1 else f"{stem}_w{w}"
            features = writer.add(clip, joints[a:b], lines)          # and its mirror M<clip>
            if not np.isfinite(features).all():
                raise BVHError(f"{name}: its features hold NaN after retargeting (coincident joints "
                               f"{info['coincident']}); fix the joint map")
            labels[clip], clip_of[clip] = label, stem
            report["kept_clips"] += 1
            report["kept_frames"] += b - a
    if not labels:
        raise BVHError(f"no clip could be imported from {list(map(str, sources))} ({report['files']} .bvh files)")
    # split by source clip (its windows stay together), then list each split's windows
    by_clip = stratified_splits({clip_of[c]: labels[c] for c in labels})
    where = {clip: split for split, clips in by_clip.items() for clip in clips}
    splits = {split: [c for c in labels if where[clip_of[c]] == split] for split in ("train", "val", "test")}
    writer.finish(splits)
    report.update(seconds=round(time.time() - start, 1), hours=report["kept_frames"] / fps / 3600,
                  splits={k: len(v) for k, v in splits.items()}, out=str(out), fps=fps)
    (Path(out) / "import_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def bandai_sources(shared=None):
    """The Bandai-Namco archives in ../shared/data/bandai beside this file (the project's copy), or []."""
    folder = Path(shared) if shared else Path(__file__).resolve().parent.parent / "shared" / "data" / "bandai"
    return sorted(folder.glob("Bandai-Namco-Research-Motiondataset-*.tar.xz")) if folder.is_dir() else []


def ensure_bandai(out, progress=True):
    """data/bandai, imported first (with a message) if it is missing or incomplete; -> Path. Without the archives
    the error says where the data comes from and which command builds it."""
    out = Path(out)
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    if marker.get("complete") and marker.get("format") == "bandai" and marker.get("version") == IMPORT_VERSION:
        return out
    sources = bandai_sources()
    if not sources:
        raise FileNotFoundError(
            f"no Bandai-Namco dataset at {out}, and no archives to build it from in ../shared/data/bandai. The data "
            f"is public (github.com/BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset, CC BY-NC 4.0); "
            f"build the folder with: python bvh.py import --format bandai --src <its dataset folders or .tar.xz> "
            f"--out {out}")
    print(f"{out} is missing: importing the Bandai-Namco motion datasets from {sources[0].parent} (CC BY-NC 4.0, "
          f"non-commercial use, credit Kobayashi et al. 2023) - about a minute")
    report = import_dataset(sources, out, "bandai", progress=progress)
    print(format_report(report))
    return out


def format_report(report):
    """The import report as a few lines of text."""
    lines = [f"imported {report['kept_clips']} clips ({report['hours']:.2f} h at {report['fps']:g} fps; with mirrors "
             f"twice that) from {report['files']} .bvh files into {report['out']} in {report['seconds']:.0f} s",
             f"  splits (clips, mirrors not counted): {report['splits']}",
             f"  dropped: {len(report['too_short'])} shorter than 2 s after resampling, {len(report['bad_files'])} "
             f"unreadable, {len(report['no_caption'])} without a caption",
             f"  long clips: {len(report['windowed'])} split into {sum(report['windowed'].values())} windows, "
             f"{len(report['cropped'])} cropped to their central 10 s"]
    if report["coincident_warnings"]:
        lines.append(f"  {len(report['coincident_warnings'])} files map two target joints onto one point (moved "
                     f"apart; see import_report.json)")
    return "\n".join(lines)


def check_dataset(root, kind="t2m", progress=True):
    """Plausibility of every clip of a dataset folder (HumanML3D layout), from its features as the loaders read them:
    {measure: per-clip values}. Measures: the lowest foot height (m), the median height of the lower foot over the
    frames (m; ~0 when the feet touch the floor), the median lean of the trunk (pelvis -> neck) from vertical
    (degrees), the largest relative spread of a bone length over time, and the features -> joints -> features error."""
    from tqdm import tqdm
    from data import SKELETONS, features_to_joints, joints_to_features
    skeleton = SKELETONS[kind]
    feet = list(skeleton.fid_l) + list(skeleton.fid_r)
    neck = skeleton.joint_names.index("neck") if "neck" in skeleton.joint_names else 3
    values = {"lowest foot (m)": [], "median lower foot (m)": [], "trunk lean (deg)": [],
              "bone length spread": [], "round trip error": []}
    for path in tqdm(sorted(Path(root, "new_joint_vecs").glob("*.npy")), desc="checking clips", disable=not progress):
        features = np.load(path).astype(np.float64)
        joints = features_to_joints(features, kind)                                      # (T, J, 3)
        foot = joints[:, feet, 1].min(axis=1)                                            # (T,)
        trunk = joints[:, neck] - joints[:, 0]
        lean = np.degrees(np.arccos(np.clip(trunk[:, 1] / np.linalg.norm(trunk, axis=-1), -1, 1)))
        bones = np.linalg.norm(joints[:, 1:] - joints[:, list(skeleton.parents[1:])], axis=-1)   # (T, J-1)
        again = joints_to_features(joints, kind)                                         # (T-1, D)
        values["lowest foot (m)"].append(foot.min())
        values["median lower foot (m)"].append(np.median(foot))
        values["trunk lean (deg)"].append(np.median(lean))
        values["bone length spread"].append((bones.std(axis=0) / bones.mean(axis=0)).max())
        values["round trip error"].append(np.abs(again - features[:-1]).max())
    return {k: np.array(v) for k, v in values.items()}


def format_check(values):
    """The check as a markdown table: per measure, the median, 95th percentile and maximum over clips."""
    rows = ["| measure, per clip | median | 95th percentile | max |", "|---|---|---|---|"]
    for name, v in values.items():
        rows.append(f"| {name} | {np.median(v):.3g} | {np.percentile(v, 95):.3g} | {v.max():.3g} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------------------
# 7. Writing BVH: joint positions -> a rig with fixed bone lengths and per-joint rotations, for animation tools

# Joint names of the exported rig: SMPL's (data.SKELETONS["t2m"].joint_names, in that order) or Mixamo's, so that the
# file retargets onto Mixamo characters in Blender's and Unity's tools.
MIXAMO_NAMES = ("Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot", "RightFoot",
                "Spine2", "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm",
                "RightArm", "LeftForeArm", "RightForeArm", "LeftHand", "RightHand")

# How each t2m joint's twist is fixed (see solve_rotations): (joint, rest direction of the secondary axis, how the
# current one is found). "across hips" / "across collars": from the right to the left joint of the pair; "bend
# <joint>": the direction of that joint seen from the bone, perpendicular to the bone (a limb's bending plane).
_T2M_TWIST = {3: ((1, 0, 0), ("across", 1, 2)), 6: ((1, 0, 0), ("across", 13, 14)), 12: ((1, 0, 0), ("across", 13, 14)),
              13: ((-1, 0, 0), ("bend", 12)), 14: ((1, 0, 0), ("bend", 12)),    # collars: the neck's side
              16: ((0, 0, 1), ("bend", 20)), 17: ((0, 0, 1), ("bend", 21)),     # shoulders: the forearm's side
              18: ((0, 0, 1), ("bend", 16)), 19: ((0, 0, 1), ("bend", 17)),     # elbows: the upper arm's side
              1: ((0, 0, -1), ("bend", 7)), 2: ((0, 0, -1), ("bend", 8)),       # hips: the shin's side
              4: ((0, 0, -1), ("bend", 1)), 5: ((0, 0, -1), ("bend", 2)),       # knees: the thigh's side
              7: ((0, 1, 0), ("bend", 4)), 8: ((0, 1, 0), ("bend", 5))}         # ankles: the knee's side
_T2M_LIMBS = ((1, 4, 7), (2, 5, 8), (16, 18, 20), (17, 19, 21))              # (root, middle, end) of two-bone IK


def humanml3d_rig(names="smpl", joints=None):
    """The HumanML3D target skeleton as a BVH rig: (joint names, parents, offsets (J, 3) in metres at rest): data.py's
    bone lengths along its raw offset directions, the rest pose facing +Z, Y up. The children of the pelvis (hips,
    spine1) and of spine3 (neck, collars) move as rigid groups, in the layout of the body the motion came from
    (SMPL's hips sit below the pelvis): with `joints` (T, 22, 3) their rest directions are that layout, measured
    on the motion (see _rest_layout), so that one rotation per group reproduces it."""
    from data import SKELETONS
    skeleton = SKELETONS["t2m"]
    offsets = np.array(skeleton.raw_offsets, dtype=np.float64) * np.array(skeleton.bone_lengths)[:, None]
    if names not in ("smpl", "mixamo"):
        raise BVHError(f"joint names must be 'smpl' or 'mixamo', got {names!r}")
    if joints is not None:
        for parent, left, right, up in ((0, 1, 2, 3), (9, 13, 14, 12)):       # pelvis: hips + spine1; spine3
            for child, direction in _rest_layout(joints, parent, left, right, up).items():
                offsets[child] = np.linalg.norm(offsets[child]) * direction
    return (list(skeleton.joint_names if names == "smpl" else MIXAMO_NAMES), list(skeleton.parents), offsets)


def _rest_layout(joints, parent, left, right, up):
    """The rest directions {child: (3,)} of a joint's three children (a left, a right and an upper one) as the motion
    holds them: in each frame, expressed in the frame of the group itself (x from the right child to the left one,
    y towards the upper child, z = x cross y forward), averaged over the frames, so that the rest pose faces +Z."""
    frames = _frames(joints[:, left] - joints[:, right], joints[:, up] - joints[:, parent])   # (T, 3, 3) left, up, forward
    return {c: _unit(np.einsum("tba,tb->a", frames, _unit(joints[:, c] - joints[:, parent])) / len(joints))
            for c in (left, right, up)}


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _frames(primary, secondary):
    """Right-handed orthonormal frames (..., 3, 3) whose columns are the primary axis, the secondary axis made
    perpendicular to it, and their cross product (Gram-Schmidt)."""
    a = _unit(primary)
    b = _unit(secondary - (secondary * a).sum(-1, keepdims=True) * a)
    return np.stack([a, b, np.cross(a, b)], axis=-1)


def _continuous_side(direction, axis, trust, start=None):
    """Unit vectors (T, 3) perpendicular to `axis` (T, 3): on the side of `direction` (T, 3) where it can be trusted
    (trust (T,) = 1), turning with the previous frame's side where it cannot (0: e.g. a nearly straight limb, whose
    bending side is noise), blended in between; so it is continuous in time and never flips. `start` (T, 3): the side
    to begin with where frame 0 gives none."""
    axis = _unit(axis)
    perp = direction - (direction * axis).sum(-1, keepdims=True) * axis
    side = np.zeros_like(perp)
    previous = (start[0] if start is not None else np.array([0.0, 0.0, 1.0])) + 1e-6 * perp[0]
    for t in range(len(perp)):
        kept = previous - (previous @ axis[t]) * axis[t]
        side[t] = _unit(trust[t] * _unit(perp[t]) + (1 - trust[t]) * _unit(kept))
        previous = side[t]
    return side


def _kabsch(rest, current):
    """Rotations (T, 3, 3) that best turn the rest vectors (K, 3) onto the current ones (T, K, 3), least squares."""
    H = np.einsum("tkc,kr->tcr", current, rest)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(U @ Vt))
    return U @ np.diag([1.0, 1.0, 0.0]) @ Vt + d[:, None, None] * np.einsum("ti,tj->tij", U[:, :, 2], Vt[:, 2])


def _two_bone(root, target, pole, upper, lower):
    """The middle joint (T, 3) of a two-bone limb from `root` with bone lengths upper, lower that puts its end on
    `target` where it can reach, bending in the plane of root, target and `pole` (the motion's own middle joint)."""
    reach = target - root
    distance = np.clip(np.linalg.norm(reach, axis=-1, keepdims=True), abs(upper - lower) + 1e-9, upper + lower - 1e-9)
    along = _unit(reach)
    x = (upper ** 2 - lower ** 2 + distance ** 2) / (2 * distance)          # law of cosines
    bend = np.sqrt(np.maximum(upper ** 2 - x ** 2, 0.0))                  # how far the middle joint leaves the line
    off_line = np.linalg.norm((pole - root) - ((pole - root) * along).sum(-1, keepdims=True) * along, axis=-1)
    # The motion's own middle joint gives the bending side, unless it bends much less than the rig must (its bones
    # are shorter than the rig's): then its side is noise, and the previous frame's side is kept.
    side = _continuous_side(pole - root, along, np.clip(off_line / np.maximum(0.5 * bend[:, 0], 1e-9), 0.0, 1.0))
    return root + x * along + bend * side


def solve_rotations(joints, parents, offsets, twist=None, limbs=()):
    """Joint positions (T, J, 3) -> world rotations (T, J, 3, 3) of a rig with fixed offsets, and the rig's own
    positions (T, J, 3) (forward kinematics of those rotations).

    Positions are the source of truth. Going down the tree, each joint's world rotation R_j is chosen so that
        R_j o_c = (p_c - q_j) / |p_c - q_j| * |o_c|     for its child c   (q: the rig's positions, p: the motion's)
    i.e. it turns the rest direction of the bone onto its direction in the frame. A joint with several children
    (the pelvis, spine3) takes the rotation that fits all of them best (Kabsch: the SVD of sum_c d_c o_c^T). For one
    child, the twist about the bone, which positions do not fix, comes from a secondary axis (`twist`: joint ->
    (its rest direction, how the current one is found from neighbouring joints)): R_j = F_now F_rest^T with
    F = [bone, secondary made perpendicular, their cross product]. Where the secondary axis nearly lies along the
    bone (a straight limb) it keeps turning with the previous frame's (_continuous_side), so the twist never flips
    between frames; the IK's bending side is kept steady the same way. A leaf keeps its parent's rotation. Bone lengths are the rig's: on motions whose bones already have
    these lengths the rig reproduces every position to float precision; otherwise the two-bone limbs in `limbs`
    ((root, middle, end) joints) are solved by IK so that the hands and feet stay where the motion puts them as far
    as the fixed lengths allow."""
    T, J, _ = joints.shape
    twist = twist or {}
    children = {j: [c for c in range(J) if parents[c] == j] for j in range(J)}
    targets = joints.copy()                                   # where each joint's bone should point
    middle_of = {mid: (root, end) for root, mid, end in limbs}
    rotations = np.zeros((T, J, 3, 3))
    rig = np.zeros_like(joints)
    rig[:, 0] = joints[:, 0]
    placed = {0}                                              # joints whose rig position is known
    where = lambda k: rig[:, k] if k in placed else targets[:, k]   # the rig's, else where the motion wants it
    for j in range(J):                                        # parents before children (t2m and BVH order)
        kids = children[j]
        if not kids:                                          # a leaf: nothing below fixes its rotation
            rotations[:, j] = rotations[:, parents[j]] if parents[j] >= 0 else np.eye(3)
            continue
        for c in kids:
            if c in middle_of:                                # the knee or elbow below a hip or shoulder: by IK
                root, end = middle_of[c]
                targets[:, c] = _two_bone(rig[:, j], joints[:, end], joints[:, c],
                                          np.linalg.norm(offsets[c]), np.linalg.norm(offsets[end]))
        if len(kids) > 1:
            rest = np.stack([_unit(offsets[c]) for c in kids])
            rotations[:, j] = _kabsch(rest, np.stack([_unit(targets[:, c] - rig[:, j]) for c in kids], axis=1))
        else:
            c = kids[0]
            rest_secondary, how = twist.get(j, ((0, 0, 1), ("across", 1, 2)))
            if how[0] == "across":
                secondary = where(how[1]) - where(how[2])
            else:
                secondary = where(how[1]) - rig[:, j]
            bone = targets[:, c] - rig[:, j]
            sine = np.linalg.norm(np.cross(_unit(secondary), _unit(bone)), axis=-1)
            start = rotations[:, 0] @ np.asarray(rest_secondary, dtype=np.float64)   # the pelvis' own axis
            secondary = _continuous_side(secondary, bone, np.clip(sine / 0.2, 0.0, 1.0), start)
            rest = _frames(np.asarray(offsets[c], dtype=np.float64), np.asarray(rest_secondary, dtype=np.float64))
            rotations[:, j] = _frames(bone, secondary) @ rest.T
        for c in kids:
            rig[:, c] = rig[:, j] + np.einsum("tab,b->ta", rotations[:, j], offsets[c])
            placed.add(c)
    return rotations, rig


def _euler_zxy(R):
    """Angles (T, ..., 3) in degrees (z, x, y) with R = Rz(z) Rx(x) Ry(y), the BVH order Zrotation Xrotation
    Yrotation, continuous in time: each rotation has two such triples, (z, x, y) and (z + 180, 180 - x, y + 180), and
    a multiple of 360 to add to each angle; every frame takes the one nearest the frame before."""
    x = np.arcsin(np.clip(R[..., 2, 1], -1.0, 1.0))
    z = np.arctan2(-R[..., 0, 1], R[..., 1, 1])
    y = np.arctan2(-R[..., 2, 0], R[..., 2, 2])
    first = np.degrees(np.stack([z, x, y], axis=-1))
    second = first * np.array([1.0, -1.0, 1.0]) + np.array([180.0, 180.0, 180.0])
    angles = first.copy()
    for t in range(1, len(angles)):
        candidates = np.stack([first[t], second[t]])                                  # (2, ..., 3)
        candidates = candidates - 360.0 * np.round((candidates - angles[t - 1]) / 360.0)   # nearest multiple
        distance = np.abs(candidates - angles[t - 1]).sum(-1)                          # (2, ...)
        angles[t] = np.where((distance[0] <= distance[1])[..., None], candidates[0], candidates[1])
    return angles


def write_bvh(path, joints, names="smpl", scale=1.0, fps=20.0):
    """Write HumanML3D joints (T, 22, 3), metres, Y up, as a BVH file atomically -> (path, rig positions (T, 22, 3)).

    The rig is the HumanML3D target skeleton (humanml3d_rig) with SMPL or Mixamo joint names; the root has 6 channels
    (position, then Zrotation Xrotation Yrotation), every other joint 3; angles are unwrapped over time (no 360 degree
    jumps between frames); scale multiplies lengths (100: centimetres). See solve_rotations for the method."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3) or len(joints) < 1:
        raise BVHError(f"write_bvh expects HumanML3D joints (T, 22, 3) in metres, got shape {joints.shape}")
    if not np.isfinite(joints).all():
        raise BVHError("write_bvh: the joints hold NaN or inf")
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(fps) and fps > 0):
        raise BVHError(f"write_bvh: scale and fps must be finite and > 0, got {scale}, {fps}")
    joint_names, parents, offsets = humanml3d_rig(names, joints)
    rotations, rig = solve_rotations(joints, parents, offsets, _T2M_TWIST, _T2M_LIMBS)
    local = rotations.copy()
    for j, parent in enumerate(parents):
        if parent >= 0:
            local[:, j] = np.swapaxes(rotations[:, parent], -1, -2) @ rotations[:, j]    # R_parent^T R_j
    angles = _euler_zxy(local)                                                          # (T, J, 3), continuous
    lines = ["HIERARCHY"]
    children = {j: [c for c in range(len(parents)) if parents[c] == j] for j in range(len(parents))}

    def emit(j, depth):
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if parents[j] < 0 else 'JOINT'} {joint_names[j]}")
        lines.append(f"{pad}{{")
        offset = np.zeros(3) if parents[j] < 0 else offsets[j] * scale
        lines.append(f"{pad}  OFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}")
        lines.append(f"{pad}  CHANNELS " + ("6 Xposition Yposition Zposition " if parents[j] < 0 else "3 ")
                     + "Zrotation Xrotation Yrotation")
        for c in children[j]:
            emit(c, depth + 1)
        if not children[j]:                                   # an End Site along the leaf's own bone
            end = 0.5 * offsets[j] * scale
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {end[0]:.6f} {end[1]:.6f} {end[2]:.6f}",
                          f"{pad}  }}"])
        lines.append(f"{pad}}}")
    emit(0, 0)
    order = [j for j in _tree_order(parents)]
    lines += ["MOTION", f"Frames: {len(joints)}", f"Frame Time: {1.0 / fps:.8f}"]
    for t in range(len(joints)):
        values = list(rig[t, 0] * scale) + [a for j in order for a in angles[t, j]]
        lines.append(" ".join(f"{v:.6f}" for v in values))
    text = "\n".join(lines) + "\n"
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as error:
        if tmp.is_file():
            tmp.unlink()
        raise BVHError(f"could not write {path}: {error.strerror or error}") from None
    return path, rig


def _tree_order(parents):
    """Joint indices in the order a BVH writes them: depth first, children in index order."""
    children = {j: [c for c in range(len(parents)) if parents[c] == j] for j in range(len(parents))}
    stack, order = [j for j in range(len(parents)) if parents[j] < 0][::-1], []
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(reversed(children[j]))
    return order


# ---------------------------------------------------------------------------------------------------------------------
# 8. Command line

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fk = sub.add_parser("fk", help="world positions of every joint of one file, in its own units and axes")
    fk.add_argument("file", help="a .bvh file")
    fk.add_argument("--out", required=True, help="positions.npz: positions (T, J, 3) and names (J,)")
    im = sub.add_parser("import", help="a folder or archive of .bvh files -> a dataset in the HumanML3D layout")
    im.add_argument("--src", action="append", required=True,
                    help="a folder of .bvh files or a .tar.xz / .tar.gz / .tar archive; repeat for several")
    im.add_argument("--out", required=True, help="the dataset folder to write, e.g. data/bandai")
    im.add_argument("--format", choices=["bandai", "generic"], default="generic",
                    help="bandai: the Bandai-Namco rig, captions from its labels; generic: --joint-map and --captions")
    im.add_argument("--joint-map", help="JSON {target joint: source joint | [a, b]}, or a built-in: "
                                        + ", ".join(f"{rig}" for rig in JOINT_MAPS))
    im.add_argument("--captions", help="CSV with columns file,caption (one or more rows per clip)")
    im.add_argument("--skeleton", choices=["t2m", "kit"], default="t2m", help="target skeleton (default t2m)")
    im.add_argument("--scale", type=float, default=None,
                    help="metres per file unit (default: inferred from the standing height, e.g. 0.01 for cm)")
    im.add_argument("--up", choices=["y", "z"], default="y", help="the files' up axis (default y)")
    ex = sub.add_parser("export", help="HumanML3D joints (T, 22, 3), metres, 20 fps -> a BVH file for animation tools")
    ex.add_argument("--joints", required=True, help="a (T, 22, 3) .npy: sample.py's <name>_joints.npy, a dataset's "
                                                    "new_joints/<id>.npy, another model's output")
    ex.add_argument("--out", required=True, help="the .bvh file to write")
    ex.add_argument("--names", choices=["smpl", "mixamo"], default="smpl",
                    help="joint names: SMPL's (pelvis, left_hip, ...) or Mixamo's (Hips, LeftUpLeg, ...)")
    ex.add_argument("--scale", type=float, default=1.0, help="length unit: 1 = metres (default), 100 = centimetres")
    ck = sub.add_parser("check", help="plausibility of every clip of an imported dataset: a table of distributions")
    ck.add_argument("root", help="the dataset folder, e.g. data/bandai")
    ck.add_argument("--skeleton", choices=["t2m", "kit"], default="t2m")
    args = p.parse_args(argv)
    if args.command == "fk" and not args.out.endswith(".npz"):
        p.error(f"--out {args.out}: positions are written as .npz; pass a path ending in .npz")
    if args.command in ("import", "export") and args.scale is not None and not (math.isfinite(args.scale)
                                                                              and args.scale > 0):
        p.error(f"--scale must be a finite number > 0, got {args.scale}")
    if args.command == "export" and not args.out.endswith(".bvh"):
        p.error(f"--out {args.out}: pass a path ending in .bvh")
    try:
        if args.command == "fk":
            bvh = read_bvh(args.file)
            positions = forward_kinematics(bvh)
            tmp = Path(args.out).with_name(Path(args.out).name + ".tmp.npz")
            np.savez(tmp, positions=positions, names=np.array(bvh.names), fps=bvh.fps)
            tmp.replace(args.out)
            print(f"wrote {args.out}: positions {positions.shape} ({len(bvh.names)} joints, {len(positions)} frames "
                  f"at {bvh.fps:g} fps) and names")
            return positions
        if args.command == "export":
            try:
                joints = np.load(args.joints, allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:
                reason = "not a .npy array" if "pickle" in str(error) else str(error)
                raise BVHError(f"cannot read {args.joints} as joints (T, 22, 3) in a .npy file: {reason}") from None
            humanml3d_rig()                                   # imports data.py (and torch) before the clock starts
            start = time.time()
            path, rig = write_bvh(args.out, joints, args.names, args.scale)
            error = np.linalg.norm(rig - joints, axis=-1)
            print(f"wrote {path}: {len(joints)} frames at 20 fps, {args.names} joint names; the rig's fixed bone "
                  f"lengths move joints by {np.median(error) * 1000:.2f} mm median, {error.max() * 1000:.2f} mm at "
                  f"most ({time.time() - start:.2f} s)")
            return path
        if args.command == "check":
            values = check_dataset(args.root, args.skeleton)
            print(f"{len(next(iter(values.values())))} clips of {args.root} (mirrors included)\n{format_check(values)}")
            return values
        try:
            joint_map = joint_map_for(args.joint_map, args.skeleton)
        except BVHError as error:
            p.error(str(error))
        report = import_dataset(args.src, args.out, args.format, joint_map, args.captions, args.skeleton, args.scale,
                                args.up)
        print(format_report(report))
        return report
    except (BVHError, OSError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
