"""Secrets, network isolation and hardening, read from the engine and the running processes."""

import concurrent.futures as cf
import time
from pathlib import Path

import pytest
import requests

import e2e_support as e2e
from harness import compose

SERVICES = ("db", "api", "proxy")


def _leaks(project, text: str) -> list[str]:
    return [n for n in compose.SECRETS if project.secret(n) in text]


def test_secrets_reach_the_containers_only_as_files(stack):
    for service, wanted in (("db", {"db_password", "db_root_password", "db_backup_password"}),
                             ("api", {"db_password"})):
        info = stack.inspect(service)
        mounts = {m["Destination"]: m["Type"] for m in info["Mounts"]}
        for name in wanted:
            assert mounts.get(f"/run/secrets/{name}") == "bind", (
                f"{service}: /run/secrets/{name} is not a bind-mounted file: {mounts}")
        for var in info["Config"]["Env"]:
            key, _, value = var.partition("=")
            if "PASSWORD" in key:
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), (
                    f"{service}: {var} is a password variable that is not a /run/secrets path")
    # readable by the db's own uid 999 (the files are 0644 on the host, compose keeps the mode)
    r = stack.exec("db", "bash", "-c",
                   "test -r /run/secrets/db_password && test -r /run/secrets/db_root_password",
                   check=False)
    assert r.returncode == 0, f"the db (uid 999) cannot read its secrets: {r.stderr}"
    for service in SERVICES:
        for pid in e2e.descendants(stack.pid(service)):
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            assert not _leaks(stack, environ), f"password in the environment of {service} pid {pid}"


def test_no_password_in_inspect_config_logs_or_the_process_list(stack):
    places = {f"docker inspect {s}": compose.docker("inspect", stack.container_id(s)).stdout
              for s in SERVICES}
    places["docker compose config"] = stack.config()
    places["docker compose logs"] = stack.logs()
    places["the host's process list (every /proc/*/cmdline)"] = e2e.all_command_lines()
    places["docker-compose.yml"] = stack.compose_file.read_text()
    found = {where: _leaks(stack, text) for where, text in places.items()}
    assert not any(found.values()), f"password found in: { {k: v for k, v in found.items() if v} }"


def test_only_the_proxy_publishes_a_port(stack):
    # HTTP and HTTPS; the status port 8081 never.
    expected = {"8080/tcp": stack.port, "8443/tcp": stack.tls_port}
    for service in SERVICES:
        ports = stack.inspect(service)["NetworkSettings"]["Ports"] or {}
        published = {p: b for p, b in ports.items() if b}
        if service == "proxy":
            assert sorted(published) == sorted(expected), f"proxy publishes {published}"
            for port, host_port in expected.items():
                assert {b["HostPort"] for b in published[port]} == {str(host_port)}, published
        else:
            assert not published, f"{service} publishes {published}"
    assert stack.compose("port", "proxy", "8080").stdout.strip().endswith(f":{stack.port}")
    assert stack.compose("port", "proxy", "8443").stdout.strip().endswith(f":{stack.tls_port}")


def test_the_db_is_on_the_internal_backend_only_and_the_proxy_cannot_reach_it(stack):
    nets = {s: set(stack.inspect(s)["NetworkSettings"]["Networks"]) for s in SERVICES}
    edge, backend = f"{stack.name}_edge", f"{stack.name}_backend"
    # `monitoring` (internal too) is where Prometheus and the exporters reach the api and the
    # proxy's status port; without the profile nothing else is on it.
    monitoring = f"{stack.name}_monitoring"
    assert nets["proxy"] == {edge, monitoring}, f"proxy networks: {nets['proxy']}"
    assert nets["db"] == {backend}, f"db networks: {nets['db']}"
    assert nets["api"] == {edge, backend, monitoring}, f"api networks: {nets['api']}"
    assert compose.docker("network", "inspect", "--format", "{{.Internal}}", monitoring) \
        .stdout.strip() == "true", "the monitoring network is not internal"
    assert compose.docker("network", "inspect", "--format", "{{.Internal}}", backend) \
        .stdout.strip() == "true", "the backend network is not internal"
    # From inside the proxy's network namespace (a probe container joined to it; the proxy
    # itself is untouched): `db` does not resolve, the db's address does not answer, the api does.
    db_ip = stack.inspect("db")["NetworkSettings"]["Networks"][backend]["IPAddress"]
    probe = ("for t in db/3306 %s/3306 api/8000; do "
             "timeout 3 bash -c \"exec 3<>/dev/tcp/$t\" 2>/dev/null && echo \"$t open\" "
             "|| echo \"$t closed\"; done") % db_ip
    out = stack.docker_run("--network", f"container:{stack.container_id('proxy')}",
                           "--entrypoint", "bash", stack_image(stack, "db"), "-c", probe).stdout
    assert "db/3306 closed" in out, f"the proxy can reach the db by name:\n{out}"
    assert f"{db_ip}/3306 closed" in out, f"the proxy can reach the db at {db_ip}:\n{out}"
    assert "api/8000 open" in out, f"control failed: the probe cannot reach api:8000:\n{out}"


def stack_image(stack, service: str) -> str:
    return stack.inspect(service)["Config"]["Image"]


@pytest.mark.parametrize("service", SERVICES)
def test_hardening_of_the_running_processes(stack, service, record):
    info = stack.inspect(service)
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True, f"{service}: root filesystem not read-only"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], f"{service}: caps {host['CapAdd']}"
    assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"] or []), \
        f"{service}: no no-new-privileges in {host['SecurityOpt']}"
    assert host["RestartPolicy"]["Name"] == "unless-stopped", f"{service}: {host['RestartPolicy']}"
    assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"], \
        f"{service}: memory {host['Memory']}, memory+swap {host['MemorySwap']} (want equal: no swap)"
    # ... and what the kernel enforces on the processes themselves
    pid1 = int(info["State"]["Pid"])
    assert "ro" in e2e.root_mount_options(pid1), f"{service}: / is mounted {e2e.root_mount_options(pid1)}"
    assert e2e.memory_limit(pid1) == host["Memory"], f"{service}: cgroup memory limit"
    assert e2e.pids_limit(pid1) == host["PidsLimit"] and host["PidsLimit"] > 0, \
        f"{service}: pids limit {e2e.pids_limit(pid1)}"
    procs = e2e.descendants(pid1)
    for pid in procs:
        st = e2e.proc_status(pid)
        uids = st["Uid"].split()
        assert "0" not in uids, f"{service} pid {pid} ({st['Name']}) runs as root: Uid {uids}"
        assert int(st["CapEff"], 16) == 0, f"{service} pid {pid}: CapEff {st['CapEff']}"
        assert int(st["CapBnd"], 16) == 0, f"{service} pid {pid}: CapBnd {st['CapBnd']}"
        assert st["NoNewPrivs"] == "1", f"{service} pid {pid}: NoNewPrivs {st['NoNewPrivs']}"
    names = [e2e.proc_status(p)["Name"] for p in procs]
    record(f"hardening {service}: uid {e2e.proc_status(pid1)['Uid'].split()[0]}, processes {names}, "
           f"memory {host['Memory'] >> 20} MiB, pids {host['PidsLimit']}: all CapEff/CapBnd 0, "
           "NoNewPrivs 1, / read-only")


def test_the_db_runs_under_an_init_as_pid_1(stack):
    pid1 = stack.pid("db")
    name = e2e.proc_status(pid1)["Name"]
    assert name not in ("bash", "mariadbd"), f"db PID 1 is {name}, expected an init"
    children = [e2e.proc_status(p)["Name"] for p in e2e.descendants(pid1)[1:]]
    assert "mariadbd" in children, f"no mariadbd under the init: {children}"
    assert e2e.proc_status(stack.pid("api"))["Name"] == "user-api"


def test_a_small_load_stays_well_below_the_memory_and_pids_limits(stack, record):
    pids = {s: stack.pid(s) for s in SERVICES}
    sampler = e2e.Sampler(pids)
    sampler.start()
    statuses: dict[int, int] = {}

    def get(path):
        try:
            return requests.get(stack.url(path), timeout=20).status_code
        except requests.RequestException:
            return 0

    def post(uid):
        try:
            return requests.post(stack.url(f"/create_user?userid={uid}&username=load{uid}"),
                                 timeout=20).status_code
        except requests.RequestException:
            return 0

    # 1) a burst: 500 requests, 16 + 8 in parallel (most meet the proxy's rate limit: 429)
    with cf.ThreadPoolExecutor(16) as reads, cf.ThreadPoolExecutor(8) as writes:
        futures = [reads.submit(get, p) for _ in range(200)
                   for p in ("/get_user?userid=1", "/users?limit=20")]
        futures += [writes.submit(post, 5000 + i) for i in range(100)]
        burst = [f.result() for f in futures]
    time.sleep(3)  # the rate limiter's bucket (burst 40 at 20 r/s) drains: 2 s, and a margin

    # 2) paced: 4 clients, 32 requests each at ~4 r/s (16 r/s in all, below the 20 r/s limit)
    def client(w):
        out, s = [], requests.Session()
        for i in range(32):
            try:
                if i % 4 == 3:
                    out.append(s.post(stack.url("/users"), timeout=10, json={
                        "userid": 6000 + w * 100 + i, "username": f"paced {w}-{i}"}).status_code)
                else:
                    out.append(s.get(stack.url("/users?limit=50"), timeout=10).status_code)
            except requests.RequestException:
                out.append(0)
            time.sleep(0.25)
        return out

    with cf.ThreadPoolExecutor(4) as pool:
        paced = [c for cs in pool.map(client, range(4)) for c in cs]
    time.sleep(1)
    sampler.stop()
    for code in burst + paced:
        statuses[code] = statuses.get(code, 0) + 1
    record(f"load: burst 500 (16+8 parallel) + paced 128 (4 clients); statuses {statuses}")
    assert not [c for c in burst + paced if c >= 500 or c == 0], f"5xx or no answer: {statuses}"
    # One bucket per client for reads and writes alike: which of them get its 41 tokens (burst
    # 40, nodelay, + 1) and the refills depends on who arrives first (once, on a loaded machine,
    # every write of the burst came after the reads had drained it: 152 x 200, 0 x 201).
    through = [c for c in burst if c in (200, 201)]
    assert len(through) >= 41, f"fewer than the limiter's burst got through: {statuses}"
    assert set(paced) <= {200, 201}, f"the paced clients (below the rate limit) got {statuses}"

    problems = []
    for service, pid in pids.items():
        host = stack.inspect(service)["HostConfig"]
        peak = e2e.memory_peak(pid) or sampler.peak_mem[service]
        mib = lambda b: b / 2**20  # noqa: E731
        record(f"peak {service}: memory {mib(sampler.peak_mem[service]):.1f} MiB sampled, "
               f"{mib(peak):.1f} MiB cgroup peak (limit {mib(host['Memory']):.0f} MiB); "
               f"pids {sampler.peak_pids[service]} (limit {host['PidsLimit']})")
        if peak * 1.5 > host["Memory"]:
            problems.append(f"{service}: peak {mib(peak):.1f} MiB within 1.5x of its limit")
        if sampler.peak_pids[service] * 1.5 > host["PidsLimit"]:
            problems.append(f"{service}: {sampler.peak_pids[service]} pids within 1.5x of the limit")
    assert not problems, "; ".join(problems)

