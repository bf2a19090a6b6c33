"""``depthclip-ros bag`` never hides damage behind exit status 0: any input that could not
be read or processed (an unreadable message of any topic, a rejected or failed frame, a
frame whose object step failed, a recording that cannot be read to its end) ends with
exit status 1 and one line on stderr with the counts; the summary is printed as before
and the output bag is complete. A run where everything was read and processed exits 0.

CPU, random weights (the session's ``small_engine``), bags written by the tests."""

import pytest
from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader

from depthclip_ros.ros.pipeline import DepthPipeline
from depthclip_ros.tools import bag as tool
from depthclip_ros.tools.cli import main

from conftest import small_engine_for_tools
from test_bag import by_topic, frames, mcap_messages, stream, write_bag

CLI = ['--pretrained', 'none', '--device', 'cpu', '--input-size', '64', '96']
FRAMES = 3
QUERY = 'the bright square'


def truncated(message, size: int) -> bytes:
    """The message's CDR cut to ``size`` bytes: a corrupt recording."""
    return serialize_message(message)[:size]


def unreadable_image(messages, monkeypatch, engine):
    topic, msgtype, stamp, msg = messages[3]  # frame 1's image
    messages[3] = (topic, msgtype, stamp, truncated(msg, 500))


def unreadable_camera_info(messages, monkeypatch, engine):
    topic, msgtype, stamp, msg = messages[2]  # frame 1's CameraInfo: frame 1 uses frame 0's
    messages[2] = (topic, msgtype, stamp, truncated(msg, 40))


def rejected_frame(messages, monkeypatch, engine):
    messages[5][3].encoding = 'xyz42'  # frame 2: an encoding nobody knows


def fail_call(monkeypatch, owner, name: str, which: int, error: str) -> None:
    """``owner.name`` raises ``RuntimeError(error)`` on its ``which``-th call only."""
    real = getattr(owner, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == which:
            raise RuntimeError(error)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


def failed_frame(messages, monkeypatch, engine):
    fail_call(monkeypatch, engine, 'infer_frames', 2, 'CUDA out of memory (simulated)')


def failed_object_step(messages, monkeypatch, engine):
    fail_call(monkeypatch, DepthPipeline, 'find', 2, 'object step (simulated)')


def unreadable_and_failed(messages, monkeypatch, engine):
    unreadable_camera_info(messages, monkeypatch, engine)
    failed_frame(messages, monkeypatch, engine)


def cut_off_reading(messages, monkeypatch, engine):
    original = AnyReader.messages

    def breaks_after_four(self, *args, **kwargs):  # as a damaged chunk would
        for index, item in enumerate(original(self, *args, **kwargs)):
            if index == 4:
                raise ValueError('chunk CRC mismatch (simulated)')
            yield item

    monkeypatch.setattr(AnyReader, 'messages', breaks_after_four)


# name -> (damage, extra options, frames with depth, words of the stderr line)
CASES = {
    'unreadable image': (unreadable_image, [], 2, ['1 unreadable message;']),
    'unreadable CameraInfo': (unreadable_camera_info, [], 3, ['1 unreadable message;']),
    'rejected frame': (rejected_frame, [], 2, ['1 frame rejected;']),
    'failed frame': (failed_frame, [], 2, ['1 frame failed;']),
    'object step failed': (failed_object_step, ['--query', QUERY], 3,
                           ['1 frame without its object outputs (the object step failed)']),
    'several kinds': (unreadable_and_failed, [], 2,
                      ['1 unreadable message, 1 frame failed;']),
    'input cut off': (cut_off_reading, [], 2,
                      ['could not be read to its end (ValueError: chunk CRC mismatch']),
}


@pytest.mark.parametrize('case', CASES)
def test_any_input_not_read_or_processed_gives_exit_1_with_the_count(
        case, tmp_path, capsys, monkeypatch, small_engine):
    damage, options, with_depth, words = CASES[case]
    restore = small_engine_for_tools(monkeypatch, small_engine, tool)
    try:
        messages = stream(frames(FRAMES))
        damage(messages, monkeypatch, small_engine)
        source = write_bag(tmp_path / 'in', messages)
        out = tmp_path / 'out'
        code = main(['bag', str(source), str(out), *CLI, *options])
    finally:
        restore()
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    # the summary is still there, and the output is a complete bag of what was processed
    assert f'{with_depth} of {FRAMES} frames with depth' in captured.out
    assert 'complete: metadata and index written' in captured.out
    assert len(by_topic(mcap_messages(out))['/cam/depth/image']) == with_depth
    # one line says why the status is 1, with the counts
    lines = [line for line in captured.err.splitlines()
             if line.startswith('depthclip-ros bag: not all of the input')]
    assert len(lines) == 1, captured.err
    for word in words:
        assert word in lines[0], lines[0]
    assert f'{with_depth} of {FRAMES} frames have outputs' in lines[0]
    assert 'Traceback' not in captured.err


def test_everything_read_and_processed_gives_exit_0(tmp_path, capsys, monkeypatch,
                                                    small_engine):
    # (with --query: test_bag_objects.py's test_cli_query_counts_the_object_messages)
    restore = small_engine_for_tools(monkeypatch, small_engine, tool)
    try:
        source = write_bag(tmp_path / 'in', stream(frames(FRAMES)))
        code = main(['bag', str(source), str(tmp_path / 'out'), *CLI])
    finally:
        restore()
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert f'done: {FRAMES} of {FRAMES} frames with depth (0 rejected, 0 failed, 0 ' \
        'unreadable messages)' in captured.out
    assert 'not all of the input' not in captured.err


@pytest.mark.parametrize('case', ['unreadable image', 'failed frame'])
def test_demo_on_a_damaged_bag_exits_1_as_bag_does(case, tmp_path, capsys, monkeypatch,
                                                   small_engine):
    from depthclip_ros.tools import demo
    damage, options, with_depth, words = CASES[case]
    monkeypatch.setattr(demo, 'load_or_fallback', lambda args: small_engine)
    messages = stream(frames(FRAMES))
    damage(messages, monkeypatch, small_engine)
    source = write_bag(tmp_path / 'in', messages)
    code = main(['demo', '--input', str(source), '--output', str(tmp_path / 'out'), *CLI])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    (line,) = [line for line in captured.err.splitlines()
               if line.startswith('depthclip-ros demo: ')]
    assert 'not all of the input' in line and words[0] in line, line
    assert 'Traceback' not in captured.err
