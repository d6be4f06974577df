"""The service core: the one batching scheduler in front of the GPU, durable batch jobs and the
async service every web route and UI handler calls."""
