"""The stack fixture; everything else is in monitoring_stack.py."""

import pytest

from monitoring_stack import Stack


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    yield s
    s.close()
