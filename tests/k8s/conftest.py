"""Fixtures of the k8s/ tests: `target` (the base and each overlay) and
`docs` (its rendered objects). Helpers live in k8s_manifests.py."""

import pytest

from k8s_manifests import TARGETS, render


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


@pytest.fixture
def docs(target):
    return render(target)
