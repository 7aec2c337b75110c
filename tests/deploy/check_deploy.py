"""Checks the deployment files under deploy/ (meson suite 'deploy').

Usage: check_deploy.py SOURCE_ROOT BUILD_ROOT

- deploy/k8s: every manifest parses as YAML, names no namespace, and holds
  together (ConfigMaps, Secrets, keys, volumes, ports and $(VARS) that are
  referenced exist); each Deployment's containers have liveness (/healthz)
  and readiness (/readyz) probes, resource requests and limits and run as
  non-root; every flag in a container's args, and every key of the INI file
  in the ConfigMap, is one the host's --help lists (HOST_FLAGS).
- deploy/systemd: the units have what an operator relies on (Restart,
  KillSignal, TimeoutStopSec, hardening, LimitNOFILE for 100K connections)
  and pass `systemd-analyze verify`; the example INI keys are in the contract.
- deploy/grafana: the dashboard parses as JSON and every metric name in its
  queries is one the C sources export, or imchat_backend_up.

The flags are those `im-gateway --help` and `im-service --help` of the
build in BUILD_ROOT document.
Prints every problem found; exits 1 if there is one.
"""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

# The hosts' flags: what their --help documents (filled in main()).
HOST_FLAGS = {}
HOSTS = ("im-gateway", "im-service")


def load_flags(build):
    """The long options each host's --help lists."""
    for prog in HOSTS:
        exe = os.path.join(build, "hosts", prog)
        if not os.access(exe, os.X_OK):
            sys.exit(f"check_deploy: {exe} is missing (build with "
                     f"-Dengines=enabled)")
        r = subprocess.run([exe, "--help"], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            sys.exit(f"check_deploy: {prog} --help exited {r.returncode}")
        HOST_FLAGS[prog] = set(re.findall(r"--([a-z][a-z-]+)", r.stdout)) - \
            {"help", "version"}


# INI keys: the flags but these, plus the MariaDB account.
NOT_INI_KEYS = {"config", "migrate-only"}
INI_ONLY_KEYS = {"mysql-user", "mysql-password"}

# Exported by the hosts themselves (the cluster's contract), not by libimchat.
CONTRACT_METRICS = {"imchat_backend_up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

errors = []


def error(where, what):
    errors.append(f"{where}: {what}")


def flags_of(args):
    """The long option names in an argument list (--name or --name=value)."""
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]


def check_flags(where, program, flags):
    known = HOST_FLAGS.get(program)
    if known is None:
        error(where, f"unknown program {program!r}")
        return
    for f in flags:
        if f not in known:
            error(where, f"--{f} is not a flag of {program}")


def check_ini(where, text):
    ini = configparser.ConfigParser(interpolation=None)
    try:
        ini.read_string(text, source=where)
    except configparser.Error as e:
        error(where, f"INI: {e}".replace("\n", " "))
        return
    if set(ini.sections()) != {"im-gateway", "im-service"}:
        error(where, f"INI sections {ini.sections()}, want im-gateway and "
              "im-service")
    for section in ini.sections():
        allowed = (HOST_FLAGS.get(section, set()) - NOT_INI_KEYS) | INI_ONLY_KEYS
        for key in ini[section]:
            if key not in allowed:
                error(where, f"[{section}] {key} is not a key of {section}")


# ---- Kubernetes -----------------------------------------------------------

def load_manifests(root):
    docs = []
    d = os.path.join(root, "deploy", "k8s")
    files = sorted(f for f in os.listdir(d) if f.endswith((".yaml", ".yml")))
    if not files:
        error("deploy/k8s", "no manifests")
    for name in files:
        path = os.path.join("deploy", "k8s", name)
        try:
            with open(os.path.join(root, path)) as f:
                loaded = [x for x in yaml.safe_load_all(f) if x is not None]
        except yaml.YAMLError as e:
            error(path, f"YAML: {e}".replace("\n", " "))
            continue
        for i, doc in enumerate(loaded):
            where = f"{path}[{i}]"
            if not isinstance(doc, dict):
                error(where, "not a mapping")
                continue
            for key in ("apiVersion", "kind", "metadata"):
                if key not in doc:
                    error(where, f"no {key}")
            meta = doc.get("metadata") or {}
            if "name" not in meta:
                error(where, "no metadata.name")
            if "namespace" in meta:
                error(where, "names a namespace (the manifests are "
                      "namespace-free)")
            docs.append((where, doc))
    return docs


def by_kind(docs, kind):
    return {d["metadata"].get("name"): (w, d) for w, d in docs
            if d.get("kind") == kind and isinstance(d.get("metadata"), dict)}


def check_probe(where, c, kind, path, ports):
    probe = c.get(kind)
    get = probe.get("httpGet") if isinstance(probe, dict) else None
    if not isinstance(get, dict):
        error(where, f"no {kind} with httpGet")
        return
    if get.get("path") != path:
        error(where, f"{kind} path {get.get('path')!r}, want {path}")
    if get.get("port") not in ports:
        error(where, f"{kind} port {get.get('port')!r} is not a container port")


def check_container(where, c, pod, secrets, configmaps, serving):
    where = f"{where} container {c.get('name')}"
    command = c.get("command") or []
    args = c.get("args") or []
    if not command:
        error(where, "no command")
        return
    program = os.path.basename(command[0])
    if not command[0].startswith("/usr/local/bin/"):
        error(where, f"command {command[0]} is not under /usr/local/bin")
    check_flags(where, program, flags_of(command[1:] + args))
    if "--config" not in args:
        error(where, "no --config")
    # $(VAR) in args must be defined by the container's env.
    env = {e.get("name"): e for e in c.get("env") or []}
    for a in args:
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(a)):
            if var not in env:
                error(where, f"$({var}) is not in env")
    for name, e in env.items():
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            continue
        secret = secrets.get(ref.get("name"))
        if secret is None:
            error(where, f"env {name}: no Secret {ref.get('name')!r}")
        elif ref.get("key") not in (secret.get("stringData") or {}) and \
                ref.get("key") not in (secret.get("data") or {}):
            error(where, f"env {name}: Secret {ref.get('name')} has no key "
                  f"{ref.get('key')!r}")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(part) or {}):
                error(where, f"no resources.{part}.{r}")
    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        error(where, "not runAsNonRoot")
    if sc.get("allowPrivilegeEscalation") is not False:
        error(where, "allowPrivilegeEscalation is not false")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        v = volumes.get(m.get("name"))
        if v is None:
            error(where, f"mount of an undefined volume {m.get('name')!r}")
        elif "configMap" in v and v["configMap"].get("name") not in configmaps:
            error(where, f"volume {m.get('name')}: no ConfigMap "
                  f"{v['configMap'].get('name')!r}")
        elif "secret" in v:
            s = secrets.get(v["secret"].get("secretName"))
            if s is None:
                error(where, f"volume {m.get('name')}: no Secret "
                      f"{v['secret'].get('secretName')!r}")
            else:
                for item in v["secret"].get("items") or []:
                    if item.get("key") not in (s.get("stringData") or {}):
                        error(where, f"volume {m.get('name')}: Secret has no "
                              f"key {item.get('key')!r}")
    if serving:
        ports = {p.get("name") for p in c.get("ports") or []} | \
                {p.get("containerPort") for p in c.get("ports") or []}
        check_probe(where, c, "livenessProbe", "/healthz", ports)
        check_probe(where, c, "readinessProbe", "/readyz", ports)
    return program


def check_k8s(root):
    """Returns the manifests read."""
    docs = load_manifests(root)
    secrets = {n: d for n, (w, d) in by_kind(docs, "Secret").items()}
    configmaps = by_kind(docs, "ConfigMap")
    for name, (where, cm) in configmaps.items():
        for key, text in (cm.get("data") or {}).items():
            if key.endswith(".ini"):
                check_ini(f"{where} {key}", text)
    deployments = by_kind(docs, "Deployment")
    programs = {}
    for name, (where, d) in deployments.items():
        spec = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        if "terminationGracePeriodSeconds" not in spec:
            error(where, "no terminationGracePeriodSeconds")
        containers = spec.get("containers") or []
        if not containers:
            error(where, "no containers")
        for c in spec.get("initContainers") or []:
            check_container(where, c, spec, secrets, configmaps, False)
        for c in containers:
            programs[name] = check_container(where, c, spec, secrets,
                                             configmaps, True)
        labels = ((d["spec"].get("template") or {}).get("metadata") or {}) \
            .get("labels") or {}
        sel = (d["spec"].get("selector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            error(where, "selector does not match the pod labels")
    for want in ("im-gateway", "im-service"):
        if programs.get(want) != want:
            error("deploy/k8s", f"no Deployment {want} running {want}")
    # Each Service selects a Deployment's pods and targets its ports.
    for name, (where, s) in by_kind(docs, "Service").items():
        sel = (s.get("spec") or {}).get("selector") or {}
        match = [d for _, (_, d) in deployments.items()
                 if sel and all(((d["spec"]["template"].get("metadata") or {})
                                 .get("labels") or {}).get(k) == v
                                for k, v in sel.items())]
        if not match:
            error(where, "selects no Deployment's pods")
            continue
        ports = set()
        for c in match[0]["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports") or []:
                ports |= {p.get("name"), p.get("containerPort")}
        for p in (s.get("spec") or {}).get("ports") or []:
            if p.get("targetPort", p.get("port")) not in ports:
                error(where, f"targetPort {p.get('targetPort')!r} is not a "
                      "container port")
    return docs


# ---- systemd --------------------------------------------------------------

def read_unit(path):
    """Sections of a unit file as {section: [(key, value)]}."""
    sections, cur = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                cur = sections.setdefault(line[1:-1], [])
            elif "=" in line and cur is not None:
                k, v = line.split("=", 1)
                cur.append((k.strip(), v.strip()))
    return sections


def check_unit(where, unit):
    svc = dict(unit.get("Service", []))
    exec_start = svc.get("ExecStart", "").split()
    if not exec_start or not exec_start[0].startswith("/usr/local/bin/"):
        error(where, "ExecStart is not a program in /usr/local/bin")
        return
    program = os.path.basename(exec_start[0])
    check_flags(where, program, flags_of(exec_start[1:]))
    if "--config /etc/imchat/imchat.ini" not in " ".join(exec_start):
        error(where, "no --config /etc/imchat/imchat.ini")
    oneshot = svc.get("Type") == "oneshot"
    want = {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
            "PrivateTmp": "yes"}
    if not oneshot:
        want.update({"Type": "simple", "Restart": "on-failure",
                     "KillSignal": "SIGTERM"})
        if "TimeoutStopSec" not in svc:
            error(where, "no TimeoutStopSec")
    for k, v in want.items():
        if svc.get(k) != v:
            error(where, f"{k}={svc.get(k)}, want {v}")
    if "User" not in svc and svc.get("DynamicUser") != "yes":
        error(where, "runs as root (no User= or DynamicUser=yes)")
    if "EnvironmentFile" not in svc:
        error(where, "no EnvironmentFile (the MariaDB account)")
    if program == "im-gateway" and not oneshot:
        nofile = svc.get("LimitNOFILE", "0")
        if nofile != "infinity" and int(nofile.split(":")[-1]) < 110000:
            error(where, f"LimitNOFILE={nofile}: too few for 100K connections")


def check_systemd(root):
    d = os.path.join(root, "deploy", "systemd")
    units = sorted(f for f in os.listdir(d) if f.endswith(".service"))
    for want in ("im-gateway.service", "im-service.service"):
        if want not in units:
            error("deploy/systemd", f"no {want}")
    for name in units:
        check_unit(f"deploy/systemd/{name}", read_unit(os.path.join(d, name)))
    ini = os.path.join(d, "imchat.ini")
    if os.path.exists(ini):
        with open(ini) as f:
            check_ini("deploy/systemd/imchat.ini", f.read())
    verify_units(d, units)


def verify_units(d, units):
    """systemd-analyze verify insists that ExecStart programs exist, and
    /usr/local/bin/im-* need not be installed here: it checks copies of
    the units whose /usr/local/bin paths point at executable stand-ins
    (copies of /bin/true) in a temporary directory."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        error("deploy/systemd", "systemd-analyze not found (package systemd)")
        return
    with tempfile.TemporaryDirectory(prefix="imchat-units-") as tmp:
        bindir = os.path.join(tmp, "bin")
        os.mkdir(bindir)
        for prog in HOST_FLAGS:
            shutil.copy("/bin/true", os.path.join(bindir, prog))
        copies = []
        for name in units:
            with open(os.path.join(d, name)) as f:
                text = f.read().replace("/usr/local/bin/", bindir + "/")
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(text)
            copies.append(path)
        r = subprocess.run([tool, "verify", "--man=no"] + copies,
                           capture_output=True, text=True, timeout=60)
        # verify only warns about unknown keys and bad values: any line
        # about our units is a failure, as is a non-zero status.
        out = (r.stdout + r.stderr).splitlines()
        ours = [l for l in out if tmp in l or any(u in l for u in units)]
        for l in ours:
            error("systemd-analyze verify", l.replace(tmp + "/", ""))
        if r.returncode != 0 and not ours:
            error("systemd-analyze verify", f"exit {r.returncode}: "
                  + " | ".join(out))


# ---- Grafana --------------------------------------------------------------

def exported_metric_names(root):
    """Every "imchat_..." string literal of the C sources."""
    names = set()
    for top in ("libimchat", "hosts", "engines"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith(".c"):
                    with open(os.path.join(dirpath, f), errors="replace") as h:
                        names |= set(re.findall(r'"(imchat_[a-z0-9_]+)"',
                                                h.read()))
    return names


def panels_of(panels):
    for p in panels:
        yield p
        yield from panels_of(p.get("panels") or [])


def check_grafana(root):
    path = os.path.join("deploy", "grafana", "imchat.json")
    try:
        with open(os.path.join(root, path)) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        error(path, f"JSON: {e}")
        return
    exported = exported_metric_names(root)
    if not exported:
        error(path, "no metric names found in the C sources")
    ids = set()
    exprs = 0
    for p in panels_of(dash.get("panels") or []):
        title = p.get("title")
        if p.get("id") in ids:
            error(path, f"panel {title!r}: id {p.get('id')} used twice")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            error(path, f"panel {title!r}: no gridPos")
        for t in p.get("targets") or []:
            expr = t.get("expr", "")
            exprs += 1
            names = re.findall(r"\bimchat_[a-zA-Z0-9_:]+", expr)
            if not names:
                error(path, f"panel {title!r}: no imchat metric in {expr!r}")
            for n in names:
                base = n
                for s in HISTOGRAM_SUFFIXES:
                    if n.endswith(s) and n[:-len(s)] in exported:
                        base = n[:-len(s)]
                if base not in exported and base not in CONTRACT_METRICS:
                    error(path, f"panel {title!r}: {n} is not exported by "
                          "the C sources")
    if exprs == 0:
        error(path, "no queries")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    root = sys.argv[1]
    load_flags(sys.argv[2])
    check_k8s(root)
    check_systemd(root)
    check_grafana(root)
    for e in errors:
        print(e)
    if errors:
        print(f"{len(errors)} problem(s) in deploy/")
        sys.exit(1)
    print("deploy/: manifests, units and dashboard check out")


if __name__ == "__main__":
    main()
