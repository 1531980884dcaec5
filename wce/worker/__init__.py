"""One process per active cenv: owns its SQLite file, serves the gateway's requests over a Unix socket."""
