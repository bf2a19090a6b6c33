"""depth_node: placeholder until the ROS 2 node lands."""

import sys


def main() -> int:
    sys.exit('depth_node: the ROS 2 node is not implemented yet; use `depthclip-ros infer` '
             'or `depthclip-ros demo` meanwhile.')
