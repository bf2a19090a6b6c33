"""``depthclip-ros infer``: depth, its uncertainty, a 16-bit PNG, a preview and a PLY for
image files.

Inputs are image files, folders of images and video files. The intrinsics are those of
the images as given (all from one camera).

Per image: ``<name>_depth.npy`` (float32 metres), ``<name>_depth.png`` (uint16 mm),
``<name>_uncertainty.npy`` (float32 metres: the standard deviation of the bin
distribution, docs/method.md §4, same size as the depth), ``<name>_preview.png`` (image |
depth | uncertainty, each colour map with its own scale in metres), ``<name>.ply`` (the
coloured cloud with a per-vertex ``uncertainty`` float), and with ``--json``
``<name>_summary.json`` (depth range, median uncertainty, the bins used and, with
scene-adaptive bins, the scene probabilities). With ``--bins-mode scene_soft`` or
``scene_hard`` every image's scene is classified on its own (images are independent) and
its bins mixed or picked from it.

Output names: every input gets its own files, named before anything is written. An
input's name is its file stem (``a.png`` -> ``a_depth.npy`` ...; a video's frames
``v_000000`` ...) unless another input would give the same names (compared ignoring case;
an image ``v_000000.png`` and a video ``v.mp4`` clash) or its files would replace an input
file in the output folder. Inputs that clash move on together to the first of these that
sets them apart: the file name with its suffix (``a.png``, ``a.jpg``), the parent folder's
name in front (``d1_frame``), then with the suffix (``d1_frame.png``), two parent folders,
and so on; as a last resort the input's position (``frame.png-3``). A unique stem is never
given up for a name another input moved to. The same file given twice (by any path or
link) is processed once. The names are printed when any input does not keep its stem.

Files that cannot be read (not an image, corrupt, more than ``--max-input-pixels``) are
reported on one line each and skipped; the rest are processed. Exit status: 0 when every
input was written, 1 when anything failed, 2 when an option, an input path or the output
folder is refused up front (nothing is loaded or written then).

No file that exists is replaced without ``--overwrite``: a run whose outputs (of any
input, a video's frames included) would replace existing files is refused up front with
exit status 2, listing them. Input files are never replaced, ``--overwrite`` or not
(they make their inputs move to other names, as above).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
import sys
from typing import TYPE_CHECKING

import numpy as np

from depthclip_ros.engine.config import MAX_SIDE_PX, mix_bins, RANDOM_WEIGHTS_BANNER, SceneEstimate
from depthclip_ros.geometry import backproject, Intrinsics, intrinsics_from_hfov
from depthclip_ros.io.dataset import (
    expand_inputs,
    iter_images,
    one_line,
    video_frame_count,
)
from depthclip_ros.io.outputs import (
    check_output_dir,
    check_outputs,
    OVERWRITE_HELP,
    replacing_note,
)
from depthclip_ros.io.visualize import (
    preview,
    save_json,
    save_npy,
    write_depth_png,
    write_ply,
    write_rgb_png,
)
from depthclip_ros.ros.parameters import DEFAULT_MAX_INPUT_PIXELS, validate
from depthclip_ros.tools.common import (
    add_model_arguments,
    check_max_depth,
    configs_from_args,
    load_engine,
    node_range,
    option_problem,
)
from depthclip_ros.tools.infer_names import (
    OUTPUT_SUFFIXES,
    Plan,
    plan_outputs,
    planned_files,
    print_plan,
    Source,
    SUMMARY_SUFFIX,
)
from depthclip_ros.tools.progress import Progress

if TYPE_CHECKING:  # annotations only: torch is imported when the model loads
    from depthclip_ros.engine.depthclip import DepthCLIP
    from depthclip_ros.engine.frames import Prediction

PROG = 'depthclip-ros infer'
# The files of every image; with --json also SUMMARY_SUFFIX.


def item_errors() -> tuple[type[BaseException], ...]:
    """What may go wrong with one input; anything else is a bug and keeps its traceback.
    (OpenCV's and torch's own, imported by then.)"""
    import cv2
    import torch
    return (ValueError, OSError, cv2.error, MemoryError, torch.cuda.OutOfMemoryError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('inputs', nargs='+', type=Path, help='images, folders or videos')
    camera = parser.add_mutually_exclusive_group(required=True)
    camera.add_argument('--intrinsics', type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'),
                        help='pinhole intrinsics (px) of the images as given; finite, fx and '
                             'fy > 0')
    camera.add_argument('--hfov-deg', type=float,
                        help='horizontal field of view (degrees, between 0 and 180) when the '
                             'intrinsics are unknown (square pixels, centred principal point)')
    parser.add_argument('--output', '-o', type=Path, required=True,
                        help='output folder (created when missing)')
    parser.add_argument('--overwrite', action='store_true', help=OVERWRITE_HELP)
    parser.add_argument('--max-depth-m', type=float, default=20.0,
                        help='points beyond this are left out of the PLY; finite, > 0 '
                             '(default 20)')
    parser.add_argument('--max-input-pixels', type=int, default=DEFAULT_MAX_INPUT_PIXELS,
                        help='largest image or video frame (width x height) processed; '
                             'larger files are refused from their header, before decoding; '
                             f'{node_range("max_input_pixels")} (default '
                             f'{DEFAULT_MAX_INPUT_PIXELS}, as the node parameter)')
    parser.add_argument('--json', action='store_true',
                        help=f'also write <name>{SUMMARY_SUFFIX} per image: size, '
                             f'intrinsics, depth range, median uncertainty, the bins used '
                             f'and, with scene-adaptive bins, the scene and its '
                             f'probabilities (scene_probabilities)')
    add_model_arguments(parser)


def suffixes_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The output files of one image in this run."""
    return OUTPUT_SUFFIXES + ((SUMMARY_SUFFIX,) if getattr(args, 'json', False) else ())


# ---------------------------------------------------------------------------------------
# Options, checked before anything is loaded


def check_options(args: argparse.Namespace) -> None:
    """The options, by the rules that need no torch (the device is checked when the model
    loads); ``ValueError`` naming the option."""
    configs_from_args(args)
    if args.intrinsics is not None:
        fx, fy, cx, cy = args.intrinsics
        if not all(math.isfinite(v) for v in args.intrinsics) or fx <= 0 or fy <= 0:
            raise ValueError(f'--intrinsics must be finite with fx, fy > 0, got '
                             f'{" ".join(f"{v:g}" for v in args.intrinsics)}')
    else:
        hfov = args.hfov_deg
        if not 0 < hfov < 180:  # NaN fails too
            raise ValueError(f'--hfov-deg must be in (0, 180) degrees, got {hfov}')
        try:  # the widest image must still get a finite focal length
            intrinsics_from_hfov(1, MAX_SIDE_PX, hfov)
        except (ValueError, ArithmeticError):
            raise ValueError(f'--hfov-deg {hfov} is too small: the focal length it gives '
                             f'is not finite') from None
    check_max_depth(args.max_depth_m)
    try:
        validate({'max_input_pixels': args.max_input_pixels})
    except ValueError as error:
        raise ValueError(option_problem(error, args)) from None


def intrinsics_for(args: argparse.Namespace, height: int, width: int) -> Intrinsics:
    if args.intrinsics is not None:
        fx, fy, cx, cy = args.intrinsics
        return Intrinsics(fx, fy, cx, cy, width, height)
    return intrinsics_from_hfov(height, width, args.hfov_deg)


# ---------------------------------------------------------------------------------------
# Running


def write_outputs(output: Path, stem: str, rgb: np.ndarray, depth: np.ndarray,
                  camera: Intrinsics, random_weights: bool, max_depth_m: float,
                  sigma: np.ndarray | None = None, summary: dict | None = None) -> None:
    """The files of one image: ``<stem>_depth.npy``, ``<stem>_depth.png``, with ``sigma``
    (``(H, W)`` float32 metres) ``<stem>_uncertainty.npy``, ``<stem>_preview.png``,
    ``<stem>.ply`` (with ``sigma``: a per-vertex ``uncertainty``), and with ``summary``
    ``<stem>_summary.json``; each written whole or not at all."""
    banner = RANDOM_WEIGHTS_BANNER if random_weights else None
    save_npy(output / f'{stem}_depth.npy', depth.astype(np.float32))
    write_depth_png(output / f'{stem}_depth.png', depth)
    if sigma is not None:
        save_npy(output / f'{stem}_uncertainty.npy', sigma.astype(np.float32))
    write_rgb_png(output / f'{stem}_preview.png',
                  preview(rgb, depth, 'RANDOM WEIGHTS: not a depth result' if banner else None,
                          sigma))
    points = backproject(depth, camera, max_depth_m=max_depth_m)
    comment = 'depthclip_ros z-depth cloud, optical frame (x right, y down, z forward), metres'
    if sigma is not None:
        comment += ('\nuncertainty: standard deviation of the depth bin distribution, '
                    'metres')
    if banner:
        comment += '\n' + banner
    write_ply(output / f'{stem}.ply', points, rgb, comment=comment,
              scalars=None if sigma is None else {'uncertainty': sigma})
    if summary is not None:
        save_json(output / f'{stem}{SUMMARY_SUFFIX}', summary)


def remove_outputs(output: Path, name: str, suffixes: tuple[str, ...] = OUTPUT_SUFFIXES
                   ) -> None:
    for suffix in suffixes:
        try:
            (output / f'{name}{suffix}').unlink()
        except OSError:  # absent, or part of the failure being reported
            pass


def _finite(value: float) -> float | None:
    """JSON has no NaN: ``None`` for a value that is not finite."""
    value = float(value)
    return value if math.isfinite(value) else None


def summary_of(source: Source, name: str, rgb: np.ndarray, camera: Intrinsics,
               prediction: Prediction, engine: DepthCLIP, bins: tuple[float, ...] | None,
               scene: SceneEstimate | None, suffixes: tuple[str, ...]) -> dict:
    """The ``--json`` document of one image (strict JSON: no NaN)."""
    valid = prediction.depth[np.isfinite(prediction.depth)]
    head = engine.head
    summary = {
        'input': str(source.path),
        'name': name,
        'size': [int(rgb.shape[0]), int(rgb.shape[1])],
        'intrinsics': {key: float(getattr(camera, key))
                       for key in ('fx', 'fy', 'cx', 'cy')},
        'depth_m': {key: _finite(f(valid)) if valid.size else None
                    for key, f in (('min', np.min), ('median', np.median), ('max', np.max))},
        # as the node's diagnostics: the median over the network's token grid
        'uncertainty_median_m': _finite(prediction.sigma_median_m),
        'bins_mode': head.bins_mode,
        'bins_m': list(bins if bins is not None else head.depth_bins_m),
    }
    if scene is not None:
        summary['scene'] = scene.chosen
        summary['scene_probabilities'] = scene.as_dict()
    summary['files'] = [f'{name}{suffix}' for suffix in suffixes]
    summary['random_weights'] = bool(engine.random_weights)
    if engine.random_weights:
        summary['note'] = RANDOM_WEIGHTS_BANNER
    return summary


def report(what: object, error: BaseException) -> None:
    """One line on stderr: the input (or video frame) skipped and why."""
    reason = one_line(error)
    what = str(what)
    if reason.startswith(what + ': '):  # read_rgb names the file itself
        reason = reason[len(what) + 2:]
    print(f'{PROG}: skipped {what}: {reason}', file=sys.stderr, flush=True)


def describe(name: str, rgb: np.ndarray, depth: np.ndarray,
             sigma_median_m: float | None = None, scene: SceneEstimate | None = None) -> str:
    valid = depth[np.isfinite(depth)]
    size = f'{name}: {rgb.shape[1]}x{rgb.shape[0]}'
    if not valid.size:
        text = f'{size}, no finite depth'
    else:
        text = (f'{size}, depth {valid.min():.2f}-{valid.max():.2f} m '
                f'(median {np.median(valid):.2f})')
    if sigma_median_m is not None:
        text += f', uncertainty median {sigma_median_m:.3f} m'
    if scene is not None:
        text += f', scene {scene.chosen} ({max(scene.probabilities):.2f})'
    return text


def frames_to_do(plan: Plan) -> int | None:
    """Images and video frames of the run, as the videos declare them (``None`` when one
    declares no count): the progress total."""
    total = 0
    for source in plan.sources:
        count = video_frame_count(source.path) if source.video else 1
        if count is None:
            return None
        total += count
    return total


def infer_all(engine: DepthCLIP, args: argparse.Namespace, plan: Plan) -> tuple[int, int]:
    """Process every planned input; returns ``(written, failed)``: images and video frames
    written, and images, frames or whole inputs that failed (each reported). Progress
    (count, rate, ETA) on stderr."""
    written = failed = 0
    head = engine.head
    # the engine's own classifier: its text features are encoded once for the run
    scenes = engine.scene_classifier if head.bins_mode != 'fixed' else None
    suffixes = suffixes_of(args)
    errors = item_errors()
    with Progress('infer', 'image', frames_to_do(plan)) as progress:
        for source in plan.sources:
            try:
                for name, rgb in iter_images(source.path, args.max_input_pixels, source.name):
                    scene = None
                    try:
                        camera = intrinsics_for(args, *rgb.shape[:2])
                        bins = None
                        if scenes is not None:  # every image on its own: independent
                            scene = scenes.classify(rgb, head.scene_names,
                                                    head.scene_prompt_template)
                            bins = mix_bins(scene, head.scene_bin_sets, head.bins_mode)
                        prediction = engine.infer(rgb, camera, uncertainty=True, bins_m=bins)
                        depth = prediction.depth
                        summary = (summary_of(source, name, rgb, camera, prediction, engine,
                                              bins, scene, suffixes) if args.json else None)
                        write_outputs(args.output, name, rgb, depth, camera,
                                      engine.random_weights, args.max_depth_m,
                                      prediction.sigma, summary)
                    except errors as error:
                        failed += 1
                        remove_outputs(args.output, name, suffixes)  # all its files or none
                        report(f'{source.path} ({name})' if source.video else source.path,
                               error)
                        progress.step()
                        continue
                    progress.write(describe(name, rgb, depth, prediction.sigma_median_m,
                                            scene))
                    written += 1
                    progress.step()
            except errors as error:
                failed += 1
                report(source.path, error)
                if not source.video:
                    progress.step()
    return written, failed


def prepare(args: argparse.Namespace) -> tuple[Plan, list[Path]]:
    """Everything checked before the model is loaded: the options, the inputs, the output
    names and the files they would replace; ``ValueError`` with the reason. Returns the
    plan and the existing files it replaces (only with ``--overwrite``)."""
    check_options(args)
    check_output_dir(args.output)
    suffixes = suffixes_of(args)
    plan = plan_outputs(expand_inputs(args.inputs), args.output, suffixes)
    files, series = planned_files(plan, args.output, suffixes)
    return plan, check_outputs(files, args.overwrite, series)


def run(args: argparse.Namespace) -> int:
    try:
        plan, replaced = prepare(args)
    except ValueError as error:
        print(f'{PROG}: {one_line(error)}', file=sys.stderr)
        return 2
    print_plan(plan)
    note = replacing_note(replaced)
    if note:
        print(note)
    engine = load_engine(args)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f'{PROG}: cannot create the output folder ({one_line(error)})', file=sys.stderr)
        return 1
    written, failed = infer_all(engine, args, plan)
    if engine.random_weights:
        print(RANDOM_WEIGHTS_BANNER)
    summary = f', <name>{SUMMARY_SUFFIX}' if args.json else ''
    print(f'{written} written, {failed} failed -> {args.output}/  (<name>_depth.npy float32 '
          f'm, <name>_depth.png uint16 mm, <name>_uncertainty.npy float32 m, '
          f'<name>_preview.png, <name>.ply{summary})')
    if engine.head.bins_mode != 'fixed':
        print(f'bins: {engine.head.bins_mode} over the scenes '
              f'{", ".join(engine.head.scene_names)} (each image classified on its own)'
              + ('; with random weights the scene probabilities are meaningless too'
                 if engine.random_weights else ''))
    return 1 if failed else 0
