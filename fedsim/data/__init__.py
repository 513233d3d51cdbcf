"""Training data: datasets as normalized arrays, and how virtual clients share them.

``datasets`` holds the array containers and the built-in Digits set, ``fashion_mnist`` and ``idx``
load Fashion-MNIST from IDX files, and ``partition`` maps client ids to sample ids (IID, Dirichlet
label skew, pathological shards).
"""
