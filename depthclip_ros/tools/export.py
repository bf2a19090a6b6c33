"""``depthclip-ros export --format onnx|openvino --output DIR``: the image networks as files
another runtime reads (TensorRT on a Jetson, ONNX Runtime, OpenVINO), each with its input
contract.

Written into ``--output`` (created when missing), for a static input shape:

  trunk.onnx / trunk.xml + trunk.bin      the image trunk (CLIP's ResNet up to layer4,
                                          without its attention pool) at --input-size,
                                          batch --batch: (N, 3, H, W) -> (N, C, H/32, W/32)
  trunk.json                              its input contract
  encoder.onnx / encoder.xml + .bin       CLIP's whole image encoder at the model's image
                                          size (224 x 224 for RN50), batch --batch:
                                          (N, 3, S, S) -> (N, D)
  encoder.json                            its input contract

The contract says what a runtime must feed the network and what comes back: the input's
name, shape, dtype, layout, colour order and normalisation (mean and std), the output's
name, shape and layout, the model and its weights. The model is loaded on the CPU in
float32 and the files hold float32 weights; the runtime that reads them chooses its own
precision (``trtexec --fp16``, for instance). Files are converted by the runtimes' own
converters (torch's ONNX exporter, needing the ``onnx`` package; OpenVINO's
``convert_model``, needing ``openvino``).

Every file is written whole or not at all: all of them are converted in a temporary folder
inside OUTPUT and moved into place at the end. An existing file of these names is replaced
only with ``--overwrite``; without it the run is refused before the model is loaded,
listing them.

Exit status: 0 written; 1 the weights could not be loaded, or converting or writing failed
(nothing of this run is left); 2 refused (an option, a converter that is not installed, an
output folder that cannot be written, or outputs that exist; one line naming the problem,
nothing loaded or written). With ``--pretrained none`` the files hold random weights: the
contracts and the summary say so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
import shutil
import sys
import tempfile

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.io.dataset import one_line
from depthclip_ros.io.outputs import (
    check_output_dir,
    check_outputs,
    OVERWRITE_HELP,
    replacing_note,
)
from depthclip_ros.ros.parameters import DEFAULTS
from depthclip_ros.tools.common import (
    add_weights_arguments,
    announce,
    configs_from_args,
    load_engine,
    option_problem,
)
from depthclip_ros.tools.progress import Stages

PROG = 'depthclip-ros export'
FORMATS = ('onnx', 'openvino')
# What each format needs installed (its converter) and the files of one network.
CONVERTER = {'onnx': 'onnx', 'openvino': 'openvino'}
SUFFIXES = {'onnx': ('.onnx',), 'openvino': ('.xml', '.bin')}
NETWORKS = ('trunk', 'encoder')
MAX_BATCH = 64
TRTEXEC = ('trtexec --onnx={name}.onnx --fp16 --saveEngine={name}.plan  (static shape '
           '{shape}; not run by this project)')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--format', required=True, choices=FORMATS,
                        help="onnx: NAME.onnx (opset 17, torch's exporter; needs the onnx "
                             'package); openvino: NAME.xml + NAME.bin (OpenVINO IR, float32; '
                             'needs openvino)')
    parser.add_argument('--output', '-o', type=Path, required=True,
                        help='output folder (created when missing)')
    parser.add_argument('--batch', type=int, default=1,
                        help=f'the static batch size of both networks, 1..{MAX_BATCH} '
                             f'(default 1)')
    parser.add_argument('--overwrite', action='store_true', help=OVERWRITE_HELP)
    group = parser.add_argument_group('model (same meaning as the node parameters; loaded '
                                      'on the CPU in float32)')
    add_weights_arguments(group)
    group.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                       default=tuple(DEFAULTS['input_size']),
                       help="the trunk's input size, multiples of 32, at least 32 (default "
                            f"{' '.join(map(str, DEFAULTS['input_size']))})")
    # the engine that is exported: the CPU, float32, NCHW (what the converters read)
    parser.set_defaults(device='cpu', precision='fp32', memory_format='contiguous',
                        cuda_graphs=False)


def planned_files(args: argparse.Namespace) -> dict[str, list[Path]]:
    """``{'trunk': [OUTPUT/trunk.onnx, OUTPUT/trunk.json], 'encoder': [...]}``."""
    return {name: [args.output / f'{name}{suffix}' for suffix in SUFFIXES[args.format]]
            + [args.output / f'{name}.json'] for name in NETWORKS}


def prepare(args: argparse.Namespace) -> list[Path]:
    """Options, the converter and the outputs, before anything is loaded; returns the
    existing files this run replaces (``--overwrite``). ``ValueError`` with the reason."""
    if not 1 <= args.batch <= MAX_BATCH:
        raise ValueError(f'--batch must be in [1, {MAX_BATCH}], got {args.batch}')
    try:
        configs_from_args(args)
    except ValueError as error:
        raise ValueError(option_problem(error, args)) from None
    package = CONVERTER[args.format]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f'--format {args.format} needs the {package} package, which is not '
                         f'installed (pip install {package})')
    check_output_dir(args.output)
    files = [path for paths in planned_files(args).values() for path in paths]
    return check_outputs(files, args.overwrite)


def convert(engine, name: str, shape: tuple[int, int, int, int], fmt: str,
            folder: Path) -> tuple[int, ...]:
    """Convert network ``name`` of the loaded ``engine`` for ``shape`` into ``folder``
    (its files under their final names); returns the output shape."""
    import torch

    from depthclip_ros.engine.export import NETWORKS as MODULES
    from depthclip_ros.engine.export import to_onnx, to_openvino
    module = MODULES[name](engine.clip.visual).eval()
    with torch.no_grad():  # one frame gives the output's shape for any batch
        single = module(torch.zeros((1, *shape[1:]), dtype=torch.float32))
    output_shape = (shape[0], *single.shape[1:])
    if fmt == 'onnx':
        to_onnx(module, shape, folder / f'{name}.onnx')
    else:
        import openvino as ov
        # float32 weights in the file (save_model would halve them by default)
        ov.save_model(to_openvino(module, shape), str(folder / f'{name}.xml'),
                      compress_to_fp16=False)
    return tuple(output_shape)


def contract(engine, args: argparse.Namespace, name: str, shape, output_shape) -> dict:
    """The input contract of ``name`` (engine/export.py's) with what this run wrote."""
    from depthclip_ros.engine.export import input_contract
    document = input_contract(name, shape, output_shape, args.model, args.pretrained)
    document['format'] = args.format
    document['files'] = [f'{name}{suffix}' for suffix in SUFFIXES[args.format]]
    document['precision'] = 'fp32'
    document['random_weights'] = bool(engine.random_weights)
    if engine.random_weights:
        document['note'] = RANDOM_WEIGHTS_BANNER
    return document


def shapes(engine, args: argparse.Namespace) -> dict[str, tuple[int, int, int, int]]:
    """The static input shape of each network: the trunk at --input-size, the encoder at
    the model's own image size."""
    size = getattr(engine.clip.visual, 'image_size', 224)
    size = size if isinstance(size, int) else size[0]
    height, width = args.input_size
    return {'trunk': (args.batch, 3, height, width), 'encoder': (args.batch, 3, size, size)}


def write_all(engine, args: argparse.Namespace, stages: Stages) -> dict[str, dict]:
    """Convert both networks into a temporary folder inside OUTPUT, write their contracts,
    then move every file into place; nothing is left when anything fails (OUTPUT
    exists). Returns the contracts."""
    staging = Path(tempfile.mkdtemp(prefix='.export-', dir=args.output))
    documents = {}
    try:
        for name, shape in shapes(engine, args).items():
            what = 'trunk' if name == 'trunk' else 'image encoder'
            stages.start(f'{what} {"x".join(map(str, shape))} -> {args.format}')
            output_shape = convert(engine, name, shape, args.format, staging)
            documents[name] = contract(engine, args, name, shape, output_shape)
            (staging / f'{name}.json').write_text(
                json.dumps(documents[name], indent=2) + '\n', encoding='utf-8')
        stages.finish()
        for paths in planned_files(args).values():
            for path in paths:
                os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return documents


def run(args: argparse.Namespace) -> int:
    try:
        replaced = prepare(args)
    except ValueError as error:
        print(f'{PROG}: {one_line(error)}', file=sys.stderr, flush=True)
        return 2
    files = planned_files(args)
    announce(PROG, f'will write {", ".join(p.name for paths in files.values() for p in paths)}'
                   f' into {args.output}/')
    note = replacing_note(replaced)
    if note:
        print(note)
    engine = load_engine(args)
    stages = Stages('export', len(NETWORKS))
    created = None  # the outermost folder this run creates, removed when it fails
    for folder in (args.output, *args.output.parents):
        if os.path.lexists(folder):
            break
        created = folder
    try:
        args.output.mkdir(parents=True, exist_ok=True)
        documents = write_all(engine, args, stages)
    except Exception as error:  # a converter's or the file system's failure
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        print(f'{PROG}: converting or writing failed, nothing of this run was kept: '
              f'{type(error).__name__}: {one_line(error)}', file=sys.stderr, flush=True)
        return 1
    for name, document in documents.items():
        written = ', '.join(document['files'] + [f'{name}.json'])
        print(f'{name}: {written}  input {document["input"]["name"]} '
              f'{"x".join(map(str, document["input"]["shape"]))} float32 NCHW RGB '
              f'normalised -> output {document["output"]["name"]} '
              f'{"x".join(map(str, document["output"]["shape"]))}')
    print(f'-> {args.output}/ (the contracts: trunk.json, encoder.json)')
    if args.format == 'onnx':
        shape = 'x'.join(map(str, documents['trunk']['input']['shape']))
        print('TensorRT: ' + TRTEXEC.format(name=args.output / 'trunk', shape=shape))
    if engine.random_weights:
        print(f'{RANDOM_WEIGHTS_BANNER} The exported files hold random weights.')
    return 0
