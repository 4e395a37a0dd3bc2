"""Formats other tools write and read: OpenAI Batch request lines in, `BatchRequestOutput` out."""
