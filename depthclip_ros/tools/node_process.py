"""depth_node as a child process for the benchmarks, with traffic kept on this machine.

``isolate_ros_traffic`` must run before rclpy starts: discovery limited to localhost, a
random domain, and the shipped loopback Fast DDS profile (large shared-memory segment).
A random domain can still be shared by two runs on one host, so every run also puts the
node and its peers in a namespace of its own (``private_namespace``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import shutil
import subprocess
import sys
import tempfile
from typing import Sequence
import uuid
import weakref

from depthclip_ros.io.resources import share_file

PROFILE = 'config/fastdds_localhost.xml'  # installed under share/depthclip_ros


# Set, with the same value as ROS_DOMAIN_ID, by whatever chose this run's own domain
# (scripts/env.sh, the tests' conftest, isolate_ros_traffic): that domain is kept.
OWN_DOMAIN = 'DEPTHCLIP_OWN_ROS_DOMAIN'


def choose_ros_domain(exported, rng=random) -> int:
    """A random ROS domain in 1..101 (ROS documents 0..101 as safe on Linux; 0 is the
    default every unconfigured node uses), never ``exported`` (the user's: an int or its
    text). The tests' conftest picks its domain with this too."""
    try:
        avoid = int(exported)
    except (TypeError, ValueError):
        avoid = None
    return rng.choice([domain for domain in range(1, 102) if domain != avoid])


def isolate_ros_traffic() -> None:
    """Keep this run's DDS traffic on this host, in a random domain of its own (never the
    exported one: a robot on the user's domain must not hear a benchmark), on the
    loopback-only Fast DDS profile under both of its variable names."""
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    domain = os.environ.get('ROS_DOMAIN_ID')
    if domain is None or os.environ.get(OWN_DOMAIN) != domain:
        chosen = str(choose_ros_domain(domain))
        os.environ['ROS_DOMAIN_ID'] = os.environ[OWN_DOMAIN] = chosen
        exported = f'; the exported {domain} is not used' if domain else ''
        print(f'ROS_DOMAIN_ID={chosen} (random, chosen for this run{exported}), discovery '
              f'on this host only', file=sys.stderr, flush=True)
    profile = str(share_file(PROFILE))
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = profile  # Fast DDS 3 (Kilted on)
    os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'] = profile  # Fast DDS 2 (Jazzy)


def private_namespace(name: str) -> str:
    """``/<name>_<random>``: topics no other run on this host publishes to."""
    return f'/{name}_{uuid.uuid4().hex[:12]}'


class NodeProcess(subprocess.Popen):
    """A started ``depth_node`` and the folder of its params file (``params_folder``),
    removed as soon as the process is seen to have ended (``wait``, ``poll``,
    ``communicate``, :func:`stop_node`) and, for a process never waited for, when this
    object is garbage-collected or this process exits: no ``depthclip_node_*`` folder is
    left in the temporary folder."""

    def __init__(self, args, params_folder: Path, **kwargs):
        self.params_folder = params_folder
        # also at interpreter exit (weakref.finalize's atexit), whatever happened before
        self._remove_params = weakref.finalize(self, shutil.rmtree, str(params_folder),
                                               ignore_errors=True)
        try:
            super().__init__(args, **kwargs)
        except BaseException:
            self._remove_params()
            raise

    def poll(self):
        code = super().poll()
        if code is not None:
            self._remove_params()
        return code

    def wait(self, timeout=None):
        code = super().wait(timeout)
        self._remove_params()
        return code


def start_node(parameters: dict, namespace: str | None = None, ros_args: Sequence[str] = (),
               env: dict[str, str] | None = None, stdout=subprocess.DEVNULL,
               cwd: str | Path | None = None) -> NodeProcess:
    """``python -m depthclip_ros.ros.entry`` (``depth_node``) with ``parameters`` (written
    to a params file in a temporary folder of its own, removed when the process ends:
    :class:`NodeProcess`), in ``namespace`` if given, then ``ros_args`` (remaps, ``-p``
    overrides: they win over the file). ``env`` is added to this process's environment;
    stdout goes to ``stdout`` (discarded unless given), stderr is piped (text)."""
    folder = Path(tempfile.mkdtemp(prefix='depthclip_node_'))
    params = folder / 'params.yaml'
    try:
        params.write_text('/**:\n  ros__parameters:\n' + ''.join(
            f'    {name}: {json.dumps(value)}\n' for name, value in parameters.items()))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    args = ['--params-file', str(params)]
    if namespace:
        args += ['-r', f'__ns:={namespace}']
    return NodeProcess([sys.executable, '-m', 'depthclip_ros.ros.entry', '--ros-args',
                        *args, *ros_args], folder, env=dict(os.environ, **(env or {})),
                       stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd)


def node_statuses(msg, namespace: str) -> dict[str, dict[str, str]]:
    """The key/values of each status that the node started in ``namespace`` (by
    :func:`start_node`) put in one ``/diagnostics`` message, by what follows ``<node>: ``
    in the status name (``depth``, ``camera <name>``, ``objects``). Other nodes' statuses
    (another run that drew this domain) are left out."""
    prefix = f'{namespace}/depth_node: '
    return {status.name[len(prefix):]: {kv.key: kv.value for kv in status.values}
            for status in msg.status if status.name.startswith(prefix)}


def stop_node(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT (the node's own clean shutdown), then SIGKILL if it has not exited within
    ``timeout`` seconds."""
    process.send_signal(2)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
