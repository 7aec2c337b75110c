"""Interoperability of imchat's gRPC with stock gRPC (Debian's grpcio).

Both directions:
  - a Python grpcio client calls grpc_echo_server (an imc_grpc_server on
    loopback sockets);
  - grpc_echo_client (an imc_grpc_client) calls a Python grpcio server.

Stubs for tests/grpc_echo.proto and proto/imchat/v1/{im,router}.proto are
generated at test time with grpc_tools.protoc into a temporary directory.

Environment:
  IMC_GRPC_ECHO_SERVER  the grpc_echo_server binary
  IMC_GRPC_ECHO_CLIENT  the grpc_echo_client binary
  IMC_PROTO_DIR         proto/imchat/v1
  IMC_TEST_DIR          tests/ (grpc_echo.proto)
"""

import concurrent.futures
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc
from grpc_tools import protoc

ECHO_SERVER = os.environ["IMC_GRPC_ECHO_SERVER"]
ECHO_CLIENT = os.environ["IMC_GRPC_ECHO_CLIENT"]
PROTO_DIR = os.environ["IMC_PROTO_DIR"]
TEST_DIR = os.environ["IMC_TEST_DIR"]

_stubs = tempfile.TemporaryDirectory(prefix="imc-grpc-stubs-")


def _generate():
    out = _stubs.name
    for inc, files in ((TEST_DIR, ["grpc_echo.proto"]),
                       (PROTO_DIR, ["im.proto", "router.proto"])):
        args = ["protoc", "-I" + inc, "--python_out=" + out,
                "--grpc_python_out=" + out] + [os.path.join(inc, f)
                                                for f in files]
        if protoc.main(args) != 0:
            raise RuntimeError("grpc_tools.protoc failed for %s" % files)
    sys.path.insert(0, out)


_generate()
import grpc_echo_pb2  # noqa: E402
import grpc_echo_pb2_grpc  # noqa: E402
import im_pb2  # noqa: E402
import router_pb2  # noqa: E402
import router_pb2_grpc  # noqa: E402


class PythonClientToCServer(unittest.TestCase):
    """grpcio calls imc_grpc_server."""

    @classmethod
    def setUpClass(cls):
        cls.proc = subprocess.Popen([ECHO_SERVER], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        line = cls.proc.stdout.readline()
        if not line.startswith("PORT "):
            cls.proc.kill()
            raise RuntimeError("grpc_echo_server did not start: %r" % line)
        cls.target = "127.0.0.1:%d" % int(line.split()[1])
        cls.channel = grpc.insecure_channel(cls.target)
        grpc.channel_ready_future(cls.channel).result(timeout=10)
        cls.echo = grpc_echo_pb2_grpc.EchoStub(cls.channel)
        cls.router = router_pb2_grpc.RouterStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.stdin.close()  # the server exits when stdin closes
        try:
            rc = cls.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            raise
        if rc != 0:
            raise RuntimeError("grpc_echo_server exited with %d" % rc)

    def test_echo(self):
        req = grpc_echo_pb2.EchoMessage(text="héllo", data=b"\x00\x01")
        reply = self.echo.Echo(req, timeout=5)
        self.assertEqual(reply, req)

    def test_empty_message(self):
        self.assertEqual(self.echo.Echo(grpc_echo_pb2.EchoMessage(),
                                        timeout=5),
                         grpc_echo_pb2.EchoMessage())

    def test_large_message(self):
        data = bytes(i * 7 % 256 for i in range(3 << 20))
        reply = self.echo.Echo(grpc_echo_pb2.EchoMessage(data=data),
                               timeout=20)
        self.assertEqual(reply.data, data)

    def test_too_large_message(self):
        data = b"x" * (5 << 20)  # over the server's 4 MiB bound
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.Echo(grpc_echo_pb2.EchoMessage(data=data), timeout=20)
        self.assertEqual(cm.exception.code(),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(self.echo.Echo(grpc_echo_pb2.EchoMessage(text="after"),
                                        timeout=5).text, "after")

    def test_concurrent(self):
        futures = [self.echo.Echo.future(
            grpc_echo_pb2.EchoMessage(text="m%d" % i), timeout=10)
            for i in range(100)]
        self.assertEqual([f.result().text for f in futures],
                         ["m%d" % i for i in range(100)])

    def test_status_and_message(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.Fail(grpc_echo_pb2.EchoMessage(), timeout=5)
        self.assertEqual(cm.exception.code(),
                         grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(cm.exception.details(), "not allowed: ü 100%")
        trailers = dict(cm.exception.trailing_metadata())
        self.assertEqual(trailers.get("imc-error"), "-510")

    def test_unknown_method(self):
        call = self.channel.unary_unary("/imchat.test.Echo/Nope")
        with self.assertRaises(grpc.RpcError) as cm:
            call(b"", timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_deadline(self):
        start = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.Hold(grpc_echo_pb2.EchoMessage(), timeout=0.3)
        self.assertEqual(cm.exception.code(),
                         grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - start, 5)

    def test_compressed_request(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.Echo(grpc_echo_pb2.EchoMessage(text="z" * 1000),
                           timeout=5, compression=grpc.Compression.Gzip)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_router_send(self):
        ack = self.router.Send(router_pb2.RouteRequest(
            from_user="alice", from_device="phone", node_id="gw-1",
            conn_id=9, client_msg_id="c-9", to_user="bob", body=b"hi",
            content_type="text/plain"), timeout=5)
        self.assertEqual((ack.client_msg_id, ack.msg_id, ack.conversation_id,
                          ack.seq),
                         ("c-9", "m-c-9", "p:alice:bob", 42))

    def test_router_send_refused(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.router.Send(router_pb2.RouteRequest(from_user="alice"),
                             timeout=5)
        self.assertEqual(cm.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(cm.exception.details(), "no recipient")


class EchoServicer(grpc_echo_pb2_grpc.EchoServicer):
    def Echo(self, request, context):
        return grpc_echo_pb2.EchoMessage(text=request.text, data=request.data)

    def Fail(self, request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied: ü 100%")

    def Hold(self, request, context):
        done = threading.Event()
        context.add_callback(done.set)
        done.wait(10)
        return grpc_echo_pb2.EchoMessage()


class RouterServicer(router_pb2_grpc.RouterServicer):
    def Send(self, request, context):
        return im_pb2.SendAck(
            client_msg_id=request.client_msg_id,
            msg_id="py-" + request.client_msg_id,
            conversation_id="p:%s:%s" % (request.from_user, request.to_user),
            seq=7)


class CClientToPythonServer(unittest.TestCase):
    """imc_grpc_client calls a grpcio server."""

    def test_c_client(self):
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=8))
        grpc_echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
        router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            out = subprocess.run([ECHO_CLIENT, str(port)], capture_output=True,
                                 text=True, timeout=60)
        finally:
            server.stop(grace=None)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("0 failed", out.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
