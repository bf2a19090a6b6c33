"""CLIP weights: build the open_clip model from a tag, a local file or random weights,
from the local cache without the network where it can, failing fast where it cannot."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import logging
import os
import zipfile

import torch

from depthclip_ros.engine.config import ModelConfig

LOG = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connection attempt to the hub before a download


@dataclass(frozen=True)
class Spelling:
    """How a front end spells the ``pretrained`` choice: ``give`` formats one value
    (``'--pretrained {}'``), ``where`` says where it goes (may be empty)."""

    give: str
    where: str = ''


CLI_SPELLING = Spelling('--pretrained {}')  # the tools' option (the default)


def how_to_supply_weights(spelling: Spelling = CLI_SPELLING) -> str:
    """How to give CLIP weights, in ``spelling`` (default: the tools' options)."""
    give = spelling.give.format
    where = f' ({spelling.where})' if spelling.where else ''
    return (f'Supply weights one of three ways{where}: (1) an open_clip '
            f'tag such as {give("openai")}: downloaded once (needs the network), then read '
            f'from the Hugging Face cache ($HF_HOME/hub, default ~/.cache/huggingface/hub) '
            f'without it; (2) a local file: {give("/path/to/RN50.pt")} (OpenAI TorchScript) '
            f'or an open_clip state_dict (.pt/.bin/.safetensors); (3) {give("none")} for '
            f'random weights (tests only, meaningless depth).')


class WeightsError(RuntimeError):
    """The CLIP weights could not be loaded.

    ``problem`` says what went wrong; :meth:`hint` says how to supply weights in the
    spelling of where the user gave them (a :class:`Spelling`; the node has its own for
    ROS parameters and launch arguments); :meth:`message` is both. ``str(error)`` is
    ``message()``: the tools' syntax.
    """

    def __init__(self, problem: str, *, supply_hint: bool = True):
        super().__init__(problem)
        self.problem = problem
        self.supply_hint = supply_hint

    def hint(self, spelling: Spelling = CLI_SPELLING) -> str:
        return how_to_supply_weights(spelling) if self.supply_hint else ''

    def message(self, spelling: Spelling = CLI_SPELLING) -> str:
        hint = self.hint(spelling)
        return f'{self.problem}\n{hint}' if hint else self.problem

    def __str__(self) -> str:
        return self.message()



def _is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript zip (OpenAI's original ``RN50.pt``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('constants.pkl') or '/code/' in name
                   for name in archive.namelist())


def import_backend() -> None:
    """Import open_clip now, and with it what loading a model pulls in (torchvision, PIL,
    the Hugging Face hub client, torch._dynamo and triton: about 1,500 modules, two
    seconds). :func:`build_clip` imports it itself when needed; ``depth_node`` calls this
    while a signal still ends the process at once, so that no signal lands in the middle
    of an extension module's initialisation once starting up can be interrupted (one
    landing in triton's aborted the process)."""
    import open_clip  # noqa: F401


def build_clip(config: ModelConfig) -> torch.nn.Module:
    """Create the open_clip model of ``config`` on the CPU in fp32, weights loaded.

    A tag (``openai``, ...) is read from the local cache when it is there, without the
    network; otherwise open_clip downloads it, after one quick check that the hub can be
    reached at all (none with ``HF_HUB_OFFLINE=1``), so that a machine without network
    fails in seconds instead of after the hub client's retries. Raises
    :class:`WeightsError` (problem, and how to supply weights) when weights cannot be had.
    """
    import open_clip  # imported here: it is slow to import and pulls in torchvision

    name = config.model
    if name.replace('-quickgelu', '') not in {m.replace('-quickgelu', '')
                                              for m in open_clip.list_models()}:
        raise WeightsError(f'unknown open_clip model {name!r}')
    pretrained = config.pretrained
    try:
        if config.random_weights:
            # Announced once by whoever shows the run to a user (tools, node), not here.
            LOG.info('random weights (pretrained=none)')
            with torch.random.fork_rng(devices=[]), _quiet_open_clip(logging.WARNING):
                torch.manual_seed(0)  # the same random model every run
                return open_clip.create_model(name, pretrained=None, pretrained_text=False)
        if os.path.isfile(pretrained):
            if _is_torchscript_archive(pretrained):
                return _load_torchscript(pretrained)
            with _quiet_open_clip():
                return open_clip.create_model(name, pretrained=pretrained)
        if os.sep in pretrained or pretrained.endswith(('.pt', '.bin', '.safetensors', '.pth')):
            raise WeightsError(f'weights file {pretrained!r} does not exist')
        if pretrained not in open_clip.list_pretrained_tags_by_model(name):
            raise WeightsError(
                f'{pretrained!r} is neither a weights file nor an open_clip tag of {name} '
                f'(tags: {open_clip.list_pretrained_tags_by_model(name)})')
        cached = _cached_or_downloadable(name, pretrained)
        # The tag's own activation: OpenAI's (and the other RN tags') weights were trained
        # with QuickGELU, as the authors' code ran them.
        quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get('quick_gelu'))
        with _quiet_open_clip():
            return open_clip.create_model(name, pretrained=cached or pretrained,
                                          force_quick_gelu=quick_gelu)
    except WeightsError:
        raise
    except Exception as error:  # download failures, corrupt or mismatched files
        raise WeightsError(f'could not load CLIP weights {pretrained!r} for {name}: '
                           f'{error}') from error


def _hub_file_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """Repository and file names open_clip tries, in its order, for a config's ``hf_hub``
    entry (``org/repo/`` or ``org/repo/file``): the ``.safetensors`` variant first."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith(('.bin', '.pth')):
        return repo, [filename[:-4] + '.safetensors', filename]
    return repo, [filename]


def _cached_or_downloadable(name: str, tag: str) -> str | None:
    """The local cached file of open_clip tag ``tag``, or ``None`` when it is not cached
    but may be downloaded now (the hub, or the URL's host, accepts a connection).

    Looks where open_clip would download it to (the Hugging Face hub cache, or open_clip's
    URL cache when the hub client is absent) without touching the network. Raises
    :class:`WeightsError` at once when it is not cached and cannot be downloaded:
    ``HF_HUB_OFFLINE=1``, or no connection to the host within ``HUB_PROBE_TIMEOUT_S``.
    """
    from open_clip.pretrained import get_pretrained_cfg, has_hf_hub

    cfg = get_pretrained_cfg(name, tag)
    if 'file' in cfg:
        return cfg['file']
    if cfg.get('hf_hub') and has_hf_hub():
        from huggingface_hub import constants, try_to_load_from_cache
        repo, filenames = _hub_file_candidates(cfg['hf_hub'])
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                LOG.info('CLIP weights %s for %s from the local cache: %s', tag, name, found)
                return found
        where = os.path.join(constants.HF_HUB_CACHE, 'models--' + repo.replace('/', '--'))
        source, offline = constants.ENDPOINT, constants.is_offline_mode()
    else:
        source = cfg.get('url', '')
        where = os.path.join(os.path.expanduser('~/.cache/clip'), os.path.basename(source))
        if os.path.isfile(where):
            return None  # open_clip checks its checksum and uses it without the network
        offline = os.environ.get('HF_HUB_OFFLINE', '').upper() in ('1', 'ON', 'YES', 'TRUE')
    if offline:
        reason = 'HF_HUB_OFFLINE=1 forbids downloading'
    else:
        reason = _unreachable(source)
        if reason is None:
            return None
        reason = f'there is no network: {reason}'
    raise WeightsError(f'CLIP weights {tag!r} for {name} are not in the local cache '
                       f'({where}) and {reason}. Download them once where there is network '
                       f'and copy that folder here, or give a local file.')


def _unreachable(url: str, timeout: float | None = None) -> str | None:
    """``None`` when one TCP connection to ``url``'s host (or to the proxy the environment
    sets for it) opens within ``timeout`` seconds, else why not. Name resolution counts
    against the timeout: the attempt runs on a daemon thread that is not waited for."""
    import socket
    import threading
    import urllib.parse
    import urllib.request

    timeout = HUB_PROBE_TIMEOUT_S if timeout is None else timeout
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return f'no host in {url!r}'
    host, port = parts.hostname, parts.port or (443 if parts.scheme == 'https' else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    via = ''
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
        if proxy_parts.hostname:
            via = f' (proxy of {host})'
            host, port = proxy_parts.hostname, proxy_parts.port or 80
    outcome: list = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, name='depthclip_hub_probe', daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f'{host}:{port}{via} did not answer within {timeout:g} s'
    if outcome[0] is not None:
        return f'{host}:{port}{via} cannot be reached ({outcome[0]})'
    return None


class _DropOpenClipLogs(logging.Filter):
    """Drops open_clip's root-logger records from ``level`` up: it logs an error before it
    raises (the raise becomes the one :class:`WeightsError` message) and warns about
    random initialisation (announced once by the tools and the node)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= self.level
                    and f'{os.sep}open_clip{os.sep}' in record.pathname)


@contextlib.contextmanager
def _quiet_open_clip(level: int = logging.ERROR):
    """While open_clip builds, loads or downloads: none of its root-logger lines from
    ``level`` up, and no hub retry warnings (a failed download ends in one
    :class:`WeightsError` instead)."""
    hub_logger = logging.getLogger('huggingface_hub')
    hub_level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    drop = _DropOpenClipLogs(level)
    logging.root.addFilter(drop)
    try:
        yield
    finally:
        hub_logger.setLevel(hub_level)
        logging.root.removeFilter(drop)


def _load_torchscript(path: str) -> torch.nn.Module:
    """OpenAI's original TorchScript release (``RN50.pt``), rebuilt as a plain open_clip
    module in fp32 (the archive itself is not run)."""
    from open_clip.model import build_model_from_openai_state_dict

    archive = torch.jit.load(path, map_location='cpu')
    # Keep parameters and persistent buffers only: a TorchScript export may also carry
    # attributes such as the text attention mask, which open_clip rebuilds itself.
    state = {k: v for k, v in archive.state_dict().items() if k != 'attn_mask'}
    return build_model_from_openai_state_dict(state).float()

