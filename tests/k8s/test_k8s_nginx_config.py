"""The nginx configuration each overlay deploys is valid for a real nginx:
the ConfigMap's files, exactly as rendered, under `nginx -t` (nginx 1.30,
through the project's harness, which swaps in loopback listen ports and a
loopback upstream only; nginx.conf is the shipped file itself)."""

import pytest

from k8s_manifests import TARGETS, one, render
from harness import nginx

# What the harness sets for a loopback instance; everything else comes from the ConfigMap.
# resolver.conf too: the cluster DNS's name does not resolve here (the shipped file's Docker
# resolver is used instead, which nothing asks: the harness's upstream is an address);
# test_k8s_policy checks the cluster's resolver.conf and upstream.conf as text.
HARNESS_OWN = {"nginx.conf", "upstream.conf", "resolver.conf", "listen.conf", "status-listen.conf",
               "access-log.conf"}


def configmap_files(target):
    docs = render(target)
    proxy = one(docs, "Deployment", "proxy")["spec"]["template"]["spec"]
    name = next(v["configMap"]["name"] for v in proxy["volumes"] if "configMap" in v)
    return one(docs, "ConfigMap", name)["data"]


@pytest.mark.parametrize("target", TARGETS)
def test_configmap_passes_nginx_t(target):
    files = {k: v for k, v in configmap_files(target).items() if k not in HARNESS_OWN}
    out = nginx.check(files)
    assert out.returncode == 0, f"nginx -t with k8s/{target}'s ConfigMap:\n{out.stderr}"
    assert "syntax is ok" in out.stderr and "test is successful" in out.stderr


def test_nginx_t_bites():
    out = nginx.check({"real-ip.conf": "set_real_ip_from not-an-address;\n"})
    assert out.returncode != 0
