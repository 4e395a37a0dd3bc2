"""Finished rows -> the output: the record each row becomes, the one writer of the output,
what an earlier output holds (resume), changed and pruned rows, the lock that keeps one run
per output, input order, label counts and the review file."""
