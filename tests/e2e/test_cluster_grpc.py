#!/usr/bin/python3
"""Stock gRPC (Debian's python3-grpcio, stubs generated from the project's
.proto files) against the cluster's two services as they run:
imchat.v1.Router on im-service and imchat.v1.Gateway on im-gateway. Good
calls, bad requests, and a deadline that expires while im-service is
stopped (SIGSTOP), after which it answers again.

Run like tests/e2e/test_cluster.py (same environment).
"""

import asyncio
import os
import signal
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402
from grpc_tools import protoc  # noqa: E402

import cluster  # noqa: E402
import imctest  # noqa: E402
from test_cluster import ClusterTest  # noqa: E402

_stubs = tempfile.TemporaryDirectory(prefix="imc-grpc-stubs-")


def _generate():
    args = ["protoc", "-I" + imctest.PROTO_DIR, "--python_out=" + _stubs.name,
            "--grpc_python_out=" + _stubs.name] + \
        [os.path.join(imctest.PROTO_DIR, f)
         for f in ("im.proto", "router.proto", "gateway.proto")]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed")
    sys.path.insert(0, _stubs.name)


_generate()
import gateway_pb2  # noqa: E402
import gateway_pb2_grpc  # noqa: E402
import im_pb2  # noqa: E402
import router_pb2  # noqa: E402
import router_pb2_grpc  # noqa: E402


def grpc_address(host):
    """The --grpc-listen address of a host of the cluster."""
    return host.argv[host.argv.index("--grpc-listen") + 1]


class TestStockGrpc(ClusterTest):

    def setUp(self):
        self.channels = []

    def tearDown(self):
        for c in self.channels:
            c.close()

    def channel(self, host):
        ch = grpc.insecure_channel(grpc_address(host))
        grpc.channel_ready_future(ch).result(timeout=imctest.IO_TIMEOUT)
        self.channels.append(ch)
        return ch

    def code(self, call, *args, **kw):
        """The status code a call ends with."""
        try:
            call(*args, **kw)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    async def test_router(self):
        router = router_pb2_grpc.RouterStub(self.channel(self.cluster.service))
        g, ann, bob = "grpc-" + self.cluster.tag, self.u("ann"), self.u("bob")
        for u in (ann, bob):
            router.GroupAdd(router_pb2.GroupMemberRequest(group_id=g,
                                                          user_id=u),
                            timeout=imctest.IO_TIMEOUT)
        members = router.GroupMembers(router_pb2.GroupRequest(group_id=g),
                                      timeout=imctest.IO_TIMEOUT)
        self.assertEqual(sorted(members.user_ids), sorted([ann, bob]))
        # A 1:1 send for a user who is not connected: stored, acknowledged.
        ack = router.Send(router_pb2.RouteRequest(
            from_user=ann, from_device="d", node_id="none", conn_id=1,
            client_msg_id="grpc-1", to_user=bob, body=b"hi",
            content_type="text/plain"), timeout=imctest.IO_TIMEOUT)
        self.assertTrue(ack.msg_id)
        self.assertEqual(ack.client_msg_id, "grpc-1")
        self.wait_inbox(self.gw[0], bob, [ack.msg_id])
        # Bad requests: no recipient; both recipients; a bad group id.
        bad = [router_pb2.RouteRequest(from_user=ann, client_msg_id="grpc-2",
                                       body=b"x"),
               router_pb2.RouteRequest(from_user=ann, client_msg_id="grpc-3",
                                       to_user=bob, group_id=g, body=b"x")]
        for rq in bad:
            self.assertEqual(self.code(router.Send, rq,
                                       timeout=imctest.IO_TIMEOUT),
                             grpc.StatusCode.INVALID_ARGUMENT, rq)
        self.assertEqual(
            self.code(router.GroupMembers,
                      router_pb2.GroupRequest(group_id="bad group!"),
                      timeout=imctest.IO_TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT)

    async def test_gateway(self):
        gw = self.gw[1]
        stub = gateway_pb2_grpc.GatewayStub(self.channel(gw))
        cat = self.u("cat")
        c = await self.on(gw, cat)
        msg = im_pb2.Message(msg_id="grpc-m-1", conversation_id="p:x:" + cat,
                             seq=1, from_user="x", to_user=cat, body=b"pushed",
                             content_type="text/plain",
                             sent_at_ms=int(time.time() * 1000))
        rq = gateway_pb2.PushRequest(
            node_id=gw.node_id, user_id=cat,
            message=router_pb2.RoutedMessage(message=msg, from_node="x"))
        rep = stub.Deliver(rq, timeout=imctest.IO_TIMEOUT)
        self.assertEqual(rep.count, 1)
        got = await c.deliver("grpc-m-1")
        self.assertEqual(got.body, b"pushed")
        # Meant for another node: NOT_FOUND; no message: a bad request.
        other = gateway_pb2.PushRequest(node_id="someone-else", user_id=cat,
                                        message=rq.message)
        self.assertEqual(self.code(stub.Deliver, other,
                                   timeout=imctest.IO_TIMEOUT),
                         grpc.StatusCode.NOT_FOUND)
        empty = gateway_pb2.PushRequest(node_id=gw.node_id, user_id=cat)
        self.assertEqual(self.code(stub.Deliver, empty,
                                   timeout=imctest.IO_TIMEOUT),
                         grpc.StatusCode.INVALID_ARGUMENT)
        await c.no_deliver(seconds=0.5)

    async def test_deadline_expires(self):
        """im-service stopped: the call ends DEADLINE_EXCEEDED at its
        deadline; resumed, it answers again."""
        svc = self.cluster.service
        router = router_pb2_grpc.RouterStub(self.channel(svc))
        rq = router_pb2.GroupRequest(group_id="deadline-" + self.cluster.tag)
        os.kill(svc.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            self.assertEqual(self.code(router.GroupMembers, rq, timeout=1.0),
                             grpc.StatusCode.DEADLINE_EXCEEDED)
            took = time.monotonic() - t0
            self.assertGreaterEqual(took, 0.9)
            self.assertLess(took, 5.0)
        finally:
            os.kill(svc.proc.pid, signal.SIGCONT)
        members = router.GroupMembers(rq, timeout=imctest.IO_TIMEOUT)
        self.assertEqual(list(members.user_ids), [])
        await asyncio.sleep(0)


if __name__ == "__main__":
    cluster.require_env()
    imctest.main()
