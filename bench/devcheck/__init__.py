"""The device check (``make device-check``, ``bench/device_check.py``): one prepared command that answers
every GPU question of pgolf on a bare CUDA machine, and prints its plan anywhere else.

Modules: ``runner`` (sections, budgets, error capture), ``supervisor`` (the worker process with hard
time limits), ``report`` (the markdown and JSON reports), ``compare`` (tolerance checks), ``models``
(model builders and synthetic data shared by the sections; the one place that reaches into the GPT's
attributes), and one module per group of sections: ``setup_env``, ``attention``, ``training``,
``records``, ``evalspeed``, ``pipeline_run``.
"""
