"""``depthclip-ros``: the command-line entry (infer, bag, evaluate, bench, bench-node, demo)."""

from __future__ import annotations

import argparse
import sys

from .tools import bag, bench, bench_bag, bench_node, demo, evaluate, infer, soak
from .tools.common import setup_logging

COMMANDS = {
    'infer': (infer, 'depth, 16-bit PNG, preview and PLY for images, folders or videos'),
    'bag': (bag, 'a recorded bag (rosbag2 .mcap/.db3, ROS 1 .bag) through the node '
                 'pipeline into a new MCAP bag'),
    'evaluate': (evaluate, "the paper's metrics on RGB-D folders with ground truth"),
    'bench': (bench, 'per-stage milliseconds on the chosen device'),
    'bench-bag': (bench_bag, 'frames/s of bag processing against the bare engine'),
    'bench-node': (bench_node, 'end-to-end latency of depth_node as its own process'),
    'soak': (soak, 'depth_node as its own process under a long stream: memory, threads, '
                   'fds, counts, shutdown'),
    'demo': (demo, 'the main job without a camera: run the pipeline on given or generated '
                   'input and say where the results are'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='depthclip-ros', description='Zero-shot metric depth from an RGB camera '
        '(DepthCLIP + focal-length scaling), without ROS running.')
    parser.add_argument('--verbose', '-v', action='store_true', help='log at INFO level')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, (module, summary) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=summary, description=module.__doc__,
                                            formatter_class=argparse.RawTextHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return COMMANDS[args.command][0].run(args)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
