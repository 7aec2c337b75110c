"""Writes doc/benchmarks.md and doc/bench/*.png from the JSON documents
and CSV series of a scripts/bench.sh run (standard library + gnuplot)."""

import argparse
import csv
import glob
import json
import os
import re
import statistics
import subprocess
import sys

TARGETS = ["imchat", "mqtt-ws", "mqtt-tcp"]
NAMES = {"imchat": "imchatd (WS+protobuf)", "mqtt-ws": "mosquitto (MQTT/WS)",
         "mqtt-tcp": "mosquitto (MQTT/TCP)"}


def noise_note(machine, runs):
    """The first note: how far other work on the machine skews figures.

    Each run measures the CPU time other processes took while it ran (the
    machine's busy time but the server's and the generator's); without
    that, the 1-min load average at the start (the "load:" line) above
    about three quarters of the cores means other processes competed."""
    cores, load1 = 1, 0.0
    for line in machine.splitlines():
        key, _, val = line.partition(":")
        if key == "nproc":
            cores = int(val) or 1
        elif key == "load":
            load1 = float(val.split()[0])
    others = [v for v in (get(d, "machine.others_pct") for d in runs.values())
              if v is not None]
    if others:
        worst = max(others)
        noisy = sorted(((get(d, "machine.others_pct") or 0, label)
                        for label, d in runs.items()), reverse=True)
        noisy = ["%s (%.0f %%)" % (label, v) for v, label in noisy if v > 20]
        if noisy:
            return ("- **Noisy figures** in %d of %d runs: other processes "
                    "took more than 20 %% of one core while %s ran; in the "
                    "other runs at most %.0f %% (median %.0f %%). The server, "
                    "the broker and the load generator share the %d cores "
                    "too.\n"
                    % (len(noisy), len(others), ", ".join(noisy),
                       max([v for v in others if v <= 20] or [0]),
                       statistics.median(others), cores))
        return ("- The server, the broker and the load generator share the "
                "%d cores; other processes took at most %.0f %% of one core "
                "during any run.\n" % (cores, worst))
    if load1 > cores * 0.75:
        return ("- **Noisy figures.** Other processes were busy on the "
                "machine during this run (load average %.1f on %d cores, "
                "above), besides the server, the broker and the load "
                "generator, which share the cores too. Treat differences "
                "under ~30 %% as noise.\n" % (load1, cores))
    return ("- The server, the broker and the load generator share the %d "
            "cores; nothing else was busy (load average %.1f at the "
            "start).\n" % (cores, load1))


def load(results):
    runs = {}
    for p in sorted(glob.glob(os.path.join(results, "*.json"))):
        with open(p) as f:
            doc = json.load(f)
        runs[doc["label"]] = doc
    return runs


def derive(runs):
    """Adds the figures computed from others under "derived"."""
    for doc in runs.values():
        d = doc.setdefault("derived", {})
        cpu = get(doc, "server.cpu_pct")
        if doc.get("scenario") == "group" and cpu:
            # Deliveries per second of server CPU time (one core busy).
            d["deliveries_per_core"] = doc["delivered_per_s"] * 100.0 / cpu
        gen = get(doc, "machine.generator_cpu_s")
        if gen is not None and doc.get("duration_s"):
            d["generator_pct"] = 100.0 * gen / doc["duration_s"]
        if doc.get("sent"):
            d["delivered_share"] = (100.0 * doc.get("delivered", 0)
                                    / doc["sent"])


def get(doc, path):
    v = doc
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
        if v is None:
            return None
    return v


def rounds_of(runs, scenario, target):
    out = []
    for label, doc in runs.items():
        m = re.match(r"%s-%s-r(\d+)$" % (scenario, re.escape(target)), label)
        if m:
            out.append((int(m.group(1)), doc))
    return [d for _, d in sorted(out, key=lambda x: x[0])]


def fmt(v, unit=""):
    if v is None:
        return "–"
    if abs(v) >= 100:
        s = "{:,.0f}".format(v)
    elif abs(v) >= 10:
        s = "{:.1f}".format(v)
    else:
        s = "{:.2f}".format(v)
    return s + unit


def cell(docs, path, unit=""):
    vals = [get(d, path) for d in docs]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, "–"
    med = statistics.median(vals)
    s = fmt(med, unit)
    if len(vals) > 1:
        s += " (" + " / ".join(fmt(v) for v in vals) + ")"
    return med, s


def table(runs, scenario, rows, targets=TARGETS):
    cols = [t for t in targets if rounds_of(runs, scenario, t)]
    if not cols:
        return "No runs.\n"
    head = "| metric | " + " | ".join(NAMES[t] for t in cols)
    sep = "|---|" + "---|" * len(cols)
    ratio = "mqtt-ws" in cols and "imchat" in cols and len(cols) > 1
    if ratio:
        head += " | imchatd / mosquitto-WS"
        sep += "---|"
    lines = [head + " |", sep]
    for title, path, unit, better in rows:
        vals, cells = {}, []
        for t in cols:
            v, s = cell(rounds_of(runs, scenario, t), path, unit)
            vals[t] = v
            cells.append(s)
        line = "| %s | %s" % (title, " | ".join(cells))
        if ratio:
            a, b = vals.get("imchat"), vals.get("mqtt-ws")
            r = "–" if not a or not b or better is False else \
                "%.2f×" % (a / b)
            if r != "–" and better:
                r += " (%s)" % better
            line += " | " + r
        lines.append(line + " |")
    return "\n".join(lines) + "\n"


def median(runs, scenario, target, path):
    vals = [get(d, path) for d in rounds_of(runs, scenario, target)]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def verdict(value, goal, higher):
    """"met", or by how much the value misses the goal."""
    if value is None:
        return "not run"
    if (value >= goal) if higher else (value <= goal):
        return "met"
    if higher:
        if value <= 0:
            return "missed (nothing measured)"
        return "missed: %s %% of the target (%s× short)" % (
            fmt(100.0 * value / goal), fmt(goal / value))
    over = value / goal
    if over < 1.1:
        return "missed: %s %% over the target" % fmt(100.0 * (over - 1))
    return "missed: %s× the target" % fmt(over)


def targets(runs):
    """The targets of the speed work against this run's figures."""
    rows = []

    def target(what, goal_text, goal, value, shown, higher, note=""):
        rows.append("| %s | %s | %s | %s |" % (
            what + note, goal_text, shown if value is not None else "–",
            verdict(value, goal, higher)))

    a = median(runs, "pairs", "imchat", "delivered_per_s")
    b = median(runs, "pairs", "mqtt-ws", "delivered_per_s")
    ratio = a / b if a is not None and b else None
    target("1:1 saturation (closed loop), imchatd / mosquitto-WS",
           "≥ 1.5×", 1.5, ratio,
           "%.2f× (%s / %s delivered/s)" % (ratio, fmt(a), fmt(b))
           if ratio is not None else None, True)

    sweep = {}
    for label, doc in runs.items():
        m = re.match(r"sweep-imchat-(\d+)$", label)
        if m:
            sweep[int(m.group(1))] = doc
    top = max(sweep) if sweep else None
    d = sweep.get(top) if top else None
    note = "" if top is None or top >= 30000 else \
        " (highest rate run: %d/s)" % top
    p99 = d["latency_us"]["deliver"]["p99"] / 1e3 if d else None
    target("1:1 at 30,000/s offered: send→deliver p99", "≤ 5 ms", 5.0, p99,
           "%s ms" % fmt(p99) if d else None, False, note)
    share = get(d, "derived.delivered_share") if d else None
    target("1:1 at 30,000/s offered: delivered (after the drain)",
           "100 % of sent", 100.0, share,
           "%s %% (%s of %s)" % (fmt(share), fmt(d["delivered"]),
                                 fmt(d["sent"])) if d else None, True, note)

    members = median(runs, "group", "imchat", "members")
    note = "" if members is None or members >= 10000 else \
        " (run with %d members)" % members
    v = median(runs, "group", "imchat", "derived.deliveries_per_core")
    target("10K-member group: deliveries/s per server core", "≥ 100,000",
           100000.0, v, fmt(v), True, note)
    v = median(runs, "group", "imchat", "latency_us.last_member.p99")
    v = v / 1e3 if v is not None else None
    target("10K-member group: last member p99", "≤ 150 ms", 150.0, v,
           "%s ms" % fmt(v), False, note)
    v = median(runs, "group", "imchat", "latency_us.send_ack.p99")
    v = v / 1e3 if v is not None else None
    target("10K-member group: the sender's SendAck p99", "≤ 5 ms", 5.0, v,
           "%s ms" % fmt(v), False, note)

    v = median(runs, "offline", "imchat", "offline.stored_per_s")
    target("offline: stored/s through the worker", "≥ 20,000", 20000.0, v,
           fmt(v), True)
    docs = rounds_of(runs, "offline", "imchat")
    st = sum(get(x, "offline.stored") or 0 for x in docs)
    fe = sum(get(x, "offline.fetched") or 0 for x in docs)
    share = 100.0 * fe / st if st else None
    target("offline: stored messages fetched from /offline", "100 %", 100.0,
           share, "%s %% (%s of %s)" % (fmt(share), fmt(fe), fmt(st))
           if st else None, True)

    conns = median(runs, "idle", "imchat", "connect.ok")
    note = "" if conns is None or conns >= 19000 else \
        " (run with %d connections)" % conns
    v = median(runs, "idle", "imchat", "server.rss_bytes_per_conn")
    target("idle: server RSS per authenticated connection at 19K",
           "≤ 1,024 bytes", 1024.0, v, "%s bytes" % fmt(v), False, note)
    return ("| target | goal | this run (imchatd; medians) | verdict |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n")


def gnuplot(script):
    r = subprocess.run(["gnuplot"], input=script, text=True,
                       capture_output=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit("report: gnuplot failed")


def plots(runs, results, out):
    pngdir = os.path.join(out, "bench")
    os.makedirs(pngdir, exist_ok=True)
    data = os.path.join(results, "plot")
    os.makedirs(data, exist_ok=True)
    made = []
    # Sweep: delivered/s and latency against offered load.
    series = {}
    for label, doc in runs.items():
        m = re.match(r"sweep-(.+)-(\d+)$", label)
        if m:
            series.setdefault(m.group(1), []).append(
                (int(m.group(2)), doc["delivered_per_s"],
                 doc["latency_us"]["deliver"]["p50"] / 1e3,
                 doc["latency_us"]["deliver"]["p99"] / 1e3,
                 doc["latency_us"]["deliver"]["p999"] / 1e3))
    ts = [t for t in TARGETS if t in series]
    if ts:
        for t in ts:
            with open(os.path.join(data, "sweep-%s.dat" % t), "w") as f:
                for row in sorted(series[t]):
                    f.write("%d %.1f %.3f %.3f %.3f\n" % row)
        maxrate = max(r[0] for t in ts for r in series[t])
        plot = ", ".join(
            "'%s/sweep-%s.dat' using 1:2 with linespoints lw 2 title '%s'"
            % (data, t, NAMES[t]) for t in ts)
        gnuplot("""set terminal pngcairo size 900,560 font ',10'
set output '%s/sweep-throughput.png'
set title 'Open loop, 1:1 pairs: delivered/s vs offered load'
set xlabel 'offered load (messages/s)'
set ylabel 'delivered (messages/s)'
set key top left
set grid
set xrange [0:%d]
set yrange [0:%d]
plot x with lines dt 2 lc rgb 'gray' title 'offered', %s
""" % (pngdir, maxrate * 1.05, maxrate * 1.1, plot))
        made.append("sweep-throughput.png")
        plot = ", ".join(
            "'%s/sweep-%s.dat' using 1:%d with linespoints lw 2 dt %d "
            "lc %d title '%s %s'" % (data, t, col, dt, i + 1, NAMES[t], pn)
            for i, t in enumerate(ts)
            for col, dt, pn in ((3, 1, 'p50'), (4, 2, 'p99')))
        gnuplot("""set terminal pngcairo size 900,560 font ',10'
set output '%s/sweep-latency.png'
set title 'Open loop, 1:1 pairs: send-to-deliver latency vs offered load'
set xlabel 'offered load (messages/s)'
set ylabel 'latency (ms, log scale)'
set logscale y
set key top left
set grid
plot %s
""" % (pngdir, plot))
        made.append("sweep-latency.png")
    # Latency distributions of the closed-loop pairs and the group runs.
    for scen, hist, title in (
            ("pairs", "deliver_us", "1:1 pairs (closed loop)"),
            ("group", "deliver_us", "group, every delivery"),
            ("group", "last_member_us", "group, last member")):
        got = []
        for t in TARGETS:
            p = os.path.join(results, "csv", "%s-%s-r1-latency.csv"
                             % (scen, t))
            if not os.path.exists(p):
                continue
            with open(p) as f:
                rows = list(csv.DictReader(f))
            dat = os.path.join(data, "%s-%s-%s.dat" % (scen, t, hist))
            with open(dat, "w") as f:
                for r in rows:
                    pc = float(r["percentile"])
                    if pc >= 100 or float(r[hist]) <= 0:
                        continue
                    f.write("%g %.3f\n" % (100.0 / (100.0 - pc),
                                           float(r[hist]) / 1e3))
            got.append((t, dat))
        if not got:
            continue
        name = "%s-%s.png" % (scen, hist.replace("_us", ""))
        plot = ", ".join("'%s' using 1:2 with linespoints lw 2 title '%s'"
                         % (dat, NAMES[t]) for t, dat in got)
        gnuplot("""set terminal pngcairo size 900,560 font ',10'
set output '%s/%s'
set title 'Latency by percentile: %s (round 1)'
set xlabel 'percentile'
set ylabel 'latency (ms, log scale)'
set logscale xy
set xtics ('0%%%%' 1, '50%%%%' 2, '90%%%%' 10, '99%%%%' 100, '99.9%%%%' 1000, '99.99%%%%' 10000, '99.999%%%%' 100000)
set key top left
set grid
plot %s
""" % (pngdir, name, title, plot))
        made.append(name)
    return made


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--commands", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", default="10")
    ap.add_argument("--quick", default="0")
    a = ap.parse_args()
    runs = load(a.results)
    derive(runs)
    made = plots(runs, a.results, a.out)
    with open(a.machine) as f:
        machine = f.read().strip()
    with open(a.commands) as f:
        commands = f.read().strip()

    errors = sum(d.get("errors", 0) for d in runs.values())
    md = []
    w = md.append
    w("# Benchmarks: imchatd and mosquitto on one machine\n")
    w("Generated by `scripts/bench.sh%s` (imchat-bench, `hosts/bench/`). "
      "Every figure is the median of %d round(s) of %s s; the values of "
      "each round follow in parentheses. Servers and load generator share "
      "the machine and talk over loopback.\n"
      % (" --quick" if a.quick == "1" else "", a.rounds, a.duration))
    w("## Machine\n")
    w("```\n%s\n```\n" % machine)
    w("## Notes\n")
    w(noise_note(machine, runs) +
      "- What is compared: imchatd speaks WebSocket + protobuf with JWT "
      "authentication, assigns a per-conversation sequence number, "
      "deduplicates, appends every message to its conversation's history "
      "in SQLite and tracks delivery acknowledgements; mosquitto "
      "(persistence off) forwards MQTT QoS 1 publishes from memory. "
      "MQTT over WebSocket is the closest transport to imchat's; MQTT over "
      "TCP is shown for reference.\n"
      "- Mapping: a 1:1 message is an MQTT publish to the topic `u/<user>` "
      "the peer subscribed to; a group is one topic `g/<group>`; SendAck "
      "corresponds to PUBACK. The offline scenario has no MQTT counterpart "
      "here (the broker runs without persistence) and is imchatd only.\n"
      "- Latency is measured from the *intended* send time in open-loop "
      "runs (no coordinated omission) and from the actual send time in "
      "closed-loop runs; percentiles come from a log-linear histogram "
      "accurate to 0.1 %%. Throughput counts deliveries received during "
      "the measured window.\n"
      "- RSS per connection is (server RSS with every connection "
      "authenticated − RSS before connecting) / connections: user-space "
      "memory only (the kernel's socket buffers are not in RSS).\n"
      "- imchatd runs with `--rate-limit 1000000 --rate-burst 1000000` so "
      "that the per-connection send limit (100/s by default) does not cap "
      "the load; everything else is at its defaults.\n"
      "- Read throughput next to the server's CPU: a server that stops "
      "keeping up while using well under one core is waiting (on the disk, "
      "a lock or a queue), not computing. In open-loop runs compare "
      "delivered/s with the offered rate: the difference is what the "
      "server did not deliver within the run and its drain time.\n"
      "- Errors counted over all runs: %d (see `errors` in each JSON).\n"
      % errors)

    w("## Targets\n")
    w("The targets of the speed work, all from this run (the tables below "
      "have the details; why a target is missed is in the history after "
      "this).\n")
    w(targets(runs))
    history = os.path.join(a.out, "bench", "history.md")
    if os.path.exists(history):
        with open(history) as f:
            text = f.read()
        # The file's leading comment is for its editors, not the report.
        if text.startswith("<!--"):
            text = text[text.index("-->") + 3:]
        w(text.strip() + "\n")
    w("## Idle connections\n")
    w(table(runs, "idle", [
        ("connections held", "connect.ok", "", None),
        ("time to connect all (s)", "connect.seconds", "", "lower is better"),
        ("server RSS per connection (bytes)", "server.rss_bytes_per_conn", "",
         "lower is better"),
    ]))
    w(table(runs, "idle", [
        ("connect + authenticate p50 (µs)", "latency_us.connect.p50", "",
         "lower is better"),
        ("connect + authenticate p99 (µs)", "latency_us.connect.p99", "",
         "lower is better"),
        ("server RSS, all connected (KiB)", "server.rss_kb_connected", "",
         "lower is better"),
        ("other processes' CPU (% of one core)", "machine.others_pct", "",
         False),
    ]))
    w("## 1:1 pairs, closed loop\n")
    w("Each pair keeps one message in flight: a delivery to one side "
      "triggers that side's next message to the other.\n")
    w(table(runs, "pairs", [
        ("connections", "connections", "", None),
        ("delivered/s", "delivered_per_s", "", "higher is better"),
        ("send→deliver p50 (µs)", "latency_us.deliver.p50", "",
         "lower is better"),
        ("send→deliver p90 (µs)", "latency_us.deliver.p90", "", None),
        ("send→deliver p99 (µs)", "latency_us.deliver.p99", "",
         "lower is better"),
        ("send→deliver p99.9 (µs)", "latency_us.deliver.p999", "", None),
        ("send→deliver max (µs)", "latency_us.deliver.max", "", None),
        ("SendAck / PUBACK p50 (µs)", "latency_us.send_ack.p50", "", None),
        ("server CPU (% of one core)", "server.cpu_pct", "", None),
        ("server RSS max (KiB)", "server.rss_kb_max", "", None),
        ("load generator CPU (% of one core)", "derived.generator_pct", "",
         False),
        ("other processes' CPU (% of one core)", "machine.others_pct", "",
         False),
    ]))
    w("![latency by percentile](bench/pairs-deliver.png)\n")
    w("## Group fan-out, open loop\n")
    w("One group; member 0 sends at a fixed rate, every other member "
      "receives every message (deliveries/s = rate × (members − 1)).\n")
    w(table(runs, "group", [
        ("members", "members", "", None),
        ("messages sent", "sent", "", None),
        ("deliveries/s", "delivered_per_s", "", "higher is better"),
        ("deliveries expected", "expected", "", None),
        ("deliveries received", "delivered", "", None),
        ("per-delivery p50 (µs)", "latency_us.deliver.p50", "",
         "lower is better"),
        ("per-delivery p99 (µs)", "latency_us.deliver.p99", "",
         "lower is better"),
        ("last member p50 (µs)", "latency_us.last_member.p50", "",
         "lower is better"),
        ("last member p99 (µs)", "latency_us.last_member.p99", "", None),
        ("SendAck / PUBACK p50 (µs)", "latency_us.send_ack.p50", "", None),
        ("SendAck / PUBACK p99 (µs)", "latency_us.send_ack.p99", "",
         "lower is better"),
        ("server CPU (% of one core)", "server.cpu_pct", "", None),
        ("deliveries/s per server core", "derived.deliveries_per_core", "",
         "higher is better"),
        ("load generator CPU (% of one core)", "derived.generator_pct", "",
         False),
        ("other processes' CPU (% of one core)", "machine.others_pct", "",
         False),
    ]))
    w("![group latency](bench/group-deliver.png)\n")
    w("![group last member](bench/group-last_member.png)\n")
    w("## Offline inbox (imchatd only)\n")
    w("Senders message users that are not connected (closed loop, 4 in "
      "flight per sender, until `DeliveryStatus STORED`); then every "
      "recipient pages through `GET /offline` (protobuf, 1000 per page).\n")
    w(table(runs, "offline", [
        ("senders", "connections", "", None),
        ("stored/s", "offline.stored_per_s", "", None),
        ("send→STORED p50 (µs)", "latency_us.status.p50", "", None),
        ("send→STORED p99 (µs)", "latency_us.status.p99", "", None),
        ("messages fetched", "offline.fetched", "", None),
        ("fetched/s", "offline.fetched_per_s", "", None),
        ("server CPU (% of one core)", "server.cpu_pct", "", None),
        ("other processes' CPU (% of one core)", "machine.others_pct", "",
         False),
    ], targets=["imchat"]))
    w("## Open-loop sweep (1:1 pairs)\n")
    w("A fixed total rate spread over the pairs; latency from the intended "
      "send time, so a server that falls behind shows its queueing.\n")
    sweep = {}
    for label, doc in runs.items():
        m = re.match(r"sweep-(.+)-(\d+)$", label)
        if m:
            sweep.setdefault(int(m.group(2)), {})[m.group(1)] = doc
    if sweep:
        ts = [t for t in TARGETS if any(t in v for v in sweep.values())]
        w("| offered/s | " + " | ".join(
            "%s delivered/s (share of sent, after the drain) | p50 / p99 (ms)"
            % NAMES[t] for t in ts) + " |")
        w("|---|" + "---|---|" * len(ts))
        for rate in sorted(sweep):
            row = ["%d" % rate]
            for t in ts:
                d = sweep[rate].get(t)
                if not d:
                    row += ["–", "–"]
                    continue
                lat = d["latency_us"]["deliver"]
                share = get(d, "derived.delivered_share")
                row += [fmt(d["delivered_per_s"]) + (
                    " (all)" if share is not None and share >= 100 else
                    " (%s %%)" % fmt(share)), "%s / %s" % (
                    fmt(lat["p50"] / 1e3), fmt(lat["p99"] / 1e3))]
            w("| " + " | ".join(row) + " |")
        w("")
    for p in made:
        if p.startswith("sweep"):
            w("![%s](bench/%s)\n" % (p[:-4], p))
    w("## Commands\n")
    w("Each run starts a fresh server (imchatd: `imchatd --listen "
      "127.0.0.1:0 --data-dir $TMP/... --jwt-secret-file $TMP/jwt.secret "
      "--admin-token $ADMIN_TOKEN --rate-limit 1000000 --rate-burst "
      "1000000`; mosquitto: `mosquitto -c $TMP/mosquitto.conf` with a TCP "
      "and a `protocol websockets` listener on loopback, "
      "`allow_anonymous true`, `persistence false`), then:\n")
    w("```\n%s\n```\n" % commands)
    # The cluster's section, from the last scripts/bench.sh --cluster run
    # (hosts/bench/cluster_report.py), stays at the end.
    cluster = os.path.join(a.out, "bench", "cluster.md")
    if os.path.exists(cluster):
        with open(cluster) as f:
            w(f.read().strip() + "\n")
    with open(os.path.join(a.out, "benchmarks.md"), "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
