"""Ray job: the whole flow (see raydistill.cli.pipeline); prints the summary table and where the artifacts went.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/pipeline.py --config configs/digits.yaml

Takes the same arguments as ``raydistill pipeline``: --config, --set key=value (repeatable), --address.
"""
from _common import main

if __name__ == "__main__":
    main("pipeline")
