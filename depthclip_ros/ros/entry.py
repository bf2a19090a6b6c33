"""The node's console scripts, ``depth_node`` and ``depth_lifecycle_node``.

Each installs the signal handling (:mod:`depthclip_ros.ros.shutdown`) and the allocator
settings (:mod:`depthclip_ros.allocator`) as its first acts, before the heavy imports
start threads, then runs the node.
"""

from __future__ import annotations

from depthclip_ros.allocator import keep_freed_memory
from depthclip_ros.ros.shutdown import SHUTDOWN


def depth_node() -> None:
    """The ``depth_node`` console script: signals handled and the allocator set
    (:mod:`depthclip_ros.allocator`) before the heavy imports start threads."""
    SHUTDOWN.install()
    keep_freed_memory()
    from depthclip_ros.ros.node import main
    main()


def depth_lifecycle_node() -> None:
    """The ``depth_lifecycle_node`` console script (the managed node)."""
    SHUTDOWN.install()
    keep_freed_memory()
    from depthclip_ros.ros.node import main
    main(managed=True)
