"""Low-level operations below the layers: the block/tile planning arithmetic (:mod:`tkn.ops.plan`) and the
fast training convolution that runs only ROI blocks (:mod:`tkn.ops.fast_conv`).

Layering: :mod:`tkn.validate` and :mod:`tkn.functional` at the bottom, then this package, then
:mod:`tkn.layers`; the inference engine (:mod:`tkn.engine`) sits above the layers, and the benchmark
harness (:mod:`tkn.benchmark`) above the models.
"""
