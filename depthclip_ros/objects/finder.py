"""Objects named in words, found in metres: proposals, referring, 3-D, for one frame.

The step shared by the node, ``depthclip-ros bag --query`` and ``depthclip-ros locate``:
candidate masks (the user's label image, or :func:`~depthclip_ros.objects.proposals.propose`),
the best mask per query (:class:`~depthclip_ros.objects.referring.ReferringCLIP`), and its
position and box from the metric depth (:func:`~depthclip_ros.objects.locate`).
No rclpy here.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Sequence

import numpy as np

from depthclip_ros.geometry import Intrinsics
from depthclip_ros.objects.locate import locate, ObjectResult, query_labels
from depthclip_ros.objects.proposals import check_labels, masks_from_labels, MAX_MASKS, propose
from depthclip_ros.objects.referring import ReferringCLIP
from depthclip_ros.timing import stage_or_nothing, StageTimer


@dataclass(frozen=True)
class Found:
    """One frame's answer: a result per query, the candidates' label image (0 = none) and
    the queries' label image (query index + 1 where its chosen mask is)."""

    results: list[ObjectResult]
    proposals: np.ndarray  # (H, W) int32
    labels: np.ndarray  # (H, W) uint16


def find_objects(referring: ReferringCLIP, rgb: np.ndarray, depth: np.ndarray,
                 camera: Intrinsics, queries: Sequence[str],
                 labels: np.ndarray | None = None,
                 noun_phrases: Sequence[str | None] | None = None,
                 protocol: str = 'paper', tokens=None, max_masks: int = MAX_MASKS,
                 min_depth_m: float = 0.0, max_depth_m: float = math.inf,
                 timer: StageTimer | None = None) -> Found:
    """Find every query's object in one frame.

    ``rgb`` ``(H, W, 3)`` uint8, ``depth`` ``(H, W)`` metres and ``camera`` all at the same
    size; ``labels``: the candidates as a label image of that size (0 = background), or
    ``None`` for the built-in proposals. ``tokens``: the depth pass's feature map, for
    ``protocol='node'``. Raises ``ValueError`` (``ProposalError``) for a bad label image.
    """
    stage = stage_or_nothing(timer)
    if depth.shape != rgb.shape[:2] or camera.size != rgb.shape[:2]:
        raise ValueError(f'rgb {rgb.shape[:2]}, depth {depth.shape} and camera '
                         f'{camera.size} must have the same size')
    with stage('proposals'):
        if labels is None:
            labels = propose(rgb, depth, max_masks=max_masks)
        else:
            labels = check_labels(labels, rgb.shape[:2])
        ids, masks = masks_from_labels(labels, max_masks=max_masks)
    with stage('referring'):
        referrals = referring.refer(rgb, masks, ids, queries, noun_phrases, protocol, tokens)
    results = []
    with stage('locate'):
        position = {int(label): i for i, label in enumerate(ids)}
        for index, referral in enumerate(referrals):
            location = None
            if referral.labels:
                mask = masks[position[referral.label]]
                location = locate(depth, camera, mask, min_depth_m, max_depth_m)
            results.append(ObjectResult(
                query=referral.query, index=index, noun_phrase=referral.noun_phrase,
                label=referral.label if referral.labels else 0,
                score=referral.score if referral.labels else float('nan'),
                margin=referral.margin,
                candidates=tuple(zip(referral.labels, referral.scores)),
                location=location))
        chosen = query_labels(results, labels)
    return Found(results, labels, chosen)


__all__ = ['Found', 'find_objects']
