"""Fixtures for the sandbox tests: one pool per backend for the whole session, host snapshots.

The isolating backends are required: if the host lacks one, the pool fixture fails with the probe's
reason (CI must install bubblewrap and run as root). Only optional backends may skip.
"""

from __future__ import annotations

import os

import pytest

from reasonzoo.sandbox import SandboxPool, probe

ISOLATING = ("forkserver", "bwrap")
SECRET_ENV = "REASONZOO_TEST_SECRET"
SECRET_VALUE = "s3cr3t-env-7f1d2c"
os.environ[SECRET_ENV] = SECRET_VALUE  # set before any pool starts: must never reach a program


@pytest.fixture(scope="session")
def secret_env_value() -> str:
    return SECRET_VALUE

def _pool(backend: str, workers: int = 2) -> SandboxPool:
    info = probe()
    if info.backends[backend]:
        pytest.fail(f"sandbox backend {backend!r} unavailable on this host: {info.backends[backend]}")
    return SandboxPool(backend=backend, workers=workers)


@pytest.fixture(scope="session")
def make_pool():
    """``make_pool(backend, workers=2)``: a pool of an isolating backend, failing (not skipping)
    with the probe's reason when the host lacks it."""
    return _pool


@pytest.fixture(scope="session")
def pools():
    created = {name: _pool(name) for name in ISOLATING}
    yield created
    for pool in created.values():
        pool.close()


@pytest.fixture(params=ISOLATING)
def pool(request, pools) -> SandboxPool:
    return pools[request.param]
