"""What a run is going to write, checked before it starts: no tool replaces a file it did
not create in this run unless the user said so (``--overwrite``).

Every tool names its outputs up front (exact paths, and for a video of unknown length a
pattern of names in a folder) and asks :func:`check_outputs` before the model is loaded:
without ``overwrite`` the existing ones are refused in one message that lists them; with
it they are returned, to be replaced. A folder where a file is to be written is refused
either way. Files the run itself writes later (in the order it planned) are its own.

Standard library only: the tools' option checks import it before torch or OpenCV.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
import os
from pathlib import Path
import re
from typing import Iterable, Iterator
import unicodedata

OVERWRITE_HELP = ('replace existing files (or earlier output folders) that this run would '
                  'write; without it such a run is refused before anything is loaded, '
                  'listing them')
SHOWN = 5  # existing files named in the refusal; the rest are counted


class OutputsExist(ValueError):
    """Outputs of the run that exist already; ``paths`` lists them (sorted). The message
    says what to do first, then names up to ``SHOWN`` of them (by their names when they
    share a folder) and counts the rest."""

    def __init__(self, paths: list[Path], option: str = '--overwrite'):
        self.paths = paths
        count = '1 file that exists' if len(paths) == 1 else f'{len(paths)} files that exist'
        folders = {p.parent for p in paths}
        if len(folders) == 1:
            names = f'in {next(iter(folders))}/: ' + ', '.join(p.name for p in paths[:SHOWN])
        else:
            names = ', '.join(str(p) for p in paths[:SHOWN])
        more = f' and {len(paths) - SHOWN} more' if len(paths) > SHOWN else ''
        super().__init__(f'this run would replace {count} already (pass {option} to '
                         f'replace them, or choose another output) {names}{more}')


@dataclass(frozen=True)
class Series:
    """Files named ``<prefix><digits><suffix>`` in ``folder``, one of ``suffixes``: the
    outputs of a video whose frame count is not known before it is decoded."""

    folder: Path
    prefix: str
    suffixes: tuple[str, ...]
    min_digits: int = 6

    def pattern(self) -> re.Pattern:
        ends = '|'.join(re.escape(_key(s)) for s in self.suffixes)
        return re.compile(f'{re.escape(_key(self.prefix))}\\d{{{self.min_digits},}}(?:{ends})',
                          re.DOTALL)


def _key(name: str) -> str:
    """Names compared as a case-insensitive file system would (the conservative choice)."""
    return unicodedata.normalize('NFC', name).casefold()


def existing_outputs(paths: Iterable[Path | str], series: Iterable[Series] = ()
                     ) -> list[Path]:
    """The paths among ``paths`` that exist (links included, dangling or not), and the
    files in each series' folder whose names belong to it; sorted, each once."""
    found = {Path(p) for p in paths if os.path.lexists(p)}
    for one in series:
        pattern = one.pattern()
        try:
            names = os.listdir(one.folder)
        except OSError:  # absent (created later) or unreadable (refused elsewhere)
            continue
        found.update(one.folder / name for name in names if pattern.fullmatch(_key(name)))
    return sorted(found)


def check_outputs(paths: Iterable[Path | str], overwrite: bool = False,
                  series: Iterable[Series] = (), folders: Iterable[Path | str] = (),
                  option: str = '--overwrite') -> list[Path]:
    """Check what a run will write before it writes anything.

    ``paths``: files the run writes; ``folders``: folders it creates whole (a bag's
    output folder); ``series``: a video's files. Returns the existing ones when
    ``overwrite`` (they will be replaced); raises :class:`OutputsExist` listing them
    otherwise. Raises ``ValueError`` for an existing folder where a file is to be written
    (with ``overwrite`` too: replacing a folder by a file is never what was meant).
    """
    paths, folders, series = list(paths), list(folders), list(series)
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            raise ValueError(f'output {path} is a folder; a file of that name is to be '
                             f'written (choose another output)')
    existing = existing_outputs([*paths, *folders], series)
    if existing and not overwrite:
        raise OutputsExist(existing, option)
    return existing


def check_output_dir(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is, or can be created as, a writable folder
    (checked without creating anything)."""
    path = Path(path)
    probe = path
    while not os.path.lexists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = 'is not a folder' if probe == path else f'cannot be created: {probe} is not ' \
            f'a folder'
        raise ValueError(f'output {path} {what}')
    if not os.access(probe, os.W_OK | os.X_OK):
        what = 'is not writable' if probe == path else f'cannot be created: {probe} is not ' \
            f'writable'
        raise ValueError(f'output {path} {what}')


def check_output_file(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` can be written as a file: not a folder, its
    folder exists and is writable, and the file (if it exists) is writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f'output {path} is a folder, not a file')
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f'output {path}: folder {folder} does not exist')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f'output {path}: folder {folder} is not writable')
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        raise ValueError(f'output {path} is not writable')


def check_report_file(path: str | Path, overwrite: bool = False) -> list[Path]:
    """A single report file (a tool's ``--json``) checked before the run: its folder exists
    and is writable, it is not a folder, and an existing file is replaced only with
    ``overwrite`` (:func:`check_outputs`). Returns the existing file replaced, if any."""
    check_output_file(path)
    return check_outputs([path], overwrite)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers pick the same format);
    renamed to ``path`` when the block succeeds, removed when it fails."""
    path = Path(path)
    temporary = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass


def write_text_whole(path: str | Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all (:func:`atomic_path`): an interrupted run
    leaves the old file, or none, never half of one."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


def replacing_note(existing: list[Path]) -> str | None:
    """A line for a run that replaces files with ``--overwrite``, or ``None``."""
    if not existing:
        return None
    return (f'--overwrite: replacing {len(existing)} existing '
            f'{"file" if len(existing) == 1 else "files"} (first: {existing[0]})')


__all__ = ['OVERWRITE_HELP', 'OutputsExist', 'Series', 'atomic_path', 'check_output_dir',
           'check_output_file', 'check_outputs', 'check_report_file', 'existing_outputs',
           'replacing_note', 'write_text_whole']
