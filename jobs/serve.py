"""Ray job: deploy a student with Ray Serve and exit, leaving the app running; prints its URL.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/serve.py --config configs/digits.yaml --artifact chosen

Takes the same arguments as ``raydistill serve``: --config, --set key=value (repeatable), --address, --artifact DIR|chosen|latest:<kind>|URI,
and ``promote`` / ``rollback`` (with --set serve.canary_artifact=...) to end the running app's canary.
"""
from _common import main

if __name__ == "__main__":
    main("serve")
