"""Model servers behind the `Backend` seam: Ollama through the official client (errors, access,
model checks, server notes, hand-back), the embedded llama.cpp model, and the host pool that
spreads rows over hosts within each host's concurrency limit and health."""
