"""Service functions behind the routes: keyword-only, a session in, rows out."""
