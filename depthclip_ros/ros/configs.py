"""Node parameter values to the engine's configurations: the one mapping, used by both node
classes, and by the command-line tools (their model options are the same parameters).

Torch-free: building a configuration checks it (``engine.config``'s rules) and loads
nothing. ``values`` is a ``{parameter name: value}`` dict; a parameter it lacks takes its
default from the table (:data:`~depthclip_ros.ros.parameters.DEFAULTS`), so a tool can pass
only the options it has.
"""

from __future__ import annotations

from typing import Callable

from depthclip_ros.engine.config import check_scene_template, HeadConfig, ModelConfig
from depthclip_ros.ros.parameters import DEFAULTS, HEAD_PARAMETERS, MODEL_PARAMETERS


def _given(values: dict, names) -> dict:
    """``names``' values (defaults where absent), lists as tuples."""
    return {name: tuple(value) if isinstance(value, list) else value
            for name, value in ((n, values.get(n, DEFAULTS[n])) for n in names)}


def model_from_parameters(values: dict) -> ModelConfig:
    """What is fixed once the model is loaded (raises ``ValueError``)."""
    return ModelConfig(**_given(values, MODEL_PARAMETERS))


def head_from_parameters(values: dict) -> HeadConfig:
    """The engine's run-time settings: prompts, bins, scenes (raises ``ValueError``)."""
    return HeadConfig(**_given(values, sorted(HEAD_PARAMETERS)))


def count_mismatch(values: dict) -> str | None:
    """How the counts of prompts, bins and scene bins disagree, or ``None``."""
    p = {**DEFAULTS, **values}
    prompts, bins = len(p['distance_prompts']), len(p['depth_bins_m'])
    if prompts != bins:
        return f'{prompts} distance_prompts but {bins} depth_bins_m'
    names, scene_bins = len(p['scene_names']), len(p['scene_bins_m'])
    if p['bins_mode'] != 'fixed' and (names < 2 or scene_bins != names * prompts):
        return (f'bins_mode {p["bins_mode"]} with {names} scene_names and {scene_bins} '
                f'scene_bins_m (needs at least 2 names and {prompts} bins per name)')
    return None


def head_or_mismatch(values: dict, check: Callable[[HeadConfig], None] | None = None
                     ) -> tuple[HeadConfig | None, str | None]:
    """``(head, None)``, or ``(None, reason)`` while the counts of prompts, bins and scene
    bins disagree but each value is valid; raises ``ValueError`` for anything else (counts
    may disagree for a while, values may never be wrong: every rule of one value, and of
    values whose agreement is no count, holds on every set). ``check``: a further test of
    the prompts (the loaded engine's tokeniser), given each head built; it sees the scene
    prompts too, also in ``bins_mode`` fixed."""
    check = check or (lambda head: None)
    mismatch = count_mismatch(values)
    if mismatch is None:
        head = head_from_parameters(values)
        check(head)
        if head.bins_mode == 'fixed':  # the scene settings, kept unused, are checked too
            _check_scene_prompts(values, check)
        return head, None
    # each on its own, with stand-ins for what it must agree with
    alone = {**DEFAULTS, **values, 'bins_mode': 'fixed'}
    prompts, bins = alone['distance_prompts'], alone['depth_bins_m']
    check(head_from_parameters(
        {**alone, 'depth_bins_m': [float(i + 1) for i in range(len(prompts))]}))
    head_from_parameters({**alone, 'distance_prompts': [f'bin {i}' for i in range(len(bins))]})
    check_scene_template(alone['scene_prompt_template'])
    _check_scene_prompts(values, check)
    return None, (f'{mismatch}: still running on the last consistent configuration; the '
                  f'new one applies as soon as the counts agree')


def _check_scene_prompts(values: dict, check: Callable[[HeadConfig], None]) -> None:
    """``check`` (the tokeniser) sees the scene prompts of ``values`` whatever the counts and
    ``bins_mode``: through a head in a scene mode with their scene names (and stand-ins up to
    the 2 a scene mode needs) and their scene template."""
    p = {**DEFAULTS, **values}
    names = list(p['scene_names'])
    if not names:
        return
    stand_ins = (f'scene {i}' for i in range(len(names) + 2))
    names += [name for name in stand_ins if name not in names][:max(0, 2 - len(names))]
    check(HeadConfig(bins_mode='scene_soft', distance_prompts=('near', 'far'),
                     depth_bins_m=(1.0, 2.0), scene_names=tuple(names),
                     scene_bins_m=(1.0, 2.0) * len(names),
                     scene_prompt_template=p['scene_prompt_template']))
