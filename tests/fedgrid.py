"""An in-process Flower ``Grid`` for fast tests of the round loop.

Each node id maps to a node config; ``send_and_receive`` hands every message to the real
SpineMet ClientApp in this process, the way a SuperNode would, and returns the replies with
their source node set. Nodes can be made silent (no reply, like a killed site) or given a
reply rewriter ``(instruction, reply) -> reply`` (to forge a bad update). A node in
``unavailable`` gets the answer a SuperLink gives once the node's heartbeats stop: Flower's
own "Node Unavailable" error reply, sent by the SuperLink (not by the node).
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.supercore.task_identity import TaskIdentity

from spinemet.client.app import app as client_app


class InProcessGrid(Grid):
    def __init__(self, nodes: dict[int, dict], run_config: dict | None = None):
        self.nodes = dict(nodes)
        self.silent: set[int] = set()
        self.unavailable: set[int] = set()
        self.rewrite: dict[int, callable] = {}
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.run_config = run_config or {}
        self._states = {n: RecordDict() for n in nodes}
        self._outbox: list[Message] = []
        self._count = 0
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

    def push_messages(self, messages):
        """Deliver now; the replies wait for :meth:`pull_messages` (as on a SuperLink)."""
        return self.send_and_receive(messages, _push=True)

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        out = [r for r in self._outbox if r.metadata.reply_to_message_id in wanted]
        self._outbox = [r for r in self._outbox if r not in out]
        return out

    def send_and_receive(self, messages, *, timeout=None, _push=False):
        out, ids = [], []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self._count += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._count}"
            ids.append(msg.metadata.message_id)
            self.sent.append(msg)
            if node in self.unavailable:
                out.append(create_message_error_unavailable_res_message(msg.metadata,
                                                                        "node_unavail"))
                continue
            if node in self.silent or node not in self.nodes:
                continue
            ctx = Context(run_id=1, node_id=node, node_config=self.nodes[node],
                          state=self._states[node], run_config=self.run_config)
            reply = client_app(msg, ctx)
            if node in self.rewrite:
                reply = self.rewrite[node](msg, reply)
            self.replies.append(reply)
            out.append(reply)
        if _push:
            self._outbox.extend(out)
            return ids
        return out
