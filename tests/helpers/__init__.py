"""Scaffolding shared by the test suite, written once for every architecture:

- ``fixtures``: the recorded originals (tensors, metadata, cached conversions, models built from them);
- ``tiny_models``: tiny configs and batches per architecture (a test names only the values it changes);
- ``momentum_checks``: the checks and the shared test class of momentum-contrastive heads;
- ``distributed_pretraining``: momentum pre-training on two gloo ranks against a single-process reference;
- ``distributed_vlmo``: VLMo pre-training (gathered ITC, global hard negatives) on two gloo ranks against one process;
- ``vlmo``: the VLMo fixture converted into any head;
- ``coca``: the CoCa fixture (open_clip's CoCa) converted into either head;
- ``gloo_ranks``: running a function on each of two gloo ranks and comparing their losses with one process;
- ``distributed_coca``: CoCa's joint loss on two gloo ranks against one process;
- ``toy_models``: toy dual encoders and their two-process worker (losses, momentum, callbacks);
- ``benchmarks``: running a benchmark script in ``--smoke`` mode.

Imported as ``tests.helpers.<module>`` (``tests`` is a namespace package; the repository-root ``conftest.py`` puts
the root on ``sys.path``, and ``torch.multiprocessing.spawn`` hands that path to its workers).
"""
