"""One row, start to finish: send, validate, re-ask or retry, with every attempt accounted for;
each label's confidence from token log-probabilities; the run's budgets."""
