"""Gateway mode's host: the engine in a supervised worker process, reached over HTTP on a Unix socket."""
