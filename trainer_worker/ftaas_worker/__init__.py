"""The ftaas training worker: the rq entry point, the job runner and the training engine."""
