"""The accuracy worker: a child process that tails the event log and judges sample results
against ground truth into `samples` rows and accuracy.json."""
