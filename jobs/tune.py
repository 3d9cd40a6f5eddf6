"""Ray job: sweep temperature x alpha with Ray Tune; prints the results table and the best config's path.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/tune.py --config configs/digits.yaml

Takes the same arguments as ``raydistill tune``: --config, --set key=value (repeatable), --address, --resume DIR.
"""
from _common import main

if __name__ == "__main__":
    main("tune")
