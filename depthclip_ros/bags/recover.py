"""``depthclip-ros bag --recover``: a partial output (an MCAP cut off by a kill or a
failed write: no index, no summary) copied into a new, complete rosbag2 MCAP bag.

The file is read from its start with the ``mcap`` package's stream reader, which needs no
index: every message of a chunk that reached the disk whole is copied with its topic,
type, definition and log time; reading stops at the truncated end. The output is written
as :func:`~depthclip_ros.bags.process.process_bag`'s is (into
``OUTPUT.recovery-partial/``, moved into place when complete, never replacing the input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from pathlib import Path
import struct
from typing import Callable

from mcap.exceptions import McapError
from mcap.records import Channel, Footer, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import get_types_from_idl, get_types_from_msg, get_typestore, Stores

from depthclip_ros.bags.output import BagWriteError, METADATA_VERSION, stop_on_signal
from depthclip_ros.bags.safety import (
    BagError,
    discard_partial,
    kept_as_partial,
    move_into_place,
    plan_output,
    RECOVERY_SUFFIX,
    REPLACED_SUFFIX,
    start_partial,
)

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What :func:`recover_partial` copied."""

    source_file: Path | None = None
    messages: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    complete: bool = False  # the MCAP had its footer: nothing was missing
    stopped: str | None = None  # why reading stopped early (the truncated end)
    interrupted: bool = False  # SIGINT/SIGTERM: the output holds what was copied
    output: Path | None = None
    replaced: bool = False


def _partial_mcap(source: Path) -> Path:
    """The MCAP file of a partial output folder (or of a bag folder, or the file)."""
    if source.is_file():
        return source
    found = [p for p in sorted(source.glob('*.mcap')) + sorted(source.glob('*/*.mcap'))
             if not p.parent.name.endswith(REPLACED_SUFFIX)]
    if len(found) != 1:
        raise BagError(f'{source} holds {len(found)} .mcap files '
                       f'({", ".join(str(p) for p in found) or "none"}); give the one to '
                       f'recover')
    return found[0]


def recover_partial(source: Path, destination: Path, *, overwrite: bool = False,
                    on_problem: Callable[[str], None] | None = None) -> RecoveryReport:
    """Copy the complete messages of a partial output (``source``: its folder, or the
    .mcap in it) into a new, complete rosbag2 MCAP bag ``destination`` (see the module's
    description). The source is only read. Raises :class:`BagError` for unusable paths
    (nothing written) and :class:`BagWriteError` when nothing can be recovered or writing
    fails. SIGINT/SIGTERM stop the copy; the output then holds what was copied."""
    source = Path(source)
    plan = plan_output(source, destination, overwrite, RECOVERY_SUFFIX)
    report = RecoveryReport(source_file=_partial_mcap(source))
    problem = on_problem or (lambda text: log.warning(text))
    schemas: dict[int, Schema] = {}
    conns: dict[int, object] = {}
    try:
        stream = open(report.source_file, 'rb')  # noqa: SIM115 - closed below
    except OSError as error:
        raise BagError(f'cannot read {report.source_file}: {error}') from None
    with stream, stop_on_signal() as stop:
        start_partial(plan, recovering=True)
        try:
            with Writer(plan.bag, version=METADATA_VERSION,
                        storage_plugin=StoragePlugin.MCAP) as writer:
                records = StreamReader(stream, record_size_limit=1 << 31).records
                while not stop.requested.is_set():
                    try:
                        record = next(records, None)
                    except (McapError, EOFError, ValueError, struct.error, OSError) as error:
                        report.stopped = f'{type(error).__name__}: {error}'
                        break
                    if record is None:
                        break
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel) and record.id not in conns:
                        # (a complete file repeats its channels in the summary section)
                        schema = schemas.get(record.schema_id)
                        if schema is None:
                            problem(f'channel {record.topic} has no schema; skipped')
                            continue
                        text = schema.data.decode()
                        store = get_typestore(Stores.EMPTY)  # the file's own definitions
                        store.register(get_types_from_idl(text) if schema.encoding ==
                                       'ros2idl' else get_types_from_msg(text, schema.name))
                        try:
                            qos = parse_qos(record.metadata.get('offered_qos_profiles', ''))
                        except Exception:  # noqa: BLE001 - QoS is optional
                            qos = []
                        conns[record.id] = writer.add_connection(
                            record.topic, schema.name, typestore=store,
                            serialization_format=record.message_encoding,
                            offered_qos_profiles=qos)
                    elif isinstance(record, Message) and record.channel_id in conns:
                        conn = conns[record.channel_id]
                        writer.write(conn, record.log_time, record.data)
                        report.messages += 1
                        report.per_topic[conn.topic] = report.per_topic.get(conn.topic,
                                                                             0) + 1
                    elif isinstance(record, Footer):
                        report.complete = True
        except (OSError, WriterError) as error:
            if not report.messages:
                discard_partial(plan)
                raise BagWriteError(f'cannot write {plan.bag} ({error}); nothing was '
                                    f'written') from error
            holds = f'{report.messages} recovered messages'
            raise BagWriteError(kept_as_partial(plan, error, holds, again=(
                f'depthclip-ros bag --recover {source} {plan.destination} --overwrite')),
                plan.partial) from error
        except BaseException:
            if not report.messages:
                discard_partial(plan)
            raise
        report.interrupted = stop.requested.is_set()
        if not report.messages:
            discard_partial(plan)
            raise BagWriteError(f'nothing to recover in {report.source_file}: no complete '
                                f'chunk ({report.stopped or "no messages"}); '
                                f'{plan.destination} was not written')
        try:
            report.replaced = move_into_place(plan, problem)
        except (OSError, BagError) as error:
            raise BagWriteError(f'the recovered bag is complete in {plan.bag} but could not '
                                f'be moved to {plan.destination}: {error}; move it there '
                                f'yourself', plan.partial) from None
    report.output = plan.destination
    return report
