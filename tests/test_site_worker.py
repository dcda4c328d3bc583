"""The site worker answers the ClientApp over its socket; refusals keep their fixed text."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from multiprocessing import AuthenticationError

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from spinemet.client.worker import ask, key_path, new_key, socket_path
from spinemet.common.federation import E_NO_DATA, ERRORS
from spinemet.common.training.protocol import TrainConfig


@pytest.fixture()
def worker(tmp_path):
    new_key(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "spinemet.client.worker",
                             "--cache", str(tmp_path)])
    end = time.monotonic() + 60
    while not socket_path(tmp_path).exists():
        assert proc.poll() is None and time.monotonic() < end, "the worker did not start"
        time.sleep(0.1)
    yield tmp_path
    proc.kill()
    proc.wait()


def test_a_refusal_is_relayed_with_its_code_and_fixed_text(worker, tmp_path):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    from spinemet.client.app import app

    missing = str(tmp_path / "no-cache-here")
    node = {"site": "x", "cache-path": missing, "worker-socket": str(socket_path(worker)),
            "worker-key": str(key_path(worker))}
    msg = Message(RecordDict({"config": ConfigRecord(
        {"train-config": json.dumps(TrainConfig().to_dict())})}), dst_node_id=5,
        message_type="query.hello")
    reply = app(msg, Context(1, 5, node, RecordDict(), {}))
    assert reply.has_error() and reply.error.code == E_NO_DATA
    assert reply.error.reason.startswith(ERRORS[E_NO_DATA])
    assert missing not in reply.error.reason


def test_a_caller_without_the_key_is_refused(worker, tmp_path):
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"0" * 32)
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        ask(str(socket_path(worker)), str(wrong), ("query.hello", {}, {}, None), 10)
