"""Test-only: a hospital running modified code.

Put this folder on ``PYTHONPATH`` with ``SPINEMET_TEST_FAULT=nan`` and the site's worker
replies to every ``train`` message with NaN weights, as a buggy or malicious site would; the
coordinator must exclude the reply and say why. Nothing else changes (the hook acts only
when ``spinemet.client.handlers`` is imported, i.e. in the site worker).
"""

import importlib.abc
import importlib.util
import os
import sys


class _NanTrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "spinemet.client.handlers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            train = module.train

            def nan_train(node_config, cfg, arrays):
                out, metrics = train(node_config, cfg, arrays)
                return {k: v * float("nan") for k, v in out.items()}, metrics

            module.HANDLERS[module.TRAIN] = nan_train

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("SPINEMET_TEST_FAULT") == "nan":
    sys.meta_path.insert(0, _NanTrain())
