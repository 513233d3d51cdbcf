"""Update compression on the wire, and error feedback for biased compressors.

A client's update is ``dict[str, np.ndarray]`` (float32, keyed by parameter name). Compression
is applied on the phone after training and undone on the server before aggregation, as
pfl-research's client post-processors are applied in order and undone in reverse.

- :mod:`fedsim.compression.codecs`: pure, frozen codecs with ``encode`` / ``decode`` and the
  :class:`~fedsim.compression.codecs.Encoded` payload whose ``nbytes`` is the exact upload size:
  no compression, symmetric int8 quantization (per tensor or per output channel), top-k
  sparsification (Aji & Heafield, EMNLP 2017; Stich et al., NeurIPS 2018) and their chain.
- :mod:`fedsim.compression.error_feedback`: error feedback (Seide et al., Interspeech 2014;
  Karimireddy et al., ICML 2019), a pure step plus a per-client residual store that only holds
  clients that have participated.

Each codec is a class Hydra instantiates via ``_target_``; there is no registry of names.
"""

from fedsim.errors import UserInputError


class CompressionConfigError(UserInputError):
    """A compression setting is wrong; the message is one line naming the config key."""
