"""The tenant domain: synchronous, no trio, no HTTP. Everything a cenv *is*, over one apsw connection."""
