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
import json
import math
import os
from pathlib import Path
import sys
from typing import TYPE_CHECKING

import numpy as np

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.io.dataset import one_line, read_rgb
from depthclip_ros.io.outputs import (
    check_output_dir,
    check_output_file,
    check_outputs,
    OVERWRITE_HELP,
    replacing_note,
)
from depthclip_ros.io.visualize import (
    atomic_path,
    colorize_labels,
    query_rgb,
    write_ply,
    write_rgb_png,
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
    from depthclip_ros.objects.finder import Found
    from depthclip_ros.objects.locate import ObjectResult

PROG = 'depthclip-ros locate'
PREVIEW_MIN_WIDTH = 480  # smaller images are enlarged (nearest) so that the text is legible
PREVIEW_MAX_SCALE = 8
LABEL_LINE = 20  # pixels between stacked text lines in the preview
RANDOM_PREVIEW_BANNER = 'RANDOM WEIGHTS: masks and scores are not a result'


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


class Job:
    """The checked inputs and the planned outputs of one run."""

    def __init__(self, args: argparse.Namespace, rgb: np.ndarray, labels: np.ndarray | None,
                 camera: Intrinsics, queries: list[str], noun_phrases: list[str] | None):
        self.args, self.rgb, self.labels, self.camera = args, rgb, labels, camera
        self.queries, self.noun_phrases = queries, noun_phrases
        stem = args.image.stem
        out = args.output
        self.preview = out / f'{stem}_locate.png'
        self.proposals = out / f'{stem}_proposals.png'
        self.proposals_preview = out / f'{stem}_proposals_preview.png'
        self.plys = [out / f'{stem}_{index}.ply' for index in range(len(queries))]
        self.json = args.json if args.json is not None else out / f'{stem}_locate.json'
        self.replaced: list[Path] = []  # existing files this run replaces (--overwrite)

    def outputs(self) -> list[Path]:
        return [self.preview, self.proposals, self.proposals_preview, *self.plys, self.json]


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
# Outputs


def query_colour(index: int) -> tuple[int, int, int]:
    """8-bit RGB of query ``index``: the colour rviz shows it in."""
    return tuple(int(round(255 * c)) for c in query_rgb(index))


def _ascii(text: str) -> str:
    """What OpenCV's fonts and a PLY header can hold: one line of ASCII."""
    return ' '.join(text.split()).encode('ascii', 'replace').decode('ascii')


def distance(result: ObjectResult) -> str:
    return 'no depth' if result.location is None else f'{result.location.position_m[2]:.2f} m'


def _text(image: np.ndarray, text: str, origin: tuple[int, int], colour,
          background=None, scale: float = 0.45) -> None:
    import cv2
    font = cv2.FONT_HERSHEY_SIMPLEX
    (width, height), base = cv2.getTextSize(text, font, scale, 1)
    x, y = origin
    x = int(min(max(x, 0), max(image.shape[1] - width - 2, 0)))
    y = int(min(max(y, height + 2), image.shape[0] - base - 1))
    if background is not None:
        cv2.rectangle(image, (x, y - height - 2), (x + width + 2, y + base), background, -1)
    cv2.putText(image, text, (x + 1, y), font, scale, colour, 1, cv2.LINE_AA)


def render_preview(rgb: np.ndarray, found: Found, random_weights: bool) -> np.ndarray:
    """The image (enlarged when small) with each query's chosen mask outlined and labelled
    with its index, text and distance; below it one line per query; a banner on top with
    random weights. RGB uint8."""
    import cv2
    height, width = rgb.shape[:2]
    scale = min(max(1, math.ceil(PREVIEW_MIN_WIDTH / width)), PREVIEW_MAX_SCALE)
    image = cv2.resize(rgb, (width * scale, height * scale),
                       interpolation=cv2.INTER_NEAREST) if scale > 1 else rgb.copy()
    chosen = [result for result in found.results if result.label != 0]
    sharing = {}  # label -> queries that chose it
    for result in chosen:
        sharing.setdefault(result.label, []).append(result)
    labels = []
    for result in chosen:
        colour = query_colour(result.index)
        mask = (found.proposals == result.label).astype(np.uint8)
        if scale > 1:
            mask = cv2.resize(mask, (width * scale, height * scale),
                              interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        # queries that chose the same mask: the earlier outline is wider, so all show
        others = sharing[result.label]
        rank = others.index(result)
        cv2.drawContours(image, contours, -1, colour, 2 * (len(others) - rank))
        rows, cols = np.nonzero(mask)
        top = max(int(rows.min()) - 3, LABEL_LINE - 4)  # above the mask, inside the image
        labels.append((result, colour, (int(cols.min()), top + LABEL_LINE * rank)))
    for result, colour, origin in labels:  # text over every outline
        _text(image, f'{result.index}: {_ascii(result.query)}  {distance(result)}', origin,
              (0, 0, 0), colour)
    legend = np.full((LABEL_LINE * len(found.results) + 8, image.shape[1], 3), 255, np.uint8)
    for row, result in enumerate(found.results):
        y = LABEL_LINE * (row + 1)
        cv2.rectangle(legend, (4, y - 12), (16, y), query_colour(result.index), -1)
        what = (f'label {result.label}, score {result.score:.2f}' if result.label else
                'no candidate')
        _text(legend, f'{result.index}: {_ascii(result.query)} -> {distance(result)} '
              f'({what})', (22, y), (0, 0, 0))
    parts = [image, legend]
    if random_weights:
        strip = np.full((24, image.shape[1], 3), (255, 255, 0), np.uint8)
        _text(strip, RANDOM_PREVIEW_BANNER, (4, 16), (0, 0, 0))
        parts.insert(0, strip)
    return np.concatenate(parts, axis=0)


def write_labels_png(path: Path, labels: np.ndarray) -> None:
    """A 16-bit label PNG (0 = none), written whole or not at all."""
    import cv2
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise ValueError(f'labels {labels.min()}..{labels.max()} do not fit a 16-bit PNG')
    with atomic_path(path) as temporary:
        try:
            ok = cv2.imwrite(str(temporary), labels.astype(np.uint16))
        except cv2.error as error:
            raise OSError(f'cannot write {path} ({one_line(error)})') from None
        if not ok:
            raise OSError(f'cannot write {path}')


def candidate_labels(found: Found) -> list[int]:
    """The candidates scored (every query scores the same ones)."""
    return [label for label, _ in found.results[0].candidates] if found.results else []


def candidates_only(found: Found) -> np.ndarray:
    """The proposals' label image without the labels left out (beyond ``--max-masks``)."""
    return np.where(np.isin(found.proposals, candidate_labels(found)), found.proposals, 0)


def write_json(path: Path, document: dict) -> None:
    text = json.dumps(document, indent=2, allow_nan=False) + '\n'
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


def ply_comment(result: ObjectResult, random_weights: bool) -> str:
    comment = (f'depthclip_ros object points of query {result.index}: '
               f'"{_ascii(result.query)}"; optical frame (x right, y down, z forward), '
               f'metres')
    return comment + ('\n' + RANDOM_WEIGHTS_BANNER if random_weights else '')


def document(job: Job, found: Found, random_weights: bool, plys: list[Path | None]) -> dict:
    """The JSON: the run's settings, then :meth:`ObjectResult.to_json` per query plus the
    name of its PLY (``null`` when it found no location)."""
    camera = job.camera
    doc = {'image': str(job.args.image), 'random_weights': bool(random_weights)}
    if random_weights:
        doc['warning'] = RANDOM_WEIGHTS_BANNER
    doc.update({
        'masks_file': str(job.args.masks) if job.args.masks is not None else None,
        'proposals': 'file' if job.args.masks is not None else 'builtin',
        'protocol': job.args.protocol,
        'alpha': float(job.args.alpha),
        'beta': float(job.args.beta),
        'intrinsics': {'fx': camera.fx, 'fy': camera.fy, 'cx': camera.cx, 'cy': camera.cy,
                       'width': camera.width, 'height': camera.height},
        'noun_phrase_parser': which_parser(),
        'model': job.args.model,
        'pretrained': job.args.pretrained,
        'input_size': list(job.args.input_size),
        'queries': [{**result.to_json(), 'ply': ply.name if ply is not None else None}
                    for result, ply in zip(found.results, plys)],
    })
    return doc


def write_outputs(job: Job, found: Found, random_weights: bool) -> list[Path | None]:
    """Every file of the run; on a failure the files already written are removed and the
    ``OSError`` raised. Returns the PLY written per query (None: no location)."""
    written: list[Path] = []
    plys: list[Path | None] = []
    try:
        write_rgb_png(job.preview, render_preview(job.rgb, found, random_weights))
        written.append(job.preview)
        candidates = candidates_only(found)
        write_labels_png(job.proposals, candidates)
        written.append(job.proposals)
        write_rgb_png(job.proposals_preview, colorize_labels(candidates, job.rgb))
        written.append(job.proposals_preview)
        for result, path in zip(found.results, job.plys):
            if result.location is None:
                plys.append(None)
                continue
            write_ply(path, result.location.points,
                      np.tile(np.array(query_colour(result.index), np.uint8),
                              (len(result.location.points), 1)),
                      comment=ply_comment(result, random_weights))
            written.append(path)
            plys.append(path)
        write_json(job.json, document(job, found, random_weights, plys))  # last: complete
    except (OSError, ValueError):
        for path in written:
            try:
                path.unlink()
            except OSError:
                pass
        raise
    return plys


def describe(result: ObjectResult, ply: Path | None, stale: bool) -> str:
    if result.label == 0:
        return f'[{result.index}] {result.query!r}: no candidate mask'
    margin = 'n/a' if result.margin is None else f'{result.margin:.2f}'
    text = (f'[{result.index}] {result.query!r} (noun phrase {result.noun_phrase!r}): '
            f'label {result.label}, score {result.score:.2f}, margin {margin}, ')
    if result.location is None:
        note = ' (an older file of that name is from an earlier run)' if stale else ''
        return text + f'no valid depth under its mask, no PLY written{note}'
    x, y, z = result.location.position_m
    return (text + f'position ({x:.2f}, {y:.2f}, {z:.2f}) m, {len(result.location.points)} '
            f'points -> {ply.name}')


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
