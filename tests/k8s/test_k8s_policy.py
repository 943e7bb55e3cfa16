"""Policy checks over the rendered objects of the base and every overlay: the
hardening of every container, probes, images, secrets, the connection budget,
the shape of each component and the one nginx configuration."""

import json
import re
import tomllib

import pytest

from k8s_manifests import (
    K8S,
    NAMESPACE,
    OVERLAYS,
    REPO,
    containers,
    env_of,
    labels_match,
    objects,
    one,
    render,
    render_text,
    workloads,
)

CONTRACT = json.loads((REPO / "nix" / "contract.json").read_text())
VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
FLAKE_IMAGES = {CONTRACT[c]["image"] for c in ("api", "proxy", "db")}
MARIADB_DEFAULT_MAX_CONNECTIONS = 151
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def pods(docs):
    return list(workloads(docs))


def mounts(container):
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def volume(pod_spec, name):
    return next(v for v in pod_spec.get("volumes", []) if v["name"] == name)


def port_number(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container.get("ports", []) if p["name"] == port)


# ---- hardening ---------------------------------------------------------------------------------

# What each workload runs: the CronJob runs the db image's backup tool (db/BACKUP.md).
IMAGE_OF = {"api": "api", "proxy": "proxy", "db": "db", "db-backup": "db", "binlog-archiver": "db"}
# The workloads that run the db image's backup tool instead of its server (contract: backupCommand).
BACKUP_TOOL = {"db-backup", "binlog-archiver"}


def is_job(d):
    return d["kind"] in ("CronJob", "Job")


def test_there_are_the_five_workloads(docs):
    assert sorted((d["kind"], d["metadata"]["name"]) for d, _ in pods(docs)) == [
        ("CronJob", "db-backup"), ("Deployment", "api"), ("Deployment", "binlog-archiver"),
        ("Deployment", "proxy"), ("StatefulSet", "db")]


def test_the_backup_job_runs_alone_and_bounded(docs):
    job = one(docs, "CronJob", "db-backup")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    c = spec["containers"][0]
    assert mounts(c).get(CONTRACT["db"]["backupDir"]), "backups land in their own volume"
    claim = volume(spec, mounts(c)[CONTRACT["db"]["backupDir"]])["persistentVolumeClaim"]["claimName"]
    one(docs, "PersistentVolumeClaim", claim)
    env = env_of(c)
    assert env["DB_HOST"] == "db" and env["BACKUP_USER"] == "backup", env
    db_env = env_of(one(docs, "StatefulSet", "db")["spec"]["template"]["spec"]["containers"][0])
    assert db_env["BACKUP_USER"] == env["BACKUP_USER"], "the db creates the account the job uses"
    assert db_env["MYSQL_DATABASE"] == env["DB_NAME"]


def test_one_archiver_streams_into_the_backups_volume_beside_the_job(docs):
    archiver = one(docs, "Deployment", "binlog-archiver")
    assert archiver["spec"]["replicas"] == 1 and archiver["spec"]["strategy"] == {"type": "Recreate"}, \
        "two streams would write the same files"
    spec = archiver["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["args"] == ["archive"], c["args"]
    job = one(docs, "CronJob", "db-backup")["spec"]["jobTemplate"]["spec"]["template"]
    (jc,) = job["spec"]["containers"]
    backups = CONTRACT["db"]["backupDir"]
    claim = volume(spec, mounts(c)[backups])["persistentVolumeClaim"]["claimName"]
    assert claim == volume(job["spec"], mounts(jc)[backups])["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    # ReadWriteOnce: the job's pods go to the archiver's node
    (term,) = job["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert labels_match(term["labelSelector"], archiver["spec"]["template"]["metadata"]["labels"])
    assert not labels_match(term["labelSelector"], job["metadata"]["labels"])
    env, job_env = env_of(c), env_of(jc)
    for key in ("DB_HOST", "DB_PORT", "DB_NAME", "BACKUP_USER", "BACKUP_PASSWORD_FILE"):
        assert env[key] == job_env[key], key
    # its probes are the tool's own health check
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"][:2] == [CONTRACT["db"]["backupCommand"], "archive-health"], probe


def test_every_pod_is_hardened(docs):
    for d, spec in pods(docs):
        name = d["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), (name, host)
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, name
        assert psc.get("runAsUser", 0) != 0 and psc.get("runAsGroup", 0) != 0, name
        assert psc.get("seccompProfile") == {"type": "RuntimeDefault"}, name


def test_every_container_is_hardened(docs):
    for d, spec in pods(docs):
        psc = spec.get("securityContext", {})
        for c in containers(spec):
            where = f"{d['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("privileged") is not True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, where
            assert sc.get("seccompProfile", psc.get("seccompProfile")) == {"type": "RuntimeDefault"}, where


def test_every_container_has_a_memory_emptydir_tmp(docs):
    for d, spec in pods(docs):
        for c in containers(spec):
            vol = mounts(c).get("/tmp")
            assert vol, f"{d['metadata']['name']}/{c['name']} has no /tmp mount"
            ed = volume(spec, vol).get("emptyDir")
            assert ed is not None and ed.get("medium") == "Memory" and ed.get("sizeLimit"), (d["metadata"]["name"], ed)


def test_users_are_the_images_users(docs):
    for d, spec in pods(docs):
        component = d["metadata"]["name"]
        uid, gid = (int(x) for x in CONTRACT[IMAGE_OF[component]]["user"].split(":"))
        psc = spec["securityContext"]
        assert (psc["runAsUser"], psc["runAsGroup"]) == (uid, gid), component
        # Secret files and volumes are group-readable through fsGroup.
        assert psc.get("fsGroup") == gid, component


def test_every_container_has_probes_and_resources(docs):
    for d, spec in pods(docs):
        for c in spec["containers"]:
            where = f"{d['metadata']['name']}/{c['name']}"
            # A job serves nothing: it is bounded by activeDeadlineSeconds instead.
            for probe in () if is_job(d) else ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where} has no {probe}"
            res = c.get("resources", {})
            for kind in ("cpu", "memory"):
                assert kind in res.get("requests", {}), (where, "requests", kind)
                assert kind in res.get("limits", {}), (where, "limits", kind)
            # Memory: request = limit (no overcommit: the figure is a measured peak plus margin).
            assert res["requests"]["memory"] == res["limits"]["memory"], where


def test_images_are_pinned(target, docs):
    for d, spec in pods(docs):
        for c in containers(spec):
            image = c["image"]
            if target != "overlays/production":
                # The flake's names and tags: Cargo.toml's version (built here, never pulled).
                name, _, tag = image.rpartition(":")
                assert name in FLAKE_IMAGES and tag == VERSION, image
            else:
                # From a registry: by the digest the release wrote (release/), never by a tag
                # (what checkov's CKV_K8S_43 asks), not even beside the digest.
                name, at, digest = image.partition("@")
                assert at and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{image}: not by digest"
                assert ":" not in name.rpartition("/")[2], f"{image}: a tag beside the digest"
                assert name.split("/")[-1] in FLAKE_IMAGES, image


def test_local_overlay_never_pulls():
    for d, spec in pods(render("overlays/local")):
        for c in containers(spec):
            assert c["imagePullPolicy"] == "Never", d["metadata"]["name"]


def test_entrypoints_are_the_images(docs):
    """No command override: the images' entrypoints (contract.json) run as built; the backup
    job runs the db image's backup tool, which the contract names too."""
    for d, spec in pods(docs):
        for c in spec["containers"]:
            if d["metadata"]["name"] in BACKUP_TOOL:
                assert c["command"] == [CONTRACT["db"]["backupCommand"]], c["command"]
            else:
                assert "command" not in c, d["metadata"]["name"]


# ---- secrets -----------------------------------------------------------------------------------

SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY", re.I)


def test_no_secret_in_the_rendered_objects(target, docs):
    assert not objects(docs, "Secret"), "a Secret in the manifests would be committed: create it with kubectl"
    for d, spec in pods(docs):
        for c in containers(spec):
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]):
                    # Only paths to files: passwords never in an env value, also not via secretKeyRef.
                    assert e["name"].endswith("_FILE") and e.get("value", "").startswith("/run/secrets/"), e
                assert "secretKeyRef" not in e.get("valueFrom", {}), e
            assert not any("secretRef" in f for f in c.get("envFrom", [])), c["name"]
    # Any password file this checkout has (compose's ./secrets, or one under k8s/) is absent.
    text = render_text(target)
    for f in [*REPO.glob("secrets/*"), *K8S.rglob("secrets/*")]:
        if f.is_file():
            value = f.read_text(errors="replace").strip()
            if len(value) >= 8:
                assert value not in text, f"the content of {f} is in the rendered k8s/{target}"


def test_secret_files_come_from_db_credentials(docs):
    """Both workloads mount the one Secret the README tells to create, and
    every *_FILE variable names a file that the mount really provides."""
    readme = (K8S / "README.md").read_text()
    assert re.search(r"kubectl[^\n]*create secret generic db-credentials", readme)
    for key in ("db_password", "db_root_password", "db_backup_password"):
        assert f"--from-file={key}=" in readme, key
    for d, spec in pods(docs):
        if d["metadata"]["name"] == "proxy":
            assert not any("secret" in v for v in spec.get("volumes", [])), "the proxy needs no secret"
            continue
        c = spec["containers"][0]
        provided = {}
        pod_volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for path, vol_name in mounts(c).items():
            secret = pod_volumes.get(vol_name, {}).get("secret")  # (claim templates are not in volumes)
            if secret:
                assert secret["secretName"] == "db-credentials"
                assert secret.get("defaultMode") == 0o440
                for item in secret["items"]:
                    provided[f"{path}/{item['path']}"] = item["key"]
        files = {k: v for k, v in env_of(c).items() if k.endswith("_FILE")}
        assert files, d["metadata"]["name"]
        for var, path in files.items():
            assert path in provided, (var, path, provided)
            assert provided[path] == path.rsplit("/", 1)[1]
    api = one(docs, "Deployment", "api")["spec"]["template"]["spec"]["volumes"]
    api_keys = [i["key"] for v in api if "secret" in v for i in v["secret"]["items"]]
    assert api_keys == ["db_password"], "the api gets its own password, not root's"


# ---- the connection budget ---------------------------------------------------------------------

def max_surge(deployment, replicas):
    surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    if isinstance(surge, str) and surge.endswith("%"):
        return -(-replicas * int(surge[:-1]) // 100)
    return int(surge)


def db_max_connections(docs):
    c = one(docs, "StatefulSet", "db")["spec"]["template"]["spec"]["containers"][0]
    for arg in c.get("args", []):
        m = re.fullmatch(r"--max[-_]connections=(\d+)", arg)
        if m:
            return int(m.group(1))
    return MARIADB_DEFAULT_MAX_CONNECTIONS


def connection_budget(docs):
    api = one(docs, "Deployment", "api")
    hpa = one(docs, "HorizontalPodAutoscaler", "api")
    pool = env_of(api["spec"]["template"]["spec"]["containers"][0]).get("DATABASE_MAX_CONNECTIONS")
    assert pool is not None, "DATABASE_MAX_CONNECTIONS must be set explicitly: the budget counts on it"
    most = hpa["spec"]["maxReplicas"]
    return int(pool), most, max_surge(api, most), db_max_connections(docs)


def test_pool_times_replicas_stays_under_max_connections(target, docs):
    pool, most, surge, limit = connection_budget(docs)
    assert pool * most < limit, f"{pool} x {most} >= {limit}"
    # Stricter: also during a rollout at maxReplicas (maxSurge extra pods), with a few
    # connections left for the db's healthcheck login and an operator.
    assert pool * (most + surge) + 4 <= limit, f"{pool} x ({most} + {surge}) + 4 > {limit}"
    print(f"k8s/{target}: {pool} x ({most} + {surge}) = {pool * (most + surge)} < {limit}")


def test_the_budget_comments_say_the_rendered_numbers():
    """api.yaml (base) and the production patch state the arithmetic: keep
    them in step with the objects."""
    for target, path in (("base", K8S / "base" / "api.yaml"),
                         ("overlays/production", K8S / "overlays" / "production" / "api.yaml")):
        pool, most, surge, limit = connection_budget(render(target))
        text = path.read_text()
        expected = f"{pool} x ({most} + {surge}) = {pool * (most + surge)}"
        flat = re.sub(r"\s+", " ", re.sub(r"#", "", text))
        assert re.search(rf"{pool} x \(?(HPA maxReplicas )?{most} \+ (maxSurge )?{surge}\)? = {pool * (most + surge)}", flat) \
            or expected in flat, f"{path} does not say {expected}"
        assert str(limit) in text


# ---- db ----------------------------------------------------------------------------------------

def test_db_statefulset(docs):
    sts = one(docs, "StatefulSet", "db")
    spec = sts["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert sts["spec"]["replicas"] == 1
    svc = one(docs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "the governing Service is headless"
    assert labels_match({"matchLabels": svc["spec"]["selector"]}, sts["spec"]["template"]["metadata"]["labels"])
    assert [p["port"] for p in svc["spec"]["ports"]] == [3306]
    # Data on the claim template, socket and temp files in memory (root is read-only).
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    m = mounts(c)
    assert m[CONTRACT["db"]["dataDir"]] in claims
    for path in ("/run/mysqld", "/tmp"):
        assert volume(spec, m[path])["emptyDir"]["medium"] == "Memory", path
    # InnoDB's clean shutdown: at least compose's 60 s.
    assert spec["terminationGracePeriodSeconds"] >= 60
    # The image's own healthcheck as exec probes.
    healthcheck = CONTRACT["db"]["healthcheck"][1:]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"] == healthcheck, probe
    env = env_of(c)
    for var in ("MYSQL_DATABASE", "MYSQL_USER", "MYSQL_PASSWORD_FILE", "MYSQL_ROOT_PASSWORD_FILE"):
        assert env.get(var), var
    assert port_number(c, "mysql") == 3306


# ---- api ---------------------------------------------------------------------------------------

def test_api_deployment(docs):
    dep = one(docs, "Deployment", "api")
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    hpa = one(docs, "HorizontalPodAutoscaler", "api")
    assert dep["spec"]["replicas"] >= 2
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    rolling = dep["spec"]["strategy"]["rollingUpdate"]
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate" and rolling["maxUnavailable"] == 0
    assert rolling["maxSurge"] not in (0, "0%")
    # Probes: readiness asks the database, liveness and startup do not.
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and port_number(c, get["port"]) == 8000, probe
    # Startup covers DATABASE_STARTUP_TIMEOUT (60 s) plus migrations.
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 60 + 20
    # Spread: topology constraints (or anti-affinity) over hosts, selecting these pods.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    spread = spec.get("topologySpreadConstraints", [])
    anti = spec.get("affinity", {}).get("podAntiAffinity")
    assert anti or any(t["topologyKey"] == "kubernetes.io/hostname" and labels_match(t["labelSelector"], labels)
                       for t in spread)
    pdb = one(docs, "PodDisruptionBudget", "api")
    assert labels_match(pdb["spec"]["selector"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1
    svc = one(docs, "Service", "api")
    assert labels_match({"matchLabels": svc["spec"]["selector"]}, labels)
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 8000 and port_number(c, port["targetPort"]) == 8000


def test_api_environment_matches_the_db_and_compose(docs):
    api = env_of(one(docs, "Deployment", "api")["spec"]["template"]["spec"]["containers"][0])
    db = env_of(one(docs, "StatefulSet", "db")["spec"]["template"]["spec"]["containers"][0])
    assert api["DATABASE_HOST"] == "db" and one(docs, "Service", "db")
    assert api["DATABASE_PORT"] == "3306"
    assert api["DATABASE_NAME"] == db["MYSQL_DATABASE"]
    assert api["DATABASE_USER"] == db["MYSQL_USER"]
    assert api["DATABASE_PASSWORD_FILE"] == db["MYSQL_PASSWORD_FILE"]
    assert "DATABASE_PASSWORD" not in api and "DATABASE_URL" not in api
    # ROCKET_* as in compose (and the image's Env in contract.json).
    for pair in CONTRACT["api"]["env"]:
        k, v = pair.split("=", 1)
        assert api[k] == v, k


# ---- proxy and the one nginx configuration -----------------------------------------------------

def nginx_config(docs):
    proxy = one(docs, "Deployment", "proxy")["spec"]["template"]["spec"]
    c = proxy["containers"][0]
    vol = volume(proxy, mounts(c)[CONTRACT["proxy"]["configDir"]])
    return one(docs, "ConfigMap", vol["configMap"]["name"])


def shipped_includes():
    """The files nginx/nginx.conf includes from its own directory (globs excepted)."""
    conf = (REPO / "nginx" / "nginx.conf").read_text()
    names = re.findall(r"^\s*include\s+([^;\s]+)\s*;", conf, re.M)
    return sorted(n for n in names if "*" not in n)


def test_proxy_deployment(docs):
    dep = one(docs, "Deployment", "proxy")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["spec"]["replicas"] >= 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and port_number(c, get["port"]) == 8081, probe
    assert "args" not in c, "the image's entrypoint and its -p /tmp/ -c /etc/nginx/nginx.conf"
    svc = one(docs, "Service", "proxy")
    assert labels_match({"matchLabels": svc["spec"]["selector"]}, dep["spec"]["template"]["metadata"]["labels"])
    assert [port_number(c, p["targetPort"]) for p in svc["spec"]["ports"]] == [8080]
    pdb = one(docs, "PodDisruptionBudget", "proxy")
    assert labels_match(pdb["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])


def test_configmap_nginx_conf_is_byte_identical(docs):
    cm = nginx_config(docs)
    assert cm["data"]["nginx.conf"] == (REPO / "nginx" / "nginx.conf").read_text(), \
        "nginx.conf is never edited for Kubernetes"
    assert (REPO / "nginx" / "nginx.conf").read_bytes() == cm["data"]["nginx.conf"].encode()


def test_configmap_has_every_include_and_nothing_else(docs):
    cm = nginx_config(docs)
    assert sorted(cm["data"]) == sorted(["nginx.conf", *shipped_includes()])
    assert "binaryData" not in cm


def replaced_files(target):
    """Include files the kustomizations from the base up to `target` put over nginx/'s:
    the *.conf files next to each kustomization.yaml, the later one winning."""
    chain = [K8S / "base"] + ([K8S / target] if target != "base" else [])
    replaced = {}
    for directory in chain:
        for path in sorted(directory.glob("*.conf")):
            replaced[path.name] = path.read_text()
    return replaced


def test_overlays_replace_only_the_include_files_they_must(target, docs):
    """Every file not replaced is byte-identical to nginx/; the replaced ones
    are exactly the files next to the kustomizations; nginx.conf never is
    among them."""
    cm = nginx_config(docs)
    replaced = replaced_files(target)
    assert "nginx.conf" not in replaced
    assert set(replaced) <= set(shipped_includes())
    for name, content in cm["data"].items():
        expected = replaced.get(name, (REPO / "nginx" / name).read_text())
        assert content == expected, f"{name} in k8s/{target}"


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_nginx_workers_match_the_cpu_limit(docs):
    """nginx counts the node's CPUs for `auto`: workers.conf pins the count to the container's
    CPU limit instead."""
    cm = nginx_config(docs)
    (workers,) = re.findall(r"^\s*worker_processes\s+(\S+)\s*;", cm["data"]["workers.conf"], re.M)
    c = one(docs, "Deployment", "proxy")["spec"]["template"]["spec"]["containers"][0]
    limit = cpus(c["resources"]["limits"]["cpu"])
    assert workers != "auto" and int(workers) == max(1, int(limit)), (workers, limit)


def test_upstream_is_the_api_service_through_the_cluster_dns(docs):
    """nginx's resolver sees no search domains: the upstream names the api Service in full, in
    the proxy's namespace, and follows it (`resolve`) through the cluster DNS, which the proxy's
    NetworkPolicy lets it reach."""
    cm = nginx_config(docs)
    svc = one(docs, "Service", "api")
    proxy = one(docs, "Deployment", "proxy")
    namespace = svc["metadata"]["namespace"]
    assert namespace == proxy["metadata"]["namespace"]
    servers = re.findall(r"^\s*server\s+([^;]+);", cm["data"]["upstream.conf"], re.M)
    assert servers == [f"api.{namespace}.svc.cluster.local:8000 resolve"], servers
    resolvers = re.findall(r"^\s*resolver\s+([^;]+);", cm["data"]["resolver.conf"], re.M)
    assert len(resolvers) == 1, resolvers
    words = resolvers[0].split()
    assert words[0] == "kube-dns.kube-system.svc.cluster.local", words
    (valid,) = [w for w in words if w.startswith("valid=")]
    assert int(valid.removeprefix("valid=").removesuffix("s")) <= 10, valid
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"].get("clusterIP") != "None", \
        "a stable ClusterIP: kube-proxy spreads connections over the ready pods only"


def test_a_rollout_loses_no_request(docs):
    """Readiness gates traffic (readinessProbe on /readyz), no old pod goes before a new one is
    ready (maxUnavailable 0), and a terminating pod keeps serving while the endpoint change
    reaches every node (preStop), all within its grace period."""
    dep = one(docs, "Deployment", "api")
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == [CONTRACT["api"]["entrypoint"][0], "pre-stop"], command
    pre_stop = int(command[2])
    assert 3 <= pre_stop <= 60, pre_stop
    grace, mercy = 2, 3  # Rocket's shutdown defaults (src/README.md, "Configuration")
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + grace + mercy + 1


def test_listen_ports_match_the_container_ports(docs):
    cm = nginx_config(docs)
    c = one(docs, "Deployment", "proxy")["spec"]["template"]["spec"]["containers"][0]
    listens = sorted(int(m) for m in re.findall(r"^\s*listen\s+(\d+)", cm["data"]["listen.conf"] + cm["data"]["status-listen.conf"], re.M))
    assert listens == sorted(p["containerPort"] for p in c["ports"]) == [8080, 8081]


def test_production_terminates_tls_at_the_ingress_for_every_host():
    """cert-manager fills the Secret, ingress-nginx serves it, redirects HTTP; the proxy pods stay
    plain HTTP (no tls*.conf in their ConfigMap: nginx.conf includes it by glob)."""
    docs = render("overlays/production")
    ingress = one(docs, "Ingress", "user-api")
    annotations = ingress["metadata"]["annotations"]
    assert annotations.get("cert-manager.io/cluster-issuer"), annotations
    assert annotations.get("nginx.ingress.kubernetes.io/ssl-redirect") == "true", annotations
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    covered = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    assert hosts <= covered, f"hosts without TLS: {hosts - covered}"
    assert all(tls.get("secretName") for tls in ingress["spec"]["tls"])
    assert "include tls*.conf;" in nginx_config(docs)["data"]["nginx.conf"]
    assert not [name for name in nginx_config(docs)["data"] if name.startswith("tls")]


def test_production_trusts_a_forwarded_client_address():
    cm = nginx_config(render("overlays/production"))
    conf = cm["data"]["real-ip.conf"]
    assert re.search(r"^set_real_ip_from\s+\S+;", conf, re.M)
    assert re.search(r"^real_ip_header\s+X-Forwarded-For;", conf, re.M)
    assert re.search(r"^real_ip_recursive\s+on;", conf, re.M)
    assert not re.search(r"^set_real_ip_from\s+(0\.0\.0\.0/0|::/0|all)\s*;", conf, re.M), "trust everybody = trust nobody's address"


# ---- namespace, labels, services -----------------------------------------------------------------

def test_namespace_and_pod_security(docs):
    (ns,) = objects(docs, "Namespace")
    assert ns["metadata"]["name"] == NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") == NAMESPACE, (d["kind"], d["metadata"]["name"])
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "user-api", d["metadata"]["name"]


def test_no_service_links(docs):
    """Service links would put DB_PORT=tcp://… style variables into every pod."""
    for d, spec in pods(docs):
        assert spec.get("enableServiceLinks") is False, d["metadata"]["name"]


def test_every_service_selects_pods_and_named_ports(docs):
    templates = [(d["spec"]["template"]["metadata"]["labels"], spec)
                 for d, spec in pods(docs) if not is_job(d)]
    for svc in objects(docs, "Service"):
        matched = [spec for labels, spec in templates if labels_match({"matchLabels": svc["spec"]["selector"]}, labels)]
        assert len(matched) == 1, svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            port_number(matched[0]["containers"][0], p["targetPort"])


# ---- network policies --------------------------------------------------------------------------

OUTSIDE = {"namespace": "elsewhere", "labels": {}}


def policy_allows(policies, direction, pod, peer, port, peer_namespace_labels):
    """Does any policy selecting `pod` allow `direction` traffic with `peer` on `port`?"""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if direction in p["spec"]["policyTypes"]
                 and labels_match(p["spec"]["podSelector"], pod["labels"])]
    if not selecting:
        return True  # not isolated in that direction
    for p in selecting:
        for rule in p["spec"].get(key) or []:
            ports = rule.get("ports")
            if ports and not any(pp.get("port") == port[0] and pp.get("protocol", "TCP") == port[1] for pp in ports):
                continue
            peers = rule.get(peers_key)
            if not peers:
                return True
            for sel in peers:
                ns_sel, pod_sel = sel.get("namespaceSelector"), sel.get("podSelector")
                if ns_sel is None and peer["namespace"] != NAMESPACE:
                    continue
                if ns_sel is not None and not labels_match(ns_sel, peer_namespace_labels):
                    continue
                if pod_sel is not None and not labels_match(pod_sel, peer["labels"]):
                    continue
                if "ipBlock" in sel:
                    continue
                return True
    return False


def flow(policies, src, dst, port):
    ns_labels = lambda p: {"kubernetes.io/metadata.name": p["namespace"]}  # noqa: E731
    ok_out = src["namespace"] != NAMESPACE or policy_allows(policies, "Egress", src, dst, port, ns_labels(dst))
    ok_in = dst["namespace"] != NAMESPACE or policy_allows(policies, "Ingress", dst, src, port, ns_labels(src))
    return ok_out and ok_in


def test_network_policies(target, docs):
    policies = objects(docs, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies), "default deny"
    pod = {name: {"namespace": NAMESPACE, "labels": one(docs, kind, name)["spec"]["template"]["metadata"]["labels"]}
           for kind, name in (("Deployment", "proxy"), ("Deployment", "api"), ("StatefulSet", "db"))}
    job = one(docs, "CronJob", "db-backup")["spec"]["jobTemplate"]["spec"]["template"]
    pod["backup"] = {"namespace": NAMESPACE, "labels": job["metadata"]["labels"]}
    archiver = one(docs, "Deployment", "binlog-archiver")["spec"]["template"]
    pod["archiver"] = {"namespace": NAMESPACE, "labels": archiver["metadata"]["labels"]}
    dns = {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
    ingress_controller = {"namespace": "ingress-nginx", "labels": {"app.kubernetes.io/name": "ingress-nginx"}}
    tcp = lambda n: (n, "TCP")  # noqa: E731

    assert flow(policies, pod["proxy"], pod["api"], tcp(8000))
    assert flow(policies, pod["api"], pod["db"], tcp(3306))
    assert flow(policies, pod["backup"], pod["db"], tcp(3306))
    assert flow(policies, pod["archiver"], pod["db"], tcp(3306))
    for name in ("proxy", "api", "backup", "archiver"):
        assert flow(policies, pod[name], dns, (53, "UDP")) and flow(policies, pod[name], dns, tcp(53)), name
    assert flow(policies, ingress_controller, pod["proxy"], tcp(8080))
    # Prometheus in the namespace `monitoring` scrapes the api's /metrics (k8s/README.md).
    prometheus = {"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "prometheus"}}
    assert flow(policies, prometheus, pod["api"], tcp(8000))
    if target == "overlays/production":
        assert not flow(policies, OUTSIDE, pod["proxy"], tcp(8080)), "only the trusted hop reaches the proxy"
    else:
        assert flow(policies, OUTSIDE, pod["proxy"], tcp(8080))

    denied = [
        (pod["proxy"], pod["db"], tcp(3306)),     # as compose: the proxy cannot reach the db
        (pod["proxy"], pod["api"], tcp(3306)),
        (pod["api"], pod["proxy"], tcp(8080)),
        (pod["db"], pod["api"], tcp(8000)),
        (pod["db"], dns, (53, "UDP")),
        (OUTSIDE, pod["api"], tcp(8000)),
        (OUTSIDE, pod["db"], tcp(3306)),
        (OUTSIDE, pod["proxy"], tcp(8081)),
        (pod["api"], OUTSIDE, tcp(443)),
        (pod["proxy"], OUTSIDE, tcp(80)),
        (pod["db"], OUTSIDE, tcp(443)),
        (pod["backup"], pod["api"], tcp(8000)),
        (pod["proxy"], pod["backup"], tcp(3306)),
        (OUTSIDE, pod["backup"], tcp(3306)),
        (pod["backup"], OUTSIDE, tcp(443)),
        (pod["archiver"], pod["api"], tcp(8000)),
        (pod["archiver"], OUTSIDE, tcp(443)),
        (OUTSIDE, pod["archiver"], tcp(3306)),
        # only that namespace AND that label, only the api's port
        ({"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "grafana"}}, pod["api"], tcp(8000)),
        ({"namespace": "default", "labels": {"app.kubernetes.io/name": "prometheus"}}, pod["api"], tcp(8000)),
        (prometheus, pod["db"], tcp(3306)),
        (prometheus, pod["proxy"], tcp(8081)),
    ]
    for src, dst, port in denied:
        assert not flow(policies, src, dst, port), (src, dst, port)


def test_the_api_pods_announce_their_metrics_port(docs):
    """The prometheus.io/* annotations name the api container's own port and /metrics, the
    path the proxy hides (nginx.conf answers 404 there)."""
    template = one(docs, "Deployment", "api")["spec"]["template"]
    notes = template["metadata"]["annotations"]
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == "api"]
    ports = {p["containerPort"] for p in container["ports"]}
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) in ports
    assert notes["prometheus.io/path"] == "/metrics"


def test_overlay_list():
    assert OVERLAYS == ["local", "production"]
