"""``depthclip-ros infer``: depth, a 16-bit PNG, a preview and a PLY for image files.

Inputs are image files, folders of images and video files. The intrinsics are those of
the images as given (all from one camera).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..dataset import expand_inputs, iter_images
from ..geometry import backproject, Intrinsics, intrinsics_from_hfov
from ..model import DepthCLIP, RANDOM_WEIGHTS_BANNER
from ..visualize import preview, write_depth_png, write_ply, write_rgb_png
from .common import add_model_arguments, load_engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('inputs', nargs='+', type=Path, help='images, folders or videos')
    camera = parser.add_mutually_exclusive_group(required=True)
    camera.add_argument('--intrinsics', type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'),
                        help='pinhole intrinsics (px) of the images as given')
    camera.add_argument('--hfov-deg', type=float,
                        help='horizontal field of view when the intrinsics are unknown '
                             '(square pixels, centred principal point)')
    parser.add_argument('--output', '-o', type=Path, required=True, help='output folder')
    parser.add_argument('--max-depth-m', type=float, default=20.0,
                        help='points beyond this are left out of the PLY (default 20)')
    add_model_arguments(parser)


def intrinsics_for(args: argparse.Namespace, height: int, width: int) -> Intrinsics:
    if args.intrinsics is not None:
        fx, fy, cx, cy = args.intrinsics
        return Intrinsics(fx, fy, cx, cy, width, height)
    return intrinsics_from_hfov(height, width, args.hfov_deg)


def write_outputs(output: Path, stem: str, rgb: np.ndarray, depth: np.ndarray,
                  camera: Intrinsics, random_weights: bool, max_depth_m: float) -> None:
    banner = RANDOM_WEIGHTS_BANNER if random_weights else None
    np.save(output / f'{stem}_depth.npy', depth.astype(np.float32))
    write_depth_png(output / f'{stem}_depth.png', depth)
    write_rgb_png(output / f'{stem}_preview.png',
                  preview(rgb, depth, 'RANDOM WEIGHTS: not a depth result' if banner else None))
    points = backproject(depth, camera, max_depth_m=max_depth_m)
    comment = 'depthclip_ros z-depth cloud, optical frame (x right, y down, z forward), metres'
    if banner:
        comment += '\n' + banner
    write_ply(output / f'{stem}.ply', points, rgb, comment=comment)


def infer_all(engine: DepthCLIP, args: argparse.Namespace) -> list[str]:
    args.output.mkdir(parents=True, exist_ok=True)
    written = []
    for path in expand_inputs(args.inputs):
        for stem, rgb in iter_images(path):
            camera = intrinsics_for(args, *rgb.shape[:2])
            depth = engine.predict(rgb, camera)
            write_outputs(args.output, stem, rgb, depth, camera, engine.random_weights,
                          args.max_depth_m)
            valid = depth[np.isfinite(depth)]
            print(f'{stem}: {rgb.shape[1]}x{rgb.shape[0]}, depth {valid.min():.2f}-'
                  f'{valid.max():.2f} m (median {np.median(valid):.2f})')
            written.append(stem)
    return written


def run(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    try:
        written = infer_all(engine, args)
    except ValueError as error:
        raise SystemExit(f'depthclip-ros infer: {error}') from None
    print(f'{len(written)} image(s) -> {args.output}/  (<stem>_depth.npy float32 m, '
          f'<stem>_depth.png uint16 mm, <stem>_preview.png, <stem>.ply)')
    if engine.random_weights:
        print(RANDOM_WEIGHTS_BANNER)
    return 0
