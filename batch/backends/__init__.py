"""The one seam between the pipeline and a model server: `Backend.chat()`."""

from batch.backends.base import Backend, ChatRequest, Completion, Usage

__all__ = ["Backend", "ChatRequest", "Completion", "Usage"]
