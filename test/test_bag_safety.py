"""``depthclip-ros bag`` never loses the user's data and never lies about its result.

- the input is never deleted, truncated or modified: every output path that is the
  input, inside it or around it (symlinks, ``..``, the storage file's bag folder) is
  refused before anything is read or written, ``--overwrite`` or not; each test hashes
  every file under the test's folder before and after;
- a run that is killed (SIGKILL), runs out of space (a file size limit, a full tmpfs) or
  fails to write leaves no OUTPUT but a clearly named ``OUTPUT.partial`` with a note, an
  earlier output untouched, and ``--recover`` makes a complete bag of what reached disk;
- an automatically chosen CameraInfo of another camera is refused;
- impossible options exit with code 2 before the model is loaded or the input read.

CPU, random weights (the tests' tiny model: ``small_engine``, ``--model``), bags written by
the tests themselves.
"""

import errno
import hashlib
import os
from pathlib import Path
import resource
import signal
import subprocess
import sys
import time

import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer

from depthclip_ros.bags import process as bags
from depthclip_ros.bags.output import BagWriteError
from depthclip_ros.bags.process import process_bag
from depthclip_ros.bags.recover import recover_partial
from depthclip_ros.bags.safety import BagError, PARTIAL_NOTE
from depthclip_ros.ros.pipeline import DepthPipeline
from depthclip_ros.tools.cli import main

from conftest import REPO, TINY_MODEL, TINY_TOOL, without_ros
from rosutil import camera_info, rgb8_image
from test_bag import by_topic, frames, mcap_messages, stream, write_bag

CLI = ['--model', TINY_MODEL, '--pretrained', 'none', '--device', 'cpu', '--input-size', '64',
       '64']
pytestmark = pytest.mark.usefixtures('tiny_model')  # CLI's model, in this process


def tree(root: Path) -> dict:
    """Every file, folder and link under ``root``: content hash, 'dir' or link target."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = 'link -> ' + os.readlink(path)
            elif path.is_dir():
                out[rel] = 'dir'
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def no_model():
    raise AssertionError('the model was loaded although the run had to be refused')


@pytest.fixture
def no_loading(monkeypatch):
    """The CLI must refuse before loading the model (and, for options, reading the bag)."""
    from depthclip_ros.tools import bag as tool
    monkeypatch.setattr(tool, 'load_engine', lambda args: no_model())


# ------------------------------------------------------------------ 1. paths

def _links(tmp):
    (tmp / 'link').symlink_to('data/in')
    (tmp / 'linkdata').symlink_to('data')
    (tmp / 'dangle').symlink_to('data/in/new')
    loose = tmp / 'loose'
    loose.mkdir()
    (file,) = (tmp / 'data' / 'in').glob('*.mcap')
    (loose / 'rec.mcap').write_bytes(file.read_bytes())  # a bare storage file, no metadata
    (tmp / 'loose2').mkdir()
    (tmp / 'loose2' / 'link.mcap').symlink_to('../loose/rec.mcap')
    write_bag(tmp / 'data' / 'out.partial', stream(frames(1)))  # a recording named so


# (input, output) relative to the test folder, which is the working directory
OVERLAPS = {
    'output is the input': ('data/in', 'data/in'),
    'output is the storage file': ('data/in', 'data/in/in.mcap'),
    'output inside the input': ('data/in', 'data/in/sub'),
    'output is the storage file folder': ('data/in/in.mcap', 'data/in'),
    'output holds the input': ('data/in', 'data'),
    'output is the working folder': ('data/in', '.'),
    'output with ..': ('data/in', 'data/x/../in'),
    'output with . and trailing slash': ('data/in', 'data/./in/'),
    'output is the absolute input': ('data/in', '{tmp}/data/in'),
    'output is a symlink to the input': ('data/in', 'link'),
    'input is a symlink, output its target': ('link', 'data/in'),
    'output is a symlink to the folder above': ('data/in', 'linkdata'),
    'output is a dangling symlink into the input': ('data/in', 'dangle'),
    'output under a symlinked input': ('link', 'data/in/new'),
    'bare storage file, output its folder': ('loose/rec.mcap', 'loose'),
    'symlinked storage file, output its folder': ('loose2/link.mcap', 'loose2'),
    'partial folder would be the input': ('data/out.partial', 'data/out'),
}


@pytest.fixture
def recordings(tmp_path, monkeypatch):
    write_bag(tmp_path / 'data' / 'in', stream(frames(2)))
    _links(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize('case', OVERLAPS)
def test_an_output_overlapping_the_input_is_refused_and_nothing_changes(
        recordings, case, capsys, no_loading, monkeypatch):
    source, output = (s.format(tmp=recordings) for s in OVERLAPS[case])
    before = tree(recordings)
    monkeypatch.setattr(bags, 'AnyReader', lambda *a: no_model())  # not even read
    assert main(['bag', source, output, '--overwrite', *CLI]) == 2
    err = capsys.readouterr().err
    assert err.startswith('depthclip-ros bag: ') and len(err.strip().splitlines()) == 1
    assert 'the input recording' in err and 'Traceback' not in err
    with pytest.raises(BagError, match='the input recording'):  # the library too
        process_bag(source, output, no_model, overwrite=True)
    if case != 'partial folder would be the input':  # --recover writes no OUTPUT.partial
        with pytest.raises(BagError, match='the input recording'):
            recover_partial(source, output, overwrite=True)
    assert tree(recordings) == before  # byte for byte, and nothing created or removed


def test_a_bind_mount_of_the_input_is_recognised_by_identity(recordings, capsys, no_loading):
    """No path spelling shows that a bind mount is the input: file identity does."""
    mnt = recordings / 'mnt'
    mnt.mkdir()
    if subprocess.run(['mount', '--bind', str(recordings / 'data'), str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip('cannot bind-mount here (needs root); the path spellings are tested above')
    try:
        before = tree(recordings / 'data')
        for output, relation in (('mnt/in', 'is the input'), ('mnt', 'contains the input'),
                                 ('mnt/in/sub', 'is inside the input')):
            assert main(['bag', 'data/in', output, '--overwrite', *CLI]) == 2
            assert relation in capsys.readouterr().err
            with pytest.raises(BagError, match=relation):
                recover_partial('data/in', output, overwrite=True)
        assert tree(recordings / 'data') == before
    finally:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_an_output_beside_the_input_is_fine_and_overwrite_replaces_only_an_output(
        recordings, small_engine):
    before = {k: v for k, v in tree(recordings).items() if k.startswith('data/in')}
    report = process_bag('link', 'data/in_depth', DepthPipeline(small_engine))
    assert report.frames_written == 2 and report.output == recordings / 'data' / 'in_depth'
    first = tree(recordings / 'data' / 'in_depth')
    assert set(first) == {'in_depth.mcap', 'metadata.yaml'}
    (recordings / 'mine').mkdir()
    (recordings / 'mine' / 'notes.txt').write_text('mine')
    with pytest.raises(BagError, match='more than a rosbag2 bag'):
        process_bag('data/in', 'mine', DepthPipeline(small_engine), overwrite=True)
    report = process_bag('data/in', 'data/in_depth', DepthPipeline(small_engine),
                         overwrite=True)
    assert report.replaced and set(tree(recordings / 'data' / 'in_depth')) == set(first)
    assert not (recordings / 'data' / 'in_depth.partial').exists()
    assert {k: v for k, v in tree(recordings).items() if k.startswith('data/in') and
            not k.startswith('data/in_depth')} == before
    assert (recordings / 'mine' / 'notes.txt').read_text() == 'mine'


def test_bad_paths_end_in_one_line_not_a_traceback(recordings, capsys, no_loading):
    (recordings / 'file.txt').write_text('x')
    (recordings / 'empty').mkdir()
    cases = {('missing.mcap', 'out'): 'does not exist',
             ('data/in', 'file.txt/out'): 'is not a folder',
             ('data/in', 'file.txt'): 'exists',
             ('data/in', '/'): 'cannot be an output folder'}
    for (source, output), reason in cases.items():
        before = tree(recordings)
        assert main(['bag', source, output, '--overwrite', *CLI]) == 2, (source, output)
        err = capsys.readouterr().err
        assert err.startswith('depthclip-ros bag: ') and reason in err, err
        assert tree(recordings) == before


def test_an_unreadable_input_is_refused_before_the_model(recordings, capsys, no_loading):
    (recordings / 'empty').mkdir()
    assert main(['bag', 'empty', 'out', *CLI]) == 2
    assert 'cannot read empty' in capsys.readouterr().err
    assert not (recordings / 'out').exists() and not (recordings / 'out.partial').exists()


# ------------------------------------------------------- 2. interrupted or failed runs

BIG = (96, 128)  # about 235 kB of messages per frame: a 1 MiB chunk every few frames


def _outputs_are_whole(bag: Path, source: Path, complete: bool = True) -> int:
    """A complete bag whose frames are whole from the first on: each has its image, depth,
    depth/camera_info and points (a recovered bag may end inside its last frame, as the
    1 MiB chunks do), and copied input messages are byte-identical to the source's.
    Returns the number of whole frames."""
    got = by_topic(mcap_messages(bag))
    order = ('/cam/image_raw', '/cam/depth/image', '/cam/depth/camera_info', '/cam/points')
    counts = []
    for topic in order:  # written in this order per frame
        stamps = [m.ros_msg.header.stamp.sec for m in got.get(topic, [])]
        assert stamps == list(range(10, 10 + len(stamps))), topic
        counts.append(len(stamps))
    assert counts == sorted(counts, reverse=True) and counts[0] - counts[-1] <= 1, counts
    if complete:
        assert len(set(counts)) == 1, counts
    with AnyReader([source]) as reader:
        original = {(c.topic, t): bytes(r) for c, t, r in reader.messages()}
    with AnyReader([bag]) as reader:  # metadata.yaml and index: a complete bag
        copied = [(c.topic, t, bytes(r)) for c, t, r in reader.messages()
                  if c.topic in ('/cam/image_raw', '/cam/camera_info')]
    assert copied and all(original[(topic, t)] == raw for topic, t, raw in copied)
    return counts[-1]


def _wait_for(condition, proc, seconds=180):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.2)


def _cli(source, out, *extra, tool=(*TINY_TOOL,), options=CLI, **kwargs):
    """``depthclip-ros bag SOURCE OUT`` as a process: by default one that knows the tiny
    model (``TINY_TOOL``) and runs on it."""
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'PYTHONDONTWRITEBYTECODE': '1'}
    return subprocess.Popen([*tool, 'bag', str(source), str(out), *options, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **kwargs)


def test_sigkill_leaves_the_input_intact_and_a_recoverable_partial(tmp_path):
    total = 360  # the tiny model runs ~70 such frames a second here: killed long before
    source = write_bag(tmp_path / 'in', stream(frames(total, *BIG)))
    before = tree(source)
    out = tmp_path / 'out'
    partial = tmp_path / 'out.partial'
    mcap = partial / 'out' / 'out.mcap'
    proc = _cli(source, out)
    try:  # killed once at least two chunks reached the disk, long before the end
        _wait_for(lambda: mcap.exists() and mcap.stat().st_size > 2.2 * 2**20, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert tree(source) == before
    assert not out.exists()
    assert sorted(p.name for p in partial.iterdir()) == sorted([PARTIAL_NOTE, 'out'])
    note = (partial / PARTIAL_NOTE).read_text()
    assert 'UNFINISHED' in note and f'depthclip-ros bag --recover {partial} {out}' in note
    assert not (partial / 'out' / 'metadata.yaml').exists()
    with pytest.raises(Exception):  # noqa: B017 - as cut off, no reader takes it
        AnyReader([partial / 'out']).open()
    # A new run does not silently take the partial's place...
    with pytest.raises(BagError, match='unfinished output of an earlier run'):
        process_bag(source, out, no_model)
    # ...and the recovery copies every complete chunk into a complete bag.
    report = recover_partial(partial, out)
    assert report.output == out and not report.complete and report.stopped
    frames_recovered = _outputs_are_whole(out, source, complete=False)
    assert 2 <= frames_recovered < total
    assert report.per_topic['/cam/points'] == frames_recovered
    assert (partial / PARTIAL_NOTE).exists()  # the source of a recovery is only read
    assert tree(source) == before
    # `bag --recover` needs no ROS package (mcap and rosbags only): as after `pip install .`
    again = tmp_path / 'again'
    result = without_ros('bag', '--recover', str(partial), str(again))
    assert result.returncode == 0, result.stderr
    assert _outputs_are_whole(again, source, complete=False) == frames_recovered


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, 3 * 2**20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead


def test_a_file_size_limit_mid_run_keeps_a_named_partial_and_says_how_to_recover(tmp_path):
    source = write_bag(tmp_path / 'in', stream(frames(40, *BIG)))
    before = tree(source)
    out = tmp_path / 'out'
    proc = _cli(source, out, preexec_fn=_limit_file_size)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr
    assert 'Traceback' not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith('depthclip-ros bag: ')]
    assert 'File too large' in line and f'kept as {tmp_path / "out.partial"}' in line
    assert f'depthclip-ros bag --recover {tmp_path / "out.partial"} {out}' in line
    assert 'WRITE FAILED' in stdout and 'output:' not in stdout
    assert not out.exists() and tree(source) == before
    report = recover_partial(tmp_path / 'out.partial', out)
    assert 2 <= _outputs_are_whole(out, source, complete=False) < 40 and not report.complete


def test_a_full_disk_keeps_the_earlier_output_and_a_recoverable_partial(
        tmp_path, small_engine):
    disk = tmp_path / 'disk'
    disk.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2600k', 'tmpfs', str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip('cannot mount a small tmpfs here (needs root); the file size limit '
                    'test covers the same path with EFBIG')
    try:
        source = write_bag(tmp_path / 'in', stream(frames(30, *BIG)))
        before = tree(source)
        out = disk / 'out'
        (out).mkdir()
        (out / 'out.mcap').write_bytes(b'an earlier output')
        old = tree(out)
        with pytest.raises(BagWriteError, match='No space left') as caught:
            process_bag(source, out, DepthPipeline(small_engine), overwrite=True)
        assert caught.value.partial == disk / 'out.partial'
        assert 'Free some space' in str(caught.value) and f'{out} is unchanged' in \
            str(caught.value)
        assert tree(out) == old and tree(source) == before
        assert (disk / 'out.partial' / PARTIAL_NOTE).exists()
        report = recover_partial(disk / 'out.partial', tmp_path / 'recovered')
        assert report.messages > 0
        assert _outputs_are_whole(tmp_path / 'recovered', source, complete=False) >= 1
    finally:
        subprocess.run(['umount', '-l', str(disk)], check=False)


def _failing_writes(monkeypatch, after: int, error=None):
    original = Writer.write
    calls = []

    def write(self, *args):
        calls.append(1)
        if len(calls) > after:
            raise error or OSError(errno.EIO, 'Input/output error (simulated)')
        return original(self, *args)

    monkeypatch.setattr(Writer, 'write', write)


def test_a_write_error_mid_run_leaves_the_old_output_and_a_partial(
        tmp_path, small_engine, monkeypatch):
    source = write_bag(tmp_path / 'in', stream(frames(20, *BIG)))
    out = tmp_path / 'out'
    process_bag(source, out, DepthPipeline(small_engine), image_topic='/cam/image_raw')
    old = tree(out)
    before = tree(source)
    _failing_writes(monkeypatch, after=60)  # 12 frames of 5 messages: two chunks on disk
    problems = []
    with pytest.raises(BagWriteError) as caught:
        process_bag(source, out, DepthPipeline(small_engine), overwrite=True,
                    on_problem=problems.append)
    monkeypatch.undo()
    message = str(caught.value)
    assert 'Input/output error (simulated)' in message and f'{out} is unchanged' in message
    assert f'--recover {tmp_path / "out.partial"} {out} --overwrite' in message
    assert caught.value.report.messages_written == 60
    assert tree(out) == old and tree(source) == before
    report = recover_partial(tmp_path / 'out.partial', tmp_path / 'recovered')
    assert 2 <= _outputs_are_whole(tmp_path / 'recovered', source, complete=False) <= 12
    assert report.messages <= 60
    # --overwrite replaces the partial of the failed run, then the old output, once done
    report = process_bag(source, out, DepthPipeline(small_engine), overwrite=True)
    assert report.replaced and report.frames_written == 20
    assert not (tmp_path / 'out.partial').exists()
    assert _outputs_are_whole(out, source) == 20


def test_a_failure_when_closing_the_bag_is_a_write_failure(tmp_path, small_engine,
                                                            monkeypatch):
    source = write_bag(tmp_path / 'in', stream(frames(2)))

    def close(self):
        raise OSError(errno.ENOSPC, 'No space left on device (simulated)')

    monkeypatch.setattr(Writer, 'close', close)
    with pytest.raises(BagWriteError, match='Free some space') as caught:
        process_bag(source, tmp_path / 'out', DepthPipeline(small_engine))
    assert caught.value.partial == tmp_path / 'out.partial'
    assert not (tmp_path / 'out').exists()


def test_a_write_error_before_anything_was_written_leaves_nothing(tmp_path, small_engine,
                                                                   monkeypatch):
    source = write_bag(tmp_path / 'in', stream(frames(2)))
    _failing_writes(monkeypatch, after=0)
    with pytest.raises(BagWriteError, match='nothing was written') as caught:
        process_bag(source, tmp_path / 'out', DepthPipeline(small_engine))
    assert caught.value.partial is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']


def test_an_earlier_partial_is_kept_unless_overwrite_and_never_a_foreign_folder(
        tmp_path, small_engine):
    source = write_bag(tmp_path / 'in', stream(frames(1)))
    foreign = tmp_path / 'out.partial'
    foreign.mkdir()
    (foreign / 'thesis.tex').write_text('mine')
    for overwrite in (False, True):
        with pytest.raises(BagError, match='not a partial output of this tool'):
            process_bag(source, tmp_path / 'out', no_model, overwrite=overwrite)
    assert (foreign / 'thesis.tex').read_text() == 'mine'


def test_the_partial_of_a_run_still_in_progress_is_never_replaced(tmp_path):
    source = write_bag(tmp_path / 'in', stream(frames(1)))
    partial = tmp_path / 'out.partial'
    (partial / 'out').mkdir(parents=True)
    (partial / 'out' / 'out.mcap').write_bytes(b'being written')
    running = subprocess.Popen(['sleep', '60'])
    try:
        (partial / PARTIAL_NOTE).write_text(f'started: now by process {running.pid}\n')
        before = tree(tmp_path)
        with pytest.raises(BagError, match=f'being written by process {running.pid}'):
            process_bag(source, tmp_path / 'out', no_model, overwrite=True)
        assert tree(tmp_path) == before
    finally:
        running.kill()
        running.wait()
    # once that process is gone, --overwrite may replace the leftover
    with pytest.raises(BagError, match='pass --overwrite'):
        process_bag(source, tmp_path / 'out', no_model)


def test_recover_refuses_a_folder_without_a_complete_chunk(tmp_path):
    partial = tmp_path / 'out.partial' / 'out'
    partial.mkdir(parents=True)
    (partial.parent / PARTIAL_NOTE).write_text('note')
    (partial / 'out.mcap').write_bytes(b'\x89MCAP0\r\n\x01\x00')  # cut off at once
    with pytest.raises(BagWriteError, match='nothing to recover'):
        recover_partial(tmp_path / 'out.partial', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
    assert not (tmp_path / 'out.recovery-partial').exists()


# ---------------------------------------------------------------- 3. CameraInfo

def _camera(topic, height, width, frame, sec=10):
    info = camera_info(height, width, 60.0, 60.0, width / 2, height / 2)
    info.header.frame_id = frame
    info.header.stamp.sec = sec
    return (topic, 'sensor_msgs/msg/CameraInfo', sec * 10**9, info)


def _image(topic, rgb, frame, sec=10):
    msg = rgb8_image(rgb, sec=sec)
    msg.header.frame_id = frame
    return (topic, 'sensor_msgs/msg/Image', sec * 10**9, msg)


def _two_cameras(path: Path, info_topic='/cam/depth/camera_info', info_size=(48, 85),
                 info_frame='depth_optical', image_frame='color_optical', count=2) -> Path:
    """A colour stream (72x128, like 1280x720) without its camera_info, and another
    camera's CameraInfo (48x85, like 848x480: within the aspect tolerance)."""
    messages = []
    for i, rgb in enumerate(frames(count, 72, 128)):
        messages.append(_camera(info_topic, *info_size, info_frame, 10 + i))
        messages.append(_image('/cam/color/image_raw', rgb, image_frame, 10 + i))
    return write_bag(path, messages)


def test_another_cameras_camera_info_is_refused_unless_given(tmp_path, small_engine,
                                                             capsys, no_loading):
    source = _two_cameras(tmp_path / 'in')
    before = tree(tmp_path)
    with pytest.raises(BagError) as caught:
        process_bag(source, tmp_path / 'out', no_model)
    message = str(caught.value)
    for part in ('/cam/depth/camera_info', 'the nearest CameraInfo topic',
                 "frame_id 'depth_optical', the images 'color_optical'",
                 'size 85x48, the images 128x72', '--camera-info-topic'):
        assert part in message
    assert main(['bag', str(source), str(tmp_path / 'out'), *CLI]) == 2
    assert '/cam/depth/camera_info' in capsys.readouterr().err
    assert tree(tmp_path) == before
    # Given explicitly: used, with a warning, and named in the report.
    problems = []
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small_engine),
                         info_topic='/cam/depth/camera_info', on_problem=problems.append)
    assert report.frames_written == 2
    assert report.camera_info_topic == '/cam/depth/camera_info'
    assert 'given with --camera-info-topic' in report.camera_info_choice
    assert any("frame_id 'depth_optical', the images 'color_optical'" in p and
               'using it because it was given' in p for p in problems)


@pytest.mark.parametrize('info_size, info_frame, refused', [
    ((72, 128), 'depth_optical', "frame_id 'depth_optical'"),  # same size, other frame
    ((48, 85), 'color_optical', 'size 85x48'),  # same frame, other (scaled) size
    ((72, 96), '', 'another aspect ratio'),  # nothing to compare but the size
])
def test_the_nearest_camera_info_must_match_the_image(tmp_path, info_size, info_frame,
                                                      refused):
    source = _two_cameras(tmp_path / 'in', info_size=info_size, info_frame=info_frame)
    with pytest.raises(BagError, match=refused):
        process_bag(source, tmp_path / 'out', no_model)


def test_the_nearest_camera_info_of_the_same_camera_is_used(tmp_path, small_engine):
    source = _two_cameras(tmp_path / 'in', info_topic='/cam/calib/camera_info',
                          info_size=(72, 128), info_frame='color_optical')
    problems = []
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small_engine),
                         on_problem=problems.append)
    assert report.frames_written == 2 and not problems
    assert report.camera_info_choice.startswith(
        '/cam/calib/camera_info (the nearest CameraInfo topic; /cam/color/camera_info is '
        "absent; 128x72, frame_id 'color_optical')")
    # empty frame_ids (as in RealSense ROS 1 bags): used for the same size, but said so
    source = _two_cameras(tmp_path / 'in2', info_topic='/cam/calib/camera_info',
                          info_size=(72, 128), info_frame='', image_frame='')
    report = process_bag(source, tmp_path / 'out2', DepthPipeline(small_engine),
                         on_problem=problems.append)
    assert report.frames_written == 2
    assert any('frame_id cannot be compared' in p for p in problems)


def test_the_camera_info_beside_the_image_is_scaled_but_not_another_aspect(tmp_path,
                                                                          small_engine):
    source = _two_cameras(tmp_path / 'in', info_topic='/cam/color/camera_info',
                          info_size=(36, 64), info_frame='color_optical')
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small_engine))
    assert report.frames_written == 2 and "scaled to the images' 128x72" in \
        report.camera_info_choice
    source = _two_cameras(tmp_path / 'in2', info_topic='/cam/color/camera_info',
                          info_size=(48, 48), info_frame='color_optical')
    with pytest.raises(BagError, match='beside the image.*another aspect ratio'):
        process_bag(source, tmp_path / 'out2', no_model)


# ------------------------------------------------- 4. options first, honest exit codes

IMPOSSIBLE = {
    '--cloud-stride 0': 'cloud_stride',
    '--min-depth-m 5 --max-depth-m 1': 'min_depth_m',
    '--output-size 5 0': 'output_size',
    '--fallback-hfov-deg 500': 'fallback_hfov_deg',
    '--temperature 1e-300': 'temperature',
    '--max-input-pixels 10': 'max_input_pixels',
    '--output-size 2000 2000 --max-input-pixels 1048576': 'max_input_pixels',
    '--min-depth-m nan': 'min_depth_m',
    '--input-size 65 64': 'input_size',
    '--depth-bins-m 1 2': 'one depth bin per distance prompt',
}


@pytest.mark.parametrize('options', IMPOSSIBLE)
def test_impossible_options_exit_2_before_the_model_or_the_input(
        tmp_path, options, capsys, no_loading, monkeypatch):
    source = write_bag(tmp_path / 'in', stream(frames(1)))
    before = tree(tmp_path)
    monkeypatch.setattr(bags, 'AnyReader', lambda *a: no_model())
    for overwrite in ([], ['--overwrite']):
        code = main(['bag', str(source), str(tmp_path / 'out'), *CLI, *options.split(),
                     *overwrite])
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith('depthclip-ros bag: ') and len(err.strip().splitlines()) == 1
        assert IMPOSSIBLE[options] in err
    assert tree(tmp_path) == before


def test_impossible_option_as_a_process_exits_2_quickly_without_traceback(tmp_path):
    source = write_bag(tmp_path / 'in', stream(frames(1)))
    before = tree(tmp_path)
    start = time.monotonic()
    proc = _cli(source, tmp_path / 'out', '--cloud-stride', '0', '--overwrite',
                '--pretrained', 'openai',  # weights that do not exist here: never loaded
                tool=(sys.executable, '-m', 'depthclip_ros.tools.cli'),  # as a user runs it
                options=CLI[2:])  # the default model
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and stderr.strip() == (
        'depthclip-ros bag: --cloud-stride: cloud_stride must be in [1, 64], got 0')
    assert time.monotonic() - start < 60  # the imports; no model, no reading
    assert tree(tmp_path) == before


def test_no_camera_info_means_no_depth_and_exit_1(tmp_path, capsys):
    images = [_image('/cam/image_raw', rgb, 'cam', 10 + i)
              for i, rgb in enumerate(frames(2))]
    source = write_bag(tmp_path / 'in', images)
    assert main(['bag', str(source), str(tmp_path / 'out'), *CLI]) == 1
    out = capsys.readouterr().out
    assert 'NO DEPTH: 0 of 2 frames' in out and 'CameraInfo: none in the bag' in out
    assert 'the bag has no CameraInfo topic' in out
    assert (tmp_path / 'out' / 'metadata.yaml').exists()  # the copy is still a whole bag
    # the fallback FOV is a choice: depth, exit 0, and the summary says it was used
    assert main(['bag', str(source), str(tmp_path / 'out2'), *CLI,
                 '--fallback-hfov-deg', '60']) == 0
    assert '2 frames had no CameraInfo yet and used the --fallback-hfov-deg' in \
        capsys.readouterr().out


def test_an_unusable_camera_info_means_exit_1(tmp_path, capsys):
    messages = stream(frames(2))
    for _, _, _, msg in messages:
        if hasattr(msg, 'k'):
            msg.k = [0.0] * 9  # uncalibrated
    source = write_bag(tmp_path / 'in', messages)
    assert main(['bag', str(source), str(tmp_path / 'out'), *CLI]) == 1
    out = capsys.readouterr().out
    assert 'NO DEPTH' in out and 'no usable CameraInfo on /cam/camera_info' in out


def test_max_input_pixels_reaches_the_pipeline(tmp_path, capsys):
    source = write_bag(tmp_path / 'in', stream(frames(2, 48, 64)))
    assert main(['bag', str(source), str(tmp_path / 'out'), *CLI,
                 '--max-input-pixels', '2048']) == 1  # 64x48 = 3072 pixels: refused
    captured = capsys.readouterr()
    assert 'max_input_pixels' in captured.err and 'NO DEPTH' in captured.out
    assert len(by_topic(mcap_messages(tmp_path / 'out'))['/cam/image_raw']) == 2  # copied
