"""Writes doc/bench/cluster.md, the "Cluster on one machine (C100K)"
section, from a scripts/bench.sh --cluster run (scripts/bench_cluster.sh),
and puts it in doc/benchmarks.md in place of the section there (or after
it). Standard library only.

Inputs in --results: imchat-bench's JSON of each run (cluster-idle,
cluster-pairs, cluster-group), etcd's counters at each step
(etcd-STEP.prom: its own /metrics, filtered), the processes at each step
(procs-STEP.txt: the gateways' WebSockets, fds, RSS and CPU ticks, the
backends' RSS and CPU ticks, MemAvailable) and the live keys seen while
waiting (keys-NAME.txt); --meta holds the run's settings."""

import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import fmt, get  # noqa: E402

HEADING = "## Cluster on one machine (C100K)"
TICK = os.sysconf("SC_CLK_TCK")
# im-service's router lease (hosts/cluster/liveness.c: RENEW_MS).
LIVENESS_RENEW_S = 1.5


def read_kv(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, sep, v = line.partition(":")
            if sep:
                out[k.strip()] = v.strip()
    return out


def read_prom(path):
    """etcd's counters of one step: {name: value} (series with labels
    keep them in the name), and "time"."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.startswith("# time "):
                out["time"] = float(line.split()[2])
            elif line and not line.startswith("#"):
                name, _, val = line.rpartition(" ")
                out[name] = float(val)
    return out


def read_procs(path):
    """The processes of one step: gateways (list of dicts), backends
    ({name: dict}), mem_available_kb, time."""
    out = {"gateways": [], "backends": {}}
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            if w[0] == "#":
                out["time"] = float(w[2])
            elif w[0] in ("gateway", "backend"):
                d = {"name": w[1]}
                for i in range(2, len(w) - 1, 2):
                    d[w[i]] = float(w[i + 1])
                if w[0] == "gateway":
                    out["gateways"].append(d)
                else:
                    out["backends"][w[1]] = d
            elif w[0] in ("mem_available_kb", "slab_kb", "tcp_inuse"):
                out[w[0]] = float(w[1])
            elif w[0] == "loadavg":
                out["loadavg"] = " ".join(w[1:])
    return out


def method(m, kind="msg_received"):
    """The etcd series of gRPC method m (summed over its services)."""
    return lambda p: sum(v for k, v in p.items()
                         if k.startswith("grpc_server_%s_total{" % kind)
                         and 'grpc_method="%s"' % m in k
                         and "etcdserverpb" in k)


COUNTERS = [
    ("puts", lambda p: p.get("etcd_mvcc_put_total", 0)),
    ("deletes", lambda p: p.get("etcd_mvcc_delete_total", 0)),
    ("transactions (Txn calls)", method("Txn")),
    ("raft proposals committed",
     lambda p: p.get("etcd_server_proposals_committed_total", 0)),
    ("WAL fsyncs",
     lambda p: p.get("etcd_disk_wal_fsync_duration_seconds_count", 0)),
    ("WAL fsync time (s)",
     lambda p: p.get("etcd_disk_wal_fsync_duration_seconds_sum", 0)),
    ("lease grants", lambda p: p.get("etcd_debugging_lease_granted_total", 0)),
    ("lease keepalives received", method("LeaseKeepAlive")),
    ("lease renewals",
     lambda p: p.get("etcd_debugging_lease_renewed_total", 0)),
    ("keys read (ranges, in transactions too)",
     lambda p: p.get("etcd_mvcc_range_total", 0)),
    ("etcd CPU (s)", lambda p: p.get("process_cpu_seconds_total", 0)),
]


def reached(path):
    """When etcd's live keys first met the wait of a keys-NAME.txt (its
    header: "waiting for ge|le N"), in seconds from the wait's start;
    None if they never did."""
    with open(path) as f:
        head = f.readline()
        m = re.search(r"waiting for (ge|le) (\d+)", head)
        for line in f:
            t, k = line.split()
            if m and (int(k) >= int(m.group(2)) if m.group(1) == "ge"
                      else int(k) <= int(m.group(2))):
                return float(t)
    return None


C = dict(COUNTERS)
PUTS, DELS, TXNS = C["puts"], C["deletes"], C["transactions (Txn calls)"]
KA = C["lease keepalives received"]


def delta(a, b, fn):
    return fn(b) - fn(a)


def gw_ticks(procs):
    return sum(g["cpu_ticks"] for g in procs["gateways"])


def num(v):
    """A count: whole numbers with thousands separators."""
    return "–" if v is None else "{:,.0f}".format(v)


def lcm(a, b):
    return a * b // math.gcd(a, b)


def lat(doc, h, p):
    v = get(doc, "latency_us.%s.%s" % (h, p))
    return None if v is None else v / 1000.0


def section(a, meta, machine, commands, runs, etcd, procs, notes):
    idle, pairs, group = (runs.get("cluster-" + k) for k in
                          ("idle", "pairs", "group"))
    gws = int(meta["gateways"])
    svc_pid = int(meta["service_pid"])
    md = []
    w = md.append
    w(HEADING + "\n")
    w("Generated by `scripts/bench.sh --cluster%s` (`scripts/bench_cluster.sh`"
      ", `hosts/bench/cluster_report.py`). One im-service and %d im-gateway "
      "processes on one machine, with Redis, MariaDB, etcd and librdkafka's "
      "mock Kafka on loopback; imchat-bench spreads its connections over "
      "every gateway (connection *i* on gateway *i* mod %d), from several "
      "client processes each bound to its own source address 127.0.0.*k*. "
      "Each gateway runs with `--heartbeat %s` (its etcd lease, TTL %s s, "
      "renewed every %s s), no connection limit and the rate limits lifted. "
      "etcd keeps its data on %s (%s). Everything shares the machine's "
      "cores.\n"
      % (" --quick" if a.quick == "1" else "", gws, gws,
         meta["heartbeat_s"], meta["lease_ttl_s"], meta["heartbeat_s"],
         "tmpfs, so its fsyncs cost nothing"
         if meta.get("etcd_data_fs") == "tmpfs" else "the machine's disk",
         "/dev/shm" if meta.get("etcd_data_fs") == "tmpfs"
         else "file system %s" % meta.get("etcd_data_fs", "?")))
    w("```\n%s\n```\n" % machine)

    rows = []
    if idle:
        ok = idle["connect"]["ok"]
        secs = idle["connect"]["seconds"]
        procs_gw = [p for p in idle.get("server_procs", [])
                    if p["pid"] != svc_pid]
        svc = [p for p in idle.get("server_procs", [])
               if p["pid"] == svc_pid]
        base = sum(p["rss_kb_base"] for p in procs_gw)
        conn = sum(p["rss_kb_connected"] for p in procs_gw)
        per_gw = [int(g["websockets"]) for g in
                  procs["1-connected"]["gateways"]]
        rows.append(("authenticated WebSockets held",
                     "%s of %s requested, over %d gateways (%s)"
                     % (num(ok), num(int(meta["idle_requested"])), gws,
                        " / ".join(num(n) for n in per_gw))))
        rows.append(("connect rate",
                     "%s connections/s (all %s connected and authenticated "
                     "in %.1f s; connect → Welcome p50 %s ms, p99 %s ms)"
                     % (fmt(ok / secs if secs else None), fmt(ok), secs,
                        fmt(lat(idle, "connect", "p50")),
                        fmt(lat(idle, "connect", "p99")))))
        if ok:
            rows.append(("gateways' RSS per connection",
                         "%s bytes of growth ((%s − %s KiB) / %s); %s bytes "
                         "of total RSS (%s KiB over %d processes)"
                         % (num((conn - base) * 1024.0 / ok), num(conn),
                            num(base), num(ok), num(conn * 1024.0 / ok),
                            num(conn), gws)))
        if "entries_registered" in meta and ok:
            reg = int(meta["entries_registered"])
            rows.append(("registered in etcd",
                         "%s of the %s connections (%.1f %%) once the "
                         "gateways' first writes had settled (the rest at the "
                         "next heartbeats: see etcd's live keys below); %s "
                         "`registry:` warnings of the gateways; entries left "
                         "%s s after the clients "
                         "closed: %s"
                         % (num(reg), num(ok), 100.0 * reg / ok,
                            num(int(meta.get("registry_failures", 0))),
                            fmt(etcd["4-closed"]["time"]
                                - etcd["3-held"]["time"])
                            if "4-closed" in etcd and "3-held" in etcd
                            else "–",
                            num(int(meta.get("entries_after_close", 0))))))
        if svc and ok:
            s = svc[0]
            rows.append(("im-service RSS",
                         "%s KiB before, %s KiB with every connection up "
                         "(%s bytes per connection)"
                         % (num(s["rss_kb_base"]), num(s["rss_kb_connected"]),
                            num((s["rss_kb_connected"] - s["rss_kb_base"])
                                * 1024.0 / ok))))
        p0, p2 = procs.get("0-start"), procs.get("2-registered")
        if p0 and p2 and ok:
            ticks = gw_ticks(p2) - gw_ticks(p0)
            rows.append(("gateways' CPU per connection set up",
                         "%s µs (%.1f CPU-s over the %d gateways: TCP "
                         "accept, HTTP upgrade, JWT check, registration)"
                         % (fmt(ticks / TICK * 1e6 / ok), ticks / TICK, gws)))
            if "slab_kb" in p0 and "slab_kb" in p2:
                slab = p2["slab_kb"] - p0["slab_kb"]
                rows.append(("kernel memory per connection",
                             "%s bytes of slab (it grew by %s MiB while they"
                             " connected: both ends of every TCP socket, "
                             "machine-wide); TCP sockets in use %s → %s"
                             % (num(slab * 1024.0 / ok), fmt(slab / 1024.0),
                                num(p0.get("tcp_inuse")),
                                num(p2.get("tcp_inuse")))))
        cpu_hold = sum(p["cpu_s"] for p in procs_gw)
        rows.append(("gateways' CPU while holding",
                     "%s %% of one core in all (%s CPU-s over the %s s hold:"
                     " heartbeats, the clients' pings every 20 s)"
                     % (fmt(100.0 * cpu_hold / idle["duration_s"]),
                        fmt(cpu_hold), fmt(idle["duration_s"]))))
    if pairs:
        rows.append(("1:1 across gateways",
                     "%s connections in %s pairs, each pair's ends on two "
                     "different gateways; %s messages/s offered (open "
                     "loop): %s sent, %s delivered; send → deliver p50 %s "
                     "ms, p99 %s ms, max %s ms"
                     % (fmt(pairs["connections"]),
                        fmt(pairs["connections"] / 2), fmt(pairs["rate"]),
                        fmt(pairs["sent"]), fmt(pairs["delivered"]),
                        fmt(lat(pairs, "deliver", "p50")),
                        fmt(lat(pairs, "deliver", "p99")),
                        fmt(lat(pairs, "deliver", "max")))))
    if group:
        rows.append(("group across gateways",
                     "%s members spread over the %d gateways, %s messages/s "
                     "(%s deliveries/s): %s of %s deliveries; per delivery "
                     "p50 %s ms, p99 %s ms; last member p50 %s ms, p99 %s "
                     "ms; sender's SendAck p50 %s ms"
                     % (fmt(group["members"]), gws, fmt(group["rate"]),
                        fmt(group["rate"] * (group["members"] - 1)),
                        fmt(group["delivered"]), fmt(group["expected"]),
                        fmt(lat(group, "deliver", "p50")),
                        fmt(lat(group, "deliver", "p99")),
                        fmt(lat(group, "last_member", "p50")),
                        fmt(lat(group, "last_member", "p99")),
                        fmt(lat(group, "send_ack", "p50")))))
    errors = sum(d.get("errors", 0) for d in runs.values())
    rows.append(("errors (all runs)", "%d (see `errors` in each JSON)"
                 % errors))
    w("| figure | this run |\n|---|---|")
    for k, v in rows:
        w("| %s | %s |" % (k, v))
    w("")

    # etcd, step by step.
    steps = [("connecting", "0-start", "2-registered"),
             ("holding", "2-registered", "3-held"),
             ("closing", "3-held", "4-closed")]
    have = [s for s in steps if s[1] in etcd and s[2] in etcd]
    if have:
        w("### etcd's load\n")
        w("etcd's own counters (its `/metrics`), read before the clients "
          "connect, once the gateways' registrations have settled, at the "
          "end of the hold (2 s before the clients close) and once the "
          "closed "
          "connections' entries are gone. Each gateway keeps one lease and "
          "puts every connection's key on it: renewals are one keepalive "
          "per gateway per heartbeat whatever the number of connections; "
          "registrations and unregistrations are batched into "
          "transactions (up to 127-128 operations each).\n")
        head = "| counter | " + " | ".join(
            "%s (%.0f s)" % (n, etcd[b]["time"] - etcd[a0]["time"])
            for n, a0, b in have) + " |"
        w(head)
        w("|---|" + "---|" * len(have))
        for name, fn in COUNTERS:
            f = fmt if "(s)" in name else num
            w("| %s | " % name + " | ".join(
                f(delta(etcd[a0], etcd[b], fn)) for _, a0, b in have)
              + " |")
        w("| live keys at the end | " + " | ".join(
            num(etcd[b].get("etcd_debugging_mvcc_keys_total")) for _, _, b
            in have) + " |")
        w("")
        facts = []
        if idle and "2-registered" in etcd:
            ok = idle["connect"]["ok"]
            d_put = delta(etcd["0-start"], etcd["2-registered"], PUTS)
            d_txn = delta(etcd["0-start"], etcd["2-registered"], TXNS)
            if ok and d_txn:
                facts.append("while connecting, %s puts for %s connections "
                             "(%.2f per connection) in %s transactions: %s "
                             "registrations per transaction"
                             % (num(d_put), num(ok), d_put / ok, num(d_txn),
                                fmt(d_put / d_txn)))
        if "3-held" in etcd and "2-registered" in etcd:
            a0, b = etcd["2-registered"], etcd["3-held"]
            secs = b["time"] - a0["time"]
            ka = delta(a0, b, KA)
            hb = float(meta["heartbeat_s"])
            facts.append("while %s connections were held for %.0f s: %s "
                         "puts, %s transactions, %s keepalives (%d gateways "
                         "× one per %g s heartbeat: %d to %d in that time; "
                         "im-service's router lease, renewed every %g s "
                         "once the last renewal is answered: at most %d)"
                         % (num(idle["connect"]["ok"]) if idle else "the",
                            secs, num(delta(a0, b, PUTS)),
                            num(delta(a0, b, TXNS)), num(ka), gws, hb,
                            gws * math.floor(secs / hb),
                            gws * math.ceil(secs / hb), LIVENESS_RENEW_S,
                            math.ceil(secs / LIVENESS_RENEW_S)))
        if "4-closed" in etcd and "3-held" in etcd:
            gone = a.keys_files.get("keys-closing")
            facts.append("on closing, %s deletes in %s transactions; %s"
                         % (num(delta(etcd["3-held"], etcd["4-closed"],
                                      DELS)),
                            num(delta(etcd["3-held"], etcd["4-closed"],
                                      TXNS)),
                            "the entries were gone %.1f s after imchat-bench "
                            "exited" % gone if gone is not None else
                            "**the entries were not all gone** %s s after "
                            "imchat-bench exited (a removal etcd did not "
                            "take in time is made again at the gateway's "
                            "next heartbeat)" % num(
                                etcd["4-closed"]["time"]
                                - etcd["3-held"]["time"])))
        if facts:
            w("So: " + "; ".join(facts) + ".\n")

    # What bounds it.
    w("### What bounds it here\n")
    fit = int(meta["gw_fit"])
    lim = int(meta["gw_fd_limit"])
    bounds = [
        "**File descriptors.** One process may hold %s files here (the hard "
        "limit; not raisable, even as root). A gateway has %s open once "
        "ready (listeners, epoll, its etcd, Kafka, MariaDB and gRPC "
        "connections, librdkafka's threads), so with a margin of 32 it can "
        "hold %s WebSockets and %d gateways %s; %s were requested%s."
        % (fmt(lim), meta["gw_fds_ready"], fmt(fit), gws, fmt(fit * gws),
           fmt(int(meta["idle_requested"])),
           "" if int(meta["idle_conns"]) >= int(meta["idle_requested"])
           else ", so %s ran" % fmt(int(meta["idle_conns"]))),
    ]
    if idle:
        wk = int(meta["idle_workers"])
        lo, hi = meta["ephemeral_ports"].split()
        bounds.append(
            "**Ephemeral ports.** A (source address, server address and port)"
            " pair has %s ports (%s–%s). The %d client processes bind "
            "127.0.0.1–127.0.0.%d, so %s connections spread over %d such "
            "pairs: %s each."
            % (fmt(int(hi) - int(lo) + 1), lo, hi, wk, wk,
               fmt(idle["connect"]["ok"]), lcm(wk, gws),
               fmt(idle["connect"]["ok"] / lcm(wk, gws))))
        e0, e2 = etcd.get("0-start"), etcd.get("2-registered")
        if e0 and e2 and "entries_registered" in meta:
            ok = idle["connect"]["ok"]
            reg = int(meta["entries_registered"])
            secs = idle["connect"]["seconds"]
            fs_n = delta(e0, e2, C["WAL fsyncs"])
            fs_t = delta(e0, e2, C["WAL fsync time (s)"])
            txns = delta(e0, e2, TXNS)
            bounds.append(
                "**Registration in etcd.** %s connections arrived at %s/s "
                "(%s/s per gateway); the gateways registered %s of them "
                "(%.1f %%) in %s transactions. Each gateway keeps one write "
                "transaction in flight; a write still queued or in flight "
                "5 s after it was made fails (the etcd engine's timeout; "
                "a transaction's deadline is its oldest operation's), and "
                "the gateway makes it again at its next heartbeat (every "
                "30 s here): the rest are registered while the connections "
                "are held (see the live keys above). etcd's WAL fsyncs took "
                "%s ms on average (%s of them) while they connected."
                % (num(ok), num(ok / secs if secs else None),
                   num(ok / secs / gws if secs else None), num(reg),
                   100.0 * reg / ok if ok else 0, num(txns),
                   fmt(1000.0 * fs_t / fs_n if fs_n else None), num(fs_n)))
        p2 = procs.get("2-registered")
        if p2:
            bounds.append(
                "**Memory.** %s MiB were still available with every "
                "connection up (of %s MiB at the start)."
                % (fmt(p2["mem_available_kb"] / 1024.0),
                   fmt(float(meta["mem_available_kb_start"]) / 1024.0)))
    others = [(k, get(d, "machine.others_pct")) for k, d in sorted(
        runs.items())]
    others = [(k, v) for k, v in others if v is not None]
    if others:
        bounds.append(
            "**CPU.** Two cores for everything: the gateways, im-service, "
            "the four backends and the client processes. Besides the "
            "gateways, im-service and imchat-bench, other processes (the "
            "backends included, and any other work on the machine) took "
            "%s of one core during the runs; load average %s."
            % (", ".join("%s %% (%s)" % (fmt(v), k.replace("cluster-", ""))
                         for k, v in others),
               re.sub(r".*load: ", "", [ln for ln in machine.splitlines()
                                         if ln.startswith("load:")][0])
               if "load:" in machine else "–"))
    for b in bounds:
        w("- " + b)
    w("")
    if notes:
        w(notes.strip() + "\n")
    w("### Commands\n")
    w("The servers: `im-service --grpc-listen 127.0.0.1:$P --http-listen "
      "127.0.0.1:$P --etcd $ETCD --kafka $KAFKA --redis $REDIS --mysql "
      "$MYSQL/imchat_bench`, and for each gateway *k* `im-gateway --listen "
      "127.0.0.1:$P --grpc-listen 127.0.0.1:$P --router $SERVICE --etcd "
      "$ETCD --kafka $KAFKA --mysql $MYSQL/imchat_bench --node-id "
      "bench-gw*k* --jwt-secret-file $TMP/jwt.secret --admin-token "
      "$ADMIN_TOKEN --heartbeat 30 --max-connections 0 "
      "--max-connections-per-ip 0 --rate-limit 1000000 --rate-burst 1000000 "
      "--user-rate-limit 1000000 --user-rate-burst 1000000`. Then:\n")
    w("```\n%s\n```\n" % commands.strip())
    return "\n".join(md)


def splice(doc_path, text):
    """Puts text in doc_path in place of its cluster section (from the
    heading to the end), or after what is there."""
    old = ""
    if os.path.exists(doc_path):
        with open(doc_path) as f:
            old = f.read()
    i = old.find(HEADING)
    head = old[:i] if i >= 0 else old
    if head and not head.endswith("\n\n"):
        head = head.rstrip("\n") + "\n\n"
    with open(doc_path, "w") as f:
        f.write(head + text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--commands", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", default="0")
    a = ap.parse_args()
    meta = read_kv(a.meta)
    with open(a.machine) as f:
        machine = f.read().strip()
    with open(a.commands) as f:
        commands = f.read()
    runs, etcd, procs = {}, {}, {}
    a.keys_files = {}
    for name in sorted(os.listdir(a.results)):
        p = os.path.join(a.results, name)
        if name.endswith(".json"):
            with open(p) as f:
                doc = json.load(f)
            runs[doc["label"]] = doc
        elif name.startswith("etcd-") and name.endswith(".prom"):
            etcd[name[5:-5]] = read_prom(p)
        elif name.startswith("procs-") and name.endswith(".txt"):
            procs[name[6:-4]] = read_procs(p)
        elif name.startswith("keys-") and name.endswith(".txt"):
            a.keys_files[name[:-4]] = reached(p)
    notes_path = os.path.join(a.out, "bench", "cluster-notes.md")
    notes = ""
    if os.path.exists(notes_path):
        with open(notes_path) as f:
            notes = f.read()
        # The file's leading comment is for its editors, not the report.
        if notes.startswith("<!--"):
            notes = notes[notes.index("-->") + 3:]
    text = section(a, meta, machine, commands, runs, etcd, procs, notes)
    with open(os.path.join(a.out, "bench", "cluster.md"), "w") as f:
        f.write(text)
    splice(os.path.join(a.out, "benchmarks.md"), text)


if __name__ == "__main__":
    main()
