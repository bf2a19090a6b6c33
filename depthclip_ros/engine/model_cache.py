"""Converted networks kept on disk, so that a start-up converts (and for INT8 calibrates)
only once per model, weights, input shape and precision.

The cache folder is ``$DEPTHCLIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/depthclip_ros``, else
``~/.cache/depthclip_ros``; converted networks live under its ``openvino/``. An entry is a
folder named by what it holds and a hash of its key: every field that changes the network
(model name, a hash of the weights' content, network, input shape, precision, the OpenVINO
version, for INT8 the calibration set's hash and the NNCF version). It holds the OpenVINO
IR (``model.xml``, ``model.bin``) and ``manifest.json``: the key and each file's size and
SHA-256. An entry is written in a temporary folder and renamed into place, so it is whole
or absent; an entry whose files do not match its manifest, whose key differs or that
OpenVINO cannot read is rebuilt, with one warning. openvino is imported by the functions
that need it.

The cache removes only what it wrote, wherever ``$DEPTHCLIP_CACHE_DIR`` points: every
folder it writes holds a marker file (:data:`MARKER`); a left-over temporary folder is
removed only when it holds the marker and nothing but the cache's own file names, and an
unusable entry is replaced only when it holds nothing else either (a link, or a folder of
that name holding anything else, is left alone: the network is then used without being
cached, with one warning).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import tempfile
import time
from typing import Callable

LOG = logging.getLogger(__name__)

CACHE_ENV = 'DEPTHCLIP_CACHE_DIR'
# The layout of an entry; a change makes every older entry a miss (never read wrongly).
CACHE_FORMAT = 1
MANIFEST = 'manifest.json'
FILES = ('model.xml', 'model.bin')
STALE_TEMP_S = 24 * 3600  # a temporary folder this old is a killed build's: removed
MARKER = '.depthclip-cache'  # in every folder the cache writes: what it may remove
OWN_NAMES = frozenset((*FILES, MANIFEST, MARKER))


def written_by_cache(folder: Path, marker_needed: bool = True) -> bool:
    """Whether ``folder`` is one the cache wrote: a real folder (not a link) holding
    nothing but the cache's own file names (:data:`OWN_NAMES`), the marker among them when
    ``marker_needed``. Only such folders are ever removed."""
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        names = set(os.listdir(folder))
    except OSError:
        return False
    if not names <= OWN_NAMES or (marker_needed and MARKER not in names):
        return False
    return all((folder / name).is_file() and not (folder / name).is_symlink()
               for name in names)


def cache_dir() -> Path:
    """The user's cache folder of this package (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or str(Path('~/.cache').expanduser())
    return Path(base).expanduser() / 'depthclip_ros'


def tensors_hash(state: dict) -> str:
    """SHA-256 of a state dict's tensors (names, dtypes, shapes and values; the same
    whatever their memory layout or device)."""
    import torch
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to('cpu').contiguous().view(-1)
        digest.update(f'{name}:{tensor.dtype}:{tuple(state[name].shape)};'.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def arrays_hash(arrays) -> str:
    """SHA-256 of numpy arrays in order (shapes, dtypes, values): a calibration set's."""
    import numpy as np
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f'{array.dtype}:{array.shape};'.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def entry_name(key: dict) -> str:
    """``trunk-RN50-1x3x416x544-fp32-<hash>``: readable, and unique by the whole key."""
    text = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    shape = 'x'.join(str(v) for v in key['shape'])
    model = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in str(key['model']))
    return f'{key["network"]}-{model}-{shape}-{key["precision"]}-{digest}'


def _file_facts(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 22), b''):
            digest.update(block)
    return {'size': path.stat().st_size, 'sha256': digest.hexdigest()}


# What a program shows while a network is converted (seconds to a minute, once): the tools
# set this to a function that prints; ``None`` (the node): the log only. Called with an
# event and its facts: ('build', what, root) before a conversion, ('built', what, seconds)
# after it, ('calibrate', what, done, total) as INT8 calibration reads its frames.
build_listener: Callable[..., None] | None = None


def tell(event: str, *facts) -> None:
    """Pass an event to :data:`build_listener`, if one is set (never raises)."""
    listener = build_listener
    if listener is not None:
        try:
            listener(event, *facts)
        except Exception:  # noqa: BLE001 - showing progress must never fail a build
            LOG.debug('build listener failed', exc_info=True)


class ModelCache:
    """OpenVINO models on disk under ``root`` (default :func:`cache_dir` ``/ 'openvino'``).
    ``built`` counts the networks this cache converted (tests, logs)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / 'openvino'
        self.built = 0

    def load_or_build(self, key: dict, build: Callable[[], object], what: str):
        """The ``openvino.Model`` of ``key``: read from its entry, or made by ``build()``
        and stored (its time logged once). ``what`` names it in the log. A cache that
        cannot be written is warned about and the built model used as is."""
        key = {**key, 'cache_format': CACHE_FORMAT}
        folder = self.root / entry_name(key)
        if folder.exists():
            model, problem = self._read(folder, key)
            if model is not None:
                LOG.debug('%s read from the cache %s', what, folder)
                return model
            LOG.warning('the cached %s in %s is unusable (%s): rebuilding it', what, folder,
                        problem)
        started = time.monotonic()
        tell('build', what, self.root)
        model = build()
        self.built += 1
        seconds = time.monotonic() - started
        tell('built', what, seconds)
        try:
            self._write(folder, key, model)
            LOG.info('%s built in %.1f s and cached in %s (a one-off start-up cost)', what,
                     seconds, folder)
        except OSError as error:
            LOG.warning('%s built in %.1f s but not cached (%s): the next start builds it '
                        'again', what, seconds, error)
        return model

    def _read(self, folder: Path, key: dict):
        """``(model, None)``, or ``(None, why it cannot be used)``."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding='utf-8'))
        except (OSError, ValueError) as error:
            return None, f'no readable manifest: {error}'
        if manifest.get('key') != json.loads(json.dumps(key)):
            return None, 'its key differs (stale)'
        for name in FILES:
            try:
                facts = _file_facts(folder / name)
            except OSError as error:
                return None, f'{name}: {error}'
            if facts != manifest.get('files', {}).get(name):
                return None, f'{name} does not match its manifest (corrupt)'
        from depthclip_ros.engine.openvino_core import core
        try:
            return core().read_model(str(folder / 'model.xml')), None
        except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError and others
            return None, f'OpenVINO cannot read it: {str(error).splitlines()[0]}'

    def _write(self, folder: Path, key: dict, model) -> None:
        import openvino as ov
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        if os.path.lexists(folder) and not written_by_cache(folder, marker_needed=False):
            raise OSError(f'{folder} holds files the cache did not write; left alone')
        temp = Path(tempfile.mkdtemp(prefix='.tmp-', dir=self.root))
        try:
            (temp / MARKER).write_text('written by depthclip_ros (engine/model_cache.py)\n',
                                       encoding='utf-8')
            # compress_to_fp16=False: the weights stay exactly as converted
            ov.save_model(model, str(temp / 'model.xml'), compress_to_fp16=False)
            manifest = {'key': key, 'files': {n: _file_facts(temp / n) for n in FILES}}
            (temp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True),
                                         encoding='utf-8')
            for name in (*FILES, MANIFEST):
                with open(temp / name, 'rb') as stream:
                    os.fsync(stream.fileno())
            if folder.exists():  # the unusable entry: moved aside, then removed
                aside = Path(tempfile.mkdtemp(prefix='.old-', dir=self.root))
                os.replace(folder, aside / 'entry')
                shutil.rmtree(aside, ignore_errors=True)
            try:
                os.replace(temp, folder)
            except OSError:
                if not folder.exists():
                    raise
                # another process stored the same entry meanwhile: keep theirs
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _remove_stale_temps(self) -> None:
        """Temporary folders of builds killed over a day ago: only those the cache wrote
        (:func:`written_by_cache`); an aside folder holds one such entry."""
        now = time.time()
        for path in [*self.root.glob('.tmp-*'), *self.root.glob('.old-*')]:
            try:
                if now - path.lstat().st_mtime <= STALE_TEMP_S:
                    continue
            except OSError:
                continue
            if path.name.startswith('.old-'):
                inner = [path / name for name in os.listdir(path)] if path.is_dir() and \
                    not path.is_symlink() else None
                if inner is None or not all(p.name == 'entry' and
                                            written_by_cache(p, marker_needed=False)
                                            for p in inner):
                    continue
                for entry in inner:
                    shutil.rmtree(entry, ignore_errors=True)
                _remove_empty(path)
            elif written_by_cache(path):
                shutil.rmtree(path, ignore_errors=True)


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
