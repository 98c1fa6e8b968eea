"""Jobs: long media as durable, resumable work — the store, the runner and webhooks. No FastAPI.

`store.JobStore` keeps jobs and their finished pieces in SQLite (one file, the default) or PostgreSQL (several
gateway replicas sharing them) through SQLAlchemy Core; nothing here is imported until a module is used.
"""
