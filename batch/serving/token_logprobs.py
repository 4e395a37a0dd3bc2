"""Token log-probabilities from llama.cpp, as Ollama reports them (`--logprobs` on the embedded
backend).

llama-cpp-python's own `logprobs` need the model loaded with `logits_all=True`, which keeps a
row of scores for every position of the context: 2048 x 262,144 floats, 2 GB, for the bundled
Gemma 3. A logits processor sees each step's logits instead, before the grammar and the
samplers (the model's own distribution, as Ollama's are), and the next step's input names the
token that was chosen from them. So one step's logits are kept, never more.
"""

from __future__ import annotations

import codecs
from typing import Any

import numpy as np

from batch.core.chat import TokenLogprob


class LogprobRecorder:
    """A logits processor (`logits_processor=LogitsProcessorList([recorder])`) for one
    generation. The last token (end of turn, not in the reply) is never scored."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._previous: Any = None  # the last step's log-probabilities
        self._chosen: list[tuple[int, float]] = []

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        if self._previous is not None:
            token = int(input_ids[-1])
            self._chosen.append((token, float(self._previous[token])))
        scores = logits.astype(np.float64)  # a copy: llama.cpp reuses the buffer
        top = scores.max()
        self._previous = scores - (top + np.log(np.exp(scores - top).sum()))
        return logits

    def tokens(self) -> tuple[TokenLogprob, ...]:
        """Each generated token's text and log-probability. A character split across tokens
        is given whole to the token that completes it, so the texts spell the reply."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return tuple(
            (decoder.decode(self._llm.detokenize([token])), logprob)
            for token, logprob in self._chosen
        )
