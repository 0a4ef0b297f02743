"""Echo and replay: more training samples than the decoder produces, at small bands.

Echo before augmentation (each decoded image serves r samples, each with its own draws:
:mod:`.schedule`, the decode and feed stages :mod:`.stages`, ``echo="auto"`` :mod:`.auto`) and
EfficientTrain++'s replay buffer of augmented samples (:mod:`.replay`).
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "EchoSchedule": "schedule",
    "EchoLayouts": "schedule",
    "EchoEpoch": "schedule",
    "parse_echo": "schedule",
    "AutoEcho": "auto",
    "ReplayBuffer": "replay",
})
