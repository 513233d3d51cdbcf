"""Training data: datasets as normalized arrays, and how virtual clients share them.

``splits`` holds the array containers, ``datasets`` the built-in Digits set, ``fashion_mnist`` and
``idx`` load Fashion-MNIST from IDX files, ``cache`` memory-maps loaded arrays for every process,
the ``partition`` package maps client ids to sample ids (IID, Dirichlet label skew, label-sorted
shards; the server's proxy split), and ``shards`` serves one client's shard (``ShardSource``).
"""
