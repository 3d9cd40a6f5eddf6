"""Ray job: federated clients on Ray actors (FedAvg | FedProx | FedDF); prints the artifact and run dir.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/federated.py --config configs/digits.yaml --set federated.strategy=feddf

Takes the same arguments as ``raydistill federated``: --config, --set key=value (repeatable), --address.
"""
from _common import main

if __name__ == "__main__":
    main("federated")
