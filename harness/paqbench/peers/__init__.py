"""Peers' implementations as paqbench steps: availability, versions and conversion.

The adapter plugins (``paqbench_plugins.methods.peers``) run another library's quantizer
(torchao, hqq, auto-round, llm-compressor) on the run's model and convert what it made
into paqbench's own layer formats, so every later step and metric works on it. This
package holds what they share: :mod:`.availability` (is the peer installed, which
version, the exact install command) and :mod:`.convert` (peer tensors -> packed layers,
with a bitwise check of each conversion recorded in the step's record).
"""

from paqbench.peers.availability import Peer, PeerMethod, PeerUnavailable
from paqbench.peers.convert import ConversionRecord, LayerConversion

__all__ = ["ConversionRecord", "LayerConversion", "Peer", "PeerMethod", "PeerUnavailable"]
