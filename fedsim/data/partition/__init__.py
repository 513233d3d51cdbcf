"""Which training samples each virtual client holds: one module per rule, over a shared base.

* :mod:`~fedsim.data.partition.base`: the :class:`Partition` a rule returns, the ``split``
  skeleton of disjoint and sampled modes, and the pure counting helpers;
* :mod:`~fedsim.data.partition.iid`, :mod:`~fedsim.data.partition.dirichlet` (label skew) and
  :mod:`~fedsim.data.partition.label_shards` (pathological shards): the rules, one
  ``conf/partition`` option each;
* :mod:`~fedsim.data.partition.proxy`: the server's proxy split, held out before any rule runs.

The names are re-exported here so ``from fedsim.data.partition import IidPartitioner`` works;
the ``_target_`` of each ``conf/partition`` option names the module that defines the class.
"""

from fedsim.data.partition.base import (
    DisjointPartition,
    Partition,
    PartitionError,
    Partitioner,
    SampledPartition,
    fill_capped,
    largest_remainder,
    split_sizes,
)
from fedsim.data.partition.dirichlet import DirichletPartitioner
from fedsim.data.partition.iid import IidPartitioner
from fedsim.data.partition.label_shards import LabelShardPartitioner
from fedsim.data.partition.proxy import client_pool, proxy_indices

__all__ = [
    "DirichletPartitioner",
    "DisjointPartition",
    "IidPartitioner",
    "LabelShardPartitioner",
    "Partition",
    "PartitionError",
    "Partitioner",
    "SampledPartition",
    "client_pool",
    "fill_capped",
    "largest_remainder",
    "proxy_indices",
    "split_sizes",
]
