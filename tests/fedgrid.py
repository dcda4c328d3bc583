"""An in-process Flower ``Grid`` for fast tests of the round loop.

Each node id maps to a node config; ``send_and_receive`` hands every message to the real
SpineMet ClientApp in this process, the way a SuperNode would, and returns the replies with
their source node set. Nodes can be made silent (no reply, like a killed site) or given a
reply rewriter ``(instruction, reply) -> reply`` (to forge a bad update).
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from spinemet.client.app import app as client_app


class InProcessGrid(Grid):
    def __init__(self, nodes: dict[int, dict], run_config: dict | None = None):
        self.nodes = dict(nodes)
        self.silent: set[int] = set()
        self.rewrite: dict[int, callable] = {}
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.run_config = run_config or {}
        self._states = {n: RecordDict() for n in nodes}
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # as a ServerApp has

    # Grid's abstract surface -----------------------------------------------------------
    def set_run(self, run):   # pragma: no cover - not used in process
        self._run = run

    @property
    def run(self):   # pragma: no cover
        return getattr(self, "_run", None)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def get_node_ids(self):
        return sorted(self.nodes)

    def push_messages(self, messages):   # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):   # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.sent.append(msg)
            if node in self.silent or node not in self.nodes:
                continue
            ctx = Context(run_id=1, node_id=node, node_config=self.nodes[node],
                          state=self._states[node], run_config=self.run_config)
            reply = client_app(msg, ctx)
            if node in self.rewrite:
                reply = self.rewrite[node](msg, reply)
            self.replies.append(reply)
            out.append(reply)
        return out
