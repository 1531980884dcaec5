"""WCE, the Web Compute Environment: small web applications whose whole state is one SQLite file."""

__version__ = "0.1.0"
