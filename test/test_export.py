"""``depthclip-ros export``: the written files reproduce the torch trunk and image encoder
when another runtime runs them (OpenVINO reads the ONNX file directly and its own IR;
ONNX Runtime only where it is installed), their contracts give the shapes the files have,
existing files are never replaced unasked, and ``--help`` imports no torch.

Random weights (seeded: the tool's model is the fixture's): the tests compare
computations, never accuracy.
"""

import json

import numpy as np
import pytest
from test_tools_help import heavy_in, imported_modules

from depthclip_ros.tools import export
from depthclip_ros.tools.cli import main

from conftest import TINY_MODEL

pytestmark = pytest.mark.usefixtures('tiny_model')  # small_engine's model, in this process

SIZE = (64, 96)
BATCH = 2
RELATIVE = 1e-5  # ||runtime - torch|| / ||torch||


def export_args(output, fmt='onnx', *more):
    return ['export', '--format', fmt, '--output', str(output), '--model', TINY_MODEL,
            '--pretrained', 'none',
            '--input-size', *map(str, SIZE), '--batch', str(BATCH), *more]


def torch_outputs(engine, contracts: dict) -> tuple[dict, dict]:
    """Seeded inputs of each contract's shape and what the engine's own torch networks
    give for them (the trunk as the engine runs it, the encoder as encode_image)."""
    import torch
    generator = torch.Generator().manual_seed(7)
    inputs, outputs = {}, {}
    for name, contract in contracts.items():
        x = torch.randn(contract['input']['shape'], generator=generator)
        with torch.inference_mode():
            y = engine.image_tokens(x) if name == 'trunk' else engine.encode_image(x)
        inputs[name], outputs[name] = x.numpy(), y.float().numpy()
    return inputs, outputs


def assert_reproduces(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    relative = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert relative <= RELATIVE, relative
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def widths(engine) -> tuple[int, int]:
    """The trunk's channels and the embedding's width of ``engine``'s model."""
    pool = engine.clip.visual.attnpool
    return pool.k_proj.in_features, pool.c_proj.out_features


def read_contracts(folder) -> dict:
    return {name: json.loads((folder / f'{name}.json').read_text()) for name in
            export.NETWORKS}


def run_openvino(path, x: np.ndarray, contract: dict) -> np.ndarray:
    """``path`` (ONNX or IR) compiled by OpenVINO on the CPU in float32, checked against
    its contract's names and shapes, run on ``x``."""
    from depthclip_ros.engine.openvino_core import core
    compiled = core().compile_model(str(path), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
    assert compiled.input(0).get_any_name() == contract['input']['name']
    assert list(compiled.input(0).shape) == contract['input']['shape']
    assert compiled.output(0).get_any_name() == contract['output']['name']
    assert list(compiled.output(0).shape) == contract['output']['shape']
    return compiled(x)[0]


@pytest.fixture(scope='module')
def exported_onnx(tmp_path_factory):
    """One real run of the tool (its own model load): ONNX at 64x96, batch 2."""
    folder = tmp_path_factory.mktemp('onnx')
    assert main(export_args(folder)) == 0
    return folder


def test_the_onnx_files_run_under_openvino_and_reproduce_torch(exported_onnx, small_engine,
                                                                capsys):
    pytest.importorskip('openvino')
    assert sorted(p.name for p in exported_onnx.iterdir()) == [
        'encoder.json', 'encoder.onnx', 'trunk.json', 'trunk.onnx']
    contracts = read_contracts(exported_onnx)
    inputs, outputs = torch_outputs(small_engine, contracts)
    for name in export.NETWORKS:
        got = run_openvino(exported_onnx / f'{name}.onnx', inputs[name], contracts[name])
        assert_reproduces(got, outputs[name])


def test_the_contracts_say_what_the_files_take_and_give(exported_onnx, small_engine):
    import onnx
    contracts = read_contracts(exported_onnx)
    trunk, encoder = contracts['trunk'], contracts['encoder']
    assert trunk['input']['shape'] == [BATCH, 3, *SIZE]
    channels, dim = widths(small_engine)
    assert trunk['output']['shape'] == [BATCH, channels, SIZE[0] // 32, SIZE[1] // 32]
    assert encoder['input']['shape'] == [BATCH, 3, 224, 224]
    assert encoder['output']['shape'] == [BATCH, dim]
    for name, contract in contracts.items():
        assert contract['network'] == name and contract['format'] == 'onnx'
        assert contract['files'] == [f'{name}.onnx']
        assert contract['model'] == TINY_MODEL and contract['pretrained'] == 'none'
        assert contract['random_weights'] is True and 'RANDOM WEIGHTS' in contract['note']
        assert contract['input']['dtype'] == 'float32' and contract['input']['layout'] == \
            'NCHW' and contract['input']['colour'] == 'RGB'
        assert contract['input']['mean'] == pytest.approx([0.485, 0.456, 0.406])
        assert contract['input']['std'] == pytest.approx([0.229, 0.224, 0.225])
        graph = onnx.load(str(exported_onnx / f'{name}.onnx'), load_external_data=False).graph
        for value, side in ((graph.input[0], 'input'), (graph.output[0], 'output')):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            assert value.name == contract[side]['name'] and dims == contract[side]['shape']


def test_the_onnx_files_under_onnx_runtime_where_it_is_installed(exported_onnx,
                                                                  small_engine):
    ort = pytest.importorskip('onnxruntime', reason='ONNX Runtime is not installed here '
                                                    '(OpenVINO runs the ONNX files instead)')
    contracts = read_contracts(exported_onnx)
    inputs, outputs = torch_outputs(small_engine, contracts)
    for name in export.NETWORKS:
        session = ort.InferenceSession(str(exported_onnx / f'{name}.onnx'),
                                       providers=['CPUExecutionProvider'])
        got = session.run(None, {contracts[name]['input']['name']: inputs[name]})[0]
        assert_reproduces(got, outputs[name])


def test_openvino_ir_reproduces_torch_and_keeps_float32_weights(tmp_path, small_engine,
                                                                monkeypatch, capsys):
    pytest.importorskip('openvino')
    monkeypatch.setattr(export, 'load_engine', lambda args: small_engine)
    assert main(export_args(tmp_path, 'openvino')) == 0
    out = capsys.readouterr()
    assert '[1/2] trunk 2x3x64x96 -> openvino' in out.err
    assert 'RANDOM WEIGHTS' in out.out and 'trtexec' not in out.out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'encoder.bin', 'encoder.json', 'encoder.xml', 'trunk.bin', 'trunk.json', 'trunk.xml']
    # float32 in the file: about 4 bytes per weight (fp16 compression would halve it)
    weights = sum(p.numel() for p in small_engine.clip.visual.parameters())
    assert (tmp_path / 'encoder.bin').stat().st_size > 3.9 * weights
    contracts = read_contracts(tmp_path)
    assert contracts['trunk']['files'] == ['trunk.xml', 'trunk.bin']
    inputs, outputs = torch_outputs(small_engine, contracts)
    for name in export.NETWORKS:
        got = run_openvino(tmp_path / f'{name}.xml', inputs[name], contracts[name])
        assert_reproduces(got, outputs[name])


# ------------------------------------------------------------------ refusals and failures
@pytest.fixture
def no_model(monkeypatch):
    from depthclip_ros.engine.depthclip import DepthCLIP
    monkeypatch.setattr(DepthCLIP, 'load', lambda self: pytest.fail('the model was built'))


def test_existing_files_are_refused_before_the_model_loads(tmp_path, capsys, no_model):
    (tmp_path / 'trunk.json').write_text('mine')
    (tmp_path / 'encoder.onnx').write_text('mine too')
    assert main(export_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('depthclip-ros export: this run would replace 2 files')
    assert 'encoder.onnx' in err and 'trunk.json' in err and '--overwrite' in err
    assert len(err.splitlines()) == 1
    assert (tmp_path / 'trunk.json').read_text() == 'mine'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['encoder.onnx', 'trunk.json']
    # other names of the other format are not this run's
    (tmp_path / 'trunk.json').unlink()
    (tmp_path / 'trunk.xml').write_text('an IR of mine')
    assert main(export_args(tmp_path, 'openvino')) == 2
    assert 'trunk.xml' in capsys.readouterr().err


def test_overwrite_replaces_them_and_the_summary_names_files_and_tensorrt_line(
        tmp_path, small_engine, monkeypatch, capsys):
    monkeypatch.setattr(export, 'load_engine', lambda args: small_engine)
    (tmp_path / 'trunk.json').write_text('mine')
    assert main(export_args(tmp_path, 'onnx', '--overwrite')) == 0
    out = capsys.readouterr().out
    assert '--overwrite: replacing 1 existing file' in out
    assert json.loads((tmp_path / 'trunk.json').read_text())['network'] == 'trunk'
    assert 'trunk: trunk.onnx, trunk.json  input image 2x3x64x96' in out
    channels, dim = widths(small_engine)
    assert f'output tokens 2x{channels}x2x3' in out and f'output embedding 2x{dim}' in out
    assert f'trtexec --onnx={tmp_path}/trunk.onnx --fp16 --saveEngine=' in out
    assert 'static shape 2x3x64x96; not run by this project' in out


@pytest.mark.parametrize(('options', 'said'), [
    (['--batch', '0'], '--batch must be in [1, 64], got 0'),
    (['--batch', '65'], '--batch must be in [1, 64], got 65'),
    (['--input-size', '50', '64'], '--input-size: input_size must be positive multiples of 32'),
])
def test_bad_options_are_refused_in_one_line(tmp_path, capsys, no_model, options, said):
    assert main([*export_args(tmp_path / 'out'), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('depthclip-ros export: ') and said in err, err
    assert not (tmp_path / 'out').exists()


def test_a_missing_converter_is_refused_naming_the_package(tmp_path, capsys, no_model,
                                                           monkeypatch):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'openvino' else real(name, *a))
    assert main(export_args(tmp_path / 'out', 'openvino')) == 2
    assert 'needs the openvino package' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_a_failed_conversion_leaves_nothing(tmp_path, small_engine, monkeypatch, capsys):
    monkeypatch.setattr(export, 'load_engine', lambda args: small_engine)
    real = export.convert

    def fail_on_the_encoder(engine, name, *rest):
        if name == 'encoder':
            raise RuntimeError('the converter broke')
        return real(engine, name, *rest)

    monkeypatch.setattr(export, 'convert', fail_on_the_encoder)
    (tmp_path / 'other.txt').write_text('kept')
    assert main(export_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert 'converting or writing failed, nothing of this run was kept: RuntimeError: the ' \
           'converter broke' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['other.txt']
    # an output folder this run created is not left behind either
    assert main(export_args(tmp_path / 'new' / 'out')) == 1
    assert not (tmp_path / 'new').exists()


# ------------------------------------------------------------------ the command line
def test_export_help_imports_no_torch_and_no_converter():
    code, modules, out = imported_modules('export', '--help')
    assert code == 0 and 'usage: depthclip-ros export' in out
    assert 'depthclip_ros.tools.common' in modules  # the measurement sees the tool's imports
    assert heavy_in(modules) == []
    assert not {m for m in modules if m.split('.')[0] in ('openvino', 'onnx', 'nncf')}
