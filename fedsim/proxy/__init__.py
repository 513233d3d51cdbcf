"""The server's proxy-data work: pre-training, the teacher, and knowledge distillation.

The proxy split is held out of every phone's shard
(:func:`fedsim.data.partition.proxy.proxy_indices`); only the server trains on it.
"""
