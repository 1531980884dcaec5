"""The gateway: HTTP in front, one worker process per active cenv behind.

Imports proto, config, core.errors/ids/auth (pure) and never the worker or SQLite: it reaches
tenant data only through a WorkerClient.
"""
