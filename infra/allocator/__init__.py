"""The meta-learning allocator: sizes each training run's Dask cluster from measured history."""
