"""``depthclip-ros``: the command-line entry (infer, locate, bag, evaluate, bench, bench-node,
bench-cameras, soak, demo, export).

Only the tool named on the command line is imported: ``depthclip-ros --help`` lists the
tools from this table alone, and a tool's module imports torch, OpenCV, ROS and rosbags
only when it runs, so ``depthclip-ros <tool> --help`` needs none of them either.

A mistake on the command line is said in one line first, then where the usage is
(argparse's own message would first print every option of the tool)."""

from __future__ import annotations

import argparse
import importlib
import sys
import types

from depthclip_ros.allocator import keep_freed_memory

# The program's first act, before numpy, torch or rclpy start threads (allocator.py).
keep_freed_memory()

# Python packages of ROS 2 itself: from a ROS install (source its setup file) or, without
# one, the PyPI wheels (pip install 'depthclip_ros[ros]').
ROS_MODULES = ('rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs',
               'builtin_interfaces', 'rosidl_runtime_py', 'rpyutils')
NEEDS_ROS = ('depthclip-ros {name} needs the ROS 2 Python packages ({missing} is missing): '
             'source your ROS 2 setup file, or, without a ROS install, pip install '
             '"depthclip_ros[ros]" (the PyPI ROS 2 wheels, see README)')


def missing_ros(error: ModuleNotFoundError) -> str | None:
    """The ROS 2 package whose absence ``error`` reports, or ``None``."""
    missing = (error.name or '').split('.')[0]
    return missing if missing in ROS_MODULES else None


def _tool(name: str):
    """The tool's module, or a stand-in that says how to get what it needs when it imports
    ROS 2 packages that are not installed (infer, locate, evaluate and bench need none)."""
    try:
        return importlib.import_module(MODULES[name])
    except ModuleNotFoundError as error:
        missing = missing_ros(error)
        if missing is None:
            raise
        message = NEEDS_ROS.format(name=name, missing=missing)

        def add_arguments(parser):
            parser.add_argument('rest', nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

        def run(args):
            print(message, file=sys.stderr)
            return 2
        return types.SimpleNamespace(add_arguments=add_arguments, run=run, __doc__=message)


SUMMARIES = dict((
    ('infer', 'depth, 16-bit PNG, preview and PLY for images, folders or videos'),
    ('locate', 'objects named in words (--query "the red chair next to the door") in one '
               'image: chosen mask, 3-D points and position in metres'),
    ('bag', 'a recorded bag (rosbag2 .mcap/.db3, ROS 1 .bag) through the node pipeline into '
            'a new MCAP bag'),
    ('evaluate', "the paper's metrics on RGB-D folders with ground truth"),
    ('bench', 'per-stage milliseconds on the chosen device'),
    ('bench-bag', 'frames/s of bag processing against the bare engine'),
    ('bench-node', 'end-to-end latency of depth_node as its own process'),
    ('bench-cameras', 'N cameras x R Hz into one depth_node process: per camera answered '
                      'frames, output rate, drops, p50/p95 latency, backlog check'),
    ('soak', 'depth_node as its own process under a long stream: memory, threads, fds, '
             'counts, shutdown'),
    ('demo', 'the main job without a camera: run the pipeline on given or generated input '
             'and say where the results are'),
    ('export', 'the image trunk and encoder as ONNX or OpenVINO files with their input '
               'contracts (for TensorRT, ONNX Runtime, OpenVINO)'),
))
MODULES = {name: f'depthclip_ros.tools.{name.replace("-", "_")}' for name in SUMMARIES}
MODULES.update({name: f'depthclip_ros.tools.bench.{name[6:]}'
                for name in ('bench-bag', 'bench-node', 'bench-cameras')})
MODULES['bench'] = 'depthclip_ros.tools.bench.speed'


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is told in one line (``prog: error: ...``) followed by one
    line on where the usage is, instead of the full usage of every option first."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message}\n'
                     f'(usage: {self.prog} --help)\n')


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s tool (if any) is imported to add its options."""
    parser = Parser(
        prog='depthclip-ros', description='Zero-shot metric depth from an RGB camera '
        '(DepthCLIP + focal-length scaling), without ROS running.')
    parser.add_argument('--verbose', '-v', action='store_true', help='log at INFO level')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, summary in SUMMARIES.items():
        if name == command:
            module = _tool(name)
            module.add_arguments(sub.add_parser(
                name, help=summary, description=module.__doc__,
                formatter_class=argparse.RawTextHelpFormatter))
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The tool named in ``argv`` (the first word that is one), or ``None``."""
    return next((word for word in argv if word in SUMMARIES), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_of(argv)
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the tool's parser: its name and its --help
        tools = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        tools.choices[args.command].error(f'unrecognized arguments: {" ".join(unknown)}')
    from depthclip_ros.tools.common import setup_logging, ToolExit
    setup_logging(args.verbose)
    try:
        return _tool(args.command).run(args)
    except ToolExit as stop:
        print(stop.message, file=sys.stderr, flush=True)
        return stop.status
    except ModuleNotFoundError as error:  # a ROS package the tool imports when it runs
        missing = missing_ros(error)
        if missing is None:
            raise
        print(NEEDS_ROS.format(name=args.command, missing=missing), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
