"""The use cases: what the faces (the HTTP API, the CLI, the console) ask batchd to do.

Each module is one noun of the API and speaks to the store, the backends and the domain; none
knows HTTP or SQL. Dependencies point inward: faces -> use cases -> engine / store / backends
-> domain.
"""
