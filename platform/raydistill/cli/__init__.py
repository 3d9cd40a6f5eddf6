"""cli: ``raydistill <stage>`` and what runs it.

``commands`` (parser, stage table, ``main``), ``stages`` (teacher/distill/baseline entry points),
``pipeline`` (the end-to-end run behind ``make demo``), ``job`` (the Ray-job wrapper for ``jobs/``).
The top of the import graph: may import every stage package; nothing imports it.
"""
