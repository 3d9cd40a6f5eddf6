"""core: the Ray-free heart every stage is built around.

Holds config (schema, rules, loading), registries, data, models, losses, the engine and epoch
loop, artifacts, model cards, the teachers a stage reads and preflight checks. Imports only torch/numpy/yaml and itself:
never ``ray`` and never a stage package (a test imports all of it and checks ``sys.modules``).
"""
