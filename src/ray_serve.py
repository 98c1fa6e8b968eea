"""Kept so that `asr_server.ray_serve:app_builder` (the README's `serve run` target) still works: the code lives in
`asr_server.engines.ray.serve`."""

from asr_server.engines.ray.serve import app_builder, serve_on_ray

__all__ = ["app_builder", "serve_on_ray"]
