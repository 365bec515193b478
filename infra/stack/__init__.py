"""The local stack behind ``mlops up``: Prefect and MLflow servers, a serving instance, a worker per pool.

The workers' flow-run processes are forked by the fork server (``infra/fork_server.py``), which
``mlops up`` starts after the workers, with the flows already imported.

Every process is started in the background in its own process group, bound to loopback, with
its log under ``<home>/stack/logs/`` and its pid (and start time, so a reused pid is never
mistaken for ours) in ``<home>/stack/stack.json``. ``mlops down`` stops exactly those groups.
``mlops up`` is idempotent: what is already running is kept, what died is started again. It
checks every port it needs before starting anything, and if it fails part-way it stops what it
started itself (what ran before it stays). The supervisor (``infra/supervisor.py``), started last,
restarts a server or worker that dies. Whatever changes the stack holds ``<home>/stack/stack.lock``.

The serving instance (``mlops serve <model> --wait-for-model``) starts before the model has a
champion and loads it when the deploy stage tells it to: the deploy-pool worker gets its URL
and the admin token the stack generated (kept in ``stack.json``, readable by its owner only).

Modules, from the bottom up:

- ``state``: the component names, the state file (``stack.json``) and its records, the lock.
- ``processes``: starting, watching and stopping background processes; ports and health checks.
- ``components``: how each component is launched (command, environment, URL) and when it is ready.
- ``project``: the project's ``prefect.yaml``: its pools and deployments, deployed to the stack.
- ``up``, ``status``, ``down``: what ``mlops up``, ``mlops status`` and ``mlops down`` do.
"""
