"""Tenant scripts in Starlark: compiling and running them in a sandbox (runtime), where they are
stored and how endpoints are routed (store, routing). The domain API a script sees (`db`, `print`,
`now`, `response`) is provided by a Host that the worker implements."""
