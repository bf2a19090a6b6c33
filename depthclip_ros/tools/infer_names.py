"""The names ``infer`` writes for its inputs, decided for all of them before anything is
written or any model loads: one distinct name per input (case-insensitive file systems,
video frames and inputs given twice considered), and the files and frame series that
those names make."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
import os
from pathlib import Path
import re
import unicodedata

from depthclip_ros.io.dataset import is_video
from depthclip_ros.io.outputs import Series

OUTPUT_SUFFIXES = ('_depth.npy', '_depth.png', '_uncertainty.npy', '_preview.png', '.ply')
SUMMARY_SUFFIX = '_summary.json'



@dataclass(frozen=True)
class Source:
    path: Path
    name: str  # outputs <name>_depth.npy ...; a video's frames <name>_NNNNNN_depth.npy ...
    video: bool
    renamed: bool  # the name is not the file stem


@dataclass(frozen=True)
class Plan:
    sources: list[Source]
    duplicates: list[tuple[Path, Path]]  # (input, the earlier input that is the same file)


class NamingError(ValueError):
    """No distinct output names could be found."""


def _key(name: str) -> str:
    """Names compared as a case-insensitive file system would."""
    return unicodedata.normalize('NFC', name).casefold()


_FRAME = re.compile(r'(.*)_\d{6,}', re.DOTALL)


def _frame_prefix(key: str) -> str | None:
    """``v`` for a frame name ``v_000012`` (the video it could come from)."""
    match = _FRAME.fullmatch(key)
    return match.group(1) if match else None


class _Namer:
    """Candidate names of one input, from its stem to its whole path, then its position."""

    def __init__(self, path: Path, position: int):
        self.path = path
        self.folders = [p for p in Path(os.path.abspath(path)).parent.parts
                        if p not in ('', os.sep, '/')]
        self.position = position
        self.last = 2 * len(self.folders) + 2  # the candidate with the position

    def name(self, level: int) -> str:
        if level >= self.last:
            return f'{self.name(self.last - 1)}-{self.position}'
        folders, with_suffix = divmod(level, 2)
        base = self.path.name if with_suffix else self.path.stem
        return '_'.join([*self.folders[len(self.folders) - folders:], base]) if folders \
            else base


def _protected(paths: list[Path], output: Path, suffixes: tuple[str, ...]
               ) -> tuple[set[str], set[str]]:
    """Input files that live in the output folder, which no output may replace: the keys
    of their names, and of the names of the videos whose frames' outputs they would be."""
    try:
        target = os.stat(output)
    except OSError:
        return set(), set()
    names, video_prefixes = set(), set()
    for path in paths:
        try:
            parent = os.stat(path.parent)
        except OSError:
            continue
        if (parent.st_dev, parent.st_ino) != (target.st_dev, target.st_ino):
            continue
        key = _key(path.name)
        names.add(key)
        for suffix in suffixes:
            if key.endswith(suffix):
                prefix = _frame_prefix(key[:-len(suffix)])
                if prefix is not None:
                    video_prefixes.add(prefix)
    return names, video_prefixes


def plan_outputs(paths: list[Path], output: Path,
                 suffixes: tuple[str, ...] = OUTPUT_SUFFIXES) -> Plan:
    """Distinct output names for ``paths`` (see the module docstring for the rule);
    ``suffixes``: the files each name gets (those an input file must not be replaced by).

    The same file given twice (by any path, links included) is kept once. Raises
    :class:`NamingError` when no distinct names exist (not seen outside contrived cases).
    """
    unique, duplicates, seen = [], [], {}
    for path in paths:
        try:
            info = os.stat(path)
            identity = (info.st_dev, info.st_ino)
        except OSError:
            identity = ('path', os.path.abspath(path))
        if identity in seen:
            duplicates.append((path, seen[identity]))
            continue
        seen[identity] = path
        unique.append(path)
    namers = [_Namer(path, position) for position, path in enumerate(unique, 1)]
    videos = [is_video(path) for path in unique]
    protected_names, protected_videos = _protected(unique, output, suffixes)
    levels = [0] * len(unique)
    while True:
        names = [namer.name(level) for namer, level in zip(namers, levels)]
        keys = [_key(name) for name in names]
        images_by_key, videos_by_key = defaultdict(list), defaultdict(list)
        for index, key in enumerate(keys):
            (videos_by_key if videos[index] else images_by_key)[key].append(index)
        groups = [g for by_key in (images_by_key, videos_by_key) for g in by_key.values()
                  if len(g) > 1]
        for key, group in images_by_key.items():  # an image named like a video's frame
            prefix = _frame_prefix(key)
            if prefix is not None and prefix in videos_by_key:
                groups.append(group + videos_by_key[prefix])
        for index, key in enumerate(keys):  # outputs that would replace an input file
            if key in protected_videos if videos[index] else \
                    any(key + suffix in protected_names for suffix in suffixes):
                groups.append([index])
        if not groups:
            break
        moving = set()
        for group in groups:
            movable = [i for i in group if levels[i] < namers[i].last]
            lowest = min(levels[i] for i in group)
            # A name taken at a lower level (a unique stem) stays; those that reached it
            # while moving away from another clash move on. Equals move together.
            above = [i for i in movable if levels[i] > lowest]
            if not movable:
                raise NamingError('no distinct output names for '
                                  + ', '.join(str(unique[i]) for i in sorted(group))
                                  + '; rename them or run them separately')
            moving.update(above or movable)
        for index in moving:
            levels[index] += 1
    sources = [Source(path, name, video, level > 0)
               for path, name, video, level in zip(unique, names, videos, levels)]
    return Plan(sources, duplicates)


def print_plan(plan: Plan) -> None:
    for path, first in plan.duplicates:
        print(f'{path}: the same file as {first}, processed once')
    renamed = [s for s in plan.sources if s.renamed]
    if renamed:
        print('output names (these inputs share a name with another input or an input '
              'file in the output folder):')
        for source in renamed:
            suffix = '_NNNNNN' if source.video else ''
            print(f'  {source.path} -> {source.name}{suffix}_*')


def planned_files(plan: Plan, output: Path, suffixes: tuple[str, ...]
                  ) -> tuple[list[Path], list[Series]]:
    """The files the run will write: every image's, and every video's frames' (a series
    of names: the frame count is known once decoded)."""
    files, series = [], []
    for source in plan.sources:
        if source.video:
            series.append(Series(output, f'{source.name}_', suffixes))
        else:
            files += [output / f'{source.name}{suffix}' for suffix in suffixes]
    return files, series
