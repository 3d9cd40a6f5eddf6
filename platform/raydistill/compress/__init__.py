"""compress: ``raydistill compress-report``, distillation next to INT8 quantization and pruning.

``report`` (the stage), ``methods`` (quantize, prune, sizes, latency), ``output`` (md/csv/png).
Ray-free: imports only ``raydistill.core``.
"""
