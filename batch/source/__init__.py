"""Input lines -> rows to send: the file read in chunks, each line built into a row (native
rows, OpenAI Batch request lines), shards, and the row source that feeds the run in input
order, leaving out what an earlier run already labelled."""
