"""Scale-out runtime of ``gateway serve``: one supervisor process, N worker processes.

``supervisor.Supervisor`` starts the workers (``python -m gateway.runtime.worker``), waits until
every one listens, restarts the ones that die (exponential backoff) and forwards SIGTERM/SIGINT.
``worker`` runs one ``server.Gateway`` on uvloop behind its own ``SO_REUSEPORT`` socket, so the
kernel spreads new connections over the workers, and drains its calls on SIGTERM.

This package is imported by every worker before its signal handlers are in place: keep it light
(no imports here).
"""
