"""``depthclip-ros locate IMAGE --query TEXT ...``: objects named in words, found in metres.

For every query (a referring expression such as "the red chair next to the door") the
candidate mask that CLIP scores best (zero-shot referring segmentation, Yu et al. 2023:
depthclip_ros.objects.referring) is chosen, and its position and box are computed from the
metric depth of the same engine (z of the position = its distance along the optical
axis). The candidates are the built-in proposals (colour and depth segmentation), or
the labels of ``--masks`` (a single-channel 8- or 16-bit PNG at the image's size,
0 = background, every other value one candidate).

Written into ``--output`` (created when missing; every file written whole or not at
all; an input file is never overwritten, such a run is refused; an existing file of
these names is replaced only with ``--overwrite``, else the run is refused listing them):

  <stem>_locate.png             preview: each query's chosen mask outlined, its text and
                                distance
  <stem>_proposals.png          the candidates used, a 16-bit label image (0 = none): for
                                programs (it looks black in a viewer)
  <stem>_proposals_preview.png  the same candidates coloured over the greyed image, for
                                people
  <stem>_<i>.ply                the inlier points of query i (none when it found no
                                location)
  <stem>_locate.json            (or --json FILE) every query's answer and every
                                candidate's score

Exit status: 0 written; 1 writing failed (nothing of this run is left); 2 refused (an
option, the image, the masks or outputs that exist; one line naming the problem; nothing
is written).
With ``--pretrained none`` every score is meaningless: the preview, the JSON and the
summary say so.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
import os
from pathlib import Path
import sys
from typing import TYPE_CHECKING

import numpy as np

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.io.dataset import one_line, read_rgb
from depthclip_ros.io.outputs import (
    check_output_dir,
    check_output_file,
    check_outputs,
    OVERWRITE_HELP,
    replacing_note,
)
from depthclip_ros.objects.phrases import which_parser
from depthclip_ros.objects.proposals import check_labels, MAX_MASKS
from depthclip_ros.objects.queries import (
    check_mix,
    check_protocol,
    check_queries,
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    MAX_QUERIES,
    MAX_QUERY_CHARS,
    PROTOCOLS,
)
from depthclip_ros.ros.parameters import DEFAULT_MAX_INPUT_PIXELS
from depthclip_ros.tools.common import add_model_arguments, load_engine, node_range
from depthclip_ros.tools.infer import check_options as check_image_options
from depthclip_ros.tools.infer import intrinsics_for
from depthclip_ros.tools.progress import Stages

if TYPE_CHECKING:  # annotations only: torch is imported when the model loads
    pass
from depthclip_ros.tools.locate_outputs import candidate_labels, describe, Job, write_outputs

PROG = 'depthclip-ros locate'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('image', type=Path, help='an image file')
    parser.add_argument('--query', '-q', dest='queries', action='append', required=True,
                        metavar='TEXT', help='a referring expression ("the red chair next '
                        f'to the door"); repeat for more objects (at most {MAX_QUERIES}), '
                        f"each at most {MAX_QUERY_CHARS} characters and within CLIP's "
                        '77-token context')
    parser.add_argument('--noun-phrase', dest='noun_phrases', action='append',
                        metavar='TEXT', help="the query's target noun phrase instead of the "
                        'extracted one; give it once per --query, in the same order (same '
                        'limits as --query)')
    parser.add_argument('--masks', type=Path, metavar='LABELS.png',
                        help='candidate masks: a single-channel 8- or 16-bit label PNG at the '
                             "image's size, 0 = background (default: the built-in proposals)")
    parser.add_argument('--max-masks', type=int, default=MAX_MASKS,
                        help=f'candidates kept, the largest first, '
                             f'{node_range("object_max_masks")} (default {MAX_MASKS})')
    parser.add_argument('--alpha', type=float, default=DEFAULT_ALPHA,
                        help='visual mix: alpha * global + (1 - alpha) * local feature, 0..1 '
                             f'(default {DEFAULT_ALPHA}; 0.85 suits long expressions)')
    parser.add_argument('--beta', type=float, default=DEFAULT_BETA,
                        help='text mix: beta * sentence + (1 - beta) * noun phrase, 0..1 '
                             f'(default {DEFAULT_BETA})')
    parser.add_argument('--protocol', default='paper', metavar='|'.join(PROTOCOLS),
                        help="paper: the paper's 224x224 trunk pass for the global feature "
                             "(default); node: reuse the depth pass's feature map, as the "
                             'node does')
    parser.add_argument('--intrinsics', type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'),
                        required=True, help='pinhole intrinsics (px) of the image as given')
    parser.set_defaults(hfov_deg=None)  # infer's checks: --intrinsics is the camera here
    parser.add_argument('--output', '-o', type=Path, required=True,
                        help='output folder (created when missing)')
    parser.add_argument('--overwrite', action='store_true', help=OVERWRITE_HELP)
    parser.add_argument('--json', type=Path, metavar='FILE',
                        help='the answers as JSON (default: OUTPUT/<stem>_locate.json)')
    parser.add_argument('--max-depth-m', type=float, default=20.0,
                        help='depth beyond this is not part of an object; finite, > 0 '
                             '(default 20)')
    parser.add_argument('--max-input-pixels', type=int, default=DEFAULT_MAX_INPUT_PIXELS,
                        help='largest image (width x height) processed; a larger file is '
                             f'refused from its header; {node_range("max_input_pixels")} '
                             f'(default {DEFAULT_MAX_INPUT_PIXELS})')
    add_model_arguments(parser)


# ---------------------------------------------------------------------------------------
# Everything checked before the model is loaded


def check_options(args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    """The options (model, intrinsics, depth limit, mixing weights, protocol, queries);
    returns the stripped queries and noun phrases. ``ValueError`` naming the option."""
    check_image_options(args)
    for name in ('alpha', 'beta'):
        try:
            check_mix(name, getattr(args, name))
        except ValueError as error:
            raise ValueError(f'--{error}') from None
    try:
        check_protocol(args.protocol)
    except ValueError as error:
        raise ValueError(f'--{error}') from None
    if not 1 <= args.max_masks <= 64:
        raise ValueError(f'--max-masks must be in [1, 64], got {args.max_masks}')
    try:
        queries = check_queries(args.queries)
    except ValueError as error:
        raise ValueError(f'--query: {error}') from None
    phrases = args.noun_phrases
    if phrases is not None:
        if len(phrases) != len(queries):
            raise ValueError(f'--noun-phrase: give one per --query ({len(queries)} queries, '
                             f'{len(phrases)} noun phrases)')
        for phrase in phrases:
            if not phrase.strip():
                raise ValueError(f'--noun-phrase: every noun phrase must be non-empty, got '
                                 f'{phrase!r}')
        phrases = [phrase.strip() for phrase in phrases]
    return queries, phrases


def read_image(path: Path, max_pixels: int) -> np.ndarray:
    if not path.exists():
        raise ValueError(f'image {path} does not exist')
    if not path.is_file():
        raise ValueError(f'image {path} is not a file')
    return read_rgb(path, max_pixels)


def read_masks(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The label image of ``--masks``: single channel, 8 or 16 bit, the image's size."""
    import cv2
    if not path.exists():
        raise ValueError(f'masks {path} do not exist')
    try:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    except cv2.error as error:
        raise ValueError(f'cannot read masks {path} ({one_line(error)})') from None
    if labels is None:
        raise ValueError(f'cannot read masks {path} (not a file OpenCV can read as an '
                         f'image)')
    if labels.ndim != 2:
        raise ValueError(f'masks {path} have {labels.shape[2]} channels; a label image has '
                         f'one (8- or 16-bit, 0 = background)')
    if labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'masks {path} have {labels.dtype} pixels; a label image is 8- or '
                         f'16-bit unsigned')
    if labels.shape != tuple(shape):
        raise ValueError(f'masks {path} are {labels.shape[1]}x{labels.shape[0]}, the image '
                         f'is {shape[1]}x{shape[0]}')
    try:
        return check_labels(labels, tuple(shape))
    except ValueError as error:
        raise ValueError(f'masks {path}: {error}') from None


def _is_input(path: Path, inputs: list[Path]) -> Path | None:
    """The input that ``path`` is (same file, or same real path), or None."""
    for source in inputs:
        if os.path.realpath(path) == os.path.realpath(source):
            return source
        try:
            if os.path.samefile(path, source):
                return source
        except OSError:
            continue
    return None


def prepare(args: argparse.Namespace) -> Job:
    """Options, image, masks and output paths, all before the model is loaded;
    ``ValueError`` with the reason."""
    queries, phrases = check_options(args)
    rgb = read_image(args.image, args.max_input_pixels)
    labels = read_masks(args.masks, rgb.shape[:2]) if args.masks is not None else None
    camera = intrinsics_for(args, *rgb.shape[:2])
    check_output_dir(args.output)
    job = Job(args, rgb, labels, camera, queries, phrases)
    if args.json is not None:
        same_folder = os.path.realpath(args.json.parent) == os.path.realpath(args.output)
        if same_folder:
            if args.json.is_dir():
                raise ValueError(f'--json {args.json} is a folder, not a file')
        else:
            try:
                check_output_file(args.json)
            except ValueError as error:
                raise ValueError(f'--json: {error}') from None
    others = {os.path.realpath(path) for path in job.outputs() if path != job.json}
    if os.path.realpath(job.json) in others:
        raise ValueError(f'--json {job.json} is the name of another output of this run')
    inputs = [args.image] + ([args.masks] if args.masks is not None else [])
    for path in job.outputs():
        source = _is_input(path, inputs)
        if source is not None:
            raise ValueError(f'{path} would overwrite the input {source}; choose another '
                             f'--output{" or --json" if path == job.json else ""}')
    job.replaced = check_outputs(job.outputs(), args.overwrite)
    return job


# ---------------------------------------------------------------------------------------
# Running


def refuse(reason: str) -> int:
    print(f'{PROG}: {reason}', file=sys.stderr, flush=True)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        job = prepare(args)
    except ValueError as error:
        return refuse(one_line(error))
    note = replacing_note(job.replaced)
    if note:
        print(note)
    engine = load_engine(args)
    stages = Stages('locate', 3)
    from depthclip_ros.objects.finder import find_objects
    from depthclip_ros.objects.referring import ReferringCLIP
    from depthclip_ros.timing import StageTimer
    referring = ReferringCLIP(engine, args.alpha, args.beta)
    try:  # queries longer than the text encoder's context: refused before anything runs
        for text in [*job.queries, *(job.noun_phrases or [])]:
            referring.check_text(text)
    except ValueError as error:
        return refuse(f'--query: {one_line(error)}')
    stages.start(f'depth of the {job.rgb.shape[1]}x{job.rgb.shape[0]} image')
    prediction = engine.infer(job.rgb, job.camera, output_size=job.rgb.shape[:2])
    depth, tokens = prediction.depth, prediction.tokens

    class Announced(StageTimer):  # find_objects' stages, said as they start
        @contextmanager
        def stage(self, name):
            if name == 'proposals':
                stages.start('candidate masks from '
                             + ('--masks' if job.labels is not None else
                                'colour and depth (built-in proposals)'))
            elif name == 'referring':
                stages.start(f'scoring every candidate against {len(job.queries)} '
                             f'{"query" if len(job.queries) == 1 else "queries"} '
                             f'({args.protocol} protocol) and locating the best in 3-D')
            with super().stage(name):
                yield

    try:
        found = find_objects(referring, job.rgb, depth, job.camera, job.queries, job.labels,
                             job.noun_phrases, protocol=args.protocol,
                             tokens=tokens if args.protocol == 'node' else None,
                             max_masks=args.max_masks, max_depth_m=args.max_depth_m,
                             timer=Announced())
    except ValueError as error:  # a label image or text the referring step refuses
        return refuse(one_line(error))
    stages.finish()
    try:
        args.output.mkdir(parents=True, exist_ok=True)
        plys = write_outputs(job, found, engine.random_weights)
    except (OSError, ValueError) as error:
        print(f'{PROG}: writing failed, nothing of this run was kept: {one_line(error)}',
              file=sys.stderr, flush=True)
        return 1
    source = (f'{len(candidate_labels(found))} candidate masks from '
              + (str(args.masks) if args.masks is not None else 'the built-in proposals'))
    print(f'{args.image}: {job.rgb.shape[1]}x{job.rgb.shape[0]}, {source}, protocol '
          f'{args.protocol}, alpha {args.alpha:g}, beta {args.beta:g}, noun phrases: '
          f'{"given" if job.noun_phrases else which_parser()}')
    for result, ply, path in zip(found.results, plys, job.plys):
        print('  ' + describe(result, ply, ply is None and path.exists()))
    print(f'-> {job.preview}, {job.proposals.name} (labels, 16-bit), '
          f'{job.proposals_preview.name} (the candidates coloured), {job.json}')
    if engine.random_weights:
        print(f'{RANDOM_WEIGHTS_BANNER} The chosen masks, scores and positions are '
              f'meaningless too.')
    return 0
