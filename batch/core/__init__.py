"""The vocabulary every part shares, importing no other part: errors, the chat exchange with a
model server (`Backend`, `ChatRequest`, `Completion`, `Usage`), rows and their results, output
schemas and their categorical fields, digests, images, the id table, JSON text under caps,
Ollama's option names, the run's counters and the reorder window."""
