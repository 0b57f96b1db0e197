"""The task runtime: task sources (suites and the protocol zoos meet), task models, batching,
metrics and the task pool."""
