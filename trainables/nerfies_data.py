"""Views with cameras for the Nerfies trainable: the project's synthetic deforming scene
(:mod:`trainables.deforming_scene`) or a capture folder in the Nerfies format (Park et al. 2021, the layout of
github.com/google/nerfies), read from a local path, never downloaded:

    dataset.json        {"count", "num_exemplars", "ids": [...], "train_ids": [...], "val_ids": [...]}
    scene.json          {"scale", "center": [x, y, z], "near", "far"}     (near/far in the scaled frame)
    metadata.json       {id: {"warp_id", "appearance_id", "camera_id"}}   (optional: warp_id = position in ids)
    camera/{id}.json    {"orientation": 3x3 world-to-camera, "position": camera centre, "focal_length",
                         "principal_point": [cx, cy], "image_size": [w, h], "skew", "pixel_aspect_ratio",
                         "radial_distortion", "tangential_distortion"}   (OpenCV: x right, y down, z forward)
    rgb/{scale}x/{id}.png
    points.npy          (optional) static background points, (K, 3), for the background loss

Cameras are converted to this project's convention (OpenGL camera-to-world, nerf_render): world points become
(x - center) * scale, c2w = [orientation^T diag(1, -1, -1) | (position - center) * scale]. Focal length and
principal point are divided by the image scale. Lens distortion and skew are ignored (the reader says so in the
docstring rather than silently undistorting; the synthetic data has none). A missing or corrupt folder raises
:class:`CaptureError` with one readable line. The writer exists for tests and to export the synthetic scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainables.deforming_scene import DeformingSceneData, Frames

GL_FROM_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # camera axes: OpenCV (y down, z forward) <-> OpenGL


class CaptureError(ValueError):
    """A Nerfies capture folder is missing or corrupt; the message is one readable line."""


@dataclass(frozen=True)
class Views:
    """Images with their pinhole cameras and frame (warp) ids."""

    images: Tensor  # (N, H, W, 3) float32 in [0, 1]
    c2w: Tensor  # (N, 4, 4) float32, OpenGL camera-to-world
    focal: Tensor  # (N,) pixels
    principal: Tensor  # (N, 2) (cx, cy) pixels
    frame: Tensor  # (N,) int64: the deformation code's index

    def rays(self) -> tuple[Tensor, Tensor]:
        """Origins and unit directions (N, H, W, 3) through every pixel centre."""
        n, h, w, _ = self.images.shape
        j, i = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                              indexing="ij")
        f, cx, cy = self.focal[:, None, None], self.principal[:, 0, None, None], self.principal[:, 1, None, None]
        # OpenGL camera-frame direction ((u - cx)/f, -(v - cy)/f, -1) of pixel (row j, column i)
        d_cam = torch.stack([(i + 0.5 - cx) / f, -(j + 0.5 - cy) / f, -torch.ones(n, h, w)], -1)
        d = torch.einsum("nhwc,nrc->nhwr", d_cam, self.c2w[:, :3, :3])  # d_world = R d_cam
        d = d / d.norm(dim=-1, keepdim=True)
        return self.c2w[:, None, None, :3, 3].expand_as(d), d


@dataclass(frozen=True)
class Capture:
    train: Views
    val: Views
    near: float
    far: float
    num_frames: int  # deformation codes: 1 + the largest frame id
    static_points: Tensor | None = None  # (K, 3) points known to be static (Nerfies: SfM points of the background)


def _views(frames: Frames, focal: float, height: int, width: int) -> Views:
    n = len(frames.images)
    return Views(frames.images, frames.c2w, torch.full((n,), float(focal)),
                 torch.tensor([[width / 2, height / 2]]).expand(n, 2).clone(), frames.index.long())


def static_points(data: DeformingSceneData, count: int = 256, seed: int = 0) -> Tensor:
    """Points inside the scene's static primitives (no shift, no stretch): the synthetic stand-in for the static
    background points Nerfies takes from structure from motion (its background loss keeps them in place)."""
    static = [p for p in data.scene.primitives if p.stretch == 0.0 and not any(p.shift)]
    if not static:
        return torch.zeros(0, 3)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(count, 3, generator=g)
    u = u / u.norm(dim=-1, keepdim=True) * torch.rand(count, 1, generator=g) ** (1 / 3) * 0.9  # inside |u| < 0.9
    which = torch.arange(count) % len(static)
    centres = torch.tensor([p.centre for p in static])[which]
    axes = torch.tensor([p.axes for p in static])[which]
    return (centres + axes * u).float()


def from_synthetic(data: DeformingSceneData) -> Capture:
    """The synthetic scene's train frames and held-out views (same times, other poses) as a capture."""
    return Capture(_views(data.train, data.focal, data.height, data.width),
                   _views(data.heldout, data.focal, data.height, data.width), data.near, data.far,
                   int(data.train.index.max()) + 1, static_points(data))


def write_capture(root: str | Path, capture: Capture) -> Path:
    """Write ``capture`` as a Nerfies folder (scale 1, centre 0, 1x images as 8-bit PNG) and return it."""
    from PIL import Image

    root = Path(root)
    (root / "camera").mkdir(parents=True, exist_ok=True)
    (root / "rgb" / "1x").mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"train": [], "val": []}
    metadata = {}
    for split, views in (("train", capture.train), ("val", capture.val)):
        for k in range(len(views.images)):
            name = f"{split}_{k:04d}"
            ids[split].append(name)
            metadata[name] = {"warp_id": int(views.frame[k]), "appearance_id": int(views.frame[k]), "camera_id": 0}
            c2w = views.c2w[k].double()
            h, w = views.images.shape[1:3]
            camera = {"orientation": (GL_FROM_CV.double() @ c2w[:3, :3].T).tolist(),  # R_w2c (OpenCV)
                      "position": c2w[:3, 3].tolist(), "focal_length": float(views.focal[k]),
                      "principal_point": views.principal[k].tolist(), "image_size": [w, h], "skew": 0.0,
                      "pixel_aspect_ratio": 1.0, "radial_distortion": [0.0, 0.0, 0.0],
                      "tangential_distortion": [0.0, 0.0]}
            (root / "camera" / f"{name}.json").write_text(json.dumps(camera))
            pixels = (views.images[k].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "rgb" / "1x" / f"{name}.png")
    all_ids = ids["train"] + ids["val"]
    (root / "dataset.json").write_text(json.dumps({"count": len(all_ids), "num_exemplars": len(ids["train"]),
                                                   "ids": all_ids, "train_ids": ids["train"],
                                                   "val_ids": ids["val"]}))
    (root / "metadata.json").write_text(json.dumps(metadata))
    if capture.static_points is not None:
        np.save(root / "points.npy", capture.static_points.double().numpy())
    (root / "scene.json").write_text(json.dumps({"scale": 1.0, "center": [0.0, 0.0, 0.0], "near": capture.near,
                                                 "far": capture.far}))
    return root


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CaptureError(f"Nerfies capture: {path} is missing") from None
    except (OSError, ValueError) as err:
        raise CaptureError(f"Nerfies capture: {path} is not readable JSON ({type(err).__name__})") from None


def check_capture(root: str | Path | None) -> None:
    """Cheap checks before any trial starts: the folder and its dataset.json and scene.json are there."""
    if not root:
        raise CaptureError("Nerfies capture: dataset 'nerfies' needs data_dir, the capture folder")
    root = Path(root)
    if not root.is_dir():
        raise CaptureError(f"Nerfies capture: {root} is not a folder")
    for name in ("dataset.json", "scene.json"):
        _json(root / name)


def read_capture(root: str | Path, image_scale: int = 1) -> Capture:
    """Read a Nerfies capture folder (see the module docstring): train_ids and val_ids with their cameras."""
    from PIL import Image

    root = Path(root)
    check_capture(root)
    dataset, scene = _json(root / "dataset.json"), _json(root / "scene.json")
    meta_path = root / "metadata.json"
    metadata = _json(meta_path) if meta_path.exists() else {}
    try:
        scale, center = float(scene["scale"]), torch.tensor(scene["center"], dtype=torch.float64)
        near, far = float(scene["near"]), float(scene["far"])
        all_ids = list(dataset["ids"])
        splits = {"train": list(dataset["train_ids"]), "val": list(dataset["val_ids"])}
    except (KeyError, TypeError, ValueError) as err:
        raise CaptureError(f"Nerfies capture: {root}/dataset.json or scene.json lacks a field ({err})") from None
    if not splits["train"] or not splits["val"]:
        raise CaptureError(f"Nerfies capture: {root}/dataset.json has no train_ids or no val_ids")

    def frame_id(name: str) -> int:
        if name in metadata:
            return int(metadata[name]["warp_id"])
        return all_ids.index(name) if name in all_ids else 0

    def load(names: list[str]) -> Views:
        images, c2ws, focals, principals = [], [], [], []
        for name in names:
            cam = _json(root / "camera" / f"{name}.json")
            png = root / "rgb" / f"{image_scale}x" / f"{name}.png"
            try:
                with Image.open(png) as im:
                    pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                rot = torch.tensor(cam["orientation"], dtype=torch.float64)
                pos = torch.tensor(cam["position"], dtype=torch.float64)
                focals.append(float(cam["focal_length"]) / image_scale)
                principals.append([float(v) / image_scale for v in cam["principal_point"]])
            except FileNotFoundError:
                raise CaptureError(f"Nerfies capture: image {png} is missing") from None
            except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
                raise CaptureError(f"Nerfies capture: camera or image of {name!r} is corrupt "
                                   f"({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
            c2w = torch.eye(4, dtype=torch.float64)
            c2w[:3, :3] = rot.T @ GL_FROM_CV.double()  # R_c2w (OpenGL) = R_w2c^T diag(1, -1, -1)
            c2w[:3, 3] = (pos - center) * scale
            images.append(torch.from_numpy(pixels))
            c2ws.append(c2w.float())
        if len({tuple(im.shape) for im in images}) != 1:
            raise CaptureError(f"Nerfies capture: images of {root}/rgb/{image_scale}x differ in size")
        return Views(torch.stack(images), torch.stack(c2ws), torch.tensor(focals), torch.tensor(principals),
                     torch.tensor([frame_id(n) for n in names], dtype=torch.long))

    train, val = load(splits["train"]), load(splits["val"])
    num_frames = int(max(train.frame.max(), val.frame.max())) + 1
    points = None
    if (root / "points.npy").exists():  # the Nerfies repo's static background points, in world units
        try:
            raw = torch.from_numpy(np.load(root / "points.npy")).double().reshape(-1, 3)
        except (OSError, ValueError, RuntimeError) as err:
            raise CaptureError(f"Nerfies capture: {root}/points.npy is corrupt ({type(err).__name__})") from None
        points = ((raw - center) * scale).float()
    return Capture(train, val, near, far, num_frames, points)
