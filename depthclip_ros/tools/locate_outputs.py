"""What ``depthclip-ros locate`` writes: the preview (the image with each query's mask,
box and distance), the label images of the candidate masks (16-bit, and a coloured
preview of them), one PLY per located object and the JSON document of the answers."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.io.dataset import one_line
from depthclip_ros.io.outputs import atomic_path
from depthclip_ros.io.visualize import (
    colorize_labels,
    query_rgb,
    write_ply,
    write_rgb_png,
)
from depthclip_ros.objects.phrases import which_parser

if TYPE_CHECKING:  # annotations only: torch is imported when the model loads
    from depthclip_ros.objects.finder import Found
    from depthclip_ros.objects.locate import ObjectResult

PREVIEW_MIN_WIDTH = 480  # smaller images are enlarged (nearest) so that the text is legible
PREVIEW_MAX_SCALE = 8
LABEL_LINE = 20  # pixels between stacked text lines in the preview
RANDOM_PREVIEW_BANNER = 'RANDOM WEIGHTS: masks and scores are not a result'




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
