"""A shim: `asr_server.ray_serve:app_builder` for `serve run` as before; the code is in `engines/ray/serve.py`."""

from asr_server.engines.ray.serve import app_builder, serve_on_ray

__all__ = ["app_builder", "serve_on_ray"]
