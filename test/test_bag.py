"""``depthclip-ros bag``: recordings through the node's pipeline (CPU, the tests' tiny
random model).

Outputs are read back with the official ``mcap`` + ``mcap-ros2-support`` decoder, which
decodes with the schemas stored in the file as Foxglove does, and compared with the
engine run directly on the same pixels and intrinsics.
"""

import os
from pathlib import Path
import signal
import subprocess
import time

import cv2
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CompressedImage

from depthclip_ros.bags.process import process_bag
from depthclip_ros.bags.safety import BagError, is_bag
from depthclip_ros.bags.topics import choose_topics, output_namespace
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.messages import cloud_array, rgb_from_image
from depthclip_ros.ros.pipeline import DepthPipeline
from depthclip_ros.tools.cli import main

from conftest import REPO, shared_data, TINY_MODEL, TINY_TOOL
from rosutil import camera_info, rgb8_image

ROS2_BAG = ('bags', 'realsense_d435_single_frame_ros2')
ROS1_BAG = ('bags', 'realsense_d435_single_depth_color_640x480.bag')
RS_K = (613.2036743164062, 613.4193115234375, 319.9388427734375, 239.18299865722656)
OUTPUTS = ('depth/image', 'depth/camera_info', 'points')
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


@pytest.fixture
def small(small_engine):
    return small_engine


class Decoded:
    def __init__(self, channel, message, ros_msg):
        self.topic, self.log_time_ns, self.ros_msg = channel.topic, message.log_time, ros_msg


def mcap_messages(bag: Path) -> list[Decoded]:
    (file,) = sorted(Path(bag).glob('*.mcap'))
    with open(file, 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        return [Decoded(channel, message, decoded)
                for _, channel, message, decoded in reader.iter_decoded_messages()]


def by_topic(messages) -> dict:
    out = {}
    for m in messages:
        out.setdefault(m.topic, []).append(m)
    return out


def stamp_of(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def write_bag(path: Path, messages, storage=StoragePlugin.MCAP) -> Path:
    """``messages``: ``(topic, msgtype, log time ns, message or raw bytes)``."""
    with Writer(path, version=8, storage_plugin=storage) as writer:
        conns = {}
        for topic, msgtype, stamp, msg in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            data = msg if isinstance(msg, bytes) else serialize_message(msg)
            writer.write(conns[topic], stamp, data)
    return path


def frames(count: int, height: int = 48, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def stream(images, ns='/cam', fx=60.0, compressed=None):
    """Image (or CompressedImage with ``compressed='jpeg'|'png'``) + CameraInfo messages."""
    out = []
    for i, rgb in enumerate(images):
        height, width = rgb.shape[:2]
        stamp = (10 + i) * 1_000_000_000
        info = camera_info(height, width, fx, fx, width / 2, height / 2)
        info.header.stamp.sec = 10 + i
        out.append((f'{ns}/camera_info', 'sensor_msgs/msg/CameraInfo', stamp, info))
        if compressed:
            msg = CompressedImage()
            msg.header = info.header
            msg.format = compressed
            ok, buffer = cv2.imencode(f'.{compressed}', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert ok
            msg.data = buffer.tobytes()
            out.append((f'{ns}/image_raw/compressed', 'sensor_msgs/msg/CompressedImage', stamp,
                        msg))
        else:
            out.append((f'{ns}/image_raw', 'sensor_msgs/msg/Image', stamp,
                        rgb8_image(rgb, sec=10 + i)))
    return out


def check_frame(messages: dict, image_topic: str, ns: str, engine, rgb, camera, index=0):
    """The outputs of frame ``index`` equal the engine on the same pixels and camera."""
    image = messages[image_topic][index]
    depth_msg = messages[f'{ns}/depth/image'][index]
    info = messages[f'{ns}/depth/camera_info'][index]
    cloud = messages[f'{ns}/points'][index]
    for m in (depth_msg, info, cloud):
        assert m.log_time_ns == image.log_time_ns
        assert stamp_of(m.ros_msg) == stamp_of(image.ros_msg)
        assert m.ros_msg.header.frame_id == image.ros_msg.header.frame_id
    d = depth_msg.ros_msg
    assert d.encoding == '32FC1' and (d.height, d.width) == rgb.shape[:2]
    depth = np.frombuffer(bytes(d.data), '<f4').reshape(d.height, d.width)
    np.testing.assert_allclose(depth, engine.predict(rgb, camera), rtol=1e-5)
    k = info.ros_msg.k
    np.testing.assert_allclose((k[0], k[4], k[2], k[5]),
                               (camera.fx, camera.fy, camera.cx, camera.cy), rtol=1e-6)
    c = cloud.ros_msg
    assert (c.height, c.width) == rgb.shape[:2] and [f.name for f in c.fields] == ['x', 'y',
                                                                                    'z']
    return depth


def test_mcap_round_trip_on_the_real_realsense_recording(small, tmp_path):
    source = shared_data(*ROS2_BAG)
    out = tmp_path / 'out'
    report = process_bag(source, out, DepthPipeline(small))
    assert (report.frames_total, report.frames_written, report.frames_rejected,
            report.unreadable, report.interrupted) == (1, 1, 0, 0, False)
    got = by_topic(mcap_messages(out))
    ns = '/camera/color'
    with AnyReader([source]) as reader:
        inputs = {c.topic for c in reader.connections}
        raw_in = [(c.topic, t, bytes(r)) for c, t, r in reader.messages()]
    assert set(got) == inputs | {f'{ns}/{name}' for name in OUTPUTS}
    with AnyReader([out]) as reader:  # the input messages are copied byte for byte
        raw_out = [(c.topic, t, bytes(r)) for c, t, r in reader.messages()
                   if c.topic in inputs]
    assert sorted(raw_out) == sorted(raw_in)
    image = got[f'{ns}/image_raw'][0].ros_msg
    rgb = rgb_from_image(image)
    depth = check_frame(got, f'{ns}/image_raw', ns, small, rgb, Intrinsics(*RS_K, 640, 480))
    points = cloud_array(got[f'{ns}/points'][0].ros_msg)
    inside = (depth >= 0.1) & (depth <= 10.0)
    np.testing.assert_allclose(points['z'][inside], depth[inside], rtol=1e-6)
    assert np.isnan(points['z'][~inside]).all()


def test_the_storage_file_itself_is_accepted(small, tmp_path):
    folder = shared_data(*ROS2_BAG)
    (mcap,) = folder.glob('*.mcap')
    assert is_bag(folder) and is_bag(mcap)
    report = process_bag(mcap, tmp_path / 'out', DepthPipeline(small), colormap=True)
    assert report.frames_written == 1
    got = by_topic(mcap_messages(tmp_path / 'out'))
    colormap = got['/camera/color/depth/colormap'][0].ros_msg
    assert colormap.encoding == 'rgb8' and (colormap.height, colormap.width) == (480, 640)


def test_original_ros1_bag(small, tmp_path):
    source = shared_data(*ROS1_BAG)
    out = tmp_path / 'out'
    problems = []
    report = process_bag(source, out, DepthPipeline(small), on_problem=problems.append)
    assert report.frames_written == 1 and report.frames_total == 1
    # Not beside the image, frame_id empty: the nearest CameraInfo of the image's size is
    # used, and said so (a depth camera's would have been refused).
    assert report.camera_info_topic == '/device_0/sensor_1/Color_0/info/camera_info'
    assert any('frame_id cannot be compared' in p for p in problems)
    # RealSense names with spaces are illegal in ROS 2: reported, not copied.
    assert '/device_0/sensor_0/option/Depth Units/value' in report.skipped_topics
    got = by_topic(mcap_messages(out))
    color = '/device_0/sensor_1/Color_0'
    info = got[f'{color}/info/camera_info'][0].ros_msg  # ROS 1 upper-case K -> ROS 2 k
    np.testing.assert_allclose([info.k[0], info.k[4], info.k[2], info.k[5]], RS_K)
    image = got[f'{color}/image/data'][0].ros_msg
    assert image.encoding == 'rgb8' and image.header.frame_id == '0'
    check_frame(got, f'{color}/image/data', f'{color}/image', small, rgb_from_image(image),
                Intrinsics(*RS_K, 640, 480))
    assert not any(' ' in topic for topic in got)


def test_db3_with_a_corrupt_message_and_a_bad_frame_in_the_middle(small, tmp_path):
    images = frames(5)
    messages = stream(images)
    # frame 1: truncated CDR (unreadable); frame 3: an encoding nobody knows (rejected)
    topic, msgtype, stamp, _ = messages[3]
    messages[3] = (topic, msgtype, stamp, serialize_message(rgb8_image(images[1]))[:500])
    messages[7][3].encoding = 'xyz42'
    source = write_bag(tmp_path / 'in', messages, StoragePlugin.SQLITE3)
    assert sorted(p.suffix for p in source.iterdir()) == ['.db3', '.yaml']
    problems = []
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small),
                         on_problem=problems.append)
    assert (report.frames_total, report.frames_seen, report.frames_written,
            report.unreadable, report.frames_rejected) == (5, 5, 3, 1, 1)
    assert any('unreadable image on /cam/image_raw' in p for p in problems)
    assert any("unsupported encoding 'xyz42'" in p and '/cam/image_raw' in p
               for p in problems)
    got = by_topic(mcap_messages(tmp_path / 'out'))
    assert len(got['/cam/image_raw']) == 4  # the rejected frame is copied, the corrupt not
    assert len(got['/cam/depth/image']) == len(got['/cam/points']) == 3
    camera = Intrinsics(60.0, 60.0, 32.0, 24.0, 64, 48)
    for index, frame in enumerate((0, 2, 4)):
        assert got['/cam/depth/image'][index].ros_msg.header.stamp.sec == 10 + frame
        check_frame({**got, '/cam/image_raw': [m for m in got['/cam/image_raw']
                                               if m.ros_msg.encoding != 'xyz42']},
                    '/cam/image_raw', '/cam', small, images[frame], camera, index)


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_image_topics(small, tmp_path, fmt):
    images = frames(2, seed=3)
    source = write_bag(tmp_path / 'in', stream(images, compressed=fmt))
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small))
    assert report.frames_written == 2
    got = by_topic(mcap_messages(tmp_path / 'out'))  # outputs beside image_raw, not in it
    assert '/cam/depth/image' in got and '/cam/image_raw/compressed/depth/image' not in got
    data = bytes(got['/cam/image_raw/compressed'][1].ros_msg.data)
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    if fmt == 'png':
        np.testing.assert_array_equal(decoded, images[1])
    camera = Intrinsics(60.0, 60.0, 32.0, 24.0, 64, 48)
    check_frame(got, '/cam/image_raw/compressed', '/cam', small, decoded, camera, 1)


def test_topic_choice_and_output_names():
    class C:
        def __init__(self, topic, msgtype):
            self.topic, self.msgtype = topic, msgtype

    conns = [C('/camera/color/image_raw', 'sensor_msgs/msg/Image'),
             C('/camera/color/camera_info', 'sensor_msgs/msg/CameraInfo'),
             C('/camera/depth/image_rect_raw', 'sensor_msgs/msg/Image'),
             C('/camera/depth/camera_info', 'sensor_msgs/msg/CameraInfo')]
    assert choose_topics(conns, None, None) == ('/camera/color/image_raw',
                                                'sensor_msgs/msg/Image',
                                                '/camera/color/camera_info')
    assert choose_topics(conns, '/camera/depth/image_rect_raw', None)[2] == \
        '/camera/depth/camera_info'
    with pytest.raises(BagError, match='not in the bag'):
        choose_topics(conns, '/nope', None)
    with pytest.raises(BagError, match='not sensor_msgs/Image'):
        choose_topics(conns, '/camera/color/camera_info', None)
    two = conns + [C('/left/image', 'sensor_msgs/msg/Image')]
    with pytest.raises(BagError, match='--image-topic'):
        choose_topics(two, None, None)
    assert output_namespace('/cam/image_raw/compressed',
                            'sensor_msgs/msg/CompressedImage') == '/cam'
    assert output_namespace('/image', 'sensor_msgs/msg/Image') == '/'


def test_existing_output_and_missing_input(small, tmp_path):
    source = write_bag(tmp_path / 'in', stream(frames(1)))
    with pytest.raises(BagError, match='does not exist'):
        process_bag(tmp_path / 'missing.mcap', tmp_path / 'o', DepthPipeline(small))
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'notes.txt').write_text('mine')
    with pytest.raises(BagError, match='exists'):
        process_bag(source, tmp_path / 'taken', DepthPipeline(small))
    with pytest.raises(BagError, match='more than a rosbag2 bag'):
        process_bag(source, tmp_path / 'taken', DepthPipeline(small), overwrite=True)
    assert (tmp_path / 'taken' / 'notes.txt').read_text() == 'mine'
    process_bag(source, tmp_path / 'out', DepthPipeline(small))
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small), overwrite=True)
    assert report.frames_written == 1
    with pytest.raises(BagError, match='already has .*/cam/depth/image'):  # output as input
        process_bag(tmp_path / 'out', tmp_path / 'again', DepthPipeline(small))


def test_cli_prints_progress_summary_and_how_to_view(tmp_path, capsys, tiny_model):
    source = write_bag(tmp_path / 'in', stream(frames(3)))
    out = tmp_path / 'out'
    assert main(['bag', str(source), str(out), '--model', tiny_model, '--pretrained', 'none',
                 '--device', 'cpu', '--input-size', '64', '96', '--cloud-stride', '2',
                 '--colormap']) == 0
    captured = capsys.readouterr()
    assert 'bag: frame 1/3' in captured.err  # not a terminal: plain progress lines
    assert 'done: 3 of 3 frames with depth' in captured.out
    assert 'ms per frame:' in captured.out and 'network' in captured.out
    assert 'Foxglove' in captured.out and 'ros2 bag play' in captured.out
    assert '-f camera_optical --ros-args -r __ns:=/cam -r image:=image_raw' in captured.out
    assert 'RANDOM WEIGHTS' in captured.out
    assert "CameraInfo: /cam/camera_info (beside the image; 64x48, frame_id 'camera_optical')" \
        in captured.out  # the summary names the CameraInfo used
    assert 'complete: metadata and index written' in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in', 'out']  # no partial left
    got = by_topic(mcap_messages(out))
    assert got['/cam/points'][0].ros_msg.width == 32  # --cloud-stride reached the pipeline
    assert len(got['/cam/depth/colormap']) == 3


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupting_leaves_a_readable_bag_with_whole_frames(tmp_path, sig):
    total = 1500  # the tiny model runs 600 such frames in ~2 s: stopped long before the end
    source = write_bag(tmp_path / 'in', stream(frames(total, 24, 32)))
    out = tmp_path / 'out'
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen(
        [*TINY_TOOL, 'bag', str(source), str(out), '--model', TINY_MODEL, '--pretrained',
         'none', '--device', 'cpu', '--input-size', '64', '64'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        line = ''
        while 'bag: frame 1/' not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, 'the bag command ended early'
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert 'Traceback' not in stderr
    assert 'INTERRUPTED, the bag is complete' in stdout
    assert not (tmp_path / 'out.partial').exists()  # moved into place: a complete bag
    got = by_topic(mcap_messages(out))
    written = len(got['/cam/depth/image'])
    assert 1 <= written < total
    assert len(got['/cam/points']) == len(got['/cam/depth/camera_info']) == written
    stamps = [m.ros_msg.header.stamp.sec for m in got['/cam/depth/image']]
    assert stamps == list(range(10, 10 + written))
    with AnyReader([out]) as reader:  # metadata.yaml was written on the way out
        assert reader.message_count == sum(len(v) for v in got.values())


def test_a_signal_during_processing_only_sets_the_flag_and_the_handlers_come_back():
    """The bag loops stop on the node's own mechanism (ros/shutdown's Shutdown, running
    phase), for the duration of the run only."""
    from depthclip_ros.bags.output import stop_on_signal

    signals = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in signals}
    with stop_on_signal() as stop:
        assert not stop.requested.is_set()
        for sig in (*signals, signal.SIGINT):  # repeated: still no KeyboardInterrupt
            os.kill(os.getpid(), sig)
            deadline = time.monotonic() + 5
            while not stop.requested.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stop.requested.is_set()
    assert {sig: signal.getsignal(sig) for sig in signals} == before


def test_an_inference_failure_skips_that_frame_only(small, tmp_path, monkeypatch):
    source = write_bag(tmp_path / 'in', stream(frames(3)))
    predict = small.infer_frames
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError('CUDA out of memory (simulated)')
        return predict(*args, **kwargs)

    monkeypatch.setattr(small, 'infer_frames', fail_second)
    problems = []
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small),
                         on_problem=problems.append)
    assert (report.frames_written, report.frames_failed) == (2, 1)
    assert any('inference failed' in p and 'simulated' in p for p in problems)
    got = by_topic(mcap_messages(tmp_path / 'out'))
    assert [m.ros_msg.header.stamp.sec for m in got['/cam/depth/image']] == [10, 12]


def test_a_write_error_on_the_writer_thread_reaches_the_caller():
    from depthclip_ros.bags.process import WriterThread

    class Broken:
        def write(self, *args):
            raise OSError('disk full (simulated)')

    background = WriterThread(Broken())
    background.write('conn', 0, b'x')
    with pytest.raises(OSError, match='disk full'):
        background.close()


def test_a_bag_that_cannot_be_read_to_its_end(small, tmp_path, monkeypatch):
    source = write_bag(tmp_path / 'in', stream(frames(4)))
    original = AnyReader.messages

    def breaks_after_five(self, *args, **kwargs):  # as a damaged chunk would
        for index, item in enumerate(original(self, *args, **kwargs)):
            if index == 5:
                raise ValueError('chunk CRC mismatch (simulated)')
            yield item

    monkeypatch.setattr(AnyReader, 'messages', breaks_after_five)
    problems = []
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small),
                         on_problem=problems.append)
    monkeypatch.undo()
    assert 'CRC mismatch' in report.read_error and report.frames_written == 2
    assert any('cannot read further' in p for p in problems)
    assert len(by_topic(mcap_messages(tmp_path / 'out'))['/cam/depth/image']) == 2
    truncated = write_bag(tmp_path / 'cut', stream(frames(4)))
    (file,) = truncated.glob('*.mcap')
    file.write_bytes(file.read_bytes()[:3000])  # a recording cut off by a crash
    with pytest.raises(BagError, match='cannot read'):
        process_bag(truncated, tmp_path / 'out2', DepthPipeline(small))


def test_progress_is_a_bar_with_rate_and_eta_on_a_terminal():
    import io

    from depthclip_ros.bags.process import BagReport
    from depthclip_ros.tools.bag import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    progress = Progress(stream=screen)
    report = BagReport(frames_total=4)
    for seen in range(1, 3):
        report.frames_seen = seen
        progress(report)
        time.sleep(0.05)
    progress.close()
    text = screen.getvalue()
    assert '2/4' in text and 'frame/s' in text and '<' in text  # tqdm: done/total, rate, ETA
    plain = io.StringIO()
    Progress(stream=plain)(report)
    assert plain.getvalue().startswith('bag: frame 2/4 (')
