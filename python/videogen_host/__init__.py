"""videogen model host: runs video-diffusion pipelines one denoising step at a time for a videogen worker.

The wire protocol is specified in ``docs/MODEL_HOST.md``.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
HOST_NAME = f"videogen_host {__version__}"

__all__ = ["HOST_NAME", "PROTOCOL_VERSION", "__version__"]
