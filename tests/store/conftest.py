from collections.abc import Iterator

import pytest

from tests.service.harness import running_service


@pytest.fixture
def dev_service_port() -> Iterator[int]:
    with running_service(dev=True) as svc:
        yield svc.resp_port
