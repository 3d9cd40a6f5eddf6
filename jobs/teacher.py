"""Ray job: train the teacher(s) with Ray Train; prints each teacher artifact's path.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/teacher.py --config configs/digits.yaml

Takes the same arguments as ``raydistill teacher``: --config, --set key=value (repeatable), --address.
"""
from _common import main

if __name__ == "__main__":
    main("teacher")
