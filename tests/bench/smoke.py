"""Smoke test of imchat-bench: a few seconds against a real imchatd and a
real mosquitto, asserting only that each run's JSON parses, that messages
were delivered and that nothing went wrong. No timing assertions: speed is
measured by scripts/bench.sh, never asserted by tests.

Environment (tests/meson.build): IMCHATD, IMC_PROTO_DIR (as for the e2e
tests) and IMC_BENCH, the imchat-bench binary. Needs mosquitto (Debian
package, in scripts/deps.sh's test packages).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
import imctest  # noqa: E402

BENCH = os.environ.get("IMC_BENCH", "")
ADMIN = "smoke-admin-token"
RUN_TIMEOUT = 60  # s: any single imchat-bench run (it bounds itself)


def run_bench(name, *args):
    """Runs imchat-bench with args; returns its parsed JSON."""
    cmd = [BENCH, "--connect-timeout", "10", "--drain", "3", "--workers",
           "2"] + list(args)
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise AssertionError("%s: exit %d" % (name, r.returncode))
    doc = json.loads(r.stdout)
    print("%s: sent %d delivered %d errors %d p50 %.0f us" % (
        name, doc["sent"], doc["delivered"], doc["errors"],
        doc["latency_us"]["deliver"]["p50"]), flush=True)
    if doc["errors"] != 0:
        raise AssertionError("%s: errors %r" % (name, doc["error_detail"]))
    return doc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("mosquitto exited: %s"
                                 % proc.stdout.read())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("mosquitto did not accept on %d" % port)


def start_mosquitto():
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(exe, os.X_OK):
        raise AssertionError("mosquitto not found (Debian package mosquitto; "
                             "scripts/test.sh installs it)")
    d = imctest.mkdtemp("mosquitto")
    port = free_port()
    conf = os.path.join(d, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous true\n"
                "persistence false\nlog_dest stdout\n" % port)
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=imctest._pdeathsig)
    try:
        wait_port(port, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, port


def main():
    if not BENCH or not os.access(BENCH, os.X_OK):
        sys.exit("smoke: IMC_BENCH is not an executable")
    srv = imctest.Server("--admin-token", ADMIN, "--rate-limit", "100000",
                         "--rate-burst", "100000",
                         "--user-rate-limit", "100000",
                         "--user-rate-burst", "100000").start()
    try:
        common = ["--target", "imchat", "--port", str(srv.port),
                  "--jwt-secret", srv.secret, "--server-pid",
                  str(srv.proc.pid)]
        doc = run_bench("imchat pairs", *common, "--scenario", "pairs",
                        "--connections", "8", "--mode", "closed",
                        "--inflight", "2", "--duration", "2")
        assert doc["delivered"] > 0, doc
        assert doc["connect"]["ok"] == 8, doc
        # A group large enough that its members are added by several
        # processes at once, as for the 10K-member group of bench.sh.
        doc = run_bench("imchat group", *common, "--admin-token", ADMIN,
                        "--scenario", "group", "--members", "70", "--rate",
                        "5", "--duration", "2")
        assert doc["group"]["messages"] > 0, doc
        assert doc["delivered"] == doc["expected"], doc
        assert doc["group"]["complete"] == doc["group"]["messages"], doc
        # From three loopback source addresses, as large runs do.
        doc = run_bench("imchat idle", *common, "--scenario", "idle",
                        "--connections", "6", "--duration", "1",
                        "--src-addrs", "3")
        assert doc["connect"]["ok"] == 6, doc
        assert doc["server"]["rss_kb_connected"] > 0, doc
        srv.check_alive()
        srv.check_sanitizers()
    finally:
        srv.stop()

    proc, port = start_mosquitto()
    try:
        doc = run_bench("mqtt-tcp pairs", "--target", "mqtt-tcp", "--port",
                        str(port), "--scenario", "pairs", "--connections",
                        "8", "--mode", "closed", "--inflight", "2",
                        "--duration", "2", "--server-pid", str(proc.pid))
        assert doc["delivered"] > 0, doc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print("smoke: ok")


if __name__ == "__main__":
    main()
