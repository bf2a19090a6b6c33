"""Output safety of ``depthclip-ros bag``: the input is only ever read, and nothing is
replaced that this run did not create (an earlier output only with ``overwrite``, and only
once the new bag is complete).

:func:`plan_output` refuses, before anything is read or written, an output that is the
input, lies inside it (its file, or its rosbag2 folder) or contains it, comparing real paths
(symlinks and ``..`` resolved) and file identity. A run writes into
``OUTPUT.partial/OUTPUT-NAME/`` beside OUTPUT, with a note (``UNFINISHED-OUTPUT.txt``)
saying what the folder is; only when the bag is closed (metadata and index written: at the
end, after SIGINT/SIGTERM, or after a damaged input) is it moved to OUTPUT
(:func:`move_into_place`), and an earlier OUTPUT (``overwrite``; a folder holding only a
rosbag2 bag) is removed only then. A run that is killed or cannot write (disk full) leaves
``OUTPUT.partial``, which :mod:`depthclip_ros.bags.recover` turns into a readable bag.

Standard library only: no bag is read here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import datetime
import errno
import os
from pathlib import Path
import re
import shlex
import sys
from typing import Callable

BAG_SUFFIXES = ('.bag', '.mcap', '.db3')
PARTIAL_SUFFIX = '.partial'  # OUTPUT.partial: a run in progress, or one that did not end
RECOVERY_SUFFIX = '.recovery-partial'  # the same for --recover
PARTIAL_NOTE = 'UNFINISHED-OUTPUT.txt'
REPLACED_SUFFIX = '.replaced'  # an earlier OUTPUT, moved into the partial folder briefly


class BagError(ValueError):
    """Refused before anything was written: the bag, the paths or the topics cannot be
    used; the message says why."""


def is_bag(path: Path) -> bool:
    """A ROS 1 bag, a rosbag2 storage file or a rosbag2 folder (with metadata.yaml)."""
    path = Path(path)
    return (path.is_file() and path.suffix in BAG_SUFFIXES) or \
        (path.is_dir() and (path / 'metadata.yaml').is_file())


@dataclass(frozen=True)
class OutputPlan:
    """Where a run writes, checked by :func:`plan_output` before anything happens."""

    source: Path  # the input as given
    destination: Path  # OUTPUT, real path (symlinks and '..' resolved)
    partial: Path  # the folder written during the run, beside OUTPUT
    overwrite: bool
    replace: bool  # OUTPUT exists now and is replaced once the new bag is complete
    replace_partial: bool  # an earlier partial folder of this name is removed at the start

    @property
    def bag(self) -> Path:
        """The rosbag2 folder inside the partial folder; it becomes OUTPUT."""
        return self.partial / self.destination.name


def _input_paths(source: Path) -> set[Path]:
    """Everything that is the input: its path as given and resolved, and the rosbag2
    folder its storage file sits in."""
    paths = set()
    for path in (Path(os.path.abspath(source)), Path(os.path.realpath(source))):
        paths.add(path)
        if path.is_file() and (path.parent / 'metadata.yaml').is_file():
            paths.add(path.parent)
    return paths


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _relation(path: Path, protected: set[Path]) -> str | None:
    """How ``path`` overlaps the input (``'is'``, ``'is inside'``, ``'contains'``) or None.

    By name, as given and resolved, and by file identity (bind mounts, case-insensitive
    file systems): for every existing folder above ``path`` and above the input."""
    forms = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    for inp in protected:
        for out in forms:
            if out == inp:
                return 'is'
            if inp in out.parents:
                return 'is inside'
            if out in inp.parents:
                return 'contains'
    real = Path(os.path.realpath(path))
    for inp in protected:
        if not os.path.exists(inp):
            continue
        for above in (real, *real.parents):
            if _same(above, inp):
                return 'is' if above == real else 'is inside'
        if os.path.exists(real):
            for above in (inp, *inp.parents):
                if _same(above, real):
                    return 'is' if above == inp else 'contains'
    return None


def _bag_folder_problem(path: Path) -> str | None:
    """Why ``path`` may not be replaced, or None: only a folder holding nothing but a
    rosbag2 bag (metadata.yaml, .mcap and .db3 files) is."""
    if path.is_symlink() or not path.is_dir():
        return 'is not a bag folder'
    for entry in os.scandir(path):
        if not (entry.name == 'metadata.yaml' or entry.name.endswith(('.mcap', '.db3'))) or \
                entry.is_dir():
            return 'holds more than a rosbag2 bag'
    return None


def _partial_problem(path: Path) -> str | None:
    """Why ``path`` is not a partial output of this tool (note + bag folders), or None."""
    if path.is_symlink() or not path.is_dir() or not (path / PARTIAL_NOTE).is_file():
        return f'is not a partial output of this tool (no {PARTIAL_NOTE})'
    for entry in os.scandir(path):
        if entry.name != PARTIAL_NOTE and _bag_folder_problem(Path(entry.path)):
            return 'holds more than a partial output of this tool'
    return None


def _running_writer(partial: Path) -> int | None:
    """The process id in a partial folder's note if that process (not this one) still
    runs: its run is in progress, the folder is not left over."""
    try:
        found = re.search(r'by process (\d+)', (partial / PARTIAL_NOTE).read_text())
    except (OSError, UnicodeDecodeError):
        return None
    pid = int(found.group(1)) if found else None
    if pid is None or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # exists, owned by someone else
        return pid
    return pid


def plan_output(source: Path, destination: Path, overwrite: bool = False,
                partial_suffix: str = PARTIAL_SUFFIX) -> OutputPlan:
    """Check the input and output paths; reads no bag and changes nothing.

    Raises :class:`BagError` when the input does not exist; when OUTPUT or its partial
    folder is the input, lies inside it or contains it (the input file, and its rosbag2
    folder); when OUTPUT exists without ``overwrite`` or is more than a rosbag2 bag
    folder; and when an earlier partial folder is in the way.
    """
    source, given = Path(source), Path(destination)
    if not os.path.exists(source):  # a dangling symlink does not exist either
        raise BagError(f'{source} does not exist')
    real = Path(os.path.realpath(given))
    if not real.name or real == real.parent:
        raise BagError(f'{given} cannot be an output folder; name a new folder')
    if real.name == PARTIAL_NOTE:
        raise BagError(f'{given}: choose another output name')
    partial = real.with_name(real.name + partial_suffix)
    protected = _input_paths(source)
    shown = f'{given} ({real})' if str(real) != os.path.abspath(given) else str(given)
    for role, path, name in (('the output', given, shown),
                             ('the partial output folder', partial, str(partial))):
        relation = _relation(path, protected)
        if relation:
            raise BagError(f'{role} {name} {relation} the input recording {source}; '
                           f'refused before reading or writing anything (the input is '
                           f'never modified): choose an output outside the input')
    above = next(a for a in real.parents if os.path.exists(a))
    if not above.is_dir():
        raise BagError(f'{given}: {above} is not a folder')
    if not os.access(above, os.W_OK | os.X_OK):
        raise BagError(f'{given}: cannot write in {above} (permission denied)')
    replace = os.path.lexists(real)
    if replace:
        if not overwrite:
            raise BagError(f'{given} exists (pass --overwrite to replace it)')
        problem = _bag_folder_problem(real)
        if problem:
            raise BagError(f'{given} exists and {problem}; not replacing it')
    replace_partial = os.path.lexists(partial)
    if replace_partial:
        problem = _partial_problem(partial)
        if problem:
            raise BagError(f'{partial} (where this run would write) exists and {problem}; '
                           f'move it away or choose another output')
        writer = _running_writer(partial)
        if writer:
            raise BagError(f'{partial} is being written by process {writer}, still running '
                           f'(see {partial / PARTIAL_NOTE}); wait for it, stop it, or choose '
                           f'another output')
        if not overwrite:
            raise BagError(f'{partial} exists: the unfinished output of an earlier run (see '
                           f'{partial / PARTIAL_NOTE}). Recover it with "depthclip-ros bag '
                           f'--recover {partial} NEW_OUTPUT", delete it, or pass --overwrite '
                           f'to replace it')
    return OutputPlan(source, real, partial, overwrite, replace, replace_partial)


def remove_bag_folder(path: Path) -> None:
    """Remove a previous output: only a rosbag2 folder (metadata.yaml and storage files)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    problem = _bag_folder_problem(path)
    if problem:
        raise BagError(f'{path} exists and {problem}; not replacing it')
    for entry in list(os.scandir(path)):
        os.remove(entry.path)
    path.rmdir()


def _remove_partial(path: Path) -> None:
    problem = _partial_problem(path)
    if problem:
        raise BagError(f'{path} {problem}; not removing it')
    for entry in list(os.scandir(path)):
        if entry.name != PARTIAL_NOTE:
            remove_bag_folder(Path(entry.path))
    os.remove(path / PARTIAL_NOTE)
    path.rmdir()


def _note(plan: OutputPlan, recovering: bool) -> str:
    command = ' '.join(shlex.quote(a) for a in ['depthclip-ros', *sys.argv[1:]]) \
        if Path(sys.argv[0]).name in ('depthclip-ros', 'cli.py', '-m') else '(from Python)'
    again = (f'  depthclip-ros bag --recover {shlex.quote(str(plan.source))} '
             f'{shlex.quote(str(plan.destination))} --overwrite' if recovering else
             f'  depthclip-ros bag --recover {shlex.quote(str(plan.partial))} '
             f'{shlex.quote(str(plan.destination))}')
    name = plan.destination.name
    return (
        f'This folder is the UNFINISHED output of a depthclip-ros bag '
        f'{"recovery" if recovering else "run"}.\n\n'
        f'  input:   {os.path.abspath(plan.source)} (never modified)\n'
        f'  output:  {plan.destination} (made only when the run ends)\n'
        f'  started: {datetime.datetime.now().isoformat(timespec="seconds")} by process '
        f'{os.getpid()}\n  command: {command}\n\n'
        f'While that process runs, leave this folder alone: it is moved to the output when\n'
        f'the bag is complete. If the process is no longer running, it was killed or could\n'
        f'not write (disk full): {name}/{name}.mcap then holds the messages written before\n'
        f'it stopped, as an MCAP without index, summary or metadata.yaml, which ros2 bag and\n'
        f'Foxglove may refuse. Every complete 1 MiB chunk of it can be recovered into a\n'
        f'complete, readable bag with\n\n{again}\n\n'
        f'or delete this folder (or pass --overwrite) and run the command again.\n')


def start_partial(plan: OutputPlan, recovering: bool) -> None:
    """The partial folder and its note; an earlier partial is removed (``overwrite``)."""
    try:
        if plan.replace_partial and os.path.lexists(plan.partial):
            _remove_partial(plan.partial)
        plan.partial.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(plan.partial)
    except OSError as error:
        raise BagError(f'cannot create {plan.partial}: {error}') from None
    try:
        (plan.partial / PARTIAL_NOTE).write_text(_note(plan, recovering))
    except OSError as error:
        discard_partial(plan)
        raise BagError(f'cannot write in {plan.partial}: {error}') from None


def discard_partial(plan: OutputPlan) -> None:
    """Remove a partial folder that holds nothing worth keeping (no message written)."""
    with contextlib.suppress(OSError):
        (plan.partial / PARTIAL_NOTE).unlink(missing_ok=True)
        if plan.bag.is_dir():
            for entry in list(os.scandir(plan.bag)):
                os.remove(entry.path)
            plan.bag.rmdir()
        plan.partial.rmdir()


def move_into_place(plan: OutputPlan, problem: Callable[[str], None]) -> bool:
    """The closed bag becomes OUTPUT; an earlier OUTPUT is removed only after that.
    Returns whether one was replaced."""
    dest, bag = plan.destination, plan.bag
    replaced = os.path.lexists(dest)
    if replaced:
        if not plan.overwrite:
            raise BagError(f'{dest} appeared during the run; not replacing it')
        reason = _bag_folder_problem(dest)  # it may have changed during the run
        if reason:
            raise BagError(f'{dest} {reason} now; not replacing it')
        aside = plan.partial / f'{dest.name}{REPLACED_SUFFIX}'
        os.rename(dest, aside)
        try:
            os.rename(bag, dest)
        except OSError:
            os.rename(aside, dest)
            raise
        try:
            remove_bag_folder(aside)
        except (OSError, BagError) as error:
            problem(f'the earlier output, moved to {aside}, could not be removed: {error}')
            return True
    else:
        os.rename(bag, dest)
    with contextlib.suppress(OSError):
        os.remove(plan.partial / PARTIAL_NOTE)
        plan.partial.rmdir()
    return replaced


def kept_as_partial(plan: OutputPlan, error: BaseException, holds: str, again: str) -> str:
    """The message for a write failure: what was kept where, and how to recover it."""
    code = getattr(error, 'errno', None)
    first = ('Free some space, then recover' if code in (errno.ENOSPC, errno.EDQUOT) else
             'Where files may be that large (a file size limit was reached), recover'
             if code == errno.EFBIG else 'Recover')
    old = (f'{plan.destination} is unchanged' if plan.replace
           else f'{plan.destination} was not created')
    return (f'writing failed ({type(error).__name__}: {error}); {old}. The incomplete '
            f'output is kept as {plan.partial} ({holds}) in {plan.bag.name}/'
            f'{plan.bag.name}.mcap, an MCAP without index; see {PARTIAL_NOTE} there. '
            f'{first} its complete chunks '
            f'into a readable bag with: {again}  (or delete it and run again)')
