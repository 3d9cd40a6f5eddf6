"""A job entrypoint for test_jobs.py: where do the job's driver and a Ray worker import raydistill from?

Run as ``python tests/_where_job.py`` inside a Ray job (the working dir is the repo). The remote
function is defined in ``__main__``, so Ray ships it by value: the worker needs nothing from tests/.
Prints ``driver=<path>`` and ``worker=<path>`` lines for the test to check.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from _common import use_checkout  # noqa: E402  (the same sys.path rule as every job entry point)

use_checkout()
import ray  # noqa: E402

import raydistill  # noqa: E402


@ray.remote(num_cpus=0)
def worker_import_path() -> str:
    import raydistill

    return raydistill.__file__


if __name__ == "__main__":
    ray.init()  # RAY_ADDRESS is set by the job supervisor
    print(f"driver={raydistill.__file__}", flush=True)
    print(f"worker={ray.get(worker_import_path.remote())}", flush=True)
