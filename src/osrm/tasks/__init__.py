"""Tasks, layered bottom-up with no cycles.

:mod:`~osrm.tasks.spec` (what a task is: ``TaskSpec``, ``SplitPolicy``) depends on no other module
here; :mod:`~osrm.tasks.sources` (raw readers), :mod:`~osrm.tasks.splits` (standard columns,
deterministic splits) and :mod:`~osrm.tasks.batching` (tokenising, DataLoaders) build on it;
:mod:`~osrm.tasks.registry` (the built-in ``TASKS``, user blocks, ``load_task``) on those.
:mod:`~osrm.tasks.blocks` is the config schema of a user block. Nothing is re-exported here, so
that importing the config schema does not import the data libraries.
"""
