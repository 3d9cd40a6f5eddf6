"""Ray job: distill the student from the teacher(s) with N Ray Train workers and mark it chosen; prints its artifact.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/distill.py --config configs/digits.yaml --set distill.workers=4

Takes the same arguments as ``raydistill distill``: --config, --set key=value (repeatable), --address.
"""
from _common import main

if __name__ == "__main__":
    main("distill")
