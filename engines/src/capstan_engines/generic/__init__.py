"""The generic model runtime (SPEC 6.7): ``python -m capstan_engines.generic --model-dir DIR --port P``.

``deps``: ``requirements.txt`` installed at start into a writable directory; ``service``: the model class
found in ``model_service.py`` and run load → preprocess → predict → postprocess; ``app``: the HTTP routes.
"""
