"""One local Ray per end-to-end test module."""

import os

import pytest
import ray

from tests.e2e.runs import ROOT


@pytest.fixture(scope="module")
def ray_local():
    os.chdir(ROOT)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield
    ray.shutdown()
