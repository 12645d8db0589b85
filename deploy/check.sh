#!/usr/bin/env bash
# CI check of deploy/: the manifests parse and agree with each other, the
# configs they carry are accepted by herald and nats-server, and every
# metric the Grafana dashboard queries exists on a real node.
#
#   bash deploy/check.sh          (after cargo build --release --workspace)
#
# 1. Parses every YAML file under deploy/ (all documents of each) and every
#    JSON file, then checks what ties them together: compose services,
#    Prometheus targets, Grafana datasource uid / dashboard provider path /
#    panels, Kubernetes selectors, ports, config references, probes and
#    grace periods.
# 2. herald --check-config on deploy/herald.toml (also with its commented
#    [cluster] section switched on), the ConfigMap's herald.toml, the
#    systemd cluster.env and each compose node's environment; nats-server -t on both nats.conf files;
#    systemd-analyze verify on the units (where systemd-analyze exists).
# 3. Starts nats-server (JetStream) and one release herald node in cluster
#    mode on free ports below the ephemeral range, drives a little traffic
#    (API publish, herald-load smoke: a WebSocket subscriber and a feed, a
#    refused feed, a client ERROR), reads /metrics and fails if a metric the
#    dashboard queries is missing or a rate() runs over a gauge.
#
# Bounded: the whole script runs under a 110 s timeout (DEPLOY_CHECK_TIMEOUT),
# every wait in it is short; it takes a few seconds.
# Optional, not in CI (downloads ~160 MB once): DEPLOY_CHECK_SCHEMAS=1 also
# validates the Kubernetes manifests against the API schemas and the
# compose file against the compose specification, in a cached virtualenv.
set -euo pipefail

if [ -z "${DEPLOY_CHECK_WRAPPED:-}" ]; then
    export DEPLOY_CHECK_WRAPPED=1
    exec timeout --kill-after=10s "${DEPLOY_CHECK_TIMEOUT:-110s}" bash "$0" "$@"
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
HERALD_BIN="${HERALD_BIN:-$ROOT/target/release/herald}"
HL_BIN="${HL_BIN:-$ROOT/target/release/herald-load}"
NATS_BIN="${NATS_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"

say() { echo "[deploy/check] $*"; }
die() { echo "[deploy/check] FAIL: $*" >&2; exit 1; }

WORK="$(mktemp -d -t herald-deploy-check.XXXXXX)"
HERALD_PID=""
NATS_PID=""
# herald first (it drains in 2 s), then NATS.
cleanup() {
    local rc=$?
    for pid in $HERALD_PID $NATS_PID; do
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/*.log; do
            [ -s "$f" ] || continue
            echo "---- last lines of $(basename "$f")"
            tail -15 "$f"
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

[ -x "$HERALD_BIN" ] || die "no $HERALD_BIN: cargo build --release --workspace"
[ -x "$HL_BIN" ] || die "no $HL_BIN: cargo build --release --workspace"
[ -x "$NATS_BIN" ] || die "no nats-server (apt-get install nats-server)"
command -v curl >/dev/null || die "needs curl"

# ---- PyYAML ----------------------------------------------------------------
if ! python3 -c 'import yaml' 2>/dev/null; then
    say "installing PyYAML"
    timeout 120 python3 -m pip install -q pyyaml >/dev/null 2>&1 ||
        timeout 120 python3 -m pip install -q --user --break-system-packages pyyaml >/dev/null 2>&1 ||
        { DEBIAN_FRONTEND=noninteractive timeout 120 apt-get install -y -q python3-yaml >/dev/null 2>&1; } ||
        true
    python3 -c 'import yaml' 2>/dev/null || die "cannot import yaml (pip install pyyaml)"
fi

# ---- 1. parse and cross-check the manifests ----------------------------------
say "1/3 manifests: parse and cross-check"
python3 - "$WORK" <<'PY'
import json, os, re, sys, tomllib
import yaml

work = sys.argv[1]
errors = []
def err(msg): errors.append(msg)

# Every YAML (all documents) and JSON file under deploy/.
docs = {}
for dirpath, _, files in os.walk("deploy"):
    for f in sorted(files):
        p = os.path.join(dirpath, f)
        try:
            if f.endswith((".yml", ".yaml")):
                with open(p) as fh:
                    docs[p] = [d for d in yaml.safe_load_all(fh) if d is not None]
            elif f.endswith(".json"):
                with open(p) as fh:
                    docs[p] = [json.load(fh)]
        except Exception as e:
            err(f"{p}: does not parse: {e}")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"  parsed {len(docs)} files: " + ", ".join(sorted(docs)))

def one(p):
    if p not in docs or len(docs[p]) != 1:
        err(f"{p}: expected exactly one document"); return {}
    return docs[p][0]

# ---- docker compose
compose = one("deploy/docker-compose.yml")
services = compose.get("services", {})
heralds = sorted(s for s in services if s.startswith("herald-"))
if len(heralds) != 3:
    err(f"docker-compose.yml: expected 3 herald services, found {heralds}")
for name, svc in services.items():
    if "image" not in svc and "build" not in svc:
        err(f"docker-compose.yml: service {name} has neither image nor build")
    deps = svc.get("depends_on", [])
    for d in (deps if isinstance(deps, list) else list(deps)):
        if d not in services:
            err(f"docker-compose.yml: {name} depends on unknown service {d}")
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            if not os.path.exists(os.path.join("deploy", src)):
                err(f"docker-compose.yml: {name} mounts missing {src}")
        elif src not in (compose.get("volumes") or {}):
            err(f"docker-compose.yml: {name} uses undeclared volume {src}")
host_ports, node_ids = [], []
nats_svcs = [s for s in services if s.startswith("nats")]
for name in heralds:
    env = services[name].get("environment", {})
    url = env.get("HERALD_CLUSTER__NATS_URL", "")
    m = re.match(r"nats://([^:/]+):(\d+)$", url)
    if not m or m.group(1) not in services:
        err(f"docker-compose.yml: {name}: HERALD_CLUSTER__NATS_URL {url!r} names no compose service")
    else:
        cmd = services[m.group(1)].get("command", [])
        cmd = cmd if isinstance(cmd, list) else cmd.split()
        if "-js" not in cmd and "--jetstream" not in cmd:
            err(f"docker-compose.yml: NATS service {m.group(1)} runs without -js (JetStream)")
    node_ids.append(env.get("HERALD_CLUSTER__NODE_ID", services[name].get("hostname", name)))
    for p in services[name].get("ports", []):
        host_ports.append(str(p).rsplit(":", 1)[0])
if len(set(node_ids)) != len(node_ids):
    err(f"docker-compose.yml: node ids are not unique: {node_ids}")
if len(set(host_ports)) != len(host_ports):
    err(f"docker-compose.yml: a host port is published twice: {host_ports}")

# ---- Prometheus: scrapes every herald service's admin port
prom = one("deploy/prometheus.yml")
targets = sorted(t for sc in prom.get("scrape_configs", [])
                 for st in sc.get("static_configs", []) for t in st.get("targets", []))
want = sorted(f"{h}:8782" for h in heralds)
if targets != want:
    err(f"prometheus.yml: targets {targets} != the compose herald services' admin ports {want}")

# ---- Grafana: datasource uid, provider path, dashboard
ds = one("deploy/grafana/provisioning/datasources/prometheus.yml")
ds_uids = {d.get("uid") for d in ds.get("datasources", [])}
if None in ds_uids:
    err("grafana datasource without a fixed uid (the dashboard refers to it)")
prov = one("deploy/grafana/provisioning/dashboards/herald.yml")
prov_paths = {p.get("options", {}).get("path") for p in prov.get("providers", [])}
graf_mounts = {v.split(":")[1]: v.split(":")[0]
               for v in services.get("grafana", {}).get("volumes", [])}
for path in prov_paths:
    if graf_mounts.get(path) != "./grafana/dashboards":
        err(f"dashboard provider path {path} is not where compose mounts ./grafana/dashboards")
if graf_mounts.get("/etc/grafana/provisioning") != "./grafana/provisioning":
    err("compose does not mount ./grafana/provisioning on /etc/grafana/provisioning")

dash = one("deploy/grafana/dashboards/herald.json")
for k in ("uid", "title", "schemaVersion", "panels"):
    if k not in dash:
        err(f"herald.json: no {k}")
exprs = []
ids = set()
def check_ds(where, d):
    if isinstance(d, dict) and d.get("type") == "prometheus" and d.get("uid") not in ds_uids:
        err(f"herald.json: {where}: datasource uid {d.get('uid')!r} is not a provisioned one {sorted(ds_uids)}")
def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))
for p in walk_panels(dash.get("panels", [])):
    where = f"panel {p.get('title')!r}"
    if p.get("id") in ids:
        err(f"herald.json: {where}: duplicate id {p.get('id')}")
    ids.add(p.get("id"))
    g = p.get("gridPos", {})
    if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
        err(f"herald.json: {where}: bad gridPos {g}")
    check_ds(where, p.get("datasource"))
    if p.get("type") != "row" and not p.get("targets"):
        err(f"herald.json: {where}: no queries")
    for t in p.get("targets", []):
        check_ds(where, t.get("datasource"))
        if not t.get("expr"):
            err(f"herald.json: {where}: a target without expr")
        exprs.append((where, t.get("expr", "")))
for v in dash.get("templating", {}).get("list", []):
    check_ds(f"variable {v.get('name')}", v.get("datasource"))
    q = v.get("query")
    exprs.append((f"variable {v.get('name')}", q.get("query", "") if isinstance(q, dict) else str(q or "")))
used = {}
rated = {}
for where, e in exprs:
    if e.count("(") != e.count(")") or e.count("{") != e.count("}"):
        err(f"herald.json: {where}: unbalanced brackets in {e!r}")
    for n in re.findall(r"\bherald_[a-zA-Z0-9_]+", e):
        used.setdefault(n, where)
    for n in re.findall(r"\b(?:rate|irate|increase)\(\s*(herald_[a-zA-Z0-9_]+)", e):
        rated.setdefault(n, where)
with open(os.path.join(work, "dashboard-metrics.json"), "w") as fh:
    json.dump({"used": used, "rated": rated}, fh)
print(f"  dashboard: {len(ids)} panels, {len(exprs)} queries, {len(used)} metric names")

# ---- Kubernetes
k8s = [(p, d) for p, ds_ in docs.items() if p.startswith("deploy/k8s/") for d in ds_]
by_kind = {}
for p, d in k8s:
    for k in ("apiVersion", "kind", "metadata"):
        if k not in d:
            err(f"{p}: a document without {k}")
    by_kind.setdefault(d.get("kind"), {})[d.get("metadata", {}).get("name")] = (p, d)
configmaps = by_kind.get("ConfigMap", {})
workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
pod_labels = {}
for name, (p, w) in workloads.items():
    sel = w["spec"]["selector"]["matchLabels"]
    labels = w["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        err(f"{p}: {name}: selector {sel} does not match the pod labels {labels}")
    pod_labels[name] = labels
    spec = w["spec"]["template"]["spec"]
    ports = {pt.get("name") for c in spec["containers"] for pt in c.get("ports", [])}
    pod_labels[name + "/ports"] = ports
    for c in spec["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref and ref["key"] not in (configmaps.get(ref["name"], (None, {}))[1].get("data") or {}):
                err(f"{p}: {name}: env {e['name']} refers to missing ConfigMap key {ref['name']}/{ref['key']}")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                err(f"{p}: {name}: {probe} uses unknown port name {port}")
    for v in spec.get("volumes", []):
        cm = v.get("configMap", {}).get("name")
        if cm and cm not in configmaps:
            err(f"{p}: {name}: volume {v['name']} refers to missing ConfigMap {cm}")
for name, (p, s) in by_kind.get("Service", {}).items():
    sel = s["spec"].get("selector", {})
    matches = [w for w in workloads if all(pod_labels[w].get(k) == v for k, v in sel.items())]
    if len(matches) != 1:
        err(f"{p}: Service {name}: selector {sel} matches workloads {matches}, expected one")
        continue
    for pt in s["spec"].get("ports", []):
        tp = pt.get("targetPort")
        if isinstance(tp, str) and tp not in pod_labels[matches[0] + "/ports"]:
            err(f"{p}: Service {name}: targetPort {tp} is no container port of {matches[0]}")
for name, (p, pdb) in by_kind.get("PodDisruptionBudget", {}).items():
    sel = pdb["spec"]["selector"]["matchLabels"]
    if not [w for w in workloads if all(pod_labels[w].get(k) == v for k, v in sel.items())]:
        err(f"{p}: PodDisruptionBudget {name} selects no workload")

herald = workloads.get("herald", (None, None))[1]
if not herald:
    err("deploy/k8s: no herald Deployment/StatefulSet")
else:
    spec = herald["spec"]["template"]["spec"]
    c = [c for c in spec["containers"] if c["name"] == "herald"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    for k in ("HERALD_CLUSTER__NATS_URL", "HERALD_CLUSTER__NODE_ID"):
        if k not in env:
            err(f"deploy/k8s: herald container has no {k}")
    if env.get("HERALD_CLUSTER__NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        err("deploy/k8s: HERALD_CLUSTER__NODE_ID should come from the pod name (metadata.name)")
    if herald["spec"].get("replicas", 1) < 3:
        err("deploy/k8s: herald should run 3 replicas")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        err("deploy/k8s: readinessProbe must be /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        err("deploy/k8s: livenessProbe must be /healthz (not /readyz: a NATS outage must not restart pods)")
    toml_text = configmaps.get("herald-config", (None, {}))[1].get("data", {}).get("herald.toml", "")
    cfg = tomllib.loads(toml_text)
    drain_s = cfg.get("timeouts", {}).get("drain_ms", 10000) / 1000
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre = float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= pre + drain_s:
        err(f"deploy/k8s: terminationGracePeriodSeconds {grace} <= preStop {pre} s + drain {drain_s} s")
    with open(os.path.join(work, "k8s-herald.toml"), "w") as fh:
        fh.write(toml_text)
nats_conf = configmaps.get("nats-config", (None, {}))[1].get("data", {}).get("nats.conf")
if nats_conf is None:
    err("deploy/k8s: no nats-config ConfigMap with nats.conf")
else:
    with open(os.path.join(work, "k8s-nats.conf"), "w") as fh:
        fh.write(nats_conf.replace("/data", os.path.join(work, "nats-k8s-store")))
cluster_url = configmaps.get("herald-cluster", (None, {}))[1].get("data", {}).get("nats-url", "")
nats_svcs = [n for n, (p, s) in by_kind.get("Service", {}).items()
             if any(pt.get("port") == 4222 for pt in s["spec"].get("ports", []))]
if not re.match(r"nats://(%s):4222$" % "|".join(map(re.escape, nats_svcs)), cluster_url):
    err(f"deploy/k8s: herald-cluster nats-url {cluster_url!r} is not one of the NATS Services {nats_svcs}")

# ---- herald.toml: the commented [cluster] section, switched on
lines, on = [], False
with open("deploy/herald.toml") as fh:
    for line in fh:
        if line.startswith("# [cluster]"):
            on = True
        elif on and not line.startswith("#"):
            break
        if on and re.match(r"# (\[cluster\]|[a-z_]+ = )", line):
            lines.append(line[2:])
if len(lines) < 10:
    err("deploy/herald.toml: no commented [cluster] section with its keys")
with open(os.path.join(work, "herald-cluster.toml"), "w") as fh:
    fh.writelines(lines)

if errors:
    print("\n".join("  " + e for e in errors))
    sys.exit(1)
print("  cross-checks ok")
PY

# ---- 2. the configs, by the programs that read them -------------------------
say "2/3 configs: herald --check-config, nats-server -t, systemd-analyze verify"
check_config() { # NAME FILE [VAR=VALUE...]
    local name=$1 file=$2
    shift 2
    env HERALD_AUTH__HS256_SECRET=deploy-check-secret-0123456789abcdef "$@" \
        timeout 10 "$HERALD_BIN" --config "$file" --check-config >"$WORK/check-config.out" 2>&1 ||
        { cat "$WORK/check-config.out"; die "$name: herald --check-config refused it"; }
    echo "  $name: $(cat "$WORK/check-config.out")"
}
check_config deploy/herald.toml deploy/herald.toml
touch "$WORK/nats.creds"
sed -i "s#^creds_file = .*#creds_file = \"$WORK/nats.creds\"#" "$WORK/herald-cluster.toml"
check_config "deploy/herald.toml [cluster] uncommented" "$WORK/herald-cluster.toml"
check_config "k8s ConfigMap herald.toml" "$WORK/k8s-herald.toml" \
    HERALD_CLUSTER__NATS_URL=nats://nats:4222 HERALD_CLUSTER__NODE_ID=herald-7c9d5b-x2k4q
mapfile -t cluster_env < <(grep -E '^[A-Z_]+=' deploy/systemd/cluster.env)
check_config "systemd cluster.env" deploy/herald.toml "${cluster_env[@]}"
# Each compose node: the file it mounts with the environment it sets (the
# secret, feed tokens, API keys, the local Origin allow-list, cluster keys).
for svc in herald-1 herald-2 herald-3; do
    mapfile -t compose_env < <(python3 - "$svc" <<'PY'
import sys, yaml
svc = yaml.safe_load(open("deploy/docker-compose.yml"))["services"][sys.argv[1]]
for k, v in (svc.get("environment") or {}).items():
    print(f"{k}={v}")
PY
)
    ((${#compose_env[@]})) || die "docker-compose.yml: $svc sets no environment"
    check_config "docker-compose $svc" deploy/herald.toml "${compose_env[@]}"
done

sed "s#/var/lib/nats-server#$WORK/nats-systemd-store#" deploy/systemd/nats-server.conf >"$WORK/systemd-nats.conf"
for f in k8s-nats.conf systemd-nats.conf; do
    timeout 10 "$NATS_BIN" -c "$WORK/$f" -t >"$WORK/nats-t.out" 2>&1 ||
        { cat "$WORK/nats-t.out"; die "$f: nats-server -t refused it"; }
    echo "  $f: $(cat "$WORK/nats-t.out")"
done

if command -v systemd-analyze >/dev/null; then
    # The unit as installed, with ExecStart pointing at the binary we have;
    # the drop-in beside it. Any complaint that names our files fails.
    mkdir -p "$WORK/units/herald.service.d"
    sed "s#/usr/local/bin/herald#$HERALD_BIN#" deploy/systemd/herald.service >"$WORK/units/herald.service"
    cp deploy/systemd/herald.service.d/cluster.conf "$WORK/units/herald.service.d/"
    SYSTEMD_UNIT_PATH="$WORK/units:" timeout 20 systemd-analyze verify herald.service \
        >"$WORK/verify.out" 2>&1 || true
    if grep -E "herald\.service|cluster\.conf" "$WORK/verify.out"; then
        die "systemd-analyze verify complains about the unit or its drop-in"
    fi
    echo "  systemd units: ok$([ -s "$WORK/verify.out" ] && echo " (other output: $(tr '\n' ' ' <"$WORK/verify.out"))")"
else
    echo "  systemd units: skipped (no systemd-analyze)"
fi

if [ "${DEPLOY_CHECK_SCHEMAS:-}" = 1 ]; then
    venv="${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/herald-deploy-check}"
    if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/check-jsonschema" ]; then
        say "installing kubernetes-validate and check-jsonschema into $venv"
        python3 -m venv "$venv" && timeout 90 "$venv/bin/pip" install -q kubernetes-validate check-jsonschema
    fi
    timeout 60 "$venv/bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml
    timeout 30 "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
fi

# ---- 3. a real node: every metric the dashboard queries ---------------------
say "3/3 metrics: one cluster-mode node with some traffic"
# A TCP port no socket uses in any state, below the ephemeral range.
free_port() {
    local p=$1
    while ss -Htan "sport = :$p" | grep -q .; do p=$((p + 1)); done
    echo "$p"
}
nats_port=$(free_port 26222)
ws_port=$(free_port 26780)
ingest_port=$(free_port $((ws_port + 1)))
admin_port=$(free_port $((ingest_port + 1)))
admin="127.0.0.1:$admin_port"
secret=deploy-check-secret-0123456789abcdef

"$NATS_BIN" -a 127.0.0.1 -p "$nats_port" -js -sd "$WORK/nats-store" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
HERALD_LISTEN__WS="127.0.0.1:$ws_port" HERALD_LISTEN__INGEST="127.0.0.1:$ingest_port" \
    HERALD_LISTEN__ADMIN="$admin" HERALD_AUTH__HS256_SECRET="$secret" \
    HERALD_INGEST__TOKENS='["deploy-check-feed"]' HERALD_API__KEYS='["deploy-check-key"]' \
    HERALD_SHARDS__COUNT=1 HERALD_TIMEOUTS__DRAIN_MS=2000 \
    HERALD_CLUSTER__NATS_URL="nats://127.0.0.1:$nats_port" HERALD_CLUSTER__NODE_ID=deploy-check \
    HERALD_LOG__FORMAT=text NO_COLOR=1 "$HERALD_BIN" >"$WORK/herald.log" 2>&1 &
HERALD_PID=$!
for _ in $(seq 150); do
    curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break
    kill -0 "$HERALD_PID" 2>/dev/null || die "herald exited at start"
    sleep 0.1
done
curl -sf "http://$admin/readyz" >/dev/null || die "herald not ready (connected to NATS) within 15 s"
echo "  nats 127.0.0.1:$nats_port, herald ws :$ws_port ingest :$ingest_port admin :$admin_port: ready"

reply=$(curl -sf -m 5 -X POST -H 'Authorization: Bearer deploy-check-key' \
    --data-binary 'deploy check' "http://$admin/api/publish/deploy.check") ||
    die "API publish failed"
echo "  API publish: $reply"
timeout 30 "$HL_BIN" smoke --url "ws://127.0.0.1:$ws_port/ws" --secret "$secret" \
    --ingest "127.0.0.1:$ingest_port" --feed-token deploy-check-feed | sed 's/^/  /' ||
    die "herald-load smoke failed"

# What the smoke does not touch: a refused feed (herald_ingest_errors_total)
# and a client ERROR (herald_client_errors_total), from a hand-made
# WebSocket client.
{ timeout 15 python3 - "$ingest_port" "$ws_port" "$secret" | sed 's/^/  /'; } <<'PY' ||
import base64, hashlib, hmac, json, os, socket, struct, sys, time
ingest, ws, secret = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()

def mp_str(s):
    b = s.encode(); assert len(b) < 32; return bytes([0xa0 | len(b)]) + b

f = socket.create_connection(("127.0.0.1", ingest), timeout=5)
hello = b"\x93\x01" + mp_str("not-a-feed-token") + mp_str("deploy-check")
f.sendall(struct.pack(">I", len(hello)) + hello)
reply = f.recv(100)
assert reply[4:6] == b"\x93\x00", f"expected ERROR for a bad feed token, got {reply!r}"
print("feed with a bad token: ERROR", int.from_bytes(reply[7:9], "big"))
f.close()

b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "deploy-check", "exp": int(time.time()) + 300, "topics": ["*"]}).encode())
jwt = head + b"." + body + b"." + b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
c = socket.create_connection(("127.0.0.1", ws), timeout=5)
c.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: herald.v1\r\n"
          b"Authorization: Bearer " + jwt + b"\r\n\r\n")
resp = b""
while b"\r\n\r\n" not in resp:
    resp += c.recv(4096)
assert resp.startswith(b"HTTP/1.1 101"), resp[:80]
rest = resp.split(b"\r\n\r\n", 1)[1]

def send(opcode, payload):
    mask = os.urandom(4)
    assert len(payload) < 126
    c.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
              + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

send(0x2, b"\x93\x01\x01" + mp_str("not a topic!"))   # SUBSCRIBE, invalid name
while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7f):
    rest += c.recv(4096)
frame = rest[2:2 + (rest[1] & 0x7f)]
assert frame[:2] == b"\x94\x12", f"expected ERROR, got {frame!r}"
code = {0xcc: frame[4:5], 0xcd: frame[4:6]}.get(frame[3], frame[3:4])
print("SUBSCRIBE to an invalid topic: ERROR", int.from_bytes(code, "big"))
send(0x8, struct.pack(">H", 1000))
c.settimeout(3)
try:
    while c.recv(4096):
        pass
except OSError:
    pass
c.close()
PY
    die "the error traffic did not go as expected"
sleep 1.2   # herald_topics and other gauges are refreshed once a second
curl -sf -m 5 "http://$admin/metrics" >"$WORK/metrics.txt" || die "cannot read /metrics"

python3 - "$WORK/metrics.txt" "$WORK/dashboard-metrics.json" <<'PY' ||
import json, re, sys
text = open(sys.argv[1]).read()
dash = json.load(open(sys.argv[2]))
types = dict(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
samples = {}
for line in text.splitlines():
    m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
    if m:
        samples.setdefault(m.group(1), []).append((m.group(2) or "", m.group(3)))

def family(name):
    """The metric family a sample name belongs to, and its type."""
    if name in types:
        return name, types[name]
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            return base, types[base]
    return None, None

# Created on their first event, which this check does not provoke: they are
# allowed to be absent, but must still be metrics herald defines.
ABSENT_OK = {
    "herald_accept_errors_total": "counted on the first failed accept(2) (e.g. out of descriptors)",
}
src = open("src/metrics.rs").read()
missing, wrong = [], []
for name, where in sorted(dash["used"].items()):
    fam, typ = family(name)
    if name in samples:
        pass
    elif name in types and typ in ("histogram", "summary"):
        wrong.append(f"{name} ({where}) is a {typ}: query {name}_bucket / _sum / _count")
    elif name in ABSENT_OK and f'"{name}"' in src:
        print(f"  {name}: absent, allowed: {ABSENT_OK[name]}")
    else:
        missing.append(f"{name} ({where})" + (f": the {typ} {fam} has no such series" if fam else ""))
for name, where in sorted(dash["rated"].items()):
    fam, typ = family(name)
    if name in samples and not (typ == "counter" or (fam != name and typ == "histogram")):
        wrong.append(f"{name} ({where}): rate()/increase() over a {typ}")
if samples.get("herald_broker_connected", [("", "0")])[0][1] != "1":
    wrong.append("herald_broker_connected is not 1 on a node connected to NATS")
exported = sorted({family(n)[0] or n for n in samples if n.startswith("herald_")})
used_fams = {family(n)[0] or n for n in dash["used"]}
print(f"  /metrics: {len(exported)} herald metric families; the dashboard uses {len(used_fams & set(exported))} of them")
unused = [n for n in exported if n not in used_fams]
if unused:
    print("  not on the dashboard (fine): " + ", ".join(unused))
for m in missing:
    print(f"  MISSING on /metrics: {m}")
for w in wrong:
    print(f"  WRONG: {w}")
sys.exit(1 if missing or wrong else 0)
PY
    die "the dashboard queries metrics that a node does not export"

# SIGTERM: drain and exit 0.
kill -TERM "$HERALD_PID"
st=0
for _ in $(seq 80); do kill -0 "$HERALD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$HERALD_PID" 2>/dev/null && die "herald still running 8 s after SIGTERM (drain_ms is 2 s)"
wait "$HERALD_PID" || st=$?
HERALD_PID=""
[ "$st" -eq 0 ] || die "herald exited with status $st after SIGTERM"
echo "  herald drained and exited 0"
say "ok"
